//! Builds a [`Membership`] from a set of signed ops: screening, deterministic
//! topological replay, and the fixpoint that makes removals win.

use std::collections::{BTreeMap, BTreeSet};

use super::OPS_MAX;
use super::error::{MembershipError, RejectReason, Rejected};
use super::op::{Op, OpBody, SignedOp, team_id, validate};
use super::state::Membership;
use crate::ids::{DeviceId, MemberId, OpHash, TeamId};

impl Membership {
    /// Replays a set of ops into the team's membership, with the ops left out and
    /// why. The result depends only on the set, not on the order of `ops`.
    pub fn from_ops<'a>(
        team: TeamId,
        ops: impl IntoIterator<Item = &'a SignedOp>,
    ) -> Result<(Membership, Vec<Rejected>), MembershipError> {
        Membership::replay(team, ops, true)
    }

    /// [`Membership::from_ops`] of ops whose signatures the caller has already verified
    /// (they passed an earlier replay): the same result, without checking each signature
    /// again, which is most of a replay's cost. Replaying the log as it stood at earlier
    /// heads, once per change signed under them, would otherwise cost a signature check
    /// per op each time.
    pub fn from_verified_ops<'a>(
        team: TeamId,
        ops: impl IntoIterator<Item = &'a SignedOp>,
    ) -> Result<(Membership, Vec<Rejected>), MembershipError> {
        Membership::replay(team, ops, false)
    }

    fn replay<'a>(
        team: TeamId,
        ops: impl IntoIterator<Item = &'a SignedOp>,
        verify: bool,
    ) -> Result<(Membership, Vec<Rejected>), MembershipError> {
        let input = collect(ops)?;
        let mut rejected = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        for (hash, signed) in input {
            match screen(team, signed, verify) {
                Ok(node) => {
                    nodes.insert(hash, node);
                }
                Err(reason) => {
                    rejected.insert(hash, reason);
                }
            }
        }
        let graph = Graph::new(nodes, &mut rejected);
        let (mut state, replay_rejected) = graph.settle(team)?;
        rejected.extend(replay_rejected);
        state.set_heads(graph.heads());
        let rejected = rejected.into_iter().map(|(op, reason)| Rejected { op, reason }).collect();
        Ok((state, rejected))
    }
}

/// A screened op: its signature verifies and it decodes, within bounds, for this team.
struct Node {
    author: DeviceId,
    op: Op,
}

/// A removal accepted in a replay: the removing op and the devices it removes.
struct Removal {
    op: OpHash,
    devices: BTreeSet<DeviceId>,
}

/// A replay's membership, its rejected ops and its accepted removals.
type Replayed = (Membership, BTreeMap<OpHash, RejectReason>, Vec<Removal>);

/// The screened ops whose whole ancestry is screened too, in replay order.
struct Graph {
    nodes: BTreeMap<OpHash, Node>,
    /// Kahn's order, ties broken by hash; starts with the op creating the team.
    order: Vec<OpHash>,
}

fn collect<'a>(
    ops: impl IntoIterator<Item = &'a SignedOp>,
) -> Result<BTreeMap<OpHash, &'a SignedOp>, MembershipError> {
    let mut input = BTreeMap::new();
    for (i, op) in ops.into_iter().enumerate() {
        if i >= OPS_MAX {
            return Err(MembershipError::TooManyOps { max: OPS_MAX });
        }
        input.insert(op.hash(), op);
    }
    Ok(input)
}

/// Checks what can be checked of an op on its own.
fn screen(team: TeamId, signed: &SignedOp, verify: bool) -> Result<Node, RejectReason> {
    if verify {
        signed.verify().map_err(|_| RejectReason::BadSignature)?;
    }
    let op = signed.op().map_err(|e| RejectReason::Malformed(e.to_string()))?;
    validate(&op).map_err(RejectReason::Malformed)?;
    if let OpBody::CreateTeam { .. } = op.body {
        if team_id(signed) != team {
            return Err(RejectReason::WrongTeam);
        }
        if op.team.is_some() || !op.preds.is_empty() {
            let why = "the op creating a team names no team and builds on no earlier op";
            return Err(RejectReason::Malformed(why.into()));
        }
    } else if op.team != Some(team) {
        return Err(RejectReason::WrongTeam);
    } else if op.preds.is_empty() {
        let why = "only the op creating a team may build on no earlier op";
        return Err(RejectReason::Malformed(why.into()));
    }
    Ok(Node { author: signed.author(), op })
}

impl Graph {
    /// Orders the nodes (Kahn's algorithm, ties broken by hash); nodes whose
    /// ancestry is incomplete are rejected and dropped.
    fn new(
        mut nodes: BTreeMap<OpHash, Node>,
        rejected: &mut BTreeMap<OpHash, RejectReason>,
    ) -> Graph {
        let mut waiting: BTreeMap<OpHash, usize> = BTreeMap::new();
        let mut children: BTreeMap<OpHash, Vec<OpHash>> = BTreeMap::new();
        let mut ready = BTreeSet::new();
        for (hash, node) in &nodes {
            waiting.insert(*hash, node.op.preds.len());
            for pred in &node.op.preds {
                children.entry(*pred).or_default().push(*hash);
            }
            if node.op.preds.is_empty() {
                ready.insert(*hash);
            }
        }
        let mut order = Vec::with_capacity(nodes.len());
        while let Some(hash) = ready.pop_first() {
            order.push(hash);
            for child in children.get(&hash).into_iter().flatten() {
                if let Some(n) = waiting.get_mut(child) {
                    *n -= 1;
                    if *n == 0 {
                        ready.insert(*child);
                    }
                }
            }
        }
        let placed: BTreeSet<OpHash> = order.iter().copied().collect();
        nodes.retain(|hash, node| {
            let missing = node.op.preds.iter().find(|p| !placed.contains(p));
            if let Some(pred) = missing {
                rejected.insert(*hash, RejectReason::UnknownPredecessor(*pred));
            }
            placed.contains(hash)
        });
        Graph { nodes, order }
    }

