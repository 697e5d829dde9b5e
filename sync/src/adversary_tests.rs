//! Attacks on one session with the protocol's own frames: a member (or a stranger) sends
//! what an honest device never would, and the victim must store nothing of it, report
//! it, and go on syncing everything else.

use automerge::sync::{ChunkList, Message, MessageVersion};
use automerge::transaction::Transactable;
use automerge::{ActorId, ROOT, ReadDoc};
use care_core::{ChangeSig, Month, Op, OpHash};
use proptest::prelude::*;

use super::*;
use crate::authorship::AuthorshipError;
use crate::frame::TeamSummary;
use crate::refusal::Refusal;

fn op_hashes(side: &Side, team: TeamId) -> Vec<OpHash> {
    let mut hashes: Vec<_> =
        side.replica.ops(team).expect("memory").iter().map(SignedOp::hash).collect();
    hashes.sort();
    hashes
}

/// A sync frame for the team's plan carrying `message`.
fn sync_frame(team: &Team, kind: DocKind, message: Vec<u8>) -> Vec<u8> {
    let frame =
        Frame::Sync { team: team.id, doc: kind.doc_id(team.id), kind, message, signatures: vec![] };
    frame.encode()
}

/// A sync frame carrying `message` and `signatures`.
fn signed_sync_frame(
    team: &Team,
    kind: DocKind,
    message: Vec<u8>,
    signatures: Vec<ChangeSig>,
) -> Vec<u8> {
    Frame::Sync { team: team.id, doc: kind.doc_id(team.id), kind, message, signatures }.encode()
}

/// `signer`'s signature of `change`, under the membership heads `heads`.
fn sign_under(
    team: &Team,
    signer: usize,
    kind: DocKind,
    change: &automerge::Change,
    heads: &[OpHash],
) -> ChangeSig {
    ChangeSig::sign(&team.keys[signer], team.id, kind.doc_id(team.id), change.hash().0, heads)
}

/// `signer`'s signature of `change` under the team's membership as it stands.
fn sign(team: &Team, signer: usize, kind: DocKind, change: &automerge::Change) -> ChangeSig {
    let (membership, _) = Membership::from_ops(team.id, &team.ops).expect("valid ops");
    sign_under(team, signer, kind, change, membership.heads())
}

/// A change to the plan under `actor`'s device key (its Automerge actor), by member `by`.
fn plan_change(team: &Team, actor: usize, by: usize, text: &str) -> automerge::Change {
    let mut doc = care_core::documents::genesis(team.id, &DocKind::Plan);
    let author = Author {
        member: team.members[by],
        device: team.keys[actor].device_id(),
        at: Timestamp(5_000),
    };
    plan::set_section(&mut doc, &author, Section::Routines, text).expect("writes");
    doc.get_last_local_change().expect("a change").clone()
}

/// An encoded sync message announcing `heads` and carrying one change.
fn message_with(change: &automerge::Change, heads: Vec<automerge::ChangeHash>) -> Vec<u8> {
    Message {
        heads,
        need: vec![],
        have: vec![],
        changes: ChunkList::from(vec![change.raw_bytes().to_vec()]),
        flags: None,
        version: MessageVersion::V1,
    }
    .encode()
}

/// After an attack, the session still carries an honest write: the owner's plan
/// reaches the peer.
fn still_syncs(team: &Team, a: &mut Side, b: &mut Side) {
    team.write_plan(a, OWNER, "Tea at 9, after the attack.");
    let doc = DocKind::Plan.doc_id(team.id);
    let outputs = a.session.local_change(&mut a.replica, team.id, doc, DocKind::Plan);
    let to_b = a.take(outputs);
    exchange(team, a, b, Vec::new(), to_b);
    let theirs = b.replica.doc(team.id, doc).expect("the plan arrived");
    assert_eq!(
        plan::section(theirs, Section::Routines).expect("reads"),
        "Tea at 9, after the attack."
    );
}

/// A member makes a team of its own that lists the victim's device, and sends its ops:
/// the victim does not start holding that team, and nothing of it is parsed.
#[test]
fn ops_for_a_team_the_receiver_never_joined_are_refused_unread() {
    let team = Team::new();
    let (mut a, mut b) = live_pair(&team, ADVOCATE);
    let advocate = &team.keys[ADVOCATE];
    let create =
        create_team(advocate, Timestamp(0), "Lure", MemberId::from_bytes([7; 16]), "Sam", [1; 16]);
    let lure = team_id(&create);
    let (membership, _) = Membership::from_ops(lure, [&create]).expect("valid");
    let victim = MemberId::from_bytes([8; 16]);
    let add = membership
        .author_op(
            advocate,
            Timestamp(1),
            OpBody::AddMember {
                member: victim,
                name: "Rosa".into(),
                role: Role::Advocate,
                hats: vec![],
            },
        )
        .expect("the owner of the lure may");
    let frame = Frame::Ops { team: lure, ops: vec![create.to_bytes(), add.to_bytes()] };
    let frames = a.receive(&frame.encode());
    assert!(frames.is_empty());
    assert!(a.closed.is_none());
    assert!(!a.replica.teams().expect("memory").contains(&lure), "the victim holds no lure");
    assert_eq!(
        a.refusals(),
        vec![Refusal::NotCurrent { device: team.keys[ADVOCATE].device_id(), team: lure }]
    );
    still_syncs(&team, &mut a, &mut b);
}

