//! One recording's pipeline: read → check → append → sync → durable offset → end state.
//!
//! Two loops run side by side for each session. The reader takes body chunks (a batch of
//! what is already buffered), feeds the content check and appends to the recording file;
//! a batch is written on the blocking pool while the reader receives and checks the next
//! one, so one busy session uses more than one core.
//! The syncer waits for new written bytes, asks the group committer for an fsync, and
//! publishes the durable offset that acks report. The reader never waits for an fsync,
//! so a slow disk bounds ack delay, not ingest rate.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::{LiveCounters, SessionManager};
use crate::asciicast::{Problem, Progress, Validator};
use crate::metrics as m;
use crate::replication::quorum::quorum_offset;
use crate::storage::index::{SessionRecord, SessionState};
use crate::storage::{CacheRelease, RecordingFile, Storage, StorageError, SyncHandle};

/// Upper bound on one batch: chunks already buffered are taken together up to this. A
/// session holds at most two batches (one being written, one being checked) besides what
/// HTTP/2 flow control lets the client have in flight.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// How long a session that ended cleanly waits for its last bytes to be durable on a
/// majority before answering its client anyway.
const FINAL_QUORUM_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// An admitted recording, ready to [`run`](Session::run).
pub struct Session {
    manager: Arc<SessionManager>,
    /// The index record; updated as the header arrives and when the session ends.
    record: SessionRecord,
    recording: RecordingFile,
    counters: Arc<LiveCounters>,
    validator: Validator,
    /// A content problem was already logged as a warning when found, so that the end of
    /// the session does not log it a second time.
    content_warned: bool,
    /// Durable on a majority of the replica set: what acks report.
    durable_tx: watch::Sender<u64>,
    /// Appended (page cache): what the syncer and the replication senders follow.
    written_tx: watch::Sender<u64>,
    /// Where this connection's bytes start in the recording (0 unless resumed).
    start: u64,
    /// Taken over without a client, only to be sealed.
    orphan: bool,
    /// Held for the session's life: the admission slot.
    _permit: OwnedSemaphorePermit,
}

/// How a session ended, for the ingest layer to answer its client.
#[derive(Debug)]
pub struct Outcome {
    /// The final index record (state, bytes, problem).
    pub record: SessionRecord,
    /// Bytes durable on a majority at the end.
    pub durable: u64,
    /// A failure the client should be told about (v2 error frame, v1 status).
    pub error: Option<String>,
    /// The session goes on elsewhere: a resuming client should reconnect to another node.
    pub reconnect: bool,
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
    /// Another node took the session over (a replica holds a newer epoch).
    Deposed,
    /// This node gives the session up (disk full): the client continues elsewhere.
    HandOff,
}

impl Session {
    pub(super) fn new(
        manager: Arc<SessionManager>,
        record: SessionRecord,
        recording: RecordingFile,
        counters: Arc<LiveCounters>,
        permit: OwnedSemaphorePermit,
        validator: Validator,
    ) -> Session {
        let start = recording.written();
        Session {
            manager,
            orphan: record.protocol == "orphan",
            record,
            recording,
            counters,
            validator,
            content_warned: false,
            durable_tx: watch::Sender::new(start),
            written_tx: watch::Sender::new(start),
            start,
            _permit: permit,
        }
    }

    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// The byte of the recording this connection's body starts at.
    pub fn resume_offset(&self) -> u64 {
        self.start
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
        let replicator = self.start_replication();
        let (local_tx, local_rx) = watch::channel(self.start);
        let sync_failed = CancellationToken::new();
        let reading_done = CancellationToken::new();
        let syncer = sync_loop(
            self.manager.storage().clone(),
            self.recording.sync_handle(),
            self.written_tx.subscribe(),
            local_tx,
            self.start,
            (sync_failed.clone(), reading_done.clone()),
        );
        let combiner = tokio::spawn(combine(
            local_rx,
            replicator.as_ref().map(|r| (r.offsets(), r.set_size())),
            self.durable_tx.clone(),
            self.counters.clone(),
            CacheRelease::new(self.recording.sync_handle(), self.start),
        ));
        let deposed = replicator.as_ref().map(|r| r.deposed()).unwrap_or_default();
        let reader = async {
            let end = self.read_loop(body, &sync_failed, &deposed).await;
            reading_done.cancel();
            end
        };
        let (end, synced) = tokio::join!(reader, syncer);
        let end = match synced {
            Err(e) => End::Storage(e.to_string()),
            Ok(()) => end,
        };
        let outcome = self.finish(end, replicator.as_deref()).await;
        combiner.abort();
        outcome
    }

