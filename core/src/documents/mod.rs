//! The typed care documents: a small schema over Automerge for each [`DocKind`], with
//! functions that write one change per operation and read values back checked.
//!
//! Every document starts from the same [`genesis`] change on every device, holding the
//! schema version, the kind and every shared container. Writers set the document's actor to
//! the writing device ([`actor_for`]) and commit exactly one change, stamped with the
//! author's time in **seconds** since the Unix epoch: the unit Automerge documents for
//! `CommitOptions::time` and JavaScript Automerge uses for `ChangeOptions.time`. The exact
//! millisecond times are stored in the entries themselves.
//!
//! ```
//! use care_core::documents::{Author, genesis, notes};
//! use care_core::{DeviceId, DocKind, EntryId, MemberId, Month, NoteStream, TeamId, Timestamp};
//!
//! let month = Month::new(2026, 11).expect("a valid month");
//! let kind = DocKind::Notes { stream: NoteStream::Care, month };
//! let mut doc = genesis(TeamId::from_bytes([1; 16]), &kind);
//! let author = Author {
//!     member: MemberId::from_bytes([2; 16]),
//!     device: DeviceId::from_bytes([3; 32]),
//!     at: Timestamp(month.start().0 + 3_600_000),
//! };
//! let id = EntryId::new(month, [4; 8]);
//! let note = notes::NewNote { text: "Lunch, a walk to the shop.".into(), ..Default::default() };
//! notes::add_note(&mut doc, &author, id, &note)?;
//! assert_eq!(notes::notes(&doc)?[0].text, "Lunch, a walk to the shop.");
//! # Ok::<(), care_core::documents::DocError>(())
//! ```

mod access;
mod error;
pub mod notes;
pub mod plan;
pub mod promises;
mod received;
pub mod rota;
pub mod team_doc;

use automerge::transaction::{CommitOptions, Transactable, Transaction};
use automerge::{ActorId, Automerge, ChangeHash, ObjType, ROOT};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::doc_kind::{DocKind, Section};
use crate::ids::{DeviceId, MemberId, TeamId, Timestamp};
use access::Obj;

pub use error::DocError;
pub use notes::{Amendment, Medication, NewNote, ParseMedicationError, ShiftNote};
pub use promises::{Agreement, Promise, PromiseVersion};
pub use received::{ReceivedRules, StoredOp};
pub use rota::{Booking, NewBooking, Response};
pub use team_doc::TeamInfo;

/// The schema version this code writes and the newest it reads.
pub const SCHEMA_VERSION: u64 = 1;

/// Who makes a change, from which device, and when (passed in: core never reads a clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Author {
    /// The team member writing.
    pub member: MemberId,
    /// The device they write on; its key is the change's Automerge actor.
    pub device: DeviceId,
    /// When they write.
    pub at: Timestamp,
}

/// The deterministic first change of a document.
///
/// Every device computing `genesis(team, kind)` gets the same change hash (a fixed actor
/// derived from the document id, time 0, the same operations), so two devices that create
/// the same document independently while offline share one root structure instead of
/// creating conflicting containers. It holds `schema` (u64), `kind` (string) and every
/// container the kind needs.
pub fn genesis(team: crate::ids::TeamId, kind: &DocKind) -> Automerge {
    let actor = ActorId::from(kind.doc_id(team).as_bytes());
    let mut doc = Automerge::new().with_actor(actor);
    doc.transact_with(|_| CommitOptions::default().with_time(0), |tx| write_genesis(tx, kind))
        .expect("genesis writes a fixed set of keys into an empty document");
    doc
}

/// What a received change is checked against of a document's deterministic first change
/// ([`genesis`]): its actor (the document id), its hash, and the operation that made the
/// kind's root container, if the kind has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirstChange {
    /// The first change's actor: the document id's bytes.
    pub actor: ActorId,
    /// The first change's hash.
    pub hash: ChangeHash,
    /// The operation of the first change that made the kind's root container.
    pub container: Option<automerge::legacy::OpId>,
}

/// Most first changes kept by [`first_change`]: a device checks the documents of a few
/// teams, a circle node those of many; past this many the kept ones are dropped and made
/// again as they are needed.
const FIRST_CHANGES_KEPT_MAX: usize = 4096;

/// The first changes made so far, by team and kind.
static FIRST_CHANGES: Mutex<BTreeMap<(TeamId, DocKind), Arc<FirstChange>>> =
    Mutex::new(BTreeMap::new());

