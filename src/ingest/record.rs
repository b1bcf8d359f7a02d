//! The recording endpoints: `POST /record` (v1), `POST /v2/record` and its probe.
//!
//! v1: hyper answers `100 Continue` when the handler first reads the body, so a session
//! is admitted (file created, indexed) *before* the body is touched, and a refusal is a
//! fast 503 with no `100`: the client moves to the next recorder.
//!
//! v2: the 200 and its headers go out at once; the response body is a stream of
//! `{"ack":N}` frames, N being the durable offset. A frame is sent when N advances and,
//! while idle, at least every `ack_interval`. Content problems never end a stream (the
//! bytes are stored and the session marked); only storage failure, shutdown or a missing
//! header end it early, with a final `{"error":"..."}` frame.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{AppState, Peer};
use crate::metrics as m;
use crate::session::{Outcome, Refusal, Session};
use crate::storage::index::SessionState;

/// Ack frames queued towards one client. Acks are cumulative, so when the queue is full
/// (client not reading) a newer ack simply replaces the need for an older one.
const ACK_QUEUE_BOUND: usize = 16;

/// How long the final ack/error frames may wait for room in the queue.
const FINAL_FRAME_WAIT: Duration = Duration::from_secs(5);

/// `HEAD /v2/record`, `HEAD /v2/event`: 200. Over HTTP/1.1 this is still 200, and the
/// client, seeing a version below 2, falls back to v1 as the protocol says.
pub async fn probe() -> StatusCode {
    StatusCode::OK
}

/// `POST /record`: the v1 protocol.
pub async fn record_v1(State(app): State<AppState>, peer: Peer, request: Request) -> Response {
    let session = match admit(&app, peer, "v1", Extension::default()).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let body = request.into_body().into_data_stream();
    // Run in a tracked task: if hyper drops this handler (connection gone), the session
    // still ends properly and is marked.
    let task = app.tracker.spawn(session.run(body));
    match task.await {
        Ok(outcome) => v1_response(&outcome),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("session task failed: {e}\n"),
        )
            .into_response(),
    }
}

fn v1_response(outcome: &Outcome) -> Response {
    let status = match (&outcome.error, outcome.record.state) {
        (Some(_), _) => StatusCode::SERVICE_UNAVAILABLE,
        (None, SessionState::Complete | SessionState::Invalid) => StatusCode::OK,
        (None, _) => StatusCode::BAD_REQUEST,
    };
    (status, axum::Json(summary(outcome))).into_response()
}

/// What the recorder kept, told to v1 clients in the final response body.
fn summary(outcome: &Outcome) -> serde_json::Value {
    serde_json::json!({
        "id": outcome.record.id,
        "path": outcome.record.path,
        "bytes": outcome.record.bytes,
        "state": outcome.record.state,
        "problem": outcome.record.problem,
        "error": outcome.error,
    })
}

/// `POST /v2/record`: the v2 protocol, full duplex over h2c.
pub async fn record_v2(State(app): State<AppState>, peer: Peer, request: Request) -> Response {
    let extension = match Extension::from_headers(request.headers()) {
        Ok(extension) => extension,
        Err(reason) => {
            drain_briefly(request.into_body()).await;
            return refusal(StatusCode::BAD_REQUEST, &reason);
        }
    };
    let session = match admit(&app, peer, "v2", extension.clone()).await {
        Ok(session) => session,
        Err(response) => {
            drain_briefly(request.into_body()).await;
            return response;
        }
    };
    let resume_at = session.resume_offset();
    if let Some(acked) = extension.resume.filter(|acked| *acked > resume_at) {
        // Never expected: the set holds less than the client was told is durable.
        tracing::error!(
            id = session.id(),
            acked,
            resume_at,
            "client acked more than the set holds"
        );
        // Refuse rather than continue a recording with a hole; the client tries another node.
        let reason =
            format!("the recorder set holds {resume_at} bytes but the client was acked {acked}");
        return refusal(StatusCode::INTERNAL_SERVER_ERROR, &reason);
    }
    let (frames, frames_rx) = mpsc::channel::<Bytes>(ACK_QUEUE_BOUND);
    let interval = app.sessions.config().ack_interval;
    let body = request.into_body().into_data_stream();
    app.tracker.spawn(run_v2(session, body, frames, interval));
    let stream = futures_util::stream::unfold(frames_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|frame| (Ok::<_, Infallible>(frame), rx))
    });
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json");
    if extension.session.is_some() {
        response = response.header(RESUME_OFFSET_HEADER, resume_at.to_string());
    }
    response
        .body(axum::body::Body::from_stream(stream))
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}

