//! Shift notes and general notes ([`DocKind::Notes`]): one month of an append-mostly record.
//! A note is never changed once written; corrections are amendments kept beside it.
//!
//! Layout: `notes/<entry id>` is a map with `member`, `device`, `written_at`, `text` (a
//! plain string), optional `visit_start`, `visit_end`, `mood`, a `concern` flag, a
//! `medications` list of `{name, dose, given}` maps and an `amendments` list.

use std::fmt;
use std::str::FromStr;

use automerge::transaction::{Transactable, Transaction};
use automerge::{Automerge, ObjId, ObjType, ReadDoc};
use serde::{Deserialize, Serialize};

use super::access::{Fields, Obj};
use super::{Author, DocError, check_len, check_text, open, ts, write, wrong_kind};
use crate::doc_kind::DocKind;
use crate::ids::{DeviceId, EntryId, MemberId, Month, Timestamp};

/// The longest note or amendment text, in bytes.
pub const NOTE_TEXT_BYTES_MAX: usize = 64 * 1024;
/// The longest mood description, in bytes.
pub const MOOD_BYTES_MAX: usize = 1024;
/// The most medications one note may record.
pub const MEDICATIONS_PER_NOTE_MAX: usize = 64;
/// The longest medication name or dose, in bytes.
pub const MEDICATION_FIELD_BYTES_MAX: usize = 256;
/// The most amendments one note may collect.
pub const AMENDMENTS_PER_NOTE_MAX: usize = 256;

/// A medication given or refused at a visit.
///
/// Its text form is `NAME DOSE given|refused`, e.g. `paracetamol 500mg given` or
/// `Co-codamol 30/500 2 tablets refused`: the last word is the outcome, the name is the
/// first word and every following word up to the first one starting with a digit, and the
/// dose is the rest. When no later word starts with a digit, the dose is the last word
/// before the outcome.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Medication {
    /// The medicine, e.g. `paracetamol`.
    pub name: String,
    /// How much, e.g. `500mg` or `2 tablets`.
    pub dose: String,
    /// `true` when it was given, `false` when refused.
    pub given: bool,
}

/// A medication that could not be read from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a medication: write NAME DOSE given|refused, \
     e.g. `paracetamol 500mg given`"
)]
pub struct ParseMedicationError {
    /// The text that failed to parse (truncated to 80 characters).
    pub input: String,
}

/// A note about to be written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewNote {
    /// What happened: must not be empty.
    pub text: String,
    /// When the visit started, if the note is about a visit.
    pub visit_start: Option<Timestamp>,
    /// When the visit ended; not before `visit_start`.
    pub visit_end: Option<Timestamp>,
    /// Medications given or refused.
    pub medications: Vec<Medication>,
    /// Wellbeing or mood, in the writer's words.
    pub mood: Option<String>,
    /// Whether the note raises a concern for the team.
    pub concern: bool,
}

/// A correction or addition to a note, kept beside the unchanged original.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amendment {
    /// Who wrote it.
    pub member: MemberId,
    /// On which device.
    pub device: DeviceId,
    /// When.
    pub written_at: Timestamp,
    /// The amendment.
    pub text: String,
}

/// A note as stored, with its amendments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShiftNote {
    /// The note's id.
    pub id: EntryId,
    /// Who wrote it.
    pub member: MemberId,
    /// On which device.
    pub device: DeviceId,
    /// When it was written.
    pub written_at: Timestamp,
    /// When the visit started.
    pub visit_start: Option<Timestamp>,
    /// When the visit ended.
    pub visit_end: Option<Timestamp>,
    /// What happened, as first written.
    pub text: String,
    /// Medications given or refused.
    pub medications: Vec<Medication>,
    /// Wellbeing or mood.
    pub mood: Option<String>,
    /// Whether the note raises a concern.
    pub concern: bool,
    /// Corrections, in the document's list order (concurrent ones in a fixed order
    /// every device agrees on).
    pub amendments: Vec<Amendment>,
}

/// Adds a note with id `id`, which must belong to this document's month and be new.
pub fn add_note(
    doc: &mut Automerge,
    author: &Author,
    id: EntryId,
    note: &NewNote,
) -> Result<(), DocError> {
    check_note(note)?;
    let (notes, month) = notes_obj(doc)?;
    let notes = notes.id;
    if id.month() != month {
        return Err(DocError::Invalid(format!(
            "The note {id} belongs to {}, not to this document's month {}.",
            id.month(),
            month
        )));
    }
    if doc.get(&notes, id.to_string())?.is_some() {
        return Err(DocError::Invalid(format!("A note with id {id} already exists.")));
    }
    write(doc, author, |tx| put_note(tx, &notes, author, id, note))
}

