//! Large documents received whole, written to the store a piece at a time.
//!
//! A month of notes with photos can be tens of MiB. Written in one transaction it holds
//! the owner thread, and the store's only write lock, for as long as the disk takes
//! (half a second for 50 MiB on the machine measured), and every live edit from every
//! other peer waits behind it. So a document larger than [`PIECE_BYTES`] is written in
//! pieces of that size, one per turn of the owner thread ([`Replica::poll_background`]),
//! each in a transaction of its own, with whatever else is queued for the owner taken in
//! between. Once every piece is written, one small transaction stores the document's row
//! and signatures, and its check starts as for any document received whole
//! (`crate::verify`).
//!
//! Until then the document is neither held nor passed on: the session that received it
//! counts it as being checked. The pieces written are no part of any document
//! ([`care_store::Store::add_piece`]); a write that stores the document meanwhile (a note
//! written here, the same document from another peer) drops them, and so does the next
//! start of a home that stopped while writing them, the document then being fetched
//! again. At most [`ARRIVING_BYTES_MAX`] bytes are held while written: past that a document
//! is written at once, in one transaction, as a small one is.
//!
//! [`Replica::poll_background`]: care_sync::Replica::poll_background

use std::collections::VecDeque;

use automerge::ChangeHash;
use care_core::{DocId, DocKind, TeamId};
use care_store::{DocMeta, Imported, StoredSignature};
use care_sync::{Change, Import};

use crate::error::Result;
use crate::home::Home;

/// Bytes of one piece: about what the disk writes in a few milliseconds, so that a live
/// edit arriving while a large document is written waits for one piece at most.
pub(crate) const PIECE_BYTES: usize = 128 << 10;

/// Most bytes of documents received whole held while they are written: bounds the memory
/// they hold when peers send many at once.
pub(crate) const ARRIVING_BYTES_MAX: usize = 256 << 20;

/// A document received whole, being written.
#[derive(Debug)]
struct Document {
    team: TeamId,
    doc: DocId,
    kind: DocKind,
    heads: Vec<ChangeHash>,
    signatures: Vec<StoredSignature>,
    bytes: Vec<u8>,
    /// Bytes written so far.
    written: usize,
}

/// The documents received whole that are being written, in the order received.
#[derive(Debug, Default)]
pub(crate) struct Arriving {
    documents: VecDeque<Document>,
}

impl Arriving {
    /// Whether `doc` is being written.
    pub(crate) fn holds(&self, doc: DocId) -> bool {
        self.documents.iter().any(|d| d.doc == doc)
    }

    /// Bytes held in memory: every document being written, whole, until it is stored.
    fn held_bytes(&self) -> usize {
        self.documents.iter().map(|d| d.bytes.len()).sum()
    }

    /// Whether nothing waits to be written.
    pub(crate) fn is_empty(&self) -> bool {
        self.documents.is_empty()
    }
}

