//! The rules a change received from another device must keep, checked on its operations
//! before it is applied. The local API keeps them by construction; a peer's change is
//! held to the same rules:
//!
//! - nothing but the deterministic first change writes a document's root (its schema,
//!   kind and containers), except the team document's `name` and `circle`;
//! - the keys of a container's entries (notes, bookings, promises) are entry ids, of the
//!   document's month where it has one, and an entry once written is never replaced or
//!   deleted; the plan's sections are fixed;
//! - notes are append-only: nothing in a notes document is ever overwritten or deleted
//!   (a correction is an amendment).

use automerge::legacy::{Key, ObjectId, OpId, OpType};
use automerge::{ActorId, Change, ChangeHash, ObjType};

use super::first_change;
use crate::doc_kind::DocKind;
use crate::ids::{EntryId, TeamId};

/// Root keys of the team document that later changes may write.
const TEAM_ROOT_KEYS: [&str; 2] = ["name", "circle"];

/// Automerge's code of an operation that makes a map.
const ACTION_MAKE_MAP: u64 = 0;
/// Automerge's code of an operation that makes a list.
const ACTION_MAKE_LIST: u64 = 2;
/// Automerge's code of a deletion.
const ACTION_DELETE: u64 = 3;
/// Automerge's code of an operation that makes a text.
const ACTION_MAKE_TEXT: u64 = 4;
/// Automerge's code of an operation that makes a table.
const ACTION_MAKE_TABLE: u64 = 6;

/// One operation of a saved document, as its columns hold it.
#[derive(Clone, Copy, Debug)]
pub struct StoredOp<'a> {
    /// The actor of the change that made it.
    pub id_actor: &'a ActorId,
    /// The object it writes, by the actor and counter of the operation that made it;
    /// `None` for the root.
    pub obj: Option<(&'a ActorId, u64)>,
    /// The map key it writes; `None` for an element of a list or text.
    pub key: Option<&'a str>,
    /// Its action, as Automerge codes it (0 makes a map, 1 sets a value, ...).
    pub action: u64,
    /// How many later operations overwrote or deleted it.
    pub successors: u64,
}

impl StoredOp<'_> {
    /// Whether it makes an object.
    fn makes(&self) -> bool {
        matches!(
            self.action,
            ACTION_MAKE_MAP | ACTION_MAKE_LIST | ACTION_MAKE_TEXT | ACTION_MAKE_TABLE
        )
    }
}

/// The rules for received changes to one document, prepared once.
#[derive(Clone, Debug)]
pub struct ReceivedRules {
    kind: DocKind,
    /// The hash of the document's deterministic first change.
    genesis: ChangeHash,
    /// The actor of that first change (the document id).
    first_actor: ActorId,
    /// The operation that created the kind's root container in the first change.
    container: Option<OpId>,
}

impl ReceivedRules {
    /// The rules for the `kind` document of `team`.
    pub fn new(team: TeamId, kind: &DocKind) -> ReceivedRules {
        let first = first_change(team, kind);
        ReceivedRules {
            kind: *kind,
            genesis: first.hash,
            first_actor: first.actor.clone(),
            container: first.container.clone(),
        }
    }

