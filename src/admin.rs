//! `quorumcast cluster ...`: the operator's client for a node's cluster API.
//!
//! Owns the CLI arguments of the `cluster` subcommands, the HTTP calls to a node's
//! `/api/v1/cluster/*` endpoints, and how their answers are printed. It holds no cluster
//! logic: membership changes are validated and serialized by the node (through Raft).
//! A change sent to a follower is answered with the leader's address and retried there.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Answers of the cluster API are small; a session table of 100k entries is a few MiB.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A follower's answer points at the leader; follow at most this many such hops.
const MAX_REDIRECTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach {addr}: {message}")]
    Unreachable { addr: String, message: String },
    #[error("{addr} answered {status}: {body}")]
    Status {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("{addr} answered something that is not JSON: {message}")]
    BadAnswer { addr: String, message: String },
}

#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// A node's HTTP (ingest) address; any node of the set answers.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:8081",
        env = "QUORUMCAST_NODE"
    )]
    pub node: String,
    /// Print the raw JSON answer.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum ClusterCommand {
    /// Leader, term, members, each node's addresses, disk state, live sessions, last contact.
    Status,
    /// The cluster-wide session table: owners, epochs, replica sets.
    Sessions {
        /// Only sessions still live.
        #[arg(long)]
        live: bool,
    },
    /// Add a node as a learner (it catches up without voting).
    AddLearner {
        #[arg(long)]
        id: u64,
        /// Its QUIC cluster address.
        #[arg(long)]
        cluster_addr: String,
        /// Its HTTP ingest address.
        #[arg(long)]
        ingest_addr: String,
    },
    /// Make a caught-up learner a voter.
    Promote {
        #[arg(long)]
        id: u64,
    },
    /// Remove a node from the set.
    Remove {
        #[arg(long)]
        id: u64,
    },
}

/// Runs one `cluster` subcommand and prints its answer.
pub async fn run(args: ClusterArgs) -> Result<(), AdminError> {
    let answer = match &args.command {
        ClusterCommand::Status => get(&args.node, "/api/v1/cluster/status").await?,
        ClusterCommand::Sessions { live } => {
            let path = if *live {
                "/api/v1/cluster/sessions?live=true"
            } else {
                "/api/v1/cluster/sessions"
            };
            get(&args.node, path).await?
        }
        ClusterCommand::AddLearner {
            id,
            cluster_addr,
            ingest_addr,
        } => {
            let body = serde_json::json!({ "id": id, "cluster_addr": cluster_addr, "ingest_addr": ingest_addr });
            post(&args.node, "/api/v1/cluster/learners", body).await?
        }
        ClusterCommand::Promote { id } => {
            post(
                &args.node,
                "/api/v1/cluster/promote",
                serde_json::json!({ "id": id }),
            )
            .await?
        }
        ClusterCommand::Remove { id } => {
            post(
                &args.node,
                "/api/v1/cluster/remove",
                serde_json::json!({ "id": id }),
            )
            .await?
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
        return Ok(());
    }
    match &args.command {
        ClusterCommand::Status => print_status(&answer),
        ClusterCommand::Sessions { .. } => print_sessions(&answer),
        _ => println!(
            "{}",
            answer
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("done")
        ),
    }
    Ok(())
}

fn print_status(status: &Value) {
    let text = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!(
        "node {}  leader {}  term {}  last log {}  applied {}",
        text(&status["node_id"]),
        text(&status["leader"]),
        text(&status["term"]),
        text(&status["last_log"]),
        text(&status["applied"])
    );
    println!(
        "{:>4}  {:<8} {:<22} {:<22} {:<9} {:>6} {:>12} {:>4}",
        "id", "role", "cluster", "ingest", "disk", "live", "contact_ms", "up"
    );
    for m in status["members"].as_array().into_iter().flatten() {
        println!(
            "{:>4}  {:<8} {:<22} {:<22} {:<9} {:>6} {:>12} {:>4}",
            text(&m["id"]),
            text(&m["role"]),
            text(&m["cluster_addr"]),
            text(&m["ingest_addr"]),
            text(&m["disk"]["state"]),
            text(&m["live_sessions"]),
            text(&m["last_contact_ms"]),
            text(&m["up"])
        );
    }
}

fn print_sessions(table: &Value) {
    println!(
        "{:<38} {:>5} {:>6} {:<12} {:<8} path",
        "id", "owner", "epoch", "replicas", "state"
    );
    for s in table.as_array().into_iter().flatten() {
        let replicas: Vec<String> = s["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r.to_string())
            .collect();
        let copies: Vec<String> = s["copies"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(node, copy)| format!("{node}:{}", copy["bytes"]))
            .collect();
        println!(
            "{:<38} {:>5} {:>6} {:<12} {:<8} {:<28} {}/{}",
            s["id"].as_str().unwrap_or("-"),
            s["owner"].to_string(),
            s["epoch"].to_string(),
            replicas.join(","),
            s["state"].as_str().unwrap_or("-"),
            copies.join(" "),
            s["node_dir"].as_str().unwrap_or("-"),
            s["file_name"].as_str().unwrap_or("-"),
        );
    }
}

/// `GET` a JSON answer from a node's HTTP API.
pub async fn get(addr: &str, path: &str) -> Result<Value, AdminError> {
    call(addr, http::Method::GET, path, None).await
}

/// POSTs a change; a follower answers 421 with `leader_ingest_addr`, and we retry there.
async fn post(addr: &str, path: &str, body: Value) -> Result<Value, AdminError> {
    let mut target = addr.to_string();
    for _ in 0..MAX_REDIRECTS {
        match call(&target, http::Method::POST, path, Some(body.clone())).await {
            Err(AdminError::Status {
                status: 421, body, ..
            }) => {
                let leader = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["leader_ingest_addr"].as_str().map(str::to_string));
                match leader {
                    Some(leader) => target = leader,
                    None => {
                        return Err(AdminError::Status {
                            addr: target,
                            status: 421,
                            body,
                        })
                    }
                }
            }
            other => return other,
        }
    }
    Err(AdminError::Unreachable {
        addr: target,
        message: "leader kept moving; try again".into(),
    })
}

async fn call(
    addr: &str,
    method: http::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, AdminError> {
    let unreachable = |message: String| AdminError::Unreachable {
        addr: addr.to_string(),
        message,
    };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let driver = tokio::spawn(connection);
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| unreachable(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        driver.abort();
        Ok::<_, AdminError>((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable("timed out".into()))??;
    if !(200..300).contains(&status) {
        return Err(AdminError::Status {
            addr: addr.to_string(),
            status,
            body: String::from_utf8_lossy(&bytes).trim().to_string(),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| AdminError::BadAnswer {
        addr: addr.to_string(),
        message: e.to_string(),
    })
}
