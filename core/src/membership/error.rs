//! Why a membership op was rejected, and why a membership could not be built at all.

use crate::ids::{DeviceId, MemberId, OpHash, TeamId};

/// An op that was left out of the membership, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("membership op {op} was rejected: {reason}")]
pub struct Rejected {
    /// The rejected op.
    pub op: OpHash,
    /// Why it was rejected.
    pub reason: RejectReason,
}

/// Why an op is not accepted into a team's membership.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// The signature does not verify for the claimed author.
    #[error("its signature does not verify")]
    BadSignature,
    /// The op cannot be decoded, or breaks a bound (name length, hat count, ...).
    #[error("it is malformed: {0}")]
    Malformed(String),
    /// The op names another team.
    #[error("it belongs to another team")]
    WrongTeam,
    /// The op builds on an op that is missing or itself not a valid op of the team.
    #[error("it builds on op {0}, which is not a valid op of this team's history")]
    UnknownPredecessor(OpHash),
    /// The signing device has never been a device of the team.
    #[error("its author, device {0}, is not a device of any member")]
    UnknownAuthor(DeviceId),
    /// The author's member may not make this change.
    #[error("member {member} is not allowed to {action}")]
    NotAllowed {
        /// The member whose device signed the op.
        member: MemberId,
        /// What they tried to do.
        action: &'static str,
    },
    /// The signing device (or its member) was removed, and the op was not part of
    /// the history the removal was made on.
    #[error("its author, device {device}, has been removed from the team")]
    Removed {
        /// The removed device.
        device: DeviceId,
    },
    /// The op contradicts the membership it was applied to (adding someone twice,
    /// removing a device that is not there, ...).
    #[error("it conflicts with the team's membership: {0}")]
    Conflict(String),
    /// The op would take the team past one of its named limits (members, devices per
    /// member, membership changes per member), which keep one member from flooding
    /// the log.
    #[error("it would exceed the limit of {max} {what}")]
    OverLimit {
        /// What is limited.
        what: &'static str,
        /// The limit.
        max: usize,
    },
}

/// Why no membership could be built from a set of ops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// No valid op creating this team is in the set.
    #[error("no valid op creating team {team} was found")]
    NoCreateOp {
        /// The team asked for.
        team: TeamId,
    },
    /// The set holds more ops than a team's membership may.
    #[error("the membership has more than {max} ops, the most allowed")]
    TooManyOps {
        /// [`OPS_MAX`](super::OPS_MAX).
        max: usize,
    },
}
