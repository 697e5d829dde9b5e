//! The circle's always-on node and how a team adds it. A [`CircleNode`] is a home (named
//! like "Circle relay") on the network plus the circle's relay server; a team's owner or
//! admin adds it with [`Node::add_relay`] and a [`CircleTicket`], making it a member with
//! the role `relay` (reads every document, writes none) and handing it the team's
//! membership log. From then on ordinary sync sessions keep a replica of the team on
//! it, and it passes changes between members who are never online at the same time.

use care_core::membership::{Membership, OpBody, Role};
use care_core::{DeviceId, SignedOp, TeamId};
use care_net::circle::request_circle;
use care_net::{PeerAddr, endpoint_addr};
use care_sync::Change;
use care_sync::circle::{CircleHost, CircleReply, CircleRequest, CircleTicket};
use care_sync::ticket::secret_hash;

use crate::error::{Error, Result};
use crate::home::{Home, random_bytes};
use crate::node::{Node, render_addrs};

/// Meta key of the circle node's ticket without a secret, on its home: every circle
/// ticket is this with a fresh one-time secret.
const CIRCLE_TEMPLATE_KEY: &str = "circle.ticket";
/// Most teams one circle node takes on.
pub const CIRCLE_TEAMS_MAX: usize = 1_000;
/// How long a circle ticket stays valid by default, in milliseconds (a week).
pub const CIRCLE_TICKET_VALID_MS: i64 = 7 * 24 * 3_600_000;
/// Meta key of the circle relay URL a device's teams use.
const CIRCLE_RELAY_KEY: &str = "circle.relay";

impl Home {
    /// The relay URL of the circle this home's teams use, if one was added or came with
    /// a ticket: the `relay` a node of this home should start with.
    pub fn circle_relay(&self) -> Result<Option<String>> {
        let bytes = self.store.meta_get(CIRCLE_RELAY_KEY)?;
        Ok(bytes.and_then(|b| String::from_utf8(b).ok()))
    }

    /// Records the relay URL of the circle this home's teams use.
    pub fn set_circle_relay(&mut self, url: &str) -> Result<()> {
        Ok(self.store.meta_set(CIRCLE_RELAY_KEY, url.as_bytes())?)
    }

    /// A one-time circle ticket for one more team, valid for `valid_ms`: the ticket this
    /// home's circle node announced, with a fresh secret (stored only as its hash). Works
    /// from any program on the circle node's home once the node has started once.
    pub fn circle_ticket(&mut self, valid_ms: i64) -> Result<CircleTicket> {
        let template = self
            .store
            .meta_get(CIRCLE_TEMPLATE_KEY)?
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| t.parse::<CircleTicket>().ok())
            .ok_or_else(|| Error::Invalid("this home has never run a circle node".into()))?;
        let secret: [u8; 16] = random_bytes();
        let expires = self.now().as_millis().saturating_add(valid_ms);
        self.store.create_circle_invite(&secret_hash(&secret), expires)?;
        Ok(CircleTicket { secret, ..template })
    }

    /// Every current device of every team this home holds, and this device: who a
    /// circle node's relay server admits. Each team's membership is replayed only when
    /// its log changed, and a team whose log cannot be replayed admits none of its
    /// devices.
    pub fn team_devices(&self) -> Result<std::collections::BTreeSet<DeviceId>> {
        let mut devices = self.current_devices()?;
        devices.insert(self.profile().device);
        Ok(devices)
    }

    /// Checks a team's log handed to this circle node with a one-time circle ticket's
    /// secret, then stores its valid ops. The ticket serves this team alone; if the team
    /// is not taken on, it works again.
    fn take_on_team(&mut self, secret: &[u8; 16], team: TeamId, ops: &[SignedOp]) -> Result<()> {
        let teams = self.store.teams()?;
        if !teams.contains(&team) && teams.len() >= CIRCLE_TEAMS_MAX {
            return Err(Error::CircleRefused(format!(
                "this circle node serves {CIRCLE_TEAMS_MAX} teams, the most it may"
            )));
        }
        let hash = secret_hash(secret);
        self.store
            .redeem_circle_invite(&hash, team, self.now().as_millis())?
            .map_err(|refusal| Error::CircleRefused(format!("circle ticket refused: {refusal}")))?;
        let taken = self.store_team_log(team, ops);
        match &taken {
            // Sessions open with the team's devices take it up at once.
            Ok(()) => self.changed.push(Change::Membership { team }),
            Err(_) => self.store.restore_circle_invite(&hash)?,
        }
        taken
    }

    /// Stores the valid ops of a log that makes this node a device of the team's relay
    /// member.
    fn store_team_log(&mut self, team: TeamId, ops: &[SignedOp]) -> Result<()> {
        let (membership, rejected) = Membership::from_ops(team, ops)?;
        if membership.role_of_device(self.profile().device) != Some(Role::Relay) {
            return Err(Error::CircleRefused(
                "the team's log does not make this node a device of its relay member".into(),
            ));
        }
        let rejected: std::collections::BTreeSet<_> = rejected.iter().map(|r| r.op).collect();
        let valid: Vec<SignedOp> =
            ops.iter().filter(|op| !rejected.contains(&op.hash())).cloned().collect();
        care_sync::Replica::add_ops(self, team, &valid)
    }
}

