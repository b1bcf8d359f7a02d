//! Metric names and the Prometheus exporter.
//!
//! Owns every metric name (so dashboards and alert rules have one place to read them
//! from) and the recorder installation. Modules record through the `metrics` macros
//! with these constants; without an installed recorder (unit tests) that is a no-op.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Gauge: recordings currently streaming into this node.
pub const SESSIONS_LIVE: &str = "quorumcast_sessions_live";
/// Always 1; its labels say how this binary was built (version, tokio's scheduling).
pub const BUILD_INFO: &str = "quorumcast_build_info";
/// Counter: recordings accepted, by `protocol` (v1, v2).
pub const SESSIONS_TOTAL: &str = "quorumcast_sessions_total";
/// Counter: recordings ended, by final `state` (complete, aborted, invalid).
pub const SESSIONS_ENDED: &str = "quorumcast_sessions_ended_total";
/// Counter: recording bytes received from clients.
pub const BYTES_IN: &str = "quorumcast_ingest_bytes_total";
/// Counter: v2 ack frames sent (including idle keep-alive acks).
pub const ACKS_SENT: &str = "quorumcast_acks_sent_total";
/// Histogram: duration of one group-commit round (all its fsyncs), seconds.
pub const FSYNC_SECONDS: &str = "quorumcast_fsync_seconds";
/// Histogram: files synced per group-commit round.
pub const COMMIT_BATCH_FILES: &str = "quorumcast_commit_batch_files";
pub const INDEX_COMMIT_SECONDS: &str = "quorumcast_index_commit_seconds";
pub const INDEX_BATCH_RECORDS: &str = "quorumcast_index_batch_records";
/// Counter: recordings whose content is not valid asciicast v2 (bytes kept anyway).
pub const INVALID_RECORDINGS: &str = "quorumcast_invalid_recordings_total";
/// Counter: sessions refused before they started, by `reason`.
pub const REFUSALS: &str = "quorumcast_refusals_total";
/// Counter: `/v2/event` bodies, by `result` (stored, invalid).
pub const EVENTS: &str = "quorumcast_events_total";

/// Gauge: the Raft term this node is in.
pub const RAFT_TERM: &str = "quorumcast_raft_term";
/// Gauge: the leader's node id as this node knows it (-1: none).
pub const RAFT_LEADER: &str = "quorumcast_raft_leader_id";
/// Gauge: 1 on the leader.
pub const RAFT_IS_LEADER: &str = "quorumcast_raft_is_leader";
/// Gauge: index of the last entry in this node's Raft log.
pub const RAFT_LAST_LOG_INDEX: &str = "quorumcast_raft_last_log_index";
/// Gauge: index of the last entry applied to the state machine.
pub const RAFT_APPLIED_INDEX: &str = "quorumcast_raft_applied_index";
/// Gauge: voters and learners in the membership.
pub const RAFT_MEMBERS: &str = "quorumcast_raft_members";
/// Histogram: time to claim a session through Raft, seconds.
pub const CLAIM_SECONDS: &str = "quorumcast_claim_seconds";
/// Histogram: each step of admitting a new recording, by `step`: `name_check` (is the
/// candidate name free here), `claim` (Raft), `create_file` (create + directory fsync),
/// `index` (the durable `live` record), in that order: the node's part of the time to
/// the client's yes.
pub const ADMISSION_STEP_SECONDS: &str = "quorumcast_admission_step_seconds";
/// Histogram: on the leader, from handing a proposal to Raft to its applied answer
/// (log append, replication to a quorum, apply).
pub const RAFT_WRITE_SECONDS: &str = "quorumcast_raft_write_seconds";
/// Histogram: one durable append to this node's Raft log (one transaction, one fsync).
pub const RAFT_APPEND_SECONDS: &str = "quorumcast_raft_append_seconds";
/// Gauge: each node's disk state as the cluster knows it (0 ok, 1 pressure, 2 full), by `node`.
pub const DISK_STATE: &str = "quorumcast_disk_state";
/// Gauge: this node's dst file system, bytes free and total.
pub const DISK_FREE_BYTES: &str = "quorumcast_disk_free_bytes";
pub const DISK_TOTAL_BYTES: &str = "quorumcast_disk_total_bytes";

