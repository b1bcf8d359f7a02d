//! Sessions: admission, the life of one recording, and what an ack means.
//!
//! This module owns the decision to take a recording (admission, with fast refusals),
//! the pipeline that moves a recording's bytes from the ingest layer into storage
//! ([`pipeline`]), the *durable offset* that acks report, and each session's final
//! state. It knows nothing of HTTP (ingest turns requests into byte streams and durable
//! offsets into frames) and nothing of files (storage does).
//!
//! Two seams face the cluster. [`Admission`] decides whether a session may start (and, in
//! a recorder set, claims it through Raft, fencing epoch and replica set included); a
//! standalone node uses [`Standalone`]. And a session appends to its recording and learns
//! its durable offset from a sync loop: replication slots in there, making "durable" mean
//! "durable on a majority" without changing ingest.

pub mod pipeline;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures_util::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::asciicast::Limits;
use crate::metrics as m;
use crate::storage::index::{SessionFilter, SessionRecord, SessionState};
use crate::storage::{Storage, StorageError};

pub use self::pipeline::{Outcome, Session};

/// Knobs of the session layer, all documented in `quorumcast node --help`.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Longest gap between two v2 ack frames while idle (the client gives up after 30 s).
    pub ack_interval: Duration,
    /// A session whose header line is not complete by then is cut and marked invalid.
    pub header_timeout: Duration,
    /// Concurrent recordings; more are refused with 503 so clients try the next node.
    pub max_sessions: usize,
    /// Line and header size limits of the content check.
    pub limits: Limits,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ack_interval: Duration::from_secs(1),
            header_timeout: Duration::from_secs(10),
            max_sessions: 10_000,
            limits: Limits::default(),
        }
    }
}

/// Why a session was not taken. Each is answered with 503 and counted by [`Refusal::label`].
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("recorder is at its limit of {0} concurrent sessions")]
    TooManySessions(usize),
    #[error("recorder is shutting down")]
    ShuttingDown,
    #[error("recorder cannot create the recording: {0}")]
    Storage(#[from] StorageError),
    #[error("recorder set has no quorum here: {0}")]
    NoQuorum(String),
    #[error("recorder disk is under pressure: {0}")]
    DiskPressure(String),
    #[error("recorder set did not grant the session: {0}")]
    ClaimFailed(String),
}

impl Refusal {
    /// Low-cardinality label for the refusals metric.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::TooManySessions(_) => "too_many_sessions",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::Storage(_) => "storage_error",
            Refusal::NoQuorum(_) => "no_quorum",
            Refusal::DiskPressure(_) => "disk_pressure",
            Refusal::ClaimFailed(_) => "claim_failed",
        }
    }
}

/// What a node asks before a session starts.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub id: String,
    pub node_dir: String,
    pub file_name: String,
    pub started_at_ms: i64,
}

/// What the recorder set granted: the fencing epoch and who keeps copies (owner first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub epoch: u64,
    pub replicas: Vec<u64>,
}

/// Who may start sessions. A standalone node always may; a recorder-set node asks Raft.
pub trait Admission: Send + Sync + 'static {
    /// Cheap local checks (disk state, known leader) that refuse in microseconds.
    fn check(&self) -> Result<(), Refusal>;
    /// Claims the session for this node; bounded in time by the implementation.
    fn claim(&self, request: ClaimRequest) -> BoxFuture<'_, Result<Claim, Refusal>>;
    /// Tells the set the session ended (best effort; a later sweep catches misses).
    fn ended(&self, id: String, epoch: u64, state: SessionState) -> BoxFuture<'_, ()>;
}

/// A node on its own: every session is its own, epoch 1, no replicas.
pub struct Standalone;

impl Admission for Standalone {
    fn check(&self) -> Result<(), Refusal> {
        Ok(())
    }

    fn claim(&self, _request: ClaimRequest) -> BoxFuture<'_, Result<Claim, Refusal>> {
        Box::pin(async {
            Ok(Claim {
                epoch: 1,
                replicas: Vec::new(),
            })
        })
    }

    fn ended(&self, _id: String, _epoch: u64, _state: SessionState) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Live byte counts of one session, read by listings while the session runs.
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Bytes received and appended (page cache).
    pub written: AtomicU64,
    /// Bytes on stable storage: what acks report.
    pub durable: AtomicU64,
}

