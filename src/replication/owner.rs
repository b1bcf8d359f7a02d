//! The owner side: stream a live recording to each other replica and learn what each
//! holds durably.
//!
//! One task per replica tails the owner's recording file: it sends whatever was written
//! past what the replica has (so a slow, restarted or new replica catches up from the file,
//! and never holds up the others), a ping when idle, and the seal at the end. A replica
//! that answers with a higher epoch has seen a takeover: the owner is deposed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::wire::{
    read_frame, write_data, write_frame, OpenCopy, ToOwner, ToReplica, WireError, MAX_CHUNK,
};
use crate::cluster::transport::{StreamKind, Transport};
use crate::cluster::types::NodeId;
use crate::metrics as m;
use crate::storage::index::SessionState;
use crate::storage::SyncHandle;

/// Idle streams ping this often so replicas know the owner lives.
pub const PING_INTERVAL: Duration = Duration::from_millis(500);
/// Dialling a replica and its first answer.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A replica to stream to.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: NodeId,
    pub addr: String,
}

/// Handle on a session's outgoing replication.
pub struct OwnerStreams {
    offsets: watch::Receiver<BTreeMap<NodeId, u64>>,
    sealed: watch::Receiver<BTreeMap<NodeId, u64>>,
    seal: watch::Sender<Option<(u64, SessionState)>>,
    deposed: CancellationToken,
    stop: CancellationToken,
    /// How many replicas this owner streams to.
    targets: usize,
}

impl OwnerStreams {
    /// Starts one streaming task per target.
    pub fn start(
        transport: Arc<Transport>,
        open: OpenCopy,
        file: SyncHandle,
        written: watch::Receiver<u64>,
        targets: Vec<Target>,
        tracker: &TaskTracker,
    ) -> OwnerStreams {
        let offsets = watch::Sender::new(BTreeMap::new());
        let sealed = watch::Sender::new(BTreeMap::new());
        let (seal, _) = watch::channel(None);
        let deposed = CancellationToken::new();
        let stop = CancellationToken::new();
        let streams = OwnerStreams {
            offsets: offsets.subscribe(),
            sealed: sealed.subscribe(),
            seal,
            deposed: deposed.clone(),
            stop: stop.clone(),
            targets: targets.len(),
        };
        let shared = Arc::new(Shared {
            transport,
            open,
            file,
            offsets,
            sealed,
            deposed,
            stop,
        });
        for target in targets {
            let lag = metrics::histogram!(m::REPLICA_LAG_BYTES, "replica" => target.id.to_string());
            let task = ReplicaTask {
                shared: shared.clone(),
                target,
                written: written.clone(),
                seal: streams.seal.subscribe(),
                lag,
            };
            tracker.spawn(task.run());
        }
        streams
    }

    /// Durable offsets the replicas reported.
    pub fn offsets(&self) -> watch::Receiver<BTreeMap<NodeId, u64>> {
        self.offsets.clone()
    }

    /// Cancelled when a replica holds a newer epoch: stop acking, stop writing.
    pub fn deposed(&self) -> CancellationToken {
        self.deposed.clone()
    }

    /// Asks every replica to seal at `len` and waits (bounded) for `want` of them.
    pub async fn seal(&self, len: u64, state: SessionState, want: usize, wait: Duration) -> usize {
        self.seal.send_replace(Some((len, state)));
        let (reached, count) = wait_sealed(&self.sealed, want, wait).await;
        if !reached {
            tracing::warn!(
                sealed = count,
                want,
                "not every replica confirmed the seal in time"
            );
        }
        count
    }
}

/// Waits (bounded) until `want` replicas confirmed the seal; returns whether they did and
/// how many did.
async fn wait_sealed(
    sealed: &watch::Receiver<BTreeMap<NodeId, u64>>,
    want: usize,
    wait: Duration,
) -> (bool, usize) {
    let mut sealed = sealed.clone();
    // The watch `Ref` that `wait_for` returns must be gone before borrowing again: a second
    // read lock queued behind a writer deadlocks (found by chaos-tests).
    let reached = tokio::time::timeout(wait, sealed.wait_for(|s| s.len() >= want))
        .await
        .is_ok_and(|r| r.is_ok());
    let count = sealed.borrow().len();
    (reached, count)
}

impl Drop for OwnerStreams {
    /// Once a seal was asked for, the streams to replicas that have not confirmed it keep
    /// going for a while (catching up, then sealing) before they stop.
    fn drop(&mut self) {
        let sealing = self.seal.borrow().is_some();
        let targets = self.targets;
        let all_sealed = self.sealed.borrow().len() >= targets;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if sealing && !all_sealed => {
                let stop = self.stop.clone();
                let mut sealed = self.sealed.clone();
                runtime.spawn(async move {
                    let wait = sealed.wait_for(|s| s.len() >= targets);
                    let _ = tokio::time::timeout(super::SEAL_STRAGGLERS, wait).await;
                    stop.cancel();
                });
            }
            _ => self.stop.cancel(),
        }
    }
}

