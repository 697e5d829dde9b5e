//! Membership operations and their signed, versioned wire form.
//!
//! A [`SignedOp`] keeps the exact bytes its author signed; the signature is
//! checked against those bytes, never against a re-encoding, and its hash (its
//! [`OpHash`]) covers the whole wire form.

use serde::{Deserialize, Serialize};

use super::role::{Hat, Role};
use crate::identity::{BadSignature, DeviceKey, Signature};
use crate::ids::{DeviceId, DocId, MemberId, OpHash, TeamId, Timestamp};
use crate::keys::{KeyId, KeyScope, WrappedKey};

/// Largest wire form of a signed op, in bytes.
pub const OP_BYTES_MAX: usize = 16 * 1024;
/// Most predecessors an op may name.
pub const PREDS_MAX: usize = 256;
/// Longest team or member name, in bytes of UTF-8.
pub const NAME_BYTES_MAX: usize = 200;
/// Longest device label, in bytes of UTF-8.
pub const LABEL_BYTES_MAX: usize = 100;
/// Longest hat name, in bytes of UTF-8.
pub const HAT_NAME_BYTES_MAX: usize = 64;
/// Most hats a member may wear.
pub const HATS_MAX: usize = 16;
/// Most documents a removal may name, over all the devices it removes (see
/// [`KnownChanges`]): about 50 bytes each, so a removal stays well within
/// [`OP_BYTES_MAX`].
pub const KNOWN_DOCS_MAX: usize = 256;
/// Most changes one [`OpBody::AcceptChanges`] may accept.
pub const ACCEPTED_PER_OP_MAX: usize = 256;
/// Most devices one [`OpBody::TeamKeys`] wraps its key for (about 130 bytes each).
pub const WRAPPED_PER_OP_MAX: usize = 100;

/// Version of the encoding of an [`Op`] inside the signed bytes.
const OP_VERSION: u8 = 1;
/// Version of the wire form of a [`SignedOp`].
const WIRE_VERSION: u8 = 1;
/// Prepended to the op bytes before signing, so that a device's signature over a
/// membership op can never be mistaken for its signature over anything else
/// (the same key is the device's iroh endpoint key).
const SIGNING_CONTEXT: &[u8] = b"care-commons/membership-op/v1\0";

/// What a membership operation does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpBody {
    /// Creates the team. The signing device becomes the owner's first device.
    CreateTeam {
        /// The team's name.
        name: String,
        /// The owner: the person getting support.
        owner: MemberId,
        /// The owner's name.
        owner_name: String,
        /// Random bytes, so that two teams with the same name and owner differ.
        nonce: [u8; 16],
    },
    /// Adds a person to the team.
    AddMember {
        /// The new member's id (random, never reused).
        member: MemberId,
        /// Their name.
        name: String,
        /// Their role; never [`Role::Owner`].
        role: Role,
        /// Their hats.
        hats: Vec<Hat>,
    },
    /// Adds a device to a member.
    AddDevice {
        /// The member the device belongs to.
        member: MemberId,
        /// The device's public key.
        device: DeviceId,
        /// A label for people, e.g. "Sam's phone".
        label: String,
    },
    /// Removes a device, keeping nothing aside: written by versions before
    /// [`OpBody::RemoveDeviceKnowing`], and still replayed; no longer written.
    RemoveDevice {
        /// The device to remove.
        device: DeviceId,
    },
    /// Removes a member and all their devices, keeping nothing aside: written by versions
    /// before [`OpBody::RemoveMemberKnowing`], and still replayed; no longer written.
    RemoveMember {
        /// The member to remove.
        member: MemberId,
    },
    /// Changes a member's role and hats.
    ChangeRole {
        /// The member to change.
        member: MemberId,
        /// Their new role; never [`Role::Owner`].
        role: Role,
        /// Their new hats (replacing the old ones).
        hats: Vec<Hat>,
    },
    /// Removes a device (lost phone): it can no longer sync or sign, and its changes the
    /// author did not hold are kept aside (see [`KnownChanges`]).
    RemoveDeviceKnowing {
        /// The device to remove.
        device: DeviceId,
        /// Per document, how many of the device's changes the author held.
        known: Vec<(DocId, u64)>,
    },
    /// Removes a member and all their devices, for good; changes of those devices the
    /// author did not hold are kept aside (see [`KnownChanges`]).
    RemoveMemberKnowing {
        /// The member to remove.
        member: MemberId,
        /// What the author held of each of the member's devices; a device left out had
        /// nothing the author held.
        known: Vec<KnownChanges>,
    },
    /// Lets changes kept aside into a document's record. Only a member with the right
    /// to manage the team may accept.
    AcceptChanges {
        /// The document.
        doc: DocId,
        /// The hashes of the Automerge changes accepted.
        changes: Vec<[u8; 32]>,
    },
    /// Gives devices a team key (see [`crate::keys`]): a new current key of its scope, or
    /// one already given, for devices that lack it. The author's role and every
    /// recipient's hold the scope.
    TeamKeys {
        /// What the key encrypts.
        scope: KeyScope,
        /// The key's id.
        key: KeyId,
        /// Whether the key becomes its scope's current key (it is new); else it was given
        /// before.
        current: bool,
        /// The key, wrapped for each device given it.
        wrapped: Vec<WrappedKey>,
    },
}

