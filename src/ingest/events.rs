//! `POST /v2/event`: one JSON event per request, stored durably before the 200.
//!
//! Events land beside the recordings at `<dst>/<node dir>/events/<time>-<id>.json`.
//! A body that is not a JSON object is still stored (as `...invalid.json`) and answered
//! with 400 and the parser's reason; so is one over [`MAX_EVENT_BYTES`] (413, stored in
//! pieces without being held whole) and what arrived of one cut mid-way (400): the
//! recorder never drops what it was sent.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

use super::{AppState, Peer};
use crate::metrics as m;

/// Largest event body checked as JSON and held in memory. Kubernetes request events carry
/// the request body, which the Tailscale proxy already truncates; 1 MiB leaves ample room.
/// A larger body is still stored, as received, in pieces of at most this size, and
/// answered with 413.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// How an event body arrived.
enum Arrival {
    /// Whole, within [`MAX_EVENT_BYTES`].
    Whole(Bytes),
    /// Over the limit: what was read so far; the rest is still in the body.
    Oversized(BytesMut, Body),
    /// The body broke (client gone) after these bytes.
    Cut(Bytes, axum::Error),
}

pub async fn post_event(State(app): State<AppState>, peer: Peer, request: Request) -> Response {
    let node_dir = match app.identity.node_dir(peer.0).await {
        Ok(dir) => dir,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    };
    match read_event(request.into_body()).await {
        Arrival::Whole(body) => store_whole(&app, &node_dir, body).await,
        Arrival::Oversized(held, rest) => store_oversized(&app, &node_dir, held, rest).await,
        Arrival::Cut(held, e) => store_cut(&app, &node_dir, held, e).await,
    }
}

/// Reads the body until its end, its first error, or [`MAX_EVENT_BYTES`].
async fn read_event(mut body: Body) -> Arrival {
    let mut held = BytesMut::new();
    loop {
        match body.frame().await {
            None => return Arrival::Whole(held.freeze()),
            Some(Err(e)) => return Arrival::Cut(held.freeze(), e),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    held.extend_from_slice(&data);
                }
                if held.len() > MAX_EVENT_BYTES {
                    return Arrival::Oversized(held, body);
                }
            }
        }
    }
}

async fn store_whole(app: &AppState, node_dir: &str, body: Bytes) -> Response {
    let problem = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(_)) => None,
        Ok(_) => Some("event must be a JSON object".to_string()),
        Err(e) => Some(format!("event is not valid JSON: {e}")),
    };
    let stored = app
        .sessions
        .storage()
        .store_event(node_dir, body, problem.is_none())
        .await;
    match (stored, problem) {
        (Err(e), _) => cannot_store(e),
        (Ok(path), None) => {
            metrics::counter!(m::EVENTS, "result" => "stored").increment(1);
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({ "path": path })),
            )
                .into_response()
        }
        (Ok(path), Some(reason)) => {
            kept_invalid("invalid", &path, &reason, StatusCode::BAD_REQUEST)
        }
    }
}

/// A body that broke mid-way: what arrived is kept, as an invalid event.
async fn store_cut(app: &AppState, node_dir: &str, held: Bytes, e: axum::Error) -> Response {
    let reason = format!("event body cut after {} bytes: {e}", held.len());
    match app
        .sessions
        .storage()
        .store_event(node_dir, held, false)
        .await
    {
        Ok(path) => kept_invalid("cut", &path, &reason, StatusCode::BAD_REQUEST),
        Err(e) => cannot_store(e),
    }
}

/// A body over [`MAX_EVENT_BYTES`]: not checked, but stored whole as an invalid event,
/// in pieces of at most that size, so that memory stays bounded.
async fn store_oversized(
    app: &AppState,
    node_dir: &str,
    mut held: BytesMut,
    mut rest: Body,
) -> Response {
    let storage = app.sessions.storage();
    let mut file = match storage.create_event_file(node_dir, false).await {
        Ok(file) => file,
        Err(e) => return cannot_store(e),
    };
    // Set once the body ended: what the reason adds about how it ended.
    let mut ended: Option<String> = None;
    loop {
        if held.len() >= MAX_EVENT_BYTES || ended.is_some() {
            if let Err(e) = file.append(held.split().freeze()).await {
                return cannot_store(e);
            }
        }
        if ended.is_some() {
            break;
        }
        match rest.frame().await {
            None => ended = Some(String::new()),
            Some(Err(e)) => ended = Some(format!("; the body was cut there: {e}")),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    held.extend_from_slice(&data);
                }
            }
        }
    }
    let bytes = file.written();
    let reason = format!(
        "event body of {bytes} bytes is over the {MAX_EVENT_BYTES}-byte limit{}",
        ended.unwrap_or_default()
    );
    match file.finish().await {
        Ok(path) => kept_invalid("too_large", &path, &reason, StatusCode::PAYLOAD_TOO_LARGE),
        Err(e) => cannot_store(e),
    }
}

/// The answer for a body stored despite `reason`: a warning, a count, and `status`.
fn kept_invalid(result: &'static str, path: &str, reason: &str, status: StatusCode) -> Response {
    metrics::counter!(m::EVENTS, "result" => result).increment(1);
    tracing::warn!(%path, %reason, "malformed event stored as received");
    (status, format!("{reason} (stored as {path})\n")).into_response()
}

fn cannot_store(e: crate::storage::StorageError) -> Response {
    tracing::error!(error = %e, "cannot store event");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot store event: {e}\n"),
    )
        .into_response()
}