/// Counter: replica writes (or stream opens) refused because they carried a stale epoch.
pub const STALE_WRITES_REFUSED: &str = "quorumcast_replication_stale_epoch_refusals_total";
/// Counter: sessions taken over by this node (client resume or orphan sealing), by `reason`.
pub const TAKEOVERS: &str = "quorumcast_takeovers_total";
/// Counter: copies of ended sessions this node completed from a peer after being away.
pub const COPIES_REPAIRED: &str = "quorumcast_copies_repaired_total";
/// Counter: session ends that did not reach Raft on the owner's first try, by `outcome`:
/// `retried` (a retry recorded it), `refused` (Raft refused it: someone else ended it),
/// `gave_up` (no quorum for as long as the owner retries), `from_owner` (this node's
/// sweeper recorded the end an owner had sealed but never recorded).
pub const SESSION_ENDS_LATE: &str = "quorumcast_session_ends_late_total";
/// Gauge: largest UDP payload the QUIC path to `peer` currently carries (outgoing
/// connections only), bytes.
pub const QUIC_PATH_MTU: &str = "quorumcast_quic_path_mtu_bytes";
/// Gauge: smoothed round-trip time of the QUIC path to `peer`, seconds.
pub const QUIC_RTT_SECONDS: &str = "quorumcast_quic_rtt_seconds";
/// Counter: packets sent on the QUIC path to `peer`.
pub const QUIC_SENT_PACKETS: &str = "quorumcast_quic_sent_packets_total";
/// Counter: packets lost on the QUIC path to `peer`.
pub const QUIC_LOST_PACKETS: &str = "quorumcast_quic_lost_packets_total";
/// Counter: congestion events (window reductions) on the QUIC path to `peer`.
pub const QUIC_CONGESTION_EVENTS: &str = "quorumcast_quic_congestion_events_total";
/// Counter: black holes detected on the QUIC path to `peer` (each one drops the datagram
/// size back to 1200 bytes).
pub const QUIC_BLACK_HOLES: &str = "quorumcast_quic_black_holes_total";
/// Histogram: time for a takeover (Raft epoch, fencing, reconcile), seconds.
pub const TAKEOVER_SECONDS: &str = "quorumcast_takeover_seconds";
/// Histogram: at each durable offset a replica reports to a session's owner, how many bytes
/// the owner had written past it, by `replica`: how far replication trails the owner.
pub const REPLICA_LAG_BYTES: &str = "quorumcast_replica_lag_bytes";

/// fsync latencies on SSDs are 0.1–10 ms, on busy or network disks up to seconds.
const FSYNC_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Claims are a Raft round trip: sub-millisecond on loopback, tens of ms across sites.
const CLAIM_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0,
];
/// The steps of an admission: tens of microseconds (a `stat`) to milliseconds (fsyncs, a
/// Raft round), finer than [`CLAIM_BUCKETS`] where the goal (claim p99 < 5 ms) is judged.
const STEP_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075,
    0.01, 0.025, 0.1, 1.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];
/// Replica lag: caught up (0), within a batch (up to 1 MiB), or megabytes behind (a replica
/// catching up, or replication slower than ingest).
const LAG_BUCKETS: &[f64] = &[
    0.0,
    4096.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
];

/// Every histogram and its buckets (one left out would be rendered as a summary).
const HISTOGRAM_BUCKETS: &[(&str, &[f64])] = &[
    (FSYNC_SECONDS, FSYNC_BUCKETS),
    (COMMIT_BATCH_FILES, BATCH_BUCKETS),
    (CLAIM_SECONDS, CLAIM_BUCKETS),
    (INDEX_COMMIT_SECONDS, FSYNC_BUCKETS),
    (INDEX_BATCH_RECORDS, BATCH_BUCKETS),
    (TAKEOVER_SECONDS, CLAIM_BUCKETS),
    (REPLICA_LAG_BYTES, LAG_BUCKETS),
    (ADMISSION_STEP_SECONDS, STEP_BUCKETS),
    (RAFT_WRITE_SECONDS, STEP_BUCKETS),
    (RAFT_APPEND_SECONDS, STEP_BUCKETS),
];

#[derive(Debug, thiserror::Error)]
#[error("cannot install the Prometheus recorder: {0}")]
pub struct MetricsError(String);

/// Installs the process-wide recorder and returns the handle that renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in HISTOGRAM_BUCKETS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).into()), buckets)
            .map_err(|e| MetricsError(e.to_string()))?;
    }
    let handle = builder
        .install_recorder()
        .map_err(|e| MetricsError(e.to_string()))?;
    describe();
    // Series that should exist from the start, so rate() and alerts see zeros, not gaps.
    metrics::gauge!(SESSIONS_LIVE).set(0.0);
    metrics::counter!(BYTES_IN).absolute(0);
    metrics::counter!(ACKS_SENT).absolute(0);
    metrics::counter!(INVALID_RECORDINGS).absolute(0);
    metrics::gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "tokio_lifo_slot" => if lifo_slot_disabled() { "off" } else { "on" },
    )
    .set(1.0);
    Ok(handle)
}

