//! Sealed documents: what a team's devices hand the circle node, which stores and passes
//! them on without being able to read them.
//!
//! A [`Sealed`] holds Automerge bytes of one document (the whole document, or the changes
//! after some heads) encrypted under a team key of the document's [`KeyScope`], which the
//! circle node never holds. Beside the ciphertext, in clear, it lists what the circle node
//! needs to check authorship and to know what a device lacks without the content: each
//! change's hash, actor and dependencies, and each change's [`ChangeSig`]. The device that
//! sealed it signs the whole, so a sealed document that turns out not to hold what it
//! lists is pinned on its sealer.
//!
//! The encryption: a key derived for this one sealed document (BLAKE3 in key-derivation
//! mode over the team key and 32 random bytes drawn by the sealer), then ChaCha20-Poly1305
//! with everything listed in clear as associated data, so that neither the listing nor the
//! ciphertext can be altered or moved to another document unnoticed.

use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::change_sig::ChangeSig;
use crate::identity::{BadSignature, DeviceKey, Signature};
use crate::ids::{DeviceId, DocId, TeamId};
use crate::keys::{KeyId, KeyScope, TeamKey, scope_byte};

/// Most changes one sealed document may list.
pub const SEALED_CHANGES_MAX: usize = 65_536;
/// Most dependencies one listed change may name.
pub const SEALED_DEPS_MAX: usize = 1024;
/// Longest actor id of a listed change, in bytes (a device key).
pub const SEALED_ACTOR_BYTES_MAX: usize = 32;

/// The context of the key derivation of one sealed document.
const KEY_CONTEXT: &str = "care-commons 2026-12 sealed document key v1";
/// The context of the hash of what a sealed document lists in clear.
const HEADER_CONTEXT: &str = "care-commons 2026-12 sealed document header v1";
/// What the sealer's signature's message starts with.
const SIGNED_CONTEXT: &[u8] = b"care/sealed/1\0";
/// Bytes of the authentication tag after the ciphertext.
const TAG_BYTES: usize = 16;

/// What the plaintext of a sealed document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SealedForm {
    /// The whole document, as `Automerge::save` writes it: it replaces every sealed
    /// document of its id whose changes it holds.
    Whole,
    /// Changes after others (`Automerge::save_after`): they apply to a document holding
    /// their dependencies.
    Changes,
}

/// One change as listed in clear.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedChange {
    /// The change's hash.
    pub hash: [u8; 32],
    /// Its Automerge actor: the author's device key (or, for a document's deterministic
    /// first change, the document's id), at most [`SEALED_ACTOR_BYTES_MAX`] bytes.
    #[serde(with = "serde_bytes")]
    pub actor: Vec<u8>,
    /// The hashes of the changes it follows.
    pub deps: Vec<[u8; 32]>,
}

/// A document's changes, encrypted for the devices of a team, with what can be checked
/// without reading them in clear.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// What the plaintext is.
    pub form: SealedForm,
    /// The scope of the key it is encrypted under.
    pub scope: KeyScope,
    /// The id of that key.
    pub key: KeyId,
    /// Every change the plaintext holds.
    pub changes: Vec<SealedChange>,
    /// The signatures of those changes (the deterministic first change has none).
    pub signatures: Vec<ChangeSig>,
    /// The random bytes the sealer drew for this document's key.
    pub nonce: [u8; 32],
    /// The encrypted Automerge bytes, followed by their 16-byte tag.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
    /// The device that sealed it.
    pub sealer: DeviceId,
    /// The sealer's signature of all of the above, in its team and document.
    pub signature: Signature,
}

/// Why a sealed document is refused or does not open.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// A count is past its bound, or the ciphertext is shorter than its tag.
    #[error("a sealed document past a bound: {0}")]
    Bounds(String),
    /// The sealer's signature does not verify.
    #[error("a sealed document whose sealer's signature does not verify")]
    BadSealer(#[from] BadSignature),
    /// It does not decrypt under the key it names: altered, or moved from another
    /// document.
    #[error("a sealed document that does not decrypt under its key")]
    DoesNotOpen,
}

/// What a device needs to seal a document: the team key, the sealer's key, and the
/// document's bytes with the changes they hold.
pub struct ToSeal<'a> {
    /// The team.
    pub team: TeamId,
    /// The document.
    pub doc: DocId,
    /// What `plaintext` is.
    pub form: SealedForm,
    /// The scope of `key`.
    pub scope: KeyScope,
    /// The key to encrypt under.
    pub key: &'a TeamKey,
    /// Every change `plaintext` holds.
    pub changes: Vec<SealedChange>,
    /// Their signatures.
    pub signatures: Vec<ChangeSig>,
    /// The Automerge bytes.
    pub plaintext: Vec<u8>,
    /// 32 random bytes, never used twice (this crate draws no randomness).
    pub nonce: [u8; 32],
    /// The sealing device's key.
    pub sealer: &'a DeviceKey,
}

