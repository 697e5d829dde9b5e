//! Who wrote what, checked from the record: the audit of a note and its amendments, the
//! audit of a whole document, and an export that anyone can check with no home, which
//! names the change whose signature was tampered with.

use std::path::Path;

use anyhow::{Context, Result, bail};
use care::{
    DocKind, ExportFormat, Home, Medication, NewNote, Role, SignatureVerdict, verify_export,
};

/// A home with a team, a note with a medication line, amended once.
fn home_with_a_note(dir: &Path) -> Result<(Home, care::EntryId)> {
    let mut home = Home::init(dir, "Ada")?;
    home.create_team("Rosa's team")?;
    let id = {
        let mut team = home.team("")?;
        let note = NewNote {
            text: "Breakfast, then a walk to the shop.".into(),
            medications: vec!["paracetamol 500mg given".parse::<Medication>()?],
            ..NewNote::default()
        };
        let id = team.add_note(&note, None)?;
        team.amend_note(id, "The walk was to the park, not the shop.")?;
        id
    };
    Ok((home, id))
}

#[test]
fn a_note_and_its_amendment_are_audited_with_their_author_and_proof() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut home, id) = home_with_a_note(dir.path())?;
    let device = home.profile().device;
    let member = home.profile().member;
    // The proof of authorship outlives the chunks the changes were stored in.
    let compacted = home.compact()?;
    assert!(compacted.after_bytes > 0);
    let audits = home.team("")?.audit_note(id)?;
    assert_eq!(audits.len(), 2, "{audits:?}");
    assert_eq!(audits[0].what, format!("note {id}"));
    assert_eq!(audits[1].what, format!("amendment 1 of note {id}"));
    assert_ne!(audits[0].change, audits[1].change, "two changes");
    for audit in &audits {
        assert_eq!(audit.device, Some(device));
        assert_eq!(audit.member, Some(member));
        assert_eq!(audit.name.as_deref(), Some("Ada"));
        assert_eq!(audit.role, Some(Role::Owner));
        assert_eq!(audit.signature, SignatureVerdict::Valid);
        assert!(audit.right && audit.verified());
        assert!(audit.received_at.is_some(), "stored here, so received here");
        assert!(audit.written_at.as_millis() > 0);
    }

    // Every change of the month's notes: its first change, computed by every device and
    // signed by none, then the note and the amendment.
    let kind = DocKind::Notes { stream: care::NoteStream::Care, month: id.month() };
    let history = home.team("")?.audit_document(kind)?;
    assert_eq!(history.len(), 3, "{history:?}");
    assert_eq!(history[0].signature, SignatureVerdict::NotNeeded);
    assert!(history.iter().all(care::ChangeAudit::verified));
    Ok(())
}

#[test]
fn a_signature_replaced_in_the_store_shows_as_invalid_in_the_audit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut home, id) = home_with_a_note(dir.path())?;
    let audits = home.team("")?.audit_note(id)?;
    drop(home);
    // Someone with the disk swaps the note's signature for the amendment's.
    let db = rusqlite::Connection::open(dir.path().join(care::home::STORE_FILE))?;
    db.execute_batch(&Home::store_key_of(dir.path())?.context("a store key")?.key_pragma())?;
    let hash = |hex: &str| -> Result<Vec<u8>> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).context("hex"))
            .collect()
    };
    let (note, amendment) = (hash(&audits[0].change)?, hash(&audits[1].change)?);
    let other: Vec<u8> =
        db.query_row("SELECT signature FROM signatures WHERE hash = ?1", [&amendment], |r| {
            r.get(0)
        })?;
    let updated =
        db.execute("UPDATE signatures SET signature = ?1 WHERE hash = ?2", (&other, &note))?;
    assert_eq!(updated, 1);
    drop(db);

    let mut home = Home::open(dir.path())?;
    let audits = home.team("")?.audit_note(id)?;
    assert_eq!(audits[0].signature, SignatureVerdict::Invalid);
    assert!(!audits[0].verified());
    assert_eq!(audits[1].signature, SignatureVerdict::Valid);
    Ok(())
}

