//! The sync runtime on iroh: one task per connection drives a [`Session`] over one
//! bidirectional stream, feeding it frames as they arrive and this device's changes as
//! they happen, and carrying out what it returns. At most one session per remote device.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use care_core::{DeviceId, SignedOp};
use iroh::endpoint::{Connection, SendStream, VarInt};
use iroh::{Endpoint, EndpointAddr};
use tokio::sync::{Notify, broadcast, mpsc, watch};

use crate::frame::ALPN;
pub use crate::hub::{Change, HELLO_TIMEOUT_MS, PeerEvent, SESSIONS_MAX};
use crate::join::{Invites, JOIN_ALPN, JoinReply, JoinRequest};
use crate::net::endpoint::remote_device;
use crate::net::framing::{ReadFrameError, read_frame, read_frame_max, write_frame};
use crate::net::handshake;
use crate::replica::Replica;
use crate::session::{HELLO_FRAME_BYTES_MAX, Output, Session, SyncEvent};

/// Frames read ahead of the session, per connection: with `FRAME_BYTES_MAX` this bounds
/// what one connection can make this device hold before the session judges it.
const FRAMES_AHEAD_MAX: usize = 2;
/// Largest join request accepted from a device that is not yet in any team.
const JOIN_REQUEST_BYTES_MAX: usize = 4 * 1024;
/// Changes queued for each session before it must resynchronise.
const CHANGES_QUEUED_MAX: usize = 4096;
/// Events queued for the application.
const EVENTS_QUEUED_MAX: usize = 4096;
/// Most join attempts this device answers per [`JOIN_WINDOW_MS`], from all devices
/// together: a ticket's secret cannot be guessed, but each attempt costs a store write.
pub const JOIN_ATTEMPTS_PER_WINDOW_MAX: u32 = 20;
/// The window of [`JOIN_ATTEMPTS_PER_WINDOW_MAX`], in milliseconds.
pub const JOIN_WINDOW_MS: u64 = 60_000;
/// Why a dial or a join failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// No connection could be made.
    #[error("cannot reach the device: {0}")]
    Connect(String),
    /// The connection broke during the handshake.
    #[error("the connection broke: {0}")]
    Lost(String),
    /// The other device answered something unreadable.
    #[error("the other device answered something unreadable: {0}")]
    Protocol(String),
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

/// The sessions of one device, over one replica.
pub struct SyncService<R> {
    replica: Arc<Mutex<R>>,
    local: DeviceId,
    counters: Counters,
    changes: broadcast::Sender<Change>,
    events: broadcast::Sender<PeerEvent>,
    sessions: Mutex<HashMap<DeviceId, Registered>>,
    next_session: AtomicU64,
    joins: Mutex<JoinLimiter>,
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

/// A running session, as the service tracks it.
struct Registered {
    id: u64,
    dialer: DeviceId,
    stop: Arc<Notify>,
}

impl<R: Replica + Invites + Send + 'static> SyncService<R> {
    /// A service for the device whose replica this is.
    pub fn new(replica: Arc<Mutex<R>>) -> Arc<SyncService<R>> {
        let local = lock(&replica).device();
        Arc::new(SyncService {
            replica,
            local,
            changes: broadcast::channel(CHANGES_QUEUED_MAX).0,
            events: broadcast::channel(EVENTS_QUEUED_MAX).0,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            counters: Counters::default(),
            joins: Mutex::new(JoinLimiter {
                window_start: tokio::time::Instant::now(),
                attempts: 0,
            }),
        })
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

    /// Tells every session about a change made on this device.
    pub fn notify(&self, change: Change) {
        // No receivers just means no sessions: nothing to tell.
        let _ = self.changes.send(change);
    }

    /// Events of every session.
    pub fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.events.subscribe()
    }

    /// The devices with a running session.
    pub fn connected(&self) -> Vec<DeviceId> {
        let mut peers: Vec<DeviceId> = lock(&self.sessions).keys().copied().collect();
        peers.sort();
        peers
    }

    /// Connects to a device and runs a session with it in the background.
    pub async fn dial(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        addr: EndpointAddr,
    ) -> Result<(), DialError> {
        let conn =
            endpoint.connect(addr, ALPN).await.map_err(|e| DialError::Connect(e.to_string()))?;
        let service = Arc::clone(self);
        tokio::spawn(async move { service.run(conn, true).await });
        Ok(())
    }

    /// Runs a session over an established connection until it ends; returns why it ended.
    pub async fn run(self: Arc<Self>, conn: Connection, dialed_by_me: bool) -> String {
        let remote = remote_device(&conn);
        let dialer = if dialed_by_me { self.local } else { remote };
        let Some((id, stop)) = self.register(remote, dialer) else {
            let reason = "already connected to this device, or serving the most sessions it may";
            conn.close(VarInt::from_u32(1), reason.as_bytes());
            return reason.to_owned();
        };
        let _ = self.events.send(PeerEvent::Connected { peer: remote });
        let reason = match self.drive(&conn, remote, dialed_by_me, &stop).await {
            Ok(reason) | Err(reason) => reason,
        };
        conn.close(VarInt::from_u32(0), reason.as_bytes());
        self.unregister(remote, id);
        lock(&self.replica).reset_sync_state(remote);
        let _ = self.events.send(PeerEvent::Disconnected { peer: remote, reason: reason.clone() });
        reason
    }

