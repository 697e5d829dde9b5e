//! The device's iroh endpoint, offline by default: no n0 relays, no n0 DNS, no port
//! mapping. Addresses come from tickets and the store; a relay is used only when one is
//! configured; LAN discovery (mDNS) only when asked for.

use std::net::SocketAddr;
use std::time::Duration;

use care_core::DeviceId;

use iroh::endpoint::{Connection, IdleTimeout, QuicTransportConfig, presets};
use iroh::{
    Endpoint, EndpointAddr, NetReportConfig, RelayConfig, RelayMap, RelayMode, RelayUrl, SecretKey,
};

use care_sync::frame::ALPN;
use care_sync::join::JOIN_ALPN;

/// A connection that has heard nothing for this long is given up: a device that vanished
/// (a phone switched off, a killed process) stops holding its session. Three keep-alives
/// fit in it, so a busy peer slow to answer (a circle node taking on a hundred teams) is
/// not taken for gone. A device that restarts need not wait for it: its new connection
/// replaces the old one ([`care_sync::hub::CROSSING_DIALS_MS`]).
pub const IDLE_TIMEOUT_MS: u64 = 15_000;
/// How often a quiet connection is pinged. A ping goes on every path of the connection,
/// the one through the circle's relay server too, so each one costs the circle node a
/// relayed packet each way. Once a second, 400 idle devices cost the circle node about
/// 350 us of CPU each per second; every five seconds, about 200. Five seconds is the
/// most iroh allows per path.
pub const KEEP_ALIVE_MS: u64 = 5_000;

/// How a device's endpoint listens and reaches others.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The address to listen on (`0.0.0.0:0` for any interface and a free port).
    pub listen: SocketAddr,
    /// A relay server run by the circle, if any.
    pub relay: Option<RelayUrl>,
    /// Whether to find and announce devices on the local network by mDNS.
    pub lan: bool,
    /// Most bytes queued for one connection to write before it is dropped as fallen
    /// behind ([`QUEUED_BYTES_MAX`](crate::owner::QUEUED_BYTES_MAX) by default): what one
    /// slow or stalled reader can make this device hold.
    pub queued_bytes_max: u64,
}

impl NetConfig {
    /// Listens on `listen`, no relay, no LAN discovery, the default bounds.
    pub fn listening(listen: SocketAddr) -> NetConfig {
        NetConfig {
            listen,
            relay: None,
            lan: false,
            queued_bytes_max: crate::owner::QUEUED_BYTES_MAX,
        }
    }

    /// Loopback only, no relay, no LAN discovery: for tests and benchmarks.
    pub fn loopback() -> NetConfig {
        NetConfig::listening(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The listen address was refused.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: crate::service::Source,
    },
    /// The endpoint failed to bind.
    #[error("cannot start the network endpoint: {0}")]
    Bind(#[source] crate::service::Source),
    /// LAN discovery could not start.
    #[error("cannot start LAN discovery: {0}")]
    Lan(#[source] crate::service::Source),
    /// A relay URL that does not parse.
    #[error("`{url}` is not a relay URL: {source}")]
    RelayUrl {
        /// What was given.
        url: String,
        /// Why it does not parse.
        source: crate::service::Source,
    },
}

/// Binds this device's endpoint with its secret key, speaking the sync and join ALPNs.
pub async fn bind(secret: [u8; 32], config: &NetConfig) -> Result<Endpoint, NetError> {
    let relay_mode = match &config.relay {
        Some(url) => RelayMode::Custom(RelayMap::from(RelayConfig::new(url.clone(), None))),
        None => RelayMode::Disabled,
    };
    let mut report = NetReportConfig::minimal();
    // With a relay of the circle's own, probing it over HTTP is how a home relay is chosen.
    report.https_probes = config.relay.is_some();
    let idle = IdleTimeout::try_from(Duration::from_millis(IDLE_TIMEOUT_MS))
        .expect("fifteen seconds is a valid QUIC idle timeout");
    let transport = QuicTransportConfig::builder()
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Duration::from_millis(KEEP_ALIVE_MS))
        .build();
    let builder = Endpoint::builder(presets::Minimal)
        .secret_key(SecretKey::from_bytes(&secret))
        .transport_config(transport)
        .alpns(vec![ALPN.to_vec(), JOIN_ALPN.to_vec()])
        .relay_mode(relay_mode)
        .net_report_config(report)
        .clear_ip_transports()
        .bind_addr(config.listen)
        .map_err(|e| NetError::Listen { addr: config.listen, source: e.into() })?;
    let endpoint = builder.bind().await.map_err(|e| NetError::Bind(e.into()))?;
    if config.lan {
        let mdns = iroh_mdns_address_lookup::MdnsAddressLookup::builder()
            .build(endpoint.id())
            .map_err(|e| NetError::Lan(e.into()))?;
        endpoint.address_lookup().map_err(|e| NetError::Lan(e.into()))?.add(mdns);
    }
    Ok(endpoint)
}

/// The iroh address of a device from what is known of it.
pub fn endpoint_addr(
    device: DeviceId,
    addrs: &[SocketAddr],
    relay: Option<&RelayUrl>,
) -> Option<EndpointAddr> {
    let id = iroh::EndpointId::from_bytes(device.as_bytes()).ok()?;
    let mut addr = EndpointAddr::new(id);
    for ip in addrs {
        addr = addr.with_ip_addr(*ip);
    }
    if let Some(relay) = relay {
        addr = addr.with_relay_url(relay.clone());
    }
    Some(addr)
}

/// The authenticated device at the other end of a connection.
pub fn remote_device(conn: &Connection) -> DeviceId {
    DeviceId::from_bytes(*conn.remote_id().as_bytes())
}

/// The addresses this endpoint can be reached at, for tickets and `care serve`.
pub fn local_addrs(endpoint: &Endpoint) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = endpoint.addr().ip_addrs().copied().collect();
    if addrs.is_empty() {
        addrs = endpoint.bound_sockets();
    }
    addrs.sort();
    addrs.dedup();
    addrs
}
