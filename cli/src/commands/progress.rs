//! How far sync with each device has come, judged from the node's events: whether a
//! session started, and whether each team has caught up.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use care::{DeviceId, PeerEvent, SyncEvent, TeamId};
use tokio::sync::broadcast;
use tokio::time::Instant;

/// How often waits look at the clock when no event comes.
const TICK_MS: u64 = 100;

/// Progress of sync with every device seen so far.
#[derive(Debug, Default)]
pub(super) struct Progress {
    peers: HashMap<DeviceId, PeerProgress>,
}

/// Progress of sync with one device.
#[derive(Debug, Default)]
struct PeerProgress {
    connected: bool,
    /// Teams whose session reported them in sync (the exchange completed).
    in_sync: BTreeSet<TeamId>,
    docs_changed: usize,
}

impl Progress {
    /// Takes an event into account.
    pub(super) fn record(&mut self, event: &PeerEvent) {
        match event {
            PeerEvent::Connected { peer } => self.peer(*peer).connected = true,
            PeerEvent::Disconnected { .. } => {}
            PeerEvent::Sync { peer, event } => {
                let progress = self.peer(*peer);
                match event {
                    SyncEvent::TeamInSync { team } => {
                        progress.in_sync.insert(*team);
                    }
                    SyncEvent::DocChanged { .. } => progress.docs_changed += 1,
                    SyncEvent::MembershipChanged { .. } | SyncEvent::Refused { .. } => {}
                }
            }
        }
    }

    /// Whether a session with the device ever started.
    pub(super) fn connected(&self, peer: DeviceId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.connected)
    }

    /// How many document changes the device sent.
    pub(super) fn docs_changed(&self, peer: DeviceId) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.docs_changed)
    }

    /// Whether the team has caught up with the device.
    pub(super) fn in_sync(&self, peer: DeviceId, team: TeamId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.in_sync.contains(&team))
    }

    fn peer(&mut self, peer: DeviceId) -> &mut PeerProgress {
        self.peers.entry(peer).or_default()
    }
}

/// Feeds events into `progress` until `done` holds (true) or `deadline` passes (false),
/// calling `seen` on each event.
pub(super) async fn wait_until(
    events: &mut broadcast::Receiver<PeerEvent>,
    progress: &mut Progress,
    deadline: Instant,
    done: impl Fn(&Progress) -> bool,
    mut seen: impl FnMut(&PeerEvent, &Progress),
) -> bool {
    loop {
        let now = Instant::now();
        if done(progress) {
            return true;
        }
        if now >= deadline {
            return false;
        }
        let tick = deadline.min(now + Duration::from_millis(TICK_MS));
        match tokio::time::timeout_at(tick, events.recv()).await {
            Ok(Ok(event)) => {
                progress.record(&event);
                seen(&event, progress);
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => return false,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(_) => {}
        }
    }
}
