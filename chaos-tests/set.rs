//! The recorder set under test: `quorumcast node` processes, each in its own network namespace
//! (`ip netns exec`, which execs, so the child's pid is the node's), with certificates, TOML
//! configs, data and logs under the scenario's directory. Dropping it kills every node.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::net::{self, CLUSTER_PORT, INGEST_PORT};
use crate::util::{self, die_with_parent, http_get, http_json, log, path_str, run_for, sh};

/// Raft timeouts of the set (ms); the harness's waits and the enforce rule derive from them.
pub const ELECTION_MIN_MS: u64 = 800;
pub const ELECTION_MAX_MS: u64 = 1600;
/// A session whose owner and client are gone is sealed after this (ms).
pub const ORPHAN_TIMEOUT_MS: u64 = 5_000;

pub struct NodeProc {
    pub id: u64,
    pub ingest: String,
    pub dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pub stopped: bool,
}

impl NodeProc {
    pub fn dst(&self) -> PathBuf {
        self.dir.join("dst")
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }
}

pub struct Cluster {
    pub bin: PathBuf,
    pub nodes: Vec<NodeProc>,
    /// Nodes that died without us killing them: (id, exit status).
    pub unexpected_exits: Vec<(u64, String)>,
}

impl Cluster {
    /// Certificates, configs, and `n` running nodes agreeing on a leader.
    pub fn start(root: &Path, bin: &Path, n: usize, small_dst: Option<u64>) -> Result<Cluster> {
        let ca = root.join("ca");
        sh(path_str(bin)?, &["certs", "init", "--out", path_str(&ca)?])?;
        let members: Vec<String> = (1..=n as u64)
            .map(|id| {
                let ip = net::node_ip(id);
                format!("{{ id = {id}, cluster_addr = \"{ip}:{CLUSTER_PORT}\", ingest_addr = \"{ip}:{INGEST_PORT}\" }}")
            })
            .collect();
        let mut nodes = Vec::new();
        for id in 1..=n as u64 {
            nodes.push(prepare_node(root, bin, id, &members.join(", "))?);
            if small_dst == Some(id) {
                crate::disk::mount_small(&nodes[id as usize - 1].dst())?;
            }
        }
        let mut set = Cluster {
            bin: bin.to_path_buf(),
            nodes,
            unexpected_exits: Vec::new(),
        };
        for id in 1..=n as u64 {
            set.spawn(id)?;
        }
        set.wait_healthy(Duration::from_secs(40))?;
        Ok(set)
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        &self.nodes[id as usize - 1]
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        &mut self.nodes[id as usize - 1]
    }

