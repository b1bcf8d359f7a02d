//! asciicast v2: the recording format, checked incrementally and without I/O.
//!
//! This module owns the *meaning* of a recording's bytes: what a valid header and
//! a valid event line are, and the first problem found in a stream. It does not own
//! the bytes themselves: storage keeps every byte a client sent whatever this module
//! thinks of them. A [`Validator`] is fed chunks exactly as they arrive on the wire
//! (any split, including inside a UTF-8 sequence or a JSON string) and keeps at most
//! one line's worth of memory, bounded by [`Limits::max_line_bytes`].
//!
//! Deliberately lenient where real clients differ: the Kubernetes proxy writes resize
//! events as `ROWSxCOLS`, the asciinema CLI puts spaces after commas, event codes
//! other than `o`/`r` are accepted, and blank lines are ignored.

use serde::{Deserialize, Serialize};

/// Bounds on what the validator buffers; anything over them is a [`Problem`], never an
/// allocation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest header line kept for parsing. Tailscale's headers are well under 2 KiB.
    pub max_header_bytes: usize,
    /// Longest event line checked. Longer lines are still stored, but flagged.
    pub max_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_line_bytes: 1024 * 1024,
        }
    }
}

/// The first thing wrong with a recording: where (1-based line) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub line: u64,
    pub reason: String,
}

/// Header fields the session index keeps for search and filtering.
///
/// The standard asciicast fields plus the ones Tailscale adds. Unknown fields are
/// ignored here (they are still in the stored bytes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    /// Unix seconds of the session start, as the client saw it.
    pub timestamp: Option<i64>,
    pub command: Option<String>,
    #[serde(rename = "sshUser")]
    pub ssh_user: Option<String>,
    #[serde(rename = "localUser")]
    pub local_user: Option<String>,
    #[serde(rename = "srcNode")]
    pub src_node: Option<String>,
    #[serde(rename = "srcNodeID")]
    pub src_node_id: Option<String>,
    #[serde(rename = "connectionID")]
    pub connection_id: Option<String>,
    /// Kubernetes session metadata (PodName, Namespace, Container, SessionType), kept as-is.
    pub kubernetes: Option<serde_json::Value>,
}

/// The raw header as JSON; parsed separately so that type errors give a precise reason.
#[derive(Deserialize)]
struct RawHeader {
    version: Option<serde_json::Value>,
    width: Option<serde_json::Value>,
    height: Option<serde_json::Value>,
    timestamp: Option<serde_json::Value>,
    command: Option<serde_json::Value>,
    #[serde(rename = "sshUser")]
    ssh_user: Option<serde_json::Value>,
    #[serde(rename = "localUser")]
    local_user: Option<serde_json::Value>,
    #[serde(rename = "srcNode")]
    src_node: Option<serde_json::Value>,
    #[serde(rename = "srcNodeID")]
    src_node_id: Option<serde_json::Value>,
    #[serde(rename = "connectionID")]
    connection_id: Option<serde_json::Value>,
    kubernetes: Option<serde_json::Value>,
}

/// Parses and checks one header line (without its newline).
pub fn parse_header(line: &[u8]) -> Result<Header, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("header is not valid UTF-8: {e}"))?;
    let raw: RawHeader =
        serde_json::from_str(text).map_err(|e| format!("header is not a JSON object: {e}"))?;
    match raw.version.as_ref().and_then(|v| v.as_u64()) {
        Some(2) => {}
        Some(other) => return Err(format!("unsupported asciicast version {other} (want 2)")),
        None => return Err("header has no numeric \"version\"".into()),
    }
    let width = dimension(raw.width.as_ref(), "width")?;
    let height = dimension(raw.height.as_ref(), "height")?;
    Ok(Header {
        width,
        height,
        timestamp: raw
            .timestamp
            .as_ref()
            .and_then(|v| v.as_f64())
            .map(|t| t as i64),
        command: string_field(raw.command),
        ssh_user: string_field(raw.ssh_user),
        local_user: string_field(raw.local_user),
        src_node: string_field(raw.src_node),
        src_node_id: string_field(raw.src_node_id),
        connection_id: string_field(raw.connection_id),
        kubernetes: raw.kubernetes.filter(|v| !v.is_null()),
    })
}

fn dimension(value: Option<&serde_json::Value>, name: &str) -> Result<u32, String> {
    let value = value.ok_or_else(|| format!("header has no \"{name}\""))?;
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("header \"{name}\" is not a non-negative integer"))
}

