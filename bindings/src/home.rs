//! A care home for an app: its teams' records, and the node that syncs them.
//!
//! The home lives on its owner thread from the moment it is opened; every method posts
//! a closure there and awaits the answer, so no store, Automerge or signature work runs
//! on the app's thread or on an async worker. Starting the node hands the home to a
//! [`care::Node`] (which keeps it on an owner thread of its own); stopping it closes the
//! node and opens the home again from its directory.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use care::{
    DeviceId, EntryId, ExportFormat, Home, JoinTicket, NetConfig, Node, NoteQuery, OpBody,
    PeerEvent, Section,
};
use care_net::Owner;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::CareError;
use crate::events::{self, ChangeListener, Changes, Delivery, Part, Subscription};
use crate::guard;
use crate::records::{
    AsideEntry, Booking, ChangeAudit, DeviceStatus, Member, NewBooking, NewNote, NodeOptions, Note,
    PlanSection, Promise, Role, TeamSummary, Whoami, timestamp,
};

/// Longest a `sync_once` may wait.
pub const SYNC_TIMEOUT_MS_MAX: u64 = 3_600_000;
/// How often `sync_once` looks again when no event comes.
const SYNC_POLL_MS: u64 = 50;

/// Where the home is now: on its own owner thread, or inside a running node.
#[derive(Clone)]
enum Place {
    Offline(Arc<Owner<Home>>),
    Online(Arc<Running>),
    Closed,
}

/// A running node and the task passing its events on to listeners.
struct Running {
    node: Node,
    forward: JoinHandle<()>,
    /// The runtime the node runs on, to shut it down from `Drop`.
    runtime: tokio::runtime::Handle,
}

impl Running {
    /// Stops the node once no call holds it any more.
    async fn shutdown(running: Arc<Running>) {
        let running = wait_for_sole(running).await;
        running.forward.abort();
        running.node.shutdown().await;
    }
}

/// A care home, opened by an app: one device's key, store and teams.
#[derive(uniffi::Object)]
pub struct CareHome {
    dir: PathBuf,
    place: Mutex<Place>,
    /// Held while the node starts or stops, so that those never cross.
    switching: tokio::sync::Mutex<()>,
    changes: Changes,
}

impl std::fmt::Debug for CareHome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CareHome").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl CareHome {
    fn place(&self) -> MutexGuard<'_, Place> {
        self.place.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the home, on its owner thread (the node's, when it runs). A call made
    /// while the node starts or stops waits until the home is open again.
    async fn with_home<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Home) -> Result<T, care::Error> + Send + 'static,
    ) -> Result<T, CareError> {
        let mut place = self.place().clone();
        if matches!(place, Place::Closed) {
            let _switched = self.switching.lock().await;
            place = self.place().clone();
        }
        match place {
            Place::Offline(owner) => owner
                .call(f)
                .await
                .map_err(|e| CareError::NotRunning(e.to_string()))?
                .map_err(CareError::from),
            Place::Online(running) => running.node.with_home(f).await.map_err(CareError::from),
            Place::Closed => Err(closed()),
        }
    }

    /// Runs `f` on one team of the home (its id, an id prefix or its name).
    async fn with_team<T: Send + 'static>(
        &self,
        team: &str,
        f: impl FnOnce(&mut care::Team<'_>) -> Result<T, care::Error> + Send + 'static,
    ) -> Result<T, CareError> {
        let team = team.to_owned();
        self.with_home(move |home| f(&mut home.team(&team)?)).await
    }

    /// Writes through `f` on a team, then tells listeners that `part` changed.
    async fn write_team<T: Send + 'static>(
        &self,
        team: &str,
        part: Part,
        f: impl FnOnce(&mut care::Team<'_>) -> Result<T, care::Error> + Send + 'static,
    ) -> Result<T, CareError> {
        let (id, value) = self.with_team(team, |team| Ok((team.id(), f(team)?))).await?;
        self.changes.announce(id, part);
        Ok(value)
    }

    fn running(&self) -> Result<Arc<Running>, CareError> {
        match &*self.place() {
            Place::Online(running) => Ok(Arc::clone(running)),
            _ => Err(CareError::NotRunning("the node is not running: start it first".into())),
        }
    }
}

