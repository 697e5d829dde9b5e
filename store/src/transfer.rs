//! Whole documents in and out, as stored bytes: what a sync session sends a device that
//! has none of a document, and what that device stores, neither side re-encoding it.
//!
//! A device catching up on a year of history receives every document whole and stores it
//! as received, without loading it: loading is what costs (Automerge rebuilds every
//! operation), and most of that history is not read soon. Such a document is marked
//! unverified; the first load checks that it adds up to the heads it was stored with, and
//! the caller checks who wrote it before using it.

use automerge::{Automerge, ChangeHash};
use care_core::ids::DocId;
use rusqlite::params;

use crate::doc::{self, DocMeta, DocSummary, StoredDoc, StoredSignature};
use crate::error::{Doing, StoreError};
use crate::store::{Store, check_same_meta, now_ms};

/// What [`Store::import_doc`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// The document was new here and is now stored, unverified.
    Stored,
    /// A document with this id is already stored: nothing was written, and the received
    /// bytes are for the caller to merge into it.
    AlreadyHeld,
    /// Not every piece of the document is written ([`Store::import_pieces`]): nothing is
    /// stored, and the pieces that were are dropped.
    PiecesMissing,
}

/// The row of a document received whole, stored unverified: `len` bytes in `chunks`.
fn received(meta: &DocMeta, heads: &[ChangeHash], len: u64, chunks: u64) -> DocSummary {
    let mut heads = heads.to_vec();
    heads.sort();
    DocSummary {
        id: meta.id,
        team: meta.team,
        kind: meta.kind.clone(),
        heads,
        snapshot_bytes: len,
        incremental_bytes: 0,
        chunks,
        updated_at_ms: now_ms(),
        verified: false,
    }
}

/// Drops the pieces written of `id`, a document received whole, if it is not stored.
pub(crate) fn drop_pieces(conn: &rusqlite::Connection, id: DocId) -> Result<(), StoreError> {
    let doing = "dropping the pieces of a received document";
    let arriving =
        conn.execute("DELETE FROM arriving WHERE doc = ?1", params![id.as_bytes()]).doing(doing)?;
    if arriving > 0 {
        conn.execute(
            "DELETE FROM chunks WHERE doc = ?1 AND doc NOT IN (SELECT id FROM docs)",
            params![id.as_bytes()],
        )
        .doing(doing)?;
    }
    Ok(())
}

