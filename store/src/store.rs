//! The store of one care home on one device: an SQLite file holding the team's membership
//! ops, its documents as Automerge chunks, and the bookkeeping sync needs.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use automerge::{Automerge, ChangeHash, SaveOptions};
use care_core::ids::{DeviceId, DocId, OpHash, TeamId};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::doc::{self, DocMeta, DocSummary, StoredDoc, StoredSignature, sorted_heads};
use crate::error::{Doing, StoreError, UpdateError};
use crate::schema;

/// How long a write waits for another connection's write lock before giving up.
pub const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Incremental chunks are folded into a snapshot once they exceed both the snapshot's size
/// and this many bytes, so a young document is not re-snapshotted on every write.
pub const COMPACT_MIN_BYTES: u64 = 4_096;
/// A connection that leaves compaction to another ([`Store::leave_compaction`]) compacts a
/// document inside its own write only past this many times the compaction rule's bytes,
/// should the other fall behind.
pub const COMPACT_BACKSTOP_FACTOR: u64 = 4;
/// Pages of write-ahead log past which a connection that leaves checkpoints to another
/// ([`Store::leave_checkpoints`]) copies the log itself: 64 MiB, against SQLite's 1,000
/// pages (4 MiB) by default.
pub const CHECKPOINT_BACKSTOP_PAGES: i64 = 16_384;
/// Pages of write-ahead log written between two checkpoints a connection that leaves them
/// to another asks it for: 1 MiB.
pub const CHECKPOINT_NUDGE_PAGES: i64 = 256;

/// An open store. One SQLite connection; several `Store`s (threads or processes) may share
/// a file: writes are serialised by SQLite's write lock.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The key its file is encrypted with, if it is.
    key: Option<StoreKey>,
    /// How its pages are authenticated, if it is encrypted.
    page_auth: Option<PageAuth>,
    /// Who compacts a document whose chunks pass the rule, if not this connection's write.
    compaction: Option<AskCompaction>,
    /// The floor of the compaction rule for this connection's writes.
    compact_min_bytes: u64,
}

/// What a connection that leaves compaction to another calls with a document to compact.
struct AskCompaction(Box<dyn Fn(DocId) + Send>);

impl std::fmt::Debug for AskCompaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AskCompaction(…)")
    }
}

/// The key a store's file is encrypted with: 256 bits, used as SQLCipher's raw key, so
/// every page of the file (and of its write-ahead log) is encrypted (AES-256) and
/// authenticated (an HMAC per page, checked on every read: [`PageAuth`]).
/// Never printed; its bytes are overwritten when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreKey([u8; 32]);

impl StoreKey {
    /// The key whose bytes are `bytes` (32 random bytes: from the platform's keystore,
    /// or a key file).
    pub fn from_bytes(bytes: [u8; 32]) -> StoreKey {
        StoreKey(bytes)
    }

    /// The key's bytes, to keep in a keystore or key file.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The statements that unlock a file made by this version in SQLCipher, for tools
    /// that open it directly: `PRAGMA key = "x'…'"` (the key in hex), then the page
    /// authentication it uses ([`PageAuth::Sha256`]). A file made before that opens with
    /// the key alone ([`PageAuth::Sha512`], SQLCipher's default).
    pub fn key_pragma(&self) -> String {
        self.unlock(PageAuth::Sha256)
    }

    /// The statements that unlock a file whose pages are authenticated with `auth`.
    fn unlock(&self, auth: PageAuth) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        let key = format!("PRAGMA key = \"x'{hex}'\";");
        match auth {
            PageAuth::Sha256 => format!("{key} PRAGMA cipher_hmac_algorithm = HMAC_SHA256;"),
            PageAuth::Sha512 => key,
        }
    }
}

/// How the pages of an encrypted store are authenticated: each page carries an HMAC of
/// its encrypted bytes, written with the page and checked whenever it is read, so a page
/// changed on disk is refused rather than read. A file keeps the kind it was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PageAuth {
    /// HMAC-SHA256: what a store made by this version uses. Processors' SHA-256
    /// instructions (x86 SHA extensions, ARMv8 SHA2, on phones too) make it about twice
    /// as fast as SHA-512 over a page (1.7 against 0.79 GB/s on the machine measured),
    /// and every page written or read pays it.
    Sha256,
    /// HMAC-SHA512, SQLCipher 4's default: stores made before, opened as they are.
    Sha512,
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(…)")
    }
}

