//! The streaming upload: recording bytes go to the current [`Transport`], and every byte sent
//! but not yet acknowledged stays in a bounded [`UnackedBuffer`].
//!
//! Offsets are absolute positions in the recording. The buffer holds `[acked..end)`; the
//! current stream has been handed `[..stream_offset)`; bytes in `[stream_offset..end)` wait to
//! be handed over (new output, or a resend after a failover). Every entry point first hands
//! over what waits, so a cancelled call (the session `select!`s on [`Upload::next_event`])
//! never loses or repeats a byte: the offset advances only once a chunk is queued.
//!
//! When the recorder answered the resumable extension (`Quorumcast-Resume-Offset`) on the
//! first connect, a broken stream starts a [`Reconnect`] instead of ending the upload: bytes
//! keep being buffered meanwhile, and once another recorder takes over at offset N (checked to
//! be within `[acked, sent]`), sending resumes from N. Against a stock recorder a broken
//! stream ends the upload, as before; the caller decides whether that ends the session
//! (`--enforce`) or only the recording.
//!
//! Back-pressure: when the buffer is full, [`Upload::send`] waits for acks (or for the
//! failover to finish and acks to arrive) instead of dropping anything, and the session stops
//! reading the PTY meanwhile.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::timeout;

use super::failover::{FailoverConfig, Moved, Reconnect};
use super::recorder::{RecorderAddr, StreamState, Transport};
use super::resume::ResumePoint;

/// Default bound of the unacked buffer: 8 MiB is minutes of heavy terminal output, yet small
/// enough to keep per session. A single chunk larger than the bound is still accepted when the
/// buffer is empty, so a large event can never deadlock the upload.
pub const DEFAULT_UNACKED_LIMIT: usize = 8 << 20;

/// Completed failovers not yet reported. The session drains this after every call, so it
/// holds at most a few; beyond the bound the oldest reports are dropped (only the log line
/// is lost, never data).
const MAX_PENDING_MOVES: usize = 8;

/// Why the upload cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    /// The recorder or the connection reported a failure.
    #[error("{recorder}: {reason}")]
    Failed {
        /// Recorder address.
        recorder: String,
        /// What went wrong.
        reason: String,
    },
    /// No ack (v2) or no taken bytes (v1) for the configured window while data was waiting.
    #[error("{recorder}: no progress for {window:?} (recorder stalled)")]
    Stalled {
        /// Recorder address.
        recorder: String,
        /// The ack timeout that elapsed.
        window: Duration,
    },
    /// The recorder ended its response while the recording was still going on.
    #[error("{recorder}: recorder ended the stream before the recording ended")]
    EndedEarly {
        /// Recorder address.
        recorder: String,
    },
    /// The recorder acknowledged bytes that were never sent: a broken peer.
    #[error("{recorder}: recorder acknowledged {acked} bytes but only {sent} were sent")]
    AckBeyondSent {
        /// Recorder address.
        recorder: String,
        /// Claimed ack.
        acked: u64,
        /// Bytes actually sent.
        sent: u64,
    },
    /// The end of the recording was not confirmed in time, or not completely.
    #[error("{recorder}: recording not confirmed: {acked} of {sent} bytes acknowledged ({why})")]
    Unconfirmed {
        /// Recorder address.
        recorder: String,
        /// Bytes acknowledged at the end.
        acked: u64,
        /// Bytes sent.
        sent: u64,
        /// Timeout or short final ack.
        why: String,
    },
    /// The stream broke and no recorder resumed the session within the failover deadline.
    #[error("{cause}; no recorder took over within {deadline:?} ({})", attempts.join("; "))]
    NoTakeover {
        /// Why the last stream broke.
        cause: String,
        /// `--failover-deadline`.
        deadline: Duration,
        /// The last round of attempts, one `addr: reason` per recorder.
        attempts: Vec<String>,
    },
}

/// Bytes sent (or about to be) but not yet acknowledged, as a queue of shared chunks.
#[derive(Debug)]
pub struct UnackedBuffer {
    /// `(offset of its first byte, chunk)` in recording order; the first may have been trimmed.
    chunks: VecDeque<(u64, Bytes)>,
    /// Recording offset of the first buffered byte (= bytes acknowledged).
    start: u64,
    /// Buffered bytes.
    len: usize,
    /// Most bytes buffered before [`Self::has_room`] says no.
    limit: usize,
}

