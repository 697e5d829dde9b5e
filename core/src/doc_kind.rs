//! The kinds of document a team keeps, the sections of its care plan, and the
//! document ids every device derives from them without coordination.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{DocId, Month, TeamId};

/// Domain separation for [`DocKind::doc_id`]: a new context means new ids.
const DOC_ID_CONTEXT: &str = "care-commons 2026 document id v1";

/// Which stream of notes a notes document holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NoteStream {
    /// Shift notes: part of the health record (medication, wellbeing, concerns).
    Care,
    /// General notes, which a volunteer may read and write.
    General,
}

/// One kind of team document. Notes and rota bookings are split by month.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DocKind {
    /// The team's name and circle (membership is kept in a separate signed log).
    Team,
    /// The care plan sections everyone in the team may read.
    Plan,
    /// The care plan sections with health information (support, medication, risks, contacts).
    HealthPlan,
    /// One month of notes of one stream.
    Notes {
        /// Shift notes or general notes.
        stream: NoteStream,
        /// The month the notes belong to.
        month: Month,
    },
    /// One month of rota bookings.
    Rota {
        /// The month the bookings start in.
        month: Month,
    },
    /// The team's written agreements.
    Promises,
}

impl DocKind {
    /// The id of this team's document of this kind: the first 16 bytes of a BLAKE3
    /// key derivation over the team id and the kind's string form.
    pub fn doc_id(&self, team: TeamId) -> DocId {
        let mut hasher = blake3::Hasher::new_derive_key(DOC_ID_CONTEXT);
        hasher.update(team.as_bytes());
        hasher.update(self.to_string().as_bytes());
        let hash = hasher.finalize();
        let mut id = [0; DocId::LEN];
        id.copy_from_slice(&hash.as_bytes()[..DocId::LEN]);
        DocId::from_bytes(id)
    }

    /// The month of a month-partitioned document; `None` for the others.
    pub fn month(&self) -> Option<Month> {
        match self {
            DocKind::Notes { month, .. } | DocKind::Rota { month } => Some(*month),
            DocKind::Team | DocKind::Plan | DocKind::HealthPlan | DocKind::Promises => None,
        }
    }
}

impl fmt::Display for DocKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocKind::Team => f.write_str("team"),
            DocKind::Plan => f.write_str("plan"),
            DocKind::HealthPlan => f.write_str("health-plan"),
            DocKind::Notes { stream: NoteStream::Care, month } => write!(f, "notes/{month}"),
            DocKind::Notes { stream: NoteStream::General, month } => {
                write!(f, "general-notes/{month}")
            }
            DocKind::Rota { month } => write!(f, "rota/{month}"),
            DocKind::Promises => f.write_str("promises"),
        }
    }
}

impl FromStr for DocKind {
    type Err = ParseKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseKindError::new("document kind", s, DOC_KINDS);
        let month = |m: &str| m.parse::<Month>().map_err(|_| err());
        match s.split_once('/') {
            None => match s {
                "team" => Ok(DocKind::Team),
                "plan" => Ok(DocKind::Plan),
                "health-plan" => Ok(DocKind::HealthPlan),
                "promises" => Ok(DocKind::Promises),
                _ => Err(err()),
            },
            Some(("notes", m)) => Ok(DocKind::Notes { stream: NoteStream::Care, month: month(m)? }),
            Some(("general-notes", m)) => {
                Ok(DocKind::Notes { stream: NoteStream::General, month: month(m)? })
            }
            Some(("rota", m)) => Ok(DocKind::Rota { month: month(m)? }),
            Some(_) => Err(err()),
        }
    }
}

/// A section of the care plan ("Supportive Conversations").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Section {
    /// About me.
    AboutMe,
    /// What matters to me.
    WhatMatters,
    /// Daily routines.
    Routines,
    /// Support needs.
    Support,
    /// Medication.
    Medication,
    /// Risks and safety.
    Risks,
    /// Contacts and access information (key safe, entry instructions).
    Contacts,
    /// Goals.
    Goals,
}

impl Section {
    /// Every section, in the order the plan shows them.
    pub const ALL: [Section; 8] = [
        Section::AboutMe,
        Section::WhatMatters,
        Section::Routines,
        Section::Support,
        Section::Medication,
        Section::Risks,
        Section::Contacts,
        Section::Goals,
    ];