impl Drop for StoreKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// What [`Store::compact`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactReport {
    /// Bytes of the document's chunks before.
    pub before_bytes: u64,
    /// Bytes of its snapshot after.
    pub after_bytes: u64,
}

/// What [`Store::check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntegrityReport {
    /// How many documents were loaded and checked.
    pub docs_checked: usize,
    /// What is wrong; empty when the store is sound.
    pub problems: Vec<Problem>,
}

/// One problem found by [`Store::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The document concerned, if the problem is in one document.
    pub doc: Option<DocId>,
    /// What is wrong, as a sentence.
    pub detail: String,
}

/// Has SQLite and SQLCipher initialised before any store is opened.
///
/// SQLite marks itself initialised before it runs SQLCipher's own initialisation, so a
/// thread keying a connection while another thread is still in its first open is refused
/// ("sqlcipher not initialized"). The first store opened in a process initialises both
/// through an in-memory connection while the others wait. If that open fails, the store's
/// own open reports the error.
///
/// SQLCipher's own log (to stderr, or the platform's log on phones) is turned off for the
/// process: every failure it logs (a page that does not decrypt: a wrong key, or a file
/// made with the older page authentication, tried first) comes back as an error, which
/// the store reports in its own words.
fn sqlite_initialised() {
    static READY: std::sync::Once = std::sync::Once::new();
    READY.call_once(|| {
        if let Ok(conn) = Connection::open_in_memory() {
            let _ = conn.execute_batch("PRAGMA cipher_log_level = NONE;");
        }
    });
}

