//! Finds the authors (actors) of the changes in Automerge bytes received from a peer, before
//! they are applied, so that changes by devices that may not write a document are refused.
//!
//! A sync message's `changes` are storage chunks: single changes (plain or compressed),
//! or, in version 2 messages, a concatenation of changes or a whole saved document. Each
//! chunk starts with a header (4 magic bytes, a 4-byte checksum, a type byte and a LEB128
//! length). Changes are parsed with [`automerge::Change::try_from`], which is cheap; a
//! document chunk is loaded, which costs as much as applying it (about 35 ms for 10,000
//! notes), so applying it afterwards doubles that cost.
//!
//! A [`Frame::Snapshot`](crate::frame::Frame::Snapshot) of a document the receiver does not
//! hold is not loaded at all: [`whole_doc`] reads the actors and heads that a document
//! chunk lists before its columns, and the receiver stores the bytes as they came. The
//! document is loaded, and checked in full, when it is first used.

use std::collections::BTreeSet;

use automerge::{ActorId, Automerge, Change, ChangeHash};
use care_core::documents::{ReceivedRules, StoredOp};

use crate::frame::HEADS_PER_DOC_MAX;

/// The magic bytes that start every Automerge storage chunk.
const MAGIC_BYTES: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// Bytes of a chunk header before its LEB128 length: magic, checksum, type.
const CHUNK_FIXED_BYTES: usize = 9;
/// Bytes of a change hash.
const HASH_BYTES: usize = 32;
/// Chunk type of a saved document.
const CHUNK_DOCUMENT: u8 = 0;
/// Chunk type of one change.
const CHUNK_CHANGE: u8 = 1;
/// Chunk type of one deflate-compressed change.
const CHUNK_COMPRESSED: u8 = 2;
/// Most authors a document's header may list. A team's documents are written by its
/// members' devices, a few dozen; the bound keeps a header from reserving memory for
/// millions of authors it names in a few bytes each.
pub const ACTORS_PER_DOCUMENT_MAX: usize = 4096;
/// Most chunks one message may carry.
pub const CHUNKS_PER_MESSAGE_MAX: usize = 1 << 20;
/// Most bytes the Automerge chunks of one sync message, or one whole document, may take
/// once inflated. Automerge inflates compressed changes and document columns with no
/// bound; a peer's bytes are measured against this first, in a stream that holds no
/// more than a small buffer, so a few compressed megabytes cannot become gigabytes.
/// A month of notes takes a few megabytes inflated.
pub const INFLATED_BYTES_MAX: usize = 256 << 20;
/// The bit of a column specification that marks its data as deflate-compressed.
const COLUMN_DEFLATE_BIT: u64 = 0b1000;
/// Most columns a document chunk may describe per section (Automerge writes about 20).
const COLUMNS_PER_SECTION_MAX: u64 = 256;

/// The (actor, hash) of every change in `bytes`, a concatenation of chunks.
pub fn changes_in(bytes: &[u8]) -> Result<Vec<(ActorId, ChangeHash)>, String> {
    checked_changes_in(bytes, |_| Ok(()))
}

/// Like [`changes_in`], calling `check` with each change first: the first error is
/// returned.
pub fn checked_changes_in(
    bytes: &[u8],
    mut check: impl FnMut(&Change) -> Result<(), String>,
) -> Result<Vec<(ActorId, ChangeHash)>, String> {
    let mut out = Vec::new();
    for_each_chunk(bytes, |chunk_type, chunk, _| {
        match chunk_type {
            CHUNK_CHANGE | CHUNK_COMPRESSED => {
                let change = Change::try_from(chunk).map_err(|e| e.to_string())?;
                check(&change)?;
                out.push((change.actor_id().clone(), change.hash()));
            }
            CHUNK_DOCUMENT => {
                let doc = Automerge::load(chunk).map_err(|e| e.to_string())?;
                for change in doc.get_changes(&[]) {
                    check(&change)?;
                }
                out.extend(changes_of(&doc));
            }
            other => return Err(format!("an Automerge chunk of unexpected type {other}")),
        }
        Ok(())
    })?;
    Ok(out)
}

/// What `bytes`, a concatenation of chunks, take once inflated, refused past `budget`.
/// A change counts its own length, a compressed change what its deflate stream inflates
/// to, and a document its uncompressed columns plus what its compressed columns inflate
/// to. Nothing is kept: the streams are inflated into a small buffer and counted.
pub fn inflated_len(bytes: &[u8], budget: usize) -> Result<usize, InflateError> {
    measure(bytes, budget, inflate_len)
}

/// Most bytes one byte of a deflate stream can inflate to: the longest match (258 bytes)
/// in a code of two bits, the bound zlib's documentation gives ("1032:1").
pub const DEFLATE_RATIO_MAX: usize = 1032;

/// Whether `bytes`, a concatenation of chunks, take at most `budget` once inflated, as
/// [`inflated_len`] measures them. Bytes too few to pass the budget at deflate's greatest
/// ratio ([`DEFLATE_RATIO_MAX`]) are read for their structure only, as `inflated_len`
/// reads it, and not inflated: Automerge inflates them once more as it loads them.
pub fn check_inflated_len(bytes: &[u8], budget: usize) -> Result<(), InflateError> {
    // A document counts its own bytes beside what its columns inflate to.
    if bytes.len().saturating_mul(DEFLATE_RATIO_MAX + 1) <= budget {
        measure(bytes, budget, |deflated, _| Ok(deflated.len() * DEFLATE_RATIO_MAX)).map(drop)
    } else {
        inflated_len(bytes, budget).map(drop)
    }
}