impl Store {
    /// A document's stored bytes (its snapshot followed by its incremental chunks, each
    /// checked against its checksum): a valid input to `Automerge::load`.
    pub fn doc_bytes(&self, id: DocId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.doc_bytes_with_chunk(id)?.map(|(bytes, _)| bytes))
    }

    /// A document's stored bytes as [`Store::doc_bytes`] reads them, with the number of
    /// the newest chunk among them: what [`Store::adopt_loaded`] takes with a copy loaded
    /// from those bytes elsewhere.
    pub fn doc_bytes_with_chunk(&self, id: DocId) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        let tx = self.conn().unchecked_transaction().doing("reading a document")?;
        if doc::read_summary(&tx, id)?.is_none() {
            return Ok(None);
        }
        let (bytes, last_chunk) = doc::read_chunks(&tx, id, 0)?;
        Ok(Some((bytes, last_chunk.unwrap_or(0))))
    }

    /// The newest chunk of a stored document (what [`Store::adopt_loaded`] takes with a
    /// copy loaded from its chunks up to it), or `None` when not stored.
    pub fn last_chunk(&self, id: DocId) -> Result<Option<i64>, StoreError> {
        let doing = "reading a document's newest chunk";
        let tx = self.conn().unchecked_transaction().doing(doing)?;
        if doc::read_summary(&tx, id)?.is_none() {
            return Ok(None);
        }
        tx.query_row("SELECT max(id) FROM chunks WHERE doc = ?1", params![id.as_bytes()], |row| {
            row.get::<_, Option<i64>>(0)
        })
        .map(|last| Some(last.unwrap_or(0)))
        .doing(doing)
    }

    /// Takes a copy of document `id` loaded elsewhere (by a thread checking it) from the
    /// bytes [`Store::doc_bytes_with_chunk`] read up to chunk `last_chunk`, as a loaded
    /// copy of this store's: chunks written since are applied, and its heads checked
    /// against the stored row, as [`Store::load_doc`] would. `None` if the document is no
    /// longer stored.
    pub fn adopt_loaded(
        &self,
        id: DocId,
        doc: Automerge,
        last_chunk: i64,
    ) -> Result<Option<StoredDoc>, StoreError> {
        let tx = self.conn().unchecked_transaction().doing("taking a loaded document")?;
        doc::adopt(&tx, id, doc, last_chunk)
    }

    /// Stores a document received whole, as its only chunk, without loading it, with the
    /// `signatures` of its changes that came with it: `heads` are the heads the bytes say
    /// they hold. The document is unverified until
    /// [`Store::load_doc`] first loads it (which fails if the bytes do not load to `heads`)
    /// and the caller, having checked its authors, calls [`Store::set_verified`]. A
    /// document already stored under this id is not replaced.
    pub fn import_doc(
        &mut self,
        meta: &DocMeta,
        bytes: &[u8],
        heads: &[ChangeHash],
        signatures: &[StoredSignature],
    ) -> Result<Imported, StoreError> {
        let doing = "storing a received document";
        let tx = self.write_tx(doing)?;
        if let Some(stored) = doc::read_summary(&tx, meta.id)? {
            check_same_meta(meta, &stored)?;
            return Ok(Imported::AlreadyHeld);
        }
        drop_pieces(&tx, meta.id)?;
        doc::insert_summary(&tx, &received(meta, heads, bytes.len() as u64, 1))?;
        doc::append_chunk(&tx, meta.id, true, bytes)?;
        doc::insert_signatures(&tx, meta.id, signatures)?;
        tx.commit().doing(doing)?;
        Ok(Imported::Stored)
    }

    /// Writes the next piece of a document received whole, for
    /// [`Store::import_pieces`] to store once every piece is written: a large document
    /// goes in one short transaction per piece, so that other writes are not held up
    /// behind it. Until then the pieces are no part of any document, and they are
    /// dropped when another write first stores the document, or by
    /// [`Store::drop_unfinished_pieces`]. Returns `false`, writing nothing, when the
    /// document is held already.
    ///
    /// A piece's transaction is not synced to disk on its own (`synchronous=NORMAL` for
    /// it: the write-ahead log keeps the file whole either way). A piece is worth nothing
    /// until [`Store::import_pieces`] stores the document, and that transaction's sync
    /// carries every piece written before it; a piece lost to a power cut is found
    /// missing there, or dropped at the next start. So a 50 MiB document costs the disk
    /// one sync, not hundreds (a write synced meanwhile carries the pieces before it).
    pub fn add_piece(&mut self, id: DocId, piece: &[u8]) -> Result<bool, StoreError> {
        let doing = "storing a piece of a received document";
        self.conn().pragma_update(None, "synchronous", "NORMAL").doing(doing)?;
        let added = self.write_piece(id, piece, doing);
        let synced = self.conn().pragma_update(None, "synchronous", "FULL");
        let added = added?;
        synced.doing("setting synchronous writes")?;
        Ok(added)
    }

    fn write_piece(
        &mut self,
        id: DocId,
        piece: &[u8],
        doing: &'static str,
    ) -> Result<bool, StoreError> {
        let tx = self.write_tx(doing)?;
        if doc::read_summary(&tx, id)?.is_some() {
            return Ok(false);
        }
        tx.prepare_cached(
            "INSERT INTO arriving (doc, bytes) VALUES (?1, ?2)
             ON CONFLICT (doc) DO UPDATE SET bytes = bytes + excluded.bytes",
        )
        .and_then(|mut stmt| stmt.execute(params![id.as_bytes(), piece.len() as i64]))
        .doing(doing)?;
        doc::append_chunk(&tx, id, true, piece)?;
        tx.commit().doing(doing)?;
        Ok(true)
    }

    /// Stores a document whose bytes ([`Store::add_piece`]) are all written, as
    /// [`Store::import_doc`] does: `len` is how many bytes it has. Returns
    /// [`Imported::AlreadyHeld`] if the document was stored meanwhile (its pieces are then
    /// gone), and [`Imported::PiecesMissing`] if fewer than `len` bytes are written (a
    /// write stored it and then dropped it, say), with what was written dropped.
    pub fn import_pieces(
        &mut self,
        meta: &DocMeta,
        len: u64,
        heads: &[ChangeHash],
        signatures: &[StoredSignature],
    ) -> Result<Imported, StoreError> {
        let doing = "storing a received document";
        let tx = self.write_tx(doing)?;
        if let Some(stored) = doc::read_summary(&tx, meta.id)? {
            check_same_meta(meta, &stored)?;
            return Ok(Imported::AlreadyHeld);
        }
        let (written, chunks): (i64, i64) = tx
            .query_row(
                "SELECT coalesce((SELECT bytes FROM arriving WHERE doc = ?1), 0),
                 (SELECT count(*) FROM chunks WHERE doc = ?1)",
                params![meta.id.as_bytes()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .doing(doing)?;
        if u64::try_from(written).ok() != Some(len) {
            drop_pieces(&tx, meta.id)?;
            tx.commit().doing(doing)?;
            return Ok(Imported::PiecesMissing);
        }
        let chunks = u64::try_from(chunks).unwrap_or(0);
        doc::insert_summary(&tx, &received(meta, heads, len, chunks))?;
        doc::insert_signatures(&tx, meta.id, signatures)?;
        tx.execute("DELETE FROM arriving WHERE doc = ?1", params![meta.id.as_bytes()])
            .doing(doing)?;
        tx.commit().doing(doing)?;
        Ok(Imported::Stored)
    }

    /// Drops the pieces written of a document received whole (none if it is stored).
    pub fn drop_pieces(&mut self, id: DocId) -> Result<(), StoreError> {
        let doing = "dropping the pieces of a received document";
        let tx = self.write_tx(doing)?;
        drop_pieces(&tx, id)?;
        tx.commit().doing(doing)
    }

    /// Drops the pieces of every document received whole and not yet stored: a device
    /// that stopped while writing one fetches it again. Returns how many there were.
    pub fn drop_unfinished_pieces(&mut self) -> Result<usize, StoreError> {
        let doing = "dropping the pieces of documents received whole";
        let none: bool = self
            .conn()
            .query_row("SELECT NOT EXISTS (SELECT 1 FROM arriving)", [], |row| row.get(0))
            .doing(doing)?;
        if none {
            return Ok(0);
        }
        let tx = self.write_tx(doing)?;
        let docs: Vec<Vec<u8>> = {
            let mut stmt = tx.prepare("SELECT doc FROM arriving").doing(doing)?;
            let rows = stmt.query_map([], |row| row.get(0)).doing(doing)?;
            rows.collect::<Result<_, _>>().doing(doing)?
        };
        for doc in &docs {
            tx.execute(
                "DELETE FROM chunks WHERE doc = ?1 AND doc NOT IN (SELECT id FROM docs)",
                params![doc],
            )
            .doing(doing)?;
        }
        tx.execute("DELETE FROM arriving", []).doing(doing)?;
        tx.commit().doing(doing)?;
        Ok(docs.len())
    }

    /// Records that a received document has been loaded and its authors checked.
    pub fn set_verified(&mut self, id: DocId) -> Result<(), StoreError> {
        self.conn()
            .prepare_cached("UPDATE docs SET verified = 1 WHERE id = ?1")
            .and_then(|mut stmt| stmt.execute([id.as_bytes()]))
            .doing("recording that a document was verified")?;
        Ok(())
    }

    /// Deletes a document that was received whole and failed verification, with its
    /// chunks and sync states. Refuses a verified document: this never drops anything
    /// this device wrote or accepted.
    pub fn discard_unverified(&mut self, id: DocId) -> Result<bool, StoreError> {
        let doing = "discarding a received document";
        let tx = self.write_tx(doing)?;
        match doc::read_summary(&tx, id) {
            Ok(Some(summary)) if summary.verified => return Ok(false),
            Ok(None) => return Ok(false),
            // A row too damaged to read is not known to be unverified.
            Err(e) => return Err(e),
            Ok(Some(_)) => {}
        }
        for sql in [
            "DELETE FROM chunks WHERE doc = ?1",
            "DELETE FROM signatures WHERE doc = ?1",
            "DELETE FROM sync_states WHERE doc = ?1",
            "DELETE FROM docs WHERE id = ?1",
        ] {
            tx.execute(sql, params![id.as_bytes()]).doing(doing)?;
        }
        tx.commit().doing(doing)?;
        Ok(true)
    }

    /// Whether the document is stored and unverified (received whole, never loaded).
    pub fn is_unverified(&self, id: DocId) -> Result<bool, StoreError> {
        Ok(doc::read_summary(self.conn(), id)?.is_some_and(|s| !s.verified))
    }
}

#[cfg(test)]
mod tests {
    use automerge::{Automerge, ROOT, ReadDoc, transaction::Transactable};
    use care_core::ids::TeamId;

    use super::*;

    fn meta() -> DocMeta {
        DocMeta {
            id: DocId::from_bytes([1; 16]),
            team: TeamId::from_bytes([2; 16]),
            kind: "notes".into(),
        }
    }

    #[test]
    fn a_copy_loaded_elsewhere_is_taken_with_what_was_written_since()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.sqlite");
        let (mut a, other) = (Store::open(&path)?, Store::open(&path)?);
        let meta = meta();
        let note = |i: usize| {
            move |d: &mut Automerge| {
                d.transact(|tx| tx.put(ROOT, format!("note{i}"), "tea"))
                    .map(|_| ())
                    .map_err(|f| f.error)
            }
        };
        let mut doc = a.create_doc(&meta, &Automerge::new())?;
        a.update_doc(&mut doc, note(0))?;
        // Read (as a checking thread would) on another connection, then a note written.
        let (bytes, last_chunk) = other.doc_bytes_with_chunk(meta.id)?.ok_or("stored")?;
        a.update_doc(&mut doc, note(1))?;
        let loaded = Automerge::load(&bytes)?;
        assert!(loaded.get(ROOT, "note1")?.is_none(), "read before the second note");
        let taken = a.adopt_loaded(meta.id, loaded, last_chunk)?.ok_or("stored")?;
        assert!(taken.doc().get(ROOT, "note1")?.is_some(), "the second note applied");
        assert_eq!(taken.saved_heads(), doc.saved_heads());

        // A copy of a document no longer stored is not taken.
        let gone = DocId::from_bytes([9; 16]);
        assert!(a.adopt_loaded(gone, Automerge::load(&bytes)?, last_chunk)?.is_none());
        Ok(())
    }

    #[test]
    fn stored_bytes_import_whole_unverified_and_load_elsewhere()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut a = Store::open(&dir.path().join("a.sqlite"))?;
        let mut b = Store::open(&dir.path().join("b.sqlite"))?;
        let meta = meta();
        let mut doc = a.create_doc(&meta, &Automerge::new())?;
        for i in 0..5 {
            a.update_doc(&mut doc, |d| {
                d.transact(|tx| tx.put(ROOT, format!("note{i}"), "tea"))
                    .map(|_| ())
                    .map_err(|f| f.error)
            })?;
        }
        let bytes = a.doc_bytes(meta.id)?.ok_or("stored")?;
        let heads = doc.doc().get_heads();
        assert_eq!(b.import_doc(&meta, &bytes, &heads, &[])?, Imported::Stored);
        assert_eq!(b.import_doc(&meta, &bytes, &heads, &[])?, Imported::AlreadyHeld);
        assert!(b.is_unverified(meta.id)?);
        assert_eq!(b.docs(None)?[0].heads, doc.saved_heads(), "heads known without a load");

        let loaded = b.load_doc(meta.id)?.ok_or("stored")?;
        assert!(!loaded.verified());
        assert!(loaded.doc().get(ROOT, "note4")?.is_some());
        b.set_verified(meta.id)?;
        assert!(b.load_doc(meta.id)?.ok_or("stored")?.verified());
        assert!(!b.discard_unverified(meta.id)?, "a verified document is never discarded");
        assert!(!a.is_unverified(meta.id)?, "a document written here is verified");
        assert_eq!(a.doc_bytes(DocId::from_bytes([9; 16]))?, None);
        Ok(())
    }

    #[test]
    fn bytes_that_do_not_hold_their_heads_fail_to_load_and_can_be_discarded()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut store = Store::open(&dir.path().join("a.sqlite"))?;
        let meta = meta();
        let mut doc = Automerge::new();
        doc.transact(|tx| tx.put(ROOT, "note", "tea")).map_err(|f| f.error)?;
        let other_heads = {
            let mut other = Automerge::new();
            other.transact(|tx| tx.put(ROOT, "note", "coffee")).map_err(|f| f.error)?;
            other.get_heads()
        };
        store.import_doc(&meta, &doc.save(), &other_heads, &[])?;
        let err = store.load_doc(meta.id).expect_err("the heads do not match the bytes");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(store.discard_unverified(meta.id)?);
        assert!(store.load_doc(meta.id)?.is_none());
        assert!(store.docs(None)?.is_empty());
        Ok(())
    }
}
