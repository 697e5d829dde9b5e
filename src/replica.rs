//! A home as the sync protocol sees it: its teams, membership logs and documents in
//! SQLite, with a per-peer Automerge sync state kept in memory during a session and saved
//! in the store when the session ends, so the next session resumes from it.

use automerge::sync::{Message, State, SyncDoc};
use automerge::{Automerge, ChangeHash};
use care_core::membership::{Access, OpBody, Role};
use care_core::{ChangeSig, DeviceId, DocId, DocKind, Sealed, SealedForm, SignedOp, TeamId};
use care_store::{DocMeta, Imported, StoredSignature, UpdateError};
use care_sync::join::{Invites, JoinRequest};
use care_sync::ticket::secret_hash;
use care_sync::{Change, HeldDoc, Import, Refusal, Replica, TeamAccess, agreed};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::home::{Home, Purpose};
use crate::upkeep::Upkeep;
use crate::verify::{Job, Loaded, Outcome, Stored, Verdict, Verifier};

impl Replica for Home {
    type Error = Error;

    fn device(&self) -> DeviceId {
        self.profile().device
    }

    fn teams(&self) -> Result<Vec<TeamId>> {
        Ok(self.store.teams()?)
    }

    fn ops(&self, team: TeamId) -> Result<Vec<SignedOp>> {
        self.signed_ops(team)
    }

    fn team_access(&self, team: TeamId) -> Result<TeamAccess> {
        Home::team_access(self, team)
    }

    fn teams_with(&self, device: DeviceId) -> Result<Vec<TeamId>> {
        Home::teams_with(self, device)
    }

    fn add_ops(&mut self, team: TeamId, ops: &[SignedOp]) -> Result<()> {
        self.store_ops(team, ops)
    }

    fn heads(&self, team: TeamId, doc: DocId) -> Result<Option<Vec<ChangeHash>>> {
        if let Some(summary) = self.store.doc_summary(doc)? {
            return Ok((summary.team == team).then_some(summary.heads));
        }
        // A circle node holds its teams' documents sealed.
        let sealed = self.store.sealed_doc(doc)?;
        Ok(sealed.filter(|s| s.team == team).map(|s| s.heads))
    }

    fn docs(&self, team: TeamId) -> Result<Vec<HeldDoc>> {
        let clear = self.store.docs(Some(team))?.into_iter().map(|d| (d.id, d.kind, d.heads));
        let sealed = self.store.sealed_docs(team)?.into_iter().map(|d| (d.id, d.kind, d.heads));
        Ok(clear
            .chain(sealed)
            .filter_map(|(id, kind, heads)| Some(HeldDoc { id, kind: kind.parse().ok()?, heads }))
            .collect())
    }

    fn generate_sync_message(
        &mut self,
        peer: DeviceId,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
    ) -> Result<Option<Message>> {
        if self.awaits_check(doc)? {
            // Nothing is said of a document received whole until it is checked.
            return Ok(None);
        }
        let mut state = self.take_sync_state(peer, doc)?;
        if self
            .stored_heads_if_unloaded(doc)?
            .is_some_and(|ours| agreed::nothing_to_send(&state, &ours))
        {
            self.sync_states.insert((peer, doc), state);
            return Ok(None);
        }
        let message = match self.doc(team, kind, Purpose::Read)? {
            Some(stored) => stored.doc().generate_sync_message(&mut state),
            None => Automerge::new().generate_sync_message(&mut state),
        };
        self.sync_states.insert((peer, doc), state);
        Ok(message)
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
        let mut state = self.take_sync_state(peer, doc)?;
        if self
            .stored_heads_if_unloaded(doc)?
            .is_some_and(|ours| agreed::receive(&mut state, &ours, &message))
        {
            self.sync_states.insert((peer, doc), state);
            return Ok(Ok(false));
        }
        self.doc(team, kind, Purpose::Write)?;
        let Home { store, docs, pending_signatures, .. } = self;
        let stored = docs.get_mut(&doc).expect("the document was loaded into the cache just above");
        let before = stored.doc().get_heads();
        let received = store.update_doc_signed(
            stored,
            |am| am.receive_sync_message(&mut state, message),
            |new| pending_signatures.take_for(new, signatures).iter().map(to_stored).collect(),
        );
        // Changes held back for what they depend on keep their signatures until then (a
        // message rolled back keeps nothing).
        if received.is_ok() {
            let applied = |h: &ChangeHash| stored.doc().get_change_meta_by_hash(h).is_some();
            pending_signatures.keep_unapplied(signatures, applied);
        }
        let changed = stored.doc().get_heads() != before;
        self.sync_states.insert((peer, doc), state);
        match received {
            Ok(()) => Ok(Ok(changed)),
            // The store rolled the document back: the session refuses these changes and
            // goes on with the others.
            Err(UpdateError::Rejected(e)) => Ok(Err(Refusal::DoesNotApply(e.to_string()))),
            Err(UpdateError::Store(e)) => Err(Error::Store(e)),
        }
    }

    fn signatures(
        &mut self,
        _team: TeamId,
        doc: DocId,
        hashes: Option<&[ChangeHash]>,
    ) -> Result<Vec<ChangeSig>> {
        let mut signatures = stored_signatures_of(&self.store, doc, hashes)?;
        // A change held back for what it depends on can still be offered by Automerge.
        if let Some(hashes) = hashes.filter(|h| h.len() > signatures.len()) {
            let found: std::collections::HashSet<[u8; 32]> =
                signatures.iter().map(|s| s.hash).collect();
            let pending = hashes.iter().filter(|h| !found.contains(&h.0));
            signatures.extend(pending.filter_map(|h| self.pending_signatures.get(h)).cloned());
        }
        Ok(signatures)
    }

    fn doc_count(&self, team: TeamId) -> Result<usize> {
        Ok(self.store.doc_count(team)? + self.store.sealed_docs(team)?.len())
    }

    fn holds(&self, _team: TeamId, doc: DocId) -> Result<bool> {
        Ok(self.docs.contains_key(&doc)
            || self.store.doc_summary(doc)?.is_some()
            || self.store.sealed_doc(doc)?.is_some())
    }

