//! The simulation of `care-sync` run over the product's SQLite home: every device a
//! [`Home`] in its own directory (on tmpfs when the machine has one), driven by the same
//! hub as a node, and restarted from its directory now and then, as after a crash
//! between two steps, and compacting its documents beside its writes as a node's home
//! does (a step makes the snapshot, the next puts it in place). `CARE_SIM_SEED=N cargo
//! test -p care --lib sim` replays one seed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use automerge::ChangeHash;
use automerge::sync::{Message, State};
use care_core::documents::Author;
use care_core::{
    ChangeSig, DeviceId, DeviceKey, DocId, DocKind, MemberId, Month, SignedOp, TeamId, Timestamp,
};
use care_store::Compaction;
use care_sync::sim::{SimDevice, edit_doc, run_seeds};
use care_sync::{Change, HeldDoc, Import, Refusal, Replica, TeamAccess};

use crate::error::{Error, Result};
use crate::home::{Clock, Home, Purpose};

/// Seeds run over SQLite homes per test run, beside `care-sync`'s 500 over the in-memory
/// replica.
const HOME_SEEDS_PER_RUN: u64 = 500;

/// A home in the simulation: its directory (removed with it) and the simulated time.
///
/// As a node's home, it leaves compaction to its upkeep: a snapshot is made at one step
/// from what the writes asked for, and put in place at the next, so that writes and
/// deliveries of that step fall between the two, and a crash may come between them.
struct SimHome {
    home: Home,
    dir: tempfile::TempDir,
    now: Timestamp,
    /// Documents the home's writes asked to be compacted, oldest first.
    asked: Arc<Mutex<Vec<DocId>>>,
    /// A snapshot made at this step, to put in place at the next.
    compacting: Option<Compaction>,
}

/// The compaction rule's floor in the simulation: a run's documents stay under the
/// store's own ([`care_store::COMPACT_MIN_BYTES`]), and with this one they are compacted,
/// often.
const SIM_COMPACT_MIN_BYTES: u64 = 256;

/// Has `home`'s writes leave compaction to the simulated upkeep: returns where they ask.
fn leave_compaction(home: &mut Home) -> Arc<Mutex<Vec<DocId>>> {
    home.store.set_compact_min_bytes(SIM_COMPACT_MIN_BYTES);
    let asked = Arc::new(Mutex::new(Vec::new()));
    let asks = Arc::clone(&asked);
    home.store.leave_compaction(move |doc| {
        let mut asks = crate::verify::lock(&asks);
        if !asks.contains(&doc) {
            asks.push(doc);
        }
    });
    asked
}

impl SimHome {
    /// Puts in place the snapshot made at the last step, and makes the next one asked for.
    fn upkeep(&mut self) {
        if let Some(made) = self.compacting.take() {
            self.home.store.finish_compaction(made).expect("a snapshot made here is put in place");
        }
        let next = {
            let mut asked = crate::verify::lock(&self.asked);
            (!asked.is_empty()).then(|| asked.remove(0))
        };
        let Some(doc) = next else { return };
        let chunks = self.home.store.chunks_to_compact(doc).expect("a stored document reads");
        self.compacting = chunks.map(|c| c.compact().expect("stored chunks compact"));
    }
}

/// A clock stopped at one moment.
struct Stopped(Timestamp);

impl Clock for Stopped {
    fn now(&self) -> Timestamp {
        self.0
    }
}

/// Where the homes of a run live: tmpfs when the machine has one, so that the fsync of
/// every commit costs what it costs in memory.
fn sim_root() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() { shm } else { std::env::temp_dir() }
}

fn make_home(index: usize, key: &DeviceKey, member: MemberId) -> SimHome {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = tempfile::Builder::new()
        .prefix(&format!("care-sim-{n}-"))
        .tempdir_in(sim_root())
        .expect("a temporary directory for a simulated home");
    let path = dir.path().join("home");
    let mut home = Home::init_with(&path, &format!("peer {index}"), key.to_seed(), member, None)
        .expect("a new home");
    let asked = leave_compaction(&mut home);
    SimHome { home, dir, now: Timestamp(0), asked, compacting: None }
}

impl SimDevice for SimHome {
    fn edit(
        &mut self,
        team: TeamId,
        kind: DocKind,
        author: &Author,
        text: &str,
        random: [u8; 8],
    ) -> std::result::Result<(), String> {
        let mut handle = self.home.team(&team.to_string()).map_err(|e| e.to_string())?;
        handle
            .write_at(kind, author.at, |doc, a| edit_doc(doc, &kind, a, text, random))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn read_doc<R>(
        &mut self,
        team: TeamId,
        doc: DocId,
        f: impl FnOnce(&automerge::Automerge) -> R,
    ) -> Option<R> {
        let summary = self.home.store.doc_summary(doc).ok().flatten();
        let kind = summary.and_then(|s| s.kind.parse::<DocKind>().ok())?;
        match self.home.doc(team, kind, Purpose::Read) {
            Ok(Some(stored)) => Some(f(stored.doc())),
            _ => None,
        }
    }

    fn set_time(&mut self, now: Timestamp) {
        self.now = now;
        self.home.set_clock(Stopped(now));
        self.upkeep();
    }

    fn use_all(&mut self, team: TeamId) {
        let held = self.home.store.docs(Some(team)).unwrap_or_default();
        for summary in held {
            if let Ok(kind) = summary.kind.parse::<DocKind>() {
                // A document that fails its check is discarded, and its sessions told.
                let _ = self.home.doc(team, kind, Purpose::Read);
            }
        }
    }

    fn restart(&mut self) -> bool {
        let path = self.dir.path().join("home");
        let mut home = Home::open(&path).expect("a home opens again after a crash");
        home.set_clock(Stopped(self.now));
        // The old home, and a snapshot not yet in place, are dropped without a word, as a
        // crashed process would leave them.
        self.asked = leave_compaction(&mut home);
        self.compacting = None;
        self.home = home;
        true
    }

    fn can_hold_sealed() -> bool {
        true
    }
}

/// The replica is the home's, unchanged.
impl Replica for SimHome {
    type Error = Error;

