//! A device on the network: its endpoint, the router that hands incoming connections to
//! the sync and join protocols, and the loops that keep it connected to known devices
//! (reconnecting with backoff).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use care_core::DeviceId;
use iroh::protocol::{DynProtocolHandler, Router};
use iroh::{Endpoint, RelayUrl, TransportAddr};
use tokio::task::JoinHandle;

use crate::endpoint::{NetConfig, NetError, bind, endpoint_addr, local_addrs};
use crate::owner::Owner;
use crate::service::{DialError, JoinProtocol, SyncProtocol, SyncService, request_join};
use care_sync::Replica;
use care_sync::frame::ALPN;
use care_sync::join::{Invites, JOIN_ALPN, JoinReply, JoinRequest};
use care_sync::ticket::JoinTicket;

/// First wait before redialling a device that could not be reached.
pub const RECONNECT_INITIAL_MS: u64 = 500;
/// Longest wait between redials.
pub const RECONNECT_MAX_MS: u64 = 30_000;
/// How often a connected device is checked on.
const CONNECTED_CHECK_MS: u64 = 1_000;
/// How long one dial may take.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;

/// Where a known device may be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    /// The device.
    pub device: DeviceId,
    /// Its direct addresses.
    pub addrs: Vec<SocketAddr>,
    /// A relay it can be reached through.
    pub relay: Option<RelayUrl>,
}

/// An extra protocol a device serves: its ALPN and its handler.
pub type Protocol = (&'static [u8], Box<dyn DynProtocolHandler>);

/// A device on the network.
pub struct Runtime<R> {
    endpoint: Endpoint,
    router: Router,
    service: Arc<SyncService<R>>,
    relay: Arc<Mutex<Option<RelayUrl>>>,
    keepers: Mutex<HashMap<DeviceId, JoinHandle<()>>>,
}

impl<R> std::fmt::Debug for Runtime<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("device", &self.endpoint.id())
            .field("relay", &*self.relay.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
            .finish_non_exhaustive()
    }
}

