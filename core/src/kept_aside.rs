//! Changes kept aside: what a removed device wrote that its removal did not know of.
//!
//! A removal names, per document, how many of the removed device's changes its author
//! held ([`KnownChanges`](crate::KnownChanges)). The device's later changes of that
//! document (a worker's notes written offline before they heard of it, or a thief's on a
//! lost phone) stay in the Automerge document, so that they sync like any other change
//! and every device holds the same set, but they are not part of the **record**: what
//! the team reads and writes on is the document without them and without every change
//! built on them. A member who manages the team lets such a change in with
//! [`OpBody::AcceptChanges`](crate::OpBody::AcceptChanges).
//!
//! Everything here is a function of the document's changes and the membership, so every
//! device that holds both computes the same record and the same changes kept aside.

use std::collections::{BTreeSet, HashMap, HashSet};

use automerge::{Automerge, AutomergeError, ChangeHash};

use crate::doc_kind::DocKind;
use crate::ids::{DeviceId, DocId};
use crate::membership::Membership;

/// A change kept aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsideChange {
    /// The change's hash.
    pub hash: ChangeHash,
    /// The device its actor names (`None` if the actor is not a device key).
    pub device: Option<DeviceId>,
    /// Whether it is kept aside for being after its device's removal (a root), rather
    /// than for being built on such a change.
    pub after_removal: bool,
    /// When the author's device says it was written, in seconds since the epoch.
    pub time: i64,
    /// The changes it was built on.
    pub deps: Vec<ChangeHash>,
}

/// A document's changes kept aside, and the heads of its record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptAside {
    /// The changes kept aside, each after those it was built on, and otherwise oldest
    /// claimed time first (ties by hash).
    pub changes: Vec<AsideChange>,
    /// The heads of the record: the document without the changes kept aside (sorted).
    pub record_heads: Vec<ChangeHash>,
}

/// The changes of `doc` (document `id`, a `kind` document) kept aside under `membership`,
/// or `None` when the record is the whole document. Costs nothing when no removal in
/// the membership named what it held, and one pass over the document's changes when one
/// did.
pub fn kept_aside(
    doc: &Automerge,
    id: DocId,
    kind: &DocKind,
    membership: &Membership,
) -> Option<KeptAside> {
    let cuts = membership.cuts();
    if cuts.is_empty() {
        return None;
    }
    let metas = doc.get_changes_meta(&[]);
    let device_of = |actor: &automerge::ActorId| DeviceId::from_slice(actor.to_bytes()).ok();
    let roots: HashSet<ChangeHash> = metas
        .iter()
        .filter(|meta| {
            let cut = device_of(&meta.actor).and_then(|device| cuts.get(&device));
            cut.is_some_and(|cut| cut.is_after(id, kind, meta.seq))
                && !membership.is_accepted(id, &meta.hash.0)
        })
        .map(|meta| meta.hash)
        .collect();
    if roots.is_empty() {
        return None;
    }
    // Every change built on a root, through any path.
    let mut children: HashMap<ChangeHash, Vec<ChangeHash>> = HashMap::new();
    for meta in &metas {
        for dep in &meta.deps {
            children.entry(*dep).or_default().push(meta.hash);
        }
    }
    let mut aside = roots.clone();
    let mut todo: Vec<ChangeHash> = roots.iter().copied().collect();
    while let Some(hash) = todo.pop() {
        for child in children.get(&hash).into_iter().flatten() {
            if aside.insert(*child) {
                todo.push(*child);
            }
        }
    }
    let built_on: HashSet<ChangeHash> = metas
        .iter()
        .filter(|meta| !aside.contains(&meta.hash))
        .flat_map(|meta| meta.deps.iter().copied())
        .collect();
    let mut record_heads: Vec<ChangeHash> = metas
        .iter()
        .map(|meta| meta.hash)
        .filter(|hash| !aside.contains(hash) && !built_on.contains(hash))
        .collect();
    record_heads.sort();
    let changes: Vec<AsideChange> = metas
        .iter()
        .filter(|meta| aside.contains(&meta.hash))
        .map(|meta| AsideChange {
            hash: meta.hash,
            device: device_of(&meta.actor),
            after_removal: roots.contains(&meta.hash),
            time: meta.timestamp,
            deps: meta.deps.clone(),
        })
        .collect();
    Some(KeptAside { changes: in_causal_order(changes), record_heads })
}

