//! The durable session index: one record per recording, kept in redb under statedir.
//!
//! It owns the [`SessionRecord`] format and its persistence: a few writes per session
//! lifetime, never per chunk, each durable when it returns. Writes from running sessions
//! go through one writer thread that commits every record queued meanwhile in one redb
//! transaction (one fsync and one copy of the touched pages per round, not per record),
//! as the group commit does for recordings. Records that a crash may lose ([`Index::queue`]:
//! a live session's header, a replica's records of its copy, which the repair pass rebuilds
//! from peers) don't start a round of their own: they ride the next one a waiter starts, or
//! go after [`LAZY_COMMIT_DELAY`]. Until committed they are read from memory, so readers
//! never see an older record than the last one written. It does not own live byte counts:
//! those live in the session registry and are overlaid on listings.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::metrics as m;

use crate::asciicast::{Header, Problem};

use super::StorageError;

/// id → JSON-encoded [`SessionRecord`]. JSON keeps records readable and lets fields be
/// added with `#[serde(default)]`; `format` versions incompatible changes.
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions_v1");

/// Current record format.
const FORMAT: u32 = 1;

/// Queue bound of the writer: a session has at most three records queued on a node (an
/// owner's header and one awaited write; a replica's two records of its copy), so this
/// covers the default session limit (10 000) with room to spare; past it writers wait
/// (back-pressure). Slots cost nothing until used.
pub const WRITE_QUEUE_BOUND: usize = 32 * 1024;

/// The longest a record nobody waits for stays uncommitted when no waiter starts a round
/// meanwhile: what a crash may lose of such records, and what batching them saves (each
/// round is an fsync and a rewrite of the touched pages).
pub const LAZY_COMMIT_DELAY: Duration = Duration::from_millis(50);

/// Records committed together at most, so that one round stays short and its waiters
/// are answered soon; the rest of the queue goes in the next round.
const MAX_WRITE_BATCH: usize = 512;

/// Lifecycle of a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Bytes are still arriving.
    Live,
    /// The client ended the body cleanly and the content is valid asciicast v2.
    Complete,
    /// The stream was cut (client gone, recorder stopped or crashed); bytes kept.
    Aborted,
    /// The stream ended but the content is not valid asciicast v2; bytes kept.
    Invalid,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Live => "live",
            SessionState::Complete => "complete",
            SessionState::Aborted => "aborted",
            SessionState::Invalid => "invalid",
        }
    }

    pub fn parse(text: &str) -> Option<SessionState> {
        [
            SessionState::Live,
            SessionState::Complete,
            SessionState::Aborted,
            SessionState::Invalid,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// Everything the index knows about one recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Record format version, see [`FORMAT`].
    pub format: u32,
    pub id: String,
    /// The connecting SSH server's identity (sanitized), the recording's parent directory.
    pub node_dir: String,
    /// Path relative to dst, e.g. `100.64.0.1/2026-11-25T15:58:29Z.cast`.
    pub path: String,
    /// Wire protocol the client used: `v1` or `v2`.
    pub protocol: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Bytes stored. For a live session this is a lower bound; the registry has the live count.
    pub bytes: u64,
    pub state: SessionState,
    /// First problem with the content or the stream, if any.
    pub problem: Option<Problem>,
    /// Header fields, once the header line arrived and parsed.
    pub header: Option<Header>,
    /// Fencing epoch the recorder set granted (1 on a standalone node).
    #[serde(default)]
    pub epoch: u64,
    /// Nodes keeping copies, owner first (empty on a standalone node).
    #[serde(default)]
    pub replicas: Vec<u64>,
}

impl SessionRecord {
    pub fn new_live(id: String, node_dir: String, path: String, protocol: &str) -> Self {
        SessionRecord {
            format: FORMAT,
            id,
            node_dir,
            path,
            protocol: protocol.to_string(),
            started_at: Utc::now(),
            ended_at: None,
            bytes: 0,
            state: SessionState::Live,
            problem: None,
            header: None,
            epoch: 1,
            replicas: Vec::new(),
        }
    }
}

/// Filters of `GET /api/v1/sessions`; `None` matches everything.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct SessionFilter {
    pub node: Option<String>,
    /// Matches `sshUser` or `localUser`.
    pub user: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub state: Option<String>,
}

