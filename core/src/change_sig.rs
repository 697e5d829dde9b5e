//! Signed authorship of document changes.
//!
//! An Automerge change names its author by actor id, and here the actor id is the
//! author's device key; but an actor id is only a claim, which anyone can write in a
//! change. A [`ChangeSig`] proves it: the device whose key is the change's actor signs the
//! change's hash in its context (the team, the document, and the heads of the team's
//! membership log as the author saw them when writing). Every device checks the signature,
//! and the signer's right to write that kind of document at that point of the log, before
//! a change is applied, stored or passed on; signatures are kept beside the documents, so
//! they outlive the chunks the changes arrived in.

use std::collections::HashMap;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

use crate::identity::{BadSignature, DeviceKey, Signature};
use crate::ids::{DeviceId, DocId, OpHash, TeamId};

/// Most membership heads one signature may name. A log has a few heads at most (one per
/// concurrent branch); more is a sender's mistake or an attack.
pub const SIGNED_HEADS_MAX: usize = 64;

/// What a signature's message starts with, so that no other signed message of this
/// project (membership ops, join requests) can be taken for one.
const CONTEXT: &[u8] = b"care/change/1\0";

/// A device's signature of one change of one document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSig {
    /// The change's hash (SHA-256, as Automerge computes it).
    pub hash: [u8; 32],
    /// The heads of the team's membership log the author had when writing, sorted.
    pub membership: Vec<OpHash>,
    /// The author's signature of the change's hash in its context (team, document,
    /// membership heads).
    pub signature: Signature,
}

/// Why a [`ChangeSig`] cannot be read from bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a change signature that does not decode: {0}")]
pub struct SigDecodeError(String);

impl ChangeSig {
    /// Signs the change `hash` of `doc` in `team`, written with the membership log at
    /// `membership` (its heads).
    pub fn sign(
        key: &DeviceKey,
        team: TeamId,
        doc: DocId,
        hash: [u8; 32],
        membership: &[OpHash],
    ) -> ChangeSig {
        let mut membership = membership.to_vec();
        membership.sort();
        let signature = key.sign(&message(team, doc, &hash, &membership));
        ChangeSig { hash, membership, signature }
    }

    /// Checks that `signer` signed this change of `doc` in `team`: [`ChangeSig::verify_all`]
    /// of this one signature.
    pub fn verify(&self, signer: DeviceId, team: TeamId, doc: DocId) -> Result<(), BadSignature> {
        ChangeSig::verify_all(team, doc, &[(signer, self)])
            .map_err(|_| BadSignature { device: signer })
    }

    /// Checks that each signature is its device's signature of its change of `doc` in
    /// `team`, all at once: one cofactored ed25519 batch equation, in which each signer's
    /// key enters once (per core, for a large set). Returns the position of the first that
    /// fails.
    ///
    /// Every signature, one or many, is checked this one way (the cofactored batch
    /// equation, keys of low order refused), so that every device reaches the same verdict
    /// on it whichever way, and with whichever others, it arrived.
    pub fn verify_all(
        team: TeamId,
        doc: DocId,
        signed: &[(DeviceId, &ChangeSig)],
    ) -> Result<(), usize> {
        // A document's changes come from a few devices: each key is read (a point
        // decompression, as costly as a fifth of a signature's check) once.
        let mut keys: Vec<Key> = Vec::new();
        let mut index: HashMap<DeviceId, Option<usize>> = HashMap::new();
        let mut of_each = Vec::with_capacity(signed.len());
        for (i, (device, _)) in signed.iter().enumerate() {
            let key = *index.entry(*device).or_insert_with(|| {
                let key = VerifyingKey::from_bytes(device.as_bytes()).ok()?;
                (!key.is_weak()).then(|| {
                    keys.push(Key { bytes: *device.as_bytes(), point: key.to_edwards() });
                    keys.len() - 1
                })
            });
            of_each.push(key.ok_or(i)?);
        }
        let messages: Vec<Vec<u8>> =
            signed.iter().map(|(_, sig)| message(team, doc, &sig.hash, &sig.membership)).collect();
        let items: Vec<Item<'_>> = signed
            .iter()
            .zip(&messages)
            .zip(of_each)
            .map(|(((_, sig), message), key)| Item { key, message, signature: &sig.signature.0 })
            .collect();
        if verify_in_parallel(&keys, &items) {
            return Ok(());
        }
        // Which one: each alone, by the same equation.
        let alone = |i: usize| verify_batch(&keys, &items[i..=i]);
        Err((0..signed.len()).find(|i| !alone(*i)).unwrap_or(0))
    }

