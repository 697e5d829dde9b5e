//! Local benchmark of a care home on disk (release mode: `cargo bench --bench local`).
//! Prints median and p95 of a durable `note add`, of opening a home with 1,000
//! documents and listing them, of loading the latest 50 of 10,000 notes after
//! compaction, the bytes on disk per note against Automerge's own `save()`, what
//! signing every change costs: time to sign and verify, bytes on disk and on the wire,
//! and what a removal, and changes kept aside after it, cost the notes written and read.

#[path = "common/clock.rs"]
mod clock;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use care::{DocKind, Home, NewBooking, NewNote, NoteQuery, Timestamp};
use care_sync::{Effect, Hub};
use clock::SteppingClock;

/// Teams in the home with 1,000 documents, and bookings (one month each) per team.
const BOOKING_MONTHS: usize = 6;
/// Appends timed to measure the disk's fsync latency.
const FSYNC_PROBES: usize = 200;
/// Repetitions of each read measurement.
const READ_RUNS: usize = 30;

/// How big a run is: full under `cargo bench`, a quick smoke run under `cargo test`.
struct Size {
    notes: usize,
    teams: usize,
}

fn main() -> Result<()> {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as a smoke test.
    let full = std::env::args().any(|a| a == "--bench");
    let size =
        if full { Size { notes: 10_000, teams: 100 } } else { Size { notes: 200, teams: 3 } };
    println!(
        "care local benchmark (SQLite synchronous=FULL, WAL){}",
        if full { "" } else { ": smoke run" }
    );
    let dir = tempfile::tempdir()?;
    fsync_floor(dir.path())?;
    signing(if full { 10_000 } else { 100 });
    notes_team(&dir.path().join("notes"), size.notes)?;
    thousand_documents(&dir.path().join("many"), size.teams)?;
    after_a_removal(&dir.path().join("aside"), if full { 720 } else { 20 })?;
    Ok(())
}

/// A month's notes (`notes` of them) written by Ada, who then removes Dan. Writing a note
/// and reading the latest 50, timed three times: before the removal; after it, with
/// nothing kept aside (every read and write now checks for changes kept aside); and once
/// a note Dan wrote after it reached Ada through Eve (each write then goes on a copy of
/// the record).
fn after_a_removal(dir: &Path, notes: usize) -> Result<()> {
    let mut homes = Vec::new();
    for name in ["Ada", "Dan", "Eve"] {
        let mut home = Home::init(&dir.join(name), name)?;
        home.set_clock(SteppingClock::new(START_MS, 60_000));
        homes.push(home);
    }
    let [mut ada, mut dan, mut eve] = <[Home; 3]>::try_from(homes).expect("three homes");
    let team = ada.create_team("Rosa's team")?;
    for home in [&dan, &eve] {
        let (member, device) = (home.profile().member, home.profile().device);
        let name = home.profile().name.clone();
        let role = care::Role::Worker;
        ada.author_op(team, care::OpBody::AddMember { member, name, role, hats: vec![] })?;
        let label = "phone".to_owned();
        ada.author_op(team, care::OpBody::AddDevice { member, device, label })?;
    }
    let ops = care_sync::Replica::ops(&ada, team)?;
    for home in [&mut dan, &mut eve] {
        care_sync::Replica::add_ops(home, team, &ops)?;
    }
    write_notes(&mut ada, notes)?;
    sync(&mut ada, &mut dan)?;
    sync(&mut ada, &mut eve)?;
    let before = time_notes(&mut ada)?;
    ada.author_op(team, care::OpBody::RemoveMember { member: dan.profile().member })?;
    let removed = time_notes(&mut ada)?;
    write_notes(&mut dan, 1)?;
    sync(&mut dan, &mut eve)?;
    sync(&mut eve, &mut ada)?;
    let aside = ada.team("")?.kept_aside()?.len();
    assert_eq!(aside, 1, "Dan's note is kept aside");
    let kept = time_notes(&mut ada)?;
    for (what, (mut add, mut latest)) in [
        ("before the removal", before),
        ("after it, nothing kept aside", removed),
        ("with a change kept aside in the month", kept),
    ] {
        report(&format!("note add in a month of {notes} notes, {what}"), &mut add, "");
        report(&format!("latest 50 notes, {what}"), &mut latest, "");
    }
    Ok(())
}

