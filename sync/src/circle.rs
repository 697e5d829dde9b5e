//! A circle node, as teams see it: the circle ticket (`carecircle2…`) naming the circle's
//! always-on node, and the handshake (ALPN `care/circle/1`) by which a team's owner or
//! admin hands it the team's membership log once it has been added with the role
//! `relay`. Pure messages and the circle's side as a trait; the iroh runtime carries them.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use care_core::{DeviceId, MemberId, SignedOp, TeamId};
use serde::{Deserialize, Serialize};

use crate::ticket::{TICKET_ADDRS_MAX, TicketError, read_ticket, write_ticket};

/// The ALPN of the circle handshake.
pub const CIRCLE_ALPN: &[u8] = b"care/circle/1";
/// What every circle ticket string starts with; the digit is the format's version.
pub const CIRCLE_TICKET_PREFIX: &str = "carecircle2";

/// How to reach a circle's node, and the secret a team presents to be served by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircleTicket {
    /// The circle node's device (its iroh endpoint id).
    pub device: DeviceId,
    /// The member id the circle node is added to teams under.
    pub member: MemberId,
    /// The name the circle node goes by in a team.
    pub name: String,
    /// Where the circle node listens directly.
    pub addrs: Vec<SocketAddr>,
    /// The circle's relay server, through which its teams' devices reach each other.
    pub relay: Option<String>,
    /// The circle's secret: only teams that hold it may hand their log to the node.
    pub secret: [u8; 16],
}

/// What a team's device sends the circle node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircleRequest {
    /// The circle's secret, from its ticket.
    pub secret: [u8; 16],
    /// The team that added the circle node.
    pub team: TeamId,
    /// The team's whole membership log, as signed bytes, making the circle node a
    /// current device of a member with the role `relay`.
    pub ops: Vec<Vec<u8>>,
}

/// What the circle node answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CircleReply {
    /// The circle node now holds the team and will keep a replica of it.
    Accepted,
    /// The request was refused, with the reason.
    Refused {
        /// Why, as a sentence.
        reason: String,
    },
}

/// The circle node's side: checks the secret and the log, and stores the team.
pub trait CircleHost {
    /// Takes on `team` from `ops` presented by `device` with `secret`: on success the
    /// ops are stored and the team is served from now on. On failure, a sentence.
    fn take_on(
        &mut self,
        device: DeviceId,
        secret: &[u8; 16],
        team: TeamId,
        ops: &[SignedOp],
    ) -> Result<(), String>;
}

impl fmt::Display for CircleTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_ticket(f, CIRCLE_TICKET_PREFIX, self)
    }
}

impl FromStr for CircleTicket {
    type Err = TicketError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ticket: CircleTicket = read_ticket(CIRCLE_TICKET_PREFIX, s)?;
        if ticket.addrs.len() > TICKET_ADDRS_MAX {
            return Err(TicketError::Damaged);
        }
        Ok(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::join::{decode, encode};
    use proptest::prelude::*;

    fn ticket() -> CircleTicket {
        CircleTicket {
            device: DeviceId::from_bytes([2; 32]),
            member: MemberId::from_bytes([4; 16]),
            name: "Circle relay".into(),
            addrs: vec!["127.0.0.1:4433".parse().expect("address")],
            relay: Some("http://127.0.0.1:3340".into()),
            secret: [3; 16],
        }
    }

    #[test]
    fn circle_tickets_round_trip_and_are_not_invitations() {
        let t = ticket();
        let s = t.to_string();
        assert!(s.starts_with(CIRCLE_TICKET_PREFIX));
        assert_eq!(s.parse::<CircleTicket>(), Ok(t.clone()));
        assert_eq!(s.to_uppercase().parse::<CircleTicket>(), Ok(t));
        assert_eq!("careinvite2aaaa".parse::<CircleTicket>(), Err(TicketError::NotATicket));
        assert_eq!(s[..s.len() - 5].parse::<CircleTicket>(), Err(TicketError::Damaged));
    }

    #[test]
    fn circle_messages_round_trip() {
        let request = CircleRequest {
            secret: [1; 16],
            team: TeamId::from_bytes([5; 16]),
            ops: vec![vec![1, 2]],
        };
        assert_eq!(decode::<CircleRequest>(&encode(&request)), Ok(request));
        let reply = CircleReply::Refused { reason: "wrong circle secret".into() };
        assert_eq!(decode::<CircleReply>(&encode(&reply)), Ok(reply));
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,300}") {
            let _ = s.parse::<CircleTicket>();
            let _ = format!("{CIRCLE_TICKET_PREFIX}{s}").parse::<CircleTicket>();
            let _ = decode::<CircleRequest>(s.as_bytes());
        }
    }
}
