//! How far sync with each device has come, judged from the node's events: whether a
//! session started, and whether each team has caught up.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use care::{DeviceId, PeerEvent, SyncEvent, TeamId};
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Which signal says that a team has caught up with a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The session reports `TeamInSync` once its exchange for the team completes.
    #[allow(dead_code, reason = "the signal to switch to once sessions report it on completion")]
    TeamInSync,
    /// `TeamInSync` (both devices agreed from the start), or `QUIET_MS` without events
    /// after the team's changes began to arrive.
    Quiet,
}

/// The signal in use.
pub const SIGNAL: Signal = Signal::Quiet;
/// How long a team must see no events from a device to count as caught up.
pub const QUIET_MS: u64 = 500;
/// How often waits look at the clock when no event comes.
const TICK_MS: u64 = 100;

/// Progress of sync with every device seen so far.
#[derive(Debug, Default)]
pub struct Progress {
    peers: HashMap<DeviceId, PeerProgress>,
}

/// Progress of sync with one device.
#[derive(Debug, Default)]
struct PeerProgress {
    connected: bool,
    /// When each team last had an event from the device.
    active: HashMap<TeamId, Instant>,
    in_sync: BTreeSet<TeamId>,
    docs_changed: usize,
}

impl Progress {
    /// Takes an event into account.
    pub fn record(&mut self, event: &PeerEvent, now: Instant) {
        match event {
            PeerEvent::Connected { peer } => self.peer(*peer).connected = true,
            PeerEvent::Disconnected { .. } => {}
            PeerEvent::Sync { peer, event } => {
                let progress = self.peer(*peer);
                match event {
                    SyncEvent::TeamInSync { team } => {
                        progress.in_sync.insert(*team);
                    }
                    SyncEvent::DocChanged { team, .. } => {
                        progress.docs_changed += 1;
                        progress.active.insert(*team, now);
                    }
                    SyncEvent::MembershipChanged { team } | SyncEvent::Refused { team, .. } => {
                        progress.active.insert(*team, now);
                    }
                }
            }
        }
    }

    /// Whether a session with the device ever started.
    pub fn connected(&self, peer: DeviceId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.connected)
    }

    /// How many document changes the device sent.
    pub fn docs_changed(&self, peer: DeviceId) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.docs_changed)
    }

    /// Whether the team has caught up with the device.
    pub fn in_sync(&self, peer: DeviceId, team: TeamId, now: Instant) -> bool {
        let Some(progress) = self.peers.get(&peer) else { return false };
        if progress.in_sync.contains(&team) {
            return true;
        }
        let quiet = Duration::from_millis(QUIET_MS);
        SIGNAL == Signal::Quiet
            && progress.active.get(&team).is_some_and(|at| now.duration_since(*at) >= quiet)
    }

    fn peer(&mut self, peer: DeviceId) -> &mut PeerProgress {
        self.peers.entry(peer).or_default()
    }
}

/// Feeds events into `progress` until `done` holds (true) or `deadline` passes (false),
/// calling `seen` on each event.
pub async fn wait_until(
    events: &mut broadcast::Receiver<PeerEvent>,
    progress: &mut Progress,
    deadline: Instant,
    done: impl Fn(&Progress, Instant) -> bool,
    mut seen: impl FnMut(&PeerEvent, &Progress),
) -> bool {
    loop {
        let now = Instant::now();
        if done(progress, now) {
            return true;
        }
        if now >= deadline {
            return false;
        }
        let tick = deadline.min(now + Duration::from_millis(TICK_MS));
        match tokio::time::timeout_at(tick, events.recv()).await {
            Ok(Ok(event)) => {
                progress.record(&event, Instant::now());
                seen(&event, progress);
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => return false,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(_) => {}
        }
    }
}