fn write_notes(home: &mut Home, notes: usize) -> Result<()> {
    let mut team = home.team("")?;
    for i in 0..notes {
        team.add_note(&NewNote { text: note_text(i), ..NewNote::default() }, None)?;
    }
    Ok(())
}

/// 100 notes written and 30 readings of the latest 50, each timed.
fn time_notes(home: &mut Home) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let mut team = home.team("")?;
    let mut add = Vec::new();
    for i in 0..100 {
        let note = NewNote { text: note_text(i), ..NewNote::default() };
        let started = Instant::now();
        team.add_note(&note, None)?;
        add.push(started.elapsed());
    }
    let mut latest = Vec::new();
    for _ in 0..READ_RUNS {
        let started = Instant::now();
        let read = team.notes(&NoteQuery { limit: Some(50), since: None })?;
        latest.push(started.elapsed());
        assert_eq!(read.len(), 50);
    }
    Ok((add, latest))
}

/// Two homes' sessions, connected in memory by the protocol's own frames, until quiet.
fn sync(a: &mut Home, b: &mut Home) -> Result<()> {
    let (a_device, b_device) = (a.profile().device, b.profile().device);
    let (mut a_hub, mut b_hub) = (Hub::new(a_device), Hub::new(b_device));
    let turned = |e| anyhow::anyhow!("the session did not open: {e:?}");
    let a_conn = a_hub.open(a, b_device, a_device, 0).map_err(turned)?;
    let b_conn = b_hub.open(b, a_device, a_device, 0).map_err(turned)?;
    loop {
        let mut moved = false;
        for effect in a_hub.take_effects() {
            if let Effect::Send { frame, .. } = effect {
                b_hub.frame(b, b_conn, &frame.to_vec());
                moved = true;
            }
        }
        for effect in b_hub.take_effects() {
            if let Effect::Send { frame, .. } = effect {
                a_hub.frame(a, a_conn, &frame.to_vec());
                moved = true;
            }
        }
        if !moved {
            return Ok(());
        }
    }
}

/// 2025-11-01T00:00:00Z: a year of history ending around now.
const START_MS: i64 = 1_761_955_200_000;

