//! Documents received whole are checked on worker threads beside the owner of the
//! home (one per core, up to [`WORKERS_MAX`]): inflated size, a full load to the heads
//! they were stored with, and every change's author, signature and rules. Until a
//! document's verdict is in, this device does not pass it on; a verdict that fails
//! discards it, and it is fetched again.
//!
//! The workers run behind live work: on Linux and Android at a lower scheduling priority
//! ([`WORKER_NICENESS`]), so that when the cores are busy the owner thread and the
//! network tasks, which carry live edits, run first.
//!
//! A document that passes comes back loaded, for the home to keep (`Job::keep_loaded`):
//! a device that has just received a document is likely to show it soon, and loading it
//! again would take as long as the check did.
//!
//! A worker reads the store only while it holds its connection's lock. When the home
//! closes, the verifier closes every worker's connection (waiting for a read under way),
//! so a worker still checking bytes it has read never touches the store again, and the
//! last connection to the file (which checkpoints the log as it closes) closes with the
//! home, not later on a worker's thread.
//!
//! A home verifies this way once a node runs it ([`Replica::set_waker`]); without a node,
//! a document is verified when it is first loaded, as before.
//!
//! [`Replica::set_waker`]: care_sync::Replica::set_waker

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use automerge::{Automerge, ChangeHash};
use care_core::{ChangeSig, DocId, DocKind, TeamId};
use care_store::{Store, StoreKey};
use care_sync::TeamAccess;
use care_sync::access::check_saved_document;
use care_sync::chunks::{INFLATED_BYTES_MAX, check_inflated_len};

/// A document to check, with what it is checked against: its bytes as the home just
/// stored them (shared with the home, which keeps them to pass the document on), or else
/// read back from the store by the worker.
pub(crate) struct Job {
    pub(crate) team: TeamId,
    pub(crate) doc: DocId,
    pub(crate) kind: DocKind,
    pub(crate) heads: Vec<ChangeHash>,
    pub(crate) access: TeamAccess,
    /// Whether the copy loaded for the check comes back with a verdict that passes, for
    /// the home to keep loaded: on a device that reads the document, which a device that
    /// has just received it is likely to show soon.
    pub(crate) keep_loaded: bool,
    /// The document's stored bytes, if the home has them at hand.
    pub(crate) stored: Option<Stored>,
}

/// A document's stored bytes, up to chunk `last_chunk`.
pub(crate) struct Stored {
    pub(crate) bytes: Arc<Vec<u8>>,
    pub(crate) last_chunk: i64,
}

/// What the check found.
pub(crate) struct Verdict {
    pub(crate) team: TeamId,
    pub(crate) doc: DocId,
    pub(crate) kind: DocKind,
    pub(crate) outcome: Outcome,
}

/// The outcome of one check.
pub(crate) enum Outcome {
    /// The document is what it claims, by devices that may write it, within its rules;
    /// with the copy loaded for the check, if the job asked for it and it is at most
    /// [`LOADED_KEPT_BYTES_MAX`] stored.
    Passed(Option<Box<Loaded>>),
    /// The document is refused, and why.
    Failed(String),
    /// The worker could not read the document back (the store failed, or the document
    /// is no longer stored): it stays as it is, and is checked on its first load.
    Unchecked(String),
}

/// A document loaded by a worker for its check, from its stored chunks up to
/// `last_chunk` (`care_store::Store::adopt_loaded` takes it).
pub(crate) struct Loaded {
    pub(crate) doc: Automerge,
    pub(crate) last_chunk: i64,
    /// Bytes it was loaded from, as stored.
    pub(crate) stored_bytes: u64,
}

/// Largest document (stored bytes) whose copy loaded for its check is handed to the home:
/// a month or a year of notes, not a document the home would rather load when used.
pub(crate) const LOADED_KEPT_BYTES_MAX: usize = 8 << 20;

/// Most bytes of documents the jobs waiting for a worker hold in memory (shared with the
/// home, which keeps the last one to pass it on): the bytes of more are read back.
const JOB_BYTES_MAX: usize = 256 << 20;

