//! The error of every document operation: what went wrong, with what, as a sentence.

use crate::doc_kind::{DocKind, Section};

/// Why reading or writing a care document failed.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    /// The document was written by a newer version of Care Commons with a schema this
    /// version does not understand. Nothing was read or written.
    #[error(
        "this document uses schema version {found}, but this version of Care Commons only \
         understands up to version {supported}; please update the app"
    )]
    NewerSchema {
        /// The schema version found in the document.
        found: u64,
        /// The newest schema version this code understands.
        supported: u64,
    },
    /// The document is of another kind than the operation needs.
    #[error("expected a {expected} document, but this is a {found} document")]
    WrongKind {
        /// The kind of document the operation needs.
        expected: String,
        /// The kind of document found.
        found: String,
    },
    /// A value in the document is missing or has the wrong type.
    #[error("the document is damaged at `{path}`: {reason}")]
    Malformed {
        /// Where in the document, e.g. `notes/2026-11.abc/text`.
        path: String,
        /// What is wrong there.
        reason: String,
    },
    /// The entry the operation refers to does not exist (or has not arrived yet).
    #[error("there is no {what} with id `{id}` in this document")]
    NotFound {
        /// What was looked for ("note", "booking", "promise").
        what: &'static str,
        /// The id looked for.
        id: String,
    },
    /// The input was rejected before anything was written.
    #[error("{0}")]
    Invalid(String),
    /// The plan section lives in another plan document.
    #[error(
        "the section `{section}` is kept in the {belongs} document, not in the {found} document"
    )]
    WrongSection {
        /// The section asked for.
        section: Section,
        /// The document the section belongs to.
        belongs: DocKind,
        /// The document it was asked of.
        found: DocKind,
    },
    /// Automerge rejected an operation.
    #[error("the document could not be updated: {0}")]
    Automerge(#[from] automerge::AutomergeError),
}

impl DocError {
    /// A [`DocError::Malformed`] at `path`.
    pub(crate) fn malformed(path: impl Into<String>, reason: impl Into<String>) -> Self {
        DocError::Malformed { path: path.into(), reason: reason.into() }
    }
}
