//! The two timed phases of a step. Upload: every owner comes online, adds the circle
//! node with its ticket (the real circle handshake) and syncs its team to it. Catch-up:
//! with the owners offline, every other device comes online at once, knowing no
//! address of anyone (only the circle's relay URL, and the circle node's device id from
//! the membership log), and catches up until it holds every document at the owner's
//! heads.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use automerge::ChangeHash;
use care::{CircleTicket, DeviceId, DocId, Home, NetConfig, Node, TeamId};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::homes::TeamHomes;
use crate::usage::{self, Interval, Sample};

/// How often the benchmark reads the circle node's store during the upload.
const CIRCLE_POLL_MS: u64 = 50;
/// How long a device waits for an event before it looks at its store anyway.
const RECHECK_MS: u64 = 500;
/// How long every device stays connected, idle, once the last has caught up: the circle
/// node's CPU meanwhile is what holding the connections costs it, apart from catch-up.
const IDLE_MS: u64 = 5_000;

/// Every document of a team at its heads, as one device holds them.
pub(crate) type Heads = BTreeMap<DocId, Vec<ChangeHash>>;

/// What the upload phase did.
pub(crate) struct Upload {
    /// From the first owner coming online to the circle node's store holding every team
    /// at its owner's heads.
    pub wall: Duration,
    /// Per team, from the start of the phase to the circle node holding it (to within
    /// `CIRCLE_POLL_MS`).
    pub per_team: Vec<Duration>,
    /// Each team's documents at the owner's heads: what every device must end with.
    pub targets: Vec<Heads>,
    /// Sync-layer bytes (frames with their length prefixes) the owners sent and received.
    pub bytes: (u64, u64),
    /// The counters when the circle node held every team, before the owners went offline.
    pub end: Sample,
}

/// What the catch-up phase did.
pub(crate) struct CatchUp {
    /// From the devices being started together to the last holding its team's documents.
    pub wall: Duration,
    /// Per device, from the start of the phase to holding every document of its team at
    /// the owner's heads.
    pub per_device: Vec<Duration>,
    /// Sync-layer bytes the devices sent and received, counted at the devices: bytes
    /// between two members count at both ends.
    pub bytes: (u64, u64),
    /// Sessions open when the last device caught up: with the circle node, and between
    /// members of a team (each counted once).
    pub sessions: (usize, usize),
    /// The counters when the last device caught up, before the devices went offline.
    pub end: Sample,
    /// Descriptors the circle process held then.
    pub circle_fds: usize,
    /// The [`IDLE_MS`] after that, every device still connected and writing nothing (a
    /// moment only, if not asked for).
    pub idle: Interval,
}

impl CatchUp {
    /// Catch-ups run one after another, as one: times add up (each device's counted from
    /// the start of its own wave), bytes too; the sessions, counters and descriptors are
    /// the last wave's (its counters cover every wave).
    pub(crate) fn one_after_another(waves: Vec<CatchUp>) -> Result<CatchUp> {
        let mut waves = waves.into_iter();
        let mut all = waves.next().context("no wave")?;
        for wave in waves {
            all.wall += wave.wall;
            all.per_device.extend(wave.per_device);
            all.bytes = (all.bytes.0 + wave.bytes.0, all.bytes.1 + wave.bytes.1);
            all.sessions = wave.sessions;
            all.end = wave.end;
            all.idle = wave.idle;
            all.circle_fds = all.circle_fds.max(wave.circle_fds);
        }
        Ok(all)
    }
}

/// The circle node a phase works with.
pub(crate) struct Circle<'a> {
    /// Its one-time tickets, one per team.
    pub tickets: &'a [CircleTicket],
    /// Its home directory.
    pub home: &'a Path,
    /// Its process.
    pub pid: u32,
}

