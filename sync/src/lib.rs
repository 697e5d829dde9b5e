//! Peer-to-peer sync of a care team's documents over iroh. Not yet implemented: this crate is empty until the sync protocol lands.
