//! A recorder set of real node processes on loopback ports, for the cluster tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub use super::ports::free_port;
use super::*;

/// Election timeouts the test sets use (ms); failover assertions derive from them.
pub const ELECTION_MAX_MS: u64 = 1600;

pub fn run(bin_args: &[&str]) -> Result<String> {
    let out = Command::new(BIN).args(bin_args).output()?;
    if !out.status.success() {
        bail!(
            "quorumcast {bin_args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

pub struct Member {
    pub id: u64,
    pub ingest: String,
    pub cluster: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub node: Option<Node>,
}

pub struct Set {
    pub root: PathBuf,
    pub members: Vec<Member>,
    pub _tmp: tempfile::TempDir,
}

impl Set {
    /// Certificates, configs and `n` running nodes that bootstrap together.
    pub fn start(n: u64, extra_cluster_toml: &str) -> Result<Set> {
        let tmp = tempdir();
        let root = tmp.path().to_path_buf();
        run(&["certs", "init", "--out", path(&root.join("ca"))?])?;
        let mut members = Vec::new();
        for id in 1..=n {
            members.push(Member {
                id,
                ingest: format!("127.0.0.1:{}", free_port()?),
                cluster: format!("127.0.0.1:{}", free_port()?),
                dir: root.join(format!("node{id}")),
                config: root.join(format!("node{id}.toml")),
                node: None,
            });
        }
        let initial: Vec<String> = members
            .iter()
            .map(|m| {
                format!(
                    "{{ id = {}, cluster_addr = \"{}\", ingest_addr = \"{}\" }}",
                    m.id, m.cluster, m.ingest
                )
            })
            .collect();
        for m in &members {
            write_config(&root, m, &initial.join(", "), extra_cluster_toml)?;
        }
        let mut set = Set {
            root,
            members,
            _tmp: tmp,
        };
        for i in 0..set.members.len() {
            set.start_member(i)?;
        }
        set.wait_leader(&[])?;
        Ok(set)
    }

    pub fn start_member(&mut self, i: usize) -> Result<()> {
        let m = &mut self.members[i];
        let args = vec!["--config".to_string(), path(&m.config)?.to_string()];
        m.node = Some(Node::start_in(m.dir.clone(), args, &m.ingest)?);
        Ok(())
    }

    pub fn status(&self, i: usize) -> Result<Value> {
        let out = run(&[
            "cluster",
            "status",
            "--json",
            "--node",
            &self.members[i].ingest,
        ])?;
        Ok(serde_json::from_str(&out)?)
    }

    /// Waits until every running member except `skip` agrees on one leader, then returns
    /// the leader's index.
    pub fn wait_leader(&self, skip: &[usize]) -> Result<usize> {
        self.wait_leader_other_than(skip, None)
    }

    /// Like [`Set::wait_leader`], but the agreed leader must not be `old`.
    pub fn wait_leader_other_than(&self, skip: &[usize], old: Option<usize>) -> Result<usize> {
        let old_id = old.map(|i| self.members[i].id);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut leaders = Vec::new();
            for (i, m) in self.members.iter().enumerate() {
                if skip.contains(&i) || m.node.is_none() {
                    continue;
                }
                let healthy = curl(&[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &format!("http://{}/healthz", m.ingest),
                ])?;
                let leader = self.status(i).ok().and_then(|s| s["leader"].as_u64());
                leaders.push((String::from_utf8(healthy.stdout)? == "200", leader));
            }
            let first = leaders.first().and_then(|(_, l)| *l);
            if let Some(leader) = first.filter(|l| Some(*l) != old_id) {
                if leaders
                    .iter()
                    .all(|(healthy, l)| *healthy && *l == Some(leader))
                {
                    return self
                        .members
                        .iter()
                        .position(|m| m.id == leader)
                        .context("leader not a member");
                }
            }
            if Instant::now() > deadline {
                bail!("no agreed leader: {leaders:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One v2 upload of the seed sample through curl to member `i`; the HTTP status.
    pub fn upload(&self, i: usize) -> Result<(u16, String)> {
        let url = format!("http://{}/v2/record", self.members[i].ingest);
        self.upload_with(i, &["--http2-prior-knowledge"], &url)
    }

    /// The sample uploaded to member `i` over v1 (`POST /record`, HTTP/1.1, chunked, with
    /// `Expect: 100-continue`), as a Tailscale SSH server without h2c does.
    pub fn upload_v1(&self, i: usize) -> Result<(u16, String)> {
        let url = format!("http://{}/record", self.members[i].ingest);
        let v1 = [
            "--http1.1",
            "-H",
            "Expect: 100-continue",
            "-H",
            "Transfer-Encoding: chunked",
        ];
        self.upload_with(i, &v1, &url)
    }

    fn upload_with(&self, i: usize, protocol: &[&str], url: &str) -> Result<(u16, String)> {
        let sample = samples().join("seed-echo-hi.cast");
        let data = format!("@{}", sample.display());
        let mut args = vec!["-sS", "-w", "\n%{http_code}", "--data-binary", &data];
        args.extend_from_slice(protocol);
        args.push(url);
        let out = curl(&args)?;
        let text = String::from_utf8(out.stdout)?;
        let (body, code) = text.rsplit_once('\n').context("no status")?;
        let code: u16 = code.parse()?;
        if code == 0 {
            // No HTTP answer at all: say why, and what the node logged.
            let log = self.members[i]
                .node
                .as_ref()
                .map(|n| n.log_text())
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let why = String::from_utf8_lossy(&out.stderr);
            return Ok((
                0,
                format!("curl: {why}\nnode log tail:\n{}", tail.join("\n")),
            ));
        }
        Ok((code, body.to_string()))
    }

    /// Restarts member `i` with its recordings on `dst` (e.g. a small tmpfs).
    pub fn restart_on_dst(&mut self, i: usize, dst: &Path) -> Result<()> {
        self.members[i].node = None;
        let m = &mut self.members[i];
        let args = vec![
            "--config".to_string(),
            path(&m.config)?.to_string(),
            "--dst".into(),
            path(dst)?.to_string(),
        ];
        m.node = Some(Node::start_in(m.dir.clone(), args, &m.ingest)?);
        self.wait_leader(&[])?;
        Ok(())
    }

    /// Disk thresholds a 20 MiB tmpfs can cross: pressure at 85% (or < 1 MiB free),
    /// cleared below 80%, full at 95%.
    pub fn use_small_disk_thresholds(&self) -> Result<()> {
        let settings = r#"{"replication_factor":3,"pressure_used_percent":85,"pressure_min_free_bytes":1048576,"clear_used_percent":80,"full_used_percent":95}"#;
        let url = format!("http://{}/api/v1/cluster/settings", self.members[0].ingest);
        let out = curl(&[
            "-sS",
            "--fail",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            settings,
            &url,
        ])?;
        if !out.status.success() {
            bail!(
                "setting disk thresholds failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The cluster table as node `i` has applied it, once it has `n` sessions, all sealed
    /// (followers apply commits a moment after the leader).
    pub fn sealed_sessions(&self, i: usize, n: usize) -> Result<Vec<Value>> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let table = self.cluster_sessions(i)?;
            if table.len() == n && table.iter().all(|s| s["state"] == "sealed") {
                return Ok(table);
            }
            if Instant::now() > deadline {
                bail!(
                    "wanted {n} sealed sessions on node {}, have {table:?}",
                    i + 1
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn cluster_sessions(&self, i: usize) -> Result<Vec<Value>> {
        let out = run(&[
            "cluster",
            "sessions",
            "--json",
            "--node",
            &self.members[i].ingest,
        ])?;
        Ok(serde_json::from_str(&out)?)
    }
}

pub fn path(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

pub fn write_config(root: &Path, m: &Member, initial: &str, extra: &str) -> Result<()> {
    let certs = root.join(format!("certs{}", m.id));
    run(&[
        "certs",
        "issue",
        "--ca",
        path(&root.join("ca"))?,
        "--node-id",
        &m.id.to_string(),
        "--san",
        "127.0.0.1",
        "--out",
        path(&certs)?,
    ])?;
    let text = format!(
        "statedir = \"{dir}/state\"\n\
         [cluster]\nnode_id = {id}\nlisten = \"{cluster}\"\n\
         ca = \"{root}/ca/ca.pem\"\ncert = \"{certs}/node.pem\"\nkey = \"{certs}/node.key\"\n\
         election_min_ms = 800\nelection_max_ms = {ELECTION_MAX_MS}\nheartbeat_ms = 100\n\
         initial_members = [{initial}]\n{extra}\n",
        dir = path(&m.dir)?,
        id = m.id,
        cluster = m.cluster,
        root = path(root)?,
        certs = path(&certs)?,
    );
    std::fs::write(&m.config, text)?;
    Ok(())
}

/// A real, small file system for one node's dst.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                path(dir)?,
            ])
            .status()
            .context("mount is needed (run as root)")?;
        if !status.success() {
            bail!("mounting a tmpfs failed (root is needed)");
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Drops UDP to and from one port on loopback while alive: a node cut from its peers while
/// its clients (TCP) still reach it.
pub struct Partition {
    rules: Vec<Vec<String>>,
}

impl Partition {
    pub fn isolate(cluster_addr: &str) -> Result<Partition> {
        let port = cluster_addr.rsplit(':').next().context("port")?.to_string();
        let rules: Vec<Vec<String>> = ["--dport", "--sport"]
            .iter()
            .map(|dir| {
                ["INPUT", "-p", "udp", "-i", "lo", dir, &port, "-j", "DROP"]
                    .map(String::from)
                    .to_vec()
            })
            .collect();
        for rule in &rules {
            let status = Command::new("iptables")
                .arg("-I")
                .args(rule)
                .status()
                .context("iptables is needed (run as root)")?;
            if !status.success() {
                bail!("iptables -I {rule:?} failed (root and iptables are needed)");
            }
        }
        Ok(Partition { rules })
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = Command::new("iptables").arg("-D").args(rule).status();
        }
    }
}
