//! Durable openraft storage (storage-v2) on one redb database, `<statedir>/raft.redb`.
//!
//! It owns:
//! - the Raft log ([`LogStore`], [`LogReader`]): entries by index, the vote, the last
//!   purged log id and the committed log id;
//! - the state machine ([`StateMachineStore`]): [`ClusterState`] with its last applied log
//!   id and membership, in memory, readable by the rest of the node through
//!   [`StateReader`]; and its last snapshot, persisted.
//!
//! The state machine is *not* written on every apply. A snapshot is persisted whenever one
//! is built or installed; on [`open`] the last snapshot is loaded, and openraft re-applies
//! the log from there up to the saved committed id. Log purges only ever go up to a
//! persisted snapshot, so nothing committed is lost.
//!
//! Every redb call runs in `spawn_blocking`; `append` returns once its transaction has
//! committed (fsynced), so entries are readable on return and the flush callback is
//! called only for durable entries.
//!
//! openraft 0.9 runs every log call inside its core task, one after the other, so each
//! one is on the path of every proposal. Two of them therefore skip the database:
//! - reads of the newest entries (replication to followers, apply) come from
//!   [`RecentEntries`], a bounded copy of the log's durable tail;
//! - the committed id, a hint, is kept in memory and written with the next append's
//!   transaction instead of in one of its own.
//!
//! It does not own the rules ([`super::state`]) nor the Raft instance or network.
//!
//! # On-disk formats
//!
//! Every value is bincode (standard config) behind a bincode `u32` format number:
//! [`LOG_FORMAT`] for log entries, [`META_FORMAT`] for vote/ids/the stored snapshot record,
//! [`SNAPSHOT_FORMAT`] for snapshot data (which also travels to peers). A value in an
//! unknown format is an error, never a guess. Tables carry a `_v1` suffix for layout changes.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::io::{self, Cursor};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, LogState, Membership,
    OptionalSend, RaftLogReader, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::state::ClusterState;
use super::types::{CommandResponse, NodeId, NodeInfo, TypeConfig};

/// File name of the Raft database inside statedir.
pub const DB_FILE: &str = "raft.redb";

/// Format of a log entry value.
pub const LOG_FORMAT: u32 = 1;
/// Format of meta values (vote, log ids) and of the stored snapshot record.
pub const META_FORMAT: u32 = 1;
/// Format of snapshot data, as stored and as sent to peers.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// Largest value we agree to decode: a corrupt or hostile length prefix must not make us
/// allocate without bound. The control plane's state is far smaller.
const MAX_VALUE_BYTES: usize = 256 << 20;

/// Log index → [`LOG_FORMAT`] entry.
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log_v1");
/// Small named values, [`META_FORMAT`].
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta_v1");
/// The one current snapshot under [`KEY_SNAPSHOT`], [`META_FORMAT`] record.
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot_v1");

const KEY_VOTE: &str = "vote";
const KEY_PURGED: &str = "last_purged_log_id";
const KEY_COMMITTED: &str = "committed";
const KEY_SNAPSHOT: &str = "current";

type RaftError = StorageError<NodeId>;
type NodeMembership = StoredMembership<NodeId, NodeInfo>;

/// Failures of the Raft store. The message carries the cause; big causes are boxed to
/// keep `Result`s small.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create {path}: {error}")]
    CreateDir { path: PathBuf, error: io::Error },
    #[error("cannot open raft database {path}: {error}")]
    Open {
        path: PathBuf,
        error: Box<redb::DatabaseError>,
    },
    #[error("raft database: {0}")]
    Db(Box<redb::Error>),
    #[error("cannot encode {what}: {error}")]
    Encode {
        what: &'static str,
        error: Box<bincode::error::EncodeError>,
    },
    #[error("cannot decode {what}: {error}")]
    Decode {
        what: &'static str,
        error: Box<bincode::error::DecodeError>,
    },
    #[error("{what} is in format {found}, this build reads format {expected}")]
    Format {
        what: &'static str,
        found: u32,
        expected: u32,
    },
    #[error("corrupt {what}: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error("raft store task failed: {0}")]
    Task(String),
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(Box::new(e.into()))
}

/// Maps a store failure onto openraft's error, naming what was being done to what.
fn raft_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
) -> impl FnOnce(StoreError) -> RaftError {
    move |e| StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// Runs blocking redb work off the async runtime.
async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

// ---- versioned encoding ----

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_VALUE_BYTES>()
}

