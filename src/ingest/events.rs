//! `POST /v2/event`: one JSON event per request, stored durably before the 200.
//!
//! Events land beside the recordings at `<dst>/<node dir>/events/<time>-<id>.json`.
//! A body that is not a JSON object is still stored (as `...invalid.json`) and answered
//! with 400 and the parser's reason: the recorder never drops what it was sent.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};

use super::{AppState, Peer};
use crate::metrics as m;

/// Largest event body accepted. Kubernetes request events carry the request body, which
/// the Tailscale proxy already truncates; 1 MiB leaves ample room.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

pub async fn post_event(State(app): State<AppState>, peer: Peer, request: Request) -> Response {
    let node_dir = match app.identity.node_dir(peer.0).await {
        Ok(dir) => dir,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    };
    let body = match Limited::new(request.into_body(), MAX_EVENT_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            metrics::counter!(m::EVENTS, "result" => "too_large_or_cut").increment(1);
            let reason = format!("event body unreadable or over {MAX_EVENT_BYTES} bytes: {e}");
            return (StatusCode::PAYLOAD_TOO_LARGE, format!("{reason}\n")).into_response();
        }
    };
    let problem = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(_)) => None,
        Ok(_) => Some("event must be a JSON object".to_string()),
        Err(e) => Some(format!("event is not valid JSON: {e}")),
    };
    let stored = app
        .sessions
        .storage()
        .store_event(&node_dir, body, problem.is_none())
        .await;
    match (stored, problem) {
        (Err(e), _) => {
            tracing::error!(error = %e, "cannot store event");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot store event: {e}\n"),
            )
                .into_response()
        }
        (Ok(path), None) => {
            metrics::counter!(m::EVENTS, "result" => "stored").increment(1);
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({ "path": path })),
            )
                .into_response()
        }
        (Ok(path), Some(reason)) => {
            metrics::counter!(m::EVENTS, "result" => "invalid").increment(1);
            tracing::warn!(%path, %reason, "malformed event stored as received");
            (
                StatusCode::BAD_REQUEST,
                format!("{reason} (stored as {path})\n"),
            )
                .into_response()
        }
    }
}
