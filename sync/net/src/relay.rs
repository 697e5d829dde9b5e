//! The circle's relay server (iroh-relay), for devices that cannot reach each other
//! directly. Plain HTTP on the listen address (a private network, or TLS in front of it).
//! It admits only the devices in [`Admitted`]: the circle node keeps that set to the
//! current devices of the teams it serves, so a device of no such team is refused.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use care_core::DeviceId;
use iroh::RelayUrl;
use iroh_relay::server::clients::Clients;
use iroh_relay::server::{Access, AccessControl, ClientRequest, RelayConfig, Server, ServerConfig};

/// Why the relay server could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The server failed to bind or spawn.
    #[error("cannot start the relay server on {addr}: {reason}")]
    Spawn {
        /// The listen address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// The devices the relay server admits, shared with the node that keeps it current.
#[derive(Debug, Default)]
pub struct Admitted {
    devices: RwLock<BTreeSet<DeviceId>>,
    refused: std::sync::atomic::AtomicU64,
    /// Connected devices disconnected because they were no longer admitted.
    disconnected: std::sync::atomic::AtomicU64,
    /// The running server's clients, to disconnect devices no longer admitted.
    clients: std::sync::OnceLock<Clients>,
}

impl Admitted {
    /// Replaces the admitted devices, and disconnects at once every device that was
    /// admitted and no longer is (a removed device does not wait for its next connect).
    pub fn set(&self, devices: BTreeSet<DeviceId>) {
        let removed: Vec<DeviceId> = {
            let mut held = self.devices.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            let removed = held.difference(&devices).copied().collect();
            *held = devices;
            removed
        };
        let Some(clients) = self.clients.get() else {
            return;
        };
        for device in removed {
            if let Ok(id) = iroh::EndpointId::from_bytes(device.as_bytes())
                && clients.disconnect(id, None)
            {
                self.disconnected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Whether `device` is admitted.
    pub fn contains(&self, device: DeviceId) -> bool {
        self.devices.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&device)
    }

    /// How many devices are admitted.
    pub fn len(&self) -> usize {
        self.devices.read().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// Whether no device is admitted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many connected devices were disconnected because they were no longer
    /// admitted (removed from their team), since the server started.
    pub fn disconnected(&self) -> u64 {
        self.disconnected.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many connections were refused since the server started.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The access control the relay server calls for each connecting client.
#[derive(Debug)]
struct CircleAccess(Arc<Admitted>);

impl AccessControl for CircleAccess {
    async fn on_connect(&self, request: &ClientRequest) -> Access {
        let device = DeviceId::from_bytes(*request.endpoint_id().as_bytes());
        if self.0.contains(device) {
            Access::Allow
        } else {
            self.0.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Access::Deny { reason: Some("not a device of a team this circle serves".into()) }
        }
    }
}

/// A running relay server.
pub struct RelayServer {
    server: Server,
    url: RelayUrl,
}

impl std::fmt::Debug for RelayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServer").field("url", &self.url).finish_non_exhaustive()
    }
}

impl RelayServer {
    /// Starts a relay server on `listen` (plain HTTP), admitting only `admitted`.
    pub async fn spawn(listen: SocketAddr, admitted: Arc<Admitted>) -> Result<Self, RelayError> {
        let spawn_error = |reason: String| RelayError::Spawn { addr: listen, reason };
        let mut relay = RelayConfig::new(listen);
        let relay_admitted = Arc::clone(&admitted);
        relay.access = Arc::new(CircleAccess(admitted));
        let mut config = ServerConfig::default();
        config.relay = Some(relay);
        config.quic = None;
        let server = Server::spawn(config).await.map_err(|e| spawn_error(e.to_string()))?;
        if let Some(service) = server.relay_service() {
            // Set once, by the only server an `Admitted` is given to.
            let _ = relay_admitted.clients.set(service.clients().clone());
        }
        let addr = server.http_addr().ok_or_else(|| spawn_error("no HTTP address".into()))?;
        let url = format!("http://{addr}")
            .parse::<RelayUrl>()
            .map_err(|e| spawn_error(format!("its URL: {e}")))?;
        Ok(RelayServer { server, url })
    }

    /// The URL devices reach the relay server at.
    pub fn url(&self) -> &RelayUrl {
        &self.url
    }

    /// Stops the server.
    pub async fn shutdown(self) {
        let _ = self.server.shutdown().await;
    }
}
