//! Tests of team membership: scenarios with real signatures, and property tests
//! that replay the same ops in many orders.

use proptest::prelude::*;

use super::*;
use crate::doc_kind::{DocKind, NoteStream};
use crate::identity::DeviceKey;
use crate::ids::{DeviceId, MemberId, Month, OpHash, TeamId, Timestamp};

fn key(n: u8) -> DeviceKey {
    DeviceKey::from_seed([n; 32])
}

fn dev(n: u8) -> DeviceId {
    key(n).device_id()
}

fn mid(n: u8) -> MemberId {
    MemberId::from_bytes([n; 16])
}

fn kinds() -> Vec<DocKind> {
    let month = Month::new(2026, 11).expect("valid month");
    vec![
        DocKind::Team,
        DocKind::Plan,
        DocKind::HealthPlan,
        DocKind::Notes { stream: NoteStream::Care, month },
        DocKind::Notes { stream: NoteStream::General, month },
        DocKind::Rota { month },
        DocKind::Promises,
    ]
}

/// A team's ops as one peer holds them; the owner is member 1 on device 1.
struct Team {
    id: TeamId,
    ops: Vec<SignedOp>,
    now_ms: i64,
}

impl Team {
    fn new() -> Team {
        let create = create_team(&key(1), Timestamp(1_000), "Team Ada", mid(1), "Ada", [7; 16]);
        Team { id: team_id(&create), ops: vec![create], now_ms: 1_000 }
    }

    fn replay(&self) -> (Membership, Vec<Rejected>) {
        Membership::from_ops(self.id, &self.ops).expect("the team was created")
    }

    fn state(&self) -> Membership {
        self.replay().0
    }

    fn reason(&self, op: &SignedOp) -> Option<RejectReason> {
        let rejected = self.replay().1;
        rejected.into_iter().find(|r| r.op == op.hash()).map(|r| r.reason)
    }

    fn tick(&mut self) -> Timestamp {
        self.now_ms += 1_000;
        Timestamp(self.now_ms)
    }

    /// Authors an op through the checks of the current membership.
    fn author(&mut self, signer: u8, body: OpBody) -> Result<SignedOp, RejectReason> {
        let at = self.tick();
        let op = self.state().author_op(&key(signer), at, body)?;
        self.ops.push(op.clone());
        Ok(op)
    }

    /// Signs an op without any checks, building on `preds`.
    fn force(&mut self, signer: u8, preds: Vec<OpHash>, body: OpBody) -> SignedOp {
        let at = self.tick();
        let op = SignedOp::sign(&key(signer), &Op { team: Some(self.id), preds, at, body });
        self.ops.push(op.clone());
        op
    }

    fn heads(&self) -> Vec<OpHash> {
        self.state().heads().to_vec()
    }

    fn ok(&mut self, signer: u8, body: OpBody) -> SignedOp {
        self.author(signer, body).expect("the op is allowed")
    }

    /// Adds member `n` with a role and hats, and their device `n`.
    fn join(&mut self, signer: u8, n: u8, role: Role, hats: Vec<Hat>) {
        let name = format!("member {n}");
        self.ok(signer, OpBody::AddMember { member: mid(n), name, role, hats });
        let label = format!("phone {n}");
        self.ok(signer, OpBody::AddDevice { member: mid(n), device: dev(n), label });
    }
}

fn add_member(n: u8, role: Role, hats: Vec<Hat>) -> OpBody {
    OpBody::AddMember { member: mid(n), name: format!("member {n}"), role, hats }
}

fn not_allowed(reason: Option<RejectReason>) -> bool {
    matches!(reason, Some(RejectReason::NotAllowed { .. }))
}