/// What the author of a removal held of one removed device's changes: per document, the
/// number of its Automerge changes (they form one chain per document, numbered from 1).
/// The device's later changes of that document are not known to the removal; every
/// device keeps them aside, out of the record, until someone who manages the team
/// accepts them. In a document of a kind the author could not read, nothing is kept
/// aside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownChanges {
    /// The removed device.
    pub device: DeviceId,
    /// Per document, how many of its changes the author held.
    pub docs: Vec<(DocId, u64)>,
}

/// A membership operation before signing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The team; `None` only in [`OpBody::CreateTeam`], whose hash names the team.
    pub team: Option<TeamId>,
    /// The ops the author had seen (the heads of their membership); empty only
    /// in [`OpBody::CreateTeam`].
    pub preds: Vec<OpHash>,
    /// When the author made the op (informative: ordering comes from `preds`).
    pub at: Timestamp,
    /// What the op does.
    pub body: OpBody,
}

/// An op signed by a device, as stored and sent between peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedOp {
    /// The signed bytes: the version byte and the postcard encoding of the op.
    bytes: Vec<u8>,
    /// The signing device.
    author: DeviceId,
    /// The author's signature over the signing context and `bytes`.
    signature: Signature,
    /// BLAKE3 of the wire form, computed once.
    hash: OpHash,
}

/// Why bytes are not a usable signed op.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The bytes are longer than any op may be.
    #[error("a membership op of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge {
        /// Length of the bytes.
        len: usize,
        /// [`OP_BYTES_MAX`].
        max: usize,
    },
    /// The bytes are not an op in the expected format.
    #[error("the membership op could not be decoded: {0}")]
    Decode(String),
    /// The op was written in a format version this program does not know.
    #[error("the membership op has format version {0}, which this version does not support")]
    UnsupportedVersion(u8),
    /// The bytes decode, but are not the one canonical encoding of the op.
    #[error("the membership op is not in canonical form")]
    NonCanonical,
    /// The signature does not verify for the claimed author.
    #[error(transparent)]
    BadSignature(#[from] BadSignature),
}

/// The wire form of a [`SignedOp`].
#[derive(Serialize, Deserialize)]
struct Wire {
    version: u8,
    bytes: Vec<u8>,
    author: DeviceId,
    signature: Signature,
}

