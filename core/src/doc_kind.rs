//! The kinds of document a team holds; every document of a team is one of these.

use crate::ids::Month;

/// Which notes stream a notes document belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NoteStream {
    /// Shift notes: the health record of visits.
    Care,
    /// General notes, which volunteers may read and write.
    General,
}

/// A document of a team.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocKind {
    /// The team: name, settings and circle.
    Team,
    /// The care plan.
    Plan,
    /// The health sections of the care plan (medication, risks).
    HealthPlan,
    /// One month of notes in one stream.
    Notes {
        /// Care (shift) notes or general notes.
        stream: NoteStream,
        /// The month the notes belong to.
        month: Month,
    },
    /// One month of rota bookings.
    Rota {
        /// The month of the bookings.
        month: Month,
    },
    /// The team's promises (written agreements).
    Promises,
}
