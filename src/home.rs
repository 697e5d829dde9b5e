//! A care home: one directory on a device holding its key, its profile and the SQLite
//! store of every team it belongs to. The entry point of the embedding API.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use automerge::Automerge;
use care_core::documents::{self, Author, DocError};
use care_core::keys::{self, KeyId, KeyScope, TeamKey};
use care_core::membership::{self, KnownChanges, Membership, OpBody, Role, SignedOp};
use care_core::{DeviceId, DeviceKey, DocId, DocKind, MemberId, TeamId, Timestamp};
use care_store::{DocMeta, DocSummary, IntegrityReport, Store, StoreKey, StoredDoc, keyfile};
use care_sync::Change;
use care_sync::TeamAccess;
use care_sync::access::{check_document, check_saved_document};
use care_sync::chunks::{INFLATED_BYTES_MAX, check_inflated_len};
use serde::{Deserialize, Serialize};

use crate::cache::DocCache;
use crate::error::{Error, Result};
use crate::team::Team;
use crate::verify::Verifier;

/// Name of the device's secret key file inside a home directory.
pub const KEY_FILE: &str = "device.key";
/// Name of the SQLite store inside a home directory.
pub const STORE_FILE: &str = "care.sqlite";
/// Name of the file holding the key the store is encrypted with, beside the device key
/// (mode 0600), when the home keeps it itself (see [`Home::init`]).
pub const STORE_KEY_FILE: &str = "store.key";
/// Meta key under which the home's profile is stored.
const PROFILE_KEY: &str = "profile";
/// Meta key under which a running node records where it listens, for invitations.
const LISTEN_KEY: &str = "serve_addrs";
/// Meta key prefix under which the time of the last sync with a device is stored.
const LAST_SYNC_PREFIX: &str = "last_sync:";
/// Longest name a person may give themselves or a team, in bytes.
pub const NAME_BYTES_MAX: usize = 200;

/// Who uses this home: the person's name and member id, and this device's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The person's name, as their teams see it.
    pub name: String,
    /// The person's member id, used when they create or join a team.
    pub member: MemberId,
    /// This device's public id (its ed25519 key and iroh endpoint id).
    pub device: DeviceId,
}

/// One line of `teams()`: a team this home belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct TeamSummary {
    /// The team's id.
    pub id: TeamId,
    /// The team's name.
    pub name: String,
    /// This person's role in it, if they are still a member.
    pub role: Option<String>,
    /// How many members it has.
    pub members: usize,
    /// How many documents of the team this home holds.
    pub documents: usize,
}

/// Where a running node of this home can be reached, as recorded for invitations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenAddrs {
    /// Direct addresses.
    pub addrs: Vec<SocketAddr>,
    /// The relay the node uses, if any.
    pub relay: Option<String>,
}

/// Most documents [`Home::read_records`] loads before reading them together: an eighth
/// of those kept loaded, so that, unless they are large, none of them is dropped before
/// it is read (one that is, is read again alone).
const READ_TOGETHER_MAX: usize = crate::cache::DOCS_CACHED_MAX / 8;
/// Most threads [`Home::read_records`] reads on.
const READERS_MAX: usize = 4;

/// Why a document is being loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// To read it: it must exist, and is brought up to date first.
    Read,
    /// To change it: it is created from its genesis if missing.
    Write,
}

/// Where a home reads the time. The real clock by default; tests, simulations and
/// benchmarks pass their own.
pub trait Clock: Send {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Timestamp(i64::try_from(ms).unwrap_or(i64::MAX))
    }
}

/// An open care home.
pub struct Home {
    dir: PathBuf,
    clock: Box<dyn Clock>,
    pub(crate) store: Store,
    pub(crate) key: DeviceKey,
    profile: Profile,
    /// Documents loaded recently, kept so repeated writes do not reload them.
    pub(crate) docs: DocCache,
    /// Automerge sync states of the sessions under way, by peer and document.
    pub(crate) sync_states: HashMap<(DeviceId, DocId), automerge::sync::State>,
    /// What this home changed since a node last collected it, to push to peers.
    pub(crate) changed: Vec<Change>,
    /// Each team's membership as last replayed: replaying verifies every op's signature,
    /// and every session start needs the membership of the teams shared with its peer.
    /// An entry is dropped when this home stores ops of its team, and every entry when
    /// another program has written to the store since ([`Store::data_version`]).
    access: RefCell<AccessCache>,
    /// The worker checking documents received whole, once a node runs this home.
    pub(crate) verifier: Option<Verifier>,
    /// Signatures of changes received ahead of what they depend on.
    pub(crate) pending_signatures: care_sync::authorship::PendingSignatures,
    /// The bytes of the last document received or sent whole, kept to pass it on to the
    /// next device without reading (and decrypting) it from the store again.
    pub(crate) last_whole: Option<crate::replica::WholeBytes>,
    /// The records of documents where changes are kept aside.
    pub(crate) records: crate::record::Records,
    /// The team keys this device has opened, kept while the home is open.
    pub(crate) opened_keys: HashMap<care_core::keys::KeyId, care_core::keys::TeamKey>,
    /// Large documents received whole, being written a piece at a time.
    pub(crate) arriving: crate::arriving::Arriving,
    /// How this home asks the node running it for a turn, once one does.
    pub(crate) waker: Option<Waker>,
    /// The thread copying the store's log into its file and compacting documents, once a
    /// node runs this home.
    pub(crate) upkeep: Option<crate::upkeep::Upkeep>,
}

/// What a node gives a home to ask it for a turn ([`care_sync::Replica::set_waker`]).
pub(crate) type Waker = std::sync::Arc<std::sync::Mutex<Box<dyn Fn() + Send>>>;

