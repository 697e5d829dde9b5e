//! Who may read and write which documents of a team, as the sync protocol needs it: the
//! current membership for reading, and every device that is or was a device of a member
//! whose role allowed writing, so that old history by removed members still replicates.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use automerge::{ActorId, Automerge, ChangeHash};
use care_core::documents::ReceivedRules;
use care_core::{
    Access, ChangeSig, DeviceId, DocKind, MemberId, Membership, MembershipError, OpBody, OpHash,
    RejectReason, Right, Role, SignedOp, TeamId,
};

use crate::chunks::changes_of;

/// Most earlier memberships a [`TeamAccess`] keeps replayed (see
/// [`TeamAccess::membership_at`]); past it the kept ones are dropped and replayed again
/// when asked.
const MEMBERSHIPS_AT_KEPT_MAX: usize = 256;

/// Memberships replayed at earlier heads (sorted); `None` where those heads do not replay.
type MembershipsAt = HashMap<Vec<OpHash>, Option<Arc<Membership>>>;

/// A team's membership replayed from its ops, with the history of roles per device.
#[derive(Clone, Debug)]
pub struct TeamAccess {
    team: TeamId,
    membership: Arc<Membership>,
    /// The ops replayed, by hash, to replay the log as it stood at earlier heads.
    ops: Arc<BTreeMap<OpHash, SignedOp>>,
    /// Memberships replayed at earlier heads (sorted), shared by clones.
    at: Arc<Mutex<MembershipsAt>>,
    ops_hash: [u8; 16],
    /// Every device ever added, and its member.
    device_member: BTreeMap<DeviceId, MemberId>,
    /// Every role each member ever held, and whether they ever held the right to manage
    /// the team document.
    member_roles: BTreeMap<MemberId, (BTreeSet<Role>, bool)>,
    /// The ops the replay left out, and why.
    rejected: BTreeMap<OpHash, RejectReason>,
}

impl TeamAccess {
    /// Replays `ops` (see [`Membership::from_ops`]); rejected ops are left out of the
    /// role history too.
    pub fn from_ops(team: TeamId, ops: &[SignedOp]) -> Result<TeamAccess, MembershipError> {
        let (membership, rejected) = Membership::from_ops(team, ops)?;
        let rejected: BTreeMap<_, _> = rejected.into_iter().map(|r| (r.op, r.reason)).collect();
        // Kept for replays at earlier heads: the ops whose signature and form hold (which
        // does not depend on what else the log holds), so those replays need not verify
        // each signature again.
        let screened = ops
            .iter()
            .filter(|op| {
                !matches!(
                    rejected.get(&op.hash()),
                    Some(RejectReason::BadSignature | RejectReason::Malformed(_))
                )
            })
            .map(|op| (op.hash(), op.clone()))
            .collect();
        let mut access = TeamAccess {
            team,
            membership: Arc::new(membership),
            ops: Arc::new(screened),
            at: Arc::default(),
            ops_hash: ops_hash(ops),
            device_member: BTreeMap::new(),
            member_roles: BTreeMap::new(),
            rejected,
        };
        for signed in ops {
            if access.rejected.contains_key(&signed.hash()) {
                continue;
            }
            if let Ok(op) = signed.op() {
                access.record(signed.author(), &op.body);
            }
        }
        Ok(access)
    }

    /// The replayed membership.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The membership as it stood when the log's heads were `heads`: the replay of those
    /// ops and everything before them. `None` when one of them, or of their predecessors,
    /// is not held here, or when they do not replay (no op creating the team). Replays are
    /// kept, so asking again for the same heads costs a lookup.
    pub fn membership_at(&self, heads: &[OpHash]) -> Option<Arc<Membership>> {
        let mut heads = heads.to_vec();
        heads.sort();
        heads.dedup();
        let mut current = self.membership.heads().to_vec();
        current.sort();
        if heads == current {
            return Some(Arc::clone(&self.membership));
        }
        let mut at = self.at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = at.get(&heads) {
            return found.clone();
        }
        let replayed = self.replay_at(&heads);
        if at.len() >= MEMBERSHIPS_AT_KEPT_MAX {
            at.clear();
        }
        at.insert(heads, replayed.clone());
        replayed
    }

