//! The store's tables, created and upgraded by migrations keyed on `PRAGMA user_version`.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{Doing, StoreError};

/// Migration steps: step `i` takes the file from schema `i` to schema `i + 1`. Append only.
const MIGRATIONS: &[&str] = &[
    // 1: the home's profile, membership ops, documents as chunks, and sync bookkeeping.
    "
    CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) STRICT;
    CREATE TABLE ops (
        hash BLOB PRIMARY KEY NOT NULL, team BLOB NOT NULL,
        bytes BLOB NOT NULL, checksum BLOB NOT NULL
    ) STRICT;
    CREATE INDEX ops_team ON ops (team);
    CREATE TABLE docs (
        id BLOB PRIMARY KEY NOT NULL, team BLOB NOT NULL, kind TEXT NOT NULL,
        heads BLOB NOT NULL, snapshot_bytes INTEGER NOT NULL,
        incremental_bytes INTEGER NOT NULL, chunks INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX docs_team ON docs (team);
    CREATE TABLE chunks (
        id INTEGER PRIMARY KEY AUTOINCREMENT, doc BLOB NOT NULL,
        is_snapshot INTEGER NOT NULL, data BLOB NOT NULL, checksum BLOB NOT NULL
    ) STRICT;
    CREATE INDEX chunks_doc ON chunks (doc, id);
    CREATE TABLE sync_states (
        peer BLOB NOT NULL, doc BLOB NOT NULL, state BLOB NOT NULL,
        PRIMARY KEY (peer, doc)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE peers (
        device BLOB PRIMARY KEY NOT NULL, addrs TEXT NOT NULL, updated_at_ms INTEGER NOT NULL
    ) STRICT;
    ",
    // 2: invitations this device issued, keyed by the hash of their one-time secret.
    "
    CREATE TABLE invites (
        secret_hash BLOB PRIMARY KEY NOT NULL, team BLOB NOT NULL, role TEXT NOT NULL,
        name TEXT NOT NULL, expires_at_ms INTEGER NOT NULL, used_at_ms INTEGER
    ) STRICT;
    ",
    // 3: whether a document has been loaded here since it arrived. A document received
    // whole from a peer is stored as received (0) and verified when first loaded (1).
    "
    ALTER TABLE docs ADD COLUMN verified INTEGER NOT NULL DEFAULT 1;
    ",
    // 4: an invitation may be for another device of an existing member (their member
    // id), rather than for a new member (NULL).
    "
    ALTER TABLE invites ADD COLUMN member BLOB;
    ",
    // 5: on a circle node, one-time invitations for one team each to hand it its log;
    // `team` is the team that used it.
    "
    CREATE TABLE circle_invites (
        secret_hash BLOB PRIMARY KEY NOT NULL, expires_at_ms INTEGER NOT NULL, team BLOB
    ) STRICT;
    ",
    // 6: the signatures of documents' changes, by document and change hash: kept apart
    // from the chunks, so that compaction never drops a proof of authorship. What a
    // signature was made in the context of (the membership heads its author saw) is
    // shared by many changes, and kept once in `signature_contexts`; `received_at_ms` is
    // when this device first stored the change (written or received).
    "
    CREATE TABLE signature_contexts (
        id INTEGER PRIMARY KEY, bytes BLOB NOT NULL UNIQUE
    ) STRICT;
    CREATE TABLE signatures (
        doc BLOB NOT NULL, hash BLOB NOT NULL, context INTEGER NOT NULL,
        signature BLOB NOT NULL, received_at_ms INTEGER NOT NULL, PRIMARY KEY (doc, hash)
    ) STRICT, WITHOUT ROWID;
    ",
    // 7: on a circle node, documents held sealed (it holds no team key): per document its
    // heads, and each sealed document as received with what it lists in clear, in the
    // order stored.
    "
    CREATE TABLE sealed_docs (
        id BLOB PRIMARY KEY NOT NULL, team BLOB NOT NULL, kind TEXT NOT NULL,
        heads BLOB NOT NULL
    ) STRICT;
    CREATE INDEX sealed_docs_by_team ON sealed_docs (team);
    CREATE TABLE sealed (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, doc BLOB NOT NULL, listing BLOB NOT NULL,
        listing_sum BLOB NOT NULL, bytes BLOB NOT NULL, bytes_sum BLOB NOT NULL
    ) STRICT;
    CREATE INDEX sealed_by_doc ON sealed (doc, seq);
    ",
    // 8: documents received whole that are being written piece by piece (their chunks
    // are stored before their row in `docs`), with the bytes written so far.
    "
    CREATE TABLE arriving (doc BLOB PRIMARY KEY NOT NULL, bytes INTEGER NOT NULL) STRICT;
    ",
];

/// The newest schema this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Refuses a file from a newer schema without writing to it.
pub(crate) fn check_version(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let found = user_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Applies the missing migration steps, one transaction each. Safe against another
/// process migrating the same file at the same time: the version is re-read under the lock.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    for (step, sql) in (1..).zip(MIGRATIONS) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .doing("upgrading the store's tables")?;
        check_version(&tx, path)?;
        if user_version(&tx)? < step {
            tx.execute_batch(sql).doing("upgrading the store's tables")?;
            tx.pragma_update(None, "user_version", step).doing("upgrading the store's tables")?;
        }
        tx.commit().doing("upgrading the store's tables")?;
    }
    Ok(())
}

fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
        .doing("reading the store's schema version")
}
