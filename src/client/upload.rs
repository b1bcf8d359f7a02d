//! The streaming upload: recording bytes go to the current [`Transport`], and every byte sent
//! but not yet acknowledged stays in a bounded [`UnackedBuffer`].
//!
//! The buffer is what a later mid-session failover needs: on a broken stream, connect to another
//! recorder, learn the offset it resumes from (≥ [`Upload::offset_acked`]), and resend the
//! buffered bytes from there. Today a broken stream ends the upload; the caller decides whether
//! that ends the session (`--enforce`) or only the recording.
//!
//! Back-pressure: when the buffer is full, [`Upload::send`] waits for acks instead of dropping
//! anything, and the session stops reading the PTY meanwhile.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::timeout;

use super::recorder::{RecorderAddr, StreamState, Transport};

/// Default bound of the unacked buffer: 8 MiB is minutes of heavy terminal output, yet small
/// enough to keep per session. A single chunk larger than the bound is still accepted when the
/// buffer is empty, so a large event can never deadlock the upload.
pub const DEFAULT_UNACKED_LIMIT: usize = 8 << 20;

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
}

/// Bytes sent but not yet acknowledged, as a queue of shared chunks, with their offsets.
#[derive(Debug)]
pub struct UnackedBuffer {
    /// Chunks in send order; the first may be partly acknowledged already (it is trimmed).
    chunks: VecDeque<Bytes>,
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

    /// Offset just past the last byte sent.
    pub fn end_offset(&self) -> u64 {
        self.start + self.len as u64
    }

    /// Whether `n` more bytes fit (always true when empty, so oversized chunks still pass).
    pub fn has_room(&self, n: usize) -> bool {
        self.len == 0 || self.len + n <= self.limit
    }

    /// Records bytes as sent.
    pub fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// Drops everything before `offset`; an offset past the end is refused.
    pub fn ack(&mut self, offset: u64) -> Result<(), (u64, u64)> {
        if offset > self.end_offset() {
            return Err((offset, self.end_offset()));
        }
        while self.start < offset {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            // Both fit in usize: the distance is at most `len`.
            let drop = front.len().min((offset - self.start) as usize);
            if drop == front.len() {
                self.chunks.pop_front();
            } else {
                let _ = front.split_to(drop);
            }
            self.start += drop as u64;
            self.len -= drop;
        }
        Ok(())
    }
}

/// One recording being streamed to one recorder.
#[derive(Debug)]
pub struct Upload {
    /// The accepted stream.
    transport: Transport,
    /// Sent but unacknowledged bytes.
    unacked: UnackedBuffer,
    /// Longest wait for progress while data is blocked.
    ack_timeout: Duration,
}

impl Upload {
    /// Starts an upload at offset 0 on an accepted transport.
    pub fn new(transport: Transport, unacked_limit: usize, ack_timeout: Duration) -> Self {
        Self {
            transport,
            unacked: UnackedBuffer::new(unacked_limit),
            ack_timeout,
        }
    }

    /// The recorder this upload goes to.
    pub fn recorder(&self) -> &RecorderAddr {
        &self.transport.addr
    }

    /// Bytes the recorder has acknowledged.
    pub fn offset_acked(&self) -> u64 {
        self.unacked.start_offset()
    }

    /// Bytes handed to the transport.
    pub fn offset_sent(&self) -> u64 {
        self.unacked.end_offset()
    }

