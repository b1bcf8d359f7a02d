//! Code shared by the benches (each bench uses part of it).
#![allow(dead_code)]

pub mod content;
pub mod host;

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
