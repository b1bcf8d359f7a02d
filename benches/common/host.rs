//! Facts about the host and the checkout that every bench prints with its figures.

use std::process::Command;

use anyhow::{ensure, Context, Result};

/// Stdout of `program args`; an error if it can't run or fails.
pub fn command_output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// HEAD of the checkout the bench was built from, and its uncommitted files if any (they
/// are in the measured binary too).
pub fn git_commit() -> String {
    let repo = env!("CARGO_MANIFEST_DIR");
    let head = command_output("git", &["-C", repo, "rev-parse", "--short=12", "HEAD"]);
    let dirty = command_output(
        "git",
        &["-C", repo, "status", "--porcelain", "--untracked-files=no"],
    );
    match (head, dirty) {
        (Ok(head), Ok(dirty)) if dirty.trim().is_empty() => head.trim().to_string(),
        (Ok(head), Ok(dirty)) => format!(
            "{} + uncommitted changes in: {}",
            head.trim(),
            dirty
                .lines()
                .map(|l| l.get(3..).unwrap_or(l).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => "unknown (not a git checkout)".into(),
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// How long file creation stays slow after many files were deleted, on ext4 without a
/// journal (this machine's root file system): `recently_deleted()` in fs/ext4/ialloc.c
/// refuses, for every candidate inode, one whose deletion time is under 60 s old, or under
/// 300 s while its inode-table block is still dirty in the buffer cache. Creating a file
/// then scans past the inodes a previous run freed. Measured on this VM with the admission
/// bench at 16 clients: inode allocation took 15 % of all CPU samples right after a run had
/// deleted its data, 2.6 % five minutes later, and the rate went from 528-535 to 689
/// admissions/s.
pub const INODE_REUSE_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// The file whose mtime says when a bench last deleted its many files under `root`.
fn deletion_mark(root: &std::path::Path) -> std::path::PathBuf {
    root.join("qc-bench-deleted-many-files")
}

/// Waits until [`INODE_REUSE_WAIT`] has passed since a bench last deleted many files
/// under `root` (see [`mark_mass_deletion`]); returns how long it waited.
pub fn settle_after_mass_deletion(root: &std::path::Path) -> std::time::Duration {
    let since = std::fs::metadata(deletion_mark(root))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    let Some(wait) = since.and_then(|s| INODE_REUSE_WAIT.checked_sub(s)) else {
        return std::time::Duration::ZERO;
    };
    eprintln!(
        "[bench] a previous run deleted its files {} s ago; waiting {} s, until new \
         inodes no longer scan past them (ext4 without a journal)",
        since.unwrap_or_default().as_secs(),
        wait.as_secs()
    );
    std::thread::sleep(wait);
    wait
}

/// Records that many files were just deleted under `root`.
pub fn mark_mass_deletion(root: &std::path::Path) {
    if let Err(e) = std::fs::write(deletion_mark(root), b"") {
        eprintln!(
            "[bench] cannot mark the deletion under {}: {e}",
            root.display()
        );
    }
}
