//! The durable session index: one record per recording, kept in redb under statedir.
//!
//! It owns the [`SessionRecord`] format and its persistence: a few writes per session
//! lifetime, never per chunk, each durable when it returns. Writes from running sessions
//! go through one writer thread that commits every record queued meanwhile in one redb
//! transaction (one fsync and one copy of the touched pages per round, not per record),
//! as the group commit does for recordings. It does not own live byte counts: those live
//! in the session registry and are overlaid on listings.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

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

/// Queue bound of the writer: a session has at most two records queued (its header,
/// queued without waiting, and one awaited write), so this covers twice the default
/// session limit (10 000) with room to spare; past it writers wait (back-pressure).
/// Slots cost nothing until used.
pub const WRITE_QUEUE_BOUND: usize = 32 * 1024;

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
}

/// One record to commit, and who waits for it.
struct WriteRequest {
    id: String,
    value: Vec<u8>,
    reply: oneshot::Sender<Result<(), String>>,
}

/// The writer thread and its queue. Dropping it closes the queue, lets the thread finish
/// the round it is in, and joins it, so the database file is closed once the last
/// [`Index`] handle is gone (a reopen of the same path then succeeds).
struct Writer {
    queue: Option<mpsc::Sender<WriteRequest>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue.take();
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
        let thread = std::thread::Builder::new()
            .name("index-commit".into())
            .spawn({
                let db = db.clone();
                move || run_writer(&db, rx)
            })
            .map_err(|e| StorageError::Index(format!("cannot start the index writer: {e}")))?;
        let writer = Writer {
            queue: Some(queue),
            thread: Some(thread),
        };
        Ok(Index {
            db,
            writer: Arc::new(writer),
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
        let answer = self.enqueue(record).await?;
        let gone = || StorageError::Index("the index writer stopped".into());
        answer
            .await
            .map_err(|_| gone())?
            .map_err(StorageError::Index)
    }

    /// Queues `record` for the writer's next round and returns without waiting for it to
    /// be durable (only for queue space). Anything queued or stored later is committed
    /// in the same round or after it; a failed round is logged.
    pub async fn queue(&self, record: &SessionRecord) -> Result<(), StorageError> {
        self.enqueue(record).await.map(drop)
    }

    async fn enqueue(
        &self,
        record: &SessionRecord,
    ) -> Result<oneshot::Receiver<Result<(), String>>, StorageError> {
        let gone = || StorageError::Index("the index writer stopped".into());
        let (reply, answer) = oneshot::channel();
        let request = WriteRequest {
            id: record.id.clone(),
            value: encode(record)?,
            reply,
        };
        let queue = self.writer.queue.as_ref().ok_or_else(gone)?;
        queue.send(request).await.map_err(|_| gone())?;
        Ok(answer)
    }

    pub fn get(&self, id: &str) -> Result<Option<SessionRecord>, StorageError> {
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(SESSIONS).map_err(index_err)?;
        match table.get(id).map_err(index_err)? {
            Some(value) => Ok(Some(decode(value.value())?)),
            None => Ok(None),
        }
    }

    /// All records matching `filter`, newest first.
    pub fn list(&self, filter: &SessionFilter) -> Result<Vec<SessionRecord>, StorageError> {
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(SESSIONS).map_err(index_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(index_err)? {
            let (_, value) = entry.map_err(index_err)?;
            let record = decode(value.value())?;
            if filter.matches(&record) {
                out.push(record);
            }
        }
        out.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));
        Ok(out)
    }
}

/// The writer thread: takes whatever is queued (up to [`MAX_WRITE_BATCH`]), commits it
/// in one transaction, answers every waiter with the outcome, and goes on until every
/// handle is dropped. Requests are inserted in queue order, so a session's later record
/// wins over its earlier one even within one round.
fn run_writer(db: &Database, mut rx: mpsc::Receiver<WriteRequest>) {
    let mut batch = Vec::with_capacity(MAX_WRITE_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_WRITE_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
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
        for request in batch.drain(..) {
            // The waiter may have gone away (its session was cancelled); nothing to do.
            let _ = request.reply.send(outcome.clone());
        }
    }
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
