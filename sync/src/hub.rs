//! The device hub: every session of one device, and all routing between them, as one
//! state machine with no IO.
//!
//! The network runtime, the node and the simulation drive this one hub. They feed it
//! inputs ([`Hub::open`] when a connection is established, [`Hub::frame`] for each frame
//! read, [`Hub::ended`] when a connection is gone, [`Hub::local_change`] after a write on
//! this device, [`Hub::tick`] with the time) and carry out the [`Effect`]s it queues,
//! taken with [`Hub::take_effects`]: frames to write on a connection, connections to close
//! with a reason, and events for the application. What one session learns (a document
//! changed, a membership grew) the hub passes to the others itself, and what the replica
//! changed on its own during a step ([`Replica::take_changes`]) goes to every session.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use care_core::{DeviceId, DocId, DocKind, TeamId};

use crate::close::CloseReason;
use crate::frame::Encoded;
use crate::replica::Replica;
use crate::session::{Output, Session, SyncEvent};

/// Most sessions one device runs at once (a circle node serves hundreds of devices); a
/// device beyond it is turned away until one ends.
pub const SESSIONS_MAX: usize = 4096;
/// How long after it opened the connection dialed by the smaller device id of a pair
/// wins over a second connection between the same two devices: the span in which two
/// crossing dials meet (a dial may take up to ten seconds). An older connection is
/// replaced by a new one from the same device, which dialed again because it no longer
/// has the old one (it restarted, or its end timed out first).
pub const CROSSING_DIALS_MS: u64 = 10_000;
/// How long a connected device has to show, with its Hello, that it shares a team; a
/// device that does not is disconnected.
pub const HELLO_TIMEOUT_MS: u64 = 10_000;
/// How long an offer of a document another session is bringing waits before this
/// device asks for it anyway: the other session may be stuck, or its remote may never
/// send what it described.
pub const OFFER_WAIT_MS: u64 = 20_000;
/// Most offers waiting at once; past it, an offer is answered at once.
pub const OFFERS_WAITING_MAX: usize = 4096;

/// A connection as the hub knows it: a number the hub gave it when it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connection {}", self.0)
    }
}

/// A change on this device that connected peers may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A document's heads moved.
    Doc {
        /// Its team.
        team: TeamId,
        /// The document.
        doc: DocId,
        /// Its kind.
        kind: DocKind,
    },
    /// A team's membership log grew.
    Membership {
        /// The team.
        team: TeamId,
    },
}

/// What happened with a peer, for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A session with the peer started.
    Connected {
        /// The peer.
        peer: DeviceId,
    },
    /// The session reported something.
    Sync {
        /// The peer.
        peer: DeviceId,
        /// What.
        event: SyncEvent,
    },
    /// The session ended.
    Disconnected {
        /// The peer.
        peer: DeviceId,
        /// Why.
        reason: CloseReason,
    },
}

/// What the hub asks its driver to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write this encoded frame on the connection.
    Send {
        /// The connection.
        conn: ConnId,
        /// The frame, without its length prefix.
        frame: Encoded,
    },
    /// The connection's Hello showed a shared team: read whole frames from it from now
    /// on (until then, nothing past the Hello is read).
    Admit {
        /// The connection.
        conn: ConnId,
    },
    /// Close the connection once what was queued before is written. The hub has
    /// forgotten it: frames still read from it are ignored.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why (the other device has been sent the sentence).
        reason: CloseReason,
    },
    /// Tell the application.
    Event(PeerEvent),
}

/// Why [`Hub::open`] turned a connection away; the driver closes it with this reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Turned {
    /// A session with the same device runs over a connection that wins over this one.
    #[error("already connected to this device")]
    AlreadyConnected,
    /// The device runs [`SESSIONS_MAX`] sessions.
    #[error("this device serves the most sessions it may")]
    Full,
}

/// One open connection.
#[derive(Debug)]
struct Conn {
    remote: DeviceId,
    /// Which of the two devices dialed: between two connections of the same pair
    /// opened within [`CROSSING_DIALS_MS`], both ends keep the one dialed by the smaller
    /// device id.
    dialer: DeviceId,
    /// When it opened (by the driver's clock, in ms).
    opened_ms: u64,
    session: Session,
    /// When (by the driver's clock, in ms) the remote must have shown a shared team.
    hello_by: u64,
    /// Whether [`Effect::Admit`] was queued.
    admitted: bool,
}