    /// Starts the data plane for this session, if the node is part of a recorder set.
    fn start_replication(&self) -> Option<Box<dyn super::Replicator>> {
        let request = super::ReplicateRequest {
            id: self.record.id.clone(),
            epoch: self.record.epoch,
            replicas: self.record.replicas.clone(),
            node_dir: self.record.node_dir.clone(),
            file_name: self.recording.file_name().to_string(),
            file: self.recording.sync_handle(),
            written: self.written_tx.subscribe(),
        };
        self.manager.admission().replicate(request)
    }

    /// Reads the body to its end; every byte read is written (none left in flight) when it
    /// returns.
    async fn read_loop<S, E>(
        &mut self,
        body: S,
        sync_failed: &CancellationToken,
        deposed: &CancellationToken,
    ) -> End
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let end = self.read_batches(body, sync_failed, deposed).await;
        let settled = self.recording.settle().await;
        self.publish_written();
        match settled {
            Err(e) if !matches!(end, End::Storage(_)) => End::Storage(e.to_string()),
            _ => end,
        }
    }

    async fn read_batches<S, E>(
        &mut self,
        mut body: S,
        sync_failed: &CancellationToken,
        deposed: &CancellationToken,
    ) -> End
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let shutdown = self.manager.shutdown.clone();
        let handoff = self.manager.handoff_token();
        let header_deadline = tokio::time::sleep(self.manager.config().header_timeout);
        tokio::pin!(header_deadline);
        loop {
            let waiting_for_header = !self.validator.header_seen();
            let writing = self.recording.writing();
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Shutdown,
                _ = deposed.cancelled() => return End::Deposed,
                _ = handoff.cancelled() => return End::HandOff,
                _ = sync_failed.cancelled() => return End::Storage("sync failed".into()),
                _ = &mut header_deadline, if waiting_for_header => return End::HeaderTimeout,
                // The last batch's write finishing is news even if no more bytes come:
                // the syncer and the senders follow what is written.
                settled = self.recording.settle(), if writing => {
                    if let Err(e) = settled {
                        return End::Storage(e.to_string());
                    }
                    self.publish_written();
                    continue;
                }
                next = body.next() => next,
            };
            let first = match next {
                None => return End::Eof,
                Some(Err(e)) => return End::ClientGone(e.to_string()),
                Some(Ok(bytes)) => bytes,
            };
            let (batch, tail) = coalesce(first, &mut body);
            if deposed.is_cancelled() {
                return End::Deposed;
            }
            if let Err(e) = self.ingest(batch).await {
                return End::Storage(e.to_string());
            }
            if let Some(end) = tail {
                return end;
            }
        }
    }

    /// Checks one batch and starts writing it; the previous batch's write, which ran
    /// meanwhile, is done when this returns, and the syncer and the senders are told.
    async fn ingest(&mut self, batch: Vec<Bytes>) -> Result<(), StorageError> {
        let mut progress = Progress::default();
        let mut len = 0;
        for chunk in &batch {
            let found = self.validator.feed(chunk);
            progress.header = progress.header.or(found.header);
            progress.problem = progress.problem.or(found.problem);
            len += chunk.len() as u64;
        }
        self.recording.append_behind(batch).await?;
        self.publish_written();
        metrics::counter!(m::BYTES_IN).increment(len);
        self.on_progress(progress).await;
        Ok(())
    }

    /// Tells the syncer and the replication senders how far the file is written.
    fn publish_written(&mut self) {
        let total = self.recording.written();
        self.counters.written.store(total, Ordering::Relaxed);
        self.written_tx.send_if_modified(|w| {
            let grew = total > *w;
            *w = total;
            grew
        });
    }

    async fn on_progress(&mut self, progress: Progress) {
        if let Some(problem) = progress.problem {
            tracing::warn!(id = %self.record.id, line = problem.line, reason = %problem.reason,
                "recording content is not valid asciicast v2; storing it as received");
            self.content_warned = true;
        }
        if let Some(header) = progress.header {
            self.record.header = Some(header);
            self.record.bytes = self.recording.written();
            // Not awaited to durability: the read loop goes on at once, and the header
            // is in the recording itself should a crash lose this record.
            if let Err(e) = self
                .manager
                .storage()
                .queue_record(self.record.clone())
                .await
            {
                // The index catches up at the end.
                tracing::warn!(id = %self.record.id, error = %e, "cannot index header yet");
            }
        }
    }

    /// Decides the final state, seals where the session really ended, stores the record,
    /// and leaves the live set.
    async fn finish(mut self, end: End, replicator: Option<&dyn super::Replicator>) -> Outcome {
        let survives = self.manager.admission().survives_node_loss();
        let verdict = self.verdict(end, survives);
        self.report_problem(&verdict);
        let len = self.recording.written();
        if verdict.seal {
            self.await_quorum(len).await;
            if let Some(replicator) = replicator {
                replicator.seal(len, verdict.state).await;
            }
        }
        self.record.state = verdict.state;
        self.record.problem = verdict.problem;
        self.record.bytes = len;
        self.record.ended_at = Some(Utc::now());
        if let Err(e) = self.manager.storage().put_record(self.record.clone()).await {
            tracing::error!(id = %self.record.id, error = %e, "cannot store the final session record");
        }
        self.manager.forget(&self.record.id);
        if verdict.seal {
            let admission = self.manager.admission().clone();
            admission
                .ended(
                    self.record.id.clone(),
                    self.record.epoch,
                    verdict.state,
                    self.orphan,
                )
                .await;
        }
        let state = verdict.state;
        metrics::counter!(m::SESSIONS_ENDED, "state" => state.as_str()).increment(1);
        tracing::info!(id = %self.record.id, state = state.as_str(), bytes = self.record.bytes,
            sealed = verdict.seal, problem = ?self.record.problem, "session ended here");
        Outcome {
            durable: *self.durable_tx.borrow(),
            record: self.record,
            error: verdict.error,
            reconnect: verdict.reconnect,
        }
    }

    /// Bad input is logged as a warning and counted, whatever its kind: content found
    /// wrong while streaming (already logged then), at the end of the body (an empty body,
    /// a header or last line left incomplete), a header that never completed, or a stream
    /// cut. Invalid recordings count in `quorumcast_invalid_recordings_total`; cut ones
    /// count in `quorumcast_sessions_ended_total{state="aborted"}` where they end.
    fn report_problem(&self, verdict: &Verdict) {
        if let Some(problem) = &verdict.problem {
            let logged = self.content_warned && self.validator.problem() == Some(problem);
            if !logged {
                tracing::warn!(id = %self.record.id, line = problem.line,
                    reason = %problem.reason, state = verdict.state.as_str(),
                    "session ends with a problem; its bytes are kept as received");
            }
        }
        if self.validator.problem().is_some() || verdict.state == SessionState::Invalid {
            metrics::counter!(m::INVALID_RECORDINGS).increment(1);
        }
    }

    /// Waits (bounded) until everything written is durable on a majority.
    async fn await_quorum(&self, len: u64) {
        let mut durable = self.durable_tx.subscribe();
        let reached =
            tokio::time::timeout(FINAL_QUORUM_WAIT, durable.wait_for(|d| *d >= len)).await;
        if reached.is_err() {
            tracing::warn!(id = %self.record.id, len, durable = *self.durable_tx.borrow(),
                "final bytes not durable on a majority in time");
        }
    }

    /// The end state for `end`. In a recorder set only a clean end (or a content failure
    /// such as a missing header) seals the recording; a cut stream leaves the session live
    /// for the client to resume elsewhere, or for the orphan sweeper to seal.
    fn verdict(&mut self, end: End, survives: bool) -> Verdict {
        if matches!(end, End::Eof) {
            self.validator.finish(true);
        }
        let content = self.validator.problem().cloned();
        let line = self.validator.lines() + 1;
        let mid_line = if self.validator.mid_line() {
            " mid-line"
        } else {
            ""
        };
        let timeout = self.manager.config().header_timeout.as_secs_f64();
        let at = |reason: String| Some(Problem { line, reason });
        let continued = if survives {
            "; the session stays live in the recorder set"
        } else {
            ""
        };
        match end {
            End::Eof if self.orphan => Verdict::sealed(
                SessionState::Aborted,
                at(format!(
                    "owner and client gone; sealed at {} bytes",
                    self.recording.written()
                )),
            ),
            End::Eof if content.is_some() => Verdict::sealed(SessionState::Invalid, content),
            End::Eof => Verdict::sealed(SessionState::Complete, None),
            End::HeaderTimeout => {
                let reason = format!("no complete header line within {timeout} s");
                let mut verdict = Verdict::sealed(SessionState::Invalid, at(reason.clone()));
                verdict.error = Some(reason);
                verdict
            }
            End::ClientGone(e) => Verdict::cut(
                survives,
                content.or(at(format!("client disconnected{mid_line}: {e}{continued}"))),
                None,
            ),
            End::Shutdown => {
                let reason = "recorder shut down during the session".to_string();
                Verdict::cut(
                    survives,
                    content.or(at(format!("{reason}{continued}"))),
                    Some(reason),
                )
            }
            End::Storage(e) => {
                let reason = format!("storage failed: {e}");
                Verdict::cut(
                    survives,
                    content.or(at(format!("{reason}{continued}"))),
                    Some(reason),
                )
            }
            End::Deposed => {
                let reason = "another node took the session over".to_string();
                Verdict::cut(true, at(reason.clone()), Some(reason))
            }
            End::HandOff => {
                let reason = "this recorder's disk is full: continue on another node".to_string();
                Verdict::cut(survives, content.or(at(reason.clone())), Some(reason))
            }
        }
    }
}

