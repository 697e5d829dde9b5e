//! Tests of the store on real SQLite files: durability, concurrent writers, corruption,
//! rejected changes, key files and schema versions.

use std::path::Path;
use std::time::Instant;

use crate::{DocMeta, DocSummary, Store, StoreError, StoredDoc, UpdateError, keyfile};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ROOT, ReadDoc};
use care_core::ids::{DeviceId, DocId, OpHash, TeamId};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn meta(n: u8) -> DocMeta {
    DocMeta {
        id: DocId::from_bytes([n; 16]),
        team: TeamId::from_bytes([9; 16]),
        kind: "notes".into(),
    }
}

fn genesis() -> Automerge {
    let mut doc = Automerge::new();
    doc.transact(|tx| tx.put_object(ROOT, "notes", automerge::ObjType::Map)).unwrap();
    doc
}

/// Writes one shift note under `key`.
fn add_note(store: &mut Store, doc: &mut StoredDoc, key: &str) -> Result<()> {
    let text = format!("Visited at 9, all well. {key}");
    store.update_doc(doc, |d| {
        d.transact(|tx| tx.put(ROOT, key, text.as_str())).map(|_| ()).map_err(|f| f.error)
    })?;
    Ok(())
}

fn summary(store: &Store, id: DocId) -> DocSummary {
    store.docs(None).unwrap().into_iter().find(|s| s.id == id).unwrap()
}

/// A document received whole with a change appended that waits for one it lacks: its
/// compacted snapshot leaves that change out, so that the bytes hold what their heads say
/// (a device sent them whole reads the heads it loads).
#[test]
fn a_change_waiting_for_its_dependencies_is_left_out_of_a_snapshot() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = Store::open(&dir.path().join("home.sqlite"))?;
    let mut writer = genesis();
    let (base, heads) = (writer.save(), writer.get_heads());
    writer.transact(|tx| tx.put(ROOT, "first", "Visited at 9.")).map_err(|f| f.error)?;
    writer.transact(|tx| tx.put(ROOT, "second", "Visited at 10.")).map_err(|f| f.error)?;
    let changes = writer.get_changes(&heads);
    // The genesis and the second change, without the first.
    let mut received = base;
    received.extend(changes[1].raw_bytes());
    let held = Automerge::load(&received)?;
    assert_eq!(held.get_heads(), heads, "the second change waits");
    store.import_doc(&meta(2), &received, &heads, &[])?;
    store.compact(meta(2).id)?;
    let bytes = store.doc_bytes(meta(2).id)?.expect("stored");
    let compacted = Automerge::load(&bytes)?;
    assert_eq!(compacted.get_heads(), heads);
    let without = automerge::SaveOptions { retain_orphans: false, ..Default::default() };
    assert_eq!(
        compacted.save().len(),
        compacted.save_with_options(without).len(),
        "no change waits in the compacted snapshot"
    );
    Ok(())
}

#[test]
fn updates_survive_reopen_and_compaction_keeps_content() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("home.sqlite");
    let mut store = Store::open(&path)?;
    let mut doc = store.create_doc(&meta(1), &genesis())?;
    assert_eq!(summary(&store, meta(1).id).chunks, 1);
    for i in 0..10 {
        add_note(&mut store, &mut doc, &format!("n{i}"))?;
    }
    let young = summary(&store, meta(1).id);
    assert_eq!(young.chunks, 11, "one incremental chunk per change");
    assert!(young.incremental_bytes > 0);

    let started = Instant::now();
    for i in 10..300 {
        add_note(&mut store, &mut doc, &format!("n{i}"))?;
    }
    let per_update_us = started.elapsed().as_micros() / 290;
    eprintln!("update_doc: {per_update_us} us per change (this build)");
    let grown = summary(&store, meta(1).id);
    assert!(grown.chunks < 290, "automatic compaction ran: {grown:?}");
    assert!(grown.incremental_bytes <= grown.snapshot_bytes.max(crate::COMPACT_MIN_BYTES));
    assert_eq!(grown.heads, doc.saved_heads());
    drop(store);

    let mut store = Store::open(&path)?;
    let reloaded = store.load_doc(meta(1).id)?.unwrap();
    assert_eq!(reloaded.doc().get_heads(), doc.doc().get_heads());
    assert_eq!(reloaded.doc().keys(ROOT).count(), 301);

    let report = store.compact(meta(1).id)?;
    assert!(report.after_bytes < report.before_bytes, "{report:?}");
    assert_eq!(summary(&store, meta(1).id).chunks, 1);
    let compacted = store.load_doc(meta(1).id)?.unwrap();
    assert_eq!(compacted.doc().get_heads(), doc.doc().get_heads());
    assert_eq!(
        compacted.doc().get(ROOT, "n299")?.map(|(v, _)| v.to_string()),
        Some("\"Visited at 9, all well. n299\"".into())
    );
    assert!(store.check()?.problems.is_empty());
    Ok(())
}