impl SessionFilter {
    pub fn matches(&self, r: &SessionRecord) -> bool {
        let user_matches = |u: &str| {
            r.header.as_ref().is_some_and(|h| {
                h.ssh_user.as_deref() == Some(u) || h.local_user.as_deref() == Some(u)
            })
        };
        self.node.as_deref().is_none_or(|n| n == r.node_dir)
            && self.user.as_deref().is_none_or(user_matches)
            && self.since.is_none_or(|t| r.started_at >= t)
            && self.until.is_none_or(|t| r.started_at <= t)
            && self.state.as_deref().is_none_or(|s| s == r.state.as_str())
    }
}

/// Handle to the index database. Cheap to clone. Reads and [`Index::put`] block (they
/// go through `spawn_blocking` in [`super::Storage`]); [`Index::store`] is async and
/// rides the writer's next round.
#[derive(Clone)]
pub struct Index {
    db: Arc<Database>,
    /// The writer thread's queue; the thread ends (and is joined) with the last handle.
    writer: Arc<Writer>,
    /// Records queued and not committed yet, the newest per session, read before the
    /// database. At most one per session, and only while queued: bounded by the queue.
    pending: Arc<Pending>,
}

/// See [`Index::pending`].
#[derive(Default)]
struct Pending {
    records: Mutex<HashMap<String, PendingRecord>>,
    /// Numbers the writes, so that a commit forgets a pending record only if no newer
    /// write of its session was queued meanwhile.
    next_seq: AtomicU64,
}

struct PendingRecord {
    seq: u64,
    value: Vec<u8>,
}

impl Pending {
    /// A poisoned lock means a panic in a short map operation; the map is still valid.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PendingRecord>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, id: &str, value: &[u8]) -> u64 {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let record = PendingRecord {
            seq,
            value: value.to_vec(),
        };
        self.lock().insert(id.to_string(), record);
        seq
    }

    /// After a round, committed or failed (then the database keeps the older records, and
    /// so do readers): forgets the round's writes that are still the newest.
    fn settled(&self, batch: &[WriteRequest]) {
        let mut records = self.lock();
        for request in batch {
            if records
                .get(&request.id)
                .is_some_and(|r| r.seq == request.seq)
            {
                records.remove(&request.id);
            }
        }
    }

    fn get(&self, id: &str) -> Option<Vec<u8>> {
        self.lock().get(id).map(|r| r.value.clone())
    }

    fn snapshot(&self) -> Vec<Vec<u8>> {
        self.lock().values().map(|r| r.value.clone()).collect()
    }
}

/// One record to commit, and who waits for it.
struct WriteRequest {
    id: String,
    value: Vec<u8>,
    /// Someone waits for this commit ([`Index::store`]): start a round at once.
    urgent: bool,
    /// Its number in [`Pending`].
    seq: u64,
    reply: oneshot::Sender<Result<(), String>>,
}

/// The writer thread and its queue. Dropping it closes the queue, lets the thread finish
/// the round it is in, and joins it, so the database file is closed once the last
/// [`Index`] handle is gone (a reopen of the same path then succeeds).
struct Writer {
    queue: Option<mpsc::Sender<WriteRequest>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Wakes the writer if it is letting records without waiters gather.
    fn wake(&self) {
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue.take();
        self.wake();
        if let Some(thread) = self.thread.take() {
            // A panic in the writer already failed its waiters; nothing more to report.
            let _ = thread.join();
        }
    }
}