    /// A document received whole and never loaded here (a circle node passes most on
    /// without using them) is verified before it is passed on: one that fails is
    /// discarded and never reaches another device.
    fn snapshot(&mut self, team: TeamId, doc: DocId) -> Result<Option<Arc<Vec<u8>>>> {
        if self.awaits_check(doc)? {
            // Passed on once its check is done.
            return Ok(None);
        }
        if self.store.is_unverified(doc)? {
            let kind = self.store.doc_summary(doc)?.and_then(|s| s.kind.parse::<DocKind>().ok());
            let Some(kind) = kind else {
                return Ok(None);
            };
            if self.doc(team, kind, Purpose::Read)?.is_none() {
                return Ok(None);
            }
            // Verified, and now marked so; a relay need not keep it in memory.
            self.docs.remove(&doc);
        }
        let Some(summary) = self.store.doc_summary(doc)? else {
            return Ok(None);
        };
        if let Some(kept) =
            self.last_whole.as_mut().filter(|k| k.doc == doc && k.heads == summary.heads)
        {
            kept.kept_at = std::time::Instant::now();
            return Ok(Some(Arc::clone(&kept.bytes)));
        }
        let bytes = self.store.doc_bytes(doc)?;
        Ok(bytes.map(|bytes| self.keep_whole(doc, &summary.heads, bytes)))
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
        if self.store.doc_summary(doc)?.is_some() {
            return Ok(Import::Held(bytes));
        }
        let signatures: Vec<StoredSignature> = signatures.iter().map(to_stored).collect();
        // A large document is written a piece at a time, between other work.
        let (bytes, signatures) =
            match self.take_arriving(team, doc, kind, bytes, heads, signatures) {
                Ok(import) => return Ok(import),
                Err(given_back) => given_back,
            };
        let meta = DocMeta { id: doc, team, kind: kind.to_string() };
        if self.store.import_doc(&meta, &bytes, heads, &signatures)? == Imported::AlreadyHeld {
            return Ok(Import::Held(bytes));
        }
        // Stored as received, as its only chunk: these are its stored bytes.
        let bytes = self.keep_whole(doc, heads, bytes);
        self.check_received(team, doc, kind, heads.to_vec(), bytes)
    }

    fn merge_snapshot(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        mut loaded: Automerge,
        signatures: &[ChangeSig],
    ) -> Result<std::result::Result<bool, Refusal>> {
        self.apply_received(team, doc, kind, signatures, |am| am.merge(&mut loaded).map(|_| ()))
    }

    fn receive_changes(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        bytes: &[u8],
        signatures: &[ChangeSig],
    ) -> Result<std::result::Result<bool, Refusal>> {
        self.apply_received(team, doc, kind, signatures, |am| {
            am.load_incremental(bytes).map(|_| ())
        })
    }

    fn seal(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        since: &[ChangeHash],
        form: SealedForm,
    ) -> Result<Option<Sealed>> {
        self.seal_doc(team, doc, kind, since, form)
    }

    fn open_sealed(
        &mut self,
        team: TeamId,
        doc: DocId,
        sealed: &Sealed,
    ) -> Result<std::result::Result<Vec<u8>, Refusal>> {
        self.open_sealed_doc(team, doc, sealed)
    }

    fn store_sealed(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        sealed: &Sealed,
    ) -> Result<std::result::Result<bool, Refusal>> {
        self.store_sealed_doc(team, doc, kind, sealed)
    }

    fn sealed_after(
        &mut self,
        _team: TeamId,
        doc: DocId,
        theirs: &[ChangeHash],
        bytes_max: usize,
    ) -> Result<Vec<Sealed>> {
        self.sealed_docs_after(doc, theirs, bytes_max)
    }

    fn wants_whole(&self, _team: TeamId, doc: DocId) -> Result<bool> {
        self.wants_whole_doc(doc)
    }

    fn set_sync_state(&mut self, peer: DeviceId, doc: DocId, state: State) {
        self.sync_states.insert((peer, doc), state);
    }

    fn this_month(&self) -> Option<care_core::Month> {
        Some(care_core::Month::of_timestamp(self.now()))
    }

    fn recover_from_panic(&mut self, peer: DeviceId) {
        self.forget_unsaved(peer);
    }

    fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changed)
    }

    fn set_waker(&mut self, waker: Box<dyn Fn() + Send>) {
        let waker = Arc::new(Mutex::new(waker));
        self.waker = Some(Arc::clone(&waker));
        // Writes here leave copying the log, and compacting, to a thread of its own.
        let wake = Arc::clone(&waker);
        let wake = Box::new(move || (crate::verify::lock(&wake))());
        match Upkeep::start(self.store.path(), self.store.key(), wake) {
            Ok(upkeep) => {
                if let Err(e) = self.store.leave_checkpoints(upkeep.checkpoint_asker()) {
                    tracing::warn!("cannot leave checkpoints to a thread: {e}");
                }
                self.store.leave_compaction(upkeep.compaction_asker());
                self.upkeep = Some(upkeep);
            }
            Err(e) => tracing::warn!("cannot start the thread keeping up the store: {e}"),
        }
        let wake = Box::new(move || (crate::verify::lock(&waker))());
        match Verifier::start(self.store.path(), self.store.key().cloned(), wake) {
            Ok(verifier) => self.verifier = Some(verifier),
            // Without the worker, documents are checked when first loaded.
            Err(e) => tracing::warn!("cannot start the thread checking received documents: {e}"),
        }
    }

    fn poll_background(&mut self) {
        // Kept bytes serve the devices catching up at about the same time, then go.
        if self.last_whole.as_ref().is_some_and(|k| k.kept_at.elapsed() > WHOLE_BYTES_KEPT_FOR) {
            self.last_whole = None;
        }
        let verdicts = self.verifier.as_mut().map(Verifier::verdicts).unwrap_or_default();
        for verdict in verdicts {
            if let Err(e) = self.take_verdict(verdict) {
                tracing::warn!("cannot record the check of a received document: {e}");
            }
        }
        let compactions = self.upkeep.as_ref().map(Upkeep::compactions).unwrap_or_default();
        for compaction in compactions {
            if let Err(e) = self.store.finish_compaction(compaction) {
                tracing::warn!("cannot put a compacted document in place: {e}");
            }
        }
        self.write_arriving_piece();
    }

    fn reset_sync_state(&mut self, peer: DeviceId) {
        let ended: Vec<(DocId, Vec<u8>)> = self
            .sync_states
            .extract_if(|(p, _), _| *p == peer)
            .map(|((_, doc), state)| (doc, state.encode()))
            .collect();
        if ended.is_empty() {
            return;
        }
        let states = ended.iter().map(|(doc, state)| (*doc, state.as_slice()));
        // Losing saved sync states only costs a longer exchange next time.
        if let Err(e) = self.store.set_sync_states(peer, states) {
            tracing::warn!("cannot save the sync states of a session that ended: {e}");
        }
    }
}

