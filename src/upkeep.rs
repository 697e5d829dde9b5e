//! Upkeep of a home's store on a thread of its own, behind live work: copying the
//! write-ahead log into the database file, and compacting documents.
//!
//! SQLite copies the log into the database file (a checkpoint) inside whichever write
//! finds the log past a threshold: with large documents arriving, a live edit's write
//! would now and then wait 15 to 100 ms for it. Once a node runs a home, its connection
//! leaves checkpoints to this thread ([`care_store::Store::leave_checkpoints`]): it asks
//! for one once per MiB written to the log, and this thread copies what it can, beside
//! the writes (a passive checkpoint never holds one up).
//!
//! Compacting a document inside a write (saving it whole, loading that back to check it)
//! takes time that grows with the document: 10 to 20 ms for a month of 1,500 notes, on
//! the owner thread, between two live edits. Once a node runs a home, its connection
//! leaves that to this thread too ([`care_store::Store::leave_compaction`]): a write that
//! takes a document past the compaction rule asks for it, this thread reads the
//! document's chunks and makes their snapshot, and hands it to the owner of the home,
//! which puts it in place in one short write at its next turn
//! ([`Upkeep::compactions`]). A document is asked for once until its snapshot is handed
//! over, and the thread hands over one at a time: what waits is bounded.
//!
//! As the checking workers' connections (`crate::verify`), this thread's connection is
//! closed with the home: after that the thread never touches the store. It holds the
//! connection only while it reads, not while it makes a snapshot.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use care_core::DocId;
use care_store::{Compaction, Store, StoreKey};

use crate::verify::lock;

/// How often the thread checkpoints when not asked: what the last writes left in the
/// log below [`care_store::CHECKPOINT_NUDGE_PAGES`] is copied within this.
const CHECKPOINT_AT_LEAST_EVERY: Duration = Duration::from_secs(30);

/// What the thread is asked to do.
enum Ask {
    Checkpoint,
    Compact(DocId),
}

/// The thread keeping up a home's store, and how to ask it for work.
pub(crate) struct Upkeep {
    asks: Sender<Ask>,
    /// Whether a checkpoint is asked for and not yet started: one is enough, for it
    /// copies everything written before it.
    checkpoint_asked: Arc<AtomicBool>,
    /// Documents asked to be compacted whose snapshot is not yet handed over: each waits
    /// in the queue at most once.
    compacting: Arc<Mutex<HashSet<DocId>>>,
    /// Snapshots made, for the owner of the home to put in place (at most one waits).
    made: Receiver<Compaction>,
    /// The thread's connection, taken (and closed) when the upkeep is dropped.
    connection: Arc<Mutex<Option<Store>>>,
}

impl Upkeep {
    /// Opens a connection to the store at `path` and starts the thread; `wake` is called
    /// when a snapshot is made, so that the owner of the home takes it.
    pub(crate) fn start(
        path: &Path,
        key: Option<&StoreKey>,
        wake: Box<dyn Fn() + Send>,
    ) -> std::io::Result<Upkeep> {
        let opened = match key {
            Some(key) => Store::open_encrypted(path, key),
            None => Store::open(path),
        };
        let store = opened.map_err(std::io::Error::other)?;
        let connection = Arc::new(Mutex::new(Some(store)));
        let (asks, asked) = mpsc::channel::<Ask>();
        let (hand_over, made) = mpsc::sync_channel::<Compaction>(1);
        let checkpoint_asked = Arc::new(AtomicBool::new(false));
        let compacting = Arc::new(Mutex::new(HashSet::new()));
        let thread = Thread {
            connection: Arc::clone(&connection),
            checkpoint_asked: Arc::clone(&checkpoint_asked),
            compacting: Arc::clone(&compacting),
            hand_over,
            wake,
        };
        std::thread::Builder::new().name("care-upkeep".into()).spawn(move || {
            // Copying the log and compacting are bulk work: live edits go first.
            crate::verify::run_behind_live_work();
            thread.run(&asked);
        })?;
        Ok(Upkeep { asks, checkpoint_asked, compacting, made, connection })
    }

    /// A way to ask for a checkpoint, quick enough to call inside a write.
    pub(crate) fn checkpoint_asker(&self) -> impl Fn() + Send + 'static {
        let (asks, asked) = (self.asks.clone(), Arc::clone(&self.checkpoint_asked));
        move || {
            if !asked.swap(true, Ordering::AcqRel) {
                // The thread is gone only with the home.
                let _ = asks.send(Ask::Checkpoint);
            }
        }
    }

    /// A way to ask for a document to be compacted, quick enough to call inside a write.
    pub(crate) fn compaction_asker(&self) -> impl Fn(DocId) + Send + 'static {
        let (asks, compacting) = (self.asks.clone(), Arc::clone(&self.compacting));
        move |doc| {
            if lock(&compacting).insert(doc) {
                let _ = asks.send(Ask::Compact(doc));
            }
        }
    }

    /// The snapshots made since the last call, to put in place
    /// ([`care_store::Store::finish_compaction`]). Their documents may be asked for again.
    pub(crate) fn compactions(&self) -> Vec<Compaction> {
        let made: Vec<Compaction> = self.made.try_iter().collect();
        let mut compacting = lock(&self.compacting);
        for compaction in &made {
            compacting.remove(&compaction.doc());
        }
        made
    }
}