/// A document offered on a connection while another session was bringing it: asked
/// for there only if that one does not.
#[derive(Debug)]
struct Waiting {
    conn: ConnId,
    team: TeamId,
    doc: DocId,
    kind: DocKind,
    since_ms: u64,
}

/// What may have stopped a session bringing a document while the hub carried out one
/// input, so that only the offers of those documents are looked at again: the offers
/// waiting are not all re-checked against every session after each frame, which a
/// member's two devices (one asked that never sends, one offering the same) could make
/// cost every later frame.
#[derive(Debug, Default)]
struct Touched {
    /// Every waiting offer is looked at again: a session ended, a membership changed, the
    /// time passed, or the replica moved on its own.
    all: bool,
    /// The documents that arrived, changed or were refused.
    docs: BTreeSet<DocId>,
}

impl Touched {
    fn all() -> Touched {
        Touched { all: true, docs: BTreeSet::new() }
    }

    fn includes(&self, doc: DocId) -> bool {
        self.all || self.docs.contains(&doc)
    }

    fn is_empty(&self) -> bool {
        !self.all && self.docs.is_empty()
    }
}

/// Every session of one device.
#[derive(Debug)]
pub struct Hub {
    local: DeviceId,
    conns: BTreeMap<ConnId, Conn>,
    by_device: HashMap<DeviceId, ConnId>,
    next: u64,
    effects: Vec<Effect>,
    /// Offers of documents another session is bringing, oldest first.
    waiting: Vec<Waiting>,
    /// The driver's clock when last given (ms).
    now_ms: u64,
}

impl Hub {
    /// The hub of device `local`.
    pub fn new(local: DeviceId) -> Hub {
        Hub {
            local,
            conns: BTreeMap::new(),
            by_device: HashMap::new(),
            next: 1,
            effects: Vec::new(),
            waiting: Vec::new(),
            now_ms: 0,
        }
    }

    /// This device.
    pub fn device(&self) -> DeviceId {
        self.local
    }

    /// The devices with a session, sorted.
    pub fn connected(&self) -> Vec<DeviceId> {
        let mut devices: Vec<DeviceId> = self.by_device.keys().copied().collect();
        devices.sort();
        devices
    }

    /// How many sessions run.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether no session runs.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The session over `conn`, while it runs.
    pub fn session(&self, conn: ConnId) -> Option<&Session> {
        self.conns.get(&conn).map(|c| &c.session)
    }

    /// Per device with a session, the shared teams its session reports in sync (the
    /// two devices hold the same of every document both may read), sorted.
    pub fn teams_in_sync(&self) -> BTreeMap<DeviceId, Vec<TeamId>> {
        let in_sync = |conn: &Conn| {
            let session = &conn.session;
            let mut teams: Vec<TeamId> =
                session.shared_teams().filter(|team| session.in_sync(*team)).collect();
            teams.sort();
            teams
        };
        let sessions = self
            .by_device
            .iter()
            .filter_map(|(device, id)| self.conns.get(id).map(|c| (device, c)));
        sessions.map(|(device, conn)| (*device, in_sync(conn))).collect()
    }

    /// The connection of the session with `device`, if one runs.
    pub fn conn_of(&self, device: DeviceId) -> Option<ConnId> {
        self.by_device.get(&device).copied()
    }