/// `changes` ordered each after those of them it was built on, and otherwise by claimed
/// time and hash: the same order on every device.
fn in_causal_order(changes: Vec<AsideChange>) -> Vec<AsideChange> {
    let held: HashSet<ChangeHash> = changes.iter().map(|change| change.hash).collect();
    let mut waiting: HashMap<ChangeHash, usize> = HashMap::new();
    let mut children: HashMap<ChangeHash, Vec<usize>> = HashMap::new();
    for (i, change) in changes.iter().enumerate() {
        let deps: Vec<&ChangeHash> = change.deps.iter().filter(|dep| held.contains(dep)).collect();
        waiting.insert(change.hash, deps.len());
        for dep in deps {
            children.entry(*dep).or_default().push(i);
        }
    }
    let key = |change: &AsideChange| (change.time, change.hash);
    let mut ready: std::collections::BTreeMap<(i64, ChangeHash), usize> = changes
        .iter()
        .enumerate()
        .filter(|(_, change)| waiting[&change.hash] == 0)
        .map(|(i, change)| (key(change), i))
        .collect();
    let mut order = Vec::with_capacity(changes.len());
    while let Some((_, i)) = ready.pop_first() {
        order.push(i);
        for child in children.get(&changes[i].hash).into_iter().flatten() {
            let left = waiting.get_mut(&changes[*child].hash).expect("every change waits");
            *left -= 1;
            if *left == 0 {
                ready.insert(key(&changes[*child]), *child);
            }
        }
    }
    let mut slots: Vec<Option<AsideChange>> = changes.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// How many changes of `doc` are by `device`: the count a removal of it names.
pub fn changes_by(doc: &Automerge, device: DeviceId) -> u64 {
    doc.get_changes_meta(&[])
        .iter()
        .filter(|meta| meta.actor.to_bytes() == device.as_bytes())
        .map(|meta| meta.seq)
        .max()
        .unwrap_or(0)
}

/// A document's record, ready to read and write: the document itself when nothing is kept
/// aside, else a copy of it at the record's heads, kept up to date by the writes made
/// through it.
#[derive(Debug)]
pub struct Record {
    /// `None` when the record is the whole document.
    copy: Option<Automerge>,
    /// The devices with changes kept aside.
    aside_by: BTreeSet<DeviceId>,
}

impl Record {
    /// The record of `doc` (document `id`, a `kind` document) under `membership`.
    pub fn of(
        doc: &Automerge,
        id: DocId,
        kind: &DocKind,
        membership: &Membership,
    ) -> Result<Record, AutomergeError> {
        Ok(match kept_aside(doc, id, kind, membership) {
            Some(aside) => Record {
                copy: Some(doc.fork_at(&aside.record_heads)?),
                aside_by: aside.changes.iter().filter_map(|change| change.device).collect(),
            },
            None => Record { copy: None, aside_by: BTreeSet::new() },
        })
    }

    /// The copy that is the record, or `None` when the record is the whole document.
    pub fn copy(&self) -> Option<&Automerge> {
        self.copy.as_ref()
    }

    /// Runs `write` on the record of `doc` as `device` and adds the changes it makes to
    /// `doc`, so that they build on the record and never on changes kept aside; the record
    /// stays the record of `doc` afterwards. A device whose own changes are kept aside (it
    /// built on a removed device's change before it heard of the removal) writes on the
    /// whole document instead: Automerge numbers a device's changes in one chain, so its
    /// next change must follow its last, and is kept aside with it until a manager accepts
    /// what it was built on. After an error, compute the record again.
    pub fn write<R, E: From<AutomergeError>>(
        &mut self,
        doc: &mut Automerge,
        device: DeviceId,
        write: impl FnOnce(&mut Automerge) -> Result<R, E>,
    ) -> Result<R, E> {
        match self.copy.as_mut().filter(|_| !self.aside_by.contains(&device)) {
            // The record is the whole document, and a change built on it is not kept
            // aside; or the change is kept aside, and the record stays as it is.
            None => write(doc),
            Some(copy) => {
                let before = copy.get_heads();
                let value = write(copy)?;
                doc.apply_changes(copy.get_changes(&before))?;
                Ok(value)
            }
        }
    }
}

/// [`Record::write`] on a record computed for this one write.
pub fn write_on_record<R, E: From<AutomergeError>>(
    doc: &mut Automerge,
    (id, kind, membership, device): (DocId, &DocKind, &Membership, DeviceId),
    write: impl FnOnce(&mut Automerge) -> Result<R, E>,
) -> Result<R, E> {
    Record::of(doc, id, kind, membership)?.write(doc, device, write)
}

/// The changes kept aside that accepting `wanted` lets in with it: `wanted` and every
/// change kept aside it was built on, of which those after a removal (the roots) are the
/// ones an [`OpBody::AcceptChanges`](crate::OpBody::AcceptChanges) must name. `None` if
/// some hash of `wanted` is not kept aside.
pub fn roots_to_accept(aside: &KeptAside, wanted: &[ChangeHash]) -> Option<Vec<ChangeHash>> {
    let by_hash: HashMap<ChangeHash, &AsideChange> =
        aside.changes.iter().map(|change| (change.hash, change)).collect();
    let mut seen: HashSet<ChangeHash> = HashSet::new();
    let mut todo: Vec<ChangeHash> = wanted.to_vec();
    let mut roots = Vec::new();
    while let Some(hash) = todo.pop() {
        if !seen.insert(hash) {
            continue;
        }
        let change = by_hash.get(&hash)?;
        if change.after_removal {
            roots.push(hash);
        }
        // Dependencies in the record need nothing; those kept aside come along.
        todo.extend(change.deps.iter().filter(|dep| by_hash.contains_key(dep)));
    }
    roots.sort();
    Some(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::notes::{self, NewNote};
    use crate::documents::test_support::{author_at, entry, month};
    use crate::documents::{Author, genesis};
    use crate::identity::DeviceKey;
    use crate::ids::{MemberId, TeamId, Timestamp};
    use crate::membership::{Hat, KnownChanges, OpBody, RejectReason, Role, SignedOp};
    use crate::{NoteStream, create_team, team_id};

    /// A team whose owner (device key 1) has added members 2 to 4 with the roles given,
    /// each with device `[n; 32]` (the note authors of `test_support`).
    struct Team {
        id: TeamId,
        ops: Vec<SignedOp>,
        owner: DeviceKey,
    }

    impl Team {
        fn new(roles: [(Role, Vec<Hat>); 3]) -> Team {
            let owner = DeviceKey::from_seed([1; 32]);
            let create = create_team(&owner, Timestamp(1), "Team Ada", member(1), "Ada", [7; 16]);
            let mut team = Team { id: team_id(&create), ops: vec![create], owner };
            for (n, (role, hats)) in (2u8..).zip(roles) {
                let name = format!("member {n}");
                team.by_owner(OpBody::AddMember { member: member(n), name, role, hats });
                let device = DeviceId::from_bytes([n; 32]);
                team.by_owner(OpBody::AddDevice {
                    member: member(n),
                    device,
                    label: "phone".into(),
                });
            }
            team
        }

        fn membership(&self) -> Membership {
            Membership::from_ops(self.id, &self.ops).expect("replays").0
        }

        fn author(&mut self, key: &DeviceKey, body: OpBody) -> Result<(), RejectReason> {
            let op = self.membership().author_op(key, Timestamp(2), body)?;
            self.ops.push(op);
            Ok(())
        }

        fn by_owner(&mut self, body: OpBody) {
            let owner = self.owner.clone();
            self.author(&owner, body).expect("the owner may");
        }
    }

    fn member(n: u8) -> MemberId {
        MemberId::from_bytes([n; 16])
    }

    fn care_notes() -> DocKind {
        DocKind::Notes { stream: NoteStream::Care, month: month() }
    }

    fn note(doc: &mut Automerge, by: &Author, n: u8) -> ChangeHash {
        let text = format!("note {n}");
        let new = NewNote { text, ..NewNote::default() };
        notes::add_note(doc, by, entry(n), &new).expect("writes");
        doc.get_heads()[0]
    }

    fn texts(doc: &Automerge) -> Vec<String> {
        let mut all: Vec<String> =
            notes::notes(doc).expect("reads").into_iter().map(|n| n.text).collect();
        all.sort();
        all
    }

    fn merged(docs: &[&Automerge]) -> Automerge {
        let mut all = docs[0].clone();
        for doc in &docs[1..] {
            all.merge(&mut (*doc).clone()).expect("merges");
        }
        all
    }

    /// The worker's note the owner held when removing them stays; the one they wrote
    /// after, and the note another worker built on it, are kept aside, the same from
    /// any order of merging, until the owner accepts the first.
    #[test]
    fn changes_a_removal_did_not_know_are_kept_aside_with_what_was_built_on_them() {
        let mut team =
            Team::new([(Role::Worker, vec![]), (Role::Worker, vec![]), (Role::Advocate, vec![])]);
        let kind = care_notes();
        let id = kind.doc_id(team.id);
        let (gone, other) = (author_at(2, 10), author_at(3, 20));
        let mut owners = genesis(team.id, &kind);
        note(&mut owners, &gone, 1);
        let mut workers = owners.clone();
        let known = vec![(id, changes_by(&owners, gone.device))];
        assert_eq!(known, vec![(id, 1)]);
        team.by_owner(OpBody::RemoveMemberKnowing {
            member: member(2),
            known: vec![KnownChanges { device: gone.device, docs: known }],
        });
        // Written offline by the removed worker, and built on by a worker who had not
        // heard of the removal yet; the owner writes on meanwhile.
        let after = note(&mut workers, &gone, 2);
        let built_on = note(&mut workers, &other, 3);
        note(&mut owners, &author_at(1, 30), 4);
        let membership = team.membership();
        let a = merged(&[&owners, &workers]);
        let b = merged(&[&workers, &owners]);
        let aside = kept_aside(&a, id, &kind, &membership).expect("some kept aside");
        assert_eq!(Some(&aside), kept_aside(&b, id, &kind, &membership).as_ref());
        let hashes: Vec<(ChangeHash, bool)> =
            aside.changes.iter().map(|c| (c.hash, c.after_removal)).collect();
        assert_eq!(hashes, vec![(after, true), (built_on, false)]);
        assert_eq!(aside.changes[0].device, Some(gone.device));
        let record = a.fork_at(&aside.record_heads).expect("the record's heads are held");
        assert_eq!(texts(&record), ["note 1", "note 4"]);
        assert_eq!(texts(&a).len(), 4, "the document itself keeps everything");

        // Accepting the note built on brings the one it was built on.
        assert_eq!(roots_to_accept(&aside, &[built_on]), Some(vec![after]));
        assert_eq!(roots_to_accept(&aside, &[owners.get_heads()[0]]), None);
        // An advocate may not accept; the owner may.
        let advocate = OpBody::AcceptChanges { doc: id, changes: vec![after.0] };
        assert!(matches!(
            Membership::check(&membership, DeviceId::from_bytes([4; 32]), &advocate),
            Err(RejectReason::NotAllowed { .. })
        ));
        team.by_owner(advocate);
        assert_eq!(kept_aside(&a, id, &kind, &team.membership()), None);
    }

    /// A removal by a member who could not read a kind of document says nothing of what
    /// was written there, so nothing there is kept aside; where they could read, the
    /// removed device's unknown changes are.
    #[test]
    fn a_removal_keeps_nothing_aside_where_its_author_could_not_read() -> Result<(), RejectReason> {
        let admin = Hat::team_admin();
        let mut team = Team::new([
            (Role::Worker, vec![]),
            (Role::Volunteer, vec![admin]),
            (Role::Advocate, vec![]),
        ]);
        let gone = author_at(2, 10);
        let general = DocKind::Notes { stream: NoteStream::General, month: month() };
        let mut care = genesis(team.id, &care_notes());
        let mut chat = genesis(team.id, &general);
        note(&mut care, &gone, 1);
        note(&mut chat, &gone, 2);
        let volunteer = DeviceKey::from_seed([9; 32]);
        let device = volunteer.device_id();
        team.by_owner(OpBody::AddDevice { member: member(3), device, label: "tablet".into() });
        team.author(
            &volunteer,
            OpBody::RemoveDeviceKnowing { device: gone.device, known: vec![] },
        )?;
        let membership = team.membership();
        let cut = &membership.cuts()[&gone.device];
        assert_eq!(cut.by_role, Role::Volunteer);
        assert_eq!(
            kept_aside(&care, care_notes().doc_id(team.id), &care_notes(), &membership),
            None
        );
        let aside = kept_aside(&chat, general.doc_id(team.id), &general, &membership);
        assert_eq!(aside.map(|a| a.changes.len()), Some(1));
        Ok(())
    }

    /// The bounds of removals and acceptances, and whose devices a removal may name.
    #[test]
    fn removals_and_acceptances_are_checked() {
        let mut team =
            Team::new([(Role::Worker, vec![]), (Role::Worker, vec![]), (Role::Advocate, vec![])]);
        let owner = team.owner.clone();
        let doc = care_notes().doc_id(team.id);
        let [two, three] = [2u8, 3].map(|n| DeviceId::from_bytes([n; 32]));
        let not_theirs = OpBody::RemoveMemberKnowing {
            member: member(2),
            known: vec![KnownChanges { device: three, docs: vec![(doc, 1)] }],
        };
        assert!(matches!(team.author(&owner, not_theirs), Err(RejectReason::Conflict(_))));
        let twice = OpBody::RemoveDeviceKnowing { device: two, known: vec![(doc, 1), (doc, 2)] };
        assert!(matches!(team.author(&owner, twice), Err(RejectReason::Malformed(_))));
        let none = OpBody::RemoveDeviceKnowing { device: two, known: vec![(doc, 0)] };
        assert!(matches!(team.author(&owner, none), Err(RejectReason::Malformed(_))));
        let many: Vec<(DocId, u64)> = (0..=crate::membership::KNOWN_DOCS_MAX as u32)
            .map(|i| {
                let mut id = [0; 16];
                id[..4].copy_from_slice(&i.to_le_bytes());
                (DocId::from_bytes(id), 1)
            })
            .collect();
        let many = OpBody::RemoveDeviceKnowing { device: two, known: many };
        assert!(matches!(team.author(&owner, many), Err(RejectReason::Malformed(_))));
        let empty = OpBody::AcceptChanges { doc, changes: vec![] };
        assert!(matches!(team.author(&owner, empty), Err(RejectReason::Malformed(_))));
        let fine = OpBody::RemoveDeviceKnowing { device: two, known: vec![(doc, 3)] };
        assert_eq!(team.author(&owner, fine), Ok(()));
        let membership = team.membership();
        let cut = &membership.cuts()[&two];
        assert_eq!((cut.known.get(&doc), cut.by_role), (Some(&3), Role::Owner));
    }

    /// One step of three devices' history: device `who` (1 to 3; 2 is the one removed)
    /// writes a note on its copy, or copies `from` and `to` merge.
    #[derive(Clone, Debug)]
    enum Step {
        Write { who: usize },
        Merge { from: usize, to: usize },
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0usize..3).prop_map(|who| Step::Write { who }),
            (0usize..3, 0usize..3).prop_map(|(from, to)| Step::Merge { from, to }),
        ]
    }

    proptest::proptest! {
        /// Over any history of three devices' writes and merges, and any cut of the
        /// removed one: a change is kept aside exactly when it, or a change it was built
        /// on through any path, is by the removed device past its cut; the record holds
        /// every other change and nothing more; and merging in another order changes
        /// nothing.
        #[test]
        fn the_record_is_every_change_not_built_on_one_past_the_cut(
            steps in proptest::collection::vec(step(), 1..40),
            cut in 0u64..8,
        ) {
            let mut team = Team::new([
                (Role::Worker, vec![]),
                (Role::Worker, vec![]),
                (Role::Advocate, vec![]),
            ]);
            let kind = care_notes();
            let id = kind.doc_id(team.id);
            let mut copies = vec![genesis(team.id, &kind); 3];
            for (n, step) in steps.iter().enumerate() {
                match *step {
                    Step::Write { who } => {
                        let by = author_at(who as u8 + 2, n as i64);
                        note(&mut copies[who], &by, n as u8);
                    }
                    Step::Merge { from, to } if from != to => {
                        let mut other = copies[from].clone();
                        copies[to].merge(&mut other).expect("merges");
                    }
                    Step::Merge { .. } => {}
                }
            }
            let removed = DeviceId::from_bytes([2; 32]);
            let known = if cut == 0 { vec![] } else { vec![(id, cut)] };
            team.by_owner(OpBody::RemoveDeviceKnowing { device: removed, known });
            let membership = team.membership();
            let forward = merged(&[&copies[0], &copies[1], &copies[2]]);
            let backward = merged(&[&copies[2], &copies[1], &copies[0]]);
            let aside = kept_aside(&forward, id, &kind, &membership);
            proptest::prop_assert_eq!(&aside, &kept_aside(&backward, id, &kind, &membership));

            // The definition, checked by walking each change's ancestors.
            let metas = forward.get_changes_meta(&[]);
            let deps: HashMap<ChangeHash, Vec<ChangeHash>> =
                metas.iter().map(|m| (m.hash, m.deps.clone())).collect();
            let past_cut: HashSet<ChangeHash> = metas
                .iter()
                .filter(|m| m.actor.to_bytes() == removed.as_bytes() && m.seq > cut)
                .map(|m| m.hash)
                .collect();
            let expected: HashSet<ChangeHash> = metas
                .iter()
                .map(|m| m.hash)
                .filter(|hash| {
                    let mut todo = vec![*hash];
                    let mut seen = HashSet::new();
                    while let Some(h) = todo.pop() {
                        if past_cut.contains(&h) {
                            return true;
                        }
                        if seen.insert(h) {
                            todo.extend(deps[&h].iter().copied());
                        }
                    }
                    false
                })
                .collect();
            let found: HashSet<ChangeHash> = aside
                .as_ref()
                .map(|a| a.changes.iter().map(|c| c.hash).collect())
                .unwrap_or_default();
            proptest::prop_assert_eq!(&found, &expected);
            if let Some(aside) = aside {
                let record = forward.fork_at(&aside.record_heads).expect("heads held");
                let held: HashSet<ChangeHash> =
                    record.get_changes_meta(&[]).iter().map(|m| m.hash).collect();
                let rest: HashSet<ChangeHash> =
                    metas.iter().map(|m| m.hash).filter(|h| !expected.contains(h)).collect();
                proptest::prop_assert_eq!(held, rest);
                // Listed each after what it was built on.
                for (i, change) in aside.changes.iter().enumerate() {
                    let later = &aside.changes[i + 1..];
                    proptest::prop_assert!(change.deps.iter().all(|d| later.iter().all(|c| c.hash != *d)));
                }
            }
        }
    }
}