impl UnackedBuffer {
    /// An empty buffer at offset 0.
    pub fn new(limit: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            start: 0,
            len: 0,
            limit,
        }
    }

    /// Offset up to which everything is acknowledged.
    pub fn start_offset(&self) -> u64 {
        self.start
    }

    /// Offset just past the last buffered byte.
    pub fn end_offset(&self) -> u64 {
        self.start + self.len as u64
    }

    /// Whether `n` more bytes fit (always true when empty, so oversized chunks still pass).
    pub fn has_room(&self, n: usize) -> bool {
        self.len == 0 || self.len + n <= self.limit
    }

    /// Appends the next bytes of the recording.
    pub fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        let offset = self.end_offset();
        self.len += chunk.len();
        self.chunks.push_back((offset, chunk));
    }

    /// Drops everything before `offset`; an offset past the end is refused.
    pub fn ack(&mut self, offset: u64) -> Result<(), (u64, u64)> {
        if offset > self.end_offset() {
            return Err((offset, self.end_offset()));
        }
        while self.start < offset {
            let Some((first, front)) = self.chunks.front_mut() else {
                break;
            };
            // Both fit in usize: the distance is at most `len`.
            let drop = front.len().min((offset - self.start) as usize);
            if drop == front.len() {
                self.chunks.pop_front();
            } else {
                let _ = front.split_to(drop);
                *first += drop as u64;
            }
            self.start += drop as u64;
            self.len -= drop;
        }
        Ok(())
    }

    /// The buffered bytes from `offset` to the end of the chunk holding it (a cheap slice);
    /// `None` at or past the end, or before the start (the caller keeps `offset >= start`).
    pub fn chunk_from(&self, offset: u64) -> Option<Bytes> {
        if offset < self.start || offset >= self.end_offset() {
            return None;
        }
        // Chunks are contiguous and sorted: binary search keeps a large resend linear overall.
        let i = self
            .chunks
            .partition_point(|(first, c)| first + c.len() as u64 <= offset);
        let (first, chunk) = self.chunks.get(i)?;
        // Within the chunk, so the distance fits in usize.
        Some(chunk.slice((offset - first) as usize..))
    }
}

/// The stream the upload currently uses.
#[derive(Debug)]
enum Link {
    /// Bytes flow to this recorder.
    Up(Transport),
    /// The stream broke; a failover is looking for another recorder.
    Reconnecting(Reconnect),
    /// The upload is over; every call returns this error.
    Down(UploadError),
}

/// One recording being streamed, to one recorder at a time.
#[derive(Debug)]
pub struct Upload {
    /// The current stream.
    link: Link,
    /// The recorder of the current (or last) stream.
    recorder: RecorderAddr,
    /// Buffered bytes: unacknowledged, or not yet handed to the stream.
    unacked: UnackedBuffer,
    /// The current stream has been handed the recording up to here.
    stream_offset: u64,
    /// Highest offset ever handed to any stream: a recorder cannot resume beyond it.
    sent_high: u64,
    /// Longest wait for progress while data is blocked.
    ack_timeout: Duration,
    /// `Some` when the first recorder answered the resumable extension.
    failover: Option<Arc<FailoverConfig>>,
    /// Completed failovers the session has not reported yet (bounded: [`MAX_PENDING_MOVES`]).
    moves: VecDeque<Moved>,
}

impl Upload {
    /// Starts an upload at offset 0 on an accepted transport; a broken stream ends it.
    pub fn new(transport: Transport, unacked_limit: usize, ack_timeout: Duration) -> Self {
        Self {
            recorder: transport.addr.clone(),
            link: Link::Up(transport),
            unacked: UnackedBuffer::new(unacked_limit),
            stream_offset: 0,
            sent_high: 0,
            ack_timeout,
            failover: None,
            moves: VecDeque::new(),
        }
    }

    /// Enables failover, if the recorder answered the extension (a stock recorder cannot
    /// continue a session elsewhere: a broken stream then still ends the upload).
    pub fn with_failover(mut self, config: FailoverConfig) -> Self {
        if matches!(&self.link, Link::Up(t) if t.resume_offset.is_some()) {
            self.failover = Some(Arc::new(config));
        }
        self
    }

    /// Whether a broken stream is followed by a failover.
    pub fn can_fail_over(&self) -> bool {
        self.failover.is_some()
    }

    /// Bytes the recorder has acknowledged.
    pub fn offset_acked(&self) -> u64 {
        self.unacked.start_offset()
    }

    /// Bytes of the recording handed to the upload (sent, or waiting for a stream).
    pub fn offset_sent(&self) -> u64 {
        self.unacked.end_offset()
    }

    /// Takes the next bytes of the recording: waits for room in the buffer, then hands them
    /// to the stream (or keeps them for the next stream while failing over).
    pub async fn send(&mut self, data: Bytes) -> Result<(), UploadError> {
        self.refresh()?;
        while !self.unacked.has_room(data.len()) {
            self.flush().await?;
            self.wait_change(Some(self.ack_timeout)).await?;
        }
        self.unacked.push(data);
        self.flush().await
    }

    /// Keeps the upload going while the session is idle: hands over waiting bytes, notices a
    /// broken stream, drives a failover. Resolves with each completed failover, or with the
    /// error that ends the upload. Cancel-safe.
    pub async fn next_event(&mut self) -> Result<Moved, UploadError> {
        loop {
            if let Some(moved) = self.moves.pop_front() {
                return Ok(moved);
            }
            self.refresh()?;
            self.flush().await?;
            if self.moves.is_empty() {
                self.wait_change(None).await?;
            }
        }
    }

