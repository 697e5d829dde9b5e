//! A deterministic simulation of the sync protocol: 3 to 7 devices of one care team, each
//! a [`Hub`] over a replica, on a seeded in-memory network with delays, dropped
//! connections and partitions, editing concurrently; after the network heals every device
//! must hold the same heads for every document it may read.
//!
//! The replica is any [`SimDevice`]: the [`MemoryReplica`] here (`cargo test -p care-sync
//! sim`), and the product's SQLite home in the `care` crate, whose devices also restart
//! from their directory now and then, as after a crash between two steps. With homes, a
//! world of five members or more has the team's circle node among them: it is handed
//! every document sealed, never in clear, and must end holding every document at the
//! heads the members agree on, and in sync with each. A failure
//! prints its seed; `CARE_SIM_SEED=N` replays it, and `CARE_SIM_SEEDS=FROM..TO` runs more.
//!
//! One member, the advocate, is an attacker: besides what its session sends, some of
//! its frames have a byte changed, and now and then it adds a frame of its own making (a
//! hostile Bloom filter, the ops of a lure team naming its peer, a forged whole document).
//! It does not tamper with changes: see the threat model on unsigned actor ids.
//! The honest members must still converge, and none may hold anything of the lure.

use std::collections::{BTreeMap, BTreeSet};

use automerge::ChangeHash;
use care_core::documents::{Author, notes, plan};
use care_core::kept_aside::changes_by;
use care_core::keys::{KeyScope, TeamKey, wrap};
use care_core::{
    Access, ChangeSig, DeviceId, DeviceKey, DocId, DocKind, EntryId, KnownChanges, MemberId,
    Membership, Month, NoteStream, OpBody, Role, Section, SignedOp, TeamId, Timestamp, create_team,
    kept_aside, team_id,
};

use crate::access::TeamAccess;
use crate::close::CloseReason;
use crate::frame::Frame;
use crate::hub::{Change, ConnId, Effect, Hub, PeerEvent};
use crate::memory::MemoryReplica;
use crate::replica::Replica;
use crate::session::SyncEvent;

/// Seeds per run of the in-memory simulation.
#[cfg(test)]
const SEEDS_PER_RUN: u64 = 500;
/// Percent of ticks at which a device that can restart does (when it survives a crash).
const RESTART_PERCENT: u64 = 1;

/// A device's replica as the simulation drives it.
pub trait SimDevice: Replica {
    /// Writes, as `author`, a note in a notes document (`kind`) or a section of a plan,
    /// with `random` as the note's entry id bytes.
    fn edit(
        &mut self,
        team: TeamId,
        kind: DocKind,
        author: &Author,
        text: &str,
        random: [u8; 8],
    ) -> Result<(), String>;

    /// The heads of `doc` as this device would use it (loaded, and so verified), empty
    /// when it holds none.
    fn used_heads(&mut self, team: TeamId, doc: DocId) -> Vec<ChangeHash> {
        let kind = self.docs(team).ok().and_then(|d| d.into_iter().find(|d| d.id == doc));
        match (kind, self.read_doc(team, doc, automerge::Automerge::get_heads)) {
            (Some(held), Some(heads)) => without_genesis(team, &held.kind, heads),
            _ => Vec::new(),
        }
    }

    /// Whether the device's copy of `doc`, as it would use it, holds the change `hash`.
    fn holds_change(&mut self, team: TeamId, doc: DocId, hash: ChangeHash) -> bool {
        self.read_doc(team, doc, |d| d.get_change_meta_by_hash(&hash).is_some()).unwrap_or(false)
    }

    /// Runs `f` on the whole document `doc` (changes kept aside included) as this device
    /// would use it; `None` when it holds none.
    fn read_doc<R>(
        &mut self,
        team: TeamId,
        doc: DocId,
        f: impl FnOnce(&automerge::Automerge) -> R,
    ) -> Option<R>;

    /// Tells the device the simulated time (a replica with a clock stamps and judges by
    /// it).
    fn set_time(&mut self, _now: Timestamp) {}

    /// Restarts from what is durable, as after a crash between two steps. Returns
    /// `false` when the device keeps nothing durable (and so does not restart).
    fn restart(&mut self) -> bool {
        false
    }

    /// Uses every document of `team` it holds, as an app reading them would: a replica
    /// that checks a document received whole on its first use does so now, and one that
    /// fails is discarded and fetched again ([`Replica::take_changes`]).
    fn use_all(&mut self, _team: TeamId) {}

    /// Whether such a replica can be the team's circle node, which holds the documents
    /// sealed ([`Replica::store_sealed`]): a world of them then has one.
    fn can_hold_sealed() -> bool {
        false
    }
}

impl SimDevice for MemoryReplica {
    fn edit(
        &mut self,
        team: TeamId,
        kind: DocKind,
        author: &Author,
        text: &str,
        random: [u8; 8],
    ) -> Result<(), String> {
        self.write(team, kind, |doc| edit_doc(doc, &kind, author, text, random))
            .map_err(|e| e.to_string())
    }

    fn read_doc<R>(
        &mut self,
        team: TeamId,
        doc: DocId,
        f: impl FnOnce(&automerge::Automerge) -> R,
    ) -> Option<R> {
        self.doc(team, doc).map(f)
    }
}

