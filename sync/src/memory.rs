//! An in-memory [`Replica`]: Automerge documents, membership ops and per-peer sync states
//! in maps. Used by the simulation, the tests and the crate example.

use std::collections::{BTreeMap, HashMap};

use automerge::sync::{Message, State, SyncDoc};
use automerge::{Automerge, AutomergeError, ChangeHash, SaveOptions};
use care_core::documents::genesis;
use care_core::{ChangeSig, DeviceId, DeviceKey, DocId, DocKind, Month, SignedOp, TeamId};

use crate::access::{TeamAccess, check_document};
use crate::authorship::PendingSignatures;
use crate::refusal::Refusal;
use crate::replica::{HeldDoc, Import, Replica};

/// A failure of the in-memory replica.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Automerge refused the bytes.
    #[error("the document could not take the changes: {0}")]
    Automerge(#[from] AutomergeError),
    /// The membership log held does not replay.
    #[error("the membership log could not be read: {0}")]
    Membership(#[from] care_core::MembershipError),
    /// A document received whole failed the check made before its first use.
    #[error("a received document was refused: {0}")]
    Refused(String),
}

/// One device's state, in memory.
#[derive(Debug)]
pub struct MemoryReplica {
    device: DeviceId,
    /// The device's key, to sign what [`MemoryReplica::write`] writes (none: it writes
    /// nothing signed).
    key: Option<DeviceKey>,
    /// The signatures of the documents' changes, by document and change hash.
    signatures: HashMap<DocId, HashMap<[u8; 32], ChangeSig>>,
    /// Signatures of changes received ahead of what they depend on.
    pending: PendingSignatures,
    ops: BTreeMap<TeamId, BTreeMap<care_core::OpHash, SignedOp>>,
    docs: BTreeMap<(TeamId, DocId), (DocKind, Automerge)>,
    /// Per peer and document, as persisted between sessions (`State::encode`) and live.
    sync_states: BTreeMap<(DeviceId, DocId), State>,
    /// The month its clock shows, if it keeps one.
    this_month: Option<Month>,
}

impl MemoryReplica {
    /// Sets the month this replica's clock shows.
    pub fn set_this_month(&mut self, month: Month) {
        self.this_month = Some(month);
    }

    /// An empty replica for `device`, which signs nothing (a relay, an outsider).
    pub fn new(device: DeviceId) -> MemoryReplica {
        MemoryReplica {
            device,
            key: None,
            signatures: HashMap::new(),
            pending: PendingSignatures::default(),
            this_month: None,
            ops: BTreeMap::new(),
            docs: BTreeMap::new(),
            sync_states: BTreeMap::new(),
        }
    }

    /// An empty replica for the device whose key is `key`, which signs what it writes.
    pub fn with_key(key: DeviceKey) -> MemoryReplica {
        MemoryReplica { key: Some(key.clone()), ..MemoryReplica::new(key.device_id()) }
    }

    /// Changes the document of `kind` with `f` (creating it from its genesis change when
    /// missing), and signs the changes `f` made with this device's key, under the
    /// team's membership as this replica holds it.
    pub fn write<T, E: From<automerge::AutomergeError>>(
        &mut self,
        team: TeamId,
        kind: DocKind,
        f: impl FnOnce(&mut Automerge) -> Result<T, E>,
    ) -> Result<T, E> {
        let heads = self.doc_mut(team, kind).get_heads();
        let access = TeamAccess::from_ops(team, &self.ops(team).unwrap_or_default()).ok();
        let device = self.device;
        let doc = self.doc_mut(team, kind);
        // On the record, as a device writes, never on changes kept aside.
        let value = match &access {
            Some(access) => {
                let on = (kind.doc_id(team), &kind, access.membership(), device);
                care_core::kept_aside::write_on_record(doc, on, f)?
            }
            None => f(doc)?,
        };
        let new: Vec<ChangeHash> =
            self.doc_mut(team, kind).get_changes(&heads).iter().map(|c| c.hash()).collect();
        if let Some(key) = &self.key {
            let membership =
                access.map(|access| access.membership().heads().to_vec()).unwrap_or_default();
            let doc = kind.doc_id(team);
            let held = self.signatures.entry(doc).or_default();
            for hash in new {
                held.insert(hash.0, ChangeSig::sign(key, team, doc, hash.0, &membership));
            }
        }
        Ok(value)
    }

    /// The document of `kind`, created from its genesis change when missing. Changes made
    /// through it are not signed (tests use it to write what an attacker would);
    /// [`MemoryReplica::write`] signs.
    pub fn doc_mut(&mut self, team: TeamId, kind: DocKind) -> &mut Automerge {
        let id = kind.doc_id(team);
        &mut self.docs.entry((team, id)).or_insert_with(|| (kind, genesis(team, &kind))).1
    }

    /// The document `doc` of `team`, if held.
    pub fn doc(&self, team: TeamId, doc: DocId) -> Option<&Automerge> {
        self.docs.get(&(team, doc)).map(|(_, d)| d)
    }

    /// Keeps the signatures, among `signatures`, of the changes `new` to `doc`.
    fn keep_signatures(&mut self, doc: DocId, new: &[ChangeHash], signatures: &[ChangeSig]) {
        let by_hash: HashMap<[u8; 32], &ChangeSig> =
            signatures.iter().map(|s| (s.hash, s)).collect();
        let held = self.signatures.entry(doc).or_default();
        for hash in new {
            if let Some(sig) = by_hash.get(&hash.0) {
                held.insert(hash.0, (*sig).clone());
            }
        }
    }

    fn state(&mut self, peer: DeviceId, doc: DocId) -> &mut State {
        self.sync_states.entry((peer, doc)).or_default()
    }
}

impl Replica for MemoryReplica {
    type Error = MemoryError;

    fn device(&self) -> DeviceId {
        self.device
    }

    fn teams(&self) -> Result<Vec<TeamId>, MemoryError> {
        Ok(self.ops.keys().copied().collect())
    }

    fn ops(&self, team: TeamId) -> Result<Vec<SignedOp>, MemoryError> {
        Ok(self.ops.get(&team).map(|ops| ops.values().cloned().collect()).unwrap_or_default())
    }

    fn add_ops(&mut self, team: TeamId, ops: &[SignedOp]) -> Result<(), MemoryError> {
        let held = self.ops.entry(team).or_default();
        for op in ops {
            held.insert(op.hash(), op.clone());
        }
        Ok(())
    }

    fn docs(&self, team: TeamId) -> Result<Vec<HeldDoc>, MemoryError> {
        let range = self.docs.range((team, DocId::from_bytes([0; 16]))..);
        Ok(range
            .take_while(|((t, _), _)| *t == team)
            .map(|((_, id), (kind, doc))| HeldDoc { id: *id, kind: *kind, heads: doc.get_heads() })
            .collect())
    }

    fn heads(&self, team: TeamId, doc: DocId) -> Result<Option<Vec<ChangeHash>>, MemoryError> {
        Ok(self.docs.get(&(team, doc)).map(|(_, held)| held.get_heads()))
    }

    fn generate_sync_message(
        &mut self,
        peer: DeviceId,
        team: TeamId,
        doc: DocId,
        _kind: DocKind,
    ) -> Result<Option<Message>, MemoryError> {
        let Some((_, automerge)) = self.docs.get(&(team, doc)) else {
            return Ok(None);
        };
        let state = self.sync_states.entry((peer, doc)).or_default();
        Ok(automerge.generate_sync_message(state))
    }

    fn receive_sync_message(
        &mut self,
        peer: DeviceId,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        message: Message,
        signatures: &[ChangeSig],
    ) -> Result<Result<bool, Refusal>, MemoryError> {
        let mut state = std::mem::take(self.state(peer, doc));
        // A missing document starts from its genesis, so local writes find its structure
        // even before the peer's changes arrive.
        let automerge = self.doc_mut(team, kind);
        let before = automerge.get_heads();
        // Changes that fail half-way leave the document as it was, as the store does.
        let kept = (!message.changes.is_empty()).then(|| automerge.clone());
        let result = automerge.receive_sync_message(&mut state, message);
        if let (Err(_), Some(kept)) = (&result, kept) {
            *automerge = kept;
        }
        let changed = automerge.get_heads() != before;
        let new: Vec<ChangeHash> = match changed {
            true => automerge.get_changes(&before).iter().map(|c| c.hash()).collect(),
            false => Vec::new(),
        };
        // Changes held back for what they depend on are not in the document yet.
        let applied: std::collections::HashSet<ChangeHash> = signatures
            .iter()
            .map(|s| ChangeHash(s.hash))
            .filter(|h| automerge.get_change_meta_by_hash(h).is_some())
            .collect();
        let taken = self.pending.take_for(&new, signatures);
        if result.is_ok() {
            self.pending.keep_unapplied(signatures, |h| applied.contains(h));
        }
        self.keep_signatures(doc, &new, &taken);
        *self.state(peer, doc) = state;
        Ok(result.map(|()| changed).map_err(|e| Refusal::DoesNotApply(e.to_string())))
    }

    fn signatures(
        &mut self,
        _team: TeamId,
        doc: DocId,
        hashes: Option<&[ChangeHash]>,
    ) -> Result<Vec<ChangeSig>, MemoryError> {
        let empty = HashMap::new();
        let held = self.signatures.get(&doc).unwrap_or(&empty);
        Ok(match hashes {
            Some(hashes) => hashes
                .iter()
                .filter_map(|h| held.get(&h.0).or_else(|| self.pending.get(h)))
                .cloned()
                .collect(),
            None => held.values().cloned().collect(),
        })
    }

    fn holds(&self, team: TeamId, doc: DocId) -> Result<bool, MemoryError> {
        Ok(self.docs.contains_key(&(team, doc)))
    }

    fn snapshot(
        &mut self,
        team: TeamId,
        doc: DocId,
    ) -> Result<Option<std::sync::Arc<Vec<u8>>>, MemoryError> {
        // Without changes still waiting for what they depend on, as the store compacts.
        let options = SaveOptions { retain_orphans: false, ..SaveOptions::default() };
        Ok(self
            .docs
            .get(&(team, doc))
            .map(|(_, d)| std::sync::Arc::new(d.save_with_options(options))))
    }

    fn receive_changes(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        bytes: &[u8],
        signatures: &[ChangeSig],
    ) -> Result<Result<bool, Refusal>, MemoryError> {
        let automerge = self.doc_mut(team, kind);
        let before = automerge.get_heads();
        let kept = automerge.clone();
        if let Err(e) = automerge.load_incremental(bytes) {
            *automerge = kept;
            return Ok(Err(Refusal::DoesNotApply(e.to_string())));
        }
        let new: Vec<ChangeHash> =
            automerge.get_changes(&before).iter().map(|c| c.hash()).collect();
        let taken = self.pending.take_for(&new, signatures);
        self.keep_signatures(doc, &new, &taken);
        Ok(Ok(!new.is_empty()))
    }

    fn merge_snapshot(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        mut loaded: Automerge,
        signatures: &[ChangeSig],
    ) -> Result<Result<bool, Refusal>, MemoryError> {
        let (before, new) = match self.docs.get_mut(&(team, doc)) {
            Some((_, held)) => {
                let before = held.get_heads();
                let kept = held.clone();
                if let Err(e) = held.merge(&mut loaded) {
                    *held = kept;
                    return Ok(Err(Refusal::DoesNotApply(e.to_string())));
                }
                let new: Vec<ChangeHash> =
                    held.get_changes(&before).iter().map(|c| c.hash()).collect();
                (before, new)
            }
            None => {
                let new = loaded.get_changes(&[]).iter().map(|c| c.hash()).collect();
                self.docs.insert((team, doc), (kind, loaded));
                (Vec::new(), new)
            }
        };
        // Changes held back in the document for what they depend on may enter with it.
        let taken = self.pending.take_for(&new, signatures);
        self.keep_signatures(doc, &new, &taken);
        Ok(Ok(before.is_empty() || !new.is_empty()))
    }

    /// Loads and checks the document at once, as the product does when it first uses one.
    fn import_snapshot(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        bytes: Vec<u8>,
        heads: &[ChangeHash],
        signatures: &[ChangeSig],
    ) -> Result<Import, MemoryError> {
        if self.docs.contains_key(&(team, doc)) {
            return Ok(Import::Held(bytes));
        }
        let loaded = Automerge::load(&bytes)?;
        let mut loaded_heads = loaded.get_heads();
        loaded_heads.sort();
        if loaded_heads != heads {
            return Err(MemoryError::Refused("it does not hold the heads it lists".into()));
        }
        let access = TeamAccess::from_ops(team, &self.ops(team)?)
            .map_err(|e| MemoryError::Refused(e.to_string()))?;
        check_document(&access, team, &kind, &loaded, signatures).map_err(MemoryError::Refused)?;
        self.docs.insert((team, doc), (kind, loaded));
        self.signatures.insert(doc, signatures.iter().map(|s| (s.hash, s.clone())).collect());
        Ok(Import::Stored)
    }

    fn this_month(&self) -> Option<Month> {
        self.this_month
    }

    fn set_sync_state(&mut self, peer: DeviceId, doc: DocId, state: State) {
        *self.state(peer, doc) = state;
    }

    fn reset_sync_state(&mut self, peer: DeviceId) {
        for ((p, _), state) in self.sync_states.iter_mut() {
            if *p == peer {
                *state = State::decode(&state.encode()).unwrap_or_default();
            }
        }
    }
}
