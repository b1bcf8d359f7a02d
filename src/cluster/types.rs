//! The control plane's vocabulary: what goes through the Raft log and what comes back.
//!
//! It owns the command and response types, the per-session record, the cluster settings
//! and the openraft type configuration ([`TypeConfig`]). It owns no behaviour beyond
//! validation of settings: the rules live in [`super::state`], persistence in
//! [`super::store`].
//!
//! # Encoding and versions
//!
//! These types reach disk only inside the Raft log and inside snapshots, both written by
//! [`super::store`] with bincode behind a format-version prefix (`store::LOG_FORMAT`,
//! `store::SNAPSHOT_FORMAT`). bincode encodes enum variants by position and struct fields
//! by order, so: **append new enum variants at the end, never reorder or remove fields**;
//! any other change bumps the format in `store.rs`. bincode cannot decode
//! `#[serde(untagged)]` or `#[serde(flatten)]`: don't use them here.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A node's Raft identity. Stable for the node's lifetime (kept in statedir).
pub type NodeId = u64;

/// What membership stores for each node: where to reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Address of the cluster (QUIC) endpoint: Raft RPCs and replication streams.
    pub cluster_addr: String,
    /// Address of the HTTP ingest endpoint, for redirecting clients.
    pub ingest_addr: String,
}

openraft::declare_raft_types!(
    /// openraft type configuration of the control plane.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A node's disk state, computed by the node itself with [`super::state::classify`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskState {
    /// Room to take new sessions and replicas.
    #[default]
    Ok,
    /// Above the pressure mark: keeps its sessions, takes no new ones.
    Pressure,
    /// Nearly full: takes nothing, is dropped from replica sets at takeover.
    Full,
}

/// One disk report, as proposed by the node that measured it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskReport {
    pub state: DiskState,
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// Wall clock of the reporting node, Unix milliseconds. Informational only: no rule
    /// compares clocks of different nodes.
    pub reported_at_ms: i64,
}

/// Where a session is in its cluster-wide life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterSessionState {
    /// Owned and accepting bytes.
    Live,
    /// Ended cleanly; every replica holds the final length.
    Sealed,
    /// Ended by the owner without a clean finish (client gone, content refused).
    Aborted,
    /// No owner could continue it (owner lost, no surviving replica took over).
    Orphaned,
}

impl ClusterSessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterSessionState::Live => "live",
            ClusterSessionState::Sealed => "sealed",
            ClusterSessionState::Aborted => "aborted",
            ClusterSessionState::Orphaned => "orphaned",
        }
    }
}

/// The cluster's record of one session: who owns it, at which fencing epoch, and where
/// its bytes are replicated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEntry {
    pub id: String,
    /// Always `replicas[0]`.
    pub owner: NodeId,
    /// Fencing epoch: starts at 1, +1 at every takeover. Replicas refuse writes below the
    /// highest epoch they have seen.
    pub epoch: u64,
    /// Owner first, then the other replicas; distinct.
    pub replicas: Vec<NodeId>,
    pub state: ClusterSessionState,
    /// The recording's directory under dst (the SSH server's sanitized identity).
    pub node_dir: String,
    /// The recording's file name inside `node_dir`.
    pub file_name: String,
    pub started_at_ms: i64,
}

/// Cluster-wide knobs, changed only through [`Command::SetSettings`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Replicas per session including the owner ("3, or every node when fewer").
    pub replication_factor: usize,
    /// Used-space percentage at or above which a node enters [`DiskState::Pressure`].
    pub pressure_used_percent: u8,
    /// Free space below which a node enters [`DiskState::Pressure`] whatever the percentage.
    pub pressure_min_free_bytes: u64,
    /// Used-space percentage below which a node under pressure returns to
    /// [`DiskState::Ok`] (hysteresis: lower than `pressure_used_percent`).
    pub clear_used_percent: u8,
    /// Used-space percentage at or above which a node is [`DiskState::Full`].
    pub full_used_percent: u8,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            replication_factor: 3,
            pressure_used_percent: 85,
            pressure_min_free_bytes: 1 << 30,
            clear_used_percent: 80,
            full_used_percent: 95,
        }
    }
}

impl Settings {
    /// Checks the thresholds are ordered so that hysteresis cannot oscillate:
    /// `clear ≤ pressure ≤ full ≤ 100` and at least one replica.
    pub fn validate(&self) -> Result<(), String> {
        if self.replication_factor == 0 {
            return Err("replication_factor must be at least 1".into());
        }
        let ordered = self.clear_used_percent <= self.pressure_used_percent
            && self.pressure_used_percent <= self.full_used_percent
            && self.full_used_percent <= 100;
        if !ordered {
            return Err(format!(
                "need clear_used_percent ({}) <= pressure_used_percent ({}) <= full_used_percent ({}) <= 100",
                self.clear_used_percent, self.pressure_used_percent, self.full_used_percent
            ));
        }
        Ok(())
    }
}

/// A decision proposed through Raft. Applied by [`super::state::ClusterState::apply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A node's latest disk measurement.
    ReportDisk {
        node: NodeId,
        report: DiskReport,
    },
    /// A node takes a new session. `up` is the set of nodes the leader believes reachable,
    /// filled in by the leader before proposing; replicas are chosen among them.
    ClaimSession {
        id: String,
        owner: NodeId,
        node_dir: String,
        file_name: String,
        started_at_ms: i64,
        up: Vec<NodeId>,
    },
    /// Failover: `new_owner` takes a live session at epoch + 1, keeping the other
    /// replicas (members, not full; the ones not in `up` are dropped first if the set
    /// would exceed the replication factor). Only if the session is still at `from_epoch`,
    /// so two nodes racing to take over can't both win.
    TakeOver {
        id: String,
        new_owner: NodeId,
        from_epoch: u64,
        up: Vec<NodeId>,
    },
    /// The owner ends a session. Accepted only at the session's current epoch (fencing).
    EndSession {
        id: String,
        state: ClusterSessionState,
        epoch: u64,
    },
    SetSettings(Settings),
    /// Several commands in one log entry, applied in order, each on its own (one may be
    /// rejected while the others apply). How concurrent claims and ends share one fsync.
    Batch(Vec<Command>),
    /// The leader's periodic clean-up: every ended session (not `Live`) that started
    /// before `started_before_ms` leaves the table, and its name is free again. The cutoff
    /// is in the command, not read from a clock, so every replica removes the same ones.
    /// (Appended last: earlier variants keep their bincode tags.)
    ForgetEnded {
        started_before_ms: i64,
    },
}

/// The state machine's answer to one [`Command`] (or to a blank/membership entry: `Ok`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    Ok,
    /// The session is owned by `replicas[0]` at `epoch`.
    Claimed {
        epoch: u64,
        replicas: Vec<NodeId>,
    },
    /// The command was valid Raft input but broke a rule; nothing changed.
    Rejected {
        reason: String,
    },
    /// One answer per command of a [`Command::Batch`], in order.
    Batch(Vec<CommandResponse>),
    /// How many ended sessions a [`Command::ForgetEnded`] removed.
    Forgotten {
        sessions: u64,
    },
}