/// Every owner adds the circle node and uploads its team; returns once the circle
/// node's store holds every team at its owner's heads, with the owners offline again.
pub(crate) async fn upload(
    teams: &[TeamHomes],
    circle: &Circle<'_>,
    timeout: Duration,
) -> Result<Upload> {
    let config = relay_only(circle.tickets.first().context("no circle ticket")?)?;
    let started = Instant::now();
    let (added, added_rx) = mpsc::unbounded_channel();
    let mut owners = JoinSet::new();
    for ((index, team), ticket) in teams.iter().enumerate().zip(circle.tickets) {
        let (team, ticket, config, added) =
            (team.clone(), ticket.clone(), config.clone(), added.clone());
        owners.spawn(async move {
            let node = Node::start(Home::open(&team.owner)?, &config).await?;
            node.add_relay(&team.id.to_string(), &ticket).await?;
            // The owner writes nothing more: these are the heads everyone must reach.
            let heads = team_heads(&node, team.id).await?;
            let _ = added.send((index, heads.clone()));
            anyhow::Ok((index, node, heads))
        });
    }
    drop(added);
    let holds = circle_holds(circle.home, teams.len(), added_rx, started);
    let held = tokio::time::timeout(timeout, holds).await.unwrap_or_else(|_| {
        Err(anyhow::anyhow!("the circle node did not hold every team in {timeout:?}"))
    });
    let wall = started.elapsed();
    let end = Sample::take(circle.pid)?;
    let mut nodes = Vec::with_capacity(teams.len());
    let mut targets = vec![Heads::new(); teams.len()];
    let mut failure = None;
    while let Some(joined) = owners.join_next().await {
        match joined.context("an owner's task panicked")? {
            Ok((index, node, heads)) => {
                targets[index] = heads;
                nodes.push(node);
            }
            Err(e) => failure = Some(e.context("an owner could not add the circle node")),
        }
    }
    let bytes = traffic(&nodes);
    shutdown(nodes).await;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Upload { wall, per_team: held?, targets, bytes, end })
}

/// Every member of every team comes online at once and catches up from the circle node;
/// returns once each holds its team's documents at the owner's heads, with every device
/// offline again. With `stay_idle`, the devices first stay connected for [`IDLE_MS`] more
/// (only after the last of several catch-ups, so that no idle time falls inside the
/// catch-ups' own figures).
pub(crate) async fn catch_up(
    teams: &[TeamHomes],
    targets: &[Heads],
    circle: &Circle<'_>,
    timeout: Duration,
    stay_idle: bool,
) -> Result<CatchUp> {
    let ticket = circle.tickets.first().context("no circle ticket")?;
    let config = relay_only(ticket)?;
    let started = Instant::now();
    let deadline = started + timeout;
    let mut devices = JoinSet::new();
    for (team, target) in teams.iter().zip(targets) {
        for home in &team.members {
            let (home, config, target, id) =
                (home.clone(), config.clone(), target.clone(), team.id);
            devices.spawn(async move {
                let node = Node::start(Home::open(&home)?, &config).await?;
                let caught_up = wait_for_heads(&node, id, &target, deadline).await;
                anyhow::Ok((node, caught_up.map(|()| started.elapsed())))
            });
        }
    }
    let mut nodes = Vec::new();
    let mut per_device = Vec::new();
    let mut failures = Vec::new();
    while let Some(joined) = devices.join_next().await {
        match joined.context("a device's task panicked")? {
            Ok((node, Ok(elapsed))) => {
                per_device.push(elapsed);
                nodes.push(node);
            }
            Ok((node, Err(e))) => {
                failures.push(e);
                nodes.push(node);
            }
            Err(e) => failures.push(e.context("a device could not start")),
        }
    }
    let wall = started.elapsed();
    let end = Sample::take(circle.pid)?;
    let circle_fds = usage::open_fds(circle.pid)?;
    let sessions = sessions(&nodes, ticket.device);
    let bytes = traffic(&nodes);
    if stay_idle && failures.is_empty() {
        tokio::time::sleep(Duration::from_millis(IDLE_MS)).await;
    }
    let idle = Sample::take(circle.pid)?.since(&end);
    shutdown(nodes).await;
    if let Some(first) = failures.first() {
        let total = failures.len() + per_device.len();
        bail!("{} of {total} devices did not catch up; the first: {first:#}", failures.len());
    }
    Ok(CatchUp { wall, per_device, bytes, sessions, end, circle_fds, idle })
}

