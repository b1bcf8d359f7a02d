//! Picking a recorder and opening a recording stream to it, the way a Tailscale SSH server does.
//!
//! For each address in order: probe `HEAD /v2/record` over h2c (prior knowledge); a `200` over
//! HTTP/2 selects v2 (`POST /v2/record`, full duplex, acks in the response body), anything else
//! falls back to v1 (`POST /record` over HTTP/1.1 with `Expect: 100-continue`). Any failure to
//! start moves on to the next address, all within one overall budget.
//!
//! With an [`Extension`] (quorumcast's resumable sessions, `docs/protocol.md`) the v2 `POST`
//! carries `Quorumcast-Session` (and `Quorumcast-Resume` on a reconnect), and the recorder's
//! `Quorumcast-Resume-Offset` answer is checked before the stream counts as accepted; a
//! reconnect never falls back to v1, which cannot continue a recording.
//!
//! The result is a [`Transport`]: a sender for body bytes plus a [`Progress`] watch that a
//! background task keeps up to date (acked offset, stream state). It knows nothing about the
//! unacked buffer; that is the uploader's job.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::{timeout, timeout_at, Instant};

use super::ack::{AckFrame, AckParser};
use super::resume::{self, ResumePoint, SessionId};

/// Chunks queued between the uploader and hyper. Every queued chunk is also held in the
/// uploader's unacked buffer, so this only bounds the number of in-flight chunk handles;
/// 16 lets hyper batch writes without the queue hiding back-pressure for long.
const BODY_QUEUE_CHUNKS: usize = 16;

const USER_AGENT: &str = concat!("quorumcast/", env!("CARGO_PKG_VERSION"));

/// Timeouts of recorder selection; the defaults are Tailscale's.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Limit for one TCP connect.
    pub dial: Duration,
    /// Limit for the h2c `HEAD /v2/record` probe (handshake and response).
    pub probe: Duration,
    /// Limit for trying all addresses together.
    pub overall: Duration,
    /// v2: the stream counts as broken after this long without an ack frame.
    pub ack_window: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            dial: Duration::from_secs(5),
            probe: Duration::from_secs(10),
            overall: Duration::from_secs(30),
            ack_window: Duration::from_secs(30),
        }
    }
}

/// A recorder address, normalised to `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecorderAddr {
    /// `host:port` used both to dial and as the `Host` / `:authority`.
    authority: String,
}

impl RecorderAddr {
    /// Accepts `host:port`, `host` (port 80) or `http://host[:port][/...]`.
    pub fn parse(input: &str) -> Result<Self, String> {
        let input = input.trim();
        let with_scheme = if input.contains("://") {
            input.to_owned()
        } else {
            format!("http://{input}")
        };
        let uri: Uri = with_scheme
            .parse()
            .map_err(|e| format!("bad recorder address {input:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "bad recorder address {input:?}: only http:// is supported"
            ));
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("bad recorder address {input:?}: no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        Ok(Self {
            authority: format!("{host}:{port}"),
        })
    }
}

impl std::fmt::Display for RecorderAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.authority)
    }
}

/// Which recorder protocol a transport speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `POST /record`, HTTP/1.1, no acks.
    V1,
    /// `POST /v2/record`, h2c, `{"ack":N}` frames.
    V2,
}

/// Where a stream stands, as seen by its response task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamState {
    /// Request sent; waiting for `100 Continue` (v1) or the `200` headers (v2).
    Starting,
    /// The recorder accepted; body bytes may flow.
    Open,
    /// The response ended well: v1 got its final `200`, v2's ack stream ended without error.
    Done,
    /// The stream is unusable; the text says why.
    Failed(String),
}

/// Shared view of a stream's progress, published by its response task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Offset the recorder acknowledged (v2), or body bytes hyper took for writing (v1).
    pub acked: u64,
    /// Lifecycle of the stream.
    pub state: StreamState,
    /// v2: the `Quorumcast-Resume-Offset` of the `200`, set together with `Open`.
    pub resume_offset: Option<u64>,
}

/// The resumable extension, as one `POST /v2/record` uses it.
#[derive(Debug, Clone)]
pub struct Extension {
    /// Sent as `Quorumcast-Session`.
    pub session: SessionId,
    /// `None`: a new session. `Some`: a reconnect; `acked` is sent as `Quorumcast-Resume` and
    /// the answer must satisfy [`ResumePoint::plan`].
    pub resume: Option<ResumePoint>,
}

