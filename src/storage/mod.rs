//! Storage: bytes on disk, made durable, and the index that describes them.
//!
//! Owns the on-disk layout under `--dst` ([`layout`]), appends to recording files,
//! group commit ([`commit`]), the durable session index under statedir ([`index`]) and
//! stored events. It does not decide *when* bytes are acknowledged or what a session's
//! state is: the session layer does, and storage just does what it is told, durably.
//!
//! All blocking file and database work runs on the blocking pool or the commit thread,
//! never on the async workers.

pub mod commit;
pub mod index;
pub mod layout;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use self::commit::Committer;
use self::index::{Index, SessionFilter, SessionRecord, SessionState};
use crate::asciicast::Problem;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("disk I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("session index: {0}")]
    Index(String),
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The node's storage: recordings under `dst`, the index under `statedir`.
#[derive(Clone)]
pub struct Storage {
    /// Root of the recordings tree (`--dst`).
    dst: PathBuf,
    index: Index,
    committer: Committer,
}

/// One recording being written. Only its session appends to it.
pub struct RecordingFile {
    /// Shared with the commit thread, which fsyncs it.
    file: Arc<File>,
    /// Absolute path, for error messages.
    path: PathBuf,
    /// Path relative to dst, as the index and API show it.
    rel_path: String,
    /// Bytes appended so far (the next write's offset).
    written: u64,
}

impl RecordingFile {
    /// Appends `bytes` at the end of the file (page cache; durable only after [`Storage::sync`]).
    pub async fn append(&mut self, bytes: Bytes) -> Result<(), StorageError> {
        let file = self.file.clone();
        let offset = self.written;
        let len = bytes.len() as u64;
        tokio::task::spawn_blocking(move || file.write_all_at(&bytes, offset))
            .await?
            .map_err(io_at(&self.path))?;
        self.written += len;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn rel_path(&self) -> &str {
        &self.rel_path
    }

    /// The file's name within its node directory.
    pub fn file_name(&self) -> &str {
        self.rel_path.rsplit('/').next().unwrap_or(&self.rel_path)
    }

    /// What the syncing side of the session needs, independent of the appending side.
    pub fn sync_handle(&self) -> SyncHandle {
        SyncHandle {
            file: self.file.clone(),
            path: self.path.clone(),
        }
    }
}

/// A recording as the commit thread sees it: something to fsync.
#[derive(Clone)]
pub struct SyncHandle {
    file: Arc<File>,
    path: PathBuf,
}

impl Storage {
    /// Opens (creating if needed) the recordings tree and the index.
    pub fn open(dst: &Path, statedir: &Path) -> Result<Storage, StorageError> {
        std::fs::create_dir_all(dst).map_err(io_at(dst))?;
        std::fs::create_dir_all(statedir).map_err(io_at(statedir))?;
        let index = Index::open(&statedir.join("index.redb"))?;
        let committer = Committer::start().map_err(io_at(statedir))?;
        Ok(Storage {
            dst: dst.to_path_buf(),
            index,
            committer,
        })
    }

    pub fn dst(&self) -> &Path {
        &self.dst
    }

    /// Creates a new, empty recording for `node_dir` (already sanitized).
    pub async fn create_recording(
        &self,
        node_dir: &str,
        started: DateTime<Utc>,
    ) -> Result<RecordingFile, StorageError> {
        let dir = self.dst.join(node_dir);
        let stem = layout::recording_stem(started);
        let node_dir = node_dir.to_string();
        let (path, file) = tokio::task::spawn_blocking(move || {
            layout::create_unique(&dir, &stem, "cast").map_err(io_at(&dir))
        })
        .await??;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(RecordingFile {
            file: Arc::new(file),
            path,
            rel_path: format!("{node_dir}/{name}"),
            written: 0,
        })
    }

    /// Removes a recording that was never admitted (the recorder set refused it). Best
    /// effort: an empty file left behind is harmless and not indexed.
    pub async fn discard(&self, recording: RecordingFile) {
        let path = recording.path.clone();
        drop(recording);
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_file(&path)).await;
        if let Ok(Err(e)) = removed {
            tracing::debug!(error = %e, "cannot remove a refused recording's empty file");
        }
    }

    /// Returns once everything appended to the recording before this call is on stable storage.
    pub async fn sync(&self, recording: &SyncHandle) -> Result<(), StorageError> {
        self.committer
            .sync(recording.file.clone())
            .await
            .map_err(io_at(&recording.path))
    }

    /// Stores one event body durably; `valid` is false for bodies kept despite bad JSON.
    pub async fn store_event(
        &self,
        node_dir: &str,
        body: Bytes,
        valid: bool,
    ) -> Result<String, StorageError> {
        let dir = self.dst.join(node_dir).join("events");
        let stem = format!(
            "{}-{}",
            layout::recording_stem(Utc::now()),
            uuid::Uuid::new_v4().simple()
        );
        let ext = if valid { "json" } else { "invalid.json" };
        let node_dir = node_dir.to_string();
        tokio::task::spawn_blocking(move || {
            let (path, file) = layout::create_unique(&dir, &stem, ext).map_err(io_at(&dir))?;
            file.write_all_at(&body, 0).map_err(io_at(&path))?;
            file.sync_data().map_err(io_at(&path))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(format!("{node_dir}/events/{name}"))
        })
        .await?
    }

    pub async fn put_record(&self, record: SessionRecord) -> Result<(), StorageError> {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.put(&record)).await?
    }

    pub async fn list_records(
        &self,
        filter: SessionFilter,
    ) -> Result<Vec<SessionRecord>, StorageError> {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.list(&filter)).await?
    }

    /// At startup: sessions still `live` in the index were cut by a crash. Mark them
    /// `aborted` with the byte count found on disk; the bytes themselves stay as they are.
    pub fn recover_crashed_sessions(&self) -> Result<Vec<SessionRecord>, StorageError> {
        let live = SessionFilter {
            state: Some(SessionState::Live.as_str().into()),
            ..SessionFilter::default()
        };
        let mut recovered = Vec::new();
        for mut record in self.index.list(&live)? {
            let path = self.dst.join(&record.path);
            record.bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            record.state = SessionState::Aborted;
            record.ended_at = Some(Utc::now());
            if record.problem.is_none() {
                record.problem = Some(Problem {
                    line: 0,
                    reason: "recorder stopped while the session was live".into(),
                });
            }
            self.index.put(&record)?;
            recovered.push(record);
        }
        Ok(recovered)
    }
}
