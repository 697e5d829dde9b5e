//! The documents a home keeps loaded: at most [`DOCS_CACHED_MAX`], the least recently
//! used dropped first. A dropped document is loaded again from the store when next used;
//! nothing unsaved is ever held (every write is committed before it returns).

use std::collections::HashMap;

use care_core::DocId;
use care_store::StoredDoc;

/// Most documents a home keeps loaded. A year of a team's documents (three a month:
/// notes, general notes, rota; and the team, plans and promises) stays loaded, so a
/// device that has just caught up lists a year of notes without loading any again (the
/// workers that checked them hand over their loaded copies, `crate::verify`), and listing
/// them twice does not load each again. A circle node never keeps a document loaded for
/// passing it on.
pub const DOCS_CACHED_MAX: usize = 64;

/// Loaded documents, least recently used out.
#[derive(Default)]
pub(crate) struct DocCache {
    docs: HashMap<DocId, (StoredDoc, u64)>,
    /// Counts uses: a document's stamp is the count at its last use.
    uses: u64,
}

impl DocCache {
    /// The document, marked used.
    pub(crate) fn get_mut(&mut self, id: &DocId) -> Option<&mut StoredDoc> {
        self.uses += 1;
        let uses = self.uses;
        self.docs.get_mut(id).map(|(doc, used)| {
            *used = uses;
            doc
        })
    }

    /// The document, if loaded, not marked used.
    pub(crate) fn peek(&self, id: &DocId) -> Option<&StoredDoc> {
        self.docs.get(id).map(|(doc, _)| doc)
    }

    /// Whether the document is loaded.
    pub(crate) fn contains_key(&self, id: &DocId) -> bool {
        self.docs.contains_key(id)
    }

    /// Keeps a loaded document, dropping the least recently used one if full; returns it.
    pub(crate) fn insert(&mut self, id: DocId, doc: StoredDoc) -> &mut StoredDoc {
        if !self.docs.contains_key(&id) && self.docs.len() >= DOCS_CACHED_MAX {
            let oldest = self.docs.iter().min_by_key(|(_, (_, used))| *used).map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.docs.remove(&oldest);
            }
        }
        self.uses += 1;
        let slot = self.docs.entry(id).or_insert((doc, 0));
        slot.1 = self.uses;
        &mut slot.0
    }

    /// Whether keeping one more document would drop one.
    pub(crate) fn is_full(&self) -> bool {
        self.docs.len() >= DOCS_CACHED_MAX
    }

    /// Drops a document.
    pub(crate) fn remove(&mut self, id: &DocId) {
        self.docs.remove(id);
    }

    /// Drops every document.
    pub(crate) fn clear(&mut self) {
        self.docs.clear();
    }

    /// How many documents are loaded.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.docs.len()
    }
}