fn notes_team(dir: &Path, notes: usize) -> Result<()> {
    let mut home = Home::init(dir, "Worker")?;
    // Ten visits a day: 10,000 notes span about 14 months, one document per month.
    home.set_clock(SteppingClock::new(START_MS, 144 * 60_000));
    let team_id = home.create_team("Large team")?;
    let mut team = home.team(&team_id.to_string())?;
    let mut add = Vec::with_capacity(notes);
    for i in 0..notes {
        let note =
            NewNote { text: note_text(i), mood: Some("settled".into()), ..NewNote::default() };
        let started = Instant::now();
        team.add_note(&note, None)?;
        add.push(started.elapsed());
    }
    report(
        &format!("note add, durable ({notes} notes, one commit each)"),
        &mut add,
        "target p50 < 0.5 ms",
    );
    drop(team);
    let compacted = home.compact()?;
    drop(home);

    let mut latest = Vec::new();
    for _ in 0..READ_RUNS {
        let started = Instant::now();
        let mut home = Home::open(dir)?;
        let mut team = home.team("")?;
        let notes = team.notes(&NoteQuery { limit: Some(50), since: None })?;
        latest.push(started.elapsed());
        assert_eq!(notes.len(), 50);
    }
    report(
        &format!("open home + latest 50 of {notes} notes, compacted"),
        &mut latest,
        "target < 50 ms",
    );

    let (file_bytes, save_bytes) = disk_and_save_bytes(dir)?;
    println!(
        "bytes on disk per note: {:.1} (file {} KiB) vs automerge save() {:.1} per note ({} KiB): {:.2}x",
        file_bytes as f64 / notes as f64,
        file_bytes / 1024,
        save_bytes as f64 / notes as f64,
        save_bytes / 1024,
        file_bytes as f64 / save_bytes as f64
    );
    println!(
        "compaction: {} KiB of incremental chunks and snapshots became {} KiB",
        compacted.before_bytes / 1024,
        compacted.after_bytes / 1024
    );
    audit_and_verify(dir)?;
    removal(dir, notes)?;
    let signature_bytes = signature_disk_bytes(dir, file_bytes)?;
    println!(
        "of which change signatures: {:.1} bytes per note; documents alone {:.1} bytes per note \
         ({:.2}x save())  [target signatures < 150 bytes per change]",
        signature_bytes as f64 / notes as f64,
        (file_bytes - signature_bytes) as f64 / notes as f64,
        (file_bytes - signature_bytes) as f64 / save_bytes as f64
    );
    let (own, fixed) = document_pages(dir)?;
    println!(
        "of the documents: their own pages {:.1} bytes per note ({:.2}x save()); the other \
         tables' pages {} KiB, the same for any number of notes  [target < 1.5x]",
        own as f64 / notes as f64,
        own as f64 / save_bytes as f64,
        fixed / 1024
    );
    Ok(())
}

/// Bytes of the pages that hold the documents (their chunks, rows and indexes), and of
/// every other page of the file: each of the store's tables and indexes has at least
/// one, whatever the notes. Read with SQLite's `dbstat`.
fn document_pages(dir: &Path) -> Result<(u64, u64)> {
    let conn = open_raw(dir)?;
    let mut stmt = conn.prepare("SELECT name, sum(pgsize) FROM dbstat GROUP BY name")?;
    let pages = stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
    let (mut own, mut fixed) = (0, 0);
    for page in pages {
        let (name, bytes) = page?;
        let bytes = u64::try_from(bytes)?;
        let documents = ["chunks", "chunks_doc", "docs", "docs_team", "sqlite_autoindex_docs_1"];
        if documents.contains(&name.as_str()) { own += bytes } else { fixed += bytes }
    }
    Ok((own, fixed))
}

/// Who wrote the latest note, checked (`care audit`), from a freshly opened home; and an
/// export of the whole team checked with no home (`care verify`).
fn audit_and_verify(dir: &Path) -> Result<()> {
    let mut audit = Vec::new();
    for _ in 0..READ_RUNS {
        let started = Instant::now();
        let mut home = Home::open(dir)?;
        let mut team = home.team("")?;
        let latest = team.notes(&NoteQuery { limit: Some(1), since: None })?;
        let audits = team.audit_note(latest[0].id)?;
        audit.push(started.elapsed());
        assert!(audits.iter().all(care::ChangeAudit::verified));
    }
    report("open home + audit of the latest note", &mut audit, "target < 50 ms");
    let out = dir.join("export");
    Home::open(dir)?.team("")?.export(&out, care::ExportFormat::Automerge)?;
    let started = Instant::now();
    let verified = care::verify_export(&out)?;
    let took = started.elapsed();
    assert!(verified.failure.is_none(), "{:?}", verified.failure);
    println!(
        "verify an export with no home: {} changes in {} documents in {:.0} ms  [target < 2 s]",
        verified.changes,
        verified.documents,
        ms(took)
    );
    Ok(())
}