/// `format` then `value`, both bincode.
fn encode<T: Serialize>(what: &'static str, format: u32, value: &T) -> Result<Vec<u8>, StoreError> {
    let encode_err = |error| StoreError::Encode {
        what,
        error: Box::new(error),
    };
    let mut out = bincode::serde::encode_to_vec(format, bincode_config()).map_err(encode_err)?;
    out.extend(bincode::serde::encode_to_vec(value, bincode_config()).map_err(encode_err)?);
    Ok(out)
}

/// Inverse of [`encode`]; refuses other formats and trailing bytes.
fn decode<T: DeserializeOwned>(
    what: &'static str,
    format: u32,
    bytes: &[u8],
) -> Result<T, StoreError> {
    let decode_err = |error| StoreError::Decode {
        what,
        error: Box::new(error),
    };
    let (found, used): (u32, usize) =
        bincode::serde::decode_from_slice(bytes, bincode_config()).map_err(decode_err)?;
    if found != format {
        return Err(StoreError::Format {
            what,
            found,
            expected: format,
        });
    }
    let rest = bytes.get(used..).unwrap_or_default();
    let (value, used): (T, usize) =
        bincode::serde::decode_from_slice(rest, bincode_config()).map_err(decode_err)?;
    if used != rest.len() {
        return Err(StoreError::Corrupt {
            what,
            reason: format!("{} trailing bytes", rest.len() - used),
        });
    }
    Ok(value)
}

fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry<TypeConfig>, StoreError> {
    let entry: Entry<TypeConfig> = decode("log entry", LOG_FORMAT, bytes)?;
    if entry.log_id.index != index {
        return Err(StoreError::Corrupt {
            what: "log entry",
            reason: format!("key {index} holds entry {}", entry.log_id),
        });
    }
    Ok(entry)
}

/// What the state machine's snapshot data contains.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotPayload {
    state: ClusterState,
    last_applied: Option<LogId<NodeId>>,
    last_membership: NodeMembership,
}

/// The persisted snapshot: openraft's meta plus the [`SNAPSHOT_FORMAT`] data as built.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, NodeInfo>,
    data: Vec<u8>,
}

// ---- the database ----

fn get_meta<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &'static str,
) -> Result<Option<T>, StoreError> {
    let value = table.get(key).map_err(db_err)?;
    value
        .map(|v| decode(key, META_FORMAT, v.value()))
        .transpose()
}

/// Writes the committed id openraft saved last (already encoded), if one is waiting.
fn put_committed(
    meta: &mut redb::Table<&'static str, &'static [u8]>,
    committed: Option<&[u8]>,
) -> Result<(), StoreError> {
    if let Some(committed) = committed {
        meta.insert(KEY_COMMITTED, committed).map_err(db_err)?;
    }
    Ok(())
}

/// The shared redb handle. Cheap to clone. Every method blocks: call through [`blocking`].
#[derive(Clone)]
struct Db(Arc<Database>);

impl Db {
    fn open(statedir: &Path) -> Result<Db, StoreError> {
        std::fs::create_dir_all(statedir).map_err(|error| StoreError::CreateDir {
            path: statedir.to_path_buf(),
            error,
        })?;
        let path = statedir.join(DB_FILE);
        let db = Database::create(&path).map_err(|error| StoreError::Open {
            path,
            error: Box::new(error),
        })?;
        let db = Db(Arc::new(db));
        // Create every table up front so that readers never meet a missing table.
        db.write(|txn| {
            txn.open_table(LOGS).map_err(db_err)?;
            txn.open_table(META).map_err(db_err)?;
            txn.open_table(SNAPSHOTS).map_err(db_err)?;
            Ok(())
        })?;
        Ok(db)
    }

