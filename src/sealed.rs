//! A home's side of sealed documents (see [`care_core::sealed`]): a device seals what it
//! hands the team's circle node and opens what it gets back, with the team keys given to
//! it; a circle node, which holds no team key, stores them as received and works out
//! from what they list in clear which of them a device lacks.

use std::collections::{HashMap, HashSet};

use automerge::{ChangeHash, SaveOptions};
use care_core::keys::{self, KeyId, KeyScope, TeamKey};
use care_core::sealed::ToSeal;
use care_core::{DocId, DocKind, Sealed, SealedChange, SealedForm, TeamId};
use care_store::NewSealed;
use care_sync::Refusal;

use crate::error::{Error, Result};
use crate::home::{Home, Purpose, random_bytes};

/// Sealed documents of one document a circle node holds before it asks a device for the
/// whole document sealed, to replace them: so that a device that joins gets a document
/// in a few sealed pieces, not one per change ever written.
pub const SEALED_ROWS_BEFORE_WHOLE: usize = 32;

/// What a circle node keeps of a sealed document's listing: each change's hash and what
/// it follows.
type Listing = Vec<([u8; 32], Vec<[u8; 32]>)>;

impl Home {
    /// The documents of `team` this home holds sealed (a circle node's): their ids, kinds
    /// and heads, which is all it can tell of them.
    pub fn sealed_documents(&self, team: TeamId) -> Result<Vec<care_store::SealedDocSummary>> {
        Ok(self.store.sealed_docs(team)?)
    }

    /// Every sealed document this home holds of `team`, as stored: what a circle node
    /// keeps of the team.
    pub fn sealed_bytes(&self, team: TeamId) -> Result<Vec<Vec<u8>>> {
        let mut all = Vec::new();
        for doc in self.store.sealed_docs(team)? {
            let seqs: Vec<i64> = self.store.sealed_rows(doc.id)?.iter().map(|r| r.seq).collect();
            all.extend(self.store.sealed_bytes(doc.id, &seqs)?);
        }
        Ok(all)
    }

    /// On a circle node, drops the documents it holds in clear of the teams in which it is
    /// the circle node (from before documents were handed it sealed only): the devices
    /// hand it them again, sealed. Returns how many.
    pub fn forget_documents_in_clear(&mut self) -> Result<usize> {
        let device = self.profile().device;
        let mut forgotten = 0;
        for team in self.store.teams()? {
            let role = self.team_access(team)?.membership().role_of_device(device);
            if role == Some(care_core::Role::Relay) {
                forgotten += self.store.forget_clear_docs(team)?;
                self.docs.clear();
            }
        }
        Ok(forgotten)
    }

    /// The team key `id` of `scope`, if it was given to this device (opened once, then
    /// kept while the home is open).
    fn team_key(&mut self, team: TeamId, scope: KeyScope, id: KeyId) -> Result<Option<TeamKey>> {
        if let Some(key) = self.opened_keys.get(&id) {
            return Ok(Some(key.clone()));
        }
        let access = self.team_access(team)?;
        let device = self.profile().device;
        let wrapped = access.membership().keys(scope).and_then(|k| k.wrapped.get(&(id, device)));
        let Some(wrapped) = wrapped else {
            return Ok(None);
        };
        match keys::unwrap(team, scope, &id, wrapped, &self.key) {
            Ok(key) => {
                self.opened_keys.insert(id, key.clone());
                Ok(Some(key))
            }
            Err(e) => {
                tracing::warn!("a {scope} key of team {team} given to this device: {e}");
                Ok(None)
            }
        }
    }