impl Home {
    /// Records the ticket this home's circle node announces, without a secret.
    #[cfg(feature = "relay-server")]
    fn set_circle_template(&mut self, template: &CircleTicket) -> Result<()> {
        Ok(self.store.meta_set(CIRCLE_TEMPLATE_KEY, template.to_string().as_bytes())?)
    }
}

impl CircleHost for Home {
    fn take_on(
        &mut self,
        _device: DeviceId,
        secret: &[u8; 16],
        team: TeamId,
        ops: &[SignedOp],
    ) -> std::result::Result<(), String> {
        self.take_on_team(secret, team, ops).map_err(|e| e.to_string())
    }
}

impl Node {
    /// Adds the circle node named by `ticket` to a team (its id, a prefix or its name) as
    /// a member with the role `relay`, hands it the team's membership log, and keeps a
    /// session with it. Only those who may add members may do this.
    pub async fn add_relay(&self, team: &str, ticket: &CircleTicket) -> Result<()> {
        let (which, handed) = (team.to_owned(), ticket.clone());
        let (team, ops, added) =
            self.with_home(move |home| add_relay_member(home, &which, &handed)).await?;
        let relay = ticket.relay.as_deref().and_then(|r| r.parse().ok());
        let addr = endpoint_addr(ticket.device, &ticket.addrs, relay.as_ref())
            .ok_or_else(|| Error::Invalid("the circle ticket names an invalid device".into()))?;
        let request = CircleRequest {
            secret: ticket.secret,
            team,
            ops: ops.iter().map(SignedOp::to_bytes).collect(),
        };
        let reply = request_circle(self.runtime.endpoint(), addr, &request).await;
        let refusal = match reply {
            Ok(CircleReply::Accepted) => None,
            Ok(CircleReply::Refused { reason }) => Some(Error::CircleRefused(reason)),
            Err(e) => Some(e.into()),
        };
        if let Some(error) = refusal {
            if added {
                // The circle node will never serve the team: take it out again.
                let member = ticket.member;
                self.with_home(move |h| h.author_op(team, OpBody::RemoveMember { member })).await?;
            }
            return Err(error);
        }
        let circle = PeerAddr { device: ticket.device, addrs: ticket.addrs.clone(), relay };
        // A session opened while the circle node did not yet hold the team (the watcher
        // dials every new device at once) shared nothing; a new one replaces it now.
        if let Err(e) = self.runtime.connect(&circle).await {
            tracing::info!("the circle node took the team on but cannot be reached yet: {e}");
        }
        self.runtime.keep_connected(circle);
        if let Some(url) = &ticket.relay {
            self.runtime.use_relay(url).await?;
            // Tell the rest of the team, through the team document, to use it too. Only
            // those who may edit the team document can; the circle node still serves the
            // team without it.
            let url = url.clone();
            let recorded = self.with_home(move |home| record_circle(home, team, &url)).await;
            if let Err(e) = recorded {
                tracing::info!("the team document does not name the circle relay: {e}");
            }
        }
        Ok(())
    }
}

/// Names the circle's relay in the team document, so every device of the team uses it.
fn record_circle(home: &mut Home, team: TeamId, url: &str) -> Result<()> {
    let mut team = home.team(&team.to_string())?;
    let mut info = team.info()?;
    if info.circle.as_deref() != Some(url) {
        info.circle = Some(url.to_owned());
        team.set_info(&info)?;
    }
    Ok(())
}

