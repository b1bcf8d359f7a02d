//! Code shared by the benches (each bench uses part of it).
#![allow(dead_code)]

pub mod content;
pub mod host;
/// The tests' port picker: ports below the ephemeral range, never handed out twice, so a
/// node restarted on its port cannot find it taken by one of the bench's own outgoing
/// connections (which `bind(":0")` ports can be).
#[path = "../../tests/common/ports.rs"]
pub mod ports;

/// Writes `bytes` bytes to `out` as `block` over and over (the last copy cut short): how
/// the benches' baselines (the disk limit, the TCP ceiling) produce their bytes.
pub fn write_repeated(
    out: &mut impl std::io::Write,
    block: &[u8],
    bytes: u64,
) -> std::io::Result<()> {
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// The disk's limit: `bytes` written by one thread to one new file in `dir` in 64 KiB
/// `write`s, then one `fdatasync`. Timed from creating the file to the end of the
/// fdatasync; the file is removed afterwards.
pub async fn sequential_limit(
    dir: &std::path::Path,
    bytes: u64,
) -> anyhow::Result<std::time::Duration> {
    use anyhow::Context;
    let path = dir.join("limit.dat");
    tokio::task::spawn_blocking(move || -> anyhow::Result<std::time::Duration> {
        let block: Vec<u8> = (0..64 * 1024)
            .map(|i| b"0123456789abcdef[],\"o\"\n"[i % 23])
            .collect();
        let started = std::time::Instant::now();
        let mut file = std::fs::File::create(&path).context("create limit file")?;
        write_repeated(&mut file, &block, bytes)?;
        file.sync_data()?;
        let elapsed = started.elapsed();
        std::fs::remove_file(&path)?;
        Ok(elapsed)
    })
    .await?
}
