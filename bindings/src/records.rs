//! The plain records an app renders and sends: ids as strings, times as milliseconds
//! since the Unix epoch, no Automerge objects.

use care::{MemberId, Membership, Timestamp};

use crate::error::CareError;

/// A member's role in a team.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Role {
    /// The person getting support, who leads the team.
    Owner,
    /// Someone who speaks for the owner and may manage the team.
    Advocate,
    /// A care worker.
    Worker,
    /// A friend or neighbour who helps; reads no health records.
    Volunteer,
    /// The circle's always-on node: stores and passes on, writes nothing.
    Relay,
}

impl From<care::Role> for Role {
    fn from(role: care::Role) -> Self {
        match role {
            care::Role::Owner => Role::Owner,
            care::Role::Advocate => Role::Advocate,
            care::Role::Worker => Role::Worker,
            care::Role::Volunteer => Role::Volunteer,
            care::Role::Relay => Role::Relay,
        }
    }
}

impl From<Role> for care::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::Owner => care::Role::Owner,
            Role::Advocate => care::Role::Advocate,
            Role::Worker => care::Role::Worker,
            Role::Volunteer => care::Role::Volunteer,
            Role::Relay => care::Role::Relay,
        }
    }
}

/// Who this home is.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Whoami {
    /// The person's name, as their teams see it.
    pub name: String,
    /// Their member id.
    pub member_id: String,
    /// This device's id.
    pub device_id: String,
}

/// A team this home belongs to.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TeamSummary {
    /// The team's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// This person's role in it; none once removed.
    pub role: Option<Role>,
    /// How many members it has.
    pub members: u32,
    /// How many of its documents this home holds.
    pub documents: u32,
}

/// One section of the care plan.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PlanSection {
    /// Its name: `about-me`, `what-matters`, `routines`, `support`, `medication`,
    /// `risks`, `contacts` or `goals`.
    pub section: String,
    /// Its text.
    pub text: String,
}

/// A medication given or refused.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Medication {
    /// The medicine, e.g. `paracetamol`.
    pub name: String,
    /// How much, e.g. `500mg`.
    pub dose: String,
    /// Given (true) or refused (false).
    pub given: bool,
}

/// A shift note about to be written.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct NewNote {
    /// What happened; not empty.
    pub text: String,
    /// Medications given or refused.
    #[uniffi(default = [])]
    pub medications: Vec<Medication>,
    /// Wellbeing or mood, in the writer's words.
    #[uniffi(default = None)]
    pub mood: Option<String>,
    /// Whether the note raises a concern for the team.
    #[uniffi(default = false)]
    pub concern: bool,
    /// When the visit started, if the note is about a visit.
    #[uniffi(default = None)]
    pub visit_start_ms: Option<i64>,
    /// When it ended.
    #[uniffi(default = None)]
    pub visit_end_ms: Option<i64>,
}

/// A correction or addition to a note, kept beside the unchanged original.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct NoteAmendment {
    /// Who wrote it.
    pub author_name: String,
    /// Their member id.
    pub author_member_id: String,
    /// When.
    pub written_at_ms: i64,
    /// The amendment.
    pub text: String,
}

/// A shift note as the team holds it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Note {
    /// Its id.
    pub id: String,
    /// What happened, as first written.
    pub text: String,
    /// Who wrote it ("unknown member" when the membership does not name them).
    pub author_name: String,
    /// Their member id.
    pub author_member_id: String,
    /// Their role in the team now; none once removed.
    pub author_role: Option<Role>,
    /// The device it was written on.
    pub device_id: String,
    /// When it was written, by the author's device's clock.
    pub written_at_ms: i64,
    /// When the visit started.
    pub visit_start_ms: Option<i64>,
    /// When it ended.
    pub visit_end_ms: Option<i64>,
    /// Medications given or refused.
    pub medications: Vec<Medication>,
    /// Wellbeing or mood.
    pub mood: Option<String>,
    /// Whether it raises a concern.
    pub concern: bool,
    /// Its amendments, in the order every device agrees on.
    pub amendments: Vec<NoteAmendment>,
}

/// A visit on the rota about to be added.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct NewBooking {
    /// When it starts.
    pub start_ms: i64,
    /// When it ends; after the start.
    pub end_ms: i64,
    /// What it is, e.g. "Morning visit".
    pub title: String,
    /// How many people it needs (at least 1).
    pub needed: u32,
}