/// Takes sessions, tracks the live ones, and ends them all on shutdown.
pub struct SessionManager {
    storage: Storage,
    config: SessionConfig,
    /// Admission bound: one permit per live session.
    permits: Arc<Semaphore>,
    /// Live sessions by id, for listings; entries are removed when a session ends.
    live: Mutex<HashMap<String, Arc<LiveCounters>>>,
    /// Cancelled on shutdown: every session stops reading, syncs, and is marked.
    shutdown: CancellationToken,
    /// Standalone, or the recorder set's claims through Raft.
    admission: Arc<dyn Admission>,
}

impl SessionManager {
    pub fn new(
        storage: Storage,
        config: SessionConfig,
        shutdown: CancellationToken,
        admission: Arc<dyn Admission>,
    ) -> Arc<Self> {
        Arc::new(SessionManager {
            permits: Arc::new(Semaphore::new(config.max_sessions)),
            storage,
            config,
            live: Mutex::new(HashMap::new()),
            shutdown,
            admission,
        })
    }

    pub fn admission(&self) -> &Arc<dyn Admission> {
        &self.admission
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Admits a new recording from `node_dir` (sanitized) or says why not, quickly.
    ///
    /// On success the recording file exists and the index lists it as `live`, so a crash
    /// from here on leaves a findable, `aborted` session.
    pub async fn open(
        self: &Arc<Self>,
        node_dir: &str,
        protocol: &str,
    ) -> Result<Session, Refusal> {
        let refused = |r: Refusal| {
            metrics::counter!(m::REFUSALS, "reason" => r.label()).increment(1);
            tracing::warn!(reason = %r, node_dir, "refusing session");
            r
        };
        if self.shutdown.is_cancelled() {
            return Err(refused(Refusal::ShuttingDown));
        }
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| refused(Refusal::TooManySessions(self.config.max_sessions)))?;
        self.admission.check().map_err(refused)?;
        self.create(node_dir, protocol, permit)
            .await
            .map_err(refused)
    }

    async fn create(
        self: &Arc<Self>,
        node_dir: &str,
        protocol: &str,
        permit: OwnedSemaphorePermit,
    ) -> Result<Session, Refusal> {
        let started = Utc::now();
        let recording = self.storage.create_recording(node_dir, started).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let request = ClaimRequest {
            id: id.clone(),
            node_dir: node_dir.to_string(),
            file_name: recording.file_name().to_string(),
            started_at_ms: started.timestamp_millis(),
        };
        let claim = match self.admission.claim(request).await {
            Ok(claim) => claim,
            Err(refusal) => {
                self.storage.discard(recording).await;
                return Err(refusal);
            }
        };
        let mut record = SessionRecord::new_live(
            id.clone(),
            node_dir.to_string(),
            recording.rel_path().to_string(),
            protocol,
        );
        record.started_at = started;
        record.epoch = claim.epoch;
        record.replicas = claim.replicas;
        self.storage.put_record(record.clone()).await?;
        let counters = Arc::new(LiveCounters::default());
        self.lock_live().insert(id, counters.clone());
        metrics::counter!(m::SESSIONS_TOTAL, "protocol" => protocol.to_string()).increment(1);
        metrics::gauge!(m::SESSIONS_LIVE).increment(1.0);
        tracing::info!(id = %record.id, path = %record.path, protocol, "session started");
        Ok(Session::new(
            self.clone(),
            record,
            recording,
            counters,
            permit,
        ))
    }

    /// Called by a session as it ends, after its final record is stored.
    fn forget(&self, id: &str) {
        self.lock_live().remove(id);
        metrics::gauge!(m::SESSIONS_LIVE).decrement(1.0);
    }

    /// Number of sessions streaming now.
    pub fn live_count(&self) -> usize {
        self.lock_live().len()
    }

    /// The index, newest first, with live sessions' byte counts brought up to date.
    pub async fn list(&self, filter: SessionFilter) -> Result<Vec<SessionRecord>, StorageError> {
        let mut records = self.storage.list_records(filter).await?;
        let live = self.lock_live();
        for record in &mut records {
            if let Some(counters) = live.get(&record.id) {
                record.bytes = counters.written.load(Ordering::Relaxed);
            }
        }
        Ok(records)
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LiveCounters>>> {
        // A panic while holding this lock leaves a plain map that is still consistent.
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