/// Removing a member from the team, in a freshly opened home: the removal names, per
/// document, how many of the member's changes this device holds, so it reads every
/// document of the team.
fn removal(dir: &Path, notes: usize) -> Result<()> {
    let mut home = Home::open(dir)?;
    let team = home.team("")?.id();
    let member = care::MemberId::from_bytes([9; 16]);
    let device = care_core::DeviceKey::from_seed([9; 32]).device_id();
    let (name, role) = ("Dan".to_owned(), care::Role::Worker);
    home.author_op(team, care::OpBody::AddMember { member, name, role, hats: vec![] })?;
    home.author_op(team, care::OpBody::AddDevice { member, device, label: "phone".into() })?;
    drop(home);
    let mut home = Home::open(dir)?;
    let started = Instant::now();
    home.author_op(team, care::OpBody::RemoveMember { member })?;
    let took = started.elapsed();
    let documents = home.team("")?.documents()?.len();
    println!(
        "remove a member from the team of {notes} notes ({documents} documents \
         read): {:.0} ms",
        ms(took)
    );
    Ok(())
}

/// Signing and checking one change's signature, alone: what each note written and each
/// change received costs, and a signature's size in a sync frame.
fn signing(changes: usize) {
    use care_core::{ChangeSig, DeviceKey, DocId, OpHash, TeamId};
    let key = DeviceKey::from_seed([7; 32]);
    let (team, doc) = (TeamId::from_bytes([1; 16]), DocId::from_bytes([2; 16]));
    let heads = [OpHash::from_bytes([3; 32])];
    let started = Instant::now();
    let sigs: Vec<ChangeSig> = (0..changes)
        .map(|i| {
            let mut hash = [0; 32];
            hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
            ChangeSig::sign(&key, team, doc, hash, &heads)
        })
        .collect();
    let sign = started.elapsed();
    let started = Instant::now();
    let valid = sigs.iter().filter(|s| s.verify(key.device_id(), team, doc).is_ok()).count();
    let verify = started.elapsed();
    assert_eq!(valid, changes);
    let signed: Vec<_> = sigs.iter().map(|s| (key.device_id(), s)).collect();
    let started = Instant::now();
    assert_eq!(ChangeSig::verify_all(team, doc, &signed), Ok(()));
    let batch = started.elapsed();
    let kind = care::DocKind::Plan;
    let frame = |signatures| care_sync::Frame::Sync {
        team,
        doc: kind.doc_id(team),
        kind,
        message: Vec::new(),
        signatures,
    };
    let wire = frame(sigs[..1].to_vec()).encode().len() - frame(Vec::new()).encode().len();
    println!(
        "change signature: sign {:.1} us, verify {:.1} us alone, {:.1} us in one batch per \
         change ({changes} each); {wire} bytes per change in a sync frame  \
         [target < 100 us per note, < 150 bytes]",
        sign.as_secs_f64() * 1e6 / changes as f64,
        verify.as_secs_f64() * 1e6 / changes as f64,
        batch.as_secs_f64() * 1e6 / changes as f64,
    );
}

/// What the change signatures take in the store's file: its size after dropping them
/// (and a VACUUM), subtracted from `file_bytes`. Run last: it changes the home.
fn signature_disk_bytes(dir: &Path, file_bytes: u64) -> Result<u64> {
    let db = dir.join(care::home::STORE_FILE);
    let conn = open_raw(dir)?;
    conn.execute_batch(
        "DELETE FROM signatures; DELETE FROM signature_contexts;
         PRAGMA wal_checkpoint(TRUNCATE); VACUUM;",
    )?;
    drop(conn);
    Ok(file_bytes.saturating_sub(std::fs::metadata(&db)?.len()))
}

/// The disk's own cost of a durable write (a small append and `fsync`), the floor under
/// every acknowledged change: `synchronous=FULL` pays it once per commit.
fn fsync_floor(dir: &Path) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(dir.join("fsync-probe"))?;
    let mut samples = Vec::with_capacity(FSYNC_PROBES);
    for _ in 0..FSYNC_PROBES {
        let started = Instant::now();
        file.write_all(&[0u8; 128])?;
        file.sync_all()?;
        samples.push(started.elapsed());
    }
    report("disk floor: 128-byte append + fsync", &mut samples, "");
    Ok(())
}