    /// Seals `doc`: see [`care_sync::Replica::seal`].
    pub(crate) fn seal_doc(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        since: &[ChangeHash],
        form: SealedForm,
    ) -> Result<Option<Sealed>> {
        if self.awaits_check(doc)? {
            // Nothing is said of a document received whole until it is checked.
            return Ok(None);
        }
        let scope = KeyScope::of(&kind);
        let Some(id) = self.team_access(team)?.membership().current_key(scope) else {
            return Ok(None);
        };
        let Some(key) = self.team_key(team, scope, id)? else {
            return Ok(None);
        };
        let Some(stored) = self.doc(team, kind, Purpose::Read)? else {
            return Ok(None);
        };
        let am = stored.doc();
        // A whole document goes only when it holds every change the circle node does:
        // one that lacks some would not replace what it holds there.
        let form = match since.iter().all(|h| am.get_change_meta_by_hash(h).is_some()) {
            true => form,
            false => SealedForm::Changes,
        };
        let (plaintext, changes): (Vec<u8>, Vec<SealedChange>) = match form {
            SealedForm::Whole => {
                let changes = am
                    .get_changes_meta(&[])
                    .into_iter()
                    .map(|meta| SealedChange {
                        hash: meta.hash.0,
                        actor: meta.actor.to_bytes().to_vec(),
                        deps: meta.deps.iter().map(|d| d.0).collect(),
                    })
                    .collect();
                // Without changes still waiting for what they depend on: the changes
                // listed are those the document holds.
                let options = SaveOptions { retain_orphans: false, ..SaveOptions::default() };
                (am.save_with_options(options), changes)
            }
            SealedForm::Changes => {
                let since: Vec<ChangeHash> = since
                    .iter()
                    .filter(|h| am.get_change_meta_by_hash(h).is_some())
                    .copied()
                    .collect();
                let found = am.get_changes(&since);
                if found.is_empty() {
                    return Ok(None);
                }
                let mut bytes = Vec::new();
                let mut changes = Vec::with_capacity(found.len());
                for change in &found {
                    bytes.extend_from_slice(change.raw_bytes());
                    changes.push(SealedChange {
                        hash: change.hash().0,
                        actor: change.actor_id().to_bytes().to_vec(),
                        deps: change.deps().iter().map(|d| d.0).collect(),
                    });
                }
                (bytes, changes)
            }
        };
        let hashes: Vec<ChangeHash> = changes.iter().map(|c| ChangeHash(c.hash)).collect();
        let signatures = care_sync::Replica::signatures(self, team, doc, Some(&hashes))?;
        Ok(Some(Sealed::seal(ToSeal {
            team,
            doc,
            form,
            scope,
            key: &key,
            changes,
            signatures,
            plaintext,
            nonce: random_bytes(),
            sealer: &self.key,
        })))
    }

    /// Opens a sealed document: see [`care_sync::Replica::open_sealed`].
    pub(crate) fn open_sealed_doc(
        &mut self,
        team: TeamId,
        doc: DocId,
        sealed: &Sealed,
    ) -> Result<std::result::Result<Vec<u8>, Refusal>> {
        let Some(key) = self.team_key(team, sealed.scope, sealed.key)? else {
            return Ok(Err(Refusal::NoKey { scope: sealed.scope }));
        };
        Ok(sealed
            .open(team, doc, &key)
            .map_err(|why| Refusal::Sealed { sealer: sealed.sealer, why }))
    }

    /// On a circle node, stores a sealed document: see [`care_sync::Replica::store_sealed`].
    pub(crate) fn store_sealed_doc(
        &mut self,
        team: TeamId,
        doc: DocId,
        kind: DocKind,
        sealed: &Sealed,
    ) -> Result<std::result::Result<bool, Refusal>> {
        let rows = self.sealed_listings(doc)?;
        let held: HashSet<[u8; 32]> =
            rows.iter().flat_map(|(_, listing)| listing.iter().map(|(h, _)| *h)).collect();
        let listed: HashSet<[u8; 32]> = sealed.changes.iter().map(|c| c.hash).collect();
        let follows_unknown = sealed
            .changes
            .iter()
            .flat_map(|c| c.deps.iter())
            .any(|d| !held.contains(d) && !listed.contains(d));
        if follows_unknown {
            let why = "sealed changes that follow changes the circle node does not hold";
            return Ok(Err(Refusal::Malformed(why.into())));
        }
        let new = listed.iter().filter(|h| !held.contains(*h)).count();
        let whole = sealed.form == SealedForm::Whole;
        // A whole document replaces every piece held, so it must hold every change they
        // do (then a document's pieces always start with its one whole document, if any).
        // One that lacks some was sealed apart from another device's upload: its sender
        // is told the heads held here, and sends the changes after them instead.
        if whole && !held.iter().all(|h| listed.contains(h)) {
            return Ok(Ok(false));
        }
        let replaces_all = whole;
        if new == 0 && !(replaces_all && rows.len() > 1) {
            return Ok(Ok(false));
        }
        let replaces: Vec<i64> = match replaces_all {
            true => rows.iter().map(|(seq, _)| *seq).collect(),
            false => Vec::new(),
        };
        let listing: Listing = sealed.changes.iter().map(|c| (c.hash, c.deps.clone())).collect();
        let mut all: Vec<&([u8; 32], Vec<[u8; 32]>)> = listing.iter().collect();
        if !replaces_all {
            all.extend(rows.iter().flat_map(|(_, listing)| listing.iter()));
        }
        let followed: HashSet<&[u8; 32]> = all.iter().flat_map(|(_, deps)| deps.iter()).collect();
        let mut heads: Vec<ChangeHash> =
            all.iter().map(|(h, _)| *h).filter(|h| !followed.contains(h)).map(ChangeHash).collect();
        heads.sort();
        heads.dedup();
        let listing = postcard::to_stdvec(&listing).expect("encoding into a Vec cannot fail");
        let bytes = postcard::to_stdvec(sealed).expect("encoding into a Vec cannot fail");
        self.store.add_sealed(&NewSealed {
            doc,
            team,
            kind: &kind.to_string(),
            listing: &listing,
            bytes: &bytes,
            heads: &heads,
            replaces: &replaces,
        })?;
        Ok(Ok(new > 0))
    }