/// An accepted recording stream to one recorder.
#[derive(Debug)]
pub struct Transport {
    /// The recorder this stream goes to.
    pub addr: RecorderAddr,
    /// The protocol negotiated with it.
    pub protocol: Protocol,
    /// The recorder's `Quorumcast-Resume-Offset` (already checked against the request): the
    /// offset of the first body byte. `None`: no extension (v1, or a stock v2 recorder).
    pub resume_offset: Option<u64>,
    /// Request body queue; `None` once the body was ended.
    body: Option<mpsc::Sender<Bytes>>,
    /// Acks and state, updated by the response task.
    progress: watch::Receiver<Progress>,
    /// Connection and response tasks, stopped when the transport goes away.
    _tasks: [TaskGuard; 2],
    /// Held so hyper keeps the connection up for as long as the stream is used.
    _sender: Sender,
}

/// hyper's request handle for the connection a transport uses.
#[derive(Debug)]
#[expect(
    dead_code,
    reason = "only held: dropping it lets hyper shut the connection down"
)]
enum Sender {
    H1(http1::SendRequest<UploadBody>),
    H2(http2::SendRequest<UploadBody>),
}

/// The body could not be queued because the request is gone (connection closed or reset).
#[derive(Debug, thiserror::Error)]
#[error("the request body to the recorder was closed")]
pub struct BodyClosed;

impl Transport {
    /// Queues body bytes; waits while hyper's queue is full.
    pub async fn send(&self, data: Bytes) -> Result<(), BodyClosed> {
        let body = self.body.as_ref().ok_or(BodyClosed)?;
        body.send(data).await.map_err(|_| BodyClosed)
    }

    /// Ends the request body: the recorder sees the end of the recording.
    pub fn end_body(&mut self) {
        self.body = None;
    }

    /// The progress watch (acks and state).
    pub fn progress(&mut self) -> &mut watch::Receiver<Progress> {
        &mut self.progress
    }
}

/// Aborts a spawned task when dropped, so no connection outlives the attempt that made it
/// (also when a timeout drops the attempt midway).
#[derive(Debug)]
struct TaskGuard(AbortHandle);

impl TaskGuard {
    fn spawn(task: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(task).abort_handle())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// No recorder accepted the recording.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No address was configured.
    #[error("no recorder address configured")]
    NoAddress,
    /// Every address failed; one `addr: reason` per attempt, in order.
    #[error("no recorder accepted the recording ({})", .0.join("; "))]
    AllFailed(Vec<String>),
}

/// Tries the addresses in order and returns the first accepted stream.
pub async fn connect(
    addrs: &[RecorderAddr],
    timeouts: Timeouts,
    ext: Option<&Extension>,
) -> Result<Transport, ConnectError> {
    if addrs.is_empty() {
        return Err(ConnectError::NoAddress);
    }
    let deadline = Instant::now() + timeouts.overall;
    let mut failures = Vec::new();
    for addr in addrs {
        match timeout_at(deadline, try_addr(addr, timeouts, deadline, ext)).await {
            Ok(Ok(transport)) => return Ok(transport),
            Ok(Err(reason)) => failures.push(format!("{addr}: {reason}")),
            Err(_) => {
                failures.push(format!(
                    "{addr}: gave up, {:?} budget for all recorders spent",
                    to_tenths(timeouts.overall)
                ));
                break;
            }
        }
    }
    Err(ConnectError::AllFailed(failures))
}

/// Rounds to 0.1 s for messages (a failover's budget is what is left of its deadline, and
/// "2.999984117s" says nothing more than "3s").
fn to_tenths(d: Duration) -> Duration {
    let tenths = (d.as_millis() + 50) / 100;
    Duration::from_millis(u64::try_from(tenths * 100).unwrap_or(u64::MAX))
}

/// One address: v2 if the probe says so, else v1 (never for a reconnect).
async fn try_addr(
    addr: &RecorderAddr,
    timeouts: Timeouts,
    deadline: Instant,
    ext: Option<&Extension>,
) -> Result<Transport, String> {
    let resume = ext.and_then(|e| e.resume.as_ref());
    match probe_v2(addr, timeouts).await {
        Ok((sender, conn_task)) => {
            let transport = start_v2(addr, sender, conn_task, timeouts, deadline, ext)
                .await
                .map_err(|e| format!("v2: {e}"))?;
            if ext.is_some() {
                resume::check_answer(resume, transport.resume_offset)
                    .map_err(|e| format!("v2: {e}"))?;
            }
            Ok(transport)
        }
        Err(probe_failure) if resume.is_some() => Err(format!(
            "v2 probe: {probe_failure}; a v1 recorder cannot resume a session"
        )),
        Err(probe_failure) => start_v1(addr, timeouts, deadline)
            .await
            .map_err(|e| format!("v2 probe: {probe_failure}; v1: {e}")),
    }
}