impl<R: Replica + Invites + Send + 'static> Runtime<R> {
    /// Starts the endpoint with the device's secret key and serves sync and join, with
    /// `owner` running the sessions over the device's data.
    pub async fn start(
        owner: Owner<R>,
        secret: [u8; 32],
        config: &NetConfig,
    ) -> Result<Self, NetError> {
        Self::start_with(owner, secret, config, Vec::new()).await
    }

    /// Starts the endpoint, serving sync, join and the given extra protocols (a circle
    /// node's handshake).
    pub async fn start_with(
        owner: Owner<R>,
        secret: [u8; 32],
        config: &NetConfig,
        protocols: Vec<Protocol>,
    ) -> Result<Self, NetError> {
        let endpoint = bind(secret, config).await?;
        let service = SyncService::new(owner);
        let mut router = Router::builder(endpoint.clone())
            .accept(ALPN, SyncProtocol(Arc::clone(&service)))
            .accept(JOIN_ALPN, JoinProtocol(Arc::clone(&service)));
        for (alpn, handler) in protocols {
            router = router.accept(alpn, handler);
        }
        let router = router.spawn();
        Ok(Runtime {
            endpoint,
            router,
            service,
            relay: Arc::new(Mutex::new(config.relay.clone())),
            keepers: Mutex::new(HashMap::new()),
        })
    }

    /// The sessions of this device.
    pub fn service(&self) -> &Arc<SyncService<R>> {
        &self.service
    }

    /// The owner of the device's data, to post commands to.
    pub fn owner(&self) -> &Owner<R> {
        self.service.owner()
    }

    /// The relay server this device uses, if any.
    pub fn relay(&self) -> Option<RelayUrl> {
        self.relay.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Starts using a relay server (a circle's, learnt from a team) without restarting:
    /// the endpoint adds it to its relay map, and dials from now on go through it too.
    /// Returns whether it was new.
    pub async fn use_relay(&self, url: &str) -> Result<bool, NetError> {
        let url: RelayUrl = url
            .parse()
            .map_err(|e| NetError::RelayUrl { url: url.to_owned(), source: Box::new(e) })?;
        if self.relay().as_ref() == Some(&url) {
            return Ok(false);
        }
        let config = std::sync::Arc::new(iroh::RelayConfig::new(url.clone(), None));
        self.endpoint.insert_relay(url.clone(), config).await;
        *self.relay.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(url);
        Ok(true)
    }

    /// Where this device listens, and its relay.
    pub fn addr(&self) -> PeerAddr {
        let device = DeviceId::from_bytes(*self.endpoint.id().as_bytes());
        PeerAddr { device, addrs: local_addrs(&self.endpoint), relay: self.relay() }
    }

    /// The endpoint, for handshakes beyond sync and join.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Direct addresses a connected device was last seen at.
    pub async fn seen_addrs(&self, device: DeviceId) -> Vec<SocketAddr> {
        let Ok(id) = iroh::EndpointId::from_bytes(device.as_bytes()) else { return Vec::new() };
        let Some(info) = self.endpoint.remote_info(id).await else { return Vec::new() };
        info.into_addrs()
            .filter_map(|a| match a.into_addr() {
                TransportAddr::Ip(ip) => Some(ip),
                _ => None,
            })
            .collect()
    }

    /// Connects to a device once and runs a session with it in the background.
    pub async fn connect(&self, peer: &PeerAddr) -> Result<(), DialError> {
        let addr = endpoint_addr(
            peer.device,
            &peer.addrs,
            peer.relay.clone().or_else(|| self.relay()).as_ref(),
        )
        .ok_or(DialError::InvalidDevice("the address"))?;
        tokio::time::timeout(
            Duration::from_millis(CONNECT_TIMEOUT_MS),
            self.service.dial(&self.endpoint, addr),
        )
        .await
        .map_err(|_| DialError::Timeout)?
    }

    /// Keeps a session with a device: redials with backoff whenever it is not connected.
    /// Replaces any earlier keeper of the same device (with its newer addresses).
    pub fn keep_connected(&self, peer: PeerAddr) {
        let service = Arc::clone(&self.service);
        let endpoint = self.endpoint.clone();
        let relay = Arc::clone(&self.relay);
        let device = peer.device;
        let keeper = tokio::spawn(async move {
            let mut backoff_ms = RECONNECT_INITIAL_MS;
            loop {
                if service.connected().contains(&device) {
                    backoff_ms = RECONNECT_INITIAL_MS;
                    tokio::time::sleep(Duration::from_millis(CONNECTED_CHECK_MS)).await;
                    continue;
                }
                // The device's own relay, else this device's current one (which a team
                // may have brought since the keeper started).
                let current =
                    relay.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                let via = peer.relay.clone().or(current);
                let Some(addr) = endpoint_addr(device, &peer.addrs, via.as_ref()) else { return };
                let dial = service.dial(&endpoint, addr);
                match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), dial).await {
                    Ok(Ok(())) => backoff_ms = RECONNECT_INITIAL_MS,
                    _ => {
                        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                        backoff_ms = (backoff_ms * 2).min(RECONNECT_MAX_MS);
                    }
                }
                tokio::time::sleep(Duration::from_millis(CONNECTED_CHECK_MS)).await;
            }
        });
        let mut keepers = self.keepers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = keepers.insert(device, keeper) {
            old.abort();
        }
    }

    /// Stops keeping a session with a device (it was removed from every shared team).
    pub fn forget(&self, device: DeviceId) {
        let mut keepers = self.keepers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = keepers.remove(&device) {
            old.abort();
        }
    }

    /// Presents a ticket to the device that issued it.
    pub async fn join(
        &self,
        ticket: &JoinTicket,
        request: &JoinRequest,
    ) -> Result<JoinReply, DialError> {
        let relay = ticket.relay.as_deref().and_then(|url| url.parse::<RelayUrl>().ok());
        let addr =
            endpoint_addr(ticket.inviter, &ticket.addrs, relay.or_else(|| self.relay()).as_ref())
                .ok_or(DialError::InvalidDevice("the ticket"))?;
        request_join(&self.endpoint, addr, request).await
    }

    /// Stops every session, closes the endpoint, and stops the owner thread once it has
    /// handled what the sessions sent it.
    pub async fn shutdown(self) {
        for (_, keeper) in
            self.keepers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain()
        {
            keeper.abort();
        }
        // The router closes the endpoint, ending every connection with a close frame.
        let _ = self.router.shutdown().await;
        self.service.owner().stop().await;
    }
}
