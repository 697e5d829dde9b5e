//! A document as stored: its Automerge state in memory, and the cursor that says how much
//! of it is already on disk. Also the rows that hold documents (`docs`, `chunks`).

use std::collections::HashMap;

use automerge::{Automerge, ChangeHash};
use care_core::ids::{DocId, TeamId};
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Doing, StoreError};

/// Bytes of one change hash; the `heads` column is a concatenation of them.
const HEAD_BYTES: usize = 32;

/// The signature of one change of a document, as the store keeps it: opaque bytes of the
/// signature and of what it was made in the context of (shared by many changes, and kept
/// once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSignature {
    /// The change.
    pub hash: ChangeHash,
    /// What the signature was made in the context of.
    pub context: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
}

/// What identifies a document: its id, its team, and its kind. The store does not read
/// the document's contents; `kind` is an opaque label chosen by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocMeta {
    /// The document.
    pub id: DocId,
    /// The team it belongs to.
    pub team: TeamId,
    /// What kind of document it is (for listing; the store does not interpret it).
    pub kind: String,
}

/// A row of the document list: enough to show and sync documents without loading them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocSummary {
    /// The document.
    pub id: DocId,
    /// The team it belongs to.
    pub team: TeamId,
    /// Its kind.
    pub kind: String,
    /// Its heads as stored, sorted.
    pub heads: Vec<ChangeHash>,
    /// Bytes of its snapshot chunk.
    pub snapshot_bytes: u64,
    /// Bytes of its incremental chunks written since the last snapshot.
    pub incremental_bytes: u64,
    /// How many chunk rows hold it.
    pub chunks: u64,
    /// When it was last written, in milliseconds since the Unix epoch (this device's clock).
    pub updated_at_ms: i64,
    /// False for a document received whole from a peer and stored as received, until it
    /// is first loaded: until then neither its authors nor its heads have been verified
    /// here (see [`Store::import_doc`](crate::Store::import_doc)).
    pub verified: bool,
}

impl DocSummary {
    /// Bytes of all its chunks: the snapshot and the incremental chunks since.
    pub fn stored_bytes(&self) -> u64 {
        self.snapshot_bytes.saturating_add(self.incremental_bytes)
    }
}

/// A document loaded from the store. Change it only through
/// [`Store::update_doc`](crate::Store::update_doc), so that memory never holds changes
/// that are not on disk.
#[derive(Debug)]
pub struct StoredDoc {
    /// Which document this is.
    pub meta: DocMeta,
    doc: Automerge,
    saved_heads: Vec<ChangeHash>,
    last_chunk: i64,
    verified: bool,
    /// Bytes of its chunks in the store, as of when this copy last read its row.
    stored_bytes: u64,
}

impl StoredDoc {
    /// The document's current state, all of it stored.
    pub fn doc(&self) -> &Automerge {
        &self.doc
    }

    /// The heads that are on disk, sorted; equal to the document's heads.
    pub fn saved_heads(&self) -> &[ChangeHash] {
        &self.saved_heads
    }

    /// Bytes of the document's chunks in the store, as of when this copy was loaded or
    /// last caught up with the store (before its latest write here): what a cache of
    /// loaded documents weighs them by. A loaded document takes a few times its stored
    /// bytes in memory (about seven for a month of notes).
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// The id of the newest chunk row this copy has read.
    pub fn last_chunk(&self) -> i64 {
        self.last_chunk
    }

    /// Whether the document was verified when it was stored or loaded before. An
    /// unverified document was received whole and has just been loaded for the first
    /// time: it loads to the heads recorded for it, but who wrote its changes is for the
    /// caller to check before using it ([`Store::set_verified`](crate::Store::set_verified)
    /// then records the result).
    pub fn verified(&self) -> bool {
        self.verified
    }
}

/// The document's heads, sorted, as the `heads` column stores them.
pub(crate) fn sorted_heads(doc: &Automerge) -> Vec<ChangeHash> {
    let mut heads = doc.get_heads();
    heads.sort();
    heads
}