#[test]
fn two_writers_with_one_actor_never_collide() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("home.sqlite");
    Store::open(&path)?.create_doc(&meta(1), &genesis())?;
    let actor = ActorId::from(vec![7u8; 16]);
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (path, actor) = (path.clone(), actor.clone());
            std::thread::spawn(move || -> Result<()> {
                let mut store = Store::open(&path)?;
                let mut doc = store.load_doc(meta(1).id)?.unwrap();
                for i in 0..200 {
                    store.update_doc(&mut doc, |d| {
                        d.set_actor(actor.clone());
                        d.transact(|tx| tx.put(ROOT, format!("w{w}-{i}"), i))
                            .map(|_| ())
                            .map_err(|f| f.error)
                    })?;
                }
                Ok(())
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap()?;
    }
    let store = Store::open(&path)?;
    let doc = store.load_doc(meta(1).id)?.unwrap();
    let ours = doc.doc().get_changes(&[]).iter().filter(|c| c.actor_id() == &actor).count();
    assert_eq!(ours, 400);
    assert_eq!(doc.doc().keys(ROOT).count(), 401);
    assert!(store.check()?.problems.is_empty());
    Ok(())
}

#[test]
fn refresh_reads_changes_and_snapshots_from_another_connection() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("home.sqlite");
    let mut first = Store::open(&path)?;
    let mut mine = first.create_doc(&meta(1), &genesis())?;
    let mut second = Store::open(&path)?;
    let mut theirs = second.load_doc(meta(1).id)?.unwrap();
    add_note(&mut second, &mut theirs, "a")?;
    assert!(first.refresh(&mut mine)?);
    assert!(!first.refresh(&mut mine)?);
    add_note(&mut second, &mut theirs, "b")?;
    second.compact(meta(1).id)?;
    assert!(first.refresh(&mut mine)?);
    assert_eq!(mine.doc().get_heads(), theirs.doc().get_heads());
    add_note(&mut first, &mut mine, "c")?;
    assert_eq!(first.load_doc(meta(1).id)?.unwrap().doc().keys(ROOT).count(), 4);
    Ok(())
}

