//! One sync session with one remote device: a state machine with no IO. Frames and local
//! events go in; frames to send, a close and events for the application come out.

use std::collections::{BTreeMap, BTreeSet};

use automerge::sync::Message;
use automerge::{ActorId, Automerge, ChangeHash};
use bytes::Bytes;
use care_core::documents::ReceivedRules;
use care_core::membership::OPS_MAX;
use care_core::{ChangeSig, DeviceId, DocId, DocKind, SignedOp, TeamId};

use crate::access::{TeamAccess, check_authors, ops_hash, truncate};
use crate::agreed::{answer_to_snapshot, state_after_sending};
use crate::authorship::{check_signed, check_signed_document};
use crate::chunks::{
    INFLATED_BYTES_MAX, changes_in, changes_of, checked_changes_in, inflated_len, whole_doc,
};
use crate::close::CloseReason;
use crate::frame::{
    CLOSE_REASON_BYTES_MAX, DOCS_PER_FRAME_MAX, DocHeads, Encoded, FRAME_BYTES_MAX, Frame,
    HEADS_PER_DOC_MAX, OPS_PER_FRAME_MAX, PROTOCOL_VERSION, PartRef, SIGNATURES_PER_FRAME_MAX,
    SNAPSHOT_BYTES_MAX, SNAPSHOT_PART_BYTES, TEAMS_PER_HELLO_MAX, TeamSummary,
};
use crate::message::check_sync_message;
use crate::refusal::Refusal;
use crate::replica::{Import, Replica};

#[path = "session_sealed.rs"]
mod sealed_exchange;
use sealed_exchange::{PartialSealed, SealedFrame};

/// Most documents of one team a peer can make this device hold: a team has a handful of
/// documents plus three a month (notes, general notes, rota), about 400 in ten years.
pub const DOCS_PER_TEAM_MAX: usize = 2048;
/// Most months after this device's current month that a document received from a peer
/// may be of: a rota is planned ahead, notes are written now.
pub const MONTHS_AHEAD_MAX: i32 = 24;
/// Largest first frame (the Hello) read from a device before it is known to share a
/// team: a Hello of [`TEAMS_PER_HELLO_MAX`] summaries and a little room.
pub const HELLO_FRAME_BYTES_MAX: usize = 64 + TEAMS_PER_HELLO_MAX * 48;

/// What a session asks its driver to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Write this encoded frame to the connection (behind a length prefix, see
    /// [`length_prefix`](crate::frame::length_prefix)).
    Send(Encoded),
    /// Close the connection after writing what came before; the session is over.
    Close {
        /// Why.
        reason: CloseReason,
    },
    /// Tell the application (and the other sessions) what happened.
    Event(SyncEvent),
    /// The remote offers a whole document this device lacks ([`Frame::Offer`]); only
    /// from a session told to [`defer_offers`](Session::defer_offers). The driver asks for it
    /// with [`Session::want`] once no other session is bringing it.
    Offered {
        /// The team.
        team: TeamId,
        /// The document.
        doc: DocId,
        /// Its kind.
        kind: DocKind,
    },
}

/// Something the application, and the device's other sessions, should know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncEvent {
    /// A document changed by changes from the remote device: the driver calls
    /// [`Session::local_change`] on its other sessions to pass them on.
    DocChanged {
        /// The team.
        team: TeamId,
        /// The document.
        doc: DocId,
        /// Its kind.
        kind: DocKind,
    },
    /// The team's membership changed by ops from the remote device: the driver calls
    /// [`Session::membership_changed`] on its other sessions.
    MembershipChanged {
        /// The team.
        team: TeamId,
    },
    /// Something the remote device sent was refused and not applied: the remote is
    /// misbehaving (or this device is missing membership ops it has). The session goes on
    /// for everything else.
    Refused {
        /// The team.
        team: TeamId,
        /// The document, when the refusal is about one.
        doc: Option<DocId>,
        /// Why.
        reason: Refusal,
    },
    /// Every document of the team that both devices may read is known to be the same on
    /// both, under the same membership: the Hello summaries agreed, or an exchange that
    /// moved data has finished. Emitted once each time the team comes into sync, so again
    /// after later live changes settle (see [`Session::in_sync`]).
    TeamInSync {
        /// The team.
        team: TeamId,
    },
}

/// The sync protocol with one remote device over one connection.
///
/// The driver calls [`start`](Self::start) once, then [`handle_frame`](Self::handle_frame)
/// for each frame received, [`local_change`](Self::local_change) after each local write
/// and [`membership_changed`](Self::membership_changed) after new membership ops, and
/// carries out the returned [`Output`]s in order.
#[derive(Debug)]
pub struct Session {
    local: DeviceId,
    remote: DeviceId,
    phase: Phase,
    /// The teams in which both devices are current devices of members.
    shared: BTreeMap<TeamId, TeamAccess>,
    /// What is known of each shared team's agreement with the remote device.
    progress: BTreeMap<TeamId, Progress>,
    /// The rules received changes must keep, per document, prepared on first use.
    rules: BTreeMap<DocId, ReceivedRules>,
    /// A whole document arriving in parts, until its last part.
    partial: Option<PartialSnapshot>,
    /// Sealed documents of one document arriving together, until the last.
    partial_sealed: Option<PartialSealed>,
    /// Whether offers of documents this device lacks go to the driver
    /// ([`Output::Offered`]) instead of being answered at once.
    defer_offers: bool,
}

/// The parts of a whole document received so far.
#[derive(Debug)]
struct PartialSnapshot {
    team: TeamId,
    doc: DocId,
    kind: DocKind,
    total: u32,
    /// The number of the next part expected.
    next: u32,
    bytes: Vec<u8>,
    signatures: Vec<ChangeSig>,
    /// What the parts so far make this device hold: their bytes and their signatures'.
    held: usize,
}

/// What one session knows of whether a shared team agrees with the remote device.
///
/// The remote describes every document in a Hello summary or a Heads frame, and one
/// document in each Sync or Snapshot frame; our side is known from our replica and from
/// the sync messages we generate. Each frame updates one document, so the work per frame
/// does not grow with the team.
#[derive(Debug, Default)]
struct Progress {
    /// Whether the remote has described all its documents (a matching Hello summary or
    /// a Heads frame).
    described: bool,
    /// The hash of the membership ops the remote held when it last described its
    /// documents: which documents both may read depends on it.
    their_ops: Option<[u8; 16]>,
    /// Ops received since the remote's last Heads frame, which follows them.
    ops_received: BTreeMap<care_core::OpHash, SignedOp>,
    /// Per document, our heads and the remote's, as last known (each sorted).
    heads: BTreeMap<DocId, KnownHeads>,
    /// The documents whose known heads differ.
    pending: BTreeSet<DocId>,
    /// Whether the team was in sync when last checked (and TeamInSync was emitted).
    in_sync: bool,
    /// Whether we have sent the remote a Heads frame of the team.
    heads_sent: bool,
    /// The hash of the ops we last told the remote we hold (in our Hello or Ops frames).
    ops_announced: Option<[u8; 16]>,
    /// Per document, the heads we last told the remote we hold (in a sync message, a
    /// whole document, a Heads frame or a matching Hello); none told reads as empty.
    told: BTreeMap<DocId, Vec<ChangeHash>>,
    /// Documents sent whole, so that the next change to one before the remote answers
    /// goes by the sync protocol, not whole again.
    snapshots_sent: BTreeSet<DocId>,
    /// Per document offered to the remote ([`Frame::Offer`]), the heads offered: the
    /// same heads are offered once.
    offered: BTreeMap<DocId, Vec<ChangeHash>>,
    /// Per document the remote asked for and was sent whole, our heads then: the same
    /// request is answered once.
    answered: BTreeMap<DocId, Vec<ChangeHash>>,
    /// Documents the remote asked for that this device could not pass on yet (still
    /// checking them): sent whole when they are.
    asked: BTreeSet<DocId>,
    /// Documents this device asked the remote for ([`Frame::Want`]), until they arrive.
    wanted: BTreeSet<DocId>,
    /// Documents the remote sent whole that the replica is still checking: not in sync
    /// until the verdict (a local change of the document) is in.
    checking: BTreeSet<DocId>,
    /// Per document, what was last sent sealed: for the remote's heads, at ours, whole
    /// wanted or not; the same request is answered once.
    sealed_sent: BTreeMap<DocId, (Vec<ChangeHash>, Vec<ChangeHash>, bool)>,
}

