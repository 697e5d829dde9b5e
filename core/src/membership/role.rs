//! Roles, rights and hats of team members, and the permission matrix that says
//! which documents each role may read or write.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::doc_kind::{DocKind, NoteStream};

/// The role of a member in a team (see DOMAIN.md, "Roles").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// The person getting support (or their legal representative): every right.
    Owner,
    /// A family member or friend nominated by the owner.
    Advocate,
    /// A paid care and support worker.
    Worker,
    /// A neighbour, community volunteer or peer supporter: rota and general notes.
    Volunteer,
    /// The circle's always-on node: stores and forwards, reads everything, writes nothing.
    Relay,
}

/// How far a member may go with a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// May not see the document; it is not synced to their devices.
    None,
    /// May read the document.
    Read,
    /// May read and change the document.
    ReadWrite,
}

/// A right a hat can carry, beyond what the member's role allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Right {
    /// Add and remove members, change their roles, add and remove their devices.
    ManageMembers,
    /// Change the team document (name, settings).
    ManageTeam,
}

/// A named responsibility a member takes on in the team (rota keeper, welcomer of
/// new members, ...), which may carry rights.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hat {
    /// The hat's name, e.g. "rota-keeper".
    pub name: String,
    /// The rights the hat carries; often none.
    pub rights: BTreeSet<Right>,
}

/// A role or right name that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a {kind}; expected one of: {valid}")]
pub struct ParseNameError {
    /// What was expected ("role" or "right").
    pub kind: &'static str,
    /// The text that failed to parse (truncated to 40 characters).
    pub input: String,
    /// The accepted names, comma separated.
    pub valid: &'static str,
}

impl Role {
    /// Every role, in order of authority.
    pub const ALL: [Role; 5] =
        [Role::Owner, Role::Advocate, Role::Worker, Role::Volunteer, Role::Relay];

    /// The lowercase name of the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Advocate => "advocate",
            Role::Worker => "worker",
            Role::Volunteer => "volunteer",
            Role::Relay => "relay",
        }
    }

    /// What this role may do with a document of `kind`, before any rights from hats.
    ///
    /// This is the permission matrix of the team. The team document is writable
    /// only by the owner here; members whose hats carry [`Right::ManageTeam`] get
    /// write access through [`Membership::access`](super::Membership::access).
    pub fn access(self, kind: &DocKind) -> Access {
        use Access::{None as No, Read as R, ReadWrite as RW};
        // Columns:        Team Plan Health CareNotes GeneralNotes Rota Promises
        let row: [Access; 7] = match self {
            Role::Owner => [RW, RW, RW, RW, RW, RW, RW],
            Role::Advocate => [R, RW, RW, RW, RW, RW, RW],
            Role::Worker => [R, R, R, RW, RW, RW, RW],
            Role::Volunteer => [R, R, No, No, RW, RW, RW],
            Role::Relay => [R, R, R, R, R, R, R],
        };
        row[matrix_column(kind)]
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s.trim()).ok_or_else(|| ParseNameError {
            kind: "role",
            input: s.chars().take(40).collect(),
            valid: "owner, advocate, worker, volunteer, relay",
        })
    }
}

impl Right {
    /// Every right.
    pub const ALL: [Right; 2] = [Right::ManageMembers, Right::ManageTeam];

    /// The kebab-case name of the right.
    pub fn as_str(self) -> &'static str {
        match self {
            Right::ManageMembers => "manage-members",
            Right::ManageTeam => "manage-team",
        }
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Right {
    type Err = ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Right::ALL.into_iter().find(|r| r.as_str() == s.trim()).ok_or_else(|| ParseNameError {
            kind: "right",
            input: s.chars().take(40).collect(),
            valid: "manage-members, manage-team",
        })
    }
}

impl Hat {
    /// A hat with a name and no rights (rota keeper, plan keeper, ...).
    pub fn named(name: &str) -> Hat {
        Hat { name: name.to_owned(), rights: BTreeSet::new() }
    }

    /// The "team-admin" hat: may add and remove members.
    pub fn team_admin() -> Hat {
        Hat { name: "team-admin".to_owned(), rights: BTreeSet::from([Right::ManageMembers]) }
    }
}

/// The column of the permission matrix for a kind of document.
fn matrix_column(kind: &DocKind) -> usize {
    match kind {
        DocKind::Team => 0,
        DocKind::Plan => 1,
        DocKind::HealthPlan => 2,
        DocKind::Notes { stream: NoteStream::Care, .. } => 3,
        DocKind::Notes { stream: NoteStream::General, .. } => 4,
        DocKind::Rota { .. } => 5,
        DocKind::Promises => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Month;
    use Access::{None as No, Read as R, ReadWrite as RW};

    /// Every kind of document, in matrix column order.
    fn kinds() -> [DocKind; 7] {
        let month = Month::new(2026, 11).expect("valid month");
        [
            DocKind::Team,
            DocKind::Plan,
            DocKind::HealthPlan,
            DocKind::Notes { stream: NoteStream::Care, month },
            DocKind::Notes { stream: NoteStream::General, month },
            DocKind::Rota { month },
            DocKind::Promises,
        ]
    }

    fn row(role: Role) -> Vec<Access> {
        kinds().iter().map(|k| role.access(k)).collect()
    }

    #[test]
    fn owner_reads_and_writes_everything() {
        assert_eq!(row(Role::Owner), [RW, RW, RW, RW, RW, RW, RW]);
    }

    #[test]
    fn advocate_writes_everything_but_the_team() {
        assert_eq!(row(Role::Advocate), [R, RW, RW, RW, RW, RW, RW]);
    }

    #[test]
    fn worker_reads_the_plan_and_writes_notes_rota_and_promises() {
        assert_eq!(row(Role::Worker), [R, R, R, RW, RW, RW, RW]);
    }

    #[test]
    fn volunteer_sees_no_health_record() {
        assert_eq!(row(Role::Volunteer), [R, R, No, No, RW, RW, RW]);
    }

    #[test]
    fn relay_reads_everything_and_writes_nothing() {
        assert_eq!(row(Role::Relay), [R, R, R, R, R, R, R]);
    }

    #[test]
    fn names_round_trip_and_errors_list_the_valid_names() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
        }
        for right in Right::ALL {
            assert_eq!(right.to_string().parse::<Right>(), Ok(right));
        }
        let err = "boss".parse::<Role>().expect_err("not a role");
        assert!(err.to_string().contains("owner, advocate, worker, volunteer, relay"));
        assert!("manage_members".parse::<Right>().is_err());
    }
}