    fn device(&self) -> DeviceId {
        Replica::device(&self.home)
    }
    fn teams(&self) -> Result<Vec<TeamId>> {
        Replica::teams(&self.home)
    }
    fn ops(&self, team: TeamId) -> Result<Vec<SignedOp>> {
        Replica::ops(&self.home, team)
    }
    fn team_access(&self, team: TeamId) -> Result<TeamAccess> {
        Replica::team_access(&self.home, team)
    }
    fn teams_with(&self, device: DeviceId) -> Result<Vec<TeamId>> {
        self.home.teams_with(device)
    }
    fn add_ops(&mut self, team: TeamId, ops: &[SignedOp]) -> Result<()> {
        self.home.add_ops(team, ops)
    }
    fn docs(&self, team: TeamId) -> Result<Vec<HeldDoc>> {
        Replica::docs(&self.home, team)
    }
    fn generate_sync_message(
        &mut self,
        peer: DeviceId,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
    ) -> Result<Option<Message>> {
        self.home.generate_sync_message(peer, team, doc, kind)
    }
    fn receive_sync_message(
        &mut self,
        peer: DeviceId,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        message: Message,
        signatures: &[ChangeSig],
    ) -> Result<std::result::Result<bool, Refusal>> {
        self.home.receive_sync_message(peer, team, doc, kind, message, signatures)
    }
    fn signatures(
        &mut self,
        team: TeamId,
        doc: DocId,
        hashes: Option<&[ChangeHash]>,
    ) -> Result<Vec<ChangeSig>> {
        self.home.signatures(team, doc, hashes)
    }
    fn doc_count(&self, team: TeamId) -> Result<usize> {
        self.home.doc_count(team)
    }
    fn holds(&self, team: TeamId, doc: DocId) -> Result<bool> {
        self.home.holds(team, doc)
    }
    fn snapshot(&mut self, team: TeamId, doc: DocId) -> Result<Option<std::sync::Arc<Vec<u8>>>> {
        self.home.snapshot(team, doc)
    }
    fn import_snapshot(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        bytes: Vec<u8>,
        heads: &[ChangeHash],
        signatures: &[ChangeSig],
    ) -> Result<Import> {
        self.home.import_snapshot(team, doc, kind, bytes, heads, signatures)
    }
    fn merge_snapshot(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        loaded: automerge::Automerge,
        signatures: &[ChangeSig],
    ) -> Result<std::result::Result<bool, Refusal>> {
        self.home.merge_snapshot(team, doc, kind, loaded, signatures)
    }
    fn receive_changes(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        bytes: &[u8],
        signatures: &[ChangeSig],
    ) -> Result<std::result::Result<bool, Refusal>> {
        self.home.receive_changes(team, doc, kind, bytes, signatures)
    }
    fn seal(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        since: &[automerge::ChangeHash],
        form: care_core::SealedForm,
    ) -> Result<Option<care_core::Sealed>> {
        self.home.seal(team, doc, kind, since, form)
    }
    fn open_sealed(
        &mut self,
        team: TeamId,
        doc: DocId,
        sealed: &care_core::Sealed,
    ) -> Result<std::result::Result<Vec<u8>, Refusal>> {
        self.home.open_sealed(team, doc, sealed)
    }
    fn store_sealed(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        sealed: &care_core::Sealed,
    ) -> Result<std::result::Result<bool, Refusal>> {
        self.home.store_sealed(team, doc, kind, sealed)
    }
    fn sealed_after(
        &mut self,
        team: TeamId,
        doc: DocId,
        theirs: &[automerge::ChangeHash],
        bytes_max: usize,
    ) -> Result<Vec<care_core::Sealed>> {
        self.home.sealed_after(team, doc, theirs, bytes_max)
    }
    fn wants_whole(&self, team: TeamId, doc: DocId) -> Result<bool> {
        self.home.wants_whole(team, doc)
    }
    fn set_sync_state(&mut self, peer: DeviceId, doc: DocId, state: State) {
        self.home.set_sync_state(peer, doc, state);
    }
    fn reset_sync_state(&mut self, peer: DeviceId) {
        self.home.reset_sync_state(peer);
    }
    fn this_month(&self) -> Option<Month> {
        self.home.this_month()
    }
    fn recover_from_panic(&mut self, peer: DeviceId) {
        self.home.recover_from_panic(peer);
    }
    fn take_changes(&mut self) -> Vec<Change> {
        self.home.take_changes()
    }
}

#[test]
fn homes_converge_after_faults_and_crashes() {
    run_seeds(0..HOME_SEEDS_PER_RUN, &make_home);
}
