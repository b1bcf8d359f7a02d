//! A running recorder node: opens storage, recovers from a crash, serves, shuts down.
//!
//! Owns start-up order and shutdown order. Shutdown: stop accepting, let every session
//! stop reading, sync and mark itself, let connections finish, then return.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::admission::ClusterAdmission;
use crate::cluster::member::Member;
use crate::cluster::ClusterError;
use crate::config::NodeConfig;
use crate::ingest::{self, identity::Identity, AppState};
use crate::session::SessionManager;
use crate::storage::{Storage, StorageError};

/// How long shutdown waits for session tasks after connections are closed.
const TASK_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs a node until `shutdown` is cancelled. Prints `listening on http://ADDR` on stdout
/// once it accepts connections (tests and scripts wait for that line).
pub async fn run(
    config: NodeConfig,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let storage = Storage::open(&config.dst, &config.statedir)?;
    let storage_for_recovery = storage.clone();
    let recovered =
        tokio::task::spawn_blocking(move || storage_for_recovery.recover_crashed_sessions())
            .await
            .map_err(StorageError::from)??;
    for record in &recovered {
        tracing::warn!(id = %record.id, path = %record.path, bytes = record.bytes,
            "session was live when the recorder stopped; marked aborted, bytes kept");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| NodeError::Listen {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| NodeError::Listen {
        addr: config.listen,
        source,
    })?;
    let tracker = TaskTracker::new();
    let cluster = match &config.cluster {
        Some(cluster) => {
            let member = Member::start(
                cluster.clone(),
                &config.statedir,
                storage.clone(),
                shutdown.clone(),
                &tracker,
            )
            .await?;
            Some(member)
        }
        None => None,
    };
    let admission: Arc<dyn crate::session::Admission> = match &cluster {
        Some(member) => Arc::new(ClusterAdmission {
            member: member.clone(),
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
        }),
        None => Arc::new(crate::session::Standalone),
    };
    let sessions =
        SessionManager::new(storage, config.session.clone(), shutdown.clone(), admission);
    if let Some(member) = &cluster {
        tracker.spawn(hand_off_when_full(
            member.local_disk_watch(),
            sessions.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(member) = &cluster {
        tracker.spawn(crate::replication::repair::run(
            member.clone(),
            member.copies.clone(),
            shutdown.clone(),
        ));
    }
    if let (Some(member), Some(cluster)) = (&cluster, &config.cluster) {
        tracker.spawn(crate::replication::orphans::sweep(
            member.clone(),
            member.copies.clone(),
            sessions.clone(),
            cluster.orphan_timeout,
            shutdown.clone(),
        ));
    }
    let identity = match &config.tailscaled_socket {
        Some(socket) => Identity::Tailscaled {
            socket: socket.clone(),
        },
        None => Identity::PeerAddress,
    };
    let state = AppState {
        sessions,
        identity: Arc::new(identity),
        metrics,
        hostname: config.hostname.clone().into(),
        tracker: tracker.clone(),
        cluster,
    };
    tracing::info!(%local, dst = %config.dst.display(), statedir = %config.statedir.display(), "recorder node started");
    if !crate::metrics::lifo_slot_disabled() {
        tracing::warn!(
            "built without --cfg tokio_unstable (RUSTFLAGS replaced .cargo/config.toml's): \
             tokio's LIFO slot is on, one busy stream ingests ~15 % slower (BENCHMARKS.md)"
        );
    }
    println!("listening on http://{local}");
    ingest::serve(listener, ingest::router(state), shutdown, tracker.clone()).await;
    tracker.close();
    if tokio::time::timeout(TASK_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some session tasks did not finish within the shutdown grace");
    }
    tracing::info!("recorder node stopped");
    Ok(())
}

/// A node whose disk becomes full gives its live sessions to the rest of the set before
/// it runs out of space (its clients resume elsewhere; it is dropped from their replicas).
async fn hand_off_when_full(
    mut disk: tokio::sync::watch::Receiver<crate::cluster::types::DiskState>,
    sessions: Arc<SessionManager>,
    shutdown: CancellationToken,
) {
    loop {
        if *disk.borrow_and_update() == crate::cluster::types::DiskState::Full {
            sessions.hand_off_all("dst file system is full");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = disk.changed() => if changed.is_err() { return },
        }
    }
}