#[test]
fn a_damaged_chunk_names_its_document_and_spares_the_others() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("home.sqlite");
    let mut store = Store::open(&path)?;
    for n in [1, 2] {
        let mut doc = store.create_doc(&meta(n), &genesis())?;
        add_note(&mut store, &mut doc, "x")?;
    }
    let raw = rusqlite::Connection::open(&path)?;
    let (chunk, mut data): (i64, Vec<u8>) = raw.query_row(
        "SELECT id, data FROM chunks WHERE doc = ?1 ORDER BY id DESC LIMIT 1",
        [meta(1).id.as_bytes()],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    data[3] ^= 0x40;
    raw.execute("UPDATE chunks SET data = ?1 WHERE id = ?2", rusqlite::params![data, chunk])?;

    match store.load_doc(meta(1).id) {
        Err(StoreError::Corrupt { doc, detail }) => {
            assert_eq!(doc, meta(1).id);
            assert!(detail.contains(&format!("chunk {chunk}")), "{detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(store.load_doc(meta(2).id)?.is_some());
    let report = store.check()?;
    assert_eq!(report.docs_checked, 2);
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert_eq!(report.problems[0].doc, Some(meta(1).id));
    Ok(())
}

#[test]
fn a_rejected_change_writes_nothing_and_leaves_memory_as_stored() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = Store::open(&dir.path().join("home.sqlite"))?;
    let mut doc = store.create_doc(&meta(1), &genesis())?;
    add_note(&mut store, &mut doc, "kept")?;
    let (heads, before) = (doc.doc().get_heads(), summary(&store, meta(1).id));
    let result: std::result::Result<(), UpdateError<&str>> = store.update_doc(&mut doc, |d| {
        d.transact(|tx| tx.put(ROOT, "dropped", 1)).map_err(|_| "commit failed")?;
        Err("not allowed for this role")
    });
    assert!(matches!(result, Err(UpdateError::Rejected("not allowed for this role"))));
    assert_eq!(doc.doc().get_heads(), heads);
    assert!(doc.doc().get(ROOT, "dropped")?.is_none());
    assert_eq!(summary(&store, meta(1).id), before);
    add_note(&mut store, &mut doc, "after")?;
    assert_eq!(store.load_doc(meta(1).id)?.unwrap().doc().keys(ROOT).count(), 3);
    Ok(())
}

#[test]
fn a_lock_held_too_long_is_reported_as_busy() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("home.sqlite");
    let mut store = Store::open(&path)?;
    let mut doc = store.create_doc(&meta(1), &genesis())?;
    store.set_busy_timeout_ms(50)?;
    let raw = rusqlite::Connection::open(&path)?;
    raw.execute_batch("BEGIN IMMEDIATE")?;
    let err = add_note(&mut store, &mut doc, "late").unwrap_err().to_string();
    assert!(err.contains("another program on this device"), "{err}");
    raw.execute_batch("ROLLBACK")?;
    add_note(&mut store, &mut doc, "late")?;
    Ok(())
}

#[test]
fn create_doc_is_idempotent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = Store::open(&dir.path().join("home.sqlite"))?;
    let mut doc = store.create_doc(&meta(1), &genesis())?;
    add_note(&mut store, &mut doc, "a")?;
    let again = store.create_doc(&meta(1), &Automerge::new())?;
    assert_eq!(again.doc().get_heads(), doc.doc().get_heads());
    let other_kind = DocMeta { kind: "rota".into(), ..meta(1) };
    assert!(matches!(
        store.create_doc(&other_kind, &genesis()),
        Err(StoreError::MetaMismatch { .. })
    ));
    Ok(())
}

#[test]
fn ops_profile_sync_states_and_peers_round_trip() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = Store::open(&dir.path().join("home.sqlite"))?;
    let team = TeamId::from_bytes([3; 16]);
    let ops: Vec<_> = (0..3u8).map(|i| (OpHash::from_bytes([i; 32]), vec![i; 10])).collect();
    assert_eq!(store.insert_ops(team, &ops)?, 3);
    assert_eq!(store.insert_ops(team, &ops)?, 0);
    assert_eq!(store.ops(team)?, ops.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>());
    assert_eq!(store.teams()?, vec![team]);
    assert_eq!(store.op_count(team)?, 3);
    assert_eq!(store.op_count(TeamId::from_bytes([4; 16]))?, 0);

    store.meta_set("home", b"profile")?;
    assert_eq!(store.meta_get("home")?, Some(b"profile".to_vec()));
    assert_eq!(store.meta_get("none")?, None);

    let (peer, doc) = (DeviceId::from_bytes([5; 32]), DocId::from_bytes([6; 16]));
    assert_eq!(store.sync_state(peer, doc)?, None);
    let other = DocId::from_bytes([7; 16]);
    store.set_sync_states(peer, [(doc, b"state".as_slice()), (other, b"older".as_slice())])?;
    store.set_sync_states(peer, [(other, b"newer".as_slice())])?;
    assert_eq!(store.sync_state(peer, doc)?, Some(b"state".to_vec()));
    assert_eq!(store.sync_state(peer, other)?, Some(b"newer".to_vec()));
    store.set_peer_addrs(peer, "127.0.0.1:4000", 17)?;
    assert_eq!(store.peer_addrs(peer)?, Some(("127.0.0.1:4000".into(), 17)));
    Ok(())
}