/// The signatures `store` holds of `doc`'s changes (of `hashes`, or all); one that does
/// not read makes the document damaged.
pub(crate) fn stored_signatures_of(
    store: &care_store::Store,
    doc: DocId,
    hashes: Option<&[ChangeHash]>,
) -> std::result::Result<Vec<ChangeSig>, care_store::StoreError> {
    store
        .signatures(doc, hashes)?
        .into_iter()
        .map(|s| {
            ChangeSig::from_stored(s.hash.0, &s.context, &s.signature)
                .map_err(|e| care_store::StoreError::Corrupt { doc, detail: e.to_string() })
        })
        .collect()
}

/// Largest document whose bytes a home keeps after receiving or sending it whole: a
/// circle node passes a new member's year of notes on to each device in turn, and
/// reading it back from an encrypted store costs far more than the copy.
pub const WHOLE_BYTES_KEPT_MAX: usize = 64 << 20;

/// How long a home keeps those bytes after it last received, read or sent them.
const WHOLE_BYTES_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// The stored bytes of one document at its heads (sorted).
#[derive(Debug)]
pub(crate) struct WholeBytes {
    doc: DocId,
    heads: Vec<ChangeHash>,
    bytes: Arc<Vec<u8>>,
    kept_at: std::time::Instant,
}

/// A signature as the store keeps it.
pub(crate) fn to_stored(sig: &ChangeSig) -> StoredSignature {
    StoredSignature {
        hash: ChangeHash(sig.hash),
        context: sig.context_bytes(),
        signature: sig.signature.0.to_vec(),
    }
}

impl Home {
    /// After a panic in a session step: forget the loaded documents (each is reloaded
    /// from the store, where every write is a committed transaction) and the in-flight
    /// sync states of `peer`.
    /// Applies received changes to `doc` (`apply`, on the document loaded for writing) in
    /// one durable write, storing the signatures of the changes that entered it; those
    /// held back for what they depend on keep theirs until then. Returns whether the heads
    /// moved, or the refusal when the changes do not apply, the document left as it was.
    fn apply_received(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        signatures: &[ChangeSig],
        apply: impl FnOnce(&mut Automerge) -> std::result::Result<(), automerge::AutomergeError>,
    ) -> Result<std::result::Result<bool, Refusal>> {
        self.doc(team, kind, Purpose::Write)?;
        let Home { store, docs, pending_signatures, .. } = self;
        let stored = docs.get_mut(&doc).expect("the document was loaded into the cache just above");
        let before = stored.doc().get_heads();
        let applied = store.update_doc_signed(stored, apply, |new| {
            pending_signatures.take_for(new, signatures).iter().map(to_stored).collect()
        });
        if applied.is_ok() {
            let held = |h: &ChangeHash| stored.doc().get_change_meta_by_hash(h).is_some();
            pending_signatures.keep_unapplied(signatures, held);
        }
        match applied {
            Ok(()) => Ok(Ok(stored.doc().get_heads() != before)),
            Err(UpdateError::Rejected(e)) => Ok(Err(Refusal::DoesNotApply(e.to_string()))),
            Err(UpdateError::Store(e)) => Err(Error::Store(e)),
        }
    }

    fn forget_unsaved(&mut self, peer: DeviceId) {
        self.docs.clear();
        self.sync_states.retain(|(p, _), _| *p != peer);
    }
}

impl Invites for Home {
    fn redeem(
        &mut self,
        device: DeviceId,
        request: &JoinRequest,
    ) -> std::result::Result<(TeamId, Vec<SignedOp>), String> {
        self.redeem_invite(device, request).map_err(|e| e.to_string())
    }
}

impl Home {
    /// Adds the device presenting an invitation's secret to its team, as one new member
    /// with the invitation's role. A ticket never adds a device to someone already in
    /// the team (their own devices add their next ones), and it is spent only by a join
    /// that succeeded: if anything after the secret's check fails, it works again.
    fn redeem_invite(
        &mut self,
        device: DeviceId,
        request: &JoinRequest,
    ) -> Result<(TeamId, Vec<SignedOp>)> {
        let secret = secret_hash(&request.secret);
        let invite = self
            .store
            .redeem_invite(&secret, self.now().as_millis())?
            .map_err(|refusal| Error::Invalid(refusal.to_string()))?;
        let joined = self.add_invited(device, request, &invite);
        if joined.is_err() {
            self.store.restore_invite(&secret)?;
        }
        joined
    }

    /// The ops an invitation makes: the new member, then their device; or, for a device
    /// ticket, the device of the member who issued it.
    fn add_invited(
        &mut self,
        device: DeviceId,
        request: &JoinRequest,
        invite: &care_store::Invite,
    ) -> Result<(TeamId, Vec<SignedOp>)> {
        let team = invite.team;
        let membership = self.membership(team)?;
        if membership.members().any(|m| m.devices.contains_key(&device)) {
            return Err(Error::Invalid("this device is already in the team".into()));
        }
        if let Some(member) = invite.member {
            // A device ticket: issued by one of the member's own devices (this one), for
            // that member alone.
            if request.member != member {
                return Err(Error::Invalid(
                    "this device ticket is for another person's devices".into(),
                ));
            }
            let label = "added with a device ticket".to_owned();
            self.author_op(team, OpBody::AddDevice { member, device, label })?;
            return Ok((team, self.signed_ops(team)?));
        }
        let role: Role = invite
            .role
            .parse()
            .map_err(|e| Error::Invalid(format!("the invitation's role: {e}")))?;
        if membership.member(request.member).is_some() || membership.is_removed(request.member) {
            return Err(Error::Invalid(
                "this ticket invites a new member: it cannot add a device to someone already \
                 in the team (their own device adds it)"
                    .into(),
            ));
        }
        let name =
            if request.name.trim().is_empty() { invite.name.clone() } else { request.name.clone() };
        let member = request.member;
        self.author_op(team, OpBody::AddMember { member, name, role, hats: Vec::new() })?;
        let label = "joined with a ticket".to_owned();
        self.author_op(team, OpBody::AddDevice { member, device, label })?;
        Ok((team, self.signed_ops(team)?))
    }