/// The simulation's edit of a document of `kind`, as `author`: a note with `random` as its
/// entry id bytes in a notes document, else a section of a plan.
pub fn edit_doc(
    doc: &mut automerge::Automerge,
    kind: &DocKind,
    author: &Author,
    text: &str,
    random: [u8; 8],
) -> Result<(), care_core::documents::DocError> {
    match *kind {
        DocKind::Notes { month, .. } => {
            let note = notes::NewNote { text: text.to_owned(), ..Default::default() };
            notes::add_note(doc, author, EntryId::new(month, random), &note)
        }
        DocKind::Plan => plan::set_section(doc, author, Section::Routines, text),
        _ => plan::set_section(doc, author, Section::Medication, text),
    }
}

/// `heads`, or none when they are the document's deterministic first change alone: a
/// document holding nothing but its genesis reads the same as one not held at all.
fn without_genesis(team: TeamId, kind: &DocKind, heads: Vec<ChangeHash>) -> Vec<ChangeHash> {
    let (_, genesis) = crate::access::genesis_change(team, kind);
    if heads.len() == 1 && genesis == heads.first().copied() { Vec::new() } else { heads }
}

/// Ticks (milliseconds of simulated time) of the fault phase.
const FAULT_TICKS: u64 = 200;
/// Most ticks to wait for the network to go quiet after healing.
const QUIET_TICKS_MAX: u64 = 100_000;
/// Rounds of every device using what it holds (and fetching again what failed) after the
/// network heals; each discards at least one forged document, so few are ever needed.
const USES_MAX: usize = 8;
/// Largest delay of one frame, in ticks.
const DELAY_TICKS_MAX: u64 = 20;
/// The attacking member: the advocate, present in every seed.
const ATTACKER: usize = 2;
/// The circle node, in a world that has one.
const CIRCLE: usize = 3;
/// Percent of the attacker's frames that it tampers with or follows with one of its own.
const ATTACK_PERCENT: u64 = 10;
/// Percent of the worlds with a circle node in which it withholds: it describes the
/// documents it holds but never sends one, and the members must get them from each other.
/// In as many worlds the attacker withholds: it offers documents, and sends none whole
/// when asked.
const WITHHOLD_PERCENT: u64 = 30;

/// SplitMix64: small, seeded, good enough for choosing faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Peer<D> {
    key: DeviceKey,
    member: MemberId,
    role: Role,
    replica: D,
    hub: Hub,
}

struct Conn {
    ends: [usize; 2],
    /// The connection as each end's hub numbers it.
    ids: [ConnId; 2],
    /// Delivery time of the last frame sent each way, so a connection stays ordered.
    last_at: [u64; 2],
}

struct InFlight {
    at: u64,
    seq: u64,
    conn: u64,
    to_end: usize,
    bytes: Vec<u8>,
}

/// The simulated world of one seed.
struct World<D> {
    rng: Rng,
    now: u64,
    team: TeamId,
    month: Month,
    peers: Vec<Peer<D>>,
    /// The team's circle node, when the world has one.
    circle: Option<usize>,
    /// The device outside the team (the last peer).
    outsider: usize,
    conns: BTreeMap<u64, Conn>,
    /// Which connection of the world a peer's hub means by its connection id.
    by_hub_id: BTreeMap<(usize, ConnId), u64>,
    next_conn: u64,
    in_flight: Vec<InFlight>,
    next_seq: u64,
    /// Peers on side `true` of a partition cannot reach those on side `false`.
    partition: Option<Vec<bool>>,
    /// The peer removed mid-run, and the removal op.
    removed: Option<(usize, SignedOp)>,
    /// Refusals reported by each peer, with the peer whose frame was refused.
    refusals: Vec<(usize, usize, String)>,
    /// The changes the attacker forged under another device's actor id.
    forged: Vec<ChangeHash>,
    /// How many times each end of each connection reported TeamInSync.
    in_sync_events: BTreeMap<(u64, usize), usize>,
    /// Whether the attacker attacks.
    attacks: bool,
    /// Restarts of devices, for the statistics.
    restarts: usize,
    /// Whether the circle node withholds every sealed document it would send.
    withholds: bool,
    /// Whether the attacker withholds every whole document it would send.
    attacker_withholds: bool,
    /// Sealed documents the circle node withheld, for the statistics.
    withheld: usize,
}

/// Makes the replica of device `index` with `key` (for member `member`), empty.
pub type MakeDevice<'a, D> = &'a (dyn Fn(usize, &DeviceKey, MemberId) -> D + Sync);

impl<D: SimDevice> World<D> {
    fn new(seed: u64, make: MakeDevice<'_, D>) -> World<D> {
        let mut rng = Rng(seed);
        let members = 3 + rng.below(5) as usize;
        // With five members or more, the fourth is the circle node, where replicas can
        // be one (never the last, who is removed).
        let circle = (D::can_hold_sealed() && members >= 5).then_some(CIRCLE);
        // Drawn apart from the faults, so that a seed's faults stay what they were.
        let mut withholding = Rng(seed ^ 0x7769_7468);
        let withholds = circle.is_some() && withholding.chance(WITHHOLD_PERCENT);
        let attacker_withholds = withholding.chance(WITHHOLD_PERCENT);
        let roles = |i: usize| match i {
            0 => Role::Owner,
            1 => Role::Volunteer,
            2 => Role::Advocate,
            _ if Some(i) == circle => Role::Relay,
            _ => Role::Worker,
        };
        let mut peers: Vec<Peer<D>> = (0..=members)
            .map(|i| {
                let key = DeviceKey::from_seed([i as u8 + 1; 32]);
                let member = MemberId::from_bytes([i as u8 + 1; 16]);
                let replica = make(i, &key, member);
                let hub = Hub::new(key.device_id());
                Peer { key, member, role: roles(i), replica, hub }
            })
            .collect();
        let ops = team_ops(&peers[..members], seed);
        let team = team_id(&ops[0]);
        let month = Month::new(2026, 11).expect("a valid month");
        for peer in &mut peers {
            peer.replica.set_time(month.start());
        }
        for peer in &mut peers[..members] {
            peer.replica.add_ops(team, &ops).expect("the replica stores ops");
        }
        World {
            rng,
            now: 0,
            team,
            month,
            peers,
            circle,
            outsider: members,
            conns: BTreeMap::new(),
            by_hub_id: BTreeMap::new(),
            next_conn: 0,
            in_flight: Vec::new(),
            next_seq: 0,
            partition: None,
            removed: None,
            refusals: Vec::new(),
            forged: Vec::new(),
            in_sync_events: BTreeMap::new(),
            attacks: false,
            restarts: 0,
            withholds,
            attacker_withholds,
            withheld: 0,
        }
    }

