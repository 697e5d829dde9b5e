//! Copying a home's write-ahead log into its database file, on a thread of its own.
//!
//! SQLite copies the log into the database file (a checkpoint) inside whichever write
//! finds the log past a threshold: with large documents arriving, a live edit's write
//! would now and then wait 15 to 100 ms for it. Once a node runs a home, its connection
//! leaves checkpoints to this thread ([`care_store::Store::leave_checkpoints`]): a write
//! that leaves a MiB or more in the log asks for one, and this thread copies what it
//! can, beside the writes (a passive checkpoint never holds one up), behind live work as
//! the checking workers run.
//!
//! As the checking workers' connections (`crate::verify`), this thread's connection is
//! closed with the home: after that the thread never touches the store.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use care_store::{Store, StoreKey};

use crate::verify::lock;

/// How often the thread checkpoints when not asked: what the last writes left in the
/// log below [`care_store::CHECKPOINT_NUDGE_PAGES`] is copied within this.
const CHECKPOINT_AT_LEAST_EVERY: Duration = Duration::from_secs(30);

/// The thread copying the log, and how to ask it to.
pub(crate) struct Checkpointer {
    asks: SyncSender<()>,
    /// The thread's connection, taken (and closed) when the checkpointer is dropped.
    connection: Arc<Mutex<Option<Store>>>,
}

impl Checkpointer {
    /// Opens a connection to the store at `path` and starts the thread.
    pub(crate) fn start(path: &Path, key: Option<&StoreKey>) -> std::io::Result<Checkpointer> {
        let opened = match key {
            Some(key) => Store::open_encrypted(path, key),
            None => Store::open(path),
        };
        let store = opened.map_err(std::io::Error::other)?;
        let connection = Arc::new(Mutex::new(Some(store)));
        // One ask waiting is enough: the checkpoint it starts copies everything written.
        let (asks, asked) = mpsc::sync_channel::<()>(1);
        let held = Arc::clone(&connection);
        std::thread::Builder::new().name("care-checkpoint".into()).spawn(move || {
            // Copying the log is bulk disk work: live edits go first.
            crate::verify::run_behind_live_work();
            loop {
                match asked.recv_timeout(CHECKPOINT_AT_LEAST_EVERY) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                let connection = lock(&held);
                let Some(store) = connection.as_ref() else { return };
                if let Err(e) = store.checkpoint() {
                    tracing::warn!("cannot copy the store's log into its file: {e}");
                }
            }
        })?;
        Ok(Checkpointer { asks, connection })
    }

    /// A way to ask for a checkpoint, quick enough to call inside a write.
    pub(crate) fn asker(&self) -> impl Fn() + Send + 'static {
        let asks = self.asks.clone();
        move || match asks.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }
}

impl Drop for Checkpointer {
    /// Closes the thread's connection, waiting for a checkpoint under way.
    fn drop(&mut self) {
        drop(lock(&self.connection).take());
    }
}
