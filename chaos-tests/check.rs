//! The invariants, checked after every scenario once the set has healed and settled.
//!
//! Truth is each client's `--output` copy (every byte it produced, once). Copies are found
//! through `quorumcast cluster sessions --json` (owner, epoch, replicas, state) and each node's
//! own `GET /api/v1/sessions` (state, `path` under that node's dst), and read from disk.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::clients::{self, Client, FAILOVER_DEADLINE_S};
use crate::set::{Cluster, ORPHAN_TIMEOUT_MS};
use crate::timeline::Timeline;
use crate::util::{log, sha256};

#[derive(Debug, Clone)]
pub struct Violation {
    pub rule: &'static str,
    pub client: Option<usize>,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub sessions: usize,
    pub bytes: u64,
    pub failovers: usize,
    pub failover_ms: Vec<u64>,
    /// Clients that exited non-zero (enforce), excused by the timeline.
    pub cut_excused: usize,
    pub stale_refusals: Vec<(u64, f64)>,
    /// Copies compared with their client's copy, and how many of them were sealed (complete).
    pub copies: usize,
    pub sealed_copies: usize,
    pub violations: Vec<Violation>,
}

/// One node's copy of a session.
struct Copy {
    node: u64,
    state: String,
    recorded_bytes: u64,
    bytes: Vec<u8>,
}

/// Waits (bounded) until none of the clients' sessions is `live` in the cluster table.
pub fn settle(cluster: &Cluster, ids: &[String]) -> Option<Vec<Value>> {
    let limit = Duration::from_millis(ORPHAN_TIMEOUT_MS + 45_000);
    let settled = crate::util::eventually(
        limit,
        Duration::from_millis(500),
        "sessions to settle",
        || {
            let table = cluster.cluster_sessions(None).ok()?;
            let live = table
                .iter()
                .filter(|s| s["state"] == "live" && ids.iter().any(|id| s["id"] == id.as_str()))
                .count();
            (live == 0).then_some(table)
        },
    );
    match settled {
        Ok(table) => Some(table),
        Err(e) => {
            log(&format!("{e:#}"));
            None
        }
    }
}

/// Every node's copies, by session id.
fn gather_copies(cluster: &Cluster, out: &mut Outcome) -> HashMap<String, Vec<Copy>> {
    let mut copies: HashMap<String, Vec<Copy>> = HashMap::new();
    for node in cluster.nodes.iter().filter(|n| n.running()) {
        let records = match cluster.local_sessions(node.id) {
            Ok(r) => r,
            Err(e) => {
                out.violations.push(v(
                    "node api",
                    None,
                    format!("node {}: /api/v1/sessions failed: {e:#}", node.id),
                ));
                continue;
            }
        };
        for r in records {
            let (Some(id), Some(path)) = (r["id"].as_str(), r["path"].as_str()) else {
                continue;
            };
            let bytes = std::fs::read(node.dst().join(path)).unwrap_or_default();
            copies.entry(id.to_string()).or_default().push(Copy {
                node: node.id,
                state: r["state"].as_str().unwrap_or("?").to_string(),
                recorded_bytes: r["bytes"].as_u64().unwrap_or(0),
                bytes,
            });
        }
    }
    copies
}

fn v(rule: &'static str, client: Option<usize>, detail: String) -> Violation {
    Violation {
        rule,
        client,
        detail,
    }
}

/// The session id the client's copy names in its header (`connectionID`).
fn session_id(copy: &[u8]) -> Option<String> {
    let first = copy.split(|b| *b == b'\n').next()?;
    let header: Value = serde_json::from_slice(first).ok()?;
    header["connectionID"].as_str().map(str::to_string)
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

pub struct Inputs<'a> {
    pub cluster: &'a Cluster,
    pub clients: &'a [Client],
    pub timeline: &'a Timeline,
    pub table: Option<Vec<Value>>,
}