    /// What the signature was made in the context of, as stored (shared by the changes
    /// an author wrote under one membership): the membership heads.
    pub fn context_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(&self.membership).expect("encoding into a Vec cannot fail")
    }

    /// Reads a signature as stored: the change's hash, [`ChangeSig::context_bytes`] and
    /// the 64 signature bytes.
    pub fn from_stored(
        hash: [u8; 32],
        context: &[u8],
        signature: &[u8],
    ) -> Result<ChangeSig, SigDecodeError> {
        let (membership, rest): (Vec<OpHash>, _) =
            postcard::take_from_bytes(context).map_err(|e| SigDecodeError(e.to_string()))?;
        if !rest.is_empty() {
            return Err(SigDecodeError(format!("{} bytes after its context", rest.len())));
        }
        if membership.len() > SIGNED_HEADS_MAX {
            return Err(SigDecodeError(format!("{} membership heads", membership.len())));
        }
        let signature = <[u8; 64]>::try_from(signature)
            .map_err(|_| SigDecodeError(format!("a signature of {} bytes", signature.len())))?;
        Ok(ChangeSig { hash, membership, signature: Signature(signature) })
    }
}

/// The signed message: the context tag, the team, the document, the change's hash, and
/// the membership heads (count first).
fn message(team: TeamId, doc: DocId, hash: &[u8; 32], membership: &[OpHash]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CONTEXT.len() + 16 + 16 + 32 + 4 + 32 * membership.len());
    out.extend_from_slice(CONTEXT);
    out.extend_from_slice(team.as_bytes());
    out.extend_from_slice(doc.as_bytes());
    out.extend_from_slice(hash);
    out.extend_from_slice(&(membership.len() as u32).to_be_bytes());
    for head in membership {
        out.extend_from_slice(head.as_bytes());
    }
    out
}

/// Signatures in one batch per thread, past which a large batch (a year of notes
/// received whole) is split over the cores: the verdict is the same, sooner.
const SIGNATURES_PER_THREAD_MIN: usize = 1024;

/// A signer's key, read once for every signature it made.
struct Key {
    bytes: [u8; 32],
    point: EdwardsPoint,
}

/// One signature to check: its signer (a position among the keys), message and bytes.
struct Item<'a> {
    key: usize,
    message: &'a [u8],
    signature: &'a [u8; 64],
}

/// Whether every signature holds, by ed25519 batches: one, or one per core for a large
/// set. A batch fails as a whole; the caller then finds which signature failed.
fn verify_in_parallel(keys: &[Key], items: &[Item<'_>]) -> bool {
    let threads = (items.len() / SIGNATURES_PER_THREAD_MIN).min(crate::cores());
    if threads < 2 {
        return verify_batch(keys, items);
    }
    let per_thread = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let batches: Vec<_> = items
            .chunks(per_thread)
            .map(|batch| scope.spawn(move || verify_batch(keys, batch)))
            .collect();
        // A thread that could not finish (it cannot panic on these inputs) fails the set.
        batches.into_iter().all(|batch| batch.join().unwrap_or(false))
    })
}