#[test]
fn an_export_verifies_with_no_home_and_one_changed_byte_names_its_change() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut home, id) = home_with_a_note(dir.path())?;
    home.team("")?.set_plan_section(care::Section::Routines, "Tea at eight.")?;
    let audits = home.team("")?.audit_note(id)?;
    let out = dir.path().join("export");
    home.team("")?.export(&out, ExportFormat::Automerge)?;
    drop(home);

    let report = verify_export(&out)?;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    assert!(report.documents >= 2 && report.changes >= 5, "{report:?}");

    // One byte of the note's signature, in the notes' signatures file.
    let month = id.month();
    let sigs = out.join(format!("notes-{month}.signatures"));
    let mut bytes = std::fs::read(&sigs)?;
    let hash: Vec<u8> = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(&audits[0].change[i..i + 2], 16))
        .collect::<Result<_, _>>()?;
    let at = bytes.windows(32).position(|w| w == hash).context("the note's signature")?;
    // After the hash: the membership heads (a count and one head), then the signature.
    let last = bytes.len().min(at + 32 + 1 + 32 + 1 + 64) - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&sigs, &bytes)?;
    let report = verify_export(&out)?;
    let failure = report.failure.context("the changed byte is found")?;
    assert_eq!(failure.change.as_deref(), Some(audits[0].change.as_str()), "{failure:?}");
    assert!(failure.why.contains("does not verify"), "{failure:?}");

    // A changed byte in the membership log: named as the log's failure.
    std::fs::write(
        &sigs,
        std::fs::read(&sigs).map(|mut b| {
            b[last] ^= 0x01;
            b
        })?,
    )?;
    assert!(verify_export(&out)?.failure.is_none(), "restored");
    let ops = out.join("membership.ops");
    let mut bytes = std::fs::read(&ops)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&ops, &bytes)?;
    let report = verify_export(&out)?;
    match report.failure {
        Some(f) if f.document == "membership" || f.change.is_some() => {}
        other => bail!("a changed op was not found: {other:?}"),
    }
    Ok(())
}

#[test]
fn a_plan_section_a_booking_and_a_promise_are_audited_with_their_authors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut home = Home::init(dir.path(), "Ada")?;
    home.create_team("Rosa's team")?;
    let device = home.profile().device;
    let now = home.now();
    let mut team = home.team("")?;
    team.set_plan_section(care::Section::Routines, "Tea at eight.")?;
    team.set_plan_section(care::Section::AboutMe, "Likes gardening.")?;
    team.set_plan_section(care::Section::Routines, "Tea at eight, a walk at ten.")?;
    let start = care::Timestamp(now.as_millis() + 86_400_000);
    let booking = team.add_booking(&care::NewBooking {
        start,
        end: care::Timestamp(start.as_millis() + 3_600_000),
        title: "Morning visit".into(),
        needed: 1,
    })?;
    team.respond(booking, care::Response::Joined)?;
    let promise = team.add_promise("Getting Support Promise", "We turn up on time.")?;
    team.agree(promise)?;

    // Only the edits of that section, each a change of its own.
    let routines = team.audit_section(care::Section::Routines)?;
    assert_eq!(routines.len(), 2, "{routines:?}");
    assert!(routines.iter().all(|a| a.what == "an edit of routines"));
    let about = team.audit_section(care::Section::AboutMe)?;
    assert_eq!(about.len(), 1, "{about:?}");
    assert!(routines.iter().all(|r| r.change != about[0].change));

    let answered = team.audit_booking(booking)?;
    let what: Vec<String> = answered.iter().map(|a| a.what.clone()).collect();
    assert_eq!(
        what,
        [format!("booking {booking}"), format!("the answer of Ada to booking {booking}")]
    );
    let agreed = team.audit_promise(promise)?;
    let what: Vec<String> = agreed.iter().map(|a| a.what.clone()).collect();
    assert_eq!(what, [format!("promise {promise}"), format!("agreement 1 to promise {promise}")]);

    for audit in routines.iter().chain(&about).chain(&answered).chain(&agreed) {
        assert_eq!(audit.device, Some(device));
        assert_eq!((audit.name.as_deref(), audit.role), (Some("Ada"), Some(Role::Owner)));
        assert!(audit.verified(), "{audit:?}");
    }
    let unknown = care::EntryId::new(booking.month(), [9; 8]);
    assert!(matches!(team.audit_booking(unknown), Err(care::Error::NotFound { .. })));
    Ok(())
}
