//! A home on the network: the device's endpoint serving sync and invitations, sessions
//! kept with the team's known devices, and every change to the store (made through this
//! node, received from a peer, or written by another program on this home) pushed to
//! the connected peers at once.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use automerge::ChangeHash;
use care_core::membership::Role;
use care_core::{DeviceId, DocId, DocKind, MemberId, SignedOp, TeamId, Timestamp};
use care_sync::SyncEvent;
use care_sync::join::{JoinReply, JoinRequest};
use care_sync::net::{Change, NetConfig, PeerAddr, PeerEvent, Runtime};
use care_sync::ticket::JoinTicket;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::home::Home;

/// How often the store is checked for writes by other programs on this home.
pub const WATCH_INTERVAL_MS: u64 = 100;

/// How a node behaves beyond its network settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeOptions {
    /// Keep sessions with every known device of every team, redialling with backoff.
    /// Off for a node that should talk only to the devices it is told to connect to.
    pub dial_known_devices: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions { dial_known_devices: true }
    }
}

/// A home on the network.
pub struct Node {
    pub(crate) home: Arc<Mutex<Home>>,
    pub(crate) runtime: Arc<Runtime<Home>>,
    changed: Arc<Notify>,
    options: NodeOptions,
    tasks: Vec<JoinHandle<()>>,
}

/// What the store looked like when the watcher last checked.
#[derive(Default)]
struct Seen {
    docs: HashMap<DocId, Vec<ChangeHash>>,
    ops: HashMap<TeamId, usize>,
    devices: BTreeSet<DeviceId>,
}

impl Node {
    /// Starts the network side of a home: binds the endpoint and keeps sessions with the
    /// known devices of every team.
    pub async fn start(home: Home, config: &NetConfig) -> Result<Node> {
        Node::start_with(home, config, NodeOptions::default()).await
    }

    /// Starts the network side of a home with options.
    pub async fn start_with(home: Home, config: &NetConfig, options: NodeOptions) -> Result<Node> {
        Node::start_serving(Arc::new(Mutex::new(home)), config, options, Vec::new()).await
    }

    /// Starts a node over a shared home, serving extra protocols (a circle node's).
    pub(crate) async fn start_serving(
        home: Arc<Mutex<Home>>,
        config: &NetConfig,
        options: NodeOptions,
        protocols: Vec<care_sync::net::Protocol>,
    ) -> Result<Node> {
        let seed = lock(&home).key.to_seed();
        let runtime =
            Arc::new(Runtime::start_with(Arc::clone(&home), seed, config, protocols).await?);
        let changed = Arc::new(Notify::new());
        let mut node = Node { home, runtime, changed, options, tasks: Vec::new() };
        let mut seen = Seen::default();
        node.watch_once(&mut seen)?;
        node.tasks.push(tokio::spawn(watch(
            Arc::clone(&node.home),
            Arc::clone(&node.runtime),
            Arc::clone(&node.changed),
            seen,
            options,
        )));
        node.tasks.push(tokio::spawn(follow_sessions(
            Arc::clone(&node.home),
            Arc::clone(&node.runtime),
            Arc::clone(&node.changed),
        )));
        Ok(node)
    }

    /// Runs `f` on the home; whatever it changes is pushed to connected peers.
    pub fn with_home<T>(&self, f: impl FnOnce(&mut Home) -> T) -> T {
        let (result, changed) = {
            let mut home = lock(&self.home);
            let result = f(&mut home);
            (result, std::mem::take(&mut home.changed))
        };
        let service = self.runtime.service();
        for change in changed {
            service.notify(change);
            if matches!(change, Change::Membership { .. }) {
                // New or removed devices: the watcher updates whom to keep connected.
                self.changed.notify_one();
            }
        }
        result
    }

    /// Where this device listens.
    pub fn addr(&self) -> PeerAddr {
        self.runtime.addr()
    }

    /// Events of every session, for an app to render.
    pub fn events(&self) -> broadcast::Receiver<PeerEvent> {
        self.runtime.service().subscribe()
    }

    /// Frames and bytes this node's sessions have carried since it started.
    pub fn traffic(&self) -> care_sync::net::Traffic {
        self.runtime.service().traffic()
    }

    /// The devices with a session right now.
    pub fn connected(&self) -> Vec<DeviceId> {
        self.runtime.service().connected()
    }

    /// Issues a ticket inviting a new member with `role` into a team (its id, a prefix or
    /// its name), valid once for `valid_for`.
    pub fn invite(
        &self,
        team: &str,
        role: Role,
        name: &str,
        valid_for: Duration,
    ) -> Result<JoinTicket> {
        let (team, secret) = self.with_home(|home| {
            let team = home.team(team)?.id();
            let expires = expiry(home, valid_for);
            home.create_invite(team, role, name, expires).map(|secret| (team, secret))
        })?;
        Ok(self.ticket(team, secret, None))
    }

