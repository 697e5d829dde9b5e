//! The owner of a device's data: one thread that holds the replica (the store and its
//! caches) and the [`Hub`] of every session, and drains a bounded queue of commands.
//!
//! Network tasks only read and write bytes: a connection's reader posts each frame it
//! reads, and its writer writes what the owner queues for it. No store, Automerge or
//! signature work runs on an async worker, and the application reaches the replica only
//! by posting a closure ([`Owner::call`]) and awaiting its answer.
//!
//! Bounds: the queue holds [`COMMANDS_QUEUED_MAX`] commands, so a busy owner (a slow
//! disk) slows the readers feeding it; a connection has at most [`FRAMES_AHEAD_MAX`]
//! frames read and not yet handled; what is queued for a connection to write is bounded
//! by [`QUEUED_BYTES_MAX`], past which the connection is dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use care_core::{DeviceId, TeamId};
use iroh::endpoint::{Connection, VarInt};
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc, oneshot, watch};

use care_sync::Replica;
use care_sync::hub::{ConnId, Effect, Hub, PeerEvent, Turned};
use care_sync::{CloseReason, Encoded};

/// Commands waiting for the owner thread. A reader waits for room, so a busy owner slows
/// the peers feeding it rather than holding their frames.
pub const COMMANDS_QUEUED_MAX: usize = 256;
/// Frames of one connection read ahead of the owner handling them: with
/// `FRAME_BYTES_MAX` this bounds what one connection can make this device hold.
pub const FRAMES_AHEAD_MAX: usize = 2;
/// Most bytes queued for one connection to write. A step can queue a whole team's
/// documents for a device catching up; a device that reads slower than this grows is
/// disconnected, and resumes where it left off when it reconnects.
pub const QUEUED_BYTES_MAX: u64 = 1 << 30;
/// Events queued for the application.
const EVENTS_QUEUED_MAX: usize = 4096;
/// How often the owner is told the time (to close sessions whose Hello is late).
const TICK_MS: u64 = 500;

/// Why a command could not be carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this device's node has stopped")]
pub struct Stopped;

/// A closure run on the owner thread.
type Call<R> = Box<dyn FnOnce(&mut R) + Send>;

/// What the owner thread is asked to do.
enum Command<R> {
    /// A connection is established: open a session for it.
    Open {
        remote: DeviceId,
        dialer: DeviceId,
        link: Link,
        reply: oneshot::Sender<Result<ConnId, Turned>>,
    },
    /// A frame read from a connection; the permit returns when it is handled.
    Frame { conn: ConnId, bytes: Vec<u8>, _permit: OwnedSemaphorePermit },
    /// A connection could not be read (a malformed or oversized frame): close it, saying why.
    Failed { conn: ConnId, reason: CloseReason },
    /// A connection is gone.
    Ended { conn: ConnId, reason: CloseReason },
    /// Run a closure on the replica.
    Call(Call<R>),
    /// The time moved on.
    Tick,
    /// Say which teams each session reports in sync.
    InSync(oneshot::Sender<BTreeMap<DeviceId, Vec<TeamId>>>),
    /// The replica has results of its own work to take in.
    Wake,
    /// Stop: drop the replica and say so.
    Stop(oneshot::Sender<()>),
}

/// What a connection's writer is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outgoing {
    /// Write a frame.
    Frame(Encoded),
    /// Close the connection with this reason once what came before is written.
    Close(String),
}

/// What the owner holds of one connection: where its frames go.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) conn: Connection,
    pub(crate) outbox: mpsc::UnboundedSender<Outgoing>,
    pub(crate) admit: watch::Sender<bool>,
    /// Bytes queued and not yet written.
    pub(crate) queued: Arc<AtomicU64>,
}

/// What the owner thread and the network tasks share.
#[derive(Debug)]
struct Shared {
    events: broadcast::Sender<PeerEvent>,
    connected: Mutex<BTreeSet<DeviceId>>,
}

/// A handle on a device's owner thread. Cheap to clone; the thread runs until
/// [`Owner::stop`].
pub struct Owner<R> {
    commands: mpsc::Sender<Command<R>>,
    shared: Arc<Shared>,
    device: DeviceId,
}

impl<R> Clone for Owner<R> {
    fn clone(&self) -> Self {
        Owner {
            commands: self.commands.clone(),
            shared: Arc::clone(&self.shared),
            device: self.device,
        }
    }
}