#[test]
fn a_team_with_every_role_follows_the_matrix() {
    let mut team = Team::new();
    team.join(1, 2, Role::Advocate, vec![]);
    team.join(1, 3, Role::Worker, vec![Hat::named("rota-keeper")]);
    team.join(1, 4, Role::Volunteer, vec![]);
    team.join(1, 5, Role::Relay, vec![]);
    team.ok(1, OpBody::AddDevice { member: mid(1), device: dev(11), label: "laptop".into() });
    team.ok(1, OpBody::AddDevice { member: mid(3), device: dev(13), label: "tablet".into() });
    team.ok(3, OpBody::RemoveDevice { device: dev(13) });
    let (state, rejected) = team.replay();
    assert_eq!(rejected, vec![]);
    assert_eq!((state.team(), state.name(), state.owner()), (team.id, "Team Ada", mid(1)));
    assert_eq!(state.members().count(), 5);
    assert_eq!(state.devices().count(), 6);
    assert_eq!(state.heads().len(), 1);
    let worker = state.member(mid(3)).expect("the worker is in");
    assert_eq!((worker.role, worker.added_by), (Role::Worker, Some(mid(1))));
    assert_eq!(worker.hats, vec![Hat::named("rota-keeper")]);
    assert_eq!(state.member_of_device(dev(11)).map(|m| m.id), Some(mid(1)));
    let roles = [(1, Role::Owner), (2, Role::Advocate), (3, Role::Worker), (4, Role::Volunteer)];
    for (n, role) in roles.into_iter().chain([(5, Role::Relay)]) {
        assert_eq!(state.role_of_device(dev(n)), Some(role));
        for kind in kinds() {
            assert_eq!(state.access(dev(n), &kind), role.access(&kind), "{role} {kind:?}");
        }
    }
    for kind in kinds() {
        assert_eq!(state.access(dev(13), &kind), Access::None);
        assert_eq!(state.access(dev(99), &kind), Access::None);
    }
    assert!(state.has_right(mid(1), Right::ManageTeam));
    assert!(!state.has_right(mid(2), Right::ManageMembers));
}

#[test]
fn a_team_keeper_hat_opens_the_team_document() {
    let mut team = Team::new();
    let keeper =
        Hat { name: "team-keeper".into(), rights: [Right::ManageTeam].into_iter().collect() };
    team.join(1, 2, Role::Worker, vec![keeper.clone()]);
    team.join(1, 5, Role::Relay, vec![keeper]);
    let state = team.state();
    assert_eq!(state.access(dev(2), &DocKind::Team), Access::ReadWrite);
    assert_eq!(state.access(dev(5), &DocKind::Team), Access::Read);
}

#[test]
fn forged_signatures_are_rejected() {
    let mut team = Team::new();
    let before = team.state();
    let op = team.state().author_op(&key(1), Timestamp(5), add_member(2, Role::Worker, vec![]));
    let mut bytes = op.expect("allowed").to_bytes();
    bytes[20] ^= 0x40;
    let tampered = SignedOp::from_bytes(&bytes).expect("well formed");
    // Signed by device 9, claiming to be the owner's device 1.
    let op = SignedOp::sign(
        &key(9),
        &Op {
            team: Some(team.id),
            preds: before.heads().to_vec(),
            at: Timestamp(6),
            body: add_member(3, Role::Owner, vec![]),
        },
    );
    let mut bytes = op.to_bytes();
    let at = bytes.len() - 97;
    bytes[at..at + 32].copy_from_slice(dev(1).as_bytes());
    let impostor = SignedOp::from_bytes(&bytes).expect("well formed");
    assert_eq!(impostor.author(), dev(1));
    team.ops.extend([tampered.clone(), impostor.clone()]);
    assert_eq!(team.reason(&tampered), Some(RejectReason::BadSignature));
    assert_eq!(team.reason(&impostor), Some(RejectReason::BadSignature));
    assert_eq!(team.state(), before);
}

#[test]
fn only_managers_add_members_and_only_the_owner_grants_rights() {
    let mut team = Team::new();
    team.join(1, 2, Role::Advocate, vec![Hat::team_admin()]);
    team.join(1, 3, Role::Worker, vec![]);
    // A worker may not add anyone.
    let err = team.author(3, add_member(4, Role::Worker, vec![])).expect_err("not allowed");
    assert_eq!(err, RejectReason::NotAllowed { member: mid(3), action: "add members" });
    let forced = team.force(3, team.heads(), add_member(4, Role::Worker, vec![]));
    assert!(not_allowed(team.reason(&forced)));
    // The admin adds a worker, but makes no owner and grants no rights.
    team.join(2, 6, Role::Worker, vec![Hat::named("rota-keeper")]);
    assert!(not_allowed(team.author(2, add_member(7, Role::Owner, vec![])).err()));
    assert!(not_allowed(
        team.author(2, add_member(7, Role::Worker, vec![Hat::team_admin()])).err()
    ));
    let promote =
        OpBody::ChangeRole { member: mid(3), role: Role::Advocate, hats: vec![Hat::team_admin()] };
    assert!(not_allowed(team.author(2, promote.clone()).err()));
    assert!(not_allowed(team.author(2, OpBody::RemoveMember { member: mid(1) }).err()));
    let owner_device = OpBody::AddDevice { member: mid(1), device: dev(20), label: "mine".into() };
    assert!(not_allowed(team.author(2, owner_device).err()));
    // Not even the owner makes someone else owner; the owner does grant rights.
    assert!(not_allowed(team.author(1, add_member(7, Role::Owner, vec![])).err()));
    team.ok(1, promote);
    let state = team.state();
    assert!(state.has_right(mid(3), Right::ManageMembers));
    assert_eq!(state.member(mid(6)).map(|m| m.added_by), Some(Some(mid(2))));
    assert_eq!(state.members().count(), 4);
}