impl Index {
    pub fn open(path: &Path) -> Result<Index, StorageError> {
        let db = Arc::new(Database::create(path).map_err(|e| StorageError::Index(e.to_string()))?);
        // Create the table so that readers never see "table does not exist".
        write_txn(&db, |_| Ok(()))?;
        let (queue, rx) = mpsc::channel(WRITE_QUEUE_BOUND);
        let pending = Arc::new(Pending::default());
        let thread = std::thread::Builder::new()
            .name("index-commit".into())
            .spawn({
                let db = db.clone();
                let pending = pending.clone();
                move || run_writer(&db, rx, &pending)
            })
            .map_err(|e| StorageError::Index(format!("cannot start the index writer: {e}")))?;
        let writer = Writer {
            queue: Some(queue),
            thread: Some(thread),
        };
        Ok(Index {
            db,
            writer: Arc::new(writer),
            pending,
        })
    }

    /// Stores `record` durably, on this thread and in its own transaction (startup
    /// recovery and tests; running sessions use [`Index::store`]).
    pub fn put(&self, record: &SessionRecord) -> Result<(), StorageError> {
        let value = encode(record)?;
        write_txn(&self.db, |table| {
            table.insert(record.id.as_str(), value.as_slice())?;
            Ok(())
        })
    }

    /// Stores `record` durably in the writer's next round, together with every other
    /// record queued meanwhile. Returns once that round is committed.
    pub async fn store(&self, record: &SessionRecord) -> Result<(), StorageError> {
        let answer = self.enqueue(record, true).await?;
        let gone = || StorageError::Index("the index writer stopped".into());
        answer
            .await
            .map_err(|_| gone())?
            .map_err(StorageError::Index)
    }

    /// Queues `record` and returns without waiting for it to be durable (only for queue
    /// space): it is committed with the next round a waiter starts, or within
    /// [`LAZY_COMMIT_DELAY`]. Readers see it at once. Anything queued or stored later is
    /// committed in the same round or after it; a failed round is logged.
    pub async fn queue(&self, record: &SessionRecord) -> Result<(), StorageError> {
        self.enqueue(record, false).await.map(drop)
    }

    async fn enqueue(
        &self,
        record: &SessionRecord,
        urgent: bool,
    ) -> Result<oneshot::Receiver<Result<(), String>>, StorageError> {
        let gone = || StorageError::Index("the index writer stopped".into());
        let queue = self.writer.queue.as_ref().ok_or_else(gone)?;
        let value = encode(record)?;
        let (reply, answer) = oneshot::channel();
        let seq = self.pending.add(&record.id, &value);
        let request = WriteRequest {
            id: record.id.clone(),
            value,
            urgent,
            seq,
            reply,
        };
        // Not sent means never committed: the pending copy would stay until a later write
        // of the session replaces it, so the writer being gone is an error either way.
        queue.send(request).await.map_err(|_| gone())?;
        if urgent {
            self.writer.wake();
        }
        Ok(answer)
    }

    /// The newest record of session `id`: a queued one, else the committed one. (In that
    /// order: a write queued before this call is either still pending or committed.)
    pub fn get(&self, id: &str) -> Result<Option<SessionRecord>, StorageError> {
        if let Some(value) = self.pending.get(id) {
            return decode(&value).map(Some);
        }
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(SESSIONS).map_err(index_err)?;
        match table.get(id).map_err(index_err)? {
            Some(value) => Ok(Some(decode(value.value())?)),
            None => Ok(None),
        }
    }

    /// All records matching `filter`, newest first.
    pub fn list(&self, filter: &SessionFilter) -> Result<Vec<SessionRecord>, StorageError> {
        // Queued records first (see `get`), then the committed ones they don't replace.
        let mut newest: HashMap<String, SessionRecord> = HashMap::new();
        for value in self.pending.snapshot() {
            let record = decode(&value)?;
            newest.insert(record.id.clone(), record);
        }
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(SESSIONS).map_err(index_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(index_err)? {
            let (key, value) = entry.map_err(index_err)?;
            if newest.contains_key(key.value()) {
                continue;
            }
            let record = decode(value.value())?;
            if filter.matches(&record) {
                out.push(record);
            }
        }
        out.extend(newest.into_values().filter(|r| filter.matches(r)));
        out.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));
        Ok(out)
    }
}

