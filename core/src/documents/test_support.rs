//! Shared fixtures for the document tests: fixed ids, authors and a two-way merge.

use automerge::Automerge;

use crate::doc_kind::{DocKind, NoteStream};
use crate::documents::Author;
use crate::ids::{DeviceId, EntryId, MemberId, Month, TeamId, Timestamp};

/// The team every test document belongs to.
pub(crate) fn team() -> TeamId {
    TeamId::from_bytes([1; 16])
}

/// Another team.
pub(crate) fn other_team() -> TeamId {
    TeamId::from_bytes([2; 16])
}

/// The month of the test documents.
pub(crate) fn month() -> Month {
    Month::new(2026, 11).expect("a valid month")
}

/// A time `minutes` after the start of [`month`].
pub(crate) fn at(minutes: i64) -> Timestamp {
    Timestamp(month().start().as_millis() + minutes * 60_000)
}

/// Member and device number `n`, writing at `ms` milliseconds after the epoch.
pub(crate) fn author(n: u8, ms: i64) -> Author {
    Author {
        member: MemberId::from_bytes([n; 16]),
        device: DeviceId::from_bytes([n; 32]),
        at: Timestamp(ms),
    }
}

/// Member and device number `n`, writing `minutes` into [`month`].
pub(crate) fn author_at(n: u8, minutes: i64) -> Author {
    author(n, at(minutes).as_millis())
}

/// Entry number `n` in [`month`].
pub(crate) fn entry(n: u8) -> EntryId {
    EntryId::new(month(), [n; 8])
}

/// One document of every kind.
pub(crate) fn all_kinds() -> [DocKind; 7] {
    [
        DocKind::Team,
        DocKind::Plan,
        DocKind::HealthPlan,
        DocKind::Notes { stream: NoteStream::Care, month: month() },
        DocKind::Notes { stream: NoteStream::General, month: month() },
        DocKind::Rota { month: month() },
        DocKind::Promises,
    ]
}

/// Merges `a` into `b` and `b` into `a`, and checks both end with the same heads.
pub(crate) fn merge_both(a: &mut Automerge, b: &mut Automerge) {
    let mut b_copy = b.clone();
    b.merge(&mut a.clone()).expect("merges");
    a.merge(&mut b_copy).expect("merges");
    assert_eq!(a.get_heads(), b.get_heads());
}