#[test]
fn a_newer_schema_is_refused_and_left_untouched() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("home.sqlite");
    {
        let raw = rusqlite::Connection::open(&path)?;
        raw.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 999;")?;
    }
    let before = std::fs::read(&path)?;
    match Store::open(&path) {
        Err(StoreError::NewerSchema { found: 999, .. }) => {}
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path)?, before);
    assert!(!dir.path().join("home.sqlite-wal").exists());
    Ok(())
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[test]
fn the_store_file_is_private() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("home.sqlite");
    Store::open(&path)?;
    assert_eq!(mode(&path), 0o600);
    Ok(())
}

#[cfg(unix)]
#[test]
fn key_files_are_private_and_exact() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("device.key");
    keyfile::create(&path, &[4; 32])?;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(keyfile::read(&path)?, [4; 32]);
    assert!(matches!(keyfile::create(&path, &[5; 32]), Err(keyfile::KeyFileError::Exists { .. })));
    assert_eq!(keyfile::read(&path)?, [4; 32]);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    assert!(matches!(
        keyfile::read(&path),
        Err(keyfile::KeyFileError::Readable { mode: 0o644, .. })
    ));

    let short = dir.path().join("short.key");
    std::fs::write(&short, [1; 31])?;
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600))?;
    assert!(matches!(
        keyfile::read(&short),
        Err(keyfile::KeyFileError::WrongLength { len: 31, .. })
    ));
    Ok(())
}

/// Whether `needle` appears in any file of `dir` (the store, its write-ahead log, its
/// shared memory).
fn any_file_holds(dir: &Path, needle: &[u8]) -> Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let bytes = std::fs::read(entry?.path())?;
        if bytes.windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[test]
fn an_encrypted_store_holds_no_plaintext_and_opens_only_with_its_key() -> Result<()> {
    let key = crate::StoreKey::from_bytes([5; 32]);
    let secret = b"Morphine 10mg at 22:00, refused.";
    for encrypted in [false, true] {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("home.sqlite");
        {
            let mut store =
                if encrypted { Store::open_encrypted(&path, &key)? } else { Store::open(&path)? };
            let mut doc = store.create_doc(&meta(1), &genesis())?;
            store.update_doc(&mut doc, |d| {
                d.transact(|tx| tx.put(ROOT, "note", std::str::from_utf8(secret).unwrap()))
                    .map(|_| ())
                    .map_err(|f| f.error)
            })?;
            // Still open: the write-ahead log holds the last write too.
            assert_eq!(any_file_holds(dir.path(), secret)?, !encrypted, "encrypted: {encrypted}");
        }
        assert_eq!(any_file_holds(dir.path(), secret)?, !encrypted, "encrypted: {encrypted}");
        if !encrypted {
            continue;
        }
        let reopened = Store::open_encrypted(&path, &key)?;
        assert_eq!(reopened.page_auth(), Some(crate::PageAuth::Sha256));
        let doc = reopened.load_doc(meta(1).id)?.ok_or("stored")?;
        assert!(doc.doc().get(ROOT, "note")?.is_some());
        drop(reopened);
        // The pages carry HMAC-SHA256: SQLCipher's default (SHA-512) does not read them.
        let raw = rusqlite::Connection::open(&path)?;
        raw.execute_batch(&key.key_pragma().replace(
            "PRAGMA cipher_hmac_algorithm = HMAC_SHA256;",
            "PRAGMA cipher_hmac_algorithm = HMAC_SHA512;",
        ))?;
        let refused = raw.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()));
        assert!(refused.is_err(), "pages read with the wrong authentication");
        drop(raw);
        let other = crate::StoreKey::from_bytes([6; 32]);
        for refused in [Store::open_encrypted(&path, &other), Store::open(&path)] {
            match refused {
                Err(StoreError::Locked { .. }) => {}
                other => return Err(format!("opened without its key: {other:?}").into()),
            }
        }
        assert!(!format!("{key:?}").contains('5'), "the key is never printed");
    }
    Ok(())
}

