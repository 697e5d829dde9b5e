//! The commands that go on the network: `care serve`, `care sync` and `care team join`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use care::{
    CircleConfig, CircleNode, CircleTicket, DeviceId, Home, JoinTicket, ListenAddrs, NetConfig,
    Node, NodeOptions, PeerAddr, PeerEvent, SyncEvent, TeamId,
};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::commands::{init_home, open_home};

use super::Out;
use super::progress::{Progress, wait_until};
use crate::args::NetArgs;

/// Longest a command waits, before it exits, for its devices to acknowledge that its
/// connections are closed. The close frames go out at once; what QUIC waits for beyond
/// that is mostly dials to devices that never answered (up to 3 s), and the process
/// exits right after, which releases its socket.
const CLOSE_WAIT_MS: u64 = 500;

/// Closes a node before the command exits, waiting at most [`CLOSE_WAIT_MS`].
async fn close(shutdown: impl std::future::Future<Output = ()>) {
    let _ = tokio::time::timeout(Duration::from_millis(CLOSE_WAIT_MS), shutdown).await;
}

/// Serves the home until Ctrl-C or SIGTERM, printing its address and then its events.
pub(super) fn serve(dir: &Path, net: &NetArgs, relay: Option<&str>, out: Out) -> Result<ExitCode> {
    let home = open_home(dir)?;
    let config = home_net_config(&home, net.listen, relay, !net.no_lan)?;
    block_on(async {
        let mut stop = Stop::new()?;
        let node = Node::start(home, &config).await?;
        let mut events = node.events();
        let addr = node.addr();
        let listen = ListenAddrs {
            addrs: addr.addrs.clone(),
            relay: addr.relay.as_ref().map(ToString::to_string),
        };
        let recorded = node.with_home(move |home| home.record_listen_addrs(Some(&listen))).await;
        if let Err(e) = recorded {
            close(node.shutdown()).await;
            return Err(e.into());
        }
        print_addr(&addr, out);
        print_events_until_stopped(&mut events, &mut stop, out).await;
        let _ = node.with_home(|home| home.record_listen_addrs(None)).await;
        close(node.shutdown()).await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Joins a team with a ticket and waits until its documents have arrived.
pub(super) fn join(
    dir: &Path,
    ticket: &JoinTicket,
    listen: SocketAddr,
    timeout_s: u64,
    out: Out,
) -> Result<()> {
    let config = net_config(listen, ticket.relay.as_deref(), false)?;
    block_on(async {
        let node = Node::start(open_home(dir)?, &config).await?;
        let joined = join_and_wait(&node, ticket, timeout_s).await;
        close(node.shutdown()).await;
        let (name, documents) = joined?;
        let team = ticket.team;
        out.print(json!({"team": team.to_string(), "name": name, "documents": documents}), || {
            format!("Joined {name} ({team}): {documents} documents")
        });
        Ok(())
    })
}

/// Syncs once with one device, or with every known device of every team.
pub(super) fn sync(
    dir: &Path,
    peer: Option<&PeerAddr>,
    timeout_s: u64,
    net: &NetArgs,
    out: Out,
) -> Result<ExitCode> {
    let home = open_home(dir)?;
    let config = home_net_config(&home, net.listen, None, !net.no_lan)?;
    block_on(async {
        let expected = expected_devices(&home, peer.map(|p| p.device))?;
        let node = Node::start(home, &config).await?;
        let synced = sync_with(&node, peer, &expected, timeout_s, out).await;
        record_synced(&node, &synced).await;
        close(node.shutdown()).await;
        Ok(print_summary(&synced, out))
    })
}

/// How one device fared in a `care sync`.
struct Synced {
    device: DeviceId,
    reachable: bool,
    in_sync: bool,
    docs_changed: usize,
}

async fn join_and_wait(
    node: &Node,
    ticket: &JoinTicket,
    timeout_s: u64,
) -> Result<(String, usize)> {
    let mut events = node.events();
    let team = node.join(ticket).await?;
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let inviter = ticket.inviter;
    let mut progress = Progress::default();
    let done = |p: &Progress| p.in_sync(inviter, team);
    let arrived = wait_until(&mut events, &mut progress, deadline, done, |_, _| {}).await;
    let summary = node.with_home(|home| home.teams()).await?.into_iter().find(|t| t.id == team);
    let (name, documents) = summary.map(|t| (t.name, t.documents)).unwrap_or_default();
    if !arrived {
        bail!(
            "joined {name}, but its documents did not all arrive within {timeout_s} s: \
             run `care sync` while the inviting device runs `care serve`"
        );
    }
    node.with_home(move |home| home.record_sync(inviter, home.now().as_millis())).await?;
    Ok((name, documents))
}

/// The devices to sync with, and the teams shared with each.
fn expected_devices(
    home: &Home,
    peer: Option<DeviceId>,
) -> Result<BTreeMap<DeviceId, Vec<TeamId>>> {
    let me = home.profile().device;
    let mut expected: BTreeMap<DeviceId, Vec<TeamId>> = BTreeMap::new();
    for team in home.store().teams()? {
        for (device, _) in home.membership(team)?.devices() {
            if device != me && peer.is_none_or(|p| p == device) {
                expected.entry(device).or_default().push(team);
            }
        }
    }
    match peer {
        Some(p) if expected.is_empty() => bail!("device {p} is not a device of any of your teams"),
        None if expected.is_empty() => {
            bail!("your teams have no other devices yet: invite someone with `care team invite`")
        }
        _ => Ok(expected),
    }
}

async fn sync_with(
    node: &Node,
    peer: Option<&PeerAddr>,
    expected: &BTreeMap<DeviceId, Vec<TeamId>>,
    timeout_s: u64,
    out: Out,
) -> Vec<Synced> {
    let mut events = node.events();
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    if let Some(peer) = peer
        && let Err(e) = node.connect(peer).await
    {
        eprintln!("cannot reach {}: {e}", peer.device.short());
    }
    let all_in_sync =
        |p: &Progress| expected.iter().all(|(d, teams)| teams.iter().all(|t| p.in_sync(*d, *t)));
    let mut progress = Progress::default();
    let show = |event: &PeerEvent, _: &Progress| {
        if !out.json {
            print_progress(event);
        }
    };
    wait_until(&mut events, &mut progress, deadline, all_in_sync, show).await;
    expected
        .iter()
        .map(|(device, teams)| Synced {
            device: *device,
            reachable: progress.connected(*device),
            in_sync: teams.iter().all(|t| progress.in_sync(*device, *t)),
            docs_changed: progress.docs_changed(*device),
        })
        .collect()
}

async fn record_synced(node: &Node, synced: &[Synced]) {
    for s in synced.iter().filter(|s| s.in_sync) {
        let device = s.device;
        let _ = node.with_home(move |home| home.record_sync(device, home.now().as_millis())).await;
    }
}

/// Prints one line per device; exit 0 when some device was reached and all reached are in sync.
fn print_summary(synced: &[Synced], out: Out) -> ExitCode {
    let status = |s: &Synced| match (s.reachable, s.in_sync) {
        (_, true) => "in sync",
        (true, false) => "not in sync",
        (false, false) => "unreachable",
    };
    let value: Vec<Value> = synced
        .iter()
        .map(|s| {
            json!({"device": s.device.to_string(), "status": status(s), "reachable": s.reachable,
                   "in_sync": s.in_sync, "changes_received": s.docs_changed})
        })
        .collect();
    let ok = synced.iter().any(|s| s.in_sync) && synced.iter().all(|s| s.in_sync || !s.reachable);
    out.print(json!({"in_sync": ok, "devices": value}), || {
        let lines: Vec<String> =
            synced.iter().map(|s| format!("{}  {}", s.device.short(), status(s))).collect();
        lines.join("\n")
    });
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Prints a node's events until a stop signal arrives or the node stops.
async fn print_events_until_stopped(
    events: &mut tokio::sync::broadcast::Receiver<PeerEvent>,
    stop: &mut Stop,
    out: Out,
) {
    loop {
        tokio::select! {
            () = stop.wait() => return,
            event = events.recv() => match event {
                Ok(event) => print_event(&event, out),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("warning: {n} events were not shown");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Runs a future on a fresh tokio runtime.
fn block_on<T>(future: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(future)
}

/// Runs a circle node until Ctrl-C or SIGTERM: prints `tickets` one-time circle tickets
/// (one per team to serve; `care relay-ticket` prints more), then its events.
pub(super) fn relay(dir: &Path, listen: SocketAddr, tickets: u16, out: Out) -> Result<ExitCode> {
    block_on(async {
        let mut stop = Stop::new()?;
        let home = if dir.join(care::home::KEY_FILE).exists() {
            open_home(dir)?
        } else {
            init_home(dir, "Circle relay")?
        };
        // The relay server takes the TCP port, sync the UDP port of the same number.
        let net = NetConfig::listening(listen);
        let config = CircleConfig { relay_listen: listen, net, options: NodeOptions::default() };
        let circle = CircleNode::start(home, &config).await?;
        let mut issued = Vec::new();
        for _ in 0..tickets {
            issued.push(circle.invite(care::CIRCLE_TICKET_VALID_MS).await?.to_string());
        }
        let tickets = issued;
        let addr = circle.node().addr();
        let addrs: Vec<String> = addr.addrs.iter().map(ToString::to_string).collect();
        let value = json!({
            "tickets": tickets, "relay_url": circle.relay_url(),
            "device": addr.device.to_string(), "addrs": addrs,
        });
        out.print(value, || {
            let mut text = format!(
                "circle node {}@{}\nrelay server {}",
                addr.device,
                addrs.join(","),
                circle.relay_url()
            );
            for ticket in &tickets {
                text.push_str(&format!("\none-time circle ticket {ticket}"));
            }
            text
        });
        let mut events = circle.node().events();
        print_events_until_stopped(&mut events, &mut stop, out).await;
        close(circle.shutdown()).await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Adds a circle node to a team and waits until it holds the team's documents.
pub(super) fn add_relay(
    dir: &Path,
    which: &str,
    ticket: &CircleTicket,
    listen: SocketAddr,
    timeout_s: u64,
    out: Out,
) -> Result<()> {
    let mut home = open_home(dir)?;
    let team = home.team(which)?.id();
    let config = net_config(listen, ticket.relay.as_deref(), false)?;
    block_on(async {
        let node = Node::start(home, &config).await?;
        let mut events = node.events();
        let added = node.add_relay(&team.to_string(), ticket).await;
        let deadline = Instant::now() + Duration::from_secs(timeout_s);
        let mut progress = Progress::default();
        let done = |p: &Progress| p.in_sync(ticket.device, team);
        let in_sync = match added {
            Ok(()) => wait_until(&mut events, &mut progress, deadline, done, |_, _| {}).await,
            Err(_) => false,
        };
        close(node.shutdown()).await;
        added?;
        let relay = ticket.relay.clone();
        out.print(json!({"team": team.to_string(), "relay": relay, "in_sync": in_sync}), || {
            let held =
                if in_sync { "holds the team's documents, sealed" } else { "is still catching up" };
            format!("Added the circle node {} to the team; it {held}", ticket.device.short())
        });
        Ok(())
    })
}

/// The network settings of a home: its circle's relay unless another is given.
fn home_net_config(
    home: &Home,
    listen: SocketAddr,
    relay: Option<&str>,
    lan: bool,
) -> Result<NetConfig> {
    let stored = home.circle_relay()?;
    net_config(listen, relay.or(stored.as_deref()), lan)
}

fn net_config(listen: SocketAddr, relay: Option<&str>, lan: bool) -> Result<NetConfig> {
    let mut config = NetConfig { lan, ..NetConfig::listening(listen) };
    if let Some(url) = relay {
        config.relay = Some(url.parse().with_context(|| format!("`{url}` is not a relay URL"))?);
    }
    Ok(config)
}

fn print_addr(addr: &PeerAddr, out: Out) {
    let addrs: Vec<String> = addr.addrs.iter().map(ToString::to_string).collect();
    let relay = addr.relay.as_ref().map(ToString::to_string);
    out.print(json!({"device": addr.device.to_string(), "addrs": addrs, "relay": relay}), || {
        format!("{}@{}", addr.device, addrs.join(","))
    });
}

fn print_event(event: &PeerEvent, out: Out) {
    out.print(event_json(event), || event_text(event));
}

fn print_progress(event: &PeerEvent) {
    if let PeerEvent::Sync { event: SyncEvent::DocChanged { .. }, .. } = event {
        return;
    }
    println!("{}", event_text(event));
}

fn event_json(event: &PeerEvent) -> Value {
    match event {
        PeerEvent::Connected { peer } => json!({"event": "connected", "peer": peer.to_string()}),
        PeerEvent::Disconnected { peer, reason } => {
            json!({"event": "disconnected", "peer": peer.to_string(), "reason": reason.to_string()})
        }
        PeerEvent::Sync { peer, event } => {
            let peer = peer.to_string();
            match event {
                SyncEvent::DocChanged { team, doc, kind } => json!({"event": "doc_changed",
                    "peer": peer, "team": team.to_string(), "doc": doc.to_string(), "kind": kind.to_string()}),
                SyncEvent::MembershipChanged { team } => {
                    json!({"event": "membership_changed", "peer": peer, "team": team.to_string()})
                }
                SyncEvent::Refused { team, doc, reason } => {
                    json!({"event": "refused", "peer": peer,
                    "team": team.to_string(), "doc": doc.map(|d| d.to_string()), "reason": reason.to_string()})
                }
                SyncEvent::TeamInSync { team } => {
                    json!({"event": "team_in_sync", "peer": peer, "team": team.to_string()})
                }
            }
        }
    }
}

fn event_text(event: &PeerEvent) -> String {
    match event {
        PeerEvent::Connected { peer } => format!("connected {}", peer.short()),
        PeerEvent::Disconnected { peer, reason } => {
            format!("disconnected {}: {reason}", peer.short())
        }
        PeerEvent::Sync { peer, event } => {
            let peer = peer.short();
            match event {
                SyncEvent::DocChanged { kind, .. } => format!("{kind} changed by {peer}"),
                SyncEvent::MembershipChanged { team } => {
                    format!("membership of team {} changed by {peer}", team.short())
                }
                SyncEvent::Refused { reason, .. } => format!("refused from {peer}: {reason}"),
                SyncEvent::TeamInSync { team } => {
                    format!("team {} in sync with {peer}", team.short())
                }
            }
        }
    }
}

/// What stops `care serve`: Ctrl-C, or SIGTERM on Unix.
struct Stop {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Stop {
    /// Listens for the signals from now on.
    fn new() -> Result<Stop> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let cannot = "cannot listen for stop signals";
            Ok(Stop {
                interrupt: signal(SignalKind::interrupt()).context(cannot)?,
                terminate: signal(SignalKind::terminate()).context(cannot)?,
            })
        }
        #[cfg(not(unix))]
        Ok(Stop {})
    }

    /// Waits for a stop signal.
    async fn wait(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
