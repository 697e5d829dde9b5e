//! The one-shot handshakes (joining a team, handing a team to a circle node): the client
//! connects on the handshake's ALPN, sends one request and reads one bounded reply; the
//! server reads one bounded request and answers it.

use std::time::Duration;

use iroh::endpoint::{Connection, VarInt};
use iroh::{Endpoint, EndpointAddr};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::framing::{read_frame_max, write_frame};
use crate::service::{DialError, Source};
use care_sync::join::{self, JOIN_MESSAGE_BYTES_MAX, JoinMessageError};

/// How long a handshake may take, either side.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 15_000;

/// Sends `request` to the device at `addr` on `alpn` and returns its reply.
pub async fn request<Req: Serialize, Reply: DeserializeOwned>(
    endpoint: &Endpoint,
    addr: EndpointAddr,
    alpn: &[u8],
    request: &Req,
) -> Result<Reply, DialError> {
    let lost = |e: Source| DialError::Lost(e);
    let attempt = async {
        let conn = endpoint.connect(addr, alpn).await.map_err(|e| DialError::Connect(e.into()))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(e.into()))?;
        write_frame(&mut send, &join::encode(request)).await.map_err(|e| lost(e.into()))?;
        send.finish().map_err(|e| lost(e.into()))?;
        let bytes =
            read_frame_max(&mut recv, JOIN_MESSAGE_BYTES_MAX).await.map_err(|e| lost(e.into()))?;
        conn.close(VarInt::from_u32(0), b"answered");
        Ok(join::decode::<Reply>(&bytes)?)
    };
    tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), attempt)
        .await
        .map_err(|_| DialError::Timeout)?
}

/// Answers one handshake on an incoming connection: reads a request of at most
/// `request_max` bytes, replies with what `answer` makes of it (the request, or why it
/// could not be read), and waits for the other device to close. A connection that
/// breaks the handshake or takes too long is closed with `failed` as the reason.
pub async fn answer<Req: DeserializeOwned, Reply: Serialize>(
    conn: &Connection,
    request_max: usize,
    failed: &'static str,
    answer: impl AsyncFnOnce(Result<Req, JoinMessageError>) -> Reply,
) {
    let answered = tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let bytes = read_frame_max(&mut recv, request_max).await.map_err(|e| e.to_string())?;
        let reply = answer(join::decode::<Req>(&bytes)).await;
        write_frame(&mut send, &join::encode(&reply)).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        // The other device closes the connection once it has read the reply.
        conn.closed().await;
        Ok::<_, String>(())
    })
    .await;
    if !matches!(answered, Ok(Ok(()))) {
        conn.close(VarInt::from_u32(1), failed.as_bytes());
    }
}
