//! The membership of a team at one point of its history: who is in, with which
//! role, hats and devices, and what each device may do.

use std::collections::{BTreeMap, BTreeSet};

use super::error::RejectReason;
use super::op::{KnownChanges, Op, OpBody, PREDS_MAX, SignedOp, validate_body};
use super::role::{Access, Hat, Right, Role};
use super::{DEVICES_PER_MEMBER_MAX, MEMBERS_MAX, OPS_PER_MEMBER_MAX};
use crate::doc_kind::DocKind;
use crate::identity::DeviceKey;
use crate::ids::{DeviceId, DocId, MemberId, OpHash, TeamId, Timestamp};
use crate::keys::{KeyId, KeyScope, WrappedKey};

/// Label given to the device that created the team.
const FIRST_DEVICE_LABEL: &str = "first device";

/// The membership of a team, replayed from its signed ops (see the
/// [module docs](super) for the rules).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    team: TeamId,
    name: String,
    owner: MemberId,
    members: BTreeMap<MemberId, Member>,
    removed: BTreeSet<MemberId>,
    /// Every device ever added, with the member it was added to; a device id
    /// belongs to one member only, for good.
    device_history: BTreeMap<DeviceId, MemberId>,
    /// Accepted ops per authoring member (see [`OPS_PER_MEMBER_MAX`]).
    ops_by_member: BTreeMap<MemberId, usize>,
    /// What each removal cut off, by removed device (see [`Cut`]).
    cuts: BTreeMap<DeviceId, Cut>,
    /// Changes kept aside that were accepted into the record, by document.
    accepted: BTreeMap<DocId, BTreeSet<[u8; 32]>>,
    /// The team keys given, by scope.
    keys: BTreeMap<KeyScope, ScopeKeys>,
    heads: Vec<OpHash>,
}

/// The keys of one scope given so far (see [`crate::keys`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeKeys {
    /// Every key of the scope, in the order they were made (each made current then).
    pub keys: Vec<KeyId>,
    /// Each key as wrapped for each device given it.
    pub wrapped: BTreeMap<(KeyId, DeviceId), WrappedKey>,
}

/// Where a removal cut a device off: its changes the removal's author held are part of
/// the record, its later ones are kept aside (see
/// [`KnownChanges`](super::KnownChanges)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Per document, how many of the device's changes the removal's author held.
    pub known: BTreeMap<DocId, u64>,
    /// The role of the removal's author: a document of a kind it could not read is not
    /// cut, since it could not say what it held there.
    pub by_role: Role,
}

impl Cut {
    /// Whether the device's change number `seq` (from 1) of `doc`, a `kind` document,
    /// is after the cut.
    pub fn is_after(&self, doc: DocId, kind: &DocKind, seq: u64) -> bool {
        self.by_role.access(kind) != Access::None
            && seq > self.known.get(&doc).copied().unwrap_or(0)
    }
}

/// A current member of a team.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member's id.
    pub id: MemberId,
    /// Their name.
    pub name: String,
    /// Their role.
    pub role: Role,
    /// The hats they wear.
    pub hats: Vec<Hat>,
    /// Their current devices.
    pub devices: BTreeMap<DeviceId, DeviceInfo>,
    /// When they were added (as claimed by the op that added them).
    pub added_at: Timestamp,
    /// Who added them; `None` for the owner, who created the team.
    pub added_by: Option<MemberId>,
}

/// A current device of a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// A label for people, e.g. "Sam's phone".
    pub label: String,
    /// When it was added (as claimed by the op that added it).
    pub added_at: Timestamp,
}

impl Membership {
    /// The team.
    pub fn team(&self) -> TeamId {
        self.team
    }

    /// The team's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The owner: the person getting support.
    pub fn owner(&self) -> MemberId {
        self.owner
    }

    /// The current members, by id.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// A current member; `None` if unknown or removed.
    pub fn member(&self, id: MemberId) -> Option<&Member> {
        self.members.get(&id)
    }

