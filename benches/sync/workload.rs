//! The shared workload of the sync benchmark: shift notes of about 200 characters, one
//! commit each, in a document shaped like a team's notes document.

use anyhow::{Context, Result};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ChangeHash, ObjType, ROOT, ReadDoc, ScalarValue};

/// 2025-11-01T00:00:00Z, the time of the first note.
const START_MS: i64 = 1_761_955_200_000;
/// Ten visits a day.
const VISIT_STEP_MS: i64 = 144 * 60_000;
/// Characters in a note's text, at most.
const NOTE_CHARS_MAX: usize = 200;

/// A document with `ROOT.notes` as a map holding `n` notes, each added in its own commit
/// by the actor derived from `actor_seed`.
pub(crate) fn build_notes_doc(n: usize, actor_seed: u8) -> Result<Automerge> {
    let mut doc = Automerge::new();
    doc.set_actor(ActorId::from(vec![actor_seed; 16]));
    let mut tx = doc.transaction();
    tx.put_object(ROOT, "notes", ObjType::Map)?;
    tx.commit();
    for i in 0..n {
        add_note(&mut doc, i)?;
    }
    Ok(doc)
}

/// Adds note number `i` to `ROOT.notes` in one commit.
pub(crate) fn add_note(doc: &mut Automerge, i: usize) -> Result<()> {
    let (_, notes) = doc.get(ROOT, "notes")?.context("the document has no ROOT.notes")?;
    let mut tx = doc.transaction();
    let note = tx.put_object(&notes, format!("note-{i:06}"), ObjType::Map)?;
    tx.put(&note, "text", note_text(i))?;
    tx.put(&note, "written_at", ScalarValue::Timestamp(START_MS + i as i64 * VISIT_STEP_MS))?;
    tx.put(&note, "member", format!("member-{}", i % 7))?;
    tx.put(&note, "device", format!("device-{}", i % 3))?;
    tx.commit();
    Ok(())
}

/// Whether `doc` holds every change in `heads`.
pub(crate) fn has_all(doc: &Automerge, heads: &[ChangeHash]) -> bool {
    heads.iter().all(|h| doc.get_change_by_hash(h).is_some())
}

/// Words a note is made of, drawn in a different order for every note.
const WORDS: [&str; 64] = [
    "arrived",
    "on",
    "time",
    "helped",
    "with",
    "washing",
    "and",
    "dressing",
    "breakfast",
    "porridge",
    "tea",
    "ate",
    "well",
    "medication",
    "taken",
    "water",
    "no",
    "concerns",
    "walked",
    "to",
    "the",
    "end",
    "of",
    "road",
    "back",
    "talked",
    "about",
    "garden",
    "grandchildren",
    "left",
    "kitchen",
    "tidy",
    "heating",
    "slept",
    "badly",
    "cheerful",
    "tired",
    "pain",
    "in",
    "knee",
    "GP",
    "called",
    "daughter",
    "phoned",
    "shopping",
    "list",
    "fridge",
    "bins",
    "out",
    "shower",
    "cream",
    "applied",
    "skin",
    "dry",
    "fluids",
    "encouraged",
    "lunch",
    "soup",
    "bread",
    "mood",
    "low",
    "bright",
    "radio",
    "nap",
];

/// About 200 characters of a shift note: pseudo-random words, so notes differ the way
/// real ones do and do not compress to nothing.
pub(crate) fn note_text(i: usize) -> String {
    let mut state = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut text = format!("Visit {i}.");
    while text.len() < NOTE_CHARS_MAX {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        text.push(' ');
        text.push_str(WORDS[(state % WORDS.len() as u64) as usize]);
    }
    text.truncate(NOTE_CHARS_MAX);
    text
}