    fn run(&mut self) {
        let removal_at = 50 + self.rng.below(FAULT_TICKS - 100);
        while self.now < FAULT_TICKS {
            let now = Timestamp(self.month.start().0 + self.now as i64);
            for peer in &mut self.peers {
                peer.replica.set_time(now);
            }
            self.faults();
            if self.now == removal_at {
                self.remove_last_member();
            }
            self.deliver_due();
            self.tick();
            self.now += 1;
        }
        self.partition = None;
        let all = self.peers.len();
        for a in 0..all {
            for b in a + 1..all {
                self.connect(a, b);
            }
        }
        self.run_until_quiet();
        // Every device uses what it holds, as its app would; a document that fails its
        // check on first use is fetched again, until the network is quiet once more.
        for _ in 0..USES_MAX {
            for peer in 0..all {
                let team = self.team;
                let Peer { hub, replica, .. } = &mut self.peers[peer];
                replica.use_all(team);
                hub.replica_changed(replica);
                self.settle(peer);
            }
            if self.in_flight.is_empty() {
                break;
            }
            self.run_until_quiet();
        }
    }

    /// Runs until no frame is in flight and no hub waits on the time; when only the
    /// time is awaited (an offer waiting on a document that does not come), it jumps to
    /// the earliest hub's deadline.
    fn run_until_quiet(&mut self) {
        let deadline = self.now + QUIET_TICKS_MAX;
        loop {
            if self.in_flight.is_empty() {
                let next = self.peers.iter().filter_map(|p| p.hub.next_deadline()).min();
                let Some(next) = next else { return };
                self.now = self.now.max(next);
            }
            assert!(self.now < deadline, "the network did not go quiet");
            self.deliver_due();
            self.tick();
            self.now += 1;
        }
    }

    /// Gives every hub the time, as a node's runtime does at each of its ticks.
    fn tick(&mut self) {
        for peer in 0..self.peers.len() {
            let now = self.now;
            let Peer { hub, replica, .. } = &mut self.peers[peer];
            hub.tick(replica, now);
            self.settle(peer);
        }
    }

    fn faults(&mut self) {
        let peers = self.peers.len() as u64;
        if self.rng.chance(10) {
            let peer = self.rng.below(self.outsider as u64) as usize;
            self.edit(peer);
        }
        if self.rng.chance(10) {
            let (a, b) = (self.rng.below(peers) as usize, self.rng.below(peers) as usize);
            self.connect(a, b);
        }
        if self.rng.chance(3)
            && let Some(&id) =
                self.conns.keys().nth(self.rng.below(self.conns.len() as u64) as usize)
        {
            self.drop_conn(id);
        }
        if self.rng.chance(1) {
            self.repartition();
        }
        if self.rng.chance(RESTART_PERCENT) {
            let peer = self.rng.below(peers) as usize;
            self.restart(peer);
        }
    }

    /// The device crashes between two steps and starts again from its directory: its
    /// connections drop, its hub starts empty, and what it acknowledged must still be
    /// there.
    fn restart(&mut self, peer: usize) {
        if !self.peers[peer].replica.restart() {
            return;
        }
        let conns: Vec<u64> =
            self.conns.iter().filter(|(_, c)| c.ends.contains(&peer)).map(|(id, _)| *id).collect();
        for id in conns {
            // The crashed end says nothing; the other end sees the connection end.
            let Some(conn) = self.conns.remove(&id) else { continue };
            let other = usize::from(conn.ends[0] == peer);
            for end in 0..2 {
                self.by_hub_id.remove(&(conn.ends[end], conn.ids[end]));
            }
            let Peer { hub, replica, .. } = &mut self.peers[conn.ends[other]];
            hub.ended(
                replica,
                conn.ids[other],
                CloseReason::Lost("the other device stopped".into()),
            );
            self.settle(conn.ends[other]);
        }
        self.peers[peer].hub = Hub::new(self.peers[peer].key.device_id());
        self.restarts += 1;
    }

