//! A document's record: the document without the changes kept aside (see
//! [`care_core::kept_aside`]). What the team reads, and writes on, is the record; the
//! changes kept aside stay in the document, so they sync like any other and every device
//! holds the same set.

use std::collections::HashMap;

use automerge::{Automerge, AutomergeError, ChangeHash};
use care_core::{DocId, DocKind, Membership, OpHash, kept_aside};

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
