//! `quorumcast dev` as a user runs it: a real process that starts a 3-node set of child
//! processes, reports a node killed under it, and stops everything on Ctrl-C (SIGINT).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::*;
use serde_json::Value;

/// The dev process, its stdout as lines, and what it printed so far; stopped on drop.
struct Dev {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Dev {
    fn start(data: &Path, base: u16, stderr_log: &Path) -> Result<Dev> {
        let mut child = Command::new(BIN)
            .arg("dev")
            .arg("--data")
            .arg(data)
            .arg("--base-port")
            .arg(base.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stderr_log)?)
            .spawn()
            .context("spawn quorumcast dev")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Dev {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Reads output until a line satisfies `want`; returns it.
    fn wait_line(&mut self, timeout: Duration, want: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                bail!(
                    "expected line never came; output so far:\n{}",
                    self.seen.join("\n")
                );
            };
            self.seen.push(line.clone());
            if want(&line) {
                return Ok(line);
            }
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own, not yet reaped, child.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("quorumcast dev still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dev {
    /// On a failed assertion: let dev stop its nodes as a user's Ctrl-C would, else kill it
    /// (its nodes then get SIGTERM from the kernel: they die with their parent).
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGINT);
            if self.wait_exit(Duration::from_secs(15)).is_err() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// A base port whose +1..+3 (TCP, ingest) and +11..+13 (UDP, QUIC) are free right now.
fn free_base() -> Result<u16> {
    common::ports::free_base(13, |base| {
        (1..=3).all(|n| ports_free(base + n, base + 10 + n))
    })
}

fn ports_free(ingest: u16, cluster: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", ingest)).is_ok()
        && std::net::UdpSocket::bind(("127.0.0.1", cluster)).is_ok()
}

/// `node N  pid P ...` lines, in node order.
fn node_pids(lines: &[String]) -> Vec<i32> {
    lines
        .iter()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("node") && words.nth(1) == Some("pid"))
                .then(|| words.next()?.parse().ok())?
        })
        .collect()
}

fn healthz(addr: &str) -> Result<String> {
    let out = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{addr}/healthz"),
    ])?;
    Ok(String::from_utf8(out.stdout)?)
}

fn leader_seen_by(addr: &str) -> Result<Option<u64>> {
    let out = Command::new(BIN)
        .args(["cluster", "status", "--json", "--node", addr])
        .output()?;
    if !out.status.success() {
        bail!("cluster status: {}", String::from_utf8_lossy(&out.stderr));
    }
    let status: Value = serde_json::from_slice(&out.stdout)?;
    Ok(status["leader"].as_u64())
}

/// The acks of one v2 upload of the seed sample.
fn upload_sample(addr: &str) -> Result<(Vec<u64>, u64)> {
    let sample = samples().join("seed-echo-hi.cast");
    let len = std::fs::metadata(&sample)?.len();
    let out = curl(&[
        "-sS",
        "--http2-prior-knowledge",
        "--data-binary",
        &format!("@{}", sample.display()),
        &format!("http://{addr}/v2/record"),
    ])?;
    let acks = String::from_utf8(out.stdout)?
        .lines()
        .map(|l| Ok(serde_json::from_str::<Value>(l)?["ack"].as_u64()))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .context("a frame that is not an ack")?;
    Ok((acks, len))
}

/// kill(pid, 0) fails with ESRCH: no such process, not even a zombie (dev reaped it).
fn gone(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

#[test]
fn dev_starts_a_healthy_set_reports_a_killed_node_and_stops_cleanly_on_sigint() -> Result<()> {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let base = free_base()?;
    let ingest: Vec<String> = (1..=3).map(|n| format!("127.0.0.1:{}", base + n)).collect();
    let mut dev = Dev::start(&data, base, &tmp.path().join("dev.stderr"))?;

    // Ready: every node healthy, under one leader, as the printed commands say.
    dev.wait_line(Duration::from_secs(60), |l| l.starts_with("ready:"))
        .with_context(|| {
            std::fs::read_to_string(tmp.path().join("dev.stderr")).unwrap_or_default()
        })?;
    let pids = node_pids(&dev.seen);
    assert_eq!(pids.len(), 3, "{:#?}", dev.seen);
    let mut leaders = Vec::new();
    for addr in &ingest {
        assert_eq!(healthz(addr)?, "200", "{addr}");
        leaders.push(leader_seen_by(addr)?);
    }
    assert!(leaders[0].is_some(), "{leaders:?}");
    assert!(leaders.iter().all(|l| *l == leaders[0]), "{leaders:?}");
    let record = format!(
        "record --recorder {} --recorder {} --recorder {} -- bash",
        ingest[0], ingest[1], ingest[2]
    );
    dev.wait_line(Duration::from_secs(5), |l| l.contains(&record))?;
    for file in [
        "certs/ca/ca.pem",
        "certs/node3/node.key",
        "node2.toml",
        "dev.toml",
    ] {
        assert!(data.join(file).exists(), "{file} missing");
    }

    // A session through node 2 is acknowledged in full.
    let (acks, len) = upload_sample(&ingest[1])?;
    assert_eq!(acks.last().copied(), Some(len), "{acks:?}");

    // kill -9 a follower: dev says so and the other two keep serving.
    let leader = leaders[0].context("leader")?;
    let victim = (1..=3u64).find(|id| *id != leader).context("follower")?;
    let victim_pid = pids[victim as usize - 1];
    // SAFETY: kill(2) on a node process dev started for this test.
    unsafe {
        libc::kill(victim_pid, libc::SIGKILL);
    }
    let exited = format!("node {victim} (pid {victim_pid}) exited");
    let line = dev.wait_line(Duration::from_secs(10), |l| l.starts_with(&exited))?;
    assert!(line.contains("2 of 3 still running"), "{line}");
    for (i, addr) in ingest.iter().enumerate() {
        if i as u64 + 1 != victim {
            assert_eq!(healthz(addr)?, "200", "survivor {addr}");
        }
    }

    // Ctrl-C: dev stops the rest and exits 0, leaving no node process behind.
    dev.signal(libc::SIGINT);
    let status = dev.wait_exit(Duration::from_secs(15))?;
    assert!(status.success(), "dev exited with {status}");
    for pid in &pids {
        assert!(gone(*pid), "node pid {pid} still exists");
    }
    Ok(())
}