    fn repartition(&mut self) {
        if self.partition.is_some() {
            self.partition = None;
            return;
        }
        let sides: Vec<bool> = (0..self.peers.len()).map(|_| self.rng.chance(50)).collect();
        let cut: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| sides[c.ends[0]] != sides[c.ends[1]])
            .map(|(id, _)| *id)
            .collect();
        for id in cut {
            self.drop_conn(id);
        }
        self.partition = Some(sides);
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.conns.values().any(|c| c.ends == [a, b] || c.ends == [b, a])
    }

    /// `a` dials `b`.
    fn connect(&mut self, a: usize, b: usize) {
        let split = self.partition.as_ref().is_some_and(|s| s[a] != s[b]);
        if a == b || split || self.connected(a, b) {
            return;
        }
        let (da, db) = (self.peers[a].key.device_id(), self.peers[b].key.device_id());
        let id = self.next_conn;
        self.next_conn += 1;
        let now = self.now;
        let mut ids = [ConnId(0); 2];
        for (end, (peer, remote)) in [(a, db), (b, da)].into_iter().enumerate() {
            let Peer { hub, replica, .. } = &mut self.peers[peer];
            ids[end] = hub.open(replica, remote, da, now).expect("one connection per pair");
            self.by_hub_id.insert((peer, ids[end]), id);
        }
        self.conns.insert(id, Conn { ends: [a, b], ids, last_at: [0, 0] });
        self.settle(a);
        self.settle(b);
    }

    /// Ends a connection: its frames in flight are lost, both hubs learn it ended.
    fn drop_conn(&mut self, id: u64) {
        let Some(conn) = self.conns.remove(&id) else { return };
        for end in 0..2 {
            let peer = conn.ends[end];
            self.by_hub_id.remove(&(peer, conn.ids[end]));
            let Peer { hub, replica, .. } = &mut self.peers[peer];
            hub.ended(replica, conn.ids[end], CloseReason::Lost("dropped by the network".into()));
        }
        self.settle(conn.ends[0]);
        self.settle(conn.ends[1]);
    }

    /// Carries out what a peer's hub asks, until it asks nothing more.
    fn settle(&mut self, peer: usize) {
        loop {
            let effects = self.peers[peer].hub.take_effects();
            if effects.is_empty() {
                return;
            }
            for effect in effects {
                match effect {
                    Effect::Send { conn, frame } => {
                        if let Some(&id) = self.by_hub_id.get(&(peer, conn)) {
                            let end = usize::from(self.conns[&id].ends[1] == peer);
                            self.send(id, end, frame.to_vec());
                        }
                    }
                    Effect::Close { conn, .. } => {
                        if let Some(&id) = self.by_hub_id.get(&(peer, conn)) {
                            self.drop_conn(id);
                        }
                    }
                    Effect::Admit { .. } => {}
                    Effect::Event(PeerEvent::Sync { peer: remote, event }) => {
                        self.observe(peer, remote, &event);
                    }
                    Effect::Event(PeerEvent::Connected { .. } | PeerEvent::Disconnected { .. }) => {
                    }
                }
            }
        }
    }

    /// Records what a peer's sessions report.
    fn observe(&mut self, peer: usize, remote: DeviceId, event: &SyncEvent) {
        let sender = self.peers.iter().position(|p| p.key.device_id() == remote).unwrap_or(peer);
        match event {
            SyncEvent::Refused { reason, .. } => {
                self.refusals.push((peer, sender, reason.to_string()));
            }
            SyncEvent::TeamInSync { .. } => {
                // The hub runs one session per device: the connection of this pair.
                let conn = self
                    .conns
                    .iter()
                    .find(|(_, c)| c.ends.contains(&peer) && c.ends.contains(&sender));
                if let Some((id, _)) = conn {
                    *self.in_sync_events.entry((*id, peer)).or_default() += 1;
                }
            }
            SyncEvent::DocChanged { .. } | SyncEvent::MembershipChanged { .. } => {}
        }
    }

    fn send(&mut self, conn: u64, end: usize, bytes: Vec<u8>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let (from, to) = (c.ends[end], c.ends[1 - end]);
        let at = (self.now + 1 + self.rng.below(DELAY_TICKS_MAX)).max(c.last_at[end]);
        c.last_at[end] = at;
        self.check_frame(from, to, &bytes);
        if self.withholding(from, &bytes) {
            self.withheld += 1;
            return;
        }
        let mut frames = vec![bytes];
        if self.attacks && from == ATTACKER && self.rng.chance(ATTACK_PERCENT) {
            frames = self.attack(to, frames.remove(0));
        }
        for bytes in frames {
            self.in_flight.push(InFlight { at, seq: self.next_seq, conn, to_end: 1 - end, bytes });
            self.next_seq += 1;
        }
    }

    /// Whether `from` withholds the frame `bytes`: a whole document, sealed or not, from a
    /// circle node or an attacker that withholds.
    fn withholding(&self, from: usize, bytes: &[u8]) -> bool {
        let circle = self.withholds && Some(from) == self.circle;
        let attacker = self.attacker_withholds && self.attacker(from);
        (circle || attacker)
            && matches!(
                Frame::decode(bytes),
                Ok(Frame::Sealed { .. } | Frame::Snapshot { .. } | Frame::SnapshotPart { .. })
            )
    }

    /// What the attacker sends `to` instead of `bytes`: the frame with one byte changed,
    /// or the frame followed by one of its own making.
    fn attack(&mut self, to: usize, mut bytes: Vec<u8>) -> Vec<Vec<u8>> {
        let plan = DocKind::Plan;
        let extra = match self.rng.below(5) {
            // Any frame, changes and signatures included: a change altered in passing
            // no longer matches its author's signature, so it is refused rather than
            // splitting honest devices on its author's sequence number.
            0 => {
                let at = self.rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 + self.rng.below(255) as u8;
                return vec![bytes];
            }
            1 => {
                // A Bloom filter with no bits per entry: Automerge would divide by zero.
                let message = vec![0x42, 0, 0, 1, 0, 3, 5, 0, 7, 0];
                let doc = plan.doc_id(self.team);
                let team = self.team;
                Frame::Sync { team, doc, kind: plan, message, signatures: vec![] }
            }
            2 => {
                let lure = self.lure_ops(to);
                Frame::Ops {
                    team: team_id(&lure[0]),
                    ops: lure.iter().map(SignedOp::to_bytes).collect(),
                }
            }
            3 => self.forged_change(),
            _ => {
                // A whole plan under the actor of its deterministic first change, which
                // anyone can take.
                let mut doc = care_core::documents::genesis(self.team, &plan)
                    .with_actor(automerge::ActorId::from(plan.doc_id(self.team).as_bytes()));
                doc.transact(|tx| {
                    use automerge::transaction::Transactable;
                    tx.put(automerge::ROOT, "forged", "by the first change's actor")
                })
                .map_err(|f| f.error)
                .expect("writes a fresh document");
                let (team, doc_id) = (self.team, plan.doc_id(self.team));
                Frame::Snapshot {
                    team,
                    doc: doc_id,
                    kind: plan,
                    bytes: doc.save(),
                    signatures: vec![],
                }
            }
        };
        vec![bytes, extra.encode()]
    }

    /// A plan change under the owner's actor id (who may write the plan), made by the
    /// attacker and signed with its own key: the owner's next sequence number, so that,
    /// were it taken, honest devices would split on the plan for good.
    fn forged_change(&mut self) -> Frame {
        let plan = DocKind::Plan;
        let (team, doc) = (self.team, plan.doc_id(self.team));
        let owner = self.peers[0].key.device_id();
        let mut forged = care_core::documents::genesis(team, &plan);
        let at = Timestamp(self.now as i64);
        let by = Author { member: self.peers[ATTACKER].member, device: owner, at };
        let text = format!("forged at {}", self.now);
        plan::set_section(&mut forged, &by, Section::Routines, &text).expect("writes");
        let change = forged.get_last_local_change().expect("a change").clone();
        self.forged.push(change.hash());
        let heads =
            TeamAccess::from_ops(team, &self.peers[ATTACKER].replica.ops(team).unwrap_or_default())
                .map(|a| a.membership().heads().to_vec())
                .unwrap_or_default();
        let signature =
            ChangeSig::sign(&self.peers[ATTACKER].key, team, doc, change.hash().0, &heads);
        let message = automerge::sync::Message {
            heads: vec![change.hash()],
            need: vec![],
            have: vec![],
            changes: automerge::sync::ChunkList::from(vec![change.raw_bytes().to_vec()]),
            flags: None,
            version: automerge::sync::MessageVersion::V1,
        }
        .encode();
        Frame::Sync { team, doc, kind: plan, message, signatures: vec![signature] }
    }

    /// The ops of a team the attacker makes, naming `to`'s device as a member's.
    fn lure_ops(&self, to: usize) -> Vec<SignedOp> {
        let attacker = &self.peers[ATTACKER];
        let create =
            create_team(&attacker.key, Timestamp(0), "Lure", attacker.member, "Sam", [9; 16]);
        let lure = team_id(&create);
        let mut ops = vec![create];
        let victim = &self.peers[to];
        let bodies = [
            OpBody::AddMember {
                member: victim.member,
                name: "Victim".into(),
                role: Role::Advocate,
                hats: vec![],
            },
            OpBody::AddDevice {
                member: victim.member,
                device: victim.key.device_id(),
                label: "phone".into(),
            },
        ];
        for body in bodies {
            let (membership, _) = Membership::from_ops(lure, &ops).expect("valid ops");
            ops.push(
                membership
                    .author_op(&attacker.key, Timestamp(1), body)
                    .expect("the lure's owner may"),
            );
        }
        ops
    }

    fn deliver_due(&mut self) {
        let now = self.now;
        let (mut due, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.in_flight).into_iter().partition(|f| f.at <= now);
        self.in_flight = rest;
        due.sort_by_key(|f| (f.at, f.seq));
        for frame in due {
            // Frames of a connection that has closed are lost with it.
            let Some(conn) = self.conns.get(&frame.conn) else { continue };
            let (peer, id) = (conn.ends[frame.to_end], conn.ids[frame.to_end]);
            let Peer { hub, replica, .. } = &mut self.peers[peer];
            hub.frame(replica, id, &frame.bytes);
            self.settle(peer);
        }
    }

    /// Writes a note or a plan section the peer's role may write.
    fn edit(&mut self, peer: usize) {
        let month = if self.rng.chance(50) { self.month } else { self.month.next() };
        let kinds = [
            DocKind::Notes { stream: NoteStream::Care, month },
            DocKind::Notes { stream: NoteStream::General, month },
            DocKind::Plan,
            DocKind::HealthPlan,
        ];
        let kind = kinds[self.rng.below(kinds.len() as u64) as usize];
        let p = &self.peers[peer];
        if p.role.access(&kind) != Access::ReadWrite {
            return;
        }
        let author = Author {
            member: p.member,
            device: p.key.device_id(),
            at: Timestamp(month.start().0 + self.now as i64),
        };
        let random = self.rng.next().to_le_bytes();
        let text = format!("edit {} by peer {peer}", self.now);
        let team = self.team;
        let written = self.peers[peer].replica.edit(team, kind, &author, &text, random);
        if let Err(e) = written {
            panic!("peer {peer} could not write {kind}: {e}");
        }
        let change = Change::Doc { team, doc: kind.doc_id(team), kind };
        let Peer { hub, replica, .. } = &mut self.peers[peer];
        hub.local_change(replica, change);
        self.settle(peer);
    }

    /// The owner removes the last member, mid-run.
    fn remove_last_member(&mut self) {
        let target = self.outsider - 1;
        let owner = &self.peers[0];
        let owner_ops = owner.replica.ops(self.team).expect("the replica answers");
        let (membership, _) = Membership::from_ops(self.team, &owner_ops).expect("valid ops");
        // The removal names what the owner holds of the device's changes: what it writes
        // after, unknown to the owner, is kept aside on every device.
        let device = self.peers[target].key.device_id();
        let held = owner.replica.docs(self.team).expect("the replica answers");
        let mut docs = Vec::new();
        for doc in held {
            let count =
                self.peers[0].replica.read_doc(self.team, doc.id, |d| changes_by(d, device));
            if let Some(count @ 1..) = count {
                docs.push((doc.id, count));
            }
        }
        let known = if docs.is_empty() { vec![] } else { vec![KnownChanges { device, docs }] };
        let body = OpBody::RemoveMemberKnowing { member: self.peers[target].member, known };
        let owner = &self.peers[0];
        let op =
            membership.author_op(&owner.key, Timestamp(1), body).expect("the owner may remove");
        // The owner renews the team keys the removed device held, as a home does.
        let mut ops = vec![op.clone()];
        for scope in KeyScope::ALL {
            let (membership, _) =
                Membership::from_ops(self.team, &ops_with(&owner_ops, &ops)).expect("valid ops");
            let holders = key_holders(&membership, scope);
            let secret: [u8; 32] = std::array::from_fn(|_| self.rng.next() as u8);
            ops.push(keys_op(&membership, &owner.key, scope, secret, &holders, &mut self.rng));
        }
        self.peers[0].replica.add_ops(self.team, &ops).expect("the replica answers");
        self.removed = Some((target, op));
        let Peer { hub, replica, .. } = &mut self.peers[0];
        hub.local_change(replica, Change::Membership { team: self.team });
        self.settle(0);
    }

    /// Checks what a frame may reveal to its receiver.
    fn check_frame(&self, from: usize, to: usize, bytes: &[u8]) {
        let frame = Frame::decode(bytes).expect("sessions send valid frames");
        let knows_removal = self.removed.as_ref().is_some_and(|(target, op)| {
            *target == to
                && self.peers[from].replica.ops(self.team).is_ok_and(|ops| ops.contains(op))
        });
        if to == self.outsider || knows_removal {
            assert!(reveals_nothing(&frame), "peer {from} sent {frame:?} to a non-member {to}");
        }
        // The circle node is handed documents sealed, never in clear; two devices that
        // hold the team's keys never seal for each other.
        let with_circle = [from, to].iter().any(|p| Some(*p) == self.circle);
        let in_clear = matches!(
            frame,
            Frame::Sync { .. } | Frame::Snapshot { .. } | Frame::SnapshotPart { .. }
        );
        let sealed = matches!(frame, Frame::Sealed { .. } | Frame::SealedHeads { .. });
        assert!(
            !(with_circle && in_clear),
            "peer {from} sent {} to peer {to} in clear",
            frame.name()
        );
        assert!(with_circle || !sealed, "peer {from} sealed for peer {to}");
        if self.peers[to].role == Role::Volunteer {
            for kind in kinds_in(&frame) {
                assert!(
                    Role::Volunteer.access(&kind) != Access::None,
                    "peer {from} sent a {kind} document to the volunteer"
                );
            }
        }
    }

    /// Both sessions of every connection between current members report the team in
    /// sync, and each has emitted TeamInSync at least once. A circle node that withholds
    /// may hold what no member can get (the last changes of a removed device), and is
    /// not held to this.
    fn assert_in_sync(&self) {
        let removed = self.removed.as_ref().map(|(p, _)| *p);
        let withholding = |p: usize| self.withholds && Some(p) == self.circle;
        for (id, conn) in &self.conns {
            if conn.ends.iter().any(|p| {
                Some(*p) == removed || *p == self.outsider || self.attacker(*p) || withholding(*p)
            }) {
                continue;
            }
            for end in 0..2 {
                let [a, b] = [conn.ends[end], conn.ends[1 - end]];
                let session = self.peers[a].hub.session(conn.ids[end]).expect("an open session");
                assert!(
                    session.shared_teams().any(|t| t == self.team),
                    "peer {a} does not sync the team with peer {b}"
                );
                assert!(
                    session.in_sync(self.team),
                    "peer {a} is not in sync with peer {b}: {session:#?}"
                );
                assert!(
                    self.in_sync_events.get(&(*id, a)).is_some_and(|n| *n > 0),
                    "peer {a} never reported TeamInSync with peer {b}"
                );
            }
        }
    }

    /// What `peer` keeps aside of `doc` and the heads of its record, under the membership
    /// it holds; `None` when nothing is kept aside.
    fn record(&mut self, peer: usize, doc: DocId, kind: DocKind) -> Option<Record> {
        let replica = &mut self.peers[peer].replica;
        let ops = replica.ops(self.team).expect("the replica answers");
        let (membership, _) = Membership::from_ops(self.team, &ops).expect("valid ops");
        replica.read_doc(self.team, doc, |d| {
            let aside = kept_aside(d, doc, &kind, &membership)?;
            Some((aside.record_heads, aside.changes.iter().map(|c| c.hash).collect()))
        })?
    }

    /// How many changes the owner keeps aside, over every document it holds.
    fn kept_aside_by_owner(&mut self) -> usize {
        let held = self.peers[0].replica.docs(self.team).expect("the replica answers");
        held.into_iter().filter_map(|d| self.record(0, d.id, d.kind)).map(|r| r.1.len()).sum()
    }

    /// Whether `peer` is the attacker in this run.
    fn attacker(&self, peer: usize) -> bool {
        self.attacks && peer == ATTACKER
    }

    /// Every current honest member holds the same heads for every document it may read,
    /// and no member holds a team but the one it belongs to.
    fn assert_converged(&mut self) {
        let removed = self.removed.as_ref().map(|(p, _)| *p);
        let members: Vec<usize> = (0..self.outsider)
            .filter(|p| Some(*p) != removed && !self.attacker(*p) && Some(*p) != self.circle)
            .collect();
        for p in members.iter().chain(&self.circle) {
            let teams = self.peers[*p].replica.teams().expect("the replica answers");
            assert_eq!(teams, vec![self.team], "peer {p} holds a team it never joined");
        }
        let mut docs: BTreeMap<DocId, DocKind> = BTreeMap::new();
        for p in &members {
            let held = self.peers[*p].replica.docs(self.team).expect("the replica answers");
            docs.extend(held.into_iter().map(|d| (d.id, d.kind)));
        }
        for (id, kind) in docs {
            let team = self.team;
            let readers: Vec<usize> = members
                .iter()
                .copied()
                .filter(|p| self.peers[*p].role.access(&kind) != Access::None)
                .collect();
            let by_peer: BTreeMap<usize, Vec<ChangeHash>> = readers
                .into_iter()
                .map(|p| (p, self.peers[p].replica.used_heads(team, id)))
                .collect();
            let heads: BTreeSet<&Vec<ChangeHash>> = by_peer.values().collect();
            assert_eq!(heads.len(), 1, "members disagree on {kind}: {by_peer:?}");
            // The circle node holds every document sealed, at the heads the members hold
            // (one that withholds may hold more than it let them have).
            if let (Some(circle), Some(agreed)) = (self.circle, heads.first()) {
                let held = self.peers[circle].replica.heads(team, id).expect("the replica answers");
                let held = without_genesis(team, &kind, held.unwrap_or_default());
                if !self.withholds {
                    assert_eq!(&&held, agreed, "the circle node holds other heads of {kind}");
                }
                let in_clear = self.peers[circle].replica.read_doc(team, id, |_| ());
                assert!(in_clear.is_none(), "the circle node holds {kind} in clear");
            }
            // The same record, and the same changes kept aside, everywhere.
            let records: BTreeMap<usize, Option<Record>> =
                by_peer.keys().map(|p| (*p, self.record(*p, id, kind))).collect();
            let distinct: BTreeSet<&Option<Record>> = records.values().collect();
            assert_eq!(distinct.len(), 1, "members disagree on {kind}'s record: {records:?}");
            for p in by_peer.keys() {
                for change in &self.forged {
                    let held = self.peers[*p].replica.holds_change(team, id, *change);
                    assert!(!held, "peer {p} took a change forged under another's actor id");
                }
            }
        }
        assert!(
            self.refusals
                .iter()
                .all(|(_, from, r)| self.attacker(*from) || !r.contains("may not write")),
            "{:?}",
            self.refusals
        );
        let outsider = &self.peers[self.outsider].replica;
        assert!(outsider.teams().expect("the replica answers").is_empty());
        assert!(self.conns.values().all(|c| !c.ends.contains(&self.outsider)));
        if let Some(target) = removed {
            // An honest member drops the removed device; the attacker, a member who may
            // well collude with it, is not held to that.
            let still: Vec<[usize; 2]> = self
                .conns
                .values()
                .filter(|c| c.ends.contains(&target) && !c.ends.iter().any(|p| self.attacker(*p)))
                .map(|c| c.ends)
                .collect();
            assert!(still.is_empty(), "the removed device {target} is still connected: {still:?}");
        }
    }
}

