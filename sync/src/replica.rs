//! The storage boundary of the sync protocol: what a [`Session`](crate::Session) needs
//! from the device's store. The product implements it over SQLite; the simulation over
//! memory ([`MemoryReplica`](crate::MemoryReplica)).

use std::sync::Arc;

use automerge::sync::{Message, State};
use automerge::{Automerge, ChangeHash};
use care_core::{
    ChangeSig, DeviceId, DocId, DocKind, MembershipError, Month, Sealed, SealedForm, SignedOp,
    TeamId,
};

use crate::access::TeamAccess;
use crate::hub::Change;
use crate::refusal::Refusal;

/// A document a device holds, with its heads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldDoc {
    /// The document.
    pub id: DocId,
    /// Its kind.
    pub kind: DocKind,
    /// The hashes of its head changes.
    pub heads: Vec<ChangeHash>,
}

/// What [`Replica::import_snapshot`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Import {
    /// The document is stored, to be verified when first loaded.
    Stored,
    /// The document is stored and being checked beside the replica's driver: until the
    /// verdict is in (a [`Change::Doc`] from [`Replica::take_changes`], the document
    /// then held if it passed and gone if not), it is neither used nor passed on, and a
    /// session does not count it in sync.
    Checking,
    /// The document was held already; nothing was stored. The bytes come back, for the
    /// session to merge.
    Held(Vec<u8>),
}

/// One device's teams, membership ops and documents, with its per-peer sync states.
///
/// Every method is synchronous and each write is durable when it returns. The session
/// checks authorisation before calling a write; the replica only stores.
pub trait Replica {
    /// What went wrong in the store (or in the membership log it holds).
    type Error: std::error::Error + From<MembershipError> + Send + Sync + 'static;

    /// This device.
    fn device(&self) -> DeviceId;

    /// The teams this device holds.
    fn teams(&self) -> Result<Vec<TeamId>, Self::Error>;

    /// Every membership op of `team` this device holds.
    fn ops(&self, team: TeamId) -> Result<Vec<SignedOp>, Self::Error>;

    /// The team's membership as the session checks access with it: [`TeamAccess::from_ops`]
    /// over [`Replica::ops`]. Replaying verifies every op's signature, and a session start
    /// needs it for every team the device holds, so a replica may keep the result for as
    /// long as the team's ops are unchanged ([`TeamAccess::ops_hash`]).
    fn team_access(&self, team: TeamId) -> Result<TeamAccess, Self::Error> {
        Ok(TeamAccess::from_ops(team, &self.ops(team)?)?)
    }

    /// The teams a session with `device` may share: those this device holds in which
    /// `device` is a current device of a member, and those whose membership cannot be
    /// read (which the session reports). A superset is fine, since the session checks
    /// each team; by default every team held. A replica that keeps an index answers in
    /// time that does not grow with the teams it holds.
    fn teams_with(&self, device: DeviceId) -> Result<Vec<TeamId>, Self::Error> {
        let _ = device;
        self.teams()
    }

    /// Stores ops (idempotent). The session has checked that they decode; it replays the
    /// whole set with [`care_core::Membership::from_ops`], which leaves invalid ops out.
    fn add_ops(&mut self, team: TeamId, ops: &[SignedOp]) -> Result<(), Self::Error>;

    /// The documents of `team` this device holds, with their heads (sorted).
    fn docs(&self, team: TeamId) -> Result<Vec<HeldDoc>, Self::Error>;

    /// The heads (sorted) of one document of `team`, or `None` when it is not held. A
    /// replica answers this without listing the team's documents.
    fn heads(&self, team: TeamId, doc: DocId) -> Result<Option<Vec<ChangeHash>>, Self::Error> {
        Ok(self.docs(team)?.into_iter().find(|d| d.id == doc).map(|d| d.heads))
    }

    /// The next sync message for `doc` to `peer`, from the sync state kept for that peer
    /// and document (`None` when there is nothing to say).
    fn generate_sync_message(
        &mut self,
        peer: DeviceId,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
    ) -> Result<Option<Message>, Self::Error>;

    /// Applies a checked sync message from `peer` durably, creating the document if this
    /// device has none of it, and stores the `signatures` of the changes it applied (the
    /// session has checked them) in the same write. Returns whether the document's heads
    /// changed, or, when the changes do not apply to the document held (a change reusing
    /// an author's sequence number with other content, say), the refusal, with the
    /// document left as it was.
    fn receive_sync_message(
        &mut self,
        peer: DeviceId,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        message: Message,
        signatures: &[ChangeSig],
    ) -> Result<Result<bool, Refusal>, Self::Error>;

    /// The signatures held of `doc`'s changes: of those in `hashes`, or of every change
    /// (`None`). A change without one (the deterministic first change) is left out.
    fn signatures(
        &mut self,
        team: TeamId,
        doc: DocId,
        hashes: Option<&[ChangeHash]>,
    ) -> Result<Vec<ChangeSig>, Self::Error>;

    /// How many documents of `team` this device holds.
    fn doc_count(&self, team: TeamId) -> Result<usize, Self::Error> {
        Ok(self.docs(team)?.len())
    }

    /// Whether this device holds `doc`.
    fn holds(&self, team: TeamId, doc: DocId) -> Result<bool, Self::Error>;

    /// The whole document as stored (a valid input to `Automerge::load`: a document
    /// chunk, then change chunks), or `None` when not held. Shared, so that a replica
    /// keeping a large document's bytes to pass it on to several devices hands them out
    /// without copying them.
    fn snapshot(&mut self, team: TeamId, doc: DocId) -> Result<Option<Arc<Vec<u8>>>, Self::Error>;