    /// Replays until no more ops of removed authors are found outside the
    /// history their removal was made on (see the module docs).
    fn settle(
        &self,
        team: TeamId,
    ) -> Result<(Membership, BTreeMap<OpHash, RejectReason>), MembershipError> {
        let mut excluded = BTreeSet::new();
        let mut ancestors = BTreeMap::new();
        loop {
            let (state, rejected, removals) = self.replay(team, &excluded)?;
            let before = excluded.len();
            for removal in &removals {
                self.exclude_outside(removal, &mut ancestors, &mut excluded);
            }
            if excluded.len() == before {
                return Ok((state, rejected));
            }
        }
    }

    /// One replay in order, leaving out the `excluded` ops.
    fn replay(
        &self,
        team: TeamId,
        excluded: &BTreeSet<OpHash>,
    ) -> Result<Replayed, MembershipError> {
        let no_create = MembershipError::NoCreateOp { team };
        let create = self.order.first().and_then(|h| self.nodes.get(h)).ok_or(no_create.clone())?;
        let OpBody::CreateTeam { name, owner, owner_name, .. } = &create.op.body else {
            return Err(no_create);
        };
        let mut state =
            Membership::genesis(team, create.author, create.op.at, (name, *owner, owner_name));
        let mut rejected = BTreeMap::new();
        let mut removals = Vec::new();
        for hash in self.order.iter().skip(1) {
            let Some(node) = self.nodes.get(hash) else {
                continue;
            };
            let verdict = if excluded.contains(hash) {
                Err(RejectReason::Removed { device: node.author })
            } else {
                state.check(node.author, &node.op.body)
            };
            match verdict {
                Ok(()) => {
                    removals.extend(removal(*hash, &node.op.body));
                    state.apply(node.author, node.op.at, &node.op.body);
                }
                Err(reason) => {
                    rejected.insert(*hash, reason);
                }
            }
        }
        // A member's devices are known only once the whole history is replayed.
        for r in &mut removals {
            if let Some(member) = r.member {
                r.removal.devices.extend(self.devices_ever_of(&state, member));
            }
        }
        Ok((state, rejected, removals.into_iter().map(|r| r.removal).collect()))
    }

    /// Adds to `excluded` the ops signed by a device the removal removes that are
    /// not in the history the removal was made on.
    fn exclude_outside(
        &self,
        removal: &Removal,
        ancestors: &mut BTreeMap<OpHash, BTreeSet<OpHash>>,
        excluded: &mut BTreeSet<OpHash>,
    ) {
        let known = ancestors.entry(removal.op).or_insert_with(|| self.ancestry(removal.op));
        for (hash, node) in &self.nodes {
            if removal.devices.contains(&node.author) && !known.contains(hash) {
                excluded.insert(*hash);
            }
        }
    }

    /// `op` and all its ancestors.
    fn ancestry(&self, op: OpHash) -> BTreeSet<OpHash> {
        let mut seen = BTreeSet::from([op]);
        let mut stack = vec![op];
        while let Some(hash) = stack.pop() {
            let preds = self.nodes.get(&hash).map(|n| n.op.preds.as_slice()).unwrap_or(&[]);
            for pred in preds {
                if seen.insert(*pred) {
                    stack.push(*pred);
                }
            }
        }
        seen
    }

    fn devices_ever_of(&self, state: &Membership, member: MemberId) -> BTreeSet<DeviceId> {
        let authors = self.nodes.values().map(|n| n.author);
        authors.filter(|d| state.member_ever_of_device(*d) == Some(member)).collect()
    }

    /// The ops that no other op builds on, sorted.
    fn heads(&self) -> Vec<OpHash> {
        let built_on: BTreeSet<OpHash> =
            self.nodes.values().flat_map(|n| n.op.preds.iter().copied()).collect();
        self.nodes.keys().filter(|h| !built_on.contains(h)).copied().collect()
    }
}

/// A removal found during replay; a member's devices are filled in afterwards.
struct PendingRemoval {
    removal: Removal,
    member: Option<MemberId>,
}

fn removal(op: OpHash, body: &OpBody) -> Option<PendingRemoval> {
    match body {
        OpBody::RemoveDevice { device } | OpBody::RemoveDeviceKnowing { device, .. } => {
            Some(PendingRemoval {
                removal: Removal { op, devices: BTreeSet::from([*device]) },
                member: None,
            })
        }
        OpBody::RemoveMember { member } | OpBody::RemoveMemberKnowing { member, .. } => {
            Some(PendingRemoval {
                removal: Removal { op, devices: BTreeSet::new() },
                member: Some(*member),
            })
        }
        _ => None,
    }
}
