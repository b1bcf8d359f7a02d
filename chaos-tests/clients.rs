//! The recording clients: `quorumcast record --enforce` running this harness's own generator
//! (`--generate SEED`) in a PTY, each with its own `--output` copy and stderr file. Each gets
//! the recorders in a rotated order so sessions spread over owners. Every client is bounded:
//! one still running at its limit is killed and reported.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::util::{die_with_parent, Rng};

/// `--failover-deadline` (s) of every client.
pub const FAILOVER_DEADLINE_S: u64 = 10;
/// `--ack-timeout` (s): how long a silent stream (paused or cut-off node) takes to count as broken.
pub const ACK_TIMEOUT_S: u64 = 5;
/// After SIGHUP, the client SIGKILLs its command this much later (client's KILL_GRACE).
pub const KILL_GRACE_MS: u64 = 2_000;

pub struct Client {
    pub idx: usize,
    pub gen_seed: u64,
    pub output: PathBuf,
    pub stderr: PathBuf,
    child: Option<Child>,
    pub start_ms: u64,
    pub end_ms: Option<u64>,
    /// Exit code, or 128 + signal.
    pub code: Option<i32>,
    /// Killed by the harness at its time limit.
    pub hung: bool,
}

pub struct Spawn<'a> {
    pub bin: &'a Path,
    pub harness: &'a Path,
    pub recorders: &'a [String],
    pub dir: &'a Path,
    pub duration_s: u64,
}

impl Client {
    pub fn spawn(s: &Spawn, idx: usize, rng: &Rng, start_ms: u64) -> Result<Client> {
        let gen_seed = rng.fork(&format!("client-{idx}")).next_u64() >> 1;
        let output = s.dir.join(format!("client{idx}.cast"));
        let stderr = s.dir.join(format!("client{idx}.err"));
        let mut command = Command::new(s.bin);
        command.arg("record");
        let n = s.recorders.len();
        for k in 0..n {
            command.args(["--recorder", &s.recorders[(idx + k) % n]]);
        }
        command
            .arg("--enforce")
            .args(["--failover-deadline", &FAILOVER_DEADLINE_S.to_string()])
            .args(["--ack-timeout", &ACK_TIMEOUT_S.to_string()])
            .arg("--output")
            .arg(&output)
            .arg("--")
            .arg(s.harness)
            .args(["--generate", &gen_seed.to_string()])
            .args(["--duration", &s.duration_s.to_string()])
            .env("TERM", "xterm-256color")
            // As under OpenSSH: the header then carries connectionID, the session's id.
            .env(
                "SSH_CONNECTION",
                format!("10.77.0.1 {} 10.77.0.1 22", 20_000 + idx),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr)?);
        die_with_parent(&mut command);
        let child = command.spawn().context("spawn quorumcast record")?;
        crate::pids::record(child.id());
        Ok(Client {
            idx,
            gen_seed,
            output,
            stderr,
            child: Some(child),
            start_ms,
            end_ms: None,
            code: None,
            hung: false,
        })
    }

    /// Reaps the client if it exited; true once it has.
    pub fn poll(&mut self, now_ms: u64) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        if let Ok(Some(status)) = child.try_wait() {
            self.code = Some(code_of(status));
            self.end_ms = Some(now_ms);
            self.child = None;
            return true;
        }
        false
    }

    /// The harness's limit: SIGKILL, recorded as hung.
    pub fn kill_hung(&mut self, now_ms: u64) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.hung = true;
            self.end_ms = Some(now_ms);
        }
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// One "recording moved from A to B after N ms (resumed at byte K)" line.
#[derive(Debug, Clone)]
pub struct Move {
    pub after_ms: u64,
    pub resumed_at: u64,
}

pub fn parse_moves(stderr: &str) -> Vec<Move> {
    stderr
        .lines()
        .filter(|l| l.contains("recording moved from"))
        .filter_map(|l| {
            let after = l
                .split(" after ")
                .nth(1)?
                .split(" ms")
                .next()?
                .trim()
                .parse()
                .ok()?;
            let at = l
                .split("resumed at byte ")
                .nth(1)?
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()?;
            Some(Move {
                after_ms: after,
                resumed_at: at,
            })
        })
        .collect()
}

/// Starts `n` clients spread over ~2 s (so their admissions don't all race at one instant).
pub fn start_all(s: &Spawn, n: usize, rng: &Rng, t0: Instant) -> Result<Vec<Client>> {
    let mut clients = Vec::new();
    for idx in 0..n {
        let start_ms = t0.elapsed().as_millis() as u64;
        clients.push(Client::spawn(s, idx, rng, start_ms)?);
        std::thread::sleep(Duration::from_millis(2_000 / n.max(1) as u64));
    }
    Ok(clients)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_move_line() {
        let m = parse_moves("quorumcast: recording moved from 10.77.0.11:8080 to 10.77.0.12:8080 after 412 ms (resumed at byte 4600)\n");
        assert_eq!((m[0].after_ms, m[0].resumed_at), (412, 4600));
    }
}