/// Walks the chunks of `bytes` as [`inflated_len`] describes, counting each deflate
/// stream with `inflated` (given the stream and the budget left).
fn measure(
    bytes: &[u8],
    budget: usize,
    inflated: impl Fn(&[u8], usize) -> Result<usize, InflateError>,
) -> Result<usize, InflateError> {
    let mut total = 0usize;
    for_each_chunk(bytes, |chunk_type, chunk, _| {
        let left = budget.saturating_sub(total);
        let data = chunk_data(chunk)?;
        total += match chunk_type {
            CHUNK_CHANGE => data.len(),
            CHUNK_COMPRESSED => inflated(data, left)?,
            CHUNK_DOCUMENT => document_inflated_len(data, left, &inflated)?,
            other => return Err(format!("an Automerge chunk of unexpected type {other}").into()),
        };
        if total > budget {
            return Err(InflateError::TooLarge { max: budget });
        }
        Ok(())
    })?;
    Ok(total)
}

/// Why Automerge bytes from a peer are refused before they are inflated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// They inflate to more than the budget.
    #[error("Automerge chunks that inflate to more than {max} bytes")]
    TooLarge {
        /// The budget.
        max: usize,
    },
    /// They are not well-formed chunks.
    #[error("{0}")]
    Malformed(String),
}

impl From<String> for InflateError {
    fn from(why: String) -> InflateError {
        InflateError::Malformed(why)
    }
}

/// The bytes of a chunk after its header.
fn chunk_data(chunk: &[u8]) -> Result<&[u8], String> {
    let truncated = || "a truncated Automerge chunk".to_owned();
    let (_, leb_len) = read_leb128(&chunk[CHUNK_FIXED_BYTES..]).ok_or_else(truncated)?;
    Ok(&chunk[CHUNK_FIXED_BYTES + leb_len..])
}

/// How many bytes a raw deflate stream inflates to, refused past `budget`.
fn inflate_len(deflated: &[u8], budget: usize) -> Result<usize, InflateError> {
    use std::io::Read;
    let limit = u64::try_from(budget).unwrap_or(u64::MAX).saturating_add(1);
    let mut stream = flate2::bufread::DeflateDecoder::new(deflated).take(limit);
    let n = std::io::copy(&mut stream, &mut std::io::sink())
        .map_err(|e| format!("a compressed Automerge chunk that does not inflate: {e}"))?;
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n > budget {
        return Err(InflateError::TooLarge { max: budget });
    }
    Ok(n)
}

/// What a document chunk's data takes once its compressed columns are inflated: its
/// actors, heads, then two sections of column metadata (specification, length), then
/// the columns' bytes in the same order.
fn document_inflated_len(
    data: &[u8],
    budget: usize,
    inflated: impl Fn(&[u8], usize) -> Result<usize, InflateError>,
) -> Result<usize, InflateError> {
    let mut total = data.len();
    for (spec, bytes) in document_columns(data)?.iter().flatten() {
        if spec & COLUMN_DEFLATE_BIT != 0 {
            total += inflated(bytes, budget.saturating_sub(total))?;
        }
        if total > budget {
            return Err(InflateError::TooLarge { max: budget });
        }
    }
    Ok(total)
}

/// A column of a document chunk: its specification and its bytes.
type Column<'a> = (u64, &'a [u8]);

/// The columns of a document chunk's data, by section (its changes' columns, then its
/// operations'), each with its specification: past its actors and heads come two
/// sections of column metadata (specification, length), then the columns' bytes in the
/// same order.
fn document_columns(data: &[u8]) -> Result<[Vec<Column<'_>>; 2], String> {
    let truncated = || "a truncated Automerge document chunk".to_owned();
    let mut cursor = Cursor(data);
    let actor_count = cursor.count().ok_or_else(truncated)?;
    for _ in 0..actor_count {
        let len = cursor.count().ok_or_else(truncated)?;
        cursor.take(len).ok_or_else(truncated)?;
    }
    let head_count = cursor.count().ok_or_else(truncated)?;
    let heads_len = head_count.checked_mul(HASH_BYTES).ok_or_else(truncated)?;
    cursor.take(heads_len).ok_or_else(truncated)?;
    let mut lens: [Vec<(u64, usize)>; 2] = [Vec::new(), Vec::new()];
    for section in &mut lens {
        let count = cursor.leb().ok_or_else(truncated)?;
        if count > COLUMNS_PER_SECTION_MAX {
            return Err(format!(
                "a document chunk with more than {COLUMNS_PER_SECTION_MAX} columns"
            ));
        }
        for _ in 0..count {
            let spec = cursor.leb().ok_or_else(truncated)?;
            let len =
                usize::try_from(cursor.leb().ok_or_else(truncated)?).map_err(|_| truncated())?;
            section.push((spec, len));
        }
    }
    let mut take = |section: &[(u64, usize)]| {
        section
            .iter()
            .map(|(spec, len)| cursor.take(*len).map(|bytes| (*spec, bytes)).ok_or_else(truncated))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok([take(&lens[0])?, take(&lens[1])?])
}

/// Calls `f` with the type, the bytes and the position of each chunk in `bytes`, a
/// concatenation of chunks, up to [`CHUNKS_PER_MESSAGE_MAX`] of them.
fn for_each_chunk<'a, E: From<String>>(
    bytes: &'a [u8],
    mut f: impl FnMut(u8, &'a [u8], usize) -> Result<(), E>,
) -> Result<(), E> {
    let mut rest = bytes;
    let mut index = 0usize;
    while !rest.is_empty() {
        if index == CHUNKS_PER_MESSAGE_MAX {
            return Err(format!("more than {CHUNKS_PER_MESSAGE_MAX} chunks").into());
        }
        let (chunk_type, len) = chunk_header(rest).map_err(E::from)?;
        let (chunk, tail) = rest.split_at(len);
        rest = tail;
        f(chunk_type, chunk, index)?;
        index += 1;
    }
    Ok(())
}

/// What received bytes holding a whole document say of it, read without loading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WholeDoc {
    /// Who wrote its changes: every actor its document chunk lists (changes whose hashes
    /// are not known before loading), then the author and hash of each change after it.
    pub authors: Vec<(ActorId, Option<ChangeHash>)>,
    /// Its heads, sorted: those its document chunk lists, moved on by the changes after it.
    pub heads: Vec<ChangeHash>,
}