/// A store encrypted before pages were authenticated with SHA-256 (with SQLCipher's
/// default, HMAC-SHA512) opens as it is, for reading and writing, on every connection, and
/// stays readable the way it was made; a wrong key is still refused.
#[test]
fn a_store_made_with_the_older_page_authentication_opens_and_keeps_it() -> Result<()> {
    let key = crate::StoreKey::from_bytes([7; 32]);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("home.sqlite");
    let with_key_alone = |path: &std::path::Path| -> rusqlite::Result<rusqlite::Connection> {
        let conn = rusqlite::Connection::open(path)?;
        let hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        conn.execute_batch(&format!("PRAGMA key = \"x'{hex}'\";"))?;
        Ok(conn)
    };
    // Made as a store was before: the key alone, SQLCipher's defaults.
    with_key_alone(&path)?.execute_batch("CREATE TABLE made_before (x INTEGER);")?;
    {
        let mut store = Store::open_encrypted(&path, &key)?;
        assert_eq!(store.page_auth(), Some(crate::PageAuth::Sha512));
        let mut doc = store.create_doc(&meta(1), &genesis())?;
        add_note(&mut store, &mut doc, "written after the upgrade")?;
        // A second connection (a worker's) finds the same.
        let other = Store::open_encrypted(&path, &key)?;
        assert_eq!(other.page_auth(), Some(crate::PageAuth::Sha512));
        let loaded = other.load_doc(meta(1).id)?.ok_or("stored")?;
        assert_eq!(loaded.doc().get_heads(), doc.doc().get_heads());
    }
    // Still the old authentication throughout, log copied in or not.
    let conn = with_key_alone(&path)?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    assert!(tables > 1, "the store's tables are readable with the key alone");
    drop(conn);
    let other = crate::StoreKey::from_bytes([8; 32]);
    match Store::open_encrypted(&path, &other) {
        Err(StoreError::Locked { encrypted: true, .. }) => {}
        other => return Err(format!("opened with another key: {other:?}").into()),
    }
    Ok(())
}

/// Many notes, saved: a document as a peer would send it whole.
fn saved_notes(notes: usize) -> (Vec<u8>, Vec<automerge::ChangeHash>) {
    let mut doc = genesis();
    for n in 0..notes {
        let text = format!("Visit {n}: breakfast, medication at 9, a walk to the shop.");
        doc.transact(|tx| tx.put(ROOT, format!("note {n}"), text)).unwrap();
    }
    (doc.save(), doc.get_heads())
}

#[test]
fn a_document_written_in_pieces_is_stored_only_once_all_are() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("care.db");
    let mut store = Store::open(&path)?;
    let (bytes, heads) = saved_notes(200);
    let pieces: Vec<&[u8]> = bytes.chunks(bytes.len() / 3 + 1).collect();
    assert_eq!(pieces.len(), 3);
    for piece in &pieces[..2] {
        assert!(store.add_piece(meta(1).id, piece)?);
    }
    // A piece is not synced on its own; every other write still is.
    assert_eq!(synchronous(&store)?, FULL);
    // Written but not yet stored: no document, and nothing the store counts as damaged.
    assert!(store.doc_summary(meta(1).id)?.is_none());
    assert!(store.check()?.problems.is_empty(), "{:?}", store.check()?.problems);
    // Not every piece: nothing is stored, and what was written goes.
    let len = bytes.len() as u64;
    assert_eq!(store.import_pieces(&meta(1), len, &heads, &[])?, crate::Imported::PiecesMissing);
    assert!(store.doc_summary(meta(1).id)?.is_none());
    for piece in &pieces {
        assert!(store.add_piece(meta(1).id, piece)?);
    }
    assert_eq!(store.import_pieces(&meta(1), len, &heads, &[])?, crate::Imported::Stored);
    assert_eq!(store.doc_bytes(meta(1).id)?, Some(bytes.clone()));
    let loaded = store.load_doc(meta(1).id)?.ok_or("stored")?;
    assert_eq!(loaded.doc().get_heads(), heads);
    // A stored document takes no more pieces.
    assert!(!store.add_piece(meta(1).id, pieces[0])?);
    assert_eq!(synchronous(&store)?, FULL);
    assert_eq!(store.doc_bytes(meta(1).id)?, Some(bytes));
    Ok(())
}