/// One member's answer to a booking.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct BookingResponse {
    /// The member.
    pub member_id: String,
    /// Their name.
    pub member_name: String,
    /// Joined (true) or declined (false).
    pub joined: bool,
    /// When they answered.
    pub at_ms: i64,
}

/// A visit on the rota, with everyone's answers.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Booking {
    /// Its id.
    pub id: String,
    /// When it starts.
    pub start_ms: i64,
    /// When it ends.
    pub end_ms: i64,
    /// What it is.
    pub title: String,
    /// How many people it needs.
    pub needed: u32,
    /// Who added it.
    pub created_by: String,
    /// Each member's latest answer.
    pub responses: Vec<BookingResponse>,
}

/// A promise of the team, with its versions and who agreed.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Promise {
    /// Its id.
    pub id: String,
    /// Its title.
    pub title: String,
    /// The latest version's number.
    pub version: u32,
    /// The latest version's text.
    pub text: String,
    /// Who agreed to the latest version, by name.
    pub agreed_by: Vec<String>,
}

/// A member of a team.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Member {
    /// Their member id.
    pub id: String,
    /// Their name.
    pub name: String,
    /// Their role.
    pub role: Role,
    /// The hats they wear, by name.
    pub hats: Vec<String>,
    /// Their current devices' ids.
    pub devices: Vec<String>,
}

/// How this device stands with another device of one of its teams.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DeviceStatus {
    /// The team.
    pub team_id: String,
    /// The device.
    pub device_id: String,
    /// Whose device it is.
    pub member_name: String,
    /// Their role.
    pub role: Role,
    /// Whether a session with it runs now.
    pub connected: bool,
    /// Whether that session reports the team in sync now.
    pub in_sync: bool,
    /// When it was last seen on the network.
    pub last_seen_ms: Option<i64>,
    /// When this device was last in sync with it.
    pub last_sync_ms: Option<i64>,
}

/// What the check of a change's signature found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SignatureCheck {
    /// Signed by the device that wrote it.
    Valid,
    /// The signature held is not that device's signature of this change.
    Invalid,
    /// No signature is held for it.
    Missing,
    /// The document's first change, which every device computes and no one signs.
    NotNeeded,
}

/// One change, audited: who wrote it, in which role then, on which device, when, and
/// whether its signature and its author's right verify (checked again, not trusted).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ChangeAudit {
    /// The change's hash, in hex.
    pub change: String,
    /// What it wrote, in words ("note …", "amendment 1 of note …", "an edit of routines").
    pub what: String,
    /// The device that wrote it.
    pub device_id: Option<String>,
    /// That device's member, at the point of the membership log it signed under.
    pub member_id: Option<String>,
    /// Their name then.
    pub member_name: Option<String>,
    /// Their role then.
    pub role: Option<Role>,
    /// Their hats then.
    pub hats: Vec<String>,
    /// When the author's device says it wrote the change.
    pub written_at_ms: i64,
    /// When this device first stored it.
    pub received_at_ms: Option<i64>,
    /// Whether the signature verifies.
    pub signature: SignatureCheck,
    /// Whether the author could write that document then.
    pub right: bool,
    /// Both the signature and the right hold.
    pub verified: bool,
    /// The change is kept aside, out of the record: written by a removed device after
    /// what its removal knew, or built on such a change.
    pub kept_aside: bool,
}

/// A change kept aside, for the members who decide whether it enters the record.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct AsideEntry {
    /// The document it is in, such as `notes/2026-11`.
    pub document: String,
    /// Written by a removed device after what its removal knew (else built on such a
    /// change).
    pub after_removal: bool,
    /// Who wrote it, when, what it writes, and whether that verifies.
    pub audit: ChangeAudit,
}

impl From<care::AsideEntry> for AsideEntry {
    fn from(entry: care::AsideEntry) -> Self {
        AsideEntry {
            document: entry.document,
            after_removal: entry.after_removal,
            audit: entry.audit.into(),
        }
    }
}

impl From<care::ChangeAudit> for ChangeAudit {
    fn from(audit: care::ChangeAudit) -> Self {
        let verified = audit.verified();
        ChangeAudit {
            change: audit.change,
            what: audit.what,
            device_id: audit.device.map(|d| d.to_string()),
            member_id: audit.member.map(|m| m.to_string()),
            member_name: audit.name,
            role: audit.role.map(Role::from),
            hats: audit.hats,
            written_at_ms: audit.written_at.0,
            received_at_ms: audit.received_at.map(|t| t.0),
            signature: match audit.signature {
                care::SignatureVerdict::Valid => SignatureCheck::Valid,
                care::SignatureVerdict::Invalid => SignatureCheck::Invalid,
                care::SignatureVerdict::NotNeeded => SignatureCheck::NotNeeded,
                _ => SignatureCheck::Missing,
            },
            right: audit.right,
            verified,
            kept_aside: audit.kept_aside,
        }
    }
}