    /// A ticket naming this device, where it listens, and `secret`.
    fn ticket(&self, team: TeamId, secret: [u8; 16], device_of: Option<MemberId>) -> JoinTicket {
        let addr = self.addr();
        JoinTicket {
            team,
            inviter: addr.device,
            addrs: addr.addrs,
            relay: addr.relay.map(|r| r.to_string()),
            secret,
            device_of,
        }
    }

    /// Issues a ticket that adds one more device of this home's member to a team (its id,
    /// a prefix or its name), valid once for `valid_for`: redeemed with
    /// [`Node::join`] on the new device's home.
    pub fn device_invite(&self, team: &str, valid_for: Duration) -> Result<JoinTicket> {
        let (team, secret, member) = self.with_home(|home| {
            let team = home.team(team)?.id();
            let secret = home.create_device_invite(team, expiry(home, valid_for))?;
            Ok::<_, Error>((team, secret, home.profile().member))
        })?;
        Ok(self.ticket(team, secret, Some(member)))
    }

    /// Joins a team with a ticket: the inviting device adds this device to the team and
    /// sends its membership log; the team's documents follow over a sync session. With
    /// a device ticket, a new home takes the member id of the person it belongs to.
    pub async fn join(&self, ticket: &JoinTicket) -> Result<TeamId> {
        if let Some(member) = ticket.device_of {
            self.with_home(|home| home.adopt_member(member))?;
        }
        let (member, name) =
            self.with_home(|home| (home.profile().member, home.profile().name.clone()));
        let request = JoinRequest { secret: ticket.secret, member, name };
        let reply = self.runtime.join(ticket, &request).await?;
        let ops = match reply {
            JoinReply::Accepted { team, ops } if team == ticket.team => ops,
            JoinReply::Accepted { .. } => {
                return Err(Error::Invalid("the inviting device answered for another team".into()));
            }
            JoinReply::Refused { reason } => return Err(Error::JoinRefused(reason)),
        };
        let ops: Vec<SignedOp> =
            ops.iter().filter_map(|bytes| SignedOp::from_bytes(bytes).ok()).collect();
        self.with_home(|home| {
            care_sync::Replica::add_ops(home, ticket.team, &ops)?;
            let membership = home.membership(ticket.team)?;
            if membership.member_of_device(home.profile().device).is_none() {
                return Err(Error::Invalid(
                    "the inviting device did not add this device to the team".into(),
                ));
            }
            let now = home.now().as_millis();
            home.store.set_peer_addrs(ticket.inviter, &render_addrs(&ticket.addrs), now)?;
            home.changed.push(Change::Membership { team: ticket.team });
            if let Some(relay) = &ticket.relay {
                home.set_circle_relay(relay)?;
            }
            Ok(())
        })?;
        let inviter = PeerAddr {
            device: ticket.inviter,
            addrs: ticket.addrs.clone(),
            relay: ticket.relay.as_deref().and_then(|r| r.parse().ok()),
        };
        self.runtime.keep_connected(inviter);
        Ok(ticket.team)
    }

    /// Connects once to a device (given by its address) and syncs with it.
    pub async fn connect(&self, peer: &PeerAddr) -> Result<()> {
        Ok(self.runtime.connect(peer).await?)
    }

    /// Stops every session and the endpoint; the home stays as it is on disk.
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        // Aborted tasks drop their handles on the runtime only once they are awaited.
        for task in self.tasks {
            let _ = task.await;
        }
        if let Ok(runtime) = Arc::try_unwrap(self.runtime) {
            runtime.shutdown().await;
        }
    }

    /// Compares the store with what was seen last, and tells the sessions what moved.
    fn watch_once(&self, seen: &mut Seen) -> Result<()> {
        watch_once(&self.home, &self.runtime, seen, self.options)
    }
}

/// Addresses as stored in the peers table: comma-separated `ip:port`.
pub(crate) fn render_addrs(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

fn parse_addrs(text: &str) -> Vec<SocketAddr> {
    text.split(',').filter_map(|a| a.trim().parse().ok()).collect()
}

async fn watch(
    home: Arc<Mutex<Home>>,
    runtime: Arc<Runtime<Home>>,
    changed: Arc<Notify>,
    mut seen: Seen,
    options: NodeOptions,
) {
    let mut version = lock(&home).store.data_version().unwrap_or_default();
    loop {
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(WATCH_INTERVAL_MS)) => {
                let now = lock(&home).store.data_version().unwrap_or(version);
                if now == version {
                    continue;
                }
                version = now;
            }
        }
        if let Err(e) = watch_once(&home, &runtime, &mut seen, options) {
            tracing::warn!("cannot read the store for changes: {e}");
        }
    }
}