    /// Whether `id` was a member and has been removed.
    pub fn is_removed(&self, id: MemberId) -> bool {
        self.removed.contains(&id)
    }

    /// The current member whose current device `device` is.
    pub fn member_of_device(&self, device: DeviceId) -> Option<&Member> {
        let id = self.device_history.get(&device)?;
        self.members.get(id).filter(|m| m.devices.contains_key(&device))
    }

    /// The role of the member using `device`, if it is a current device.
    pub fn role_of_device(&self, device: DeviceId) -> Option<Role> {
        self.member_of_device(device).map(|m| m.role)
    }

    /// Whether a current member holds `right` (the owner holds every right).
    pub fn has_right(&self, member: MemberId, right: Right) -> bool {
        match self.members.get(&member) {
            Some(m) if m.id == self.owner => true,
            Some(m) => m.hats.iter().any(|h| h.rights.contains(&right)),
            None => false,
        }
    }

    /// What `device` may do with a document of `kind`: its member's role, plus
    /// write access to the team document for holders of [`Right::ManageTeam`].
    /// [`Access::None`] for unknown and removed devices.
    pub fn access(&self, device: DeviceId, kind: &DocKind) -> Access {
        let Some(member) = self.member_of_device(device) else {
            return Access::None;
        };
        let manages_team =
            member.role != Role::Relay && self.has_right(member.id, Right::ManageTeam);
        if *kind == DocKind::Team && manages_team {
            return Access::ReadWrite;
        }
        member.role.access(kind)
    }

    /// The latest ops of the team's history: the predecessors of the next op.
    pub fn heads(&self) -> &[OpHash] {
        &self.heads
    }

    /// The team keys of `scope` given so far.
    pub fn keys(&self, scope: KeyScope) -> Option<&ScopeKeys> {
        self.keys.get(&scope)
    }

    /// The key of `scope` to encrypt with now: the newest given to current devices alone.
    /// Two removals made apart at the same time can each give its new key to the device
    /// the other removes; neither key is current then, nor any older one those devices
    /// hold, so the scope has none until a member renews it.
    pub fn current_key(&self, scope: KeyScope) -> Option<KeyId> {
        let keys = self.keys.get(&scope)?;
        keys.keys.iter().rev().copied().find(|id| {
            keys.wrapped
                .range((*id, DeviceId::from_bytes([0; 32]))..)
                .take_while(|((key, _), _)| key == id)
                .all(|((_, device), _)| self.member_of_device(*device).is_some())
        })
    }

    /// Where removals cut devices off, by device: empty when no removal named what it
    /// held (see [`Cut`]).
    pub fn cuts(&self) -> &BTreeMap<DeviceId, Cut> {
        &self.cuts
    }

    /// Whether the change `hash` of `doc`, kept aside, was accepted into the record.
    pub fn is_accepted(&self, doc: DocId, hash: &[u8; 32]) -> bool {
        self.accepted.get(&doc).is_some_and(|set| set.contains(hash))
    }

    /// Every current device, with its member.
    pub fn devices(&self) -> impl Iterator<Item = (DeviceId, &Member)> {
        self.members.values().flat_map(|m| m.devices.keys().map(move |d| (*d, m)))
    }