    /// Replays the ops that `heads` and their predecessors are.
    fn replay_at(&self, heads: &[OpHash]) -> Option<Arc<Membership>> {
        let mut before: BTreeMap<OpHash, &SignedOp> = BTreeMap::new();
        let mut next: Vec<OpHash> = heads.to_vec();
        while let Some(hash) = next.pop() {
            if before.contains_key(&hash) {
                continue;
            }
            let op = self.ops.get(&hash)?;
            next.extend(op.op().ok()?.preds);
            before.insert(hash, op);
        }
        let (membership, _) =
            Membership::from_verified_ops(self.team, before.into_values()).ok()?;
        Some(Arc::new(membership))
    }

    /// Why the replay left `op` out, if it did.
    pub fn rejected(&self, op: OpHash) -> Option<&RejectReason> {
        self.rejected.get(&op)
    }

    /// The hash announced in [`TeamSummary::ops_hash`](crate::frame::TeamSummary).
    pub fn ops_hash(&self) -> [u8; 16] {
        self.ops_hash
    }

    /// Whether `device` is a current device of a current member.
    pub fn is_current(&self, device: DeviceId) -> bool {
        self.membership.member_of_device(device).is_some()
    }

    /// Whether `device` may read documents of `kind` now.
    pub fn may_read(&self, device: DeviceId, kind: &DocKind) -> bool {
        self.membership.access(device, kind) != Access::None
    }

    /// Whether changes by `actor` may be part of a document of `kind`: the actor is, or
    /// was, a device of a member who held a role allowed to write `kind`.
    pub fn may_have_written(&self, actor: &ActorId, kind: &DocKind) -> bool {
        let Ok(device) = DeviceId::from_slice(actor.to_bytes()) else {
            return false;
        };
        let Some(member) = self.device_member.get(&device) else {
            return false;
        };
        let Some((roles, manages_team)) = self.member_roles.get(member) else {
            return false;
        };
        let writes = |role: &Role| role.access(kind) == Access::ReadWrite;
        roles.iter().any(writes) || (*kind == DocKind::Team && *manages_team)
    }

    fn record(&mut self, author: DeviceId, body: &OpBody) {
        match body {
            OpBody::CreateTeam { owner, .. } => {
                self.device_member.insert(author, *owner);
                self.member_roles.entry(*owner).or_default().0.insert(Role::Owner);
            }
            OpBody::AddMember { member, role, hats, .. }
            | OpBody::ChangeRole { member, role, hats } => {
                let entry = self.member_roles.entry(*member).or_default();
                entry.0.insert(*role);
                let manages = hats.iter().any(|h| h.rights.contains(&Right::ManageTeam));
                entry.1 |= manages && *role != Role::Relay;
            }
            OpBody::AddDevice { member, device, .. } => {
                self.device_member.insert(*device, *member);
            }
            OpBody::RemoveDevice { .. }
            | OpBody::RemoveMember { .. }
            | OpBody::RemoveDeviceKnowing { .. }
            | OpBody::RemoveMemberKnowing { .. }
            | OpBody::AcceptChanges { .. }
            | OpBody::TeamKeys { .. } => {}
        }
    }
}

/// Whether every change's author may be part of a document of `kind` (see
/// [`TeamAccess::may_have_written`]). The one exception is the document's deterministic
/// first change, whose actor is the document id: it is accepted only with the first
/// change's hash, or, where the hash is not known yet (`None`: a whole document read
/// without loading it), on the understanding that the document is checked again with
/// every hash when it is first loaded.
pub fn check_authors(
    access: &TeamAccess,
    team: TeamId,
    kind: &DocKind,
    changes: &[(ActorId, Option<ChangeHash>)],
) -> Result<(), String> {
    let mut genesis: Option<(ActorId, Option<ChangeHash>)> = None;
    for (actor, hash) in changes {
        if access.may_have_written(actor, kind) {
            continue;
        }
        let (genesis_actor, genesis_hash) =
            genesis.get_or_insert_with(|| genesis_change(team, kind));
        if actor == genesis_actor && (hash.is_none() || *hash == *genesis_hash) {
            continue;
        }
        return Err(format!(
            "a change by {} to a {kind} document, which that device may not write",
            short_actor(actor)
        ));
    }
    Ok(())
}

