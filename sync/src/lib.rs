//! Peer-to-peer sync of care teams' documents: the `care/sync/4` protocol as state
//! machines with no IO (a [`Session`] per connection, a [`Hub`] per device), the storage
//! boundary they need, and an in-memory replica. The iroh runtime that drives them is the
//! crate `care-net` (`sync/net/`); this crate depends on no async runtime or network
//! library at all.
//!
//! # Flow
//! One [`Session`] per connection with one remote device, whose key the connection
//! authenticated. Each side:
//! 1. sends [`Frame::Hello`] with a summary per team in which the remote device is a
//!    current device of a member: a hash of the membership ops and a hash of the
//!    (document id, heads) of the documents both devices may read. Anyone else gets an
//!    empty Hello and a close: not a team id, not a document id.
//! 2. for a team whose summaries agree, does nothing more; where
//!    the ops differ, sends [`Frame::Ops`]; where anything differs, sends [`Frame::Heads`].
//! 3. on Heads, sends a [`Frame::Snapshot`] of each document the remote lacks, and starts
//!    Automerge's sync protocol ([`Frame::Sync`]) for each document whose heads differ.
//!    Incoming changes are checked before they are applied: the remote device must be
//!    allowed to read the document, and every change must carry its author's signature
//!    ([`care_core::ChangeSig`]) by a device whose role could write the document at the
//!    point of the membership log it signed under ([`authorship`]).
//! 4. reports [`SyncEvent::TeamInSync`] each time a team settles: the remote described
//!    all its documents under the membership both now hold, and no document is still
//!    being exchanged.
//! 5. stays live: [`Session::local_change`] pushes a local write at once, and the
//!    [`SyncEvent`]s tell the driver what to pass on to its other sessions.
//!
//! ```
//! use care_core::documents::{Author, plan};
//! use care_core::{DeviceKey, DocKind, MemberId, OpBody, Role, Section, Timestamp, create_team,
//!                 team_id, Membership};
//! use care_sync::{MemoryReplica, Output, Session, SyncEvent};
//!
//! let (owner, worker) = (DeviceKey::from_seed([1; 32]), DeviceKey::from_seed([2; 32]));
//! let create = create_team(&owner, Timestamp(0), "Rosa's team", MemberId::from_bytes([1; 16]),
//!                          "Rosa", [0; 16]);
//! let team = team_id(&create);
//! let mut ops = vec![create];
//! let sam = MemberId::from_bytes([2; 16]);
//! for body in [
//!     OpBody::AddMember { member: sam, name: "Sam".into(), role: Role::Worker, hats: vec![] },
//!     OpBody::AddDevice { member: sam, device: worker.device_id(), label: "phone".into() },
//! ] {
//!     let (membership, _) = Membership::from_ops(team, &ops)?;
//!     ops.push(membership.author_op(&owner, Timestamp(1), body)?);
//! }
//! let mut a = MemoryReplica::with_key(owner.clone());
//! let mut b = MemoryReplica::with_key(worker.clone());
//! use care_sync::Replica;
//! a.add_ops(team, &ops)?;
//! b.add_ops(team, &ops)?;
//! let by = Author { member: MemberId::from_bytes([1; 16]), device: owner.device_id(),
//!                   at: Timestamp(5_000) };
//! // Written and signed with the owner's key.
//! a.write(team, DocKind::Plan, |doc| plan::set_section(doc, &by, Section::Routines, "Tea at 8."))?;
//!
//! let mut sa = Session::new(owner.device_id(), worker.device_id());
//! let mut sb = Session::new(worker.device_id(), owner.device_id());
//! // Deliver frames by hand until both sides are quiet.
//! let mut to_b: Vec<Vec<u8>> = sends(sa.start(&mut a));
//! let mut to_a: Vec<Vec<u8>> = sends(sb.start(&mut b));
//! while !to_a.is_empty() || !to_b.is_empty() {
//!     let next_b: Vec<_> = to_a.drain(..).flat_map(|f| sends(sa.handle_frame(&mut a, &f))).collect();
//!     let next_a: Vec<_> = to_b.drain(..).flat_map(|f| sends(sb.handle_frame(&mut b, &f))).collect();
//!     to_b = next_b;
//!     to_a = next_a;
//! }
//! let id = DocKind::Plan.doc_id(team);
//! assert_eq!(plan::section(b.doc(team, id).expect("synced"), Section::Routines)?, "Tea at 8.");
//!
//! fn sends(outputs: Vec<Output>) -> Vec<Vec<u8>> {
//!     outputs.into_iter().filter_map(|o| match o { Output::Send(f) => Some(f.to_vec()), _ => None }).collect()
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod access;
pub mod agreed;
pub mod authorship;
pub mod chunks;
pub mod circle;
mod close;
pub mod frame;
pub mod hub;
pub mod join;
mod memory;
pub mod message;
mod refusal;
mod replica;
mod session;
#[cfg(any(test, feature = "simulation"))]
pub mod sim;
pub mod ticket;

pub use access::TeamAccess;
pub use authorship::AuthorshipError;
pub use close::CloseReason;
pub use frame::{
    ALPN, DocHeads, Encoded, FRAME_BYTES_MAX, Frame, FrameError, Lane, PROTOCOL_VERSION, PartRef,
    TeamSummary, length_prefix, read_length_prefix,
};
pub use hub::{Change, ConnId, Effect, Hub, PeerEvent};
pub use memory::{MemoryError, MemoryReplica};
pub use refusal::Refusal;
pub use replica::{HeldDoc, Import, Replica};
pub use session::{
    DOCS_PER_TEAM_MAX, HELLO_FRAME_BYTES_MAX, MONTHS_AHEAD_MAX, Output, SYNC_FRAME_BYTES_MAX,
    Session, SyncEvent,
};