/// Mutable access for the store, which alone keeps memory and disk in step.
pub(crate) fn automerge_mut(doc: &mut StoredDoc) -> &mut Automerge {
    &mut doc.doc
}

/// Records that everything up to the current heads is on disk, up to chunk `last_chunk`.
pub(crate) fn mark_saved(doc: &mut StoredDoc, last_chunk: Option<i64>) {
    doc.saved_heads = sorted_heads(&doc.doc);
    if let Some(last) = last_chunk {
        doc.last_chunk = doc.last_chunk.max(last);
    }
}

/// Bytes of the changes not yet on disk; empty when there are none.
pub(crate) fn unsaved_bytes(doc: &StoredDoc) -> Vec<u8> {
    doc.doc.save_after(&doc.saved_heads)
}

/// Reads and validates a whole document: every chunk's checksum, the load, and the heads.
pub(crate) fn load(conn: &Connection, id: DocId) -> Result<Option<StoredDoc>, StoreError> {
    let Some(summary) = read_summary(conn, id)? else {
        return Ok(None);
    };
    let (bytes, last_chunk) = read_chunks(conn, id, 0)?;
    let doc = if bytes.is_empty() {
        Automerge::new()
    } else {
        Automerge::load(&bytes)
            .map_err(|e| StoreError::corrupt(id, format!("its chunks do not load: {e}")))?
    };
    let stored = StoredDoc {
        meta: DocMeta { id, team: summary.team, kind: summary.kind.clone() },
        doc,
        saved_heads: summary.heads.clone(),
        last_chunk: last_chunk.unwrap_or(0),
        verified: summary.verified,
        stored_bytes: summary.stored_bytes(),
    };
    check_heads(&stored, &summary)?;
    Ok(Some(stored))
}

/// A copy of document `id` loaded elsewhere from its chunks up to `last_chunk`, taken as
/// this connection's loaded copy: chunks written since are applied and the heads checked
/// against the stored row, as for a copy loaded here. `None` if it is no longer stored.
pub(crate) fn adopt(
    conn: &Connection,
    id: DocId,
    doc: Automerge,
    last_chunk: i64,
) -> Result<Option<StoredDoc>, StoreError> {
    let Some(summary) = read_summary(conn, id)? else {
        return Ok(None);
    };
    let mut stored = StoredDoc {
        meta: DocMeta { id, team: summary.team, kind: summary.kind.clone() },
        saved_heads: sorted_heads(&doc),
        doc,
        last_chunk,
        verified: summary.verified,
        stored_bytes: summary.stored_bytes(),
    };
    catch_up(conn, &mut stored)?;
    Ok(Some(stored))
}

/// Applies chunks written since `doc.last_chunk` by other connections, and checks that
/// memory then matches the stored heads. Returns the stored row and whether anything changed.
pub(crate) fn catch_up(
    conn: &Connection,
    doc: &mut StoredDoc,
) -> Result<(DocSummary, bool), StoreError> {
    let id = doc.meta.id;
    let summary = read_summary(conn, id)?.ok_or(StoreError::UnknownDoc(id))?;
    let (bytes, last_chunk) = read_chunks(conn, id, doc.last_chunk)?;
    let before = sorted_heads(&doc.doc);
    if !bytes.is_empty() {
        doc.doc
            .load_incremental(&bytes)
            .map_err(|e| StoreError::corrupt(id, format!("its new chunks do not load: {e}")))?;
    }
    mark_saved(doc, last_chunk);
    check_heads(doc, &summary)?;
    doc.stored_bytes = summary.stored_bytes();
    let changed = doc.saved_heads != before;
    Ok((summary, changed))
}

/// Reads one document's row.
pub(crate) fn read_summary(conn: &Connection, id: DocId) -> Result<Option<DocSummary>, StoreError> {
    let doing = "reading a document's row";
    let mut stmt = conn.prepare_cached(&format!("{SUMMARY_SELECT} WHERE id = ?1")).doing(doing)?;
    let raw = stmt.query_row([id.as_bytes()], RawSummary::from_row).optional().doing(doing)?;
    raw.map(RawSummary::parse).transpose()
}