#[test]
fn relays_author_nothing() {
    let mut team = Team::new();
    team.join(1, 5, Role::Relay, vec![Hat::team_admin()]);
    assert!(not_allowed(team.author(5, add_member(6, Role::Worker, vec![])).err()));
    let own = OpBody::AddDevice { member: mid(5), device: dev(15), label: "second".into() };
    assert!(not_allowed(team.author(5, own).err()));
}

#[test]
fn a_removed_member_cannot_get_back_in() {
    let mut team = Team::new();
    team.join(1, 2, Role::Advocate, vec![Hat::team_admin()]);
    team.join(1, 3, Role::Worker, vec![]);
    let before_removal = team.heads();
    team.ok(1, OpBody::RemoveMember { member: mid(2) });
    // Signed after the removal.
    let again = team.force(2, team.heads(), add_member(2, Role::Advocate, vec![]));
    assert_eq!(team.reason(&again), Some(RejectReason::Removed { device: dev(2) }));
    // Back-dated: built on the history before the removal.
    let friend = team.force(2, before_removal.clone(), add_member(8, Role::Advocate, vec![]));
    let device = OpBody::AddDevice { member: mid(2), device: dev(12), label: "new".into() };
    let sneaky = team.force(2, before_removal, device);
    assert_eq!(team.reason(&friend), Some(RejectReason::Removed { device: dev(2) }));
    assert_eq!(team.reason(&sneaky), Some(RejectReason::Removed { device: dev(2) }));
    // Nor may the owner bring the same member id back.
    let back = team.author(1, add_member(2, Role::Advocate, vec![])).expect_err("removed");
    assert!(matches!(back, RejectReason::Conflict(_)));
    let state = team.state();
    assert!(state.member(mid(2)).is_none() && state.member(mid(8)).is_none());
    assert!(state.is_removed(mid(2)));
    for kind in kinds() {
        assert_eq!(state.access(dev(2), &kind), Access::None);
        assert_eq!(state.access(dev(12), &kind), Access::None);
    }
}

#[test]
fn a_removed_device_is_out_but_its_earlier_ops_stand() {
    let mut team = Team::new();
    team.join(1, 2, Role::Advocate, vec![Hat::team_admin()]);
    let before_removal = team.heads();
    team.join(2, 3, Role::Worker, vec![]);
    team.ok(1, OpBody::RemoveDevice { device: dev(2) });
    let late = team.force(2, before_removal, add_member(4, Role::Worker, vec![]));
    assert_eq!(team.reason(&late), Some(RejectReason::Removed { device: dev(2) }));
    let state = team.state();
    assert!(state.member(mid(3)).is_some(), "ops the removal built on are kept");
    assert!(state.member(mid(2)).is_some_and(|m| m.devices.is_empty()));
    // A member may remove their own device with that very device.
    team.ok(3, OpBody::AddDevice { member: mid(3), device: dev(13), label: "tablet".into() });
    team.ok(13, OpBody::RemoveDevice { device: dev(13) });
    assert_eq!(
        team.replay().1,
        vec![Rejected { op: late.hash(), reason: RejectReason::Removed { device: dev(2) } }]
    );
    let last = OpBody::RemoveDevice { device: dev(1) };
    assert!(matches!(team.author(1, last), Err(RejectReason::Conflict(_))));
}

#[test]
fn unknown_predecessors_change_nothing() {
    let mut team = Team::new();
    team.join(1, 2, Role::Worker, vec![]);
    let before = team.state();
    let missing = OpHash::from_bytes([42; 32]);
    let orphan = team.force(1, vec![missing], add_member(3, Role::Worker, vec![]));
    let child = team.force(1, vec![orphan.hash()], add_member(4, Role::Worker, vec![]));
    assert_eq!(team.reason(&orphan), Some(RejectReason::UnknownPredecessor(missing)));
    assert_eq!(team.reason(&child), Some(RejectReason::UnknownPredecessor(orphan.hash())));
    assert_eq!(team.state(), before);
}

