//! Sealed documents, as a circle node keeps them: it holds no team key, so it stores what
//! devices hand it as received, with what it lists in clear (each change's hash and
//! dependencies), and works out from that listing which of them a device lacks.
//!
//! The store keeps both as opaque bytes, each with a BLAKE3 checksum checked when read
//! back: the caller encodes them. A document's sealed rows come in the order stored, and
//! a row is stored only when every change it follows is held, so that order follows
//! dependencies.

use automerge::ChangeHash;
use care_core::ids::{DocId, TeamId};
use rusqlite::{OptionalExtension, params};

use crate::error::{Doing, StoreError};
use crate::store::Store;

/// One sealed document of a circle node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRow {
    /// Its number: rows of a document are read in this order.
    pub seq: i64,
    /// What it lists in clear, as the caller encoded it.
    pub listing: Vec<u8>,
}

/// What a circle node knows of one document it holds sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedDocSummary {
    /// The document.
    pub id: DocId,
    /// Its team.
    pub team: TeamId,
    /// Its kind, as text.
    pub kind: String,
    /// The heads of every change its sealed rows hold, sorted.
    pub heads: Vec<ChangeHash>,
    /// How many sealed rows it has.
    pub rows: usize,
}

/// A sealed document to store, with what it replaces.
#[derive(Debug)]
pub struct NewSealed<'a> {
    /// The document.
    pub doc: DocId,
    /// Its team.
    pub team: TeamId,
    /// Its kind, as text.
    pub kind: &'a str,
    /// What it lists in clear, encoded.
    pub listing: &'a [u8],
    /// The sealed document, encoded.
    pub bytes: &'a [u8],
    /// The document's heads once it is stored.
    pub heads: &'a [ChangeHash],
    /// The rows it replaces (their changes are all among its own).
    pub replaces: &'a [i64],
}

impl Store {
    /// The documents of `team` held sealed.
    pub fn sealed_docs(&self, team: TeamId) -> Result<Vec<SealedDocSummary>, StoreError> {
        let doing = "listing sealed documents";
        let mut stmt = self
            .conn()
            .prepare_cached(
                "SELECT d.id, d.kind, d.heads, (SELECT COUNT(*) FROM sealed s WHERE s.doc = d.id)
                 FROM sealed_docs d WHERE d.team = ?1 ORDER BY d.id",
            )
            .doing(doing)?;
        let rows = stmt
            .query_map(params![team.as_bytes()], |row| {
                Ok((row.get::<_, Vec<u8>>(0)?, row.get(1)?, row.get::<_, Vec<u8>>(2)?, row.get(3)?))
            })
            .doing(doing)?
            .collect::<Result<Vec<(Vec<u8>, String, Vec<u8>, i64)>, _>>()
            .doing(doing)?;
        rows.into_iter()
            .map(|(id, kind, heads, rows)| summary(team, &id, kind, &heads, rows))
            .collect()
    }

    /// One document held sealed, if it is.
    pub fn sealed_doc(&self, id: DocId) -> Result<Option<SealedDocSummary>, StoreError> {
        let doing = "reading a sealed document";
        let row = self
            .conn()
            .prepare_cached(
                "SELECT d.team, d.kind, d.heads, (SELECT COUNT(*) FROM sealed s WHERE s.doc = d.id)
                 FROM sealed_docs d WHERE d.id = ?1",
            )
            .doing(doing)?
            .query_row(params![id.as_bytes()], |row| {
                Ok((row.get::<_, Vec<u8>>(0)?, row.get(1)?, row.get::<_, Vec<u8>>(2)?, row.get(3)?))
            })
            .optional()
            .doing(doing)?;
        let Some((team, kind, heads, rows)) = row else {
            return Ok(None);
        };
        let team = TeamId::from_slice(&team).map_err(|e| damaged(e.to_string()))?;
        summary(team, id.as_bytes(), kind, &heads, rows).map(Some)
    }

