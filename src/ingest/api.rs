//! The operator API: health, metrics and the session list.

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::storage::index::{SessionFilter, SessionState};

/// `GET /healthz`: 200 while the node can take sessions; in a recorder set, that needs a
/// leader in touch with its quorum (503 with the reason otherwise).
pub async fn healthz(State(app): State<AppState>) -> Response {
    let problem = app
        .cluster
        .as_ref()
        .and_then(|member| member.quorum_problem());
    let leader = app
        .cluster
        .as_ref()
        .and_then(|member| member.raft.metrics().borrow().current_leader);
    let body = serde_json::json!({
        "status": if problem.is_none() { "ok" } else { "unavailable" },
        "problem": problem,
        "hostname": &*app.hostname,
        "live_sessions": app.sessions.live_count(),
        "leader": leader,
    });
    let status = if problem.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(app): State<AppState>) -> Response {
    match &app.metrics {
        Some(handle) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}

/// `GET /api/v1/sessions?node=&user=&since=&until=&state=`: newest first.
pub async fn sessions(
    State(app): State<AppState>,
    Query(filter): Query<SessionFilter>,
) -> Response {
    if let Some(state) = filter.state.as_deref() {
        if SessionState::parse(state).is_none() {
            let reason =
                format!("unknown state {state:?}; use live, complete, aborted or invalid\n");
            return (StatusCode::BAD_REQUEST, reason).into_response();
        }
    }
    match app.sessions.list(filter).await {
        Ok(records) => (StatusCode::OK, axum::Json(records)).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