fn watch_once(
    home: &Mutex<Home>,
    runtime: &Runtime<Home>,
    seen: &mut Seen,
    options: NodeOptions,
) -> Result<()> {
    let service = runtime.service();
    let (docs, ops) = {
        let home = lock(home);
        let mut ops = HashMap::new();
        for team in home.store.teams()? {
            ops.insert(team, home.store.ops(team)?.len());
        }
        (home.store.docs(None)?, ops)
    };
    for doc in docs {
        if seen.docs.get(&doc.id) != Some(&doc.heads) {
            if let Ok(kind) = doc.kind.parse::<DocKind>() {
                service.notify(Change::Doc { team: doc.team, doc: doc.id, kind });
            }
            seen.docs.insert(doc.id, doc.heads);
        }
    }
    let mut membership_moved = seen.ops.is_empty();
    for (team, count) in ops {
        if seen.ops.insert(team, count) != Some(count) {
            service.notify(Change::Membership { team });
            membership_moved = true;
        }
    }
    if membership_moved && options.dial_known_devices {
        keep_known_devices(home, runtime, seen)?;
    }
    Ok(())
}

/// Keeps sessions with every current device of every team, and drops removed ones.
fn keep_known_devices(home: &Mutex<Home>, runtime: &Runtime<Home>, seen: &mut Seen) -> Result<()> {
    let mut known = HashMap::new();
    {
        let home = lock(home);
        for team in home.store.teams()? {
            for (device, _) in home.membership(team)?.devices() {
                if device != home.profile().device && !known.contains_key(&device) {
                    let stored = home.store.peer_addrs(device)?.map(|(a, _)| parse_addrs(&a));
                    known.insert(device, stored.unwrap_or_default());
                }
            }
        }
    }
    let devices: BTreeSet<DeviceId> = known.keys().copied().collect();
    for device in devices.difference(&seen.devices) {
        let addrs = known.remove(device).unwrap_or_default();
        runtime.keep_connected(PeerAddr { device: *device, addrs, relay: None });
    }
    for device in seen.devices.difference(&devices) {
        runtime.forget(*device);
    }
    seen.devices = devices;
    Ok(())
}

/// Follows the sessions: remembers where connected devices were seen (so they can be
/// redialled later) and when each session last ended or found a team in sync, and has
/// the watcher revisit whom to keep connected when a membership log grew.
async fn follow_sessions(
    home: Arc<Mutex<Home>>,
    runtime: Arc<Runtime<Home>>,
    changed: Arc<Notify>,
) {
    let mut events = runtime.service().subscribe();
    loop {
        match events.recv().await {
            Ok(PeerEvent::Sync { event: SyncEvent::MembershipChanged { .. }, .. }) => {
                changed.notify_one()
            }
            Ok(PeerEvent::Sync {
                event: SyncEvent::DocChanged { team, kind: DocKind::Team, .. },
                ..
            }) => {
                if let Err(e) = adopt_circle_relay(&home, &runtime, team).await {
                    tracing::warn!("cannot use the team's circle relay: {e}");
                }
            }
            Ok(PeerEvent::Connected { peer }) => {
                let addrs = runtime.seen_addrs(peer).await;
                if !addrs.is_empty() {
                    let mut home = lock(&home);
                    let now = home.now().as_millis();
                    let _ = home.store.set_peer_addrs(peer, &render_addrs(&addrs), now);
                }
            }
            Ok(
                PeerEvent::Disconnected { peer, .. }
                | PeerEvent::Sync { peer, event: SyncEvent::TeamInSync { .. } },
            ) => {
                let mut home = lock(&home);
                let now = home.now().as_millis();
                let _ = home.record_sync(peer, now);
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Starts using the circle relay a team's document names, if this device does not yet:
/// every device of a team that added a circle node reaches the others through it.
async fn adopt_circle_relay(
    home: &Mutex<Home>,
    runtime: &Runtime<Home>,
    team: TeamId,
) -> Result<()> {
    let url = {
        let mut home = lock(home);
        let circle = home.team(&team.to_string())?.info()?.circle;
        match circle {
            Some(url) if home.circle_relay()?.as_deref() != Some(url.as_str()) => {
                home.set_circle_relay(&url)?;
                url
            }
            _ => return Ok(()),
        }
    };
    runtime.use_relay(&url).await?;
    Ok(())
}

/// The time a ticket issued now and valid for `valid_for` expires, by the home's clock.
fn expiry(home: &Home, valid_for: Duration) -> Timestamp {
    let valid_ms = i64::try_from(valid_for.as_millis()).unwrap_or(i64::MAX);
    Timestamp(home.now().as_millis().saturating_add(valid_ms))
}

/// Locks the home, going on if a panicking thread poisoned the lock: every change to the
/// home is a completed store transaction, so it is never half-made.
pub(crate) fn lock(home: &Mutex<Home>) -> MutexGuard<'_, Home> {
    home.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
