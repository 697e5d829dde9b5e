//! A document's record: the document without the changes kept aside (see
//! [`mod@care_core::kept_aside`]). What the team reads, and writes on, is the record; the
//! changes kept aside stay in the document, so they sync like any other and every device
//! holds the same set.

use std::collections::{BTreeSet, HashMap};

use automerge::{Automerge, AutomergeError, ChangeHash};
use care_core::{DeviceId, DocId, DocKind, Membership, OpHash, kept_aside};

/// Most documents whose record is remembered.
pub(crate) const RECORDS_KEPT_MAX: usize = 64;
/// Most of them whose record is a copy apart from the document (one where changes are
/// kept aside): each is a second copy of a document in memory.
pub(crate) const RECORD_COPIES_MAX: usize = 8;

/// The records computed lately, each for the document heads and membership it was
/// computed at, and kept up to date by the writes made through it.
#[derive(Default)]
pub(crate) struct Records {
    by_doc: HashMap<DocId, Record>,
}

struct Record {
    heads: Vec<ChangeHash>,
    membership: Vec<OpHash>,
    /// `None` when the record is the whole document.
    copy: Option<Automerge>,
    /// The devices with changes kept aside here.
    aside_by: BTreeSet<DeviceId>,
}

impl Records {
    /// The record of `doc` (document `id`, a `kind` document) under `membership`: `None`
    /// when it is the whole document, else a copy of the document at the record's heads.
    pub(crate) fn of(
        &mut self,
        doc: &Automerge,
        id: DocId,
        kind: &DocKind,
        membership: &Membership,
    ) -> Result<Option<&Automerge>, AutomergeError> {
        if membership.cuts().is_empty() {
            return Ok(None);
        }
        Ok(self.fresh(doc, id, kind, membership)?.copy.as_ref())
    }

    /// Runs `write` on the record of `doc` and adds the changes it makes to `doc`, so
    /// that they build on the record and never on changes kept aside (the rule of
    /// [`care_core::kept_aside::write_on_record`], with the record kept between writes).
    /// A `device` whose own changes are kept aside writes on the whole document: its
    /// next change must follow its last.
    pub(crate) fn write<R, E: From<AutomergeError>>(
        &mut self,
        doc: &mut Automerge,
        (id, kind, membership, device): (DocId, &DocKind, &Membership, DeviceId),
        write: impl FnOnce(&mut Automerge) -> Result<R, E>,
    ) -> Result<R, E> {
        if membership.cuts().is_empty() {
            return write(doc);
        }
        let record = self.fresh(doc, id, kind, membership)?;
        let Some(copy) = record.copy.as_mut().filter(|_| !record.aside_by.contains(&device)) else {
            // The record is the whole document (and stays so: a change built on it is
            // not kept aside), or this device writes on the whole document.
            let whole = record.copy.is_none();
            let value = write(doc)?;
            match self.by_doc.get_mut(&id) {
                Some(record) if whole => record.heads = doc.get_heads(),
                _ => drop(self.by_doc.remove(&id)),
            }
            return Ok(value);
        };
        let before = copy.get_heads();
        let written = write(copy).and_then(|value| {
            doc.apply_changes(copy.get_changes(&before))?;
            Ok(value)
        });
        match &written {
            Ok(_) => record.heads = doc.get_heads(),
            // Whatever the copy holds now is not the record: computed again next time.
            Err(_) => drop(self.by_doc.remove(&id)),
        }
        written
    }

    /// The record of `doc`, computed again unless the one kept was computed at the
    /// document's heads under this membership.
    fn fresh(
        &mut self,
        doc: &Automerge,
        id: DocId,
        kind: &DocKind,
        membership: &Membership,
    ) -> Result<&mut Record, AutomergeError> {
        let heads = doc.get_heads();
        let kept = self.by_doc.get(&id);
        if !kept.is_some_and(|r| r.heads == heads && r.membership == membership.heads()) {
            let (copy, aside_by) = match kept_aside(doc, id, kind, membership) {
                Some(aside) => (
                    Some(doc.fork_at(&aside.record_heads)?),
                    aside.changes.iter().filter_map(|change| change.device).collect(),
                ),
                None => (None, BTreeSet::new()),
            };
            self.by_doc.remove(&id);
            if self.by_doc.len() >= RECORDS_KEPT_MAX {
                self.by_doc.clear();
            }
            let copies = self.by_doc.values().filter(|r| r.copy.is_some()).count();
            if copy.is_some() && copies >= RECORD_COPIES_MAX {
                self.by_doc.retain(|_, r| r.copy.is_none());
            }
            let membership = membership.heads().to_vec();
            self.by_doc.insert(id, Record { heads, membership, copy, aside_by });
        }
        Ok(self.by_doc.get_mut(&id).expect("the record was kept just above"))
    }
}

#[cfg(test)]
mod tests {
    use care_core::documents::{Author, genesis, notes};
    use care_core::{
        DeviceKey, EntryId, MemberId, Month, NoteStream, OpBody, Role, SignedOp, Timestamp,
        create_team, team_id,
    };

    use super::*;

    /// Twelve months of notes, each with a note by a device removed before it wrote: every
    /// record is a copy without that note, and at most `RECORD_COPIES_MAX` are kept.
    #[test]
    fn records_apart_from_their_document_are_bounded() -> Result<(), AutomergeError> {
        let owner = DeviceKey::from_seed([1; 32]);
        let create = create_team(
            &owner,
            Timestamp(1),
            "Team",
            MemberId::from_bytes([1; 16]),
            "Ada",
            [2; 16],
        );
        let team = team_id(&create);
        let mut ops: Vec<SignedOp> = vec![create];
        let (member, device) = (MemberId::from_bytes([3; 16]), DeviceId::from_bytes([3; 32]));
        for body in [
            OpBody::AddMember { member, name: "Dan".into(), role: Role::Worker, hats: vec![] },
            OpBody::AddDevice { member, device, label: "phone".into() },
            OpBody::RemoveMemberKnowing { member, known: vec![] },
        ] {
            let membership = Membership::from_ops(team, &ops).expect("replays").0;
            ops.push(membership.author_op(&owner, Timestamp(2), body).expect("the owner may"));
        }
        let membership = Membership::from_ops(team, &ops).expect("replays").0;
        let mut records = Records::default();
        for m in 1..=12 {
            let month = Month::new(2026, m).expect("a month");
            let kind = DocKind::Notes { stream: NoteStream::Care, month };
            let mut doc = genesis(team, &kind);
            let author = Author { member, device, at: month.start() };
            let note = notes::NewNote { text: format!("month {m}"), ..Default::default() };
            notes::add_note(&mut doc, &author, EntryId::new(month, [m; 8]), &note).expect("writes");
            let record = records.of(&doc, kind.doc_id(team), &kind, &membership)?;
            let record = record.expect("the note is kept aside, so the record is a copy");
            assert_eq!(notes::notes(record).expect("reads"), vec![]);
            let copies = records.by_doc.values().filter(|r| r.copy.is_some()).count();
            assert!(copies <= RECORD_COPIES_MAX, "{copies} copies kept");
        }
        Ok(())
    }
}