    /// On a circle node, what a device lacks: see [`care_sync::Replica::sealed_after`].
    pub(crate) fn sealed_docs_after(
        &mut self,
        doc: DocId,
        theirs: &[ChangeHash],
        bytes_max: usize,
    ) -> Result<Vec<Sealed>> {
        let rows = self.sealed_listings(doc)?;
        let follows: HashMap<[u8; 32], &Vec<[u8; 32]>> = rows
            .iter()
            .flat_map(|(_, listing)| listing.iter().map(|(h, deps)| (*h, deps)))
            .collect();
        // What the device holds: its heads known here, and all they follow.
        let mut known: HashSet<[u8; 32]> = HashSet::new();
        let mut to_visit: Vec<[u8; 32]> =
            theirs.iter().map(|h| h.0).filter(|h| follows.contains_key(h)).collect();
        while let Some(hash) = to_visit.pop() {
            if known.insert(hash) {
                to_visit.extend(follows.get(&hash).into_iter().flat_map(|deps| deps.iter()));
            }
        }
        let wanted: Vec<i64> = rows
            .iter()
            .filter(|(_, listing)| listing.iter().any(|(h, _)| !known.contains(h)))
            .map(|(seq, _)| *seq)
            .collect();
        let mut out = Vec::new();
        let mut size = 0;
        for bytes in self.store.sealed_bytes(doc, &wanted)? {
            let sealed: Sealed = postcard::from_bytes(&bytes)
                .map_err(|e| care_store::StoreError::corrupt(doc, e.to_string()))?;
            size += sealed.size();
            if size > bytes_max && !out.is_empty() {
                break;
            }
            out.push(sealed);
        }
        Ok(out)
    }

    /// On a circle node, whether it asks for `doc` whole: it holds more than
    /// [`SEALED_ROWS_BEFORE_WHOLE`] sealed documents of it.
    pub(crate) fn wants_whole_doc(&self, doc: DocId) -> Result<bool> {
        Ok(self.store.sealed_doc(doc)?.is_some_and(|d| d.rows > SEALED_ROWS_BEFORE_WHOLE))
    }