    /// Completed failovers not yet reported (by [`Self::send`] or [`Self::finish`]).
    pub fn take_moves(&mut self) -> Vec<Moved> {
        self.moves.drain(..).collect()
    }

    /// Ends the body and waits (at most `limit`, plus one failover deadline when failover is
    /// on) until a recorder confirms every byte; a break meanwhile fails over and resends.
    pub async fn finish(&mut self, limit: Duration) -> Result<u64, UploadError> {
        let bound = limit
            + self
                .failover
                .as_ref()
                .map_or(Duration::ZERO, |f| f.deadline);
        match timeout(bound, self.finish_inner()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(self.unconfirmed(format!("no final confirmation within {bound:?}"))),
        }
    }

    /// Flush, end the body, wait for the final ack; again on a new stream after a failover.
    async fn finish_inner(&mut self) -> Result<u64, UploadError> {
        loop {
            self.refresh()?;
            self.flush().await?;
            match &mut self.link {
                Link::Up(transport) => transport.end_body(),
                Link::Reconnecting(_) | Link::Down(_) => {
                    self.wait_change(None).await?;
                    continue;
                }
            }
            if self.await_end().await? {
                return Ok(self.offset_sent());
            }
        }
    }

    /// After the body ended: `true` once every byte is confirmed, `false` when a failover
    /// started (the caller resends and ends the body again).
    async fn await_end(&mut self) -> Result<bool, UploadError> {
        loop {
            let Link::Up(transport) = &mut self.link else {
                return Ok(false);
            };
            let state = match absorb(transport, &mut self.unacked, self.stream_offset) {
                Ok(state) => state,
                Err(e) => return self.on_break(e).map(|()| false),
            };
            let confirmed = self.unacked.start_offset() == self.unacked.end_offset();
            let error = match state {
                StreamState::Done if confirmed => return Ok(true),
                StreamState::Done => {
                    self.unconfirmed("the recorder ended the stream early".to_owned())
                }
                StreamState::Failed(reason) => self.failed(reason),
                StreamState::Starting | StreamState::Open => {
                    if transport.progress().changed().await.is_ok() {
                        continue;
                    }
                    self.closed_reason()
                }
            };
            return self.on_break(error).map(|()| false);
        }
    }

    /// Applies the latest acks and notices a broken stream (which may start a failover).
    fn refresh(&mut self) -> Result<(), UploadError> {
        let error = match &mut self.link {
            Link::Down(e) => return Err(e.clone()),
            Link::Reconnecting(_) => return Ok(()),
            Link::Up(transport) => match absorb(transport, &mut self.unacked, self.stream_offset) {
                Ok(StreamState::Starting | StreamState::Open) => return Ok(()),
                Ok(StreamState::Done) => UploadError::EndedEarly {
                    recorder: self.recorder.to_string(),
                },
                Ok(StreamState::Failed(reason)) => self.failed(reason),
                Err(e) => e,
            },
        };
        self.on_break(error)
    }

    /// Hands the waiting bytes `[stream_offset..end)` to the current stream, each chunk within
    /// the ack timeout. Nothing to do while reconnecting.
    async fn flush(&mut self) -> Result<(), UploadError> {
        loop {
            let transport = match &self.link {
                Link::Up(transport) => transport,
                Link::Reconnecting(_) => return Ok(()),
                Link::Down(e) => return Err(e.clone()),
            };
            let Some(chunk) = self.unacked.chunk_from(self.stream_offset) else {
                return Ok(());
            };
            let len = chunk.len() as u64;
            let error = match timeout(self.ack_timeout, transport.send(chunk)).await {
                Ok(Ok(())) => {
                    self.stream_offset += len;
                    self.sent_high = self.sent_high.max(self.stream_offset);
                    continue;
                }
                Ok(Err(_closed)) => self.closed_reason(),
                Err(_) => self.stalled(),
            };
            self.on_break(error)?;
        }
    }

    /// Waits for something to happen: an ack or a break (at most `limit`) while up, the
    /// outcome of the failover while reconnecting.
    async fn wait_change(&mut self, limit: Option<Duration>) -> Result<(), UploadError> {
        let error = match &mut self.link {
            Link::Down(e) => return Err(e.clone()),
            Link::Reconnecting(reconnect) => {
                let outcome = reconnect.outcome().await;
                return self.install(outcome);
            }
            Link::Up(transport) => {
                let changed = transport.progress().changed();
                let changed = match limit {
                    Some(limit) => timeout(limit, changed).await,
                    None => Ok(changed.await),
                };
                match changed {
                    Ok(Ok(())) => return self.refresh(),
                    Ok(Err(_)) => self.closed_reason(),
                    Err(_) => self.stalled(),
                }
            }
        };
        self.on_break(error)
    }

