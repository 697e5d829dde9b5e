//! Who wrote what, checked from the record itself: for a shift note (and each of its
//! amendments), or for every change of a document, the member and device that wrote it,
//! their role and hats at the point of the membership log they signed under, the time
//! their device claimed and the time this device first stored it, and whether the
//! signature and the author's right verify. Nothing here trusts this device's own
//! verdicts: every signature and right is checked again.

use std::collections::{HashMap, HashSet};

use automerge::{Automerge, ChangeHash, ObjId};
use care_core::documents;
use care_core::membership::{Access, Role};
use care_core::{ChangeSig, DeviceId, DocKind, EntryId, MemberId, Section, TeamId, Timestamp};
use care_sync::TeamAccess;
use care_sync::access::genesis_change;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::team::Team;

/// What the check of a change's signature found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum SignatureVerdict {
    /// Signed by the device its actor id names.
    Valid,
    /// A signature is held, and it is not that device's signature of this change.
    Invalid,
    /// No signature is held for the change.
    Missing,
    /// The document's deterministic first change, which every device computes and which
    /// no one signs.
    NotNeeded,
}

/// One change, audited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeAudit {
    /// The change's hash, in hex.
    pub change: String,
    /// What the change wrote, in words ("note 2026-11.…", "amendment 1 of note …", or
    /// "a change").
    pub what: String,
    /// The device that wrote it (its Automerge actor), if the actor is a device.
    pub device: Option<DeviceId>,
    /// The member of that device, at the point of the membership log it signed under.
    pub member: Option<MemberId>,
    /// Their name then.
    pub name: Option<String>,
    /// Their role then.
    #[serde(serialize_with = "role_name")]
    pub role: Option<Role>,
    /// Their hats then.
    pub hats: Vec<String>,
    /// When the author's device says it wrote the change (to the second).
    pub written_at: Timestamp,
    /// When this device first stored it, by this device's clock.
    pub received_at: Option<Timestamp>,
    /// Whether the signature verifies.
    pub signature: SignatureVerdict,
    /// Whether the author could write this kind of document at the point of the
    /// membership log it signed under.
    pub right: bool,
    /// Whether the change is kept aside, out of the record (see [`mod@care_core::kept_aside`]).
    pub kept_aside: bool,
}

impl ChangeAudit {
    /// Whether both the signature and the author's right hold.
    pub fn verified(&self) -> bool {
        matches!(self.signature, SignatureVerdict::Valid | SignatureVerdict::NotNeeded)
            && self.right
    }
}

impl Team<'_> {
    /// The audit of a shift note: the change that wrote it (with its medication lines,
    /// mood and concern), then the change that wrote each amendment, in order.
    pub fn audit_note(&mut self, id: EntryId) -> Result<Vec<ChangeAudit>> {
        let kind = self.note_kind(id)?;
        let found = self.read(kind, |doc| care_core::documents::notes::note_objects(doc, id))?;
        let Some((note, amendments)) = found.flatten() else {
            return Err(Error::NotFound { what: "note", id: id.to_string() });
        };
        let mut objects = vec![(Made::Object(note), format!("note {id}"))];
        objects.extend(
            amendments
                .into_iter()
                .enumerate()
                .map(|(i, a)| (Made::Object(a), format!("amendment {} of note {id}", i + 1))),
        );
        self.audit(kind, Some(objects))
    }

    /// The audit of every change of a document, in the order they were applied.
    pub fn audit_document(&mut self, kind: DocKind) -> Result<Vec<ChangeAudit>> {
        self.audit(kind, None)
    }

    /// The audit of a care plan section: every change that edited its text, in the order
    /// they were applied (concurrent edits merge character by character, so a section
    /// can have many authors).
    pub fn audit_section(&mut self, section: Section) -> Result<Vec<ChangeAudit>> {
        let kind = section.doc_kind();
        let found = self.read(kind, |doc| {
            let text = documents::plan::section_object(doc, section)?;
            Ok(changes_editing(doc, &text))
        })?;
        let changes = found.unwrap_or_default();
        let what = format!("an edit of {section}");
        self.audit(
            kind,
            Some(changes.into_iter().map(|c| (Made::Change(c), what.clone())).collect()),
        )
    }

    /// The audit of a booking: the change that added it, then the change behind each
    /// member's latest answer.
    pub fn audit_booking(&mut self, id: EntryId) -> Result<Vec<ChangeAudit>> {
        let kind = DocKind::Rota { month: id.month() };
        let found = self.read(kind, |doc| documents::rota::booking_objects(doc, id))?;
        let Some((booking, answers)) = found.flatten() else {
            return Err(Error::NotFound { what: "booking", id: id.to_string() });
        };
        let membership = self.membership().clone();
        let mut objects = vec![(Made::Object(booking), format!("booking {id}"))];
        objects.extend(answers.into_iter().map(|(member, answer)| {
            let name = member
                .parse::<MemberId>()
                .ok()
                .and_then(|m| membership.member(m).map(|m| m.name.clone()))
                .unwrap_or(member);
            (Made::Object(answer), format!("the answer of {name} to booking {id}"))
        }));
        self.audit(kind, Some(objects))
    }

    /// The audit of a promise: the change that added it, then each later version and
    /// each agreement, in list order.
    pub fn audit_promise(&mut self, id: EntryId) -> Result<Vec<ChangeAudit>> {
        let kind = DocKind::Promises;
        let found = self.read(kind, |doc| documents::promises::promise_objects(doc, id))?;
        let Some((promise, versions, agreements)) = found.flatten() else {
            return Err(Error::NotFound { what: "promise", id: id.to_string() });
        };
        let mut objects = vec![(Made::Object(promise), format!("promise {id}"))];
        // The first version is written by the change that adds the promise.
        objects.extend(versions.into_iter().enumerate().skip(1).map(|(i, version)| {
            (Made::Object(version), format!("version {} of promise {id}", i + 1))
        }));
        objects.extend(agreements.into_iter().enumerate().map(|(i, agreement)| {
            (Made::Object(agreement), format!("agreement {} to promise {id}", i + 1))
        }));
        self.audit(kind, Some(objects))
    }

    /// Audits the changes that made `objects` (each with what it is), or every change.
    pub(crate) fn audit(
        &mut self,
        kind: DocKind,
        objects: Option<Vec<(Made, String)>>,
    ) -> Result<Vec<ChangeAudit>> {
        let team = self.id();
        let doc_id = kind.doc_id(team);
        let access = self.home.team_access(team)?;
        let signatures = crate::replica::stored_signatures_of(&self.home.store, doc_id, None)?;
        let received: HashMap<ChangeHash, i64> =
            self.home.store.received_times(doc_id)?.into_iter().collect();
        let context =
            Context { team, kind, access: &access, signatures: &signatures, received: &received };
        // The whole document: a change kept aside is audited too, and marked.
        let audited = self.read_whole(kind, |doc| {
            let aside: HashSet<ChangeHash> =
                care_core::kept_aside(doc, doc_id, &kind, access.membership())
                    .map(|aside| aside.changes.iter().map(|change| change.hash).collect())
                    .unwrap_or_default();
            let audit = |hash: ChangeHash, what: String| {
                let mut audit = context.audit(doc, hash, what);
                audit.kept_aside = aside.contains(&hash);
                audit
            };
            Ok(match &objects {
                Some(objects) => objects
                    .iter()
                    .filter_map(|(made, what)| {
                        let hash = match made {
                            Made::Object(obj) => change_of(doc, obj)?,
                            Made::Change(hash) => *hash,
                        };
                        Some(audit(hash, what.clone()))
                    })
                    .collect(),
                None => doc
                    .get_changes_meta(&[])
                    .iter()
                    .map(|meta| audit(meta.hash, "a change".into()))
                    .collect::<Vec<_>>(),
            })
        })?;
        audited.ok_or(Error::NotFound { what: "document", id: kind.to_string() })
    }
}

