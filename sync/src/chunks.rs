//! Finds the authors (actors) of the changes in Automerge bytes received from a peer, before
//! they are applied, so that changes by devices that may not write a document are refused.
//!
//! A sync message's `changes` are storage chunks: single changes (plain or compressed),
//! or, in version 2 messages, a concatenation of changes or a whole saved document. Each
//! chunk starts with a header (4 magic bytes, a 4-byte checksum, a type byte and a LEB128
//! length). Changes are parsed with [`automerge::Change::try_from`], which is cheap; a
//! document chunk is loaded, which costs as much as applying it (about 35 ms for 10,000
//! notes), so applying it afterwards doubles that cost. A [`Frame::Snapshot`]
//! (crate::frame::Frame::Snapshot) is loaded once and the loaded document handed on.

use automerge::{ActorId, Automerge, Change, ChangeHash};

/// The magic bytes that start every Automerge storage chunk.
const MAGIC_BYTES: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// Chunk type of a saved document.
const CHUNK_DOCUMENT: u8 = 0;
/// Chunk type of one change.
const CHUNK_CHANGE: u8 = 1;
/// Chunk type of one deflate-compressed change.
const CHUNK_COMPRESSED: u8 = 2;
/// Most chunks one message may carry.
pub const CHUNKS_PER_MESSAGE_MAX: usize = 1 << 20;

/// The (actor, hash) of every change in `bytes`, a concatenation of chunks.
pub fn changes_in(bytes: &[u8]) -> Result<Vec<(ActorId, ChangeHash)>, String> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut count = 0usize;
    while !rest.is_empty() {
        count += 1;
        if count > CHUNKS_PER_MESSAGE_MAX {
            return Err(format!("more than {CHUNKS_PER_MESSAGE_MAX} chunks"));
        }
        let (chunk_type, len) = chunk_header(rest)?;
        let (chunk, tail) = rest.split_at(len);
        rest = tail;
        match chunk_type {
            CHUNK_CHANGE | CHUNK_COMPRESSED => {
                let change = Change::try_from(chunk).map_err(|e| e.to_string())?;
                out.push((change.actor_id().clone(), change.hash()));
            }
            CHUNK_DOCUMENT => {
                let doc = Automerge::load(chunk).map_err(|e| e.to_string())?;
                out.extend(changes_of(&doc));
            }
            other => return Err(format!("an Automerge chunk of unexpected type {other}")),
        }
    }
    Ok(out)
}

/// The (actor, hash) of every change of a loaded document.
pub fn changes_of(doc: &Automerge) -> Vec<(ActorId, ChangeHash)> {
    doc.get_changes_meta(&[]).into_iter().map(|meta| (meta.actor.into_owned(), meta.hash)).collect()
}

/// The type and total length (header included) of the chunk at the start of `bytes`.
fn chunk_header(bytes: &[u8]) -> Result<(u8, usize), String> {
    const FIXED_BYTES: usize = 9;
    let too_short = || "a truncated Automerge chunk".to_owned();
    if bytes.len() < FIXED_BYTES {
        return Err(too_short());
    }
    if bytes[..4] != MAGIC_BYTES {
        return Err("bytes that are not an Automerge chunk".to_owned());
    }
    let (data_len, leb_len) = read_leb128(&bytes[FIXED_BYTES..]).ok_or_else(too_short)?;
    let total = FIXED_BYTES
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

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = changes_in(&bytes);
            let mut chunk = MAGIC_BYTES.to_vec();
            chunk.extend_from_slice(&bytes);
            let _ = changes_in(&chunk);
        }
    }
}
