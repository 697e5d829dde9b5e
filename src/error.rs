//! Errors of the embedding API: one enum, each variant a sentence a person can read.

use std::path::PathBuf;

use care_core::documents::DocError;
use care_core::membership::{MembershipError, RejectReason};
use care_store::{StoreError, keyfile::KeyFileError};

/// What went wrong in an operation on a care home.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `open` found no care home in the directory.
    #[error("no care home in {dir}: run `care init --name NAME` first")]
    NotInitialised {
        /// The directory that was opened.
        dir: PathBuf,
    },
    /// `init` found a care home already there.
    #[error("{dir} already holds a care home")]
    AlreadyInitialised {
        /// The directory that was initialised.
        dir: PathBuf,
    },
    /// A file or directory of the home could not be read or written.
    #[error("cannot use {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The device key file could not be created or read.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The SQLite store failed or found damage.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A document refused an operation or could not be read.
    #[error("{kind}: {source}")]
    Document {
        /// The document's kind, such as `notes/2026-11`.
        kind: String,
        /// What the document said.
        source: Box<DocError>,
    },
    /// The team's membership log could not be evaluated.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// The membership log refused an operation this device tried to make.
    #[error("the team's membership refuses this: {0}")]
    Refused(RejectReason),
    /// This device's role does not allow the operation.
    #[error("your role ({role}) may not {action}")]
    NotAllowed {
        /// The role this device holds in the team, or "none".
        role: String,
        /// What was attempted, such as "write health-plan".
        action: String,
    },
    /// No team matched what was asked for.
    #[error("no team matches `{0}`")]
    TeamNotFound(String),
    /// More than one team matched, and one must be chosen.
    #[error("{0}: choose one with --team")]
    TeamAmbiguous(String),
    /// A note, booking or promise with this id does not exist.
    #[error("no {what} with id {id}")]
    NotFound {
        /// "note", "booking" or "promise".
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// Input that cannot be used, such as an empty name.
    #[error("{0}")]
    Invalid(String),
    /// The network endpoint could not start.
    #[error(transparent)]
    Net(#[from] care_net::NetError),
    /// Another device could not be reached or answered wrongly.
    #[error(transparent)]
    Dial(#[from] care_net::DialError),
    /// The node's owner thread could not start.
    #[error("cannot start the thread that owns this home's data: {0}")]
    Thread(#[source] std::io::Error),
    /// The node has stopped.
    #[error(transparent)]
    Stopped(#[from] care_net::Stopped),
    /// The inviting device refused the ticket.
    #[error("the ticket was refused: {0}")]
    JoinRefused(String),
    /// The circle node refused to serve the team.
    #[error("the circle node refused the team: {0}")]
    CircleRefused(String),
    /// The circle's relay server could not start.
    #[cfg(feature = "relay-server")]
    #[error(transparent)]
    Relay(#[from] care_net::relay::RelayError),
    /// The home's profile is damaged.
    #[error("the home's profile is damaged: {0}")]
    Profile(String),
}

/// Shorthand for results of the embedding API.
pub type Result<T, E = Error> = std::result::Result<T, E>;
