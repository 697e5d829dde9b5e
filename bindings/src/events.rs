//! Change events for an app's screens: a listener the app implements, and the handle
//! that keeps it subscribed.
//!
//! The first delivery names every part of every team the device may read (render it
//! all now); later ones name what changed since, whether written here or received from
//! another device. Deliveries close in time are merged into one. A listener that falls
//! behind is sent a first delivery again, so it never misses a change.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use care::{Access, DocKind, Home, SyncEvent, TeamId};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// Part changes queued for listeners before the slowest is sent everything again.
const CHANGES_QUEUED_MAX: usize = 1024;

/// A part of a team an app renders on its own screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, uniffi::Enum)]
pub enum Part {
    /// The team's name and circle.
    Team,
    /// Who belongs to it, in which role.
    Members,
    /// The care plan's everyday sections.
    Plan,
    /// The care plan's health and access sections.
    HealthPlan,
    /// Shift notes.
    Notes,
    /// The rota.
    Rota,
    /// Promises.
    Promises,
}

impl Part {
    pub(crate) const ALL: [Part; 7] = [
        Part::Team,
        Part::Members,
        Part::Plan,
        Part::HealthPlan,
        Part::Notes,
        Part::Rota,
        Part::Promises,
    ];

    pub(crate) fn of(kind: &DocKind) -> Part {
        match kind {
            DocKind::Team => Part::Team,
            DocKind::Plan => Part::Plan,
            DocKind::HealthPlan => Part::HealthPlan,
            DocKind::Notes { .. } => Part::Notes,
            DocKind::Rota { .. } => Part::Rota,
            DocKind::Promises => Part::Promises,
        }
    }

    /// Whether a role may read this part (in some document of it).
    fn readable(self, membership: &care::Membership, device: care::DeviceId) -> bool {
        let month = care::Timestamp(0).month();
        let kinds: &[DocKind] = match self {
            Part::Members => return true,
            Part::Team => &[DocKind::Team],
            Part::Plan => &[DocKind::Plan],
            Part::HealthPlan => &[DocKind::HealthPlan],
            Part::Notes => &[
                DocKind::Notes { stream: care::NoteStream::Care, month },
                DocKind::Notes { stream: care::NoteStream::General, month },
            ],
            Part::Rota => &[DocKind::Rota { month }],
            Part::Promises => &[DocKind::Promises],
        };
        kinds.iter().any(|kind| membership.access(device, kind) != Access::None)
    }
}

/// One part of one team that changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, uniffi::Record)]
pub struct TeamChange {
    /// The team.
    pub team_id: String,
    /// What changed in it.
    pub part: Part,
}

/// What a listener is told.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Update {
    /// `true` on the first delivery (and after falling behind): `changes` then names
    /// every part of every team this device may read, to render from scratch.
    pub initial: bool,
    /// The parts changed, each once, sorted.
    pub changes: Vec<TeamChange>,
}

/// What an app implements to hear of changes. Called on one of the engine's threads,
/// one delivery at a time; it should hand the update to the app's own UI thread.
#[uniffi::export(with_foreign)]
pub trait ChangeListener: Send + Sync {
    /// The parts of the home that changed.
    fn on_update(&self, update: Update);
}

/// Where changes are announced for every subscription of one home.
#[derive(Debug, Clone)]
pub(crate) struct Changes {
    /// A part that changed, or `None` when listeners must render everything again.
    sender: broadcast::Sender<Option<TeamChange>>,
}

impl Changes {
    pub(crate) fn new() -> Changes {
        Changes { sender: broadcast::channel(CHANGES_QUEUED_MAX).0 }
    }

    pub(crate) fn announce(&self, team: TeamId, part: Part) {
        // No subscriber is no error.
        let _ = self.sender.send(Some(TeamChange { team_id: team.to_string(), part }));
    }

    /// Tells every listener to render everything again (changes were missed).
    pub(crate) fn announce_everything(&self) {
        let _ = self.sender.send(None);
    }

    /// Announces what a session reports.
    pub(crate) fn announce_sync(&self, event: &SyncEvent) {
        match event {
            SyncEvent::DocChanged { team, kind, .. } => self.announce(*team, Part::of(kind)),
            // A membership op can change any part: what this device may read, and what
            // is kept aside out of the record (a removal, an acceptance).
            SyncEvent::MembershipChanged { team } => {
                for part in Part::ALL {
                    self.announce(*team, part);
                }
            }
            _ => {}
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Option<TeamChange>> {
        self.sender.subscribe()
    }
}

/// Every part of every team this home may read: what a first delivery names.
pub(crate) fn everything(home: &mut Home) -> Result<Vec<TeamChange>, care::Error> {
    let device = home.profile().device;
    let mut changes = Vec::new();
    for team in home.teams()? {
        let membership = home.membership(team.id)?;
        for part in Part::ALL.into_iter().filter(|p| p.readable(&membership, device)) {
            changes.push(TeamChange { team_id: team.id.to_string(), part });
        }
    }
    Ok(changes)
}

/// What a subscription and its delivery task share.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    /// Held while a delivery runs; `true` once closed, after which nothing is delivered.
    closed: Mutex<bool>,
}

impl Delivery {
    fn lock(&self) -> MutexGuard<'_, bool> {
        self.closed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Calls the listener unless the subscription is closed; returns whether it did.
    pub(crate) fn deliver(&self, listener: &dyn ChangeListener, update: Update) -> bool {
        let closed = self.lock();
        if *closed {
            return false;
        }
        listener.on_update(update);
        true
    }
}

/// Keeps a listener subscribed: delivery stops when it is closed or dropped.
#[derive(Debug, uniffi::Object)]
pub struct Subscription {
    delivery: Arc<Delivery>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Subscription {
    pub(crate) fn new(delivery: Arc<Delivery>, task: JoinHandle<()>) -> Subscription {
        Subscription { delivery, task: Mutex::new(Some(task)) }
    }
}

#[uniffi::export]
impl Subscription {
    /// Stops delivery: once this returns, the listener is not called again (a delivery
    /// running on another thread is waited for).
    pub fn close(&self) {
        *self.delivery.lock() = true;
        let task = self.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(task) = task {
            task.abort();
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.close();
    }
}

/// Delivers changes to `listener` until closed: everything first, then what changed,
/// merging what is already queued into one update.
pub(crate) async fn deliver<F, Fut>(
    mut changes: broadcast::Receiver<Option<TeamChange>>,
    first: Vec<TeamChange>,
    listener: Arc<dyn ChangeListener>,
    delivery: Arc<Delivery>,
    everything_again: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<Vec<TeamChange>>>,
{
    if !delivery.deliver(&*listener, Update { initial: true, changes: first }) {
        return;
    }
    loop {
        let mut initial = false;
        let mut batch = BTreeSet::new();
        match changes.recv().await {
            Ok(Some(change)) => {
                batch.insert(change);
            }
            Ok(None) | Err(broadcast::error::RecvError::Lagged(_)) => initial = true,
            Err(broadcast::error::RecvError::Closed) => return,
        }
        loop {
            match changes.try_recv() {
                Ok(Some(change)) => {
                    batch.insert(change);
                }
                Ok(None) | Err(broadcast::error::TryRecvError::Lagged(_)) => initial = true,
                Err(_) => break,
            }
        }
        let update = match initial {
            true => match everything_again().await {
                Some(all) => Update { initial: true, changes: all },
                None => return,
            },
            false => Update { initial: false, changes: batch.into_iter().collect() },
        };
        if !delivery.deliver(&*listener, update) {
            return;
        }
    }
}