    /// Whether an op signed by `author` doing `body` would be accepted now.
    pub fn check(&self, author: DeviceId, body: &OpBody) -> Result<(), RejectReason> {
        validate_body(body).map_err(RejectReason::Malformed)?;
        let actor = self.author_member(author)?;
        if actor.role == Role::Relay {
            return not_allowed(actor, "change the membership, as a relay");
        }
        let made = self.ops_by_member.get(&actor.id).copied().unwrap_or(0);
        if actor.id != self.owner && made >= OPS_PER_MEMBER_MAX {
            return Err(over_limit("membership changes by one member", OPS_PER_MEMBER_MAX));
        }
        match body {
            OpBody::CreateTeam { .. } => Err(conflict("the team already exists")),
            OpBody::AddMember { member, role, hats, .. } => {
                self.check_add_member(actor, *member, *role, hats)
            }
            OpBody::AddDevice { member, device, .. } => {
                self.check_add_device(actor, *member, *device)
            }
            OpBody::RemoveDevice { device } | OpBody::RemoveDeviceKnowing { device, .. } => {
                self.check_remove_device(actor, *device)
            }
            OpBody::RemoveMember { member } => self.check_remove_member(actor, *member),
            OpBody::RemoveMemberKnowing { member, known } => {
                self.check_remove_member(actor, *member)?;
                let devices = &self.current(*member)?.devices;
                match known.iter().find(|k| !devices.contains_key(&k.device)) {
                    Some(k) => Err(conflict(&format!("{} is not a device of {member}", k.device))),
                    None => Ok(()),
                }
            }
            OpBody::TeamKeys { scope, key, current, wrapped } => {
                self.check_team_keys(actor, *scope, key, *current, wrapped)
            }
            OpBody::AcceptChanges { .. } => {
                if self.has_right(actor.id, Right::ManageTeam) {
                    Ok(())
                } else {
                    not_allowed(actor, "accept changes kept aside")
                }
            }
            OpBody::ChangeRole { member, role, hats } => {
                self.check_change_role(actor, *member, *role, hats)
            }
        }
    }

    /// Signs a new op with `key`, built on the current heads, after checking
    /// that it would be accepted.
    pub fn author_op(
        &self,
        key: &DeviceKey,
        at: Timestamp,
        body: OpBody,
    ) -> Result<SignedOp, RejectReason> {
        self.check(key.device_id(), &body)?;
        if self.heads.len() > PREDS_MAX {
            let why = format!("the history has {} heads, more than {PREDS_MAX}", self.heads.len());
            return Err(RejectReason::Malformed(why));
        }
        let op = Op { team: Some(self.team), preds: self.heads.clone(), at, body };
        Ok(SignedOp::sign(key, &op))
    }

    /// The membership right after the op creating the team.
    pub(super) fn genesis(
        team: TeamId,
        author: DeviceId,
        at: Timestamp,
        (name, owner, owner_name): (&str, MemberId, &str),
    ) -> Membership {
        let device = DeviceInfo { label: FIRST_DEVICE_LABEL.to_owned(), added_at: at };
        let member = Member {
            id: owner,
            name: owner_name.to_owned(),
            role: Role::Owner,
            hats: Vec::new(),
            devices: BTreeMap::from([(author, device)]),
            added_at: at,
            added_by: None,
        };
        Membership {
            team,
            name: name.to_owned(),
            owner,
            members: BTreeMap::from([(owner, member)]),
            removed: BTreeSet::new(),
            device_history: BTreeMap::from([(author, owner)]),
            ops_by_member: BTreeMap::new(),
            cuts: BTreeMap::new(),
            accepted: BTreeMap::new(),
            keys: BTreeMap::new(),
            heads: Vec::new(),
        }
    }

