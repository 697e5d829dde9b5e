//! A home as the sync protocol sees it: its teams, membership logs and documents in
//! SQLite, with a per-peer Automerge sync state kept in memory during a session and saved
//! in the store when the session ends, so the next session resumes from it.

use automerge::Automerge;
use automerge::sync::{Message, State, SyncDoc};
use care_core::membership::{OpBody, Role};
use care_core::{DeviceId, DocId, DocKind, SignedOp, TeamId};
use care_store::{DocMeta, Imported, UpdateError};
use care_sync::join::{Invites, JoinRequest};
use care_sync::ticket::secret_hash;
use care_sync::{HeldDoc, Replica};

use crate::error::{Error, Result};
use crate::home::{Home, Purpose};

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

    fn add_ops(&mut self, team: TeamId, ops: &[SignedOp]) -> Result<()> {
        let rows: Vec<_> = ops.iter().map(|op| (op.hash(), op.to_bytes())).collect();
        self.store.insert_ops(team, &rows)?;
        Ok(())
    }

    fn docs(&self, team: TeamId) -> Result<Vec<HeldDoc>> {
        Ok(self
            .store
            .docs(Some(team))?
            .into_iter()
            .filter_map(|d| Some(HeldDoc { id: d.id, kind: d.kind.parse().ok()?, heads: d.heads }))
            .collect())
    }

    fn generate_sync_message(
        &mut self,
        peer: DeviceId,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
    ) -> Result<Option<Message>> {
        let mut state = self.take_sync_state(peer, doc)?;
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
    ) -> Result<bool> {
        let mut state = self.take_sync_state(peer, doc)?;
        self.doc(team, kind, Purpose::Write)?;
        let Home { store, docs, .. } = self;
        let stored = docs.get_mut(&doc).expect("the document was loaded into the cache just above");
        let before = stored.doc().get_heads();
        let received = store.update_doc(stored, |am| am.receive_sync_message(&mut state, message));
        let changed = stored.doc().get_heads() != before;
        self.sync_states.insert((peer, doc), state);
        received.map_err(|e| match e {
            UpdateError::Store(e) => Error::Store(e),
            UpdateError::Rejected(e) => {
                Error::Invalid(format!("a sync message for {kind} does not apply: {e}"))
            }
        })?;
        Ok(changed)
    }

    fn snapshot(&mut self, _team: TeamId, doc: DocId) -> Result<Option<Vec<u8>>> {
        Ok(self.store.doc_bytes(doc)?)
    }

    fn receive_snapshot(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        bytes: &[u8],
        loaded: Automerge,
    ) -> Result<bool> {
        let meta = DocMeta { id: doc, team, kind: kind.to_string() };
        let mut loaded = match self.store.import_doc(&meta, bytes, loaded)? {
            Imported::Stored(imported) => {
                self.docs.insert(doc, imported);
                return Ok(true);
            }
            Imported::AlreadyHeld(loaded) => loaded,
        };
        self.doc(team, kind, Purpose::Write)?;
        let Home { store, docs, .. } = self;
        let stored = docs.get_mut(&doc).expect("the document was loaded into the cache just above");
        let before = stored.doc().get_heads();
        store.update_doc(stored, |am| am.merge(&mut loaded).map(|_| ())).map_err(|e| match e {
            UpdateError::Store(e) => Error::Store(e),
            UpdateError::Rejected(e) => {
                Error::Invalid(format!("a received {kind} does not merge: {e}"))
            }
        })?;
        Ok(stored.doc().get_heads() != before)
    }

    fn reset_sync_state(&mut self, peer: DeviceId) {
        let ended: Vec<(DocId, State)> = self
            .sync_states
            .extract_if(|(p, _), _| *p == peer)
            .map(|((_, doc), state)| (doc, state))
            .collect();
        for (doc, state) in ended {
            // Losing a saved sync state only costs a longer exchange next time.
            let _ = self.store.set_sync_state(peer, doc, &state.encode());
        }
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
    /// Adds the device presenting an invitation's secret to its team: as a new member
    /// with the invitation's role, or as another device of a person already in the team.
    fn redeem_invite(
        &mut self,
        device: DeviceId,
        request: &JoinRequest,
    ) -> Result<(TeamId, Vec<SignedOp>)> {
        let invite = self
            .store
            .redeem_invite(&secret_hash(&request.secret), self.now().as_millis())?
            .map_err(|refusal| Error::Invalid(refusal.to_string()))?;
        let team = invite.team;
        let role: Role = invite
            .role
            .parse()
            .map_err(|e| Error::Invalid(format!("the invitation's role: {e}")))?;
        let membership = self.membership(team)?;
        if membership.member(request.member).is_none() {
            let name = if request.name.trim().is_empty() {
                invite.name.clone()
            } else {
                request.name.clone()
            };
            self.author_op(
                team,
                OpBody::AddMember { member: request.member, name, role, hats: Vec::new() },
            )?;
        }
        let label = "joined with a ticket".to_owned();
        self.author_op(team, OpBody::AddDevice { member: request.member, device, label })?;
        Ok((team, self.signed_ops(team)?))
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
