//! The network side of a device's sessions: one task per connection that only carries
//! bytes. It opens the stream, registers the connection with the device's [`Owner`],
//! reads frames for it (the Hello alone until the owner admits the connection) and writes
//! what the owner queues. At most one session per remote device, as the owner's
//! [`Hub`](care_sync::Hub) decides.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use care_core::{DeviceId, SignedOp};
use iroh::endpoint::{Connection, RecvStream, SendStream, VarInt};
use iroh::{Endpoint, EndpointAddr};
use tokio::sync::{Semaphore, broadcast, mpsc, watch};

use crate::endpoint::remote_device;
use crate::framing::{ReadFrameError, read_frame_max, write_encoded};
use crate::handshake;
use crate::lanes::Lanes;
use crate::owner::{FRAMES_AHEAD_MAX, Link, Outgoing, Owner};
use care_sync::CloseReason;
use care_sync::HELLO_FRAME_BYTES_MAX;
use care_sync::Replica;
use care_sync::frame::{ALPN, FRAME_BYTES_MAX};
use care_sync::hub::ConnId;
pub use care_sync::hub::{Change, HELLO_TIMEOUT_MS, PeerEvent, SESSIONS_MAX};
use care_sync::join::{Invites, JOIN_ALPN, JoinReply, JoinRequest};

/// Largest join request accepted from a device that is not yet in any team.
const JOIN_REQUEST_BYTES_MAX: usize = 4 * 1024;
/// Most join attempts this device answers per [`JOIN_WINDOW_MS`], from all devices
/// together: a ticket's secret cannot be guessed, but each attempt costs a store write.
pub const JOIN_ATTEMPTS_PER_WINDOW_MAX: u32 = 20;
/// The window of [`JOIN_ATTEMPTS_PER_WINDOW_MAX`], in milliseconds.
pub const JOIN_WINDOW_MS: u64 = 60_000;
/// An error from the network library, kept as the source of ours.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a dial or a join failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The address names no valid device (its id is not a key).
    #[error("{0} names an invalid device")]
    InvalidDevice(&'static str),
    /// No connection could be made.
    #[error("cannot reach the device: {0}")]
    Connect(#[source] Source),
    /// The connection broke during the handshake.
    #[error("the connection broke: {0}")]
    Lost(#[source] Source),
    /// The other device answered something unreadable.
    #[error("the other device answered something unreadable: {0}")]
    Protocol(#[from] care_sync::join::JoinMessageError),
    /// The handshake took too long.
    #[error("the other device did not answer in time")]
    Timeout,
}

/// Frames and bytes carried by every session of a device since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Frames written.
    pub frames_sent: u64,
    /// Bytes written, length prefixes included.
    pub bytes_sent: u64,
    /// Frames read.
    pub frames_received: u64,
    /// Bytes read, length prefixes included.
    pub bytes_received: u64,
}

/// The counters behind [`Traffic`].
#[derive(Default)]
struct Counters {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
}

/// The network side of one device's sessions: one task per connection reading and
/// writing frames for the device's [`Owner`], which runs the sessions.
pub struct SyncService<R> {
    owner: Owner<R>,
    local: DeviceId,
    counters: Arc<Counters>,
    joins: Mutex<JoinLimiter>,
}

impl<R> std::fmt::Debug for SyncService<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncService").field("device", &self.local).finish_non_exhaustive()
    }
}

/// Counts join attempts in fixed windows of [`JOIN_WINDOW_MS`].
#[derive(Debug)]
struct JoinLimiter {
    window_start: tokio::time::Instant,
    attempts: u32,
}

impl JoinLimiter {
    /// Whether one more attempt at `now` is answered.
    fn admit(&mut self, now: tokio::time::Instant) -> bool {
        if now.duration_since(self.window_start).as_millis() >= u128::from(JOIN_WINDOW_MS) {
            self.window_start = now;
            self.attempts = 0;
        }
        self.attempts += 1;
        self.attempts <= JOIN_ATTEMPTS_PER_WINDOW_MAX
    }
}