    /// Applies an op that [`check`](Self::check) accepted.
    pub(super) fn apply(&mut self, author: DeviceId, at: Timestamp, body: &OpBody) {
        let added_by = self.member_of_device(author).map(|m| m.id);
        let by_role = self.role_of_device(author).unwrap_or(Role::Relay);
        if let Some(member) = added_by {
            *self.ops_by_member.entry(member).or_default() += 1;
        }
        match body {
            OpBody::CreateTeam { .. } => {}
            OpBody::AddMember { member, name, role, hats } => {
                let new = Member {
                    id: *member,
                    name: name.clone(),
                    role: *role,
                    hats: hats.clone(),
                    devices: BTreeMap::new(),
                    added_at: at,
                    added_by,
                };
                self.members.insert(*member, new);
            }
            OpBody::AddDevice { member, device, label } => {
                if let Some(m) = self.members.get_mut(member) {
                    m.devices.insert(*device, DeviceInfo { label: label.clone(), added_at: at });
                    self.device_history.insert(*device, *member);
                }
            }
            OpBody::RemoveDevice { device } => self.remove_device(*device),
            OpBody::RemoveMember { member } => {
                self.members.remove(member);
                self.removed.insert(*member);
            }
            OpBody::RemoveDeviceKnowing { device, known } => {
                let known = known.iter().copied().collect();
                self.cuts.entry(*device).or_insert(Cut { known, by_role });
                self.remove_device(*device);
            }
            OpBody::RemoveMemberKnowing { member, known } => {
                let devices = self.members.get(member).map(|m| m.devices.keys().copied());
                for device in devices.into_iter().flatten().collect::<Vec<_>>() {
                    let held = known.iter().find(|k: &&KnownChanges| k.device == device);
                    let known = held.map(|k| k.docs.iter().copied().collect()).unwrap_or_default();
                    self.cuts.entry(device).or_insert(Cut { known, by_role });
                }
                self.members.remove(member);
                self.removed.insert(*member);
            }
            OpBody::AcceptChanges { doc, changes } => {
                self.accepted.entry(*doc).or_default().extend(changes.iter().copied());
            }
            OpBody::TeamKeys { scope, key, current, wrapped } => {
                let keys = self.keys.entry(*scope).or_default();
                if *current && !keys.keys.contains(key) {
                    keys.keys.push(*key);
                }
                for w in wrapped {
                    keys.wrapped.entry((*key, w.device)).or_insert_with(|| w.clone());
                }
            }
            OpBody::ChangeRole { member, role, hats } => {
                if let Some(m) = self.members.get_mut(member) {
                    m.role = *role;
                    m.hats = hats.clone();
                }
            }
        }
    }

    fn remove_device(&mut self, device: DeviceId) {
        let member = self.device_history.get(&device).and_then(|id| self.members.get_mut(id));
        if let Some(m) = member {
            m.devices.remove(&device);
        }
    }

    /// Sets the heads of the history this membership was replayed from.
    pub(super) fn set_heads(&mut self, heads: Vec<OpHash>) {
        self.heads = heads;
    }

    /// The member `device` was ever added to, even if since removed.
    pub fn member_ever_of_device(&self, device: DeviceId) -> Option<MemberId> {
        self.device_history.get(&device).copied()
    }

    fn author_member(&self, author: DeviceId) -> Result<&Member, RejectReason> {
        match self.member_of_device(author) {
            Some(member) => Ok(member),
            None if self.device_history.contains_key(&author) => {
                Err(RejectReason::Removed { device: author })
            }
            None => Err(RejectReason::UnknownAuthor(author)),
        }
    }

    fn current(&self, id: MemberId) -> Result<&Member, RejectReason> {
        self.members.get(&id).ok_or_else(|| conflict(&format!("{id} is not a current member")))
    }

    fn check_manager(&self, actor: &Member, action: &'static str) -> Result<(), RejectReason> {
        if self.has_right(actor.id, Right::ManageMembers) {
            Ok(())
        } else {
            not_allowed(actor, action)
        }
    }

    /// Only the owner grants rights; no one is ever made owner.
    fn check_grant(
        &self,
        actor: &Member,
        role: Role,
        hats: &[Hat],
        had: &[Hat],
    ) -> Result<(), RejectReason> {
        if role == Role::Owner {
            return not_allowed(actor, "make someone else the owner");
        }
        if actor.id != self.owner && !rights_of(hats).is_subset(&rights_of(had)) {
            return not_allowed(actor, "grant hats carrying rights (only the owner may)");
        }
        Ok(())
    }

    fn check_add_member(
        &self,
        actor: &Member,
        id: MemberId,
        role: Role,
        hats: &[Hat],
    ) -> Result<(), RejectReason> {
        self.check_manager(actor, "add members")?;
        self.check_grant(actor, role, hats, &[])?;
        if self.removed.contains(&id) {
            return Err(conflict(&format!("{id} was removed; add them anew with a new id")));
        }
        if self.members.contains_key(&id) {
            return Err(conflict(&format!("{id} is already a member")));
        }
        if self.members.len() + self.removed.len() >= MEMBERS_MAX {
            return Err(over_limit("members added to a team", MEMBERS_MAX));
        }
        Ok(())
    }