impl Drop for Upkeep {
    /// Closes the thread's connection, waiting for a read under way.
    fn drop(&mut self) {
        drop(lock(&self.connection).take());
    }
}

/// What the thread holds.
struct Thread {
    connection: Arc<Mutex<Option<Store>>>,
    checkpoint_asked: Arc<AtomicBool>,
    compacting: Arc<Mutex<HashSet<DocId>>>,
    hand_over: SyncSender<Compaction>,
    wake: Box<dyn Fn() + Send>,
}

impl Thread {
    fn run(&self, asked: &Receiver<Ask>) {
        loop {
            let carried_on = match asked.recv_timeout(CHECKPOINT_AT_LEAST_EVERY) {
                Ok(Ask::Checkpoint) | Err(RecvTimeoutError::Timeout) => self.checkpoint(),
                Ok(Ask::Compact(doc)) => self.compact(doc),
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if !carried_on {
                return;
            }
        }
    }

    /// Copies what it can of the log; `false` once the home is closed.
    fn checkpoint(&self) -> bool {
        self.checkpoint_asked.store(false, Ordering::Release);
        let connection = lock(&self.connection);
        let Some(store) = connection.as_ref() else { return false };
        if let Err(e) = store.checkpoint() {
            tracing::warn!("cannot copy the store's log into its file: {e}");
        }
        true
    }

    /// Makes `doc`'s snapshot and hands it over; `false` once the home is closed.
    fn compact(&self, doc: DocId) -> bool {
        let read = {
            let connection = lock(&self.connection);
            let Some(store) = connection.as_ref() else { return false };
            store.chunks_to_compact(doc)
        };
        let made = match read {
            Ok(Some(chunks)) => chunks.compact(),
            Ok(None) => {
                lock(&self.compacting).remove(&doc);
                return true;
            }
            Err(e) => Err(e),
        };
        match made {
            Ok(compaction) => {
                // Waits while a snapshot made before is not yet taken; the home gone, so is
                // the taker.
                if self.hand_over.send(compaction).is_err() {
                    return false;
                }
                (self.wake)();
            }
            Err(e) => {
                // Asked again at the next write past the rule; the writes compact
                // themselves past the backstop.
                tracing::warn!("cannot compact a document beside the writes: {e}");
                lock(&self.compacting).remove(&doc);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use care_core::DocId;
    use care_store::{COMPACT_MIN_BYTES, DocSummary};
    use care_sync::Replica;

    use crate::Home;
    use crate::error::{Error, Result};
    use crate::test_support::{note_texts, temp_dirs, write_note};

    /// The row of the document with the most chunks (the month being written), or of `id`.
    fn row(home: &Home, id: Option<DocId>) -> Result<DocSummary> {
        let docs = home.store().docs(None)?;
        let docs = docs.into_iter().filter(|d| id.is_none_or(|id| d.id == id));
        docs.max_by_key(|d| d.chunks)
            .ok_or_else(|| Error::Invalid("the home holds no such document".into()))
    }

    /// A home run by a node writes past the compaction rule without compacting: its next
    /// turn puts in place the snapshot the upkeep thread made, and every note is there.
    #[test]
    fn a_write_past_the_compaction_rule_leaves_it_to_the_upkeep_thread() -> Result<()> {
        let dirs = temp_dirs(1)?;
        let mut home = Home::init(dirs[0].path(), "Ada")?;
        home.create_team("Rosa's team")?;
        let (turns, asked) = mpsc::channel();
        home.set_waker(Box::new(move || {
            let _ = turns.send(());
        }));
        let mut written = 0;
        let before = loop {
            write_note(&mut home, &format!("Visit {written}: lunch eaten, walk to the park."))?;
            written += 1;
            let month = row(&home, None)?;
            if month.incremental_bytes > month.snapshot_bytes.max(COMPACT_MIN_BYTES) {
                break month;
            }
            // Compacting inside the writes, it never stays past the rule.
            assert!(written < 500, "no write left the month past the compaction rule");
        };
        assert!(before.chunks > 2, "the write past the rule appended its chunk: {before:?}");

        let mut turns = 0;
        let after = loop {
            asked
                .recv_timeout(Duration::from_secs(30))
                .map_err(|_| Error::Invalid("the home stopped asking for turns".into()))?;
            home.poll_background();
            turns += 1;
            let month = row(&home, Some(before.id))?;
            if month.chunks < before.chunks || turns > 100 {
                break month;
            }
        };
        assert_eq!(after.chunks, 1, "one snapshot in place of the chunks: {after:?}");
        assert!(after.stored_bytes() < before.stored_bytes(), "{before:?} -> {after:?}");
        assert_eq!(after.heads, before.heads);
        assert_eq!(note_texts(&mut home)?.len(), written);
        assert!(home.store().check()?.problems.is_empty());
        Ok(())
    }
}
