//! Errors of the store: what went wrong, with which file or document, in sentences a
//! member of a care team can read.

use std::path::PathBuf;

use care_core::ids::DocId;
use rusqlite::ErrorCode;

use crate::store::BUSY_TIMEOUT_MS;

/// Everything that can go wrong while opening or using a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store file could not be created with owner-only permissions.
    #[error("could not create the store file {path}: {source}")]
    CreateFile {
        /// The file that was being created.
        path: PathBuf,
        /// Why the operating system refused.
        #[source]
        source: std::io::Error,
    },
    /// SQLite could not open the store file.
    #[error("could not open the store file {path}: {source}")]
    Open {
        /// The file that was being opened.
        path: PathBuf,
        /// What SQLite reported.
        #[source]
        source: rusqlite::Error,
    },
    /// The file cannot be read with the key given: it is encrypted with another key, or
    /// it is encrypted and no key was given, or it is not a store at all.
    #[error(
        "cannot read the store file {path}: {}",
        if *encrypted {
            "it is not encrypted with this key (or not a care store)"
        } else {
            "it is encrypted (open it with its key) or it is not a care store"
        }
    )]
    Locked {
        /// The file.
        path: PathBuf,
        /// Whether a key was given.
        encrypted: bool,
    },
    /// The file was written by a newer version of Care Commons. It was left untouched.
    #[error(
        "the store file {path} was written by a newer version of Care Commons (schema \
         {found}, this version knows schema {supported} at most); it was left untouched, \
         please update Care Commons"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The schema version found in the file.
        found: i64,
        /// The newest schema version this build knows.
        supported: i64,
    },
    /// Another program (or another window) on this device held the store's write lock
    /// for longer than [`BUSY_TIMEOUT_MS`].
    #[error(
        "another program on this device has been writing to the store for more than {} \
         seconds, so the store could not finish {doing}; try again when it has finished",
        BUSY_TIMEOUT_MS / 1000
    )]
    Busy {
        /// What the store was doing when it gave up waiting.
        doing: &'static str,
    },
    /// A document's stored data failed validation: a chunk fails its checksum, the chunks
    /// do not load, or they do not add up to the stored heads. Other documents are unaffected.
    #[error("document {doc} is damaged: {detail}")]
    Corrupt {
        /// The damaged document.
        doc: DocId,
        /// What is wrong with it.
        detail: String,
    },
    /// A row that belongs to no single document (a membership op, a document's id) is damaged.
    #[error("the store's {table} table is damaged: {detail}")]
    Damaged {
        /// The table holding the damaged row.
        table: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// No document with this id is stored.
    #[error("document {0} is not in this store")]
    UnknownDoc(DocId),
    /// A document with this id is already stored with a different team or kind.
    #[error("document {doc} is already stored with a different team or kind: {detail}")]
    MetaMismatch {
        /// The document id asked for.
        doc: DocId,
        /// The stored and the requested team and kind.
        detail: String,
    },
    /// SQLite failed for another reason (disk full, file removed, I/O error).
    #[error("the store failed while {doing}: {source}")]
    Sqlite {
        /// What the store was doing.
        doing: &'static str,
        /// What SQLite reported.
        #[source]
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// Wraps an SQLite error with what the store was doing; a lock held too long becomes
    /// [`StoreError::Busy`].
    pub(crate) fn sqlite(doing: &'static str, source: rusqlite::Error) -> StoreError {
        match source.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy { doing },
            _ => StoreError::Sqlite { doing, source },
        }
    }

    /// A damaged document.
    pub fn corrupt(doc: DocId, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt { doc, detail: detail.into() }
    }
}

/// Adds what the store was doing to an SQLite error.
pub(crate) trait Doing<T> {
    /// Maps the error with [`StoreError::sqlite`].
    fn doing(self, doing: &'static str) -> Result<T, StoreError>;
}

impl<T> Doing<T> for Result<T, rusqlite::Error> {
    fn doing(self, doing: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::sqlite(doing, source))
    }
}

/// The error of [`Store::update_doc`](crate::Store::update_doc): either the store failed,
/// or the caller's closure rejected the change. In both cases nothing was written and the
/// in-memory document holds only what is stored.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    /// The store failed; see [`StoreError`].
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The closure returned this error; nothing was written.
    #[error("the change was not saved: {0}")]
    Rejected(E),
}