/// Every write reads the chunks written since the document was last read, with one
/// statement kept compiled: writing must not make SQLite compile it again each time (it
/// would, with plans that depend on the values bound: binding them anew, as the statement
/// cache does, throws the compiled statement away).
#[test]
fn writes_reuse_their_compiled_statements() -> Result<()> {
    use rusqlite::StatementStatus::RePrepare;
    let dir = tempfile::tempdir()?;
    let mut store = Store::open(&dir.path().join("care.db"))?;
    let mut doc = store.create_doc(&meta(1), &genesis())?;
    let mut other = store.create_doc(&meta(2), &genesis())?;
    for n in 0..10 {
        add_note(&mut store, &mut doc, &format!("note {n}"))?;
        add_note(&mut store, &mut other, &format!("note {n}"))?;
    }
    assert_eq!(summary(&store, meta(1).id).heads, doc.doc().get_heads());
    let compiled_again =
        store.conn().prepare_cached(crate::doc::CHUNKS_AFTER)?.get_status(RePrepare);
    assert_eq!(compiled_again, 0, "20 writes compiled the chunk reading {compiled_again} times");
    Ok(())
}

/// A connection that leaves checkpoints to another asks for one per
/// [`crate::CHECKPOINT_NUDGE_PAGES`] of log written, not after every write once the log
/// is that long: each checkpoint syncs the log and the database file, so asking after
/// every write made two syncs of every write. Once the log is copied whole and starts
/// again, it asks again as it grows.
#[test]
fn checkpoints_are_asked_for_once_per_stretch_of_log() -> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("care.db");
    let mut store = Store::open(&path)?;
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    store.leave_checkpoints(move || {
        counter.fetch_add(1, Ordering::Relaxed);
    })?;
    // Pieces of a document that does not compress: about 17 pages of log each.
    let mut seed = 1_u64;
    let mut piece = || -> Vec<u8> {
        (0..64 << 10)
            .map(|_| {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (seed >> 56) as u8
            })
            .collect()
    };
    for _ in 0..100 {
        assert!(store.add_piece(meta(1).id, &piece())?);
    }
    let page: i64 = store.conn().query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let page = u64::try_from(page)?;
    let log = std::fs::metadata(dir.path().join("care.db-wal"))?.len();
    let pages = (log - 32) / (page + 24);
    let per_ask = crate::CHECKPOINT_NUDGE_PAGES as u64;
    let asks = asked.load(Ordering::Relaxed) as u64;
    assert!(pages > 5 * per_ask, "{pages} pages of log");
    assert!(
        (pages / (per_ask + 20)..=pages / per_ask).contains(&asks),
        "{asks} checkpoints asked for over {pages} pages of log"
    );
    // Another connection copies the log whole; the next write starts it again.
    let other = Store::open(&path)?;
    let (in_log, copied) = other.checkpoint()?;
    assert_eq!(in_log, copied, "copied whole");
    for _ in 0..40 {
        assert!(store.add_piece(meta(2).id, &piece())?);
    }
    let after = asked.load(Ordering::Relaxed) as u64 - asks;
    assert!((1..=3).contains(&after), "{after} asked for over 40 pieces after the restart");
    Ok(())
}

/// `PRAGMA synchronous` of a store's connection.
fn synchronous(store: &Store) -> std::result::Result<i64, rusqlite::Error> {
    store.conn().query_row("PRAGMA synchronous", [], |r| r.get(0))
}