    /// One durable (fsynced on commit) write transaction.
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_with(redb::Durability::Immediate, f)
    }

    fn write_with<T>(
        &self,
        durability: redb::Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut txn = self.0.begin_write().map_err(db_err)?;
        txn.set_durability(durability);
        let out = f(&txn)?;
        txn.commit().map_err(db_err)?;
        Ok(out)
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &'static str) -> Result<Option<T>, StoreError> {
        let txn = self.0.begin_read().map_err(db_err)?;
        let table = txn.open_table(META).map_err(db_err)?;
        get_meta(&table, key)
    }

    /// Stores `value` under `key`, or removes the key for `None`, durably, with a waiting
    /// committed id (encoded) if any.
    fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: Option<&T>,
        committed: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let bytes = value.map(|v| encode(key, META_FORMAT, v)).transpose()?;
        self.write(|txn| {
            let mut table = txn.open_table(META).map_err(db_err)?;
            put_committed(&mut table, committed.as_deref())?;
            match &bytes {
                Some(bytes) => table.insert(key, bytes.as_slice()).map_err(db_err)?,
                None => table.remove(key).map_err(db_err)?,
            };
            Ok(())
        })
    }

    /// Entries with `start <= index < end` (`end: None` = no end), in index order.
    fn entries(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let txn = self.0.begin_read().map_err(db_err)?;
        let table = txn.open_table(LOGS).map_err(db_err)?;
        let range = match end {
            Some(end) => table.range(start..end),
            None => table.range(start..),
        }
        .map_err(db_err)?;
        let mut out = Vec::new();
        for item in range {
            let (key, value) = item.map_err(db_err)?;
            out.push(decode_entry(key.value(), value.value())?);
        }
        Ok(out)
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        // One read transaction: purge point and last entry from the same version.
        let txn = self.0.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        let last_purged_log_id: Option<LogId<NodeId>> = get_meta(&meta, KEY_PURGED)?;
        let table = txn.open_table(LOGS).map_err(db_err)?;
        let last = match table.last().map_err(db_err)? {
            Some((key, value)) => Some(decode_entry(key.value(), value.value())?.log_id),
            None => None,
        };
        Ok(LogState {
            last_log_id: last.or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    /// Appends `(index, encoded entry)` pairs in one transaction, together with the
    /// committed id if one is waiting (`committed`: already encoded). Refuses a hole after
    /// the last present entry (or after the purge point of an empty log).
    fn append(
        &self,
        entries: Vec<(u64, Vec<u8>)>,
        committed: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let last_purged: Option<LogId<NodeId>> = get_meta(&meta, KEY_PURGED)?;
            put_committed(&mut meta, committed.as_deref())?;
            let mut table = txn.open_table(LOGS).map_err(db_err)?;
            let last = table.last().map_err(db_err)?.map(|(k, _)| k.value());
            let prev = last.or(last_purged.map(|l| l.index));
            if let (Some(prev), Some((first, _))) = (prev, entries.first()) {
                if *first > prev.saturating_add(1) {
                    return Err(StoreError::Corrupt {
                        what: "log append",
                        reason: format!("entry {first} would leave a hole after {prev}"),
                    });
                }
            }
            for (index, bytes) in &entries {
                table.insert(*index, bytes.as_slice()).map_err(db_err)?;
            }
            Ok(())
        })
    }

    /// Removes entries with index >= `from`.
    fn truncate(&self, from: u64) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(LOGS).map_err(db_err)?;
            table.retain_in(from.., |_, _| false).map_err(db_err)
        })
    }

    /// Removes entries up to and including `upto` and records it as purged, atomically,
    /// with a waiting committed id (encoded) if any.
    fn purge(&self, upto: LogId<NodeId>, committed: Option<Vec<u8>>) -> Result<(), StoreError> {
        let purged = encode(KEY_PURGED, META_FORMAT, &upto)?;
        self.write(|txn| {
            let mut logs = txn.open_table(LOGS).map_err(db_err)?;
            logs.retain_in(..=upto.index, |_, _| false)
                .map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            put_committed(&mut meta, committed.as_deref())?;
            meta.insert(KEY_PURGED, purged.as_slice()).map_err(db_err)?;
            Ok(())
        })
    }

    fn read_snapshot(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        let txn = self.0.begin_read().map_err(db_err)?;
        let table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
        let value = table.get(KEY_SNAPSHOT).map_err(db_err)?;
        value
            .map(|v| decode("snapshot record", META_FORMAT, v.value()))
            .transpose()
    }

    /// Makes `snap` the current snapshot. Unless `replace_newer`, a stored snapshot that
    /// covers more of the log is kept: a slow builder must not overwrite a snapshot
    /// installed meanwhile.
    fn write_snapshot(&self, snap: &StoredSnapshot, replace_newer: bool) -> Result<(), StoreError> {
        let bytes = encode("snapshot record", META_FORMAT, snap)?;
        self.write(|txn| {
            let mut table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            if !replace_newer {
                let stored = table.get(KEY_SNAPSHOT).map_err(db_err)?;
                let stored: Option<StoredSnapshot> = stored
                    .map(|v| decode("snapshot record", META_FORMAT, v.value()))
                    .transpose()?;
                if stored.is_some_and(|s| s.meta.last_log_id > snap.meta.last_log_id) {
                    return Ok(());
                }
            }
            table
                .insert(KEY_SNAPSHOT, bytes.as_slice())
                .map_err(db_err)?;
            Ok(())
        })
    }
}