/// The end of a session on this node.
struct Verdict {
    state: SessionState,
    problem: Option<Problem>,
    /// The recording is over: make it durable on a majority, seal the copies, tell Raft.
    seal: bool,
    error: Option<String>,
    reconnect: bool,
}

impl Verdict {
    fn sealed(state: SessionState, problem: Option<Problem>) -> Verdict {
        Verdict {
            state,
            problem,
            seal: true,
            error: None,
            reconnect: false,
        }
    }

    /// Cut short: sealed here on a standalone node, left live in a recorder set.
    fn cut(survives: bool, problem: Option<Problem>, error: Option<String>) -> Verdict {
        Verdict {
            state: SessionState::Aborted,
            problem,
            seal: !survives,
            reconnect: survives && error.is_some(),
            error,
        }
    }
}

/// Publishes the majority-durable offset from this node's and the replicas' offsets, and
/// releases from the page cache what every replica set member has made durable (so the
/// replication senders, which read the file, are past it too).
async fn combine(
    mut local: watch::Receiver<u64>,
    replicas: Option<(watch::Receiver<BTreeMap<u64, u64>>, usize)>,
    durable: watch::Sender<u64>,
    counters: Arc<LiveCounters>,
    mut cache: CacheRelease,
) {
    let (mut others, set_size) = match replicas {
        Some((others, size)) => (Some(others), size),
        None => (None, 1),
    };
    let mut local_open = true;
    loop {
        let own = *local.borrow_and_update();
        let (quorum, everywhere) = match others.as_mut() {
            None => (own, own),
            Some(o) => {
                let offsets: Vec<u64> = o.borrow_and_update().values().copied().collect();
                (
                    quorum_offset(own, &offsets, set_size),
                    durable_everywhere(own, &offsets, set_size),
                )
            }
        };
        cache.advance(everywhere);
        durable.send_if_modified(|d| {
            let advanced = quorum > *d;
            *d = (*d).max(quorum);
            advanced
        });
        counters.durable.store(*durable.borrow(), Ordering::Relaxed);
        let others_changed = async {
            match others.as_mut() {
                Some(o) => o.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = local.changed(), if local_open => local_open = changed.is_ok(),
            open = others_changed => if !open { others = None },
        }
        if !local_open && others.is_none() {
            return;
        }
    }
}

/// The offset durable on every member of a replica set of `set_size` (0 until every
/// replica reported).
fn durable_everywhere(own: u64, replicas: &[u64], set_size: usize) -> u64 {
    if replicas.len() + 1 < set_size {
        return 0;
    }
    replicas.iter().copied().fold(own, u64::min)
}

/// Takes `first` and whatever the body already has buffered, up to [`MAX_BATCH_BYTES`],
/// as one batch of chunks (not merged: they are written with one `pwritev`). Returns the
/// batch and, if the body ended or failed while draining, how it ended.
fn coalesce<S, E>(first: Bytes, body: &mut S) -> (Vec<Bytes>, Option<End>)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    let mut len = first.len();
    let mut batch = vec![first];
    let mut tail = None;
    while len < MAX_BATCH_BYTES {
        match body.next().now_or_never() {
            Some(Some(Ok(more))) => {
                len += more.len();
                batch.push(more);
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
    (batch, tail)
}

/// Publishes this node's durable offset: syncs whenever the written offset moved past it.
async fn sync_loop(
    storage: Storage,
    handle: SyncHandle,
    mut written: watch::Receiver<u64>,
    durable: watch::Sender<u64>,
    already_durable: u64,
    (failed, reading_done): (CancellationToken, CancellationToken),
) -> Result<(), StorageError> {
    let mut synced = already_durable;
    loop {
        let target = *written.borrow_and_update();
        if target > synced {
            if let Err(e) = storage.sync(&handle).await {
                failed.cancel();
                return Err(e);
            }
            synced = target;
            durable.send_replace(synced);
            continue;
        }
        if reading_done.is_cancelled() {
            // The reader is done and everything it wrote is synced.
            return Ok(());
        }
        tokio::select! {
            changed = written.changed() => if changed.is_err() { return Ok(()) },
            _ = reading_done.cancelled() => {}
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

    #[test]
    fn bytes_count_as_durable_everywhere_only_once_every_replica_reported() {
        assert_eq!(
            durable_everywhere(10, &[], 1),
            10,
            "no replicas: own offset"
        );
        assert_eq!(
            durable_everywhere(10, &[7], 3),
            0,
            "one replica not heard of yet"
        );
        assert_eq!(durable_everywhere(10, &[7, 12], 3), 7);
        assert_eq!(durable_everywhere(5, &[7, 12], 3), 5);
    }

    fn stream_of(chunks: Vec<&'static [u8]>) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c))))
    }

    #[tokio::test]
    async fn complete_session_stores_every_byte_and_acks_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mgr = manager(dir.path(), SessionConfig::default());
        let session = mgr.open("node-a", "v2", None).await.expect("open");
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
        let session = mgr.open("node-a", "v1", None).await.expect("open");
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
        let session = mgr.open("n", "v2", None).await.expect("open");
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
        let session = mgr.open("n", "v2", None).await.expect("open");
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
        let _first = mgr.open("n", "v2", None).await.expect("open");
        let second = mgr.open("n", "v2", None).await;
        assert!(matches!(
            second,
            Err(crate::session::Refusal::TooManySessions(1))
        ));
    }
}