async fn dial(addr: &RecorderAddr, limit: Duration) -> Result<TokioIo<TcpStream>, String> {
    let stream = timeout(limit, TcpStream::connect(&addr.authority))
        .await
        .map_err(|_| format!("connect timed out after {limit:?}"))?
        .map_err(|e| format!("connect: {e}"))?;
    // Small event lines and ack frames should not wait for Nagle.
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(TokioIo::new(stream))
}

/// `HEAD /v2/record` over h2c; on success the connection is kept for the `POST`.
async fn probe_v2(
    addr: &RecorderAddr,
    timeouts: Timeouts,
) -> Result<(http2::SendRequest<UploadBody>, TaskGuard), String> {
    let io = dial(addr, timeouts.dial).await?;
    let probe = async {
        let (mut sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2c handshake: {e}"))?;
        let conn_task = TaskGuard::spawn(async move {
            // The error (if any) also fails the in-flight request, which reports it.
            let _ = conn.await;
        });
        let req = request(
            Method::HEAD,
            addr,
            "/v2/record",
            Version::HTTP_2,
            UploadBody::empty(),
        )?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HEAD /v2/record: {e}"))?;
        if resp.status() != StatusCode::OK || resp.version() < Version::HTTP_2 {
            return Err(format!("HEAD /v2/record answered {}", resp.status()));
        }
        Ok((sender, conn_task))
    };
    timeout(timeouts.probe, probe)
        .await
        .map_err(|_| format!("timed out after {:?}", timeouts.probe))?
}

/// `POST /v2/record` on the probed connection; accepted once the `200` headers arrive.
async fn start_v2(
    addr: &RecorderAddr,
    mut sender: http2::SendRequest<UploadBody>,
    conn_task: TaskGuard,
    timeouts: Timeouts,
    deadline: Instant,
    ext: Option<&Extension>,
) -> Result<Transport, String> {
    let (body_tx, body_rx) = mpsc::channel(BODY_QUEUE_CHUNKS);
    let (progress_tx, progress_rx) = watch::channel(Progress::starting());
    let mut req = request(
        Method::POST,
        addr,
        "/v2/record",
        Version::HTTP_2,
        UploadBody::new(body_rx, None),
    )?;
    if let Some(ext) = ext {
        add_extension_headers(req.headers_mut(), ext)?;
    }
    let response = sender.send_request(req);
    let driver = TaskGuard::spawn(async move {
        let state = match response.await {
            Err(e) => StreamState::Failed(format!("POST /v2/record: {e}")),
            Ok(resp) if resp.status() != StatusCode::OK => refusal(resp).await,
            Ok(resp) => match offered_offset(resp.headers()) {
                Err(reason) => StreamState::Failed(reason),
                Ok(offset) => {
                    progress_tx.send_modify(|p| {
                        p.state = StreamState::Open;
                        p.resume_offset = offset;
                    });
                    read_acks(resp.into_body(), &progress_tx, timeouts.ack_window).await
                }
            },
        };
        progress_tx.send_modify(|p| p.state = state);
    });
    let transport = Transport {
        addr: addr.clone(),
        protocol: Protocol::V2,
        resume_offset: None,
        body: Some(body_tx),
        progress: progress_rx,
        _tasks: [driver, conn_task],
        _sender: Sender::H2(sender),
    };
    wait_accepted(transport, deadline).await
}

/// Most bytes of a refusal's body quoted in the failure reason (the extension's refusals carry
/// a one-line reason; anything longer is not worth more of the log line).
const REFUSAL_REASON_BYTES: usize = 200;
/// How long we wait for a refusal's reason: a refusal must be fast, its body even more so.
const REFUSAL_BODY_WAIT: Duration = Duration::from_millis(500);

/// `Quorumcast-Session`, and `Quorumcast-Resume` on a reconnect.
fn add_extension_headers(headers: &mut header::HeaderMap, ext: &Extension) -> Result<(), String> {
    let session = header::HeaderValue::from_str(ext.session.as_str())
        .map_err(|e| format!("session id as a header: {e}"))?;
    headers.insert(resume::SESSION_HEADER, session);
    if let Some(point) = &ext.resume {
        headers.insert(resume::RESUME_HEADER, point.acked.into());
    }
    Ok(())
}

/// The `Quorumcast-Resume-Offset` of a `200`, if any; a malformed one fails the stream.
fn offered_offset(headers: &header::HeaderMap) -> Result<Option<u64>, String> {
    let Some(value) = headers.get(resume::RESUME_OFFSET_HEADER) else {
        return Ok(None);
    };
    resume::parse_offset(value.as_bytes())
        .map(Some)
        .ok_or_else(|| format!("malformed Quorumcast-Resume-Offset {value:?}"))
}

/// A non-200 answer, with the first line of its body (the recorder's reason) when it comes
/// quickly; the status alone is enough to move on.
async fn refusal(resp: hyper::Response<Incoming>) -> StreamState {
    let status = resp.status();
    let reason = match timeout(REFUSAL_BODY_WAIT, first_line(resp.into_body())).await {
        Ok(Some(line)) => format!(": {line}"),
        _ => String::new(),
    };
    StreamState::Failed(format!("POST /v2/record answered {status}{reason}"))
}

/// The first non-empty line of a body, cut to [`REFUSAL_REASON_BYTES`].
async fn first_line(mut body: Incoming) -> Option<String> {
    let mut text = Vec::new();
    while text.len() < REFUSAL_REASON_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    text.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&text);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().take(REFUSAL_REASON_BYTES).collect())
}

