//! Automerge sync messages from a peer, checked before Automerge reads them.
//!
//! Automerge trusts what a sync message says of itself: a Bloom filter with zero bits
//! per entry makes it divide by zero, a probe count is used as an allocation size, and
//! compressed changes inflate without a bound. [`check_sync_message`] walks the encoding
//! (a type byte; heads; needs; haves, each a last-sync list and a Bloom filter; changes;
//! optional flags) and refuses a message that breaks any of these bounds, so that
//! `automerge::sync::Message::decode` and `receive_sync_message` only ever see a message
//! within them.

use crate::chunks::{CHUNKS_PER_MESSAGE_MAX, INFLATED_BYTES_MAX, InflateError, inflated_len};
use crate::frame::HEADS_PER_DOC_MAX;
use crate::refusal::Refusal;

/// First byte of a version 1 sync message.
const MESSAGE_V1: u8 = 0x42;
/// First byte of a version 2 sync message.
const MESSAGE_V2: u8 = 0x43;
/// Bytes of a change hash.
const HASH_BYTES: usize = 32;
/// Most `have` entries one message may carry (Automerge sends one).
pub const HAVES_PER_MESSAGE_MAX: usize = 16;
/// Most entries one Bloom filter may summarise: more changes than any care document has.
pub const BLOOM_ENTRIES_MAX: u32 = 1 << 20;
/// Most bits per entry of a Bloom filter (Automerge uses 10).
pub const BLOOM_BITS_PER_ENTRY_MAX: u32 = 64;
/// Most probes per hash of a Bloom filter (Automerge uses 7).
pub const BLOOM_PROBES_MAX: u32 = 64;

/// Checks an encoded sync message against the protocol's bounds: counts of heads,
/// needs, haves and changes; every Bloom filter's parameters; every change chunk's
/// framing; and what its changes take once inflated ([`INFLATED_BYTES_MAX`]).
pub fn check_sync_message(bytes: &[u8]) -> Result<(), Refusal> {
    let mut r = Reader(bytes);
    match r.byte()? {
        MESSAGE_V1 | MESSAGE_V2 => {}
        other => return Err(malformed(format!("a sync message of unknown type {other:#x}"))),
    }
    r.hashes("heads in a sync message")?;
    r.hashes("needed changes in a sync message")?;
    let haves = r.count("haves in a sync message", HAVES_PER_MESSAGE_MAX)?;
    for _ in 0..haves {
        r.hashes("last-sync heads in a sync message")?;
        let len = r.len()?;
        check_bloom(r.take(len)?)?;
    }
    let chunks = r.count("change chunks in a sync message", CHUNKS_PER_MESSAGE_MAX)?;
    let mut inflated = 0usize;
    for _ in 0..chunks {
        let len = r.len()?;
        let chunk = r.take(len)?;
        inflated += inflated_len(chunk, INFLATED_BYTES_MAX.saturating_sub(inflated)).map_err(
            |e| match e {
                InflateError::TooLarge { .. } => Refusal::over_limit(
                    "bytes of inflated changes in a sync message",
                    INFLATED_BYTES_MAX + 1,
                    INFLATED_BYTES_MAX,
                ),
                InflateError::Malformed(why) => malformed(why),
            },
        )?;
    }
    Ok(())
}

/// A Bloom filter's encoding: empty, or its entry count, bits per entry and probes
/// (LEB128) followed by exactly `ceil(entries * bits_per_entry / 8)` bytes of bits.
fn check_bloom(bytes: &[u8]) -> Result<(), Refusal> {
    if bytes.is_empty() {
        return Ok(());
    }
    let mut r = Reader(bytes);
    let entries = r.u32()?;
    let bits_per_entry = r.u32()?;
    let probes = r.u32()?;
    if entries > BLOOM_ENTRIES_MAX {
        let what = "entries in a Bloom filter";
        return Err(Refusal::over_limit(what, entries as usize, BLOOM_ENTRIES_MAX as usize));
    }
    if entries > 0 && !(1..=BLOOM_BITS_PER_ENTRY_MAX).contains(&bits_per_entry) {
        return Err(malformed(format!(
            "a Bloom filter with {bits_per_entry} bits per entry (1 to {BLOOM_BITS_PER_ENTRY_MAX})"
        )));
    }
    if !(1..=BLOOM_PROBES_MAX).contains(&probes) {
        return Err(malformed(format!(
            "a Bloom filter with {probes} probes (1 to {BLOOM_PROBES_MAX})"
        )));
    }
    let bits = (u64::from(entries) * u64::from(bits_per_entry)).div_ceil(8);
    if bits != r.0.len() as u64 {
        return Err(malformed(format!(
            "a Bloom filter of {} bytes where its parameters need {bits}",
            r.0.len()
        )));
    }
    Ok(())
}