/// A member sends ops that do not verify against the log: by a volunteer without the
/// right, with a predecessor nobody has, with a broken signature. None is stored (so
/// none is passed on), each batch is reported, and the membership is unchanged.
#[test]
fn ops_that_do_not_verify_are_neither_stored_nor_passed_on() {
    let team = Team::new();
    let (mut a, mut b) = live_pair(&team, VOLUNTEER);
    let before = op_hashes(&a, team.id);
    let (membership, _) = Membership::from_ops(team.id, &team.ops).expect("valid");
    let heads = membership.heads().to_vec();
    let volunteer = &team.keys[VOLUNTEER];
    let intruder = DeviceKey::from_seed([OUTSIDER_SEED; 32]).device_id();
    let sign = |preds: Vec<OpHash>, body: OpBody| {
        SignedOp::sign(volunteer, &Op { team: Some(team.id), preds, at: Timestamp(9), body })
    };
    let unauthorised = sign(
        heads.clone(),
        OpBody::AddDevice { member: team.members[OWNER], device: intruder, label: "x".into() },
    );
    let dangling = sign(
        vec![OpHash::from_bytes([42; 32])],
        OpBody::RemoveMember { member: team.members[ADVOCATE] },
    );
    let mut forged =
        sign(heads, OpBody::RemoveDevice { device: team.keys[VOLUNTEER].device_id() }).to_bytes();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let frame = Frame::Ops {
        team: team.id,
        ops: vec![unauthorised.to_bytes(), dangling.to_bytes(), forged],
    };
    let frames = a.receive(&frame.encode());
    assert!(frames.is_empty(), "nothing is passed back");
    assert!(a.closed.is_none());
    assert_eq!(op_hashes(&a, team.id), before, "nothing is stored");
    assert!(!a.events.iter().any(|e| matches!(e, SyncEvent::MembershipChanged { .. })));
    let refusals = a.refusals();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(matches!(refusals[0], Refusal::InvalidOps { count: 3, .. }), "{refusals:?}");
    still_syncs(&team, &mut a, &mut b);
}

/// A team whose log this device cannot replay is left out of the session, reported
/// alone, and the device's other teams go on syncing.
#[test]
fn a_team_whose_log_cannot_be_read_is_isolated() {
    let team = Team::new();
    let mut a = team.side(OWNER, ADVOCATE);
    let mut b = team.side(ADVOCATE, OWNER);
    // A second team on the owner's device whose op creating it is missing.
    let other = Team::new_named("Bo's team");
    let broken: Vec<SignedOp> = other.ops[1..].to_vec();
    a.replica.add_ops(other.id, &broken).expect("memory");
    connect(&team, &mut a, &mut b);
    assert!(a.closed.is_none() && b.closed.is_none());
    assert!(a.session.in_sync(team.id) && b.session.in_sync(team.id));
    let refusals = a.refusals();
    assert!(
        refusals
            .iter()
            .all(|r| matches!(r, Refusal::TeamUnreadable { team, .. } if *team == other.id)),
        "{refusals:?}"
    );
    assert!(!refusals.is_empty());
    still_syncs(&team, &mut a, &mut b);
}

/// Bloom filters that make Automerge divide by zero or reserve gigabytes are refused
/// for that document; the session goes on.
#[test]
fn a_hostile_bloom_filter_is_refused_and_the_session_goes_on() {
    let team = Team::new();
    let (mut a, mut b) = live_pair(&team, ADVOCATE);
    // Type, no heads, no needs, one have with no last-sync heads and this filter, no
    // changes.
    for bloom in [[5u8, 0, 7].as_slice(), &[1, 10, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0]] {
        let mut message = vec![0x42, 0, 0, 1, 0, bloom.len() as u8];
        message.extend_from_slice(bloom);
        message.push(0);
        a.receive(&sync_frame(&team, DocKind::Plan, message));
    }
    assert!(a.closed.is_none());
    let refusals = a.refusals();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(refusals.iter().all(|r| matches!(r, Refusal::Malformed(_))), "{refusals:?}");
    still_syncs(&team, &mut a, &mut b);
}

/// A member writes two different changes under one sequence number and sends each to
/// a different device. Each device refuses the other's for that document only; the
/// document stays as it was and every other exchange still works.
#[test]
fn a_change_reusing_a_sequence_number_is_refused_for_that_document_only() {
    let team = Team::new();
    let (mut a, mut b) = live_pair(&team, ADVOCATE);
    let actor = ActorId::from(team.keys[ADVOCATE].device_id().as_bytes());
    let kind = DocKind::Plan;
    let doc = kind.doc_id(team.id);
    let mut versions = Vec::new();
    for (i, text) in ["first telling", "second telling"].into_iter().enumerate() {
        let mut forked = care_core::documents::genesis(team.id, &kind).with_actor(actor.clone());
        let by = team.author_of(ADVOCATE, 5_000 + i as i64);
        plan::set_section(&mut forked, &by, Section::Routines, text).expect("writes");
        versions.push(forked.get_last_local_change().expect("a change").clone());
    }
    // Both signed by the advocate, as its own: the signatures hold, the contents differ.
    let send = |side: &mut Side, change: &automerge::Change| {
        let message = message_with(change, vec![change.hash()]);
        let signatures = vec![sign(&team, ADVOCATE, kind, change)];
        side.receive(&signed_sync_frame(&team, kind, message, signatures));
    };
    let first_hash = versions[0].hash();
    send(&mut a, &versions[0]);
    let held = a.replica.doc(team.id, doc).expect("applied").get_heads();
    assert_eq!(held, vec![first_hash]);
    send(&mut a, &versions[1]);
    assert!(a.closed.is_none());
    assert_eq!(a.replica.doc(team.id, doc).expect("held").get_heads(), held, "left as it was");
    let refusals = a.refusals();
    assert!(refusals.iter().any(|r| matches!(r, Refusal::DoesNotApply(_))), "{refusals:?}");
    assert!(!a.session.in_sync(team.id));
    // Other documents still sync.
    let health = DocKind::HealthPlan;
    let author = team.author_of(ADVOCATE, 6_000);
    b.replica
        .write(team.id, health, |doc| {
            care_core::documents::plan::set_section(
                doc,
                &author,
                Section::Medication,
                "Aspirin at 8.",
            )
        })
        .expect("writes");
    let outputs = b.session.local_change(&mut b.replica, team.id, health.doc_id(team.id), health);
    let to_a = b.take(outputs);
    // The attacker's own side never saw what it forged, so it may think itself in sync:
    // deliver without the agreement check of `exchange`.
    pump(&mut a, &mut b, to_a);
    assert_eq!(
        a.replica.doc(team.id, health.doc_id(team.id)).map(|d| d.get_heads()),
        b.replica.doc(team.id, health.doc_id(team.id)).map(|d| d.get_heads())
    );
}