impl<R: Replica + Invites + Send + 'static> SyncService<R> {
    /// A service for the device whose owner this is.
    pub fn new(owner: Owner<R>) -> Arc<SyncService<R>> {
        Arc::new(SyncService {
            local: owner.device(),
            owner,
            counters: Arc::new(Counters::default()),
            joins: Mutex::new(JoinLimiter {
                window_start: tokio::time::Instant::now(),
                attempts: 0,
            }),
        })
    }

    /// The owner of the device's data, to post commands to.
    pub fn owner(&self) -> &Owner<R> {
        &self.owner
    }

    /// Frames and bytes carried so far by every session.
    pub fn traffic(&self) -> Traffic {
        let c = &self.counters;
        Traffic {
            frames_sent: c.frames_sent.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            frames_received: c.frames_received.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
        }
    }

    /// Events of every session.
    pub fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.owner.subscribe()
    }

    /// The devices with a running session.
    pub fn connected(&self) -> Vec<DeviceId> {
        self.owner.connected()
    }

    /// Connects to a device and runs a session with it in the background.
    pub async fn dial(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        addr: EndpointAddr,
    ) -> Result<(), DialError> {
        let conn = endpoint.connect(addr, ALPN).await.map_err(|e| DialError::Connect(e.into()))?;
        let service = Arc::clone(self);
        tokio::spawn(async move { service.run(conn, true).await });
        Ok(())
    }

    /// Runs a session over an established connection until it ends; returns why it ended.
    pub async fn run(self: Arc<Self>, conn: Connection, dialed_by_me: bool) -> String {
        let reason = match self.drive(&conn, dialed_by_me).await {
            Ok(reason) | Err(reason) => reason,
        };
        conn.close(VarInt::from_u32(0), reason.as_bytes());
        reason
    }

    /// Answers a join handshake: redeems the ticket's secret and replies with the
    /// team's membership log, or the reason it was refused.
    pub async fn answer_join(self: Arc<Self>, conn: Connection) {
        let remote = remote_device(&conn);
        let failed = "join handshake failed";
        handshake::answer(&conn, JOIN_REQUEST_BYTES_MAX, failed, async |request| match request {
            Ok(request) => self.redeem(remote, request).await,
            Err(e) => JoinReply::Refused { reason: e.to_string() },
        })
        .await;
    }

    async fn redeem(&self, remote: DeviceId, request: JoinRequest) -> JoinReply {
        if !lock(&self.joins).admit(tokio::time::Instant::now()) {
            let reason = "this device has had too many join attempts; try again in a minute";
            return JoinReply::Refused { reason: reason.to_owned() };
        }
        let redeemed = self.owner.call(move |replica| replica.redeem(remote, &request)).await;
        match redeemed {
            Ok(Ok((team, ops))) => {
                JoinReply::Accepted { team, ops: ops.iter().map(SignedOp::to_bytes).collect() }
            }
            Ok(Err(reason)) => JoinReply::Refused { reason },
            Err(stopped) => JoinReply::Refused { reason: stopped.to_string() },
        }
    }

    /// Opens the connection's stream, registers it with the owner, and carries frames
    /// both ways until the session or the connection ends.
    async fn drive(&self, conn: &Connection, dialed_by_me: bool) -> Result<String, String> {
        let remote = remote_device(conn);
        let dialer = if dialed_by_me { self.local } else { remote };
        let (send, recv) = if dialed_by_me {
            conn.open_bi().await.map_err(|e| format!("cannot open the sync stream: {e}"))?
        } else {
            tokio::time::timeout(Duration::from_millis(HELLO_TIMEOUT_MS), conn.accept_bi())
                .await
                .map_err(|_| {
                    format!("the other device opened no stream within {HELLO_TIMEOUT_MS} ms")
                })?
                .map_err(|e| format!("the sync stream did not open: {e}"))?
        };
        let (outbox, outgoing) = mpsc::unbounded_channel();
        let (admit, admitted) = watch::channel(false);
        let queued = Arc::new(AtomicU64::new(0));
        let link = Link { conn: conn.clone(), outbox, admit, queued: Arc::clone(&queued) };
        let id = match self.owner.open(remote, dialer, link).await {
            Ok(Ok(id)) => id,
            Ok(Err(turned)) => return Err(turned.to_string()),
            Err(stopped) => return Err(stopped.to_string()),
        };
        let writer = tokio::spawn(write_frames(
            conn.clone(),
            send,
            outgoing,
            queued,
            Arc::clone(&self.counters),
        ));
        let reader = read_frames(&self.owner, id, recv, admitted, &self.counters);
        let (written, read) = tokio::join!(writer, reader);
        let reason = match written {
            Ok(Some(reason)) => reason,
            _ => read,
        };
        Ok(reason)
    }
}