/// A record's heads and the changes kept aside out of it.
type Record = (Vec<ChangeHash>, Vec<ChangeHash>);

/// The ops creating the team: peer 0 owns it, each other peer is added with a device.
fn team_ops<D>(peers: &[Peer<D>], seed: u64) -> Vec<SignedOp> {
    let owner = &peers[0];
    let create =
        create_team(&owner.key, Timestamp(0), "Rosa's team", owner.member, "Rosa", nonce(seed));
    let team = team_id(&create);
    let mut ops = vec![create];
    for peer in &peers[1..] {
        let bodies = [
            OpBody::AddMember {
                member: peer.member,
                name: "Sam".into(),
                role: peer.role,
                hats: vec![],
            },
            OpBody::AddDevice {
                member: peer.member,
                device: peer.key.device_id(),
                label: "phone".into(),
            },
        ];
        for body in bodies {
            let (membership, _) = Membership::from_ops(team, &ops).expect("valid ops");
            ops.push(membership.author_op(&owner.key, Timestamp(1), body).expect("the owner may"));
        }
    }
    // The team keys, given to every device whose role reads their scope.
    let mut rng = Rng(seed ^ 0x6b65_7973);
    for scope in KeyScope::ALL {
        let (membership, _) = Membership::from_ops(team, &ops).expect("valid ops");
        let holders = key_holders(&membership, scope);
        let secret: [u8; 32] = std::array::from_fn(|_| rng.next() as u8);
        ops.push(keys_op(&membership, &owner.key, scope, secret, &holders, &mut rng));
    }
    ops
}

