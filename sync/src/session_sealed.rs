//! The exchange of sealed documents between a device and its team's circle node.
//!
//! The circle node holds no team key, so between it and a device documents go sealed
//! ([`care_core::sealed`]), never as Automerge sync messages or whole documents in clear.
//! A device seals what the circle node lacks (the whole document when it has none, the
//! changes after its heads otherwise) and sends it in one [`Frame::Sealed`]. The circle
//! node checks what it can without the content (the sealer, the listed changes' authors
//! and signatures), stores it, and answers with a [`Frame::SealedHeads`]. To a device
//! that lacks changes it sends the sealed documents holding them, in the order stored;
//! the device opens them, checks they hold what they list, and takes them through the
//! same checks as any change (authors, signatures, the document's rules) before it applies
//! them, then answers with its heads.

use std::collections::BTreeSet;

use automerge::sync::State;
use automerge::{ActorId, ChangeHash};
use care_core::keys::KeyScope;
use care_core::membership::Role;
use care_core::{ChangeSig, DocId, DocKind, Sealed, SealedForm, TeamId};

use super::{Session, Step, heads_bytes, sorted, store};
use crate::SyncEvent;
use crate::chunks::{INFLATED_BYTES_MAX, changes_in, checked_changes_in, inflated_len, whole_doc};
use crate::frame::{FRAME_BYTES_MAX, Frame, SEALED_PER_TRANSFER_MAX, SNAPSHOT_BYTES_MAX};
use crate::refusal::Refusal;
use crate::replica::Replica;
use crate::session::Output;

/// The sealed documents of one document received so far, until the last.
#[derive(Debug)]
pub(super) struct PartialSealed {
    team: TeamId,
    doc: DocId,
    total: u32,
    /// The number of the next one expected.
    next: u32,
    sealed: Vec<Sealed>,
    /// What they make this device hold, in bytes.
    held: usize,
}

/// What a [`Frame::Sealed`] says of itself.
pub(super) struct SealedFrame {
    pub(super) team: TeamId,
    pub(super) doc: DocId,
    pub(super) kind: DocKind,
    pub(super) index: u32,
    pub(super) total: u32,
    pub(super) heads: Vec<[u8; 32]>,
}

impl Session {
    /// Whether documents of `team` go sealed between the two devices: one of them is the
    /// team's circle node.
    pub(super) fn sealed(&self, team: TeamId) -> bool {
        self.shared.get(&team).is_some_and(|access| {
            let membership = access.membership();
            [self.local, self.remote]
                .into_iter()
                .any(|device| membership.role_of_device(device) == Some(Role::Relay))
        })
    }

    /// Whether the remote may send anything sealed about a `kind` document of `team`: as
    /// [`Session::check_sender`], and one of the two devices is the team's circle node.
    fn check_sealed_sender(&self, team: TeamId, kind: &DocKind) -> Result<(), Refusal> {
        self.check_sender(team, kind)?;
        if !self.sealed(team) {
            let why = "sealed documents between two devices that hold the team's keys";
            return Err(Refusal::Malformed(why.into()));
        }
        Ok(())
    }

    /// Whether sealed documents of `doc` are arriving from the remote.
    pub(super) fn partial_sealed_of(&self, team: TeamId, doc: DocId) -> bool {
        self.partial_sealed.as_ref().is_some_and(|p| p.team == team && p.doc == doc)
    }

    /// Whether this device is the team's circle node.
    pub(super) fn local_is_relay(&self, team: TeamId) -> bool {
        self.shared
            .get(&team)
            .is_some_and(|a| a.membership().role_of_device(self.local) == Some(Role::Relay))
    }