/// Reads every document's row, or one team's, in one query.
pub(crate) fn read_summaries(
    conn: &Connection,
    team: Option<TeamId>,
) -> Result<Vec<DocSummary>, StoreError> {
    let doing = "listing documents";
    let raws = match team {
        Some(team) => {
            let sql = format!("{SUMMARY_SELECT} WHERE team = ?1 ORDER BY id");
            let mut stmt = conn.prepare_cached(&sql).doing(doing)?;
            let rows = stmt.query_map([team.as_bytes()], RawSummary::from_row).doing(doing)?;
            rows.collect::<Result<Vec<_>, _>>().doing(doing)?
        }
        None => {
            let sql = format!("{SUMMARY_SELECT} ORDER BY team, id");
            let mut stmt = conn.prepare_cached(&sql).doing(doing)?;
            let rows = stmt.query_map([], RawSummary::from_row).doing(doing)?;
            rows.collect::<Result<Vec<_>, _>>().doing(doing)?
        }
    };
    raws.into_iter().map(RawSummary::parse).collect()
}

/// Inserts a new document's row.
pub(crate) fn insert_summary(conn: &Connection, s: &DocSummary) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO docs (id, team, kind, heads, snapshot_bytes, incremental_bytes, chunks,
         updated_at_ms, verified) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            s.id.as_bytes(),
            s.team.as_bytes(),
            s.kind,
            heads_bytes(&s.heads),
            to_i64(s.snapshot_bytes),
            to_i64(s.incremental_bytes),
            to_i64(s.chunks),
            s.updated_at_ms,
            s.verified,
        ])
    })
    .doing("adding a document")?;
    Ok(())
}

/// Updates a document's heads and counters.
pub(crate) fn update_summary(conn: &Connection, s: &DocSummary) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE docs SET heads = ?2, snapshot_bytes = ?3, incremental_bytes = ?4, chunks = ?5,
         updated_at_ms = ?6 WHERE id = ?1",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            s.id.as_bytes(),
            heads_bytes(&s.heads),
            to_i64(s.snapshot_bytes),
            to_i64(s.incremental_bytes),
            to_i64(s.chunks),
            s.updated_at_ms,
        ])
    })
    .doing("saving a document's row")?;
    Ok(())
}

/// Appends a chunk row and returns its id.
pub(crate) fn append_chunk(
    conn: &Connection,
    id: DocId,
    is_snapshot: bool,
    data: &[u8],
) -> Result<i64, StoreError> {
    let checksum = blake3::hash(data);
    conn.prepare_cached(
        "INSERT INTO chunks (doc, is_snapshot, data, checksum) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![id.as_bytes(), is_snapshot, data, checksum.as_bytes()])
    })
    .doing("saving a change")?;
    Ok(conn.last_insert_rowid())
}

/// Replaces all of a document's chunks by one snapshot; returns the snapshot's chunk id.
pub(crate) fn replace_with_snapshot(
    conn: &Connection,
    id: DocId,
    snapshot: &[u8],
) -> Result<i64, StoreError> {
    conn.execute("DELETE FROM chunks WHERE doc = ?1", [id.as_bytes()])
        .doing("compacting a document")?;
    append_chunk(conn, id, true, snapshot)
}

/// Replaces a document's chunks up to chunk `through` by one snapshot, which takes that
/// chunk's id: it is read before the chunks after it, as they were.
pub(crate) fn replace_chunks_through(
    conn: &Connection,
    id: DocId,
    through: i64,
    snapshot: &[u8],
) -> Result<(), StoreError> {
    let doing = "compacting a document";
    conn.prepare_cached("DELETE FROM chunks WHERE doc = ?1 AND id <= ?2")
        .and_then(|mut stmt| stmt.execute(params![id.as_bytes(), through]))
        .doing(doing)?;
    let checksum = blake3::hash(snapshot);
    conn.prepare_cached(
        "INSERT INTO chunks (id, doc, is_snapshot, data, checksum) VALUES (?1, ?2, 1, ?3, ?4)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![through, id.as_bytes(), snapshot, checksum.as_bytes()])
    })
    .doing(doing)?;
    Ok(())
}

