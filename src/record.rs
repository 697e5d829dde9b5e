//! A document's record: the document without the changes kept aside (see
//! [`mod@care_core::kept_aside`]). What the team reads, and writes on, is the record; the
//! changes kept aside stay in the document, so they sync like any other and every device
//! holds the same set.

use std::collections::HashMap;

use automerge::{Automerge, AutomergeError, ChangeHash};
use care_core::kept_aside::Record;
use care_core::{DeviceId, DocId, DocKind, Membership, OpHash};

/// Most documents whose record is remembered.
pub(crate) const RECORDS_KEPT_MAX: usize = 64;
/// Most of them whose record is a copy apart from the document (one where changes are
/// kept aside): each is a second copy of a document in memory.
pub(crate) const RECORD_COPIES_MAX: usize = 8;

/// The records computed lately, each for the document heads and membership it was
/// computed at, and kept up to date by the writes made through it.
#[derive(Default)]
pub(crate) struct Records {
    by_doc: HashMap<DocId, Kept>,
}

struct Kept {
    heads: Vec<ChangeHash>,
    membership: Vec<OpHash>,
    record: Record,
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
        Ok(self.fresh(doc, id, kind, membership)?.record.copy())
    }

    /// The record of `doc` as [`Records::of`] last computed it, without computing it:
    /// the document itself or its copy; `None` unless it was computed at the document's
    /// heads under this membership.
    pub(crate) fn kept<'a>(
        &'a self,
        doc: &'a Automerge,
        id: DocId,
        membership: &Membership,
    ) -> Option<&'a Automerge> {
        if membership.cuts().is_empty() {
            return Some(doc);
        }
        let kept = self.by_doc.get(&id)?;
        let current = kept.heads == doc.get_heads() && kept.membership == membership.heads();
        current.then(|| kept.record.copy().unwrap_or(doc))
    }

    /// [`Record::write`] on the record kept for `doc`, which then stays kept.
    pub(crate) fn write<R, E: From<AutomergeError>>(
        &mut self,
        doc: &mut Automerge,
        (id, kind, membership, device): (DocId, &DocKind, &Membership, DeviceId),
        write: impl FnOnce(&mut Automerge) -> Result<R, E>,
    ) -> Result<R, E> {
        if membership.cuts().is_empty() {
            return write(doc);
        }
        let kept = self.fresh(doc, id, kind, membership)?;
        let written = kept.record.write(doc, device, write);
        match &written {
            Ok(_) => kept.heads = doc.get_heads(),
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
    ) -> Result<&mut Kept, AutomergeError> {
        let heads = doc.get_heads();
        let kept = self.by_doc.get(&id);
        if !kept.is_some_and(|k| k.heads == heads && k.membership == membership.heads()) {
            let record = Record::of(doc, id, kind, membership)?;
            self.by_doc.remove(&id);
            if self.by_doc.len() >= RECORDS_KEPT_MAX {
                self.by_doc.clear();
            }
            let copies = self.by_doc.values().filter(|k| k.record.copy().is_some()).count();
            if record.copy().is_some() && copies >= RECORD_COPIES_MAX {
                self.by_doc.retain(|_, k| k.record.copy().is_none());
            }
            let membership = membership.heads().to_vec();
            self.by_doc.insert(id, Kept { heads, membership, record });
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
            let copies = records.by_doc.values().filter(|k| k.record.copy().is_some()).count();
            assert!(copies <= RECORD_COPIES_MAX, "{copies} copies kept");
        }
        Ok(())
    }
}