/// Reads `bytes` as stored whole (a document chunk, then change chunks, as
/// [`Automerge::save`] and `save_after` write them) without loading it. The bytes are not
/// shown to hold what they say until they are loaded.
pub fn whole_doc(bytes: &[u8]) -> Result<WholeDoc, String> {
    let mut authors = Vec::new();
    let mut heads = BTreeSet::new();
    for_each_chunk(bytes, |chunk_type, chunk, index| {
        match chunk_type {
            CHUNK_DOCUMENT if index == 0 => {
                let (actors, doc_heads) = document_prefix(chunk)?;
                authors.extend(actors.into_iter().map(|actor| (actor, None)));
                heads.extend(doc_heads);
            }
            CHUNK_CHANGE | CHUNK_COMPRESSED => {
                let change = Change::try_from(chunk).map_err(|e| e.to_string())?;
                for dep in change.deps() {
                    heads.remove(dep);
                }
                heads.insert(change.hash());
                authors.push((change.actor_id().clone(), Some(change.hash())));
            }
            CHUNK_DOCUMENT => return Err("a document chunk after the first chunk".to_owned()),
            other => return Err(format!("an Automerge chunk of unexpected type {other}")),
        }
        Ok(())
    })?;
    Ok(WholeDoc { authors, heads: heads.into_iter().collect() })
}

/// The actors and heads a document chunk lists first: a LEB128 count of actors, each a
/// LEB128 length and its bytes, then a LEB128 count of 32-byte head hashes.
fn document_prefix(chunk: &[u8]) -> Result<(Vec<ActorId>, Vec<ChangeHash>), String> {
    let truncated = || "a truncated Automerge document chunk".to_owned();
    let (_, leb_len) = read_leb128(&chunk[CHUNK_FIXED_BYTES..]).ok_or_else(truncated)?;
    let mut cursor = Cursor(&chunk[CHUNK_FIXED_BYTES + leb_len..]);
    let actor_count = cursor.count().ok_or_else(truncated)?;
    if actor_count > ACTORS_PER_DOCUMENT_MAX {
        return Err(format!("a document listing more than {ACTORS_PER_DOCUMENT_MAX} authors"));
    }
    let mut actors = Vec::with_capacity(actor_count);
    for _ in 0..actor_count {
        let len = cursor.count().ok_or_else(truncated)?;
        actors.push(ActorId::from(cursor.take(len).ok_or_else(truncated)?));
    }
    let head_count = cursor.count().ok_or_else(truncated)?;
    if head_count > HEADS_PER_DOC_MAX {
        return Err(format!("a document listing more than {HEADS_PER_DOC_MAX} heads"));
    }
    let mut heads = Vec::with_capacity(head_count);
    for _ in 0..head_count {
        let hash = cursor.take(HASH_BYTES).ok_or_else(truncated)?;
        heads.push(ChangeHash::try_from(hash).map_err(|e| e.to_string())?);
    }
    Ok((actors, heads))
}

/// Reads a document chunk's prefix from the front.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    /// A LEB128 count, which must not exceed the bytes left (each counted item takes at
    /// least one), so that nothing is allocated for items the chunk cannot hold.
    fn count(&mut self) -> Option<usize> {
        let (n, len) = read_leb128(self.0)?;
        self.0 = &self.0[len..];
        usize::try_from(n).ok().filter(|n| *n <= self.0.len())
    }

    /// A LEB128 number, not checked against what is left.
    fn leb(&mut self) -> Option<u64> {
        let (n, len) = read_leb128(self.0)?;
        self.0 = &self.0[len..];
        Some(n)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(taken)
    }
}

/// Checks the changes saved in `bytes` (a document chunk, then change chunks, as a
/// document is stored) against `rules`: the document chunk by the operations its columns
/// hold ([`ReceivedRules::check_stored`]), without rebuilding each change from them;
/// each change after it as it is. `ops_max` bounds the operations read (the loaded
/// document's count). A second document chunk is loaded and its changes checked.
pub fn check_saved_rules(rules: &ReceivedRules, bytes: &[u8], ops_max: u64) -> Result<(), String> {
    for_each_chunk(bytes, |chunk_type, chunk, index| match chunk_type {
        CHUNK_DOCUMENT if index == 0 => stored_ops(chunk, ops_max, |op| rules.check_stored(op)),
        CHUNK_DOCUMENT => {
            let doc = Automerge::load(chunk).map_err(|e| e.to_string())?;
            doc.get_changes(&[]).iter().try_for_each(|change| rules.check(change))
        }
        CHUNK_CHANGE | CHUNK_COMPRESSED => {
            rules.check(&Change::try_from(chunk).map_err(|e| e.to_string())?)
        }
        other => Err(format!("an Automerge chunk of unexpected type {other}")),
    })
}