#[test]
fn other_teams_and_missing_creation_are_errors() {
    let team = Team::new();
    let other = create_team(&key(1), Timestamp(1), "Team Bo", mid(9), "Bo", [8; 16]);
    let (_, rejected) = Membership::from_ops(team.id, team.ops.iter().chain([&other])).expect("ok");
    assert_eq!(rejected, vec![Rejected { op: other.hash(), reason: RejectReason::WrongTeam }]);
    let none = Membership::from_ops(team.id, [&other]);
    assert_eq!(none, Err(MembershipError::NoCreateOp { team: team.id }));
    let many = std::iter::repeat_n(&team.ops[0], OPS_MAX + 1);
    assert_eq!(
        Membership::from_ops(team.id, many),
        Err(MembershipError::TooManyOps { max: OPS_MAX })
    );
}

/// A small deterministic generator for histories and shuffles.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

fn random_body(rng: &mut Rng) -> OpBody {
    let member = mid(2 + rng.below(8) as u8);
    let role = Role::ALL[rng.below(Role::ALL.len())];
    let hats = match rng.below(4) {
        0 => vec![Hat::team_admin()],
        1 => vec![Hat::named("rota-keeper")],
        _ => vec![],
    };
    let device = dev(2 + rng.below(14) as u8);
    match rng.below(6) {
        0 | 1 => OpBody::AddMember { member, name: "someone".into(), role, hats },
        2 => OpBody::AddDevice { member, device, label: "phone".into() },
        3 => OpBody::RemoveDevice { device },
        4 => OpBody::RemoveMember { member },
        _ => OpBody::ChangeRole { member, role, hats },
    }
}

/// Mostly a current device of the membership seen, sometimes any device.
fn pick_signer(state: &Membership, rng: &mut Rng) -> u8 {
    let current: Vec<u8> = (1..=15).filter(|n| state.member_of_device(dev(*n)).is_some()).collect();
    if rng.below(4) == 0 || current.is_empty() {
        1 + rng.below(15) as u8
    } else {
        current[rng.below(current.len())]
    }
}

/// A history with an owner, an admin and changing members, authored from
/// different points of the history (concurrent branches, back-dated ops), with
/// some ops that break the rules.
fn random_history(seed: u64, steps: usize) -> Team {
    let mut rng = Rng(seed | 1);
    let mut team = Team::new();
    team.join(1, 2, Role::Advocate, vec![Hat::team_admin()]);
    for _ in 0..steps {
        let seen = if rng.below(2) == 0 { team.ops.len() } else { 1 + rng.below(team.ops.len()) };
        let state = Membership::from_ops(team.id, &team.ops[..seen]).expect("created").0;
        let signer = pick_signer(&state, &mut rng);
        let body = random_body(&mut rng);
        let at = team.tick();
        match state.author_op(&key(signer), at, body.clone()) {
            Ok(op) => team.ops.push(op),
            Err(_) if rng.below(3) == 0 => {
                team.force(signer, state.heads().to_vec(), body);
            }
            Err(_) => {}
        }
        if rng.below(20) == 0 {
            let pred = OpHash::from_bytes([rng.below(256) as u8; 32]);
            team.force(1, vec![pred], add_member(9, Role::Worker, vec![]));
        }
    }
    team
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_same_ops_in_any_order_give_the_same_membership(
        seed in any::<u64>(),
        steps in 5usize..40,
        shuffle_seed in any::<u64>(),
    ) {
        let team = random_history(seed, steps);
        let expected = Membership::from_ops(team.id, &team.ops).expect("created");
        let mut rng = Rng(shuffle_seed | 1);
        let mut ops = team.ops.clone();
        for _ in 0..12 {
            rng.shuffle(&mut ops);
            let got = Membership::from_ops(team.id, &ops).expect("created");
            prop_assert_eq!(&got, &expected);
        }
        let (state, _) = expected;
        for (device, member) in state.devices() {
            prop_assert!(!state.is_removed(member.id));
            prop_assert_eq!(state.member_of_device(device).map(|m| m.id), Some(member.id));
        }
        prop_assert_eq!(state.member(state.owner()).map(|m| m.role), Some(Role::Owner));
    }

    /// Replaying ops whose signatures were verified before, without verifying them
    /// again, gives the same membership and the same rejections.
    #[test]
    fn a_replay_of_verified_ops_matches_the_full_replay(seed in any::<u64>(), steps in 5usize..40) {
        let team = random_history(seed, steps);
        let full = Membership::from_ops(team.id, &team.ops).expect("created");
        let verified = Membership::from_verified_ops(team.id, &team.ops).expect("created");
        prop_assert_eq!(verified, full);
    }
}