impl Home {
    /// Takes a document received whole to write in pieces, if it is large enough for
    /// that, there is room, and a node runs this home (it gives the home its turns);
    /// gives the bytes (and signatures) back otherwise. `Ok(Import::Checking)` once taken.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn take_arriving(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        bytes: Vec<u8>,
        heads: &[ChangeHash],
        signatures: Vec<StoredSignature>,
    ) -> std::result::Result<Import, (Vec<u8>, Vec<StoredSignature>)> {
        // The same document from a second peer while the first is written: the session
        // waits for the first's verdict, as for a document being checked.
        if self.arriving.holds(doc) {
            return Ok(Import::Checking);
        }
        let room = self.arriving.held_bytes() + bytes.len() <= ARRIVING_BYTES_MAX;
        if bytes.len() <= PIECE_BYTES || !room || self.waker.is_none() || self.verifier.is_none() {
            return Err((bytes, signatures));
        }
        let heads = heads.to_vec();
        let document = Document { team, doc, kind, heads, signatures, bytes, written: 0 };
        self.arriving.documents.push_back(document);
        self.wake();
        Ok(Import::Checking)
    }

    /// Writes the next piece of the first document being written; once all are, stores
    /// the document and starts its check. Asks for another turn while pieces remain.
    pub(crate) fn write_arriving_piece(&mut self) {
        let Some(document) = self.arriving.documents.front_mut() else { return };
        let end = (document.written + PIECE_BYTES).min(document.bytes.len());
        let written = self.store.add_piece(document.doc, &document.bytes[document.written..end]);
        match written {
            Ok(true) => document.written = end,
            // Stored meanwhile by another write: the session merges it when it looks again.
            Ok(false) => self.give_up_arriving(None),
            Err(e) => self.give_up_arriving(Some(e.to_string())),
        }
        if self.arriving.documents.front().is_some_and(|d| d.written == d.bytes.len())
            && let Err(e) = self.store_arrived()
        {
            tracing::warn!("cannot store a document received whole: {e}");
        }
        if !self.arriving.is_empty() {
            self.wake();
        }
    }

    /// Stores the first document being written, all of whose pieces are, and starts
    /// its check.
    fn store_arrived(&mut self) -> Result<()> {
        let Some(document) = self.arriving.documents.pop_front() else { return Ok(()) };
        let Document { team, doc, kind, heads, signatures, bytes, .. } = document;
        let meta = DocMeta { id: doc, team, kind: kind.to_string() };
        let stored = self.store.import_pieces(&meta, bytes.len() as u64, &heads, &signatures);
        match stored {
            Ok(Imported::Stored) => {
                let bytes = self.keep_whole(doc, &heads, bytes);
                let checking = self.check_received(team, doc, kind, heads, bytes);
                if !matches!(checking, Ok(Import::Checking)) {
                    // Not checked on a worker: it is checked on first load, and its
                    // session looks at it now.
                    self.changed.push(Change::Doc { team, doc, kind });
                }
                checking?;
            }
            Ok(Imported::AlreadyHeld | Imported::PiecesMissing) => {
                self.changed.push(Change::Doc { team, doc, kind });
            }
            Err(e) => {
                self.changed.push(Change::Doc { team, doc, kind });
                let _ = self.store.drop_pieces(doc);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Stops writing the first document being written, dropping what was written of it;
    /// its session looks at it again (and fetches it anew if it is not held).
    fn give_up_arriving(&mut self, why: Option<String>) {
        let Some(document) = self.arriving.documents.pop_front() else { return };
        if let Some(why) = why {
            tracing::warn!("cannot store a document received whole: {why}");
        }
        let _ = self.store.drop_pieces(document.doc);
        let Document { team, doc, kind, .. } = document;
        self.changed.push(Change::Doc { team, doc, kind });
    }

    /// Asks the node running this home for a turn of [`Replica::poll_background`].
    ///
    /// [`Replica::poll_background`]: care_sync::Replica::poll_background
    fn wake(&self) {
        if let Some(waker) = &self.waker {
            (crate::verify::lock(waker))();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use care_core::{NoteStream, Role};
    use care_sync::Replica;

    use super::*;
    use crate::test_support::{add_member, note_texts, sync, temp_dirs, write_note};

    /// Letters that do not compress, so that a few notes make a document of many pieces.
    fn letters(seed: &mut u64, len: usize) -> String {
        (0..len)
            .map(|_| {
                *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                char::from(b'a' + (*seed >> 59) as u8 % 26)
            })
            .collect()
    }

    /// Ada's team with Bea's device in it, then a month of Ada's notes Bea does not hold:
    /// the document, its bytes, heads and signatures as Ada would send it whole.
    struct Sent {
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        bytes: Vec<u8>,
        heads: Vec<ChangeHash>,
        signatures: Vec<care_core::ChangeSig>,
    }

    fn ada_sends_a_month(ada: &mut Home, bea: &mut Home) -> crate::error::Result<Sent> {
        let team = ada.create_team("Rosa's team")?;
        add_member(ada, team, bea, Role::Worker)?;
        bea.add_ops(team, &ada.signed_ops(team)?)?;
        let mut seed = 7;
        for n in 0..240 {
            write_note(ada, &format!("visit {n}: {}", letters(&mut seed, 3_000)))?;
        }
        let kind = DocKind::Notes { stream: NoteStream::Care, month: ada.now().month() };
        let doc = kind.doc_id(team);
        let bytes = ada.snapshot(team, doc)?.map(|b| b.to_vec()).unwrap_or_default();
        assert!(bytes.len() > 3 * PIECE_BYTES, "{} bytes", bytes.len());
        let heads = ada.heads(team, doc)?.unwrap_or_default();
        let signatures = ada.signatures(team, doc, None)?;
        Ok(Sent { team, doc, kind, bytes, heads, signatures })
    }

    /// Waits until the home asks for its next turn.
    fn next_turn(asked: &mpsc::Receiver<()>) -> crate::error::Result<()> {
        asked
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| crate::Error::Invalid("the home stopped asking for turns".into()))
    }

    /// Bea's home as a node runs it: each call of the waker is a turn.
    fn with_turns(bea: &mut Home) -> mpsc::Receiver<()> {
        let (turns, asked) = mpsc::channel();
        bea.set_waker(Box::new(move || {
            let _ = turns.send(());
        }));
        asked
    }

    #[test]
    fn a_large_document_is_written_a_piece_a_turn_and_used_once_checked() -> crate::error::Result<()>
    {
        let dirs = temp_dirs(2)?;
        let mut ada = Home::init(dirs[0].path(), "Ada")?;
        let mut bea = Home::init(dirs[1].path(), "Bea")?;
        let sent = ada_sends_a_month(&mut ada, &mut bea)?;
        let Sent { team, doc, kind, bytes, heads, signatures } = sent;
        let asked = with_turns(&mut bea);
        let imported = bea.import_snapshot(team, doc, kind, bytes.clone(), &heads, &signatures)?;
        assert_eq!(imported, Import::Checking);
        // The same document from a second peer meanwhile waits for the first.
        let again = bea.import_snapshot(team, doc, kind, bytes.clone(), &heads, &signatures)?;
        assert_eq!(again, Import::Checking);
        let pieces = bytes.len().div_ceil(PIECE_BYTES);
        let mut turns = 0;
        bea.changed.clear();
        while !bea.changed.contains(&Change::Doc { team, doc, kind }) {
            next_turn(&asked)?;
            // Until every piece is written and the check is done, it is not used.
            assert!(
                !bea.holds(team, doc)? || bea.verifier.as_ref().is_some_and(|v| v.is_pending(doc))
            );
            assert_eq!(bea.snapshot(team, doc)?.map(|b| b.to_vec()), None);
            bea.poll_background();
            turns += 1;
            assert!(turns < 10 * pieces, "{turns} turns for {pieces} pieces");
        }
        // One piece a turn, then a turn for the verdict.
        assert!(turns > pieces, "{turns} turns for {pieces} pieces");
        assert!(bea.arriving.is_empty());
        assert!(!bea.store().is_unverified(doc)?, "checked");
        assert_eq!(bea.store().doc_bytes(doc)?, Some(bytes));
        assert_eq!(note_texts(&mut bea)?, note_texts(&mut ada)?);
        assert!(bea.store().check()?.problems.is_empty());
        Ok(())
    }

    #[test]
    fn a_note_written_here_while_the_document_arrives_takes_its_place_and_loses_nothing()
    -> crate::error::Result<()> {
        let dirs = temp_dirs(2)?;
        let mut ada = Home::init(dirs[0].path(), "Ada")?;
        let mut bea = Home::init(dirs[1].path(), "Bea")?;
        let Sent { team, doc, kind, bytes, heads, signatures } =
            ada_sends_a_month(&mut ada, &mut bea)?;
        let asked = with_turns(&mut bea);
        bea.import_snapshot(team, doc, kind, bytes, &heads, &signatures)?;
        next_turn(&asked)?;
        bea.poll_background();
        // Bea writes a note of the same month: the document is hers now, and the pieces
        // written of Ada's give way.
        write_note(&mut bea, "Bea's note, written as Ada's month arrives")?;
        bea.changed.clear();
        bea.poll_background();
        assert!(bea.arriving.is_empty(), "gave up writing it");
        assert!(bea.changed.contains(&Change::Doc { team, doc, kind }), "its session looks again");
        assert!(bea.store().check()?.problems.is_empty());
        assert_eq!(note_texts(&mut bea)?, vec!["Bea's note, written as Ada's month arrives"]);
        // The next exchange brings both together, on both devices.
        sync(&mut ada, &mut bea)?;
        let texts = note_texts(&mut bea)?;
        assert_eq!(texts.len(), 241);
        assert_eq!(note_texts(&mut ada)?, texts);
        Ok(())
    }

    #[test]
    fn a_device_stopped_while_writing_pieces_fetches_the_document_again() -> crate::error::Result<()>
    {
        let dirs = temp_dirs(2)?;
        let mut ada = Home::init(dirs[0].path(), "Ada")?;
        let mut bea = Home::init(dirs[1].path(), "Bea")?;
        let Sent { team, doc, kind, bytes, heads, signatures } =
            ada_sends_a_month(&mut ada, &mut bea)?;
        let asked = with_turns(&mut bea);
        bea.import_snapshot(team, doc, kind, bytes, &heads, &signatures)?;
        for _ in 0..2 {
            next_turn(&asked)?;
            bea.poll_background();
        }
        // Stopped between two pieces: what was written goes, and nothing is held.
        drop(bea);
        let mut bea = Home::open(dirs[1].path())?;
        assert!(!bea.holds(team, doc)?);
        assert!(bea.store().check()?.problems.is_empty());
        assert_eq!(bea.store.drop_unfinished_pieces()?, 0, "dropped as the home opened");
        // The next exchange with Ada brings it whole again.
        sync(&mut ada, &mut bea)?;
        assert_eq!(note_texts(&mut bea)?, note_texts(&mut ada)?);
        assert_eq!(note_texts(&mut bea)?.len(), 240);
        Ok(())
    }
}