/// Appends an amendment to the note `id`; its original text is never changed.
pub fn amend_note(
    doc: &mut Automerge,
    author: &Author,
    id: EntryId,
    text: &str,
) -> Result<(), DocError> {
    check_text("amendment", text, NOTE_TEXT_BYTES_MAX)?;
    let list = {
        let (notes, _) = notes_obj(doc)?;
        let note = notes
            .opt_map(&id.to_string())?
            .ok_or_else(|| DocError::NotFound { what: "note", id: id.to_string() })?;
        let amendments = note.list("amendments")?;
        if doc.length(&amendments.id) >= AMENDMENTS_PER_NOTE_MAX {
            return Err(DocError::Invalid(format!(
                "The note {id} already has {AMENDMENTS_PER_NOTE_MAX} amendments."
            )));
        }
        amendments.id
    };
    write(doc, author, |tx| {
        let end = tx.length(&list);
        let obj = tx.insert_object(&list, end, ObjType::Map)?;
        put_signature(tx, &obj, author)?;
        tx.put(&obj, "text", text)?;
        Ok(())
    })
}

/// The note `id`, or `None` when this document has no such note.
pub fn note(doc: &Automerge, id: EntryId) -> Result<Option<ShiftNote>, DocError> {
    let (root, _) = notes_obj(doc)?;
    root.opt_map(&id.to_string())?.map(|obj| read_note(&obj, id)).transpose()
}

/// The Automerge objects of the note `id` and of each of its amendments, in order: the
/// operation that made each object names the change that wrote it (for an audit).
pub fn note_objects(
    doc: &Automerge,
    id: EntryId,
) -> Result<Option<(automerge::ObjId, Vec<automerge::ObjId>)>, DocError> {
    let (root, _) = notes_obj(doc)?;
    let Some(note) = root.opt_map(&id.to_string())? else {
        return Ok(None);
    };
    let amendments = note.list("amendments")?.items()?.into_iter().map(|a| a.id).collect();
    Ok(Some((note.id, amendments)))
}

/// Every readable note of this document, sorted by the time it was written, then by id.
/// One malformed entry never hides the month's other notes: it is left out here, and
/// [`note`] and [`unreadable_notes`] name what is wrong with it.
pub fn notes(doc: &Automerge) -> Result<Vec<ShiftNote>, DocError> {
    let mut all = every_note(doc)?;
    all.sort_by_key(|note| (note.written_at, note.id));
    Ok(all)
}

/// Every readable note of this document, unsorted, read in one pass over the document.
fn every_note(doc: &Automerge) -> Result<Vec<ShiftNote>, DocError> {
    let fields = Fields::of(doc);
    let (root, _) = notes_obj_in(doc, Obj::root_read(doc, &fields))?;
    let each = root.each_entry().into_iter();
    Ok(each.filter_map(|(key, obj)| read_entry(&key, &obj.ok()?).ok()).collect())
}

/// The newest readable notes of this document first (by time written, then id), at most
/// `limit`, written at or after `since`. Only the notes returned are read in full, so the
/// latest few of a long month cost little more than the few.
pub fn latest(
    doc: &Automerge,
    since: Option<Timestamp>,
    limit: usize,
) -> Result<Vec<ShiftNote>, DocError> {
    let (root, _) = notes_obj(doc)?;
    if since.is_none() && limit >= doc.length(&root.id) {
        // Every note is read in full anyway: the whole document in one pass, sorted after.
        let mut all = every_note(doc)?;
        all.sort_by_key(|note| std::cmp::Reverse((note.written_at, note.id)));
        return Ok(all);
    }
    let mut newest: Vec<(Timestamp, EntryId, Obj<'_, Automerge>)> = root
        .each_entry()
        .into_iter()
        .filter_map(|(key, obj)| {
            let obj = obj.ok()?;
            let id: EntryId = key.parse().ok()?;
            let at = obj.time("written_at").ok()?;
            since.is_none_or(|since| at >= since).then_some((at, id, obj))
        })
        .collect();
    newest.sort_by_key(|(at, id, _)| std::cmp::Reverse((*at, *id)));
    Ok(newest.into_iter().filter_map(|(_, id, obj)| read_note(&obj, id).ok()).take(limit).collect())
}

/// The entries of this document that are not readable notes, each with why.
pub fn unreadable_notes(doc: &Automerge) -> Result<Vec<DocError>, DocError> {
    let (root, _) = notes_obj(doc)?;
    let each = root.each_entry().into_iter();
    Ok(each.filter_map(|(key, obj)| obj.and_then(|obj| read_entry(&key, &obj)).err()).collect())
}

fn read_entry(key: &str, obj: &Obj<'_, Automerge>) -> Result<ShiftNote, DocError> {
    let id = key
        .parse()
        .map_err(|_| DocError::malformed(obj.path.clone(), "the key is not a note id"))?;
    read_note(obj, id)
}

impl fmt::Display for Medication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = if self.given { "given" } else { "refused" };
        write!(f, "{} {} {outcome}", self.name, self.dose)
    }
}