/// A worker floods the log with device churn (add a device, remove it, add another):
/// past their limit their ops are rejected, on every device alike, and the owner's
/// removal of that worker still applies.
#[test]
fn a_member_cannot_flood_the_log_and_the_owners_removal_always_applies() {
    let mut team = Team::new();
    team.join(1, 2, Role::Worker, vec![]);
    let mut heads = team.heads();
    let mut flood = Vec::new();
    for i in 0..(OPS_PER_MEMBER_MAX + 10) as u32 {
        let mut seed = [2; 32];
        seed[..4].copy_from_slice(&(i / 2).to_le_bytes());
        let device = DeviceKey::from_seed(seed).device_id();
        let body = if i % 2 == 0 {
            OpBody::AddDevice { member: mid(2), device, label: format!("churn {i}") }
        } else {
            OpBody::RemoveDevice { device }
        };
        let op = team.force(2, heads, body);
        heads = vec![op.hash()];
        flood.push(op);
    }
    let (_, rejected) = team.replay();
    let over = RejectReason::OverLimit {
        what: "membership changes by one member",
        max: OPS_PER_MEMBER_MAX,
    };
    let accepted = flood.iter().filter(|op| !rejected.iter().any(|r| r.op == op.hash())).count();
    assert_eq!(accepted, OPS_PER_MEMBER_MAX);
    assert!(rejected.iter().any(|r| r.reason == over), "the flood is cut at the limit");
    let removal = team.author(1, OpBody::RemoveMember { member: mid(2) }).expect("the owner may");
    assert_eq!(team.reason(&removal), None);
    assert!(team.state().member(mid(2)).is_none());
}

#[test]
fn members_and_devices_per_member_are_bounded() {
    let mut team = Team::new();
    team.join(1, 2, Role::Worker, vec![]);
    for i in 1..DEVICES_PER_MEMBER_MAX {
        let device = DeviceKey::from_seed([100 + i as u8; 32]).device_id();
        team.ok(2, OpBody::AddDevice { member: mid(2), device, label: format!("device {i}") });
    }
    let one_more = DeviceKey::from_seed([250; 32]).device_id();
    let refused =
        team.author(2, OpBody::AddDevice { member: mid(2), device: one_more, label: "x".into() });
    assert_eq!(
        refused,
        Err(RejectReason::OverLimit { what: "devices of one member", max: DEVICES_PER_MEMBER_MAX })
    );
    let mut refused_member = None;
    for n in 3..=255u8 {
        match team.author(1, add_member(n, Role::Volunteer, vec![])) {
            Ok(_) => {}
            Err(reason) => {
                refused_member = Some(reason);
                break;
            }
        }
    }
    // 255 ids are not enough to reach the limit; the rest come with longer ids.
    let mut n = 0u16;
    while refused_member.is_none() {
        n += 1;
        let mut id = [0xee; 16];
        id[..2].copy_from_slice(&n.to_le_bytes());
        let body = OpBody::AddMember {
            member: MemberId::from_bytes(id),
            name: "m".into(),
            role: Role::Volunteer,
            hats: vec![],
        };
        refused_member = team.author(1, body).err();
    }
    assert_eq!(
        refused_member,
        Some(RejectReason::OverLimit { what: "members added to a team", max: MEMBERS_MAX })
    );
    assert_eq!(team.state().members().count(), MEMBERS_MAX);
}