    /// The document holding this section: [`DocKind::HealthPlan`] for health and access
    /// information (which a volunteer may not read), [`DocKind::Plan`] for the rest.
    pub fn doc_kind(self) -> DocKind {
        match self {
            Section::AboutMe | Section::WhatMatters | Section::Routines | Section::Goals => {
                DocKind::Plan
            }
            Section::Support | Section::Medication | Section::Risks | Section::Contacts => {
                DocKind::HealthPlan
            }
        }
    }

    /// The kebab-case name, as used in documents and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::AboutMe => "about-me",
            Section::WhatMatters => "what-matters",
            Section::Routines => "routines",
            Section::Support => "support",
            Section::Medication => "medication",
            Section::Risks => "risks",
            Section::Contacts => "contacts",
            Section::Goals => "goals",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Section {
    type Err = ParseKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Section::ALL
            .into_iter()
            .find(|section| section.as_str() == s)
            .ok_or_else(|| ParseKindError::new("plan section", s, SECTIONS))
    }
}

/// A string that is not a valid document kind or plan section.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a valid {what}; expected one of: {valid}")]
pub struct ParseKindError {
    /// What was expected ("document kind", "plan section").
    pub what: &'static str,
    /// The text that failed to parse (truncated to 80 characters).
    pub input: String,
    /// The valid values.
    pub valid: &'static str,
}

impl ParseKindError {
    fn new(what: &'static str, input: &str, valid: &'static str) -> Self {
        ParseKindError { what, input: input.chars().take(80).collect(), valid }
    }
}

const DOC_KINDS: &str = "team, plan, health-plan, notes/YYYY-MM, general-notes/YYYY-MM, \
                         rota/YYYY-MM, promises";
const SECTIONS: &str =
    "about-me, what-matters, routines, support, medication, risks, contacts, goals";

#[cfg(test)]
mod tests {
    use super::*;

    fn month() -> Month {
        Month::new(2026, 11).expect("a valid month")
    }

    #[test]
    fn kinds_round_trip_through_strings() {
        let kinds = [
            DocKind::Team,
            DocKind::Plan,
            DocKind::HealthPlan,
            DocKind::Notes { stream: NoteStream::Care, month: month() },
            DocKind::Notes { stream: NoteStream::General, month: month() },
            DocKind::Rota { month: month() },
            DocKind::Promises,
        ];
        let names: Vec<String> = kinds.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "team",
                "plan",
                "health-plan",
                "notes/2026-11",
                "general-notes/2026-11",
                "rota/2026-11",
                "promises"
            ]
        );
        for kind in kinds {
            assert_eq!(kind.to_string().parse::<DocKind>(), Ok(kind));
        }
        for bad in ["", "notes", "notes/2026-13", "rota/", "plan/2026-11", "Team"] {
            let err = bad.parse::<DocKind>().expect_err("not a kind");
            assert!(err.to_string().contains("health-plan"), "{err}");
        }
    }

    #[test]
    fn doc_ids_depend_on_team_and_kind() {
        let team = TeamId::from_bytes([1; 16]);
        let other = TeamId::from_bytes([2; 16]);
        let notes = DocKind::Notes { stream: NoteStream::Care, month: month() };
        assert_eq!(notes.doc_id(team), notes.doc_id(team));
        assert_ne!(notes.doc_id(team), notes.doc_id(other));
        assert_ne!(notes.doc_id(team), DocKind::Rota { month: month() }.doc_id(team));
        assert_ne!(DocKind::Plan.doc_id(team), DocKind::HealthPlan.doc_id(team));
    }

    #[test]
    fn sections_round_trip_and_split_between_plans() {
        for section in Section::ALL {
            assert_eq!(section.to_string().parse::<Section>(), Ok(section));
        }
        assert_eq!(Section::Medication.doc_kind(), DocKind::HealthPlan);
        assert_eq!(Section::Contacts.doc_kind(), DocKind::HealthPlan);
        assert_eq!(Section::AboutMe.doc_kind(), DocKind::Plan);
        assert_eq!(Section::Goals.doc_kind(), DocKind::Plan);
        let err = "meds".parse::<Section>().expect_err("not a section");
        assert!(err.to_string().contains("medication"));
    }
}
