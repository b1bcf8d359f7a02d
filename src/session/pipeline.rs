//! One recording's pipeline: read → check → append → sync → durable offset → end state.
//!
//! Two loops run side by side for each session. The reader takes body chunks (coalescing
//! what is already buffered), feeds the content check and appends to the recording file.
//! The syncer waits for new written bytes, asks the group committer for an fsync, and
//! publishes the durable offset that acks report. The reader never waits for an fsync,
//! so a slow disk bounds ack delay, not ingest rate.

use std::fmt::Display;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::{LiveCounters, SessionManager};
use crate::asciicast::{Problem, Progress, Validator};
use crate::metrics as m;
use crate::storage::index::{SessionRecord, SessionState};
use crate::storage::{RecordingFile, Storage, StorageError, SyncHandle};

/// Upper bound on one coalesced append: chunks already buffered are merged up to this.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// An admitted recording, ready to [`run`](Session::run).
pub struct Session {
    manager: Arc<SessionManager>,
    /// The index record; updated as the header arrives and when the session ends.
    record: SessionRecord,
    recording: RecordingFile,
    counters: Arc<LiveCounters>,
    validator: Validator,
    durable_tx: watch::Sender<u64>,
    /// Held for the session's life: the admission slot.
    _permit: OwnedSemaphorePermit,
}

/// How a session ended, for the ingest layer to answer its client.
#[derive(Debug)]
pub struct Outcome {
    /// The final index record (state, bytes, problem).
    pub record: SessionRecord,
    /// Bytes durable at the end; equals `record.bytes` unless storage failed.
    pub durable: u64,
    /// A failure the client should be told about (v2 error frame, v1 status).
    pub error: Option<String>,
}

/// Why the reader stopped.
enum End {
    /// The client ended the body.
    Eof,
    /// The body broke: client gone, connection reset.
    ClientGone(String),
    /// The node is shutting down.
    Shutdown,
    /// No complete header line in time.
    HeaderTimeout,
    /// Appending or syncing failed.
    Storage(String),
}

