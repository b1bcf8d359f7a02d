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

mod names;
pub mod pipeline;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures_util::future::BoxFuture;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::asciicast::{Limits, Validator};
use crate::metrics as m;
use crate::storage::index::{SessionFilter, SessionRecord, SessionState};
use crate::storage::{Storage, StorageError, SyncHandle};

pub use self::pipeline::{Outcome, Session};

/// Names tried for recordings started in the same second before a session is refused.
const MAX_NAME_ATTEMPTS: u32 = 10_000;

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
    #[error("unknown session: {0}")]
    UnknownSession(String),
    #[error("session can't be taken: {0}")]
    Conflict(String),
    #[error("recording name taken in the recorder set: {0}")]
    NameTaken(String),
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
            Refusal::UnknownSession(_) => "unknown_session",
            Refusal::Conflict(_) => "conflict",
            Refusal::NameTaken(_) => "name_taken",
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

/// What a session's owner needs to start replicating it.
pub struct ReplicateRequest {
    pub id: String,
    pub epoch: u64,
    /// Owner first.
    pub replicas: Vec<u64>,
    pub node_dir: String,
    pub file_name: String,
    /// The owner's recording, read by the senders.
    pub file: SyncHandle,
    /// How far the owner has written.
    pub written: watch::Receiver<u64>,
}

/// What a takeover granted: the new epoch and where the recording continues.
#[derive(Debug, Clone)]
pub struct TakenOver {
    pub epoch: u64,
    pub replicas: Vec<u64>,
    pub node_dir: String,
    pub file_name: String,
    pub started_at_ms: i64,
    /// The longest durable prefix on a majority; the local copy holds exactly that now.
    pub resume_at: u64,
}

/// The data plane of one session, as the session layer sees it.
pub trait Replicator: Send + Sync {
    /// Replica set size, owner included.
    fn set_size(&self) -> usize;
    /// Durable offsets the other replicas reported, by node.
    fn offsets(&self) -> watch::Receiver<BTreeMap<u64, u64>>;
    /// Cancelled once another node holds a newer epoch for the session.
    fn deposed(&self) -> CancellationToken;
    /// Seals the copies at `len`; returns how many replicas confirmed.
    fn seal(&self, len: u64, state: SessionState) -> BoxFuture<'_, usize>;
}

/// Who may start sessions, and who else keeps their bytes. A standalone node decides
/// alone; a recorder-set node asks Raft and replicates.
pub trait Admission: Send + Sync + 'static {
    /// Cheap local checks (disk state, known leader) that refuse in microseconds.
    fn check(&self) -> Result<(), Refusal>;
    /// Claims the session for this node; bounded in time by the implementation.
    fn claim(&self, request: ClaimRequest) -> BoxFuture<'_, Result<Claim, Refusal>>;
    /// Starts replicating a claimed session (None: no replicas).
    fn replicate(&self, request: ReplicateRequest) -> Option<Box<dyn Replicator>>;
    /// Takes over a live session owned elsewhere (a client resumed here).
    fn take_over(&self, id: &str) -> BoxFuture<'_, Result<TakenOver, Refusal>>;
    /// Tells the set the session ended (best effort; a later sweep catches misses).
    /// `orphaned`: sealed by a replica after its owner and client were gone.
    fn ended(
        &self,
        id: String,
        epoch: u64,
        state: SessionState,
        orphaned: bool,
    ) -> BoxFuture<'_, ()>;
    /// Whether a session cut short stays live for another node to continue (a recorder
    /// set) or ends here (a standalone node).
    fn survives_node_loss(&self) -> bool;
    /// This node's tag in recording names (its node id in a set), so that suffixed names
    /// picked by different nodes never collide.
    fn name_tag(&self) -> Option<u64>;
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

    fn replicate(&self, _request: ReplicateRequest) -> Option<Box<dyn Replicator>> {
        None
    }

    fn take_over(&self, id: &str) -> BoxFuture<'_, Result<TakenOver, Refusal>> {
        let id = id.to_string();
        Box::pin(async move {
            Err(Refusal::UnknownSession(format!(
                "{id} (a standalone recorder can't resume sessions)"
            )))
        })
    }

    fn ended(
        &self,
        _id: String,
        _epoch: u64,
        _state: SessionState,
        _orphaned: bool,
    ) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn survives_node_loss(&self) -> bool {
        false
    }

    fn name_tag(&self) -> Option<u64> {
        None
    }
}

