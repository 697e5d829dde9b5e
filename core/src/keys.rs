//! Team keys: the symmetric keys with which a team's devices will encrypt document content
//! for the circle node, which must store and pass it on without reading it.
//!
//! A team has one key per [`KeyScope`] at a time, and earlier ones for what was written
//! before. Each is a random 256-bit key that a device wraps for every device that may read
//! its scope ([`wrap`]), and the wrapped copies travel in the signed membership log
//! ([`OpBody::TeamKeys`](crate::OpBody::TeamKeys)). Wrapping is an X25519 exchange between
//! a fresh ephemeral key and the recipient's device key (its ed25519 key, as X25519),
//! BLAKE3 in its key-derivation mode over the shared secret and the context, and
//! ChaCha20-Poly1305. Only the recipient's device key unwraps it ([`unwrap`]), and the
//! recipient checks that what it unwrapped is the key the op names ([`TeamKey::id`]).

use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, Key, KeyInit, Nonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::doc_kind::DocKind;
use crate::identity::DeviceKey;
use crate::ids::{DeviceId, TeamId};
use crate::membership::{Access, Role};

/// The context of the key derivation that wraps a team key for one device.
const WRAP_CONTEXT: &str = "care-commons 2026-12 team key wrapped for a device v1";
/// The context of a team key's id.
const ID_CONTEXT: &str = "care-commons 2026-12 team key id v1";

/// What a team key encrypts: the documents a role reads all of, or none of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KeyScope {
    /// The care record: the health plan and the care notes (what a volunteer never reads).
    Care,
    /// Everything else: the team document, the everyday plan, general notes, the rota and
    /// promises.
    Team,
}

impl KeyScope {
    /// Every scope.
    pub const ALL: [KeyScope; 2] = [KeyScope::Care, KeyScope::Team];

    /// The scope whose key encrypts a document of `kind`.
    pub fn of(kind: &DocKind) -> KeyScope {
        match kind {
            DocKind::HealthPlan | DocKind::Notes { stream: crate::NoteStream::Care, .. } => {
                KeyScope::Care
            }
            _ => KeyScope::Team,
        }
    }

    /// Whether a member with `role` holds this scope's keys: they read every document of
    /// it. A relay reads documents to pass them on and holds no key.
    pub fn held_by(self, role: Role) -> bool {
        if role == Role::Relay {
            return false;
        }
        let month = crate::ids::Month::new(2026, 1).expect("a valid month");
        let kinds = [
            DocKind::Team,
            DocKind::Plan,
            DocKind::HealthPlan,
            DocKind::Notes { stream: crate::NoteStream::Care, month },
            DocKind::Notes { stream: crate::NoteStream::General, month },
            DocKind::Rota { month },
            DocKind::Promises,
        ];
        kinds
            .iter()
            .filter(|kind| KeyScope::of(kind) == self)
            .all(|kind| role.access(kind) != Access::None)
    }
}

impl std::fmt::Display for KeyScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyScope::Care => "care",
            KeyScope::Team => "team",
        })
    }
}

/// A team key's id: a hash of the key in its team and scope, so that a device that
/// unwraps a key can tell it is the one named, and nobody learns the key from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 32]);

/// A team key. Its bytes are wiped when it is dropped and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct TeamKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for TeamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TeamKey(..)")
    }
}

impl TeamKey {
    /// A key from 32 random bytes (drawn by the caller: this crate draws no randomness).
    pub fn from_bytes(bytes: [u8; 32]) -> TeamKey {
        TeamKey(Zeroizing::new(bytes))
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key's id in `team` and `scope`.
    pub fn id(&self, team: TeamId, scope: KeyScope) -> KeyId {
        let mut hasher = blake3::Hasher::new_derive_key(ID_CONTEXT);
        hasher.update(team.as_bytes());
        hasher.update(&[scope_byte(scope)]);
        hasher.update(self.as_bytes());
        KeyId(*hasher.finalize().as_bytes())
    }
}

/// A team key wrapped for one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The device that can unwrap it.
    pub device: DeviceId,
    /// The wrapping's ephemeral X25519 public key.
    pub ephemeral: [u8; 32],
    /// The key, encrypted.
    pub sealed: [u8; 32],
    /// The ChaCha20-Poly1305 tag of `sealed`.
    pub tag: [u8; 16],
}

