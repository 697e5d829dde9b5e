//! Team membership: a signed, hash-linked log (a DAG) of operations, replayed
//! into who is in the team, with which role, hats and devices.
//!
//! Every change to a team's membership is a [`SignedOp`]: signed by one of the
//! author's devices and naming the ops its author had seen (`preds`). Peers
//! exchange the ops and each replays the set it holds with
//! [`Membership::from_ops`]. Replay is pure and deterministic: the same *set* of
//! ops gives the same membership and the same rejected ops, whatever order they
//! arrived in.
//!
//! # Rules
//! - Exactly one op creates the team ([`OpBody::CreateTeam`], no preds); the team
//!   id is the start of its hash, and its signing device is the owner's first
//!   device. Every other op names the team and builds on at least one op.
//! - An op is screened on its own first (signature, decoding, bounds, team), then
//!   placed in the history: an op whose predecessors are not all screened ops of
//!   the set is rejected, and so is everything built on it.
//! - The remaining ops are replayed in a topological order (Kahn's algorithm,
//!   ties broken by op hash), each checked against the membership at that point
//!   ([`Membership::check`]): the owner may do everything but hand over
//!   ownership or remove themself; a member with [`Right::ManageMembers`] manages
//!   non-owner members but may not grant rights; members manage their own
//!   devices; relays sign nothing; a removed member or device never comes back.
//!
//! # Removal wins
//! A removed member could try to get back in by signing an op whose preds leave
//! out their removal (a back-dated op), which sorts before the removal. So: an
//! op signed by device D is rejected ([`RejectReason::Removed`]) if an accepted
//! `RemoveDevice(D)`, or `RemoveMember` of D's member, does not have that op
//! among its ancestors, i.e. the op is concurrent with or after the removal.
//!
//! This is computed as a fixpoint: replay; collect the ops of removed devices
//! that are not ancestors of their removal; exclude them; replay again; repeat
//! until no new op is excluded. The excluded set only grows and is bounded by
//! the number of ops, so this ends; each round depends only on the set of ops,
//! so the result stays deterministic.
//!
//! Work is bounded: a set of more than [`OPS_MAX`] ops is refused, and every op
//! is bounded in size ([`OP_BYTES_MAX`]) and content (names, labels, hats). A team
//! adds at most [`MEMBERS_MAX`] members, each with at most [`DEVICES_PER_MEMBER_MAX`]
//! current devices, and every member but the owner has at most [`OPS_PER_MEMBER_MAX`]
//! ops accepted: ops past a limit are rejected like any other invalid op.

mod error;
mod op;
mod replay;
mod role;
mod state;

pub use error::{MembershipError, RejectReason, Rejected};
pub use op::{
    ACCEPTED_PER_OP_MAX, HAT_NAME_BYTES_MAX, HATS_MAX, KNOWN_DOCS_MAX, KnownChanges,
    LABEL_BYTES_MAX, NAME_BYTES_MAX, OP_BYTES_MAX, Op, OpBody, OpError, PREDS_MAX, SignedOp,
    WRAPPED_PER_OP_MAX, create_team, team_id,
};
pub use role::{Access, Hat, ParseNameError, Right, Role};
pub use state::{Cut, DeviceInfo, Member, Membership, ScopeKeys};

/// Most ops a team's membership history may hold. The per-member limits below keep the
/// ops of everyone but the owner well under it (`MEMBERS_MAX * OPS_PER_MEMBER_MAX`), so no
/// member can fill the log and lock the owner out of their own team.
pub const OPS_MAX: usize = 100_000;
/// Most members a team may ever add (removed members count: their ids are never reused).
pub const MEMBERS_MAX: usize = 256;
/// Most current devices one member may have.
pub const DEVICES_PER_MEMBER_MAX: usize = 8;
/// Most accepted membership ops by the devices of one member other than the owner.
pub const OPS_PER_MEMBER_MAX: usize = 256;

#[cfg(test)]
mod tests;
