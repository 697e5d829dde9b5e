//! Why a session ended: the typed reason an app matches on, displayed as a sentence.

use care_core::{DeviceId, TeamId};

/// Why a session with another device ended. The other device is told the sentence
/// ([`Frame::Close`](crate::Frame::Close)); the app gets the reason in
/// [`PeerEvent::Disconnected`](crate::PeerEvent::Disconnected).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// The other device broke the protocol (a frame that does not decode or is too large,
    /// a second Hello, a frame before its Hello, another protocol version): what it did.
    #[error("{0}")]
    Protocol(String),
    /// The two devices share no team: the other device's Hello named none in common.
    #[error("device {device} shares no team with this device")]
    NothingShared {
        /// The other device.
        device: DeviceId,
    },
    /// The other device is no longer a current device of the last team they shared.
    #[error("device {device} is no longer a current device of team {team}")]
    Removed {
        /// The other device.
        device: DeviceId,
        /// The team it was removed from.
        team: TeamId,
    },
    /// The membership of the last team the two devices shared can no longer be read on
    /// this device.
    #[error("the membership of team {0} cannot be read on this device")]
    TeamUnreadable(TeamId),
    /// This device's store failed.
    #[error("this device's store failed: {0}")]
    Store(String),
    /// The other device closed the session, saying why.
    #[error("device {device} closed the session: {reason}")]
    ByRemote {
        /// The other device.
        device: DeviceId,
        /// Its sentence.
        reason: String,
    },
    /// The other device ended the session without a word (it finished its stream).
    #[error("the other device ended the session")]
    Ended,
    /// The connection was lost.
    #[error("the connection was lost: {0}")]
    Lost(String),
    /// The other device did not show a shared team within the Hello timeout.
    #[error("the other device showed no shared team within {0} ms")]
    HelloTimeout(u64),
    /// A newer connection between the same two devices replaced this one.
    #[error("replaced by another connection between the same devices")]
    Replaced,
    /// The other device read more slowly than this device sent, past the bound on
    /// what is queued for it.
    #[error(
        "the other device reads slower than this device sends: more than {0} bytes waited for it"
    )]
    FellBehind(u64),
    /// This device is shutting down.
    #[error("this device is shutting down")]
    ShuttingDown,
    /// This device failed while handling the session (a bug), and closed it.
    #[error("this device failed while handling the session (a bug), and closed it")]
    Failed,
}