    /// Starts node `id` (not running) and waits until it answers HTTP.
    pub fn spawn(&mut self, id: u64) -> Result<()> {
        let bin = self.bin.clone();
        let node = self.node_mut(id);
        anyhow::ensure!(node.child.is_none(), "node {id} is already running");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &net::ns_name(id)])
            .arg(&bin)
            .arg("node")
            .arg("--config")
            .arg(&node.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        die_with_parent(&mut command);
        let child = command.spawn().context("spawn node")?;
        crate::pids::record(child.id());
        node.child = Some(child);
        node.stopped = false;
        let ingest = node.ingest.clone();
        util::eventually(
            Duration::from_secs(20),
            Duration::from_millis(100),
            &format!("node {id} to answer HTTP"),
            || http_get(&ingest, "/healthz", Duration::from_secs(1)).ok(),
        )?;
        Ok(())
    }

    /// SIGKILL and reap (a crash).
    pub fn kill9(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.stopped = false;
    }

    pub fn signal(&mut self, id: u64, signal: i32) {
        let node = self.node_mut(id);
        if let Some(pid) = node.pid() {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe {
                libc::kill(pid, signal);
            }
            match signal {
                libc::SIGSTOP => node.stopped = true,
                libc::SIGCONT => node.stopped = false,
                _ => {}
            }
        }
    }

    /// SIGTERM (graceful stop: hands sessions off), reaped within `limit`, else SIGKILL.
    /// Returns a problem description if it did not exit 0 in time.
    pub fn terminate(&mut self, id: u64, limit: Duration) -> Option<String> {
        self.terminate_all(&[id], limit).pop()
    }

    /// SIGTERM to every node in `ids` at once, then reaps each within one shared `limit`
    /// (SIGKILL past it). One problem description per node that did not exit 0 in time.
    pub fn terminate_all(&mut self, ids: &[u64], limit: Duration) -> Vec<String> {
        for id in ids {
            self.signal(*id, libc::SIGCONT);
            self.signal(*id, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + limit;
        let mut problems = Vec::new();
        for id in ids {
            let Some(mut child) = self.node_mut(*id).child.take() else {
                continue;
            };
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match util::wait_for(&mut child, left) {
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status)) => {
                    problems.push(format!("node {id} exited with {status} after SIGTERM"))
                }
                _ => problems.push(format!(
                    "node {id} did not exit within {limit:?} of SIGTERM (killed)"
                )),
            }
        }
        problems
    }

    /// Reaps nodes that exited on their own; each is recorded once, and returned.
    pub fn reap_unexpected(&mut self) -> Vec<u64> {
        let mut died = Vec::new();
        for node in &mut self.nodes {
            let Some(child) = node.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                died.push(node.id);
                self.unexpected_exits.push((node.id, status.to_string()));
            }
        }
        died
    }

    /// The leader as every running, unstopped node's `/healthz` names it, once all are 200.
    pub fn agreed_leader(&self) -> Option<u64> {
        let mut leader = None;
        for node in self.nodes.iter().filter(|n| n.running() && !n.stopped) {
            let (status, body) = http_get(&node.ingest, "/healthz", Duration::from_secs(1)).ok()?;
            let named = serde_json::from_slice::<Value>(&body).ok()?["leader"].as_u64()?;
            if status != 200 || leader.is_some_and(|l| l != named) {
                return None;
            }
            leader = Some(named);
        }
        leader
    }

    pub fn wait_healthy(&self, limit: Duration) -> Result<u64> {
        util::eventually(
            limit,
            Duration::from_millis(200),
            "every running node healthy with one leader",
            || self.agreed_leader(),
        )
    }

    /// The leader named by any reachable node (no agreement required).
    pub fn any_leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter(|n| n.running() && !n.stopped)
            .find_map(|n| http_json(&n.ingest, "/healthz").ok()?["leader"].as_u64())
    }

    /// `quorumcast cluster sessions --json`, asked of `prefer` first, then any running node.
    pub fn cluster_sessions(&self, prefer: Option<u64>) -> Result<Vec<Value>> {
        let mut order: Vec<&NodeProc> = self
            .nodes
            .iter()
            .filter(|n| n.running() && !n.stopped)
            .collect();
        order.sort_by_key(|n| Some(n.id) != prefer);
        let mut last = anyhow::anyhow!("no running node");
        for node in order {
            let out = run_for(
                Command::new(&self.bin).args([
                    "cluster",
                    "sessions",
                    "--json",
                    "--node",
                    &node.ingest,
                ]),
                Duration::from_secs(10),
            );
            match out {
                Ok(out) if out.status.success() => return Ok(serde_json::from_slice(&out.stdout)?),
                Ok(out) => last = anyhow::anyhow!("{}", String::from_utf8_lossy(&out.stderr)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Node `id`'s own records (`GET /api/v1/sessions`).
    pub fn local_sessions(&self, id: u64) -> Result<Vec<Value>> {
        let v = http_json(&self.node(id).ingest, "/api/v1/sessions")?;
        v.as_array().cloned().context("not a list")
    }

    /// A counter's value from node `id`'s `/metrics` (summed over labels).
    pub fn metric(&self, id: u64, name: &str) -> Option<f64> {
        let (_, body) = http_get(&self.node(id).ingest, "/metrics", Duration::from_secs(3)).ok()?;
        let text = String::from_utf8_lossy(&body).into_owned();
        let values: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(name))
            .filter(|l| l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        Some(values.iter().fold(0.0, |a, b| a + b))
    }

    /// Cluster-wide settings (POST to any node; followers forward to the leader).
    pub fn set_settings(&self, json: &str) -> Result<()> {
        let node = self.nodes.iter().find(|n| n.running()).context("no node")?;
        let url = format!("http://{}/api/v1/cluster/settings", node.ingest);
        let out = run_for(
            Command::new("curl").args([
                "-sS",
                "--fail",
                "-m",
                "10",
                "-L",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                json,
                &url,
            ]),
            Duration::from_secs(15),
        )?;
        if !out.status.success() {
            bail!("settings: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.node(id).log.clone()
    }
}

impl Cluster {
    /// For each running node that doesn't answer `/healthz` within 2 s: its process state and
    /// every thread's backtrace (gdb, bounded) in `<dir>/nodeN.stacks.txt`. One line per node.
    pub fn diagnose_unresponsive(&self, dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        for node in self.nodes.iter().filter(|n| n.running()) {
            if http_get(&node.ingest, "/healthz", Duration::from_secs(2)).is_ok() {
                continue;
            }
            let Some(pid) = node.pid() else { continue };
            let state = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("State:"))
                .unwrap_or("State: ?")
                .to_string();
            let out = dir.join(format!("node{}.stacks.txt", node.id));
            let stacks = run_for(
                Command::new("gdb").args([
                    "-p",
                    &pid.to_string(),
                    "-batch",
                    "-ex",
                    "info threads",
                    "-ex",
                    "thread apply all bt",
                ]),
                Duration::from_secs(90),
            );
            let text = match stacks {
                Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
                Err(e) => format!("gdb failed: {e:#}"),
            };
            let _ = std::fs::write(&out, format!("{state}\n\n{text}"));
            found.push(format!(
                "node {} (pid {pid}, {}) does not answer /healthz within 2 s; thread backtraces in {}",
                node.id, state.trim(), out.display()
            ));
        }
        found
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.signal(id, libc::SIGCONT);
            self.kill9(id);
        }
    }
}

fn prepare_node(root: &Path, bin: &Path, id: u64, members: &str) -> Result<NodeProc> {
    let dir = root.join(format!("node{id}"));
    let certs = root.join(format!("certs{id}"));
    std::fs::create_dir_all(dir.join("dst"))?;
    let ip = net::node_ip(id);
    sh(
        path_str(bin)?,
        &[
            "certs",
            "issue",
            "--ca",
            path_str(&root.join("ca"))?,
            "--node-id",
            &id.to_string(),
            "--san",
            &ip,
            "--out",
            path_str(&certs)?,
        ],
    )?;
    let config = root.join(format!("node{id}.toml"));
    let text = format!(
        "dst = \"{dir}/dst\"\nstatedir = \"{dir}/state\"\nhostname = \"node{id}\"\n\
         listen = \"{ip}:{INGEST_PORT}\"\n\n[cluster]\nnode_id = {id}\nlisten = \"{ip}:{CLUSTER_PORT}\"\n\
         ca = \"{root}/ca/ca.pem\"\ncert = \"{certs}/node.pem\"\nkey = \"{certs}/node.key\"\n\
         heartbeat_ms = 100\nelection_min_ms = {ELECTION_MIN_MS}\nelection_max_ms = {ELECTION_MAX_MS}\n\
         orphan_timeout_ms = {ORPHAN_TIMEOUT_MS}\ndisk_check_ms = 200\n\
         initial_members = [{members}]\n",
        dir = path_str(&dir)?,
        root = path_str(root)?,
        certs = path_str(&certs)?,
    );
    std::fs::write(&config, text)?;
    log(&format!(
        "node {id}: {ip}:{INGEST_PORT} (ingest), {ip}:{CLUSTER_PORT} (cluster)"
    ));
    Ok(NodeProc {
        id,
        ingest: format!("{ip}:{INGEST_PORT}"),
        log: root.join(format!("node{id}.log")),
        dir,
        config,
        child: None,
        stopped: false,
    })
}