/// How long [`open`] waits for a previous handle in this process to let go of the
/// database: `Raft::shutdown` does not join openraft's state-machine worker or snapshot
/// tasks, which hold a handle until they notice. Another process holding it fails after
/// this.
const OPEN_WAIT: Duration = Duration::from_secs(5);
const OPEN_RETRY_EVERY: Duration = Duration::from_millis(25);

/// Opens (creating if needed) `<statedir>/raft.redb` and returns the two halves openraft
/// wants, `Raft::new(id, config, network, log_store, state_machine)`. The state machine
/// starts from the last persisted snapshot; openraft replays the log after it.
pub async fn open(statedir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let deadline = tokio::time::Instant::now() + OPEN_WAIT;
    loop {
        let dir = statedir.to_path_buf();
        match blocking(move || open_now(&dir)).await {
            Err(StoreError::Open { error, .. })
                if matches!(*error, redb::DatabaseError::DatabaseAlreadyOpen)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(OPEN_RETRY_EVERY).await;
            }
            other => return other,
        }
    }
}

fn open_now(statedir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let db = Db::open(statedir)?;
    let applied = match db.read_snapshot()? {
        Some(snap) => Applied::from_snapshot(&snap.meta, &snap.data)?,
        None => Applied::default(),
    };
    let log = LogStore {
        db: db.clone(),
        recent: Arc::new(RwLock::new(RecentEntries::default())),
        committed: None,
    };
    let sm = StateMachineStore {
        db,
        applied: Arc::new(RwLock::new(applied)),
        snapshot_seq: Arc::new(AtomicU64::new(0)),
    };
    Ok((log, sm))
}

// ---- log ----

/// The Raft log, vote and committed id. Owned by openraft once handed to `Raft::new`.
pub struct LogStore {
    db: Db,
    /// The log's newest durable entries, shared with every [`LogReader`].
    recent: Arc<RwLock<RecentEntries>>,
    /// The committed id openraft last saved and the database doesn't have yet: it goes
    /// into the next append's transaction (see the module docs).
    committed: Option<LogId<NodeId>>,
}

/// Read-only view of the log, one per replication stream.
#[derive(Clone)]
pub struct LogReader {
    db: Db,
    recent: Arc<RwLock<RecentEntries>>,
}

/// How many of the newest entries [`RecentEntries`] keeps. Replication and apply read
/// entries moments after they were appended; a follower further behind than this reads
/// from the database. An entry is one proposal batch of at most 256 commands of a few
/// hundred bytes each, so this holds a few MiB at worst (usually a few hundred KiB).
const RECENT_ENTRIES: usize = 256;

/// A copy of the newest durable entries of the log, contiguous and ending at its last
/// entry (or empty). Invariant: every entry here is also in the database, with the same
/// log id; updated only after the database changed.
#[derive(Default)]
struct RecentEntries {
    entries: std::collections::VecDeque<Entry<TypeConfig>>,
}

impl RecentEntries {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    fn next_index(&self) -> Option<u64> {
        self.entries.back().map(|e| e.log_id.index + 1)
    }