/// Reads `{"ack":N}` frames until the response ends; returns the final state.
async fn read_acks(
    mut body: Incoming,
    progress: &watch::Sender<Progress>,
    window: Duration,
) -> StreamState {
    let mut parser = AckParser::default();
    let mut ack_deadline = Instant::now() + window;
    loop {
        let frame = match timeout_at(ack_deadline, body.frame()).await {
            Err(_) => {
                return StreamState::Failed(format!("no ack from the recorder for {window:?}"))
            }
            Ok(None) => return StreamState::Done,
            Ok(Some(Err(e))) => return StreamState::Failed(format!("ack stream: {e}")),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers carry nothing we use.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let frames = match parser.push(&data) {
            Ok(frames) => frames,
            Err(e) => return StreamState::Failed(e.to_string()),
        };
        for frame in frames {
            match frame {
                AckFrame::Ack(n) => {
                    // Acks never go backwards; a stale lower one is harmless, so keep the max.
                    progress.send_modify(|p| p.acked = p.acked.max(n));
                    ack_deadline = Instant::now() + window;
                }
                AckFrame::Error { text, reconnect } => {
                    let hand_off = if reconnect { " (hand-off)" } else { "" };
                    return StreamState::Failed(format!("recorder error: {text}{hand_off}"));
                }
                AckFrame::Other => {}
            }
        }
    }
}

/// `POST /record` over HTTP/1.1; accepted once `100 Continue` arrives.
async fn start_v1(
    addr: &RecorderAddr,
    timeouts: Timeouts,
    deadline: Instant,
) -> Result<Transport, String> {
    let io = dial(addr, timeouts.dial).await?;
    let (mut sender, conn) = http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    let conn_task = TaskGuard::spawn(async move {
        let _ = conn.await;
    });
    let (body_tx, body_rx) = mpsc::channel(BODY_QUEUE_CHUNKS);
    let (progress_tx, progress_rx) = watch::channel(Progress::starting());
    let progress_tx = Arc::new(progress_tx);
    // v1 has no acks: bytes count as acked once hyper takes them for writing.
    let mut req = request(
        Method::POST,
        addr,
        "/record",
        Version::HTTP_11,
        UploadBody::new(body_rx, Some(progress_tx.clone())),
    )?;
    req.headers_mut().insert(
        header::EXPECT,
        header::HeaderValue::from_static("100-continue"),
    );
    let on_continue = progress_tx.clone();
    hyper::ext::on_informational(&mut req, move |res| {
        if res.status() == StatusCode::CONTINUE {
            on_continue.send_if_modified(|p| {
                let ready = p.state == StreamState::Starting;
                if ready {
                    p.state = StreamState::Open;
                }
                ready
            });
        }
    });
    let response = sender.send_request(req);
    let driver = TaskGuard::spawn(async move {
        let result = response.await;
        progress_tx.send_modify(|p| {
            p.state = match (&p.state, result) {
                (_, Err(e)) => StreamState::Failed(format!("POST /record: {e}")),
                (StreamState::Starting, Ok(resp)) => StreamState::Failed(format!(
                    "POST /record answered {} before 100 Continue",
                    resp.status()
                )),
                (_, Ok(resp)) if resp.status() == StatusCode::OK => StreamState::Done,
                (_, Ok(resp)) => {
                    StreamState::Failed(format!("POST /record answered {}", resp.status()))
                }
            }
        });
    });
    let transport = Transport {
        addr: addr.clone(),
        protocol: Protocol::V1,
        resume_offset: None,
        body: Some(body_tx),
        progress: progress_rx,
        _tasks: [driver, conn_task],
        _sender: Sender::H1(sender),
    };
    wait_accepted(transport, deadline).await
}

/// Waits until the recorder accepts (`Open`) or refuses the stream.
async fn wait_accepted(mut transport: Transport, deadline: Instant) -> Result<Transport, String> {
    loop {
        let state = transport.progress.borrow_and_update().state.clone();
        match state {
            StreamState::Open => {
                transport.resume_offset = transport.progress.borrow().resume_offset;
                return Ok(transport);
            }
            StreamState::Failed(reason) => return Err(reason),
            StreamState::Done => return Err("response ended before the recording started".into()),
            StreamState::Starting => {}
        }
        match timeout_at(deadline, transport.progress.changed()).await {
            Err(_) => return Err("no answer before the deadline".into()),
            Ok(Err(_)) => return Err("response task ended".into()),
            Ok(Ok(())) => {}
        }
    }
}

fn request(
    method: Method,
    addr: &RecorderAddr,
    path: &str,
    version: Version,
    body: UploadBody,
) -> Result<Request<UploadBody>, String> {
    // HTTP/2 needs the absolute form (scheme and :authority); HTTP/1.1 the origin form + Host.
    let uri = match version {
        Version::HTTP_2 => format!("http://{}{path}", addr.authority),
        _ => path.to_owned(),
    };
    Request::builder()
        .method(method)
        .uri(uri)
        .version(version)
        .header(header::HOST, &addr.authority)
        .header(header::USER_AGENT, USER_AGENT)
        .body(body)
        .map_err(|e| format!("building request: {e}"))
}

impl Progress {
    fn starting() -> Self {
        Self {
            acked: 0,
            state: StreamState::Starting,
            resume_offset: None,
        }
    }
}

/// Request body fed from a channel; its end is the end of the recording.
#[derive(Debug)]
pub struct UploadBody {
    /// Chunks to send; `None` for an empty body (the probe).
    rx: Option<mpsc::Receiver<Bytes>>,
    /// v1 only: counts bytes handed to hyper as acked.
    count_into: Option<Arc<watch::Sender<Progress>>>,
}

impl UploadBody {
    fn new(rx: mpsc::Receiver<Bytes>, count_into: Option<Arc<watch::Sender<Progress>>>) -> Self {
        Self {
            rx: Some(rx),
            count_into,
        }
    }

    fn empty() -> Self {
        Self {
            rx: None,
            count_into: None,
        }
    }
}

impl Body for UploadBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(data)) => {
                if let Some(progress) = &self.count_into {
                    let len = data.len() as u64;
                    progress.send_modify(|p| p.acked += len);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_recorder_addresses() {
        let ok = |s: &str| RecorderAddr::parse(s).map(|a| a.to_string());
        assert_eq!(ok("127.0.0.1:18080"), Ok("127.0.0.1:18080".into()));
        assert_eq!(ok("http://rec.example:81/"), Ok("rec.example:81".into()));
        assert_eq!(ok("http://rec.example"), Ok("rec.example:80".into()));
        assert_eq!(ok("[::1]:9000"), Ok("[::1]:9000".into()));
        assert!(ok("https://rec.example").is_err());
        assert!(ok("http://").is_err());
    }

    #[test]
    fn budgets_are_shown_in_tenths() {
        let ms = Duration::from_millis;
        assert_eq!(to_tenths(Duration::from_nanos(2_999_984_117)), ms(3000));
        assert_eq!(to_tenths(ms(1240)), ms(1200));
        assert_eq!(to_tenths(Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test]
    async fn refused_addresses_are_all_reported() {
        // Bind then drop to get ports that refuse connections.
        let mut addrs = Vec::new();
        for _ in 0..2 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            addrs.push(RecorderAddr::parse(&l.local_addr().unwrap().to_string()).unwrap());
        }
        let err = connect(&addrs, Timeouts::default(), None)
            .await
            .unwrap_err();
        let ConnectError::AllFailed(failures) = err else {
            panic!("expected AllFailed")
        };
        assert_eq!(failures.len(), 2);
        assert!(failures[0].starts_with(&addrs[0].to_string()));
        assert!(failures[1].contains("connect"));
    }
}
