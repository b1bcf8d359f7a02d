//! The cluster API on the ingest port: what `quorumcast cluster ...` talks to.
//!
//! Reads (`status`, `sessions`, `settings`) are answered by any member from its applied
//! state. Changes (`learners`, `promote`, `remove`, `settings`) must run on the leader; a
//! follower answers 421 with the leader's ingest address and the CLI retries there.

// Early returns here are whole HTTP responses on a cold, operator-only path; boxing them
// would only add noise.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::AppState;
use crate::cluster::member::Member;
use crate::cluster::types::{Command, CommandResponse, NodeId, NodeInfo, Settings};

fn member(app: &AppState) -> Result<&Arc<Member>, Response> {
    app.cluster.as_ref().ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            "this node is standalone: no [cluster] in its config\n",
        )
            .into_response()
    })
}

/// Changes go to the leader: 421 Misdirected Request names it.
fn leader_only(member: &Member) -> Result<(), Response> {
    if member.is_leader() {
        return Ok(());
    }
    let body = serde_json::json!({
        "error": "not the leader",
        "leader_ingest_addr": member.leader_ingest_addr(),
    });
    Err((StatusCode::MISDIRECTED_REQUEST, Json(body)).into_response())
}

fn done(message: String) -> Response {
    (
        StatusCode::OK,
        Json(serde_json::json!({ "message": message })),
    )
        .into_response()
}

fn failed(e: impl std::fmt::Display) -> Response {
    (StatusCode::CONFLICT, format!("{e}\n")).into_response()
}

pub async fn status(State(app): State<AppState>) -> Response {
    match member(&app) {
        Ok(member) => Json(member.status()).into_response(),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
pub struct SessionsQuery {
    #[serde(default)]
    live: bool,
}

/// The cluster table, each session with the byte count and state of every node's copy
/// (asked from each member's local index, at most [`COPIES_TIMEOUT`] per member).
pub async fn sessions(State(app): State<AppState>, Query(query): Query<SessionsQuery>) -> Response {
    let member = match member(&app) {
        Ok(member) => member,
        Err(response) => return response,
    };
    let copies = copies_by_session(member).await;
    let table: Vec<serde_json::Value> = member
        .sessions(query.live)
        .into_iter()
        .map(|entry| {
            let mut value = serde_json::to_value(&entry).unwrap_or_default();
            value["copies"] = copies.get(&entry.id).cloned().unwrap_or_default().into();
            value
        })
        .collect();
    Json(table).into_response()
}

/// A member that doesn't answer the copies query within this is left out of the counts.
const COPIES_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// session id → { node id → {bytes, state} }, from every member's `/api/v1/sessions`.
async fn copies_by_session(
    member: &Member,
) -> std::collections::HashMap<String, serde_json::Map<String, serde_json::Value>> {
    let asks = member.members().into_iter().map(|(id, info)| async move {
        let answer = tokio::time::timeout(
            COPIES_TIMEOUT,
            crate::admin::get(&info.ingest_addr, "/api/v1/sessions"),
        )
        .await;
        (id, answer)
    });
    let mut copies: std::collections::HashMap<String, serde_json::Map<String, serde_json::Value>> =
        Default::default();
    for (node, answer) in futures_util::future::join_all(asks).await {
        let Ok(Ok(serde_json::Value::Array(records))) = answer else {
            continue;
        };
        for record in records {
            let Some(id) = record["id"].as_str() else {
                continue;
            };
            let copy = serde_json::json!({ "bytes": record["bytes"], "state": record["state"] });
            copies
                .entry(id.to_string())
                .or_default()
                .insert(node.to_string(), copy);
        }
    }
    copies
}

#[derive(Deserialize)]
pub struct LearnerRequest {
    id: NodeId,
    cluster_addr: String,
    ingest_addr: String,
}

pub async fn add_learner(
    State(app): State<AppState>,
    Json(request): Json<LearnerRequest>,
) -> Response {
    let member = match member(&app).and_then(|m| leader_only(m).map(|()| m)) {
        Ok(member) => member,
        Err(response) => return response,
    };
    let info = NodeInfo {
        cluster_addr: request.cluster_addr,
        ingest_addr: request.ingest_addr,
    };
    match member.add_learner(request.id, info).await {
        Ok(()) => done(format!(
            "node {} added as a learner and caught up",
            request.id
        )),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
pub struct NodeRequest {
    id: NodeId,
}

pub async fn promote(State(app): State<AppState>, Json(request): Json<NodeRequest>) -> Response {
    let member = match member(&app).and_then(|m| leader_only(m).map(|()| m)) {
        Ok(member) => member,
        Err(response) => return response,
    };
    match member.promote(request.id).await {
        Ok(()) => done(format!("node {} is a voter", request.id)),
        Err(e) => failed(e),
    }
}

pub async fn remove(State(app): State<AppState>, Json(request): Json<NodeRequest>) -> Response {
    let member = match member(&app).and_then(|m| leader_only(m).map(|()| m)) {
        Ok(member) => member,
        Err(response) => return response,
    };
    match member.remove(request.id).await {
        Ok(()) => done(format!("node {} removed", request.id)),
        Err(e) => failed(e),
    }
}

pub async fn settings(State(app): State<AppState>) -> Response {
    match member(&app) {
        Ok(member) => Json(member.state.read(|s| s.settings.clone())).into_response(),
        Err(response) => response,
    }
}

pub async fn set_settings(State(app): State<AppState>, Json(settings): Json<Settings>) -> Response {
    let member = match member(&app) {
        Ok(member) => member,
        Err(response) => return response,
    };
    if let Err(reason) = settings.validate() {
        return (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response();
    }
    match member.propose(Command::SetSettings(settings)).await {
        Ok(CommandResponse::Rejected { reason }) => failed(reason),
        Ok(_) => done("settings updated".into()),
        Err(e) => failed(e),
    }
}