    /// The stream broke: fail over when possible, else the upload is over.
    fn on_break(&mut self, error: UploadError) -> Result<(), UploadError> {
        let Some(config) = self.failover.clone() else {
            self.link = Link::Down(error.clone());
            return Err(error);
        };
        let point = ResumePoint {
            acked: self.unacked.start_offset(),
            sent: self.sent_high,
            buffered_from: self.unacked.start_offset(),
        };
        // Replacing the link drops the old transport: its connection is closed at once.
        self.link = Link::Reconnecting(Reconnect::start(
            config,
            self.recorder.clone(),
            point,
            error.to_string(),
        ));
        Ok(())
    }

    /// Takes the failover's outcome: resume on the new stream, or end the upload.
    fn install(&mut self, outcome: Result<Transport, Vec<String>>) -> Result<(), UploadError> {
        let Link::Reconnecting(reconnect) = &self.link else {
            return Ok(());
        };
        let resumed_at = outcome.as_ref().ok().and_then(|t| t.resume_offset);
        let transport = match (outcome, resumed_at) {
            (Ok(transport), Some(_)) => transport,
            // `connect` checked the offer, so a missing offset cannot happen; stay safe anyway.
            (Ok(transport), None) => {
                let reason = format!("{}: no resume offset", transport.addr);
                return self.give_up(vec![reason]);
            }
            (Err(attempts), _) => return self.give_up(attempts),
        };
        let resumed_at = resumed_at.unwrap_or_default();
        let moved = Moved {
            from: reconnect.from.clone(),
            to: transport.addr.clone(),
            elapsed: reconnect.started.elapsed(),
            resumed_at,
        };
        // Debug only: the session prints the one stderr line the user sees.
        tracing::debug!(%moved, "recording stream resumed");
        if self.moves.len() == MAX_PENDING_MOVES {
            self.moves.pop_front();
        }
        self.moves.push_back(moved);
        self.recorder = transport.addr.clone();
        // The recorder holds [..resumed_at); what follows is resent from the buffer.
        self.stream_offset = resumed_at;
        self.link = Link::Up(transport);
        Ok(())
    }

    /// No recorder took over: the upload is over.
    fn give_up(&mut self, attempts: Vec<String>) -> Result<(), UploadError> {
        let cause = match &self.link {
            Link::Reconnecting(reconnect) => reconnect.cause.clone(),
            _ => String::new(),
        };
        let deadline = self
            .failover
            .as_ref()
            .map_or(Duration::ZERO, |f| f.deadline);
        let error = UploadError::NoTakeover {
            cause,
            deadline,
            attempts,
        };
        self.link = Link::Down(error.clone());
        Err(error)
    }

    /// The best explanation for a closed body or progress channel.
    fn closed_reason(&mut self) -> UploadError {
        let state = match &mut self.link {
            Link::Up(transport) => transport.progress().borrow().state.clone(),
            _ => StreamState::Starting,
        };
        match state {
            StreamState::Failed(reason) => self.failed(reason),
            _ => self.failed("connection to the recorder closed".to_owned()),
        }
    }

    fn failed(&self, reason: String) -> UploadError {
        UploadError::Failed {
            recorder: self.recorder.to_string(),
            reason,
        }
    }

    fn stalled(&self) -> UploadError {
        UploadError::Stalled {
            recorder: self.recorder.to_string(),
            window: self.ack_timeout,
        }
    }

    fn unconfirmed(&self, why: String) -> UploadError {
        UploadError::Unconfirmed {
            recorder: self.recorder.to_string(),
            acked: self.offset_acked(),
            sent: self.offset_sent(),
            why,
        }
    }
}

/// Trims the buffer to the stream's latest ack and returns the stream state. An ack beyond
/// what this stream was handed is a protocol error.
fn absorb(
    transport: &mut Transport,
    unacked: &mut UnackedBuffer,
    stream_offset: u64,
) -> Result<StreamState, UploadError> {
    let progress = transport.progress().borrow_and_update().clone();
    let beyond = || UploadError::AckBeyondSent {
        recorder: transport.addr.to_string(),
        acked: progress.acked,
        sent: stream_offset,
    };
    if progress.acked > stream_offset {
        return Err(beyond());
    }
    unacked.ack(progress.acked).map_err(|_| beyond())?;
    Ok(progress.state)
}

#[cfg(test)]
mod tests {
    use super::super::fake_recorder::{Acks, Behaviour, FakeRecorder, Offer};
    use super::super::recorder::{connect, Extension, Protocol, Timeouts};
    use super::super::resume::SessionId;
    use super::*;
    use http::StatusCode;

    const SECOND: Duration = Duration::from_secs(1);

    fn timeouts(ack_window: Duration) -> Timeouts {
        Timeouts {
            dial: SECOND,
            probe: 2 * SECOND,
            overall: 5 * SECOND,
            ack_window,
        }
    }

    async fn upload_to(rec: &FakeRecorder, limit: usize, ack_window: Duration) -> Upload {
        let transport = connect(std::slice::from_ref(&rec.addr), timeouts(ack_window), None)
            .await
            .unwrap();
        Upload::new(transport, limit, ack_window)
    }

