//! The one error type an app sees: a kind to match on, and a sentence to show.

use std::any::Any;

/// What went wrong, by kind; its message is a sentence a person can read.
///
/// In Kotlin and Swift each kind is a subclass (a case) of `CareException`/`CareError`,
/// in Python of `CareError`, carrying the message.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
#[non_exhaustive]
pub enum CareError {
    /// No home, team, member, note, booking or promise matches what was asked for.
    #[error("{0}")]
    NotFound(String),
    /// This device's role may not do it, or the team's membership refuses it.
    #[error("{0}")]
    NotAllowed(String),
    /// Input that cannot be used: an unknown plan section, a damaged ticket, a note too
    /// long, an empty name.
    #[error("{0}")]
    InvalidInput(String),
    /// The home's files could not be read or written, or hold damage.
    #[error("{0}")]
    Storage(String),
    /// Another device could not be reached, answered wrongly, or refused.
    #[error("{0}")]
    Network(String),
    /// The operation needs the node running (start it first), or the home was closed.
    #[error("{0}")]
    NotRunning(String),
    /// A bug inside the engine (a panic), caught before it reached the app.
    #[error("{0}")]
    Internal(String),
}

impl From<care::Error> for CareError {
    fn from(error: care::Error) -> Self {
        use care::Error as E;
        let message = error.to_string();
        match error {
            E::NotInitialised { .. } | E::TeamNotFound(_) | E::NotFound { .. } => {
                CareError::NotFound(message)
            }
            E::NotAllowed { .. } | E::Refused(_) | E::JoinRefused(_) | E::CircleRefused(_) => {
                CareError::NotAllowed(message)
            }
            E::AlreadyInitialised { .. } | E::TeamAmbiguous(_) | E::Invalid(_) => {
                CareError::InvalidInput(message)
            }
            E::Document { source, .. } => match *source {
                care::DocError::Invalid(_) | care::DocError::WrongSection { .. } => {
                    CareError::InvalidInput(message)
                }
                care::DocError::NotFound { .. } => CareError::NotFound(message),
                _ => CareError::Storage(message),
            },
            E::Net(_) | E::Dial(_) => CareError::Network(message),
            E::Thread(_) | E::Stopped(_) => CareError::NotRunning(message),
            _ => CareError::Storage(message),
        }
    }
}

impl From<care::TicketError> for CareError {
    fn from(error: care::TicketError) -> Self {
        CareError::InvalidInput(format!("not a valid ticket: {error}"))
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    format!("an internal error in the care engine: {what}")
}
