//! A document's record: the document without the changes kept aside (see
//! [`care_core::kept_aside`]). What the team reads, and writes on, is the record; the
//! changes kept aside stay in the document, so they sync like any other and every device
//! holds the same set.

use std::collections::HashMap;

use automerge::{Automerge, AutomergeError, ChangeHash};
use care_core::{DeviceId, DocId, DocKind, Membership, OpHash, kept_aside};

/// Most documents whose record is remembered. A record that is not the whole document
/// is a second copy of it, and exists only where a removal's device wrote after it.
pub(crate) const RECORDS_KEPT_MAX: usize = 64;

/// The records computed lately, each for the document heads and membership it was
/// computed at.
#[derive(Default)]
pub(crate) struct Records {
    by_doc: HashMap<DocId, Record>,
}

struct Record {
    heads: Vec<ChangeHash>,
    membership: Vec<OpHash>,
    /// `None` when the record is the whole document.
    copy: Option<Automerge>,
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
        let heads = doc.get_heads();
        let known = self.by_doc.get(&id);
        if !known.is_some_and(|r| r.heads == heads && r.membership == membership.heads()) {
            let copy = match kept_aside(doc, id, kind, membership) {
                Some(aside) => Some(doc.fork_at(&aside.record_heads)?),
                None => None,
            };
            if self.by_doc.len() >= RECORDS_KEPT_MAX {
                self.by_doc.clear();
            }
            let membership = membership.heads().to_vec();
            self.by_doc.insert(id, Record { heads, membership, copy });
        }
        Ok(self.by_doc.get(&id).and_then(|r| r.copy.as_ref()))
    }
}

/// Runs `write` on the record of `doc` and adds the changes it makes to `doc`, so that
/// they build on the record and not on changes kept aside. A device whose own changes
/// are kept aside (it built on a removed device's change before it heard of the removal)
/// writes on the whole document instead: its next change must follow its last one, so
/// it is kept aside with it until a manager accepts what it was built on.
pub(crate) fn write_on_record<R, E: From<AutomergeError>>(
    doc: &mut Automerge,
    (id, kind, membership, device): (DocId, &DocKind, &Membership, DeviceId),
    write: impl FnOnce(&mut Automerge) -> Result<R, E>,
) -> Result<R, E> {
    let Some(aside) = kept_aside(doc, id, kind, membership) else {
        return write(doc);
    };
    if aside.changes.iter().any(|change| change.device == Some(device)) {
        return write(doc);
    }
    let mut record = doc.fork_at(&aside.record_heads)?;
    let value = write(&mut record)?;
    doc.apply_changes(record.get_changes(&aside.record_heads))?;
    Ok(value)
}