/// The deterministic first change of the `kind` document of `team`, as every check of a
/// received change needs it. Making it takes an Automerge document and a commit (more than
/// checking the signature of a change), and every document a device receives is checked
/// against it several times: it is made once per team and kind, and kept (at most 4,096
/// of them; past that the kept ones are dropped and made again as needed).
pub fn first_change(team: TeamId, kind: &DocKind) -> Arc<FirstChange> {
    let kept = |map: &BTreeMap<_, Arc<FirstChange>>| map.get(&(team, *kind)).cloned();
    if let Some(first) = kept(&first_changes()) {
        return first;
    }
    let doc = genesis(team, kind);
    let change =
        doc.get_changes(&[]).into_iter().next().expect("the first change writes the schema");
    let container = container(kind).and_then(|name| {
        let expanded = change.decode();
        let index = expanded.operations.iter().position(|op| {
            op.obj == automerge::legacy::ObjectId::Root
                && op.key == automerge::legacy::Key::Map(name.into())
                && matches!(op.action, automerge::legacy::OpType::Make(_))
        })?;
        Some(automerge::legacy::OpId(
            expanded.start_op.get() + index as u64,
            expanded.actor_id.clone(),
        ))
    });
    let first = Arc::new(FirstChange {
        actor: ActorId::from(kind.doc_id(team).as_bytes()),
        hash: change.hash(),
        container,
    });
    let mut map = first_changes();
    if map.len() >= FIRST_CHANGES_KEPT_MAX {
        map.clear();
    }
    map.insert((team, *kind), Arc::clone(&first));
    first
}

/// The kept first changes, even if a thread panicked holding them (they are only ever
/// whole entries).
fn first_changes() -> std::sync::MutexGuard<'static, BTreeMap<(TeamId, DocKind), Arc<FirstChange>>>
{
    FIRST_CHANGES.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Checks that `doc` is a document of `kind` with a schema this code understands and every
/// container of its kind in place.
pub fn check_schema(doc: &Automerge, kind: &DocKind) -> Result<(), DocError> {
    let found = open(doc)?;
    if found != *kind {
        return Err(DocError::WrongKind { expected: kind.to_string(), found: found.to_string() });
    }
    Ok(())
}

/// The kind of `doc`, after checking its schema and containers.
pub fn doc_kind(doc: &Automerge) -> Result<DocKind, DocError> {
    open(doc)
}

/// The Automerge actor of a device: its 32 public-key bytes, so every change maps to the
/// device that wrote it.
pub fn actor_for(device: DeviceId) -> ActorId {
    ActorId::from(device.as_bytes())
}

/// The root container of each kind, if it has one.
fn container(kind: &DocKind) -> Option<&'static str> {
    match kind {
        DocKind::Team => None,
        DocKind::Plan | DocKind::HealthPlan => Some("sections"),
        DocKind::Notes { .. } => Some("notes"),
        DocKind::Rota { .. } => Some("bookings"),
        DocKind::Promises => Some("promises"),
    }
}

/// The plan sections a document of `kind` holds (none for other kinds).
fn sections_of(kind: &DocKind) -> impl Iterator<Item = Section> + '_ {
    Section::ALL.into_iter().filter(move |section| section.doc_kind() == *kind)
}

fn write_genesis(
    tx: &mut Transaction<'_>,
    kind: &DocKind,
) -> Result<(), automerge::AutomergeError> {
    tx.put(ROOT, "schema", SCHEMA_VERSION)?;
    tx.put(ROOT, "kind", kind.to_string())?;
    if let Some(name) = container(kind) {
        let obj = tx.put_object(ROOT, name, ObjType::Map)?;
        for section in sections_of(kind) {
            tx.put_object(&obj, section.as_str(), ObjType::Text)?;
        }
    }
    Ok(())
}

/// Reads the schema version and kind of `doc` and checks its containers.
fn open(doc: &Automerge) -> Result<DocKind, DocError> {
    let root = Obj::root(doc);
    let schema = root.uint("schema")?;
    if schema > SCHEMA_VERSION {
        return Err(DocError::NewerSchema { found: schema, supported: SCHEMA_VERSION });
    }
    if schema == 0 {
        return Err(DocError::malformed("schema", "schema version 0 does not exist"));
    }
    let kind: DocKind = root.parse("kind")?;
    if let Some(name) = container(&kind) {
        let obj = root.map(name)?;
        for section in sections_of(&kind) {
            obj.text(section.as_str())?;
        }
    }
    Ok(kind)
}

/// A [`DocError::WrongKind`] for an operation that needs `expected`.
fn wrong_kind(expected: &str, found: DocKind) -> DocError {
    DocError::WrongKind { expected: expected.to_owned(), found: found.to_string() }
}