impl SignedOp {
    /// Signs `op` with `key`.
    pub fn sign(key: &DeviceKey, op: &Op) -> SignedOp {
        let bytes =
            postcard::to_stdvec(&(OP_VERSION, op)).expect("encoding an op into a Vec cannot fail");
        let signature = key.sign(&signing_message(&bytes));
        SignedOp::assemble(bytes, key.device_id(), signature)
    }

    /// The device that claims to have signed the op (check with [`verify`](Self::verify)).
    pub fn author(&self) -> DeviceId {
        self.author
    }

    /// The op's hash: BLAKE3 of its wire form.
    pub fn hash(&self) -> OpHash {
        self.hash
    }

    /// Decodes the op. The signature is not checked here.
    pub fn op(&self) -> Result<Op, OpError> {
        let (version, rest) = postcard::take_from_bytes::<u8>(&self.bytes).map_err(decode_error)?;
        if version != OP_VERSION {
            return Err(OpError::UnsupportedVersion(version));
        }
        let (op, rest) = postcard::take_from_bytes::<Op>(rest).map_err(decode_error)?;
        if !rest.is_empty() {
            return Err(OpError::Decode(format!("{} bytes after the op", rest.len())));
        }
        Ok(op)
    }

    /// Checks the author's signature over the signed bytes.
    pub fn verify(&self) -> Result<(), OpError> {
        Ok(self.author.verify(&signing_message(&self.bytes), &self.signature)?)
    }

    /// The wire and storage form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = Wire {
            version: WIRE_VERSION,
            bytes: self.bytes.clone(),
            author: self.author,
            signature: self.signature,
        };
        postcard::to_stdvec(&wire).expect("encoding a signed op into a Vec cannot fail")
    }

    /// Reads the wire form. Checks size, version and canonical form, not the
    /// signature nor the op inside (see [`verify`](Self::verify) and [`op`](Self::op)).
    pub fn from_bytes(bytes: &[u8]) -> Result<SignedOp, OpError> {
        if bytes.len() > OP_BYTES_MAX {
            return Err(OpError::TooLarge { len: bytes.len(), max: OP_BYTES_MAX });
        }
        let version = *bytes.first().ok_or_else(|| OpError::Decode("no bytes".into()))?;
        if version != WIRE_VERSION {
            return Err(OpError::UnsupportedVersion(version));
        }
        let wire: Wire = postcard::from_bytes(bytes).map_err(decode_error)?;
        let op = SignedOp::assemble(wire.bytes, wire.author, wire.signature);
        // One op, one hash: reject trailing bytes and alternative encodings.
        if op.to_bytes() != bytes {
            return Err(OpError::NonCanonical);
        }
        Ok(op)
    }

    fn assemble(bytes: Vec<u8>, author: DeviceId, signature: Signature) -> SignedOp {
        let mut op = SignedOp { bytes, author, signature, hash: OpHash::from_bytes([0; 32]) };
        op.hash = OpHash::from_bytes(*blake3::hash(&op.to_bytes()).as_bytes());
        op
    }
}

/// Signs the op that creates a team; its author device becomes the owner's first device.
pub fn create_team(
    key: &DeviceKey,
    at: Timestamp,
    name: &str,
    owner: MemberId,
    owner_name: &str,
    nonce: [u8; 16],
) -> SignedOp {
    let body = OpBody::CreateTeam {
        name: name.to_owned(),
        owner,
        owner_name: owner_name.to_owned(),
        nonce,
    };
    SignedOp::sign(key, &Op { team: None, preds: Vec::new(), at, body })
}

/// The id of the team created by `create`: the first 16 bytes of its hash.
pub fn team_id(create: &SignedOp) -> TeamId {
    let mut id = [0; TeamId::LEN];
    id.copy_from_slice(&create.hash().as_bytes()[..TeamId::LEN]);
    TeamId::from_bytes(id)
}