fn closed() -> CareError {
    CareError::NotRunning("this home was closed".into())
}

fn section(name: &str) -> Result<Section, CareError> {
    name.parse::<Section>().map_err(|e| CareError::InvalidInput(e.to_string()))
}

fn entry(id: &str) -> Result<EntryId, CareError> {
    id.parse::<EntryId>().map_err(|e| CareError::InvalidInput(e.to_string()))
}

/// Opens the home in `dir`, or creates it there with `name`, off the caller's thread.
async fn open_home(dir: PathBuf, name: Option<String>) -> Result<Home, CareError> {
    let opened = tokio::task::spawn_blocking(move || match Home::open(&dir) {
        Err(care::Error::NotInitialised { .. }) if name.is_some() => {
            std::fs::create_dir_all(&dir)
                .map_err(|source| care::Error::Io { path: dir.clone(), source })?;
            Home::init(&dir, name.as_deref().unwrap_or_default())
        }
        opened => opened,
    });
    opened.await.map_err(|e| CareError::Internal(e.to_string()))?.map_err(CareError::from)
}

fn spawn_owner(home: Home) -> Result<Arc<Owner<Home>>, CareError> {
    let owner = Owner::spawn(home)
        .map_err(|e| CareError::Storage(format!("cannot start the home's thread: {e}")))?;
    Ok(Arc::new(owner))
}

#[uniffi::export(async_runtime = "tokio")]
impl CareHome {
    /// Opens the care home in `dir`; with a `name`, creates it there first if there is
    /// none (the person's name, as their teams will see it).
    #[uniffi::constructor(default(name = None))]
    pub async fn open(dir: String, name: Option<String>) -> Result<Arc<CareHome>, CareError> {
        guard(async move {
            let dir = PathBuf::from(dir);
            let home = open_home(dir.clone(), name).await?;
            Ok(Arc::new(CareHome {
                dir,
                place: Mutex::new(Place::Offline(spawn_owner(home)?)),
                switching: tokio::sync::Mutex::new(()),
                changes: Changes::new(),
            }))
        })
        .await
    }

    /// Who this home is.
    pub async fn whoami(&self) -> Result<Whoami, CareError> {
        guard(self.with_home(|home| {
            let profile = home.profile();
            Ok(Whoami {
                name: profile.name.clone(),
                member_id: profile.member.to_string(),
                device_id: profile.device.to_string(),
            })
        }))
        .await
    }

    /// The teams this home belongs to.
    pub async fn teams(&self) -> Result<Vec<TeamSummary>, CareError> {
        guard(self.with_home(|home| {
            let teams = home.teams()?;
            Ok(teams
                .into_iter()
                .map(|t| TeamSummary {
                    id: t.id.to_string(),
                    name: t.name,
                    role: t.role.and_then(|r| r.parse::<care::Role>().ok()).map(Role::from),
                    members: u32::try_from(t.members).unwrap_or(u32::MAX),
                    documents: u32::try_from(t.documents).unwrap_or(u32::MAX),
                })
                .collect())
        }))
        .await
    }

    /// Creates a team with this person as its owner; returns its id.
    pub async fn create_team(&self, name: String) -> Result<String, CareError> {
        guard(async move {
            let id = self.with_home(move |home| home.create_team(&name)).await?;
            self.changes.announce(id, Part::Team);
            self.changes.announce(id, Part::Members);
            Ok(id.to_string())
        })
        .await
    }

    /// The care plan sections this device may read, in their usual order.
    pub async fn plan(&self, team: String) -> Result<Vec<PlanSection>, CareError> {
        guard(self.with_team(&team, |team| {
            let sections = team.plan()?;
            Ok(sections
                .into_iter()
                .map(|(s, text)| PlanSection { section: s.as_str().to_owned(), text })
                .collect())
        }))
        .await
    }