    fn check_change_role(
        &self,
        actor: &Member,
        id: MemberId,
        role: Role,
        hats: &[Hat],
    ) -> Result<(), RejectReason> {
        if id == self.owner {
            return not_allowed(actor, "change the owner's role");
        }
        self.check_manager(actor, "change members' roles")?;
        let target = self.current(id)?;
        self.check_grant(actor, role, hats, &target.hats)
    }

    fn check_remove_member(&self, actor: &Member, id: MemberId) -> Result<(), RejectReason> {
        if id == self.owner {
            return not_allowed(actor, "remove the owner");
        }
        self.check_manager(actor, "remove members")?;
        self.current(id).map(|_| ())
    }

    fn check_add_device(
        &self,
        actor: &Member,
        id: MemberId,
        device: DeviceId,
    ) -> Result<(), RejectReason> {
        let target = self.current(id)?;
        if actor.id != target.id {
            if target.id == self.owner {
                return not_allowed(actor, "add devices for the owner");
            }
            self.check_manager(actor, "add devices for other members")?;
        }
        if self.device_history.contains_key(&device) {
            return Err(conflict(&format!("device {device} is, or was, a device of the team")));
        }
        if target.devices.len() >= DEVICES_PER_MEMBER_MAX {
            return Err(over_limit("devices of one member", DEVICES_PER_MEMBER_MAX));
        }
        Ok(())
    }

    /// A member gives a key of a scope their role holds, to current devices whose members'
    /// roles hold it (or devices removed meanwhile); a key given again must have been
    /// given before.
    fn check_team_keys(
        &self,
        actor: &Member,
        scope: KeyScope,
        key: &KeyId,
        current: bool,
        wrapped: &[WrappedKey],
    ) -> Result<(), RejectReason> {
        if !scope.held_by(actor.role) {
            return not_allowed(actor, "give keys of a scope their role does not read");
        }
        let known = self.keys.get(&scope).is_some_and(|keys| keys.keys.contains(key));
        if current && known {
            return Err(conflict("the key was given before: a new current key must be new"));
        }
        if !current && !known {
            return Err(conflict("the key was never given: a new key is given as current"));
        }
        for w in wrapped {
            // A device removed meanwhile (by a removal the author had not seen) may be
            // among those given a new key: the op stands for the others, and the key is
            // never current (see `current_key`).
            let allowed = match self.member_of_device(w.device) {
                Some(member) => scope.held_by(member.role),
                None => self.device_history.contains_key(&w.device),
            };
            if !allowed {
                return Err(conflict(&format!(
                    "device {} is not a device of a member who reads the {scope} scope",
                    w.device
                )));
            }
        }
        Ok(())
    }

    fn check_remove_device(&self, actor: &Member, device: DeviceId) -> Result<(), RejectReason> {
        let target = self
            .member_of_device(device)
            .ok_or_else(|| conflict(&format!("device {device} is not a current device")))?;
        if actor.id != target.id {
            if target.id == self.owner {
                return not_allowed(actor, "remove the owner's devices");
            }
            self.check_manager(actor, "remove other members' devices")?;
        }
        if target.id == self.owner && target.devices.len() == 1 {
            return Err(conflict("the owner's last device cannot be removed; add another first"));
        }
        Ok(())
    }
}

fn rights_of(hats: &[Hat]) -> BTreeSet<Right> {
    hats.iter().flat_map(|h| h.rights.iter().copied()).collect()
}

fn not_allowed(actor: &Member, action: &'static str) -> Result<(), RejectReason> {
    Err(RejectReason::NotAllowed { member: actor.id, action })
}

fn over_limit(what: &'static str, max: usize) -> RejectReason {
    RejectReason::OverLimit { what, max }
}

fn conflict(what: &str) -> RejectReason {
    RejectReason::Conflict(what.to_owned())
}