/// Authors the ops adding the circle node to a team, unless it is already in; returns
/// the team, its whole log, and whether ops were added.
fn add_relay_member(
    home: &mut Home,
    team: &str,
    ticket: &CircleTicket,
) -> Result<(TeamId, Vec<SignedOp>, bool)> {
    let team = home.team(team)?.id();
    let membership = home.membership(team)?;
    let mut added = false;
    if membership.member(ticket.member).is_none() {
        let name = ticket.name.clone();
        let body =
            OpBody::AddMember { member: ticket.member, name, role: Role::Relay, hats: Vec::new() };
        home.author_op(team, body)?;
        added = true;
    }
    if membership.member_of_device(ticket.device).is_none() {
        let label = "circle node".to_owned();
        let body = OpBody::AddDevice { member: ticket.member, device: ticket.device, label };
        home.author_op(team, body)?;
        added = true;
    }
    let now = home.now().as_millis();
    home.store.set_peer_addrs(ticket.device, &render_addrs(&ticket.addrs), now)?;
    if let Some(relay) = &ticket.relay {
        home.set_circle_relay(relay)?;
    }
    Ok((team, home.signed_ops(team)?, added))
}

#[cfg(feature = "relay-server")]
pub use server::{CircleConfig, CircleNode};

#[cfg(feature = "relay-server")]
mod server {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use care_core::DeviceId;
    use care_net::circle::CircleProtocol;
    use care_net::relay::{Admitted, RelayServer};
    use care_net::{NetConfig, Owner, PeerEvent};
    use care_sync::SyncEvent;
    use care_sync::circle::CircleTicket;
    use tokio::sync::{Notify, broadcast};
    use tokio::task::JoinHandle;

    use crate::error::{Error, Result};
    use crate::home::Home;
    use crate::node::{Node, NodeOptions};

    /// Longest the relay server's admitted devices lag a membership change by when no
    /// event announced it (another program wrote to the home).
    const ADMITTED_REFRESH_MS: u64 = 5_000;

    /// Where a circle node listens.
    #[derive(Debug, Clone)]
    pub struct CircleConfig {
        /// The relay server's HTTP address (`0.0.0.0:3340`, or `127.0.0.1:0` in tests).
        pub relay_listen: SocketAddr,
        /// The sync endpoint's address; its `relay` is replaced by the circle's own.
        pub net: NetConfig,
        /// How the sync node behaves (by default it keeps sessions with every device of
        /// the teams it serves, through its relay server).
        pub options: NodeOptions,
    }

    /// The circle's always-on node: a home on the network that keeps a replica of every
    /// team that added it, and the relay server those teams' devices use.
    pub struct CircleNode {
        node: Node,
        relay: RelayServer,
        admitted: Arc<Admitted>,
        device: DeviceId,
        refresher: JoinHandle<()>,
    }

