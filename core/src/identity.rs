//! Device identity: an ed25519 key pair per device. The same 32-byte secret is the
//! device's iroh endpoint key, so the key that signs membership ops is the key
//! peers authenticate on connection.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::ids::DeviceId;

/// A device's secret key. Never printed: `Debug` shows only the public id.
#[derive(Clone)]
pub struct DeviceKey(SigningKey);

impl DeviceKey {
    /// The key whose secret is `seed` (32 random bytes, passed in by the caller).
    pub fn from_seed(seed: [u8; 32]) -> DeviceKey {
        DeviceKey(SigningKey::from_bytes(&seed))
    }

    /// The 32-byte secret, for storing in the device's key file.
    pub fn to_seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The device's public id.
    pub fn device_id(&self) -> DeviceId {
        DeviceId::from_bytes(self.0.verifying_key().to_bytes())
    }

    /// The device's X25519 secret, derived from its ed25519 key (the scalar its
    /// signatures use), to unwrap team keys sent to it: see [`crate::keys`].
    pub(crate) fn x25519_secret(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.0.to_scalar_bytes())
    }

    /// Signs `message` with this device's key.
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.0.sign(message).to_bytes())
    }
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceKey({:?})", self.device_id())
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", &crate::ids::encode_base32(&self.0)[..10])
    }
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = <Vec<u8>>::deserialize(deserializer)?;
        <[u8; 64]>::try_from(bytes.as_slice())
            .map(Signature)
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"64 bytes"))
    }
}

/// A signature that does not verify against the claimed device key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the signature does not verify for device {device}")]
pub struct BadSignature {
    /// The device that supposedly signed.
    pub device: DeviceId,
}

impl DeviceId {
    /// Checks that `signature` is this device's signature of `message` (strict
    /// verification: no malleable or small-order keys).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), BadSignature> {
        let bad = || BadSignature { device: *self };
        let key = VerifyingKey::from_bytes(self.as_bytes()).map_err(|_| bad())?;
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(message, &sig).map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_the_signer_and_message() {
        let alice = DeviceKey::from_seed([1; 32]);
        let bob = DeviceKey::from_seed([2; 32]);
        let sig = alice.sign(b"add member");
        assert!(alice.device_id().verify(b"add member", &sig).is_ok());
        assert!(alice.device_id().verify(b"add member!", &sig).is_err());
        assert!(bob.device_id().verify(b"add member", &sig).is_err());
        assert_eq!(DeviceKey::from_seed(alice.to_seed()).device_id(), alice.device_id());
        assert!(!format!("{alice:?}").contains(&format!("{:?}", alice.to_seed())));
    }
}