impl FromStr for Medication {
    type Err = ParseMedicationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMedicationError { input: s.chars().take(80).collect() };
        let words: Vec<&str> = s.split_whitespace().collect();
        let (outcome, words) = words.split_last().ok_or_else(err)?;
        let given = match outcome.to_lowercase().as_str() {
            "given" => true,
            "refused" => false,
            _ => return Err(err()),
        };
        if words.len() < 2 {
            return Err(err());
        }
        let dose_at = words
            .iter()
            .skip(1)
            .position(|w| w.starts_with(|c: char| c.is_ascii_digit()))
            .map_or(words.len() - 1, |i| i + 1);
        Ok(Medication { name: words[..dose_at].join(" "), dose: words[dose_at..].join(" "), given })
    }
}

/// The `notes` map of a notes document, and the document's month.
fn notes_obj(doc: &Automerge) -> Result<(Obj<'_, Automerge>, Month), DocError> {
    notes_obj_in(doc, Obj::root(doc))
}

/// The notes map of `doc`, below `root` (its root, read one way or the other).
fn notes_obj_in<'a>(
    doc: &'a Automerge,
    root: Obj<'a, Automerge>,
) -> Result<(Obj<'a, Automerge>, Month), DocError> {
    match open(doc)? {
        DocKind::Notes { month, .. } => Ok((root.map("notes")?, month)),
        other => Err(wrong_kind("notes/YYYY-MM or general-notes/YYYY-MM", other)),
    }
}

fn check_note(note: &NewNote) -> Result<(), DocError> {
    check_text("note text", &note.text, NOTE_TEXT_BYTES_MAX)?;
    if let (Some(start), Some(end)) = (note.visit_start, note.visit_end)
        && end < start
    {
        return Err(DocError::Invalid("The visit ends before it starts.".into()));
    }
    if let Some(mood) = &note.mood {
        check_len("mood", mood, MOOD_BYTES_MAX)?;
    }
    if note.medications.len() > MEDICATIONS_PER_NOTE_MAX {
        return Err(DocError::Invalid(format!(
            "A note records at most {MEDICATIONS_PER_NOTE_MAX} medications."
        )));
    }
    for medication in &note.medications {
        check_text("medication name", &medication.name, MEDICATION_FIELD_BYTES_MAX)?;
        check_text("medication dose", &medication.dose, MEDICATION_FIELD_BYTES_MAX)?;
    }
    Ok(())
}

fn put_note(
    tx: &mut Transaction<'_>,
    notes: &ObjId,
    author: &Author,
    id: EntryId,
    note: &NewNote,
) -> Result<(), DocError> {
    let obj = tx.put_object(notes, id.to_string(), ObjType::Map)?;
    put_signature(tx, &obj, author)?;
    tx.put(&obj, "text", note.text.as_str())?;
    if let Some(start) = note.visit_start {
        tx.put(&obj, "visit_start", ts(start))?;
    }
    if let Some(end) = note.visit_end {
        tx.put(&obj, "visit_end", ts(end))?;
    }
    if let Some(mood) = &note.mood {
        tx.put(&obj, "mood", mood.as_str())?;
    }
    tx.put(&obj, "concern", note.concern)?;
    let medications = tx.put_object(&obj, "medications", ObjType::List)?;
    for (index, medication) in note.medications.iter().enumerate() {
        let m = tx.insert_object(&medications, index, ObjType::Map)?;
        tx.put(&m, "name", medication.name.as_str())?;
        tx.put(&m, "dose", medication.dose.as_str())?;
        tx.put(&m, "given", medication.given)?;
    }
    tx.put_object(&obj, "amendments", ObjType::List)?;
    Ok(())
}