/// `a` and then `b`.
fn ops_with(a: &[SignedOp], b: &[SignedOp]) -> Vec<SignedOp> {
    a.iter().chain(b).cloned().collect()
}

/// The current devices whose roles hold keys of `scope`.
fn key_holders(membership: &Membership, scope: KeyScope) -> Vec<DeviceId> {
    membership
        .devices()
        .filter(|(_, member)| scope.held_by(member.role))
        .map(|(device, _)| device)
        .collect()
}

/// The owner's op giving a new current key of `scope` (its bytes `secret`) to `holders`.
fn keys_op(
    membership: &Membership,
    owner: &DeviceKey,
    scope: KeyScope,
    secret: [u8; 32],
    holders: &[DeviceId],
    rng: &mut Rng,
) -> SignedOp {
    let team = membership.team();
    let key = TeamKey::from_bytes(secret);
    let wrapped = holders
        .iter()
        .map(|device| {
            let ephemeral: [u8; 32] = std::array::from_fn(|_| rng.next() as u8);
            wrap(team, scope, &key, *device, ephemeral).expect("a device key takes a wrapped key")
        })
        .collect();
    let body = OpBody::TeamKeys { scope, key: key.id(team, scope), current: true, wrapped };
    membership.author_op(owner, Timestamp(1), body).expect("the owner gives keys")
}