/// What an audited entry was made by: the change that created an object, or a change
/// found otherwise.
pub(crate) enum Made {
    Object(ObjId),
    Change(ChangeHash),
}

/// What an audit checks against.
struct Context<'a> {
    team: TeamId,
    kind: DocKind,
    access: &'a TeamAccess,
    signatures: &'a [ChangeSig],
    received: &'a HashMap<ChangeHash, i64>,
}

impl Context<'_> {
    fn audit(&self, doc: &Automerge, hash: ChangeHash, what: String) -> ChangeAudit {
        let meta = doc.get_change_meta_by_hash(&hash);
        let written_at = Timestamp(meta.as_ref().map_or(0, |m| m.timestamp.saturating_mul(1000)));
        let device = meta.as_ref().and_then(|m| DeviceId::from_slice(m.actor.to_bytes()).ok());
        let received_at = self.received.get(&hash).map(|ms| Timestamp(*ms));
        let mut audit = ChangeAudit {
            change: hash.to_string(),
            what,
            device,
            member: None,
            name: None,
            role: None,
            hats: Vec::new(),
            written_at,
            received_at,
            signature: SignatureVerdict::Missing,
            right: false,
            kept_aside: false,
        };
        if genesis_change(self.team, &self.kind).1 == Some(hash) {
            audit.device = None;
            audit.signature = SignatureVerdict::NotNeeded;
            audit.right = true;
            return audit;
        }
        let Some(sig) = self.signatures.iter().find(|s| s.hash == hash.0) else {
            return audit;
        };
        let doc_id = self.kind.doc_id(self.team);
        let signed = device.is_some_and(|d| sig.verify(d, self.team, doc_id).is_ok());
        audit.signature = if signed { SignatureVerdict::Valid } else { SignatureVerdict::Invalid };
        let (Some(device), Some(then)) = (device, self.access.membership_at(&sig.membership))
        else {
            return audit;
        };
        audit.right = then.access(device, &self.kind) == Access::ReadWrite;
        if let Some(member) = then.member_of_device(device) {
            audit.member = Some(member.id);
            audit.name = Some(member.name.clone());
            audit.role = Some(member.role);
            audit.hats = member.hats.iter().map(|h| h.name.clone()).collect();
        }
        audit
    }
}

/// A role as people write it (`owner`, `worker`, ...).
fn role_name<S: serde::Serializer>(
    role: &Option<Role>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match role {
        Some(role) => s.serialize_some(role.as_str()),
        None => s.serialize_none(),
    }
}

/// The changes, in the order applied, with an operation on `obj` (an edit of a text),
/// leaving out the document's first change (which made it empty).
fn changes_editing(doc: &Automerge, obj: &ObjId) -> Vec<ChangeHash> {
    let ObjId::Id(counter, actor, _) = obj else {
        return Vec::new();
    };
    let target = automerge::legacy::ObjectId::Id(automerge::legacy::OpId(*counter, actor.clone()));
    doc.get_changes(&[])
        .into_iter()
        .filter(|change| change.decode().operations.iter().any(|op| op.obj == target))
        .map(|change| change.hash())
        .collect()
}

/// The change whose operations made `obj`: the one by the object's actor whose
/// operation counters include the object's.
fn change_of(doc: &Automerge, obj: &ObjId) -> Option<ChangeHash> {
    let ObjId::Id(counter, actor, _) = obj else {
        return None;
    };
    doc.get_changes_meta(&[])
        .into_iter()
        .find(|m| *m.actor == *actor && m.start_op <= *counter && *counter <= m.max_op)
        .map(|m| m.hash)
}