/// Our resumable-session extension (docs/protocol.md): a client-chosen session id, and on
/// reconnect the client's last acked offset.
#[derive(Debug, Clone, Default)]
pub struct Extension {
    pub session: Option<String>,
    pub resume: Option<u64>,
}

pub const SESSION_HEADER: &str = "quorumcast-session";
pub const RESUME_HEADER: &str = "quorumcast-resume";
pub const RESUME_OFFSET_HEADER: &str = "quorumcast-resume-offset";

impl Extension {
    fn from_headers(headers: &http::HeaderMap) -> Result<Extension, String> {
        let text = |name: &str| -> Result<Option<String>, String> {
            headers
                .get(name)
                .map(|v| {
                    v.to_str()
                        .map(str::to_string)
                        .map_err(|_| format!("{name} is not ASCII"))
                })
                .transpose()
        };
        let session = text(SESSION_HEADER)?;
        if let Some(id) = &session {
            let valid = (1..=64).contains(&id.len())
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid {
                return Err(format!(
                    "{SESSION_HEADER} must be 1-64 characters of [A-Za-z0-9._-]"
                ));
            }
        }
        let resume = text(RESUME_HEADER)?
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("{RESUME_HEADER} must be a byte offset"))
            })
            .transpose()?;
        if resume.is_some() && session.is_none() {
            return Err(format!("{RESUME_HEADER} needs {SESSION_HEADER}"));
        }
        Ok(Extension { session, resume })
    }
}

/// Runs the session and its ack stream together, then sends the final frames.
async fn run_v2(
    session: Session,
    body: axum::body::BodyDataStream,
    frames: mpsc::Sender<Bytes>,
    interval: Duration,
) {
    let done = CancellationToken::new();
    let acks = ack_loop(session.durable(), interval, frames.clone(), done.clone());
    let run = async {
        let outcome = session.run(body).await;
        done.cancel();
        outcome
    };
    let (outcome, ()) = tokio::join!(run, acks);
    let mut last = vec![ack_frame(outcome.durable)];
    if let Some(error) = &outcome.error {
        last.push(error_frame(error, outcome.reconnect));
    }
    for frame in last {
        if tokio::time::timeout(FINAL_FRAME_WAIT, frames.send(frame))
            .await
            .is_err()
        {
            break;
        }
    }
}

/// Sends an ack when the durable offset advances, and a keep-alive ack when idle.
async fn ack_loop(
    mut durable: watch::Receiver<u64>,
    interval: Duration,
    frames: mpsc::Sender<Bytes>,
    done: CancellationToken,
) {
    let mut keepalive = tokio::time::interval(interval);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = done.cancelled() => return,
            changed = durable.changed() => if changed.is_err() { done.cancelled().await; return; },
            _ = keepalive.tick() => {}
        }
        let offset = *durable.borrow_and_update();
        match frames.try_send(ack_frame(offset)) {
            Ok(()) => metrics::counter!(m::ACKS_SENT).increment(1),
            Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // Client stopped reading acks; the session ends when its body breaks.
                done.cancelled().await;
                return;
            }
        }
        keepalive.reset();
    }
}

fn ack_frame(offset: u64) -> Bytes {
    Bytes::from(format!("{{\"ack\":{offset}}}\n"))
}

fn error_frame(message: &str, reconnect: bool) -> Bytes {
    let mut frame = if reconnect {
        serde_json::json!({ "error": message, "reconnect": true })
    } else {
        serde_json::json!({ "error": message })
    }
    .to_string();
    frame.push('\n');
    Bytes::from(frame)
}