    /// The heads of a document that is stored but not loaded into memory: sync messages
    /// that only confirm them are handled without loading it (see [`agreed`]).
    /// Records the check of a document received whole: marked verified and passed on, or
    /// discarded and asked for again. A document loaded (and so checked) meanwhile, or
    /// discarded, is left as it is.
    fn take_verdict(&mut self, verdict: Verdict) -> Result<()> {
        let Verdict { team, doc, kind, outcome } = verdict;
        if !self.store.is_unverified(doc)? {
            // Checked on a load meanwhile (a write to it, say), or discarded: either way
            // the sessions look at it again, for they may have been told nothing of it
            // while its check ran.
            self.changed.push(Change::Doc { team, doc, kind });
            return Ok(());
        }
        match outcome {
            Outcome::Passed(loaded) => {
                self.store.set_verified(doc)?;
                if let Some(loaded) = loaded {
                    self.keep_loaded(doc, loaded);
                }
            }
            // Left unverified, it is checked when first loaded or passed on.
            Outcome::Unchecked(why) => {
                tracing::warn!("a received {kind} document was not checked: {why}")
            }
            Outcome::Failed(refusal) => {
                tracing::warn!("discarding a {kind} document received from a peer: {refusal}");
                self.store.discard_unverified(doc)?;
                self.docs.remove(&doc);
                self.sync_states.retain(|(_, d), _| *d != doc);
            }
        }
        // Either way the sessions look at it again: to pass it on, or to fetch it anew.
        self.changed.push(Change::Doc { team, doc, kind });
        Ok(())
    }

    /// Whether `doc` was received whole and waits for its check on a worker: nothing is
    /// said of it, nor is it passed on, until then. One loaded here meanwhile (and so
    /// checked as it was loaded: an app wrote to it, say) no longer waits.
    pub(crate) fn awaits_check(&self, doc: DocId) -> Result<bool> {
        Ok(self.verifier.as_ref().is_some_and(|v| v.is_pending(doc))
            && self.store.is_unverified(doc)?)
    }

    /// Keeps a document a worker loaded for its check, as if loaded here, when the cache
    /// has room for it: a device that has just received a document is likely to show it
    /// soon, and loading it again would take as long as the worker did. Documents already
    /// loaded are never dropped for it.
    fn keep_loaded(&mut self, doc: DocId, loaded: Box<Loaded>) {
        if self.docs.contains_key(&doc) || !self.docs.has_room_for(loaded.stored_bytes) {
            return;
        }
        // A copy that does not match the store (written or discarded meanwhile) is
        // dropped; the document is loaded from the store when used, and checked there.
        if let Ok(Some(stored)) = self.store.adopt_loaded(doc, loaded.doc, loaded.last_chunk) {
            self.docs.insert(doc, stored);
        }
    }

    /// Starts the check of a document just stored as received whole, as `bytes` (unless
    /// no worker runs: it is then checked when first loaded). Returns
    /// [`Import::Checking`] if started, [`Import::Stored`] if not.
    pub(crate) fn check_received(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        heads: Vec<ChangeHash>,
        bytes: Arc<Vec<u8>>,
    ) -> Result<Import> {
        if self.verifier.is_none() {
            return Ok(Import::Stored);
        }
        // The worker checks the bytes as received, without reading them back.
        let stored = self.store.last_chunk(doc)?.map(|last_chunk| Stored { bytes, last_chunk });
        let access = self.team_access(team)?;
        // A circle node passes documents on and never shows them: it keeps none loaded.
        let membership = access.membership();
        let keep_loaded = membership.access(self.device(), &kind) != Access::None
            && membership.role_of_device(self.device()) != Some(Role::Relay);
        let job = Job { team, doc, kind, heads, access, keep_loaded, stored };
        let queued = self.verifier.as_mut().is_some_and(|verifier| verifier.submit(job));
        Ok(if queued { Import::Checking } else { Import::Stored })
    }

    /// Keeps the stored bytes of a document (at `heads`) for the next device it goes to
    /// whole, in place of the last kept, if they are at most [`WHOLE_BYTES_KEPT_MAX`].
    /// Returns them, shared.
    pub(crate) fn keep_whole(
        &mut self,
        doc: DocId,
        heads: &[ChangeHash],
        bytes: Vec<u8>,
    ) -> Arc<Vec<u8>> {
        let bytes = Arc::new(bytes);
        self.last_whole = (bytes.len() <= WHOLE_BYTES_KEPT_MAX).then(|| {
            let mut heads = heads.to_vec();
            heads.sort();
            let bytes = Arc::clone(&bytes);
            WholeBytes { doc, heads, bytes, kept_at: std::time::Instant::now() }
        });
        bytes
    }

    fn stored_heads_if_unloaded(&self, doc: DocId) -> Result<Option<Vec<ChangeHash>>> {
        if self.docs.contains_key(&doc) {
            return Ok(None);
        }
        Ok(self.store.doc_summary(doc)?.map(|summary| summary.heads))
    }