    fn session_id() -> SessionId {
        SessionId::from_uuid(uuid::Uuid::from_u128(0xfeed))
    }

    /// An upload that speaks the extension to the first of `recs` that accepts, failing over
    /// among all of them within `deadline`.
    async fn resumable_upload(recs: &[&FakeRecorder], limit: usize, deadline: Duration) -> Upload {
        let addrs: Vec<RecorderAddr> = recs.iter().map(|r| r.addr.clone()).collect();
        let ext = Extension {
            session: session_id(),
            resume: None,
        };
        let transport = connect(&addrs, timeouts(5 * SECOND), Some(&ext))
            .await
            .unwrap();
        let config = FailoverConfig {
            addrs,
            session: session_id(),
            deadline,
            ack_window: 5 * SECOND,
        };
        Upload::new(transport, limit, 5 * SECOND).with_failover(config)
    }

    fn protocol(up: &Upload) -> Option<Protocol> {
        match &up.link {
            Link::Up(t) => Some(t.protocol),
            _ => None,
        }
    }

    /// Applies acks until `offset` is acknowledged.
    async fn wait_acked(up: &mut Upload, offset: u64) {
        let deadline = tokio::time::Instant::now() + 5 * SECOND;
        while up.offset_acked() < offset {
            up.refresh().unwrap();
            assert!(tokio::time::Instant::now() < deadline, "no ack of {offset}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The recording as a set of recorders stores it: the first `N` bytes of the previous
    /// recorder, then what the next one received after answering N.
    fn stitched(first: &FakeRecorder, then: &FakeRecorder) -> Vec<u8> {
        let offered = then.requests()[0].offered.unwrap() as usize;
        let mut stored = first.received()[..offered].to_vec();
        stored.extend(then.received());
        stored
    }

    fn bytes(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn buffer_with(limit: usize, chunks: &[&'static [u8]]) -> UnackedBuffer {
        let mut b = UnackedBuffer::new(limit);
        for c in chunks {
            b.push(Bytes::from_static(c));
        }
        b
    }

    #[test]
    fn tracks_offsets_and_trims_partial_chunks() {
        let mut b = buffer_with(100, &[b"abc", b"defg", b"h"]);
        assert_eq!((b.start_offset(), b.end_offset()), (0, 8));
        b.ack(5).unwrap();
        assert_eq!((b.start_offset(), b.end_offset(), b.len), (5, 8, 3));
        assert_eq!(
            b.chunks,
            [
                (5, Bytes::from_static(b"fg")),
                (7, Bytes::from_static(b"h"))
            ]
        );
        b.ack(8).unwrap();
        assert_eq!((b.start_offset(), b.len, b.chunks.len()), (8, 0, 0));
    }

    #[test]
    fn stale_acks_are_no_ops_and_acks_past_the_end_are_refused() {
        let mut b = buffer_with(100, &[b"abcdef"]);
        b.ack(4).unwrap();
        b.ack(2).unwrap();
        assert_eq!(b.start_offset(), 4);
        assert_eq!(b.ack(7), Err((7, 6)));
        assert_eq!(b.start_offset(), 4);
    }

    #[test]
    fn room_is_bounded_but_an_empty_buffer_takes_any_chunk() {
        let mut b = buffer_with(8, &[b"12345"]);
        assert!(b.has_room(3));
        assert!(!b.has_room(4));
        b.ack(5).unwrap();
        assert!(b.has_room(1000));
    }

    #[test]
    fn chunks_are_found_from_any_buffered_offset() {
        let mut b = buffer_with(100, &[b"abc", b"defg", b"h"]);
        let at = |b: &UnackedBuffer, o| b.chunk_from(o).map(|c| c.to_vec());
        assert_eq!(at(&b, 0), Some(b"abc".to_vec()));
        assert_eq!(at(&b, 2), Some(b"c".to_vec()));
        assert_eq!(at(&b, 3), Some(b"defg".to_vec()));
        assert_eq!(at(&b, 5), Some(b"fg".to_vec()));
        assert_eq!(at(&b, 7), Some(b"h".to_vec()));
        assert_eq!(at(&b, 8), None);
        b.ack(4).unwrap();
        assert_eq!(at(&b, 3), None, "acked bytes are gone");
        assert_eq!(at(&b, 4), Some(b"efg".to_vec()));
        // Reading every chunk from the start rebuilds the buffered bytes exactly once.
        let (mut offset, mut all) = (4, Vec::new());
        while let Some(c) = b.chunk_from(offset) {
            offset += c.len() as u64;
            all.extend_from_slice(&c);
        }
        assert_eq!(all, b"efgh");
    }

    #[tokio::test]
    async fn v2_upload_is_acked_and_confirmed() {
        let rec = FakeRecorder::start(Behaviour::V2 { auto_ack: true }).await;
        let mut up = upload_to(&rec, 1024, 5 * SECOND).await;
        assert_eq!(protocol(&up), Some(Protocol::V2));
        up.send(bytes("hello ")).await.unwrap();
        up.send(bytes("world")).await.unwrap();
        assert_eq!(up.finish(5 * SECOND).await, Ok(11));
        assert_eq!(rec.received(), b"hello world");
    }

    #[tokio::test]
    async fn v1_upload_starts_on_100_continue_and_ends_on_200() {
        let rec = FakeRecorder::start(Behaviour::V1).await;
        let mut up = upload_to(&rec, 1024, 5 * SECOND).await;
        assert_eq!(protocol(&up), Some(Protocol::V1));
        up.send(bytes("{\"version\":2}\n")).await.unwrap();
        assert_eq!(up.finish(5 * SECOND).await, Ok(14));
        assert_eq!(rec.received(), b"{\"version\":2}\n");
    }

    #[tokio::test]
    async fn refusing_recorders_are_skipped_in_order() {
        let refusing =
            FakeRecorder::start(Behaviour::Refuse(StatusCode::SERVICE_UNAVAILABLE)).await;
        let healthy = FakeRecorder::start(Behaviour::V2 { auto_ack: true }).await;
        let addrs = [refusing.addr.clone(), healthy.addr.clone()];
        let transport = connect(&addrs, timeouts(5 * SECOND), None).await.unwrap();
        assert_eq!(transport.addr, healthy.addr);

        let err = connect(&addrs[..1], timeouts(5 * SECOND), None)
            .await
            .unwrap_err()
            .to_string();
        // The v2 probe got 503, then the v1 POST got 503 instead of 100 Continue.
        assert!(err.contains("HEAD /v2/record answered 503"), "{err}");
        assert!(err.contains("before 100 Continue"), "{err}");
    }

    #[tokio::test]
    async fn error_frame_breaks_the_stream() {
        let rec = FakeRecorder::start(Behaviour::V2 { auto_ack: false }).await;
        let mut up = upload_to(&rec, 1024, 5 * SECOND).await;
        up.send(bytes("data")).await.unwrap();
        rec.inject("{\"error\":\"disk full\"}").await;
        let err = timeout(5 * SECOND, up.next_event())
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            err.to_string().contains("recorder error: disk full"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn silence_past_the_ack_window_breaks_the_stream() {
        let rec = FakeRecorder::start(Behaviour::V2 { auto_ack: false }).await;
        let mut up = upload_to(&rec, 1024, Duration::from_millis(300)).await;
        up.send(bytes("data")).await.unwrap();
        let err = timeout(5 * SECOND, up.next_event())
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            err.to_string().contains("no ack from the recorder"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn ack_beyond_sent_is_a_protocol_error() {
        let rec = FakeRecorder::start(Behaviour::V2 { auto_ack: false }).await;
        let mut up = upload_to(&rec, 1024, 5 * SECOND).await;
        up.send(bytes("abc")).await.unwrap();
        rec.inject("{\"ack\":999}").await;
        let err = timeout(5 * SECOND, up.next_event())
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(
                err,
                UploadError::AckBeyondSent {
                    acked: 999,
                    sent: 3,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn full_buffer_waits_for_acks_instead_of_dropping() {
        let rec = FakeRecorder::start(Behaviour::V2 { auto_ack: false }).await;
        let mut up = upload_to(&rec, 10, 5 * SECOND).await;
        up.send(bytes("12345678")).await.unwrap();
        // 8 + 8 > 10: the second send must wait for an ack.
        let blocked = timeout(Duration::from_millis(300), up.send(bytes("abcdefgh"))).await;
        assert!(blocked.is_err(), "send did not wait for room");
        assert_eq!((up.offset_acked(), up.offset_sent()), (0, 8));
        rec.inject("{\"ack\":8}\n").await;
        timeout(5 * SECOND, up.send(bytes("abcdefgh")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((up.offset_acked(), up.offset_sent()), (8, 16));
    }

    #[tokio::test]
    async fn first_connect_names_the_session_and_enables_failover() {
        let rec = FakeRecorder::start(Behaviour::Resumable {
            acks: Acks::Every,
            offer: Offer::Echo,
        })
        .await;
        let mut up = resumable_upload(&[&rec], 1024, SECOND).await;
        assert!(up.can_fail_over());
        up.send(bytes("abc")).await.unwrap();
        assert_eq!(up.finish(5 * SECOND).await, Ok(3));
        let seen = rec.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].session.as_deref(), Some(session_id().as_str()));
        assert_eq!(
            (seen[0].resume.as_deref(), seen[0].offered),
            (None, Some(0))
        );
    }

    #[tokio::test]
    async fn a_stock_recorder_cannot_fail_over() {
        let stock = FakeRecorder::start(Behaviour::V2 { auto_ack: true }).await;
        let spare = FakeRecorder::start(Behaviour::Resumable {
            acks: Acks::Every,
            offer: Offer::Echo,
        })
        .await;
        let mut up = resumable_upload(&[&stock, &spare], 1024, 5 * SECOND).await;
        assert!(
            !up.can_fail_over(),
            "no Quorumcast-Resume-Offset, no failover"
        );
        // It was still told the session id: a stock recorder just ignores it.
        assert!(stock.requests()[0].session.is_some());
        up.send(bytes("abc")).await.unwrap();
        stock.kill();
        let err = timeout(5 * SECOND, up.next_event()).await.unwrap();
        assert!(err.is_err(), "{err:?}");
        assert!(
            spare.requests().is_empty(),
            "must not resume a stock session"
        );
    }

    #[tokio::test]
    async fn a_dying_recorder_hands_over_to_the_next_which_resumes_at_the_last_ack() {
        let first = FakeRecorder::start(Behaviour::Resumable {
            acks: Acks::Manual,
            offer: Offer::Echo,
        })
        .await;
        let second = FakeRecorder::start(Behaviour::Resumable {
            acks: Acks::Every,
            offer: Offer::Echo,
        })
        .await;
        let mut up = resumable_upload(&[&first, &second], 1024, 5 * SECOND).await;
        up.send(bytes("hello ")).await.unwrap();
        up.send(bytes("world")).await.unwrap();
        first.inject("{\"ack\":6}\n").await;
        wait_acked(&mut up, 6).await;
        first.kill();

        let moved = timeout(5 * SECOND, up.next_event()).await.unwrap().unwrap();
        assert_eq!((&moved.from, &moved.to), (&first.addr, &second.addr));
        assert_eq!(moved.resumed_at, 6);
        let seen = &second.requests()[0];
        assert_eq!(seen.session.as_deref(), Some(session_id().as_str()));
        assert_eq!(seen.resume.as_deref(), Some("6"));

        up.send(bytes("!")).await.unwrap();
        assert_eq!(up.finish(5 * SECOND).await, Ok(12));
        // "world" was resent from the buffer, exactly once.
        assert_eq!(second.received(), b"world!");
        assert_eq!(stitched(&first, &second), b"hello world!");
    }

    #[tokio::test]
    async fn a_hand_off_error_frame_moves_the_session() {
        let first = FakeRecorder::start(Behaviour::Resumable {
            acks: Acks::Manual,
            offer: Offer::Echo,
        })
        .await;
        let second = FakeRecorder::start(Behaviour::Resumable {
            acks: Acks::Every,
            offer: Offer::Echo,
        })
        .await;
        let mut up = resumable_upload(&[&first, &second], 1024, 5 * SECOND).await;
        up.send(bytes("abcdef")).await.unwrap();
        first
            .inject("{\"ack\":2}{\"error\":\"shutting down\",\"reconnect\":true}")
            .await;
        let moved = timeout(5 * SECOND, up.next_event()).await.unwrap().unwrap();
        assert_eq!(
            (moved.to.clone(), moved.resumed_at),
            (second.addr.clone(), 2)
        );
        assert_eq!(up.finish(5 * SECOND).await, Ok(6));
        assert_eq!(stitched(&first, &second), b"abcdef");
    }

    /// The first recorder acked 6 of 11 bytes and died; `bad` answers a resume with `offer`,
    /// which must be refused; the third recorder resumes correctly.
    async fn bad_offer_is_skipped(offer: Offer, expect: &str) {
        let first = FakeRecorder::start(Behaviour::Resumable {
            acks: Acks::Manual,
            offer: Offer::Echo,
        })
        .await;
        let bad = FakeRecorder::start(Behaviour::Resumable {
            acks: Acks::Every,
            offer,
        })
        .await;
        let good = FakeRecorder::start(Behaviour::Resumable {
            acks: Acks::Every,
            offer: Offer::Echo,
        })
        .await;
        let mut up = resumable_upload(&[&first, &bad, &good], 1024, 5 * SECOND).await;
        up.send(bytes("hello world")).await.unwrap();
        first.inject("{\"ack\":6}\n").await;
        wait_acked(&mut up, 6).await;
        first.kill();
        let moved = timeout(5 * SECOND, up.next_event()).await.unwrap().unwrap();
        assert_eq!((moved.to.clone(), moved.resumed_at), (good.addr.clone(), 6));
        assert_eq!(bad.requests().len(), 1, "the bad recorder was asked first");
        assert!(
            bad.received().is_empty(),
            "no byte may go to a refused offer"
        );
        assert_eq!(up.finish(5 * SECOND).await, Ok(11));
        assert_eq!(stitched(&first, &good), b"hello world");

        // The same recorder alone: the failover fails and says why.
        let lone = FakeRecorder::start(Behaviour::Resumable {
            acks: Acks::Manual,
            offer: Offer::Echo,
        })
        .await;
        let bad = FakeRecorder::start(Behaviour::Resumable {
            acks: Acks::Every,
            offer,
        })
        .await;
        let mut up = resumable_upload(&[&lone, &bad], 1024, Duration::from_millis(300)).await;
        up.send(bytes("hello world")).await.unwrap();
        lone.inject("{\"ack\":6}\n").await;
        wait_acked(&mut up, 6).await;
        lone.kill();
        let err = timeout(5 * SECOND, up.next_event())
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains(expect), "{err}");
    }

    #[tokio::test]
    async fn a_resume_offset_below_the_last_ack_is_refused() {
        bad_offer_is_skipped(
            Offer::Fixed(3),
            "offered to resume at byte 3, below the last ack 6",
        )
        .await;
    }

    #[tokio::test]
    async fn a_resume_offset_beyond_sent_is_refused() {
        bad_offer_is_skipped(
            Offer::Fixed(12),
            "offered to resume at byte 12, beyond the 11 bytes sent",
        )
        .await;
    }

    #[tokio::test]
    async fn a_resume_answered_without_an_offset_is_refused() {
        bad_offer_is_skipped(Offer::Missing, "without Quorumcast-Resume-Offset").await;
    }

    #[tokio::test]
    async fn no_takeover_within_the_deadline_ends_the_upload() {
        let first = FakeRecorder::start(Behaviour::Resumable {
            acks: Acks::Every,
            offer: Offer::Echo,
        })
        .await;
        let busy = FakeRecorder::start(Behaviour::RefusePost(
            StatusCode::SERVICE_UNAVAILABLE,
            "takeover impossible: 1 of 3 replicas reachable",
        ))
        .await;
        let deadline = Duration::from_millis(400);
        let mut up = resumable_upload(&[&first, &busy], 1024, deadline).await;
        up.send(bytes("abc")).await.unwrap();
        first.kill();
        let started = tokio::time::Instant::now();
        let err = timeout(5 * SECOND, up.next_event())
            .await
            .unwrap()
            .unwrap_err();
        let waited = started.elapsed();
        assert!(waited >= deadline && waited < 3 * SECOND, "{waited:?}");
        assert!(matches!(err, UploadError::NoTakeover { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("no recorder took over within 400ms"),
            "{text}"
        );
        assert!(
            text.contains("answered 503 Service Unavailable: takeover impossible"),
            "{text}"
        );
        assert!(!text.contains('\n'), "one line: {text}");
        assert!(
            busy.requests().len() > 1,
            "attempts are repeated until the deadline"
        );
        // Over for good: later calls say the same.
        assert_eq!(up.send(bytes("x")).await, Err(err));
    }

    #[tokio::test]
    async fn output_keeps_buffering_while_failing_over_until_the_buffer_is_full() {
        let first = FakeRecorder::start(Behaviour::Resumable {
            acks: Acks::Manual,
            offer: Offer::Echo,
        })
        .await;
        let second = FakeRecorder::start(Behaviour::RefusePost(
            StatusCode::SERVICE_UNAVAILABLE,
            "no quorum",
        ))
        .await;
        let mut up = resumable_upload(&[&first, &second], 16, 10 * SECOND).await;
        up.send(bytes("12345678")).await.unwrap();
        first.kill();
        // Let the upload notice, then keep sending while nobody takes over.
        let noticed = timeout(Duration::from_millis(300), up.next_event()).await;
        assert!(noticed.is_err(), "nothing to report yet: {noticed:?}");
        assert!(matches!(up.link, Link::Reconnecting(_)));
        timeout(SECOND, up.send(bytes("abcdefgh")))
            .await
            .expect("a send with room must not wait for the failover")
            .unwrap();
        // 16 bytes buffered: the next one waits (back-pressure), it is not dropped.
        let blocked = timeout(Duration::from_millis(300), up.send(bytes("X"))).await;
        assert!(blocked.is_err(), "a full buffer must wait");
        second.set(Behaviour::Resumable {
            acks: Acks::Every,
            offer: Offer::Echo,
        });
        timeout(5 * SECOND, up.send(bytes("X")))
            .await
            .unwrap()
            .unwrap();
        let moves = up.take_moves();
        assert_eq!(moves.len(), 1);
        assert_eq!(moves[0].resumed_at, 0);
        assert_eq!(up.finish(5 * SECOND).await, Ok(17));
        assert_eq!(second.received(), b"12345678abcdefghX");
    }

    #[tokio::test]
    async fn a_recorder_dying_before_the_final_ack_is_replaced() {
        let first = FakeRecorder::start(Behaviour::Resumable {
            acks: Acks::Manual,
            offer: Offer::Echo,
        })
        .await;
        let second = FakeRecorder::start(Behaviour::Resumable {
            acks: Acks::Every,
            offer: Offer::Echo,
        })
        .await;
        let mut up = resumable_upload(&[&first, &second], 1024, 5 * SECOND).await;
        up.send(bytes("the end")).await.unwrap();
        let (confirmed, ()) = tokio::join!(up.finish(5 * SECOND), async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            first.kill();
        });
        assert_eq!(confirmed, Ok(7));
        assert_eq!(up.take_moves().len(), 1);
        assert_eq!(second.received(), b"the end");
    }
}