/// Writes who wrote an entry and when: `member`, `device`, `written_at`.
fn put_signature(tx: &mut Transaction<'_>, obj: &ObjId, author: &Author) -> Result<(), DocError> {
    tx.put(obj, "member", author.member.to_string())?;
    tx.put(obj, "device", author.device.to_string())?;
    tx.put(obj, "written_at", ts(author.at))?;
    Ok(())
}

fn read_note<R: ReadDoc>(obj: &Obj<'_, R>, id: EntryId) -> Result<ShiftNote, DocError> {
    let obj = &obj.read_all();
    Ok(ShiftNote {
        id,
        member: obj.parse("member")?,
        device: obj.parse("device")?,
        written_at: obj.time("written_at")?,
        visit_start: obj.opt_time("visit_start")?,
        visit_end: obj.opt_time("visit_end")?,
        text: obj.str("text")?,
        medications: obj
            .list("medications")?
            .items()?
            .iter()
            .map(read_medication)
            .collect::<Result<_, _>>()?,
        mood: obj.opt_str("mood")?,
        concern: obj.bool("concern")?,
        amendments: obj
            .list("amendments")?
            .items()?
            .iter()
            .map(read_amendment)
            .collect::<Result<_, _>>()?,
    })
}

fn read_medication<R: ReadDoc>(obj: &Obj<'_, R>) -> Result<Medication, DocError> {
    let obj = &obj.read_all();
    Ok(Medication { name: obj.str("name")?, dose: obj.str("dose")?, given: obj.bool("given")? })
}

fn read_amendment<R: ReadDoc>(obj: &Obj<'_, R>) -> Result<Amendment, DocError> {
    let obj = &obj.read_all();
    Ok(Amendment {
        member: obj.parse("member")?,
        device: obj.parse("device")?,
        written_at: obj.time("written_at")?,
        text: obj.str("text")?,
    })
}

#[cfg(test)]
mod tests {
    use automerge::ROOT;
    use proptest::prelude::*;

    use super::*;
    use crate::doc_kind::NoteStream;
    use crate::documents::test_support::*;
    use crate::documents::{check_schema, genesis};

    fn kind() -> DocKind {
        DocKind::Notes { stream: NoteStream::Care, month: month() }
    }

    fn new_note(text: &str) -> NewNote {
        NewNote {
            text: text.into(),
            visit_start: Some(at(60)),
            visit_end: Some(at(90)),
            medications: vec!["paracetamol 500mg given".parse().expect("parses")],
            mood: Some("cheerful".into()),
            concern: false,
        }
    }

    #[test]
    fn notes_round_trip() {
        let mut doc = genesis(team(), &kind());
        let by = author_at(1, 95);
        add_note(&mut doc, &by, entry(1), &new_note("Breakfast and a shower.")).expect("adds");
        let note = note(&doc, entry(1)).expect("reads").expect("present");
        let expected = ShiftNote {
            id: entry(1),
            member: by.member,
            device: by.device,
            written_at: by.at,
            visit_start: Some(at(60)),
            visit_end: Some(at(90)),
            text: "Breakfast and a shower.".into(),
            medications: vec![Medication {
                name: "paracetamol".into(),
                dose: "500mg".into(),
                given: true,
            }],
            mood: Some("cheerful".into()),
            concern: false,
            amendments: vec![],
        };
        assert_eq!(note, expected);
        assert_eq!(notes(&doc).expect("reads"), [expected]);
        assert_eq!(super::note(&doc, entry(2)).expect("reads"), None);
    }

    #[test]
    fn bad_notes_are_refused_before_writing() {
        let mut doc = genesis(team(), &kind());
        let heads = doc.get_heads();
        let by = author_at(1, 95);
        let mut backwards = new_note("x");
        backwards.visit_end = Some(at(10));
        let long = "x".repeat(NOTE_TEXT_BYTES_MAX + 1);
        let other_month = EntryId::new(month().next(), [1; 8]);
        for (id, note) in [
            (entry(1), new_note("  ")),
            (entry(1), backwards),
            (entry(1), new_note(&long)),
            (other_month, new_note("fine")),
        ] {
            let err = add_note(&mut doc, &by, id, &note).expect_err("refused");
            assert!(matches!(err, DocError::Invalid(_)), "{err}");
        }
        assert_eq!(doc.get_heads(), heads);
        add_note(&mut doc, &by, entry(1), &new_note("once")).expect("adds");
        assert!(add_note(&mut doc, &by, entry(1), &new_note("twice")).is_err());
        let err = amend_note(&mut doc, &by, entry(9), "x").expect_err("unknown");
        assert!(matches!(err, DocError::NotFound { what: "note", .. }), "{err}");
    }

