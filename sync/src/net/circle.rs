//! The circle handshake on iroh: a team's device hands the circle node the team's
//! membership log ([`request_circle`]); the circle node checks and stores it
//! ([`CircleProtocol`]), after which ordinary sync sessions replicate the team.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use care_core::{SignedOp, TeamId};
use iroh::endpoint::{Connection, VarInt};
use iroh::{Endpoint, EndpointAddr};

use crate::circle::{CIRCLE_ALPN, CircleHost, CircleReply, CircleRequest};
use crate::join::{self, JOIN_MESSAGE_BYTES_MAX};
use crate::net::endpoint::remote_device;
use crate::net::framing::{read_frame_max, write_frame};
use crate::net::handshake::{self, HANDSHAKE_TIMEOUT_MS};
use crate::net::service::DialError;

/// What the circle node runs when it has taken on a team (e.g. refresh who its relay
/// server admits).
pub type OnTakenOn = Arc<dyn Fn(TeamId) + Send + Sync>;

/// Routes incoming connections on the circle ALPN to the circle node's host.
pub struct CircleProtocol<H> {
    host: Arc<Mutex<H>>,
    on_taken_on: OnTakenOn,
}

impl<H> CircleProtocol<H> {
    /// A handler over the circle node's host, calling `on_taken_on` after each team it
    /// takes on.
    pub fn new(host: Arc<Mutex<H>>, on_taken_on: OnTakenOn) -> Self {
        CircleProtocol { host, on_taken_on }
    }
}

impl<H: CircleHost + Send + 'static> CircleProtocol<H> {
    /// The handler with its ALPN, for [`Runtime::start_with`](crate::net::Runtime::start_with).
    pub fn protocol(self) -> crate::net::Protocol {
        (CIRCLE_ALPN, Box::new(self))
    }
}

impl<H> std::fmt::Debug for CircleProtocol<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CircleProtocol")
    }
}

impl<H: CircleHost + Send + 'static> iroh::protocol::ProtocolHandler for CircleProtocol<H> {
    async fn accept(&self, conn: Connection) -> Result<(), iroh::protocol::AcceptError> {
        let remote = remote_device(&conn);
        let answered = tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), async {
            let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
            let bytes = read_frame_max(&mut recv, JOIN_MESSAGE_BYTES_MAX)
                .await
                .map_err(|e| e.to_string())?;
            let reply = match join::decode::<CircleRequest>(&bytes) {
                Ok(request) => {
                    let ops: Vec<SignedOp> = request
                        .ops
                        .iter()
                        .filter_map(|bytes| SignedOp::from_bytes(bytes).ok())
                        .collect();
                    let taken = self
                        .host
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take_on(remote, &request.secret, request.team, &ops);
                    match taken {
                        Ok(()) => {
                            (self.on_taken_on)(request.team);
                            CircleReply::Accepted
                        }
                        Err(reason) => CircleReply::Refused { reason },
                    }
                }
                Err(e) => CircleReply::Refused { reason: e.to_string() },
            };
            write_frame(&mut send, &join::encode(&reply)).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            // The team's device closes the connection once it has read the reply.
            conn.closed().await;
            Ok::<_, String>(())
        })
        .await;
        if !matches!(answered, Ok(Ok(()))) {
            conn.close(VarInt::from_u32(1), b"circle handshake failed");
        }
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