impl std::fmt::Debug for ToSeal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToSeal")
            .field("team", &self.team)
            .field("doc", &self.doc)
            .field("form", &self.form)
            .field("changes", &self.changes.len())
            .field("bytes", &self.plaintext.len())
            .finish_non_exhaustive()
    }
}

impl Sealed {
    /// Encrypts and signs.
    pub fn seal(to_seal: ToSeal<'_>) -> Sealed {
        let ToSeal { team, doc, form, scope, key, changes, signatures, plaintext, nonce, sealer } =
            to_seal;
        let mut sealed = Sealed {
            form,
            scope,
            key: key.id(team, scope),
            changes,
            signatures,
            nonce,
            ciphertext: plaintext,
            sealer: sealer.device_id(),
            signature: Signature([0; 64]),
        };
        let header = sealed.header(team, doc);
        let tag = cipher(key, &nonce)
            .encrypt_inout_detached(
                &Nonce::default(),
                &header,
                sealed.ciphertext.as_mut_slice().into(),
            )
            .expect("ChaCha20-Poly1305 encrypts any length this process can hold");
        sealed.ciphertext.extend_from_slice(&tag);
        sealed.signature = sealer.sign(&sealed.signed_message(&header));
        sealed
    }

    /// Checks the bounds and the sealer's signature: what the circle node can check.
    pub fn check(&self, team: TeamId, doc: DocId) -> Result<(), SealError> {
        self.check_bounds()?;
        let header = self.header(team, doc);
        Ok(self.sealer.verify(&self.signed_message(&header), &self.signature)?)
    }

    /// Checks the counts and lengths alone.
    pub fn check_bounds(&self) -> Result<(), SealError> {
        if self.changes.len() > SEALED_CHANGES_MAX {
            return Err(SealError::Bounds(format!(
                "{} changes, more than {SEALED_CHANGES_MAX}",
                self.changes.len()
            )));
        }
        if let Some(change) = self.changes.iter().find(|c| c.deps.len() > SEALED_DEPS_MAX) {
            return Err(SealError::Bounds(format!(
                "a change following {} others, more than {SEALED_DEPS_MAX}",
                change.deps.len()
            )));
        }
        if self.changes.iter().any(|c| c.actor.len() > SEALED_ACTOR_BYTES_MAX) {
            return Err(SealError::Bounds(format!(
                "an actor id longer than {SEALED_ACTOR_BYTES_MAX} bytes"
            )));
        }
        if self.signatures.len() > self.changes.len() {
            return Err(SealError::Bounds(format!(
                "{} signatures of {} changes",
                self.signatures.len(),
                self.changes.len()
            )));
        }
        if self.ciphertext.len() < TAG_BYTES {
            return Err(SealError::Bounds("a ciphertext shorter than its tag".into()));
        }
        Ok(())
    }

    /// Checks, then decrypts with `key` (the key [`Sealed::key`] names): the Automerge
    /// bytes.
    pub fn open(&self, team: TeamId, doc: DocId, key: &TeamKey) -> Result<Vec<u8>, SealError> {
        self.check(team, doc)?;
        let header = self.header(team, doc);
        let (body, tag) = self.ciphertext.split_at(self.ciphertext.len() - TAG_BYTES);
        let tag = Tag::try_from(tag).map_err(|_| SealError::DoesNotOpen)?;
        let mut plaintext = body.to_vec();
        cipher(key, &self.nonce)
            .decrypt_inout_detached(
                &Nonce::default(),
                &header,
                plaintext.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| SealError::DoesNotOpen)?;
        Ok(plaintext)
    }

    /// The listed changes that no other listed change follows.
    pub fn heads(&self) -> Vec<[u8; 32]> {
        let deps: std::collections::HashSet<&[u8; 32]> =
            self.changes.iter().flat_map(|c| c.deps.iter()).collect();
        let mut heads: Vec<[u8; 32]> =
            self.changes.iter().map(|c| c.hash).filter(|h| !deps.contains(h)).collect();
        heads.sort();
        heads.dedup();
        heads
    }

    /// Bytes this sealed document takes, roughly, in a frame or a store.
    pub fn size(&self) -> usize {
        self.ciphertext.len()
            + self.changes.iter().map(|c| 64 + 32 * c.deps.len()).sum::<usize>()
            + self.signatures.iter().map(|s| 96 + 32 * s.membership.len()).sum::<usize>()
            + 200
    }

