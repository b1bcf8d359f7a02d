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