/// `synchronous=FULL`, as `PRAGMA synchronous` reads it.
const FULL: i64 = 2;

#[test]
fn pieces_give_way_to_the_document_written_meanwhile_and_to_a_restart() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("care.db");
    let mut store = Store::open(&path)?;
    let (bytes, heads) = saved_notes(50);
    // A note written here creates the document while it arrives whole from a peer: its
    // pieces are dropped, never read as part of it.
    store.add_piece(meta(2).id, &bytes[..bytes.len() / 2])?;
    let mut doc = store.create_doc(&meta(2), &genesis())?;
    add_note(&mut store, &mut doc, "written here")?;
    let len = bytes.len() as u64;
    assert_eq!(store.import_pieces(&meta(2), len, &heads, &[])?, crate::Imported::AlreadyHeld);
    let reloaded = store.load_doc(meta(2).id)?.ok_or("stored")?;
    assert_eq!(reloaded.doc().get_heads(), doc.doc().get_heads());
    // A device that stops while writing pieces drops them when it starts again.
    store.add_piece(meta(3).id, &bytes[..bytes.len() / 2])?;
    drop(store);
    let mut store = Store::open(&path)?;
    assert_eq!(store.drop_unfinished_pieces()?, 1);
    assert_eq!(store.drop_unfinished_pieces()?, 0);
    let orphans: i64 = store.conn().query_row(
        "SELECT count(*) FROM chunks WHERE doc = ?1",
        [meta(3).id.as_bytes()],
        |r| r.get(0),
    )?;
    assert_eq!(orphans, 0);
    assert_eq!(store.import_pieces(&meta(3), len, &heads, &[])?, crate::Imported::PiecesMissing);
    assert!(store.check()?.problems.is_empty());
    Ok(())
}

/// A store that leaves compaction to another connection: its writes past the rule ask for
/// it and append their chunk; the other connection makes the snapshot while more is
/// written; the snapshot takes the place of the chunks it was made from, and what was
/// written meanwhile stays after it.
#[test]
fn a_compaction_made_beside_the_writes_keeps_what_was_written_meanwhile() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("home.sqlite");
    let mut store = Store::open(&path)?;
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let asks = std::sync::Arc::clone(&asked);
    store.leave_compaction(move |id| asks.lock().unwrap().push(id));
    let id = meta(1).id;
    let mut doc = store.create_doc(&meta(1), &genesis())?;
    let mut written = 0;
    while asked.lock().unwrap().is_empty() {
        add_note(&mut store, &mut doc, &format!("n{written}"))?;
        written += 1;
    }
    assert!(asked.lock().unwrap().iter().all(|asked| *asked == id));
    let before = summary(&store, id);
    assert_eq!(before.chunks, written + 1, "no write compacted: {before:?}");
    assert!(before.incremental_bytes > crate::COMPACT_MIN_BYTES);

    let other = Store::open(&path)?;
    let mut elsewhere = other.load_doc(id)?.unwrap();
    let compaction = other.chunks_to_compact(id)?.expect("more than one chunk").compact()?;
    assert_eq!(compaction.doc(), id);
    for i in 0..3 {
        add_note(&mut store, &mut doc, &format!("meanwhile{i}"))?;
    }
    let meanwhile = summary(&store, id).incremental_bytes - before.incremental_bytes;

    asked.lock().unwrap().clear();
    let report = store.finish_compaction(compaction)?.expect("the chunks are as they were read");
    assert!(asked.lock().unwrap().is_empty(), "what was written meanwhile is within the rule");
    let after = summary(&store, id);
    assert_eq!(after.chunks, 4, "the snapshot and the three chunks written meanwhile");
    assert_eq!(after.incremental_bytes, meanwhile);
    assert!(report.after_bytes < report.before_bytes, "{report:?}");
    assert_eq!(after.heads, doc.saved_heads(), "compacting moves no heads");

    // The writer's copy writes on; a copy loaded before it all catches up; a fresh load
    // holds every note.
    add_note(&mut store, &mut doc, "after")?;
    assert!(other.refresh(&mut elsewhere)?);
    assert_eq!(elsewhere.doc().get_heads(), doc.doc().get_heads());
    let fresh = Store::open(&path)?.load_doc(id)?.unwrap();
    assert_eq!(fresh.doc().get_heads(), doc.doc().get_heads());
    assert_eq!(fresh.doc().keys(ROOT).count() as u64, 1 + written + 3 + 1);
    assert!(store.check()?.problems.is_empty());

    // Writes past the rule while a compaction is made asked while it was under way (and
    // an asker that takes one ask per document at a time drops such an ask): finishing
    // it asks again.
    let compaction = other.chunks_to_compact(id)?.expect("more than one chunk").compact()?;
    let (base, target) = (
        summary(&store, id).incremental_bytes,
        compaction.snapshot_bytes().max(crate::COMPACT_MIN_BYTES),
    );
    for more in 0.. {
        add_note(&mut store, &mut doc, &format!("more{more}"))?;
        if summary(&store, id).incremental_bytes - base > target {
            break;
        }
        assert!(more < 1_000, "the writes never passed the rule");
    }
    asked.lock().unwrap().clear();
    store.finish_compaction(compaction)?.expect("the chunks are as they were read");
    let rest = summary(&store, id);
    assert!(rest.incremental_bytes > rest.snapshot_bytes.max(crate::COMPACT_MIN_BYTES));
    assert_eq!(*asked.lock().unwrap(), vec![id], "asked again");
    Ok(())
}