impl Session {
    pub(super) fn new(
        manager: Arc<SessionManager>,
        record: SessionRecord,
        recording: RecordingFile,
        counters: Arc<LiveCounters>,
        permit: OwnedSemaphorePermit,
    ) -> Session {
        let validator = Validator::new(manager.config().limits);
        Session {
            manager,
            record,
            recording,
            counters,
            validator,
            durable_tx: watch::Sender::new(0),
            _permit: permit,
        }
    }

    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// The durable offset as it advances; what v2 acks report.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable_tx.subscribe()
    }

    /// Drives the recording to its end and stores its final record.
    pub async fn run<S, E>(mut self, body: S) -> Outcome
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let (written_tx, written_rx) = watch::channel(0u64);
        let sync_failed = CancellationToken::new();
        let syncer = sync_loop(
            self.manager.storage().clone(),
            self.recording.sync_handle(),
            written_rx,
            self.durable_tx.clone(),
            self.counters.clone(),
            sync_failed.clone(),
        );
        let reader = self.read_loop(body, written_tx, &sync_failed);
        let (end, synced) = tokio::join!(reader, syncer);
        let end = match synced {
            Err(e) => End::Storage(e.to_string()),
            Ok(()) => end,
        };
        self.finish(end).await
    }

    async fn read_loop<S, E>(
        &mut self,
        mut body: S,
        written: watch::Sender<u64>,
        sync_failed: &CancellationToken,
    ) -> End
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let shutdown = self.manager.shutdown.clone();
        let header_deadline = tokio::time::sleep(self.manager.config().header_timeout);
        tokio::pin!(header_deadline);
        loop {
            let waiting_for_header = !self.validator.header_seen();
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Shutdown,
                _ = sync_failed.cancelled() => return End::Storage("sync failed".into()),
                _ = &mut header_deadline, if waiting_for_header => return End::HeaderTimeout,
                next = body.next() => next,
            };
            let first = match next {
                None => return End::Eof,
                Some(Err(e)) => return End::ClientGone(e.to_string()),
                Some(Ok(bytes)) => bytes,
            };
            let (batch, tail) = coalesce(first, &mut body);
            if let Err(e) = self.ingest(batch, &written).await {
                return End::Storage(e.to_string());
            }
            if let Some(end) = tail {
                return end;
            }
        }
    }

    /// Checks and appends one batch, then tells the syncer how far we wrote.
    async fn ingest(
        &mut self,
        batch: Bytes,
        written: &watch::Sender<u64>,
    ) -> Result<(), StorageError> {
        let progress = self.validator.feed(&batch);
        let len = batch.len() as u64;
        self.recording.append(batch).await?;
        let total = self.recording.written();
        self.counters.written.store(total, Ordering::Relaxed);
        written.send_replace(total);
        metrics::counter!(m::BYTES_IN).increment(len);
        self.on_progress(progress).await;
        Ok(())
    }

    async fn on_progress(&mut self, progress: Progress) {
        if let Some(problem) = progress.problem {
            tracing::warn!(id = %self.record.id, line = problem.line, reason = %problem.reason,
                "recording content is not valid asciicast v2; storing it as received");
        }
        if let Some(header) = progress.header {
            self.record.header = Some(header);
            self.record.bytes = self.recording.written();
            if let Err(e) = self.manager.storage().put_record(self.record.clone()).await {
                // The header is in the recording itself; the index catches up at the end.
                tracing::warn!(id = %self.record.id, error = %e, "cannot index header yet");
            }
        }
    }

    /// Decides the final state, stores the record, and leaves the live set.
    async fn finish(mut self, end: End) -> Outcome {
        // Only a clean end lets the validator judge the tail; a cut stream is the
        // stream's problem, reported as such below.
        if matches!(end, End::Eof) {
            self.validator.finish(true);
        }
        let content_problem = self.validator.problem().cloned();
        let line = self.validator.lines() + 1;
        let mid_line = if self.validator.mid_line() {
            " mid-line"
        } else {
            ""
        };
        let timeout = self.manager.config().header_timeout.as_secs_f64();
        let (state, stream_problem, error) = match end {
            End::Eof if content_problem.is_some() => (SessionState::Invalid, None, None),
            End::Eof => (SessionState::Complete, None, None),
            End::HeaderTimeout => {
                let reason = format!("no complete header line within {timeout} s");
                (SessionState::Invalid, Some(reason.clone()), Some(reason))
            }
            End::ClientGone(e) => (
                SessionState::Aborted,
                Some(format!("client disconnected{mid_line}: {e}")),
                None,
            ),
            End::Shutdown => {
                let reason = "recorder shut down during the session".to_string();
                (SessionState::Aborted, Some(reason.clone()), Some(reason))
            }
            End::Storage(e) => {
                let reason = format!("storage failed: {e}");
                (SessionState::Aborted, Some(reason.clone()), Some(reason))
            }
        };
        // The cause of an early end comes first; otherwise the first content problem.
        let stream_problem = stream_problem.map(|reason| Problem { line, reason });
        let problem = match state {
            SessionState::Invalid if stream_problem.is_some() => stream_problem,
            _ => content_problem.clone().or(stream_problem),
        };
        if content_problem.is_some() {
            metrics::counter!(m::INVALID_RECORDINGS).increment(1);
        }
        self.record.state = state;
        self.record.problem = problem;
        self.record.bytes = self.recording.written();
        self.record.ended_at = Some(Utc::now());
        if let Err(e) = self.manager.storage().put_record(self.record.clone()).await {
            tracing::error!(id = %self.record.id, error = %e, "cannot store the final session record");
        }
        self.manager.forget(&self.record.id);
        let admission = self.manager.admission().clone();
        admission
            .ended(self.record.id.clone(), self.record.epoch, state)
            .await;
        metrics::counter!(m::SESSIONS_ENDED, "state" => state.as_str()).increment(1);
        tracing::info!(id = %self.record.id, state = state.as_str(), bytes = self.record.bytes,
            problem = ?self.record.problem, "session ended");
        Outcome {
            durable: *self.durable_tx.borrow(),
            record: self.record,
            error,
        }
    }
}

/// Merges `first` with whatever the body already has buffered, up to [`MAX_BATCH_BYTES`].
/// Returns the batch and, if the body ended or failed while draining, how it ended.
fn coalesce<S, E>(first: Bytes, body: &mut S) -> (Bytes, Option<End>)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    let mut merged: Option<BytesMut> = None;
    let mut len = first.len();
    let mut tail = None;
    while len < MAX_BATCH_BYTES {
        match body.next().now_or_never() {
            Some(Some(Ok(more))) => {
                len += more.len();
                merged
                    .get_or_insert_with(|| BytesMut::from(&first[..]))
                    .extend_from_slice(&more);
            }
            Some(Some(Err(e))) => {
                tail = Some(End::ClientGone(e.to_string()));
                break;
            }
            Some(None) => {
                tail = Some(End::Eof);
                break;
            }
            None => break,
        }
    }
    (merged.map(BytesMut::freeze).unwrap_or(first), tail)
}