/// The writer thread: takes whatever is queued (up to [`MAX_WRITE_BATCH`]), commits it
/// in one transaction, answers every waiter with the outcome, and goes on until every
/// handle is dropped. A round of records nobody waits for first lets more gather, until a
/// waiter comes or [`LAZY_COMMIT_DELAY`] passes. Requests are inserted in queue order, so a
/// session's later record wins over its earlier one even within one round.
fn run_writer(db: &Database, mut rx: mpsc::Receiver<WriteRequest>, pending: &Pending) {
    let mut batch = Vec::with_capacity(MAX_WRITE_BATCH);
    while let Some(first) = rx.blocking_recv() {
        let deadline = Instant::now() + LAZY_COMMIT_DELAY;
        batch.push(first);
        let mut open = take_queued(&mut rx, &mut batch);
        while open && batch.len() < MAX_WRITE_BATCH && !batch.iter().any(|r| r.urgent) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            // Woken early by a waiter's write (`Index::enqueue`) or the last handle's drop.
            std::thread::park_timeout(left);
            open = take_queued(&mut rx, &mut batch);
        }
        let started = Instant::now();
        let outcome = write_txn(db, |table| {
            for request in &batch {
                table.insert(request.id.as_str(), request.value.as_slice())?;
            }
            Ok(())
        })
        .map_err(|e| e.to_string());
        if let Err(e) = &outcome {
            // Queued records have no waiter to tell; those that do get the error too.
            tracing::warn!(records = batch.len(), error = %e, "session index commit failed");
        }
        metrics::histogram!(m::INDEX_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(m::INDEX_BATCH_RECORDS).record(batch.len() as f64);
        pending.settled(&batch);
        for request in batch.drain(..) {
            // The waiter may have gone away (its session was cancelled); nothing to do.
            let _ = request.reply.send(outcome.clone());
        }
    }
}

/// Moves whatever is queued into `batch`, up to [`MAX_WRITE_BATCH`]. `false` once the
/// queue is closed (every handle dropped).
fn take_queued(rx: &mut mpsc::Receiver<WriteRequest>, batch: &mut Vec<WriteRequest>) -> bool {
    while batch.len() < MAX_WRITE_BATCH {
        match rx.try_recv() {
            Ok(more) => batch.push(more),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
    true
}

fn write_txn(
    db: &Database,
    f: impl FnOnce(&mut redb::Table<'_, &str, &[u8]>) -> Result<(), redb::StorageError>,
) -> Result<(), StorageError> {
    let txn = db.begin_write().map_err(index_err)?;
    {
        let mut table = txn.open_table(SESSIONS).map_err(index_err)?;
        f(&mut table).map_err(index_err)?;
    }
    txn.commit().map_err(index_err)
}

fn encode(record: &SessionRecord) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(record).map_err(|e| StorageError::Index(e.to_string()))
}

fn decode(bytes: &[u8]) -> Result<SessionRecord, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Index(format!("corrupt record: {e}")))
}

