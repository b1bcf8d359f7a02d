//! quorumcast: a highly available, clustered recorder for SSH session recordings.
//!
//! # Layout
//!
//! A recording's bytes travel down the modules in this order:
//!
//! - [`ingest`]: HTTP. Speaks the recorder wire protocol (`/record`, `/v2/record`,
//!   `/v2/event`) and the operator API, turns requests into byte streams and durable
//!   offsets into ack frames. Knows nothing of files.
//! - [`session`]: admission, the pipeline of one recording, and what an ack means.
//! - [`replication`]: owner → replicas over QUIC, majority-durable offsets, takeovers
//!   with fencing, sealing orphans.
//! - [`storage`]: files under `--dst`, group commit, the session index under statedir.
//!
//! Beside the data path:
//!
//! - [`asciicast`]: the recording format, checked incrementally without I/O.
//! - [`config`]: node configuration from flags, environment and TOML.
//! - [`metrics`]: metric names and the Prometheus exporter.
//! - [`node`]: wires the above into a running recorder and shuts it down.
//! - [`client`]: the SSH-server side: `record`, `play`, `cat`.
//! - [`cluster`]: the recorder set's control plane (Raft over QUIC with mutual TLS):
//!   membership, session claims with fencing epochs, disk state. Beside the data path;
//!   `session` reaches it only through the `Admission` trait.
//! - [`admin`]: the operator's `cluster` commands, an HTTP client of the cluster API.
//! - [`dev`]: `quorumcast dev`, a local recorder set of child node processes on loopback.

pub mod admin;
pub mod asciicast;
pub mod client;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod ingest;
pub mod metrics;
pub mod node;
pub mod replication;
pub mod session;
pub mod storage;