impl<R> std::fmt::Debug for Owner<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Owner({})", self.device)
    }
}

impl<R: Replica + Send + 'static> Owner<R> {
    /// Starts the owner thread of `replica`, and a task telling it the time. Must be
    /// called within a tokio runtime.
    pub fn spawn(replica: R) -> std::io::Result<Owner<R>> {
        Owner::spawn_bounded(replica, QUEUED_BYTES_MAX)
    }

    /// [`Owner::spawn`], dropping a connection once more than `queued_bytes_max` bytes are
    /// queued for it to write.
    pub fn spawn_bounded(mut replica: R, queued_bytes_max: u64) -> std::io::Result<Owner<R>> {
        let device = replica.device();
        let (commands, queue) = mpsc::channel(COMMANDS_QUEUED_MAX);
        let wakes = commands.clone();
        // A full queue means the owner is busy: the next tick takes the results in.
        replica.set_waker(Box::new(move || {
            let _ = wakes.try_send(Command::Wake);
        }));
        let shared = Arc::new(Shared {
            events: broadcast::channel(EVENTS_QUEUED_MAX).0,
            connected: Mutex::new(BTreeSet::new()),
        });
        let thread = Thread {
            replica,
            hub: Hub::new(device),
            links: HashMap::new(),
            shared: Arc::clone(&shared),
            started: Instant::now(),
            queued_bytes_max,
        };
        std::thread::Builder::new()
            .name(format!("care-owner-{}", &device.to_string()[..8]))
            .spawn(move || thread.run(queue))?;
        let ticks = commands.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(TICK_MS));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                // A full queue means the owner is busy: it hears the time at the next tick.
                match ticks.try_send(Command::Tick) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        });
        Ok(Owner { commands, shared, device })
    }
}

impl<R: 'static> Owner<R> {
    /// This device.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// Runs `f` on the replica, on the owner thread, and returns its result; whatever it
    /// changed ([`Replica::take_changes`]) is then pushed to every session. A panic in
    /// `f` is raised again here; the owner thread goes on.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut R) -> T + Send + 'static,
    ) -> Result<T, Stopped>
    where
        R: Replica,
    {
        let (reply, answer) = oneshot::channel();
        let call: Call<R> = Box::new(move |replica: &mut R| {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(replica)));
            if result.is_err() {
                let device = replica.device();
                replica.recover_from_panic(device);
            }
            let _ = reply.send(result);
        });
        self.commands.send(Command::Call(call)).await.map_err(|_| Stopped)?;
        match answer.await.map_err(|_| Stopped)? {
            Ok(value) => Ok(value),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Per device with a session, the shared teams it reports in sync right now.
    pub async fn teams_in_sync(&self) -> Result<BTreeMap<DeviceId, Vec<TeamId>>, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::InSync(reply)).await.map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    /// Events of every session.
    pub fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.shared.events.subscribe()
    }

    /// The devices with a running session, sorted.
    pub fn connected(&self) -> Vec<DeviceId> {
        lock(&self.shared.connected).iter().copied().collect()
    }

    /// Stops the owner thread once the commands before this one are done, and waits
    /// until it has dropped the replica.
    pub async fn stop(&self) {
        let (done, stopped) = oneshot::channel();
        if self.commands.send(Command::Stop(done)).await.is_ok() {
            let _ = stopped.await;
        }
    }

    /// Opens a session for an established connection.
    pub(crate) async fn open(
        &self,
        remote: DeviceId,
        dialer: DeviceId,
        link: Link,
    ) -> Result<Result<ConnId, Turned>, Stopped> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Open { remote, dialer, link, reply };
        self.commands.send(command).await.map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    /// Hands a frame read from `conn` to its session.
    pub(crate) async fn frame(
        &self,
        conn: ConnId,
        bytes: Vec<u8>,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), Stopped> {
        let command = Command::Frame { conn, bytes, _permit: permit };
        self.commands.send(command).await.map_err(|_| Stopped)
    }

    /// `conn` could not be read: its session closes with `reason`.
    pub(crate) async fn failed(&self, conn: ConnId, reason: CloseReason) {
        let _ = self.commands.send(Command::Failed { conn, reason }).await;
    }

    /// `conn` is gone.
    pub(crate) async fn ended(&self, conn: ConnId, reason: CloseReason) {
        let _ = self.commands.send(Command::Ended { conn, reason }).await;
    }
}