/// Delivers frames both ways until quiet.
fn pump(a: &mut Side, b: &mut Side, mut to_a: Vec<Vec<u8>>) {
    let mut to_b = Vec::new();
    for _ in 0..FRAMES_PER_EXCHANGE_MAX {
        if to_a.is_empty() && to_b.is_empty() {
            return;
        }
        if !to_a.is_empty() {
            to_b.extend(a.receive(&to_a.remove(0)));
        }
        if !to_b.is_empty() {
            to_a.extend(b.receive(&to_b.remove(0)));
        }
    }
    panic!("the exchange did not end");
}

/// A member sends a change that overwrites the text of another member's shift note, as
/// the local API never would (a correction is an amendment): it is refused before it is
/// applied, and the note keeps its words.
#[test]
fn a_change_that_overwrites_a_note_is_refused() {
    let team = Team::new();
    let (mut a, mut b) = live_pair(&team, ADVOCATE);
    let month = Month::new(2026, 11).expect("a month");
    let kind = DocKind::Notes { stream: care_core::NoteStream::Care, month };
    let id = care_core::EntryId::new(month, [1; 8]);
    let note =
        care_core::documents::NewNote { text: "Walked to the shop.".into(), ..Default::default() };
    let author = team.author_of(OWNER, 5_000);
    a.replica
        .write(team.id, kind, |doc| care_core::documents::notes::add_note(doc, &author, id, &note))
        .expect("writes");
    let outputs = a.session.local_change(&mut a.replica, team.id, kind.doc_id(team.id), kind);
    let to_b = a.take(outputs);
    pump(&mut b, &mut a, to_b);
    let theirs = b.replica.doc(team.id, kind.doc_id(team.id)).expect("the advocate has the note");

    // The advocate rewrites the owner's note under its own actor.
    let mut forged =
        theirs.fork().with_actor(ActorId::from(team.keys[ADVOCATE].device_id().as_bytes()));
    let notes_obj = forged.get(ROOT, "notes").expect("reads").expect("notes").1;
    let note_obj = forged.get(&notes_obj, id.to_string()).expect("reads").expect("the note").1;
    forged
        .transact(|tx| tx.put(&note_obj, "text", "Stayed in all day."))
        .map_err(|f| f.error)
        .expect("writes");
    let change = forged.get_last_local_change().expect("a change");
    let message = message_with(&change, forged.get_heads());
    let before = a.replica.doc(team.id, kind.doc_id(team.id)).expect("held").get_heads();
    a.receive(&sync_frame(&team, kind, message));
    assert!(a.closed.is_none());
    assert!(
        a.refusals().iter().any(|r| matches!(r, Refusal::BreaksDocumentRules(_))),
        "{:?}",
        a.refusals()
    );
    let held = a.replica.doc(team.id, kind.doc_id(team.id)).expect("held");
    assert_eq!(held.get_heads(), before, "nothing was applied");
    let kept = care_core::documents::notes::note(held, id).expect("reads").expect("the note");
    assert_eq!(kept.text, "Walked to the shop.");
}

/// A worker writes the circle relay into the team document, which only those who manage
/// the team may write: the change is refused, so it can redirect no device's network.
#[test]
fn a_worker_cannot_name_a_relay_in_the_team_document() {
    let mut team = Team::new();
    let worker_key = DeviceKey::from_seed([4; 32]);
    let worker = MemberId::from_bytes([4; 16]);
    team.author(OpBody::AddMember {
        member: worker,
        name: "Wil".into(),
        role: Role::Worker,
        hats: vec![],
    });
    let device = worker_key.device_id();
    team.author(OpBody::AddDevice { member: worker, device, label: "phone".into() });
    let mut a = team.side(OWNER, ADVOCATE);
    a.session = Session::new(team.keys[OWNER].device_id(), device);
    let mut w = Side {
        session: Session::new(device, team.keys[OWNER].device_id()),
        replica: MemoryReplica::new(device),
        events: Vec::new(),
        closed: None,
    };
    w.replica.add_ops(team.id, &team.ops).expect("memory replica");
    connect(&team, &mut a, &mut w);

    let kind = DocKind::Team;
    let by = Author { member: worker, device, at: Timestamp(9_000) };
    let mut doc = care_core::documents::genesis(team.id, &kind);
    let info = care_core::documents::TeamInfo {
        name: "Rosa's team".into(),
        circle: Some("http://attacker.invalid".into()),
    };
    care_core::documents::team_doc::set_team_info(&mut doc, &by, &info).expect("writes");
    let change = doc.get_last_local_change().expect("a change");
    a.receive(&sync_frame(&team, kind, message_with(&change, doc.get_heads())));
    assert!(a.closed.is_none());
    assert!(
        a.refusals().iter().any(|r| matches!(r, Refusal::MayNotWrite(_))),
        "{:?}",
        a.refusals()
    );
    let held = a.replica.doc(team.id, kind.doc_id(team.id));
    let circle = held
        .and_then(|d| care_core::documents::team_doc::team_info(d).ok().flatten())
        .and_then(|i| i.circle);
    assert_eq!(circle, None, "the owner's team document names no relay");
}

