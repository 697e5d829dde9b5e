//! Unit tests of one session: its error paths, each frame a peer may get wrong, and when
//! it reports a care team in sync, driven by hand between two in-memory replicas.

use automerge::sync::{State, SyncDoc};
use care_core::documents::{Author, plan};
use care_core::{
    DeviceKey, DocKind, MemberId, Membership, OpBody, Role, Section, SignedOp, TeamId, Timestamp,
    create_team, team_id,
};

use crate::access::TeamAccess;
use crate::close::CloseReason;
use crate::frame::{FRAME_BYTES_MAX, Frame, PROTOCOL_VERSION};
use crate::memory::MemoryReplica;
use crate::refusal::Refusal;
use crate::replica::Replica;
use crate::session::{HELLO_FRAME_BYTES_MAX, Output, Session, SyncEvent};

/// Devices of the test team, by index: the owner, an advocate and a volunteer.
const OWNER: usize = 0;
const ADVOCATE: usize = 1;
const VOLUNTEER: usize = 2;
/// A device that belongs to no team.
const OUTSIDER_SEED: u8 = 9;
/// Most frames one exchange may take before the test calls it a loop.
const FRAMES_PER_EXCHANGE_MAX: usize = 10_000;

/// Rosa's team: the ops creating it, and each device's key and member.
struct Team {
    id: TeamId,
    ops: Vec<SignedOp>,
    keys: Vec<DeviceKey>,
    members: Vec<MemberId>,
}

impl Team {
    fn new() -> Team {
        Team::new_named("Rosa's team")
    }

    /// A team of the same three devices under another name (and so another id).
    fn new_named(name: &str) -> Team {
        let keys: Vec<DeviceKey> = (1..=3).map(|i| DeviceKey::from_seed([i; 32])).collect();
        let members: Vec<MemberId> = (1..=3).map(|i| MemberId::from_bytes([i; 16])).collect();
        let create = create_team(&keys[OWNER], Timestamp(0), name, members[OWNER], "Rosa", [0; 16]);
        let id = team_id(&create);
        let mut team = Team { id, ops: vec![create], keys, members };
        for (i, role) in [(ADVOCATE, Role::Advocate), (VOLUNTEER, Role::Volunteer)] {
            let member = team.members[i];
            team.author(OpBody::AddMember { member, name: "Sam".into(), role, hats: vec![] });
            let device = team.keys[i].device_id();
            team.author(OpBody::AddDevice { member, device, label: "phone".into() });
        }
        team
    }

    /// Appends an op by the owner.
    fn author(&mut self, body: OpBody) {
        let (membership, _) = Membership::from_ops(self.id, &self.ops).expect("valid ops");
        let op =
            membership.author_op(&self.keys[OWNER], Timestamp(1), body).expect("the owner may");
        self.ops.push(op);
    }

    /// A device of the team holding its ops.
    fn side(&self, device: usize, peer: usize) -> Side {
        let mut replica = MemoryReplica::with_key(self.keys[device].clone());
        replica.add_ops(self.id, &self.ops).expect("memory replica");
        let session = Session::new(self.keys[device].device_id(), self.keys[peer].device_id());
        Side { session, replica, events: Vec::new(), closed: None }
    }

    fn author_of(&self, device: usize, at_ms: i64) -> Author {
        Author {
            member: self.members[device],
            device: self.keys[device].device_id(),
            at: Timestamp(at_ms),
        }
    }

    /// Writes a plan section on `side` as `device`.
    fn write_plan(&self, side: &mut Side, device: usize, text: &str) {
        let author = self.author_of(device, 5_000);
        side.replica
            .write(self.id, DocKind::Plan, |doc| {
                plan::set_section(doc, &author, Section::Routines, text)
            })
            .expect("writes");
    }
}

/// One end of a session, with what it reported.
struct Side {
    session: Session,
    replica: MemoryReplica,
    events: Vec<SyncEvent>,
    closed: Option<CloseReason>,
}