    /// Answers a join handshake: redeems the ticket's secret and replies with the
    /// team's membership log, or the reason it was refused.
    pub async fn answer_join(self: Arc<Self>, conn: Connection) {
        let remote = remote_device(&conn);
        let failed = "join handshake failed";
        handshake::answer(&conn, JOIN_REQUEST_BYTES_MAX, failed, |request| match request {
            Ok(request) => self.redeem(remote, &request),
            Err(e) => JoinReply::Refused { reason: e.to_string() },
        })
        .await;
    }

    fn redeem(&self, remote: DeviceId, request: &JoinRequest) -> JoinReply {
        if !lock(&self.joins).admit(tokio::time::Instant::now()) {
            let reason = "this device has had too many join attempts; try again in a minute";
            return JoinReply::Refused { reason: reason.to_owned() };
        }
        let redeemed = lock(&self.replica).redeem(remote, request);
        match redeemed {
            Ok((team, ops)) => {
                self.notify(Change::Membership { team });
                JoinReply::Accepted { team, ops: ops.iter().map(SignedOp::to_bytes).collect() }
            }
            Err(reason) => JoinReply::Refused { reason },
        }
    }

    async fn drive(
        &self,
        conn: &Connection,
        remote: DeviceId,
        dialed_by_me: bool,
        stop: &Notify,
    ) -> Result<String, String> {
        let hello_by = tokio::time::Instant::now() + Duration::from_millis(HELLO_TIMEOUT_MS);
        let (mut send, mut recv) = if dialed_by_me {
            conn.open_bi().await.map_err(|e| format!("cannot open the sync stream: {e}"))?
        } else {
            tokio::time::timeout_at(hello_by, conn.accept_bi())
                .await
                .map_err(|_| {
                    format!("the other device opened no stream within {HELLO_TIMEOUT_MS} ms")
                })?
                .map_err(|e| format!("the sync stream did not open: {e}"))?
        };
        let (frames_tx, mut frames) = mpsc::channel(FRAMES_AHEAD_MAX);
        let (admitted_tx, mut admitted) = watch::channel(false);
        let reader = tokio::spawn(async move {
            // Only the Hello, with its own small limit, until it shows a shared team.
            let hello = read_frame_max(&mut recv, HELLO_FRAME_BYTES_MAX).await;
            let last = hello.is_err();
            if frames_tx.send(hello).await.is_err() || last {
                return;
            }
            if admitted.wait_for(|admitted| *admitted).await.is_err() {
                return;
            }
            loop {
                let frame = read_frame(&mut recv).await;
                let last = frame.is_err();
                if frames_tx.send(frame).await.is_err() || last {
                    break;
                }
            }
        });
        let mut changes = self.changes.subscribe();
        let mut session = Session::new(self.local, remote);
        let mut outputs = contained(&mut *lock(&self.replica), remote, |r| session.start(r));
        let ended = loop {
            if let Some(reason) = self.carry_out(&mut send, remote, outputs).await? {
                break reason;
            }
            outputs = tokio::select! {
                frame = frames.recv() => match frame {
                    Some(Ok(bytes)) => {
                        self.counters.frames_received.fetch_add(1, Ordering::Relaxed);
                        self.counters.bytes_received.fetch_add(4 + bytes.len() as u64, Ordering::Relaxed);
                        let outputs = contained(&mut *lock(&self.replica), remote, |r| session.handle_frame(r, &bytes));
                        if session.admitted() {
                            admitted_tx.send_replace(true);
                        }
                        outputs
                    }
                    Some(Err(ReadFrameError::Finished)) | None => break "the other device ended the session".to_owned(),
                    Some(Err(e)) => {
                        let reason = e.to_string();
                        session.close(&mut *lock(&self.replica), &reason)
                    }
                },
                change = changes.recv() => match change {
                    Ok(change) => self.on_change(&mut session, change),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        session.close(&mut *lock(&self.replica), "this device fell behind; reconnect to resynchronise")
                    }
                    Err(broadcast::error::RecvError::Closed) => break "this device is shutting down".to_owned(),
                },
                () = stop.notified() => session.close(&mut *lock(&self.replica), "replaced by another connection between the same devices"),
                // A Hello that arrived but waits its turn is read first.
                () = tokio::time::sleep_until(hello_by), if !session.admitted() && frames.is_empty() => {
                    let reason = format!("the other device showed no shared team within {HELLO_TIMEOUT_MS} ms");
                    session.close(&mut *lock(&self.replica), &reason)
                }
            };
        };
        reader.abort();
        let _ = send.finish();
        Ok(ended)
    }

    fn on_change(&self, session: &mut Session, change: Change) -> Vec<Output> {
        let remote = session.remote();
        contained(&mut *lock(&self.replica), remote, |replica| match change {
            Change::Doc { team, doc, kind } => session.local_change(replica, team, doc, kind),
            Change::Membership { team } => session.membership_changed(replica, team),
        })
    }

    /// Writes frames and publishes events; returns the reason if the session closed.
    async fn carry_out(
        &self,
        send: &mut SendStream,
        remote: DeviceId,
        outputs: Vec<Output>,
    ) -> Result<Option<String>, String> {
        for output in outputs {
            match output {
                Output::Send(frame) => {
                    write_frame(send, &frame)
                        .await
                        .map_err(|e| format!("the connection was lost: {e}"))?;
                    self.counters.frames_sent.fetch_add(1, Ordering::Relaxed);
                    self.counters.bytes_sent.fetch_add(4 + frame.len() as u64, Ordering::Relaxed);
                }
                Output::Close { reason } => return Ok(Some(reason)),
                Output::Event(event) => self.publish(remote, event),
            }
        }
        Ok(None)
    }

    /// Passes what a session learned to the other sessions and to the application.
    fn publish(&self, remote: DeviceId, event: SyncEvent) {
        match &event {
            SyncEvent::DocChanged { team, doc, kind } => {
                self.notify(Change::Doc { team: *team, doc: *doc, kind: *kind });
            }
            SyncEvent::MembershipChanged { team } => {
                self.notify(Change::Membership { team: *team })
            }
            SyncEvent::Refused { .. } | SyncEvent::TeamInSync { .. } => {}
        }
        let _ = self.events.send(PeerEvent::Sync { peer: remote, event });
    }

    /// Registers a session with `remote`. Between two connections of the same pair of
    /// devices, both ends keep the one dialed by the smaller device id (or the newer one
    /// when both were dialed by the same device), so crossing dials settle on one.
    fn register(&self, remote: DeviceId, dialer: DeviceId) -> Option<(u64, Arc<Notify>)> {
        let mut sessions = lock(&self.sessions);
        if let Some(existing) = sessions.get(&remote) {
            if existing.dialer < dialer {
                return None;
            }
            existing.stop.notify_one();
        } else if sessions.len() >= SESSIONS_MAX {
            return None;
        }
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let stop = Arc::new(Notify::new());
        sessions.insert(remote, Registered { id, dialer, stop: Arc::clone(&stop) });
        Some((id, stop))
    }

    fn unregister(&self, remote: DeviceId, id: u64) {
        let mut sessions = lock(&self.sessions);
        if sessions.get(&remote).is_some_and(|s| s.id == id) {
            sessions.remove(&remote);
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

/// Runs one step of a session. A panic in it is a bug, but it stays in this session: the
/// replica drops what it holds in memory for it (reloading from the store, where every
/// write is a whole transaction), and the session closes; the device's other sessions go
/// on.
fn contained<R: Replica>(
    replica: &mut R,
    remote: DeviceId,
    step: impl FnOnce(&mut R) -> Vec<Output>,
) -> Vec<Output> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(replica))) {
        Ok(outputs) => outputs,
        Err(_) => {
            replica.recover_from_panic(remote);
            let reason = "this device failed while handling the session (a bug), and closed it";
            vec![Output::Close { reason: reason.to_owned() }]
        }
    }
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
    use crate::memory::MemoryReplica;
    use care_core::{DeviceKey, TeamId};

    #[test]
    fn a_panic_in_a_session_step_closes_that_session_only() {
        let device = DeviceKey::from_seed([1; 32]).device_id();
        let remote = DeviceKey::from_seed([2; 32]).device_id();
        let mut replica = MemoryReplica::new(device);
        let outputs = contained(&mut replica, remote, |_| panic!("a bug in one session"));
        assert!(
            matches!(outputs.as_slice(), [Output::Close { reason }] if reason.contains("a bug"))
        );
        // The same replica goes on serving the next step.
        let mut session = Session::new(device, remote);
        let outputs = contained(&mut replica, remote, |r| session.start(r));
        assert!(matches!(outputs.first(), Some(Output::Send(_))));
    }

    impl Invites for MemoryReplica {
        fn redeem(
            &mut self,
            _device: DeviceId,
            _request: &JoinRequest,
        ) -> Result<(TeamId, Vec<SignedOp>), String> {
            Err("no invitations here".to_owned())
        }
    }

    /// A device runs at most `SESSIONS_MAX` sessions: the next device is turned away,
    /// while a new connection from a device already in session still replaces its old one.
    #[tokio::test]
    async fn sessions_are_bounded() {
        let device = DeviceKey::from_seed([1; 32]).device_id();
        let service = SyncService::new(Arc::new(Mutex::new(MemoryReplica::new(device))));
        let remote = |i: usize| {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
            DeviceId::from_bytes(bytes)
        };
        for i in 0..SESSIONS_MAX {
            assert!(service.register(remote(i), remote(i)).is_some(), "session {i}");
        }
        assert!(service.register(remote(SESSIONS_MAX), remote(SESSIONS_MAX)).is_none());
        assert!(service.register(remote(0), remote(0)).is_some(), "a known device reconnects");
        assert_eq!(service.connected().len(), SESSIONS_MAX);
    }

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