/// Runs `f` as exactly one change by `author`: sets the actor to the author's device and
/// commits with the author's time in seconds. On error nothing is committed.
fn write<O>(
    doc: &mut Automerge,
    author: &Author,
    f: impl FnOnce(&mut Transaction<'_>) -> Result<O, DocError>,
) -> Result<O, DocError> {
    doc.set_actor(actor_for(author.device));
    let seconds = author.at.as_millis().div_euclid(1000);
    doc.transact_with(|_| CommitOptions::default().with_time(seconds), f)
        .map(|success| success.result)
        .map_err(|failure| failure.error)
}

/// Rejects `text` when it is empty (after trimming) or longer than `max_bytes`.
fn check_text(what: &str, text: &str, max_bytes: usize) -> Result<(), DocError> {
    if text.trim().is_empty() {
        return Err(DocError::Invalid(format!("The {what} is empty.")));
    }
    check_len(what, text, max_bytes)
}

/// Rejects `text` when it is longer than `max_bytes`.
fn check_len(what: &str, text: &str, max_bytes: usize) -> Result<(), DocError> {
    if text.len() > max_bytes {
        return Err(DocError::Invalid(format!(
            "The {what} is too long ({} bytes; at most {max_bytes}).",
            text.len()
        )));
    }
    Ok(())
}

/// An Automerge timestamp value (milliseconds).
fn ts(at: Timestamp) -> automerge::ScalarValue {
    automerge::ScalarValue::Timestamp(at.as_millis())
}

#[cfg(test)]
pub(crate) mod test_support;

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use automerge::ReadDoc;

    #[test]
    fn genesis_is_deterministic_for_every_kind() {
        for kind in all_kinds() {
            let a = genesis(team(), &kind);
            let b = genesis(team(), &kind);
            assert_eq!(a.get_heads(), b.get_heads(), "{kind}");
            assert_eq!(a.save(), b.save(), "{kind}");
            check_schema(&a, &kind).expect("genesis is well formed");
        }
        let other = genesis(other_team(), &DocKind::Plan);
        assert_ne!(other.get_heads(), genesis(team(), &DocKind::Plan).get_heads());
    }

    /// The kept first change is the one `genesis` makes, for each team and kind, and its
    /// container is the root operation that made the kind's container.
    #[test]
    fn the_first_change_kept_is_the_genesis_change() {
        for team in [team(), other_team()] {
            for kind in all_kinds() {
                let doc = genesis(team, &kind);
                for _ in 0..2 {
                    let first = first_change(team, &kind);
                    assert_eq!(doc.get_heads(), vec![first.hash], "{kind}");
                    assert_eq!(first.actor, ActorId::from(kind.doc_id(team).as_bytes()), "{kind}");
                    let made = container(&kind).map(|name| {
                        let (_, id) = doc.get(ROOT, name).expect("reads").expect("a container");
                        id.to_string()
                    });
                    let kept = first.container.as_ref().map(|op| format!("{}@{}", op.0, op.1));
                    assert_eq!(kept, made, "{kind}");
                }
            }
        }
    }

    #[test]
    fn newer_schema_is_refused() {
        let mut doc = genesis(team(), &DocKind::Promises);
        write(&mut doc, &author(1, 0), |tx| Ok(tx.put(ROOT, "schema", 2_u64)?)).expect("writes");
        let err = check_schema(&doc, &DocKind::Promises).expect_err("newer");
        assert!(matches!(err, DocError::NewerSchema { found: 2, supported: 1 }), "{err}");
        assert!(err.to_string().contains("update"));
    }

    #[test]
    fn other_kinds_and_broken_roots_are_reported() {
        let doc = genesis(team(), &DocKind::Plan);
        let err = check_schema(&doc, &DocKind::HealthPlan).expect_err("wrong kind");
        assert!(matches!(err, DocError::WrongKind { .. }), "{err}");
        assert!(matches!(
            check_schema(&Automerge::new(), &DocKind::Plan),
            Err(DocError::Malformed { .. })
        ));
        let mut doc = genesis(team(), &DocKind::Plan);
        write(&mut doc, &author(1, 0), |tx| {
            let sections = tx.get(ROOT, "sections")?.expect("genesis made it").1;
            Ok(tx.put(&sections, "routines", 7)?)
        })
        .expect("writes");
        let err = check_schema(&doc, &DocKind::Plan).expect_err("malformed");
        assert!(
            matches!(&err, DocError::Malformed { path, .. } if path == "sections/routines"),
            "{err}"
        );
    }

    #[test]
    fn changes_carry_the_device_and_time_in_seconds() {
        let mut doc = genesis(team(), &DocKind::Team);
        let by = author(1, 90_061_500);
        team_doc::set_team_info(
            &mut doc,
            &by,
            &team_doc::TeamInfo { name: "Rosa's team".into(), circle: None },
        )
        .expect("writes");
        let change = doc.get_last_local_change().expect("one change");
        assert_eq!(change.actor_id(), &actor_for(by.device));
        assert_eq!(change.timestamp(), 90_061);
        assert_eq!(doc.get_heads().len(), 1);
        assert!(doc.get(ROOT, "name").expect("reads").is_some());
    }
}