    /// Entries `[start, end)` if all of them are here. Open-ended reads go to the
    /// database, so that they never depend on this copy ending where the log ends.
    fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry<TypeConfig>>> {
        let (first, next, end) = (self.first_index()?, self.next_index()?, end?);
        if start < first || end > next || start >= end {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        let take = usize::try_from(end - start).ok()?;
        Some(self.entries.iter().skip(skip).take(take).cloned().collect())
    }

    /// Mirrors a durable append of `entries` (contiguous, in order).
    fn appended(&mut self, entries: Vec<Entry<TypeConfig>>) {
        let Some(first) = entries.first().map(|e| e.log_id.index) else {
            return;
        };
        match self.next_index() {
            // The database overwrote from `first` on: so do we.
            Some(next) if first < next => self.truncate(first),
            // A gap (the database refuses those) or an empty copy: start afresh.
            Some(next) if first > next => self.entries.clear(),
            _ => {}
        }
        self.entries.extend(entries);
        while self.entries.len() > RECENT_ENTRIES {
            self.entries.pop_front();
        }
    }

    /// Mirrors the removal of entries with index >= `from`.
    fn truncate(&mut self, from: u64) {
        while self.entries.back().is_some_and(|e| e.log_id.index >= from) {
            self.entries.pop_back();
        }
    }

    /// Mirrors the removal of entries with index <= `upto`.
    fn purge(&mut self, upto: u64) {
        while self.entries.front().is_some_and(|e| e.log_id.index <= upto) {
            self.entries.pop_front();
        }
    }
}

fn read_recent(lock: &RwLock<RecentEntries>) -> RwLockReadGuard<'_, RecentEntries> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Updates the copy with `f`. A panic in an earlier update may have left it half done, so
/// a poisoned lock is cleared: the database is the truth, and an empty copy is valid.
fn update_recent(lock: &RwLock<RecentEntries>, f: impl FnOnce(&mut RecentEntries)) {
    let mut guard = lock.write().unwrap_or_else(|poisoned| {
        let mut guard = poisoned.into_inner();
        guard.entries.clear();
        guard
    });
    f(&mut guard);
}

/// `range` as `[start, end)` with `end: None` unbounded; `None` if empty.
fn index_range(range: &impl RangeBounds<u64>) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.checked_add(1),
        Bound::Excluded(e) => Some(*e),
        Bound::Unbounded => None,
    };
    match end {
        Some(end) if end <= start => None,
        _ => Some((start, end)),
    }
}