fn index_err(e: impl Into<redb::Error>) -> StorageError {
    StorageError::Index(e.into().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_filter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("index.redb");
        {
            let index = Index::open(&path).expect("open");
            let mut a = SessionRecord::new_live("a".into(), "n1".into(), "n1/a.cast".into(), "v2");
            a.header = Some(Header {
                ssh_user: Some("alice".into()),
                ..Header::default()
            });
            index.put(&a).expect("put a");
            let mut b = SessionRecord::new_live("b".into(), "n2".into(), "n2/b.cast".into(), "v1");
            b.state = SessionState::Complete;
            b.started_at = a.started_at + chrono::Duration::seconds(5);
            index.put(&b).expect("put b");
        }
        let index = Index::open(&path).expect("reopen");
        let all = index.list(&SessionFilter::default()).expect("list");
        assert_eq!(
            all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["b", "a"]
        );
        let alice = SessionFilter {
            user: Some("alice".into()),
            ..SessionFilter::default()
        };
        assert_eq!(index.list(&alice).expect("list").len(), 1);
        let live = SessionFilter {
            state: Some("live".into()),
            ..SessionFilter::default()
        };
        assert_eq!(index.list(&live).expect("list")[0].id, "a");
        assert_eq!(
            index.get("b").expect("get").map(|r| r.node_dir),
            Some("n2".into())
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_stores_are_durable_and_a_sessions_last_record_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("index.redb");
        let index = Index::open(&path).expect("open");
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..300 {
            let index = index.clone();
            tasks.spawn(async move {
                let mut record =
                    SessionRecord::new_live(format!("s{i}"), "n".into(), format!("n/{i}"), "v2");
                index.store(&record).await?;
                record.state = SessionState::Complete;
                record.bytes = i;
                index.store(&record).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("task").expect("store");
        }
        // The last handle joins the writer, so the file can be opened again at once.
        drop(index);
        let index = Index::open(&path).expect("reopen");
        let all = index.list(&SessionFilter::default()).expect("list");
        assert_eq!(all.len(), 300);
        for record in all {
            assert_eq!(record.state, SessionState::Complete, "{}", record.id);
            assert_eq!(format!("s{}", record.bytes), record.id);
        }
    }

    /// What the database itself holds for `id`, past the records still pending.
    fn committed(index: &Index, id: &str) -> Option<SessionRecord> {
        let txn = index.db.begin_read().expect("read");
        let table = txn.open_table(SESSIONS).expect("table");
        let value = table.get(id).expect("get");
        value.map(|v| decode(v.value()).expect("decode"))
    }

    #[tokio::test]
    async fn a_queued_record_is_read_at_once_and_committed_within_the_lazy_delay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = Index::open(&dir.path().join("index.redb")).expect("open");
        let mut a = SessionRecord::new_live("a".into(), "n".into(), "n/a".into(), "v2");
        index.store(&a).await.expect("store");
        a.state = SessionState::Complete;
        let queued_at = Instant::now();
        index.queue(&a).await.expect("queue");
        // Readers see the newest record before it is committed.
        let got = index.get("a").expect("get").expect("a record");
        assert_eq!(got.state, SessionState::Complete);
        let listed = index.list(&SessionFilter::default()).expect("list");
        assert_eq!(listed.len(), 1, "one record per session: {listed:?}");
        assert_eq!(listed[0].state, SessionState::Complete);
        let live = SessionFilter {
            state: Some("live".into()),
            ..SessionFilter::default()
        };
        assert!(index.list(&live).expect("list").is_empty());
        // Nobody waits for it: it goes after the lazy delay, not at once.
        while committed(&index, "a").map(|r| r.state) != Some(SessionState::Complete) {
            assert!(
                queued_at.elapsed() < LAZY_COMMIT_DELAY * 20,
                "never committed"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(
            queued_at.elapsed() >= LAZY_COMMIT_DELAY,
            "committed after {:?}, before the lazy delay",
            queued_at.elapsed()
        );
        assert!(index.pending.lock().is_empty(), "nothing left pending");
    }

    #[tokio::test]
    async fn a_store_takes_the_queued_records_with_it_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = Index::open(&dir.path().join("index.redb")).expect("open");
        let a = SessionRecord::new_live("a".into(), "n".into(), "n/a".into(), "v2");
        let b = SessionRecord::new_live("b".into(), "n".into(), "n/b".into(), "v2");
        index.queue(&a).await.expect("queue");
        index.store(&b).await.expect("store");
        assert!(
            committed(&index, "a").is_some(),
            "queued before the store: committed in its round or earlier"
        );
        assert!(committed(&index, "b").is_some());
    }

    #[tokio::test]
    async fn a_queued_record_is_durable_once_a_later_store_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("index.redb");
        let index = Index::open(&path).expect("open");
        let mut a = SessionRecord::new_live("a".into(), "n".into(), "n/a".into(), "v2");
        a.header = Some(Header {
            ssh_user: Some("alice".into()),
            ..Header::default()
        });
        index.queue(&a).await.expect("queue");
        let b = SessionRecord::new_live("b".into(), "n".into(), "n/b".into(), "v2");
        index.store(&b).await.expect("store");
        drop(index);
        let index = Index::open(&path).expect("reopen");
        assert_eq!(index.get("a").expect("get"), Some(a));
    }
}
