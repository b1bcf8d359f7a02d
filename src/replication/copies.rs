//! The replica side: this node's copies of recordings owned by other nodes.
//!
//! Owns, per session, the copy file, its fence (the highest epoch seen), its written and
//! durable offsets, and the last time its owner was heard from. Appends are serialized per
//! copy behind one lock that also guards the fence, so a write checked against epoch e can
//! never land after a takeover raised the fence above e. The fence is the maximum of what
//! this process has seen and the epoch in the applied Raft state, which is durable: a
//! restarted replica is fenced again by the log as soon as it has caught up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::wire::OpenCopy;
use crate::cluster::store::StateReader;
use crate::metrics as m;
use crate::storage::index::{SessionRecord, SessionState};
use crate::storage::{CacheRelease, RecordingFile, Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("stale epoch {epoch}: this copy is fenced at {fence}")]
    Stale { epoch: u64, fence: u64 },
    #[error("gap: write at {offset} but the copy ends at {len}")]
    Gap { offset: u64, len: u64 },
    #[error("no copy of session {0} here")]
    Unknown(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// All copies on this node.
pub struct Copies {
    storage: Storage,
    state: StateReader,
    copies: Mutex<HashMap<String, Arc<Copy>>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// One session's copy.
pub struct Copy {
    pub session: String,
    /// The applied Raft state: every append is checked against the epoch Raft gave the
    /// session, which may have moved on without this copy's fence hearing of it.
    state: StateReader,
    inner: tokio::sync::Mutex<CopyInner>,
    written: watch::Sender<u64>,
    durable: watch::Sender<u64>,
    /// When the owner last sent a frame (data or ping), for orphan detection.
    last_owner_contact: Mutex<Instant>,
    /// Cancelled when the copy is forgotten: ends its sync loop.
    closed: CancellationToken,
    /// Drops the copy's durable bytes from the page cache (nothing here reads them back
    /// while the session runs); see [`CacheRelease`].
    cache: Mutex<CacheRelease>,
}

struct CopyInner {
    file: RecordingFile,
    /// Highest epoch seen on this node for the session.
    fence: u64,
    /// This node's index record of its copy.
    record: SessionRecord,
}

impl Copies {
    pub fn new(
        storage: Storage,
        state: StateReader,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Arc<Copies> {
        Arc::new(Copies {
            storage,
            state,
            copies: Mutex::new(HashMap::new()),
            shutdown,
            tracker,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Copy>>> {
        self.copies.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, session: &str) -> Option<Arc<Copy>> {
        self.lock().get(session).cloned()
    }

    /// This node's storage (the repair of late copies reads and writes through it).
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The epoch the applied Raft state gives the session (0 if unknown).
    fn raft_epoch(&self, session: &str) -> u64 {
        self.state
            .read(|s| s.session(session).map(|e| e.epoch).unwrap_or(0))
    }

    /// The fence this node holds for `session`.
    pub async fn fence_of(&self, session: &str) -> u64 {
        let local = match self.get(session) {
            Some(copy) => copy.inner.lock().await.fence,
            None => 0,
        };
        local.max(self.raft_epoch(session))
    }

    /// Opens the copy for a stream from its owner, raising the fence to `open.epoch`.
    pub async fn open(self: &Arc<Self>, open: &OpenCopy) -> Result<Arc<Copy>, CopyError> {
        let copy = self
            .get_or_create(&open.session, &open.node_dir, &open.file_name, open.epoch)
            .await?;
        copy.raise_fence(open.epoch, self.raft_epoch(&open.session))
            .await?;
        copy.touch();
        Ok(copy)
    }

    /// A takeover fences this copy at `epoch` and learns its durable length.
    pub async fn fence(
        self: &Arc<Self>,
        session: &str,
        epoch: u64,
        node_dir: &str,
        file_name: &str,
    ) -> Result<u64, CopyError> {
        let copy = self
            .get_or_create(session, node_dir, file_name, epoch)
            .await?;
        copy.raise_fence(epoch, self.raft_epoch(session)).await?;
        copy.sync_now(&self.storage).await
    }

    /// Bytes of a copy, for a new owner that lacks them.
    pub async fn read(&self, session: &str, from: u64, max: usize) -> Result<Bytes, CopyError> {
        let copy = self
            .get(session)
            .ok_or_else(|| CopyError::Unknown(session.to_string()))?;
        let handle = copy.inner.lock().await.file.sync_handle();
        let bytes = tokio::task::spawn_blocking(move || handle.read_at(from, max))
            .await
            .map_err(StorageError::from)??;
        Ok(Bytes::from(bytes))
    }

    async fn get_or_create(
        self: &Arc<Self>,
        session: &str,
        node_dir: &str,
        file_name: &str,
        epoch: u64,
    ) -> Result<Arc<Copy>, CopyError> {
        if let Some(copy) = self.get(session) {
            return Ok(copy);
        }
        let file = self.storage.open_copy(node_dir, file_name).await?;
        let record = self.local_record(session, &file, epoch).await?;
        let len = file.written();
        let cache = Mutex::new(CacheRelease::new(file.sync_handle(), 0));
        let copy = Arc::new(Copy {
            session: session.to_string(),
            state: self.state.clone(),
            cache,
            inner: tokio::sync::Mutex::new(CopyInner {
                file,
                fence: 0,
                record,
            }),
            written: watch::Sender::new(len),
            durable: watch::Sender::new(0),
            last_owner_contact: Mutex::new(Instant::now()),
            closed: CancellationToken::new(),
        });
        let winner = {
            let mut copies = self.lock();
            copies
                .entry(session.to_string())
                .or_insert_with(|| copy.clone())
                .clone()
        };
        if Arc::ptr_eq(&winner, &copy) {
            self.tracker.spawn(sync_loop(
                copy.clone(),
                self.storage.clone(),
                self.shutdown.clone(),
            ));
        }
        Ok(winner)
    }

    /// The index record for a copy: the existing one (this node may have owned the session
    /// before), back to live, or a new one.
    async fn local_record(
        &self,
        session: &str,
        file: &RecordingFile,
        epoch: u64,
    ) -> Result<SessionRecord, CopyError> {
        let mut record = match self.storage.get_record(session).await? {
            Some(record) => record,
            None => {
                let node_dir = file
                    .rel_path()
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                SessionRecord::new_live(
                    session.to_string(),
                    node_dir,
                    file.rel_path().to_string(),
                    "replica",
                )
            }
        };
        record.state = SessionState::Live;
        record.ended_at = None;
        record.epoch = record.epoch.max(epoch);
        record.bytes = file.written();
        self.storage.put_record(record.clone()).await?;
        Ok(record)
    }

    /// Copies whose owner has been silent for longer than `silence`.
    pub fn silent_copies(&self, silence: Duration) -> Vec<String> {
        self.lock()
            .values()
            .filter(|c| c.since_owner_contact() > silence)
            .map(|c| c.session.clone())
            .collect()
    }

    /// Forgets a sealed copy (its record and file stay).
    pub fn forget(&self, session: &str) {
        if let Some(copy) = self.lock().remove(session) {
            copy.closed.cancel();
        }
    }
}

impl Copy {
    pub fn touch(&self) {
        *self
            .last_owner_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub fn since_owner_contact(&self) -> Duration {
        self.last_owner_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    pub fn written_now(&self) -> u64 {
        *self.written.borrow()
    }

    async fn raise_fence(&self, epoch: u64, raft_epoch: u64) -> Result<(), CopyError> {
        let mut inner = self.inner.lock().await;
        let fence = inner.fence.max(raft_epoch);
        if epoch < fence {
            metrics::counter!(m::STALE_WRITES_REFUSED).increment(1);
            return Err(CopyError::Stale { epoch, fence });
        }
        inner.fence = epoch;
        Ok(())
    }

    /// The epoch the applied Raft state gives this copy's session (0 if unknown).
    fn raft_epoch(&self) -> u64 {
        self.state
            .read(|s| s.session(&self.session).map(|e| e.epoch).unwrap_or(0))
    }

    /// Appends bytes at `offset` for a writer at `epoch`; returns the copy's new length.
    ///
    /// Checked against the applied Raft epoch on every append, not only when a stream
    /// opens: a takeover may go ahead without this node's fence (a majority answered), and
    /// once Raft has given the session a newer epoch, an older owner's open stream must
    /// not write here any more.
    pub async fn append(&self, epoch: u64, offset: u64, bytes: Bytes) -> Result<u64, CopyError> {
        let mut inner = self.inner.lock().await;
        let fence = inner.fence.max(self.raft_epoch());
        if epoch < fence {
            metrics::counter!(m::STALE_WRITES_REFUSED).increment(1);
            return Err(CopyError::Stale { epoch, fence });
        }
        let mut len = inner.file.written();
        if offset > len {
            len = inner.file.refresh_len()?;
        }
        if offset > len {
            return Err(CopyError::Gap { offset, len });
        }
        // Same offset, same byte: the overlap is already here.
        let skip = (len - offset).min(bytes.len() as u64) as usize;
        if skip < bytes.len() {
            inner.file.append(bytes.slice(skip..)).await?;
        }
        let len = inner.file.written();
        self.written.send_replace(len);
        Ok(len)
    }

    /// Syncs now and returns the durable length (used when fencing). The length comes
    /// from the file itself, which this node may also have written as the session's owner.
    async fn sync_now(&self, storage: &Storage) -> Result<u64, CopyError> {
        let (handle, len) = {
            let mut inner = self.inner.lock().await;
            let len = inner.file.refresh_len()?;
            (inner.file.sync_handle(), len)
        };
        self.written.send_if_modified(|w| {
            let grew = len > *w;
            *w = (*w).max(len);
            grew
        });
        storage.sync(&handle).await?;
        self.durable.send_if_modified(|d| {
            let advanced = len > *d;
            *d = (*d).max(len);
            advanced
        });
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .advance(len);
        Ok(len)
    }

    /// Waits until `len` bytes are durable, then marks the copy's record with the
    /// recording's final state.
    pub async fn seal(
        &self,
        storage: &Storage,
        epoch: u64,
        len: u64,
        state: SessionState,
    ) -> Result<(), CopyError> {
        self.finish(storage, epoch, len, |record| record.state = state)
            .await
    }

    /// Waits until `len` bytes are durable, then lets `mark` set the record's end (state,
    /// and for a repaired copy the peer's problem and replica set) and stores it. Refused
    /// for a writer below the fence, like an append.
    pub async fn finish(
        &self,
        storage: &Storage,
        epoch: u64,
        len: u64,
        mark: impl FnOnce(&mut SessionRecord),
    ) -> Result<(), CopyError> {
        let mut durable = self.durable.subscribe();
        let have = self.written_now();
        if have < len {
            return Err(CopyError::Gap {
                offset: len,
                len: have,
            });
        }
        self.sync_now(storage).await?;
        let _ = durable.wait_for(|d| *d >= len).await;
        let mut inner = self.inner.lock().await;
        if epoch < inner.fence {
            return Err(CopyError::Stale {
                epoch,
                fence: inner.fence,
            });
        }
        mark(&mut inner.record);
        inner.record.bytes = inner.file.written();
        inner.record.ended_at = Some(Utc::now());
        inner.record.epoch = epoch;
        storage.put_record(inner.record.clone()).await?;
        Ok(())
    }
}

/// Publishes a copy's durable offset: fsyncs (group commit) whenever it grew.
async fn sync_loop(copy: Arc<Copy>, storage: Storage, shutdown: CancellationToken) {
    let mut written = copy.written.subscribe();
    loop {
        let target = *written.borrow_and_update();
        if target > *copy.durable.borrow() {
            if let Err(e) = copy.sync_now(&storage).await {
                tracing::error!(session = %copy.session, error = %e, "cannot sync a replica copy");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = copy.closed.cancelled() => return,
            changed = written.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::cluster::types::{Command, CommandResponse};

    fn claimed_epoch(response: CommandResponse) -> u64 {
        match response {
            CommandResponse::Claimed { epoch, .. } => epoch,
            other => panic!("expected Claimed, got {other:?}"),
        }
    }

    /// A copy takes bytes only at or before its end, from a writer at the current epoch;
    /// once Raft gives the session a newer epoch, an open stream of the older owner is
    /// refused although this copy's own fence never heard of the takeover.
    #[tokio::test]
    async fn appends_refuse_gaps_and_epochs_raft_has_moved_past() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage =
            Storage::open(&dir.path().join("dst"), &dir.path().join("state")).expect("storage");
        let state = StateReader::for_tests();
        let members: BTreeSet<u64> = [1, 2, 3].into_iter().collect();
        let claim = Command::ClaimSession {
            id: "s".into(),
            owner: 1,
            node_dir: "n".into(),
            file_name: "f.cast".into(),
            started_at_ms: 0,
            up: vec![1, 2, 3],
        };
        assert_eq!(claimed_epoch(state.apply_for_tests(&claim, &members)), 1);
        let copies = Copies::new(
            storage,
            state.clone(),
            CancellationToken::new(),
            TaskTracker::new(),
        );
        let open = OpenCopy {
            version: 1,
            session: "s".into(),
            epoch: 1,
            owner: 1,
            node_dir: "n".into(),
            file_name: "f.cast".into(),
        };
        let copy = copies.open(&open).await.expect("open");
        assert_eq!(
            copy.append(1, 0, Bytes::from_static(b"abc")).await.ok(),
            Some(3)
        );
        // The overlap is skipped, the rest appended.
        assert_eq!(
            copy.append(1, 1, Bytes::from_static(b"bcde")).await.ok(),
            Some(5)
        );
        assert!(matches!(
            copy.append(1, 9, Bytes::from_static(b"x")).await,
            Err(CopyError::Gap { offset: 9, len: 5 })
        ));
        let take_over = Command::TakeOver {
            id: "s".into(),
            new_owner: 2,
            from_epoch: 1,
            up: vec![1, 2, 3],
        };
        let response = state.apply_for_tests(&take_over, &members);
        assert!(
            !matches!(response, CommandResponse::Rejected { .. }),
            "{response:?}"
        );
        assert!(matches!(
            copy.append(1, 5, Bytes::from_static(b"stale")).await,
            Err(CopyError::Stale { epoch: 1, fence: 2 })
        ));
        assert_eq!(
            copy.append(2, 5, Bytes::from_static(b"f")).await.ok(),
            Some(6)
        );
        copies.forget("s");
    }
}