/// Frames about a team that is not shared, or a kind one side may not read, are refused
/// before anything in them is parsed: a garbage message costs nothing.
#[test]
fn frames_for_a_team_not_shared_are_refused_unread() {
    let team = Team::new();
    let (mut a, mut b) = live_pair(&team, VOLUNTEER);
    let other = Team::new_named("Bo's team");
    let frame = Frame::Sync {
        team: other.id,
        doc: DocKind::Plan.doc_id(other.id),
        kind: DocKind::Plan,
        message: vec![0xff; 64],
        signatures: vec![],
    };
    a.receive(&frame.encode());
    // The volunteer may not read the health plan: its garbage is not parsed either.
    a.receive(&sync_frame(&team, DocKind::HealthPlan, vec![0xff; 64]));
    assert!(a.closed.is_none());
    let volunteer = team.keys[VOLUNTEER].device_id();
    assert_eq!(
        a.refusals(),
        vec![
            Refusal::NotCurrent { device: volunteer, team: other.id },
            Refusal::MayNotRead { kind: DocKind::HealthPlan },
        ]
    );
    still_syncs(&team, &mut a, &mut b);
}

/// A Hello naming a team this device holds but the sender is not a current device of
/// is reported; when it names nothing shared the session closes at once.
#[test]
fn a_hello_naming_a_team_the_sender_is_not_in_is_reported_and_a_stranger_closed() {
    let team = Team::new();
    let stranger = DeviceKey::from_seed([OUTSIDER_SEED; 32]).device_id();
    let mut a = Side {
        session: Session::new(team.keys[OWNER].device_id(), stranger),
        replica: MemoryReplica::new(team.keys[OWNER].device_id()),
        events: Vec::new(),
        closed: None,
    };
    a.replica.add_ops(team.id, &team.ops).expect("memory");
    a.start();
    let summary = TeamSummary { team: team.id, ops_hash: [0; 16], docs_hash: [0; 16] };
    let hello = Frame::Hello { version: PROTOCOL_VERSION, teams: vec![summary] };
    a.receive(&hello.encode());
    assert!(matches!(a.closed, Some(CloseReason::NothingShared { .. })), "{:?}", a.closed);
    assert_eq!(a.refusals(), vec![Refusal::NotCurrent { device: stranger, team: team.id }]);
    assert!(!a.session.admitted());
}

/// Whole documents, each of a month, until the team holds the most documents a peer
/// may make it hold: the next is refused, and the documents already held still sync.
#[test]
fn a_member_cannot_make_a_device_hold_documents_without_bound() {
    let team = Team::new();
    let (mut a, _b) = live_pair(&team, ADVOCATE);
    let months = (2000..2200).flat_map(|y| (1..=12).filter_map(move |m| Month::new(y, m)));
    let mut refused_at = None;
    for (i, month) in months.enumerate() {
        let kind = DocKind::Rota { month };
        let genesis = care_core::documents::genesis(team.id, &kind).save();
        let frame = Frame::Snapshot {
            team: team.id,
            doc: kind.doc_id(team.id),
            kind,
            bytes: genesis,
            signatures: vec![],
        };
        a.receive(&frame.encode());
        if a.refusals().iter().any(|r| matches!(r, Refusal::OverLimit { .. })) {
            refused_at = Some(i);
            break;
        }
    }
    assert!(a.closed.is_none());
    assert_eq!(refused_at, Some(crate::session::DOCS_PER_TEAM_MAX));
    assert_eq!(a.replica.docs(team.id).expect("memory").len(), crate::session::DOCS_PER_TEAM_MAX);
}

/// Whole documents of months far after this device's clock are refused: a peer cannot
/// fill the store with the rotas of the next century.
#[test]
fn documents_of_months_far_ahead_are_refused() {
    let team = Team::new();
    let (mut a, _b) = live_pair(&team, ADVOCATE);
    let now = Month::new(2026, 12).expect("a month");
    a.replica.set_this_month(now);
    for (year, month, kept) in [(2028, 12, true), (2029, 1, false), (2126, 1, false)] {
        let kind = DocKind::Rota { month: Month::new(year, month).expect("a month") };
        let bytes = care_core::documents::genesis(team.id, &kind).save();
        let frame = Frame::Snapshot {
            team: team.id,
            doc: kind.doc_id(team.id),
            kind,
            bytes,
            signatures: vec![],
        };
        a.receive(&frame.encode());
        assert_eq!(a.replica.doc(team.id, kind.doc_id(team.id)).is_some(), kept, "{kind}");
    }
    assert!(a.closed.is_none());
    let refused = a.refusals().iter().filter(|r| matches!(r, Refusal::OverLimit { .. })).count();
    assert_eq!(refused, 2);
}

/// The frames of a real exchange (both Hellos, ops, heads, snapshots, sync messages),
/// recorded once.
fn exchange_frames() -> &'static [Vec<u8>] {
    static FRAMES: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    FRAMES.get_or_init(record_exchange)
}

