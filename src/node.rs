//! A home on the network: the device's endpoint serving sync and invitations, sessions
//! kept with the team's known devices, and every change to the store (made through this
//! node, received from a peer, or written by another program on this home) pushed to
//! the connected peers at once.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// How often, at most, a running session's last sync is written: a session finds its
/// team in sync after every live edit, and each record is a write synced to disk on the
/// owner thread. A session's end is always written.
pub const LAST_SYNC_EVERY: Duration = Duration::from_secs(30);

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
    moved: Arc<Moved>,
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
        let moved = Arc::new(Moved::default());
        let mut node = Node { runtime, moved, tasks: Vec::new() };
        let mut watcher = Watcher { seen: Some(Seen::default()), kept: Kept::default(), options };
        watcher.watch_once(&node.runtime, MovedTeams::default()).await?;
        node.tasks
            .push(tokio::spawn(watcher.run(Arc::clone(&node.runtime), Arc::clone(&node.moved))));
        node.tasks.push(tokio::spawn(follow_sessions(
            Arc::clone(&node.runtime),
            Arc::clone(&node.moved),
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
        let (result, moved) = self
            .runtime
            .owner()
            .call(move |home| {
                let result = f(home);
                let moved: BTreeSet<TeamId> = home
                    .changed
                    .iter()
                    .filter_map(|c| match c {
                        Change::Membership { team } => Some(*team),
                        _ => None,
                    })
                    .collect();
                (result, moved)
            })
            .await
            .expect("the owner thread runs until the node shuts down");
        if !moved.is_empty() {
            // New or removed devices: the watcher updates whom to keep connected.
            self.moved.tell(moved);
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

/// Teams whose membership log grew through this node (a session or the app), for the
/// watcher to revisit whom to keep connected.
#[derive(Default)]
struct Moved {
    teams: std::sync::Mutex<MovedTeams>,
    notify: Notify,
}

/// The teams told since the watcher last looked.
#[derive(Default)]
struct MovedTeams {
    teams: BTreeSet<TeamId>,
    /// Some were missed (the events lagged): every team is revisited.
    all: bool,
}

impl Moved {
    fn tell(&self, teams: impl IntoIterator<Item = TeamId>) {
        self.lock().teams.extend(teams);
        self.notify.notify_one();
    }

    fn tell_all(&self) {
        self.lock().all = true;
        self.notify.notify_one();
    }

    fn take(&self) -> MovedTeams {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MovedTeams> {
        self.teams.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Follows the store for writes by other programs on this home (through SQLite's
/// `data_version`), and keeps sessions with every current device of every team.
struct Watcher {
    /// What the store looked like; on the owner thread while it looks again.
    seen: Option<Seen>,
    /// The devices kept connected, by the teams that bring them.
    kept: Kept,
    options: NodeOptions,
}

impl Watcher {
    async fn run(mut self, runtime: Arc<Runtime<Home>>, moved: Arc<Moved>) {
        loop {
            tokio::select! {
                () = moved.notify.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(WATCH_INTERVAL_MS)) => {}
            }
            if let Err(e) = self.watch_once(&runtime, moved.take()).await {
                tracing::warn!("cannot read the store for changes: {e}");
            }
        }
    }

    /// Compares the store with what was seen last (on the owner thread, which tells the
    /// sessions what moved), and updates whom to keep connected for the teams whose
    /// membership moved, there or through this node (`moved`).
    async fn watch_once(&mut self, runtime: &Runtime<Home>, moved: MovedTeams) -> Result<()> {
        let mut seen = self.seen.take().unwrap_or_default();
        let kept = self.options.dial_known_devices.then(|| self.kept.devices.clone());
        let (seen, looked) = runtime
            .owner()
            .call(move |home| {
                let looked = look(home, &mut seen, moved, kept.as_ref());
                (seen, looked)
            })
            .await?;
        self.seen = Some(seen);
        if let Some(mut looked) = looked? {
            let (added, removed) = self.kept.update(looked.teams);
            for device in added {
                let addrs = looked.addrs.remove(&device).unwrap_or_default();
                runtime.keep_connected(PeerAddr { device, addrs, relay: None });
            }
            for device in removed {
                runtime.forget(device);
            }
        }
        Ok(())
    }
}

/// The devices kept connected, and which teams bring each: a device stays while any
/// team it is a current device of is held.
#[derive(Default)]
struct Kept {
    by_team: HashMap<TeamId, BTreeSet<DeviceId>>,
    devices: BTreeSet<DeviceId>,
}

impl Kept {
    /// Takes the current devices of the teams in `teams` (the others as they were), and
    /// returns the devices to start keeping and those to stop keeping.
    fn update(
        &mut self,
        teams: HashMap<TeamId, BTreeSet<DeviceId>>,
    ) -> (Vec<DeviceId>, Vec<DeviceId>) {
        self.by_team.extend(teams);
        let devices: BTreeSet<DeviceId> = self.by_team.values().flatten().copied().collect();
        let added = devices.difference(&self.devices).copied().collect();
        let removed = self.devices.difference(&devices).copied().collect();
        self.devices = devices;
        (added, removed)
    }
}

/// What the watcher found to keep connected.
struct Looked {
    /// The current devices (other than this one) of each team whose membership moved.
    teams: HashMap<TeamId, BTreeSet<DeviceId>>,
    /// Where each device not kept before was last seen, as stored.
    addrs: HashMap<DeviceId, Vec<SocketAddr>>,
}

/// On the owner thread: what moved in the store since `seen` (written by another
/// program: this home's own writes are told to the sessions as they happen), recorded as
/// the home's changes for the sessions. With `kept` (the devices kept connected, when
/// the node dials known devices): the current devices of every team whose membership
/// moved, there or through this node (`moved`), so one team's change costs that team's
/// log, not every team's.
fn look(
    home: &mut Home,
    seen: &mut Seen,
    moved: MovedTeams,
    kept: Option<&BTreeSet<DeviceId>>,
) -> Result<Option<Looked>> {
    let mut moved = match moved.all {
        true => home.store.teams()?.into_iter().collect(),
        false => moved.teams,
    };
    let version = home.store.data_version()?;
    if seen.version != Some(version) {
        seen.version = Some(version);
        for doc in home.store.docs(None)? {
            if seen.docs.get(&doc.id) != Some(&doc.heads) {
                if let Ok(kind) = doc.kind.parse::<DocKind>() {
                    home.changed.push(Change::Doc { team: doc.team, doc: doc.id, kind });
                }
                seen.docs.insert(doc.id, doc.heads);
            }
        }
        for team in home.store.teams()? {
            let count = home.store.op_count(team)?;
            if seen.ops.insert(team, count) != Some(count) && !moved.contains(&team) {
                home.changed.push(Change::Membership { team });
                moved.insert(team);
            }
        }
    } else {
        // Grown through this node, which told the sessions already.
        for &team in &moved {
            seen.ops.insert(team, home.store.op_count(team)?);
        }
    }
    let Some(kept) = kept else { return Ok(None) };
    if moved.is_empty() {
        return Ok(None);
    }
    let me = home.profile().device;
    let mut looked = Looked { teams: HashMap::new(), addrs: HashMap::new() };
    for team in moved {
        let access = home.team_access(team)?;
        let devices: BTreeSet<DeviceId> =
            access.membership().devices().map(|(device, _)| device).filter(|d| *d != me).collect();
        for &device in &devices {
            if !kept.contains(&device) && !looked.addrs.contains_key(&device) {
                let stored = home.store.peer_addrs(device)?.map(|(a, _)| parse_addrs(&a));
                looked.addrs.insert(device, stored.unwrap_or_default());
            }
        }
        looked.teams.insert(team, devices);
    }
    Ok(Some(looked))
}

/// Follows the sessions: remembers where connected devices were seen (so they can be
/// redialled later) and when each session last ended or found a team in sync (at most
/// every [`LAST_SYNC_EVERY`] while it runs), and has
/// the watcher revisit whom to keep connected when a membership log grew.
async fn follow_sessions(runtime: Arc<Runtime<Home>>, moved: Arc<Moved>) {
    let mut events = runtime.service().subscribe();
    let owner = runtime.owner().clone();
    // When the last sync with each connected device was last written.
    let mut recorded: HashMap<DeviceId, Instant> = HashMap::new();
    loop {
        match events.recv().await {
            Ok(PeerEvent::Sync { event: SyncEvent::MembershipChanged { team }, .. }) => {
                moved.tell([team])
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
            Ok(PeerEvent::Sync { peer, event: SyncEvent::TeamInSync { .. } }) => {
                if recorded.get(&peer).is_none_or(|at| at.elapsed() >= LAST_SYNC_EVERY) {
                    recorded.insert(peer, Instant::now());
                    record_sync(&owner, peer).await;
                }
            }
            Ok(PeerEvent::Disconnected { peer, .. }) => {
                recorded.remove(&peer);
                record_sync(&owner, peer).await;
            }
            // A membership change may be among the events missed.
            Err(broadcast::error::RecvError::Lagged(_)) => moved.tell_all(),
            Ok(_) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Records now as the last sync with `peer`.
async fn record_sync(owner: &Owner<Home>, peer: DeviceId) {
    let _ = owner
        .call(move |home| {
            let now = home.now().as_millis();
            home.record_sync(peer, now)
        })
        .await;
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use care_core::{DeviceId, TeamId};

    use super::Kept;

    fn devices(ids: &[u8]) -> BTreeSet<DeviceId> {
        ids.iter().map(|i| DeviceId::from_bytes([*i; 32])).collect()
    }

    /// Revisiting one team changes only what that team brings: a device that is also in
    /// another team stays kept, and one in no team any more is let go.
    #[test]
    fn a_device_is_kept_while_any_team_brings_it() {
        let (a, b) = (TeamId::from_bytes([1; 16]), TeamId::from_bytes([2; 16]));
        let mut kept = Kept::default();
        let (added, removed) =
            kept.update(HashMap::from([(a, devices(&[10, 11])), (b, devices(&[11, 12]))]));
        assert_eq!(added, Vec::from_iter(devices(&[10, 11, 12])));
        assert!(removed.is_empty());

        // Team a removes 11 and 10 and adds 13: 11 is still in team b.
        let (added, removed) = kept.update(HashMap::from([(a, devices(&[13]))]));
        assert_eq!(added, Vec::from_iter(devices(&[13])));
        assert_eq!(removed, Vec::from_iter(devices(&[10])));
        assert_eq!(kept.devices, devices(&[11, 12, 13]));

        // Team b removes 11: now no team brings it.
        let (added, removed) = kept.update(HashMap::from([(b, devices(&[12]))]));
        assert!(added.is_empty());
        assert_eq!(removed, Vec::from_iter(devices(&[11])));
    }
}