/// How a node listens.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct NodeOptions {
    /// The address to listen on, e.g. `0.0.0.0:0` (any port) or `127.0.0.1:0`.
    #[uniffi(default = "0.0.0.0:0")]
    pub listen: String,
    /// Find and be found by devices on the same network (mDNS).
    #[uniffi(default = true)]
    pub lan: bool,
}

/// A member's name by id, for rendering.
pub(crate) fn name_of(membership: &Membership, member: MemberId) -> String {
    membership.member(member).map_or_else(|| "unknown member".to_owned(), |m| m.name.clone())
}

/// Milliseconds as a timestamp, refusing the negative.
pub(crate) fn timestamp(what: &str, ms: i64) -> Result<Timestamp, CareError> {
    if ms < 0 {
        return Err(CareError::InvalidInput(format!("{what} is before 1970: {ms} ms")));
    }
    Ok(Timestamp(ms))
}

impl Note {
    pub(crate) fn from_note(note: care::ShiftNote, membership: &Membership) -> Note {
        let role = membership.member(note.member).map(|m| Role::from(m.role));
        Note {
            id: note.id.to_string(),
            text: note.text,
            author_name: name_of(membership, note.member),
            author_member_id: note.member.to_string(),
            author_role: role,
            device_id: note.device.to_string(),
            written_at_ms: note.written_at.0,
            visit_start_ms: note.visit_start.map(|t| t.0),
            visit_end_ms: note.visit_end.map(|t| t.0),
            medications: note.medications.into_iter().map(Medication::from).collect(),
            mood: note.mood,
            concern: note.concern,
            amendments: note
                .amendments
                .into_iter()
                .map(|a| NoteAmendment {
                    author_name: name_of(membership, a.member),
                    author_member_id: a.member.to_string(),
                    written_at_ms: a.written_at.0,
                    text: a.text,
                })
                .collect(),
        }
    }
}

impl From<care::Medication> for Medication {
    fn from(m: care::Medication) -> Self {
        Medication { name: m.name, dose: m.dose, given: m.given }
    }
}

impl NewNote {
    pub(crate) fn to_care(&self) -> Result<care::NewNote, CareError> {
        let at = |what, ms: Option<i64>| ms.map(|ms| timestamp(what, ms)).transpose();
        Ok(care::NewNote {
            text: self.text.clone(),
            visit_start: at("the visit's start", self.visit_start_ms)?,
            visit_end: at("the visit's end", self.visit_end_ms)?,
            medications: self
                .medications
                .iter()
                .map(|m| care::Medication {
                    name: m.name.clone(),
                    dose: m.dose.clone(),
                    given: m.given,
                })
                .collect(),
            mood: self.mood.clone(),
            concern: self.concern,
        })
    }
}

impl Booking {
    pub(crate) fn from_booking(booking: care::Booking, membership: &Membership) -> Booking {
        Booking {
            id: booking.id.to_string(),
            start_ms: booking.start.0,
            end_ms: booking.end.0,
            title: booking.title,
            needed: booking.needed,
            created_by: name_of(membership, booking.created_by),
            responses: booking
                .responses
                .into_iter()
                .map(|(member, (response, at))| BookingResponse {
                    member_id: member.to_string(),
                    member_name: name_of(membership, member),
                    joined: response == care::Response::Joined,
                    at_ms: at.0,
                })
                .collect(),
        }
    }
}

impl Promise {
    pub(crate) fn from_promise(promise: care::Promise, membership: &Membership) -> Promise {
        let (version, text) =
            promise.latest().map_or((0, String::new()), |v| (v.number, v.text.clone()));
        let agreed_by = promise
            .agreements
            .iter()
            .filter(|a| a.version == version)
            .map(|a| name_of(membership, a.member))
            .collect();
        Promise { id: promise.id.to_string(), title: promise.title, version, text, agreed_by }
    }
}

impl From<&care::Member> for Member {
    fn from(m: &care::Member) -> Self {
        Member {
            id: m.id.to_string(),
            name: m.name.clone(),
            role: m.role.into(),
            hats: m.hats.iter().map(|h| h.name.clone()).collect(),
            devices: m.devices.keys().map(ToString::to_string).collect(),
        }
    }
}