/// Names the peer and admits (or resumes) a session, or builds the refusal response.
async fn admit(
    app: &AppState,
    peer: Peer,
    protocol: &str,
    extension: Extension,
) -> Result<Session, Response> {
    let node_dir = match app.identity.node_dir(peer.0).await {
        Ok(dir) => dir,
        Err(e) => {
            metrics::counter!(m::REFUSALS, "reason" => "identity").increment(1);
            tracing::warn!(peer = %peer.0, error = %e, "refusing session: cannot identify the peer");
            return Err(refusal(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()));
        }
    };
    let admitted = match (&extension.session, extension.resume) {
        (Some(id), Some(_)) => app.sessions.resume(id, &node_dir, protocol).await,
        (id, _) => app.sessions.open(&node_dir, protocol, id.clone()).await,
    };
    admitted.map_err(|r: Refusal| {
        let status = match r {
            Refusal::UnknownSession(_) => StatusCode::NOT_FOUND,
            Refusal::Conflict(_) => StatusCode::CONFLICT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        refusal(status, &r.to_string())
    })
}

/// Most of a refused v2 request's body read before the refusal goes out.
const REFUSAL_DRAIN_BYTES: usize = 256 * 1024;
/// Longest a refusal waits for a refused v2 request's body to end.
const REFUSAL_DRAIN_TIME: Duration = Duration::from_millis(20);

/// Reads (and drops) what a refused v2 client already sent, briefly. Answering with the
/// request half still open makes the server reset the stream after the response; a short
/// upload that ends within the bound then closes cleanly instead (curl 7.88 sometimes
/// reported that reset as "Stream error in the HTTP/2 framing layer" and lost the 503).
/// A client that streams on (a live session) gets its refusal after the bound.
async fn drain_briefly(body: axum::body::Body) {
    use futures_util::StreamExt;
    let mut data = body.into_data_stream();
    let mut seen = 0usize;
    let read = async {
        while let Some(Ok(chunk)) = data.next().await {
            seen += chunk.len();
            if seen > REFUSAL_DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_DRAIN_TIME, read).await;
}

fn refusal(status: StatusCode, reason: &str) -> Response {
    // No `Connection: close` here: it is illegal in HTTP/2 (hyper then resets the stream
    // and an h2 client sees a framing error instead of the 503). For HTTP/1.1, hyper
    // closes a connection whose request body was not read on its own.
    (status, format!("{reason}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Session ids are only keys (Raft, index, replication), never paths; still, anything
    /// that could read as one is refused at the door.
    #[test]
    fn session_ids_that_could_name_paths_are_refused() {
        let ext = |id: &[u8]| {
            let mut headers = http::HeaderMap::new();
            let value = http::HeaderValue::from_bytes(id).expect("header value");
            headers.insert(SESSION_HEADER, value);
            Extension::from_headers(&headers)
        };
        for bad in [
            &b"../../etc/passwd"[..],
            b"a/b",
            b"a\\b",
            b"",
            b"caf\xc3\xa9",
            b"a b",
            &[b'x'; 65][..],
        ] {
            assert!(
                ext(bad).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for good in [&b"c-1"[..], b"0123abcdef.session_1", &[b'x'; 64][..]] {
            let parsed = ext(good).expect("valid id");
            assert_eq!(parsed.session.as_deref().map(str::as_bytes), Some(good));
        }
    }

    #[test]
    fn frames_are_json_lines() {
        let ack: serde_json::Value = serde_json::from_slice(&ack_frame(42)).expect("json");
        assert_eq!(ack["ack"], 42);
        let err: serde_json::Value =
            serde_json::from_slice(&error_frame("disk \"full\"", false)).expect("json");
        assert_eq!(err["error"], "disk \"full\"");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_session_gets_keepalive_acks_and_advances_are_sent() {
        let (durable_tx, durable) = watch::channel(0u64);
        let (frames, mut rx) = mpsc::channel(ACK_QUEUE_BOUND);
        let done = CancellationToken::new();
        let task = tokio::spawn(ack_loop(
            durable,
            Duration::from_secs(1),
            frames,
            done.clone(),
        ));
        assert_eq!(rx.recv().await, Some(ack_frame(0)));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(rx.recv().await, Some(ack_frame(0)), "keep-alive while idle");
        durable_tx.send_replace(100);
        assert_eq!(rx.recv().await, Some(ack_frame(100)));
        done.cancel();
        task.await.expect("join");
    }
}