/// Most threads checking documents at once: one per core, at most this many.
const WORKERS_MAX: usize = 4;

/// How much lower than the rest of the process the workers run (a `nice` increment):
/// checking a large document takes seconds of CPU, and a live edit waiting behind it on a
/// two-core phone would wait for the scheduler's turns.
const WORKER_NICENESS: i32 = 10;

/// Lowers the calling thread's priority by [`WORKER_NICENESS`]. On Linux a priority is
/// per thread, so the rest of the process keeps its own. A failure leaves the thread as
/// it was: it only matters for how soon other work runs.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn run_behind_live_work() {
    use rustix::process::{getpriority_process, setpriority_process};
    let me = Some(rustix::thread::gettid());
    if let Ok(now) = getpriority_process(me) {
        let _ = setpriority_process(me, now.saturating_add(WORKER_NICENESS));
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn run_behind_live_work() {}

/// The waker, callable from every worker.
struct Wake(Mutex<Box<dyn Fn() + Send>>);

impl Wake {
    fn call(&self) {
        (lock(&self.0))();
    }
}

/// The workers and what they have not answered yet.
pub(crate) struct Verifier {
    jobs: mpsc::Sender<Job>,
    verdicts: mpsc::Receiver<Verdict>,
    /// Documents whose verdict is to come, with the bytes their jobs hold.
    pending: HashMap<DocId, usize>,
    /// Each worker's connection to the store, taken (and closed) when the verifier is
    /// dropped: a worker reads only while it holds its connection's lock, so once the
    /// verifier is gone no worker touches the store, even one still checking bytes.
    connections: Vec<Arc<Mutex<Option<Store>>>>,
}

impl Verifier {
    /// Starts the workers, each with its own connection to the store at `store`; `wake`
    /// is called after each verdict, so that the owner of the home collects it.
    pub(crate) fn start(
        store: &Path,
        key: Option<StoreKey>,
        wake: Box<dyn Fn() + Send>,
    ) -> std::io::Result<Verifier> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (answers, verdicts) = mpsc::channel();
        let queue = Arc::new(Mutex::new(queue));
        let wake = Arc::new(Wake(Mutex::new(wake)));
        let workers = care_core::cores().min(WORKERS_MAX);
        let mut connections = Vec::with_capacity(workers);
        for _ in 0..workers {
            let opened = match &key {
                Some(key) => Store::open_encrypted(store, key),
                None => Store::open(store),
            };
            let connection = Arc::new(Mutex::new(None));
            let failed = match opened {
                Ok(opened) => {
                    *lock(&connection) = Some(opened);
                    None
                }
                Err(e) => Some(format!("the store cannot be opened: {e}")),
            };
            connections.push(Arc::clone(&connection));
            let (queue, answers, wake) = (Arc::clone(&queue), answers.clone(), Arc::clone(&wake));
            std::thread::Builder::new().name("care-verify".into()).spawn(move || {
                run_behind_live_work();
                loop {
                    let Ok(job) = lock(&queue).recv() else { return };
                    let outcome = match &failed {
                        Some(why) => Outcome::Unchecked(why.clone()),
                        None => match read(&connection, &job) {
                            Some(Ok(ReadBack { bytes, last_chunk, signatures })) => {
                                match check_bytes(&bytes, &signatures, &job) {
                                    Ok(doc) => Outcome::Passed(
                                        (job.keep_loaded && bytes.len() <= LOADED_KEPT_BYTES_MAX)
                                            .then(|| {
                                                Box::new(Loaded {
                                                    doc,
                                                    last_chunk,
                                                    stored_bytes: bytes.len() as u64,
                                                })
                                            }),
                                    ),
                                    Err(why) => Outcome::Failed(why),
                                }
                            }
                            Some(Err(unchecked)) => unchecked,
                            // The verifier is gone: so is the home.
                            None => return,
                        },
                    };
                    let verdict = Verdict { team: job.team, doc: job.doc, kind: job.kind, outcome };
                    if answers.send(verdict).is_err() {
                        return;
                    }
                    wake.call();
                }
            })?;
        }
        Ok(Verifier { jobs, verdicts, pending: HashMap::new(), connections })
    }

    /// Queues a document for checking; `false` when the workers are gone (the document
    /// is then checked on its first load).
    /// A job holding its document's bytes is given none (the worker reads them back)
    /// past [`JOB_BYTES_MAX`] held by the jobs waiting.
    pub(crate) fn submit(&mut self, mut job: Job) -> bool {
        let doc = job.doc;
        let held: usize = self.pending.values().sum();
        let mut bytes = job.stored.as_ref().map_or(0, |s| s.bytes.len());
        if held + bytes > JOB_BYTES_MAX {
            job.stored = None;
            bytes = 0;
        }
        let queued = self.jobs.send(job).is_ok();
        if queued {
            self.pending.insert(doc, bytes);
        }
        queued
    }

    /// Whether a document's verdict is still to come.
    pub(crate) fn is_pending(&self, doc: DocId) -> bool {
        self.pending.contains_key(&doc)
    }

    /// The verdicts in so far.
    pub(crate) fn verdicts(&mut self) -> Vec<Verdict> {
        let verdicts: Vec<Verdict> = self.verdicts.try_iter().collect();
        for verdict in &verdicts {
            self.pending.remove(&verdict.doc);
        }
        verdicts
    }
}

