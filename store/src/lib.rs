//! The store of a care home on one device: the only crate that knows SQLite.
//!
//! A [`Store`] is one SQLite file (WAL, `synchronous=FULL`; a piece of a document
//! received whole, no part of any document yet, is the one write not synced on its own:
//! see [`Store::add_piece`]) holding:
//! - the team's signed membership ops, as opaque bytes keyed by their hash;
//! - its documents, each an opaque Automerge document with a `kind`, kept as a snapshot
//!   chunk plus one incremental chunk per saved change, each with a BLAKE3 checksum;
//! - what sync needs between runs: per-peer sync states, peers' last known addresses, and
//!   the invitations this device issued.
//!
//! The flow for a document: [`Store::create_doc`] or [`Store::load_doc`] gives a
//! [`StoredDoc`]; every change goes through [`Store::update_doc`], which returns only once
//! the change is on disk. Memory never holds changes that are not stored, so a crash loses
//! nothing that was acknowledged. Several processes may open the same file: writes take the
//! write lock first and apply the others' changes before making their own, and
//! [`Store::refresh`] picks up changes written elsewhere. Everything read back is checked
//! (checksums, load, heads); a damaged document is reported by id and the others still load.
//!
//! The only clock read is `updated_at_ms` of documents, taken from this device's clock when
//! a document is written; callers pass in every other time.
//!
//! ```
//! use automerge::{Automerge, ReadDoc, ROOT, transaction::Transactable};
//! use care_core::ids::{DocId, TeamId};
//! use care_store::{DocMeta, Store};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let mut store = Store::open(&dir.path().join("home.sqlite"))?;
//! let meta = DocMeta {
//!     id: DocId::from_bytes([1; 16]),
//!     team: TeamId::from_bytes([2; 16]),
//!     kind: "notes".into(),
//! };
//! let mut doc = store.create_doc(&meta, &Automerge::new())?;
//! store.update_doc(&mut doc, |d| {
//!     d.transact(|tx| tx.put(ROOT, "client", "Ada")).map(|_| ()).map_err(|f| f.error)
//! })?;
//!
//! let reloaded = store.load_doc(meta.id)?.expect("it was just created");
//! assert_eq!(reloaded.doc().get_heads(), doc.doc().get_heads());
//! assert!(reloaded.doc().get(ROOT, "client")?.is_some());
//! # Ok(())
//! # }
//! ```

mod compaction;
mod doc;
mod error;
mod invites;
pub mod keyfile;
mod schema;
mod sealed;
mod store;
mod transfer;
pub use sealed::{NewSealed, SealedDocSummary, SealedRow};
pub use transfer::Imported;

pub use compaction::{ChunksToCompact, Compaction};
pub use doc::{DocMeta, DocSummary, StoredDoc, StoredSignature};
pub use error::{StoreError, UpdateError};
pub use invites::{Invite, InviteRefusal};
pub use keyfile::KeyFileError;
pub use schema::SCHEMA_VERSION;
pub use store::{
    BUSY_TIMEOUT_MS, CHECKPOINT_BACKSTOP_PAGES, CHECKPOINT_NUDGE_PAGES, COMPACT_BACKSTOP_FACTOR,
    COMPACT_MIN_BYTES, CompactReport, IntegrityReport, PageAuth, Problem, Store, StoreKey,
};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