/// Checks every change of a loaded document with [`check_authors`], its signatures with
/// [`check_signed_document`](crate::authorship::check_signed_document), then with the
/// document's [`ReceivedRules`]: a document received whole is held to the same rules as
/// the changes received one by one.
pub fn check_document(
    access: &TeamAccess,
    team: TeamId,
    kind: &DocKind,
    doc: &Automerge,
    signatures: &[ChangeSig],
) -> Result<(), String> {
    check_authors_of(access, team, kind, doc)?;
    check_signatures_of(access, team, kind, doc, signatures)?;
    let rules = ReceivedRules::new(team, kind);
    doc.get_changes(&[]).iter().try_for_each(|change| rules.check(change))
}

/// [`check_document`] for a document loaded from `saved`, its stored bytes: the rules are
/// checked on the operations `saved` holds ([`crate::chunks::check_saved_rules`]), which
/// costs a small part of rebuilding every change from the loaded document (as much as
/// loading it again) and checking those.
pub fn check_saved_document(
    access: &TeamAccess,
    team: TeamId,
    kind: &DocKind,
    doc: &Automerge,
    saved: &[u8],
    signatures: &[ChangeSig],
) -> Result<(), String> {
    check_authors_of(access, team, kind, doc)?;
    check_signatures_of(access, team, kind, doc, signatures)?;
    check_saved_rules_of(team, kind, doc, saved)
}

/// [`check_saved_document`] but for the signatures, for a caller that checks them itself
/// (to name the change to blame).
pub fn check_saved_authors_and_rules(
    access: &TeamAccess,
    team: TeamId,
    kind: &DocKind,
    doc: &Automerge,
    saved: &[u8],
) -> Result<(), String> {
    check_authors_of(access, team, kind, doc)?;
    check_saved_rules_of(team, kind, doc, saved)
}

/// The authors of every change of a loaded document, with [`check_authors`].
fn check_authors_of(
    access: &TeamAccess,
    team: TeamId,
    kind: &DocKind,
    doc: &Automerge,
) -> Result<(), String> {
    let changes: Vec<_> =
        changes_of(doc).into_iter().map(|(actor, hash)| (actor, Some(hash))).collect();
    check_authors(access, team, kind, &changes)
}

/// The signatures of every change of a loaded document.
fn check_signatures_of(
    access: &TeamAccess,
    team: TeamId,
    kind: &DocKind,
    doc: &Automerge,
    signatures: &[ChangeSig],
) -> Result<(), String> {
    crate::authorship::check_signed_document(access, team, kind.doc_id(team), kind, doc, signatures)
        .map_err(|e| e.to_string())
}

/// The rules on the operations `saved` holds, `doc` loaded from it. They know the first
/// change by its actor: only the authors' check, before this, makes that actor the first
/// change's alone.
fn check_saved_rules_of(
    team: TeamId,
    kind: &DocKind,
    doc: &Automerge,
    saved: &[u8],
) -> Result<(), String> {
    let rules = ReceivedRules::new(team, kind);
    crate::chunks::check_saved_rules(&rules, saved, automerge::ReadDoc::stats(doc).num_ops)
}

/// Names an actor in a message: as a device where it is one.
fn short_actor(actor: &ActorId) -> String {
    match DeviceId::from_slice(actor.to_bytes()) {
        Ok(device) => format!("device {device}"),
        Err(_) => format!("actor {actor}"),
    }
}

/// The actor and hash of the deterministic first change of a document.
pub fn genesis_change(team: TeamId, kind: &DocKind) -> (ActorId, Option<ChangeHash>) {
    let first = care_core::documents::first_change(team, kind);
    (first.actor.clone(), Some(first.hash))
}

/// BLAKE3 over the sorted op hashes, truncated to 16 bytes.
pub fn ops_hash(ops: &[SignedOp]) -> [u8; 16] {
    let mut hashes: Vec<_> = ops.iter().map(SignedOp::hash).collect();
    hashes.sort();
    hashes.dedup();
    let mut hasher = blake3::Hasher::new();
    for hash in &hashes {
        hasher.update(hash.as_bytes());
    }
    truncate(hasher.finalize())
}

/// The first 16 bytes of a BLAKE3 hash.
pub fn truncate(hash: blake3::Hash) -> [u8; 16] {
    let mut out = [0; 16];
    out.copy_from_slice(&hash.as_bytes()[..16]);
    out
}