/// Reads frames from a connection for the owner: the Hello alone with its small limit,
/// then, once the session is admitted, whole frames, at most [`FRAMES_AHEAD_MAX`] ahead
/// of the owner. Returns why reading stopped.
async fn read_frames<R: Replica + 'static>(
    owner: &Owner<R>,
    conn: ConnId,
    mut recv: RecvStream,
    mut admitted: watch::Receiver<bool>,
    counters: &Counters,
) -> String {
    let ahead = Arc::new(Semaphore::new(FRAMES_AHEAD_MAX));
    let mut first = true;
    loop {
        if !first && admitted.wait_for(|admitted| *admitted).await.is_err() {
            // The owner forgot the connection: it closed or ended.
            return "the session ended".to_owned();
        }
        let Ok(permit) = Arc::clone(&ahead).acquire_owned().await else {
            return "the session ended".to_owned();
        };
        let max = if first { HELLO_FRAME_BYTES_MAX } else { FRAME_BYTES_MAX };
        first = false;
        match read_frame_max(&mut recv, max).await {
            Ok(bytes) => {
                counters.frames_received.fetch_add(1, Ordering::Relaxed);
                counters.bytes_received.fetch_add(4 + bytes.len() as u64, Ordering::Relaxed);
                if owner.frame(conn, bytes, permit).await.is_err() {
                    return "this device is shutting down".to_owned();
                }
            }
            Err(ReadFrameError::Finished) => {
                owner.ended(conn, CloseReason::Ended).await;
                return CloseReason::Ended.to_string();
            }
            Err(ReadFrameError::Lost(why)) => {
                let reason = CloseReason::Lost(why);
                let said = reason.to_string();
                owner.ended(conn, reason).await;
                return said;
            }
            Err(e) => {
                let reason = CloseReason::Protocol(e.to_string());
                let said = reason.to_string();
                owner.failed(conn, reason).await;
                return said;
            }
        }
    }
}

/// Writes what the owner queues for a connection, in order but for live edits, which go
/// ahead of parts of other documents (`crate::lanes`); at a close, finishes the stream
/// and closes the connection with its reason, which it returns.
async fn write_frames(
    conn: Connection,
    mut send: SendStream,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    queued: Arc<AtomicU64>,
    counters: Arc<Counters>,
) -> Option<String> {
    let mut lanes = Lanes::default();
    loop {
        if lanes.is_empty() {
            lanes.push(outgoing.recv().await?);
        }
        // Everything queued meanwhile, so that a live edit can go ahead of parts.
        while let Ok(more) = outgoing.try_recv() {
            lanes.push(more);
        }
        let Some(next) = lanes.next() else { continue };
        match next {
            Outgoing::Frame(frame) => {
                let len = 4 + frame.len() as u64;
                let written = write_encoded(&mut send, frame).await;
                queued.fetch_sub(len, Ordering::Relaxed);
                if written.is_err() {
                    // The connection is lost; the reader tells the owner.
                    return None;
                }
                counters.frames_sent.fetch_add(1, Ordering::Relaxed);
                counters.bytes_sent.fetch_add(len, Ordering::Relaxed);
            }
            Outgoing::Close(reason) => {
                let _ = send.finish();
                conn.close(VarInt::from_u32(0), reason.as_bytes());
                return Some(reason);
            }
        }
    }
}

/// Asks the device at `addr` to redeem a ticket's secret for this device.
pub async fn request_join(
    endpoint: &Endpoint,
    addr: EndpointAddr,
    request: &JoinRequest,
) -> Result<JoinReply, DialError> {
    handshake::request(endpoint, addr, JOIN_ALPN, request).await
}

/// Locks a mutex, going on with its data if a panicking thread poisoned it: every
/// change to the data is a completed store transaction, so it is never half-made.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Routes incoming connections on the sync ALPN to a [`SyncService`].
pub struct SyncProtocol<R>(pub Arc<SyncService<R>>);

/// Routes incoming connections on the join ALPN to a [`SyncService`].
pub struct JoinProtocol<R>(pub Arc<SyncService<R>>);

impl<R> std::fmt::Debug for SyncProtocol<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SyncProtocol({:?})", self.0.local)
    }
}

impl<R> std::fmt::Debug for JoinProtocol<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinProtocol({:?})", self.0.local)
    }
}

impl<R: Replica + Invites + Send + 'static> iroh::protocol::ProtocolHandler for SyncProtocol<R> {
    async fn accept(&self, conn: Connection) -> Result<(), iroh::protocol::AcceptError> {
        Arc::clone(&self.0).run(conn, false).await;
        Ok(())
    }
}

impl<R: Replica + Invites + Send + 'static> iroh::protocol::ProtocolHandler for JoinProtocol<R> {
    async fn accept(&self, conn: Connection) -> Result<(), iroh::protocol::AcceptError> {
        Arc::clone(&self.0).answer_join(conn).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_attempts_are_limited_per_window() {
        let start = tokio::time::Instant::now();
        let mut limiter = JoinLimiter { window_start: start, attempts: 0 };
        let admitted =
            (0..JOIN_ATTEMPTS_PER_WINDOW_MAX + 5).filter(|_| limiter.admit(start)).count();
        assert_eq!(admitted, JOIN_ATTEMPTS_PER_WINDOW_MAX as usize);
        let later = start + std::time::Duration::from_millis(JOIN_WINDOW_MS);
        assert!(limiter.admit(later), "a new window admits again");
    }
}