    /// The sealed rows of `doc` with their listings decoded.
    fn sealed_listings(&self, doc: DocId) -> Result<Vec<(i64, Listing)>> {
        self.store
            .sealed_rows(doc)?
            .into_iter()
            .map(|row| {
                let listing: Listing = postcard::from_bytes(&row.listing).map_err(|e| {
                    Error::Store(care_store::StoreError::corrupt(doc, e.to_string()))
                })?;
                Ok((row.seq, listing))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use care_core::membership::{OpBody, Role};
    use care_core::{DeviceId, NoteStream};
    use care_sync::{Frame, Replica};

    use super::*;
    use crate::NewNote;
    use crate::test_support::{Exchanged, exchange, exchange_edited, temp_dirs};

    use crate::test_support::add_member as add;

    /// Ada's team with its circle node and Bea, a worker, every home holding its log.
    fn ada_circle_bea(dirs: &[tempfile::TempDir]) -> Result<(TeamId, [Home; 3])> {
        let mut ada = Home::init(dirs[0].path(), "Ada")?;
        let mut circle = Home::init(dirs[1].path(), "Circle")?;
        let mut bea = Home::init(dirs[2].path(), "Bea")?;
        let team = ada.create_team("Rosa's team")?;
        add(&mut ada, team, &circle, Role::Relay)?;
        add(&mut ada, team, &bea, Role::Worker)?;
        for home in [&mut circle, &mut bea] {
            home.add_ops(team, &ada.signed_ops(team)?)?;
        }
        Ok((team, [ada, circle, bea]))
    }

    use crate::test_support::{note_texts as texts, write_note as write};

    fn holds(bytes: &[u8], words: &str) -> bool {
        bytes.windows(words.len()).any(|w| w == words.as_bytes())
    }

    fn stored(circle: &Home, team: TeamId) -> Result<Vec<Vec<u8>>> {
        circle.sealed_bytes(team)
    }

    fn in_sync(seen: &Exchanged, side: usize) -> bool {
        seen.events[side].iter().any(|e| matches!(e, care_sync::SyncEvent::TeamInSync { .. }))
    }

    fn care_notes(home: &Home, team: TeamId) -> DocId {
        DocKind::Notes { stream: NoteStream::Care, month: home.now().month() }.doc_id(team)
    }

    /// A note goes to the circle node sealed and reaches Bea, who never meets Ada, through
    /// it alone: no frame either way, and nothing the circle node stores, holds its words,
    /// and every side comes into sync.
    #[test]
    fn the_circle_node_stores_and_passes_on_notes_it_cannot_read() -> Result<()> {
        let dirs = temp_dirs(3)?;
        let (team, [mut ada, mut circle, mut bea]) = ada_circle_bea(&dirs)?;
        let words = "Rosa took her evening tablets at eight";
        write(&mut ada, words)?;

        assert!(!ada.unshared_docs(team)?.is_empty());
        let up = exchange(&mut ada, &mut circle)?;
        assert!(up.refusals(0).is_empty() && up.refusals(1).is_empty(), "{up:?}");
        assert!(up.frames.iter().flatten().all(|f| !holds(f, words)), "a frame in clear");
        // The session ends: Ada counts her documents as shared with the circle node.
        ada.reset_sync_state(circle.profile().device);
        let unshared = ada.unshared_docs(team)?;
        assert!(unshared.is_empty(), "{unshared:?}");
        assert!(in_sync(&up, 0) && in_sync(&up, 1), "{:?}", up.events);
        assert!(circle.store.docs(Some(team))?.is_empty(), "the circle node holds a document");
        let sealed = stored(&circle, team)?;
        assert!(!sealed.is_empty());
        assert!(sealed.iter().all(|s| !holds(s, words)), "the circle node stores the words");

        let down = exchange(&mut circle, &mut bea)?;
        assert!(down.refusals(0).is_empty() && down.refusals(1).is_empty(), "{down:?}");
        assert!(down.frames.iter().flatten().all(|f| !holds(f, words)));
        assert!(in_sync(&down, 0) && in_sync(&down, 1), "{:?}", down.events);
        assert_eq!(texts(&mut bea)?, vec![words.to_owned()]);

        // Bea's answer goes back the same way, as changes after what the node holds.
        let reply = "Bea: Rosa slept well";
        write(&mut bea, reply)?;
        exchange(&mut bea, &mut circle)?;
        let back = exchange(&mut circle, &mut ada)?;
        assert!(back.refusals(1).is_empty(), "{back:?}");
        assert_eq!(texts(&mut ada)?, vec![reply.to_owned(), words.to_owned()]);
        assert!(stored(&circle, team)?.iter().all(|s| !holds(s, reply)));
        Ok(())
    }

    /// Every frame of a real exchange through the circle node, with one byte changed here
    /// and there, fed to a live session of the device it was for: none panics it, none
    /// makes the circle node store what its sender did not seal, and the honest exchange
    /// still goes through after.
    #[test]
    fn changed_bytes_in_sealed_frames_never_panic_a_session_nor_get_in() -> Result<()> {
        let dirs = temp_dirs(3)?;
        let (team, [mut ada, mut circle, mut bea]) = ada_circle_bea(&dirs)?;
        write(&mut ada, "Rosa: a walk to the park")?;
        write(&mut ada, "Rosa: soup for lunch")?;
        // The frames each device sent, recorded from real exchanges on copies of the homes.
        let copies = temp_dirs(2)?;
        let copy = |from: &Path, to: &Path| -> Result<Home> {
            for entry in std::fs::read_dir(from).map_err(|e| Error::Invalid(e.to_string()))? {
                let entry = entry.map_err(|e| Error::Invalid(e.to_string()))?;
                std::fs::copy(entry.path(), to.join(entry.file_name()))
                    .map_err(|e| Error::Invalid(e.to_string()))?;
            }
            Home::open(to)
        };
        let (mut circle_copy, mut bea_copy) =
            (copy(dirs[1].path(), copies[0].path())?, copy(dirs[2].path(), copies[1].path())?);
        let up = exchange(&mut ada, &mut circle_copy)?.frames[0].clone();
        let down = exchange(&mut circle_copy, &mut bea_copy)?.frames[0].clone();
        drop((circle_copy, bea_copy));

        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (ada_device, circle_device) = (ada.profile().device, circle.profile().device);
        let cases: [(&mut Home, DeviceId, &Vec<Vec<u8>>); 2] =
            [(&mut circle, ada_device, &up), (&mut bea, circle_device, &down)];
        let mut tried = 0;
        for (target, sender, frames) in cases {
            let sealed: Vec<usize> = (0..frames.len())
                .filter(|i| {
                    matches!(
                        Frame::decode(&frames[*i]),
                        Ok(Frame::Sealed { .. } | Frame::SealedHeads { .. })
                    )
                })
                .collect();
            assert!(!sealed.is_empty());
            for _ in 0..48 {
                let i = sealed[(next() % sealed.len() as u64) as usize];
                let mut changed = frames[i].clone();
                let at = (next() % changed.len() as u64) as usize;
                changed[at] ^= (next() as u8).max(1);
                let mut session = care_sync::Session::new(target.profile().device, sender);
                session.start(target);
                for (j, frame) in frames.iter().enumerate() {
                    let frame = if j == i { &changed } else { frame };
                    session.handle_frame(target, frame);
                }
                tried += 1;
            }
        }
        assert_eq!(tried, 96);
        // The replays reached the circle node's store (the frames left intact did).
        assert!(!circle.sealed_documents(team)?.is_empty());
        // Nothing stored at the circle node but what Ada sealed, and the honest exchange
        // still reaches Bea.
        exchange(&mut ada, &mut circle)?;
        for doc in circle.sealed_documents(team)? {
            assert_eq!(Some(doc.heads), ada.heads(team, doc.id)?, "{}", doc.kind);
        }
        exchange(&mut circle, &mut bea)?;
        assert_eq!(texts(&mut bea)?.len(), 2);
        Ok(())
    }

    /// A volunteer meets only the circle node: it gets the general notes, sealed under the
    /// team's key, and nothing of the care record, whose key it never holds.
    #[test]
    fn a_volunteer_gets_through_the_circle_node_only_what_its_role_reads() -> Result<()> {
        let dirs = temp_dirs(4)?;
        let (team, [mut ada, mut circle, _bea]) = ada_circle_bea(&dirs)?;
        let mut vic = Home::init(dirs[3].path(), "Vic")?;
        add(&mut ada, team, &vic, Role::Volunteer)?;
        vic.add_ops(team, &ada.signed_ops(team)?)?;
        circle.add_ops(team, &ada.signed_ops(team)?)?;
        write(&mut ada, "Care: the new tablets at eight")?;
        let general =
            NewNote { text: "General: the garden gate sticks".into(), ..Default::default() };
        ada.team("")?.add_note(&general, Some(NoteStream::General))?;
        exchange(&mut ada, &mut circle)?;
        let down = exchange(&mut circle, &mut vic)?;
        assert!(down.refusals(1).is_empty(), "{down:?}");
        let kinds: Vec<DocKind> = down.frames[0]
            .iter()
            .filter_map(|f| match Frame::decode(f) {
                Ok(Frame::Sealed { kind, .. }) => Some(kind),
                _ => None,
            })
            .collect();
        assert!(!kinds.is_empty());
        assert!(kinds.iter().all(|k| KeyScope::of(k) == KeyScope::Team), "{kinds:?}");
        assert_eq!(texts(&mut vic)?, vec!["General: the garden gate sticks".to_owned()]);
        assert!(!vic.holds(team, care_notes(&vic, team))?);
        Ok(())
    }

    /// A circle node that held a team in clear (before documents were handed it sealed
    /// only) drops it when it starts, and is handed it again, sealed.
    #[test]
    fn a_circle_node_drops_what_it_held_in_clear() -> Result<()> {
        let dirs = temp_dirs(3)?;
        let (team, [mut ada, mut circle, _bea]) = ada_circle_bea(&dirs)?;
        let words = "Held in clear by an older circle node";
        write(&mut ada, words)?;
        let doc = care_notes(&ada, team);
        let bytes = ada
            .snapshot(team, doc)?
            .map(|b| b.to_vec())
            .ok_or(Error::Invalid("no document".into()))?;
        let heads = ada.heads(team, doc)?.unwrap_or_default();
        let signatures = ada.signatures(team, doc, None)?;
        circle.import_snapshot(team, doc, care_kind(&ada), bytes, &heads, &signatures)?;
        assert_eq!(circle.store.docs(Some(team))?.len(), 1);
        assert_eq!(circle.forget_documents_in_clear()?, 1);
        assert!(circle.store.docs(Some(team))?.is_empty());
        let up = exchange(&mut ada, &mut circle)?;
        assert!(up.refusals(1).is_empty(), "{up:?}");
        assert!(circle.holds(team, doc)? && circle.store.docs(Some(team))?.is_empty());
        assert!(stored(&circle, team)?.iter().all(|s| !holds(s, words)));
        Ok(())
    }

    /// Many notes sealed one at a time: the circle node asks for the whole document and
    /// keeps few sealed pieces of it, and a device that joins late gets every note.
    #[test]
    fn the_circle_node_keeps_a_document_in_few_sealed_pieces() -> Result<()> {
        let dirs = temp_dirs(3)?;
        let (team, [mut ada, mut circle, mut bea]) = ada_circle_bea(&dirs)?;
        for i in 0..(SEALED_ROWS_BEFORE_WHOLE + 8) {
            write(&mut ada, &format!("Visit {i}: all well"))?;
            exchange(&mut ada, &mut circle)?;
        }
        let doc = care_notes(&ada, team);
        let rows = circle.store.sealed_doc(doc)?.map(|d| d.rows).unwrap_or(0);
        assert!((1..=SEALED_ROWS_BEFORE_WHOLE + 1).contains(&rows), "{rows} rows");
        let down = exchange(&mut circle, &mut bea)?;
        assert!(down.refusals(1).is_empty(), "{down:?}");
        assert_eq!(texts(&mut bea)?.len(), SEALED_ROWS_BEFORE_WHOLE + 8);
        Ok(())
    }

    /// Dan is removed: the keys are renewed, and what is written after is sealed under a
    /// key he was never given, even holding the whole log and what the circle node stores.
    #[test]
    fn a_removed_device_cannot_open_what_is_sealed_after_its_removal() -> Result<()> {
        let dirs = temp_dirs(4)?;
        let (team, [mut ada, mut circle, mut bea]) = ada_circle_bea(&dirs)?;
        let mut dan = Home::init(dirs[3].path(), "Dan")?;
        let dan_id = add(&mut ada, team, &dan, Role::Worker)?;
        write(&mut ada, "Before: Rosa walked to the shop")?;
        dan.add_ops(team, &ada.signed_ops(team)?)?;
        exchange(&mut ada, &mut circle)?;
        let doc = care_notes(&ada, team);
        let before = circle.sealed_docs_after(doc, &[], usize::MAX)?;
        assert!(dan.open_sealed_doc(team, doc, &before[0])?.is_ok());

        ada.author_op(team, OpBody::RemoveMember { member: dan_id })?;
        write(&mut ada, "After: the key safe code is 4412")?;
        let up = exchange(&mut ada, &mut circle)?;
        assert!(up.refusals(1).is_empty(), "{up:?}");
        dan.add_ops(team, &ada.signed_ops(team)?)?;
        let after = circle.sealed_docs_after(doc, &ada.heads(team, doc)?.unwrap_or_default(), 0);
        assert!(after?.is_empty(), "the circle node holds everything Ada holds");
        let held = circle.sealed_docs_after(doc, &[], usize::MAX)?;
        let newest = held.last().ok_or(Error::Invalid("nothing sealed".into()))?;
        assert_eq!(
            dan.open_sealed_doc(team, doc, newest)?,
            Err(Refusal::NoKey { scope: KeyScope::Care })
        );
        // Bea, still a member, opens it.
        exchange(&mut circle, &mut bea)?;
        assert_eq!(texts(&mut bea)?.len(), 2);
        // And the circle node no longer serves Dan the team at all.
        let shut = exchange(&mut dan, &mut circle)?;
        assert!(
            shut.frames[1].iter().all(|f| !matches!(Frame::decode(f), Ok(Frame::Sealed { .. })))
        );
        Ok(())
    }

    /// What a malicious member sends the circle node with the protocol's own frames: a
    /// document in clear, one sealed in another's name, a change under another device's
    /// actor listed with its own signature. Each refused with its reason; nothing stored.
    #[test]
    fn the_circle_node_refuses_what_it_may_not_take() -> Result<()> {
        let dirs = temp_dirs(3)?;
        let (team, [mut ada, mut circle, mut bea]) = ada_circle_bea(&dirs)?;
        let ada_device = ada.profile().device;
        write(&mut bea, "Bea: a note")?;
        let doc = care_notes(&bea, team);
        let clear = bea
            .snapshot(team, doc)?
            .map(|b| b.to_vec())
            .ok_or(Error::Invalid("no document".into()))?;

        let in_clear = exchange_edited(&mut bea, &mut circle, |frame| match frame {
            Frame::Sealed { team, doc, kind, sealed, .. } => {
                let signatures = sealed.signatures;
                Some(Frame::Snapshot { team, doc, kind, bytes: clear.clone(), signatures })
            }
            other => Some(other),
        })?;
        assert!(in_clear.refusals(1).iter().any(|r| matches!(r, Refusal::InClear { .. })));
        assert!(circle.store.docs(Some(team))?.is_empty() && !circle.holds(team, doc)?);

        let borrowed = exchange_edited(&mut bea, &mut circle, |frame| match frame {
            Frame::Sealed { team, doc, kind, index, total, heads, mut sealed } => {
                sealed.sealer = ada_device;
                Some(Frame::Sealed { team, doc, kind, index, total, heads, sealed })
            }
            other => Some(other),
        })?;
        let refused = borrowed.refusals(1);
        assert!(refused.iter().any(|r| matches!(r, Refusal::MayNotSeal { .. })), "{refused:?}");
        assert!(!circle.holds(team, doc)?);

        // Bea lists her note as Ada's, and seals that listing in her own name.
        let key = bea
            .team_key(
                team,
                KeyScope::Care,
                bea.team_access(team)?
                    .membership()
                    .current_key(KeyScope::Care)
                    .ok_or(Error::Invalid("no key".into()))?,
            )?
            .ok_or(Error::Invalid("no key".into()))?;
        let bea_key = bea.key.clone();
        let forged = exchange_edited(&mut bea, &mut circle, |frame| match frame {
            Frame::Sealed { team, doc, kind, index, total, heads, sealed } => {
                let opened = sealed.open(team, doc, &key).ok()?;
                let mut changes = sealed.changes.clone();
                for change in &mut changes {
                    change.actor = ada_device.as_bytes().to_vec();
                }
                let resealed = Sealed::seal(ToSeal {
                    team,
                    doc,
                    form: sealed.form,
                    scope: sealed.scope,
                    key: &key,
                    changes,
                    signatures: sealed.signatures.clone(),
                    plaintext: opened,
                    nonce: [3; 32],
                    sealer: &bea_key,
                });
                let sealed = Box::new(resealed);
                Some(Frame::Sealed { team, doc, kind, index, total, heads, sealed })
            }
            other => Some(other),
        })?;
        let refused = forged.refusals(1);
        assert!(refused.iter().any(|r| matches!(r, Refusal::Authorship(_))), "{refused:?}");
        assert!(!circle.holds(team, doc)?);

        // Sent as it is, it is taken, and reaches Ada.
        exchange(&mut bea, &mut circle)?;
        exchange(&mut circle, &mut ada)?;
        assert_eq!(texts(&mut ada)?, vec!["Bea: a note".to_owned()]);
        Ok(())
    }

    /// The rest of who may seal what, each attacked with a frame of the protocol: a member
    /// sealing for another member, under a key of another scope, under a key it was never
    /// given, or sending the circle node more than one sealed document at a time.
    #[test]
    fn sealed_frames_out_of_their_place_are_refused() -> Result<()> {
        let dirs = temp_dirs(3)?;
        let (team, [mut ada, mut circle, mut bea]) = ada_circle_bea(&dirs)?;
        write(&mut bea, "Bea: a note")?;
        let doc = care_notes(&bea, team);
        let kind = care_kind(&bea);
        let sealed = bea.seal_doc(team, doc, kind, &[], SealedForm::Whole)?;
        let sealed = sealed.ok_or(Error::Invalid("nothing sealed".into()))?;
        let access = bea.team_access(team)?;
        let team_key_id = access.membership().current_key(KeyScope::Team);
        let team_key_id = team_key_id.ok_or(Error::Invalid("no key".into()))?;
        let team_key = bea.team_key(team, KeyScope::Team, team_key_id)?;
        let team_key = team_key.ok_or(Error::Invalid("no key".into()))?;
        let bea_key = bea.key.clone();
        let reseal = |sealed: &Sealed, scope: KeyScope, key: &TeamKey| {
            Sealed::seal(ToSeal {
                team,
                doc,
                form: sealed.form,
                scope,
                key,
                changes: sealed.changes.clone(),
                signatures: sealed.signatures.clone(),
                plaintext: Vec::new(),
                nonce: [5; 32],
                sealer: &bea_key,
            })
        };
        let heads = Vec::new();
        let frame = |sealed: Sealed, total: u32| Frame::Sealed {
            team,
            doc,
            kind,
            index: 0,
            total,
            heads: heads.clone(),
            sealed: Box::new(sealed),
        };
        // Each replaces Bea's first sealed frame to the circle node.
        type Expected = fn(&Refusal) -> bool;
        let attacks: Vec<(Frame, Expected)> = vec![
            (
                frame(reseal(&sealed, KeyScope::Team, &team_key), 1),
                |r| matches!(r, Refusal::MayNotSeal { why, .. } if why.contains("team key for a")),
            ),
            (
                frame(reseal(&sealed, KeyScope::Care, &TeamKey::from_bytes([9; 32])), 1),
                |r| matches!(r, Refusal::MayNotSeal { why, .. } if why.contains("not given")),
            ),
            (
                frame(sealed.clone(), 2),
                |r| matches!(r, Refusal::Malformed(why) if why.contains("one sealed document")),
            ),
        ];
        for (attack, expected) in attacks {
            let mut attack = Some(attack);
            let seen = exchange_edited(&mut bea, &mut circle, |frame| match frame {
                Frame::Sealed { .. } => attack.take(),
                other => Some(other),
            })?;
            let refused = seen.refusals(1);
            assert!(refused.iter().any(|r| expected(r)), "{refused:?}");
            assert!(!circle.holds(team, doc)?);
        }
        // Between two members, who hold the keys and sync in clear, nothing goes sealed.
        let mut between = Some(frame(sealed, 1));
        let seen = exchange_edited(&mut bea, &mut ada, |frame| match frame {
            Frame::Heads { .. } => between.take().or(Some(frame)),
            other => Some(other),
        })?;
        let refused = seen.refusals(1);
        let between_members = |r: &&Refusal| matches!(r, Refusal::Malformed(why) if why.contains("hold the team's keys"));
        assert!(refused.iter().any(between_members), "{refused:?}");
        Ok(())
    }

    /// A member seals other changes than it lists: the circle node cannot tell, but the
    /// device that opens it refuses it, naming the sealer, and takes nothing of it.
    #[test]
    fn a_sealed_document_that_holds_other_changes_than_it_lists_is_refused() -> Result<()> {
        let dirs = temp_dirs(3)?;
        let (team, [mut ada, mut circle, mut bea]) = ada_circle_bea(&dirs)?;
        let bea_device = bea.profile().device;
        write(&mut bea, "Bea: first")?;
        exchange(&mut bea, &mut circle)?;
        exchange(&mut circle, &mut ada)?;
        let doc = care_notes(&bea, team);
        let first = bea.heads(team, doc)?.unwrap_or_default();
        write(&mut bea, "Bea: listed")?;
        let listed = bea.seal_doc(team, doc, care_kind(&bea), &first, SealedForm::Changes)?;
        let mut listed = listed.ok_or(Error::Invalid("nothing to seal".into()))?;
        let second = bea.heads(team, doc)?.unwrap_or_default();
        write(&mut bea, "Bea: hidden")?;
        let hidden = bea.seal_doc(team, doc, care_kind(&bea), &second, SealedForm::Changes)?;
        let hidden = hidden.ok_or(Error::Invalid("nothing to seal".into()))?;
        let scope = KeyScope::Care;
        let id = bea.team_access(team)?.membership().current_key(scope);
        let key = bea.team_key(team, scope, id.ok_or(Error::Invalid("no key".into()))?)?;
        let key = key.ok_or(Error::Invalid("no key".into()))?;
        let swapped = hidden.open(team, doc, &key).map_err(|e| Error::Invalid(e.to_string()))?;
        listed = Sealed::seal(ToSeal {
            team,
            doc,
            form: SealedForm::Changes,
            scope,
            key: &key,
            changes: listed.changes.clone(),
            signatures: listed.signatures.clone(),
            plaintext: swapped,
            nonce: [4; 32],
            sealer: &bea.key.clone(),
        });
        assert_eq!(circle.store_sealed(team, doc, care_kind(&bea), &listed)?, Ok(true));
        let seen = exchange(&mut circle, &mut ada)?;
        let refused = seen.refusals(1);
        assert!(
            refused
                .iter()
                .any(|r| matches!(r, Refusal::NotAsListed { sealer } if *sealer == bea_device)),
            "{refused:?}"
        );
        assert_eq!(texts(&mut ada)?, vec!["Bea: first".to_owned()]);
        Ok(())
    }

    fn care_kind(home: &Home) -> DocKind {
        DocKind::Notes { stream: NoteStream::Care, month: home.now().month() }
    }
}
