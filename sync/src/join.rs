//! The join handshake, on its own ALPN: a device holding a ticket proves the ticket's
//! secret; the inviting device adds it to the team (signed membership ops) and answers
//! with the team's membership log. Pure messages and the host's side as a trait; the
//! iroh runtime carries them.

use care_core::{DeviceId, MemberId, SignedOp, TeamId};
use serde::{Deserialize, Serialize};

/// The ALPN of the join handshake.
pub const JOIN_ALPN: &[u8] = b"care/join/1";
/// Largest join message accepted, in bytes (a reply carries the membership log).
pub const JOIN_MESSAGE_BYTES_MAX: usize = 8 << 20;
/// Format version byte that starts every join message.
const JOIN_FORMAT_VERSION: u8 = 1;

/// What a joining device sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The ticket's one-time secret.
    pub secret: [u8; 16],
    /// The member id the joining person uses.
    pub member: MemberId,
    /// The joining person's name.
    pub name: String,
}

/// What the inviting device answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinReply {
    /// The device was added: here is the team's membership log, including the new ops.
    Accepted {
        /// The team joined.
        team: TeamId,
        /// Every membership op of the team, as signed bytes.
        ops: Vec<Vec<u8>>,
    },
    /// The ticket was refused, with the reason.
    Refused {
        /// Why, as a sentence.
        reason: String,
    },
}

/// The inviting side: checks a ticket's secret and adds the joining device.
pub trait Invites {
    /// Redeems the invitation whose secret `request` carries for `device`: on success,
    /// the team and its whole membership log (with the ops adding the new member and
    /// device), already stored here. On failure, a sentence for the joining person.
    fn redeem(
        &mut self,
        device: DeviceId,
        request: &JoinRequest,
    ) -> Result<(TeamId, Vec<SignedOp>), String>;
}

/// A join message that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinMessageError {
    /// Larger than [`JOIN_MESSAGE_BYTES_MAX`].
    #[error("the join message is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a join message of a version this device speaks.
    #[error("the other device speaks another version of the join handshake")]
    Version,
    /// Damaged bytes.
    #[error("the join message is malformed")]
    Malformed,
}

/// Encodes a join message with its format version.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut bytes = vec![JOIN_FORMAT_VERSION];
    bytes.extend(postcard::to_stdvec(message).expect("join messages always serialise"));
    bytes
}

/// Decodes a join message, refusing oversized, other-version or malformed bytes.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, JoinMessageError> {
    if bytes.len() > JOIN_MESSAGE_BYTES_MAX {
        return Err(JoinMessageError::TooLarge { len: bytes.len(), max: JOIN_MESSAGE_BYTES_MAX });
    }
    match bytes.split_first() {
        Some((&JOIN_FORMAT_VERSION, body)) => {
            let (message, rest) =
                postcard::take_from_bytes(body).map_err(|_| JoinMessageError::Malformed)?;
            if rest.is_empty() { Ok(message) } else { Err(JoinMessageError::Malformed) }
        }
        Some(_) => Err(JoinMessageError::Version),
        None => Err(JoinMessageError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn join_messages_round_trip() {
        let request = JoinRequest {
            secret: [7; 16],
            member: MemberId::from_bytes([1; 16]),
            name: "Bea".into(),
        };
        assert_eq!(decode::<JoinRequest>(&encode(&request)), Ok(request));
        let reply = JoinReply::Refused { reason: "this ticket was already used".into() };
        assert_eq!(decode::<JoinReply>(&encode(&reply)), Ok(reply));
        assert_eq!(decode::<JoinReply>(&[9, 0]), Err(JoinMessageError::Version));
        assert_eq!(decode::<JoinReply>(&[]), Err(JoinMessageError::Malformed));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<JoinRequest>(&bytes);
            let _ = decode::<JoinReply>(&bytes);
        }
    }
}