/// Sessions being claimed or taken over here, with how many attempts are in flight for
/// each: two overlapping attempts for one id (a client retrying while its first request
/// still waits on Raft) must not clear each other's mark.
type ArrivingSet = Mutex<HashMap<String, usize>>;

/// Marks a session as arriving here for as long as it lives (a claim or takeover in flight).
struct Arriving<'a> {
    set: &'a ArrivingSet,
    id: String,
}

impl<'a> Arriving<'a> {
    fn mark(set: &'a ArrivingSet, id: &str) -> Self {
        *set.lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_insert(0) += 1;
        Arriving {
            set,
            id: id.to_string(),
        }
    }
}

impl Drop for Arriving<'_> {
    fn drop(&mut self) {
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = set.get_mut(&self.id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                set.remove(&self.id);
            }
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
    /// Sessions being claimed or taken over here, before they are live. Their owner in the
    /// cluster state is already this node, so without this set the orphan sweeper would
    /// see an owner that doesn't stream them and adopt them under the arriving client.
    arriving: ArrivingSet,
    /// Cancelled on shutdown: every session stops reading, syncs, and is marked.
    shutdown: CancellationToken,
    /// Standalone, or the recorder set's claims through Raft.
    admission: Arc<dyn Admission>,
    /// Cancelled to hand every live session off to another node (disk full); replaced by
    /// a fresh token for the sessions that start afterwards.
    handoff: Mutex<CancellationToken>,
    /// Where each (SSH server, second)'s name series goes on, so concurrent admissions
    /// here never claim the same name and a busy second is not probed from the start.
    names: Mutex<names::NameCursor>,
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
            arriving: Mutex::new(HashMap::new()),
            shutdown,
            admission,
            handoff: Mutex::new(CancellationToken::new()),
            names: Mutex::new(names::NameCursor::default()),
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
        client_id: Option<String>,
    ) -> Result<Session, Refusal> {
        let permit = self.admit(node_dir)?;
        let chosen_by_client = client_id.is_some();
        let id = client_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.create(id, node_dir, protocol, permit, chosen_by_client)
            .await
            .map_err(|r| self.refused(r, node_dir))
    }

    /// A new session may not take an id this node already knows: live, arriving, or in
    /// the index (an ended session, or a copy). Without this a standalone node would
    /// replace the earlier session's index record (the index is keyed by id); in a set
    /// the claim refuses it too, and both answer `409` (docs/protocol.md).
    async fn refuse_known_id(&self, id: &str) -> Result<(), Refusal> {
        let arriving_elsewhere = self
            .arriving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .is_some_and(|count| *count > 1);
        if arriving_elsewhere || self.is_live(id) || self.storage.get_record(id).await?.is_some() {
            return Err(Refusal::Conflict(format!(
                "session {id} already exists; a client continues one with Quorumcast-Resume"
            )));
        }
        Ok(())
    }

    /// Continues session `id` here after its owner was lost: a takeover through the
    /// recorder set, then a session whose bytes continue at the returned offset.
    pub async fn resume(
        self: &Arc<Self>,
        id: &str,
        node_dir: &str,
        protocol: &str,
    ) -> Result<Session, Refusal> {
        let permit = self.admit(node_dir)?;
        self.continue_here(id, protocol, permit, "client_resume")
            .await
            .map_err(|r| self.refused(r, node_dir))
    }

    /// Takes a session over without a client (its owner and client are gone) so that it
    /// can be sealed: the orphan sweeper's entry point.
    pub async fn adopt_orphan(self: &Arc<Self>, id: &str) -> Result<Session, Refusal> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::TooManySessions(self.config.max_sessions))?;
        self.continue_here(id, "orphan", permit, "orphan").await
    }

    fn refused(&self, r: Refusal, node_dir: &str) -> Refusal {
        metrics::counter!(m::REFUSALS, "reason" => r.label()).increment(1);
        tracing::warn!(reason = %r, node_dir, "refusing session");
        r
    }

    /// The fast checks every new or resumed session passes first.
    fn admit(&self, node_dir: &str) -> Result<OwnedSemaphorePermit, Refusal> {
        if self.shutdown.is_cancelled() {
            return Err(self.refused(Refusal::ShuttingDown, node_dir));
        }
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            self.refused(Refusal::TooManySessions(self.config.max_sessions), node_dir)
        })?;
        self.admission
            .check()
            .map_err(|r| self.refused(r, node_dir))?;
        Ok(permit)
    }

    async fn create(
        self: &Arc<Self>,
        id: String,
        node_dir: &str,
        protocol: &str,
        permit: OwnedSemaphorePermit,
        chosen_by_client: bool,
    ) -> Result<Session, Refusal> {
        let _arriving = Arriving::mark(&self.arriving, &id);
        if chosen_by_client {
            self.refuse_known_id(&id).await?;
        }
        let started = Utc::now();
        let (claim, recording) = self.reserve_name(&id, node_dir, started).await?;
        let mut record = SessionRecord::new_live(
            id,
            node_dir.to_string(),
            recording.rel_path().to_string(),
            protocol,
        );
        record.started_at = started;
        record.epoch = claim.epoch;
        record.replicas = claim.replicas;
        timed_step("index", self.storage.put_record(record.clone())).await?;
        Ok(self.start(
            record,
            recording,
            permit,
            protocol,
            Validator::new(self.config.limits),
        ))
    }

    /// Picks the recording's name and claims the session under it. Every replica stores
    /// the recording at the same path, so the name is reserved through the claim (unique
    /// in the set) before the file exists; names this node's files already use are
    /// skipped, suffixed names carry this node's tag, and each admission here gets its
    /// own candidate from [`names::NameCursor`].
    async fn reserve_name(
        &self,
        id: &str,
        node_dir: &str,
        started: chrono::DateTime<Utc>,
    ) -> Result<(Claim, crate::storage::RecordingFile), Refusal> {
        let stem = crate::storage::layout::recording_stem(started);
        let tag = self.admission.name_tag();
        for _ in 0..MAX_NAME_ATTEMPTS {
            let n = self.next_name_position(node_dir, &stem);
            let name = crate::storage::layout::candidate_name(&stem, tag, n);
            let taken_here =
                timed_step("name_check", self.storage.recording_exists(node_dir, &name)).await;
            if taken_here {
                continue;
            }
            let request = ClaimRequest {
                id: id.to_string(),
                node_dir: node_dir.to_string(),
                file_name: name.clone(),
                started_at_ms: started.timestamp_millis(),
            };
            let claim = match timed_step("claim", self.admission.claim(request)).await {
                Ok(claim) => claim,
                Err(Refusal::NameTaken(_)) => continue,
                Err(refusal) => return Err(refusal),
            };
            let created = timed_step(
                "create_file",
                self.storage.create_recording_named(node_dir, &name),
            );
            match created.await {
                Ok(recording) => return Ok((claim, recording)),
                // A standalone node raced itself for the name: the next one.
                Err(StorageError::Exists(_)) if !self.admission.survives_node_loss() => continue,
                Err(e) => {
                    let admission = self.admission.clone();
                    admission
                        .ended(id.to_string(), claim.epoch, SessionState::Aborted, false)
                        .await;
                    return Err(e.into());
                }
            }
        }
        Err(Refusal::Storage(StorageError::Exists(
            self.storage.dst().join(node_dir).join(stem),
        )))
    }

    fn next_name_position(&self, node_dir: &str, stem: &str) -> u32 {
        // A poisoned lock only means a panic elsewhere mid-`take`; the cursor is still a
        // valid (if forgetful) state, and forgetting is safe.
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names.take(node_dir, stem)
    }

    async fn continue_here(
        self: &Arc<Self>,
        id: &str,
        protocol: &str,
        permit: OwnedSemaphorePermit,
        reason: &'static str,
    ) -> Result<Session, Refusal> {
        let _arriving = Arriving::mark(&self.arriving, id);
        let started = std::time::Instant::now();
        let granted = self.admission.take_over(id).await?;
        let recording = self
            .storage
            .open_copy(&granted.node_dir, &granted.file_name)
            .await?;
        if recording.written() != granted.resume_at {
            return Err(Refusal::Conflict(format!(
                "local copy has {} bytes, the set agreed on {}",
                recording.written(),
                granted.resume_at
            )));
        }
        let validator = self.revalidate(&recording, granted.resume_at).await?;
        let mut record = match self.storage.get_record(id).await? {
            Some(record) => record,
            None => SessionRecord::new_live(
                id.to_string(),
                granted.node_dir.clone(),
                recording.rel_path().to_string(),
                protocol,
            ),
        };
        record.state = SessionState::Live;
        record.ended_at = None;
        record.problem = None;
        record.protocol = protocol.to_string();
        record.epoch = granted.epoch;
        record.replicas = granted.replicas.clone();
        record.bytes = granted.resume_at;
        self.storage.put_record(record.clone()).await?;
        metrics::counter!(m::TAKEOVERS, "reason" => reason).increment(1);
        metrics::histogram!(m::TAKEOVER_SECONDS).record(started.elapsed().as_secs_f64());
        tracing::info!(%id, epoch = granted.epoch, resume_at = granted.resume_at,
            took_ms = started.elapsed().as_millis() as u64, reason, "took the session over");
        Ok(self.start(record, recording, permit, protocol, validator))
    }

    /// Rebuilds the content check's state from the bytes already recorded.
    async fn revalidate(
        &self,
        recording: &crate::storage::RecordingFile,
        upto: u64,
    ) -> Result<Validator, Refusal> {
        let handle = recording.sync_handle();
        let limits = self.config.limits;
        let validator = tokio::task::spawn_blocking(move || -> Result<Validator, StorageError> {
            let mut validator = Validator::new(limits);
            let mut offset = 0;
            while offset < upto {
                let chunk = handle.read_at(offset, ((upto - offset) as usize).min(1024 * 1024))?;
                if chunk.is_empty() {
                    break;
                }
                offset += chunk.len() as u64;
                validator.feed(&chunk);
            }
            Ok(validator)
        })
        .await
        .map_err(StorageError::from)??;
        Ok(validator)
    }

    fn start(
        self: &Arc<Self>,
        record: SessionRecord,
        recording: crate::storage::RecordingFile,
        permit: OwnedSemaphorePermit,
        protocol: &str,
        validator: Validator,
    ) -> Session {
        let counters = Arc::new(LiveCounters::default());
        counters
            .written
            .store(recording.written(), Ordering::Relaxed);
        self.lock_live().insert(record.id.clone(), counters.clone());
        metrics::counter!(m::SESSIONS_TOTAL, "protocol" => protocol.to_string()).increment(1);
        metrics::gauge!(m::SESSIONS_LIVE).increment(1.0);
        tracing::info!(id = %record.id, path = %record.path, protocol, "session started");
        Session::new(self.clone(), record, recording, counters, permit, validator)
    }

    /// Ends every live session here with "reconnect elsewhere" (their clients resume on
    /// another node of the set). Sessions that start later are not affected.
    pub fn hand_off_all(&self, reason: &str) {
        let token = {
            let mut current = self.handoff.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *current)
        };
        tracing::warn!(
            live = self.live_count(),
            reason,
            "handing every live session off"
        );
        token.cancel();
    }

    pub(super) fn handoff_token(&self) -> CancellationToken {
        self.handoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether a session is streaming into this node now.
    pub fn is_live(&self, id: &str) -> bool {
        self.lock_live().contains_key(id)
    }

    /// Live here, or being claimed or taken over here right now: either way not an orphan.
    pub fn is_here(&self, id: &str) -> bool {
        self.is_live(id)
            || self
                .arriving
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(id)
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

/// Awaits `step` of an admission and records how long it took
/// ([`m::ADMISSION_STEP_SECONDS`]), whatever its outcome.
async fn timed_step<T>(step: &'static str, work: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = work.await;
    metrics::histogram!(m::ADMISSION_STEP_SECONDS, "step" => step)
        .record(started.elapsed().as_secs_f64());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_arrivals_of_one_id_keep_it_marked_until_the_last_ends() {
        let set = ArrivingSet::default();
        let here = |set: &ArrivingSet| set.lock().expect("lock").contains_key("s");
        let first = Arriving::mark(&set, "s");
        let second = Arriving::mark(&set, "s");
        drop(first);
        assert!(here(&set), "the second attempt is still in flight");
        drop(second);
        assert!(!here(&set));
        assert!(set.lock().expect("lock").is_empty(), "no count left behind");
    }

    /// Admission whose claims and takeovers wait until the test lets them through.
    struct Gate {
        open: tokio::sync::Semaphore,
    }

    impl Admission for Gate {
        fn check(&self) -> Result<(), Refusal> {
            Ok(())
        }

        fn claim(&self, _request: ClaimRequest) -> BoxFuture<'_, Result<Claim, Refusal>> {
            Box::pin(async {
                let _pass = self.open.acquire().await;
                Ok(Claim {
                    epoch: 1,
                    replicas: Vec::new(),
                })
            })
        }

        fn replicate(&self, _request: ReplicateRequest) -> Option<Box<dyn Replicator>> {
            None
        }

        fn take_over(&self, id: &str) -> BoxFuture<'_, Result<TakenOver, Refusal>> {
            let id = id.to_string();
            Box::pin(async move {
                let _pass = self.open.acquire().await;
                Err(Refusal::Conflict(format!("{id}: refused by the test")))
            })
        }

        fn ended(&self, _: String, _: u64, _: SessionState, _: bool) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }

        fn survives_node_loss(&self) -> bool {
            false
        }

        fn name_tag(&self) -> Option<u64> {
            None
        }
    }

    fn manager(dir: &std::path::Path) -> (Arc<SessionManager>, Arc<Gate>) {
        let storage = Storage::open(&dir.join("dst"), &dir.join("state")).expect("storage");
        let gate = Arc::new(Gate {
            open: tokio::sync::Semaphore::new(0),
        });
        let mgr = SessionManager::new(
            storage,
            SessionConfig::default(),
            CancellationToken::new(),
            gate.clone(),
        );
        (mgr, gate)
    }

    async fn until(what: impl Fn() -> bool) {
        for _ in 0..1000 {
            if what() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("condition not reached in 1 s");
    }

    /// Regression (chaos-tests rolling-restart, seed 9001): while a claim or takeover is in
    /// flight the cluster already names this node as the owner, but nothing streams yet;
    /// the orphan sweeper must see such a session as here, not as an orphan.
    #[tokio::test]
    async fn a_session_being_claimed_is_here_before_it_is_live() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mgr, gate) = manager(dir.path());
        let opening = tokio::spawn({
            let mgr = mgr.clone();
            async move { mgr.open("n", "v2", Some("s1".into())).await }
        });
        until(|| mgr.is_here("s1")).await;
        assert!(!mgr.is_live("s1"));
        gate.open.add_permits(1);
        let session = opening.await.expect("join").expect("open");
        assert!(mgr.is_live("s1") && mgr.is_here("s1"));
        let outcome = session
            .run(futures_util::stream::empty::<Result<bytes::Bytes, String>>())
            .await;
        assert_eq!(outcome.record.id, "s1");
        assert!(!mgr.is_here("s1"));
    }

    #[tokio::test]
    async fn a_session_being_taken_over_is_here_until_the_takeover_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mgr, gate) = manager(dir.path());
        let resuming = tokio::spawn({
            let mgr = mgr.clone();
            async move { mgr.resume("s2", "n", "v2").await.map(|_| ()) }
        });
        until(|| mgr.is_here("s2")).await;
        assert!(!mgr.is_live("s2"));
        gate.open.add_permits(1);
        let refused = resuming.await.expect("join");
        assert!(matches!(refused, Err(Refusal::Conflict(_))), "{refused:?}");
        assert!(!mgr.is_here("s2"));
    }
}
