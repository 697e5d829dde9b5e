//! Compacting a document beside the writes. The slow part is a read on a connection of its
//! own ([`Store::chunks_to_compact`]), then work with no connection (loading the chunks,
//! saving a snapshot and loading it back to check it: [`ChunksToCompact::compact`]); the
//! snapshot takes the place of the chunks it was made from in one short write on the
//! connection that writes ([`Store::finish_compaction`]). Chunks written in between stay
//! after it.
//!
//! A chunk's id is never reused by SQLite (`AUTOINCREMENT`), and the snapshot takes the id
//! of the newest chunk it was made from, so that every reader still finds the snapshot
//! before the chunks written after it, and a copy loaded elsewhere that has read up to
//! that chunk or past it has nothing new to read.

use automerge::{Automerge, ChangeHash};
use care_core::ids::DocId;
use rusqlite::{Connection, params};

use crate::doc::{self, sorted_heads};
use crate::error::{Doing, StoreError};
use crate::store::{CompactReport, Store, validated_snapshot};

/// A document's chunks up to one of them, read to be compacted
/// ([`Store::chunks_to_compact`]): [`ChunksToCompact::compact`] makes the snapshot, with
/// no connection.
#[derive(Debug)]
pub struct ChunksToCompact {
    doc: DocId,
    from: ChunkSpan,
    heads: Vec<ChangeHash>,
    bytes: Vec<u8>,
}

impl ChunksToCompact {
    /// The document they are of.
    pub fn doc(&self) -> DocId {
        self.doc
    }

    /// Loads the chunks and makes their snapshot, checked to load back to their heads: the
    /// slow part of compacting, which needs no connection.
    pub fn compact(self) -> Result<Compaction, StoreError> {
        let ChunksToCompact { doc: id, from, heads, bytes } = self;
        let loaded = Automerge::load(&bytes)
            .map_err(|e| StoreError::corrupt(id, format!("its chunks do not load: {e}")))?;
        if sorted_heads(&loaded) != heads {
            return Err(StoreError::corrupt(id, "its chunks load with other heads than its row's"));
        }
        let snapshot = validated_snapshot(id, &loaded)?;
        Ok(Compaction { doc: id, from, snapshot })
    }
}

/// A snapshot of a document's chunks up to one of them, made and checked, to put in their
/// place with [`Store::finish_compaction`].
#[derive(Debug)]
pub struct Compaction {
    doc: DocId,
    /// What it was made from: the chunks up to this one.
    from: ChunkSpan,
    snapshot: Vec<u8>,
}

impl Compaction {
    /// The document it compacts.
    pub fn doc(&self) -> DocId {
        self.doc
    }

    /// Bytes of the snapshot.
    pub fn snapshot_bytes(&self) -> u64 {
        self.snapshot.len() as u64
    }
}

/// A document's chunks up to one of them: how many, their bytes, and the newest's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChunkSpan {
    chunks: u64,
    bytes: u64,
    through: i64,
}

impl Store {
    /// Reads document `id`'s chunks as stored now, with their heads, to be compacted
    /// ([`ChunksToCompact::compact`]) on any thread while this or another connection
    /// writes. `None` when there is nothing to compact: the document is not stored, is one
    /// chunk, or was received whole and is not verified yet (its check loads it first).
    pub fn chunks_to_compact(&self, id: DocId) -> Result<Option<ChunksToCompact>, StoreError> {
        let doing = "reading a document to compact";
        let tx = self.conn().unchecked_transaction().doing(doing)?;
        let Some(summary) = doc::read_summary(&tx, id)? else {
            return Ok(None);
        };
        if !summary.verified {
            return Ok(None);
        }
        let (bytes, Some(through)) = doc::read_chunks(&tx, id, 0)? else {
            return Ok(None);
        };
        let from = chunk_span(&tx, id, through)?;
        if from.chunks <= 1 {
            return Ok(None);
        }
        Ok(Some(ChunksToCompact { doc: id, from, heads: summary.heads, bytes }))
    }

    /// Puts a snapshot made by [`ChunksToCompact::compact`] in the place of the chunks it was
    /// made from, in one short write; chunks written since stay after it. `None`, with
    /// nothing written, when those chunks are no longer the ones it was made from (the
    /// document was compacted or discarded meanwhile).
    ///
    /// Writes made while the snapshot was being made may have taken the chunks after it
    /// past the compaction rule again, and asked while this compaction was under way: on a
    /// connection that leaves compaction to another ([`Store::leave_compaction`]), the
    /// document is then asked for again.
    pub fn finish_compaction(
        &mut self,
        compaction: Compaction,
    ) -> Result<Option<CompactReport>, StoreError> {
        let id = compaction.doc;
        let finished = self.put_in_place(compaction)?;
        if let Some(summary) = doc::read_summary(self.conn(), id)?
            && summary.incremental_bytes > self.compaction_rule(&summary)
        {
            self.ask_compaction(id);
        }
        Ok(finished)
    }

    fn put_in_place(
        &mut self,
        compaction: Compaction,
    ) -> Result<Option<CompactReport>, StoreError> {
        let doing = "compacting a document";
        let Compaction { doc: id, from, snapshot } = compaction;
        let tx = self.write_tx(doing)?;
        let Some(mut summary) = doc::read_summary(&tx, id)? else {
            return Ok(None);
        };
        if chunk_span(&tx, id, from.through)? != from {
            return Ok(None);
        }
        let before_bytes = summary.stored_bytes();
        doc::replace_chunks_through(&tx, id, from.through, &snapshot)?;
        let after = chunks_after(&tx, id, from.through)?;
        summary.snapshot_bytes = snapshot.len() as u64;
        summary.incremental_bytes = after.bytes;
        summary.chunks = 1 + after.chunks;
        doc::update_summary(&tx, &summary)?;
        tx.commit().doing(doing)?;
        Ok(Some(CompactReport { before_bytes, after_bytes: summary.stored_bytes() }))
    }
}

/// The chunks of `id` up to chunk `through`. Only their lengths are read, not their bytes.
fn chunk_span(conn: &Connection, id: DocId, through: i64) -> Result<ChunkSpan, StoreError> {
    let (chunks, bytes, newest): (i64, i64, i64) = conn
        .prepare_cached(
            "SELECT count(*), coalesce(sum(length(data)), 0), coalesce(max(id), 0)
             FROM chunks WHERE doc = ?1 AND id <= ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![id.as_bytes(), through], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
        })
        .doing("reading a document's chunks")?;
    Ok(ChunkSpan {
        chunks: u64::try_from(chunks).unwrap_or(0),
        bytes: u64::try_from(bytes).unwrap_or(0),
        through: newest,
    })
}

/// How many chunks of `id` come after chunk `through`, and their bytes.
fn chunks_after(conn: &Connection, id: DocId, through: i64) -> Result<ChunkSpan, StoreError> {
    let (chunks, bytes): (i64, i64) = conn
        .prepare_cached(
            "SELECT count(*), coalesce(sum(length(data)), 0) FROM chunks
             WHERE doc = ?1 AND id > ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![id.as_bytes(), through], |row| Ok((row.get(0)?, row.get(1)?)))
        })
        .doing("reading a document's chunks")?;
    Ok(ChunkSpan {
        chunks: u64::try_from(chunks).unwrap_or(0),
        bytes: u64::try_from(bytes).unwrap_or(0),
        through,
    })
}