/// A document's chunks after a given one, in order.
pub(crate) const CHUNKS_AFTER: &str =
    "SELECT id, data, checksum FROM chunks WHERE doc = ?1 AND id > ?2 ORDER BY id";

/// Concatenates the chunks with id above `after`, checking each checksum. Returns the
/// bytes and the last chunk id read (`None` when there were none).
pub(crate) fn read_chunks(
    conn: &Connection,
    id: DocId,
    after: i64,
) -> Result<(Vec<u8>, Option<i64>), StoreError> {
    let doing = "reading a document's chunks";
    let mut stmt = conn.prepare_cached(CHUNKS_AFTER).doing(doing)?;
    let mut rows = stmt.query(params![id.as_bytes(), after]).doing(doing)?;
    let (mut bytes, mut last) = (Vec::new(), None);
    while let Some(row) = rows.next().doing(doing)? {
        let chunk: i64 = row.get(0).doing(doing)?;
        let data = row.get_ref(1).doing(doing)?.as_blob().ok();
        let checksum = row.get_ref(2).doing(doing)?.as_blob().ok();
        match (data, checksum) {
            (Some(data), Some(sum)) if blake3::hash(data).as_bytes().as_slice() == sum => {
                bytes.extend_from_slice(data);
            }
            _ => {
                return Err(StoreError::corrupt(id, format!("chunk {chunk} fails its checksum")));
            }
        }
        last = Some(chunk);
    }
    Ok((bytes, last))
}

/// Stores change signatures of a document, received now (one already held for a change is
/// kept, with the time it first came).
pub(crate) fn insert_signatures(
    conn: &Connection,
    id: DocId,
    signatures: &[StoredSignature],
) -> Result<(), StoreError> {
    let doing = "saving change signatures";
    let now = crate::store::now_ms();
    let mut contexts: HashMap<&[u8], i64> = HashMap::new();
    let mut add_context = conn
        .prepare_cached("INSERT OR IGNORE INTO signature_contexts (bytes) VALUES (?1)")
        .doing(doing)?;
    let mut find_context =
        conn.prepare_cached("SELECT id FROM signature_contexts WHERE bytes = ?1").doing(doing)?;
    let mut insert = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO signatures (doc, hash, context, signature, received_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .doing(doing)?;
    for sig in signatures {
        let context = match contexts.get(sig.context.as_slice()) {
            Some(context) => *context,
            None => {
                add_context.execute([&sig.context]).doing(doing)?;
                let context: i64 =
                    find_context.query_row([&sig.context], |r| r.get(0)).doing(doing)?;
                contexts.insert(&sig.context, context);
                context
            }
        };
        let (hash, signature) = (sig.hash.0.as_slice(), &sig.signature);
        insert.execute(params![id.as_bytes(), hash, context, signature, now]).doing(doing)?;
    }
    Ok(())
}

/// Reads the signatures of a document's changes: of `hashes` (those held), or all.
pub(crate) fn read_signatures(
    conn: &Connection,
    id: DocId,
    hashes: Option<&[ChangeHash]>,
) -> Result<Vec<StoredSignature>, StoreError> {
    let doing = "reading change signatures";
    let row = |r: &rusqlite::Row<'_>| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?))
    };
    let parse = |(hash, context, signature): (Vec<u8>, Vec<u8>, Vec<u8>)| {
        let hash = ChangeHash::try_from(hash.as_slice())
            .map_err(|_| StoreError::corrupt(id, "a signature's change hash is not 32 bytes"))?;
        Ok(StoredSignature { hash, context, signature })
    };
    const SELECT: &str = "SELECT s.hash, c.bytes, s.signature FROM signatures s
        JOIN signature_contexts c ON c.id = s.context WHERE s.doc = ?1";
    let mut out = Vec::new();
    match hashes {
        None => {
            let mut stmt = conn.prepare_cached(SELECT).doing(doing)?;
            for found in stmt.query_map([id.as_bytes()], row).doing(doing)? {
                out.push(parse(found.doing(doing)?)?);
            }
        }
        Some(hashes) => {
            let mut stmt =
                conn.prepare_cached(&format!("{SELECT} AND s.hash = ?2")).doing(doing)?;
            for hash in hashes {
                let found =
                    stmt.query_row(params![id.as_bytes(), hash.0.as_slice()], row).optional();
                if let Some(found) = found.doing(doing)? {
                    out.push(parse(found)?);
                }
            }
        }
    }
    Ok(out)
}

