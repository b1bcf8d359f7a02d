//! The compose recorder set (`cluster-configs/compose/`) for real: the node image built
//! offline by `scripts/docker-build` from this build's binary, three node containers and
//! Prometheus started by `up.sh`, then health, Raft membership, a replicated upload and
//! Prometheus' scrape checked from the host, and everything (volumes too) removed by
//! `down.sh --volumes`, also when a check fails.
//!
//! Needs Docker (run as root: the first run makes the local base image with debootstrap, from
//! Debian's package mirror; later runs reuse it) and docker-compose. Each run is its own
//! compose project on ports Docker picks, so it does not collide with a set a user started.
//! `QUORUMCAST_SKIP_DOCKER=1` skips it on machines without Docker.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::set::run;
use common::*;
use serde_json::Value;

const LOCAL_BASE: &str = "quorumcast-base:bookworm";
const NODES: [&str; 3] = ["node1", "node2", "node3"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn compose_dir() -> PathBuf {
    repo().join("cluster-configs/compose")
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One compose project: its environment, and `down.sh --volumes` when dropped.
struct Project {
    name: String,
    /// The node image this run builds (removed at the end).
    image: String,
    /// docker-compose, or `docker compose`.
    compose: Vec<&'static str>,
    env: Vec<(&'static str, String)>,
    _certs: tempfile::TempDir,
    started: Instant,
}

impl Project {
    fn new() -> Result<Project> {
        let name = format!("qctest{}", std::process::id());
        let image = format!("quorumcast:compose-test-{}", std::process::id());
        let certs = tempdir();
        let env = vec![
            ("COMPOSE_PROJECT_NAME", name.clone()),
            ("QUORUMCAST_IMAGE", image.clone()),
            ("QUORUMCAST_BASE", LOCAL_BASE.to_string()),
            (
                "QUORUMCAST_CERTS",
                certs.path().join("certs").display().to_string(),
            ),
            // Empty: ports Docker picks on 127.0.0.1.
            ("QC_NODE1_PORT", String::new()),
            ("QC_NODE2_PORT", String::new()),
            ("QC_NODE3_PORT", String::new()),
            ("QC_PROMETHEUS_PORT", String::new()),
            ("QC_UP_TIMEOUT", "120".to_string()),
        ];
        Ok(Project {
            name,
            image,
            compose: compose_command()?,
            env,
            _certs: certs,
            started: Instant::now(),
        })
    }

    fn log(&self, what: &str) {
        eprintln!(
            "[compose {:>5.1}s] {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// A command in the compose folder with the project's environment.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.current_dir(compose_dir());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("run {program}"))?;
        if !out.status.success() {
            bail!("{program} {args:?} failed:\n{}", output_text(&out));
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// docker-compose (v1), or the `docker compose` plugin where that is what is installed.
    fn compose(&self, args: &[&str]) -> Result<String> {
        let mut all: Vec<&str> = self.compose[1..].to_vec();
        all.extend_from_slice(args);
        self.run(self.compose[0], &all)
    }

    fn container(&self, service: &str) -> Result<String> {
        let id = self.compose(&["ps", "-q", service])?.trim().to_string();
        ensure!(!id.is_empty(), "no container for {service}");
        Ok(id)
    }

    /// The host address (127.0.0.1:port) a service's container port is published on.
    fn published(&self, service: &str, port: &str) -> Result<String> {
        let addr = self.compose(&["port", service, port])?.trim().to_string();
        ensure!(
            addr.starts_with("127.0.0.1:"),
            "{service}:{port} published as {addr:?}"
        );
        Ok(addr)
    }

    fn down(&self) -> Result<String> {
        let script = compose_dir().join("down.sh");
        self.run(path(&script)?, &["--volumes"])
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("tearing down compose project {}: {e:#}", self.name);
        }
        // Removes it (only the tag while another tag names the same image).
        let _ = self.run("docker", &["rmi", &self.image]);
    }
}

/// docker-compose (v1, what up.sh prefers), else the `docker compose` plugin; as root with apt
/// and neither, installs Debian's docker-compose the way .ci/run installs the tests' tools.
fn compose_command() -> Result<Vec<&'static str>> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works("docker-compose", &["version"]) {
        return Ok(vec!["docker-compose"]);
    }
    if works("docker", &["compose", "version"]) {
        return Ok(vec!["docker", "compose"]);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 && works("apt-get", &["--version"]) {
        let install = Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && apt-get install -y -qq docker-compose",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()?;
        ensure!(
            install.status.success(),
            "apt-get install docker-compose: {}",
            output_text(&install)
        );
        return Ok(vec!["docker-compose"]);
    }
    bail!("neither docker-compose nor `docker compose` is installed")
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

#[test]
fn compose_set_elects_replicates_and_is_scraped() -> Result<()> {
    if std::env::var_os("QUORUMCAST_SKIP_DOCKER").is_some_and(|v| v == "1") {
        eprintln!("QUORUMCAST_SKIP_DOCKER=1: compose test skipped");
        return Ok(());
    }
    let docker = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .context("docker is not installed (QUORUMCAST_SKIP_DOCKER=1 skips this test)")?;
    ensure!(
        docker.status.success(),
        "the Docker engine does not answer (QUORUMCAST_SKIP_DOCKER=1 skips this test):\n{}",
        output_text(&docker)
    );

    let project = Project::new()?;
    let result = exercise(&project);
    if result.is_err() {
        if let Ok(logs) = project.compose(&["logs", "--no-color", "--tail", "40"]) {
            eprintln!("compose logs:\n{logs}");
        }
    }
    // Torn down here, and checked: no volume of the project may be left.
    project.log("down.sh --volumes");
    let down = project.down();
    let left = project.run(
        "docker",
        &[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={}", project.name),
        ],
    );
    result?;
    down?;
    let left = left?;
    ensure!(left.trim().is_empty(), "volumes left behind: {left}");
    project.log("done");
    Ok(())
}

fn exercise(project: &Project) -> Result<()> {
    // The image, offline (local debootstrap base), from the binary this test run built.
    project.log("scripts/docker-build --offline");
    let build = repo().join("scripts/docker-build");
    project.run(
        path(&build)?,
        &["--offline", "--binary", BIN, "--tag", &project.image],
    )?;

    project.log("up.sh");
    let up = project.run(path(&compose_dir().join("up.sh"))?, &[])?;
    eprint!("{up}");

    // Healthy according to Docker (the image's HEALTHCHECK: /healthz with a quorum).
    for node in NODES {
        let id = project.container(node)?;
        let health = project.run(
            "docker",
            &["inspect", "-f", "{{.State.Health.Status}}", &id],
        )?;
        ensure!(health.trim() == "healthy", "{node} is {health}");
    }
    let ingest: Vec<String> = NODES
        .iter()
        .map(|n| project.published(n, "8080"))
        .collect::<Result<_>>()?;

    // Three voters and one leader, as `quorumcast cluster status` shows them.
    project.log("cluster status");
    let text = run(&["cluster", "status", "--node", &ingest[0]])?;
    eprint!("{text}");
    let status: Value = serde_json::from_str(&run(&[
        "cluster", "status", "--json", "--node", &ingest[0],
    ])?)?;
    let members = status["members"].as_array().context("members")?;
    let voters: BTreeSet<u64> = members
        .iter()
        .filter(|m| m["role"] == "voter")
        .filter_map(|m| m["id"].as_u64())
        .collect();
    ensure!(
        voters == BTreeSet::from([1, 2, 3]) && members.len() == 3,
        "{status}"
    );
    for m in members {
        let id = m["id"].as_u64().context("id")?;
        ensure!(
            m["cluster_addr"] == format!("node{id}:7000").as_str(),
            "{m}"
        );
    }
    let leader = status["leader"].as_u64().context("no leader")?;
    ensure!(voters.contains(&leader), "leader {leader} not a voter");
    let mut leaders = Vec::new();
    for addr in &ingest {
        let s: Value =
            serde_json::from_str(&run(&["cluster", "status", "--json", "--node", addr])?)?;
        ensure!(s["leader"].as_u64() == Some(leader), "{addr} sees {s}");
        if s["state"] == "Leader" {
            leaders.push(s["node_id"].clone());
        }
    }
    ensure!(leaders.len() == 1, "nodes in state Leader: {leaders:?}");

    // An upload through the published port of node2: acked in full (a majority has it).
    project.log("upload to node2 (h2c)");
    let sample = samples().join("seed-echo-hi.cast");
    let expected = std::fs::read(&sample)?;
    let out = curl(&[
        "-sS",
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_code}",
        "--data-binary",
        &format!("@{}", path(&sample)?),
        &format!("http://{}/v2/record", ingest[1]),
    ])?;
    let text = String::from_utf8(out.stdout)?;
    let (body, code) = text.rsplit_once('\n').context("no status")?;
    ensure!(code == "200", "upload answered {code}: {body}");
    let acks: Vec<u64> = body
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["ack"].as_u64())
        .collect();
    ensure!(acks.last() == Some(&1703), "ack frames: {body}");
    ensure!(expected.len() == 1703, "sample changed size");

    // The recording, byte for byte, in each node's recordings volume.
    project.log("recording in the three volumes");
    let want = sha256(&expected);
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in NODES {
        let id = project.container(node)?;
        loop {
            let sums = project.run(
                "docker",
                &[
                    "exec",
                    &id,
                    "sh",
                    "-c",
                    "find /var/lib/quorumcast/recordings -name '*.cast' -exec sha256sum {} +",
                ],
            )?;
            let found: Vec<&str> = sums.lines().collect();
            if found.len() == 1 && found[0].starts_with(&want) {
                eprintln!("  {node}: {}", found[0]);
                break;
            }
            if Instant::now() > deadline {
                bail!("{node}'s volume holds {found:?}, want one .cast with sha256 {want}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    // Prometheus (on the private network) scrapes the three nodes' /metrics.
    project.log("prometheus up == 1");
    let prometheus = project.published("prometheus", "9090")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = curl(&[
            "-sS",
            "--max-time",
            "5",
            &format!("http://{prometheus}/api/v1/query?query=up"),
        ])?;
        let answer: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        let up: BTreeSet<String> = answer
            .iter()
            .flat_map(|a| a["data"]["result"].as_array().into_iter().flatten())
            .filter(|r| r["value"][1] == "1")
            .filter_map(|r| r["metric"]["instance"].as_str().map(str::to_string))
            .collect();
        let want: BTreeSet<String> = NODES.iter().map(|n| format!("{n}:8080")).collect();
        if up == want {
            eprintln!("  up == 1 for {up:?}");
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "prometheus: up == 1 for {up:?}, want {want:?}; answer {}",
                output_text(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}