struct Shared {
    transport: Arc<Transport>,
    open: OpenCopy,
    file: SyncHandle,
    offsets: watch::Sender<BTreeMap<NodeId, u64>>,
    sealed: watch::Sender<BTreeMap<NodeId, u64>>,
    deposed: CancellationToken,
    stop: CancellationToken,
}

struct ReplicaTask {
    shared: Arc<Shared>,
    target: Target,
    written: watch::Receiver<u64>,
    seal: watch::Receiver<Option<(u64, SessionState)>>,
    /// This replica's lag histogram, looked up once rather than at every durable report.
    lag: metrics::Histogram,
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("replica {replica} holds epoch {fence}")]
    Deposed { replica: NodeId, fence: u64 },
    #[error("replica refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Other(String),
}

impl ReplicaTask {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let stop = self.shared.stop.clone();
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                outcome = self.stream_once() => outcome,
            };
            match outcome {
                Ok(()) => return,
                Err(StreamError::Deposed { replica, fence }) => {
                    tracing::warn!(session = %self.shared.open.session, replica, fence,
                        epoch = self.shared.open.epoch, "a replica holds a newer epoch: deposed");
                    self.shared.deposed.cancel();
                    return;
                }
                Err(e) => {
                    tracing::debug!(session = %self.shared.open.session, replica = self.target.id, error = %e,
                        "replication stream broke; retrying");
                    // The cached connection may lead to a replica process that died: dial
                    // afresh instead of waiting for QUIC's idle timeout.
                    self.shared.transport.forget(self.target.id);
                }
            }
            tokio::select! {
                _ = self.shared.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One stream's life: open, catch up, follow, seal. `Ok` once sealed.
    async fn stream_once(&mut self) -> Result<(), StreamError> {
        let shared = self.shared.clone();
        let opened = tokio::time::timeout(
            OPEN_TIMEOUT,
            shared.transport.open_stream(
                self.target.id,
                &self.target.addr,
                StreamKind::Replication,
            ),
        )
        .await
        .map_err(|_| StreamError::Other("open timed out".into()))?;
        let (mut send, mut recv) = opened.map_err(|e| StreamError::Other(e.to_string()))?;
        write_frame(&mut send, &ToReplica::Open(shared.open.clone()).encode()?).await?;
        let first = tokio::time::timeout(OPEN_TIMEOUT, read_frame(&mut recv))
            .await
            .map_err(|_| StreamError::Other("no answer to Open".into()))??;
        let start = match ToOwner::decode(first.0, first.1)? {
            ToOwner::Ready { durable } => durable,
            ToOwner::Refused { reason, fence } => return Err(self.refusal(reason, fence)),
            other => {
                return Err(StreamError::Other(format!(
                    "unexpected first answer {other:?}"
                )))
            }
        };
        self.publish(start);
        let (answers_tx, mut answers) = mpsc::channel(16);
        let reader = tokio::spawn(async move {
            loop {
                let frame = read_frame(&mut recv)
                    .await
                    .and_then(|(t, b)| ToOwner::decode(t, b));
                let end = frame.is_err();
                if answers_tx.send(frame).await.is_err() || end {
                    return;
                }
            }
        });
        let result = self.follow(&mut send, &mut answers, start).await;
        reader.abort();
        result
    }

    /// Sends data past `sent` as it is written, pings while idle, seals at the end.
    async fn follow(
        &mut self,
        send: &mut quinn::SendStream,
        answers: &mut mpsc::Receiver<Result<ToOwner, WireError>>,
        mut sent: u64,
    ) -> Result<(), StreamError> {
        let mut seal_sent = false;
        let (mut written_open, mut seal_open) = (true, true);
        loop {
            let written = *self.written.borrow_and_update();
            let seal = *self.seal.borrow_and_update();
            if sent < written {
                sent += self.send_chunk(send, sent, written).await?;
                continue;
            }
            if let Some((len, state)) = seal.filter(|(len, _)| sent >= *len && !seal_sent) {
                write_frame(send, &ToReplica::Seal { len, state }.encode()?).await?;
                seal_sent = true;
            }
            tokio::select! {
                answer = answers.recv() => {
                    match answer.ok_or_else(|| StreamError::Other("stream closed".into()))?? {
                        ToOwner::Durable { offset } | ToOwner::Ready { durable: offset } => self.publish(offset),
                        ToOwner::Sealed { len } => {
                            self.publish(len);
                            self.shared.sealed.send_modify(|s| { s.insert(self.target.id, len); });
                            return Ok(());
                        }
                        ToOwner::Refused { reason, fence } => return Err(self.refusal(reason, fence)),
                    }
                }
                () = changed_or_idle(&mut self.written, &mut written_open) => {}
                () = changed_or_idle(&mut self.seal, &mut seal_open) => {}
                _ = tokio::time::sleep(super::owner::PING_INTERVAL) => {
                    write_frame(send, &ToReplica::Ping.encode()?).await?;
                }
            }
        }
    }

    /// Reads the next chunk from the file and sends it; returns its length.
    async fn send_chunk(
        &self,
        send: &mut quinn::SendStream,
        from: u64,
        upto: u64,
    ) -> Result<u64, StreamError> {
        let max = ((upto - from) as usize).min(MAX_CHUNK);
        let file = self.shared.file.clone();
        let bytes = tokio::task::spawn_blocking(move || file.read_at(from, max))
            .await
            .map_err(|e| StreamError::Other(e.to_string()))?
            .map_err(|e| StreamError::Other(e.to_string()))?;
        if bytes.is_empty() {
            return Err(StreamError::Other(format!(
                "recording shorter than {upto} bytes"
            )));
        }
        let len = bytes.len() as u64;
        write_data(send, from, Bytes::from(bytes)).await?;
        Ok(len)
    }

    fn publish(&self, offset: u64) {
        let written = *self.written.borrow();
        self.lag.record(written.saturating_sub(offset) as f64);
        self.shared.offsets.send_modify(|o| {
            let entry = o.entry(self.target.id).or_insert(0);
            *entry = (*entry).max(offset);
        });
    }

    fn refusal(&self, reason: String, fence: u64) -> StreamError {
        if fence > self.shared.open.epoch {
            StreamError::Deposed {
                replica: self.target.id,
                fence,
            }
        } else {
            StreamError::Refused(reason)
        }
    }
}