/// Why a team key cannot be wrapped or unwrapped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The device id is not a valid ed25519 public key, so no key can be wrapped for it.
    #[error("device {0} has no valid public key to wrap a team key for")]
    NotAKey(DeviceId),
    /// The exchange gave the all-zero secret: the other side's key is of low order.
    #[error("the key exchange with device {0} gave no shared secret")]
    NoSharedSecret(DeviceId),
    /// The wrapped key does not decrypt with this device's key: it was wrapped for another
    /// device, or altered.
    #[error("the team key wrapped for device {0} does not open with its key")]
    DoesNotOpen(DeviceId),
    /// What was unwrapped is not the key the op names.
    #[error("the team key wrapped for device {0} is not the key it claims to be")]
    WrongKey(DeviceId),
}

/// Wraps `key` (of `team`, for `scope`) for device `to`, with `ephemeral` as the secret of
/// the exchange: 32 random bytes, never used twice.
pub fn wrap(
    team: TeamId,
    scope: KeyScope,
    key: &TeamKey,
    to: DeviceId,
    ephemeral: [u8; 32],
) -> Result<WrappedKey, KeyError> {
    let ephemeral = Zeroizing::new(ephemeral);
    let recipient = x25519_public(to)?;
    let shared = Zeroizing::new(recipient.mul_clamped(*ephemeral).to_bytes());
    if *shared == [0; 32] {
        return Err(KeyError::NoSharedSecret(to));
    }
    let public = MontgomeryPoint::mul_base_clamped(*ephemeral).to_bytes();
    let id = key.id(team, scope);
    let cipher = cipher(&shared, team, scope, &public, to, &id);
    let mut sealed = *key.as_bytes();
    let tag = cipher
        .encrypt_inout_detached(&Nonce::default(), &id.0, sealed.as_mut_slice().into())
        .map_err(|_| KeyError::NoSharedSecret(to))?;
    Ok(WrappedKey { device: to, ephemeral: public, sealed, tag: tag.into() })
}

/// Unwraps a key wrapped for `device_key`'s device, which the op names as `id` (of
/// `team`, for `scope`).
pub fn unwrap(
    team: TeamId,
    scope: KeyScope,
    id: &KeyId,
    wrapped: &WrappedKey,
    device_key: &DeviceKey,
) -> Result<TeamKey, KeyError> {
    let device = device_key.device_id();
    let shared = Zeroizing::new(
        MontgomeryPoint(wrapped.ephemeral).mul_clamped(*device_key.x25519_secret()).to_bytes(),
    );
    if *shared == [0; 32] {
        return Err(KeyError::NoSharedSecret(device));
    }
    let cipher = cipher(&shared, team, scope, &wrapped.ephemeral, device, id);
    let mut key = Zeroizing::new(wrapped.sealed);
    cipher
        .decrypt_inout_detached(
            &Nonce::default(),
            &id.0,
            key.as_mut_slice().into(),
            &wrapped.tag.into(),
        )
        .map_err(|_| KeyError::DoesNotOpen(device))?;
    let key = TeamKey(key);
    if key.id(team, scope) != *id {
        return Err(KeyError::WrongKey(device));
    }
    Ok(key)
}

/// The cipher of one wrapping: its key derived from the shared secret and everything the
/// wrapping is about, so a wrapped key cannot be moved to another team, scope, device or
/// key id. Each derived key encrypts once, so a fixed nonce is safe.
fn cipher(
    shared: &[u8; 32],
    team: TeamId,
    scope: KeyScope,
    ephemeral: &[u8; 32],
    to: DeviceId,
    id: &KeyId,
) -> ChaCha20Poly1305 {
    let mut hasher = blake3::Hasher::new_derive_key(WRAP_CONTEXT);
    hasher.update(shared);
    hasher.update(team.as_bytes());
    hasher.update(&[scope_byte(scope)]);
    hasher.update(ephemeral);
    hasher.update(to.as_bytes());
    hasher.update(&id.0);
    let derived = Zeroizing::new(*hasher.finalize().as_bytes());
    ChaCha20Poly1305::new(&Key::from(*derived))
}

fn x25519_public(device: DeviceId) -> Result<MontgomeryPoint, KeyError> {
    let key = VerifyingKey::from_bytes(device.as_bytes()).map_err(|_| KeyError::NotAKey(device))?;
    if key.is_weak() {
        return Err(KeyError::NotAKey(device));
    }
    Ok(key.to_montgomery())
}