    /// What the hub asks of its driver since it was last asked, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// A connection with `remote` (authenticated by the transport) is established,
    /// dialed by `dialer`, at `now_ms`: starts its session. A second connection between
    /// the same two devices replaces the first, unless the first was dialed by the
    /// smaller device id less than [`CROSSING_DIALS_MS`] ago: so crossing dials settle
    /// on one, and a device that restarted is not kept out until its old connection
    /// times out here.
    pub fn open<R: Replica>(
        &mut self,
        replica: &mut R,
        remote: DeviceId,
        dialer: DeviceId,
        now_ms: u64,
    ) -> Result<ConnId, Turned> {
        if let Some(&existing) = self.by_device.get(&remote) {
            let crossing = |c: &Conn| {
                c.dialer < dialer && now_ms.saturating_sub(c.opened_ms) < CROSSING_DIALS_MS
            };
            if self.conns.get(&existing).is_some_and(crossing) {
                return Err(Turned::AlreadyConnected);
            }
            self.close(replica, existing, CloseReason::Replaced);
        } else if self.conns.len() >= SESSIONS_MAX {
            return Err(Turned::Full);
        }
        self.now_ms = self.now_ms.max(now_ms);
        let conn = ConnId(self.next);
        self.next += 1;
        let mut session = Session::new(self.local, remote);
        session.defer_offers();
        let hello_by = now_ms.saturating_add(HELLO_TIMEOUT_MS);
        let opened = Conn { remote, dialer, opened_ms: now_ms, session, hello_by, admitted: false };
        self.conns.insert(conn, opened);
        self.by_device.insert(remote, conn);
        self.effects.push(Effect::Event(PeerEvent::Connected { peer: remote }));
        self.step(replica, conn, |s, r| s.start(r));
        Ok(conn)
    }

    /// A frame read from `conn`.
    pub fn frame<R: Replica>(&mut self, replica: &mut R, conn: ConnId, bytes: &[u8]) {
        self.step(replica, conn, |s, r| s.handle_frame(r, bytes));
    }

    /// Closes `conn` from this side with `reason` (a frame that could not be read, the
    /// device falling behind, shutting down): the session says why to the other device.
    pub fn close<R: Replica>(&mut self, replica: &mut R, conn: ConnId, reason: CloseReason) {
        self.step(replica, conn, |s, r| s.close(r, reason));
    }

    /// `conn` is gone (the other device ended it, or the connection was lost).
    pub fn ended<R: Replica>(&mut self, replica: &mut R, conn: ConnId, reason: CloseReason) {
        self.forget(replica, conn, reason);
        // What it was bringing is asked for where else it was offered.
        self.carry_out(replica, Vec::new(), Touched::all());
    }

    /// The replica changed on its own ([`Replica::take_changes`]): an app wrote through
    /// it, or a step discarded a document. Every session passes the changes on.
    pub fn replica_changed<R: Replica>(&mut self, replica: &mut R) {
        self.carry_out(replica, Vec::new(), Touched::all());
    }

    /// Work the replica did on its own threads is done ([`Replica::poll_background`]):
    /// takes it in, and every session passes on what it changed.
    pub fn background<R: Replica>(&mut self, replica: &mut R) {
        replica.poll_background();
        self.carry_out(replica, Vec::new(), Touched::all());
    }