/// Column specifications (without the deflate bit) of the operation columns read.
const OBJ_ACTOR: u64 = 0x01;
const OBJ_COUNTER: u64 = 0x02;
const KEY_STRING: u64 = 0x15;
const ID_ACTOR: u64 = 0x21;
const ACTION: u64 = 0x42;
const SUCCESSORS: u64 = 0x80;

/// Calls `f` with each operation a document chunk (`chunk`, header included) holds, at
/// most `ops_max` of them.
fn stored_ops(
    chunk: &[u8],
    ops_max: u64,
    mut f: impl FnMut(&StoredOp<'_>) -> Result<(), String>,
) -> Result<(), String> {
    let (actors, _) = document_prefix(chunk)?;
    let [_, ops] = document_columns(chunk_data(chunk)?)?;
    let wanted = [OBJ_ACTOR, OBJ_COUNTER, KEY_STRING, ID_ACTOR, ACTION, SUCCESSORS];
    let mut columns: [std::borrow::Cow<'_, [u8]>; 6] = Default::default();
    let mut seen = [false; 6];
    for (spec, bytes) in ops {
        let Some(at) = wanted.iter().position(|w| *w == spec & !COLUMN_DEFLATE_BIT) else {
            continue;
        };
        // Automerge keeps one column per specification: a second would leave which one it
        // read open, and this check must read what it loaded.
        if std::mem::replace(&mut seen[at], true) {
            return Err(format!("a document chunk with two columns {:#x}", wanted[at]));
        }
        columns[at] = if spec & COLUMN_DEFLATE_BIT != 0 {
            std::borrow::Cow::Owned(inflate(bytes)?)
        } else {
            std::borrow::Cow::Borrowed(bytes)
        };
    }
    let [obj_actor, obj_counter, key, id_actor, action, successors] = &columns;
    let mut obj_actor = Rle::new(obj_actor, read_uint);
    let mut obj_counter = Rle::new(obj_counter, read_uint);
    let mut key = Rle::new(key, read_str);
    let mut id_actor = Rle::new(id_actor, read_uint);
    let mut action = Rle::new(action, read_uint);
    let mut successors = Rle::new(successors, read_uint);
    let actor = |index: u64| {
        usize::try_from(index)
            .ok()
            .and_then(|i| actors.get(i))
            .ok_or_else(|| "an operation naming an actor the document does not list".to_owned())
    };
    // Automerge counts the operations by their actors' column, as this does.
    let mut read = 0u64;
    while !id_actor.ended() {
        read += 1;
        if read > ops_max {
            return Err(format!("a document chunk holding more than its {ops_max} operations"));
        }
        let (obj, obj_counter, key) = (obj_actor.next()?, obj_counter.next()?, key.next()?);
        let by = id_actor.next()?.ok_or_else(|| "an operation with no actor".to_owned())?;
        let obj = match (obj, obj_counter) {
            (None, None) => None,
            (Some(obj), Some(counter)) => Some((actor(obj)?, counter)),
            _ => return Err("an operation whose object has an actor or a counter alone".into()),
        };
        let op = StoredOp {
            id_actor: actor(by)?,
            obj,
            key,
            action: action.next()?.ok_or_else(|| "an operation with no action".to_owned())?,
            successors: successors.next()?.unwrap_or(0),
        };
        f(&op)?;
    }
    Ok(())
}

/// The bytes a deflated column inflates to (at most [`INFLATED_BYTES_MAX`]).
fn inflate(deflated: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::bufread::DeflateDecoder::new(deflated)
        .take(INFLATED_BYTES_MAX as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("a compressed column that does not inflate: {e}"))?;
    if out.len() > INFLATED_BYTES_MAX {
        return Err(format!("a column that inflates to more than {INFLATED_BYTES_MAX} bytes"));
    }
    Ok(out)
}

/// A run-length encoded column, as Automerge writes them: runs of a signed LEB128 count
/// `n` then, for `n > 0`, one value repeated `n` times; for `n < 0`, `-n` values; for
/// `n == 0`, an unsigned count of nulls. Past its end a column reads as nulls.
struct Rle<'a, T> {
    bytes: &'a [u8],
    run: Run<T>,
    value: fn(&mut &'a [u8]) -> Option<T>,
}

/// Where a column's reader is within a run, and how many rows of it are left.
enum Run<T> {
    Repeat(T, u64),
    Literal(u64),
    Nulls(u64),
}

impl<'a, T: Copy> Rle<'a, T> {
    fn new(bytes: &'a [u8], value: fn(&mut &'a [u8]) -> Option<T>) -> Self {
        Rle { bytes, run: Run::Nulls(0), value }
    }

    /// Whether every row of the column has been read.
    fn ended(&self) -> bool {
        let left = match self.run {
            Run::Repeat(_, left) | Run::Literal(left) | Run::Nulls(left) => left,
        };
        left == 0 && self.bytes.is_empty()
    }

    /// The next row's value, `None` for a null.
    fn next(&mut self) -> Result<Option<T>, String> {
        let malformed = || "a malformed column of operations".to_owned();
        loop {
            match &mut self.run {
                Run::Repeat(value, left) if *left > 0 => {
                    *left -= 1;
                    return Ok(Some(*value));
                }
                Run::Literal(left) if *left > 0 => {
                    *left -= 1;
                    return (self.value)(&mut self.bytes).map(Some).ok_or_else(malformed);
                }
                Run::Nulls(left) if *left > 0 => {
                    *left -= 1;
                    return Ok(None);
                }
                _ => {}
            }
            if self.bytes.is_empty() {
                return Ok(None);
            }
            let (n, len) = read_sleb128(self.bytes).ok_or_else(malformed)?;
            self.bytes = &self.bytes[len..];
            self.run = match n {
                1.. => Run::Repeat(
                    (self.value)(&mut self.bytes).ok_or_else(malformed)?,
                    n.unsigned_abs(),
                ),
                ..0 => Run::Literal(n.unsigned_abs()),
                0 => Run::Nulls(read_uint(&mut self.bytes).ok_or_else(malformed)?),
            };
        }
    }
}

/// An unsigned LEB128 value from the front of `bytes`.
fn read_uint(bytes: &mut &[u8]) -> Option<u64> {
    let (n, len) = read_leb128(bytes)?;
    *bytes = &bytes[len..];
    Some(n)
}

/// A string (its length in bytes, then UTF-8) from the front of `bytes`.
fn read_str<'a>(bytes: &mut &'a [u8]) -> Option<&'a str> {
    let len = usize::try_from(read_uint(bytes)?).ok()?;
    if len > bytes.len() {
        return None;
    }
    let (text, rest) = bytes.split_at(len);
    *bytes = rest;
    std::str::from_utf8(text).ok()
}