/// Our heads and the remote's of one document, as last known; empty when unknown or not
/// held.
#[derive(Debug, Default)]
struct KnownHeads {
    ours: Vec<ChangeHash>,
    theirs: Vec<ChangeHash>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Not started.
    New,
    /// Our Hello is sent; theirs has not arrived.
    HelloSent,
    /// Both Hellos exchanged: catching up, then live.
    Live,
    /// Over.
    Closed,
}

/// Largest sync frame sent as one. A sync message that would make a larger frame (the
/// changes of a long time apart) is replaced by the whole document, sent in parts and
/// merged by the remote. Small under test, so that tests send whole documents this way.
pub const SYNC_FRAME_BYTES_MAX: usize =
    if cfg!(test) { 16 << 10 } else { FRAME_BYTES_MAX - (1 << 20) };

/// What [`Session::send_whole`] did.
enum Whole {
    /// The document went whole; its heads.
    Sent(Vec<ChangeHash>),
    /// It is larger than [`SNAPSHOT_BYTES_MAX`]; nothing was sent.
    TooLarge,
    /// This device holds no whole document to send.
    NotHeld,
}

/// A whole document's bytes as the replica keeps them, shared by the frames of its parts.
struct SharedBytes(std::sync::Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// What a [`Frame::SnapshotPart`] says of itself.
struct Part {
    team: TeamId,
    doc: DocId,
    kind: DocKind,
    index: u32,
    total: u32,
}

/// The result of a step: `Err` holds the reason to close the session with.
type Step = Result<(), CloseReason>;

impl Session {
    /// A session of `local` with `remote`, whose key the connection authenticated.
    pub fn new(local: DeviceId, remote: DeviceId) -> Session {
        Session {
            local,
            remote,
            phase: Phase::New,
            shared: BTreeMap::new(),
            progress: BTreeMap::new(),
            rules: BTreeMap::new(),
            partial: None,
            partial_sealed: None,
            defer_offers: false,
        }
    }

    /// From now on, an offer of a document this device lacks is reported to the driver
    /// ([`Output::Offered`]) rather than answered at once: a hub, which sees the device's
    /// other sessions, asks for the document ([`Session::want`]) only once none of them is
    /// bringing it. A session on its own asks at once.
    pub fn defer_offers(&mut self) {
        self.defer_offers = true;
    }

    /// Whether `doc` is on its way from the remote without being asked for again: asked
    /// for whole and not arrived, arriving, being checked, or held by the team's circle
    /// node, which sends a device what it lacks unasked.
    pub fn brings(&self, team: TeamId, doc: DocId) -> bool {
        if self.phase != Phase::Live {
            return false;
        }
        let Some(progress) = self.progress.get(&team) else {
            return false;
        };
        progress.wanted.contains(&doc)
            || progress.checking.contains(&doc)
            || self.partial.as_ref().is_some_and(|p| p.team == team && p.doc == doc)
            || self.partial_sealed_of(team, doc)
            || (self.sealed(team)
                && !self.local_is_relay(team)
                && progress
                    .heads
                    .get(&doc)
                    .is_some_and(|known| !known.theirs.is_empty() && known.ours.is_empty()))
    }

    /// Asks the remote for the whole `doc`, which it offered, unless this device has
    /// asked already; if this device holds it by now, the sync protocol settles the rest.
    pub fn want<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
    ) -> Vec<Output> {
        self.run(replica, |s, r, out| {
            if s.phase != Phase::Live || s.check_clear(team, &kind).is_err() {
                return Ok(());
            }
            if r.holds(team, doc).map_err(store)? {
                return s.sync_held(r, team, doc, kind, out);
            }
            s.ask_whole(team, doc, kind, out);
            Ok(())
        })
    }

    /// The remote device.
    pub fn remote(&self) -> DeviceId {
        self.remote
    }

    /// Whether the session is over.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The teams this session syncs.
    pub fn shared_teams(&self) -> impl Iterator<Item = TeamId> + '_ {
        self.shared.keys().copied()
    }

    /// Whether every document of `team` that both devices may read is known to agree,
    /// under the same membership: true from each [`SyncEvent::TeamInSync`] until a
    /// change on either side.
    pub fn in_sync(&self, team: TeamId) -> bool {
        self.shared.contains_key(&team) && self.progress.get(&team).is_some_and(|p| p.in_sync)
    }

    /// Starts the session: sends a Hello naming only the teams the remote device is a
    /// current device of (an empty Hello to anyone else).
    pub fn start<R: Replica>(&mut self, replica: &mut R) -> Vec<Output> {
        self.run(replica, |s, r, out| s.send_hello(r, out))
    }

    /// The largest frame this session reads next: [`HELLO_FRAME_BYTES_MAX`] until the
    /// remote's Hello has shown that the two devices share a team, [`FRAME_BYTES_MAX`]
    /// after. A driver reads no frame past the Hello until [`Self::admitted`].
    pub fn next_frame_bytes_max(&self) -> usize {
        if self.admitted() { FRAME_BYTES_MAX } else { HELLO_FRAME_BYTES_MAX }
    }

    /// Whether the remote's Hello has arrived and the two devices share a team: until
    /// then nothing but the Hello is read from the remote.
    pub fn admitted(&self) -> bool {
        self.phase == Phase::Live && !self.shared.is_empty()
    }

    /// Handles one frame received from the remote device.
    pub fn handle_frame<R: Replica>(&mut self, replica: &mut R, bytes: &[u8]) -> Vec<Output> {
        self.run(replica, |s, r, out| {
            if s.phase == Phase::New {
                s.send_hello(r, out)?;
            }
            if !s.admitted() && bytes.len() > HELLO_FRAME_BYTES_MAX {
                return Err(CloseReason::Protocol(format!(
                    "device {} sent a frame of {} bytes before sharing a team, more than {}",
                    s.remote,
                    bytes.len(),
                    HELLO_FRAME_BYTES_MAX
                )));
            }
            let frame = Frame::decode(bytes)
                .map_err(|e| CloseReason::Protocol(format!("device {} sent {e}", s.remote)))?;
            s.on_frame(r, frame, out)
        })
    }

    /// Pushes a local change of `doc` to the remote device, if it may read it.
    pub fn local_change<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
    ) -> Vec<Output> {
        self.run(replica, |s, r, out| {
            let checked = s.progress.get_mut(&team).is_some_and(|p| p.checking.remove(&doc));
            if checked {
                s.on_checked(r, team, doc, kind, out)?;
            }
            if s.phase == Phase::Live && s.both_read(team, &kind) && s.sealed(team) {
                let theirs = s.progress.get(&team).and_then(|p| p.heads.get(&doc));
                let theirs = theirs.map(|known| known.theirs.clone()).unwrap_or_default();
                s.send_sealed(r, team, doc, kind, &theirs, false, out)?;
                s.settle(team, out);
            } else if s.phase == Phase::Live && s.both_read(team, &kind) {
                // A document the remote asked for, which this device could not pass on
                // until now, goes whole; one the remote has none of (one this device just
                // received whole, say) is offered, to go whole if the remote wants it (it
                // may be receiving it from another device already).
                let asked = s.progress.get_mut(&team).is_some_and(|p| p.asked.remove(&doc));
                let sent_whole = asked && s.answer_want(r, team, doc, kind, out)?;
                if sent_whole {
                    // Told whole.
                } else if s.lacks_whole(team, doc) {
                    s.send_offer(r, team, doc, kind, out)?;
                } else {
                    let ours = s.send_sync(r, team, doc, kind, out)?;
                    s.note_heads(team, doc, ours, None);
                }
                s.settle(team, out);
            }
            Ok(())
        })
    }

    /// Re-reads the team's membership after it changed: closes the session when the
    /// remote device is no longer a current device of any shared team, otherwise sends
    /// the ops and the heads the remote device may now read.
    pub fn membership_changed<R: Replica>(&mut self, replica: &mut R, team: TeamId) -> Vec<Output> {
        self.run(replica, |s, r, out| match s.team_access(r, team, out) {
            Some(access) => s.adopt(r, team, access, out),
            None => s.drop_team(team),
        })
    }

    /// Ends the session from this side with `reason`.
    pub fn close<R: Replica>(&mut self, replica: &mut R, reason: CloseReason) -> Vec<Output> {
        self.run(replica, |_, _, _| Err(reason))
    }

    /// Runs one step; on failure sends a Close frame and ends the session.
    fn run<R: Replica>(
        &mut self,
        replica: &mut R,
        step: impl FnOnce(&mut Self, &mut R, &mut Vec<Output>) -> Step,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        if self.phase == Phase::Closed {
            return out;
        }
        if let Err(reason) = step(self, replica, &mut out) {
            let mut short = reason.to_string();
            truncate_utf8(&mut short, CLOSE_REASON_BYTES_MAX);
            out.push(Output::Send(Frame::Close { reason: short }.encode().into()));
            self.end(replica, reason, &mut out);
        }
        out
    }

    fn end<R: Replica>(&mut self, replica: &mut R, reason: CloseReason, out: &mut Vec<Output>) {
        self.phase = Phase::Closed;
        self.shared.clear();
        self.progress.clear();
        self.partial = None;
        self.partial_sealed = None;
        replica.reset_sync_state(self.remote);
        out.push(Output::Close { reason });
    }

    fn send_hello<R: Replica>(&mut self, replica: &mut R, out: &mut Vec<Output>) -> Step {
        if self.phase != Phase::New {
            return Ok(());
        }
        replica.reset_sync_state(self.remote);
        for team in replica.teams_with(self.remote).map_err(store)? {
            let Some(access) = self.team_access(replica, team, out) else {
                continue;
            };
            if self.both_current(&access) && self.shared.len() < TEAMS_PER_HELLO_MAX {
                self.shared.insert(team, access);
            }
        }
        let mut teams = Vec::with_capacity(self.shared.len());
        for (team, access) in &self.shared {
            let docs_hash = docs_hash(&self.readable_docs(replica, *team, access)?);
            teams.push(TeamSummary { team: *team, ops_hash: access.ops_hash(), docs_hash });
        }
        for summary in &teams {
            self.progress.entry(summary.team).or_default().ops_announced = Some(summary.ops_hash);
        }
        out.push(Output::Send(Frame::Hello { version: PROTOCOL_VERSION, teams }.encode().into()));
        self.phase = Phase::HelloSent;
        Ok(())
    }

    fn on_frame<R: Replica>(&mut self, r: &mut R, frame: Frame, out: &mut Vec<Output>) -> Step {
        let remote = self.remote;
        match frame {
            Frame::Close { reason } => {
                self.end(r, CloseReason::ByRemote { device: remote, reason }, out);
                Ok(())
            }
            Frame::Hello { version, teams } => self.on_hello(r, version, &teams, out),
            other if self.phase != Phase::Live => Err(CloseReason::Protocol(format!(
                "device {remote} sent {} before Hello",
                other.name()
            ))),
            Frame::Ops { team, ops } => self.on_ops(r, team, &ops, out),
            Frame::Heads { team, docs } => self.on_heads(r, team, &docs, out),
            Frame::Sync { team, doc, kind, message, signatures } => {
                self.on_sync(r, team, doc, kind, &message, &signatures, out)
            }
            Frame::Snapshot { team, doc, kind, bytes, signatures } => {
                if let Err(reason) = self.check_clear(team, &kind) {
                    self.refuse(team, Some(doc), reason, out);
                    return Ok(());
                }
                self.arrived(team, doc);
                self.on_snapshot(r, team, doc, kind, bytes, &signatures, out)
            }
            Frame::SnapshotPart { team, doc, kind, index, total, bytes, signatures } => {
                let part = Part { team, doc, kind, index, total };
                self.on_snapshot_part(r, part, bytes, signatures, out)
            }
            Frame::Sealed { team, doc, kind, index, total, heads, sealed } => {
                let frame = SealedFrame { team, doc, kind, index, total, heads };
                self.on_sealed(r, frame, *sealed, out)
            }
            Frame::SealedHeads { team, doc, kind, heads, whole_wanted } => {
                self.on_sealed_heads(r, team, doc, kind, heads, whole_wanted, out)
            }
            Frame::Offer { team, doc, kind, heads } => {
                self.on_offer(r, team, doc, kind, heads, out)
            }
            Frame::Want { team, doc, kind } => self.on_want(r, team, doc, kind, out),
        }
    }

    fn on_hello<R: Replica>(
        &mut self,
        replica: &mut R,
        version: u32,
        teams: &[TeamSummary],
        out: &mut Vec<Output>,
    ) -> Step {
        if version != PROTOCOL_VERSION {
            return Err(CloseReason::Protocol(format!(
                "peer speaks care/sync version {version}, this device speaks {PROTOCOL_VERSION}"
            )));
        }
        if self.phase == Phase::Live {
            return Err(CloseReason::Protocol(format!(
                "device {} sent a second Hello",
                self.remote
            )));
        }
        self.phase = Phase::Live;
        let theirs: BTreeMap<TeamId, &TeamSummary> = teams.iter().map(|t| (t.team, t)).collect();
        let shared: Vec<TeamId> = self.shared.keys().copied().collect();
        for team in shared {
            self.answer_summary(replica, team, theirs.get(&team).copied(), out)?;
        }
        // A team the remote names that is held here but not shared: the remote is not a
        // current device of it (or this device is not). Reported; nothing of it is read.
        let held: BTreeSet<TeamId> = replica.teams().map_err(store)?.into_iter().collect();
        for team in theirs.keys().filter(|t| !self.shared.contains_key(t)) {
            if held.contains(team) {
                let reason = Refusal::NotCurrent { device: self.remote, team: *team };
                out.push(Output::Event(SyncEvent::Refused { team: *team, doc: None, reason }));
            }
        }
        if self.shared.is_empty() {
            return Err(CloseReason::NothingShared { device: self.remote });
        }
        Ok(())
    }

    /// Compares the remote's summary of a shared team with ours and sends what differs.
    fn answer_summary<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        theirs: Option<&TeamSummary>,
        out: &mut Vec<Output>,
    ) -> Step {
        let Some(access) = self.shared.get(&team) else {
            return Ok(());
        };
        self.progress.entry(team).or_default().their_ops = theirs.map(|t| t.ops_hash);
        let Some(t) = theirs.filter(|t| t.ops_hash == access.ops_hash()) else {
            self.send_ops(replica, team, out)?;
            return self.send_heads(replica, team, out);
        };
        let docs = self.readable_docs(replica, team, access)?;
        if docs_hash(&docs) != t.docs_hash {
            return self.send_heads(replica, team, out);
        }
        let progress = self.progress.entry(team).or_default();
        progress.described = true;
        progress.pending.clear();
        progress.told = docs.iter().map(|(id, (_, heads))| (*id, heads.clone())).collect();
        progress.heads = docs
            .into_iter()
            .map(|(id, (_, heads))| (id, KnownHeads { theirs: heads.clone(), ours: heads }))
            .collect();
        self.settle(team, out);
        Ok(())
    }

    fn on_ops<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        ops: &[Vec<u8>],
        out: &mut Vec<Output>,
    ) -> Step {
        if !self.shared.contains_key(&team) {
            // Never parsed: ops make no device hold a team, nor join one it holds.
            self.refuse(team, None, Refusal::NotCurrent { device: self.remote, team }, out);
            return Ok(());
        }
        let mut received = Vec::with_capacity(ops.len());
        let mut undecodable = Vec::new();
        for bytes in ops {
            match SignedOp::from_bytes(bytes) {
                Ok(op) => received.push(op),
                Err(e) => undecodable.push(e.to_string()),
            }
        }
        if let Some(first) = undecodable.first() {
            let reason = Refusal::InvalidOps { count: undecodable.len(), first: first.clone() };
            self.refuse(team, None, reason, out);
        }
        let stored = self.merge_ops(replica, team, &received, out)?;
        if self.shared.contains_key(&team) {
            let progress = self.progress.entry(team).or_default();
            progress.ops_received.extend(stored.into_iter().map(|op| (op.hash(), op)));
        }
        Ok(())
    }

    /// Stores the ops the remote sent that are new here and valid ops of the team's log
    /// (signature, known predecessors, the author's right at that point, the team's
    /// limits), and adopts the membership they make. Ops that are not valid are neither
    /// stored nor passed on, and are reported. Returns the ops received that are now held
    /// here.
    fn merge_ops<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        received: &[SignedOp],
        out: &mut Vec<Output>,
    ) -> Result<Vec<SignedOp>, CloseReason> {
        let held = replica.ops(team).map_err(store)?;
        let known: BTreeSet<_> = held.iter().map(SignedOp::hash).collect();
        let new: Vec<SignedOp> =
            received.iter().filter(|op| !known.contains(&op.hash())).cloned().collect();
        let mut kept: Vec<SignedOp> =
            received.iter().filter(|op| known.contains(&op.hash())).cloned().collect();
        if new.is_empty() {
            return Ok(kept);
        }
        if held.len() + new.len() > OPS_MAX {
            let reason =
                Refusal::over_limit("membership ops of a team", held.len() + new.len(), OPS_MAX);
            self.refuse(team, None, reason, out);
            return Ok(kept);
        }
        let union: Vec<SignedOp> = held.iter().chain(&new).cloned().collect();
        let mut access = match TeamAccess::from_ops(team, &union) {
            Ok(access) => access,
            Err(e) => {
                let reason = Refusal::TeamUnreadable { team, why: e.to_string() };
                self.refuse(team, None, reason, out);
                return Ok(kept);
            }
        };
        let (valid, invalid): (Vec<SignedOp>, Vec<SignedOp>) =
            new.into_iter().partition(|op| access.rejected(op.hash()).is_none());
        if let Some(first) = invalid.first().and_then(|op| access.rejected(op.hash())) {
            let reason = Refusal::InvalidOps { count: invalid.len(), first: first.to_string() };
            self.refuse(team, None, reason, out);
            // The membership of what is stored: the log without the invalid ops.
            let stored: Vec<SignedOp> = held.iter().chain(&valid).cloned().collect();
            access = TeamAccess::from_ops(team, &stored).map_err(store)?;
        }
        if valid.is_empty() {
            return Ok(kept);
        }
        replica.add_ops(team, &valid).map_err(store)?;
        kept.extend(valid);
        out.push(Output::Event(SyncEvent::MembershipChanged { team }));
        self.adopt(replica, team, access, out)?;
        Ok(kept)
    }

    /// Reports a refusal of something the remote sent.
    fn refuse(&self, team: TeamId, doc: Option<DocId>, reason: Refusal, out: &mut Vec<Output>) {
        out.push(Output::Event(SyncEvent::Refused { team, doc, reason }));
    }

    /// Stops syncing a team whose membership cannot be read here; the session ends if it
    /// shared nothing else.
    fn drop_team(&mut self, team: TeamId) -> Step {
        let was_shared = self.shared.remove(&team).is_some();
        self.progress.remove(&team);
        if was_shared && self.shared.is_empty() {
            return Err(CloseReason::TeamUnreadable(team));
        }
        Ok(())
    }

    /// Takes a team's new membership: keeps syncing it (sending ops and heads) while
    /// both devices are current, stops otherwise.
    fn adopt<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        access: TeamAccess,
        out: &mut Vec<Output>,
    ) -> Step {
        let was_shared = self.shared.contains_key(&team);
        if !self.both_current(&access) {
            self.shared.remove(&team);
            self.progress.remove(&team);
            if was_shared && self.shared.is_empty() {
                return Err(CloseReason::Removed { device: self.remote, team });
            }
            return Ok(());
        }
        self.shared.insert(team, access);
        // Under new ops the team is out of sync until the remote describes its documents
        // under the same ops.
        self.settle(team, out);
        if self.phase != Phase::Live {
            return Ok(());
        }
        self.send_ops(replica, team, out)?;
        self.send_heads(replica, team, out)
    }

    fn on_heads<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        theirs: &[DocHeads],
        out: &mut Vec<Output>,
    ) -> Step {
        let Some(access) = self.shared.get(&team) else {
            return Ok(());
        };
        let ours = self.readable_docs(replica, team, access)?;
        let their_ids: BTreeSet<DocId> = theirs.iter().map(|d| d.id).collect();
        let sealed = self.sealed(team);
        // A new description of the remote's documents: what was sealed for it before (and
        // perhaps refused, under a membership it did not hold yet) may be sent again.
        if let Some(progress) = self.progress.get_mut(&team) {
            progress.sealed_sent.clear();
        }
        for d in theirs {
            let differs = ours.get(&d.id).is_some_and(|(_, heads)| heads_bytes(heads) != d.heads);
            if differs && self.both_read(team, &d.kind) {
                if sealed {
                    let their_heads = sorted(d.heads.iter().map(|h| ChangeHash(*h)).collect());
                    self.send_sealed(replica, team, d.id, d.kind, &their_heads, false, out)?;
                } else {
                    self.send_sync(replica, team, d.id, d.kind, out)?;
                }
            }
        }
        for (id, (kind, _)) in ours.iter().filter(|(id, _)| !their_ids.contains(id)) {
            if sealed {
                self.send_sealed(replica, team, *id, *kind, &[], false, out)?;
            } else {
                self.send_offer(replica, team, *id, *kind, out)?;
            }
        }
        self.note_described(team, ours, theirs);
        self.settle(team, out);
        // The remote found a difference where we found none (our Hello was out of date
        // by the time theirs arrived): describe the team in turn, so that it too learns
        // when the team is in sync.
        if !self.progress.get(&team).is_some_and(|p| p.heads_sent) {
            self.send_heads(replica, team, out)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn on_sync<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        message: &[u8],
        signatures: &[ChangeSig],
        out: &mut Vec<Output>,
    ) -> Step {
        // The sender's right first: nothing is parsed for a team or kind it may not send.
        if let Err(reason) = self.check_clear(team, &kind) {
            self.refuse(team, Some(doc), reason, out);
            return Ok(());
        }
        let checked = check_sync_message(message).and_then(|()| {
            Message::decode(message)
                .map_err(|e| Refusal::Malformed(format!("a malformed sync message: {e}")))
        });
        let message = match checked {
            Ok(message) => message,
            Err(reason) => {
                self.refuse(team, Some(doc), reason, out);
                return Ok(());
            }
        };
        let theirs = sorted(message.heads.clone());
        let mut verdict = Ok(());
        let mut changes = Vec::new();
        let rules = match message.changes.is_empty() {
            true => None,
            false => Some(
                self.rules.entry(doc).or_insert_with(|| ReceivedRules::new(team, &kind)).clone(),
            ),
        };
        let mut broken: Option<String> = None;
        for chunk in message.changes.iter() {
            let found = checked_changes_in(chunk, |change| match &rules {
                Some(rules) => rules.check(change).inspect_err(|why| broken = Some(why.clone())),
                None => Ok(()),
            });
            match found {
                Ok(found) => changes.extend(found.into_iter().map(|(a, h)| (a, Some(h)))),
                Err(why) => {
                    verdict = Err(match broken.take() {
                        Some(rule) => Refusal::BreaksDocumentRules(rule),
                        None => Refusal::Malformed(why),
                    });
                    break;
                }
            }
        }
        let verdict = verdict
            .and_then(|()| self.check_authors(team, &kind, &changes))
            .and_then(|()| self.check_signed(team, doc, &kind, &changes, signatures))
            .and_then(|()| {
                let held = replica.holds(team, doc).unwrap_or(true);
                self.check_room(replica, team, held, &kind)
            });
        if let Err(reason) = verdict {
            self.refused(team, doc, theirs, reason, out);
            return Ok(());
        }
        let received = replica
            .receive_sync_message(self.remote, team, doc, kind, message, signatures)
            .map_err(store)?;
        match received {
            Ok(true) => out.push(Output::Event(SyncEvent::DocChanged { team, doc, kind })),
            Ok(false) => {}
            Err(reason) => {
                self.refused(team, doc, theirs, reason, out);
                return Ok(());
            }
        }
        // Right after a message is received nothing is in flight, so Automerge stays
        // silent only when the remote's heads equal ours and nothing is left to send.
        let ours = match self.send_sync(replica, team, doc, kind, out)? {
            Some(ours) => ours,
            None => {
                self.tell_agreement(replica, team, doc, kind, &theirs, out)?;
                theirs.clone()
            }
        };
        self.note_heads(team, doc, Some(ours), Some(theirs));
        self.settle(team, out);
        Ok(())
    }

    /// Tells the remote that this device holds `theirs`, the heads it just sent, when
    /// Automerge stays silent but the remote was last told other heads. Automerge keeps
    /// quiet when a message names heads the receiver already holds; if the receiver came
    /// by them from a third device, the sender would never learn that the two agree.
    fn tell_agreement<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        theirs: &[ChangeHash],
        out: &mut Vec<Output>,
    ) -> Step {
        let told = self.progress.get(&team).and_then(|p| p.told.get(&doc));
        if theirs.is_empty() || told.is_some_and(|told| told == theirs) {
            return Ok(());
        }
        // Only heads this device really holds, read from its summary of the one document
        // (a member repeating such messages costs this device one small read each).
        let held = replica.heads(team, doc).map_err(store)?;
        if held.is_none_or(|heads| sorted(heads) != theirs) {
            return Ok(());
        }
        let (_, message) = answer_to_snapshot(theirs);
        let message = message.encode();
        let frame = Frame::Sync { team, doc, kind, message, signatures: Vec::new() };
        out.push(Output::Send(frame.encode().into()));
        self.progress.entry(team).or_default().told.insert(doc, theirs.to_vec());
        Ok(())
    }

    /// A whole document. One this device lacks is stored as received, unloaded (see
    /// [`whole_doc`]); one it holds is loaded, checked and merged.
    #[allow(clippy::too_many_arguments)]
    fn on_snapshot<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        bytes: Vec<u8>,
        signatures: &[ChangeSig],
        out: &mut Vec<Output>,
    ) -> Step {
        if let Err(reason) = self.check_sender(team, &kind) {
            self.refuse(team, Some(doc), reason, out);
            return Ok(());
        }
        if replica.holds(team, doc).map_err(store)? {
            return self.merge_snapshot(replica, team, doc, kind, &bytes, signatures, out);
        }
        let whole = match whole_doc(&bytes) {
            Ok(whole) => whole,
            Err(why) => {
                let reason = Refusal::Malformed(format!("a snapshot that does not read: {why}"));
                self.refuse(team, Some(doc), reason, out);
                return Ok(());
            }
        };
        let verdict = self
            .check_authors(team, &kind, &whole.authors)
            .and_then(|()| self.check_room(replica, team, false, &kind));
        if let Err(reason) = verdict {
            self.refused(team, doc, whole.heads, reason, out);
            return Ok(());
        }
        let imported = replica
            .import_snapshot(team, doc, kind, bytes, &whole.heads, signatures)
            .map_err(store)?;
        let checking = match imported {
            Import::Stored => false,
            Import::Checking => true,
            Import::Held(bytes) => {
                return self.merge_snapshot(replica, team, doc, kind, &bytes, signatures, out);
            }
        };
        if !checking {
            out.push(Output::Event(SyncEvent::DocChanged { team, doc, kind }));
        }
        // Tell the remote that this device now holds its heads, as Automerge's sync
        // protocol would, and keep the sync state that message leaves behind (the
        // circle node is told in a sealed exchange's own answer).
        if !self.sealed(team) {
            let (state, message) = answer_to_snapshot(&whole.heads);
            replica.set_sync_state(self.remote, doc, state);
            let message = message.encode();
            out.push(Output::Send(
                Frame::Sync { team, doc, kind, message, signatures: Vec::new() }.encode().into(),
            ));
            self.progress.entry(team).or_default().told.insert(doc, whole.heads.clone());
        }
        // A document that arrived whole while the team was in sync (passed on live) is
        // a change like any other: the team comes into sync again with it.
        if let Some(progress) = self.progress.get_mut(&team) {
            progress.in_sync = false;
        }
        if checking {
            // Not ours to count until the replica's check passes.
            self.progress.entry(team).or_default().checking.insert(doc);
            self.note_heads(team, doc, Some(Vec::new()), Some(whole.heads));
        } else {
            self.note_heads(team, doc, Some(whole.heads.clone()), Some(whole.heads));
        }
        self.settle(team, out);
        Ok(())
    }

    /// The replica's verdict on a document this remote sent whole is in: held if it
    /// passed, gone if not. Counts it in sync, or reports the remote.
    fn on_checked<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        out: &mut Vec<Output>,
    ) -> Step {
        let held = replica.docs(team).map_err(store)?.into_iter().find(|d| d.id == doc);
        match held {
            Some(held) => {
                out.push(Output::Event(SyncEvent::DocChanged { team, doc, kind }));
                self.note_heads(team, doc, Some(held.heads), None);
            }
            None => {
                let why = "a document sent whole that failed its full check";
                self.refuse(team, Some(doc), Refusal::Malformed(why.into()), out);
                self.note_heads(team, doc, Some(Vec::new()), None);
            }
        }
        if self.sealed(team) {
            self.tell_sealed_heads(replica, team, doc, kind, false, out)?;
        }
        Ok(())
    }

    /// One part of a whole document: kept until the last, then handled as a snapshot.
    /// Parts out of order, of another document before the last, or past
    /// [`SNAPSHOT_BYTES_MAX`] are refused, and the parts so far dropped.
    fn on_snapshot_part<R: Replica>(
        &mut self,
        replica: &mut R,
        part: Part,
        bytes: Vec<u8>,
        signatures: Vec<ChangeSig>,
        out: &mut Vec<Output>,
    ) -> Step {
        let Part { team, doc, kind, index, total } = part;
        if let Err(reason) = self.check_clear(team, &kind) {
            self.partial = None;
            self.refuse(team, Some(doc), reason, out);
            return Ok(());
        }
        let mut partial = match self.partial.take() {
            None if index == 0 => PartialSnapshot {
                team,
                doc,
                kind,
                total,
                next: 0,
                bytes: Vec::new(),
                signatures: Vec::new(),
                held: 0,
            },
            Some(p) if p.doc == doc && p.total == total && p.next == index => p,
            _ => {
                let why = format!("part {index} of {total} of a {kind} document, out of turn");
                self.refuse(team, Some(doc), Refusal::Malformed(why), out);
                return Ok(());
            }
        };
        let held =
            partial.held + bytes.len() + signatures.iter().map(signature_bytes).sum::<usize>();
        if held > SNAPSHOT_BYTES_MAX {
            let what = "bytes of a document sent in parts, with its signatures";
            let reason = Refusal::over_limit(what, held, SNAPSHOT_BYTES_MAX);
            self.refuse(team, Some(doc), reason, out);
            return Ok(());
        }
        partial.held = held;
        if partial.bytes.is_empty() {
            // Room for the parts to come, reserved once (never touched until written, and
            // bounded as `held` is), so that no part copies the ones before it again.
            let to_come =
                total.saturating_sub(index).saturating_sub(1) as usize * SNAPSHOT_PART_BYTES;
            partial.bytes = bytes;
            partial.bytes.reserve(to_come.min(SNAPSHOT_BYTES_MAX - held));
        } else {
            partial.bytes.extend_from_slice(&bytes);
        }
        partial.signatures.extend(signatures);
        partial.next += 1;
        if partial.next < partial.total {
            self.partial = Some(partial);
            return Ok(());
        }
        let PartialSnapshot { team, doc, kind, bytes, signatures, .. } = partial;
        self.arrived(team, doc);
        self.on_snapshot(replica, team, doc, kind, bytes, &signatures, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn merge_snapshot<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        bytes: &[u8],
        signatures: &[ChangeSig],
        out: &mut Vec<Output>,
    ) -> Step {
        let loaded = inflated_len(bytes, INFLATED_BYTES_MAX)
            .map_err(|e| e.to_string())
            .and_then(|_| Automerge::load(bytes).map_err(|e| e.to_string()));
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(why) => {
                let reason = Refusal::Malformed(format!("a snapshot that does not load: {why}"));
                self.refuse(team, Some(doc), reason, out);
                return Ok(());
            }
        };
        let theirs = sorted(loaded.get_heads());
        let changes: Vec<_> = changes_of(&loaded).into_iter().map(|(a, h)| (a, Some(h))).collect();
        let verdict = self.check_authors(team, &kind, &changes).and_then(|()| {
            let access =
                self.shared.get(&team).ok_or(Refusal::NotCurrent { device: self.remote, team })?;
            check_signed_document(access, team, doc, &kind, &loaded, signatures)?;
            let rules = ReceivedRules::new(team, &kind);
            let ops = automerge::ReadDoc::stats(&loaded).num_ops;
            crate::chunks::check_saved_rules(&rules, bytes, ops)
                .map_err(Refusal::BreaksDocumentRules)
        });
        if let Err(reason) = verdict {
            self.refused(team, doc, theirs, reason, out);
            return Ok(());
        }
        match replica.merge_snapshot(team, doc, kind, loaded, signatures).map_err(store)? {
            Ok(true) => out.push(Output::Event(SyncEvent::DocChanged { team, doc, kind })),
            Ok(false) => {}
            Err(reason) => {
                self.refused(team, doc, theirs, reason, out);
                return Ok(());
            }
        }
        // A sync message in reply tells the remote our heads, so that it knows too when
        // the document agrees (the circle node is told in a sealed exchange's answer).
        let ours = match self.sealed(team) {
            true => None,
            false => self.send_sync(replica, team, doc, kind, out)?,
        };
        self.note_heads(team, doc, ours, Some(theirs));
        self.settle(team, out);
        Ok(())
    }

    /// Reports that changes to `doc` up to the remote's heads `theirs` were refused: the
    /// document stays out of sync with this remote.
    fn refused(
        &mut self,
        team: TeamId,
        doc: DocId,
        theirs: Vec<ChangeHash>,
        reason: Refusal,
        out: &mut Vec<Output>,
    ) {
        self.refuse(team, Some(doc), reason, out);
        self.note_heads(team, doc, None, Some(theirs));
        self.settle(team, out);
    }

    /// Whether the remote may send anything about documents of `kind` of `team`: the
    /// team is shared and both devices may read the kind.
    fn check_sender(&self, team: TeamId, kind: &DocKind) -> Result<(), Refusal> {
        if !self.shared.contains_key(&team) {
            return Err(Refusal::NotCurrent { device: self.remote, team });
        }
        if !self.both_read(team, kind) {
            return Err(Refusal::MayNotRead { kind: *kind });
        }
        Ok(())
    }

    /// Whether the remote may send a document of `kind` of `team` in clear: as
    /// [`Self::check_sender`], and neither device is the team's circle node, which is
    /// given documents sealed only.
    fn check_clear(&self, team: TeamId, kind: &DocKind) -> Result<(), Refusal> {
        self.check_sender(team, kind)?;
        if self.sealed(team) {
            return Err(Refusal::InClear { kind: *kind });
        }
        Ok(())
    }

    /// Whether every change's author may write documents of `kind`.
    fn check_authors(
        &self,
        team: TeamId,
        kind: &DocKind,
        changes: &[(ActorId, Option<ChangeHash>)],
    ) -> Result<(), Refusal> {
        let access =
            self.shared.get(&team).ok_or(Refusal::NotCurrent { device: self.remote, team })?;
        check_authors(access, team, kind, changes).map_err(Refusal::MayNotWrite)
    }

    /// Whether every change carries a signature by its author, who could write `kind` at
    /// the point of the membership log they signed under.
    fn check_signed(
        &self,
        team: TeamId,
        doc: DocId,
        kind: &DocKind,
        changes: &[(ActorId, Option<ChangeHash>)],
        signatures: &[ChangeSig],
    ) -> Result<(), Refusal> {
        let access =
            self.shared.get(&team).ok_or(Refusal::NotCurrent { device: self.remote, team })?;
        let changes = changes.iter().filter_map(|(actor, hash)| Some((actor, (*hash)?)));
        Ok(check_signed(access, team, doc, kind, changes, signatures)?)
    }

    /// Whether the remote may make this device hold `doc`: always when it is held, else
    /// only while the team has fewer than [`DOCS_PER_TEAM_MAX`] documents here, and for a
    /// month no more than [`MONTHS_AHEAD_MAX`] after this device's.
    fn check_room<R: Replica>(
        &self,
        replica: &R,
        team: TeamId,
        held: bool,
        kind: &DocKind,
    ) -> Result<(), Refusal> {
        if held {
            return Ok(());
        }
        if let (Some(month), Some(now)) = (kind.month(), replica.this_month()) {
            let ahead = (month.year() - now.year()) * 12 + i32::from(month.number())
                - i32::from(now.number());
            if ahead > MONTHS_AHEAD_MAX {
                let what = "months ahead of this device's clock";
                return Err(Refusal::over_limit(what, ahead as usize, MONTHS_AHEAD_MAX as usize));
            }
        }
        let held = replica.doc_count(team).unwrap_or(DOCS_PER_TEAM_MAX);
        if held >= DOCS_PER_TEAM_MAX {
            return Err(Refusal::over_limit("documents of one team", held + 1, DOCS_PER_TEAM_MAX));
        }
        Ok(())
    }

    fn send_ops<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        out: &mut Vec<Output>,
    ) -> Step {
        let ops = replica.ops(team).map_err(store)?;
        self.progress.entry(team).or_default().ops_announced = Some(ops_hash(&ops));
        for batch in ops.chunks(OPS_PER_FRAME_MAX) {
            let ops = batch.iter().map(SignedOp::to_bytes).collect();
            out.push(Output::Send(Frame::Ops { team, ops }.encode().into()));
        }
        Ok(())
    }

    fn send_heads<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        out: &mut Vec<Output>,
    ) -> Step {
        let Some(access) = self.shared.get(&team) else {
            return Ok(());
        };
        // A Heads frame is read under the ops we last announced: announce them first
        // when they have changed since (our Hello may be out of date).
        let progress = self.progress.entry(team).or_default();
        progress.heads_sent = true;
        if progress.ops_announced != Some(access.ops_hash()) {
            self.send_ops(replica, team, out)?;
        }
        let Some(access) = self.shared.get(&team) else {
            return Ok(());
        };
        let docs = self.readable_docs(replica, team, access)?;
        let told = docs.iter().take(DOCS_PER_FRAME_MAX).map(|(id, (_, h))| (*id, h.clone()));
        let told = told.collect();
        self.progress.entry(team).or_default().told = told;
        let docs = docs
            .into_iter()
            .take(DOCS_PER_FRAME_MAX)
            .map(|(id, (kind, heads))| {
                let mut heads = heads_bytes(&heads);
                heads.truncate(HEADS_PER_DOC_MAX);
                DocHeads { id, kind, heads }
            })
            .collect();
        out.push(Output::Send(Frame::Heads { team, docs }.encode().into()));
        Ok(())
    }

    /// Sends the next sync message for `doc`, if Automerge has one; returns the heads it
    /// announced (ours, sorted).
    fn send_sync<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        out: &mut Vec<Output>,
    ) -> Result<Option<Vec<ChangeHash>>, CloseReason> {
        let message = replica.generate_sync_message(self.remote, team, doc, kind).map_err(store)?;
        let Some(message) = message else {
            return Ok(None);
        };
        let heads = sorted(message.heads.clone());
        self.progress.entry(team).or_default().told.insert(doc, heads.clone());
        // The signatures of the changes the message carries (read back from our own
        // bytes, which parse; if they did not, the remote refuses them unsigned).
        let hashes: Vec<ChangeHash> = message
            .changes
            .iter()
            .filter_map(|chunk| changes_in(chunk).ok())
            .flatten()
            .map(|(_, hash)| hash)
            .collect();
        let signatures = match hashes.is_empty() {
            true => Vec::new(),
            false => replica.signatures(team, doc, Some(&hashes)).map_err(store)?,
        };
        let message = message.encode();
        let frame = Frame::Sync { team, doc, kind, message, signatures }.encode();
        if frame.len() <= SYNC_FRAME_BYTES_MAX {
            out.push(Output::Send(frame.into()));
            return Ok(Some(heads));
        }
        // The changes of a long time apart, too many for one frame: the whole document
        // instead, which the remote merges into its own.
        match self.send_whole(replica, team, doc, kind, out)? {
            Whole::Sent(heads) => Ok(Some(heads)),
            // Neither fits: this document cannot reach this remote (a named limit).
            Whole::TooLarge | Whole::NotHeld => Ok(None),
        }
    }

    /// Offers the remote `doc`, which it was last known to lack, at our heads (once per
    /// heads): it goes whole if the remote asks for it ([`Frame::Want`]).
    fn send_offer<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        out: &mut Vec<Output>,
    ) -> Step {
        let ours = sorted(replica.heads(team, doc).map_err(store)?.unwrap_or_default());
        if ours.is_empty() || ours.len() > HEADS_PER_DOC_MAX {
            // Nothing to offer (the document failed its check here and is gone: the
            // sync protocol tells the remote so), or more heads than a frame may name.
            let sent = self.send_sync(replica, team, doc, kind, out)?;
            self.note_heads(team, doc, sent, None);
            return Ok(());
        }
        let progress = self.progress.entry(team).or_default();
        if progress.offered.get(&doc) != Some(&ours) {
            progress.offered.insert(doc, ours.clone());
            progress.told.insert(doc, ours.clone());
            let heads = heads_bytes(&ours);
            out.push(Output::Send(Frame::Offer { team, doc, kind, heads }.encode().into()));
        }
        self.note_heads(team, doc, Some(ours), None);
        Ok(())
    }

    /// The remote offers a whole document. One held here already is a difference like
    /// any other, for the sync protocol; one this device lacks is asked for, at once or,
    /// with [`Session::defer_offers`], when the driver says.
    fn on_offer<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        heads: Vec<[u8; 32]>,
        out: &mut Vec<Output>,
    ) -> Step {
        if let Err(reason) = self.check_clear(team, &kind) {
            self.refuse(team, Some(doc), reason, out);
            return Ok(());
        }
        let theirs = sorted(heads.into_iter().map(ChangeHash).collect());
        self.note_heads(team, doc, None, Some(theirs));
        if replica.holds(team, doc).map_err(store)? {
            return self.sync_held(replica, team, doc, kind, out);
        }
        self.settle(team, out);
        if self.defer_offers {
            out.push(Output::Offered { team, doc, kind });
        } else {
            self.ask_whole(team, doc, kind, out);
        }
        Ok(())
    }

    /// The remote offered `doc`, which this device holds: a difference like any other,
    /// for the sync protocol (told once its check is done, if it is being checked).
    fn sync_held<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        out: &mut Vec<Output>,
    ) -> Step {
        if !self.progress.get(&team).is_some_and(|p| p.checking.contains(&doc)) {
            let ours = self.send_sync(replica, team, doc, kind, out)?;
            self.note_heads(team, doc, ours, None);
        }
        self.settle(team, out);
        Ok(())
    }

    /// Asks the remote for the whole `doc`, once until it arrives.
    fn ask_whole(&mut self, team: TeamId, doc: DocId, kind: DocKind, out: &mut Vec<Output>) {
        let progress = self.progress.entry(team).or_default();
        // Bounded as the documents of a team are: a remote offering ever more months
        // makes this device hold no more than that.
        if progress.wanted.len() < DOCS_PER_TEAM_MAX && progress.wanted.insert(doc) {
            out.push(Output::Send(Frame::Want { team, doc, kind }.encode().into()));
        }
    }

    /// A whole document (or its last part) arrived from the remote: no longer wanted.
    fn arrived(&mut self, team: TeamId, doc: DocId) {
        if let Some(progress) = self.progress.get_mut(&team) {
            progress.wanted.remove(&doc);
        }
    }

    /// The remote asks for a whole document: sent, if both devices may read it, this
    /// device can pass it on, and the same request (at the same heads of ours) was not
    /// answered already; a document still being checked here goes once it passes.
    fn on_want<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        out: &mut Vec<Output>,
    ) -> Step {
        if let Err(reason) = self.check_clear(team, &kind) {
            self.refuse(team, Some(doc), reason, out);
            return Ok(());
        }
        self.answer_want(replica, team, doc, kind, out).map(|_| ())
    }

    /// Sends `doc` whole to the remote, which asked for it (see [`Self::on_want`]);
    /// returns whether it went.
    fn answer_want<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        out: &mut Vec<Output>,
    ) -> Result<bool, CloseReason> {
        let ours = sorted(replica.heads(team, doc).map_err(store)?.unwrap_or_default());
        if ours.is_empty() {
            return Ok(false);
        }
        if self.progress.get(&team).is_some_and(|p| p.answered.get(&doc) == Some(&ours)) {
            return Ok(false);
        }
        if self.send_snapshot(replica, team, doc, kind, out)? {
            let progress = self.progress.entry(team).or_default();
            progress.answered.insert(doc, ours.clone());
            progress.snapshots_sent.insert(doc);
            self.note_heads(team, doc, Some(ours), None);
            self.settle(team, out);
            return Ok(true);
        }
        // Not passed on until its check is done: sent then.
        self.progress.entry(team).or_default().asked.insert(doc);
        Ok(false)
    }

    /// Sends the whole document to a remote that has none of it: in one frame, or in parts
    /// of [`SNAPSHOT_PART_BYTES`] when larger; falls back to the sync protocol past
    /// [`SNAPSHOT_BYTES_MAX`]. Returns `false`, having sent nothing, when the replica has
    /// no whole document to send (it failed verification and was discarded).
    fn send_snapshot<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        out: &mut Vec<Output>,
    ) -> Result<bool, CloseReason> {
        match self.send_whole(replica, team, doc, kind, out)? {
            Whole::Sent(_) => Ok(true),
            Whole::TooLarge => self.send_sync(replica, team, doc, kind, out).map(|_| true),
            Whole::NotHeld => Ok(false),
        }
    }

    /// Sends the whole document with the signatures of all its changes, if it is at most
    /// [`SNAPSHOT_BYTES_MAX`]: to a remote that has none of it, or, merged there, in place
    /// of a sync message too large for a frame.
    fn send_whole<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        out: &mut Vec<Output>,
    ) -> Result<Whole, CloseReason> {
        let bytes = match replica.snapshot(team, doc).map_err(store)? {
            Some(bytes) if bytes.len() <= SNAPSHOT_BYTES_MAX => bytes,
            Some(_) => return Ok(Whole::TooLarge),
            None => return Ok(Whole::NotHeld),
        };
        let signatures = replica.signatures(team, doc, None).map_err(store)?;
        // The remote answers a whole document with a sync message saying it holds these
        // heads; a sync state that has told it them already keeps that answer from
        // starting another exchange.
        let heads = match whole_doc(&bytes) {
            Ok(whole) => {
                replica.set_sync_state(self.remote, doc, state_after_sending(&whole.heads));
                whole.heads
            }
            Err(_) => Vec::new(),
        };
        self.progress.entry(team).or_default().told.insert(doc, heads.clone());
        // The signatures in shares of at most a part's bytes (and a frame's count).
        let mut shares: Vec<Vec<ChangeSig>> = vec![Vec::new()];
        let mut share_bytes = 0;
        for sig in signatures {
            let len = signature_bytes(&sig);
            let full = shares.last().is_some_and(|s| s.len() >= SIGNATURES_PER_FRAME_MAX);
            if full || (share_bytes + len > SNAPSHOT_PART_BYTES && share_bytes > 0) {
                shares.push(Vec::new());
                share_bytes = 0;
            }
            share_bytes += len;
            shares.last_mut().expect("never empty").push(sig);
        }
        if bytes.len() <= SNAPSHOT_PART_BYTES && shares.len() == 1 {
            let signatures = shares.pop().unwrap_or_default();
            let bytes = bytes.to_vec();
            let frame = Frame::Snapshot { team, doc, kind, bytes, signatures };
            out.push(Output::Send(frame.encode().into()));
            return Ok(Whole::Sent(heads));
        }
        // In parts: each with a share of the bytes and of the signatures.
        let parts = bytes.len().div_ceil(SNAPSHOT_PART_BYTES).max(shares.len()).max(2);
        let total = u32::try_from(parts).expect("at most SNAPSHOT_PARTS_MAX parts");
        let mut shares = shares.into_iter();
        let whole = Bytes::from_owner(SharedBytes(bytes));
        for index in 0..total {
            let start = (index as usize * SNAPSHOT_PART_BYTES).min(whole.len());
            let end = (start + SNAPSHOT_PART_BYTES).min(whole.len());
            let signatures = shares.next().unwrap_or_default();
            let part = PartRef { team, doc, kind, index, total, bytes: whole.slice(start..end) };
            out.push(Output::Send(part.encode(&signatures)));
        }
        Ok(Whole::Sent(heads))
    }

    /// Records what a Heads frame said of every document the remote holds, with ours
    /// (both limited to the documents both devices may read), and the ops it was sent
    /// under: the ops of the Ops frames just before it, or else those of its Hello.
    fn note_described(
        &mut self,
        team: TeamId,
        ours: BTreeMap<DocId, (DocKind, Vec<ChangeHash>)>,
        theirs: &[DocHeads],
    ) {
        let mut heads: BTreeMap<DocId, KnownHeads> = ours
            .into_iter()
            .map(|(id, (_, ours))| (id, KnownHeads { ours, theirs: Vec::new() }))
            .collect();
        for d in theirs.iter().filter(|d| self.both_read(team, &d.kind)) {
            let their_heads = sorted(d.heads.iter().map(|h| ChangeHash(*h)).collect());
            heads.entry(d.id).or_default().theirs = their_heads;
        }
        let progress = self.progress.entry(team).or_default();
        for doc in &progress.checking {
            if let Some(known) = heads.get_mut(doc) {
                known.ours.clear();
            }
        }
        if !progress.ops_received.is_empty() {
            let ops: Vec<SignedOp> =
                std::mem::take(&mut progress.ops_received).into_values().collect();
            progress.their_ops = Some(ops_hash(&ops));
        }
        progress.described = true;
        progress.pending =
            heads.iter().filter(|(_, h)| h.ours != h.theirs).map(|(id, _)| *id).collect();
        progress.heads = heads;
    }

    /// Records our heads or the remote's of one document of a shared team, when known.
    fn note_heads(
        &mut self,
        team: TeamId,
        doc: DocId,
        ours: Option<Vec<ChangeHash>>,
        theirs: Option<Vec<ChangeHash>>,
    ) {
        if !self.shared.contains_key(&team) {
            return;
        }
        let progress = self.progress.entry(team).or_default();
        let known = progress.heads.entry(doc).or_default();
        if let Some(ours) = ours {
            known.ours = ours;
        }
        if let Some(mut theirs) = theirs {
            if theirs.is_empty() {
                // The remote holds none of it (any more): it brings nothing.
                progress.wanted.remove(&doc);
            }
            // More heads than a Heads frame may carry never match ours: the document
            // simply stays pending.
            theirs.truncate(HEADS_PER_DOC_MAX + 1);
            known.theirs = theirs;
        }
        if known.ours == known.theirs {
            progress.pending.remove(&doc);
        } else {
            progress.pending.insert(doc);
        }
    }

    /// Emits [`SyncEvent::TeamInSync`] when the team has just come into sync: the remote
    /// has described its documents under the ops we hold, and no document differs.
    fn settle(&mut self, team: TeamId, out: &mut Vec<Output>) {
        let Some(access) = self.shared.get(&team) else {
            return;
        };
        let progress = self.progress.entry(team).or_default();
        let in_sync = progress.described
            && progress.their_ops == Some(access.ops_hash())
            && progress.pending.is_empty();
        if in_sync && !progress.in_sync {
            out.push(Output::Event(SyncEvent::TeamInSync { team }));
        }
        progress.in_sync = in_sync;
    }

    /// The team's membership, or `None` (reported) when this device cannot read it: that
    /// team is left out, and the device's other teams go on syncing.
    fn team_access<R: Replica>(
        &self,
        replica: &R,
        team: TeamId,
        out: &mut Vec<Output>,
    ) -> Option<TeamAccess> {
        match replica.team_access(team) {
            Ok(access) => Some(access),
            Err(e) => {
                let reason = Refusal::TeamUnreadable { team, why: e.to_string() };
                self.refuse(team, None, reason, out);
                None
            }
        }
    }

    /// Whether the remote has described all its documents of `team`, none of them is
    /// `doc`, and `doc` has not been sent whole since.
    fn lacks_whole(&self, team: TeamId, doc: DocId) -> bool {
        self.progress.get(&team).is_some_and(|p| {
            p.described
                && p.heads.get(&doc).is_none_or(|known| known.theirs.is_empty())
                && !p.snapshots_sent.contains(&doc)
        })
    }

    fn both_current(&self, access: &TeamAccess) -> bool {
        access.is_current(self.remote) && access.is_current(self.local)
    }

    fn both_read(&self, team: TeamId, kind: &DocKind) -> bool {
        self.shared
            .get(&team)
            .is_some_and(|a| a.may_read(self.remote, kind) && a.may_read(self.local, kind))
    }

    /// The documents of `team` held here that both devices may read, by id.
    fn readable_docs<R: Replica>(
        &self,
        replica: &R,
        team: TeamId,
        access: &TeamAccess,
    ) -> Result<BTreeMap<DocId, (DocKind, Vec<ChangeHash>)>, CloseReason> {
        let docs = replica.docs(team).map_err(store)?;
        Ok(docs
            .into_iter()
            .filter(|d| {
                access.may_read(self.remote, &d.kind) && access.may_read(self.local, &d.kind)
            })
            .map(|mut d| {
                d.heads.sort();
                (d.id, (d.kind, d.heads))
            })
            .collect())
    }
}

/// BLAKE3 over the sorted (document id, heads), truncated to 16 bytes.
fn docs_hash(docs: &BTreeMap<DocId, (DocKind, Vec<ChangeHash>)>) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    for (id, (_, heads)) in docs {
        hasher.update(id.as_bytes());
        hasher.update(&(heads.len() as u64).to_le_bytes());
        for head in heads {
            hasher.update(&head.0);
        }
    }
    truncate(hasher.finalize())
}

fn sorted(mut heads: Vec<ChangeHash>) -> Vec<ChangeHash> {
    heads.sort();
    heads
}

fn heads_bytes(heads: &[ChangeHash]) -> Vec<[u8; 32]> {
    heads.iter().map(|h| h.0).collect()
}

/// What one signature takes in a frame, and makes a device hold while a document
/// arrives in parts (at least).
fn signature_bytes(sig: &ChangeSig) -> usize {
    std::mem::size_of::<ChangeSig>() + 32 * sig.membership.len()
}

fn store(e: impl std::fmt::Display) -> CloseReason {
    CloseReason::Store(e.to_string())
}

fn truncate_utf8(text: &mut String, max_bytes: usize) {
    if text.len() > max_bytes {
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