/// A key of a scope goes only to current devices of members whose role reads the whole
/// scope, from a member whose role does; it is new when made current, and known when
/// given again; and only the device it is wrapped for opens it.
#[test]
fn team_keys_go_only_to_devices_whose_role_reads_their_scope() {
    use crate::keys::{KeyScope, TeamKey, unwrap, wrap};
    let mut team = Team::new();
    team.join(1, 2, Role::Worker, vec![]);
    team.join(1, 3, Role::Volunteer, vec![Hat::team_admin()]);
    team.join(1, 4, Role::Relay, vec![]);
    let team_id = team.id;
    let care = TeamKey::from_bytes([9; 32]);
    let id = care.id(team_id, KeyScope::Care);
    let wrapped = |n: u8, key: &TeamKey, scope| {
        wrap(team_id, scope, key, dev(n), [n + 40; 32]).expect("wraps")
    };
    let give =
        |scope, key, current, to: Vec<_>| OpBody::TeamKeys { scope, key, current, wrapped: to };
    let to_owner_and_worker =
        vec![wrapped(1, &care, KeyScope::Care), wrapped(2, &care, KeyScope::Care)];
    let first = give(KeyScope::Care, id, true, to_owner_and_worker.clone());
    assert!(
        team.author(3, first.clone()).is_err_and(|r| matches!(r, RejectReason::NotAllowed { .. }))
    );
    team.ok(1, first.clone());
    assert!(matches!(team.author(1, first), Err(RejectReason::Conflict(_))), "new means new");
    for n in [3, 4] {
        let to = vec![wrapped(n, &care, KeyScope::Care)];
        let again = give(KeyScope::Care, id, false, to);
        assert!(matches!(team.author(1, again), Err(RejectReason::Conflict(_))), "device {n}");
    }
    let unknown = TeamKey::from_bytes([8; 32]);
    let shared = give(
        KeyScope::Care,
        unknown.id(team.id, KeyScope::Care),
        false,
        vec![wrapped(2, &unknown, KeyScope::Care)],
    );
    assert!(matches!(team.author(1, shared), Err(RejectReason::Conflict(_))));
    let everyday = TeamKey::from_bytes([7; 32]);
    let to_all: Vec<_> = [1, 2, 3].map(|n| wrapped(n, &everyday, KeyScope::Team)).into();
    team.ok(3, give(KeyScope::Team, everyday.id(team.id, KeyScope::Team), true, to_all));

    let state = team.state();
    let keys = state.keys(KeyScope::Care).expect("care keys given");
    assert_eq!((state.current_key(KeyScope::Care), keys.keys.clone()), (Some(id), vec![id]));
    let for_worker = &keys.wrapped[&(id, dev(2))];
    assert_eq!(unwrap(team.id, KeyScope::Care, &id, for_worker, &key(2)), Ok(care));
    assert!(unwrap(team.id, KeyScope::Care, &id, for_worker, &key(3)).is_err());
    assert!(!keys.wrapped.keys().any(|(_, d)| *d == dev(3) || *d == dev(4)));
    let team_keys = state.keys(KeyScope::Team).expect("team keys given");
    assert!(team_keys.wrapped.keys().any(|(_, d)| *d == dev(3)));
}

/// Two removals made apart at the same time, each renewing the care key for the devices
/// it knows: each new key reaches the device the other removes, so neither is current,
/// nor the first key; a renewal afterwards is.
#[test]
fn keys_given_to_a_device_removed_meanwhile_are_never_current() {
    use crate::keys::{KeyScope, TeamKey, wrap};
    let mut team = Team::new();
    team.join(1, 2, Role::Advocate, vec![Hat::team_admin()]);
    team.join(1, 3, Role::Worker, vec![]);
    team.join(1, 4, Role::Worker, vec![]);
    let team_id = team.id;
    let give = |n: u8, to: &[u8], current| {
        let key = TeamKey::from_bytes([n; 32]);
        let wrapped = to
            .iter()
            .map(|d| wrap(team_id, KeyScope::Care, &key, dev(*d), [n + *d; 32]).expect("wraps"))
            .collect();
        OpBody::TeamKeys {
            scope: KeyScope::Care,
            key: key.id(team_id, KeyScope::Care),
            current,
            wrapped,
        }
    };
    team.ok(1, give(50, &[1, 2, 3, 4], true));
    let heads = team.heads();
    let first =
        team.force(1, heads.clone(), OpBody::RemoveMemberKnowing { member: mid(3), known: vec![] });
    team.force(1, vec![first.hash()], give(60, &[1, 2, 4], true));
    let second =
        team.force(2, heads, OpBody::RemoveMemberKnowing { member: mid(4), known: vec![] });
    team.force(2, vec![second.hash()], give(70, &[1, 2, 3], true));
    let (state, rejected) = team.replay();
    assert_eq!(rejected, vec![]);
    assert_eq!(state.keys(KeyScope::Care).map(|k| k.keys.len()), Some(3));
    assert_eq!(state.current_key(KeyScope::Care), None);
    team.ok(1, give(80, &[1, 2], true));
    let renewed = TeamKey::from_bytes([80; 32]).id(team_id, KeyScope::Care);
    assert_eq!(team.state().current_key(KeyScope::Care), Some(renewed));
}