/// The owner thread's state.
struct Thread<R> {
    replica: R,
    hub: Hub,
    links: HashMap<ConnId, Link>,
    shared: Arc<Shared>,
    started: Instant,
    /// Most bytes queued for one connection to write.
    queued_bytes_max: u64,
}

impl<R: Replica> Thread<R> {
    fn run(mut self, mut queue: mpsc::Receiver<Command<R>>) {
        while let Some(command) = queue.blocking_recv() {
            if let Command::Stop(done) = command {
                drop(self);
                let _ = done.send(());
                return;
            }
            // A panic here is a bug outside any session step (those are contained by the
            // hub): the replica drops what it holds in memory and the thread goes on.
            let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.handle(command);
                self.carry_out();
            }));
            if handled.is_err() {
                tracing::error!("the owner thread failed handling a command (a bug); going on");
                let device = self.replica.device();
                self.replica.recover_from_panic(device);
            }
        }
    }

    fn handle(&mut self, command: Command<R>) {
        let replica = &mut self.replica;
        match command {
            Command::Open { remote, dialer, link, reply } => {
                let now = self.started.elapsed().as_millis() as u64;
                let opened = self.hub.open(replica, remote, dialer, now);
                if let Ok(conn) = opened {
                    self.links.insert(conn, link);
                }
                let _ = reply.send(opened);
            }
            Command::Frame { conn, bytes, _permit } => self.hub.frame(replica, conn, &bytes),
            Command::Failed { conn, reason } => self.hub.close(replica, conn, reason),
            Command::Ended { conn, reason } => {
                self.hub.ended(replica, conn, reason);
                self.links.remove(&conn);
            }
            Command::Call(call) => {
                call(replica);
                self.hub.replica_changed(replica);
            }
            Command::Tick => {
                let now = self.started.elapsed().as_millis() as u64;
                self.hub.tick(replica, now);
                self.hub.background(replica);
            }
            Command::Wake => self.hub.background(replica),
            Command::InSync(reply) => {
                let _ = reply.send(self.hub.teams_in_sync());
            }
            Command::Stop(_) => {}
        }
    }

    /// Carries out what the hub asks.
    fn carry_out(&mut self) {
        loop {
            let effects = self.hub.take_effects();
            if effects.is_empty() {
                return;
            }
            for effect in effects {
                match effect {
                    Effect::Send { conn, frame } => self.send(conn, frame),
                    Effect::Admit { conn } => {
                        if let Some(link) = self.links.get(&conn) {
                            link.admit.send_replace(true);
                        }
                    }
                    Effect::Close { conn, reason } => {
                        if let Some(link) = self.links.remove(&conn) {
                            let _ = link.outbox.send(Outgoing::Close(reason.to_string()));
                        }
                    }
                    Effect::Event(event) => self.publish(event),
                }
            }
        }
    }

    /// Queues a frame for a connection's writer, or drops a connection that has fallen
    /// too far behind.
    fn send(&mut self, conn: ConnId, frame: Encoded) {
        let Some(link) = self.links.get(&conn) else { return };
        let len = frame.len() as u64 + 4;
        let queued = link.queued.fetch_add(len, Ordering::Relaxed) + len;
        if queued <= self.queued_bytes_max {
            let _ = link.outbox.send(Outgoing::Frame(frame));
            return;
        }
        let reason = CloseReason::FellBehind(self.queued_bytes_max);
        link.conn.close(VarInt::from_u32(1), reason.to_string().as_bytes());
        self.links.remove(&conn);
        self.hub.ended(&mut self.replica, conn, reason);
    }

    fn publish(&self, event: PeerEvent) {
        match &event {
            PeerEvent::Connected { peer } => {
                lock(&self.shared.connected).insert(*peer);
            }
            PeerEvent::Disconnected { peer, .. } => {
                if self.hub.conn_of(*peer).is_none() {
                    lock(&self.shared.connected).remove(peer);
                }
            }
            PeerEvent::Sync { .. } => {}
        }
        // No receivers just means no one is listening.
        let _ = self.shared.events.send(event);
    }
}

/// Locks a mutex, going on with its data if a panicking thread poisoned it (the set of
/// connected devices is whole after every change).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
