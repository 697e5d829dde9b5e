//! Invitation tickets: a string (or QR code) holding the team, the inviting device and
//! how to reach it, and a one-time secret. Whoever holds the ticket may join once.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use care_core::ids::{decode_base32, encode_base32};
use care_core::{DeviceId, MemberId, TeamId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What every ticket string starts with; the digit is the ticket format's version.
pub const TICKET_PREFIX: &str = "careinvite2";
/// Bytes of the checksum closing a ticket: a mistyped or swapped character is refused
/// as damaged, not sent to the inviting device as a wrong secret.
pub const TICKET_CHECKSUM_BYTES: usize = 4;
/// Longest ticket string accepted, in bytes.
pub const TICKET_BYTES_MAX: usize = 4 * 1024;
/// Most addresses a ticket may carry.
pub const TICKET_ADDRS_MAX: usize = 16;

/// An invitation to join a team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTicket {
    /// The team to join.
    pub team: TeamId,
    /// The device that issued the ticket and will add the new member.
    pub inviter: DeviceId,
    /// Where the inviting device listens.
    pub addrs: Vec<SocketAddr>,
    /// A relay server through which the inviting device can be reached, if any.
    pub relay: Option<String>,
    /// The one-time secret; the inviting device stores only its hash.
    pub secret: [u8; 16],
    /// For a device ticket (`care device add`): the member whose next device redeems it.
    /// `None` for an invitation of a new member.
    pub device_of: Option<MemberId>,
}

/// A string that is not a usable ticket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// The string does not look like a ticket at all.
    #[error("this is not a care invitation ticket (tickets start with `{TICKET_PREFIX}`)")]
    NotATicket,
    /// The string looks like a ticket but is damaged (mistyped or cut short).
    #[error("the ticket is damaged: check it was copied whole")]
    Damaged,
    /// The ticket is longer than any real ticket.
    #[error("the ticket is too long to be real")]
    TooLong,
}

impl JoinTicket {
    /// The secret's hash, which is what the inviting device stores.
    pub fn secret_hash(&self) -> [u8; 32] {
        secret_hash(&self.secret)
    }
}

/// The hash under which an invitation's secret is stored.
pub fn secret_hash(secret: &[u8; 16]) -> [u8; 32] {
    *blake3::keyed_hash(blake3::hash(b"care-commons invite secret").as_bytes(), secret).as_bytes()
}

impl fmt::Display for JoinTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_ticket(f, TICKET_PREFIX, self)
    }
}

impl FromStr for JoinTicket {
    type Err = TicketError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ticket: JoinTicket = read_ticket(TICKET_PREFIX, s)?;
        if ticket.addrs.len() > TICKET_ADDRS_MAX {
            return Err(TicketError::Damaged);
        }
        Ok(ticket)
    }
}

/// Writes a ticket's string form: its prefix, then in base32 its postcard bytes and their
/// checksum.
pub(crate) fn write_ticket<T: Serialize>(
    f: &mut fmt::Formatter<'_>,
    prefix: &str,
    ticket: &T,
) -> fmt::Result {
    let mut bytes = postcard::to_stdvec(ticket).map_err(|_| fmt::Error)?;
    let sum = checksum(prefix, &bytes);
    bytes.extend_from_slice(&sum);
    write!(f, "{prefix}{}", encode_base32(&bytes))
}

/// The checksum of a ticket's bytes, under its prefix (so that one kind of ticket never
/// reads as another).
fn checksum(prefix: &str, bytes: &[u8]) -> [u8; TICKET_CHECKSUM_BYTES] {
    let hash = blake3::Hasher::new_derive_key("care-commons ticket checksum")
        .update(prefix.as_bytes())
        .update(bytes)
        .finalize();
    let mut sum = [0; TICKET_CHECKSUM_BYTES];
    sum.copy_from_slice(&hash.as_bytes()[..TICKET_CHECKSUM_BYTES]);
    sum
}

/// Reads a ticket's string form (case-insensitive), refusing a wrong prefix, an
/// oversized string, damaged base32, a wrong checksum and trailing bytes.
pub(crate) fn read_ticket<T: DeserializeOwned>(prefix: &str, s: &str) -> Result<T, TicketError> {
    let s = s.trim();
    if s.len() > TICKET_BYTES_MAX {
        return Err(TicketError::TooLong);
    }
    let lower = s.to_ascii_lowercase();
    let body = lower.strip_prefix(prefix).ok_or(TicketError::NotATicket)?;
    let bytes = decode_base32(body).ok_or(TicketError::Damaged)?;
    let split = bytes.len().checked_sub(TICKET_CHECKSUM_BYTES).ok_or(TicketError::Damaged)?;
    let (bytes, sum) = bytes.split_at(split);
    if checksum(prefix, bytes) != sum {
        return Err(TicketError::Damaged);
    }
    let (ticket, rest): (T, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|_| TicketError::Damaged)?;
    if rest.is_empty() { Ok(ticket) } else { Err(TicketError::Damaged) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ticket() -> JoinTicket {
        JoinTicket {
            team: TeamId::from_bytes([1; 16]),
            inviter: DeviceId::from_bytes([2; 32]),
            addrs: vec!["127.0.0.1:4433".parse().expect("address")],
            relay: Some("http://127.0.0.1:3340".into()),
            secret: [3; 16],
            device_of: Some(MemberId::from_bytes([4; 16])),
        }
    }

    #[test]
    fn tickets_round_trip_through_their_string_form() {
        let t = ticket();
        let s = t.to_string();
        assert!(s.starts_with(TICKET_PREFIX));
        assert_eq!(s.parse::<JoinTicket>(), Ok(t.clone()));
        assert_eq!(s.to_uppercase().parse::<JoinTicket>(), Ok(t));
    }

    #[test]
    fn damaged_tickets_are_refused_with_a_reason() {
        let s = ticket().to_string();
        assert_eq!("hello".parse::<JoinTicket>(), Err(TicketError::NotATicket));
        assert_eq!(s[..s.len() - 5].parse::<JoinTicket>(), Err(TicketError::Damaged));
        assert_eq!(format!("{s}aa").parse::<JoinTicket>(), Err(TicketError::Damaged));
        let long = format!("{TICKET_PREFIX}{}", "a".repeat(TICKET_BYTES_MAX));
        assert_eq!(long.parse::<JoinTicket>(), Err(TicketError::TooLong));
    }

    #[test]
    fn a_ticket_with_any_one_character_mistyped_is_refused_as_damaged() {
        let t = ticket();
        let s = t.to_string();
        for at in TICKET_PREFIX.len()..s.len() {
            let was = s.as_bytes()[at];
            for typo in [b'a', b'q', b'7'].into_iter().filter(|c| *c != was) {
                let mut typed = s.clone().into_bytes();
                typed[at] = typo;
                let typed = String::from_utf8(typed).expect("ascii");
                // A change in the last character's unused bits may leave the bytes as
                // they were: that ticket is not damaged.
                match typed.parse::<JoinTicket>() {
                    Ok(same) => assert_eq!(same, t, "character {at} changed to {typo}"),
                    Err(e) => assert_eq!(e, TicketError::Damaged),
                }
            }
        }
        let swapped =
            format!("{}{}", &s[..s.len() - 2], s[s.len() - 2..].chars().rev().collect::<String>());
        assert!(swapped == s || swapped.parse::<JoinTicket>().is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,300}") {
            let _ = s.parse::<JoinTicket>();
            let _ = format!("{TICKET_PREFIX}{s}").parse::<JoinTicket>();
        }
    }
}