pub fn check(inp: Inputs) -> Outcome {
    let mut out = Outcome::default();
    let copies = gather_copies(inp.cluster, &mut out);
    let table: HashMap<String, Value> = inp
        .table
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| Some((s["id"].as_str()?.to_string(), s)))
        .collect();
    let all: Vec<u64> = inp.cluster.nodes.iter().map(|n| n.id).collect();
    for c in inp.clients {
        check_client(c, &table, &copies, &all, inp.timeline, &mut out);
    }
    for node in &inp.cluster.nodes {
        let refused = inp
            .cluster
            .metric(node.id, "quorumcast_replication_stale_epoch_refusals_total");
        out.stale_refusals
            .push((node.id, refused.unwrap_or(f64::NAN)));
    }
    for (node, status) in &inp.cluster.unexpected_exits {
        out.violations.push(v(
            "node crashed",
            None,
            format!(
                "node {node} exited on its own ({status}); log: {}",
                inp.cluster.log_path(*node).display()
            ),
        ));
    }
    out
}

fn check_client(
    c: &Client,
    table: &HashMap<String, Value>,
    copies: &HashMap<String, Vec<Copy>>,
    all: &[u64],
    timeline: &Timeline,
    out: &mut Outcome,
) {
    let client = std::fs::read(&c.output).unwrap_or_default();
    let stderr = c.stderr_text();
    let moves = clients::parse_moves(&stderr);
    out.failovers += moves.len();
    out.failover_ms.extend(moves.iter().map(|m| m.after_ms));
    out.bytes += client.len() as u64;
    let who = Some(c.idx);
    if c.hung {
        out.violations.push(v(
            "bounded client",
            who,
            format!(
                "client {} still running at its time limit (killed); stderr: {}",
                c.idx,
                stderr.trim()
            ),
        ));
    }
    let id = session_id(&client);
    let entry = id.as_ref().and_then(|id| table.get(id));
    let replicas: Vec<u64> = entry
        .and_then(|e| e["replicas"].as_array())
        .map(|r| r.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    check_exit(c, &stderr, &replicas, all, timeline, out);
    let Some(id) = id else {
        if c.code == Some(0) {
            out.violations.push(v(
                "recorded",
                who,
                format!("client {} exited 0 but its copy has no header", c.idx),
            ));
        }
        return;
    };
    out.sessions += 1;
    let Some(entry) = entry else {
        out.violations.push(v(
            "recorded",
            who,
            format!(
                "session {id} (client {}) is not in the cluster table",
                c.idx
            ),
        ));
        return;
    };
    let mine: &[Copy] = copies.get(&id).map(Vec::as_slice).unwrap_or(&[]);
    out.copies += mine.len();
    out.sealed_copies += mine.iter().filter(|c| c.state == "complete").count();
    check_prefixes(c.idx, &id, &client, mine, out);
    if c.code == Some(0) && !c.hung {
        check_sealed(c.idx, &id, entry, &client, mine, &replicas, out);
    } else {
        check_cut(c.idx, &id, entry, &moves, mine, &replicas, out);
    }
}

/// No copy holds a byte the client did not produce at that offset (replicas never diverge:
/// all are prefixes of the one client copy, hence of each other).
fn check_prefixes(idx: usize, id: &str, client: &[u8], mine: &[Copy], out: &mut Outcome) {
    for copy in mine {
        if copy.bytes.len() > client.len() || !client.starts_with(&copy.bytes) {
            let at = first_difference(&copy.bytes, client);
            out.violations.push(v(
                "no divergence",
                Some(idx),
                format!(
                    "session {id} (client {idx}): node {}'s copy ({} bytes, {}) differs from the client's ({} bytes) at byte {at}",
                    copy.node, copy.bytes.len(), copy.state, client.len()
                ),
            ));
        }
        if matches!(copy.state.as_str(), "complete" | "aborted" | "invalid")
            && copy.recorded_bytes != copy.bytes.len() as u64
        {
            out.violations.push(v(
                "index matches file",
                Some(idx),
                format!(
                    "session {id}: node {} index says {} bytes ({}), file has {}",
                    copy.node,
                    copy.recorded_bytes,
                    copy.state,
                    copy.bytes.len()
                ),
            ));
        }
    }
}

/// A client that exited 0 got its final ack: the session is sealed, every copy a replica
/// sealed (`complete`) is the client's copy exactly, and a majority of the replica set holds
/// all of it (an ack means durable on a majority).
fn check_sealed(
    idx: usize,
    id: &str,
    entry: &Value,
    client: &[u8],
    mine: &[Copy],
    replicas: &[u64],
    out: &mut Outcome,
) {
    let want = sha256(client);
    if entry["state"] != "sealed" {
        out.violations.push(v(
            "finished is sealed",
            Some(idx),
            format!(
                "session {id} (client {idx} exited 0) is {} in the cluster table: {entry}",
                entry["state"]
            ),
        ));
    }
    for copy in mine.iter().filter(|c| c.state == "complete") {
        if sha256(&copy.bytes) != want {
            out.violations.push(v(
                "sealed = client copy",
                Some(idx),
                format!("session {id}: node {}'s sealed copy has {} bytes, sha256 {}, client has {} bytes, sha256 {want}", copy.node, copy.bytes.len(), sha256(&copy.bytes), client.len()),
            ));
        }
    }
    let full = mine
        .iter()
        .filter(|c| replicas.contains(&c.node) && c.bytes == client)
        .count();
    if full <= replicas.len() / 2 {
        let have: Vec<String> = mine
            .iter()
            .map(|c| format!("node {}: {} bytes {}", c.node, c.bytes.len(), c.state))
            .collect();
        out.violations.push(v(
            "acked bytes on a majority",
            Some(idx),
            format!("session {id} (client {idx} exited 0, {} bytes): only {full} of replicas {replicas:?} hold all of it; copies: {}", client.len(), have.join(", ")),
        ));
    }
}

/// A client cut by enforce (or hung): the set ended the session (sealed or orphaned), and a
/// majority of the replica set holds at least the highest offset a takeover resumed at (that
/// prefix was durable on a majority when it was offered). Prefixes are checked separately.
fn check_cut(
    idx: usize,
    id: &str,
    entry: &Value,
    moves: &[clients::Move],
    mine: &[Copy],
    replicas: &[u64],
    out: &mut Outcome,
) {
    if entry["state"] == "live" {
        out.violations.push(v("ended sessions end", Some(idx), format!("session {id} (client {idx} gone) still live after the orphan timeout + 45 s: {entry}")));
    }
    let Some(floor) = moves.iter().map(|m| m.resumed_at).max() else {
        return;
    };
    let holding = mine
        .iter()
        .filter(|c| replicas.contains(&c.node) && c.bytes.len() as u64 >= floor)
        .count();
    if holding <= replicas.len() / 2 {
        out.violations.push(v(
            "acked bytes on a majority",
            Some(idx),
            format!("session {id} (client {idx}) resumed at byte {floor}, but only {holding} of replicas {replicas:?} hold that much"),
        ));
    }
}

/// The enforce rule: a client may exit non-zero only if, at some instant of its failover
/// window, a majority of the set (or of the session's replica set) was not fit.
fn check_exit(
    c: &Client,
    stderr: &str,
    replicas: &[u64],
    all: &[u64],
    timeline: &Timeline,
    out: &mut Outcome,
) {
    let (Some(code), Some(end)) = (c.code, c.end_ms) else {
        return;
    };
    if code == 0 {
        return;
    }
    let window = FAILOVER_DEADLINE_S * 1000 + clients::KILL_GRACE_MS + 1_000;
    let from = end.saturating_sub(window).max(c.start_ms);
    if timeline.majority_fit_throughout(all, replicas, from, end) {
        let last = stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string();
        out.violations.push(v(
            "enforce survives with a majority",
            Some(c.idx),
            format!(
                "client {} (generator seed {}) exited {code} at {:.1}s although a majority of the set and of replicas {replicas:?} was fit throughout {:.1}s..{:.1}s; its last words: {last}",
                c.idx, c.gen_seed, end as f64 / 1000.0, from as f64 / 1000.0, end as f64 / 1000.0
            ),
        ));
    } else {
        out.cut_excused += 1;
    }
}
