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

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

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
    /// `team`, all at once (ed25519 batch verification, about three times as fast per
    /// signature as one by one). Returns the position of the first that fails.
    ///
    /// Every signature, one or many, is checked this one way (the batch equation, keys
    /// of low order refused), so that every device reaches the same verdict on it
    /// whichever way it arrived.
    pub fn verify_all(
        team: TeamId,
        doc: DocId,
        signed: &[(DeviceId, &ChangeSig)],
    ) -> Result<(), usize> {
        let mut keys = Vec::with_capacity(signed.len());
        for (i, (device, _)) in signed.iter().enumerate() {
            match VerifyingKey::from_bytes(device.as_bytes()) {
                Ok(key) if !key.is_weak() => keys.push(key),
                _ => return Err(i),
            }
        }
        let messages: Vec<Vec<u8>> =
            signed.iter().map(|(_, sig)| message(team, doc, &sig.hash, &sig.membership)).collect();
        let signatures: Vec<ed25519_dalek::Signature> = signed
            .iter()
            .map(|(_, sig)| ed25519_dalek::Signature::from_bytes(&sig.signature.0))
            .collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        if verify_in_parallel(&refs, &signatures, &keys) {
            return Ok(());
        }
        // Which one: each alone, by the same equation.
        let alone = |i: usize| {
            ed25519_dalek::verify_batch(&refs[i..=i], &signatures[i..=i], &keys[i..=i]).is_ok()
        };
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

/// Whether every signature verifies, by ed25519 batches: one, or one per core for a
/// large set. A batch fails as a whole; the caller then finds which signature failed.
fn verify_in_parallel(
    messages: &[&[u8]],
    signatures: &[ed25519_dalek::Signature],
    keys: &[VerifyingKey],
) -> bool {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let threads = cores.min(signatures.len() / SIGNATURES_PER_THREAD_MIN).max(1);
    if threads == 1 {
        return ed25519_dalek::verify_batch(messages, signatures, keys).is_ok();
    }
    let per_thread = signatures.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let batches: Vec<_> = (0..signatures.len())
            .step_by(per_thread)
            .map(|start| {
                let end = (start + per_thread).min(signatures.len());
                let (m, s, k) = (&messages[start..end], &signatures[start..end], &keys[start..end]);
                scope.spawn(move || ed25519_dalek::verify_batch(m, s, k).is_ok())
            })
            .collect();
        // A thread that could not finish (it cannot panic on these inputs) fails the set.
        batches.into_iter().all(|batch| batch.join().unwrap_or(false))
    })
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
