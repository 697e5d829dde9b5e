//! Care Commons: local-first records for self-managing home-care teams.
//!
//! A team's care plan, shift notes, rota and promises are Automerge documents kept in
//! a SQLite store on every member's device; who belongs to the team is a signed log of
//! membership operations. This crate is the one an app embeds: it opens a [`Home`] (a
//! directory holding one device's key and store) and works on its teams through
//! [`Team`], checking every read and write against the device's role.
//!
//! ```
//! use care::{Home, NewNote, NoteQuery};
//!
//! # fn main() -> Result<(), care::Error> {
//! let dir = std::env::temp_dir().join(format!("care-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let mut home = Home::init(&dir, "Ada")?;
//! let team_id = home.create_team("Ada's team")?;
//! let mut team = home.team(&team_id.to_string())?;
//! let note = NewNote { text: "Breakfast, meds, a walk in the park.".into(), ..NewNote::default() };
//! let id = team.add_note(&note, None)?;
//! let latest = team.notes(&NoteQuery { limit: Some(50), ..NoteQuery::default() })?;
//! assert_eq!(latest[0].id, id);
//! # drop(home); std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

mod arriving;
pub mod aside;
pub mod audit;
mod cache;
pub mod circle;
pub mod error;
pub mod export;
pub mod home;
pub mod node;
mod record;
mod replica;
mod sealed;
#[cfg(test)]
mod sim;
pub mod team;
#[cfg(test)]
mod test_support;
mod upkeep;
mod verify;

pub use aside::AsideEntry;
pub use audit::{ChangeAudit, SignatureVerdict};
/// The hash of an Automerge change: how a change kept aside is named.
pub use automerge::ChangeHash;
pub use cache::{DOC_BYTES_CACHED_MAX, DOCS_CACHED_MAX};
pub use care_net::{NetConfig, PeerAddr, PeerEvent};
pub use care_store::SealedDocSummary;
pub use care_sync::circle::CircleTicket;
pub use care_sync::ticket::{JoinTicket, TicketError};
pub use care_sync::{CloseReason, Refusal, SyncEvent};
pub use circle::{CIRCLE_TEAMS_MAX, CIRCLE_TICKET_VALID_MS};
#[cfg(feature = "relay-server")]
pub use circle::{CircleConfig, CircleNode};
pub use error::{Error, Result};
pub use export::{ExportFormat, ExportReport, VerifyFailure, VerifyReport, verify_export};
pub use home::{Clock, Home, ListenAddrs, Profile, SystemClock, TeamSummary};
pub use node::{Node, NodeOptions};
pub use replica::WHOLE_BYTES_KEPT_MAX;
pub use sealed::SEALED_ROWS_BEFORE_WHOLE;
pub use team::{NoteQuery, Team};

pub use care_core::documents::{
    Amendment, Booking, DocError, Medication, NewBooking, NewNote, Promise, PromiseVersion,
    Response, ShiftNote, TeamInfo,
};
pub use care_core::membership::{Access, Hat, Member, Membership, OpBody, Right, Role};
pub use care_core::{
    DeviceId, DocId, DocKind, EntryId, MemberId, Month, NoteStream, Section, TeamId, Timestamp,
};
pub use care_store::{DocSummary, IntegrityReport, Problem, StoreKey};