impl std::fmt::Debug for Home {
    /// The directory and whose home it is; never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Home")
            .field("dir", &self.dir)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl Home {
    /// Creates a new care home in `dir` for a person called `name`: a fresh device key
    /// and a fresh key for the store (each in a file readable only by this user), an
    /// empty store encrypted with that key, and a profile.
    pub fn init(dir: &Path, name: &str) -> Result<Home> {
        Home::init_with(dir, name, random_bytes(), MemberId::from_bytes(random_bytes()), None)
    }

    /// Creates a new care home whose store is encrypted with `store_key`, which the app
    /// keeps (on a phone, in the platform's keystore): it is not written to the home, and
    /// [`Home::open_with_store_key`] opens the home again.
    pub fn init_with_store_key(dir: &Path, name: &str, store_key: StoreKey) -> Result<Home> {
        let member = MemberId::from_bytes(random_bytes());
        Home::init_with(dir, name, random_bytes(), member, Some(store_key))
    }

    /// Creates a new care home with a given device key seed and member id; with no store
    /// key given, a fresh one in [`STORE_KEY_FILE`].
    pub(crate) fn init_with(
        dir: &Path,
        name: &str,
        seed: [u8; 32],
        member: MemberId,
        store_key: Option<StoreKey>,
    ) -> Result<Home> {
        let name = checked_name(name, "your name")?;
        if dir.join(KEY_FILE).exists() || dir.join(STORE_FILE).exists() {
            return Err(Error::AlreadyInitialised { dir: dir.to_owned() });
        }
        create_private_dir(dir)?;
        let key = DeviceKey::from_seed(seed);
        keyfile::create(&dir.join(KEY_FILE), &key.to_seed())?;
        let store_key = match store_key {
            Some(store_key) => store_key,
            None => {
                let store_key = StoreKey::from_bytes(random_bytes());
                keyfile::create(&dir.join(STORE_KEY_FILE), &store_key.to_bytes())?;
                store_key
            }
        };
        let mut store = Store::open_encrypted(&dir.join(STORE_FILE), &store_key)?;
        let profile = Profile { name: name.to_owned(), member, device: key.device_id() };
        let json = serde_json::to_vec(&profile).expect("a profile always serialises to JSON");
        store.meta_set(PROFILE_KEY, &json)?;
        Ok(Home::assemble(dir, store, key, profile))
    }

    /// Opens the care home in `dir`, with the store key in its [`STORE_KEY_FILE`] (a home
    /// made before stores were encrypted has none, and opens unencrypted).
    pub fn open(dir: &Path) -> Result<Home> {
        Home::open_with(dir, Home::store_key_of(dir)?.as_ref())
    }

    /// Opens the care home in `dir` whose store is encrypted with `store_key`, kept by the
    /// app (see [`Home::init_with_store_key`]).
    pub fn open_with_store_key(dir: &Path, store_key: &StoreKey) -> Result<Home> {
        Home::open_with(dir, Some(store_key))
    }

    /// The key in the [`STORE_KEY_FILE`] of the home in `dir`, if it keeps one: for tools
    /// that open the store file with SQLCipher directly ([`StoreKey::key_pragma`]).
    pub fn store_key_of(dir: &Path) -> Result<Option<StoreKey>> {
        match dir.join(STORE_KEY_FILE) {
            path if path.exists() => Ok(Some(StoreKey::from_bytes(keyfile::read(&path)?))),
            _ => Ok(None),
        }
    }

    fn open_with(dir: &Path, store_key: Option<&StoreKey>) -> Result<Home> {
        let key_path = dir.join(KEY_FILE);
        if !key_path.exists() || !dir.join(STORE_FILE).exists() {
            return Err(Error::NotInitialised { dir: dir.to_owned() });
        }
        let key = DeviceKey::from_seed(keyfile::read(&key_path)?);
        let mut store = match store_key {
            Some(store_key) => Store::open_encrypted(&dir.join(STORE_FILE), store_key)?,
            None => Store::open(&dir.join(STORE_FILE))?,
        };
        // A document this device stopped while writing is fetched again.
        store.drop_unfinished_pieces()?;
        let json =
            store.meta_get(PROFILE_KEY)?.ok_or_else(|| Error::Profile("it is missing".into()))?;
        let profile: Profile =
            serde_json::from_slice(&json).map_err(|e| Error::Profile(e.to_string()))?;
        if profile.device != key.device_id() {
            return Err(Error::Profile("it names another device than the key file".into()));
        }
        Ok(Home::assemble(dir, store, key, profile))
    }

    fn assemble(dir: &Path, store: Store, key: DeviceKey, profile: Profile) -> Home {
        let clock = Box::new(SystemClock);
        Home {
            dir: dir.to_owned(),
            clock,
            store,
            key,
            profile,
            docs: DocCache::default(),
            sync_states: HashMap::new(),
            changed: Vec::new(),
            access: RefCell::new(AccessCache::default()),
            verifier: None,
            pending_signatures: Default::default(),
            last_whole: None,
            records: crate::record::Records::default(),
            opened_keys: HashMap::new(),
            arriving: Default::default(),
            waker: None,
            upkeep: None,
        }
    }

    /// Replaces the clock this home stamps changes with.
    pub fn set_clock(&mut self, clock: impl Clock + 'static) {
        self.clock = Box::new(clock);
    }

    /// The current time by this home's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Compacts every document into a single snapshot, and returns the bytes its
    /// documents take before and after.
    pub fn compact(&mut self) -> Result<care_store::CompactReport> {
        let mut total = care_store::CompactReport { before_bytes: 0, after_bytes: 0 };
        for doc in self.store.docs(None)? {
            let report = self.store.compact(doc.id)?;
            total.before_bytes += report.before_bytes;
            total.after_bytes += report.after_bytes;
        }
        self.docs.clear();
        Ok(total)
    }

    /// The directory this home lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Who uses this home.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Creates a team owned by this home's person, with this device as its first
    /// device, and the team's shared documents.
    pub fn create_team(&mut self, name: &str) -> Result<TeamId> {
        let name = checked_name(name, "a team name")?;
        let at = self.now();
        let create = membership::create_team(
            &self.key,
            at,
            name,
            self.profile.member,
            &self.profile.name,
            random_bytes(),
        );
        let team = membership::team_id(&create);
        self.store_ops(team, std::slice::from_ref(&create))?;
        // The team's first keys, given to this device alone.
        let me = [self.profile.device];
        for scope in KeyScope::ALL {
            self.author_team_keys(team, scope, &TeamKey::from_bytes(random_bytes()), true, &me)?;
        }
        let mut handle = self.team(&team.to_string())?;
        handle.set_info(&documents::TeamInfo { name: name.to_owned(), circle: None })?;
        for kind in [DocKind::Plan, DocKind::HealthPlan, DocKind::Promises] {
            handle.ensure_doc(kind)?;
        }
        Ok(team)
    }

    /// The teams this home belongs to.
    pub fn teams(&mut self) -> Result<Vec<TeamSummary>> {
        let docs = self.store.docs(None)?;
        let mut out = Vec::new();
        for team in self.store.teams()? {
            let membership = self.membership(team)?;
            let role = membership.role_of_device(self.profile.device).map(|r| r.to_string());
            out.push(TeamSummary {
                id: team,
                name: membership.name().to_owned(),
                role,
                members: membership.members().count(),
                documents: docs.iter().filter(|d| d.team == team).count(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Opens a team by its id, a unique prefix of its id, or its exact name; with
    /// `""`, the only team of this home.
    pub fn team(&mut self, which: &str) -> Result<Team<'_>> {
        let id = self.resolve_team(which)?;
        let membership = self.membership(id)?;
        Ok(Team::new(self, membership))
    }

    /// The team's membership, computed from its signed log as stored here.
    pub fn membership(&self, team: TeamId) -> Result<Membership> {
        Ok(self.team_access(team)?.membership().clone())
    }

    /// The team's membership with its history of roles, replayed from the signed log as
    /// stored here, or as replayed before if the log has not changed since.
    pub(crate) fn team_access(&self, team: TeamId) -> Result<TeamAccess> {
        self.check_access_cache()?;
        if let Some(access) = self.access.borrow().teams.get(&team) {
            return Ok(access.clone());
        }
        let access = TeamAccess::from_ops(team, &self.signed_ops(team)?)?;
        self.access.borrow_mut().teams.insert(team, access.clone());
        Ok(access)
    }

    /// Drops every kept membership if another program on this home wrote to the store
    /// since they were checked: it may have stored ops.
    fn check_access_cache(&self) -> Result<()> {
        let version = self.store.data_version()?;
        let mut cache = self.access.borrow_mut();
        if cache.version != Some(version) {
            *cache = AccessCache { version: Some(version), ..AccessCache::default() };
        }
        Ok(())
    }

    /// The teams this home holds in which `device` is a current device of a member, and
    /// those whose membership log cannot be replayed (for a session to report): from an
    /// index kept with the memberships, so a session start does not look at every team.
    pub(crate) fn teams_with(&self, device: DeviceId) -> Result<Vec<TeamId>> {
        self.index_devices()?;
        let cache = self.access.borrow();
        let mut teams = cache.by_device.get(&device).cloned().unwrap_or_default();
        teams.extend(cache.unreadable.iter().copied());
        Ok(teams.into_iter().collect())
    }

    /// Every current device of every team this home holds (whose log can be replayed),
    /// from the same index.
    pub(crate) fn current_devices(&self) -> Result<std::collections::BTreeSet<DeviceId>> {
        self.index_devices()?;
        Ok(self.access.borrow().by_device.keys().copied().collect())
    }

    /// Builds the index of each current device's teams, if a stored op or another
    /// program's write dropped it: the memberships kept are reused, and only the teams
    /// not kept are replayed.
    fn index_devices(&self) -> Result<()> {
        self.check_access_cache()?;
        if !self.access.borrow().indexed {
            for team in self.store.teams()? {
                if self.access.borrow().teams.contains_key(&team) {
                    continue;
                }
                match TeamAccess::from_ops(team, &self.signed_ops(team)?) {
                    Ok(access) => self.access.borrow_mut().teams.insert(team, access),
                    Err(_) => {
                        self.access.borrow_mut().unreadable.insert(team);
                        None
                    }
                };
            }
            let mut cache = self.access.borrow_mut();
            let mut by_device: HashMap<DeviceId, BTreeSet<TeamId>> = HashMap::new();
            for (team, access) in &cache.teams {
                for (device, _) in access.membership().devices() {
                    by_device.entry(device).or_default().insert(*team);
                }
            }
            cache.by_device = by_device;
            cache.indexed = true;
        }
        Ok(())
    }

    /// Stores ops of `team` (idempotent) and drops the team's kept membership, replayed
    /// again at its next use.
    pub(crate) fn store_ops(&mut self, team: TeamId, ops: &[SignedOp]) -> Result<()> {
        let rows: Vec<_> = ops.iter().map(|op| (op.hash(), op.to_bytes())).collect();
        let stored = self.store.insert_ops(team, &rows);
        let mut cache = self.access.borrow_mut();
        cache.teams.remove(&team);
        cache.unreadable.remove(&team);
        cache.indexed = false;
        stored?;
        Ok(())
    }

    /// Signs a membership operation with this device's key, if the team's membership
    /// allows it, and stores it.
    ///
    /// A removal ([`OpBody::RemoveDevice`] or [`OpBody::RemoveMember`]) is signed as the
    /// removal that names what this device holds of the removed devices' changes
    /// ([`OpBody::RemoveDeviceKnowing`], [`OpBody::RemoveMemberKnowing`]): their later
    /// changes are kept aside on every device (see [`mod@care_core::kept_aside`]).
    ///
    /// Team keys follow (see [`care_core::keys`]): after adding a device, this device gives
    /// it (and any other device that lacks them) the keys it holds of the scopes the
    /// device's role reads; after a removal, it makes a new key of each scope the removed
    /// devices held and its own role reads, given to every device that reads it.
    pub fn author_op(&mut self, team: TeamId, body: OpBody) -> Result<SignedOp> {
        let body = self.knowing(team, body)?;
        let op = self.sign_and_store(team, body.clone())?;
        // The op stands whatever follows: a key this device fails to give or renew now is
        // given or renewed at the next device it adds.
        let keys = match body {
            OpBody::AddDevice { .. } => self.give_team_keys(team),
            OpBody::RemoveDeviceKnowing { device, .. } => self.renew_team_keys(team, &[device]),
            OpBody::RemoveMemberKnowing { member, .. } => self.membership(team).and_then(|m| {
                let given = KeyScope::ALL.iter().filter_map(|scope| m.keys(*scope));
                let devices: Vec<DeviceId> = given
                    .flat_map(|keys| keys.wrapped.keys().map(|(_, device)| *device))
                    .filter(|device| m.member_ever_of_device(*device) == Some(member))
                    .collect();
                self.renew_team_keys(team, &devices)
            }),
            _ => Ok(()),
        };
        if let Err(e) = keys {
            tracing::warn!("team keys of team {team} not given or renewed: {e}");
        }
        Ok(op)
    }

    fn sign_and_store(&mut self, team: TeamId, body: OpBody) -> Result<SignedOp> {
        let membership = self.membership(team)?;
        let op = membership.author_op(&self.key, self.now(), body).map_err(Error::Refused)?;
        self.store_ops(team, std::slice::from_ref(&op))?;
        self.changed.push(Change::Membership { team });
        Ok(op)
    }

    /// The team keys this device can open, by scope, oldest first.
    pub(crate) fn team_keys(&self, team: TeamId) -> Result<Vec<(KeyScope, KeyId, TeamKey)>> {
        let membership = self.membership(team)?;
        let device = self.profile.device;
        let mut held = Vec::new();
        for scope in KeyScope::ALL {
            let Some(keys) = membership.keys(scope) else { continue };
            for id in &keys.keys {
                let Some(wrapped) = keys.wrapped.get(&(*id, device)) else { continue };
                match keys::unwrap(team, scope, id, wrapped, &self.key) {
                    Ok(key) => held.push((scope, *id, key)),
                    Err(e) => {
                        tracing::warn!("a {scope} key of team {team} given to this device: {e}")
                    }
                }
            }
        }
        Ok(held)
    }

    /// Gives every current device that lacks one of the team keys this device holds, and
    /// whose role reads its scope, that key; and makes a key of a scope left without a
    /// current one (see [`Membership::current_key`]; or a team made before team keys).
    fn give_team_keys(&mut self, team: TeamId) -> Result<()> {
        let membership = self.membership(team)?;
        if let Some(role) = membership.role_of_device(self.profile.device) {
            for scope in KeyScope::ALL {
                if scope.held_by(role) && membership.current_key(scope).is_none() {
                    self.make_team_key(team, &membership, scope)?;
                }
            }
        }
        let membership = self.membership(team)?;
        for (scope, id, key) in self.team_keys(team)? {
            let given = &membership.keys(scope).map(|k| &k.wrapped);
            let lacking: Vec<DeviceId> = membership
                .devices()
                .filter(|(device, member)| {
                    scope.held_by(member.role)
                        && !given.is_some_and(|w| w.contains_key(&(id, *device)))
                })
                .map(|(device, _)| device)
                .collect();
            self.author_team_keys(team, scope, &key, false, &lacking)?;
        }
        Ok(())
    }

    /// Makes a new key of each scope one of `removed` was given a key of and this device's
    /// role reads, given to every current device whose role reads it: nothing written
    /// with it can be read by the removed devices.
    fn renew_team_keys(&mut self, team: TeamId, removed: &[DeviceId]) -> Result<()> {
        let membership = self.membership(team)?;
        let Some(role) = membership.role_of_device(self.profile.device) else {
            return Ok(());
        };
        for scope in KeyScope::ALL {
            let Some(keys) = membership.keys(scope) else { continue };
            let had = keys.wrapped.keys().any(|(_, device)| removed.contains(device));
            if !had || !scope.held_by(role) {
                continue;
            }
            self.make_team_key(team, &membership, scope)?;
        }
        Ok(())
    }

    /// Makes a new current key of `scope`, given to every current device that reads it.
    fn make_team_key(
        &mut self,
        team: TeamId,
        membership: &Membership,
        scope: KeyScope,
    ) -> Result<()> {
        let readers: Vec<DeviceId> = membership
            .devices()
            .filter(|(_, member)| scope.held_by(member.role))
            .map(|(device, _)| device)
            .collect();
        let key = TeamKey::from_bytes(random_bytes());
        self.author_team_keys(team, scope, &key, true, &readers)
    }

    /// Signs `key` wrapped for `devices`, in ops of at most `WRAPPED_PER_OP_MAX` devices:
    /// the first makes it current if `current`.
    fn author_team_keys(
        &mut self,
        team: TeamId,
        scope: KeyScope,
        key: &TeamKey,
        current: bool,
        devices: &[DeviceId],
    ) -> Result<()> {
        let id = key.id(team, scope);
        let mut wrapped = Vec::with_capacity(devices.len());
        for device in devices {
            match keys::wrap(team, scope, key, *device, random_bytes()) {
                Ok(w) => wrapped.push(w),
                Err(e) => tracing::warn!("no {scope} key for device {device}: {e}"),
            }
        }
        for (i, chunk) in wrapped.chunks(membership::WRAPPED_PER_OP_MAX).enumerate() {
            let current = current && i == 0;
            let body = OpBody::TeamKeys { scope, key: id, current, wrapped: chunk.to_vec() };
            self.sign_and_store(team, body)?;
        }
        Ok(())
    }

    /// A removal with what this device holds of the removed devices' changes: per
    /// document it holds, how many changes each wrote. Any other op is returned as it is.
    fn knowing(&mut self, team: TeamId, body: OpBody) -> Result<OpBody> {
        let devices: Vec<DeviceId> = match &body {
            OpBody::RemoveDevice { device } => vec![*device],
            OpBody::RemoveMember { member } => self
                .membership(team)?
                .member(*member)
                .map(|m| m.devices.keys().copied().collect())
                .unwrap_or_default(),
            _ => return Ok(body),
        };
        let mut known: Vec<KnownChanges> = devices
            .iter()
            .map(|device| KnownChanges { device: *device, docs: Vec::new() })
            .collect();
        for summary in self.store.docs(Some(team))? {
            let Ok(kind) = summary.kind.parse::<DocKind>() else {
                continue;
            };
            let Some(stored) = self.doc(team, kind, Purpose::Read)? else {
                continue;
            };
            for held in &mut known {
                let count = care_core::kept_aside::changes_by(stored.doc(), held.device);
                if count > 0 {
                    held.docs.push((summary.id, count));
                }
            }
        }
        Ok(match body {
            OpBody::RemoveDevice { device } => {
                let docs = known.pop().map(|held| held.docs).unwrap_or_default();
                OpBody::RemoveDeviceKnowing { device, known: docs }
            }
            OpBody::RemoveMember { member } => {
                known.retain(|held| !held.docs.is_empty());
                OpBody::RemoveMemberKnowing { member, known }
            }
            other => other,
        })
    }

    /// Records an invitation to `team` with `role`, valid until `expires`, and returns its
    /// one-time secret (the store keeps only its hash). Only those who may add members may
    /// invite.
    pub fn create_invite(
        &mut self,
        team: TeamId,
        role: Role,
        name: &str,
        expires: Timestamp,
    ) -> Result<[u8; 16]> {
        let probe = OpBody::AddMember {
            member: MemberId::from_bytes(random_bytes()),
            name: if name.trim().is_empty() { "new member".to_owned() } else { name.to_owned() },
            role,
            hats: Vec::new(),
        };
        self.membership(team)?.check(self.profile.device, &probe).map_err(Error::Refused)?;
        let secret: [u8; 16] = random_bytes();
        let invite = care_store::Invite {
            team,
            role: role.to_string(),
            name: name.to_owned(),
            expires_at_ms: expires.as_millis(),
            member: None,
        };
        self.store.create_invite(&care_sync::ticket::secret_hash(&secret), &invite)?;
        Ok(secret)
    }

    /// Records an invitation for one more device of this home's own member in `team`,
    /// valid once until `expires`, and returns its one-time secret. Only a current device
    /// of the member issues it, and the device it adds is signed in by this device: no one
    /// else's ticket ever adds a device to a member.
    pub fn create_device_invite(&mut self, team: TeamId, expires: Timestamp) -> Result<[u8; 16]> {
        let membership = self.membership(team)?;
        let member = membership
            .member_of_device(self.profile.device)
            .filter(|m| m.id == self.profile.member)
            .ok_or_else(|| {
                Error::Invalid("this device is not a current device of yours in this team".into())
            })?;
        let probe = OpBody::AddDevice {
            member: member.id,
            device: DeviceKey::from_seed(random_bytes()).device_id(),
            label: "probe".to_owned(),
        };
        membership.check(self.profile.device, &probe).map_err(Error::Refused)?;
        let secret: [u8; 16] = random_bytes();
        let invite = care_store::Invite {
            team,
            role: member.role.to_string(),
            name: member.name.clone(),
            expires_at_ms: expires.as_millis(),
            member: Some(member.id),
        };
        self.store.create_invite(&care_sync::ticket::secret_hash(&secret), &invite)?;
        Ok(secret)
    }

    /// Takes `member` as this home's member id, so that it can join a team as another
    /// device of that person (a device ticket). Only a home in no team yet may: its
    /// member id is in none of their logs.
    pub(crate) fn adopt_member(&mut self, member: MemberId) -> Result<()> {
        if self.profile.member == member {
            return Ok(());
        }
        if !self.store.teams()?.is_empty() {
            return Err(Error::Invalid(
                "this device ticket adds a device of another person; use it on a new home \
                 (`care init`), or ask for an invitation as a new member"
                    .into(),
            ));
        }
        let profile = Profile { member, ..self.profile.clone() };
        let json = serde_json::to_vec(&profile).expect("a profile always serialises to JSON");
        self.store.meta_set(PROFILE_KEY, &json)?;
        self.profile = profile;
        Ok(())
    }

    /// Records where this home's running node listens, so that invitations issued by
    /// other programs on this home carry addresses; `None` clears the record.
    pub fn record_listen_addrs(&mut self, addrs: Option<&ListenAddrs>) -> Result<()> {
        let json = match addrs {
            Some(addrs) => serde_json::to_vec(addrs).expect("addresses always serialise to JSON"),
            None => Vec::new(),
        };
        Ok(self.store.meta_set(LISTEN_KEY, &json)?)
    }

    /// Where this home's running node listens, as last recorded (empty if no node runs).
    pub fn listen_addrs(&self) -> Result<ListenAddrs> {
        let json = self.store.meta_get(LISTEN_KEY)?.unwrap_or_default();
        Ok(serde_json::from_slice(&json).unwrap_or_default())
    }

    /// Records that a session with `device` ended or reported a team in sync at `at_ms`.
    pub fn record_sync(&mut self, device: DeviceId, at_ms: i64) -> Result<()> {
        let key = format!("{LAST_SYNC_PREFIX}{device}");
        Ok(self.store.meta_set(&key, at_ms.to_string().as_bytes())?)
    }

    /// When this home last synced with `device`, in milliseconds since the Unix epoch.
    pub fn last_sync(&self, device: DeviceId) -> Result<Option<i64>> {
        let value = self.store.meta_get(&format!("{LAST_SYNC_PREFIX}{device}"))?;
        Ok(value.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()))
    }

    /// The documents of `team` holding changes that no other device of the team is
    /// known to have: their heads are not all among the shared heads of the sync state
    /// saved with any other device.
    pub fn unshared_docs(&self, team: TeamId) -> Result<Vec<DocSummary>> {
        let me = self.profile.device;
        let peers: Vec<DeviceId> =
            self.membership(team)?.devices().map(|(d, _)| d).filter(|d| *d != me).collect();
        let mut unshared = Vec::new();
        for doc in self.store.docs(Some(team))? {
            if !self.shared_with_any(&doc, &peers)? {
                unshared.push(doc);
            }
        }
        Ok(unshared)
    }

    fn shared_with_any(&self, doc: &DocSummary, peers: &[DeviceId]) -> Result<bool> {
        for peer in peers {
            let saved = self.store.sync_state(*peer, doc.id)?;
            let Some(state) = saved.and_then(|b| automerge::sync::State::decode(&b).ok()) else {
                continue;
            };
            if doc.heads.iter().all(|h| state.shared_heads.contains(h)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The team's signed membership ops as stored here; unreadable rows are skipped
    /// (the store checks their checksums, and membership replay judges the rest).
    pub(crate) fn signed_ops(&self, team: TeamId) -> Result<Vec<SignedOp>> {
        Ok(self
            .store
            .ops(team)?
            .iter()
            .filter_map(|bytes| SignedOp::from_bytes(bytes).ok())
            .collect())
    }

    /// Checks the whole store: SQLite's own integrity check, every document's chunks
    /// against their checksums, and every team's membership log.
    pub fn doctor(&mut self) -> Result<IntegrityReport> {
        let mut report = self.store.check()?;
        for team in self.store.teams()? {
            if let Err(e) = self.membership(team) {
                report
                    .problems
                    .push(care_store::Problem { doc: None, detail: format!("team {team}: {e}") });
            }
        }
        // Notes that do not read are left out of listings; name them here.
        for summary in self.store.docs(None)? {
            let Ok(kind @ DocKind::Notes { .. }) = summary.kind.parse::<DocKind>() else {
                continue;
            };
            let Ok(Some(doc)) = self.doc(summary.team, kind, Purpose::Read) else {
                continue;
            };
            for problem in documents::notes::unreadable_notes(doc.doc()).unwrap_or_default() {
                let detail = format!("{kind} of team {}: {problem}", summary.team);
                report.problems.push(care_store::Problem { doc: Some(summary.id), detail });
            }
        }
        Ok(report)
    }

    /// The store, for tools that read it directly (export, status).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The author stamp for a change made now by this device.
    pub(crate) fn author(&self) -> Author {
        Author { member: self.profile.member, device: self.profile.device, at: self.now() }
    }

    /// Loads a document into the cache. For reading, a cached copy is first refreshed
    /// with what other processes wrote; for writing it need not be, since
    /// `Store::update_doc` catches up inside its own transaction.
    pub(crate) fn doc(
        &mut self,
        team: TeamId,
        kind: DocKind,
        purpose: Purpose,
    ) -> Result<Option<&mut StoredDoc>> {
        let id = kind.doc_id(team);
        if let Some(doc) = self.docs.get_mut(&id) {
            if purpose == Purpose::Read {
                self.store.refresh(doc)?;
            }
            return Ok(self.docs.get_mut(&id));
        }
        let stored = match self.load_verified(team, &kind, id)? {
            Some(doc) => doc,
            None if purpose == Purpose::Write => {
                let meta = DocMeta { id, team, kind: kind.to_string() };
                self.store.create_doc(&meta, &documents::genesis(team, &kind))?
            }
            None => return Ok(None),
        };
        Ok(Some(self.docs.insert(id, stored)))
    }

    /// The record of a document (the document without the changes kept aside: see
    /// [`mod@care_core::kept_aside`]), loaded for reading; `None` when this home holds no
    /// such document.
    pub(crate) fn record(&mut self, team: TeamId, kind: DocKind) -> Result<Option<&Automerge>> {
        let access = self.team_access(team)?;
        let id = kind.doc_id(team);
        if self.doc(team, kind, Purpose::Read)?.is_none() {
            return Ok(None);
        }
        let Home { docs, records, .. } = self;
        let stored = docs.get_mut(&id).expect("the document was loaded just above");
        let record = records.of(stored.doc(), id, &kind, access.membership()).map_err(|e| {
            Error::Document { kind: kind.to_string(), source: Box::new(DocError::Automerge(e)) }
        })?;
        Ok(Some(record.unwrap_or(stored.doc())))
    }

    /// `read` on the record of each of `kinds` held here (`None` for one not held), on
    /// several threads: a device that has just caught up lists a year of notes from
    /// seventy-odd month documents, and reading them is work for every core. Documents
    /// are loaded, and their records computed, here, [`READ_TOGETHER_MAX`] at a time.
    pub(crate) fn read_records<R: Send>(
        &mut self,
        team: TeamId,
        kinds: &[DocKind],
        read: impl Fn(&Automerge) -> R + Sync,
    ) -> Result<Vec<Option<R>>> {
        let threads = care_core::cores().min(READERS_MAX);
        let mut out = Vec::with_capacity(kinds.len());
        for batch in kinds.chunks(READ_TOGETHER_MAX) {
            let mut held = Vec::with_capacity(batch.len());
            for kind in batch {
                held.push(self.record(team, *kind)?.is_some());
            }
            let access = self.team_access(team)?;
            let Home { docs, records, .. } = &*self;
            // A record is dropped from those kept only when more are computed than are
            // kept; one computed just above and dropped since is read again alone below.
            let found: Vec<Option<&Automerge>> = batch
                .iter()
                .zip(&held)
                .map(|(kind, held)| {
                    let id = kind.doc_id(team);
                    let stored = docs.peek(&id).filter(|_| *held)?;
                    records.kept(stored.doc(), id, access.membership())
                })
                .collect();
            let mut results: Vec<Option<R>> = Vec::with_capacity(batch.len());
            let share = found.len().div_ceil(threads).max(1);
            std::thread::scope(|scope| {
                let read = &read;
                let readers: Vec<_> = found
                    .chunks(share)
                    .map(|found| scope.spawn(move || found.iter().map(|r| r.map(read)).collect()))
                    .collect();
                for reader in readers {
                    let read: Vec<Option<R>> =
                        reader.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    results.extend(read);
                }
            });
            for ((kind, held), result) in batch.iter().zip(held).zip(&mut results) {
                if held && result.is_none() {
                    *result = self.record(team, *kind)?.map(&read);
                }
            }
            out.extend(results);
        }
        Ok(out)
    }

    /// Loads a document from the store. One received whole and not loaded since is
    /// verified first: it must load to the heads it was stored with, and every change must
    /// be by a device that may have written it. One that fails is discarded, as if it had
    /// never arrived; nothing this device wrote or accepted is ever in such a document.
    fn load_verified(
        &mut self,
        team: TeamId,
        kind: &DocKind,
        id: DocId,
    ) -> Result<Option<StoredDoc>> {
        // A document received whole is measured before Automerge loads it: what its
        // compressed columns inflate to must stay within `INFLATED_BYTES_MAX`.
        let saved = self.unverified_bytes(id)?;
        let size = saved.as_deref().map(|bytes| check_inflated_len(bytes, INFLATED_BYTES_MAX));
        let refusal = match size {
            Some(Err(too_large)) => too_large.to_string(),
            _ => match self.load_checked(team, kind, id, saved.as_deref())? {
                Ok(loaded) => return Ok(loaded),
                Err(refusal) => refusal,
            },
        };
        tracing::warn!("discarding a {kind} document received from a peer: {refusal}");
        self.store.discard_unverified(id)?;
        // Fetch it again at once: with no sync state left for it, the next message about
        // it says this device holds nothing of it, and a peer that holds it sends it all.
        self.sync_states.retain(|(_, doc), _| *doc != id);
        self.changed.push(Change::Doc { team, doc: id, kind: *kind });
        Ok(None)
    }

    /// The stored bytes of a document received whole and not verified yet.
    fn unverified_bytes(&self, id: DocId) -> Result<Option<Vec<u8>>> {
        if !self.store.is_unverified(id)? {
            return Ok(None);
        }
        Ok(self.store.doc_bytes(id)?)
    }

    /// Loads a document; one not verified yet is checked (authors, signatures and rules:
    /// the rules on `saved`, the bytes it is stored as, when given) and marked verified.
    /// `Err` is why an unverified document fails.
    fn load_checked(
        &mut self,
        team: TeamId,
        kind: &DocKind,
        id: DocId,
        saved: Option<&[u8]>,
    ) -> Result<std::result::Result<Option<StoredDoc>, String>> {
        let refusal = match self.store.load_doc(id) {
            Ok(Some(doc)) if doc.verified() => return Ok(Ok(Some(doc))),
            Ok(None) => return Ok(Ok(None)),
            Ok(Some(doc)) => {
                let access = self.team_access(team)?;
                let signatures = crate::replica::stored_signatures_of(&self.store, id, None)?;
                let checked = match saved {
                    Some(bytes) => {
                        check_saved_document(&access, team, kind, doc.doc(), bytes, &signatures)
                    }
                    None => check_document(&access, team, kind, doc.doc(), &signatures),
                };
                match checked {
                    Ok(()) => {
                        self.store.set_verified(id)?;
                        return Ok(Ok(Some(doc)));
                    }
                    Err(reason) => reason,
                }
            }
            Err(e) => {
                if !self.store.is_unverified(id)? {
                    return Err(e.into());
                }
                e.to_string()
            }
        };
        Ok(Err(refusal))
    }

    fn resolve_team(&self, which: &str) -> Result<TeamId> {
        let teams = self.store.teams()?;
        let which = which.trim();
        if which.is_empty() {
            return match teams.as_slice() {
                [only] => Ok(*only),
                [] => Err(Error::TeamNotFound("(none: create or join a team first)".into())),
                _ => Err(Error::TeamAmbiguous("this home belongs to several teams".into())),
            };
        }
        if let Ok(id) = which.parse::<TeamId>()
            && teams.contains(&id)
        {
            return Ok(id);
        }
        let mut matches: Vec<TeamId> = Vec::new();
        for team in teams {
            let by_prefix = team.to_string().starts_with(&which.to_lowercase());
            if by_prefix || self.membership(team)?.name() == which {
                matches.push(team);
            }
        }
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(Error::TeamNotFound(which.to_owned())),
            _ => Err(Error::TeamAmbiguous(format!("`{which}` matches several teams"))),
        }
    }
}

/// The memberships a home keeps replayed, and the store's `data_version` they were
/// checked at.
#[derive(Default)]
struct AccessCache {
    version: Option<i64>,
    teams: HashMap<TeamId, TeamAccess>,
    /// Teams whose log could not be replayed when the index was built.
    unreadable: BTreeSet<TeamId>,
    /// The teams of each current device, when `indexed`.
    by_device: HashMap<DeviceId, BTreeSet<TeamId>>,
    /// Whether every team held is in `teams` or `unreadable`, and `by_device` is built.
    indexed: bool,
}

/// Fresh random bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    bytes
}

fn checked_name<'a>(name: &'a str, what: &str) -> Result<&'a str> {
    let name = name.trim();
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(Error::Invalid(format!("{what} must be 1 to {NAME_BYTES_MAX} bytes long")));
    }
    Ok(name)
}

fn create_private_dir(dir: &Path) -> Result<()> {
    let io = |source| Error::Io { path: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;
    use crate::cache::DOCS_CACHED_MAX;
    use crate::{NewNote, NoteQuery, NoteStream};

    /// A clock the test moves by hand.
    struct HandClock(Arc<AtomicI64>);

    impl Clock for HandClock {
        fn now(&self) -> Timestamp {
            Timestamp(self.0.load(Ordering::Relaxed))
        }
    }

    /// Who holds which team keys: the owner from the start; each device added, the keys
    /// of the scopes its role reads, history included; a volunteer never the care keys, the
    /// circle node none; and after a removal, new keys the removed device cannot open.
    #[test]
    fn team_keys_follow_roles_additions_and_removals() -> Result<()> {
        let dirs: Vec<tempfile::TempDir> = (0..5)
            .map(|_| tempfile::tempdir().map_err(|e| Error::Invalid(e.to_string())))
            .collect::<Result<_>>()?;
        let mut ada = Home::init(dirs[0].path(), "Ada")?;
        let team = ada.create_team("Rosa's team")?;
        let mut homes = Vec::new();
        for (i, (name, role)) in
            [("Bea", Role::Worker), ("Vic", Role::Volunteer), ("Circle", Role::Relay)]
                .into_iter()
                .enumerate()
        {
            let home = Home::init(dirs[i + 1].path(), name)?;
            let (member, device) = (home.profile().member, home.profile().device);
            let body = OpBody::AddMember { member, name: name.into(), role, hats: vec![] };
            ada.author_op(team, body)?;
            ada.author_op(team, OpBody::AddDevice { member, device, label: "phone".into() })?;
            homes.push(home);
        }
        let scopes = |home: &mut Home, ops: &[SignedOp]| -> Result<Vec<(KeyScope, KeyId)>> {
            home.store_ops(team, ops)?;
            Ok(home.team_keys(team)?.into_iter().map(|(scope, id, _)| (scope, id)).collect())
        };
        let ops = ada.signed_ops(team)?;
        let first = scopes(&mut ada, &[])?;
        assert_eq!(first.iter().map(|k| k.0).collect::<Vec<_>>(), KeyScope::ALL);
        let [bea, vic, circle] = &mut homes[..] else { unreachable!("three homes") };
        assert_eq!(scopes(bea, &ops)?, first);
        assert_eq!(scopes(vic, &ops)?, [first[1]]);
        assert_eq!(scopes(circle, &ops)?, []);

        let bea_member = bea.profile().member;
        ada.author_op(team, OpBody::RemoveMember { member: bea_member })?;
        let ops = ada.signed_ops(team)?;
        let renewed = scopes(&mut ada, &[])?;
        assert_eq!(renewed.len(), 4, "a new key of each scope: {renewed:?}");
        let membership = ada.membership(team)?;
        for scope in KeyScope::ALL {
            let current = membership.current_key(scope);
            assert!(current.is_some_and(|id| !first.contains(&(scope, id))), "{scope} renewed");
        }
        assert_eq!(scopes(bea, &ops)?, first, "Bea opens none of the new keys");
        assert_eq!(scopes(vic, &ops)?.len(), 2, "Vic opens both team-scope keys");
        assert_eq!(scopes(circle, &ops)?, []);

        // A worker who joins later gets every key of both scopes: the history too.
        let cal = Home::init(dirs[4].path(), "Cal")?;
        let (member, device) = (cal.profile().member, cal.profile().device);
        let body =
            OpBody::AddMember { member, name: "Cal".into(), role: Role::Worker, hats: vec![] };
        ada.author_op(team, body)?;
        ada.author_op(team, OpBody::AddDevice { member, device, label: "phone".into() })?;
        let mut cal = cal;
        let ops = ada.signed_ops(team)?;
        assert_eq!(scopes(&mut cal, &ops)?, renewed);
        Ok(())
    }

    /// A worker who gives the care key to a volunteer anyway, signing past the checks of
    /// the local API and sending the op in the protocol's own frames, gives nothing: no
    /// other device stores the op, and the volunteer opens no care key.
    #[test]
    fn a_care_key_given_to_a_volunteer_is_refused_everywhere() -> Result<()> {
        use crate::test_support::{sync, temp_dirs};
        use care_sync::Replica;
        let dirs = temp_dirs(3)?;
        let mut ada = Home::init(dirs[0].path(), "Ada")?;
        let mut bea = Home::init(dirs[1].path(), "Bea")?;
        let mut vic = Home::init(dirs[2].path(), "Vic")?;
        let team = ada.create_team("Rosa's team")?;
        for (home, role) in [(&bea, Role::Worker), (&vic, Role::Volunteer)] {
            let (member, device) = (home.profile().member, home.profile().device);
            let name = home.profile().name.clone();
            ada.author_op(team, OpBody::AddMember { member, name, role, hats: vec![] })?;
            ada.author_op(team, OpBody::AddDevice { member, device, label: "phone".into() })?;
        }
        for home in [&mut bea, &mut vic] {
            home.add_ops(team, &ada.signed_ops(team)?)?;
        }
        let (scope, id, key) = bea
            .team_keys(team)?
            .into_iter()
            .find(|(scope, ..)| *scope == KeyScope::Care)
            .ok_or_else(|| Error::Invalid("Bea holds the care key".into()))?;
        let wrapped = vec![
            keys::wrap(team, scope, &key, vic.profile().device, [3; 32])
                .map_err(|e| Error::Invalid(e.to_string()))?,
        ];
        let body = OpBody::TeamKeys { scope, key: id, current: false, wrapped };
        let preds = bea.membership(team)?.heads().to_vec();
        let op = membership::Op { team: Some(team), preds, at: bea.now(), body };
        let forged = SignedOp::sign(&bea.key, &op);
        bea.add_ops(team, std::slice::from_ref(&forged))?;
        sync(&mut bea, &mut ada)?;
        sync(&mut bea, &mut vic)?;
        sync(&mut ada, &mut vic)?;
        for home in [&ada, &vic] {
            assert!(!home.signed_ops(team)?.contains(&forged), "{} stored it", home.profile().name);
        }
        let held: Vec<KeyScope> = vic.team_keys(team)?.into_iter().map(|k| k.0).collect();
        assert_eq!(held, [KeyScope::Team]);
        Ok(())
    }

    /// Ada's home in a temporary directory, on a clock the test moves (from January of
    /// `year`), with a team of her own.
    fn ada_from(year: i32) -> Result<(tempfile::TempDir, Home, Arc<AtomicI64>, String)> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut home = Home::init(dir.path(), "Ada")?;
        let start = care_core::Month::new(year, 1).expect("a month").start();
        let now = Arc::new(AtomicI64::new(start.0));
        home.set_clock(HandClock(Arc::clone(&now)));
        let team = home.create_team("Ada's team")?.to_string();
        Ok((dir, home, now, team))
    }

    /// Notes in more months than the cache holds: the cache stays within its bound, and
    /// every note, in documents dropped and loaded again, still reads and takes writes.
    #[test]
    fn loaded_documents_stay_within_the_cache_bound() -> Result<()> {
        let (_dir, mut home, now, team) = ada_from(2024)?;
        let months = DOCS_CACHED_MAX + 8;
        for month in 0..months {
            now.fetch_add(31 * 24 * 3_600_000, Ordering::Relaxed);
            let note = NewNote { text: format!("note {month}"), ..NewNote::default() };
            home.team(&team)?.add_note(&note, None)?;
            assert!(home.docs.len() <= DOCS_CACHED_MAX, "{} loaded", home.docs.len());
        }
        let notes = home.team(&team)?.notes(&NoteQuery::default())?;
        assert_eq!(notes.len(), months);
        assert!(home.docs.len() <= DOCS_CACHED_MAX);
        // The first month was dropped long ago; an amendment to its note still lands.
        let first = notes.iter().find(|n| n.text == "note 0").expect("the first note").id;
        home.team(&team)?.amend_note(first, "and a walk")?;
        let amended = home.team(&team)?.note(first)?;
        assert_eq!(amended.amendments.len(), 1);
        Ok(())
    }

    /// Every note, read from the month documents together on several threads, comes in
    /// the order the newest notes are read one month at a time: newest month first, and
    /// within a month, of both streams, newest first.
    #[test]
    fn all_notes_read_together_come_as_read_month_by_month() -> Result<()> {
        let (_dir, mut home, now, team) = ada_from(2023)?;
        // More month documents than are read together at once, of both streams.
        let months = READ_TOGETHER_MAX + 5;
        for month in 0..months {
            now.fetch_add(31 * 24 * 3_600_000, Ordering::Relaxed);
            for n in 0..3 {
                // Two notes of a month share their time: their ids order them.
                now.fetch_add(if n == 1 { 60_000 } else { 0 }, Ordering::Relaxed);
                let stream = [NoteStream::Care, NoteStream::General][(month + n) % 2];
                let note = NewNote { text: format!("{month}.{n}"), ..NewNote::default() };
                home.team(&team)?.add_note(&note, Some(stream))?;
            }
        }
        let every = |since| NoteQuery { since, limit: None };
        let month_by_month = |since| NoteQuery { since, limit: Some(usize::MAX) };
        let together = home.team(&team)?.notes(&every(None))?;
        assert_eq!(together.len(), months * 3);
        assert_eq!(together, home.team(&team)?.notes(&month_by_month(None))?);
        let since = Some(Timestamp(now.load(Ordering::Relaxed) - 100 * 24 * 3_600_000));
        let recent = home.team(&team)?.notes(&every(since))?;
        assert!(!recent.is_empty() && recent.len() < together.len());
        assert_eq!(recent, home.team(&team)?.notes(&month_by_month(since))?);
        Ok(())
    }

    /// The kept membership of a team follows ops stored by this home and by another
    /// program on the same home.
    #[test]
    fn the_kept_membership_follows_ops_from_this_home_and_from_another_program() -> Result<()> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut home = Home::init(dir.path(), "Ada")?;
        let team = home.create_team("Ada's team")?;
        assert_eq!(home.membership(team)?.members().count(), 1);

        let bea = MemberId::from_bytes([7; 16]);
        let phone = DeviceId::from_bytes([9; 32]);
        assert!(home.teams_with(phone)?.is_empty());
        let body =
            OpBody::AddMember { member: bea, name: "Bea".into(), role: Role::Worker, hats: vec![] };
        home.author_op(team, body)?;
        home.author_op(team, OpBody::AddDevice { member: bea, device: phone, label: "p".into() })?;
        assert!(home.membership(team)?.member(bea).is_some(), "this home's own op");
        assert_eq!(home.teams_with(phone)?, vec![team], "the index follows this home's ops");

        let mut other = Home::open(dir.path())?;
        other.author_op(team, OpBody::RemoveMember { member: bea })?;
        assert!(home.membership(team)?.member(bea).is_none(), "another program's op");
        assert!(home.teams_with(phone)?.is_empty(), "the index follows another program's ops");
        Ok(())
    }
}
