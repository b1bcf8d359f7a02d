//! The durable session index: one record per recording, kept in redb under statedir.
//!
//! It owns the [`SessionRecord`] format and its persistence (every write is one fsynced
//! redb transaction: a few per session lifetime, never per chunk). It does not own live
//! byte counts: those live in the session registry and are overlaid on listings.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::asciicast::{Header, Problem};

use super::StorageError;

/// id → JSON-encoded [`SessionRecord`]. JSON keeps records readable and lets fields be
/// added with `#[serde(default)]`; `format` versions incompatible changes.
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions_v1");

/// Current record format.
const FORMAT: u32 = 1;

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

/// Handle to the index database. Cheap to clone; blocking calls go through
/// `spawn_blocking` in [`super::Storage`].
#[derive(Clone)]
pub struct Index {
    db: Arc<Database>,
}

impl Index {
    pub fn open(path: &Path) -> Result<Index, StorageError> {
        let db = Database::create(path).map_err(|e| StorageError::Index(e.to_string()))?;
        let index = Index { db: Arc::new(db) };
        // Create the table so that readers never see "table does not exist".
        index.write(|_| Ok(()))?;
        Ok(index)
    }

    pub fn put(&self, record: &SessionRecord) -> Result<(), StorageError> {
        let value = serde_json::to_vec(record).map_err(|e| StorageError::Index(e.to_string()))?;
        self.write(|table| {
            table.insert(record.id.as_str(), value.as_slice())?;
            Ok(())
        })
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

    fn write(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, &str, &[u8]>) -> Result<(), redb::StorageError>,
    ) -> Result<(), StorageError> {
        let txn = self.db.begin_write().map_err(index_err)?;
        {
            let mut table = txn.open_table(SESSIONS).map_err(index_err)?;
            f(&mut table).map_err(index_err)?;
        }
        txn.commit().map_err(index_err)
    }
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
}
