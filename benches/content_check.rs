//! The asciicast content check alone, in one thread, no I/O: the serde_json event parse
//! the recorder used before against the hand-written checker, per line and through the
//! `Validator` (the old one copied every line into its buffer first).
//!
//! Run with `cargo bench --bench content_check` (`-- --quick` for fewer rounds). Content:
//! the samples under `../shared/samples` and the ingest bench's generated terminal output
//! (`benches/common/content.rs`, seed 42). MB/s are 10^6 bytes per second of input, the
//! best of the rounds; old and new runs alternate, so a busy machine slows both alike.

use std::hint::black_box;
use std::time::{Duration, Instant};

mod common;

use bytes::Bytes;
use common::content::Corpus;
use quorumcast::asciicast::{check_event, parse_header, Limits, Validator};
use serde::Deserialize;

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/samples");
const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// The check as it was (src/asciicast.rs before the hand-written checker)
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct RawEvent<'a>(
    #[allow(dead_code)] f64,
    #[serde(borrow)]
    #[allow(dead_code)]
    std::borrow::Cow<'a, str>,
    serde::de::IgnoredAny,
);

fn old_check_event(line: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("invalid UTF-8: {e}"))?;
    let event: RawEvent<'_> =
        serde_json::from_str(text).map_err(|e| format!("not a [time, code, data] event: {e}"))?;
    if !(event.0.is_finite() && event.0 >= 0.0) {
        return Err(format!(
            "event time {} is not a non-negative number",
            event.0
        ));
    }
    if event.1.is_empty() {
        return Err("event code is empty".into());
    }
    Ok(())
}

/// The old `Validator`'s path for a stream: every line is copied into `partial`, then
/// checked there. (Its problem reporting is reduced to a count: the content is valid.)
struct OldValidator {
    limits: Limits,
    partial: Vec<u8>,
    skipping: bool,
    header_seen: bool,
    problems: u64,
}

impl OldValidator {
    fn new(limits: Limits) -> Self {
        OldValidator {
            limits,
            partial: Vec::new(),
            skipping: false,
            header_seen: false,
            problems: 0,
        }
    }

    fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            match memchr::memchr(b'\n', chunk) {
                Some(at) => {
                    self.take_partial(&chunk[..at]);
                    self.end_line();
                    chunk = &chunk[at + 1..];
                }
                None => {
                    self.take_partial(chunk);
                    break;
                }
            }
        }
    }

    fn limit(&self) -> usize {
        if self.header_seen {
            self.limits.max_line_bytes
        } else {
            self.limits.max_header_bytes
        }
    }

    fn take_partial(&mut self, piece: &[u8]) {
        if self.skipping {
            return;
        }
        if self.problems > 0 {
            if self.partial.is_empty() && !piece.is_empty() {
                self.partial.push(b' ');
            }
            return;
        }
        if self.partial.len() + piece.len() > self.limit() {
            self.skipping = true;
            self.partial.clear();
            return;
        }
        self.partial.extend_from_slice(piece);
    }

    fn end_line(&mut self) {
        let text = std::mem::take(&mut self.partial);
        if self.skipping {
            self.skipping = false;
            self.problems += 1;
        } else if self.problems == 0 {
            let line = text.strip_suffix(b"\r").unwrap_or(&text);
            let ok = if !self.header_seen {
                parse_header(line).is_ok()
            } else {
                line.iter().all(u8::is_ascii_whitespace) || old_check_event(line).is_ok()
            };
            if !ok {
                self.problems += 1;
            }
        }
        self.header_seen = true;
        if text.capacity() <= 64 * 1024 {
            self.partial = text;
            self.partial.clear();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------

/// Best MB/s of `old` and of `new` over `bytes` bytes, in `rounds` alternating runs of
/// each (so both see the same machine); a run repeats its function for at least `min`.
fn rates(
    bytes: usize,
    rounds: usize,
    min: Duration,
    mut old: impl FnMut(),
    mut new: impl FnMut(),
) -> (f64, f64) {
    let run = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        let mut runs = 0u32;
        while start.elapsed() < min || runs == 0 {
            f();
            runs += 1;
        }
        bytes as f64 * f64::from(runs) / start.elapsed().as_secs_f64() / 1e6
    };
    old(); // warm up
    new();
    let (mut best_old, mut best_new) = (0f64, 0f64);
    for _ in 0..rounds {
        best_old = best_old.max(run(&mut old));
        best_new = best_new.max(run(&mut new));
    }
    (best_old, best_new)
}

struct Row {
    what: String,
    old: f64,
    new: f64,
}

fn lines_of(stream: &[u8]) -> Vec<&[u8]> {
    // Event lines only: the header is the first line.
    stream
        .split(|&b| b == b'\n')
        .skip(1)
        .filter(|l| !l.is_empty())
        .collect()
}

fn per_line(what: &str, stream: &[u8], rounds: usize, min: Duration) -> Row {
    let lines = lines_of(stream);
    for line in &lines {
        assert_eq!(old_check_event(line), Ok(()), "{what}: old check");
        assert_eq!(check_event(line), Ok(()), "{what}: new check");
    }
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let (old, new) = rates(
        bytes,
        rounds,
        min,
        || {
            for line in &lines {
                let _ = black_box(old_check_event(black_box(line)));
            }
        },
        || {
            for line in &lines {
                let _ = black_box(check_event(black_box(line)));
            }
        },
    );
    Row {
        what: format!("{what}: check_event per line"),
        old,
        new,
    }
}

/// Each of `streams` (its chunks in order) through a fresh validator.
fn through_validator(what: &str, streams: &[Vec<Bytes>], rounds: usize, min: Duration) -> Row {
    let bytes: usize = streams.iter().flatten().map(Bytes::len).sum();
    let run_old = || {
        let mut problems = 0;
        for chunks in streams {
            let mut v = OldValidator::new(Limits::default());
            for chunk in chunks {
                v.feed(black_box(chunk));
            }
            problems += v.problems;
        }
        problems
    };
    let run_new = || {
        let mut problems = Vec::new();
        for chunks in streams {
            let mut v = Validator::new(Limits::default());
            for chunk in chunks {
                black_box(v.feed(black_box(chunk)));
            }
            v.finish(true);
            problems.extend(v.problem().cloned());
        }
        problems
    };
    assert_eq!(run_old(), 0, "{what}: old validator found a problem");
    assert_eq!(run_new(), [], "{what}: new validator found a problem");
    let (old, new) = rates(
        bytes,
        rounds,
        min,
        || {
            black_box(run_old());
        },
        || {
            black_box(run_new());
        },
    );
    Row {
        what: format!("{what}: Validator::feed"),
        old,
        new,
    }
}

/// `stream` cut every `size` bytes, wherever that falls.
fn cut_every(stream: &Bytes, size: usize) -> Vec<Bytes> {
    (0..stream.len())
        .step_by(size)
        .map(|at| stream.slice(at..(at + size).min(stream.len())))
        .collect()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, min) = if quick {
        (3, Duration::from_millis(200))
    } else {
        (15, Duration::from_millis(300))
    };
    let mut rows = Vec::new();

    // The samples, one after the other as one stream each.
    let mut samples = Vec::new();
    for name in [
        "seed-echo-hi.cast",
        "asciinema-cli-2.4.cast",
        "k8s-exec-header.cast",
    ] {
        let path = format!("{SAMPLES}/{name}");
        match std::fs::read(&path) {
            Ok(bytes) => samples.push(Bytes::from(bytes)),
            Err(e) => eprintln!("skipping {path}: {e}"),
        }
    }
    if !samples.is_empty() {
        let lines: Vec<u8> = samples
            .iter()
            .flat_map(|s| {
                let body = s.splitn(2, |&b| b == b'\n').nth(1).unwrap_or_default();
                body.iter().copied()
            })
            .collect();
        let mut stream = b"{\"version\":2,\"width\":80,\"height\":24}\n".to_vec();
        stream.extend_from_slice(&lines);
        rows.push(per_line("samples", &stream, rounds, min));
        let streams: Vec<Vec<Bytes>> = samples.iter().map(|s| vec![s.clone()]).collect();
        rows.push(through_validator("samples", &streams, rounds, min));
    }

    // Generated terminal output, as the ingest bench sends it: 16 KiB chunks of whole
    // lines; then the same bytes cut every 16 KiB wherever that falls (lines split across
    // chunks), and in 1 MiB pieces (the session pipeline's largest batch).
    let corpus = Corpus::generate(42, 32 * MIB, 16 * 1024);
    let (chunks, total) = corpus.plan(0, 32 * MIB as u64);
    let stream: Bytes = chunks.concat().into();
    assert_eq!(stream.len() as u64, total);
    rows.push(per_line("generated 32 MiB", &stream, rounds, min));
    rows.push(through_validator(
        "generated, 16 KiB whole-line chunks",
        std::slice::from_ref(&chunks),
        rounds,
        min,
    ));
    rows.push(through_validator(
        "generated, cut every 16 KiB",
        &[cut_every(&stream, 16 * 1024)],
        rounds,
        min,
    ));
    rows.push(through_validator(
        "generated, cut every 1 MiB",
        &[cut_every(&stream, MIB)],
        rounds,
        min,
    ));

    println!(
        "content check, best of {rounds} rounds of >= {} ms (MB/s = 10^6 B/s)",
        min.as_millis()
    );
    println!(
        "{:<52} {:>12} {:>12} {:>7}",
        "", "old MB/s", "new MB/s", "new/old"
    );
    for row in rows {
        println!(
            "{:<52} {:>12.0} {:>12.0} {:>6.2}x",
            row.what,
            row.old,
            row.new,
            row.new / row.old
        );
    }
}
