//! The circle handshake on iroh: a team's device hands the circle node the team's
//! membership log ([`request_circle`]); the circle node checks and stores it
//! ([`CircleProtocol`]), after which ordinary sync sessions replicate the team.

use std::sync::Arc;

use care_core::{DeviceId, SignedOp, TeamId};
use iroh::endpoint::Connection;
use iroh::{Endpoint, EndpointAddr};

use crate::endpoint::remote_device;
use crate::handshake;
use crate::owner::Owner;
use crate::service::DialError;
use care_sync::Replica;
use care_sync::circle::{CIRCLE_ALPN, CircleHost, CircleReply, CircleRequest};
use care_sync::join::JOIN_MESSAGE_BYTES_MAX;

/// What the circle node runs when it has taken on a team (e.g. refresh who its relay
/// server admits).
pub type OnTakenOn = Arc<dyn Fn(TeamId) + Send + Sync>;

/// Routes incoming connections on the circle ALPN to the circle node's host.
pub struct CircleProtocol<H> {
    host: Owner<H>,
    on_taken_on: OnTakenOn,
}

impl<H> CircleProtocol<H> {
    /// A handler over the circle node's host (run by its owner thread), calling
    /// `on_taken_on` after each team it takes on.
    pub fn new(host: Owner<H>, on_taken_on: OnTakenOn) -> Self {
        CircleProtocol { host, on_taken_on }
    }
}

impl<H: CircleHost + Replica + Send + 'static> CircleProtocol<H> {
    /// The handler with its ALPN, for [`Runtime::start_with`](crate::Runtime::start_with).
    pub fn protocol(self) -> crate::Protocol {
        (CIRCLE_ALPN, Box::new(self))
    }
}

impl<H> std::fmt::Debug for CircleProtocol<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CircleProtocol")
    }
}

impl<H: CircleHost + Replica + Send + 'static> CircleProtocol<H> {
    /// Has the host take on the team the request hands over.
    async fn take_on(&self, remote: DeviceId, request: CircleRequest) -> CircleReply {
        let ops: Vec<SignedOp> =
            request.ops.iter().filter_map(|bytes| SignedOp::from_bytes(bytes).ok()).collect();
        let (secret, team) = (request.secret, request.team);
        let taken =
            match self.host.call(move |host| host.take_on(remote, &secret, team, &ops)).await {
                Ok(taken) => taken,
                Err(stopped) => Err(stopped.to_string()),
            };
        match taken {
            Ok(()) => {
                (self.on_taken_on)(request.team);
                CircleReply::Accepted
            }
            Err(reason) => CircleReply::Refused { reason },
        }
    }
}

impl<H: CircleHost + Replica + Send + 'static> iroh::protocol::ProtocolHandler
    for CircleProtocol<H>
{
    async fn accept(&self, conn: Connection) -> Result<(), iroh::protocol::AcceptError> {
        let remote = remote_device(&conn);
        let failed = "circle handshake failed";
        handshake::answer(&conn, JOIN_MESSAGE_BYTES_MAX, failed, async |request| match request {
            Ok(request) => self.take_on(remote, request).await,
            Err(e) => CircleReply::Refused { reason: e.to_string() },
        })
        .await;
        Ok(())
    }
}

/// Hands a team's membership log to the circle node at `addr`.
pub async fn request_circle(
    endpoint: &Endpoint,
    addr: EndpointAddr,
    request: &CircleRequest,
) -> Result<CircleReply, DialError> {
    handshake::request(endpoint, addr, CIRCLE_ALPN, request).await
}