impl Store {
    /// Opens the store file at `path`, unencrypted, creating it (owner-only on unix) if it
    /// does not exist; its directory must exist. A file from a newer schema is refused and
    /// left untouched.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, None)
    }

    /// Opens the store file at `path` encrypted with `key` (creating it, encrypted, if it
    /// does not exist). A file encrypted with another key, or not encrypted, is refused
    /// with [`StoreError::Locked`] and left untouched.
    pub fn open_encrypted(path: &Path, key: &StoreKey) -> Result<Store, StoreError> {
        Store::open_with(path, Some(key))
    }

    fn open_with(path: &Path, key: Option<&StoreKey>) -> Result<Store, StoreError> {
        sqlite_initialised();
        create_private_file(path)?;
        let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
        let locked = || StoreError::Locked { path: path.to_path_buf(), encrypted: key.is_some() };
        let (mut conn, page_auth) = match key {
            None => (connect(path, None)?.ok_or_else(locked)?, None),
            // A file made before pages were authenticated with SHA-256 keeps SHA-512.
            Some(key) => match connect(path, Some((key, PageAuth::Sha256)))? {
                Some(conn) => (conn, Some(PageAuth::Sha256)),
                None => {
                    let conn = connect(path, Some((key, PageAuth::Sha512)))?;
                    (conn.ok_or_else(locked)?, Some(PageAuth::Sha512))
                }
            },
        };
        conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS)).map_err(open_err)?;
        // Plans that never depend on the values bound: otherwise SQLite marks a statement
        // whose plan might (`doc = ?1 AND id > ?2` is one) to be compiled again whenever
        // its bindings are cleared, and the statement cache clears them each time a
        // statement goes back to it, so every use of such a statement compiled it anew.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(open_err)?;
        schema::check_version(&conn, path)?;
        conn.pragma_update(None, "journal_mode", "WAL").doing("switching to WAL mode")?;
        conn.pragma_update(None, "synchronous", "FULL").doing("setting synchronous writes")?;
        schema::migrate(&mut conn, path)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            key: key.cloned(),
            page_auth,
            compaction: None,
            compact_min_bytes: COMPACT_MIN_BYTES,
        })
    }

    /// Leaves copying the write-ahead log into the database file to another connection
    /// ([`Store::checkpoint`], on a thread of its own), so that a write here never waits
    /// for it: once per [`CHECKPOINT_NUDGE_PAGES`] pages written to the log, `nudge` is
    /// called (it should be quick: it runs inside the write). Not after every write once
    /// the log is that long: a checkpoint syncs both the log and the database file, so
    /// that would add two syncs to every write, most of them to copy a few pages. This
    /// connection copies the log itself only past [`CHECKPOINT_BACKSTOP_PAGES`], should
    /// the other fall behind.
    pub fn leave_checkpoints(
        &mut self,
        nudge: impl Fn() + Send + 'static,
    ) -> Result<(), StoreError> {
        // Pages in the log when the other connection was last asked: it is asked again
        // once as many more are written, not after every write while the log is long.
        let mut asked_at = 0;
        self.conn
            .wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: std::ffi::c_int| {
                let pages = i64::from(pages);
                if pages < asked_at {
                    // The log was copied whole and started again.
                    asked_at = 0;
                }
                if pages >= CHECKPOINT_BACKSTOP_PAGES {
                    // A passive checkpoint: one that cannot copy everything leaves the
                    // rest, and the write stands either way.
                    let _ = wal.checkpoint_v2(rusqlite::wal::CheckpointMode::PASSIVE);
                } else if pages - asked_at >= CHECKPOINT_NUDGE_PAGES {
                    asked_at = pages;
                    nudge();
                }
                Ok(())
            }))
            .doing("leaving checkpoints to another connection")
    }

    /// Leaves compacting documents to another connection ([`Store::chunks_to_compact`],
    /// on a thread of its own, then [`Store::finish_compaction`] here), so that a write
    /// here never loads and saves a whole document: a write that takes a document's
    /// incremental chunks past the compaction rule appends its chunk as usual and calls
    /// `ask` with the document (it should be quick: it runs inside the write). This
    /// connection compacts inside its write only past [`COMPACT_BACKSTOP_FACTOR`] times
    /// the rule, should the other fall behind.
    pub fn leave_compaction(&mut self, ask: impl Fn(DocId) + Send + 'static) {
        self.compaction = Some(AskCompaction(Box::new(ask)));
    }

    /// Sets the floor of the compaction rule for this connection's writes
    /// ([`COMPACT_MIN_BYTES`] unless set): a document's incremental chunks are compacted
    /// once they exceed both its snapshot and this. Lower compacts young documents sooner,
    /// at the cost of more compactions.
    pub fn set_compact_min_bytes(&mut self, bytes: u64) {
        self.compact_min_bytes = bytes;
    }

    /// The compaction rule for a document with this row, for this connection's writes.
    pub(crate) fn compaction_rule(&self, summary: &DocSummary) -> u64 {
        compaction_rule(summary, self.compact_min_bytes)
    }

    /// Asks the connection compaction is left to for `id`, if it is left to one.
    pub(crate) fn ask_compaction(&self, id: DocId) {
        if let Some(ask) = &self.compaction {
            (ask.0)(id);
        }
    }

    /// Copies what it can of the write-ahead log into the database file, without waiting
    /// for, or holding up, a write on another connection (a passive checkpoint). Returns
    /// the pages in the log and how many of them are copied.
    pub fn checkpoint(&self) -> Result<(i64, i64), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| Ok((row.get(1)?, row.get(2)?)))
            .doing("copying the log into the database")
    }

    /// How this store's pages are authenticated, if it is encrypted.
    pub fn page_auth(&self) -> Option<PageAuth> {
        self.page_auth
    }

    /// The key this store's file is encrypted with, if it is (for opening it again, from
    /// another thread).
    pub fn key(&self) -> Option<&StoreKey> {
        self.key.as_ref()
    }

    /// The connection, for the other modules of this crate.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The connection, mutably, for transactions in the other modules of this crate.
    pub(crate) fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A value of the home's profile.
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| row.get(0))
            .optional()
            .doing("reading the home's profile")
    }

    /// Sets a value of the home's profile.
    pub fn meta_set(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![key, value],
            )
            .doing("saving the home's profile")?;
        Ok(())
    }

    /// Stores signed membership ops of `team`, keyed by their hash, in one transaction.
    /// Ops already stored are skipped; returns how many were new.
    pub fn insert_ops(
        &mut self,
        team: TeamId,
        ops: &[(OpHash, Vec<u8>)],
    ) -> Result<usize, StoreError> {
        let doing = "saving membership changes";
        let tx = self.write_tx(doing)?;
        let mut inserted = 0;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO ops (hash, team, bytes, checksum) VALUES (?1, ?2, ?3, ?4)",
                )
                .doing(doing)?;
            for (hash, bytes) in ops {
                let sum = blake3::hash(bytes);
                inserted += stmt
                    .execute(params![hash.as_bytes(), team.as_bytes(), bytes, sum.as_bytes()])
                    .doing(doing)?;
            }
        }
        tx.commit().doing(doing)?;
        Ok(inserted)
    }

    /// The membership ops of `team`, in the order they were stored, each checked against
    /// its checksum.
    pub fn ops(&self, team: TeamId) -> Result<Vec<Vec<u8>>, StoreError> {
        let doing = "reading membership changes";
        let mut stmt = self
            .conn
            .prepare_cached("SELECT hash, bytes, checksum FROM ops WHERE team = ?1 ORDER BY rowid")
            .doing(doing)?;
        let rows = stmt.query_map([team.as_bytes()], op_row).doing(doing)?;
        let rows = rows.collect::<Result<Vec<_>, _>>().doing(doing)?;
        rows.into_iter().map(|(hash, bytes, sum)| check_op(&hash, bytes, &sum)).collect()
    }

    /// How many membership ops of `team` are stored: ops are only ever added, so a
    /// count that moved means the log grew.
    pub fn op_count(&self, team: TeamId) -> Result<usize, StoreError> {
        let doing = "counting a team's membership changes";
        let mut stmt =
            self.conn.prepare_cached("SELECT COUNT(*) FROM ops WHERE team = ?1").doing(doing)?;
        let count: i64 =
            stmt.query_row(rusqlite::params![team.as_bytes()], |row| row.get(0)).doing(doing)?;
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    /// How many documents of `team` are stored.
    pub fn doc_count(&self, team: TeamId) -> Result<usize, StoreError> {
        let doing = "counting a team's documents";
        let mut stmt =
            self.conn.prepare_cached("SELECT COUNT(*) FROM docs WHERE team = ?1").doing(doing)?;
        let count: i64 =
            stmt.query_row(rusqlite::params![team.as_bytes()], |row| row.get(0)).doing(doing)?;
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    /// The teams with at least one stored op.
    pub fn teams(&self) -> Result<Vec<TeamId>, StoreError> {
        let doing = "listing teams";
        let mut stmt =
            self.conn.prepare_cached("SELECT DISTINCT team FROM ops ORDER BY team").doing(doing)?;
        let rows = stmt.query_map([], |row| row.get::<_, Vec<u8>>(0)).doing(doing)?;
        let rows = rows.collect::<Result<Vec<_>, _>>().doing(doing)?;
        rows.iter()
            .map(|t| {
                TeamId::from_slice(t)
                    .map_err(|e| StoreError::Damaged { table: "ops", detail: e.to_string() })
            })
            .collect()
    }

    /// Every document's summary, or one team's, from one query (no document is loaded).
    pub fn docs(&self, team: Option<TeamId>) -> Result<Vec<DocSummary>, StoreError> {
        doc::read_summaries(&self.conn, team)
    }

    /// One document's summary, if it is stored (the document is not loaded).
    pub fn doc_summary(&self, id: DocId) -> Result<Option<DocSummary>, StoreError> {
        doc::read_summary(&self.conn, id)
    }

    /// Stores a new document from its genesis state and returns it loaded. If the document
    /// already exists, returns the stored one and ignores `genesis`. The returned copy has
    /// a fresh random actor, as from [`Store::load_doc`]; set the device's actor in
    /// [`Store::update_doc`].
    pub fn create_doc(
        &mut self,
        meta: &DocMeta,
        genesis: &Automerge,
    ) -> Result<StoredDoc, StoreError> {
        let doing = "adding a document";
        let tx = self.write_tx(doing)?;
        if let Some(stored) = doc::read_summary(&tx, meta.id)? {
            check_same_meta(meta, &stored)?;
        } else {
            let snapshot = validated_snapshot(meta.id, genesis)?;
            // Pieces of the same document arriving whole give way to it.
            crate::transfer::drop_pieces(&tx, meta.id)?;
            let summary = DocSummary {
                id: meta.id,
                team: meta.team,
                kind: meta.kind.clone(),
                heads: sorted_heads(genesis),
                snapshot_bytes: snapshot.len() as u64,
                incremental_bytes: 0,
                chunks: 1,
                updated_at_ms: now_ms(),
                verified: true,
            };
            doc::insert_summary(&tx, &summary)?;
            doc::append_chunk(&tx, meta.id, true, &snapshot)?;
        }
        let stored = doc::load(&tx, meta.id)?.ok_or(StoreError::UnknownDoc(meta.id))?;
        tx.commit().doing(doing)?;
        Ok(stored)
    }

    /// Loads a document, checking every chunk's checksum and the stored heads. A damaged
    /// document gives [`StoreError::Corrupt`]; other documents are unaffected.
    pub fn load_doc(&self, id: DocId) -> Result<Option<StoredDoc>, StoreError> {
        let tx = self.conn.unchecked_transaction().doing("loading a document")?;
        doc::load(&tx, id)
    }

    /// Changes a document and saves the change before returning.
    ///
    /// Takes the write lock first (so two processes never both write the next change of one
    /// actor), applies chunks other connections wrote, runs `f`, then appends the new
    /// changes as one chunk and updates the document's row in the same transaction. When
    /// incremental chunks exceed the snapshot and [`COMPACT_MIN_BYTES`] (or the floor set
    /// with [`Store::set_compact_min_bytes`]), the document is
    /// rewritten as one snapshot instead, still in that transaction. If `f` fails, or the
    /// write fails, nothing is written and `doc` is restored to its stored state.
    pub fn update_doc<R, E>(
        &mut self,
        doc: &mut StoredDoc,
        f: impl FnOnce(&mut Automerge) -> Result<R, E>,
    ) -> Result<R, UpdateError<E>> {
        self.update_doc_signed(doc, f, |_| Vec::new())
    }

    /// [`Store::update_doc`], storing in the same transaction the signatures `sign`
    /// gives for the changes `f` made (it is called with their hashes): a change is never
    /// on disk without the proof of who wrote it. Signatures are opaque bytes here, kept
    /// by document and change hash, and never touched by compaction.
    pub fn update_doc_signed<R, E>(
        &mut self,
        doc: &mut StoredDoc,
        f: impl FnOnce(&mut Automerge) -> Result<R, E>,
        sign: impl FnOnce(&[ChangeHash]) -> Vec<StoredSignature>,
    ) -> Result<R, UpdateError<E>> {
        let doing = "saving a change";
        let elsewhere = self.compaction.is_some();
        let floor = self.compact_min_bytes;
        let tx = self.write_tx(doing)?;
        let (summary, _) = doc::catch_up(&tx, doc)?;
        let value = match f(doc::automerge_mut(doc)) {
            Ok(value) => value,
            Err(rejected) => {
                drop(tx);
                self.restore(doc)?;
                return Err(UpdateError::Rejected(rejected));
            }
        };
        let new: Vec<ChangeHash> =
            doc.doc().get_changes(doc.saved_heads()).iter().map(|c| c.hash()).collect();
        let signatures = if new.is_empty() { Vec::new() } else { sign(&new) };
        let written = save_changes(&tx, doc, summary, floor, elsewhere).and_then(|saved| {
            doc::insert_signatures(&tx, doc.meta.id, &signatures)?;
            tx.commit().doing(doing)?;
            Ok(saved)
        });
        match written {
            Ok(saved) => {
                doc::mark_saved(doc, saved.last_chunk);
                // Asked once the chunk is committed, so that the compaction holds it.
                if saved.compaction_wanted {
                    self.ask_compaction(doc.meta.id);
                }
                Ok(value)
            }
            Err(err) => {
                self.restore(doc)?;
                Err(err.into())
            }
        }
    }

    /// Applies chunks that other connections or processes wrote since `doc` was loaded or
    /// last refreshed. Returns whether the document changed.
    pub fn refresh(&self, doc: &mut StoredDoc) -> Result<bool, StoreError> {
        let tx = self.conn.unchecked_transaction().doing("refreshing a document")?;
        Ok(doc::catch_up(&tx, doc)?.1)
    }

    /// The signatures stored for `id`'s changes: of those in `hashes`, or all (`None`).
    pub fn signatures(
        &self,
        id: DocId,
        hashes: Option<&[ChangeHash]>,
    ) -> Result<Vec<StoredSignature>, StoreError> {
        doc::read_signatures(&self.conn, id, hashes)
    }

    /// When this device first stored each signed change of `id` (written here or
    /// received), in milliseconds since the Unix epoch by this device's clock.
    pub fn received_times(&self, id: DocId) -> Result<Vec<(ChangeHash, i64)>, StoreError> {
        doc::received_times(&self.conn, id)
    }

    /// Rewrites a document's chunks as one snapshot, atomically. Copies loaded elsewhere
    /// keep working: their next refresh reads the snapshot.
    pub fn compact(&mut self, id: DocId) -> Result<CompactReport, StoreError> {
        let doing = "compacting a document";
        let tx = self.write_tx(doing)?;
        let mut summary = doc::read_summary(&tx, id)?.ok_or(StoreError::UnknownDoc(id))?;
        let stored = doc::load(&tx, id)?.ok_or(StoreError::UnknownDoc(id))?;
        let before_bytes = summary.stored_bytes();
        let snapshot = validated_snapshot(id, stored.doc())?;
        doc::replace_with_snapshot(&tx, id, &snapshot)?;
        summary.snapshot_bytes = snapshot.len() as u64;
        summary.incremental_bytes = 0;
        summary.chunks = 1;
        doc::update_summary(&tx, &summary)?;
        tx.commit().doing(doing)?;
        Ok(CompactReport { before_bytes, after_bytes: summary.snapshot_bytes })
    }

    /// Checks the whole store: SQLite's own integrity check, every op's checksum, and every
    /// document (chunk checksums, load, heads). Problems are reported, not returned as errors.
    pub fn check(&self) -> Result<IntegrityReport, StoreError> {
        let tx = self.conn.unchecked_transaction().doing("checking the store")?;
        let mut report = IntegrityReport::default();
        report.problems.extend(sqlite_problems(&tx)?);
        report.problems.extend(op_problems(&tx)?);
        report.problems.extend(orphan_chunk_problems(&tx)?);
        for id in doc_ids(&tx, &mut report.problems)? {
            report.docs_checked += 1;
            match doc::load(&tx, id) {
                Ok(_) => {}
                Err(StoreError::Corrupt { doc, detail }) => {
                    report.problems.push(Problem { doc: Some(doc), detail });
                }
                Err(other) => return Err(other),
            }
        }
        Ok(report)
    }

    /// The saved sync state with `peer` for `doc`.
    pub fn sync_state(&self, peer: DeviceId, doc: DocId) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .query_row(
                "SELECT state FROM sync_states WHERE peer = ?1 AND doc = ?2",
                params![peer.as_bytes(), doc.as_bytes()],
                |row| row.get(0),
            )
            .optional()
            .doing("reading a sync state")
    }

    /// Saves the sync states with `peer` of the documents in `states`, in one
    /// transaction: a session that ends saves those of every document it spoke of, with
    /// one synced write, not one each.
    pub fn set_sync_states<'s>(
        &mut self,
        peer: DeviceId,
        states: impl IntoIterator<Item = (DocId, &'s [u8])>,
    ) -> Result<(), StoreError> {
        let doing = "saving sync states";
        let tx = self.write_tx(doing)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO sync_states (peer, doc, state) VALUES (?1, ?2, ?3)",
                )
                .doing(doing)?;
            for (doc, state) in states {
                stmt.execute(params![peer.as_bytes(), doc.as_bytes(), state]).doing(doing)?;
            }
        }
        tx.commit().doing(doing)
    }

    /// The last known addresses of `peer` and when they were seen (ms since the epoch).
    pub fn peer_addrs(&self, peer: DeviceId) -> Result<Option<(String, i64)>, StoreError> {
        self.conn
            .query_row(
                "SELECT addrs, updated_at_ms FROM peers WHERE device = ?1",
                [peer.as_bytes()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .doing("reading a peer's addresses")
    }

    /// Saves the addresses of `peer`, seen at `at_ms` (ms since the epoch).
    pub fn set_peer_addrs(
        &mut self,
        peer: DeviceId,
        addrs: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO peers (device, addrs, updated_at_ms) VALUES (?1, ?2, ?3)",
                params![peer.as_bytes(), addrs, at_ms],
            )
            .doing("saving a peer's addresses")?;
        Ok(())
    }

    /// Shortens the busy timeout, so tests of a held lock finish quickly.
    #[cfg(test)]
    pub(crate) fn set_busy_timeout_ms(&self, timeout_ms: u64) -> Result<(), StoreError> {
        self.conn.busy_timeout(Duration::from_millis(timeout_ms)).doing("setting the busy timeout")
    }

    /// Takes the write lock now (`BEGIN IMMEDIATE`), waiting up to [`BUSY_TIMEOUT_MS`].
    pub(crate) fn write_tx(
        &mut self,
        doing: &'static str,
    ) -> Result<rusqlite::Transaction<'_>, StoreError> {
        self.conn.transaction_with_behavior(TransactionBehavior::Immediate).doing(doing)
    }

    /// Brings `doc` back to its stored state, discarding changes that were not saved.
    fn restore(&self, doc: &mut StoredDoc) -> Result<(), StoreError> {
        if sorted_heads(doc.doc()) == doc.saved_heads() {
            return Ok(());
        }
        let id = doc.meta.id;
        let actor = doc.doc().get_actor().clone();
        let mut fresh = self.load_doc(id)?.ok_or(StoreError::UnknownDoc(id))?;
        doc::automerge_mut(&mut fresh).set_actor(actor);
        *doc = fresh;
        Ok(())
    }
}