    /// A hash of everything listed in clear, in its team and document: the associated
    /// data of the encryption, and what the sealer signs.
    fn header(&self, team: TeamId, doc: DocId) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key(HEADER_CONTEXT);
        hasher.update(team.as_bytes());
        hasher.update(doc.as_bytes());
        hasher.update(&[match self.form {
            SealedForm::Whole => 1,
            SealedForm::Changes => 2,
        }]);
        hasher.update(&[scope_byte(self.scope)]);
        hasher.update(&self.key.0);
        hasher.update(&self.nonce);
        hasher.update(&(self.changes.len() as u64).to_le_bytes());
        for change in &self.changes {
            hasher.update(&change.hash);
            hasher.update(&[change.actor.len() as u8]);
            hasher.update(&change.actor);
            hasher.update(&(change.deps.len() as u64).to_le_bytes());
            for dep in &change.deps {
                hasher.update(dep);
            }
        }
        *hasher.finalize().as_bytes()
    }

    fn signed_message(&self, header: &[u8; 32]) -> Vec<u8> {
        let mut message = SIGNED_CONTEXT.to_vec();
        message.extend_from_slice(header);
        message.extend_from_slice(blake3::hash(&self.ciphertext).as_bytes());
        message
    }
}

/// The cipher of one sealed document: its key derived from the team key and the nonce,
/// used once, so a fixed nonce is safe.
fn cipher(key: &TeamKey, nonce: &[u8; 32]) -> ChaCha20Poly1305 {
    let mut hasher = blake3::Hasher::new_derive_key(KEY_CONTEXT);
    hasher.update(key.as_bytes());
    hasher.update(nonce);
    let derived = Zeroizing::new(*hasher.finalize().as_bytes());
    ChaCha20Poly1305::new(&Key::from(*derived))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team() -> TeamId {
        TeamId::from_bytes([5; 16])
    }

    fn doc() -> DocId {
        DocId::from_bytes([6; 16])
    }

    fn sealed(key: &TeamKey, sealer: &DeviceKey, plaintext: &[u8]) -> Sealed {
        Sealed::seal(ToSeal {
            team: team(),
            doc: doc(),
            form: SealedForm::Changes,
            scope: KeyScope::Care,
            key,
            changes: vec![SealedChange { hash: [1; 32], actor: vec![2; 32], deps: vec![[3; 32]] }],
            signatures: Vec::new(),
            plaintext: plaintext.to_vec(),
            nonce: [7; 32],
            sealer,
        })
    }

    #[test]
    fn a_sealed_document_opens_with_its_key_alone_and_hides_its_words() -> Result<(), SealError> {
        let (key, other) = (TeamKey::from_bytes([9; 32]), TeamKey::from_bytes([8; 32]));
        let sealer = DeviceKey::from_seed([4; 32]);
        let words = b"Gave Mrs Lee her evening tablets at 8";
        let sealed = sealed(&key, &sealer, words);
        assert!(!sealed.ciphertext.windows(8).any(|w| words.windows(8).any(|x| x == w)));
        sealed.check(team(), doc())?;
        assert_eq!(sealed.open(team(), doc(), &key)?, words);
        assert_eq!(sealed.open(team(), doc(), &other), Err(SealError::DoesNotOpen));
        assert_eq!(sealed.heads(), vec![[1; 32]]);
        Ok(())
    }

    #[test]
    fn an_altered_or_moved_sealed_document_is_refused() {
        let key = TeamKey::from_bytes([9; 32]);
        let sealer = DeviceKey::from_seed([4; 32]);
        let sealed = sealed(&key, &sealer, b"a note");
        let other_doc = DocId::from_bytes([7; 16]);
        assert!(matches!(sealed.check(team(), other_doc), Err(SealError::BadSealer(_))));

        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(matches!(flipped.check(team(), doc()), Err(SealError::BadSealer(_))));

        let mut relisted = sealed.clone();
        relisted.changes[0].actor = vec![3; 32];
        assert!(matches!(relisted.check(team(), doc()), Err(SealError::BadSealer(_))));

        // Re-signed by another device, the listing altered: signed, but it no longer opens.
        let thief = DeviceKey::from_seed([5; 32]);
        let mut resigned = sealed.clone();
        resigned.changes[0].deps.clear();
        resigned.sealer = thief.device_id();
        let header = resigned.header(team(), doc());
        resigned.signature = thief.sign(&resigned.signed_message(&header));
        assert_eq!(resigned.check(team(), doc()), Ok(()));
        assert_eq!(resigned.open(team(), doc(), &key), Err(SealError::DoesNotOpen));

        let mut short = sealed;
        short.ciphertext.truncate(3);
        assert!(matches!(short.check(team(), doc()), Err(SealError::Bounds(_))));
    }
}