/// Waits for a new value in `rx`; once its sender is gone (`open` turns false) it never
/// returns. A bare `changed()` would return an error at once, forever, after the session
/// drops its sender at the end, and the follow loop would spin at full CPU until the
/// replica confirmed the seal (up to [`super::SEAL_STRAGGLERS`] for a stalled one). A value
/// sent just before the sender went still wakes the waiter once.
async fn changed_or_idle<T>(rx: &mut watch::Receiver<T>, open: &mut bool) {
    if *open && rx.changed().await.is_ok() {
        return;
    }
    *open = false;
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_watch_whose_sender_is_gone_wakes_for_its_last_value_then_never_again() {
        let (tx, mut rx) = watch::channel(0u64);
        let mut open = true;
        tx.send_replace(5);
        drop(tx);
        let first =
            tokio::time::timeout(Duration::from_secs(1), changed_or_idle(&mut rx, &mut open));
        assert!(
            first.await.is_ok(),
            "the last value must still wake the waiter"
        );
        assert_eq!(*rx.borrow_and_update(), 5);
        for _ in 0..3 {
            let again =
                tokio::time::timeout(Duration::from_secs(1), changed_or_idle(&mut rx, &mut open));
            assert!(
                again.await.is_err(),
                "a closed watch must not wake the loop again"
            );
            assert!(!open);
        }
    }

    /// Regression (chaos-tests, fixed in 2c05aba): the seal wait kept the watch's read
    /// guard while it borrowed the watch again; with a replica's confirmation (a writer)
    /// queued between the two, the node's thread deadlocked. Confirmations keep arriving
    /// from another thread while the owner waits, many times over; a deadlocked waiter
    /// can't be timed out from inside its runtime, so it runs on a thread of its own.
    #[test]
    fn waiting_for_seals_while_replicas_confirm_never_deadlocks() {
        let (confirm, sealed) = watch::channel(BTreeMap::<NodeId, u64>::new());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n: u64 = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    confirm.send_modify(|m| {
                        m.insert(n % 3, n);
                    });
                }
            })
        };
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                for _ in 0..2000 {
                    let (reached, count) = wait_sealed(&sealed, 1, Duration::from_secs(1)).await;
                    assert!(reached && count >= 1, "reached {reached}, count {count}");
                }
            });
            let _ = done.send(());
        });
        let result = finished.recv_timeout(Duration::from_secs(30));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(
            result.is_ok(),
            "seal waits deadlocked against a writer (or failed)"
        );
        let _ = writer.join();
    }

    #[tokio::test(start_paused = true)]
    async fn a_seal_wait_gives_up_at_its_bound_and_says_how_many_confirmed() {
        let (confirm, sealed) = watch::channel(BTreeMap::<NodeId, u64>::new());
        confirm.send_modify(|m| {
            m.insert(2, 10);
        });
        let (reached, count) = wait_sealed(&sealed, 2, Duration::from_secs(10)).await;
        assert!(!reached);
        assert_eq!(count, 1);
    }
}