/// What [`save_changes`] wrote.
struct Saved {
    /// The id of the chunk written, if any.
    last_chunk: Option<i64>,
    /// Whether the document passed the compaction rule and is left to another connection.
    compaction_wanted: bool,
}

/// A connection to the file at `path`, unlocked with `key` and its page authentication
/// if given, and read once: `None` when that read finds the file is not readable so (a
/// wrong key, another page authentication, a key for a plain file or none for an
/// encrypted one).
fn connect(
    path: &Path,
    key: Option<(&StoreKey, PageAuth)>,
) -> Result<Option<Connection>, StoreError> {
    let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
    let conn = Connection::open(path).map_err(open_err)?;
    if let Some((key, auth)) = key {
        conn.execute_batch(&key.unlock(auth)).map_err(open_err)?;
    }
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())) {
        Ok(()) => Ok(Some(conn)),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) => Ok(None),
        Err(e) => Err(open_err(e)),
    }
}

/// The compaction rule for a document with this row and the rule's floor `floor`: its
/// incremental chunks are compacted once they exceed this many bytes.
fn compaction_rule(summary: &DocSummary, floor: u64) -> u64 {
    summary.snapshot_bytes.max(floor)
}

/// Writes the changes `doc` holds beyond its saved heads, as a chunk or, when incremental
/// chunks have grown past the compaction rule, as a snapshot replacing all chunks. With
/// compaction left to another connection (`elsewhere`), past the rule it writes the chunk
/// and says compaction is wanted, and compacts itself only past the backstop. `floor` is
/// the rule's floor ([`Store::set_compact_min_bytes`]).
fn save_changes(
    conn: &Connection,
    doc: &StoredDoc,
    mut summary: DocSummary,
    floor: u64,
    elsewhere: bool,
) -> Result<Saved, StoreError> {
    let id = doc.meta.id;
    let bytes = doc::unsaved_bytes(doc);
    if bytes.is_empty() {
        return Ok(Saved { last_chunk: None, compaction_wanted: false });
    }
    summary.heads = sorted_heads(doc.doc());
    summary.updated_at_ms = now_ms();
    let incremental = summary.incremental_bytes + bytes.len() as u64;
    let rule = compaction_rule(&summary, floor);
    let backstop = rule.saturating_mul(COMPACT_BACKSTOP_FACTOR);
    let compact_here = incremental > if elsewhere { backstop } else { rule };
    let last_chunk = if compact_here {
        let snapshot = validated_snapshot(id, doc.doc())?;
        summary.snapshot_bytes = snapshot.len() as u64;
        summary.incremental_bytes = 0;
        summary.chunks = 1;
        doc::replace_with_snapshot(conn, id, &snapshot)?
    } else {
        summary.incremental_bytes = incremental;
        summary.chunks += 1;
        doc::append_chunk(conn, id, false, &bytes)?
    };
    doc::update_summary(conn, &summary)?;
    let compaction_wanted = elsewhere && !compact_here && incremental > rule;
    Ok(Saved { last_chunk: Some(last_chunk), compaction_wanted })
}

