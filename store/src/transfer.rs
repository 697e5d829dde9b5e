//! Whole documents in and out, as stored bytes: what a sync session sends a device that
//! has none of a document, without re-encoding it.

use automerge::Automerge;
use care_core::ids::DocId;

use crate::doc::{self, DocMeta, DocSummary, StoredDoc, sorted_heads};
use crate::error::{Doing, StoreError};
use crate::store::{Store, check_same_meta, now_ms};

/// What [`Store::import_doc`] did.
#[derive(Debug)]
pub enum Imported {
    /// The document was new here and is now stored.
    Stored(StoredDoc),
    /// A document with this id is already stored: nothing was written, and the received
    /// document is handed back for the caller to merge.
    AlreadyHeld(Automerge),
}

impl Store {
    /// A document's stored bytes (its snapshot followed by its incremental chunks, each
    /// checked against its checksum): a valid input to `Automerge::load`.
    pub fn doc_bytes(&self, id: DocId) -> Result<Option<Vec<u8>>, StoreError> {
        if doc::read_summary(self.conn(), id)?.is_none() {
            return Ok(None);
        }
        let (bytes, _) = doc::read_chunks(self.conn(), id, 0)?;
        Ok(Some(bytes))
    }

    /// Stores a document received whole: `bytes` as its only chunk and `loaded` (the
    /// caller's `Automerge::load(bytes)`) as what memory holds. A document already stored
    /// under this id is not replaced.
    pub fn import_doc(
        &mut self,
        meta: &DocMeta,
        bytes: &[u8],
        loaded: Automerge,
    ) -> Result<Imported, StoreError> {
        let doing = "storing a received document";
        let tx = self.write_tx(doing)?;
        if let Some(stored) = doc::read_summary(&tx, meta.id)? {
            check_same_meta(meta, &stored)?;
            return Ok(Imported::AlreadyHeld(loaded));
        }
        let summary = DocSummary {
            id: meta.id,
            team: meta.team,
            kind: meta.kind.clone(),
            heads: sorted_heads(&loaded),
            snapshot_bytes: bytes.len() as u64,
            incremental_bytes: 0,
            chunks: 1,
            updated_at_ms: now_ms(),
        };
        doc::insert_summary(&tx, &summary)?;
        let chunk = doc::append_chunk(&tx, meta.id, true, bytes)?;
        tx.commit().doing(doing)?;
        Ok(Imported::Stored(doc::from_import(meta.clone(), loaded, chunk)))
    }
}

#[cfg(test)]
mod tests {
    use automerge::{ROOT, ReadDoc, transaction::Transactable};
    use care_core::ids::TeamId;

    use super::*;

    #[test]
    fn stored_bytes_load_elsewhere_and_import_whole() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut a = Store::open(&dir.path().join("a.sqlite"))?;
        let mut b = Store::open(&dir.path().join("b.sqlite"))?;
        let meta = DocMeta {
            id: DocId::from_bytes([1; 16]),
            team: TeamId::from_bytes([2; 16]),
            kind: "notes".into(),
        };
        let mut doc = a.create_doc(&meta, &Automerge::new())?;
        for i in 0..5 {
            a.update_doc(&mut doc, |d| {
                d.transact(|tx| tx.put(ROOT, format!("note{i}"), "tea"))
                    .map(|_| ())
                    .map_err(|f| f.error)
            })?;
        }
        let bytes = a.doc_bytes(meta.id)?.ok_or("stored")?;
        let loaded = Automerge::load(&bytes)?;
        let Imported::Stored(imported) = b.import_doc(&meta, &bytes, loaded.clone())? else {
            return Err("a new document should be stored".into());
        };
        assert_eq!(imported.doc().get_heads(), doc.doc().get_heads());
        let again = b.import_doc(&meta, &bytes, loaded)?;
        assert!(matches!(again, Imported::AlreadyHeld(_)), "never replaces a stored document");
        let reloaded = b.load_doc(meta.id)?.ok_or("stored")?;
        assert!(reloaded.doc().get(ROOT, "note4")?.is_some());
        assert_eq!(a.doc_bytes(DocId::from_bytes([9; 16]))?, None);
        Ok(())
    }
}