fn nonce(seed: u64) -> [u8; 16] {
    let mut nonce = [0; 16];
    nonce[..8].copy_from_slice(&seed.to_le_bytes());
    nonce
}

/// A frame that names no team or document and carries no document bytes.
fn reveals_nothing(frame: &Frame) -> bool {
    match frame {
        Frame::Hello { teams, .. } => teams.is_empty(),
        Frame::Close { .. } => true,
        _ => false,
    }
}

fn kinds_in(frame: &Frame) -> Vec<DocKind> {
    match frame {
        Frame::Heads { docs, .. } => docs.iter().map(|d| d.kind).collect(),
        Frame::Sync { kind, .. }
        | Frame::Snapshot { kind, .. }
        | Frame::SnapshotPart { kind, .. }
        | Frame::Offer { kind, .. }
        | Frame::Want { kind, .. } => vec![*kind],
        _ => Vec::new(),
    }
}

/// Runs one seed over devices made by `make`, panicking with what failed.
pub fn run_seed<D: SimDevice>(seed: u64, make: MakeDevice<'_, D>) {
    let mut world = World::new(seed, make);
    world.attacks = true;
    world.run();
    if std::env::var("CARE_SIM_STATS").is_ok() {
        let docs: Vec<usize> =
            world.peers.iter().map(|p| p.replica.docs(world.team).map_or(0, |d| d.len())).collect();
        let aside = world.kept_aside_by_owner();
        eprintln!(
            "seed {seed}: {} peers, circle node {:?} (whole documents withheld by it or the \
             attacker: {}), docs held {docs:?}, conns made {}, restarts {}, refusals {:?}, \
             removed {:?}, kept aside by the owner {aside}",
            world.peers.len(),
            world.circle,
            world.withheld,
            world.next_conn,
            world.restarts,
            world.refusals,
            world.removed.as_ref().map(|r| r.0),
        );
    }
    world.assert_converged();
    world.assert_in_sync();
}