    impl std::fmt::Debug for CircleNode {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("CircleNode")
                .field("device", &self.device)
                .field("relay", &self.relay)
                .finish_non_exhaustive()
        }
    }

    impl CircleNode {
        /// Starts the relay server and the node on `home`; the relay admits the current
        /// devices of the teams the home holds, kept current as memberships change.
        pub async fn start(mut home: Home, config: &CircleConfig) -> Result<CircleNode> {
            home.forget_documents_in_clear()?;
            let admitted = Arc::new(Admitted::default());
            admitted.set(home.team_devices()?);
            let relay = RelayServer::spawn(config.relay_listen, Arc::clone(&admitted)).await?;
            let (member, name) = (home.profile().member, home.profile().name.clone());
            let seed = home.key.to_seed();
            let owner =
                Owner::spawn_bounded(home, config.net.queued_bytes_max).map_err(Error::Thread)?;
            let refresh = Arc::new(Notify::new());
            let on_taken_on = {
                let refresh = Arc::clone(&refresh);
                Arc::new(move |_| refresh.notify_one())
            };
            let circle = CircleProtocol::new(owner.clone(), on_taken_on).protocol();
            let mut net = config.net.clone();
            net.relay = Some(relay.url().clone());
            let node = Node::start_serving(owner.clone(), seed, &net, config.options, vec![circle])
                .await?;
            let addr = node.addr();
            let template = CircleTicket {
                device: addr.device,
                member,
                name,
                addrs: addr.addrs,
                relay: Some(relay.url().to_string()),
                secret: [0; 16],
            };
            node.with_home(move |home| home.set_circle_template(&template)).await?;
            let refresher = tokio::spawn(refresh_admitted(
                owner,
                Arc::clone(&admitted),
                refresh,
                node.events(),
            ));
            Ok(CircleNode { node, relay, admitted, device: addr.device, refresher })
        }

        /// A one-time ticket with which one team's owner or admin adds this circle node,
        /// valid for `valid_ms`.
        pub async fn invite(&self, valid_ms: i64) -> Result<CircleTicket> {
            self.node.with_home(move |home| home.circle_ticket(valid_ms)).await
        }

        /// The circle node's device.
        pub fn device(&self) -> DeviceId {
            self.device
        }

        /// The sync node.
        pub fn node(&self) -> &Node {
            &self.node
        }

        /// The relay server's URL.
        pub fn relay_url(&self) -> String {
            self.relay.url().to_string()
        }

        /// How many devices the relay server admits now.
        pub fn admitted(&self) -> usize {
            self.admitted.len()
        }

        /// How many devices connected to the relay server were disconnected because
        /// they were removed from their team, since the node started.
        pub fn disconnected(&self) -> u64 {
            self.admitted.disconnected()
        }

        /// How many relay connections were refused since the node started.
        pub fn refused(&self) -> u64 {
            self.admitted.refused()
        }

        /// Stops the node and the relay server; the home stays as it is on disk.
        pub async fn shutdown(self) {
            self.refresher.abort();
            self.node.shutdown().await;
            self.relay.shutdown().await;
        }
    }

    /// Keeps the relay server's admitted devices equal to the current devices of the
    /// teams the home holds: at once after a team is taken on or a membership changes,
    /// and every `ADMITTED_REFRESH_MS` in any case.
    async fn refresh_admitted(
        home: Owner<Home>,
        admitted: Arc<Admitted>,
        refresh: Arc<Notify>,
        mut events: broadcast::Receiver<PeerEvent>,
    ) {
        loop {
            tokio::select! {
                () = refresh.notified() => {}
                event = events.recv() => match event {
                    Ok(PeerEvent::Sync { event: SyncEvent::MembershipChanged { .. }, .. })
                    | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = tokio::time::sleep(Duration::from_millis(ADMITTED_REFRESH_MS)) => {}
            }
            match home.call(|home| home.team_devices()).await {
                Ok(Ok(devices)) => admitted.set(devices),
                Ok(Err(e)) => tracing::warn!("cannot read the teams' devices for the relay: {e}"),
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use care_core::membership::{OpBody, Role};
    use care_core::{DeviceId, MemberId};

    use crate::home::Home;

    /// A circle node takes on at most `CIRCLE_TEAMS_MAX` teams: the next team's log is
    /// refused before its ticket is even looked at, and nothing of it is stored.
    #[test]
    fn a_circle_node_takes_on_at_most_circle_teams_max_teams() -> crate::Result<()> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut home = Home::init(dir.path(), "Circle relay")?;
        let key = care_core::DeviceKey::from_seed([5; 32]);
        let member = MemberId::from_bytes([5; 16]);
        let log = |i: u32| {
            let mut nonce = [0u8; 16];
            nonce[..4].copy_from_slice(&i.to_le_bytes());
            let at = care_core::Timestamp(0);
            care_core::membership::create_team(&key, at, "A team", member, "Ann", nonce)
        };
        for i in 0..super::CIRCLE_TEAMS_MAX as u32 {
            let create = log(i);
            home.store_ops(care_core::membership::team_id(&create), &[create])?;
        }
        let create = log(u32::MAX);
        let team = care_core::membership::team_id(&create);
        let refused = home.take_on_team(&[0; 16], team, &[create]);
        assert!(
            matches!(&refused, Err(crate::Error::CircleRefused(why)) if why.contains("the most it may")),
            "{refused:?}"
        );
        assert!(!home.store.teams()?.contains(&team));
        assert_eq!(home.store.teams()?.len(), super::CIRCLE_TEAMS_MAX);
        Ok(())
    }

    #[test]
    fn the_admitted_devices_follow_a_growing_membership_log() -> crate::Result<()> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut home = Home::init(dir.path(), "Rosa")?;
        let me = home.profile().device;
        let team = home.create_team("Rosa's team")?;
        assert_eq!(home.team_devices()?, [me].into());

        let (member, device) = (MemberId::from_bytes([7; 16]), DeviceId::from_bytes([9; 32]));
        let body =
            OpBody::AddMember { member, name: "Bea".into(), role: Role::Worker, hats: vec![] };
        home.author_op(team, body)?;
        home.author_op(team, OpBody::AddDevice { member, device, label: "phone".into() })?;
        assert_eq!(home.team_devices()?, [me, device].into());

        home.author_op(team, OpBody::RemoveMember { member })?;
        assert_eq!(home.team_devices()?, [me].into());
        Ok(())
    }
}