/// `bounds` from [`index_range`], computed before any await: the caller's range type
/// need not be `Sync`. From the copy of the newest entries when it holds them all.
async fn read_entries(
    db: &Db,
    recent: &RwLock<RecentEntries>,
    bounds: Option<(u64, Option<u64>)>,
) -> Result<Vec<Entry<TypeConfig>>, RaftError> {
    let Some((start, end)) = bounds else {
        return Ok(Vec::new());
    };
    if let Some(entries) = read_recent(recent).get(start, end) {
        return Ok(entries);
    }
    let db = db.clone();
    blocking(move || db.entries(start, end))
        .await
        .map_err(raft_err(ErrorSubject::Logs, ErrorVerb::Read))
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftError> {
        read_entries(&self.db, &self.recent, index_range(&range)).await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftError> {
        read_entries(&self.db, &self.recent, index_range(&range)).await
    }
}

impl LogStore {
    async fn read_meta<T>(
        &self,
        key: &'static str,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, RaftError>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let db = self.db.clone();
        blocking(move || db.read_meta(key))
            .await
            .map_err(raft_err(subject, ErrorVerb::Read))
    }

    /// The committed id waiting to be written, encoded, and no longer waiting: the caller
    /// writes it in its transaction (if that fails, the hint is lost, which is allowed).
    /// Stays waiting if it cannot be encoded.
    fn take_committed(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(committed) = self.committed else {
            return Ok(None);
        };
        let bytes = encode(KEY_COMMITTED, META_FORMAT, &committed)?;
        self.committed = None;
        Ok(Some(bytes))
    }

    async fn write_meta<T>(
        &mut self,
        key: &'static str,
        value: Option<T>,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), RaftError>
    where
        T: Serialize + Send + 'static,
    {
        let to_err = || raft_err(subject.clone(), ErrorVerb::Write);
        let committed = self.take_committed().map_err(to_err())?;
        let db = self.db.clone();
        blocking(move || db.write_meta(key, value.as_ref(), committed))
            .await
            .map_err(raft_err(subject, ErrorVerb::Write))
    }
}

/// On a clean shutdown openraft drops the store: the waiting committed id is written then,
/// so that a restart re-applies everything committed before Raft is running again (one
/// small blocking transaction, on the way out). A crash loses it, which is allowed.
impl Drop for LogStore {
    fn drop(&mut self) {
        let Some(committed) = self.committed.take() else {
            return;
        };
        if let Err(e) = self.db.write_meta(KEY_COMMITTED, Some(&committed), None) {
            tracing::warn!(error = %e, "could not save the committed log id at shutdown");
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftError> {
        let db = self.db.clone();
        blocking(move || db.log_state())
            .await
            .map_err(raft_err(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            db: self.db.clone(),
            recent: self.recent.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), RaftError> {
        self.write_meta(KEY_VOTE, Some(*vote), ErrorSubject::Vote)
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, RaftError> {
        self.read_meta(KEY_VOTE, ErrorSubject::Vote).await
    }

    /// Saved so that a restart re-applies up to here at once instead of waiting for the
    /// leader's next commit. Lazily, with the next append (see the module docs): it sits on
    /// every proposal's path (leader and followers), and a committed index lost in a crash
    /// is only a hint that comes back with the leader's next heartbeat (the entries
    /// themselves are durable).
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), RaftError> {
        self.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, RaftError> {
        if self.committed.is_some() {
            return Ok(self.committed);
        }
        self.read_meta(KEY_COMMITTED, ErrorSubject::Store).await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let to_err = || raft_err(ErrorSubject::Logs, ErrorVerb::Write);
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let encoded = entries
            .iter()
            .map(|e| Ok((e.log_id.index, encode("log entry", LOG_FORMAT, e)?)))
            .collect::<Result<Vec<_>, StoreError>>()
            .map_err(to_err())?;
        let committed = self.take_committed().map_err(to_err())?;
        let db = self.db.clone();
        let recent = self.recent.clone();
        // Awaited: on return the transaction has committed, so the entries are both
        // readable and durable, and the callback may say so. The copy of the newest
        // entries follows the database, never leads it.
        let started = std::time::Instant::now();
        let appended = blocking(move || {
            db.append(encoded, committed)?;
            update_recent(&recent, |r| r.appended(entries));
            Ok(())
        })
        .await;
        metrics::histogram!(crate::metrics::RAFT_APPEND_SECONDS)
            .record(started.elapsed().as_secs_f64());
        match appended {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(to_err()(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), RaftError> {
        let db = self.db.clone();
        let recent = self.recent.clone();
        blocking(move || {
            // First the copy: a reader must never find there what the database lost.
            update_recent(&recent, |r| r.truncate(log_id.index));
            db.truncate(log_id.index)
        })
        .await
        .map_err(raft_err(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), RaftError> {
        let to_err = raft_err(ErrorSubject::Log(log_id), ErrorVerb::Delete);
        let committed = self.take_committed().map_err(to_err)?;
        let db = self.db.clone();
        let recent = self.recent.clone();
        blocking(move || {
            update_recent(&recent, |r| r.purge(log_id.index));
            db.purge(log_id, committed)
        })
        .await
        .map_err(raft_err(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }
}

// ---- state machine ----

/// What the state machine holds in memory.
#[derive(Debug, Default)]
struct Applied {
    state: ClusterState,
    last_applied: Option<LogId<NodeId>>,
    last_membership: NodeMembership,
}

impl Applied {
    /// Rebuilds from snapshot data; the meta is authoritative and must agree with the data.
    fn from_snapshot(
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        data: &[u8],
    ) -> Result<Applied, StoreError> {
        let payload: SnapshotPayload = decode("snapshot data", SNAPSHOT_FORMAT, data)?;
        if payload.last_applied != meta.last_log_id
            || payload.last_membership != meta.last_membership
        {
            return Err(StoreError::Corrupt {
                what: "snapshot",
                reason: format!(
                    "data is at {:?}, meta says {:?}",
                    payload.last_applied, meta.last_log_id
                ),
            });
        }
        Ok(Applied {
            state: payload.state,
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
        })
    }
}

/// Voters and learners of a membership: who may own, replicate and report.
pub fn members_of(membership: &Membership<NodeId, NodeInfo>) -> BTreeSet<NodeId> {
    membership.nodes().map(|(id, _)| *id).collect()
}

// A panic while holding the lock cannot leave `Applied` half-updated in a way a reader
// could misuse more than the panic itself, so a poisoned lock is still read.
fn read_lock(lock: &RwLock<Applied>) -> RwLockReadGuard<'_, Applied> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock(lock: &RwLock<Applied>) -> RwLockWriteGuard<'_, Applied> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// The state machine, owned by openraft once handed to `Raft::new`. Take a
/// [`StateReader`] first with [`StateMachineStore::reader`].
pub struct StateMachineStore {
    db: Db,
    applied: Arc<RwLock<Applied>>,
    /// Distinguishes snapshots built at the same log id.
    snapshot_seq: Arc<AtomicU64>,
}

/// A cheap, clonable read handle on the applied cluster state, for the rest of the node.
/// What it shows is committed, but may lag the leader.
#[derive(Clone)]
pub struct StateReader {
    applied: Arc<RwLock<Applied>>,
}

impl StateReader {
    /// Runs `f` on the current state under a read lock: keep `f` short and never block
    /// in it (apply waits for it).
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&read_lock(&self.applied).state)
    }

    /// The membership as of the last applied entry (not the effective one: see
    /// `Raft::metrics` for that).
    pub fn last_membership(&self) -> StoredMembership<NodeId, NodeInfo> {
        read_lock(&self.applied).last_membership.clone()
    }

    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        read_lock(&self.applied).last_applied
    }

    /// An empty state with no Raft behind it, for tests of the modules that read it.
    #[cfg(test)]
    pub(crate) fn for_tests() -> StateReader {
        StateReader {
            applied: Arc::new(RwLock::new(Applied::default())),
        }
    }

    /// Applies `cmd` as if Raft had committed it, for tests.
    #[cfg(test)]
    pub(crate) fn apply_for_tests(
        &self,
        cmd: &crate::cluster::types::Command,
        members: &std::collections::BTreeSet<NodeId>,
    ) -> CommandResponse {
        let mut applied = self.applied.write().unwrap_or_else(|p| p.into_inner());
        applied.state.apply(cmd, members)
    }
}

impl StateMachineStore {
    pub fn reader(&self) -> StateReader {
        StateReader {
            applied: self.applied.clone(),
        }
    }
}

/// Builds snapshots of a [`StateMachineStore`], possibly while it keeps applying.
pub struct SnapshotBuilder {
    db: Db,
    applied: Arc<RwLock<Applied>>,
    snapshot_seq: Arc<AtomicU64>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftError> {
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        // Copy under the lock, encode outside it: apply is blocked only for the copy.
        let payload = {
            let applied = read_lock(&self.applied);
            SnapshotPayload {
                state: applied.state.clone(),
                last_applied: applied.last_applied,
                last_membership: applied.last_membership.clone(),
            }
        };
        let last = payload
            .last_applied
            .map_or("none".to_string(), |l| l.to_string());
        let meta = SnapshotMeta {
            last_log_id: payload.last_applied,
            last_membership: payload.last_membership.clone(),
            snapshot_id: format!("{last}-{seq}"),
        };
        let to_err = raft_err(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Write,
        );
        let stored = StoredSnapshot {
            meta,
            data: encode("snapshot data", SNAPSHOT_FORMAT, &payload).map_err(to_err)?,
        };
        let subject = ErrorSubject::Snapshot(Some(stored.meta.signature()));
        let db = self.db.clone();
        // Persisted before returning: openraft purges the log up to this snapshot next.
        let stored = blocking(move || db.write_snapshot(&stored, false).map(|()| stored))
            .await
            .map_err(raft_err(subject, ErrorVerb::Write))?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, NodeMembership), RaftError> {
        let applied = read_lock(&self.applied);
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, RaftError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = write_lock(&self.applied);
        let replies = entries
            .into_iter()
            .map(|entry| apply_entry(&mut applied, entry))
            .collect();
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            applied: self.applied.clone(),
            snapshot_seq: self.snapshot_seq.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftError> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_inner();
        let fresh =
            Applied::from_snapshot(meta, &data).map_err(raft_err(subject(), ErrorVerb::Read))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let db = self.db.clone();
        // Persist first: if that fails, memory still matches what is on disk.
        blocking(move || db.write_snapshot(&stored, true))
            .await
            .map_err(raft_err(subject(), ErrorVerb::Write))?;
        *write_lock(&self.applied) = fresh;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, RaftError> {
        let db = self.db.clone();
        let stored = blocking(move || db.read_snapshot())
            .await
            .map_err(raft_err(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

/// Applies one committed entry: commands go to [`ClusterState::apply`] with the members
/// of the last applied membership; membership entries replace it.
fn apply_entry(applied: &mut Applied, entry: Entry<TypeConfig>) -> CommandResponse {
    applied.last_applied = Some(entry.log_id);
    match entry.payload {
        EntryPayload::Blank => CommandResponse::Ok,
        EntryPayload::Normal(cmd) => {
            let members = members_of(applied.last_membership.membership());
            applied.state.apply(&cmd, &members)
        }
        EntryPayload::Membership(membership) => {
            applied.state.retain_members(&members_of(&membership));
            applied.last_membership = StoredMembership::new(Some(entry.log_id), membership);
            CommandResponse::Ok
        }
    }
}

#[cfg(test)]
mod tests;