/// Whether this build runs tokio without its LIFO slot (`src/main.rs` `runtime()`), which
/// needs `--cfg tokio_unstable` (`.cargo/config.toml`). A `RUSTFLAGS` set by a packager
/// replaces that flag silently; the node says so at start and in [`BUILD_INFO`].
pub fn lifo_slot_disabled() -> bool {
    cfg!(tokio_unstable)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        BUILD_INFO,
        "Always 1: version and tokio_lifo_slot (off when built with --cfg tokio_unstable)"
    );
    describe_gauge!(
        SESSIONS_LIVE,
        "Recordings currently streaming into this node"
    );
    describe_counter!(SESSIONS_TOTAL, "Recordings accepted, by protocol");
    describe_counter!(SESSIONS_ENDED, "Recordings ended, by final state");
    describe_counter!(
        BYTES_IN,
        Unit::Bytes,
        "Recording bytes received from clients"
    );
    describe_counter!(ACKS_SENT, "v2 ack frames sent");
    describe_histogram!(
        FSYNC_SECONDS,
        Unit::Seconds,
        "Duration of one group-commit round"
    );
    describe_histogram!(COMMIT_BATCH_FILES, "Files synced per group-commit round");
    describe_histogram!(
        INDEX_COMMIT_SECONDS,
        Unit::Seconds,
        "Duration of one session-index commit round"
    );
    describe_histogram!(
        INDEX_BATCH_RECORDS,
        "Session records committed per index round"
    );
    describe_counter!(
        INVALID_RECORDINGS,
        "Recordings whose content is not valid asciicast v2"
    );
    describe_counter!(REFUSALS, "Sessions refused before they started, by reason");
    describe_counter!(
        COPIES_REPAIRED,
        "Copies of ended sessions completed from a peer after this node was away"
    );
    describe_counter!(
        SESSION_ENDS_LATE,
        "Session ends that missed Raft on the owner's first try, by outcome"
    );
    describe_gauge!(
        QUIC_PATH_MTU,
        "Largest UDP payload the QUIC path to a peer carries (outgoing connections)"
    );
    describe_gauge!(QUIC_RTT_SECONDS, "Smoothed RTT of the QUIC path to a peer");
    describe_counter!(QUIC_SENT_PACKETS, "Packets sent on the QUIC path to a peer");
    describe_counter!(QUIC_LOST_PACKETS, "Packets lost on the QUIC path to a peer");
    describe_counter!(
        QUIC_CONGESTION_EVENTS,
        "Congestion events on the QUIC path to a peer"
    );
    describe_counter!(
        QUIC_BLACK_HOLES,
        "Black holes detected on the QUIC path to a peer (datagram size falls to 1200)"
    );
    describe_histogram!(
        REPLICA_LAG_BYTES,
        Unit::Bytes,
        "Bytes the owner had written past each durable offset a replica reported"
    );
    describe_counter!(EVENTS, "Event bodies received, by result");
    describe_gauge!(RAFT_TERM, "Raft term of this node");
    describe_gauge!(
        RAFT_LEADER,
        "Leader node id as this node knows it (-1 none)"
    );
    describe_gauge!(RAFT_IS_LEADER, "1 if this node is the Raft leader");
    describe_gauge!(RAFT_LAST_LOG_INDEX, "Index of the last Raft log entry");
    describe_gauge!(
        RAFT_APPLIED_INDEX,
        "Index of the last applied Raft log entry"
    );
    describe_gauge!(RAFT_MEMBERS, "Voters and learners in the membership");
    describe_histogram!(
        CLAIM_SECONDS,
        Unit::Seconds,
        "Time to claim a session through Raft"
    );
    describe_histogram!(
        ADMISSION_STEP_SECONDS,
        Unit::Seconds,
        "Each step of admitting a new recording, by step"
    );
    describe_histogram!(
        RAFT_WRITE_SECONDS,
        Unit::Seconds,
        "On the leader: proposal handed to Raft -> applied answer"
    );
    describe_histogram!(
        RAFT_APPEND_SECONDS,
        Unit::Seconds,
        "One durable append to the Raft log"
    );
    describe_gauge!(DISK_STATE, "Disk state per node: 0 ok, 1 pressure, 2 full");
    describe_gauge!(
        DISK_FREE_BYTES,
        Unit::Bytes,
        "Free bytes on this node's dst file system"
    );
    describe_gauge!(
        DISK_TOTAL_BYTES,
        Unit::Bytes,
        "Size of this node's dst file system"
    );
}