/// A snapshot of `doc`, checked to load back with the same heads before it may replace
/// the document's chunks. Changes still waiting for what they depend on are left out
/// (Automerge would append them): a snapshot holds what its heads say, so that a device
/// sent it whole reads the same heads from it as it loads; the peer that sent them sends
/// them again, as this device's heads still lack them.
pub(crate) fn validated_snapshot(id: DocId, doc: &Automerge) -> Result<Vec<u8>, StoreError> {
    let snapshot =
        doc.save_with_options(SaveOptions { retain_orphans: false, ..SaveOptions::default() });
    let reloaded = Automerge::load(&snapshot)
        .map_err(|e| StoreError::corrupt(id, format!("its new snapshot does not load: {e}")))?;
    if sorted_heads(&reloaded) != sorted_heads(doc) {
        return Err(StoreError::corrupt(id, "its new snapshot loads with different heads"));
    }
    Ok(snapshot)
}

pub(crate) fn check_same_meta(meta: &DocMeta, stored: &DocSummary) -> Result<(), StoreError> {
    if stored.team == meta.team && stored.kind == meta.kind {
        return Ok(());
    }
    Err(StoreError::MetaMismatch {
        doc: meta.id,
        detail: format!(
            "stored as {} of team {}, asked for {} of team {}",
            stored.kind, stored.team, meta.kind, meta.team
        ),
    })
}

