//! Why something a remote device sent was refused: a typed reason, reported to the
//! application with [`SyncEvent::Refused`](crate::SyncEvent::Refused), while the session
//! goes on for everything else.

use care_core::keys::KeyScope;
use care_core::sealed::SealError;
use care_core::{DeviceId, DocKind, TeamId};

/// Why a frame, or part of one, from a remote device was not applied.
///
/// Every refusal names what the sender did; a device that keeps sending what is refused
/// is misbehaving, and the application may remove it from the team.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The sender, or this device, is not a current device of the team.
    #[error("device {device} is not a current device of team {team}")]
    NotCurrent {
        /// The device that is not current.
        device: DeviceId,
        /// The team.
        team: TeamId,
    },
    /// One of the two devices may not read documents of this kind.
    #[error("a {kind} document, which one of the two devices may not read")]
    MayNotRead {
        /// The kind of document sent.
        kind: DocKind,
    },
    /// A change is by a device that could never write documents of this kind.
    #[error("{0}")]
    MayNotWrite(String),
    /// A change whose authorship does not hold: unsigned, signed by another device than
    /// its actor, or by a device that could not write the document then.
    #[error(transparent)]
    Authorship(#[from] crate::authorship::AuthorshipError),
    /// A change that breaks its document's rules, as the local API would never write it
    /// (overwriting a note, replacing a container, an entry key of the wrong shape).
    #[error("{0}")]
    BreaksDocumentRules(String),
    /// Automerge bytes that do not parse, or break the protocol's rules for them.
    #[error("{0}")]
    Malformed(String),
    /// A count or size over one of the protocol's named limits.
    #[error("{what}: {count}, more than the {max} allowed")]
    OverLimit {
        /// What was counted.
        what: &'static str,
        /// How many were sent (at least).
        count: u64,
        /// The named limit.
        max: u64,
    },
    /// The changes are well formed but contradict what this device holds (for example a
    /// change reusing an author's sequence number with other content); the document is
    /// left as it was.
    #[error("changes that do not apply to the document held here: {0}")]
    DoesNotApply(String),
    /// Membership ops that are not valid ops of the team's log (bad signature, unknown
    /// predecessor, an author without the right, past a limit).
    #[error("{count} membership ops that are not valid ops of the team: {first}")]
    InvalidOps {
        /// How many of the ops sent were invalid.
        count: usize,
        /// Why the first of them was rejected.
        first: String,
    },
    /// A document sent in clear between a device and the team's circle node, which are
    /// given documents sealed only.
    #[error("a {kind} document in clear, to or from the team's circle node")]
    InClear {
        /// The kind of document sent.
        kind: DocKind,
    },
    /// A sealed document that is not valid: past a bound, its sealer's signature does
    /// not verify, or it does not decrypt under the key it names.
    #[error("a document sealed by device {sealer}: {why}")]
    Sealed {
        /// The device that sealed it.
        sealer: DeviceId,
        /// What is wrong with it.
        why: SealError,
    },
    /// A sealed document whose sealer may not seal it: not the device that sent it, not
    /// a current device, a role that holds no key of its scope, or a key of another
    /// scope than the document's.
    #[error("a document sealed by device {sealer}, which may not seal it: {why}")]
    MayNotSeal {
        /// The device that sealed it.
        sealer: DeviceId,
        /// Why not.
        why: String,
    },
    /// A sealed document that decrypts but does not hold the changes it lists.
    #[error("a document sealed by device {sealer} that holds other changes than it lists")]
    NotAsListed {
        /// The device that sealed it.
        sealer: DeviceId,
    },
    /// A sealed document under a team key this device was not given.
    #[error("a document sealed under a {scope} key this device was not given")]
    NoKey {
        /// The key's scope.
        scope: KeyScope,
    },
    /// This device cannot read the team's membership log (damaged or over its limits):
    /// the team is left out of every session until it is repaired.
    #[error("the membership of team {team} cannot be read: {why}")]
    TeamUnreadable {
        /// The team.
        team: TeamId,
        /// What went wrong.
        why: String,
    },
}

impl Refusal {
    /// A count over a named limit.
    pub fn over_limit(what: &'static str, count: usize, max: usize) -> Refusal {
        Refusal::OverLimit { what, count: count as u64, max: max as u64 }
    }
}