impl Side {
    /// Records events and the close; returns the frames to deliver.
    fn take(&mut self, outputs: Vec<Output>) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        for output in outputs {
            match output {
                Output::Send(frame) => frames.push(frame.to_vec()),
                Output::Close { reason } => self.closed = Some(reason),
                Output::Event(event) => self.events.push(event),
                Output::Offered { .. } => panic!("a session on its own answers offers itself"),
            }
        }
        frames
    }

    fn start(&mut self) -> Vec<Vec<u8>> {
        let outputs = self.session.start(&mut self.replica);
        self.take(outputs)
    }

    fn receive(&mut self, frame: &[u8]) -> Vec<Vec<u8>> {
        let outputs = self.session.handle_frame(&mut self.replica, frame);
        self.take(outputs)
    }

    fn in_sync_events(&self) -> usize {
        self.events.iter().filter(|e| matches!(e, SyncEvent::TeamInSync { .. })).count()
    }

    fn refusals(&self) -> Vec<Refusal> {
        self.events
            .iter()
            .filter_map(|e| match e {
                SyncEvent::Refused { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Delivers frames one at a time, in order each way, until both sides are quiet. Each
/// time a side reports TeamInSync, checks that both replicas hold the same heads of every
/// document both devices may read.
fn exchange(
    team: &Team,
    a: &mut Side,
    b: &mut Side,
    mut to_a: Vec<Vec<u8>>,
    mut to_b: Vec<Vec<u8>>,
) {
    let mut delivered = 0;
    while !to_a.is_empty() || !to_b.is_empty() {
        delivered += 1;
        assert!(delivered < FRAMES_PER_EXCHANGE_MAX, "the exchange did not end");
        if !to_a.is_empty() {
            let before = a.in_sync_events();
            to_b.extend(a.receive(&to_a.remove(0)));
            if a.in_sync_events() > before {
                assert_agree(team, a, b);
            }
        }
        if !to_b.is_empty() {
            let before = b.in_sync_events();
            to_a.extend(b.receive(&to_b.remove(0)));
            if b.in_sync_events() > before {
                assert_agree(team, a, b);
            }
        }
    }
}

/// Starts both sessions and runs them until quiet.
fn connect(team: &Team, a: &mut Side, b: &mut Side) {
    let (to_b, to_a) = (a.start(), b.start());
    exchange(team, a, b, to_a, to_b);
}

/// Both replicas hold the same ops and the same heads of every document both may read.
fn assert_agree(team: &Team, a: &Side, b: &Side) {
    let ops = |s: &Side| {
        let mut hashes: Vec<_> =
            s.replica.ops(team.id).expect("memory").iter().map(SignedOp::hash).collect();
        hashes.sort();
        hashes
    };
    assert_eq!(ops(a), ops(b), "the devices hold different ops");
    let access =
        TeamAccess::from_ops(team.id, &a.replica.ops(team.id).expect("memory")).expect("valid ops");
    let (da, db) = (a.replica.device(), b.replica.device());
    let readable = |s: &Side| {
        let mut docs: Vec<_> = s
            .replica
            .docs(team.id)
            .expect("memory")
            .into_iter()
            .filter(|d| access.may_read(da, &d.kind) && access.may_read(db, &d.kind))
            .map(|d| (d.id, d.heads))
            .collect();
        docs.sort();
        docs
    };
    assert_eq!(readable(a), readable(b), "the devices hold different documents");
}

fn close_reason(side: &Side) -> String {
    side.closed.as_ref().expect("the session closed").to_string()
}

/// Two live sessions, owner and `peer`, already in sync.
fn live_pair(team: &Team, peer: usize) -> (Side, Side) {
    let (mut a, mut b) = (team.side(OWNER, peer), team.side(peer, OWNER));
    connect(team, &mut a, &mut b);
    assert!(a.session.in_sync(team.id) && b.session.in_sync(team.id));
    (a, b)
}

/// A Hello from `side`'s point of view, as its peer would send it.
fn hello_of(side: &mut Side) -> Vec<u8> {
    side.start().remove(0)
}

#[test]
fn a_second_hello_closes_the_session() {
    let team = Team::new();
    let (mut a, _b) = live_pair(&team, ADVOCATE);
    let hello = Frame::Hello { version: PROTOCOL_VERSION, teams: vec![] }.encode();
    let frames = a.receive(&hello);
    assert!(close_reason(&a).contains("sent a second Hello"), "{:?}", a.closed);
    assert!(a.session.is_closed());
    assert_eq!(Frame::decode(&frames[0]).map(|f| f.name()), Ok("Close"));
    // A closed session ignores whatever comes next.
    assert!(a.receive(&hello).is_empty());
}

#[test]
fn another_protocol_version_is_named_in_the_close() {
    let team = Team::new();
    let mut a = team.side(OWNER, ADVOCATE);
    let hello = Frame::Hello { version: PROTOCOL_VERSION + 1, teams: vec![] }.encode();
    let frames = a.receive(&hello);
    let reason = close_reason(&a);
    assert!(reason.contains(&format!("version {}", PROTOCOL_VERSION + 1)), "{reason}");
    assert!(reason.contains(&format!("speaks {PROTOCOL_VERSION}")), "{reason}");
    // Our Hello goes out first, then the Close with the same sentence.
    let names: Vec<_> = frames.iter().map(|f| Frame::decode(f).expect("valid")).collect();
    assert!(matches!(names[0], Frame::Hello { .. }));
    assert_eq!(names[1], Frame::Close { reason: reason.to_owned() });
}

#[test]
fn a_team_frame_before_hello_closes_the_session() {
    let team = Team::new();
    let mut a = team.side(OWNER, ADVOCATE);
    a.start();
    let heads = Frame::Heads { team: team.id, docs: vec![] }.encode();
    a.receive(&heads);
    assert!(close_reason(&a).contains("sent Heads before Hello"), "{:?}", a.closed);
    assert!(a.events.is_empty());
}

#[test]
fn garbage_bytes_close_the_session() {
    let team = Team::new();
    for bytes in [vec![], vec![1, 0xff, 0xff, 0xff, 0xff, 0xff], vec![7, 0, 0]] {
        let mut a = team.side(OWNER, ADVOCATE);
        a.start();
        a.receive(&bytes);
        let reason = close_reason(&a);
        assert!(
            reason.starts_with(&format!("device {} sent ", team.keys[ADVOCATE].device_id())),
            "{reason}"
        );
        assert!(
            ["empty frame", "could not be decoded", "format version 7"]
                .iter()
                .any(|w| reason.contains(w)),
            "{reason}"
        );
    }
}

#[test]
fn an_oversized_frame_closes_the_session() {
    let team = Team::new();
    let (mut a, _b) = live_pair(&team, ADVOCATE);
    assert_eq!(a.session.next_frame_bytes_max(), FRAME_BYTES_MAX);
    a.receive(&vec![1; FRAME_BYTES_MAX + 1]);
    assert!(close_reason(&a).contains("larger than the limit"), "{:?}", a.closed);
}

/// Before its Hello shows that it shares a team, a device may send no more than a Hello's
/// worth of bytes: its first frame is read with the smaller limit.
#[test]
fn a_first_frame_larger_than_a_hello_closes_the_session() {
    let team = Team::new();
    let mut a = team.side(OWNER, ADVOCATE);
    a.start();
    assert_eq!(a.session.next_frame_bytes_max(), HELLO_FRAME_BYTES_MAX);
    a.receive(&vec![1; HELLO_FRAME_BYTES_MAX + 1]);
    assert!(close_reason(&a).contains("before sharing a team"), "{:?}", a.closed);
}

#[test]
fn a_sync_frame_for_another_document_closes_the_session() {
    let team = Team::new();
    let (mut a, _b) = live_pair(&team, ADVOCATE);
    let frame = Frame::Sync {
        team: team.id,
        doc: DocKind::Plan.doc_id(team.id),
        kind: DocKind::HealthPlan,
        message: vec![],
        signatures: vec![],
    };
    a.receive(&frame.encode());
    assert!(close_reason(&a).contains("is not the health-plan document"), "{:?}", a.closed);
}

#[test]
fn documents_the_remote_may_not_read_are_refused() {
    let team = Team::new();
    let (mut a, _b) = live_pair(&team, VOLUNTEER);
    let kind = DocKind::HealthPlan;
    let mut doc = care_core::documents::genesis(team.id, &kind);
    plan::set_section(&mut doc, &team.author_of(OWNER, 5_000), Section::Medication, "tea")
        .expect("writes");
    let message = doc.generate_sync_message(&mut State::new()).expect("a first message").encode();
    let doc_id = kind.doc_id(team.id);
    let sync = Frame::Sync { team: team.id, doc: doc_id, kind, message, signatures: vec![] };
    let snapshot =
        Frame::Snapshot { team: team.id, doc: doc_id, kind, bytes: doc.save(), signatures: vec![] };
    for frame in [sync, snapshot] {
        a.events.clear();
        let frames = a.receive(&frame.encode());
        assert!(frames.is_empty(), "nothing is answered");
        assert!(a.closed.is_none());
        assert_eq!(a.events.len(), 1, "{:?}", a.events);
        assert!(a.refusals()[0].to_string().contains("may not read"), "{:?}", a.events);
        assert!(a.replica.doc(team.id, doc_id).is_none(), "nothing is stored");
    }
}

#[test]
fn a_snapshot_with_a_change_by_a_device_that_may_not_write_is_refused() {
    let team = Team::new();
    let (mut a, _b) = live_pair(&team, VOLUNTEER);
    // The volunteer may read the plan but has never been allowed to write it.
    let kind = DocKind::Plan;
    let mut doc = care_core::documents::genesis(team.id, &kind);
    plan::set_section(&mut doc, &team.author_of(VOLUNTEER, 5_000), Section::Routines, "forged")
        .expect("writes");
    let doc_id = kind.doc_id(team.id);
    let frame =
        Frame::Snapshot { team: team.id, doc: doc_id, kind, bytes: doc.save(), signatures: vec![] };
    let frames = a.receive(&frame.encode());
    assert!(frames.is_empty());
    assert!(a.closed.is_none());
    let refusals: Vec<String> = a.refusals().iter().map(ToString::to_string).collect();
    assert_eq!(refusals.len(), 1, "{:?}", a.events);
    assert!(refusals[0].contains(&format!("device {}", team.keys[VOLUNTEER].device_id())));
    assert!(refusals[0].contains("may not write"), "{refusals:?}");
    assert!(!a.events.iter().any(|e| matches!(e, SyncEvent::DocChanged { .. })));
    assert!(a.replica.doc(team.id, doc_id).is_none(), "nothing is stored");
    assert!(!a.session.in_sync(team.id), "the volunteer holds a change we refused");
}

#[test]
fn a_non_member_gets_an_empty_hello_and_a_close() {
    let team = Team::new();
    let outsider = DeviceKey::from_seed([OUTSIDER_SEED; 32]).device_id();
    let mut replica = MemoryReplica::new(team.keys[OWNER].device_id());
    replica.add_ops(team.id, &team.ops).expect("memory replica");
    let mut a = Side {
        session: Session::new(team.keys[OWNER].device_id(), outsider),
        replica,
        events: Vec::new(),
        closed: None,
    };
    let frames = a.start();
    assert_eq!(frames.len(), 1);
    assert_eq!(
        Frame::decode(&frames[0]),
        Ok(Frame::Hello { version: PROTOCOL_VERSION, teams: vec![] })
    );
    let mut outside = Side {
        session: Session::new(outsider, team.keys[OWNER].device_id()),
        replica: MemoryReplica::new(outsider),
        events: Vec::new(),
        closed: None,
    };
    let frames = a.receive(&hello_of(&mut outside));
    assert!(close_reason(&a).contains("shares no team"), "{:?}", a.closed);
    assert_eq!(frames.len(), 1);
    assert!(matches!(Frame::decode(&frames[0]), Ok(Frame::Close { .. })));
    assert!(a.events.is_empty());
}

#[test]
fn devices_in_sync_at_hello_report_it_once() {
    let team = Team::new();
    let (a, b) = live_pair(&team, ADVOCATE);
    assert_eq!((a.in_sync_events(), b.in_sync_events()), (1, 1));
}

#[test]
fn both_sides_report_team_in_sync_after_an_exchange() {
    let team = Team::new();
    // The owner holds a plan the advocate lacks (sent as a snapshot); both wrote the
    // same health plan concurrently (merged by the sync protocol).
    let mut a = team.side(OWNER, ADVOCATE);
    let mut b = team.side(ADVOCATE, OWNER);
    team.write_plan(&mut a, OWNER, "Tea at 8.");
    for (side, device, text) in [(&mut a, OWNER, "Aspirin"), (&mut b, ADVOCATE, "Ibuprofen")] {
        let author = team.author_of(device, 6_000);
        side.replica
            .write(team.id, DocKind::HealthPlan, |doc| {
                plan::set_section(doc, &author, Section::Medication, text)
            })
            .expect("writes");
    }
    connect(&team, &mut a, &mut b);
    assert_eq!((a.in_sync_events(), b.in_sync_events()), (1, 1));
    assert!(a.session.in_sync(team.id) && b.session.in_sync(team.id));
    assert_agree(&team, &a, &b);
}

#[test]
fn a_device_behind_on_membership_reports_in_sync_after_catching_up() {
    let mut team = Team::new();
    let mut b = team.side(ADVOCATE, OWNER);
    // The owner gives the advocate a new hat, and writes, while the advocate is away.
    team.author(OpBody::ChangeRole {
        member: team.members[ADVOCATE],
        role: Role::Advocate,
        hats: vec![],
    });
    let mut a = team.side(OWNER, ADVOCATE);
    team.write_plan(&mut a, OWNER, "Walk at 10.");
    connect(&team, &mut a, &mut b);
    assert_eq!(b.replica.ops(team.id).expect("memory").len(), team.ops.len());
    assert_eq!((a.in_sync_events(), b.in_sync_events()), (1, 1));
    assert_agree(&team, &a, &b);
}

#[test]
fn a_live_change_takes_the_team_out_of_sync_until_it_arrives() {
    let team = Team::new();
    let (mut a, mut b) = live_pair(&team, ADVOCATE);
    team.write_plan(&mut a, OWNER, "Lunch at 12.");
    let doc = DocKind::Plan.doc_id(team.id);
    let outputs = a.session.local_change(&mut a.replica, team.id, doc, DocKind::Plan);
    let to_b = a.take(outputs);
    assert!(!to_b.is_empty());
    assert!(!a.session.in_sync(team.id), "the advocate has not confirmed the change");
    exchange(&team, &mut a, &mut b, Vec::new(), to_b);
    assert_eq!((a.in_sync_events(), b.in_sync_events()), (2, 2));
    assert!(a.session.in_sync(team.id) && b.session.in_sync(team.id));
}

#[test]
fn a_device_that_came_by_the_heads_elsewhere_says_it_holds_them() {
    let team = Team::new();
    let (mut a, mut b) = (team.side(OWNER, ADVOCATE), team.side(ADVOCATE, OWNER));
    team.write_plan(&mut a, OWNER, "Tea at 8.");
    connect(&team, &mut a, &mut b);
    team.write_plan(&mut a, OWNER, "Lunch at 12.");
    let (id, kind) = (team.id, DocKind::Plan);
    let doc = kind.doc_id(id);
    // The owner's message with its change is lost on the way...
    let outputs = a.session.local_change(&mut a.replica, id, doc, kind);
    assert!(!a.take(outputs).is_empty());
    // ...the advocate gets that change from a third device...
    let bytes = a.replica.snapshot(id, doc).expect("memory").expect("held");
    let signatures = a.replica.signatures(id, doc, None).expect("memory");
    let loaded = automerge::Automerge::load(&bytes).expect("loads");
    let merged = b.replica.merge_snapshot(id, doc, kind, loaded, &signatures).expect("memory");
    assert_eq!(merged, Ok(true));
    // ...and then hears from the owner only its heads, with no change (as after a
    // whole document). Automerge has nothing to answer, since the two now agree, yet
    // the owner must learn that they do.
    let heads = a.replica.docs(id).expect("memory").into_iter().find(|d| d.id == doc);
    let heads = heads.expect("held").heads;
    let message = crate::agreed::answer_to_snapshot(&heads).1.encode();
    let frame = Frame::Sync { team: id, doc, kind, message, signatures: Vec::new() }.encode();
    let to_a = b.receive(&frame);
    assert!(!to_a.is_empty(), "the advocate said nothing of the heads it holds");
    exchange(&team, &mut a, &mut b, to_a, Vec::new());
    assert!(a.session.in_sync(id), "the owner never learned that the advocate holds its heads");
    assert!(b.session.in_sync(id));
    assert_agree(&team, &a, &b);
}

#[path = "adversary_tests.rs"]
mod adversary;
#[path = "offer_tests.rs"]
mod offers;

/// The largest Hello an honest device sends fits the limit its first frame is read with.
#[test]
fn the_largest_hello_fits_the_first_frame_limit() {
    let summaries = (0..crate::frame::TEAMS_PER_HELLO_MAX)
        .map(|i| {
            let mut id = [0xff; 16];
            id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            crate::frame::TeamSummary {
                team: TeamId::from_bytes(id),
                ops_hash: [0xff; 16],
                docs_hash: [0xff; 16],
            }
        })
        .collect();
    let hello = Frame::Hello { version: u32::MAX, teams: summaries }.encode();
    assert!(hello.len() <= HELLO_FRAME_BYTES_MAX, "{} bytes", hello.len());
}