/// Runs `seeds` over devices made by `make`, on every core; a failing seed is named, to
/// replay alone with `CARE_SIM_SEED`. `CARE_SIM_SEEDS=FROM..TO` runs those seeds instead
/// (a longer search than CI's).
pub fn run_seeds<D: SimDevice>(seeds: std::ops::Range<u64>, make: MakeDevice<'_, D>) {
    if let Ok(seed) = std::env::var("CARE_SIM_SEED") {
        run_seed(seed.parse().expect("CARE_SIM_SEED is a number"), make);
        return;
    }
    let seeds = match std::env::var("CARE_SIM_SEEDS") {
        Ok(range) => {
            let (from, to) = range.split_once("..").expect("CARE_SIM_SEEDS is FROM..TO");
            from.parse().expect("a seed number")..to.parse().expect("a seed number")
        }
        Err(_) => seeds,
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    std::thread::scope(|scope| {
        for t in 0..threads {
            let seeds = seeds.clone();
            scope.spawn(move || {
                for seed in (seeds.start + t..seeds.end).step_by(threads as usize) {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_seed(seed, make)
                    }));
                    if result.is_err() {
                        panic!(
                            "simulation failed with seed {seed}; replay with CARE_SIM_SEED={seed}"
                        );
                    }
                }
            });
        }
    });
}

/// The in-memory replica of device `key`.
#[cfg(test)]
fn memory(_: usize, key: &DeviceKey, _: MemberId) -> MemoryReplica {
    MemoryReplica::with_key(key.clone())
}

#[cfg(test)]
#[test]
fn peers_converge_after_faults() {
    run_seeds(0..SEEDS_PER_RUN, &memory);
}

#[cfg(test)]
#[test]
fn a_health_plan_change_by_a_volunteer_is_refused() {
    let mut world = World::new(7, &memory);
    let volunteer = world.peers[1].key.device_id();
    let team = world.team;
    let forged = Author { member: world.peers[1].member, device: volunteer, at: Timestamp(1_000) };
    // The advocate's copy carries a change under the volunteer's key.
    let doc = world.peers[2].replica.doc_mut(team, DocKind::HealthPlan);
    plan::set_section(doc, &forged, Section::Medication, "forged").expect("writes");
    world.connect(0, 2);
    while !world.in_flight.is_empty() {
        world.deliver_due();
        world.now += 1;
    }
    assert!(
        world.refusals.iter().any(|(p, _, r)| *p == 0 && r.contains("may not write")),
        "{:?}",
        world.refusals
    );
    let held = world.peers[0].replica.doc(team, DocKind::HealthPlan.doc_id(team));
    assert!(
        held.is_none_or(|d| plan::section(d, Section::Medication).ok() != Some("forged".into()))
    );
}