/// Keeps non-empty strings; other JSON types are not what the field means, so drop them.
fn string_field(value: Option<serde_json::Value>) -> Option<String> {
    match value {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// One event line's shape: `[time, code, data]`. Data is skipped (validated, not copied).
#[derive(Deserialize)]
struct RawEvent<'a>(
    f64,
    #[serde(borrow)] std::borrow::Cow<'a, str>,
    serde::de::IgnoredAny,
);

/// Checks one event line (without its newline).
pub fn check_event(line: &[u8]) -> Result<(), String> {
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

/// What a call to [`Validator::feed`] found that the caller may act on.
#[derive(Debug, Default, PartialEq)]
pub struct Progress {
    /// The header became available during this feed (exactly once per stream).
    pub header: Option<Header>,
    /// The first problem was found during this feed (exactly once per stream).
    pub problem: Option<Problem>,
}

/// Incremental checker of an asciicast v2 byte stream.
#[derive(Debug)]
pub struct Validator {
    limits: Limits,
    /// Number of the line currently being assembled (1-based).
    line_no: u64,
    /// The current, incomplete line; never longer than the relevant limit.
    partial: Vec<u8>,
    /// The current line went over its limit: skip to its newline.
    skipping: bool,
    /// Whether the header line has been seen (valid or not).
    header_seen: bool,
    /// First problem; once set, lines are only counted, not parsed.
    problem: Option<Problem>,
    /// Bytes seen so far, to describe where the stream ended.
    bytes: u64,
}

impl Validator {
    pub fn new(limits: Limits) -> Self {
        Validator {
            limits,
            line_no: 1,
            partial: Vec::new(),
            skipping: false,
            header_seen: false,
            problem: None,
            bytes: 0,
        }
    }

    /// The first problem found so far.
    pub fn problem(&self) -> Option<&Problem> {
        self.problem.as_ref()
    }

    /// Whether a complete header line has been read.
    pub fn header_seen(&self) -> bool {
        self.header_seen
    }

    /// Whether the stream so far ends inside a line (no newline after the last byte).
    pub fn mid_line(&self) -> bool {
        !self.partial.is_empty() || self.skipping
    }

    /// Number of complete lines read.
    pub fn lines(&self) -> u64 {
        self.line_no - 1
    }

    /// Feeds the next chunk of the stream, in order.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Progress {
        let mut progress = Progress::default();
        self.bytes += chunk.len() as u64;
        while !chunk.is_empty() {
            match memchr::memchr(b'\n', chunk) {
                Some(at) => {
                    self.take_partial(&chunk[..at]);
                    self.end_line(&mut progress);
                    chunk = &chunk[at + 1..];
                }
                None => {
                    self.take_partial(chunk);
                    break;
                }
            }
        }
        progress
    }

    /// The stream ended. `clean` is false when the client went away or the stream was cut.
    pub fn finish(&mut self, clean: bool) -> Progress {
        let mut progress = Progress::default();
        let has_tail = !self.partial.is_empty() || self.skipping;
        if has_tail && clean {
            // A last line without its newline is fine if it is complete JSON.
            self.end_line(&mut progress);
        } else if has_tail {
            let line = self.line_no;
            self.flag(
                &mut progress,
                line,
                "stream cut in the middle of a line".into(),
            );
        }
        if self.bytes == 0 {
            self.flag(&mut progress, 1, "empty recording: no header".into());
        } else if !self.header_seen {
            let line = self.line_no;
            self.flag(
                &mut progress,
                line,
                "stream ended before the header line was complete".into(),
            );
        }
        progress
    }

    fn limit(&self) -> usize {
        if self.header_seen {
            self.limits.max_line_bytes
        } else {
            self.limits.max_header_bytes
        }
    }

    /// Appends to the current line unless it is being skipped or already too long.
    fn take_partial(&mut self, piece: &[u8]) {
        if self.skipping {
            return;
        }
        if self.problem.is_some() {
            // Lines are only counted now; keep one byte so `finish` sees a tail.
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

    fn end_line(&mut self, progress: &mut Progress) {
        let line = self.line_no;
        let text = std::mem::take(&mut self.partial);
        if self.skipping {
            self.skipping = false;
            let what = if self.header_seen { "line" } else { "header" };
            let reason = format!("{what} longer than {} bytes", self.limit());
            self.flag(progress, line, reason);
        } else if self.problem.is_none() {
            self.check_line(line, &text, progress);
        }
        self.header_seen = true;
        self.line_no += 1;
        // Keep the allocation for the next line when it is small.
        if text.capacity() <= 64 * 1024 {
            self.partial = text;
            self.partial.clear();
        }
    }

    fn check_line(&mut self, line: u64, text: &[u8], progress: &mut Progress) {
        let text = strip_cr(text);
        if !self.header_seen {
            match parse_header(text) {
                Ok(header) => progress.header = Some(header),
                Err(reason) => self.flag(progress, line, reason),
            }
        } else if !text.iter().all(u8::is_ascii_whitespace) {
            if let Err(reason) = check_event(text) {
                self.flag(progress, line, reason);
            }
        }
    }

    fn flag(&mut self, progress: &mut Progress, line: u64, reason: String) {
        if self.problem.is_none() {
            let problem = Problem { line, reason };
            progress.problem = Some(problem.clone());
            self.problem = Some(problem);
        }
    }
}

fn strip_cr(text: &[u8]) -> &[u8] {
    text.strip_suffix(b"\r").unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/samples");

    fn feed_all(bytes: &[u8], split: usize) -> (Validator, Option<Header>) {
        let mut v = Validator::new(Limits::default());
        let mut header = None;
        for chunk in bytes.chunks(split.max(1)) {
            if let Some(h) = v.feed(chunk).header {
                header = Some(h);
            }
        }
        v.finish(true);
        (v, header)
    }

    fn sample(name: &str) -> Option<Vec<u8>> {
        std::fs::read(format!("{SAMPLES}/{name}")).ok()
    }

    #[test]
    fn samples_are_valid_at_every_split() {
        for name in [
            "seed-echo-hi.cast",
            "asciinema-cli-2.4.cast",
            "k8s-exec-header.cast",
        ] {
            let Some(bytes) = sample(name) else {
                panic!("sample {name} missing under {SAMPLES}");
            };
            for split in [1, 2, 3, 7, 64, 4096] {
                let (v, header) = feed_all(&bytes, split);
                assert_eq!(v.problem(), None, "{name} split {split}");
                assert!(header.is_some(), "{name} split {split}: no header");
            }
        }
    }

    #[test]
    fn tailscale_header_fields_are_read() {
        let bytes = sample("seed-echo-hi.cast").expect("seed sample");
        let (_, header) = feed_all(&bytes, 10);
        let header = header.expect("header");
        assert_eq!(header.width, 203);
        assert_eq!(header.ssh_user.as_deref(), Some("alice"));
        assert_eq!(header.src_node_id.as_deref(), Some("nguedK2CNTRL"));
        assert_eq!(header.timestamp, Some(1679441819));
    }

    #[test]
    fn kubernetes_header_is_kept() {
        let bytes = sample("k8s-exec-header.cast").expect("k8s sample");
        let (_, header) = feed_all(&bytes, 5);
        let k8s = header.and_then(|h| h.kubernetes).expect("kubernetes");
        assert_eq!(k8s["PodName"], "web-7d9f8");
    }

    #[test]
    fn missing_header_is_a_problem_on_line_1() {
        let (v, header) = feed_all(b"[0.1, \"o\", \"hi\"]\n", 4);
        assert!(header.is_none());
        let p = v.problem().expect("problem");
        assert_eq!(p.line, 1);
        assert!(p.reason.contains("header"), "{}", p.reason);
    }

    #[test]
    fn bad_event_reports_its_line() {
        let input = b"{\"version\":2,\"width\":80,\"height\":24}\n[0.1,\"o\",\"a\"]\nnot json\n[0.3,\"o\",\"b\"]\n";
        let (v, _) = feed_all(input, 3);
        assert_eq!(v.problem().map(|p| p.line), Some(3));
    }

    #[test]
    fn invalid_utf8_is_flagged() {
        let mut input = b"{\"version\":2,\"width\":80,\"height\":24}\n[0.1,\"o\",\"".to_vec();
        input.extend_from_slice(&[0xff, 0xfe]);
        input.extend_from_slice(b"\"]\n");
        let (v, _) = feed_all(&input, 2);
        let p = v.problem().expect("problem");
        assert_eq!(p.line, 2);
        assert!(p.reason.contains("UTF-8"), "{}", p.reason);
    }

    #[test]
    fn long_line_is_flagged_without_buffering_it() {
        let limits = Limits {
            max_header_bytes: 1024,
            max_line_bytes: 100,
        };
        let mut v = Validator::new(limits);
        v.feed(b"{\"version\":2,\"width\":80,\"height\":24}\n[0.1,\"o\",\"");
        v.feed(&[b'x'; 500]);
        assert!(v.partial.len() <= 100);
        let progress = v.feed(b"\"]\n[0.2,\"o\",\"ok\"]\n");
        assert_eq!(progress.problem.map(|p| p.line), Some(2));
        assert_eq!(v.lines(), 3);
    }

    #[test]
    fn oversized_header_is_flagged() {
        let limits = Limits {
            max_header_bytes: 10,
            max_line_bytes: 100,
        };
        let mut v = Validator::new(limits);
        let progress = v.feed(b"{\"version\":2,\"width\":80,\"height\":24}\n");
        let p = progress.problem.expect("problem");
        assert!(p.reason.starts_with("header longer"), "{}", p.reason);
    }

    #[test]
    fn cut_mid_line_is_flagged_only_when_unclean() {
        let input = b"{\"version\":2,\"width\":80,\"height\":24}\n[0.1,\"o\",\"a\"]";
        let mut clean = Validator::new(Limits::default());
        clean.feed(input);
        assert_eq!(clean.finish(true).problem, None);
        let mut cut = Validator::new(Limits::default());
        cut.feed(input);
        let p = cut.finish(false).problem.expect("problem");
        assert_eq!(p.line, 2);
    }

    #[test]
    fn empty_stream_is_flagged() {
        let mut v = Validator::new(Limits::default());
        assert!(v.finish(true).problem.is_some());
    }

    #[test]
    fn version_1_is_rejected_with_reason() {
        let (v, _) = feed_all(
            b"{\"version\":1,\"width\":80,\"height\":24,\"stdout\":[]}\n",
            100,
        );
        let p = v.problem().expect("problem");
        assert!(p.reason.contains("version 1"), "{}", p.reason);
    }
}