    /// A write on this device: every session that shares it passes it on.
    pub fn local_change<R: Replica>(&mut self, replica: &mut R, change: Change) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        let mut work = Vec::new();
        for conn in conns {
            work.push((conn, self.contained(replica, conn, |s, r| on_change(s, r, change))));
        }
        self.carry_out(replica, work, Touched::all());
    }

    /// The time is `now_ms` (the clock [`Hub::open`] was given): closes the sessions
    /// whose remote has not shown a shared team within [`HELLO_TIMEOUT_MS`], and asks
    /// for documents offered more than [`OFFER_WAIT_MS`] ago that have not come.
    pub fn tick<R: Replica>(&mut self, replica: &mut R, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        if !self.waiting.is_empty() {
            self.carry_out(replica, Vec::new(), Touched::all());
        }
        let late: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.session.admitted() && c.hello_by <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for conn in late {
            self.close(replica, conn, CloseReason::HelloTimeout(HELLO_TIMEOUT_MS));
        }
    }

    /// The earliest time (by the driver's clock, in ms) at which [`Hub::tick`] has work:
    /// an offer that has waited [`OFFER_WAIT_MS`], or a session whose remote has not shown
    /// a shared team by its [`HELLO_TIMEOUT_MS`]. `None` when nothing waits on the time.
    pub fn next_deadline(&self) -> Option<u64> {
        let offers = self.waiting.iter().map(|w| w.since_ms.saturating_add(OFFER_WAIT_MS));
        let hellos = self.conns.values().filter(|c| !c.session.admitted()).map(|c| c.hello_by);
        offers.chain(hellos).min()
    }

    /// Runs one step of `conn`'s session and carries out what it returns.
    fn step<R: Replica>(
        &mut self,
        replica: &mut R,
        conn: ConnId,
        step: impl FnOnce(&mut Session, &mut R) -> Vec<Output>,
    ) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        let outputs = self.contained(replica, conn, step);
        self.carry_out(replica, vec![(conn, outputs)], Touched::default());
    }

    /// Runs one step of a session. A panic in it is a bug, but it stays in this session:
    /// the replica drops what it holds in memory for it (reloading from the store, where
    /// every write is a whole transaction), and the session closes; the device's other
    /// sessions go on.
    fn contained<R: Replica>(
        &mut self,
        replica: &mut R,
        conn: ConnId,
        step: impl FnOnce(&mut Session, &mut R) -> Vec<Output>,
    ) -> Vec<Output> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Vec::new();
        };
        let session = &mut c.session;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(session, replica))) {
            Ok(outputs) => outputs,
            Err(_) => {
                replica.recover_from_panic(c.remote);
                vec![Output::Close { reason: CloseReason::Failed }]
            }
        }
    }

    /// Carries out sessions' outputs, and what they cause on the other sessions, until
    /// nothing more follows; the offers waiting on documents `touched` (or on what the
    /// outputs touch) are looked at again.
    fn carry_out<R: Replica>(
        &mut self,
        replica: &mut R,
        mut work: Vec<(ConnId, Vec<Output>)>,
        mut touched: Touched,
    ) {
        loop {
            for (conn, outputs) in std::mem::take(&mut work) {
                for output in outputs {
                    let Some(c) = self.conns.get(&conn) else { break };
                    let remote = c.remote;
                    match output {
                        Output::Send(frame) => self.effects.push(Effect::Send { conn, frame }),
                        Output::Close { reason } => {
                            self.effects.push(Effect::Close { conn, reason: reason.clone() });
                            self.forget(replica, conn, reason);
                            touched.all = true;
                        }
                        Output::Event(event) => {
                            match event {
                                SyncEvent::DocChanged { doc, .. }
                                | SyncEvent::Refused { doc: Some(doc), .. } => {
                                    touched.docs.insert(doc);
                                }
                                SyncEvent::Refused { doc: None, .. }
                                | SyncEvent::MembershipChanged { .. } => touched.all = true,
                                SyncEvent::TeamInSync { .. } => {}
                            }
                            if let Some(change) = passed_on(&event) {
                                work.extend(self.pass_to_others(replica, conn, change));
                            }
                            self.effects
                                .push(Effect::Event(PeerEvent::Sync { peer: remote, event }));
                        }
                        Output::Offered { team, doc, kind } => {
                            let brought = self.brought_elsewhere(conn, team, doc);
                            if brought && self.waiting.len() < OFFERS_WAITING_MAX {
                                self.waiting.retain(|w| !(w.conn == conn && w.doc == doc));
                                let since_ms = self.now_ms;
                                self.waiting.push(Waiting { conn, team, doc, kind, since_ms });
                            } else {
                                let want = |s: &mut Session, r: &mut R| s.want(r, team, doc, kind);
                                work.push((conn, self.contained(replica, conn, want)));
                            }
                        }
                    }
                }
                if let Some(c) = self.conns.get_mut(&conn)
                    && !c.admitted
                    && c.session.admitted()
                {
                    c.admitted = true;
                    self.effects.push(Effect::Admit { conn });
                }
            }
            // What the replica changed on its own (an app's write, a document that
            // failed verification discarded, to be fetched again) goes to every session.
            for change in replica.take_changes() {
                match change {
                    Change::Doc { doc, .. } => {
                        touched.docs.insert(doc);
                    }
                    Change::Membership { .. } => touched.all = true,
                }
                let conns: Vec<ConnId> = self.conns.keys().copied().collect();
                for conn in conns {
                    work.push((
                        conn,
                        self.contained(replica, conn, |s, r| on_change(s, r, change)),
                    ));
                }
            }
            if work.is_empty() && !touched.is_empty() {
                work = self.offers_due(replica, &std::mem::take(&mut touched));
            }
            if work.is_empty() {
                return;
            }
        }
    }

    /// Whether a session other than `conn`'s is bringing `doc` ([`Session::brings`]).
    fn brought_elsewhere(&self, conn: ConnId, team: TeamId, doc: DocId) -> bool {
        self.conns.iter().any(|(id, c)| *id != conn && c.session.brings(team, doc))
    }

    /// Asks for the documents offered while another session was bringing them, where
    /// none is any longer (it ended, what it brought failed, or it came) or the offer
    /// has waited [`OFFER_WAIT_MS`]; of the offers of documents `touched` only, the rest
    /// wait as they were. A document held by then is not asked for: the session that was
    /// offered it tells its remote what this device holds.
    fn offers_due<R: Replica>(
        &mut self,
        replica: &mut R,
        touched: &Touched,
    ) -> Vec<(ConnId, Vec<Output>)> {
        let mut work = Vec::new();
        for w in std::mem::take(&mut self.waiting) {
            if !self.conns.contains_key(&w.conn) {
                continue;
            }
            let late = self.now_ms.saturating_sub(w.since_ms) >= OFFER_WAIT_MS;
            if !touched.includes(w.doc) || (!late && self.brought_elsewhere(w.conn, w.team, w.doc))
            {
                self.waiting.push(w);
                continue;
            }
            let want = |s: &mut Session, r: &mut R| s.want(r, w.team, w.doc, w.kind);
            work.push((w.conn, self.contained(replica, w.conn, want)));
        }
        work
    }

    /// Passes a change learnt from `from` to every other session.
    fn pass_to_others<R: Replica>(
        &mut self,
        replica: &mut R,
        from: ConnId,
        change: Change,
    ) -> Vec<(ConnId, Vec<Output>)> {
        let others: Vec<ConnId> = self.conns.keys().copied().filter(|c| *c != from).collect();
        others
            .into_iter()
            .map(|conn| (conn, self.contained(replica, conn, |s, r| on_change(s, r, change))))
            .collect()
    }

    /// Forgets a connection that is over, and tells the application.
    fn forget<R: Replica>(&mut self, replica: &mut R, conn: ConnId, reason: CloseReason) {
        let Some(c) = self.conns.remove(&conn) else { return };
        if self.by_device.get(&c.remote) == Some(&conn) {
            self.by_device.remove(&c.remote);
        }
        replica.reset_sync_state(c.remote);
        let event = PeerEvent::Disconnected { peer: c.remote, reason };
        self.effects.push(Effect::Event(event));
    }
}