pub(crate) fn scope_byte(scope: KeyScope) -> u8 {
    match scope {
        KeyScope::Care => 1,
        KeyScope::Team => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team() -> TeamId {
        TeamId::from_bytes([5; 16])
    }

    #[test]
    fn a_key_wrapped_for_a_device_opens_with_its_key_alone() -> Result<(), KeyError> {
        let (bea, cal) = (DeviceKey::from_seed([2; 32]), DeviceKey::from_seed([3; 32]));
        let key = TeamKey::from_bytes([9; 32]);
        let id = key.id(team(), KeyScope::Care);
        let wrapped = wrap(team(), KeyScope::Care, &key, bea.device_id(), [7; 32])?;
        assert_ne!(wrapped.sealed, *key.as_bytes());
        assert_eq!(unwrap(team(), KeyScope::Care, &id, &wrapped, &bea)?, key);
        let err = unwrap(team(), KeyScope::Care, &id, &wrapped, &cal);
        assert_eq!(err, Err(KeyError::DoesNotOpen(cal.device_id())));
        // Bound to its team, scope and id.
        let other = TeamId::from_bytes([6; 16]);
        assert!(unwrap(other, KeyScope::Care, &id, &wrapped, &bea).is_err());
        assert!(unwrap(team(), KeyScope::Team, &id, &wrapped, &bea).is_err());
        assert!(unwrap(team(), KeyScope::Care, &KeyId([1; 32]), &wrapped, &bea).is_err());
        Ok(())
    }

    #[test]
    fn a_wrapped_key_altered_or_naming_another_key_is_refused() -> Result<(), KeyError> {
        let bea = DeviceKey::from_seed([2; 32]);
        let key = TeamKey::from_bytes([9; 32]);
        let id = key.id(team(), KeyScope::Team);
        let wrapped = wrap(team(), KeyScope::Team, &key, bea.device_id(), [7; 32])?;
        for i in 0..32 {
            let mut altered = wrapped.clone();
            altered.sealed[i] ^= 1;
            assert!(unwrap(team(), KeyScope::Team, &id, &altered, &bea).is_err());
            let mut altered = wrapped.clone();
            altered.ephemeral[i] ^= 1;
            assert!(unwrap(team(), KeyScope::Team, &id, &altered, &bea).is_err());
        }
        // A key honestly wrapped, under the id of another key: opens, but is not it.
        let other = TeamKey::from_bytes([8; 32]);
        let other_id = other.id(team(), KeyScope::Team);
        let lying = {
            // Wrapped as if it were `other`, with `key`'s bytes inside.
            let recipient = x25519_public(bea.device_id())?;
            let shared = recipient.mul_clamped([7; 32]).to_bytes();
            let public = MontgomeryPoint::mul_base_clamped([7; 32]).to_bytes();
            let cipher =
                cipher(&shared, team(), KeyScope::Team, &public, bea.device_id(), &other_id);
            let mut sealed = *key.as_bytes();
            let tag = cipher
                .encrypt_inout_detached(
                    &Nonce::default(),
                    &other_id.0,
                    sealed.as_mut_slice().into(),
                )
                .map_err(|_| KeyError::NoSharedSecret(bea.device_id()))?;
            WrappedKey { device: bea.device_id(), ephemeral: public, sealed, tag: tag.into() }
        };
        let err = unwrap(team(), KeyScope::Team, &other_id, &lying, &bea);
        assert_eq!(err, Err(KeyError::WrongKey(bea.device_id())));
        Ok(())
    }

    #[test]
    fn a_low_order_or_invalid_device_key_gets_nothing_wrapped() {
        let key = TeamKey::from_bytes([9; 32]);
        let identity = DeviceId::from_bytes({
            let mut b = [0; 32];
            b[0] = 1;
            b
        });
        assert!(wrap(team(), KeyScope::Team, &key, identity, [7; 32]).is_err());
        let bea = DeviceKey::from_seed([2; 32]);
        let wrapped = wrap(team(), KeyScope::Team, &key, bea.device_id(), [7; 32]);
        let mut zero = wrapped.expect("wraps");
        zero.ephemeral = [0; 32];
        let id = key.id(team(), KeyScope::Team);
        assert_eq!(
            unwrap(team(), KeyScope::Team, &id, &zero, &bea),
            Err(KeyError::NoSharedSecret(bea.device_id()))
        );
    }

    #[test]
    fn scopes_follow_what_each_role_reads() {
        use Role::*;
        let holds =
            |role| KeyScope::ALL.into_iter().filter(|s| s.held_by(role)).collect::<Vec<_>>();
        for role in [Owner, Advocate, Worker] {
            assert_eq!(holds(role), KeyScope::ALL, "{role}");
        }
        assert_eq!(holds(Volunteer), [KeyScope::Team]);
        assert_eq!(holds(Relay), []);
        let month = crate::ids::Month::new(2026, 11).expect("a month");
        let care = DocKind::Notes { stream: crate::NoteStream::Care, month };
        assert_eq!(KeyScope::of(&care), KeyScope::Care);
        assert_eq!(KeyScope::of(&DocKind::HealthPlan), KeyScope::Care);
        assert_eq!(KeyScope::of(&DocKind::Rota { month }), KeyScope::Team);
    }
}
