//! Every process the harness starts is recorded (pid file under the run root), so the next run
//! can end what a crashed one left behind: only those pids, and only if they still run one of
//! our programs (a recycled pid is left alone).

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

static FILE: OnceLock<PathBuf> = OnceLock::new();

pub fn init(path: PathBuf) {
    let _ = FILE.set(path);
}

pub fn record(pid: u32) {
    let Some(path) = FILE.get() else { return };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{pid}");
    }
}

/// SIGKILL to recorded pids that still run `quorumcast` or this harness; then forgets them.
pub fn kill_leftovers() {
    let Some(path) = FILE.get() else { return };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("quorumcast") || cmdline.contains("chaos") {
            // SAFETY: kill(2) on a pid we started in an earlier run, checked just above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let _ = std::fs::remove_file(path);
}
