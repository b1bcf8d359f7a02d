//! A node's dst on a small tmpfs, filled past the set's "full" mark and freed again.

use std::path::Path;

use anyhow::{Context, Result};

use crate::util::{path_str, sh, sh_quiet};

/// Size of the small file system; the settings below put "full" at 90% of it.
pub const TMPFS_SIZE: &str = "64m";
/// Cluster settings for the disk scenario: pressure at 80%, full at 90%.
pub const SETTINGS: &str = r#"{"replication_factor":3,"pressure_used_percent":80,"pressure_min_free_bytes":1048576,"clear_used_percent":70,"full_used_percent":90}"#;
const FILLER: &str = "chaos-filler";

pub fn mount_small(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    sh(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={TMPFS_SIZE}"),
            "qc-chaos-tmpfs",
            path_str(dir)?,
        ],
    )
    .context("mounting a tmpfs (root is needed)")?;
    Ok(())
}

/// Writes a filler file until the file system is ~97% used (bounded by its size).
pub fn fill(dir: &Path) -> Result<()> {
    let (total, avail) = space(dir)?;
    let want = (total as f64 * 0.97) as u64;
    let used = total - avail;
    let size = want.saturating_sub(used);
    std::fs::write(dir.join(FILLER), vec![0x5a_u8; size as usize])?;
    Ok(())
}

pub fn free(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(FILLER));
}

fn space(dir: &Path) -> Result<(u64, u64)> {
    let out = sh("df", &["-B1", "--output=size,avail", path_str(dir)?])?;
    let line = out.lines().nth(1).context("df output")?;
    let mut it = line.split_whitespace().map(|v| v.parse::<u64>());
    Ok((it.next().context("size")??, it.next().context("avail")??))
}

/// Lazily unmounts every tmpfs we mounted under `root` (leftovers of a crashed run too).
pub fn unmount_all_under(root: &Path) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let root = root.to_string_lossy().to_string();
    for point in mounts
        .lines()
        .filter(|l| l.starts_with("qc-chaos-tmpfs "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&root))
    {
        sh_quiet("umount", &["-l", point]);
    }
}