    /// One section of the care plan (empty when never written); refused with
    /// `NotAllowed` when this device's role may not read it.
    pub async fn plan_section(&self, team: String, section: String) -> Result<String, CareError> {
        guard(async move {
            let section = self::section(&section)?;
            self.with_team(&team, move |team| team.plan_section(section)).await
        })
        .await
    }

    /// Replaces the text of one care plan section.
    pub async fn set_plan_section(
        &self,
        team: String,
        section: String,
        text: String,
    ) -> Result<(), CareError> {
        guard(async move {
            let section = self::section(&section)?;
            let part = Part::of(&section.doc_kind());
            self.write_team(&team, part, move |team| team.set_plan_section(section, &text)).await
        })
        .await
    }

    /// Writes a shift note, durably; returns its id. It goes to the care record when
    /// this role may write it, else to general notes.
    pub async fn add_note(&self, team: String, note: NewNote) -> Result<String, CareError> {
        guard(async move {
            let note = note.to_care()?;
            let id = self.write_team(&team, Part::Notes, move |team| team.add_note(&note, None));
            Ok(id.await?.to_string())
        })
        .await
    }

    /// The newest notes first: at most `limit`, written at or after `since_ms`.
    #[uniffi::method(default(since_ms = None, limit = None))]
    pub async fn notes(
        &self,
        team: String,
        since_ms: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Vec<Note>, CareError> {
        guard(async move {
            let since = since_ms.map(|ms| timestamp("since", ms)).transpose()?;
            let query = NoteQuery { since, limit: limit.map(|l| l as usize) };
            self.with_team(&team, move |team| {
                let notes = team.notes(&query)?;
                let membership = team.membership();
                Ok(notes.into_iter().map(|n| Note::from_note(n, membership)).collect())
            })
            .await
        })
        .await
    }

    /// One note, by id.
    pub async fn note(&self, team: String, id: String) -> Result<Note, CareError> {
        guard(async move {
            let id = entry(&id)?;
            self.with_team(&team, move |team| {
                let note = team.note(id)?;
                Ok(Note::from_note(note, team.membership()))
            })
            .await
        })
        .await
    }

    /// Adds an amendment to a note; the original text is kept.
    pub async fn amend_note(
        &self,
        team: String,
        id: String,
        text: String,
    ) -> Result<(), CareError> {
        guard(async move {
            let id = entry(&id)?;
            self.write_team(&team, Part::Notes, move |team| team.amend_note(id, &text)).await
        })
        .await
    }

    /// Adds a visit to the rota; returns its id.
    pub async fn add_booking(
        &self,
        team: String,
        booking: NewBooking,
    ) -> Result<String, CareError> {
        guard(async move {
            let booking = care::NewBooking {
                start: timestamp("the start", booking.start_ms)?,
                end: timestamp("the end", booking.end_ms)?,
                title: booking.title,
                needed: booking.needed,
            };
            let id = self.write_team(&team, Part::Rota, move |team| team.add_booking(&booking));
            Ok(id.await?.to_string())
        })
        .await
    }

    /// Joins a visit on the rota.
    pub async fn join_booking(&self, team: String, id: String) -> Result<(), CareError> {
        self.respond(team, id, care::Response::Joined).await
    }

    /// Declines a visit on the rota.
    pub async fn decline_booking(&self, team: String, id: String) -> Result<(), CareError> {
        self.respond(team, id, care::Response::Declined).await
    }

    /// The visits that start in `[from_ms, to_ms)`, earliest first.
    #[uniffi::method(default(from_ms = None, to_ms = None))]
    pub async fn bookings(
        &self,
        team: String,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
    ) -> Result<Vec<Booking>, CareError> {
        guard(async move {
            let from = from_ms.map(|ms| timestamp("from", ms)).transpose()?;
            let to = to_ms.map(|ms| timestamp("to", ms)).transpose()?;
            self.with_team(&team, move |team| {
                let bookings = team.bookings(from, to)?;
                let membership = team.membership();
                Ok(bookings.into_iter().map(|b| Booking::from_booking(b, membership)).collect())
            })
            .await
        })
        .await
    }

    /// Writes a new promise; returns its id.
    pub async fn add_promise(
        &self,
        team: String,
        title: String,
        text: String,
    ) -> Result<String, CareError> {
        guard(async move {
            let id =
                self.write_team(&team, Part::Promises, move |team| team.add_promise(&title, &text));
            Ok(id.await?.to_string())
        })
        .await
    }

    /// Agrees to the latest version of a promise; returns the version agreed to.
    pub async fn agree(&self, team: String, id: String) -> Result<u32, CareError> {
        guard(async move {
            let id = entry(&id)?;
            self.write_team(&team, Part::Promises, move |team| team.agree(id)).await
        })
        .await
    }

    /// The team's promises.
    pub async fn promises(&self, team: String) -> Result<Vec<Promise>, CareError> {
        guard(self.with_team(&team, |team| {
            let promises = team.promises()?;
            let membership = team.membership();
            Ok(promises.into_iter().map(|p| Promise::from_promise(p, membership)).collect())
        }))
        .await
    }

    /// Who wrote a note and each of its amendments, checked from the record.
    pub async fn audit_note(
        &self,
        team: String,
        id: String,
    ) -> Result<Vec<ChangeAudit>, CareError> {
        guard(async move {
            let id = entry(&id)?;
            self.audit(team, move |team| team.audit_note(id)).await
        })
        .await
    }

    /// Who wrote each edit of a care plan section, checked from the record.
    pub async fn audit_section(
        &self,
        team: String,
        section: String,
    ) -> Result<Vec<ChangeAudit>, CareError> {
        guard(async move {
            let section = self::section(&section)?;
            self.audit(team, move |team| team.audit_section(section)).await
        })
        .await
    }

    /// Who added a booking and who answered it, checked from the record.
    pub async fn audit_booking(
        &self,
        team: String,
        id: String,
    ) -> Result<Vec<ChangeAudit>, CareError> {
        guard(async move {
            let id = entry(&id)?;
            self.audit(team, move |team| team.audit_booking(id)).await
        })
        .await
    }

    /// Who wrote a promise, its versions and who agreed, checked from the record.
    pub async fn audit_promise(
        &self,
        team: String,
        id: String,
    ) -> Result<Vec<ChangeAudit>, CareError> {
        guard(async move {
            let id = entry(&id)?;
            self.audit(team, move |team| team.audit_promise(id)).await
        })
        .await
    }

    /// The changes kept aside in the team's documents this device may read: what removed
    /// devices wrote after what their removal knew, and what was built on it.
    pub async fn kept_aside(&self, team: String) -> Result<Vec<AsideEntry>, CareError> {
        guard(self.with_team(&team, |team| {
            Ok(team.kept_aside()?.into_iter().map(AsideEntry::from).collect())
        }))
        .await
    }

    /// Lets changes kept aside (by hash, as listed) into the record, with what they were
    /// built on. Needs the right to manage the team. Returns how many entered.
    pub async fn accept_kept_aside(
        &self,
        team: String,
        changes: Vec<String>,
    ) -> Result<u32, CareError> {
        guard(async move {
            let hashes = changes
                .iter()
                .map(|c| {
                    c.parse::<care::ChangeHash>()
                        .map_err(|_| CareError::InvalidInput(format!("`{c}` is not a change hash")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (id, accepted) = self
                .with_team(&team, move |team| Ok((team.id(), team.accept_kept_aside(&hashes)?)))
                .await?;
            // What entered may be in any part of the record.
            for part in Part::ALL {
                self.changes.announce(id, part);
            }
            Ok(u32::try_from(accepted).unwrap_or(u32::MAX))
        })
        .await
    }

    /// The team's current members.
    pub async fn members(&self, team: String) -> Result<Vec<Member>, CareError> {
        guard(
            self.with_team(&team, |team| {
                Ok(team.membership().members().map(Member::from).collect())
            }),
        )
        .await
    }

    /// Removes a member (by member id) from the team: their devices lose access.
    pub async fn remove_member(&self, team: String, member_id: String) -> Result<(), CareError> {
        guard(async move {
            let member = member_id
                .parse::<care::MemberId>()
                .map_err(|e| CareError::InvalidInput(format!("`{member_id}`: {e}")))?;
            let team = self
                .with_home(move |home| {
                    let id = home.team(&team)?.id();
                    home.author_op(id, OpBody::RemoveMember { member }).map(|_| id)
                })
                .await?;
            self.changes.announce(team, Part::Members);
            Ok(())
        })
        .await
    }

    /// Exports every document of the team this device may read into `dir`: with
    /// history, signatures and the membership log when `with_history` (checkable with
    /// `care verify`), else as plain JSON. Returns how many documents were written.
    pub async fn export(
        &self,
        team: String,
        dir: String,
        with_history: bool,
    ) -> Result<u32, CareError> {
        guard(self.with_team(&team, move |team| {
            let format = if with_history { ExportFormat::Automerge } else { ExportFormat::Json };
            let report = team.export(Path::new(&dir), format)?;
            Ok(u32::try_from(report.documents).unwrap_or(u32::MAX))
        }))
        .await
    }

    /// Starts the node: listens, keeps sessions with the teams' known devices and
    /// pushes every change to them. Does nothing if it runs already.
    pub async fn start(&self, options: NodeOptions) -> Result<(), CareError> {
        guard(async move {
            let listen: SocketAddr = options.listen.parse().map_err(|e| {
                CareError::InvalidInput(format!("`{}` is not an address: {e}", options.listen))
            })?;
            let _switching = self.switching.lock().await;
            let owner = match self.place().clone() {
                Place::Offline(owner) => owner,
                Place::Online(_) => return Ok(()),
                Place::Closed => return Err(closed()),
            };
            let relay = owner
                .call(|home| home.circle_relay())
                .await
                .map_err(|e| CareError::NotRunning(e.to_string()))??;
            let mut config = NetConfig { lan: options.lan, ..NetConfig::listening(listen) };
            if let Some(url) = relay {
                config.relay = url.parse().ok();
            }
            // The node takes the home over: close it here (once the calls in flight are
            // done; later ones wait for the node), open it there.
            *self.place() = Place::Closed;
            wait_for_sole(owner).await.stop().await;
            let home = open_home(self.dir.clone(), None).await?;
            let node = match Node::start(home, &config).await {
                Ok(node) => node,
                Err(e) => {
                    let home = open_home(self.dir.clone(), None).await?;
                    *self.place() = Place::Offline(spawn_owner(home)?);
                    return Err(e.into());
                }
            };
            let forward = tokio::spawn(forward_events(node.events(), self.changes.clone()));
            let runtime = tokio::runtime::Handle::current();
            *self.place() = Place::Online(Arc::new(Running { node, forward, runtime }));
            Ok(())
        })
        .await
    }

    /// Stops the node: sessions end and the endpoint closes; the home stays open, and
    /// everything written is kept. Does nothing if it is not running.
    pub async fn stop(&self) -> Result<(), CareError> {
        guard(async move {
            let _switching = self.switching.lock().await;
            let running = match self.place().clone() {
                Place::Online(running) => running,
                _ => return Ok(()),
            };
            *self.place() = Place::Closed;
            Running::shutdown(running).await;
            let home = open_home(self.dir.clone(), None).await?;
            *self.place() = Place::Offline(spawn_owner(home)?);
            Ok(())
        })
        .await
    }

    /// Whether the node runs.
    pub fn is_running(&self) -> bool {
        matches!(&*self.place(), Place::Online(_))
    }

    /// Where the running node listens, as `DEVICE_ID@ip:port,...`.
    pub fn address(&self) -> Result<String, CareError> {
        let running = self.running()?;
        let addr = running.node.addr();
        let addrs: Vec<String> = addr.addrs.iter().map(ToString::to_string).collect();
        Ok(format!("{}@{}", addr.device, addrs.join(",")))
    }

    /// Issues a ticket inviting `name` into the team with `role`, valid once for
    /// `valid_for_secs`; the node must be running (the ticket names where it listens).
    pub async fn invite(
        &self,
        team: String,
        role: Role,
        name: String,
        valid_for_secs: u64,
    ) -> Result<String, CareError> {
        guard(async move {
            let running = self.running()?;
            let valid_for = Duration::from_secs(valid_for_secs);
            let ticket = running.node.invite(&team, role.into(), &name, valid_for).await?;
            Ok(ticket.to_string())
        })
        .await
    }

    /// Joins a team with a ticket from one of its devices; returns the team's id. The
    /// node must be running; the team's documents follow over the session it opens.
    pub async fn join(&self, ticket: String) -> Result<String, CareError> {
        guard(async move {
            let ticket: JoinTicket = ticket.trim().parse()?;
            let running = self.running()?;
            let team = running.node.join(&ticket).await?;
            self.changes.announce(team, Part::Members);
            Ok(team.to_string())
        })
        .await
    }

    /// Waits until every known device of every team that is reachable is in sync, or
    /// `timeout_ms` passes; returns each device's status. The node must be running.
    pub async fn sync_once(&self, timeout_ms: u64) -> Result<Vec<DeviceStatus>, CareError> {
        guard(async move {
            if timeout_ms > SYNC_TIMEOUT_MS_MAX {
                let why = format!("a timeout of at most {SYNC_TIMEOUT_MS_MAX} ms");
                return Err(CareError::InvalidInput(why));
            }
            let running = self.running()?;
            let deadline = Instant::now() + Duration::from_millis(timeout_ms);
            let mut events = running.node.events();
            loop {
                let statuses = self.statuses(Some(&running)).await?;
                let waiting = statuses.iter().any(|s| !s.in_sync);
                if !waiting || Instant::now() >= deadline {
                    let synced: BTreeSet<String> = statuses
                        .iter()
                        .filter(|s| s.in_sync)
                        .map(|s| s.device_id.clone())
                        .collect();
                    self.record_synced(synced).await?;
                    return self.statuses(Some(&running)).await;
                }
                let tick = deadline.min(Instant::now() + Duration::from_millis(SYNC_POLL_MS));
                let _ = tokio::time::timeout_at(tick, events.recv()).await;
            }
        })
        .await
    }

    /// Each known device of each team: whether a session runs and is in sync now, when
    /// it was last seen and last in sync.
    pub async fn status(&self) -> Result<Vec<DeviceStatus>, CareError> {
        guard(async move {
            let running = self.running().ok();
            self.statuses(running.as_ref()).await
        })
        .await
    }

    /// Registers a listener for changes to this home's teams: it is called at once with
    /// everything to render, then with what changes, until the subscription is closed
    /// or dropped.
    pub async fn subscribe(
        self: Arc<Self>,
        listener: Arc<dyn ChangeListener>,
    ) -> Result<Arc<Subscription>, CareError> {
        guard(async move {
            // Subscribed before reading everything, so that no change falls between.
            let changes = self.changes.subscribe();
            let first = self.with_home(events::everything).await?;
            let delivery = Arc::new(Delivery::default());
            let home = Arc::downgrade(&self);
            let everything_again = move || {
                let home = home.clone();
                async move {
                    let home = home.upgrade()?;
                    home.with_home(events::everything).await.ok()
                }
            };
            let task = tokio::spawn(events::deliver(
                changes,
                first,
                listener,
                Arc::clone(&delivery),
                everything_again,
            ));
            Ok(Arc::new(Subscription::new(delivery, task)))
        })
        .await
    }

    /// Stops the node if it runs and closes the home; every later call fails with
    /// `NotRunning`.
    pub async fn close(&self) -> Result<(), CareError> {
        guard(async move {
            self.stop().await?;
            let _switching = self.switching.lock().await;
            let place = std::mem::replace(&mut *self.place(), Place::Closed);
            if let Place::Offline(owner) = place {
                wait_for_sole(owner).await.stop().await;
            }
            Ok(())
        })
        .await
    }
}

impl Drop for CareHome {
    /// A home dropped without `close`: its node is shut down in the background (the
    /// home's own thread ends as its last handle goes).
    fn drop(&mut self) {
        if let Place::Online(running) = std::mem::replace(&mut *self.place(), Place::Closed) {
            let runtime = running.runtime.clone();
            runtime.spawn(Running::shutdown(running));
        }
    }
}

impl CareHome {
    async fn audit(
        &self,
        team: String,
        f: impl FnOnce(&mut care::Team<'_>) -> Result<Vec<care::ChangeAudit>, care::Error>
        + Send
        + 'static,
    ) -> Result<Vec<ChangeAudit>, CareError> {
        let audits = self.with_team(&team, f).await?;
        Ok(audits.into_iter().map(ChangeAudit::from).collect())
    }

    async fn respond(
        &self,
        team: String,
        id: String,
        response: care::Response,
    ) -> Result<(), CareError> {
        guard(async move {
            let id = entry(&id)?;
            self.write_team(&team, Part::Rota, move |team| team.respond(id, response)).await
        })
        .await
    }

    /// The status of every known device, with sessions from `running` if given.
    async fn statuses(
        &self,
        running: Option<&Arc<Running>>,
    ) -> Result<Vec<DeviceStatus>, CareError> {
        let (connected, in_sync) = match running {
            Some(running) => (running.node.connected(), running.node.teams_in_sync().await?),
            None => (Vec::new(), Default::default()),
        };
        self.with_home(move |home| {
            let me = home.profile().device;
            let mut out = Vec::new();
            for team in home.teams()? {
                let membership = home.membership(team.id)?;
                for (device, member) in membership.devices().filter(|(d, _)| *d != me) {
                    let seen = home.store().peer_addrs(device)?.map(|(_, at)| at);
                    out.push(DeviceStatus {
                        team_id: team.id.to_string(),
                        device_id: device.to_string(),
                        member_name: member.name.clone(),
                        role: member.role.into(),
                        connected: connected.contains(&device),
                        in_sync: in_sync.get(&device).is_some_and(|t| t.contains(&team.id)),
                        last_seen_ms: seen,
                        last_sync_ms: home.last_sync(device)?,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn record_synced(&self, devices: BTreeSet<String>) -> Result<(), CareError> {
        self.with_home(move |home| {
            let now = home.now().as_millis();
            for device in devices.iter().filter_map(|d| d.parse::<DeviceId>().ok()) {
                home.record_sync(device, now)?;
            }
            Ok(())
        })
        .await
    }
}

/// Waits until no call holds the node or the home's thread any more (calls in flight
/// finish; later calls find the home switching and wait for it).
async fn wait_for_sole<T>(mut shared: Arc<T>) -> T {
    loop {
        match Arc::try_unwrap(shared) {
            Ok(sole) => return sole,
            Err(still_shared) => {
                shared = still_shared;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Passes the node's session events on to listeners as changed parts.
async fn forward_events(mut events: broadcast::Receiver<PeerEvent>, changes: Changes) {
    loop {
        match events.recv().await {
            Ok(PeerEvent::Sync { event, .. }) => changes.announce_sync(&event),
            Ok(_) => {}
            // Missed events: every listener renders everything again.
            Err(broadcast::error::RecvError::Lagged(_)) => changes.announce_everything(),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