/// A snapshot made from chunks that were compacted meanwhile is not put in place: nothing
/// is written, and the document is as the other compaction left it.
#[test]
fn a_compaction_of_chunks_already_compacted_writes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("home.sqlite");
    let mut store = Store::open(&path)?;
    store.leave_compaction(|_| {});
    let id = meta(1).id;
    let mut doc = store.create_doc(&meta(1), &genesis())?;
    for i in 0..40 {
        add_note(&mut store, &mut doc, &format!("n{i}"))?;
    }
    let stale = Store::open(&path)?.chunks_to_compact(id)?.expect("more than one chunk");
    let stale = stale.compact()?;
    store.compact(id)?;
    add_note(&mut store, &mut doc, "after")?;
    let compacted = summary(&store, id);
    assert_eq!(store.finish_compaction(stale)?, None);
    assert_eq!(summary(&store, id), compacted);
    let fresh = Store::open(&path)?.load_doc(id)?.unwrap();
    assert_eq!(fresh.doc().keys(ROOT).count(), 1 + 40 + 1);

    // A document received whole and not yet verified is left for its check.
    store.import_doc(&meta(2), &genesis().save(), &genesis().get_heads(), &[])?;
    assert!(store.chunks_to_compact(meta(2).id)?.is_none());
    assert!(store.chunks_to_compact(meta(3).id)?.is_none(), "not stored");
    Ok(())
}

/// When the other connection falls behind, the writes compact past the backstop: the
/// chunks stay bounded.
#[test]
fn writes_compact_themselves_past_the_backstop_when_no_one_else_does() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = Store::open(&dir.path().join("home.sqlite"))?;
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let asks = std::sync::Arc::clone(&asked);
    store.leave_compaction(move |_| {
        asks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let id = meta(1).id;
    let mut doc = store.create_doc(&meta(1), &genesis())?;
    let mut most = 0;
    for i in 0..600 {
        add_note(&mut store, &mut doc, &format!("n{i}"))?;
        let now = summary(&store, id);
        let rule = now.snapshot_bytes.max(crate::COMPACT_MIN_BYTES);
        assert!(now.incremental_bytes <= rule * crate::COMPACT_BACKSTOP_FACTOR, "{now:?}");
        most = most.max(now.chunks);
    }
    assert!(asked.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert!(most > 100, "the writes left compaction to the other connection first");
    assert!(summary(&store, id).chunks < 600, "and compacted past the backstop");
    Ok(())
}
