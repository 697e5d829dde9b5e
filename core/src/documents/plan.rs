//! The care plan documents ([`DocKind::Plan`] and [`DocKind::HealthPlan`]): one Automerge
//! Text object per section, so concurrent edits merge character by character.

use automerge::Automerge;
use automerge::transaction::Transactable;

use super::access::Obj;
use super::{Author, DocError, check_len, open, sections_of, write, wrong_kind};
use crate::doc_kind::{DocKind, Section};

/// The longest text a section may hold, in bytes.
pub const SECTION_TEXT_BYTES_MAX: usize = 256 * 1024;

/// Replaces the text of `section` with `text`, as a minimal set of character edits
/// (`update_text`), so that other people's concurrent edits elsewhere in the text survive.
///
/// The section must belong to this document's kind ([`Section::doc_kind`]).
pub fn set_section(
    doc: &mut Automerge,
    author: &Author,
    section: Section,
    text: &str,
) -> Result<(), DocError> {
    check_len("section text", text, SECTION_TEXT_BYTES_MAX)?;
    let kind = plan_kind(doc)?;
    if section.doc_kind() != kind {
        return Err(DocError::WrongSection { section, belongs: section.doc_kind(), found: kind });
    }
    let obj = Obj::root(&*doc).map("sections")?.text_id(section.as_str())?;
    write(doc, author, |tx| Ok(tx.update_text(&obj, text)?))
}

/// Every section this plan document holds, with its text, in [`Section::ALL`] order.
pub fn sections(doc: &Automerge) -> Result<Vec<(Section, String)>, DocError> {
    let kind = plan_kind(doc)?;
    let root = Obj::root(doc).map("sections")?;
    sections_of(&kind).map(|section| Ok((section, root.text(section.as_str())?))).collect()
}

/// The text of one section; [`DocError::WrongSection`] when it lives in the other plan.
pub fn section(doc: &Automerge, section: Section) -> Result<String, DocError> {
    let kind = plan_kind(doc)?;
    if section.doc_kind() != kind {
        return Err(DocError::WrongSection { section, belongs: section.doc_kind(), found: kind });
    }
    Obj::root(doc).map("sections")?.text(section.as_str())
}

/// The text object of one section, whose operations are every edit of it (for the
/// audit); [`DocError::WrongSection`] when it lives in the other plan.
pub fn section_object(doc: &Automerge, section: Section) -> Result<automerge::ObjId, DocError> {
    let kind = plan_kind(doc)?;
    if section.doc_kind() != kind {
        return Err(DocError::WrongSection { section, belongs: section.doc_kind(), found: kind });
    }
    Obj::root(doc).map("sections")?.text_id(section.as_str())
}

fn plan_kind(doc: &Automerge) -> Result<DocKind, DocError> {
    match open(doc)? {
        kind @ (DocKind::Plan | DocKind::HealthPlan) => Ok(kind),
        other => Err(wrong_kind("plan or health-plan", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::genesis;
    use crate::documents::test_support::*;

    #[test]
    fn sections_round_trip() {
        let mut doc = genesis(team(), &DocKind::Plan);
        set_section(&mut doc, &author(1, 0), Section::AboutMe, "I like gardening.")
            .expect("writes");
        set_section(&mut doc, &author(1, 1), Section::Goals, "Walk to the park.").expect("writes");
        let all = sections(&doc).expect("reads");
        assert_eq!(
            all,
            [
                (Section::AboutMe, "I like gardening.".to_owned()),
                (Section::WhatMatters, String::new()),
                (Section::Routines, String::new()),
                (Section::Goals, "Walk to the park.".to_owned()),
            ]
        );
        assert_eq!(section(&doc, Section::Goals).expect("reads"), "Walk to the park.");
    }

    #[test]
    fn health_sections_live_in_the_health_plan() {
        let mut doc = genesis(team(), &DocKind::Plan);
        let err = set_section(&mut doc, &author(1, 0), Section::Medication, "x")
            .expect_err("wrong section");
        assert!(matches!(err, DocError::WrongSection { .. }), "{err}");
        let mut health = genesis(team(), &DocKind::HealthPlan);
        set_section(&mut health, &author(1, 0), Section::Medication, "Paracetamol 500mg")
            .expect("writes");
        let names: Vec<Section> =
            sections(&health).expect("reads").into_iter().map(|(s, _)| s).collect();
        assert_eq!(
            names,
            [Section::Support, Section::Medication, Section::Risks, Section::Contacts]
        );
        let notes = genesis(team(), &all_kinds()[3]);
        assert!(matches!(sections(&notes), Err(DocError::WrongKind { .. })));
    }

    #[test]
    fn concurrent_edits_of_one_section_merge_by_character() {
        let mut owner = genesis(team(), &DocKind::Plan);
        let start = "Rosa likes tea in the morning and a walk after lunch.";
        set_section(&mut owner, &author(1, 0), Section::Routines, start).expect("writes");
        let mut advocate = owner.fork();
        set_section(
            &mut owner,
            &author(1, 10),
            Section::Routines,
            "Rosa likes green tea in the morning and a walk after lunch.",
        )
        .expect("writes");
        set_section(
            &mut advocate,
            &author(2, 11),
            Section::Routines,
            "Rosa likes tea in the morning and a short walk after lunch.",
        )
        .expect("writes");
        merge_both(&mut owner, &mut advocate);
        let merged = section(&owner, Section::Routines).expect("reads");
        assert_eq!(merged, "Rosa likes green tea in the morning and a short walk after lunch.");
        assert_eq!(section(&advocate, Section::Routines).expect("reads"), merged);
    }
}