/// This device's clock, in ms since the epoch. Only the store reads it, for `updated_at_ms`.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Creates the store file if missing, readable by its owner only (unix).
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::CreateFile { path: path.to_path_buf(), source }),
    }
}

type OpRow = (Vec<u8>, Vec<u8>, Vec<u8>);

fn op_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<OpRow> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

fn check_op(hash: &[u8], bytes: Vec<u8>, sum: &[u8]) -> Result<Vec<u8>, StoreError> {
    if blake3::hash(&bytes).as_bytes().as_slice() == sum {
        return Ok(bytes);
    }
    let hash = OpHash::from_slice(hash).map(|h| h.to_string()).unwrap_or_else(|e| e.to_string());
    Err(StoreError::Damaged { table: "ops", detail: format!("op {hash} fails its checksum") })
}

fn sqlite_problems(conn: &Connection) -> Result<Vec<Problem>, StoreError> {
    let doing = "checking the store file";
    let mut stmt = conn.prepare_cached("PRAGMA integrity_check").doing(doing)?;
    let rows = stmt.query_map([], |row| row.get::<_, String>(0)).doing(doing)?;
    let lines = rows.collect::<Result<Vec<_>, _>>().doing(doing)?;
    Ok(lines
        .into_iter()
        .filter(|line| line != "ok")
        .map(|line| Problem { doc: None, detail: format!("SQLite reports: {line}") })
        .collect())
}