    /// The sealed rows of a document, in order, with their listings (checksums checked).
    pub fn sealed_rows(&self, id: DocId) -> Result<Vec<SealedRow>, StoreError> {
        let doing = "reading sealed documents";
        let mut stmt = self
            .conn()
            .prepare_cached(
                "SELECT seq, listing, listing_sum FROM sealed WHERE doc = ?1 ORDER BY seq",
            )
            .doing(doing)?;
        let rows = stmt
            .query_map(params![id.as_bytes()], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get::<_, Vec<u8>>(2)?))
            })
            .doing(doing)?
            .collect::<Result<Vec<(i64, Vec<u8>, Vec<u8>)>, _>>()
            .doing(doing)?;
        rows.into_iter()
            .map(|(seq, listing, sum)| {
                check_sum(id, &listing, &sum)?;
                Ok(SealedRow { seq, listing })
            })
            .collect()
    }

    /// The sealed documents of rows `seqs` of `id`, in that order (checksums checked).
    pub fn sealed_bytes(&self, id: DocId, seqs: &[i64]) -> Result<Vec<Vec<u8>>, StoreError> {
        let doing = "reading sealed documents";
        let mut stmt = self
            .conn()
            .prepare_cached("SELECT bytes, bytes_sum FROM sealed WHERE doc = ?1 AND seq = ?2")
            .doing(doing)?;
        seqs.iter()
            .map(|seq| {
                let (bytes, sum): (Vec<u8>, Vec<u8>) = stmt
                    .query_row(params![id.as_bytes(), seq], |row| Ok((row.get(0)?, row.get(1)?)))
                    .doing(doing)?;
                check_sum(id, &bytes, &sum)?;
                Ok(bytes)
            })
            .collect()
    }

    /// Stores a sealed document, dropping the rows it replaces and setting the document's
    /// heads, in one transaction.
    pub fn add_sealed(&mut self, new: &NewSealed<'_>) -> Result<(), StoreError> {
        let doing = "storing a sealed document";
        let tx = self.write_tx(doing)?;
        let heads: Vec<u8> = new.heads.iter().flat_map(|h| h.0).collect();
        tx.execute(
            "INSERT INTO sealed_docs (id, team, kind, heads) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET heads = excluded.heads",
            params![new.doc.as_bytes(), new.team.as_bytes(), new.kind, heads],
        )
        .doing(doing)?;
        for seq in new.replaces {
            tx.execute(
                "DELETE FROM sealed WHERE doc = ?1 AND seq = ?2",
                params![new.doc.as_bytes(), seq],
            )
            .doing(doing)?;
        }
        tx.execute(
            "INSERT INTO sealed (doc, listing, listing_sum, bytes, bytes_sum)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                new.doc.as_bytes(),
                new.listing,
                blake3::hash(new.listing).as_bytes().as_slice(),
                new.bytes,
                blake3::hash(new.bytes).as_bytes().as_slice(),
            ],
        )
        .doing(doing)?;
        tx.commit().doing(doing)
    }

    /// Drops every document of `team` held in clear (a circle node's, from before it was
    /// given documents sealed only). Returns how many.
    pub fn forget_clear_docs(&mut self, team: TeamId) -> Result<usize, StoreError> {
        let doing = "dropping documents held in clear";
        let tx = self.write_tx(doing)?;
        let ids: Vec<Vec<u8>> = tx
            .prepare("SELECT id FROM docs WHERE team = ?1")
            .doing(doing)?
            .query_map(params![team.as_bytes()], |row| row.get(0))
            .doing(doing)?
            .collect::<Result<_, _>>()
            .doing(doing)?;
        for id in &ids {
            for sql in [
                "DELETE FROM chunks WHERE doc = ?1",
                "DELETE FROM signatures WHERE doc = ?1",
                "DELETE FROM sync_states WHERE doc = ?1",
                "DELETE FROM docs WHERE id = ?1",
            ] {
                tx.execute(sql, params![id]).doing(doing)?;
            }
        }
        tx.commit().doing(doing)?;
        Ok(ids.len())
    }
}

fn summary(
    team: TeamId,
    id: &[u8],
    kind: String,
    heads: &[u8],
    rows: i64,
) -> Result<SealedDocSummary, StoreError> {
    let id = DocId::from_slice(id).map_err(|e| damaged(e.to_string()))?;
    if !heads.len().is_multiple_of(32) {
        return Err(damaged(format!("heads of {} bytes", heads.len())));
    }
    let heads = heads
        .chunks_exact(32)
        .map(|h| ChangeHash(h.try_into().expect("chunks of 32 bytes")))
        .collect();
    Ok(SealedDocSummary { id, team, kind, heads, rows: usize::try_from(rows).unwrap_or(0) })
}

fn check_sum(doc: DocId, bytes: &[u8], sum: &[u8]) -> Result<(), StoreError> {
    if blake3::hash(bytes).as_bytes().as_slice() != sum {
        return Err(StoreError::corrupt(doc, "a sealed document does not match its checksum"));
    }
    Ok(())
}

fn damaged(detail: String) -> StoreError {
    StoreError::Damaged { table: "sealed_docs", detail }
}