fn record_exchange() -> Vec<Vec<u8>> {
    let team = Team::new();
    let mut a = team.side(OWNER, ADVOCATE);
    let mut b = team.side(ADVOCATE, OWNER);
    team.write_plan(&mut a, OWNER, "Tea at 8.");
    let author = team.author_of(ADVOCATE, 7_000);
    b.replica
        .write(team.id, DocKind::HealthPlan, |doc| {
            plan::set_section(doc, &author, Section::Medication, "Aspirin")
        })
        .expect("writes");
    let mut frames = a.start();
    frames.extend(b.start());
    let (to_b, to_a) = (frames[..1].to_vec(), frames[1..].to_vec());
    let mut seen = to_b.clone();
    seen.extend(to_a.clone());
    let mut queue_a = to_a;
    let mut queue_b = to_b;
    for _ in 0..FRAMES_PER_EXCHANGE_MAX {
        if queue_a.is_empty() && queue_b.is_empty() {
            break;
        }
        if !queue_a.is_empty() {
            let out = a.receive(&queue_a.remove(0));
            seen.extend(out.clone());
            queue_b.extend(out);
        }
        if !queue_b.is_empty() {
            let out = b.receive(&queue_b.remove(0));
            seen.extend(out.clone());
            queue_a.extend(out);
        }
    }
    seen
}