fn op_problems(conn: &Connection) -> Result<Vec<Problem>, StoreError> {
    let doing = "checking membership changes";
    let mut stmt = conn.prepare_cached("SELECT hash, bytes, checksum FROM ops").doing(doing)?;
    let rows = stmt.query_map([], op_row).doing(doing)?;
    let mut problems = Vec::new();
    for row in rows {
        let (hash, bytes, sum) = row.doing(doing)?;
        if let Err(e) = check_op(&hash, bytes, &sum) {
            problems.push(Problem { doc: None, detail: e.to_string() });
        }
    }
    Ok(problems)
}

fn orphan_chunk_problems(conn: &Connection) -> Result<Vec<Problem>, StoreError> {
    let doing = "checking document chunks";
    let orphans: i64 = conn
        .query_row(
            "SELECT count(*) FROM chunks WHERE doc NOT IN (SELECT id FROM docs)
             AND doc NOT IN (SELECT doc FROM arriving)",
            [],
            |row| row.get(0),
        )
        .doing(doing)?;
    Ok((orphans > 0)
        .then(|| Problem {
            doc: None,
            detail: format!("{orphans} chunks belong to no known document"),
        })
        .into_iter()
        .collect())
}

/// Every document id; rows with a malformed id are reported as problems.
fn doc_ids(conn: &Connection, problems: &mut Vec<Problem>) -> Result<Vec<DocId>, StoreError> {
    let doing = "listing documents";
    let mut stmt = conn.prepare_cached("SELECT id FROM docs ORDER BY id").doing(doing)?;
    let rows = stmt.query_map([], |row| row.get::<_, Vec<u8>>(0)).doing(doing)?;
    let mut ids = Vec::new();
    for row in rows {
        match DocId::from_slice(&row.doing(doing)?) {
            Ok(id) => ids.push(id),
            Err(e) => problems.push(Problem { doc: None, detail: format!("a document row: {e}") }),
        }
    }
    Ok(ids)
}