    /// Stores a document this device does not hold, received whole, without loading it,
    /// with the `signatures` that came with it: `heads` are the heads its bytes list, and
    /// the session has checked the authors they list. The replica loads it, and checks
    /// every change's author and signature with
    /// [`check_document`](crate::access::check_document), before it first uses it,
    /// discarding it if that fails. Returns [`Import::Held`] and stores nothing when the
    /// document turns out to be held (written meanwhile by another program on this device).
    /// A replica may go on storing the bytes after it returns ([`Import::Checking`]),
    /// which is why it takes them.
    fn import_snapshot(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        bytes: Vec<u8>,
        heads: &[ChangeHash],
        signatures: &[ChangeSig],
    ) -> Result<Import, Self::Error>;

    /// Merges a whole document received for one this device holds: `loaded`, loaded by
    /// the session to check its authors and `signatures`, which are stored with the
    /// changes new here. Returns whether the heads changed, or the refusal when it does
    /// not merge, with the document left as it was.
    fn merge_snapshot(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        loaded: Automerge,
        signatures: &[ChangeSig],
    ) -> Result<Result<bool, Refusal>, Self::Error>;

    /// Applies changes received sealed (Automerge change chunks, opened and checked by the
    /// session) to `doc`, which this device holds, durably, storing the `signatures` of
    /// the changes it applied in the same write. Returns whether the heads changed, or the
    /// refusal when they do not apply, with the document left as it was.
    fn receive_changes(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        bytes: &[u8],
        signatures: &[ChangeSig],
    ) -> Result<Result<bool, Refusal>, Self::Error>;

    /// Seals `doc` for the team's circle node, which holds no team key: the changes not
    /// among `since` and their ancestors (hashes this device lacks are passed over), or the
    /// whole document (`form`; only when this device holds every change of `since`, else
    /// the changes), encrypted under the current key of the document's scope and signed
    /// by this device. `None` when there is nothing to seal, or this device
    /// holds no current key of that scope. By default a replica seals nothing.
    fn seal(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        since: &[ChangeHash],
        form: SealedForm,
    ) -> Result<Option<Sealed>, Self::Error> {
        let _ = (team, doc, kind, since, form);
        Ok(None)
    }

    /// Opens a sealed document from the circle node with the team key it names: its
    /// Automerge bytes, or the refusal (no such key was given to this device, or it does
    /// not open).
    fn open_sealed(
        &mut self,
        team: TeamId,
        doc: DocId,
        sealed: &Sealed,
    ) -> Result<Result<Vec<u8>, Refusal>, Self::Error> {
        let _ = (team, doc);
        Ok(Err(Refusal::NoKey { scope: sealed.scope }))
    }

    /// On a circle node: stores a sealed document whose sealer and listed authorship the
    /// session has checked. Returns whether the document's heads changed, or the refusal
    /// (it follows changes not held here). A whole document replaces the sealed documents
    /// held before, and is stored only when it holds every change they do. By default a
    /// replica holds none.
    fn store_sealed(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        sealed: &Sealed,
    ) -> Result<Result<bool, Refusal>, Self::Error> {
        let _ = (team, doc, sealed);
        Ok(Err(Refusal::InClear { kind }))
    }

    /// On a circle node: the sealed documents of `doc` that hold a change not among
    /// `theirs` and their ancestors, in the order stored (which follows dependencies),
    /// stopping before they pass `bytes_max` in all (at least one is returned).
    fn sealed_after(
        &mut self,
        team: TeamId,
        doc: DocId,
        theirs: &[ChangeHash],
        bytes_max: usize,
    ) -> Result<Vec<Sealed>, Self::Error> {
        let _ = (team, doc, theirs, bytes_max);
        Ok(Vec::new())
    }

    /// On a circle node: whether it holds so many sealed documents of `doc` that it asks
    /// for the whole document, to replace them.
    fn wants_whole(&self, team: TeamId, doc: DocId) -> Result<bool, Self::Error> {
        let _ = (team, doc);
        Ok(false)
    }

    /// Replaces the sync state kept for `peer` and `doc` (after a whole document was sent
    /// or received outside Automerge's sync protocol).
    fn set_sync_state(&mut self, peer: DeviceId, doc: DocId, state: State);

    /// Drops the in-flight part of every sync state kept for `peer` (what was sent,
    /// what the peer said), keeping the persisted shared heads. Called when a session
    /// with `peer` starts and when it ends.
    fn reset_sync_state(&mut self, peer: DeviceId);

    /// This device's current month, if it keeps a clock: documents of months more than
    /// [`MONTHS_AHEAD_MAX`](crate::session::MONTHS_AHEAD_MAX) after it are refused from
    /// peers.
    fn this_month(&self) -> Option<Month> {
        None
    }

    /// Called after a session step panicked (a bug): drops whatever this replica holds in
    /// memory that the step may have left half-changed (loaded documents, the sync
    /// states of `peer`), so that what it serves next is reloaded from the store.
    fn recover_from_panic(&mut self, peer: DeviceId) {
        let _ = peer;
    }

    /// Gives the replica a way to wake its driver: a replica that does work on threads
    /// of its own (checking documents received whole) calls it when results are in, and
    /// the driver then calls [`Replica::poll_background`] (through
    /// [`Hub::background`](crate::Hub::background)). A replica without such work ignores it.
    fn set_waker(&mut self, waker: Box<dyn Fn() + Send>) {
        let _ = waker;
    }

    /// Takes in the results of work done on the replica's own threads, recording what
    /// they changed for [`Replica::take_changes`].
    fn poll_background(&mut self) {}

    /// What this replica changed since last asked that the device's sessions have not
    /// been told of: writes an app made through it, and documents a step discarded (to
    /// be fetched again). The [`Hub`](crate::Hub) asks after every step.
    fn take_changes(&mut self) -> Vec<Change> {
        Vec::new()
    }
}