/// Cases of the mutation test: 256 in CI; `CARE_FUZZ_CASES` runs it longer.
fn fuzz_cases() -> u32 {
    std::env::var("CARE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

    /// Each frame of a real exchange with one byte changed, fed to a live session: it
    /// never panics, and it either goes on or closes with a reason.
    #[test]
    fn mutated_frames_of_a_real_exchange_never_panic_a_session(
        pick in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let frames = exchange_frames();
        let mut frame = pick.get(frames).clone();
        let i = at.index(frame.len());
        frame[i] ^= byte.max(1);
        let team = Team::new();
        let (mut a, _b) = live_pair(&team, ADVOCATE);
        a.receive(&frame);
        prop_assert!(a.closed.as_ref().is_none_or(|reason| !reason.to_string().is_empty()));
    }
}

/// A care team's notes for a month, written on `side` by the owner: enough to be larger
/// than one part.
fn write_notes(team: &Team, side: &mut Side, notes: u8) -> DocKind {
    let month = Month::new(2026, 11).expect("a month");
    let kind = DocKind::Notes { stream: care_core::NoteStream::Care, month };
    for n in 0..notes {
        // Words that do not compress away: hex of a hash per note.
        let text = (0..4u8).map(|i| blake3::hash(&[n, i]).to_hex().to_string()).collect();
        let note = care_core::documents::NewNote { text, ..Default::default() };
        let id = care_core::EntryId::new(month, [n; 8]);
        let author = team.author_of(OWNER, 5_000);
        side.replica
            .write(team.id, kind, |doc| {
                care_core::documents::notes::add_note(doc, &author, id, &note)
            })
            .expect("writes");
    }
    kind
}

/// A document larger than a part crosses in parts, and arrives whole.
#[test]
fn a_document_larger_than_a_part_is_sent_in_parts() {
    let team = Team::new();
    let mut a = team.side(OWNER, ADVOCATE);
    let mut b = team.side(ADVOCATE, OWNER);
    let kind = write_notes(&team, &mut a, 60);
    let size = a.replica.doc(team.id, kind.doc_id(team.id)).expect("written").save().len();
    assert!(size > crate::frame::SNAPSHOT_PART_BYTES, "{size} bytes");
    let frames = record_connect(&team, &mut a, &mut b);
    let parts = frames
        .iter()
        .filter(|f| matches!(Frame::decode(f), Ok(Frame::SnapshotPart { .. })))
        .count();
    assert_eq!(parts, size.div_ceil(crate::frame::SNAPSHOT_PART_BYTES));
    assert_eq!(
        b.replica.doc(team.id, kind.doc_id(team.id)).map(|d| d.get_heads()),
        a.replica.doc(team.id, kind.doc_id(team.id)).map(|d| d.get_heads())
    );
    assert!(a.session.in_sync(team.id) && b.session.in_sync(team.id));
}

/// A general note written on `side` by the owner, numbered `n`.
fn write_general_note(team: &Team, side: &mut Side, n: u8) -> DocKind {
    let month = Month::new(2026, 11).expect("a month");
    let kind = DocKind::Notes { stream: care_core::NoteStream::General, month };
    let note = care_core::documents::NewNote { text: format!("note {n}"), ..Default::default() };
    let id = care_core::EntryId::new(month, [n; 8]);
    let author = team.author_of(OWNER, 5_000);
    side.replica
        .write(team.id, kind, |doc| care_core::documents::notes::add_note(doc, &author, id, &note))
        .expect("writes");
    kind
}

/// A live edit of one document that a connection's writer sends ahead of another
/// document's remaining parts (`care-net`'s lanes) is taken in between them, and the
/// document in parts still arrives whole.
#[test]
fn a_live_edit_between_two_parts_of_another_document_is_taken_in() {
    let team = Team::new();
    let mut a = team.side(OWNER, ADVOCATE);
    let mut b = team.side(ADVOCATE, OWNER);
    let general = write_general_note(&team, &mut a, 1);
    connect(&team, &mut a, &mut b);
    let kind = write_notes(&team, &mut a, 60);
    let outputs = a.session.local_change(&mut a.replica, team.id, kind.doc_id(team.id), kind);
    // A document the remote lacks is offered, and sent whole when asked for.
    let offer = a.take(outputs);
    assert!(matches!(Frame::decode(&offer[0]), Ok(Frame::Offer { .. })), "an offer");
    let want = b.receive(&offer[0]);
    assert!(matches!(Frame::decode(&want[0]), Ok(Frame::Want { .. })), "a want");
    let mut to_b = a.receive(&want[0]);
    let is_part = |f: &Vec<u8>| matches!(Frame::decode(f), Ok(Frame::SnapshotPart { .. }));
    assert!(to_b.len() >= 3 && to_b.iter().all(is_part), "{} frames", to_b.len());
    write_general_note(&team, &mut a, 2);
    let doc = general.doc_id(team.id);
    let outputs = a.session.local_change(&mut a.replica, team.id, doc, general);
    let edit = a.take(outputs);
    assert!(matches!(Frame::decode(&edit[0]), Ok(Frame::Sync { .. })), "a sync message");
    // Sent after the parts; delivered after the first.
    to_b.splice(1..1, edit);
    exchange(&team, &mut a, &mut b, Vec::new(), to_b);
    assert!(a.refusals().is_empty() && b.refusals().is_empty(), "{:?}", b.refusals());
    for doc in [kind.doc_id(team.id), doc] {
        let heads = |s: &Side| s.replica.doc(team.id, doc).map(|d| d.get_heads());
        assert_eq!(heads(&b), heads(&a));
    }
    assert!(a.session.in_sync(team.id) && b.session.in_sync(team.id));
}

/// Connects two sides and runs them until quiet, returning every frame sent.
fn record_connect(team: &Team, a: &mut Side, b: &mut Side) -> Vec<Vec<u8>> {
    let (mut to_b, mut to_a) = (a.start(), b.start());
    let mut seen: Vec<Vec<u8>> = to_b.iter().chain(&to_a).cloned().collect();
    for _ in 0..FRAMES_PER_EXCHANGE_MAX {
        if to_a.is_empty() && to_b.is_empty() {
            assert_agree(team, a, b);
            return seen;
        }
        if !to_a.is_empty() {
            let out = a.receive(&to_a.remove(0));
            seen.extend(out.iter().cloned());
            to_b.extend(out);
        }
        if !to_b.is_empty() {
            let out = b.receive(&to_b.remove(0));
            seen.extend(out.iter().cloned());
            to_a.extend(out);
        }
    }
    panic!("the exchange did not end");
}

/// Parts out of turn, or of another document before the last part, are refused and
/// nothing is stored; the session goes on.
#[test]
fn parts_out_of_turn_are_refused() {
    let team = Team::new();
    let (mut a, mut b) = live_pair(&team, ADVOCATE);
    let mut source = team.side(OWNER, ADVOCATE);
    let kind = write_notes(&team, &mut source, 60);
    let bytes = source.replica.doc(team.id, kind.doc_id(team.id)).expect("written").save();
    let parts: Vec<&[u8]> = bytes.chunks(crate::frame::SNAPSHOT_PART_BYTES).collect();
    let total = parts.len() as u32;
    let part = |index: u32, kind: DocKind| {
        Frame::SnapshotPart {
            team: team.id,
            doc: kind.doc_id(team.id),
            kind,
            index,
            total,
            bytes: parts[index as usize].to_vec(),
            signatures: vec![],
        }
        .encode()
    };
    // Starts in the middle; then skips a part; then switches to another document.
    a.receive(&part(1, kind));
    a.receive(&part(0, kind));
    a.receive(&part(2, kind));
    a.receive(&part(0, kind));
    let other = DocKind::Notes {
        stream: care_core::NoteStream::General,
        month: Month::new(2026, 11).expect("a month"),
    };
    a.receive(&part(1, other));
    assert!(a.closed.is_none());
    let refused = a.refusals().iter().filter(|r| matches!(r, Refusal::Malformed(_))).count();
    assert_eq!(refused, 3, "{:?}", a.refusals());
    assert!(a.replica.doc(team.id, kind.doc_id(team.id)).is_none(), "nothing is stored");
    still_syncs(&team, &mut a, &mut b);
}

/// A member writes a change under another device's actor id (the owner's, who may write
/// the plan): sent unsigned, signed with its own key, with a true signature of another
/// change relabelled, or with that signature as it is. Each is refused for its
/// authorship, the plan is left as it was, and the session goes on.
#[test]
fn a_change_under_another_devices_actor_is_refused() {
    let team = Team::new();
    let (mut a, mut b) = live_pair(&team, ADVOCATE);
    let kind = DocKind::Plan;
    let forged = plan_change(&team, OWNER, ADVOCATE, "Forged by the advocate.");
    let genuine = plan_change(&team, OWNER, OWNER, "Written by the owner.");
    let owners = sign(&team, OWNER, kind, &genuine);
    let mut relabelled = owners.clone();
    relabelled.hash = forged.hash().0;
    let attempts =
        [vec![], vec![sign(&team, ADVOCATE, kind, &forged)], vec![relabelled], vec![owners]];
    for signatures in attempts {
        let message = message_with(&forged, vec![forged.hash()]);
        a.receive(&signed_sync_frame(&team, kind, message, signatures));
    }
    assert!(a.closed.is_none());
    let refusals = a.refusals();
    let reasons: Vec<_> = refusals
        .iter()
        .map(|r| match r {
            Refusal::Authorship(AuthorshipError::Unsigned { .. }) => "unsigned",
            Refusal::Authorship(AuthorshipError::BadSignature { .. }) => "bad signature",
            _ => "other",
        })
        .collect();
    assert_eq!(reasons, ["unsigned", "bad signature", "bad signature", "unsigned"], "{refusals:?}");
    let held = a.replica.doc(team.id, kind.doc_id(team.id));
    assert!(held.is_none_or(|d| d.get_heads().iter().all(|h| *h != forged.hash())));
    still_syncs(&team, &mut a, &mut b);
}

/// A volunteer, later made an advocate, signs a plan change under the membership of
/// when it was a volunteer (who may not write the plan): refused, though it may write
/// the plan now. The same change signed under the membership after the promotion is
/// taken.
#[test]
fn a_change_signed_when_its_author_could_not_write_is_refused() {
    let mut team = Team::new();
    let (before, _) = Membership::from_ops(team.id, &team.ops).expect("valid ops");
    let before = before.heads().to_vec();
    let member = team.members[VOLUNTEER];
    team.author(OpBody::ChangeRole { member, role: Role::Advocate, hats: vec![] });
    let (mut a, _v) = live_pair(&team, VOLUNTEER);
    let kind = DocKind::Plan;
    let change = plan_change(&team, VOLUNTEER, VOLUNTEER, "Written as a volunteer.");
    let message = || message_with(&change, vec![change.hash()]);
    let then = sign_under(&team, VOLUNTEER, kind, &change, &before);
    a.receive(&signed_sync_frame(&team, kind, message(), vec![then]));
    let refusals = a.refusals();
    assert!(
        matches!(
            refusals.as_slice(),
            [Refusal::Authorship(AuthorshipError::MayNotWrite { kind: DocKind::Plan, .. })]
        ),
        "{refusals:?}"
    );
    assert!(
        a.replica
            .doc(team.id, kind.doc_id(team.id))
            .is_none_or(|d| d.get_heads() != vec![change.hash()])
    );
    a.events.clear();
    let now = sign(&team, VOLUNTEER, kind, &change);
    a.receive(&signed_sync_frame(&team, kind, message(), vec![now]));
    assert!(a.refusals().is_empty(), "{:?}", a.refusals());
    let held = a.replica.doc(team.id, kind.doc_id(team.id)).expect("applied");
    assert_eq!(plan::section(held, Section::Routines).expect("reads"), "Written as a volunteer.");
}

/// A change signed under membership heads the receiver does not hold cannot have its
/// author's right checked: refused, and not applied.
#[test]
fn a_change_signed_under_a_membership_the_receiver_lacks_is_refused() {
    let team = Team::new();
    let (mut a, mut b) = live_pair(&team, ADVOCATE);
    let kind = DocKind::Plan;
    let change = plan_change(&team, ADVOCATE, ADVOCATE, "Under a made-up membership.");
    let made_up = sign_under(&team, ADVOCATE, kind, &change, &[OpHash::from_bytes([7; 32])]);
    let message = message_with(&change, vec![change.hash()]);
    a.receive(&signed_sync_frame(&team, kind, message, vec![made_up]));
    let refusals = a.refusals();
    assert!(
        matches!(
            refusals.as_slice(),
            [Refusal::Authorship(AuthorshipError::UnknownMembership { .. })]
        ),
        "{refusals:?}"
    );
    still_syncs(&team, &mut a, &mut b);
}

/// A whole plan for a device that holds the plan, with one forged change inside (under
/// the owner's actor, signed by the advocate): refused before it is merged.
#[test]
fn a_snapshot_with_one_forged_change_inside_is_refused() {
    let team = Team::new();
    let (mut a, mut b, doc, held) = plan_held_by_both(&team);

    // The advocate's whole plan: the owner's signed change, then a forged one.
    let mut whole = b.replica.doc(team.id, doc).expect("arrived").fork();
    whole.set_actor(ActorId::from(team.keys[OWNER].device_id().as_bytes()));
    plan::set_section(&mut whole, &team.author_of(OWNER, 9_000), Section::Routines, "Forged.")
        .expect("writes");
    let forged = whole.get_last_local_change().expect("a change").clone();
    let mut signatures = b.replica.signatures(team.id, doc, None).expect("memory");
    signatures.push(sign(&team, ADVOCATE, DocKind::Plan, &forged));
    let refusals = whole_plan_refusals(&team, &mut a, &whole, signatures);
    assert!(
        matches!(refusals.as_slice(), [Refusal::Authorship(AuthorshipError::BadSignature { .. })]),
        "{refusals:?}"
    );
    assert_eq!(a.replica.doc(team.id, doc).expect("held").get_heads(), held, "left as it was");
}

/// The owner's device and the advocate's, both holding the plan the owner wrote; with the
/// plan's id and its heads on the owner's device.
fn plan_held_by_both(team: &Team) -> (Side, Side, care_core::DocId, Vec<automerge::ChangeHash>) {
    let (mut a, mut b) = live_pair(team, ADVOCATE);
    team.write_plan(&mut a, OWNER, "Tea at 8.");
    let doc = DocKind::Plan.doc_id(team.id);
    let outputs = a.session.local_change(&mut a.replica, team.id, doc, DocKind::Plan);
    let to_b = a.take(outputs);
    exchange(team, &mut a, &mut b, Vec::new(), to_b);
    let held = a.replica.doc(team.id, doc).expect("held").get_heads();
    (a, b, doc, held)
}

/// Sends `whole`, a whole plan, with `signatures` to `a` in a `Snapshot` frame; returns
/// what `a` refused (its session stays open).
fn whole_plan_refusals(
    team: &Team,
    a: &mut Side,
    whole: &automerge::Automerge,
    signatures: Vec<ChangeSig>,
) -> Vec<Refusal> {
    let (kind, doc) = (DocKind::Plan, DocKind::Plan.doc_id(team.id));
    let frame = Frame::Snapshot { team: team.id, doc, kind, bytes: whole.save(), signatures };
    a.receive(&frame.encode());
    assert!(a.closed.is_none());
    a.refusals()
}

/// A whole plan for a device that holds the plan, with one change inside that adds a
/// section of its own (the plan's sections are fixed), signed by its writer: refused for
/// the document's rules before it is merged.
#[test]
fn a_snapshot_with_a_change_that_breaks_the_rules_inside_is_refused() {
    let team = Team::new();
    let (mut a, mut b, doc, held) = plan_held_by_both(&team);

    let mut whole = b.replica.doc(team.id, doc).expect("arrived").fork();
    whole.set_actor(ActorId::from(team.keys[OWNER].device_id().as_bytes()));
    let sections = whole.get(ROOT, "sections").expect("reads").expect("the sections").1;
    whole
        .transact(|tx| tx.put_object(&sections, "extra", automerge::ObjType::Text))
        .map_err(|f| f.error)
        .expect("writes");
    let change = whole.get_last_local_change().expect("a change").clone();
    let mut signatures = b.replica.signatures(team.id, doc, None).expect("memory");
    signatures.push(sign(&team, OWNER, DocKind::Plan, &change));
    let refusals = whole_plan_refusals(&team, &mut a, &whole, signatures);
    assert!(matches!(refusals.as_slice(), [Refusal::BreaksDocumentRules(_)]), "{refusals:?}");
    assert_eq!(a.replica.doc(team.id, doc).expect("held").get_heads(), held, "left as it was");
}

/// Two devices that hold a month's notes, one far behind: the changes it lacks make a
/// sync message too large for one frame, so the whole document goes instead, in parts
/// with every signature, and is merged; both end with the same notes.
#[test]
fn changes_too_many_for_one_frame_go_as_the_whole_document() {
    let team = Team::new();
    let (mut a, mut b) = live_pair(&team, ADVOCATE);
    let kind = write_notes(&team, &mut a, 2);
    let doc = kind.doc_id(team.id);
    let outputs = a.session.local_change(&mut a.replica, team.id, doc, kind);
    let to_b = a.take(outputs);
    exchange(&team, &mut a, &mut b, Vec::new(), to_b);
    assert!(b.replica.doc(team.id, doc).is_some(), "the advocate holds the month");
    // A long time apart: far more than a frame's worth of notes.
    for n in 2..120u8 {
        let month = Month::new(2026, 11).expect("a month");
        let text = (0..4u8).map(|i| blake3::hash(&[n, i]).to_hex().to_string()).collect();
        let note = care_core::documents::NewNote { text, ..Default::default() };
        let id = care_core::EntryId::new(month, [n; 8]);
        let author = team.author_of(OWNER, 5_000);
        a.replica
            .write(team.id, kind, |d| care_core::documents::notes::add_note(d, &author, id, &note))
            .expect("writes");
    }
    let outputs = a.session.local_change(&mut a.replica, team.id, doc, kind);
    let to_b = a.take(outputs);
    let names: Vec<&str> =
        to_b.iter().filter_map(|f| Frame::decode(f).ok()).map(|f| f.name()).collect();
    assert!(names.iter().all(|n| *n == "SnapshotPart"), "{names:?}");
    // Each part: at most a part of the bytes and a part's worth of signatures.
    let part = crate::frame::SNAPSHOT_PART_BYTES;
    assert!(to_b.iter().all(|f| f.len() <= 2 * part + 256), "{:?}", to_b.iter().map(Vec::len));
    exchange(&team, &mut a, &mut b, Vec::new(), to_b);
    assert!(b.refusals().is_empty(), "{:?}", b.refusals());
    let (ours, theirs) = (a.replica.doc(team.id, doc), b.replica.doc(team.id, doc));
    assert_eq!(ours.map(|d| d.get_heads()), theirs.map(|d| d.get_heads()));
    let held = b.replica.signatures(team.id, doc, None).expect("memory").len();
    assert_eq!(held, 120, "every note's signature is kept with it");
}

/// A member signs each of many changes under a different state of the membership log:
/// past the named number of states per message the changes are refused, before this
/// device replays the log for each.
#[test]
fn changes_signed_under_too_many_memberships_are_refused() {
    use crate::authorship::SIGNED_MEMBERSHIPS_PER_CHECK_MAX;
    let mut team = Team::new();
    // As many states of the log as the limit allows, and one more.
    let mut states = Vec::new();
    for i in 0..=SIGNED_MEMBERSHIPS_PER_CHECK_MAX {
        let member = MemberId::from_bytes([100 + i as u8; 16]);
        let name = format!("Helper {i}");
        team.author(OpBody::AddMember { member, name, role: Role::Volunteer, hats: vec![] });
        let (membership, _) = Membership::from_ops(team.id, &team.ops).expect("valid ops");
        states.push(membership.heads().to_vec());
    }
    let (mut a, _b) = live_pair(&team, ADVOCATE);
    let kind = DocKind::Plan;
    let mut doc = care_core::documents::genesis(team.id, &kind);
    let mut signatures = Vec::new();
    for (i, heads) in states.iter().enumerate() {
        let by = team.author_of(ADVOCATE, 5_000 + i as i64);
        plan::set_section(&mut doc, &by, Section::Routines, &format!("version {i}"))
            .expect("writes");
        let change = doc.get_last_local_change().expect("a change").clone();
        signatures.push(sign_under(&team, ADVOCATE, kind, &change, heads));
    }
    let message = Message {
        heads: doc.get_heads(),
        need: vec![],
        have: vec![],
        changes: ChunkList::from(
            doc.get_changes(&care_core::documents::genesis(team.id, &kind).get_heads())
                .iter()
                .map(|c| c.raw_bytes().to_vec())
                .collect::<Vec<_>>(),
        ),
        flags: None,
        version: MessageVersion::V1,
    }
    .encode();
    a.receive(&signed_sync_frame(&team, kind, message.clone(), signatures.clone()));
    let refusals = a.refusals();
    assert!(
        matches!(
            refusals.as_slice(),
            [Refusal::Authorship(AuthorshipError::TooManyMemberships { .. })]
        ),
        "{refusals:?}"
    );
    // The same changes under one state of the log are taken.
    a.events.clear();
    let now = states.last().expect("states");
    let doc_changes = doc.get_changes(&care_core::documents::genesis(team.id, &kind).get_heads());
    let signatures: Vec<ChangeSig> =
        doc_changes.iter().map(|c| sign_under(&team, ADVOCATE, kind, c, now)).collect();
    a.receive(&signed_sync_frame(&team, kind, message, signatures));
    assert!(a.refusals().is_empty(), "{:?}", a.refusals());
}