    #[test]
    fn concurrent_notes_and_amendments_all_survive() {
        let mut worker = genesis(team(), &kind());
        add_note(&mut worker, &author_at(1, 95), entry(1), &new_note("Lunch.")).expect("adds");
        let mut other = worker.clone();
        add_note(&mut worker, &author_at(1, 96), entry(2), &new_note("Visit, worker A."))
            .expect("adds");
        add_note(&mut other, &author_at(2, 97), entry(3), &new_note("Visit, worker B."))
            .expect("adds");
        amend_note(&mut worker, &author_at(1, 98), entry(1), "It was soup.").expect("amends");
        amend_note(&mut other, &author_at(2, 99), entry(1), "And bread.").expect("amends");
        merge_both(&mut worker, &mut other);
        for doc in [&worker, &other] {
            let all = notes(doc).expect("reads");
            let ids: Vec<EntryId> = all.iter().map(|n| n.id).collect();
            assert_eq!(ids, [entry(1), entry(2), entry(3)]);
            assert_eq!(all[0].text, "Lunch.");
            let mut texts: Vec<&str> = all[0].amendments.iter().map(|a| a.text.as_str()).collect();
            texts.sort_unstable();
            assert_eq!(texts, ["And bread.", "It was soup."]);
        }
    }

    #[test]
    fn devices_creating_the_month_offline_share_one_root() {
        let mut a = genesis(team(), &kind());
        let mut b = genesis(team(), &kind());
        add_note(&mut a, &author_at(1, 5), entry(1), &new_note("From A.")).expect("adds");
        add_note(&mut b, &author_at(2, 6), entry(2), &new_note("From B.")).expect("adds");
        merge_both(&mut a, &mut b);
        assert_eq!(notes(&a).expect("reads").len(), 2);
        assert_eq!(notes(&b).expect("reads").len(), 2);
    }

    #[test]
    fn malformed_notes_are_errors_not_panics() {
        let mut doc = genesis(team(), &kind());
        add_note(&mut doc, &author_at(1, 5), entry(1), &new_note("Fine.")).expect("adds");
        let mut broken = doc.clone();
        crate::documents::write(&mut broken, &author_at(1, 6), |tx| {
            let notes = tx.get(ROOT, "notes")?.expect("genesis made it").1;
            let note = tx.get(&notes, entry(1).to_string())?.expect("added").1;
            Ok(tx.put(&note, "text", 42)?)
        })
        .expect("writes");
        // The one bad note is left out of the month and named; the other notes read.
        add_note(&mut broken, &author_at(1, 7), entry(2), &new_note("Also fine.")).expect("adds");
        let listed: Vec<EntryId> = notes(&broken).expect("reads").iter().map(|n| n.id).collect();
        assert_eq!(listed, vec![entry(2)]);
        let err = note(&broken, entry(1)).expect_err("malformed");
        let path = format!("notes/{}/text", entry(1));
        assert!(matches!(&err, DocError::Malformed { path: p, .. } if *p == path), "{err}");
        assert_eq!(unreadable_notes(&broken).expect("reads").len(), 1);
        crate::documents::write(&mut doc, &author_at(1, 6), |tx| {
            Ok(tx.put(ROOT, "notes", "not a map")?)
        })
        .expect("writes");
        assert!(matches!(notes(&doc), Err(DocError::Malformed { .. })));
        assert!(matches!(check_schema(&doc, &kind()), Err(DocError::Malformed { .. })));
    }

    #[test]
    fn medications_parse() {
        let m: Medication = "Co-codamol 30/500 2 tablets refused".parse().expect("parses");
        assert_eq!(
            m,
            Medication { name: "Co-codamol".into(), dose: "30/500 2 tablets".into(), given: false }
        );
        let m: Medication = "Vitamin D3 1000 IU Given".parse().expect("parses");
        assert_eq!((m.name.as_str(), m.dose.as_str(), m.given), ("Vitamin D3", "1000 IU", true));
        let m: Medication = "aspirin one given".parse().expect("parses");
        assert_eq!((m.name.as_str(), m.dose.as_str()), ("aspirin", "one"));
        for bad in ["", "given", "paracetamol given", "paracetamol 500mg maybe"] {
            let err = bad.parse::<Medication>().expect_err("refused");
            assert!(err.to_string().contains("given|refused"));
        }
    }