/// A signed LEB128 number and its length in bytes.
fn read_sleb128(bytes: &[u8]) -> Option<(i64, usize)> {
    let mut value = 0i64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        let shift = 7 * i as u32;
        value |= i64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            if shift + 7 < 64 && byte & 0x40 != 0 {
                value |= -1i64 << (shift + 7);
            }
            return Some((value, i + 1));
        }
    }
    None
}

/// The (actor, hash) of every change of a loaded document.
pub fn changes_of(doc: &Automerge) -> Vec<(ActorId, ChangeHash)> {
    doc.get_changes_meta(&[]).into_iter().map(|meta| (meta.actor.into_owned(), meta.hash)).collect()
}

/// The type and total length (header included) of the chunk at the start of `bytes`.
fn chunk_header(bytes: &[u8]) -> Result<(u8, usize), String> {
    let too_short = || "a truncated Automerge chunk".to_owned();
    if bytes.len() < CHUNK_FIXED_BYTES {
        return Err(too_short());
    }
    if bytes[..4] != MAGIC_BYTES {
        return Err("bytes that are not an Automerge chunk".to_owned());
    }
    let (data_len, leb_len) = read_leb128(&bytes[CHUNK_FIXED_BYTES..]).ok_or_else(too_short)?;
    let total = CHUNK_FIXED_BYTES
        .checked_add(leb_len)
        .and_then(|n| usize::try_from(data_len).ok().and_then(|d| n.checked_add(d)))
        .ok_or_else(too_short)?;
    if total > bytes.len() {
        return Err(too_short());
    }
    Ok((bytes[8], total))
}