/// Whether every signature of `items` holds, by one cofactored batch equation:
///
/// `[8]([-Σ zᵢsᵢ]B + Σ zᵢRᵢ + Σ_A (Σ_{i by A} zᵢhᵢ) A) = 0`, with `hᵢ = SHA-512(Rᵢ ‖ A ‖ Mᵢ)`
///
/// for 128-bit `zᵢ` drawn from a hash of every input, as ed25519-dalek's batch does. Two
/// differences: each signer's key enters once, with the sum of its signatures'
/// coefficients (a document's changes come from a few devices, so the equation has about
/// half the points of a batch of independent keys); and the equation is multiplied by the
/// cofactor, so a signature with a small-order part in it gets the same verdict alone and
/// in any batch, whatever the `zᵢ`. An honest signature always holds; a signature that
/// does not hold makes the batch fail but with probability 2⁻¹²⁸.
fn verify_batch(keys: &[Key], items: &[Item<'_>]) -> bool {
    let mut transcript = blake3::Hasher::new_derive_key("care 2026 change signature batch");
    let mut read = Vec::with_capacity(items.len());
    for item in items {
        let (r, s) = item.signature.split_at(32);
        let (Ok(r), Ok(s)) = (<[u8; 32]>::try_from(r), <[u8; 32]>::try_from(s)) else {
            return false;
        };
        let (Some(s), Some(r_point)) =
            (Scalar::from_canonical_bytes(s).into_option(), CompressedEdwardsY(r).decompress())
        else {
            return false;
        };
        let hram: [u8; 64] = Sha512::new()
            .chain_update(r)
            .chain_update(keys[item.key].bytes)
            .chain_update(item.message)
            .finalize()
            .into();
        // `hram` covers R, A and M (SHA-512 being collision resistant); with s, every input.
        transcript.update(&hram);
        transcript.update(s.as_bytes());
        read.push((Scalar::from_bytes_mod_order_wide(&hram), s, r_point));
    }
    if let [(hram, s, r_point)] = read.as_slice() {
        // One signature: the same equation without z (z ≠ 0 changes nothing in a group of
        // prime order), by the base point's precomputed table.
        let key = &keys[items[0].key];
        let expected = EdwardsPoint::vartime_double_scalar_mul_basepoint(&-hram, &key.point, s);
        return (expected - r_point).mul_by_cofactor().is_identity();
    }
    let mut randomness = transcript.finalize_xof();
    let mut base = Scalar::ZERO;
    let mut per_key = vec![Scalar::ZERO; keys.len()];
    let mut scalars = Vec::with_capacity(items.len() + keys.len() + 1);
    let mut points = Vec::with_capacity(items.len() + keys.len() + 1);
    for (item, (hram, s, r_point)) in items.iter().zip(read) {
        let mut z = [0; 16];
        randomness.fill(&mut z);
        let z = Scalar::from(u128::from_le_bytes(z));
        base -= z * s;
        per_key[item.key] += z * hram;
        scalars.push(z);
        points.push(r_point);
    }
    for (key, coefficient) in keys.iter().zip(per_key) {
        if coefficient != Scalar::ZERO {
            scalars.push(coefficient);
            points.push(key.point);
        }
    }
    scalars.push(base);
    points.push(ED25519_BASEPOINT_POINT);
    EdwardsPoint::vartime_multiscalar_mul(scalars, points).mul_by_cofactor().is_identity()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (TeamId, DocId, [u8; 32], Vec<OpHash>) {
        (
            TeamId::from_bytes([1; 16]),
            DocId::from_bytes([2; 16]),
            [3; 32],
            vec![OpHash::from_bytes([5; 32]), OpHash::from_bytes([4; 32])],
        )
    }

    #[test]
    fn a_signature_holds_for_its_signer_change_and_context_only() {
        let (team, doc, hash, heads) = ids();
        let ada = DeviceKey::from_seed([7; 32]);
        let bea = DeviceKey::from_seed([8; 32]);
        let sig = ChangeSig::sign(&ada, team, doc, hash, &heads);
        assert!(sig.membership.is_sorted(), "heads are signed in one order");
        assert!(sig.verify(ada.device_id(), team, doc).is_ok());
        assert!(sig.verify(bea.device_id(), team, doc).is_err(), "another signer");
        assert!(sig.verify(ada.device_id(), TeamId::from_bytes([9; 16]), doc).is_err());
        assert!(sig.verify(ada.device_id(), team, DocId::from_bytes([9; 16])).is_err());
        let mut other = sig.clone();
        other.hash[0] ^= 1;
        assert!(other.verify(ada.device_id(), team, doc).is_err(), "another change");
        let mut other = sig.clone();
        other.membership.pop();
        assert!(other.verify(ada.device_id(), team, doc).is_err(), "another membership");
    }

    #[test]
    fn a_batch_names_the_first_signature_that_fails() {
        let (team, doc, _, heads) = ids();
        let keys: Vec<DeviceKey> = (1..=4).map(|i| DeviceKey::from_seed([i; 32])).collect();
        let sigs: Vec<ChangeSig> =
            (0..4).map(|i| ChangeSig::sign(&keys[i], team, doc, [i as u8; 32], &heads)).collect();
        let signed: Vec<(DeviceId, &ChangeSig)> =
            keys.iter().map(DeviceKey::device_id).zip(&sigs).collect();
        assert_eq!(ChangeSig::verify_all(team, doc, &signed), Ok(()));
        assert_eq!(ChangeSig::verify_all(team, doc, &[]), Ok(()));
        let mut wrong = signed.clone();
        wrong[2].0 = keys[3].device_id();
        assert_eq!(ChangeSig::verify_all(team, doc, &wrong), Err(2));
        // A key of low order, for which signatures are easy to forge: refused.
        let identity = {
            let mut bytes = [0; 32];
            bytes[0] = 1;
            DeviceId::from_bytes(bytes)
        };
        let mut weak = signed.clone();
        weak[1].0 = identity;
        assert_eq!(ChangeSig::verify_all(team, doc, &weak), Err(1));
    }

    #[test]
    fn a_large_set_split_over_threads_still_names_the_first_that_fails() {
        let (team, doc, _, heads) = ids();
        let key = DeviceKey::from_seed([7; 32]);
        let count = 3 * SIGNATURES_PER_THREAD_MIN + 5;
        let sigs: Vec<ChangeSig> = (0..count)
            .map(|i| {
                let hash = blake3::hash(&i.to_le_bytes()).into();
                ChangeSig::sign(&key, team, doc, hash, &heads)
            })
            .collect();
        let signed: Vec<(DeviceId, &ChangeSig)> =
            sigs.iter().map(|s| (key.device_id(), s)).collect();
        assert_eq!(ChangeSig::verify_all(team, doc, &signed), Ok(()));
        // One signature in the last batch, moved to another change: only it fails.
        let mut moved = sigs[count - 2].clone();
        moved.hash = sigs[count - 1].hash;
        let mut wrong = signed.clone();
        wrong[count - 2].1 = &moved;
        assert_eq!(ChangeSig::verify_all(team, doc, &wrong), Err(count - 2));
    }

    /// A signature made by the holder of `secret` (whose public key is the returned
    /// device), with `torsion` (a point of small order) added to its R.
    fn sign_with_torsion(
        secret: Scalar,
        torsion: EdwardsPoint,
        team: TeamId,
        doc: DocId,
        hash: [u8; 32],
    ) -> (DeviceId, ChangeSig) {
        let public = (secret * ED25519_BASEPOINT_POINT).compress().to_bytes();
        let r = Scalar::from_bytes_mod_order_wide(&[9; 64]);
        let r_bytes = (r * ED25519_BASEPOINT_POINT + torsion).compress().to_bytes();
        let hram: [u8; 64] = Sha512::new()
            .chain_update(r_bytes)
            .chain_update(public)
            .chain_update(message(team, doc, &hash, &[]))
            .finalize()
            .into();
        let s = r + Scalar::from_bytes_mod_order_wide(&hram) * secret;
        let mut signature = [0; 64];
        signature[..32].copy_from_slice(&r_bytes);
        signature[32..].copy_from_slice(s.as_bytes());
        let sig = ChangeSig { hash, membership: Vec::new(), signature: Signature(signature) };
        (DeviceId::from_bytes(public), sig)
    }

    #[test]
    fn a_signature_with_a_small_order_part_gets_one_verdict_alone_and_in_any_batch() {
        let (team, doc, _, heads) = ids();
        // y = 0: a point of order four.
        let torsion = CompressedEdwardsY([0; 32]).decompress().expect("a point of the curve");
        assert!(torsion.is_small_order() && !torsion.is_identity());
        let secret = Scalar::from_bytes_mod_order_wide(&[5; 64]);
        let (device, odd) = sign_with_torsion(secret, torsion, team, doc, [1; 32]);
        assert_eq!(ChangeSig::verify_all(team, doc, &[(device, &odd)]), Ok(()));
        let key = DeviceKey::from_seed([7; 32]);
        let others: Vec<ChangeSig> =
            (0..8).map(|i| ChangeSig::sign(&key, team, doc, [i + 2; 32], &heads)).collect();
        for at in 0..=others.len() {
            let mut signed: Vec<(DeviceId, &ChangeSig)> =
                others.iter().map(|sig| (key.device_id(), sig)).collect();
            signed.insert(at, (device, &odd));
            assert_eq!(ChangeSig::verify_all(team, doc, &signed), Ok(()), "at {at}");
        }
        // The same with its s not matching: refused alone and everywhere in a batch.
        let mut wrong = odd.clone();
        wrong.signature.0[40] ^= 1;
        assert_eq!(ChangeSig::verify_all(team, doc, &[(device, &wrong)]), Err(0));
        for at in 0..=others.len() {
            let mut signed: Vec<(DeviceId, &ChangeSig)> =
                others.iter().map(|sig| (key.device_id(), sig)).collect();
            signed.insert(at, (device, &wrong));
            assert_eq!(ChangeSig::verify_all(team, doc, &signed), Err(at));
        }
    }

    #[test]
    fn an_s_past_the_group_order_is_refused() {
        let (team, doc, hash, heads) = ids();
        let key = DeviceKey::from_seed([7; 32]);
        let sig = ChangeSig::sign(&key, team, doc, hash, &heads);
        // s + ℓ: the same s modulo the group order, in a second encoding.
        let order: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut longer = sig.clone();
        let mut carry = 0u16;
        for (byte, add) in longer.signature.0[32..].iter_mut().zip(order) {
            let sum = u16::from(*byte) + u16::from(add) + carry;
            *byte = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0, "s + ℓ fits in 32 bytes");
        assert_eq!(ChangeSig::verify_all(team, doc, &[(key.device_id(), &sig)]), Ok(()));
        assert_eq!(ChangeSig::verify_all(team, doc, &[(key.device_id(), &longer)]), Err(0));
    }

    proptest::proptest! {
        /// The batch's verdict, and the first signature it names, are those of checking
        /// each signature alone with ed25519-dalek's strict verification.
        #[test]
        fn a_batch_agrees_with_each_signature_checked_alone(
            signers in proptest::collection::vec(0..3usize, 1..12),
            damage in proptest::collection::vec((0..12usize, 0..4u8, 0..64usize), 0..3),
        ) {
            let (team, doc, _, heads) = ids();
            let keys: Vec<DeviceKey> = (1..=3).map(|i| DeviceKey::from_seed([i; 32])).collect();
            let mut sigs: Vec<(DeviceId, ChangeSig)> = signers
                .iter()
                .enumerate()
                .map(|(i, &k)| {
                    let hash = blake3::hash(&i.to_le_bytes()).into();
                    (keys[k].device_id(), ChangeSig::sign(&keys[k], team, doc, hash, &heads))
                })
                .collect();
            for (at, how, byte) in damage {
                let Some((device, sig)) = sigs.get_mut(at) else { continue };
                match how {
                    0 => sig.signature.0[byte] ^= 1,
                    1 => sig.hash[byte % 32] ^= 1,
                    2 => *device = keys[(byte % 2) + 1].device_id(),
                    _ => sig.membership.clear(),
                }
            }
            let strict = sigs.iter().position(|(device, sig)| {
                let key = VerifyingKey::from_bytes(device.as_bytes()).expect("a key");
                let signature = ed25519_dalek::Signature::from_bytes(&sig.signature.0);
                key.verify_strict(&message(team, doc, &sig.hash, &sig.membership), &signature)
                    .is_err()
            });
            let signed: Vec<(DeviceId, &ChangeSig)> = sigs.iter().map(|(d, s)| (*d, s)).collect();
            proptest::prop_assert_eq!(
                ChangeSig::verify_all(team, doc, &signed),
                strict.map_or(Ok(()), Err)
            );
        }
    }

    #[test]
    fn stored_form_round_trips_and_rejects_damage() {
        let (team, doc, hash, heads) = ids();
        let sig = ChangeSig::sign(&DeviceKey::from_seed([7; 32]), team, doc, hash, &heads[..1]);
        let context = sig.context_bytes();
        assert_eq!(context.len(), 33, "one head and its count");
        assert_eq!(ChangeSig::from_stored(hash, &context, &sig.signature.0), Ok(sig.clone()));
        let short = &context[..context.len() - 1];
        assert!(ChangeSig::from_stored(hash, short, &sig.signature.0).is_err());
        let mut longer = context.clone();
        longer.push(0);
        assert!(ChangeSig::from_stored(hash, &longer, &sig.signature.0).is_err());
        assert!(ChangeSig::from_stored(hash, &context, &sig.signature.0[1..]).is_err());
    }
}