    /// Every readable note, each object read on its own, the way [`note`] reads one.
    fn notes_one_by_one(doc: &Automerge) -> Vec<ShiftNote> {
        let (root, _) = notes_obj(doc).expect("a notes document");
        let each = root.each_entry().into_iter();
        let mut all: Vec<ShiftNote> =
            each.filter_map(|(key, obj)| read_entry(&key, &obj.ok()?).ok()).collect();
        all.sort_by_key(|note| (note.written_at, note.id));
        all
    }

    /// Changes a note the way a faulty or malicious writer could: a field of the wrong
    /// type, a field gone, a list where a map belongs.
    fn spoil(doc: &mut Automerge, by: &Author, id: EntryId, how: u8) {
        crate::documents::write(doc, by, |tx| {
            let notes = tx.get(ROOT, "notes")?.expect("genesis made it").1;
            let found = tx.get(&notes, id.to_string())?;
            let Some((automerge::Value::Object(ObjType::Map), note)) = found else { return Ok(()) };
            match how % 5 {
                0 => tx.put(&note, "text", 42)?,
                1 => tx.delete(&note, "member")?,
                2 => tx.put(&note, "amendments", "none")?,
                3 => {
                    let medications = tx.put_object(&note, "medications", ObjType::List)?;
                    tx.insert(&medications, 0, "aspirin")?;
                }
                _ => drop(tx.put_object(&notes, id.to_string(), ObjType::List)?),
            }
            Ok(())
        })
        .expect("writes");
    }

    proptest! {
        #[test]
        fn notes_read_in_one_pass_read_as_each_note_alone(
            steps in proptest::collection::vec((0..4u8, 0..6u8, 0..2usize, 0..5u8), 0..40),
        ) {
            // Two devices write, amend and spoil notes, merging now and then.
            let mut docs = [genesis(team(), &kind()), genesis(team(), &kind())];
            let mut minute = 0;
            for (action, target, side, detail) in steps {
                minute += 1;
                let by = author_at(side as u8 + 1, minute);
                let doc = &mut docs[side];
                let id = entry(target);
                match action {
                    0 => {
                        let mut note = new_note(&format!("Visit {minute}"));
                        note.medications.truncate(usize::from(detail % 2));
                        let _ = add_note(doc, &by, id, &note);
                    }
                    1 => drop(amend_note(doc, &by, id, &format!("Amended {minute}"))),
                    2 => spoil(doc, &by, id, detail),
                    _ => {
                        let [a, b] = &mut docs;
                        merge_both(a, b);
                    }
                }
            }
            for doc in &docs {
                let one_pass = notes(doc).expect("reads");
                prop_assert_eq!(&one_pass, &notes_one_by_one(doc));
                for read in &one_pass {
                    let alone = note(doc, read.id).expect("reads");
                    prop_assert_eq!(Some(read), alone.as_ref());
                }
                let newest = latest(doc, None, usize::MAX).expect("reads");
                prop_assert_eq!(newest.into_iter().rev().collect::<Vec<_>>(), one_pass);
            }
        }

        #[test]
        fn the_latest_notes_are_the_newest_of_all_notes(
            minutes in proptest::collection::vec(0..500i64, 0..30),
            since in proptest::option::of(0..500i64),
            limit in 0..40usize,
        ) {
            let mut doc = genesis(team(), &kind());
            for (i, minute) in minutes.iter().enumerate() {
                let id = EntryId::new(month(), [i as u8; 8]);
                add_note(&mut doc, &author_at(1, *minute), id, &new_note("tea")).expect("adds");
            }
            let mut expected = notes(&doc).expect("reads");
            expected.retain(|n| since.is_none_or(|s| n.written_at >= at(s)));
            expected.reverse();
            expected.truncate(limit);
            prop_assert_eq!(latest(&doc, since.map(at), limit).expect("reads"), expected);
        }

        #[test]
        fn medication_text_round_trips(
            name in "[A-Za-z][A-Za-z-]{0,8}( [A-Za-z][A-Za-z0-9]{0,5}){0,2}",
            dose in "[0-9][0-9/.]{0,4}(mg|ml)?( [a-z]{1,8}){0,2}",
            given: bool,
        ) {
            let medication = Medication { name, dose, given };
            prop_assert_eq!(medication.to_string().parse::<Medication>(), Ok(medication));
        }

        #[test]
        fn medication_parser_never_panics(text in "\\PC{0,60}") {
            let _ = text.parse::<Medication>();
        }
    }
}