/// Checks the bounds of an op's fields (names, labels, hats, predecessors);
/// `Err` holds a sentence saying what is wrong.
pub(crate) fn validate(op: &Op) -> Result<(), String> {
    if op.preds.len() > PREDS_MAX {
        return Err(format!("it names {} predecessors, more than {PREDS_MAX}", op.preds.len()));
    }
    let mut preds = op.preds.clone();
    preds.sort();
    preds.dedup();
    if preds.len() != op.preds.len() {
        return Err("it names the same predecessor twice".into());
    }
    validate_body(&op.body)
}

/// Checks the bounds of an op body's fields.
pub(crate) fn validate_body(body: &OpBody) -> Result<(), String> {
    match body {
        OpBody::CreateTeam { name, owner_name, .. } => {
            check_text("team name", name, NAME_BYTES_MAX)?;
            check_text("owner name", owner_name, NAME_BYTES_MAX)
        }
        OpBody::AddMember { name, hats, .. } => {
            check_text("member name", name, NAME_BYTES_MAX)?;
            check_hats(hats)
        }
        OpBody::ChangeRole { hats, .. } => check_hats(hats),
        OpBody::AddDevice { label, .. } => check_text("device label", label, LABEL_BYTES_MAX),
        OpBody::RemoveDevice { .. } | OpBody::RemoveMember { .. } => Ok(()),
        OpBody::RemoveDeviceKnowing { known, .. } => check_known(known.len(), [known]),
        OpBody::RemoveMemberKnowing { known, .. } => {
            if known.len() > super::DEVICES_PER_MEMBER_MAX {
                return Err(format!("it names {} devices, more than a member has", known.len()));
            }
            let mut devices: Vec<DeviceId> = known.iter().map(|k| k.device).collect();
            devices.sort();
            devices.dedup();
            if devices.len() != known.len() {
                return Err("it names the same device twice".into());
            }
            let docs = known.iter().map(|k| k.docs.len()).sum();
            check_known(docs, known.iter().map(|k| &k.docs))
        }
        OpBody::TeamKeys { wrapped, .. } => {
            if wrapped.is_empty() || wrapped.len() > WRAPPED_PER_OP_MAX {
                let n = wrapped.len();
                return Err(format!(
                    "it wraps a key for {n} devices, not 1 to {WRAPPED_PER_OP_MAX}"
                ));
            }
            let mut devices: Vec<DeviceId> = wrapped.iter().map(|w| w.device).collect();
            devices.sort();
            devices.dedup();
            if devices.len() != wrapped.len() {
                return Err("it wraps a key twice for one device".into());
            }
            Ok(())
        }
        OpBody::AcceptChanges { changes, .. } => {
            if changes.is_empty() || changes.len() > ACCEPTED_PER_OP_MAX {
                let n = changes.len();
                return Err(format!("it accepts {n} changes, not 1 to {ACCEPTED_PER_OP_MAX}"));
            }
            let mut sorted = changes.clone();
            sorted.sort();
            sorted.dedup();
            if sorted.len() != changes.len() {
                return Err("it accepts the same change twice".into());
            }
            Ok(())
        }
    }
}

/// Checks the documents a removal names: at most [`KNOWN_DOCS_MAX`] in all, each once per
/// device, with a count of at least one.
fn check_known<'a>(
    total: usize,
    per_device: impl IntoIterator<Item = &'a Vec<(DocId, u64)>>,
) -> Result<(), String> {
    if total > KNOWN_DOCS_MAX {
        return Err(format!("it names {total} documents, more than {KNOWN_DOCS_MAX}"));
    }
    for docs in per_device {
        let mut ids: Vec<DocId> = docs.iter().map(|(doc, _)| *doc).collect();
        ids.sort();
        ids.dedup();
        if ids.len() != docs.len() {
            return Err("it names the same document twice for one device".into());
        }
        if docs.iter().any(|(_, count)| *count == 0) {
            return Err("it names a document with no changes held".into());
        }
    }
    Ok(())
}