    /// The state of the sync exchange with `peer` about `doc`: in memory during a
    /// session, else as saved at the end of the last one, else fresh.
    fn take_sync_state(&mut self, peer: DeviceId, doc: DocId) -> Result<State> {
        if let Some(state) = self.sync_states.remove(&(peer, doc)) {
            return Ok(state);
        }
        let saved = self.store.sync_state(peer, doc)?;
        Ok(saved.and_then(|bytes| State::decode(&bytes).ok()).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use automerge::ReadDoc;
    use automerge::transaction::Transactable;
    use automerge::{ActorId, ROOT};
    use care_core::documents::genesis;
    use care_core::{Month, NoteStream};

    use super::*;

    /// Signatures by `key` of every change of `bytes` after the first, under the team's
    /// membership as `home` holds it.
    fn signed_by(
        home: &Home,
        key: &care_core::DeviceKey,
        team: TeamId,
        kind: &DocKind,
        bytes: &[u8],
    ) -> Result<Vec<ChangeSig>> {
        let heads = home.team_access(team)?.membership().heads().to_vec();
        let doc = Automerge::load(bytes).map_err(|e| Error::Invalid(e.to_string()))?;
        let changes = doc.get_changes(&[]);
        Ok(changes
            .iter()
            .skip(1)
            .map(|c| ChangeSig::sign(key, team, kind.doc_id(team), c.hash().0, &heads))
            .collect())
    }

    /// A notes document of a team: its genesis, then one change by `actor`.
    fn received(team: TeamId, kind: &DocKind, actor: ActorId) -> (Vec<u8>, Vec<ChangeHash>) {
        received_with(team, kind, actor, false)
    }

    /// [`received`], with a second change by `actor` that rewrites the note (which notes'
    /// rules forbid) if `rewritten`.
    fn received_with(
        team: TeamId,
        kind: &DocKind,
        actor: ActorId,
        rewritten: bool,
    ) -> (Vec<u8>, Vec<ChangeHash>) {
        let mut doc = genesis(team, kind).with_actor(actor);
        let month = kind.month().expect("a notes document has a month");
        let entry = care_core::EntryId::new(month, [1; 8]).to_string();
        doc.transact(|tx| {
            let notes = tx.get(ROOT, "notes")?.expect("genesis made the container").1;
            let note = tx.put_object(&notes, entry, automerge::ObjType::Map)?;
            tx.put(&note, "written_by", "someone")
        })
        .map_err(|f| f.error)
        .expect("a change to a fresh document");
        if rewritten {
            let entry = care_core::EntryId::new(month, [1; 8]).to_string();
            doc.transact(|tx| {
                let notes = tx.get(ROOT, "notes")?.expect("genesis made the container").1;
                let note = tx.get(&notes, entry)?.expect("the note").1;
                tx.put(&note, "written_by", "someone else")
            })
            .map_err(|f| f.error)
            .expect("a second change");
        }
        let mut heads = doc.get_heads();
        heads.sort();
        (doc.save(), heads)
    }

    #[test]
    fn a_document_received_whole_is_checked_beside_the_owner_and_passed_on_only_then() -> Result<()>
    {
        let dir = tempfile::tempdir().map_err(|e| Error::Invalid(e.to_string()))?;
        let mut home = Home::init(dir.path(), "Ada")?;
        let team = home.create_team("Rosa's team")?;
        let (woken, wakes) = std::sync::mpsc::channel();
        home.set_waker(Box::new(move || {
            let _ = woken.send(());
        }));
        let own = home.profile().device;
        let kinds: Vec<DocKind> = [9, 10, 11, 12]
            .map(|m| DocKind::Notes {
                stream: NoteStream::Care,
                month: Month::new(2026, m).expect("a month"),
            })
            .to_vec();
        // One by a device of the team, signed; one under the first change's actor
        // (forged); one under this device's actor, signed by another key (forged); one
        // by this device, signed, that rewrites its note (against the notes' rules).
        let genesis_actor = ActorId::from(kinds[1].doc_id(team).as_bytes());
        let ids = kinds.iter().map(|k| k.doc_id(team)).collect::<Vec<_>>();
        let other = care_core::DeviceKey::from_seed([66; 32]);
        let signers = [&home.key.clone(), &home.key.clone(), &other, &home.key.clone()];
        let own_actor = ActorId::from(own.as_bytes());
        let actors = [own_actor.clone(), genesis_actor, own_actor.clone(), own_actor];
        let mut sent = Vec::new();
        for (i, actor) in actors.into_iter().enumerate() {
            let (bytes, heads) = received_with(team, &kinds[i], actor, i == 3);
            let sigs = signed_by(&home, signers[i], team, &kinds[i], &bytes)?;
            assert_eq!(
                home.import_snapshot(team, ids[i], kinds[i], bytes.clone(), &heads, &sigs)?,
                Import::Checking
            );
            sent.push(bytes);
        }
        // Until their verdicts are taken in, neither is passed on nor spoken of.
        let peer = care_core::DeviceKey::from_seed([3; 32]).device_id();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(home.snapshot(team, *id)?.map(|b| b.to_vec()), None);
            assert!(home.generate_sync_message(peer, team, *id, kinds[i])?.is_none());
        }
        for _ in 0..kinds.len() {
            wakes.recv_timeout(std::time::Duration::from_secs(30)).expect("a verdict");
        }
        home.changed.clear();
        home.poll_background();
        assert!(!home.store().is_unverified(ids[0])?, "the honest document is verified");
        assert!(home.docs.contains_key(&ids[0]), "and kept as the worker loaded it");
        assert_eq!(
            home.snapshot(team, ids[0])?.map(|b| b.to_vec()),
            Some(sent.remove(0)),
            "and passed on"
        );
        assert_eq!(home.signatures(team, ids[0], None)?.len(), 1, "with its signature");
        for forged in &ids[1..] {
            assert!(home.store().doc_summary(*forged)?.is_none(), "a forged one is discarded");
            assert!(!home.docs.contains_key(forged), "and not kept loaded");
            assert!(home.signatures(team, *forged, None)?.is_empty(), "with its signatures");
        }
        // The verdicts come from one worker per core, in any order.
        assert_eq!(home.changed.len(), kinds.len());
        for (id, kind) in ids.iter().zip(&kinds) {
            let change = Change::Doc { team, doc: *id, kind: *kind };
            assert!(home.changed.contains(&change), "the sessions look at {kind} again");
        }
        Ok(())
    }

    #[test]
    fn a_circle_node_keeps_no_checked_copy_loaded_where_a_member_does() -> Result<()> {
        let tmp = || tempfile::tempdir().map_err(|e| Error::Invalid(e.to_string()));
        let (ada_dir, bea_dir, circle_dir) = (tmp()?, tmp()?, tmp()?);
        let mut ada = Home::init(ada_dir.path(), "Ada")?;
        let team = ada.create_team("Rosa's team")?;
        let mut bea = Home::init(bea_dir.path(), "Bea")?;
        let mut circle = Home::init(circle_dir.path(), "Circle")?;
        for (home, role) in [(&bea, Role::Worker), (&circle, Role::Relay)] {
            let (member, device) = (home.profile().member, home.profile().device);
            let name = home.profile().name.clone();
            ada.author_op(team, OpBody::AddMember { member, name, role, hats: Vec::new() })?;
            ada.author_op(team, OpBody::AddDevice { member, device, label: "one".into() })?;
        }
        let ops = ada.ops(team)?;
        let month = Month::new(2026, 9).expect("a month");
        let kind = DocKind::Notes { stream: NoteStream::Care, month };
        let doc = kind.doc_id(team);
        let (bytes, heads) = received(team, &kind, ActorId::from(ada.device().as_bytes()));
        let signatures = signed_by(&ada, &ada.key.clone(), team, &kind, &bytes)?;
        for (home, keeps) in [(&mut bea, true), (&mut circle, false)] {
            home.add_ops(team, &ops)?;
            let (woken, wakes) = std::sync::mpsc::channel();
            home.set_waker(Box::new(move || {
                let _ = woken.send(());
            }));
            let imported =
                home.import_snapshot(team, doc, kind, bytes.clone(), &heads, &signatures)?;
            assert_eq!(imported, Import::Checking);
            wakes.recv_timeout(std::time::Duration::from_secs(30)).expect("a verdict");
            home.poll_background();
            assert!(!home.store().is_unverified(doc)?, "the document is verified");
            assert_eq!(
                home.docs.contains_key(&doc),
                keeps,
                "kept loaded on a member's device only"
            );
        }
        Ok(())
    }

    #[test]
    fn a_home_closed_while_a_worker_checks_leaves_no_connection_of_it_open() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Invalid(e.to_string()))?;
        let mut home = Home::init(dir.path(), "Ada")?;
        let team = home.create_team("Rosa's team")?;
        home.set_waker(Box::new(|| {}));
        // A document of a few hundred signed changes: its check keeps a worker busy for a
        // while after it has read the bytes.
        let month = Month::new(2026, 9).expect("a month");
        let kind = DocKind::Notes { stream: NoteStream::Care, month };
        let doc = kind.doc_id(team);
        let mut received = genesis(team, &kind).with_actor(ActorId::from(home.device().as_bytes()));
        for i in 0..300_u32 {
            let entry = care_core::EntryId::new(month, [0; 8]);
            received
                .transact(|tx| {
                    let notes = tx.get(ROOT, "notes")?.expect("genesis made the container").1;
                    let note =
                        tx.put_object(&notes, format!("{entry}{i}"), automerge::ObjType::Map)?;
                    tx.put(&note, "text", "tea, two sugars")
                })
                .map_err(|f| f.error)
                .expect("a change to a fresh document");
        }
        let (bytes, mut heads) = (received.save(), received.get_heads());
        heads.sort();
        let signatures = signed_by(&home, &home.key.clone(), team, &kind, &bytes)?;
        let imported = home.import_snapshot(team, doc, kind, bytes.clone(), &heads, &signatures)?;
        assert_eq!(imported, Import::Checking);
        let log = dir.path().join(format!("{}-wal", crate::home::STORE_FILE));
        assert!(log.exists(), "the home's write-ahead log, while it is open");
        drop(home);
        // The last connection to close checkpoints the log and removes it: a worker's
        // connection still open (the worker checking on) would keep it.
        assert!(!log.exists(), "the workers' connections closed with the home");
        Ok(())
    }

    /// Carries every frame between two hubs until neither has anything more to say.
    fn exchange(sides: &mut [(care_sync::Hub, Home, care_sync::ConnId); 2]) {
        loop {
            let mut moved = false;
            for from in 0..2 {
                let effects = sides[from].0.take_effects();
                for effect in effects {
                    if let care_sync::Effect::Send { frame, .. } = effect {
                        moved = true;
                        let (hub, home, conn) = &mut sides[1 - from];
                        hub.frame(home, *conn, &frame.to_vec());
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Two homes, each with a hub running a session with the other.
    type Sides = [(care_sync::Hub, Home, care_sync::ConnId); 2];

    /// Ada, owner of a team with a note, and Bea, a worker of it whose home checks
    /// documents received whole beside its owner (each verdict signalled on the receiver
    /// returned), with a session between them that has exchanged nothing yet.
    fn ada_and_bea(
        dirs: &[tempfile::TempDir; 2],
    ) -> Result<(Sides, TeamId, std::sync::mpsc::Receiver<()>)> {
        let mut ada = Home::init(dirs[0].path(), "Ada")?;
        let mut bea = Home::init(dirs[1].path(), "Bea")?;
        let team = ada.create_team("Rosa's team")?;
        ada.team("")?
            .add_note(&crate::NewNote { text: "Tea at 8.".into(), ..Default::default() }, None)?;
        let (member, device) = (bea.profile().member, bea.profile().device);
        let body =
            OpBody::AddMember { member, name: "Bea".into(), role: Role::Worker, hats: vec![] };
        ada.author_op(team, body)?;
        ada.author_op(team, OpBody::AddDevice { member, device, label: "phone".into() })?;
        bea.add_ops(team, &ada.signed_ops(team)?)?;
        let (woken, wakes) = std::sync::mpsc::channel();
        bea.set_waker(Box::new(move || {
            let _ = woken.send(());
        }));

        let ada_device = ada.profile().device;
        let mut ada_hub = care_sync::Hub::new(ada_device);
        let mut bea_hub = care_sync::Hub::new(device);
        let to_bea = ada_hub
            .open(&mut ada, device, ada_device, 0)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let to_ada = bea_hub
            .open(&mut bea, ada_device, ada_device, 0)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(([(ada_hub, ada, to_bea), (bea_hub, bea, to_ada)], team, wakes))
    }

    /// Two temporary directories.
    fn two_dirs() -> Result<[tempfile::TempDir; 2]> {
        let dir = || tempfile::tempdir().map_err(|e| Error::Invalid(e.to_string()));
        Ok([dir()?, dir()?])
    }

    /// Whether the side `i`'s session reports the team in sync.
    fn in_sync(sides: &Sides, i: usize, team: TeamId) -> Option<bool> {
        sides[i].0.session(sides[i].2).map(|s| s.in_sync(team))
    }

    /// The documents Bea holds that are still unverified.
    fn unverified(sides: &Sides, team: TeamId) -> Result<Vec<HeldDoc>> {
        let bea = &sides[1].1;
        let held = Replica::docs(bea, team)?;
        Ok(held.into_iter().filter(|d| bea.store().is_unverified(d.id).unwrap_or(false)).collect())
    }

    /// A device whose node checks documents received whole beside its owner does not
    /// report the team in sync with the sender until every verdict is in.
    #[test]
    fn a_document_checked_beside_is_in_sync_only_after_its_verdict() -> Result<()> {
        let dirs = two_dirs()?;
        let (mut sides, team, wakes) = ada_and_bea(&dirs)?;
        exchange(&mut sides);
        let held = Replica::docs(&sides[1].1, team)?;
        assert!(held.len() >= 4, "Bea holds Ada's documents: {held:?}");
        assert_eq!(in_sync(&sides, 1, team), Some(false), "not in sync before the verdicts");

        let pending = unverified(&sides, team)?;
        assert!(!pending.is_empty());
        for _ in &pending {
            wakes.recv_timeout(std::time::Duration::from_secs(30)).expect("a verdict");
        }
        let (hub, home, _) = &mut sides[1];
        hub.background(home);
        exchange(&mut sides);
        assert_eq!(in_sync(&sides, 1, team), Some(true), "in sync once every verdict is in");
        Ok(())
    }

    /// Bea writes a note into the month of notes Ada has just sent her whole, before its
    /// check on a worker is done: the document is checked as it is loaded for the write,
    /// so her note goes to Ada at once; and the verdict, when it comes, has the sessions
    /// look at the document again (they were told nothing of it while it was checked).
    #[test]
    fn a_document_written_to_while_its_check_runs_is_passed_on_at_once() -> Result<()> {
        let dirs = two_dirs()?;
        let (mut sides, team, wakes) = ada_and_bea(&dirs)?;
        exchange(&mut sides);
        let pending = unverified(&sides, team)?;
        let notes = pending
            .iter()
            .find(|d| matches!(d.kind, DocKind::Notes { .. }))
            .expect("Ada's notes, being checked")
            .clone();
        assert!(sides[1].1.awaits_check(notes.id)?);

        let (hub, bea, _) = &mut sides[1];
        let visit = crate::NewNote { text: "Bea's visit.".into(), ..Default::default() };
        bea.team("")?.add_note(&visit, None)?;
        assert!(!bea.awaits_check(notes.id)?, "checked as it was loaded for the write");
        hub.replica_changed(bea);
        exchange(&mut sides);
        let texts = |home: &mut Home| -> Result<Vec<String>> {
            let all = home.team("")?.notes(&crate::NoteQuery::default())?;
            let mut texts: Vec<String> = all.into_iter().map(|n| n.text).collect();
            texts.sort();
            Ok(texts)
        };
        let both = vec!["Bea's visit.".to_owned(), "Tea at 8.".to_owned()];
        assert_eq!(texts(&mut sides[0].1)?, both, "Ada has Bea's note before any verdict");

        for _ in &pending {
            wakes.recv_timeout(std::time::Duration::from_secs(30)).expect("a verdict");
        }
        let (hub, bea, _) = &mut sides[1];
        bea.changed.clear();
        bea.poll_background();
        let looked_at = Change::Doc { team, doc: notes.id, kind: notes.kind };
        assert!(bea.changed.contains(&looked_at), "the sessions look at the notes again");
        hub.replica_changed(bea);
        exchange(&mut sides);
        assert_eq!(texts(&mut sides[1].1)?, both);
        assert_eq!(in_sync(&sides, 0, team), Some(true));
        assert_eq!(in_sync(&sides, 1, team), Some(true));
        Ok(())
    }

    #[test]
    fn a_document_received_whole_is_verified_when_first_used() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Invalid(e.to_string()))?;
        let mut home = Home::init(dir.path(), "Ada")?;
        let team = home.create_team("Rosa's team")?;
        let month = Month::new(2026, 11).expect("a month");
        let own = home.profile().device;
        let kinds: Vec<DocKind> = (0..4)
            .map(|i| DocKind::Notes {
                stream: NoteStream::Care,
                month: Month::new(2026, 9 + i).unwrap_or(month),
            })
            .collect();

        // By a device of the team: stored unloaded, verified on first use.
        let (bytes, heads) = received(team, &kinds[0], ActorId::from(own.as_bytes()));
        let id = kinds[0].doc_id(team);
        let sigs = signed_by(&home, &home.key, team, &kinds[0], &bytes)?;
        assert_eq!(
            home.import_snapshot(team, id, kinds[0], bytes.clone(), &heads, &sigs)?,
            Import::Stored
        );
        assert!(home.store().is_unverified(id)?);
        assert_eq!(home.store().doc_summary(id)?.map(|s| s.heads), Some(heads.clone()));
        assert!(home.doc(team, kinds[0], Purpose::Read)?.is_some());
        assert!(!home.store().is_unverified(id)?, "verified once loaded");

        // Under the actor of the deterministic first change, which anyone can take: it
        // passes the header check but not the check on first use, and is discarded.
        let genesis_actor = ActorId::from(kinds[1].doc_id(team).as_bytes());
        let (bytes, heads) = received(team, &kinds[1], genesis_actor);
        let id = kinds[1].doc_id(team);
        assert_eq!(
            home.import_snapshot(team, id, kinds[1], bytes.clone(), &heads, &[])?,
            Import::Stored
        );
        assert!(home.doc(team, kinds[1], Purpose::Read)?.is_none());
        assert!(home.store().doc_summary(id)?.is_none(), "the forged document is gone");

        // By a device of the team, signed, but rewriting its note: its rules refuse it.
        let (bytes, heads) = received_with(team, &kinds[3], ActorId::from(own.as_bytes()), true);
        let id = kinds[3].doc_id(team);
        let sigs = signed_by(&home, &home.key, team, &kinds[3], &bytes)?;
        assert_eq!(home.import_snapshot(team, id, kinds[3], bytes, &heads, &sigs)?, Import::Stored);
        assert!(home.doc(team, kinds[3], Purpose::Read)?.is_none());
        assert!(home.store().doc_summary(id)?.is_none(), "the rewritten note is gone");

        // Bytes that do not hold the heads they came with: discarded too, with what this
        // device had said of them to the peer, and fetched again at once.
        let (bytes, _) = received(team, &kinds[2], ActorId::from(own.as_bytes()));
        let id = kinds[2].doc_id(team);
        let wrong = vec![ChangeHash([7; 32])];
        let sigs = signed_by(&home, &home.key, team, &kinds[2], &bytes)?;
        assert_eq!(
            home.import_snapshot(team, id, kinds[2], bytes.clone(), &wrong, &sigs)?,
            Import::Stored
        );
        let peer = care_core::DeviceKey::from_seed([3; 32]).device_id();
        home.set_sync_state(peer, id, automerge::sync::State::new());
        home.changed.clear();
        assert!(home.doc(team, kinds[2], Purpose::Read)?.is_none());
        assert!(home.store().doc_summary(id)?.is_none());
        assert!(!home.sync_states.contains_key(&(peer, id)), "what was said of it is forgotten");
        let kind = kinds[2];
        assert_eq!(home.changed, vec![care_sync::Change::Doc { team, doc: id, kind }]);

        // A document already held is never replaced by an import.
        let (bytes, heads) = received(team, &kinds[0], ActorId::from(own.as_bytes()));
        assert_eq!(
            home.import_snapshot(
                team,
                kinds[0].doc_id(team),
                kinds[0],
                bytes.clone(),
                &heads,
                &[]
            )?,
            Import::Held(bytes)
        );
        Ok(())
    }

    #[test]
    fn a_document_passed_on_whole_is_read_once_and_never_stale() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Invalid(e.to_string()))?;
        let mut home = Home::init(dir.path(), "Ada")?;
        let team = home.create_team("Rosa's team")?;
        let own = home.profile().device;
        let kind = DocKind::Notes {
            stream: NoteStream::Care,
            month: Month::new(2026, 9).expect("a month"),
        };
        let id = kind.doc_id(team);
        let (bytes, heads) = received(team, &kind, ActorId::from(own.as_bytes()));
        let sigs = signed_by(&home, &home.key, team, &kind, &bytes)?;
        home.import_snapshot(team, id, kind, bytes.clone(), &heads, &sigs)?;
        // Passed on as received, and again to the next device from what was kept.
        assert_eq!(home.snapshot(team, id)?.map(|b| b.to_vec()).as_deref(), Some(bytes.as_slice()));
        assert_eq!(home.snapshot(team, id)?.map(|b| b.to_vec()).as_deref(), Some(bytes.as_slice()));

        // The document moves on: what is passed on is what is stored now.
        let mut newer = Automerge::load(&bytes).map_err(|e| Error::Invalid(e.to_string()))?;
        newer = newer.with_actor(ActorId::from(own.as_bytes()));
        newer
            .transact(|tx| tx.put(ROOT, "touched", true))
            .map_err(|f| Error::Invalid(f.error.to_string()))?;
        let newer_bytes = newer.save();
        let sigs = signed_by(&home, &home.key, team, &kind, &newer_bytes)?;
        assert_eq!(home.merge_snapshot(team, id, kind, newer, &sigs)?, Ok(true));
        let passed = home.snapshot(team, id)?.map(|b| b.to_vec()).expect("held");
        let stored = home.store().doc_bytes(id)?.expect("held");
        assert_eq!(passed, stored);
        let mut passed_heads =
            Automerge::load(&passed).map_err(|e| Error::Invalid(e.to_string()))?.get_heads();
        passed_heads.sort();
        assert_eq!(Some(passed_heads), home.store().doc_summary(id)?.map(|s| s.heads));
        assert_ne!(passed, bytes);
        Ok(())
    }

    /// The invitation attack: a ticket for a volunteer redeemed with the owner's member id
    /// (visible in the membership log) would have added the attacker's device to the
    /// owner, with the owner's rights. It is refused, the membership is unchanged, and the
    /// ticket still works for the one new member it was issued for, once.
    #[test]
    fn a_ticket_never_adds_a_device_to_an_existing_member() -> Result<()> {
        use care_core::{DeviceKey, MemberId, Timestamp};
        let dir = tempfile::tempdir().map_err(|e| Error::Invalid(e.to_string()))?;
        let mut home = Home::init(dir.path(), "Rosa")?;
        let team = home.create_team("Rosa's team")?;
        let owner = home.membership(team)?.owner();
        let expires = Timestamp(home.now().as_millis() + 3_600_000);
        let secret = home.create_invite(team, Role::Volunteer, "Neighbour", expires)?;
        let attacker = DeviceKey::from_seed([66; 32]).device_id();
        let before = home.signed_ops(team)?.len();

        let as_owner = JoinRequest { secret, member: owner, name: "Rosa".into() };
        let refused = home.redeem(attacker, &as_owner).expect_err("refused");
        assert!(refused.contains("cannot add a device to someone already"), "{refused}");
        assert_eq!(home.signed_ops(team)?.len(), before, "no op was written");
        assert!(home.membership(team)?.member_of_device(attacker).is_none());

        let fresh = MemberId::from_bytes([5; 16]);
        let honest = JoinRequest { secret, member: fresh, name: "Nia".into() };
        let (joined, _) = home.redeem(attacker, &honest).expect("the ticket still works");
        assert_eq!(joined, team);
        let membership = home.membership(team)?;
        let member = membership.member_of_device(attacker).expect("added");
        assert_eq!((member.id, member.role), (fresh, Role::Volunteer));
        let again = JoinRequest { secret, member: MemberId::from_bytes([6; 16]), name: "X".into() };
        assert!(home.redeem(DeviceKey::from_seed([67; 32]).device_id(), &again).is_err());
        Ok(())
    }

    /// A circle node passes on what it received whole without using it: before it does,
    /// the document is verified, and a forged one is discarded instead of forwarded.
    #[test]
    fn a_document_received_whole_is_verified_before_it_is_passed_on() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Invalid(e.to_string()))?;
        let mut home = Home::init(dir.path(), "Circle")?;
        let team = home.create_team("Rosa's team")?;
        let own = home.profile().device;
        let honest = DocKind::Notes {
            stream: NoteStream::Care,
            month: Month::new(2026, 9).expect("a month"),
        };
        let forged = DocKind::Notes {
            stream: NoteStream::Care,
            month: Month::new(2026, 10).expect("a month"),
        };
        let (bytes, heads) = received(team, &honest, ActorId::from(own.as_bytes()));
        let sigs = signed_by(&home, &home.key, team, &honest, &bytes)?;
        home.import_snapshot(team, honest.doc_id(team), honest, bytes.clone(), &heads, &sigs)?;
        let genesis_actor = ActorId::from(forged.doc_id(team).as_bytes());
        let (bad, bad_heads) = received(team, &forged, genesis_actor);
        home.import_snapshot(team, forged.doc_id(team), forged, bad.clone(), &bad_heads, &[])?;

        assert_eq!(home.snapshot(team, honest.doc_id(team))?.map(|b| b.to_vec()), Some(bytes));
        assert!(!home.store().is_unverified(honest.doc_id(team))?);
        assert_eq!(
            home.snapshot(team, forged.doc_id(team))?.map(|b| b.to_vec()),
            None,
            "never forwarded"
        );
        assert!(home.store().doc_summary(forged.doc_id(team))?.is_none(), "discarded");
        Ok(())
    }

    /// A device ticket adds a device only to the member whose device issued it: a join
    /// request that names anyone else is refused, and the ticket still works after.
    #[test]
    fn a_device_ticket_adds_a_device_to_its_issuer_only() -> Result<()> {
        use care_core::{DeviceKey, MemberId, Timestamp};
        let dir = tempfile::tempdir().map_err(|e| Error::Invalid(e.to_string()))?;
        let mut home = Home::init(dir.path(), "Rosa")?;
        let team = home.create_team("Rosa's team")?;
        let rosa = home.profile().member;
        let expires = Timestamp(home.now().as_millis() + 3_600_000);
        let secret = home.create_device_invite(team, expires)?;
        let tablet = DeviceKey::from_seed([70; 32]).device_id();

        let someone =
            JoinRequest { secret, member: MemberId::from_bytes([9; 16]), name: "X".into() };
        let refused = home.redeem(tablet, &someone).expect_err("not Rosa");
        assert!(refused.contains("another person"), "{refused}");
        assert!(home.membership(team)?.member_of_device(tablet).is_none());

        let rosas = JoinRequest { secret, member: rosa, name: "Rosa".into() };
        home.redeem(tablet, &rosas).expect("Rosa's tablet joins");
        let membership = home.membership(team)?;
        assert_eq!(membership.member_of_device(tablet).map(|m| m.id), Some(rosa));
        assert_eq!(membership.members().count(), 1, "no member was added");
        Ok(())
    }
}