/// When this device first stored each change of a document that has a signature.
pub(crate) fn received_times(
    conn: &Connection,
    id: DocId,
) -> Result<Vec<(ChangeHash, i64)>, StoreError> {
    let doing = "reading when changes arrived";
    let mut stmt = conn
        .prepare_cached("SELECT hash, received_at_ms FROM signatures WHERE doc = ?1")
        .doing(doing)?;
    let rows = stmt
        .query_map([id.as_bytes()], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))
        .doing(doing)?;
    let mut out = Vec::new();
    for row in rows {
        let (hash, at) = row.doing(doing)?;
        let hash = ChangeHash::try_from(hash.as_slice())
            .map_err(|_| StoreError::corrupt(id, "a signature's change hash is not 32 bytes"))?;
        out.push((hash, at));
    }
    Ok(out)
}

/// Fails unless the in-memory heads equal the stored heads.
fn check_heads(doc: &StoredDoc, summary: &DocSummary) -> Result<(), StoreError> {
    if sorted_heads(&doc.doc) == summary.heads {
        return Ok(());
    }
    Err(StoreError::corrupt(
        doc.meta.id,
        "its chunks do not add up to the heads recorded for it (a chunk is missing)",
    ))
}

const SUMMARY_SELECT: &str = "SELECT id, team, kind, heads, snapshot_bytes, incremental_bytes,
    chunks, updated_at_ms, verified FROM docs";

/// A `docs` row as SQLite returns it, before validation.
struct RawSummary {
    id: Vec<u8>,
    team: Vec<u8>,
    kind: String,
    heads: Vec<u8>,
    counters: [i64; 3],
    updated_at_ms: i64,
    verified: bool,
}

impl RawSummary {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawSummary> {
        Ok(RawSummary {
            id: row.get(0)?,
            team: row.get(1)?,
            kind: row.get(2)?,
            heads: row.get(3)?,
            counters: [row.get(4)?, row.get(5)?, row.get(6)?],
            updated_at_ms: row.get(7)?,
            verified: row.get(8)?,
        })
    }

    fn parse(self) -> Result<DocSummary, StoreError> {
        let damaged = |detail: String| StoreError::Damaged { table: "docs", detail };
        let id = DocId::from_slice(&self.id).map_err(|e| damaged(e.to_string()))?;
        let team = TeamId::from_slice(&self.team).map_err(|e| damaged(e.to_string()))?;
        let counter = |v: i64| {
            u64::try_from(v).map_err(|_| StoreError::corrupt(id, "a byte count is negative"))
        };
        Ok(DocSummary {
            id,
            team,
            kind: self.kind,
            heads: parse_heads(id, &self.heads)?,
            snapshot_bytes: counter(self.counters[0])?,
            incremental_bytes: counter(self.counters[1])?,
            chunks: counter(self.counters[2])?,
            updated_at_ms: self.updated_at_ms,
            verified: self.verified,
        })
    }
}

fn parse_heads(id: DocId, bytes: &[u8]) -> Result<Vec<ChangeHash>, StoreError> {
    if !bytes.len().is_multiple_of(HEAD_BYTES) {
        return Err(StoreError::corrupt(id, "its recorded heads have a partial hash"));
    }
    bytes
        .chunks_exact(HEAD_BYTES)
        .map(|h| {
            ChangeHash::try_from(h).map_err(|e| StoreError::corrupt(id, format!("bad head: {e}")))
        })
        .collect()
}

fn heads_bytes(heads: &[ChangeHash]) -> Vec<u8> {
    heads.iter().flat_map(|h| h.0).collect()
}

/// Byte counts fit in an i64 column; saturate rather than wrap.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