    /// Sends the remote what it lacks of `doc`, given its heads `theirs`, sealed: from a
    /// device, the changes after them (the whole document when it has none, or when
    /// `whole_wanted`); from the circle node, the sealed documents holding changes it
    /// lacks. The same request is answered once.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_sealed<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        theirs: &[ChangeHash],
        whole_wanted: bool,
        out: &mut Vec<Output>,
    ) -> Step {
        let ours = sorted(replica.heads(team, doc).map_err(store)?.unwrap_or_default());
        self.note_heads(team, doc, Some(ours.clone()), None);
        if ours.is_empty() || (ours == theirs && !whole_wanted) {
            return self.tell_if_changed(team, doc, kind, &ours, out);
        }
        let request = (theirs.to_vec(), ours.clone(), whole_wanted);
        let progress = self.progress.entry(team).or_default();
        if progress.sealed_sent.get(&doc) == Some(&request) {
            return self.tell_if_changed(team, doc, kind, &ours, out);
        }
        let sealed = if self.local_is_relay(team) {
            replica.sealed_after(team, doc, theirs, SNAPSHOT_BYTES_MAX).map_err(store)?
        } else {
            let form = match theirs.is_empty() || whole_wanted {
                true => SealedForm::Whole,
                false => SealedForm::Changes,
            };
            replica.seal(team, doc, kind, theirs, form).map_err(store)?.into_iter().collect()
        };
        if sealed.is_empty() {
            return self.tell_if_changed(team, doc, kind, &ours, out);
        }
        self.progress.entry(team).or_default().sealed_sent.insert(doc, request);
        let mut frames = Vec::new();
        let total = sealed.len().min(SEALED_PER_TRANSFER_MAX as usize) as u32;
        for (index, sealed) in sealed.into_iter().take(total as usize).enumerate() {
            let heads = heads_bytes(&ours);
            let index = index as u32;
            let sealed = Box::new(sealed);
            let frame = Frame::Sealed { team, doc, kind, index, total, heads, sealed }.encode();
            if frame.len() > FRAME_BYTES_MAX {
                // Past a frame: this document cannot reach the circle node sealed (a
                // named limit, as for a whole document past SNAPSHOT_BYTES_MAX).
                return Ok(());
            }
            frames.push(frame);
        }
        out.extend(frames.into_iter().map(|frame| Output::Send(frame.into())));
        self.progress.entry(team).or_default().told.insert(doc, ours);
        Ok(())
    }

    /// A [`Frame::Sealed`]: on the circle node, stored once checked; on a device, kept
    /// until the last of those sent together, then opened and applied.
    pub(super) fn on_sealed<R: Replica>(
        &mut self,
        replica: &mut R,
        frame: SealedFrame,
        sealed: Sealed,
        out: &mut Vec<Output>,
    ) -> Step {
        let SealedFrame { team, doc, kind, index, total, heads } = frame;
        if let Err(reason) = self.check_sealed_sender(team, &kind) {
            self.partial_sealed = None;
            self.refuse(team, Some(doc), reason, out);
            return Ok(());
        }
        let theirs = sorted(heads.into_iter().map(ChangeHash).collect());
        if self.local_is_relay(team) {
            if total != 1 {
                let why = "a device sends the circle node one sealed document at a time";
                self.refuse(team, Some(doc), Refusal::Malformed(why.into()), out);
                return Ok(());
            }
            return self.store_sealed(replica, team, doc, kind, theirs, sealed, out);
        }
        let mut partial = match self.partial_sealed.take() {
            None if index == 0 => {
                PartialSealed { team, doc, total, next: 0, sealed: Vec::new(), held: 0 }
            }
            Some(p) if p.team == team && p.doc == doc && p.total == total && p.next == index => p,
            _ => {
                let why =
                    format!("sealed document {index} of {total} of a {kind} document, out of turn");
                self.refuse(team, Some(doc), Refusal::Malformed(why), out);
                return Ok(());
            }
        };
        partial.held += sealed.size();
        if partial.held > SNAPSHOT_BYTES_MAX {
            let what = "bytes of sealed documents sent together";
            let reason = Refusal::over_limit(what, partial.held, SNAPSHOT_BYTES_MAX);
            self.refuse(team, Some(doc), reason, out);
            return Ok(());
        }
        partial.sealed.push(sealed);
        partial.next += 1;
        if partial.next < partial.total {
            self.partial_sealed = Some(partial);
            return Ok(());
        }
        self.open_sealed(replica, team, doc, kind, theirs, partial.sealed, out)
    }

    /// On the circle node: checks a sealed document as far as it can without the content,
    /// stores it, and answers with its heads (asking for the whole document when it holds
    /// many sealed documents of it), and with what the device lacks.
    #[allow(clippy::too_many_arguments)]
    fn store_sealed<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        theirs: Vec<ChangeHash>,
        sealed: Sealed,
        out: &mut Vec<Output>,
    ) -> Step {
        let verdict = self.check_sealer(team, doc, &kind, &sealed).and_then(|()| {
            let changes: Vec<(ActorId, Option<ChangeHash>)> = sealed
                .changes
                .iter()
                .map(|c| (ActorId::from(c.actor.as_slice()), Some(ChangeHash(c.hash))))
                .collect();
            self.check_authors(team, &kind, &changes)?;
            self.check_signed(team, doc, &kind, &changes, &sealed.signatures)?;
            let held = replica.holds(team, doc).unwrap_or(true);
            self.check_room(replica, team, held, &kind)
        });
        if let Err(reason) = verdict {
            self.refused(team, doc, theirs, reason, out);
            return Ok(());
        }
        match replica.store_sealed(team, doc, kind, &sealed).map_err(store)? {
            Ok(true) => out.push(Output::Event(SyncEvent::DocChanged { team, doc, kind })),
            Ok(false) => {}
            Err(reason) => {
                self.refused(team, doc, theirs, reason, out);
                return Ok(());
            }
        }
        let whole_wanted = replica.wants_whole(team, doc).map_err(store)?;
        self.tell_sealed_heads(replica, team, doc, kind, whole_wanted, out)?;
        self.note_heads(team, doc, None, Some(theirs.clone()));
        self.send_sealed(replica, team, doc, kind, &theirs, false, out)?;
        self.keep_agreement(replica, team, doc);
        self.settle(team, out);
        Ok(())
    }

    /// Whether `sealed` may be taken from the remote: sealed by it, in its name, a current
    /// device whose role holds keys of the document's scope, under a key of that scope it
    /// was given.
    fn check_sealer(
        &self,
        team: TeamId,
        doc: DocId,
        kind: &DocKind,
        sealed: &Sealed,
    ) -> Result<(), Refusal> {
        let sealer = sealed.sealer;
        let may_not = |why: String| Refusal::MayNotSeal { sealer, why };
        if sealer != self.remote {
            return Err(may_not(format!("device {} sent it", self.remote)));
        }
        sealed.check(team, doc).map_err(|why| Refusal::Sealed { sealer, why })?;
        let access =
            self.shared.get(&team).ok_or(Refusal::NotCurrent { device: self.remote, team })?;
        let membership = access.membership();
        let role = membership
            .role_of_device(sealer)
            .ok_or_else(|| may_not("not a current device".into()))?;
        let scope = KeyScope::of(kind);
        if sealed.scope != scope {
            return Err(may_not(format!("a {} key for a {kind} document", sealed.scope)));
        }
        if !scope.held_by(role) {
            return Err(may_not(format!("a {role} holds no {scope} key")));
        }
        let given = membership
            .keys(scope)
            .is_some_and(|keys| keys.wrapped.contains_key(&(sealed.key, sealer)));
        if !given {
            return Err(may_not(format!("under a {scope} key it was not given")));
        }
        Ok(())
    }

    /// On a device: opens the sealed documents of one document sent together, checks that
    /// each holds the changes it lists, and takes them in: with a whole document, as a
    /// document received whole; otherwise as changes, checked like those of a sync
    /// message. Answers with this device's heads.
    #[allow(clippy::too_many_arguments)]
    fn open_sealed<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        theirs: Vec<ChangeHash>,
        all: Vec<Sealed>,
        out: &mut Vec<Output>,
    ) -> Step {
        let mut bytes = Vec::new();
        let mut signatures: Vec<ChangeSig> = Vec::new();
        let mut whole = false;
        for (i, sealed) in all.into_iter().enumerate() {
            let sealer = sealed.sealer;
            let opened = match replica.open_sealed(team, doc, &sealed).map_err(store)? {
                Ok(opened) => opened,
                Err(reason) => {
                    self.refused(team, doc, theirs, reason, out);
                    return Ok(());
                }
            };
            let listed: BTreeSet<[u8; 32]> = sealed.changes.iter().map(|c| c.hash).collect();
            let as_listed = match sealed.form {
                // A whole document names its history by its heads: the hashes of its
                // changes cover what they follow.
                SealedForm::Whole => {
                    i == 0
                        && whole_doc(&opened).is_ok_and(|w| {
                            heads_bytes(&sorted(w.heads.clone())) == sealed.heads()
                                && w.heads.iter().all(|h| listed.contains(&h.0))
                        })
                }
                SealedForm::Changes => changes_in(&opened).is_ok_and(|found| {
                    found.len() == listed.len() && found.iter().all(|(_, h)| listed.contains(&h.0))
                }),
            };
            if !as_listed {
                self.refused(team, doc, theirs, Refusal::NotAsListed { sealer }, out);
                return Ok(());
            }
            whole |= sealed.form == SealedForm::Whole;
            bytes.extend_from_slice(&opened);
            signatures.extend(sealed.signatures);
        }
        if let Err(e) = inflated_len(&bytes, INFLATED_BYTES_MAX) {
            let reason = Refusal::Malformed(format!("sealed documents that do not read: {e}"));
            self.refused(team, doc, theirs, reason, out);
            return Ok(());
        }
        if whole {
            // The whole document and the changes after it: one document received whole.
            self.on_snapshot(replica, team, doc, kind, bytes, &signatures, out)?;
        } else if !self.take_changes(replica, team, doc, kind, &theirs, &bytes, &signatures, out)? {
            return Ok(());
        }
        self.tell_sealed_heads(replica, team, doc, kind, false, out)?;
        self.note_heads(team, doc, None, Some(theirs));
        self.keep_agreement(replica, team, doc);
        self.settle(team, out);
        Ok(())
    }

    /// Changes opened from sealed documents, checked as a sync message's are (the
    /// document's rules, authors, signatures), then applied. Returns whether they were.
    #[allow(clippy::too_many_arguments)]
    fn take_changes<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        theirs: &[ChangeHash],
        bytes: &[u8],
        signatures: &[ChangeSig],
        out: &mut Vec<Output>,
    ) -> Result<bool, crate::CloseReason> {
        let rules = self
            .rules
            .entry(doc)
            .or_insert_with(|| care_core::documents::ReceivedRules::new(team, &kind))
            .clone();
        let mut broken: Option<String> = None;
        let found = checked_changes_in(bytes, |change| {
            rules.check(change).inspect_err(|why| broken = Some(why.clone()))
        });
        let verdict = match found {
            Ok(found) => {
                let changes: Vec<(ActorId, Option<ChangeHash>)> =
                    found.into_iter().map(|(a, h)| (a, Some(h))).collect();
                self.check_authors(team, &kind, &changes)
                    .and_then(|()| self.check_signed(team, doc, &kind, &changes, signatures))
                    .and_then(|()| {
                        let held = replica.holds(team, doc).unwrap_or(true);
                        self.check_room(replica, team, held, &kind)
                    })
            }
            Err(why) => Err(match broken {
                Some(rule) => Refusal::BreaksDocumentRules(rule),
                None => Refusal::Malformed(why),
            }),
        };
        if let Err(reason) = verdict {
            self.refused(team, doc, theirs.to_vec(), reason, out);
            return Ok(false);
        }
        match replica.receive_changes(team, doc, kind, bytes, signatures).map_err(store)? {
            Ok(true) => out.push(Output::Event(SyncEvent::DocChanged { team, doc, kind })),
            Ok(false) => {}
            Err(reason) => {
                self.refused(team, doc, theirs.to_vec(), reason, out);
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A [`Frame::SealedHeads`]: the remote's heads of one document; sends what it lacks.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_sealed_heads<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        heads: Vec<[u8; 32]>,
        whole_wanted: bool,
        out: &mut Vec<Output>,
    ) -> Step {
        if let Err(reason) = self.check_sealed_sender(team, &kind) {
            self.refuse(team, Some(doc), reason, out);
            return Ok(());
        }
        let theirs = sorted(heads.into_iter().map(ChangeHash).collect());
        // Only a device can seal the whole document the circle node asks for.
        let whole_wanted = whole_wanted && !self.local_is_relay(team);
        self.note_heads(team, doc, None, Some(theirs.clone()));
        self.send_sealed(replica, team, doc, kind, &theirs, whole_wanted, out)?;
        self.keep_agreement(replica, team, doc);
        self.settle(team, out);
        Ok(())
    }

    /// Keeps, as the sync state with the remote, that both hold the same heads of `doc`
    /// when that is known: a sealed exchange uses no Automerge sync state, but what a
    /// device has shared with others (`Home::unshared_docs`) is read from those states.
    fn keep_agreement<R: Replica>(&mut self, replica: &mut R, team: TeamId, doc: DocId) {
        let known = self.progress.get(&team).and_then(|p| p.heads.get(&doc));
        if let Some(known) = known.filter(|k| !k.ours.is_empty() && k.ours == k.theirs) {
            let state = State { shared_heads: known.ours.clone(), ..State::default() };
            replica.set_sync_state(self.remote, doc, state);
        }
    }

    /// Tells the remote `ours`, this device's heads of `doc`, when it was last told other
    /// ones (none told reads as empty) and nothing else will tell it: a document
    /// discarded after its check, say, or one the remote holds more of.
    fn tell_if_changed(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        ours: &[ChangeHash],
        out: &mut Vec<Output>,
    ) -> Step {
        let progress = self.progress.entry(team).or_default();
        let told = progress.told.get(&doc).map_or(&[][..], Vec::as_slice);
        if told == ours {
            return Ok(());
        }
        progress.told.insert(doc, ours.to_vec());
        let heads = heads_bytes(ours);
        let whole_wanted = false;
        out.push(Output::Send(
            Frame::SealedHeads { team, doc, kind, heads, whole_wanted }.encode().into(),
        ));
        Ok(())
    }

    /// Tells the remote this device's heads of `doc`.
    pub(super) fn tell_sealed_heads<R: Replica>(
        &mut self,
        replica: &mut R,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        whole_wanted: bool,
        out: &mut Vec<Output>,
    ) -> Step {
        let ours = sorted(replica.heads(team, doc).map_err(store)?.unwrap_or_default());
        let heads = heads_bytes(&ours);
        out.push(Output::Send(
            Frame::SealedHeads { team, doc, kind, heads, whole_wanted }.encode().into(),
        ));
        let progress = self.progress.entry(team).or_default();
        progress.told.insert(doc, ours.clone());
        // A document still being checked is not ours to count until its verdict.
        if !progress.checking.contains(&doc) {
            self.note_heads(team, doc, Some(ours), None);
        }
        Ok(())
    }
}