    /// Whether `change` keeps the document's rules; the reason when it does not.
    pub fn check(&self, change: &Change) -> Result<(), String> {
        if change.hash() == self.genesis {
            return Ok(());
        }
        // Automerge parses a change without checking that each op's actor indices are in
        // the change's actor list, and its decoding then panics on one that is not (a
        // change altered in passing does it): such a change is malformed, not a crash.
        let expanded =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| change.decode()))
                .map_err(|_| "a change whose operations name actors it does not list".to_owned())?;
        for op in &expanded.operations {
            self.check_op(op)?;
        }
        Ok(())
    }

    /// Whether an operation of a saved document keeps the rules, as the change that made
    /// it would ([`check`](Self::check)), with what a saved document says of the changes
    /// after it: a saved document lists each operation once, with how many later
    /// operations overwrote or deleted it (`successors`), and lists no deletion itself.
    /// An operation with successors stands for the later operation's `pred`; those of the
    /// first change are known by its actor, which no other change may have (checked by
    /// the authors' check before this).
    pub fn check_stored(&self, op: &StoredOp<'_>) -> Result<(), String> {
        let kind = &self.kind;
        let first = *op.id_actor == self.first_actor;
        let replaced = op.successors > 0;
        let Some((obj_actor, obj_counter)) = op.obj else {
            let team_key = op.key.is_some_and(|k| TEAM_ROOT_KEYS.contains(&k));
            let may_write = *kind == DocKind::Team && team_key;
            // A later write of a root key the first change wrote is a root write too.
            let allowed = if first { !replaced || may_write } else { may_write && !op.makes() };
            return if allowed {
                Ok(())
            } else {
                Err(format!(
                    "a change that writes the root of a {kind} document (its schema, kind or \
                     containers)"
                ))
            };
        };
        let appends_only = matches!(kind, DocKind::Notes { .. });
        if appends_only && (replaced || op.action == ACTION_DELETE) {
            return Err("a change that overwrites or deletes part of a note (a note is \
                        corrected by an amendment)"
                .to_owned());
        }
        let in_container =
            self.container.as_ref().is_some_and(|c| c.0 == obj_counter && c.1 == *obj_actor);
        if !in_container {
            return Ok(());
        }
        if matches!(kind, DocKind::Plan | DocKind::HealthPlan) {
            if first && !replaced {
                return Ok(());
            }
            return Err(format!("a change to the sections of a {kind} document themselves"));
        }
        if replaced || op.action == ACTION_DELETE {
            return Err(format!("a change that replaces or deletes an entry of a {kind} document"));
        }
        let entry = op.key.and_then(|key| key.parse::<EntryId>().ok());
        let right_month = |id: &EntryId| kind.month().is_none_or(|m| id.month() == m);
        match entry {
            Some(id) if right_month(&id) && op.action == ACTION_MAKE_MAP => Ok(()),
            _ => Err(format!("a {kind} entry under a key that is not an entry id of the document")),
        }
    }

    fn check_op(&self, op: &automerge::legacy::Op) -> Result<(), String> {
        let kind = &self.kind;
        if op.obj == ObjectId::Root {
            let team_key = matches!(&op.key, Key::Map(k) if TEAM_ROOT_KEYS.contains(&k.as_str()));
            if *kind == DocKind::Team && team_key && !matches!(op.action, OpType::Make(_)) {
                return Ok(());
            }
            return Err(format!(
                "a change that writes the root of a {kind} document (its schema, kind or \
                 containers)"
            ));
        }
        let appends_only = matches!(kind, DocKind::Notes { .. });
        if appends_only && (!op.pred.is_empty() || op.action == OpType::Delete) {
            return Err(
                "a change that overwrites or deletes part of a note (a note is corrected by an \
                 amendment)"
                    .to_owned(),
            );
        }
        let in_container =
            self.container.as_ref().is_some_and(|c| op.obj == ObjectId::Id(c.clone()));
        if !in_container {
            return Ok(());
        }
        if matches!(kind, DocKind::Plan | DocKind::HealthPlan) {
            return Err(format!("a change to the sections of a {kind} document themselves"));
        }
        if !op.pred.is_empty() || op.action == OpType::Delete {
            return Err(format!("a change that replaces or deletes an entry of a {kind} document"));
        }
        let entry = match &op.key {
            Key::Map(key) => key.parse::<EntryId>().ok(),
            Key::Seq(_) => None,
        };
        let right_month = |id: &EntryId| kind.month().is_none_or(|m| id.month() == m);
        match entry {
            Some(id) if right_month(&id) && op.action == OpType::Make(ObjType::Map) => Ok(()),
            _ => Err(format!("a {kind} entry under a key that is not an entry id of the document")),
        }
    }
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{ActorId, Automerge, ROOT, ReadDoc};

    use super::*;
    use crate::documents::{Author, genesis, notes, plan, promises, rota, team_doc};
    use crate::ids::{DeviceId, MemberId, Month, Timestamp};
    use crate::{NoteStream, Section};

    fn team() -> TeamId {
        TeamId::from_bytes([5; 16])
    }

    fn author(at: i64) -> Author {
        Author {
            member: MemberId::from_bytes([1; 16]),
            device: DeviceId::from_bytes([2; 32]),
            at: Timestamp(at),
        }
    }

    fn month() -> Month {
        Month::new(2026, 11).expect("a month")
    }

    fn entry(n: u8) -> EntryId {
        EntryId::new(month(), [n; 8])
    }

    /// Every change the local API makes, in every kind, keeps the rules.
    #[test]
    fn what_the_local_api_writes_keeps_the_rules() {
        let kinds = [
            DocKind::Team,
            DocKind::Plan,
            DocKind::HealthPlan,
            DocKind::Notes { stream: NoteStream::Care, month: month() },
            DocKind::Rota { month: month() },
            DocKind::Promises,
        ];
        for kind in kinds {
            let mut doc = genesis(team(), &kind);
            match kind {
                DocKind::Team => {
                    let mut info = team_doc::TeamInfo { name: "Rosa's team".into(), circle: None };
                    team_doc::set_team_info(&mut doc, &author(1), &info).expect("writes");
                    info.circle = Some("http://relay".into());
                    team_doc::set_team_info(&mut doc, &author(2), &info).expect("writes");
                    info.circle = None;
                    team_doc::set_team_info(&mut doc, &author(3), &info).expect("writes");
                }
                DocKind::Plan => {
                    plan::set_section(&mut doc, &author(1), Section::Routines, "Tea at 8")
                        .expect("writes");
                    plan::set_section(&mut doc, &author(2), Section::Routines, "Tea at 9")
                        .expect("writes");
                }
                DocKind::HealthPlan => {
                    plan::set_section(&mut doc, &author(1), Section::Medication, "Aspirin")
                        .expect("writes");
                }
                DocKind::Notes { .. } => {
                    let note = notes::NewNote {
                        text: "Walked to the shop.".into(),
                        medications: vec!["paracetamol 500mg given".parse().expect("a line")],
                        ..notes::NewNote::default()
                    };
                    notes::add_note(&mut doc, &author(1), entry(1), &note).expect("writes");
                    notes::amend_note(&mut doc, &author(2), entry(1), "It rained.")
                        .expect("writes");
                    notes::amend_note(&mut doc, &author(3), entry(1), "Home by 4.")
                        .expect("writes");
                }
                DocKind::Rota { .. } => {
                    let booking = rota::NewBooking {
                        start: Timestamp(1_794_000_000_000),
                        end: Timestamp(1_794_003_600_000),
                        title: "Morning visit".into(),
                        needed: 1,
                    };
                    rota::add_booking(&mut doc, &author(1), entry(2), &booking).expect("writes");
                    rota::respond(&mut doc, &author(2), entry(2), rota::Response::Joined)
                        .expect("writes");
                    rota::respond(&mut doc, &author(2), entry(2), rota::Response::Declined)
                        .expect("writes");
                }
                DocKind::Promises => {
                    promises::add_promise(&mut doc, &author(1), entry(3), "Promise", "We call.")
                        .expect("writes");
                    promises::revise_promise(&mut doc, &author(2), entry(3), "We call daily.")
                        .expect("writes");
                    promises::agree(&mut doc, &author(3), entry(3)).expect("writes");
                }
            }
            let rules = ReceivedRules::new(team(), &kind);
            let changes = doc.get_changes(&[]);
            assert!(changes.len() > 1, "{kind}: the API wrote something");
            for change in changes {
                assert_eq!(rules.check(&change), Ok(()), "{kind}");
            }
        }
    }

    /// A change made outside the API, on top of `doc`.
    fn forged(
        doc: &Automerge,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>),
    ) -> Change {
        let mut doc = doc.fork().with_actor(ActorId::from([9; 32]));
        let mut tx = doc.transaction();
        f(&mut tx);
        tx.commit();
        doc.get_last_local_change().expect("a change").clone()
    }

    #[test]
    fn changes_that_break_a_documents_rules_are_refused() {
        let kind = DocKind::Notes { stream: NoteStream::Care, month: month() };
        let rules = ReceivedRules::new(team(), &kind);
        let mut doc = genesis(team(), &kind);
        let note = notes::NewNote { text: "Walked to the shop.".into(), ..Default::default() };
        notes::add_note(&mut doc, &author(1), entry(1), &note).expect("writes");
        let notes_obj = doc.get(ROOT, "notes").expect("reads").expect("a container").1;
        let note_obj = doc.get(&notes_obj, entry(1).to_string()).expect("reads").expect("a note").1;

        let cases: Vec<(&str, Change)> = vec![
            (
                "overwrites a note's text",
                forged(&doc, |tx| {
                    tx.put(&note_obj, "text", "Stayed in.").expect("put");
                }),
            ),
            (
                "deletes a note",
                forged(&doc, |tx| {
                    tx.delete(&notes_obj, entry(1).to_string()).expect("delete");
                }),
            ),
            (
                "replaces the root container",
                forged(&doc, |tx| {
                    tx.put_object(ROOT, "notes", ObjType::Map).expect("put");
                }),
            ),
            (
                "changes the schema version",
                forged(&doc, |tx| {
                    tx.put(ROOT, "schema", 2_u64).expect("put");
                }),
            ),
            (
                "writes an entry under a key that is not an id",
                forged(&doc, |tx| {
                    tx.put_object(&notes_obj, "not-an-id", ObjType::Map).expect("put");
                }),
            ),
            (
                "writes an entry of another month",
                forged(&doc, |tx| {
                    let other = EntryId::new(Month::new(2025, 1).expect("a month"), [4; 8]);
                    tx.put_object(&notes_obj, other.to_string(), ObjType::Map).expect("put");
                }),
            ),
            (
                "puts a scalar where an entry goes",
                forged(&doc, |tx| {
                    tx.put(&notes_obj, entry(5).to_string(), "flat").expect("put");
                }),
            ),
        ];
        for (what, change) in cases {
            assert!(rules.check(&change).is_err(), "a change that {what} was accepted");
        }
        // The team document's name is writable at the root; its kind is not.
        let team_rules = ReceivedRules::new(team(), &DocKind::Team);
        let team_doc = genesis(team(), &DocKind::Team);
        let renamed = forged(&team_doc, |tx| {
            tx.put(ROOT, "name", "Renamed").expect("put");
        });
        assert_eq!(team_rules.check(&renamed), Ok(()));
        let rekinded = forged(&team_doc, |tx| {
            tx.put(ROOT, "kind", "plan").expect("put");
        });
        assert!(team_rules.check(&rekinded).is_err());
        // The plan's sections are fixed.
        let plan_rules = ReceivedRules::new(team(), &DocKind::Plan);
        let plan_doc = genesis(team(), &DocKind::Plan);
        let sections = plan_doc.get(ROOT, "sections").expect("reads").expect("sections").1;
        let replaced = forged(&plan_doc, |tx| {
            tx.put_object(&sections, Section::Routines.as_str(), ObjType::Text).expect("put");
        });
        assert!(plan_rules.check(&replaced).is_err());
    }
}