    /// Sends the next bytes of the recording, first waiting for room in the unacked buffer.
    pub async fn send(&mut self, data: Bytes) -> Result<(), UploadError> {
        self.check_live()?;
        while !self.unacked.has_room(data.len()) {
            self.wait_progress().await?;
            self.check_live()?;
        }
        // Buffer first: on v1 hyper may count the bytes as acked as soon as they are queued.
        self.unacked.push(data.clone());
        match timeout(self.ack_timeout, self.transport.send(data)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_closed)) => Err(self.closed_reason()),
            Err(_) => Err(self.stalled()),
        }
    }

    /// Resolves when the stream breaks; lets an idle session notice a dead recorder.
    pub async fn broken(&mut self) -> UploadError {
        loop {
            if let Err(e) = self.check_live() {
                return e;
            }
            if self.transport.progress().changed().await.is_err() {
                return self.closed_reason();
            }
        }
    }

    /// Ends the body and waits (at most `limit`) until the recorder confirms every byte.
    pub async fn finish(mut self, limit: Duration) -> Result<u64, UploadError> {
        self.transport.end_body();
        let outcome = timeout(limit, async {
            loop {
                let state = self.absorb_acks()?;
                match state {
                    StreamState::Done => return Ok(()),
                    StreamState::Failed(reason) => return Err(self.failed(reason)),
                    StreamState::Starting | StreamState::Open => {}
                }
                if self.transport.progress().changed().await.is_err() {
                    return Err(self.closed_reason());
                }
            }
        })
        .await;
        let (acked, sent) = (self.offset_acked(), self.offset_sent());
        let why = match outcome {
            Ok(Ok(())) if acked == sent => return Ok(sent),
            Ok(Ok(())) => "the recorder ended the stream early".to_owned(),
            Ok(Err(e)) => return Err(e),
            Err(_) => format!("no final confirmation within {limit:?}"),
        };
        Err(UploadError::Unconfirmed {
            recorder: self.recorder().to_string(),
            acked,
            sent,
            why,
        })
    }

    /// Applies the latest acks; fails if the stream is no longer usable mid-recording.
    fn check_live(&mut self) -> Result<(), UploadError> {
        match self.absorb_acks()? {
            StreamState::Starting | StreamState::Open => Ok(()),
            StreamState::Done => Err(UploadError::EndedEarly {
                recorder: self.recorder().to_string(),
            }),
            StreamState::Failed(reason) => Err(self.failed(reason)),
        }
    }

    /// Trims the buffer to the latest ack and returns the stream state.
    fn absorb_acks(&mut self) -> Result<StreamState, UploadError> {
        let progress = self.transport.progress().borrow_and_update().clone();
        self.unacked
            .ack(progress.acked)
            .map_err(|(acked, sent)| UploadError::AckBeyondSent {
                recorder: self.recorder().to_string(),
                acked,
                sent,
            })?;
        Ok(progress.state)
    }

    /// Waits for any progress update, at most the ack timeout.
    async fn wait_progress(&mut self) -> Result<(), UploadError> {
        match timeout(self.ack_timeout, self.transport.progress().changed()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.closed_reason()),
            Err(_) => Err(self.stalled()),
        }
    }

    /// The best explanation for a closed body or progress channel.
    fn closed_reason(&mut self) -> UploadError {
        let state = self.transport.progress().borrow().state.clone();
        match state {
            StreamState::Failed(reason) => self.failed(reason),
            _ => self.failed("connection to the recorder closed".to_owned()),
        }
    }

    fn failed(&self, reason: String) -> UploadError {
        UploadError::Failed {
            recorder: self.recorder().to_string(),
            reason,
        }
    }

    fn stalled(&self) -> UploadError {
        UploadError::Stalled {
            recorder: self.recorder().to_string(),
            window: self.ack_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake_recorder::{Behaviour, FakeRecorder};
    use super::super::recorder::{connect, Protocol, Timeouts};
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
        let transport = connect(std::slice::from_ref(&rec.addr), timeouts(ack_window))
            .await
            .unwrap();
        Upload::new(transport, limit, ack_window)
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
            [Bytes::from_static(b"fg"), Bytes::from_static(b"h")]
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

    #[tokio::test]
    async fn v2_upload_is_acked_and_confirmed() {
        let rec = FakeRecorder::start(Behaviour::V2 { auto_ack: true }).await;
        let mut up = upload_to(&rec, 1024, 5 * SECOND).await;
        assert_eq!(up.transport.protocol, Protocol::V2);
        up.send(bytes("hello ")).await.unwrap();
        up.send(bytes("world")).await.unwrap();
        assert_eq!(up.finish(5 * SECOND).await, Ok(11));
        assert_eq!(rec.received(), b"hello world");
    }

    #[tokio::test]
    async fn v1_upload_starts_on_100_continue_and_ends_on_200() {
        let rec = FakeRecorder::start(Behaviour::V1).await;
        let mut up = upload_to(&rec, 1024, 5 * SECOND).await;
        assert_eq!(up.transport.protocol, Protocol::V1);
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
        let transport = connect(&addrs, timeouts(5 * SECOND)).await.unwrap();
        assert_eq!(transport.addr, healthy.addr);

        let err = connect(&addrs[..1], timeouts(5 * SECOND))
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
        let err = timeout(5 * SECOND, up.broken()).await.unwrap();
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
        let err = timeout(5 * SECOND, up.broken()).await.unwrap();
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
        let err = timeout(5 * SECOND, up.broken()).await.unwrap();
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
}