fn malformed(why: String) -> Refusal {
    Refusal::Malformed(format!("a malformed sync message: {why}"))
}

/// Reads a sync message's encoding from the front; every read is checked against what
/// is left.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, Refusal> {
        Ok(self.take(1)?[0])
    }

    fn leb(&mut self) -> Result<u64, Refusal> {
        let mut value = 0u64;
        for (i, byte) in self.0.iter().enumerate().take(10) {
            let part = u64::from(byte & 0x7f);
            value |= part
                .checked_shl(7 * i as u32)
                .filter(|v| v >> (7 * i as u32) == part)
                .ok_or_else(|| malformed("a number larger than 64 bits".into()))?;
            if byte & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok(value);
            }
        }
        Err(malformed("a truncated number".into()))
    }

    fn u32(&mut self) -> Result<u32, Refusal> {
        u32::try_from(self.leb()?).map_err(|_| malformed("a number larger than 32 bits".into()))
    }

    /// A length of bytes that must follow.
    fn len(&mut self) -> Result<usize, Refusal> {
        let n = self.leb()?;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.0.len())
            .ok_or_else(|| malformed("a length past the end of the message".into()))
    }

    /// A count of items, bounded by `max`.
    fn count(&mut self, what: &'static str, max: usize) -> Result<usize, Refusal> {
        let n = self.leb()?;
        match usize::try_from(n) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(Refusal::OverLimit { what, count: n, max: max as u64 }),
        }
    }

    /// A count of change hashes (at most [`HEADS_PER_DOC_MAX`]) and the hashes.
    fn hashes(&mut self, what: &'static str) -> Result<(), Refusal> {
        let n = self.count(what, HEADS_PER_DOC_MAX)?;
        self.take(n * HASH_BYTES).map(|_| ())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Refusal> {
        if n > self.0.len() {
            return Err(malformed("a truncated message".into()));
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::sync::{Message, SyncDoc};
    use automerge::transaction::Transactable;
    use automerge::{ActorId, Automerge, ROOT};
    use proptest::prelude::*;

    fn leb(mut n: u64, out: &mut Vec<u8>) {
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

    /// A message with one have whose Bloom filter is `bloom`, no heads and no changes.
    fn with_bloom(bloom: &[u8]) -> Vec<u8> {
        let mut m = vec![MESSAGE_V1, 0, 0, 1, 0];
        leb(bloom.len() as u64, &mut m);
        m.extend_from_slice(bloom);
        m.push(0);
        m
    }

    fn bloom(entries: u64, bits_per_entry: u64, probes: u64, bits: usize) -> Vec<u8> {
        let mut b = Vec::new();
        leb(entries, &mut b);
        leb(bits_per_entry, &mut b);
        leb(probes, &mut b);
        b.extend(std::iter::repeat_n(0xff, bits));
        b
    }

    fn doc_with_notes(n: usize) -> Automerge {
        let mut doc = Automerge::new().with_actor(ActorId::from([1; 32]));
        for i in 0..n {
            let mut tx = doc.transaction();
            tx.put(ROOT, format!("note {i}"), "Tea at 8, walked to the shop.").expect("put");
            tx.commit();
        }
        doc
    }

    #[test]
    fn messages_automerge_writes_pass() {
        let doc = doc_with_notes(20);
        let mut state = automerge::sync::State::new();
        let first = doc.generate_sync_message(&mut state).expect("a first message").encode();
        assert_eq!(check_sync_message(&first), Ok(()));
        // The peer's answer carries a Bloom filter of its own changes.
        let mut peer = doc_with_notes(5).with_actor(ActorId::from([2; 32]));
        let mut peer_state = automerge::sync::State::new();
        let first = Message::decode(&first).expect("decodes");
        peer.receive_sync_message(&mut peer_state, first).expect("applies");
        let answer = peer.generate_sync_message(&mut peer_state).expect("an answer");
        assert!(!answer.have.is_empty());
        assert_eq!(check_sync_message(&answer.clone().encode()), Ok(()));
        let mut again = automerge::sync::State::new();
        let mut fresh = Automerge::new();
        fresh.receive_sync_message(&mut again, answer).expect("applies");
        let with_changes = doc.generate_sync_message(&mut state);
        if let Some(message) = with_changes {
            assert_eq!(check_sync_message(&message.encode()), Ok(()));
        }
    }

    #[test]
    fn bloom_filters_that_would_panic_or_allocate_are_refused() {
        // Zero bits per entry: Automerge divides by zero.
        let zero_bits = with_bloom(&bloom(5, 0, 7, 0));
        assert!(matches!(check_sync_message(&zero_bits), Err(Refusal::Malformed(_))));
        // Four billion probes: Automerge reserves memory for each.
        let probes = with_bloom(&bloom(1, 10, u64::from(u32::MAX), 2));
        assert!(matches!(check_sync_message(&probes), Err(Refusal::Malformed(_))));
        let entries = with_bloom(&bloom(u64::from(BLOOM_ENTRIES_MAX) + 1, 1, 7, 0));
        assert!(matches!(check_sync_message(&entries), Err(Refusal::OverLimit { .. })));
        let short = with_bloom(&bloom(100, 10, 7, 3));
        assert!(matches!(check_sync_message(&short), Err(Refusal::Malformed(_))));
        assert_eq!(check_sync_message(&with_bloom(&bloom(8, 10, 7, 10))), Ok(()));
    }

    #[test]
    fn a_compressed_change_that_inflates_past_the_limit_is_refused() {
        use std::io::Write;
        // A change chunk whose deflate stream inflates to more than the limit: a few
        // hundred kilobytes on the wire.
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..=(INFLATED_BYTES_MAX >> 20) {
            encoder.write_all(&zeros).expect("in memory");
        }
        let deflated = encoder.finish().expect("in memory");
        assert!(deflated.len() < 1 << 20, "{} bytes on the wire", deflated.len());
        let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2];
        leb(deflated.len() as u64, &mut chunk);
        chunk.extend(deflated);
        let mut m = vec![MESSAGE_V1, 0, 0, 0, 1];
        leb(chunk.len() as u64, &mut m);
        m.extend(chunk);
        assert!(matches!(
            check_sync_message(&m),
            Err(Refusal::OverLimit { what: "bytes of inflated changes in a sync message", .. })
        ));
    }

    #[test]
    fn counts_past_the_limits_are_refused_before_anything_is_read() {
        let mut heads = vec![MESSAGE_V1];
        leb(HEADS_PER_DOC_MAX as u64 + 1, &mut heads);
        assert!(matches!(check_sync_message(&heads), Err(Refusal::OverLimit { .. })));
        let mut haves = vec![MESSAGE_V2, 0, 0];
        leb(u64::MAX, &mut haves);
        assert!(matches!(check_sync_message(&haves), Err(Refusal::OverLimit { .. })));
        let mut chunks = vec![MESSAGE_V2, 0, 0, 0];
        leb(CHUNKS_PER_MESSAGE_MAX as u64 + 1, &mut chunks);
        assert!(matches!(check_sync_message(&chunks), Err(Refusal::OverLimit { .. })));
    }

    proptest! {
        /// Whatever bytes pass the check, Automerge decodes and applies them without
        /// panicking.
        #[test]
        fn what_passes_the_check_never_panics_automerge(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            first in prop_oneof![Just(MESSAGE_V1), Just(MESSAGE_V2)],
        ) {
            let mut message = vec![first];
            message.extend_from_slice(&bytes);
            for candidate in [&bytes, &message] {
                if check_sync_message(candidate).is_ok()
                    && let Ok(decoded) = Message::decode(candidate)
                {
                    let mut doc = doc_with_notes(3);
                    let mut state = automerge::sync::State::new();
                    let _ = doc.receive_sync_message(&mut state, decoded);
                    let _ = doc.generate_sync_message(&mut state);
                }
            }
        }

        /// Bloom filters with any parameters: those that pass are safe for Automerge to
        /// probe (it does so when it answers the message).
        #[test]
        fn bloom_filters_that_pass_are_safe_to_probe(
            entries in 0u64..40,
            bits_per_entry in 0u64..80,
            probes in 0u64..80,
            extra in 0usize..3,
        ) {
            let bits = usize::try_from((entries * bits_per_entry).div_ceil(8)).unwrap_or(0);
            let message = with_bloom(&bloom(entries, bits_per_entry, probes, bits + extra));
            if check_sync_message(&message).is_ok() {
                let decoded = Message::decode(&message).expect("a checked message decodes");
                let mut doc = doc_with_notes(3);
                let mut state = automerge::sync::State::new();
                doc.receive_sync_message(&mut state, decoded).expect("applies");
                let _ = doc.generate_sync_message(&mut state);
            }
        }
    }
}
