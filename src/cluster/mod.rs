//! The clustered recorder set: Raft control plane (membership, session ownership with
//! fencing epochs, replica sets, disk state) and, beside it, the data plane that moves
//! recording bytes owner → replicas.
//!
//! - [`types`]: the control plane's vocabulary (commands, responses, the openraft type config).
//! - [`state`]: the pure, sans-IO state machine those commands drive.
//! - [`store`]: durable openraft log and state-machine storage on redb under statedir.
//! - [`certs`]: the cluster CA and node certificates (node id in the SAN `node-<id>.quorumcast`).
//! - [`tls`]: mutual-TLS rustls/quinn configs and QUIC transport parameters.
//! - [`transport`]: the QUIC endpoint: authenticated peers, framed RPCs, replication streams.
//! - [`udp`]: the cluster port's socket: buffer sizes, datagrams per send.
//! - [`network`]: openraft's RPCs over the transport; who answered when.
//! - [`member`]: this node's Raft instance: start-up, proposals, membership, status.
//! - [`admission`]: session admission through Raft claims, with fast local refusals.
//! - [`disk`]: the dst file system monitor and its reports.

pub mod admission;
pub mod certs;
pub mod disk;
pub mod member;
pub mod network;
pub mod state;
pub mod store;
pub mod tls;
pub mod transport;
pub mod types;
pub mod udp;

/// Errors of the cluster layer as the rest of the node sees them.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("no quorum: {0}")]
    NoQuorum(String),
    #[error("membership change refused: {0}")]
    Membership(String),
}
