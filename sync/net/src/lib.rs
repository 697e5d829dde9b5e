//! The iroh runtime of the sync protocol: the device's endpoint, frames on QUIC streams,
//! and the service that runs one session per connected device.

pub mod circle;
pub mod endpoint;
pub mod framing;
pub mod handshake;
mod lanes;
pub mod owner;
#[cfg(feature = "relay-server")]
pub mod relay;
pub mod runtime;
pub mod service;

pub use endpoint::{NetConfig, NetError, bind, endpoint_addr, local_addrs, remote_device};
pub use owner::{Owner, Stopped};
pub use runtime::{PeerAddr, Protocol, Runtime};
pub use service::{
    Change, DialError, JoinProtocol, PeerEvent, SyncProtocol, SyncService, Traffic, request_join,
};
