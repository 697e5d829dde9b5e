//! A home on the network: the device's endpoint serving sync and invitations, sessions
//! kept with the team's known devices, and every change to the store (made through this
//! node, received from a peer, or written by another program on this home) pushed to
//! the connected peers at once.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use automerge::ChangeHash;
use care_core::membership::Role;
use care_core::{DeviceId, DocId, DocKind, MemberId, SignedOp, TeamId, Timestamp};
use care_net::{Change, NetConfig, Owner, PeerAddr, PeerEvent, Runtime};
use care_sync::join::{JoinReply, JoinRequest};
use care_sync::ticket::JoinTicket;
use care_sync::{Replica, SyncEvent};
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

/// A home on the network. The home itself lives on the node's owner thread, with every
/// session; the app reaches it by posting closures ([`Node::with_home`]).
pub struct Node {
    pub(crate) runtime: Arc<Runtime<Home>>,
    changed: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("runtime", &self.runtime).finish_non_exhaustive()
    }
}

/// What the store looked like when the watcher last checked.
#[derive(Default)]
struct Seen {
    /// SQLite's `data_version` then: it moves when another program commits.
    version: Option<i64>,
    docs: HashMap<DocId, Vec<ChangeHash>>,
    ops: HashMap<TeamId, usize>,
}

impl Node {
    /// Starts the network side of a home: binds the endpoint and keeps sessions with the
    /// known devices of every team.
    pub async fn start(home: Home, config: &NetConfig) -> Result<Node> {
        Node::start_with(home, config, NodeOptions::default()).await
    }

    /// Starts the network side of a home with options.
    pub async fn start_with(home: Home, config: &NetConfig, options: NodeOptions) -> Result<Node> {
        let seed = home.key.to_seed();
        let owner = Owner::spawn_bounded(home, config.queued_bytes_max).map_err(Error::Thread)?;
        Node::start_serving(owner, seed, config, options, Vec::new()).await
    }

    /// Starts a node over a home already on its owner thread, serving extra protocols (a
    /// circle node's).
    pub(crate) async fn start_serving(
        owner: Owner<Home>,
        seed: [u8; 32],
        config: &NetConfig,
        options: NodeOptions,
        protocols: Vec<care_net::Protocol>,
    ) -> Result<Node> {
        let runtime = match Runtime::start_with(owner.clone(), seed, config, protocols).await {
            Ok(runtime) => Arc::new(runtime),
            Err(e) => {
                owner.stop().await;
                return Err(e.into());
            }
        };
        let changed = Arc::new(Notify::new());
        let mut node = Node { runtime, changed, tasks: Vec::new() };
        let mut watcher =
            Watcher { seen: Some(Seen::default()), devices: BTreeSet::new(), options };
        watcher.watch_once(&node.runtime).await?;
        node.tasks
            .push(tokio::spawn(watcher.run(Arc::clone(&node.runtime), Arc::clone(&node.changed))));
        node.tasks.push(tokio::spawn(follow_sessions(
            Arc::clone(&node.runtime),
            Arc::clone(&node.changed),
        )));
        Ok(node)
    }