/// Publishes the durable offset: syncs whenever the written offset moved past it.
async fn sync_loop(
    storage: Storage,
    handle: SyncHandle,
    mut written: watch::Receiver<u64>,
    durable: watch::Sender<u64>,
    counters: Arc<LiveCounters>,
    failed: CancellationToken,
) -> Result<(), StorageError> {
    let mut synced = 0u64;
    loop {
        let target = *written.borrow_and_update();
        if target > synced {
            if let Err(e) = storage.sync(&handle).await {
                failed.cancel();
                return Err(e);
            }
            synced = target;
            counters.durable.store(synced, Ordering::Relaxed);
            durable.send_replace(synced);
            continue;
        }
        if written.changed().await.is_err() {
            // The reader is done; one last sync if it wrote after our last look.
            if *written.borrow() > synced {
                continue;
            }
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionConfig;
    use std::time::Duration;

    fn manager(dir: &std::path::Path, config: SessionConfig) -> Arc<SessionManager> {
        let storage = Storage::open(&dir.join("dst"), &dir.join("state")).expect("storage");
        SessionManager::new(
            storage,
            config,
            CancellationToken::new(),
            Arc::new(crate::session::Standalone),
        )
    }

    fn stream_of(chunks: Vec<&'static [u8]>) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c))))
    }

    #[tokio::test]
    async fn complete_session_stores_every_byte_and_acks_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mgr = manager(dir.path(), SessionConfig::default());
        let session = mgr.open("node-a", "v2").await.expect("open");
        let body = stream_of(vec![
            b"{\"version\":2,\"width\":80,",
            b"\"height\":24}\n[0.1,\"o\",\"hi\"]\n",
        ]);
        let outcome = session.run(body).await;
        assert_eq!(outcome.record.state, SessionState::Complete);
        assert_eq!(outcome.durable, outcome.record.bytes);
        let stored =
            std::fs::read(dir.path().join("dst").join(&outcome.record.path)).expect("read");
        assert_eq!(
            stored,
            b"{\"version\":2,\"width\":80,\"height\":24}\n[0.1,\"o\",\"hi\"]\n"
        );
        assert_eq!(mgr.live_count(), 0);
    }

    #[tokio::test]
    async fn invalid_content_is_kept_and_marked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mgr = manager(dir.path(), SessionConfig::default());
        let session = mgr.open("node-a", "v1").await.expect("open");
        let outcome = session
            .run(stream_of(vec![b"garbage\n", b"\xff\xfe more"]))
            .await;
        assert_eq!(outcome.record.state, SessionState::Invalid);
        assert_eq!(outcome.record.problem.as_ref().map(|p| p.line), Some(1));
        assert_eq!(outcome.record.bytes, 15);
    }

    #[tokio::test]
    async fn client_gone_mid_line_is_aborted_with_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mgr = manager(dir.path(), SessionConfig::default());
        let session = mgr.open("n", "v2").await.expect("open");
        let sent: &[u8] = b"{\"version\":2,\"width\":80,\"height\":24}\n[0.1,\"o\",\"h";
        let body = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(sent)),
            Err("connection reset".to_string()),
        ]);
        let outcome = session.run(body).await;
        assert_eq!(outcome.record.state, SessionState::Aborted);
        assert_eq!(outcome.record.bytes, sent.len() as u64);
        assert_eq!(outcome.durable, sent.len() as u64);
        let problem = outcome.record.problem.expect("problem");
        assert_eq!(problem.line, 2);
    }

    #[tokio::test]
    async fn header_timeout_cuts_a_silent_client() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = SessionConfig {
            header_timeout: Duration::from_millis(100),
            ..SessionConfig::default()
        };
        let mgr = manager(dir.path(), config);
        let session = mgr.open("n", "v2").await.expect("open");
        let body = stream_of(vec![b"{\"version\""]).chain(futures_util::stream::pending());
        let outcome = session.run(Box::pin(body)).await;
        assert_eq!(outcome.record.state, SessionState::Invalid);
        assert!(outcome.error.is_some());
        assert_eq!(outcome.record.bytes, 10);
    }

    #[tokio::test]
    async fn admission_limit_refuses_fast() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = SessionConfig {
            max_sessions: 1,
            ..SessionConfig::default()
        };
        let mgr = manager(dir.path(), config);
        let _first = mgr.open("n", "v2").await.expect("open");
        let second = mgr.open("n", "v2").await;
        assert!(matches!(
            second,
            Err(crate::session::Refusal::TooManySessions(1))
        ));
    }
}