impl Drop for Verifier {
    /// Closes the workers' connections, waiting for a read under way: after this no
    /// worker reads the store (a worker checking bytes already read finishes on its own).
    fn drop(&mut self) {
        for connection in &self.connections {
            drop(lock(connection).take());
        }
    }
}

/// Locks a mutex, going on with its data if a panicking thread poisoned it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A document's stored bytes, the newest chunk among them, and the signatures of its
/// changes, read back for checking.
struct ReadBack {
    bytes: Arc<Vec<u8>>,
    last_chunk: i64,
    signatures: Vec<ChangeSig>,
}

/// A document received whole and its signatures, read back from the store for checking
/// (or why it cannot be); `None` once the verifier is gone.
fn read(connection: &Mutex<Option<Store>>, job: &Job) -> Option<Result<ReadBack, Outcome>> {
    let connection = lock(connection);
    let store = connection.as_ref()?;
    let read = match &job.stored {
        Some(Stored { bytes, last_chunk }) => Ok(Some((Arc::clone(bytes), *last_chunk))),
        None => store.doc_bytes_with_chunk(job.doc).map(|r| r.map(|(b, c)| (Arc::new(b), c))),
    };
    let (bytes, last_chunk) = match read {
        Ok(Some(read)) => read,
        Ok(None) => return Some(Err(Outcome::Unchecked("it is no longer stored".into()))),
        Err(e) => return Some(Err(Outcome::Unchecked(format!("it cannot be read back: {e}")))),
    };
    Some(match crate::replica::stored_signatures_of(store, job.doc, None) {
        Ok(signatures) => Ok(ReadBack { bytes, last_chunk, signatures }),
        Err(e) => Err(Outcome::Unchecked(format!("its signatures cannot be read back: {e}"))),
    })
}

/// Checks a document's bytes against what it claimed when it arrived; returns it loaded.
fn check_bytes(bytes: &[u8], signatures: &[ChangeSig], job: &Job) -> Result<Automerge, String> {
    check_inflated_len(bytes, INFLATED_BYTES_MAX).map_err(|e| e.to_string())?;
    let doc = Automerge::load(bytes).map_err(|e| format!("it does not load: {e}"))?;
    let mut heads = doc.get_heads();
    heads.sort();
    let mut claimed = job.heads.clone();
    claimed.sort();
    if heads != claimed {
        return Err("its changes do not add up to the heads it was sent with".into());
    }
    check_saved_document(&job.access, job.team, &job.kind, &doc, bytes, signatures)?;
    Ok(doc)
}