/// What a session's event means for the device's other sessions.
fn passed_on(event: &SyncEvent) -> Option<Change> {
    match *event {
        SyncEvent::DocChanged { team, doc, kind } => Some(Change::Doc { team, doc, kind }),
        SyncEvent::MembershipChanged { team } => Some(Change::Membership { team }),
        SyncEvent::Refused { .. } | SyncEvent::TeamInSync { .. } => None,
    }
}

fn on_change<R: Replica>(session: &mut Session, replica: &mut R, change: Change) -> Vec<Output> {
    match change {
        Change::Doc { team, doc, kind } => session.local_change(replica, team, doc, kind),
        Change::Membership { team } => session.membership_changed(replica, team),
    }
}

#[cfg(test)]
mod tests {
    use care_core::DeviceKey;

    use super::*;
    use crate::memory::MemoryReplica;

    fn device(i: u64) -> DeviceId {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&i.to_le_bytes());
        DeviceId::from_bytes(bytes)
    }

    #[test]
    fn a_panic_in_a_session_step_closes_that_session_only() {
        let local = DeviceKey::from_seed([1; 32]).device_id();
        let mut replica = MemoryReplica::new(local);
        let mut hub = Hub::new(local);
        let (a, b) = (device(2), device(3));
        let conn_a = hub.open(&mut replica, a, a, 0).expect("room");
        let conn_b = hub.open(&mut replica, b, b, 0).expect("room");
        hub.take_effects();
        hub.step(&mut replica, conn_a, |_, _| panic!("a bug in one session"));
        let effects = hub.take_effects();
        assert!(
            effects.iter().any(|e| matches!(e, Effect::Close { conn, reason }
                if *conn == conn_a && *reason == CloseReason::Failed)),
            "{effects:?}"
        );
        assert_eq!(hub.connected(), vec![b]);
        // The other session goes on, and so does the hub.
        hub.local_change(
            &mut replica,
            Change::Membership { team: care_core::TeamId::from_bytes([4; 16]) },
        );
        assert!(hub.session(conn_b).is_some_and(|s| !s.is_closed()));
        let again = hub.open(&mut replica, a, a, 0).expect("room");
        assert!(
            hub.take_effects()
                .iter()
                .any(|e| matches!(e, Effect::Send { conn, .. } if *conn == again))
        );
    }

    /// A device runs at most `SESSIONS_MAX` sessions: the next device is turned away,
    /// while a new connection from a device already in session replaces its old one.
    #[test]
    fn sessions_are_bounded() {
        let local = DeviceKey::from_seed([1; 32]).device_id();
        let mut replica = MemoryReplica::new(local);
        let mut hub = Hub::new(local);
        for i in 0..SESSIONS_MAX as u64 {
            assert!(hub.open(&mut replica, device(i), device(i), 0).is_ok(), "session {i}");
        }
        let next = device(SESSIONS_MAX as u64);
        assert_eq!(hub.open(&mut replica, next, next, 0), Err(Turned::Full));
        let first = hub.conn_of(device(0)).expect("open");
        let again =
            hub.open(&mut replica, device(0), device(0), 0).expect("a known device reconnects");
        assert_ne!(first, again);
        assert!(hub.session(first).is_none(), "the old connection is closed");
        assert_eq!(hub.len(), SESSIONS_MAX);
    }

    /// Between two connections of the same pair of devices, both ends keep the one
    /// dialed by the smaller device id.
    #[test]
    fn crossing_dials_settle_on_one_connection() {
        let (small, large) = (device(1), device(2));
        let mut replica = MemoryReplica::new(small);
        let mut hub = Hub::new(small);
        let dialed_by_small = hub.open(&mut replica, large, small, 0).expect("room");
        let crossing = CROSSING_DIALS_MS - 1;
        assert_eq!(hub.open(&mut replica, large, large, crossing), Err(Turned::AlreadyConnected));
        assert_eq!(hub.conn_of(large), Some(dialed_by_small));

        // At the other end the connection dialed by the smaller id replaces its own.
        let mut other = MemoryReplica::new(large);
        let mut hub_large = Hub::new(large);
        let dialed_by_large = hub_large.open(&mut other, small, large, 0).expect("room");
        let kept = hub_large.open(&mut other, small, small, crossing).expect("replaces");
        assert!(hub_large.session(dialed_by_large).is_none());
        assert_eq!(hub_large.conn_of(small), Some(kept));
    }

    /// A device that dials again once the crossing-dials span is over no longer has the
    /// old connection (it restarted): its new connection replaces the old one at once,
    /// whoever dialed the old one.
    #[test]
    fn a_device_that_dials_again_later_replaces_its_old_connection() {
        let (small, large) = (device(1), device(2));
        let mut replica = MemoryReplica::new(small);
        let mut hub = Hub::new(small);
        let old = hub.open(&mut replica, large, small, 1_000).expect("room");
        hub.take_effects();
        let new = hub
            .open(&mut replica, large, large, 1_000 + CROSSING_DIALS_MS)
            .expect("the device dialed again after it restarted");
        assert_ne!(old, new);
        assert_eq!(hub.conn_of(large), Some(new));
        assert!(hub.session(old).is_none());
        assert!(hub.take_effects().iter().any(|e| matches!(e, Effect::Close { conn, reason }
            if *conn == old && *reason == CloseReason::Replaced)));
    }

    /// A device that shows no shared team within the Hello timeout is closed at the
    /// first tick after it.
    #[test]
    fn a_device_without_a_hello_is_closed_at_the_timeout() {
        let local = device(1);
        let mut replica = MemoryReplica::new(local);
        let mut hub = Hub::new(local);
        let conn = hub.open(&mut replica, device(2), device(2), 1_000).expect("room");
        hub.tick(&mut replica, 1_000 + HELLO_TIMEOUT_MS - 1);
        assert!(hub.session(conn).is_some());
        hub.tick(&mut replica, 1_000 + HELLO_TIMEOUT_MS);
        assert!(hub.session(conn).is_none());
        assert!(hub.take_effects().iter().any(|e| matches!(e, Effect::Close { reason, .. }
            if *reason == CloseReason::HelloTimeout(HELLO_TIMEOUT_MS))));
    }
}
