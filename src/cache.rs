//! The documents a home keeps loaded: at most [`DOCS_CACHED_MAX`] of them, together at
//! most [`DOC_BYTES_CACHED_MAX`] as stored, the least recently used dropped first. A
//! dropped document is loaded again from the store when next used; nothing unsaved is
//! ever held (every write is committed before it returns).

use std::collections::HashMap;

use care_core::DocId;
use care_store::StoredDoc;

/// Most documents a home keeps loaded. Years of a team's month documents (three a
/// month: notes, general notes, rota; and the team, plans and promises) stay loaded, so
/// a device that has just caught up lists every note without loading any again (the
/// workers that checked them hand over their loaded copies, `crate::verify`), and
/// listing them twice does not load each again. A circle node never keeps a document
/// loaded for passing it on.
pub const DOCS_CACHED_MAX: usize = 256;

/// Most bytes, as stored, of the documents a home keeps loaded: a loaded document takes
/// a few times its stored bytes in memory (about seven for a month of notes, eleven
/// KiB stored), so this keeps some tens of MiB. A document larger than this alone is
/// kept while it is used, with nothing else beside it.
pub const DOC_BYTES_CACHED_MAX: u64 = 8 << 20;

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

    /// Keeps a loaded document, dropping the least recently used others until both
    /// bounds hold with it; returns it (the copy kept before, if there was one).
    pub(crate) fn insert(&mut self, id: DocId, doc: StoredDoc) -> &mut StoredDoc {
        if !self.docs.contains_key(&id) {
            while !self.has_room_for(doc.stored_bytes()) {
                let oldest = self.docs.iter().min_by_key(|(_, (_, used))| *used).map(|(id, _)| *id);
                let Some(oldest) = oldest else { break };
                self.docs.remove(&oldest);
            }
        }
        self.uses += 1;
        let slot = self.docs.entry(id).or_insert((doc, 0));
        slot.1 = self.uses;
        &mut slot.0
    }

    /// Whether one more document of `stored_bytes` can be kept without dropping any.
    pub(crate) fn has_room_for(&self, stored_bytes: u64) -> bool {
        self.docs.len() < DOCS_CACHED_MAX
            && self.stored_bytes().saturating_add(stored_bytes) <= DOC_BYTES_CACHED_MAX
    }

    /// Bytes, as stored, of the documents kept.
    pub(crate) fn stored_bytes(&self) -> u64 {
        self.docs.values().fold(0, |sum, (doc, _)| sum.saturating_add(doc.stored_bytes()))
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

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{Automerge, ROOT};
    use care_core::TeamId;
    use care_store::{DocMeta, Store};

    use super::*;

    /// A document holding `bytes` random bytes (they do not compress), stored and loaded.
    fn stored(
        store: &mut Store,
        n: u8,
        bytes: usize,
    ) -> Result<StoredDoc, Box<dyn std::error::Error>> {
        let mut photo = vec![0; bytes];
        getrandom::fill(&mut photo)?;
        let mut genesis = Automerge::new();
        let mut tx = genesis.transaction();
        tx.put(ROOT, "photo", photo)?;
        tx.commit();
        let meta = DocMeta {
            id: DocId::from_bytes([n; 16]),
            team: TeamId::from_bytes([1; 16]),
            kind: format!("photos/{n}"),
        };
        Ok(store.create_doc(&meta, &genesis)?)
    }

    /// Documents of 3 MiB each: two fit within the bytes bound, so keeping a third drops
    /// the least recently used; one larger than the bound is kept alone.
    #[test]
    fn kept_documents_stay_within_the_bytes_bound_least_recently_used_out()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut store = Store::open(&dir.path().join("home.sqlite"))?;
        let mut cache = DocCache::default();
        let size = 3 << 20;
        let (a, b, c) = (
            stored(&mut store, 1, size)?,
            stored(&mut store, 2, size)?,
            stored(&mut store, 3, size)?,
        );
        let ids = [a.meta.id, b.meta.id, c.meta.id];
        assert!(a.stored_bytes() >= size as u64, "{} bytes stored", a.stored_bytes());
        assert!(cache.has_room_for(a.stored_bytes()));
        cache.insert(ids[0], a);
        cache.insert(ids[1], b);
        assert_eq!(cache.len(), 2);
        assert!(!cache.has_room_for(c.stored_bytes()), "a third would pass the bound");
        // The first is used again, so the second is the least recently used.
        assert!(cache.get_mut(&ids[0]).is_some());
        cache.insert(ids[2], c);
        assert!(cache.contains_key(&ids[0]) && cache.contains_key(&ids[2]));
        assert!(!cache.contains_key(&ids[1]), "the least recently used is dropped");
        assert!(cache.stored_bytes() <= DOC_BYTES_CACHED_MAX);

        let large = stored(&mut store, 4, (DOC_BYTES_CACHED_MAX + 1) as usize)?;
        let id = large.meta.id;
        cache.insert(id, large);
        assert_eq!(cache.len(), 1, "a document past the bound is kept alone");
        assert!(cache.contains_key(&id));
        Ok(())
    }
}