fn check_hats(hats: &[Hat]) -> Result<(), String> {
    if hats.len() > HATS_MAX {
        return Err(format!("it gives {} hats, more than {HATS_MAX}", hats.len()));
    }
    for (i, hat) in hats.iter().enumerate() {
        check_text("hat name", &hat.name, HAT_NAME_BYTES_MAX)?;
        if hats[..i].iter().any(|h| h.name == hat.name) {
            return Err(format!("it gives the hat `{}` twice", hat.name));
        }
    }
    Ok(())
}

fn check_text(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if text.len() > max {
        return Err(format!("the {what} is {} bytes long, more than {max}", text.len()));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("the {what} contains control characters"));
    }
    Ok(())
}

fn signing_message(bytes: &[u8]) -> Vec<u8> {
    [SIGNING_CONTEXT, bytes].concat()
}

fn decode_error(e: postcard::Error) -> OpError {
    OpError::Decode(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> SignedOp {
        create_team(
            &DeviceKey::from_seed([1; 32]),
            Timestamp(1_000),
            "Team Ada",
            MemberId::from_bytes([2; 16]),
            "Ada",
            [3; 16],
        )
    }

    #[test]
    fn signed_ops_round_trip_and_verify() {
        let op = sample();
        let back = SignedOp::from_bytes(&op.to_bytes()).expect("round trip");
        assert_eq!(back, op);
        assert_eq!(back.hash(), op.hash());
        assert!(back.verify().is_ok());
        assert_eq!(back.op().expect("decodes").preds, Vec::new());
        assert_eq!(team_id(&op).as_bytes()[..], op.hash().as_bytes()[..16]);
    }

    #[test]
    fn tampered_bytes_fail_to_verify() {
        let mut bytes = sample().to_bytes();
        bytes[10] ^= 1;
        let op = SignedOp::from_bytes(&bytes).expect("still well formed");
        assert!(matches!(op.verify(), Err(OpError::BadSignature(_))));
    }

    #[test]
    fn oversized_trailing_and_unknown_versions_are_refused() {
        let big = vec![WIRE_VERSION; OP_BYTES_MAX + 1];
        assert!(matches!(SignedOp::from_bytes(&big), Err(OpError::TooLarge { .. })));
        let mut trailing = sample().to_bytes();
        trailing.push(0);
        assert_eq!(SignedOp::from_bytes(&trailing), Err(OpError::NonCanonical));
        let mut version = sample().to_bytes();
        version[0] = 9;
        assert_eq!(SignedOp::from_bytes(&version), Err(OpError::UnsupportedVersion(9)));
        assert!(SignedOp::from_bytes(&[]).is_err());
    }

    #[test]
    fn bounds_are_checked() {
        let long = "x".repeat(NAME_BYTES_MAX + 1);
        let body = OpBody::AddMember {
            member: MemberId::from_bytes([1; 16]),
            name: long,
            role: Role::Worker,
            hats: vec![],
        };
        assert!(validate_body(&body).is_err());
        let hats = vec![Hat::named("rota-keeper"); 2];
        let body =
            OpBody::ChangeRole { member: MemberId::from_bytes([1; 16]), role: Role::Worker, hats };
        assert!(validate_body(&body).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(op) = SignedOp::from_bytes(&bytes) {
                let _ = op.op();
                let _ = op.verify();
                prop_assert_eq!(op.to_bytes(), bytes);
            }
        }

        #[test]
        fn mutated_ops_never_panic(index in 0usize..400, byte in any::<u8>(), cut in 0usize..400) {
            let mut bytes = sample().to_bytes();
            let i = index % bytes.len();
            bytes[i] = byte;
            bytes.truncate(bytes.len() - cut % bytes.len());
            if let Ok(op) = SignedOp::from_bytes(&bytes) {
                let _ = op.op();
                let _ = op.verify();
            }
        }
    }
}