/// A device's network settings: loopback, and the circle's relay server.
fn relay_only(ticket: &CircleTicket) -> Result<NetConfig> {
    let url = ticket.relay.as_deref().context("the circle ticket names no relay")?;
    Ok(NetConfig { relay: Some(url.parse()?), ..NetConfig::loopback() })
}

/// Reads the circle node's store until it holds every team at the heads its owner
/// reported; returns when each team was first seen held.
async fn circle_holds(
    circle_home: &Path,
    teams: usize,
    mut added: mpsc::UnboundedReceiver<(usize, Heads)>,
    started: Instant,
) -> Result<Vec<Duration>> {
    let circle = Home::open(circle_home)?;
    let mut waiting: HashMap<usize, Heads> = HashMap::new();
    let mut held = vec![None; teams];
    let mut owners_done = false;
    loop {
        loop {
            match added.try_recv() {
                Ok((index, heads)) => {
                    waiting.insert(index, heads);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    owners_done = true;
                    break;
                }
            }
        }
        // The circle node holds the teams' documents sealed.
        let mut docs: HashMap<DocId, Vec<ChangeHash>> = HashMap::new();
        for team in circle.store().teams()? {
            docs.extend(circle.sealed_documents(team)?.into_iter().map(|d| (d.id, d.heads)));
        }
        waiting.retain(|index, target| {
            let holds = target.iter().all(|(doc, heads)| docs.get(doc) == Some(heads));
            if holds {
                held[*index] = Some(started.elapsed());
            }
            !holds
        });
        if held.iter().all(Option::is_some) {
            return Ok(held.into_iter().flatten().collect());
        }
        if owners_done && waiting.is_empty() {
            bail!("some owners never added the circle node");
        }
        tokio::time::sleep(Duration::from_millis(CIRCLE_POLL_MS)).await;
    }
}

/// Waits until the device holds every document of its team at `target`: its store is
/// read after each event of its sessions, and every `RECHECK_MS` in any case.
async fn wait_for_heads(
    node: &Node,
    team: TeamId,
    target: &Heads,
    deadline: Instant,
) -> Result<()> {
    let mut events = node.events();
    loop {
        let heads = team_heads(node, team).await?;
        if &heads == target {
            return Ok(());
        }
        if Instant::now() > deadline {
            let at = target.iter().filter(|(doc, h)| heads.get(*doc) == Some(*h)).count();
            bail!(
                "device {} holds {at} of {} documents at the owner's heads",
                node.addr().device,
                target.len()
            );
        }
        let recheck = Instant::now() + Duration::from_millis(RECHECK_MS);
        if let Ok(Err(broadcast::error::RecvError::Closed)) =
            tokio::time::timeout_at(recheck.min(deadline), events.recv()).await
        {
            bail!("the node stopped");
        }
    }
}

async fn team_heads(node: &Node, team: TeamId) -> Result<Heads> {
    let docs = node.with_home(move |h| h.store().docs(Some(team))).await?;
    Ok(docs.into_iter().map(|d| (d.id, d.heads)).collect())
}

/// Bytes sent and received by the sessions of `nodes`.
fn traffic(nodes: &[Node]) -> (u64, u64) {
    nodes
        .iter()
        .map(Node::traffic)
        .fold((0, 0), |(sent, received), t| (sent + t.bytes_sent, received + t.bytes_received))
}

/// Sessions with the circle node, and between two of `nodes` (counted once).
fn sessions(nodes: &[Node], circle: DeviceId) -> (usize, usize) {
    let (mut with_circle, mut between) = (0, 0);
    for node in nodes {
        for peer in node.connected() {
            if peer == circle {
                with_circle += 1;
            } else {
                between += 1;
            }
        }
    }
    (with_circle, between / 2)
}

/// Stops every node at once.
async fn shutdown(nodes: Vec<Node>) {
    let mut stopping = JoinSet::new();
    for node in nodes {
        stopping.spawn(node.shutdown());
    }
    while stopping.join_next().await.is_some() {}
}
