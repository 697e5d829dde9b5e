//! Care Commons for phone and desktop apps: the embedding API as a C library with
//! generated Kotlin, Swift and Python bindings (UniFFI).
//!
//! An app opens a [`CareHome`] in a directory it chooses, works on its teams' care plan,
//! shift notes, rota, promises and membership, starts the node to sync with the teams'
//! other devices, and subscribes a [`ChangeListener`] to hear what to render. Every
//! method is async and runs its work on the home's owner thread, never on the caller's.
//! Errors come as one [`CareError`]; a panic inside becomes `CareError::Internal`
//! instead of crossing into the app.
//!
//! Generate the bindings with `bindings/generate` (see the README).

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

mod error;
mod events;
mod home;
mod records;

pub use error::CareError;
pub use events::{ChangeListener, Part, Subscription, TeamChange, Update};
pub use home::{CareHome, SYNC_TIMEOUT_MS_MAX};
pub use records::{
    Booking, BookingResponse, ChangeAudit, DeviceStatus, Medication, Member, NewBooking, NewNote,
    NodeOptions, Note, NoteAmendment, PlanSection, Promise, Role, SignatureCheck, TeamSummary,
    Whoami,
};

uniffi::setup_scaffolding!();

/// Runs `work`, turning a panic inside it into [`CareError::Internal`], so that no panic
/// crosses into the app.
pub async fn guard<T>(work: impl Future<Output = Result<T, CareError>>) -> Result<T, CareError> {
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(CareError::Internal(error::panic_message(&*panic))),
    }
}