/// An unsigned LEB128 number of at most 64 bits and the bytes it took.
fn read_leb128(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        let part = u64::from(byte & 0x7f);
        value |= part.checked_shl(7 * i as u32)?;
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use proptest::prelude::*;

    fn doc_with(actor: u8, n: usize) -> Automerge {
        let mut doc = Automerge::new().with_actor(ActorId::from([actor; 32]));
        for i in 0..n {
            let mut tx = doc.transaction();
            tx.put(automerge::ROOT, format!("k{i}"), "x".repeat(i * 50)).expect("put");
            tx.commit();
        }
        doc
    }

    #[test]
    fn finds_actors_in_changes_and_documents() {
        let doc = doc_with(7, 4);
        let mut joined = Vec::new();
        for change in doc.get_changes(&[]) {
            joined.extend_from_slice(change.raw_bytes());
        }
        let found = changes_in(&joined).expect("changes parse");
        assert_eq!(found.len(), 4);
        assert!(found.iter().all(|(a, _)| *a == ActorId::from([7; 32])));
        let saved = changes_in(&doc.save()).expect("document parses");
        assert_eq!(saved.len(), 4);
        let mut compressed = doc.get_changes(&[]).pop().expect("a change");
        assert_eq!(changes_in(&compressed.bytes()).expect("compressed").len(), 1);
        assert!(changes_in(&joined[..joined.len() - 1]).is_err());
    }

    #[test]
    fn reads_a_whole_document_without_loading_it() {
        let mut doc = doc_with(7, 3);
        let saved = doc.save();
        let saved_heads = doc.get_heads();
        let mut other = doc.fork().with_actor(ActorId::from([8; 32]));
        let mut tx = other.transaction();
        tx.put(automerge::ROOT, "later", "y").expect("put");
        tx.commit();
        doc.merge(&mut other).expect("merge");
        let mut stored = saved.clone();
        stored.extend(doc.save_after(&saved_heads));

        let whole = whole_doc(&stored).expect("a stored document reads");
        let mut heads = doc.get_heads();
        heads.sort();
        assert_eq!(whole.heads, heads);
        let actors: BTreeSet<_> = whole.authors.iter().map(|(a, _)| a.clone()).collect();
        assert_eq!(actors, BTreeSet::from([ActorId::from([7; 32]), ActorId::from([8; 32])]));
        assert!(whole.authors.iter().any(|(a, h)| *a == ActorId::from([8; 32]) && h.is_some()));
        assert_eq!(whole_doc(&saved).expect("a saved document reads").heads, saved_heads);

        assert!(whole_doc(&saved[..saved.len() / 2]).is_err(), "truncated");
        let mut twice = saved.clone();
        twice.extend_from_slice(&saved);
        assert!(whole_doc(&twice).is_err(), "a document chunk after the first");
    }

    #[test]
    fn a_header_cannot_reserve_memory_for_more_authors_or_heads_than_allowed() {
        // Counts just over the bounds, with enough bytes after them to pass the check
        // that a count fits in what is left.
        for (actors, heads) in [(ACTORS_PER_DOCUMENT_MAX + 1, 0), (0, HEADS_PER_DOC_MAX + 1)] {
            let mut data = leb128(actors);
            data.extend(std::iter::repeat_n(1u8, actors * 2));
            data.extend(leb128(heads));
            data.extend(std::iter::repeat_n(0u8, heads * HASH_BYTES));
            let mut chunk = MAGIC_BYTES.to_vec();
            chunk.extend_from_slice(&[0, 0, 0, 0, CHUNK_DOCUMENT]);
            chunk.extend(leb128(data.len()));
            chunk.extend(data);
            let err = whole_doc(&chunk).expect_err("over the bound");
            assert!(err.contains("more than"), "{err}");
        }
    }

    fn leb128(mut n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    /// `saved` with the byte at `at` set to `byte`, then `cut` bytes cut off its end.
    fn changed(mut saved: Vec<u8>, at: prop::sample::Index, byte: u8, cut: usize) -> Vec<u8> {
        let i = at.index(saved.len());
        saved[i] = byte;
        saved.truncate(saved.len() - cut.min(saved.len()));
        saved
    }

    /// The ratio `check_inflated_len` relies on holds for the most compressible input
    /// there is, compressed as tightly as zlib can, and is nearly reached by it.
    #[test]
    fn deflate_never_inflates_past_its_greatest_ratio() {
        use std::io::Write;
        let zeros = vec![0u8; 16 << 20];
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&zeros).expect("compresses");
        let deflated = encoder.finish().expect("compresses");
        let inflated = inflate_len(&deflated, usize::MAX).expect("inflates");
        assert_eq!(inflated, zeros.len());
        assert!(
            inflated <= deflated.len() * DEFLATE_RATIO_MAX,
            "{inflated} from {}",
            deflated.len()
        );
        assert!(inflated > deflated.len() * 1000, "{inflated} from {}", deflated.len());
    }

    /// Bytes too few to pass the budget are read for their structure and not inflated:
    /// a chunk cut short is still refused, bytes that pass still pass, and bytes that
    /// could pass the budget are measured as `inflated_len` measures them.
    #[test]
    fn a_check_without_inflating_still_reads_the_structure() {
        let saved = doc_with(7, 40).save();
        let measured = inflated_len(&saved, INFLATED_BYTES_MAX).expect("within");
        assert!(saved.len() * (DEFLATE_RATIO_MAX + 1) <= INFLATED_BYTES_MAX);
        check_inflated_len(&saved, INFLATED_BYTES_MAX).expect("within, unmeasured");
        let cut = &saved[..saved.len() - 10];
        assert!(inflated_len(cut, INFLATED_BYTES_MAX).is_err());
        assert!(matches!(
            check_inflated_len(cut, INFLATED_BYTES_MAX),
            Err(InflateError::Malformed(_))
        ));
        // A budget the bytes could pass at deflate's ratio: measured, and refused.
        assert!(matches!(
            check_inflated_len(&saved, measured - 1),
            Err(InflateError::TooLarge { .. })
        ));
        check_inflated_len(&saved, measured).expect("exactly within");
    }

    proptest! {
        /// Whatever the bytes, what `check_inflated_len` refuses `inflated_len` refuses
        /// too: reading without inflating only ever passes bytes Automerge's own load
        /// then refuses (a deflate stream that does not inflate).
        #[test]
        fn a_check_without_inflating_is_never_stricter(
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in 0usize..64,
        ) {
            let saved = changed(doc_with(3, 12).save(), at, byte, cut);
            if inflated_len(&saved, INFLATED_BYTES_MAX).is_ok() {
                prop_assert!(check_inflated_len(&saved, INFLATED_BYTES_MAX).is_ok());
            }
        }
    }

    /// One write in a document of the rules' equivalence test, by actor 0 or 1.
    #[derive(Clone, Debug)]
    enum Write {
        /// A value, or a map, at one of a few root keys.
        Root {
            key: usize,
            map: bool,
        },
        RootDelete {
            key: usize,
        },
        /// A value, or a map, under one of a few keys of the kind's container.
        Entry {
            key: usize,
            map: bool,
        },
        EntryDelete {
            key: usize,
        },
        /// A field of one of the entries (or plan sections) there is, set or deleted.
        Field {
            entry: usize,
            delete: bool,
        },
        /// Text in one of the entries or sections there is.
        Text {
            entry: usize,
        },
        /// The two actors' copies merge.
        Merge,
    }

    /// Any write.
    fn write() -> impl Strategy<Value = (usize, Write)> {
        let write = prop_oneof![
            (0..6usize, any::<bool>()).prop_map(|(key, map)| Write::Root { key, map }),
            (0..6usize).prop_map(|key| Write::RootDelete { key }),
            (0..10usize, any::<bool>()).prop_map(|(key, map)| Write::Entry { key, map }),
            (0..10usize).prop_map(|key| Write::EntryDelete { key }),
            (0..4usize, any::<bool>()).prop_map(|(entry, delete)| Write::Field { entry, delete }),
            (0..4usize).prop_map(|entry| Write::Text { entry }),
            Just(Write::Merge),
        ];
        (0..2usize, write)
    }

    /// Writes below the root, mostly allowed (an entry made twice and a field of a note
    /// written twice are not).
    fn allowed_write() -> impl Strategy<Value = (usize, Write)> {
        let write = prop_oneof![
            (0..8usize).prop_map(|key| Write::Entry { key, map: true }),
            (0..4usize).prop_map(|entry| Write::Field { entry, delete: false }),
            (0..4usize).prop_map(|entry| Write::Text { entry }),
            Just(Write::Merge),
        ];
        (0..2usize, write)
    }

    /// Applies `writes` to two copies of the first change of `kind`, one per actor, and
    /// merges them.
    fn written(kind: &care_core::DocKind, writes: &[(usize, Write)]) -> Automerge {
        use automerge::ReadDoc;
        let team = care_core::TeamId::from_bytes([9; 16]);
        let month = kind.month().unwrap_or(care_core::Month::new(2026, 5).expect("a month"));
        // Eight entry ids of the document's month, one of another month, one not an id.
        let mut entry_keys: Vec<String> =
            (0..8).map(|n| care_core::EntryId::new(month, [n; 8]).to_string()).collect();
        let other_month = care_core::Month::new(2020, 1).expect("a month");
        entry_keys.push(care_core::EntryId::new(other_month, [9; 8]).to_string());
        entry_keys.push("not-an-entry".to_owned());
        let container = match kind {
            care_core::DocKind::Team => None,
            care_core::DocKind::Plan | care_core::DocKind::HealthPlan => Some("sections"),
            care_core::DocKind::Notes { .. } => Some("notes"),
            care_core::DocKind::Rota { .. } => Some("bookings"),
            care_core::DocKind::Promises => Some("promises"),
        };
        let root_keys = ["name", "circle", "kind", "schema", "x", container.unwrap_or("notes")];
        let genesis = care_core::documents::genesis(team, kind);
        let mut copies = [0u8, 1].map(|n| genesis.fork().with_actor(ActorId::from([n + 1; 32])));
        for (actor, write) in writes {
            if let Write::Merge = write {
                let [a, b] = &mut copies;
                a.merge(b).expect("merges");
                b.merge(a).expect("merges");
                continue;
            }
            let doc = &mut copies[*actor];
            let holder = container.and_then(|name| match doc.get(automerge::ROOT, name) {
                Ok(Some((automerge::Value::Object(_), id))) => Some(id),
                _ => None,
            });
            let entries: Vec<automerge::ObjId> = holder
                .as_ref()
                .map(|holder| {
                    doc.map_range(holder, ..)
                        .filter(|item| matches!(item.value, automerge::ValueRef::Object(_)))
                        .map(|item| item.id())
                        .collect()
                })
                .unwrap_or_default();
            let mut tx = doc.transaction();
            let root = automerge::ROOT;
            let _ = match write {
                Write::Root { key, map: true } => {
                    tx.put_object(root, root_keys[*key], automerge::ObjType::Map).map(drop)
                }
                Write::Root { key, map: false } => tx.put(root, root_keys[*key], "v"),
                Write::RootDelete { key } => tx.delete(root, root_keys[*key]),
                Write::Entry { key, map } => match &holder {
                    Some(holder) if *map => {
                        tx.put_object(holder, &entry_keys[*key], automerge::ObjType::Map).map(drop)
                    }
                    Some(holder) => tx.put(holder, &entry_keys[*key], "v"),
                    None => Ok(()),
                },
                Write::EntryDelete { key } => match &holder {
                    Some(holder) => tx.delete(holder, &entry_keys[*key]),
                    None => Ok(()),
                },
                Write::Field { entry, delete } => {
                    match entries.get(*entry % entries.len().max(1)) {
                        Some(obj) if *delete => tx.delete(obj, "field"),
                        Some(obj)
                            if tx.object_type(obj).is_ok_and(|t| t == automerge::ObjType::Map) =>
                        {
                            tx.put(obj, "field", "v")
                        }
                        _ => Ok(()),
                    }
                }
                Write::Text { entry } => match entries.get(*entry % entries.len().max(1)) {
                    Some(obj) => match tx.object_type(obj) {
                        Ok(automerge::ObjType::Text) => tx.splice_text(obj, 0, 0, "ab").map(drop),
                        Ok(automerge::ObjType::Map) => tx
                            .put_object(obj, "text", automerge::ObjType::Text)
                            .and_then(|text| tx.splice_text(&text, 0, 0, "ab"))
                            .map(drop),
                        _ => Ok(()),
                    },
                    None => Ok(()),
                },
                Write::Merge => Ok(()),
            };
            tx.commit();
        }
        let [mut a, mut b] = copies;
        a.merge(&mut b).expect("merges");
        a
    }

    /// The rules checked on every change rebuilt from the loaded document.
    fn rules_by_change(kind: &care_core::DocKind, doc: &Automerge) -> Result<(), String> {
        let rules = ReceivedRules::new(care_core::TeamId::from_bytes([9; 16]), kind);
        doc.get_changes(&[]).iter().try_for_each(|change| rules.check(change))
    }

    /// The rules checked on the saved operations, and on the changes saved after them.
    fn rules_saved(kind: &care_core::DocKind, saved: &[u8]) -> Result<(), String> {
        use automerge::ReadDoc;
        let rules = ReceivedRules::new(care_core::TeamId::from_bytes([9; 16]), kind);
        let ops = Automerge::load(saved).expect("loads").stats().num_ops;
        check_saved_rules(&rules, saved, ops)
    }

    fn kinds() -> Vec<care_core::DocKind> {
        use care_core::{DocKind, Month, NoteStream};
        let month = Month::new(2026, 5).expect("a month");
        vec![
            DocKind::Team,
            DocKind::Plan,
            DocKind::HealthPlan,
            DocKind::Promises,
            DocKind::Rota { month },
            DocKind::Notes { stream: NoteStream::Care, month },
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        /// The rules give the same verdict on a document's saved operations as on every
        /// change that made them, for documents of every kind written by two actors with
        /// overwrites, deletions, conflicts and text; saved whole, or saved then with
        /// changes saved after it.
        #[test]
        fn the_saved_operations_keep_the_rules_exactly_when_the_changes_do(
            kind in proptest::sample::select(kinds()),
            writes in prop_oneof![
                proptest::collection::vec(write(), 0..10),
                proptest::collection::vec(allowed_write(), 0..10),
            ],
            split in any::<prop::sample::Index>(),
        ) {
            let doc = written(&kind, &writes);
            let by_change = rules_by_change(&kind, &doc);
            let whole = rules_saved(&kind, &doc.save());
            prop_assert_eq!(by_change.is_ok(), whole.is_ok(), "{:?} / {:?}", by_change, whole);
            let changes = doc.get_changes(&[]);
            let at = split.index(changes.len() + 1);
            let mut before = Automerge::new();
            before.apply_changes(changes[..at].iter().cloned()).expect("applies");
            let mut saved = before.save();
            saved.extend(doc.save_after(&before.get_heads()));
            let in_two = rules_saved(&kind, &saved);
            prop_assert_eq!(by_change.is_ok(), in_two.is_ok(), "{:?} / {:?}", by_change, in_two);
        }
    }

    proptest! {
        /// The reader of a saved document's operations takes any bytes: a document with
        /// bytes changed or cut short gets a verdict, never a panic, and never a read of
        /// more operations than it is allowed.
        #[test]
        fn saved_operations_changed_anywhere_never_panic(
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in 0usize..64,
        ) {
            let kind = care_core::DocKind::Notes {
                stream: care_core::NoteStream::Care,
                month: care_core::Month::new(2026, 5).expect("a month"),
            };
            let writes: Vec<(usize, Write)> =
                (0..6).map(|key| (key % 2, Write::Entry { key, map: true })).collect();
            let saved = changed(written(&kind, &writes).save(), at, byte, cut);
            let rules = ReceivedRules::new(care_core::TeamId::from_bytes([9; 16]), &kind);
            let _ = check_saved_rules(&rules, &saved, 64);
        }
    }

    /// A document chunk with one of the columns read twice is refused: Automerge would
    /// read one of them, and which is not this check's to guess.
    #[test]
    fn a_document_with_a_column_twice_is_refused() {
        let kind = care_core::DocKind::Promises;
        let doc = written(&kind, &[(0, Write::Entry { key: 0, map: true })]);
        let saved = doc.save();
        let rules = ReceivedRules::new(care_core::TeamId::from_bytes([9; 16]), &kind);
        let ops = automerge::ReadDoc::stats(&doc).num_ops;
        check_saved_rules(&rules, &saved, ops).expect("an honest document keeps the rules");
        // Rewrite the chunk with the action column's metadata and bytes listed twice.
        let data = chunk_data(&saved).expect("a chunk");
        let mut cursor = Cursor(data);
        let actors = cursor.count().expect("actors");
        for _ in 0..actors {
            let len = cursor.count().expect("an actor");
            cursor.take(len).expect("an actor");
        }
        let heads = cursor.count().expect("heads");
        cursor.take(heads * HASH_BYTES).expect("heads");
        let prefix_len = data.len() - cursor.0.len();
        let mut sections: Vec<Vec<(u64, u64)>> = Vec::new();
        for _ in 0..2 {
            let count = cursor.leb().expect("a count");
            sections.push(
                (0..count)
                    .map(|_| (cursor.leb().expect("spec"), cursor.leb().expect("len")))
                    .collect(),
            );
        }
        let mut columns: Vec<&[u8]> = Vec::new();
        for (_, len) in sections.iter().flatten() {
            columns.push(cursor.take(usize::try_from(*len).expect("a length")).expect("a column"));
        }
        let changes = sections[0].len();
        let action = sections[1]
            .iter()
            .position(|(spec, _)| spec & !COLUMN_DEFLATE_BIT == ACTION)
            .expect("an action column");
        let twice = sections[1][action];
        sections[1].insert(action + 1, twice);
        columns.insert(changes + action + 1, columns[changes + action]);
        let mut forged = data[..prefix_len].to_vec();
        for section in &sections {
            leb(&mut forged, section.len() as u64);
            for (spec, len) in section {
                leb(&mut forged, *spec);
                leb(&mut forged, *len);
            }
        }
        for column in columns {
            forged.extend_from_slice(column);
        }
        forged.extend_from_slice(cursor.0);
        let mut chunk = saved[..CHUNK_FIXED_BYTES].to_vec();
        leb(&mut chunk, forged.len() as u64);
        chunk.extend_from_slice(&forged);
        let refused = check_saved_rules(&rules, &chunk, ops).expect_err("refused");
        assert!(refused.contains("two columns"), "{refused}");
    }

    fn leb(out: &mut Vec<u8>, mut n: u64) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = changes_in(&bytes);
            let _ = whole_doc(&bytes);
            let mut chunk = MAGIC_BYTES.to_vec();
            chunk.extend_from_slice(&bytes);
            let _ = changes_in(&chunk);
            let _ = whole_doc(&chunk);
            // A well-formed header around arbitrary contents reaches the prefix reader.
            let mut doc = MAGIC_BYTES.to_vec();
            doc.extend_from_slice(&[0, 0, 0, 0, CHUNK_DOCUMENT]);
            doc.push(u8::try_from(bytes.len().min(127)).expect("small"));
            doc.extend_from_slice(&bytes[..bytes.len().min(127)]);
            let _ = whole_doc(&doc);
        }
    }
}