fn thousand_documents(dir: &Path, teams: usize) -> Result<()> {
    let mut home = Home::init(dir, "Circle helper")?;
    home.set_clock(SteppingClock::new(START_MS, 60_000));
    for t in 0..teams {
        let id = home.create_team(&format!("Team {t}"))?;
        let mut team = home.team(&id.to_string())?;
        for m in 0..BOOKING_MONTHS {
            let start = Timestamp(START_MS + m as i64 * 31 * 86_400_000);
            let booking = NewBooking {
                start,
                end: Timestamp(start.as_millis() + 3_600_000),
                title: "Morning visit".into(),
                needed: 1,
            };
            team.add_booking(&booking)?;
        }
    }
    let docs = home.store().docs(None)?.len();
    drop(home);
    let mut open_list = Vec::new();
    for _ in 0..READ_RUNS {
        let started = Instant::now();
        let home = Home::open(dir)?;
        let listed = home.store().docs(None)?;
        open_list.push(started.elapsed());
        assert_eq!(listed.len(), docs);
    }
    report(&format!("open home + list {docs} documents"), &mut open_list, "target < 50 ms");
    let mut listing = Vec::new();
    for _ in 0..READ_RUNS {
        let started = Instant::now();
        let mut home = Home::open(dir)?;
        let listed = home.teams()?;
        listing.push(started.elapsed());
        assert_eq!(listed.len(), teams);
    }
    report(&format!("open home + list {teams} teams with their membership"), &mut listing, "");
    Ok(())
}

/// The home's store opened with SQLCipher directly, unlocked with its key.
fn open_raw(dir: &Path) -> Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(dir.join(care::home::STORE_FILE))?;
    if let Some(key) = Home::store_key_of(dir)? {
        conn.execute_batch(&key.key_pragma())?;
    }
    Ok(conn)
}

/// The store's file size after a checkpoint and VACUUM, and the sum of Automerge
/// `save()` of every document it holds.
fn disk_and_save_bytes(dir: &Path) -> Result<(u64, u64)> {
    let db = dir.join(care::home::STORE_FILE);
    {
        let conn = open_raw(dir)?;
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;")?;
    }
    let file_bytes = std::fs::metadata(&db)?.len();
    let mut home = Home::open(dir)?;
    let mut team = home.team("")?;
    let mut save_bytes = 0;
    let kinds: Vec<DocKind> =
        team.documents()?.iter().filter_map(|d| d.kind.parse().ok()).collect();
    for kind in kinds {
        save_bytes += team.read(kind, |doc| Ok(doc.save().len() as u64))?.unwrap_or(0);
    }
    Ok((file_bytes, save_bytes))
}

/// About 200 characters of a shift note, varied so it does not compress to nothing.
fn note_text(i: usize) -> String {
    let parts = [
        "Arrived on time; helped with washing and dressing.",
        "Breakfast of porridge and tea, ate well.",
        "Medication taken with water, no concerns.",
        "Walked to the end of the road and back.",
        "Talked about the garden and the grandchildren.",
        "Left the kitchen tidy and the heating on.",
    ];
    let mut text = format!("Visit {i}. ");
    for k in 0..4 {
        text.push_str(parts[(i * 7 + k * 3) % parts.len()]);
        text.push(' ');
    }
    text.truncate(200);
    text
}

fn report(what: &str, samples: &mut [Duration], target: &str) {
    samples.sort_unstable();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what}: p50 {:.3} ms, p95 {:.3} ms, max {:.3} ms over {} runs  {}",
        ms(pick(0.5)),
        ms(pick(0.95)),
        ms(pick(1.0)),
        samples.len(),
        if target.is_empty() { String::new() } else { format!("[{target}]") }
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
