//! `chaos --generate SEED --duration SECS`: the command each client records. Seeded
//! pseudo-random terminal output: bursts of colored text, long idle periods, binary-ish bytes,
//! very long lines and slow trickles, for about `duration` seconds, then exit 0.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::util::Rng;

/// Keeps one client's recording within a few MiB, so 50 clients × 3 replicas fit anywhere.
const MAX_BYTES: usize = 3 * 1024 * 1024;

pub fn generate(seed: u64, duration: Duration) -> Result<()> {
    let mut rng = Rng::new(seed);
    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    let mut written = 0usize;
    writeln!(out, "chaos generator seed {seed}")?;
    while started.elapsed() < duration {
        let left = duration.saturating_sub(started.elapsed());
        let chunk = match rng.range(0, 99) {
            0..=34 => burst(&mut rng),
            35..=49 => {
                // Long idle: longer than the ack keep-alive, sometimes longer than an election.
                let ms = rng.range(1_000, 7_000).min(left.as_millis() as u64);
                std::thread::sleep(Duration::from_millis(ms));
                continue;
            }
            50..=64 => binary(&mut rng),
            65..=72 if written < MAX_BYTES / 2 => long_line(&mut rng),
            _ => {
                trickle(&mut rng, &mut out)?;
                continue;
            }
        };
        if written + chunk.len() > MAX_BYTES {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        out.write_all(&chunk)?;
        out.flush()?;
        written += chunk.len();
        std::thread::sleep(Duration::from_millis(rng.range(0, 150)));
    }
    writeln!(out, "chaos generator done")?;
    out.flush()?;
    Ok(())
}

const WORDS: &[&str] = &[
    "ls",
    "-la",
    "drwxr-xr-x",
    "root",
    "ssh",
    "session",
    "kubectl",
    "exec",
    "héllo",
    "wörld",
    "日本語",
    "emoji🙂",
    "tab\there",
    "\x1b[1mbold\x1b[0m",
    "\x1b[31mred\x1b[0m",
    "\x1b[2K\r",
    "\\",
    "\"quoted\"",
    "{json:1}",
    "progress",
];

fn burst(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.range(5, 200) {
        let mut line = String::new();
        for _ in 0..rng.range(1, 16) {
            let word: &&str = rng.pick(WORDS);
            line.push_str(word);
            line.push(' ');
        }
        line.push('\n');
        out.extend_from_slice(line.as_bytes());
    }
    out
}

/// Arbitrary bytes, including invalid UTF-8, NULs and control characters.
fn binary(rng: &mut Rng) -> Vec<u8> {
    (0..rng.range(16, 4096))
        .map(|_| rng.next_u64() as u8)
        .collect()
}

fn long_line(rng: &mut Rng) -> Vec<u8> {
    let len = rng.range(20_000, 300_000) as usize;
    let mut line: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
    line.push(b'\n');
    line
}

/// A few lines with pauses between them (typing, a slow command).
fn trickle(rng: &mut Rng, out: &mut impl Write) -> Result<()> {
    for i in 0..rng.range(2, 12) {
        writeln!(out, "tick {i} {}", rng.next_u64())?;
        out.flush()?;
        std::thread::sleep(Duration::from_millis(rng.range(30, 400)));
    }
    Ok(())
}
