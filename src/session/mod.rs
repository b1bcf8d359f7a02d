//! Sessions: admission, the life of one recording, and what an ack means.
//!
//! This module owns the decision to take a recording (admission, with fast refusals),
//! the pipeline that moves a recording's bytes from the ingest layer into storage
//! ([`pipeline`]), the *durable offset* that acks report, and each session's final
//! state. It knows nothing of HTTP (ingest turns requests into byte streams and durable
//! offsets into frames) and nothing of files (storage does).
//!
//! The seam for replication: a session appends to its recording and learns its durable
//! offset from a sync loop. Replication slots in there, making "durable" mean "durable
//! on a majority" without changing ingest.

pub mod pipeline;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::asciicast::Limits;
use crate::metrics as m;
use crate::storage::index::{SessionFilter, SessionRecord};
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
}

impl Refusal {
    /// Low-cardinality label for the refusals metric.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::TooManySessions(_) => "too_many_sessions",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::Storage(_) => "storage_error",
        }
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
}

impl SessionManager {
    pub fn new(storage: Storage, config: SessionConfig, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(SessionManager {
            permits: Arc::new(Semaphore::new(config.max_sessions)),
            storage,
            config,
            live: Mutex::new(HashMap::new()),
            shutdown,
        })
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
        self.create(node_dir, protocol, permit)
            .await
            .map_err(|e| refused(e.into()))
    }

    async fn create(
        self: &Arc<Self>,
        node_dir: &str,
        protocol: &str,
        permit: OwnedSemaphorePermit,
    ) -> Result<Session, StorageError> {
        let recording = self.storage.create_recording(node_dir, Utc::now()).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let record = SessionRecord::new_live(
            id.clone(),
            node_dir.to_string(),
            recording.rel_path().to_string(),
            protocol,
        );
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