    /// Runs `f` on the home, on the node's owner thread, and returns its result;
    /// whatever it changed is pushed to connected peers. A panic in `f` is raised again
    /// here.
    pub async fn with_home<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Home) -> T + Send + 'static,
    ) -> T {
        let (result, membership_moved) = self
            .runtime
            .owner()
            .call(move |home| {
                let result = f(home);
                let moved = home.changed.iter().any(|c| matches!(c, Change::Membership { .. }));
                (result, moved)
            })
            .await
            .expect("the owner thread runs until the node shuts down");
        if membership_moved {
            // New or removed devices: the watcher updates whom to keep connected.
            self.changed.notify_one();
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
    pub fn traffic(&self) -> care_net::Traffic {
        self.runtime.service().traffic()
    }

    /// Per device with a session right now, the shared teams it is in sync with: both
    /// hold the same of every document both may read.
    pub async fn teams_in_sync(&self) -> Result<std::collections::BTreeMap<DeviceId, Vec<TeamId>>> {
        Ok(self.runtime.owner().teams_in_sync().await?)
    }

    /// The devices with a session right now.
    pub fn connected(&self) -> Vec<DeviceId> {
        self.runtime.service().connected()
    }

    /// Issues a ticket inviting a new member with `role` into a team (its id, a prefix or
    /// its name), valid once for `valid_for`.
    pub async fn invite(
        &self,
        team: &str,
        role: Role,
        name: &str,
        valid_for: Duration,
    ) -> Result<JoinTicket> {
        let (team, name) = (team.to_owned(), name.to_owned());
        let (team, secret) = self
            .with_home(move |home| {
                let team = home.team(&team)?.id();
                let expires = expiry(home, valid_for);
                home.create_invite(team, role, &name, expires).map(|secret| (team, secret))
            })
            .await?;
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
    pub async fn device_invite(&self, team: &str, valid_for: Duration) -> Result<JoinTicket> {
        let team = team.to_owned();
        let (team, secret, member) = self
            .with_home(move |home| {
                let team = home.team(&team)?.id();
                let secret = home.create_device_invite(team, expiry(home, valid_for))?;
                Ok::<_, Error>((team, secret, home.profile().member))
            })
            .await?;
        Ok(self.ticket(team, secret, Some(member)))
    }

    /// Joins a team with a ticket: the inviting device adds this device to the team and
    /// sends its membership log; the team's documents follow over a sync session. With
    /// a device ticket, a new home takes the member id of the person it belongs to.
    pub async fn join(&self, ticket: &JoinTicket) -> Result<TeamId> {
        let device_of = ticket.device_of;
        let (member, name) = self
            .with_home(move |home| {
                if let Some(member) = device_of {
                    home.adopt_member(member)?;
                }
                Ok::<_, Error>((home.profile().member, home.profile().name.clone()))
            })
            .await?;
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
        let joined = ticket.clone();
        self.with_home(move |home| {
            let ticket = joined;
            home.add_ops(ticket.team, &ops)?;
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
        })
        .await?;
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

    /// Stops every session, the endpoint and the owner thread; the home stays as it is
    /// on disk, closed.
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        // Aborted tasks drop their handles on the runtime only once they are awaited.
        for task in self.tasks {
            let _ = task.await;
        }
        match Arc::try_unwrap(self.runtime) {
            Ok(runtime) => runtime.shutdown().await,
            Err(runtime) => runtime.owner().stop().await,
        }
    }
}

/// Addresses as stored in the peers table: comma-separated `ip:port`.
pub(crate) fn render_addrs(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

fn parse_addrs(text: &str) -> Vec<SocketAddr> {
    text.split(',').filter_map(|a| a.trim().parse().ok()).collect()
}

/// Follows the store for writes by other programs on this home (through SQLite's
/// `data_version`), and keeps sessions with every current device of every team.
struct Watcher {
    /// What the store looked like; on the owner thread while it looks again.
    seen: Option<Seen>,
    /// The devices kept connected.
    devices: BTreeSet<DeviceId>,
    options: NodeOptions,
}

impl Watcher {
    async fn run(mut self, runtime: Arc<Runtime<Home>>, changed: Arc<Notify>) {
        loop {
            tokio::select! {
                () = changed.notified() => {
                    if let Some(seen) = &mut self.seen {
                        seen.version = None;
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(WATCH_INTERVAL_MS)) => {}
            }
            if let Err(e) = self.watch_once(&runtime).await {
                tracing::warn!("cannot read the store for changes: {e}");
            }
        }
    }

    /// Compares the store with what was seen last (on the owner thread, which tells the
    /// sessions what moved), and updates whom to keep connected.
    async fn watch_once(&mut self, runtime: &Runtime<Home>) -> Result<()> {
        let mut seen = self.seen.take().unwrap_or_default();
        let dial = self.options.dial_known_devices;
        let (seen, looked) = runtime
            .owner()
            .call(move |home| {
                let looked = look(home, &mut seen, dial);
                (seen, looked)
            })
            .await?;
        self.seen = Some(seen);
        if let Some(known) = looked? {
            self.keep_known_devices(runtime, known);
        }
        Ok(())
    }

    /// Keeps sessions with every current device of every team, and drops removed ones.
    fn keep_known_devices(
        &mut self,
        runtime: &Runtime<Home>,
        mut known: HashMap<DeviceId, Vec<SocketAddr>>,
    ) {
        let devices: BTreeSet<DeviceId> = known.keys().copied().collect();
        for device in devices.difference(&self.devices) {
            let addrs = known.remove(device).unwrap_or_default();
            runtime.keep_connected(PeerAddr { device: *device, addrs, relay: None });
        }
        for device in self.devices.difference(&devices) {
            runtime.forget(*device);
        }
        self.devices = devices;
    }
}

/// On the owner thread: what moved in the store since `seen` (written by another
/// program: this home's own writes are told to the sessions as they happen), recorded as
/// the home's changes for the sessions. When a membership log moved and `dial` is on,
/// every current device of every team with its stored addresses.
fn look(
    home: &mut Home,
    seen: &mut Seen,
    dial: bool,
) -> Result<Option<HashMap<DeviceId, Vec<SocketAddr>>>> {
    let version = home.store.data_version()?;
    if seen.version == Some(version) {
        return Ok(None);
    }
    seen.version = Some(version);
    for doc in home.store.docs(None)? {
        if seen.docs.get(&doc.id) != Some(&doc.heads) {
            if let Ok(kind) = doc.kind.parse::<DocKind>() {
                home.changed.push(Change::Doc { team: doc.team, doc: doc.id, kind });
            }
            seen.docs.insert(doc.id, doc.heads);
        }
    }
    let mut membership_moved = seen.ops.is_empty();
    for team in home.store.teams()? {
        let count = home.store.ops(team)?.len();
        if seen.ops.insert(team, count) != Some(count) {
            home.changed.push(Change::Membership { team });
            membership_moved = true;
        }
    }
    if !(membership_moved && dial) {
        return Ok(None);
    }
    let mut known = HashMap::new();
    for team in home.store.teams()? {
        for (device, _) in home.membership(team)?.devices() {
            if device != home.profile().device && !known.contains_key(&device) {
                let stored = home.store.peer_addrs(device)?.map(|(a, _)| parse_addrs(&a));
                known.insert(device, stored.unwrap_or_default());
            }
        }
    }
    Ok(Some(known))
}

/// Follows the sessions: remembers where connected devices were seen (so they can be
/// redialled later) and when each session last ended or found a team in sync, and has
/// the watcher revisit whom to keep connected when a membership log grew.
async fn follow_sessions(runtime: Arc<Runtime<Home>>, changed: Arc<Notify>) {
    let mut events = runtime.service().subscribe();
    let owner = runtime.owner().clone();
    loop {
        match events.recv().await {
            Ok(PeerEvent::Sync { event: SyncEvent::MembershipChanged { .. }, .. }) => {
                changed.notify_one()
            }
            Ok(PeerEvent::Sync {
                event: SyncEvent::DocChanged { team, kind: DocKind::Team, .. },
                ..
            }) => {
                if let Err(e) = adopt_circle_relay(&runtime, team).await {
                    tracing::warn!("cannot use the team's circle relay: {e}");
                }
            }
            Ok(PeerEvent::Connected { peer }) => {
                let addrs = runtime.seen_addrs(peer).await;
                if !addrs.is_empty() {
                    let _ = owner
                        .call(move |home| {
                            let now = home.now().as_millis();
                            home.store.set_peer_addrs(peer, &render_addrs(&addrs), now)
                        })
                        .await;
                }
            }
            Ok(
                PeerEvent::Disconnected { peer, .. }
                | PeerEvent::Sync { peer, event: SyncEvent::TeamInSync { .. } },
            ) => {
                let _ = owner
                    .call(move |home| {
                        let now = home.now().as_millis();
                        home.record_sync(peer, now)
                    })
                    .await;
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Starts using the circle relay a team's document names, if this device does not yet:
/// every device of a team that added a circle node reaches the others through it.
async fn adopt_circle_relay(runtime: &Runtime<Home>, team: TeamId) -> Result<()> {
    let url = runtime
        .owner()
        .call(move |home| {
            let circle = home.team(&team.to_string())?.info()?.circle;
            match circle {
                Some(url) if home.circle_relay()?.as_deref() != Some(url.as_str()) => {
                    home.set_circle_relay(&url)?;
                    Ok(Some(url))
                }
                _ => Ok::<_, Error>(None),
            }
        })
        .await??;
    if let Some(url) = url {
        runtime.use_relay(&url).await?;
    }
    Ok(())
}

/// The time a ticket issued now and valid for `valid_for` expires, by the home's clock.
fn expiry(home: &Home, valid_for: Duration) -> Timestamp {
    let valid_ms = i64::try_from(valid_for.as_millis()).unwrap_or(i64::MAX);
    Timestamp(home.now().as_millis().saturating_add(valid_ms))
}
