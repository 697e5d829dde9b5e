//! The client side of the one-shot handshakes (joining a team, handing a team to a circle
//! node): connect on the handshake's ALPN, send one request, read one bounded reply.

use std::time::Duration;

use iroh::endpoint::VarInt;
use iroh::{Endpoint, EndpointAddr};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::join::{self, JOIN_MESSAGE_BYTES_MAX};
use crate::net::framing::{read_frame_max, write_frame};
use crate::net::service::DialError;

/// How long a handshake may take, either side.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 15_000;

/// Sends `request` to the device at `addr` on `alpn` and returns its reply.
pub async fn request<Req: Serialize, Reply: DeserializeOwned>(
    endpoint: &Endpoint,
    addr: EndpointAddr,
    alpn: &[u8],
    request: &Req,
) -> Result<Reply, DialError> {
    let lost = |e: &dyn std::fmt::Display| DialError::Lost(e.to_string());
    let attempt = async {
        let conn =
            endpoint.connect(addr, alpn).await.map_err(|e| DialError::Connect(e.to_string()))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
        write_frame(&mut send, &join::encode(request)).await.map_err(|e| lost(&e))?;
        send.finish().map_err(|e| lost(&e))?;
        let bytes =
            read_frame_max(&mut recv, JOIN_MESSAGE_BYTES_MAX).await.map_err(|e| lost(&e))?;
        conn.close(VarInt::from_u32(0), b"answered");
        join::decode::<Reply>(&bytes).map_err(|e| DialError::Protocol(e.to_string()))
    };
    tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), attempt)
        .await
        .map_err(|_| DialError::Timeout)?
}
