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

#[cfg(target_arch = "x86_64")]
mod avx2;

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
    /// 1-based line of the recording; 0 when the problem is about the session, not a line
    /// (the node stopped while it was live: finding the line where the bytes end would read
    /// whole recordings at start-up).
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

/// How deep arrays and objects may nest inside an event's data (the data of a real event is
/// a string). serde_json, which checked events before, has no bound for a skipped value; a
/// deeper line is the one place the two knowingly disagree on structure.
pub const MAX_DATA_DEPTH: usize = 256;

/// Checks one event line (without its newline): `[time, code, data]` where time is a JSON
/// number that is a finite `f64` >= 0, code a non-empty JSON string, data any JSON value
/// (nested at most [`MAX_DATA_DEPTH`] deep); only JSON whitespace around them. The whole
/// line must be UTF-8.
///
/// Hand-written, in place and allocation-free: it runs on every line of every recording,
/// and the serde_json deserialization it replaced was a third of a node's ingest CPU. Its
/// verdict is serde_json's (the tests hold it against that parse), except for the depth
/// bound and numbers within rounding of `f64`'s limits (see `time_verdict`).
pub fn check_event(line: &[u8]) -> Result<(), String> {
    scan_event(line).map_err(|e| {
        // UTF-8 comes first, as it did when serde_json needed a `&str`. A well-formed line
        // was checked in the scan: outside strings the grammar admits ASCII only, and
        // every run of string content with a non-ASCII byte was checked as UTF-8.
        match std::str::from_utf8(line) {
            Err(utf8) => format!("invalid UTF-8: {utf8}"),
            Ok(_) => e.describe(line),
        }
    })
}

/// What is wrong with an event line, and where (a byte offset; for the time, its span).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EventError {
    fault: Fault,
    at: usize,
    len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    EndOfLine,
    ExpectedArray,
    TooFewElements(u8),
    ExpectedComma,
    TooManyElements,
    ExpectedEnd,
    TrailingCharacters,
    TimeNotNumber,
    CodeNotString,
    InvalidNumber,
    ExpectedValue,
    InvalidLiteral,
    ExpectedCommaOrClose,
    KeyNotString,
    ExpectedColon,
    TooDeep,
    ControlCharacter(u8),
    InvalidEscape,
    UnpairedSurrogate,
    InvalidUtf8,
    NegativeTime,
    TimeOutOfRange,
    EmptyCode,
}

impl EventError {
    fn describe(&self, line: &[u8]) -> String {
        let what = match self.fault {
            Fault::NegativeTime | Fault::TimeOutOfRange => {
                let time = line.get(self.at..self.at + self.len).unwrap_or_default();
                let shown = String::from_utf8_lossy(&time[..time.len().min(40)]);
                let more = if time.len() > 40 { "…" } else { "" };
                return if self.fault == Fault::NegativeTime {
                    format!("event time {shown}{more} is not a non-negative number")
                } else {
                    format!("event time {shown}{more} is out of range of a 64-bit float")
                };
            }
            Fault::EmptyCode => return "event code is empty".into(),
            Fault::EndOfLine => "unexpected end of line".into(),
            Fault::ExpectedArray => "expected '['".into(),
            Fault::TooFewElements(n) => format!("array has {n} elements, want 3"),
            Fault::ExpectedComma => "expected ','".into(),
            Fault::TooManyElements => "array has more than 3 elements".into(),
            Fault::ExpectedEnd => "expected ']'".into(),
            Fault::TrailingCharacters => "trailing characters after ']'".into(),
            Fault::TimeNotNumber => "time is not a number".into(),
            Fault::CodeNotString => "code is not a string".into(),
            Fault::InvalidNumber => "invalid number".into(),
            Fault::ExpectedValue => "expected a JSON value".into(),
            Fault::InvalidLiteral => "invalid literal (want true, false or null)".into(),
            Fault::ExpectedCommaOrClose => "expected ',' or the end of an array or object".into(),
            Fault::KeyNotString => "object key is not a string".into(),
            Fault::ExpectedColon => "expected ':'".into(),
            Fault::TooDeep => format!("data nested deeper than {MAX_DATA_DEPTH} levels"),
            Fault::ControlCharacter(b) => format!("control character 0x{b:02x} in a string"),
            Fault::InvalidEscape => "invalid escape in a string".into(),
            Fault::UnpairedSurrogate => "unpaired surrogate escape in the code".into(),
            // Reported by `check_event` from `from_utf8`, which finds it too.
            Fault::InvalidUtf8 => "invalid UTF-8".into(),
        };
        format!(
            "not a [time, code, data] event: {what} at column {}",
            self.at + 1
        )
    }
}

/// Checks the event's structure, then its time and code.
fn scan_event(line: &[u8]) -> Result<(), EventError> {
    let mut s = Scanner {
        bytes: line,
        pos: 0,
    };
    s.skip_ws();
    if s.peek() != Some(b'[') {
        return Err(s.fault_here(Fault::ExpectedArray));
    }
    s.pos += 1;
    s.skip_ws();
    let time_at = s.pos;
    let plain_time = match s.peek() {
        Some(b'-' | b'0'..=b'9') => s.number()?,
        Some(b']') => return Err(s.fault_here(Fault::TooFewElements(0))),
        _ => return Err(s.fault_here(Fault::TimeNotNumber)),
    };
    let time_end = s.pos;
    s.separator(1)?;
    let code_at = s.pos;
    match s.peek() {
        // The usual code, one plain ASCII letter ("o", "i", "r", "m"), without the
        // string scan; any other code takes it.
        Some(b'"') => match line.get(s.pos + 1..s.pos + 3) {
            Some(&[c, b'"']) if c.is_ascii() && !is_string_stop(c) => s.pos += 3,
            _ => {
                s.pos += 1;
                s.string::<true>()?;
            }
        },
        Some(b']') => return Err(s.fault_here(Fault::TooFewElements(1))),
        _ => return Err(s.fault_here(Fault::CodeNotString)),
    }
    let code_empty = s.pos == code_at + 2;
    s.separator(2)?;
    s.value()?;
    s.skip_ws();
    match s.peek() {
        Some(b']') => s.pos += 1,
        Some(b',') => return Err(s.fault_here(Fault::TooManyElements)),
        _ => return Err(s.fault_here(Fault::ExpectedEnd)),
    }
    s.skip_ws();
    if s.pos < line.len() {
        return Err(s.fault_here(Fault::TrailingCharacters));
    }
    let time = line.get(time_at..time_end).unwrap_or_default();
    let verdict = if plain_time {
        TimeVerdict::Ok
    } else {
        time_verdict(time)
    };
    let fault = match verdict {
        TimeVerdict::Ok => None,
        TimeVerdict::Negative => Some(Fault::NegativeTime),
        TimeVerdict::OutOfRange => Some(Fault::TimeOutOfRange),
    };
    if let Some(fault) = fault {
        return Err(EventError {
            fault,
            at: time_at,
            len: time.len(),
        });
    }
    if code_empty {
        return Err(EventError {
            fault: Fault::EmptyCode,
            at: code_at,
            len: 2,
        });
    }
    Ok(())
}

/// Where the usual event line at the start of `chunk` ends: the index of its `\n`, when
/// the line is `[TIME,CODE,"DATA"]` (single spaces allowed after the commas, an optional
/// `\r` before the `\n`) and well formed. `None` for anything else, which the caller
/// then finds the end of and checks the general way ([`check_event`]).
///
/// This lets the [`Validator`] check a line and find its end in one pass instead of a
/// newline search and then a scan. Nothing it accepts can hold a `\n`: strings can't,
/// and the only whitespace it crosses is single spaces. Its verdict is never its own:
/// a line it accepts is one `check_event` accepts (the tests hold it to that).
fn usual_event_end(chunk: &[u8]) -> Option<usize> {
    let mut s = Scanner {
        bytes: chunk,
        pos: 0,
    };
    if s.peek() != Some(b'[') {
        return None;
    }
    s.pos += 1;
    if !matches!(s.peek(), Some(b'0'..=b'9')) || !s.number().ok()? {
        return None;
    }
    s.usual_comma()?;
    match chunk.get(s.pos..s.pos + 3) {
        Some(&[b'"', c, b'"']) if c.is_ascii() && !is_string_stop(c) => s.pos += 3,
        Some(&[b'"', c, _]) if c != b'"' => {
            s.pos += 1;
            s.string::<true>().ok()?;
        }
        _ => return None,
    }
    s.usual_comma()?;
    if s.peek() != Some(b'"') {
        return None;
    }
    s.pos += 1;
    s.string::<false>().ok()?;
    match chunk.get(s.pos..)? {
        [b']', b'\n', ..] => Some(s.pos + 1),
        [b']', b'\r', b'\n', ..] => Some(s.pos + 2),
        _ => None,
    }
}

const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Marks (high bit of each byte) the bytes of `word` that end a run of plain string
/// content: `"`, `\` and control bytes < 0x20. Only the lowest mark is exact (a borrow can
/// mark a byte above a true one), which is all the scan uses.
#[inline]
fn string_stops(word: u64) -> u64 {
    let control = word.wrapping_sub(LOW_BITS * 0x20) & !word;
    let quote = word ^ (LOW_BITS * u64::from(b'"'));
    let quote = quote.wrapping_sub(LOW_BITS) & !quote;
    let backslash = word ^ (LOW_BITS * u64::from(b'\\'));
    let backslash = backslash.wrapping_sub(LOW_BITS) & !backslash;
    (control | quote | backslash) & HIGH_BITS
}

/// Two masks of the 64 bytes at `from` (bit i for byte `from + i`): the bytes that stop a
/// run of plain string content (`"`, `\` and control bytes), and the non-ASCII ones.
/// Past the end of `bytes` the block is padded with zero bytes, which are control bytes:
/// a scan never runs off the line without stopping.
#[cfg(target_arch = "x86_64")]
#[inline]
fn block_masks(bytes: &[u8], from: usize) -> (u64, u64) {
    let rest = bytes.get(from..).unwrap_or_default();
    let mut padded = [0u8; 64];
    let block = match rest.first_chunk::<64>() {
        Some(block) => block,
        None => {
            if let Some(head) = padded.get_mut(..rest.len()) {
                head.copy_from_slice(rest);
            }
            &padded
        }
    };
    let (mut stops, mut high) = (0u64, 0u64);
    for (k, part) in block.chunks_exact(16).enumerate() {
        if let Some(part) = part.first_chunk::<16>() {
            let (s, h) = masks16(part);
            stops |= u64::from(s) << (16 * k);
            high |= u64::from(h) << (16 * k);
        }
    }
    (stops, high)
}

/// [`block_masks`] for 16 bytes, with SSE2 (part of every x86_64 CPU).
#[cfg(target_arch = "x86_64")]
#[inline]
fn masks16(part: &[u8; 16]) -> (u16, u16) {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: the load reads exactly the 16 bytes of `part` (unaligned loads are allowed),
    // and SSE2, which every intrinsic here needs, is enabled on every x86_64 target.
    unsafe {
        let v = _mm_loadu_si128(part.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Unsigned v <= 0x1f: max(v, 0x1f) == 0x1f.
        let low = _mm_set1_epi8(0x1f);
        let control = _mm_cmpeq_epi8(_mm_max_epu8(v, low), low);
        let stops = _mm_or_si128(_mm_or_si128(quote, backslash), control);
        // movemask sets only the low 16 bits: the casts keep them all.
        (_mm_movemask_epi8(stops) as u16, _mm_movemask_epi8(v) as u16)
    }
}

#[inline]
fn is_string_stop(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// The length of an escape by the byte after its `\`: 2, 6 for `\uXXXX`, 0 for none.
static ESCAPE_LEN: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut two = b"\"\\/bfnrt".as_slice();
    while let [c, rest @ ..] = two {
        table[*c as usize] = 2;
        two = rest;
    }
    table[b'u' as usize] = 6;
    table
};

/// 1 for the bytes that are hex digits.
static HEX_DIGIT: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_hexdigit() as u8;
        b += 1;
    }
    table
};

fn hex_value(b: u8) -> Option<u16> {
    match b {
        b'0'..=b'9' => Some(u16::from(b - b'0')),
        b'a'..=b'f' => Some(u16::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u16::from(b - b'A' + 10)),
        _ => None,
    }
}

/// A cursor over one line. `pos` never exceeds the line's length.
struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// `fault` at `at`, or the end of the line when that is where `at` is.
    fn fault_at(&self, at: usize, fault: Fault) -> EventError {
        let fault = if at >= self.bytes.len() {
            Fault::EndOfLine
        } else {
            fault
        };
        EventError { fault, at, len: 1 }
    }

    fn fault_here(&self, fault: Fault) -> EventError {
        self.fault_at(self.pos, fault)
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// The `,` between the top-level elements; `]` there means only `count` elements.
    fn separator(&mut self, count: u8) -> Result<(), EventError> {
        self.skip_ws();
        match self.peek() {
            Some(b',') => self.pos += 1,
            Some(b']') => return Err(self.fault_here(Fault::TooFewElements(count))),
            _ => return Err(self.fault_here(Fault::ExpectedComma)),
        }
        self.skip_ws();
        Ok(())
    }

    /// `,` and at most one space: between the elements of a usual event line.
    fn usual_comma(&mut self) -> Option<()> {
        if self.peek() != Some(b',') {
            return None;
        }
        self.pos += 1;
        if self.peek() == Some(b' ') {
            self.pos += 1;
        }
        Some(())
    }

    fn digits_from(&self, mut at: usize) -> usize {
        while let Some(b'0'..=b'9') = self.bytes.get(at) {
            at += 1;
        }
        at
    }

    /// A JSON number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`. True when
    /// it is plainly a finite number >= 0: no sign, no exponent, under 300 integer digits.
    fn number(&mut self) -> Result<bool, EventError> {
        let start = self.pos;
        let mut p = start;
        let negative = self.bytes.get(p) == Some(&b'-');
        if negative {
            p += 1;
        }
        match self.bytes.get(p) {
            Some(b'0') => {
                p += 1;
                if let Some(b'0'..=b'9') = self.bytes.get(p) {
                    return Err(self.fault_at(p, Fault::InvalidNumber));
                }
            }
            Some(b'1'..=b'9') => p = self.digits_from(p + 1),
            _ => return Err(self.fault_at(p, Fault::InvalidNumber)),
        }
        let integer_digits = p - start;
        if self.bytes.get(p) == Some(&b'.') {
            let end = self.digits_from(p + 1);
            if end == p + 1 {
                return Err(self.fault_at(end, Fault::InvalidNumber));
            }
            p = end;
        }
        let exponent = matches!(self.bytes.get(p), Some(b'e' | b'E'));
        if exponent {
            p += 1;
            if let Some(b'+' | b'-') = self.bytes.get(p) {
                p += 1;
            }
            let end = self.digits_from(p);
            if end == p {
                return Err(self.fault_at(end, Fault::InvalidNumber));
            }
            p = end;
        }
        self.pos = p;
        Ok(!negative && !exponent && integer_digits < 300)
    }

    /// The rest of a string whose opening `"` was consumed. `PAIRED`: `\u` surrogates
    /// must pair up (serde_json wants that of a string it deserializes, like the code, but
    /// not of a value it skips, like the data).
    ///
    /// Runs of plain content are crossed eight bytes at a time; a run with a non-ASCII
    /// byte is checked as UTF-8 on its own (it is bounded by ASCII bytes, so that is the
    /// same as checking the line). The common escapes take no call and no jump table.
    /// On x86_64, unpaired strings take [`Self::unpaired_string_blocks`] instead.
    #[inline]
    fn string<const PAIRED: bool>(&mut self) -> Result<(), EventError> {
        #[cfg(target_arch = "x86_64")]
        if !PAIRED {
            return self.unpaired_string_blocks();
        }
        let bytes = self.bytes;
        let mut pos = self.pos;
        loop {
            // A run of plain content, up to the next `"`, `\` or control byte.
            let run = pos;
            let mut rest = bytes.get(pos..).unwrap_or_default();
            let mut high = 0u64;
            loop {
                match rest.split_first_chunk::<8>() {
                    Some((word, tail)) => {
                        let word = u64::from_le_bytes(*word);
                        let stops = string_stops(word);
                        if stops == 0 {
                            high |= word;
                            rest = tail;
                            continue;
                        }
                        let plain = stops.trailing_zeros() / 8;
                        // The bytes before the stop (none: the mask is 0).
                        high |= word & ((1u64 << (plain * 8)) - 1);
                        pos = bytes.len() - rest.len() + plain as usize;
                    }
                    None => {
                        pos = bytes.len() - rest.len();
                        for &b in rest {
                            if is_string_stop(b) {
                                break;
                            }
                            high |= u64::from(b);
                            pos += 1;
                        }
                    }
                }
                break;
            }
            if high & HIGH_BITS != 0 {
                let text = bytes.get(run..pos).unwrap_or_default();
                if std::str::from_utf8(text).is_err() {
                    return Err(self.fault_at(run, Fault::InvalidUtf8));
                }
            }
            let at = bytes.get(pos..).unwrap_or_default();
            match at.first() {
                Some(b'"') => {
                    self.pos = pos + 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    // The usual escape: its length from a table, a `\u`'s digits checked
                    // by table, one branch on the outcome.
                    if !PAIRED {
                        let len = match at.first_chunk::<6>() {
                            Some(e) => {
                                let len = ESCAPE_LEN[usize::from(e[1])];
                                let hex = HEX_DIGIT[usize::from(e[2])]
                                    & HEX_DIGIT[usize::from(e[3])]
                                    & HEX_DIGIT[usize::from(e[4])]
                                    & HEX_DIGIT[usize::from(e[5])];
                                len & (u8::from(len == 2) | hex).wrapping_neg()
                            }
                            // Near the end of the line: only two-byte escapes fit.
                            None => match at.get(1) {
                                Some(&c) if ESCAPE_LEN[usize::from(c)] == 2 => 2,
                                _ => 0,
                            },
                        };
                        if len != 0 {
                            pos += usize::from(len);
                            continue;
                        }
                    }
                    self.pos = pos;
                    self.escape::<PAIRED>()?;
                    pos = self.pos;
                }
                Some(&b) => return Err(self.fault_at(pos, Fault::ControlCharacter(b))),
                None => return Err(self.fault_at(pos, Fault::EndOfLine)),
            }
        }
    }

    /// [`Self::string`] for strings whose `\u` surrogates need not pair (the data, the bulk
    /// of every line), 64 bytes at a time: the block's `"`, `\` and control bytes are found
    /// at once as bits of a mask ([`block_masks`]), and the scan jumps from one to the next
    /// instead of crossing each run of plain content on its own. A terminal's output has an
    /// escape every ~25 bytes, so that saves most of the loop exits that a run-by-run scan
    /// mispredicts. The string is checked as UTF-8 once, at its end, if a block had a
    /// non-ASCII byte in it (escapes are ASCII, so checking them along is harmless).
    ///
    /// On CPUs with AVX2, [`avx2::string_end`] goes first: a well-formed string's end is
    /// found without a loop turn per escape, and only a string it can't vouch for (a
    /// fault somewhere) is scanned here, for the fault's name and place.
    #[cfg(target_arch = "x86_64")]
    fn unpaired_string_blocks(&mut self) -> Result<(), EventError> {
        let bytes = self.bytes;
        let start = self.pos;
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked on the line above.
            if let Some((end, non_ascii)) = unsafe { avx2::string_end(bytes, start) } {
                self.pos = end + 1;
                return self.utf8_if(non_ascii, start, end);
            }
        }
        self.unpaired_string_exact()
    }

    /// The 64-bytes-at-a-time scan of [`Self::unpaired_string_blocks`] without the AVX2
    /// fast path: every string with a fault comes here, and every other string on a CPU
    /// without AVX2.
    #[cfg(target_arch = "x86_64")]
    fn unpaired_string_exact(&mut self) -> Result<(), EventError> {
        let bytes = self.bytes;
        let start = self.pos;
        let mut block = start;
        let mut non_ascii = false;
        loop {
            // Each stop handled clears its bit, and an escape's bits up to its end.
            let (mut stops, high) = block_masks(bytes, block);
            loop {
                if stops == 0 {
                    non_ascii |= high != 0;
                    block += 64;
                    break;
                }
                let i = stops.trailing_zeros() as usize;
                let at = block + i;
                match bytes.get(at) {
                    Some(b'"') => {
                        non_ascii |= high & ((1u64 << i) - 1) != 0;
                        self.pos = at + 1;
                        return self.utf8_if(non_ascii, start, at);
                    }
                    Some(b'\\') => {
                        let next = i + self.escape_at(at)?;
                        if next >= 64 {
                            non_ascii |= high != 0;
                            block += next;
                            break;
                        }
                        stops &= !((1u64 << next) - 1);
                    }
                    Some(&b) => return Err(self.fault_at(at, Fault::ControlCharacter(b))),
                    // A padding byte: the line ended inside the string.
                    None => return Err(self.fault_at(bytes.len(), Fault::EndOfLine)),
                }
            }
        }
    }

    /// The length of the unpaired escape at `at` (its `\`): the common ones by table, the
    /// rest (and every fault) by [`Self::escape`].
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn escape_at(&mut self, at: usize) -> Result<usize, EventError> {
        if let Some(e) = self.bytes.get(at..).and_then(|r| r.first_chunk::<6>()) {
            let len = ESCAPE_LEN[usize::from(e[1])];
            let hex = HEX_DIGIT[usize::from(e[2])]
                & HEX_DIGIT[usize::from(e[3])]
                & HEX_DIGIT[usize::from(e[4])]
                & HEX_DIGIT[usize::from(e[5])];
            let len = len & (u8::from(len == 2) | hex).wrapping_neg();
            if len != 0 {
                return Ok(usize::from(len));
            }
        }
        self.pos = at;
        self.escape::<false>()?;
        Ok(self.pos - at)
    }

    /// Checks `bytes[from..to]` as UTF-8 when it may hold a non-ASCII byte; a fault points
    /// at the first byte that is not valid.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn utf8_if(&self, non_ascii: bool, from: usize, to: usize) -> Result<(), EventError> {
        if !non_ascii {
            return Ok(());
        }
        let text = self.bytes.get(from..to).unwrap_or_default();
        // simdutf8 answers only yes or no, several times faster than std on text that is
        // not all ASCII; std then finds where a fault is.
        if simdutf8::basic::from_utf8(text).is_ok() {
            return Ok(());
        }
        match std::str::from_utf8(text) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fault_at(from + e.valid_up_to(), Fault::InvalidUtf8)),
        }
    }

    /// One escape, at its `\`, the slow way: in the code (surrogates must pair), or wrong.
    #[cold]
    fn escape<const PAIRED: bool>(&mut self) -> Result<(), EventError> {
        let at = self.pos;
        match self.bytes.get(at + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.pos = at + 2;
                Ok(())
            }
            Some(b'u') => {
                let unit = self.hex4(at)?;
                self.pos = at + 6;
                if PAIRED {
                    self.pair(unit, at)?;
                }
                Ok(())
            }
            _ => Err(self.fault_at(at + 1, Fault::InvalidEscape)),
        }
    }

    /// The four hex digits of the `\u` escape at `at`.
    fn hex4(&self, at: usize) -> Result<u16, EventError> {
        let mut unit = 0;
        for p in at + 2..at + 6 {
            match self.bytes.get(p).and_then(|&b| hex_value(b)) {
                Some(digit) => unit = unit << 4 | digit,
                None => return Err(self.fault_at(p, Fault::InvalidEscape)),
            }
        }
        Ok(unit)
    }

    /// After a `\u` escape of `unit` (at `at`) in a string that must be proper UTF-16: a
    /// leading surrogate needs a trailing one right after, and a trailing one alone is wrong.
    fn pair(&mut self, unit: u16, at: usize) -> Result<(), EventError> {
        match unit {
            0xD800..=0xDBFF => {
                let next = self.pos;
                if self.bytes.get(next..next + 2) != Some(b"\\u") {
                    return Err(self.fault_at(next, Fault::UnpairedSurrogate));
                }
                let trail = self.hex4(next)?;
                if !(0xDC00..=0xDFFF).contains(&trail) {
                    return Err(self.fault_at(next, Fault::UnpairedSurrogate));
                }
                self.pos = next + 6;
                Ok(())
            }
            0xDC00..=0xDFFF => Err(self.fault_at(at, Fault::UnpairedSurrogate)),
            _ => Ok(()),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), EventError> {
        for (i, &want) in word.iter().enumerate() {
            if self.bytes.get(self.pos + i) != Some(&want) {
                return Err(self.fault_at(self.pos + i, Fault::InvalidLiteral));
            }
        }
        self.pos += word.len();
        Ok(())
    }

    /// An object key and its `:`, the key's `"` not yet consumed.
    fn key(&mut self) -> Result<(), EventError> {
        self.skip_ws();
        if self.peek() != Some(b'"') {
            return Err(self.fault_here(Fault::KeyNotString));
        }
        self.pos += 1;
        self.string::<false>()?;
        self.skip_ws();
        if self.peek() != Some(b':') {
            return Err(self.fault_here(Fault::ExpectedColon));
        }
        self.pos += 1;
        Ok(())
    }

    /// Skips any JSON value, without recursion: which containers are open is one bit per
    /// level (set for an object).
    fn value(&mut self) -> Result<(), EventError> {
        let mut open = [0u64; MAX_DATA_DEPTH / 64];
        let mut depth = 0usize;
        loop {
            // One value, or the start of a container.
            self.skip_ws();
            let opened = match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    self.string::<false>()?;
                    None
                }
                Some(b'-' | b'0'..=b'9') => {
                    self.number()?;
                    None
                }
                Some(b't') => {
                    self.literal(b"true")?;
                    None
                }
                Some(b'f') => {
                    self.literal(b"false")?;
                    None
                }
                Some(b'n') => {
                    self.literal(b"null")?;
                    None
                }
                Some(b'[') => Some(false),
                Some(b'{') => Some(true),
                _ => return Err(self.fault_here(Fault::ExpectedValue)),
            };
            if let Some(object) = opened {
                if depth == MAX_DATA_DEPTH {
                    return Err(self.fault_here(Fault::TooDeep));
                }
                let (word, bit) = (depth / 64, 1u64 << (depth % 64));
                if let Some(w) = open.get_mut(word) {
                    *w = if object { *w | bit } else { *w & !bit };
                }
                depth += 1;
                self.pos += 1;
                self.skip_ws();
                let close = if object { b'}' } else { b']' };
                if self.peek() != Some(close) {
                    if object {
                        self.key()?;
                    }
                    continue;
                }
                self.pos += 1;
                depth -= 1;
            }
            // A value is complete: close what it completes, up to the next element.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let top = depth - 1;
                let object = open
                    .get(top / 64)
                    .is_some_and(|w| w & (1 << (top % 64)) != 0);
                self.skip_ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        if object {
                            self.key()?;
                        }
                        break;
                    }
                    Some(b']') if !object => {}
                    Some(b'}') if object => {}
                    _ => return Err(self.fault_here(Fault::ExpectedCommaOrClose)),
                }
                self.pos += 1;
                depth -= 1;
            }
        }
    }
}

/// The decimal exponent of a well-formed, unsigned JSON number: its value is in
/// [10^e, 10^(e+1)). `None` for zero.
fn decimal_exponent(digits: &[u8]) -> Option<i64> {
    let (mantissa, exponent) = match digits.iter().position(|&b| b == b'e' || b == b'E') {
        Some(at) => (
            digits.get(..at).unwrap_or_default(),
            digits.get(at + 1..).unwrap_or_default(),
        ),
        None => (digits, &[][..]),
    };
    let first = mantissa
        .iter()
        .filter(|&&b| b != b'.')
        .position(|&b| b != b'0')?;
    let int_digits = mantissa
        .iter()
        .position(|&b| b == b'.')
        .unwrap_or(mantissa.len());
    let (exp_negative, exp_digits) = match exponent.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, exponent),
    };
    // Saturates far beyond where any f64 ends.
    let exp = exp_digits.iter().fold(0i64, |e, &d| {
        (e * 10 + i64::from(d.wrapping_sub(b'0'))).min(1_000_000_000_000)
    });
    let exp = if exp_negative { -exp } else { exp };
    Some((int_digits as i64 - 1 - first as i64).saturating_add(exp))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeVerdict {
    Ok,
    Negative,
    OutOfRange,
}

/// Whether a well-formed JSON number is a finite `f64` >= 0 (-0 is, as is a negative number
/// that rounds to -0), mostly without converting it: the magnitude's decimal exponent
/// decides except within a step of `f64`'s limits, where the exact conversion does.
/// serde_json (without its `float_roundtrip` feature) converts approximately, so there,
/// around 1.8e308 and 2.5e-324, its verdict may differ from this exact one.
fn time_verdict(number: &[u8]) -> TimeVerdict {
    let (negative, digits) = match number.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, number),
    };
    let Some(e10) = decimal_exponent(digits) else {
        return TimeVerdict::Ok; // zero, or -0
    };
    let exact = || {
        std::str::from_utf8(number)
            .ok()
            .and_then(|text| text.parse::<f64>().ok())
    };
    match (negative, e10) {
        // f64::MAX is 1.797e308; 10^309 and more overflow.
        (false, ..=307) => TimeVerdict::Ok,
        (false, 309..) => TimeVerdict::OutOfRange,
        (false, _) if exact().is_some_and(f64::is_finite) => TimeVerdict::Ok,
        (false, _) => TimeVerdict::OutOfRange,
        // The least subnormal is 4.9e-324: below half of it a number rounds to -0.
        (true, ..=-325) => TimeVerdict::Ok,
        (true, -323..) => TimeVerdict::Negative,
        (true, _) if exact().is_some_and(|t| t == 0.0) => TimeVerdict::Ok,
        (true, _) => TimeVerdict::Negative,
    }
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
            if let Some(at) = self.usual_line_end(chunk) {
                // A well-formed event line, checked while finding its end.
                self.line_no += 1;
                chunk = chunk.get(at + 1..).unwrap_or_default();
                continue;
            }
            match memchr::memchr(b'\n', chunk) {
                Some(at) => {
                    let (line, rest) = chunk.split_at(at);
                    if self.partial.is_empty() && !self.skipping {
                        // The whole line is in this chunk: check it where it lies.
                        let within = self.problem.is_some() || line.len() <= self.limit();
                        self.complete_line(within.then_some(line), &mut progress);
                    } else {
                        self.take_partial(line);
                        self.end_line(&mut progress);
                    }
                    chunk = rest.get(1..).unwrap_or_default();
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

    /// The end (its `\n`) of a usual, well-formed event line at the start of `chunk`, if
    /// that is what comes next: past the header, at a line start, with nothing flagged
    /// yet (after a problem lines are only counted), within the line limit.
    fn usual_line_end(&self, chunk: &[u8]) -> Option<usize> {
        if !self.header_seen || !self.partial.is_empty() || self.skipping || self.problem.is_some()
        {
            return None;
        }
        usual_event_end(chunk).filter(|&at| at <= self.limits.max_line_bytes)
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

    /// Ends the line assembled in `partial`.
    fn end_line(&mut self, progress: &mut Progress) {
        let text = std::mem::take(&mut self.partial);
        let skipped = std::mem::replace(&mut self.skipping, false);
        self.complete_line((!skipped).then_some(&text[..]), progress);
        // Keep the allocation for the next line when it is small.
        if text.capacity() <= 64 * 1024 {
            self.partial = text;
            self.partial.clear();
        }
    }

    /// A line ended: `text` is `None` when it went over its limit. Checked only while
    /// no problem has been found; counted always.
    fn complete_line(&mut self, text: Option<&[u8]>, progress: &mut Progress) {
        let line = self.line_no;
        match text {
            None => {
                let what = if self.header_seen { "line" } else { "header" };
                let reason = format!("{what} longer than {} bytes", self.limit());
                self.flag(progress, line, reason);
            }
            Some(text) if self.problem.is_none() => self.check_line(line, text, progress),
            Some(_) => {}
        }
        self.header_seen = true;
        self.line_no += 1;
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
    use proptest::prelude::*;

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
    fn usual_lines_are_checked_in_one_pass_and_others_left_to_the_general_check() {
        let taken: [&[u8]; 6] = [
            b"[0.5, \"o\", \"hi\\r\\n\"]\n",
            b"[1.25,\"o\",\"\\u001b[0m\"]\r\n[2",
            b"[3, \"r\", \"80x24\"]\nrest",
            b"[0.000001, \"marker\", \"\"]\n",
            b"[7.5, \"o\", \"\xc3\xa9t\xc3\xa9\"]\n",
            b"[7.5, \"\\u0041\", \"x\"]\n",
        ];
        for line in taken {
            let end = usual_event_end(line);
            let expected = line.iter().position(|&b| b == b'\n');
            assert_eq!(end, expected, "{:?}", String::from_utf8_lossy(line));
        }
        let left: [&[u8]; 12] = [
            b"[0.5, \"o\", \"hi\"]",     // no newline yet
            b"[0.5, \"o\", \"hi\"] \n",  // space before the newline
            b" [0.5, \"o\", \"hi\"]\n",  // leading space
            b"[0.5,  \"o\", \"hi\"]\n",  // two spaces
            b"[-0.5, \"o\", \"hi\"]\n",  // negative time
            b"[1e3, \"o\", \"hi\"]\n",   // exponent
            b"[0.5, \"\", \"hi\"]\n",    // empty code
            b"[0.5, \"o\", [1]]\n",      // data not a string
            b"[0.5, \"o\", \"h\ti\"]\n", // control byte
            b"[0.5, \"o\", \"\xff\"]\n", // not UTF-8
            b"[0.5, \"o\", \"\\x\"]\n",  // bad escape
            b"[0.5, \"o\", \"hi\n\"]\n", // a newline inside the string
        ];
        for line in left {
            assert_eq!(
                usual_event_end(line),
                None,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
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

    // ---- The event checker against serde_json ------------------------------------------

    /// The event check as it was before the hand-written one: serde_json's verdict is the
    /// oracle the tests below hold `check_event` to.
    #[derive(Deserialize)]
    struct RawEvent<'a>(
        f64,
        #[serde(borrow)] std::borrow::Cow<'a, str>,
        serde::de::IgnoredAny,
    );

    fn check_event_serde(line: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(line).map_err(|e| format!("invalid UTF-8: {e}"))?;
        let event: RawEvent<'_> = serde_json::from_str(text)
            .map_err(|e| format!("not a [time, code, data] event: {e}"))?;
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

    /// Where the two checks knowingly differ, so a disagreement there is not a bug:
    /// - a time within a step of `f64`'s limits (decimal exponent 308, or -324 when
    ///   negative): serde_json converts approximately, `check_event` exactly, so
    ///   e.g. 1.7976931348623157e308 written out in full can overflow in serde_json;
    /// - data nested deeper than `MAX_DATA_DEPTH`: serde_json skips any depth.
    fn known_difference(line: &[u8]) -> bool {
        let text = line
            .iter()
            .position(|b| !b" \t\r\n[".contains(b))
            .map_or(&[][..], |at| &line[at..]);
        let len = text
            .iter()
            .position(|b| !b"-+.eE0123456789".contains(b))
            .unwrap_or(text.len());
        let number = &text[..len];
        let (negative, digits) = match number.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, number),
        };
        let near_limit = match decimal_exponent(digits) {
            Some(308) => !negative,
            Some(-324) => negative,
            _ => false,
        };
        let mut depth = 0usize;
        let mut deepest = 0;
        for &b in line {
            match b {
                b'[' | b'{' => depth += 1,
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            deepest = deepest.max(depth);
        }
        near_limit || deepest > MAX_DATA_DEPTH
    }

    fn agree(line: &[u8]) -> Result<(), String> {
        let new = check_event(line);
        let old = check_event_serde(line);
        if new.is_ok() != old.is_ok() && !known_difference(line) {
            return Err(format!(
                "{:?}: check_event {new:?}, serde_json {old:?}",
                String::from_utf8_lossy(line)
            ));
        }
        if let Err(reason) = &new {
            let clear = [
                "invalid UTF-8: ",
                "not a [time, code, data] event: ",
                "event ",
            ];
            if !clear.iter().any(|p| reason.starts_with(p)) {
                return Err(format!("unclear reason {reason:?}"));
            }
        }
        Ok(())
    }

    fn assert_agree(line: &[u8]) {
        if let Err(e) = agree(line) {
            panic!("{e}");
        }
    }

    #[test]
    fn checker_agrees_on_chosen_lines() {
        let lines: &[&str] = &[
            r#"[0.1,"o","hi"]"#,
            r#"  [ 0.1 , "o" , "hi" ]  "#,
            "\t[0.1,\r\"o\",\"hi\"]\r",
            r#"[0,"o",""]"#,
            r#"[-0,"o",""]"#,
            r#"[-0.0e5,"o",""]"#,
            r#"[-1,"o",""]"#,
            r#"[-1e-400,"o",""]"#,
            r#"[1e400,"o",""]"#,
            r#"[0e99999999999999999999,"o",""]"#,
            r#"[1e-99999999999999999999,"o",""]"#,
            r#"[1e99999999999999999999,"o",""]"#,
            r#"[123456789012345678901234567890,"o",""]"#,
            r#"[1E+2,"o",""]"#,
            r#"[01,"o",""]"#,
            r#"[.5,"o",""]"#,
            r#"[1.,"o",""]"#,
            r#"[+1,"o",""]"#,
            r#"[-,"o",""]"#,
            r#"[1e,"o",""]"#,
            r#"[1e+,"o",""]"#,
            r#"["1","o",""]"#,
            r#"[null,"o",""]"#,
            r#"[1,"","x"]"#,
            r#"[1,o,"x"]"#,
            r#"[1,1,"x"]"#,
            r#"[1,"\ud83d\ude00","x"]"#,
            r#"[1,"\ud83d","x"]"#,
            r#"[1,"\ude00","x"]"#,
            r#"[1,"\ud83dx","x"]"#,
            r#"[1,"\ud83d\n","x"]"#,
            r#"[1,"\ud83d\ud83d","x"]"#,
            r#"[1,"\ud83d\u12","x"]"#,
            r#"[1,"o","\ud83d"]"#,
            r#"[1,"o","\ude00\ud800"]"#,
            r#"[1,"o","\x"]"#,
            r#"[1,"o","\u12G4"]"#,
            r#"[1,"o","\u12"]"#,
            r#"[1,"o","\"]"#,
            r#"[1,"o","\\"]"#,
            r#"[1,"o","\/\b\f\n\r\t\u001B\uabcd"]"#,
            "[1,\"o\",\"\u{1}\"]",
            "[1,\"o\",\"\u{1f}\"]",
            "[1,\"o\",\"\u{7f}\"]",
            "[1,\"\u{9}\",\"x\"]",
            r#"[1,"o",["a",1,true,false,null,{"k":[{}],"l":[]},-2.5e-3]]"#,
            r#"[1,"o",[]]"#,
            r#"[1,"o",{}]"#,
            r#"[1,"o",{"a"}]"#,
            r#"[1,"o",{"a":}]"#,
            r#"[1,"o",{1:2}]"#,
            r#"[1,"o",{"a":1,}]"#,
            r#"[1,"o",[1,]]"#,
            r#"[1,"o",[1 2]]"#,
            r#"[1,"o",[}]"#,
            r#"[1,"o",{]}"#,
            r#"[1,"o",tru]"#,
            r#"[1,"o",truex]"#,
            r#"[1,"o",nul"#,
            r#"[1,"o",01]"#,
            r#"[1,"o",-]"#,
            r#"[1,"o","x",]"#,
            r#"[1,"o","x","y"]"#,
            r#"[1,"o","x"] x"#,
            r#"[1,"o","x"]]"#,
            r#"[1,"o"]"#,
            r#"[1]"#,
            r#"[]"#,
            r#"["#,
            r#"[1,"o","x""#,
            r#"{"a":1}"#,
            r#"1"#,
            "",
            r#"[1,"r","80x24"]"#,
            r#"[1,"o","日本語 ✓ 😀"]"#,
            "\u{feff}[1,\"o\",\"x\"]",
        ];
        for line in lines {
            assert_agree(line.as_bytes());
        }
        assert_agree(b"[1,\"o\",\"\xff\"]");
        assert_agree(b"[1,\"o\",\"\xc3\"]");
        assert_agree(b"[1,\xff\"o\",\"x\"]");
    }

    /// Every piece that can stop the block scan, at every offset around a block's edge
    /// (the data string starts at byte 11), and the line ending there.
    #[test]
    fn block_edges_get_serde_json_verdicts() {
        let pieces = [
            "\\u001b[0m",
            "\\n",
            "\\u12",
            "\\x",
            "\\",
            "\u{1}",
            "\"",
            "\u{e9}",
            "\u{1F600}",
            "\\ud83d\\ude00",
            "",
        ];
        for pad in 40..140 {
            for piece in pieces {
                let body = format!("{}{piece}", "a".repeat(pad));
                assert_agree(format!("[1.5, \"o\", \"{body}\"]").as_bytes());
                assert_agree(format!("[1.5, \"o\", \"{body}").as_bytes());
                assert_agree(format!("[1.5, \"o\", \"{body}bc\"]").as_bytes());
            }
        }
    }

    #[test]
    fn reasons_say_what_is_wrong() {
        let reason = |line: &str| check_event(line.as_bytes()).err().unwrap_or_default();
        assert_eq!(
            reason(r#"[0.1 "o","x"]"#),
            "not a [time, code, data] event: expected ',' at column 6"
        );
        assert_eq!(
            reason(r#"[-1.5,"o","x"]"#),
            "event time -1.5 is not a non-negative number"
        );
        assert_eq!(reason(r#"[1,"","x"]"#), "event code is empty");
        assert!(reason(r#"[1e999,"o","x"]"#).contains("out of range"));
        assert!(reason(r#"[1,"o","\q"]"#).contains("invalid escape in a string at column 10"));
        assert!(reason("[1,\"o\",\"\u{7}\"]").contains("control character 0x07"));
        assert!(reason(r#"[1,"o"]"#).contains("2 elements"));
        assert!(reason(r#"[1,"o","x"] ,"#).contains("trailing characters"));
        assert!(reason(r#"[1,"o","x"#).contains("end of line"));
        assert!(check_event(b"[1,\"o\",\"\xff\"]")
            .err()
            .is_some_and(|r| r.starts_with("invalid UTF-8")));
        let long = format!("[-{},\"o\",\"x\"]", "9".repeat(500));
        assert!(reason(&long).len() < 100, "{}", reason(&long));
    }

    #[test]
    fn data_depth_is_bounded() {
        let nested =
            |depth: usize| format!("[1,\"o\",{}\"x\"{}]", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(check_event(nested(MAX_DATA_DEPTH).as_bytes()), Ok(()));
        let deep = check_event(nested(MAX_DATA_DEPTH + 1).as_bytes());
        assert!(deep.is_err_and(|r| r.contains("nested deeper")));
        // The depth is counted for objects too, and it comes back down.
        let objects = format!(
            "[1,\"o\",[{}1{},{}2{}]]",
            "{\"k\":".repeat(200),
            "}".repeat(200),
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(check_event(objects.as_bytes()), Ok(()));
    }

    /// Every truncation and every one-byte change of real event lines gets serde_json's
    /// verdict.
    #[test]
    fn checker_agrees_on_every_edit_of_sample_lines() {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        for name in ["seed-echo-hi.cast", "asciinema-cli-2.4.cast"] {
            let bytes = sample(name).expect("sample");
            lines.extend(bytes.split(|&b| b == b'\n').skip(1).map(<[u8]>::to_vec));
        }
        lines.push(
            br#"[1.5e2, "o", {"a": [true, null, -0.5], "b": "\u00e9\ud83d\ude00"}]"#.to_vec(),
        );
        let replacements = b"\"\\,[]{}:0-.eEu \t\x01\x1f\x7f\xc3\xff";
        for line in lines.iter().filter(|l| l.len() < 400) {
            assert_agree(line);
            for at in 0..line.len() {
                assert_agree(&line[..at]);
                let mut deleted = line.clone();
                deleted.remove(at);
                assert_agree(&deleted);
                for &b in replacements {
                    let mut changed = line.clone();
                    changed[at] = b;
                    assert_agree(&changed);
                    let mut inserted = line.clone();
                    inserted.insert(at, b);
                    assert_agree(&inserted);
                }
            }
        }
    }

    fn ws() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["", " ", "\t", "\r", "\n"]), 0..3)
            .prop_map(|parts| parts.concat())
    }

    fn time_text() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => (0u32..100_000_000).prop_map(|t| format!("{:.6}", f64::from(t) / 1e6)),
            2 => any::<f64>().prop_map(|t| format!("{t}")),
            1 => any::<f64>().prop_map(|t| format!("{t:e}")),
            1 => any::<f64>().prop_map(|t| format!("{t:E}")),
            1 => any::<u64>().prop_map(|t| t.to_string()),
            1 => any::<i64>().prop_map(|t| t.to_string()),
            1 => (any::<bool>(), 0u32..1000, -400i32..400)
                .prop_map(|(neg, m, e)| { format!("{}{m}e{e}", if neg { "-" } else { "" }) }),
            1 => prop::sample::select(vec![
                "0", "-0", "-0.0", "1e400", "-1e-400", "0e999", "1E+2", "00", "01", ".5", "1.",
                "+1", "-", "1e", "1e+", "NaN", "inf", "\"1\"", "null", "1.5.5", "0x10",
            ])
            .prop_map(String::from),
        ]
    }

    /// Pieces of a JSON string's body: plain text, valid escapes and some invalid ones.
    fn string_body() -> impl Strategy<Value = String> {
        let plain = any::<char>().prop_map(|c| match c {
            '\0'..='\u{1f}' | '"' | '\\' => '~',
            c => c,
        });
        let piece = prop_oneof![
            8 => plain.prop_map(|c| c.to_string()),
            4 => "[ !#-\\[\\]-~]{0,12}",
            2 => "[^\"\\\\\\p{Cc}]{0,6}",
            6 => prop::sample::select(vec![
                "\\n", "\\r", "\\t", "\\b", "\\f", "\\/", "\\\\", "\\\"", "\\u001b", "\\u001B",
                "\\u00e9", "\\uD83D\\uDE00", "\\ud800", "\\udc00", "\\uDBFF\\uDFFF", "\\uabcd",
                "\\u001b[0m", "\\r\\n", "\u{7f}", "\u{a0}",
            ])
            .prop_map(String::from),
            1 => prop::sample::select(vec![
                "\\x", "\\u12", "\\u12G4", "\\", "\\U0041", "\u{1}", "\u{1f}", "\u{1b}", "\r\n",
                "\"", "\\ud83d\\n",
            ])
            .prop_map(String::from),
        ];
        prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
    }

    fn json_value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            string_body().prop_map(|body| format!("\"{body}\"")),
            any::<String>().prop_map(|s| serde_json::Value::String(s).to_string()),
            time_text(),
            prop::sample::select(vec![
                "true", "false", "null", "true", "false", "null", "nul"
            ])
            .prop_map(String::from),
        ];
        // Containers end right mostly, and sometimes with a trailing comma or the wrong
        // bracket.
        let end = |right: &'static str, wrong: &'static str| {
            prop_oneof![
                12 => Just(right.to_string()),
                1 => Just(format!(",{right}")),
                1 => Just(wrong.to_string()),
            ]
        };
        leaf.prop_recursive(5, 40, 5, move |inner| {
            prop_oneof![
                (
                    prop::collection::vec((ws(), inner.clone()), 0..5),
                    ws(),
                    end("]", "}")
                )
                    .prop_map(|(items, w, end)| {
                        let items: Vec<String> =
                            items.into_iter().map(|(w, v)| format!("{w}{v}")).collect();
                        format!("[{}{w}{end}", items.join(","))
                    }),
                (
                    prop::collection::vec((string_body(), ws(), inner), 0..4),
                    end("}", "]")
                )
                    .prop_map(|(fields, end)| {
                        let fields: Vec<String> = fields
                            .into_iter()
                            .map(|(k, w, v)| format!("\"{k}\"{w}:{v}"))
                            .collect();
                        format!("{{{}{end}", fields.join(","))
                    }),
            ]
        })
    }

    fn event_line() -> impl Strategy<Value = Vec<u8>> {
        let code = prop_oneof![
            8 => Just("\"o\"".to_string()),
            2 => Just("\"r\"".to_string()),
            1 => Just("\"\"".to_string()),
            4 => string_body().prop_map(|body| format!("\"{body}\"")),
            1 => json_value(),
        ];
        let data = prop_oneof![
            4 => string_body().prop_map(|body| format!("\"{body}\"")),
            2 => any::<String>().prop_map(|s| serde_json::Value::String(s).to_string()),
            2 => json_value(),
        ];
        let tail = prop_oneof![
            18 => Just(String::new()),
            1 => Just(",\"x\"".to_string()),
            1 => Just(",".to_string()),
        ];
        let after = prop_oneof![
            18 => Just(String::new()),
            1 => prop::sample::select(vec!["x", "]", ",", "[]", "\u{0}"]).prop_map(String::from),
        ];
        (
            (ws(), ws(), time_text(), ws(), ws()),
            (code, ws(), ws(), data, ws()),
            (tail, ws(), after),
        )
            .prop_map(
                |((w0, w1, time, w2, w3), (code, w4, w5, data, w6), (tail, w7, after))| {
                    format!("{w0}[{w1}{time}{w2},{w3}{code}{w4},{w5}{data}{w6}{tail}]{w7}{after}")
                        .into_bytes()
                },
            )
    }

    #[derive(Debug, Clone)]
    enum Edit {
        Truncate(usize),
        Insert(usize, u8),
        Delete(usize),
        Replace(usize, u8),
        Swap(usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let byte = prop_oneof![
            3 => prop::sample::select(b"\"\\,[]{}:0-.eEu \t\r\x00\x01\x1f\x7f\xc3\xa9\xff".to_vec()),
            1 => any::<u8>(),
        ];
        prop_oneof![
            any::<usize>().prop_map(Edit::Truncate),
            (any::<usize>(), byte.clone()).prop_map(|(at, b)| Edit::Insert(at, b)),
            any::<usize>().prop_map(Edit::Delete),
            (any::<usize>(), byte).prop_map(|(at, b)| Edit::Replace(at, b)),
            any::<usize>().prop_map(Edit::Swap),
        ]
    }

    fn apply(line: &mut Vec<u8>, edit: &Edit) {
        let len = line.len();
        match *edit {
            Edit::Truncate(at) => line.truncate(at % (len + 1)),
            Edit::Insert(at, b) => line.insert(at % (len + 1), b),
            Edit::Delete(at) if len > 0 => {
                line.remove(at % len);
            }
            Edit::Replace(at, b) if len > 0 => line[at % len] = b,
            Edit::Swap(at) if len > 1 => line.swap(at % (len - 1), at % (len - 1) + 1),
            _ => {}
        }
    }

    /// The AVX2 fast path against the exact scan, on one data string: where it vouches
    /// for a string, the exact scan finds that string well formed and ending at the same
    /// byte; where the exact scan finds it well formed, the fast path vouches for it (else
    /// it would only slow things down).
    #[cfg(target_arch = "x86_64")]
    fn fast_path_agrees(line: &[u8], start: usize) -> Result<(), String> {
        if !std::is_x86_feature_detected!("avx2") {
            return Ok(());
        }
        // SAFETY: AVX2 was detected above.
        let fast = unsafe { avx2::string_end(line, start) };
        let mut exact = Scanner {
            bytes: line,
            pos: start,
        };
        let verdict = exact.unpaired_string_exact();
        let shown = String::from_utf8_lossy(line);
        let fail = |what: String| Err(format!("{shown:?} from {start}: {what}"));
        match (fast, verdict) {
            // The caller checks the string's UTF-8 itself when told it has non-ASCII bytes.
            (Some((end, non_ascii)), verdict) => {
                let after = Scanner {
                    bytes: line,
                    pos: end + 1,
                };
                let checked = after.utf8_if(non_ascii, start, end);
                if checked != verdict || (verdict.is_ok() && after.pos != exact.pos) {
                    return fail(format!(
                        "fast path ends at {end} with {checked:?}, exact scan {verdict:?} at {}",
                        exact.pos
                    ));
                }
                Ok(())
            }
            (None, Err(_)) => Ok(()),
            (None, Ok(())) => fail(format!(
                "fast path gave up, exact scan ended at {}",
                exact.pos
            )),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Generated event lines, valid or not, get serde_json's verdict.
        #[test]
        fn checker_agrees_with_serde_json(line in event_line()) {
            prop_assert_eq!(agree(&line), Ok(()));
        }

        /// Data strings long enough to span several of the block scan's 64-byte blocks,
        /// shifted by `pad` bytes so that escapes, control bytes and multi-byte characters
        /// land across the blocks' edges.
        #[test]
        fn checker_agrees_on_long_strings(
            bodies in prop::collection::vec(string_body(), 1..12),
            pad in 0usize..64,
        ) {
            let line = format!("[1.5, \"o\", \"{}{}\"]", "a".repeat(pad), bodies.concat());
            prop_assert_eq!(agree(line.as_bytes()), Ok(()));
        }

        /// The AVX2 fast path vouches for exactly the strings the exact scan accepts, and
        /// finds their end at the same byte: long strings, at every offset against the
        /// 64-byte blocks, whole or garbled.
        #[cfg(target_arch = "x86_64")]
        #[test]
        fn fast_path_agrees_with_exact_scan(
            bodies in prop::collection::vec(string_body(), 1..16),
            pad in 0usize..64,
            edits in prop::collection::vec(edit(), 0..3),
            tail in prop::sample::select(vec!["\"]", "\"]\n", "", "\\", "\\u00", "\"x\\\""]),
        ) {
            let mut line = format!("\"{}{}{tail}", "a".repeat(pad), bodies.concat()).into_bytes();
            for e in &edits {
                apply(&mut line, e);
            }
            prop_assert_eq!(fast_path_agrees(&line, 1.min(line.len())), Ok(()));
        }

        /// A line the one-pass check takes (`usual_event_end`) ends at a `\n`, holds none
        /// before it, and is one `check_event` accepts; and it takes the usual shapes.
        #[test]
        fn one_pass_lines_are_lines_check_event_accepts(
            mut line in event_line(),
            edits in prop::collection::vec(edit(), 0..3),
            ending in prop::sample::select(vec!["\n", "\r\n", "", "\r", " \n"]),
            next in prop::sample::select(vec!["", "[2,\"o\",\"x\"]\n", "\n", "garbage"]),
        ) {
            for e in &edits {
                apply(&mut line, e);
            }
            line.extend_from_slice(ending.as_bytes());
            line.extend_from_slice(next.as_bytes());
            if let Some(at) = usual_event_end(&line) {
                prop_assert_eq!(line.get(at), Some(&b'\n'));
                prop_assert!(!line[..at].contains(&b'\n'));
                let checked = check_event(strip_cr(&line[..at]));
                prop_assert!(checked.is_ok(), "{:?}: {:?}", String::from_utf8_lossy(&line), checked);
            }
        }

        /// So do the same lines garbled.
        #[test]
        fn checker_agrees_on_garbled_lines(
            mut line in event_line(),
            edits in prop::collection::vec(edit(), 1..4),
        ) {
            for e in &edits {
                apply(&mut line, e);
            }
            prop_assert_eq!(agree(&line), Ok(()));
        }
    }

    // ---- Lines checked in place and assembled across chunks -----------------------------

    /// What a validator fed `stream` in pieces cut at `cuts` reports: the header and the
    /// first problem its feeds gave, its line count and tail before `finish`, what
    /// `finish` gave, and its problem at the end.
    type Report = (
        Option<Header>,
        Option<Problem>,
        u64,
        bool,
        Progress,
        Option<Problem>,
    );

    fn run(limits: Limits, stream: &[u8], cuts: &[usize], clean: bool) -> Report {
        let mut v = Validator::new(limits);
        let (mut header, mut problem) = (None, None);
        let mut from = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            let cut = cut.clamp(from, stream.len());
            let progress = v.feed(&stream[from..cut]);
            if let Some(h) = progress.header {
                assert!(header.is_none(), "header reported twice");
                header = Some(h);
            }
            if let Some(p) = progress.problem {
                assert!(problem.is_none(), "problem reported twice");
                problem = Some(p);
            }
            from = cut;
        }
        assert!(v.partial.len() <= limits.max_header_bytes.max(limits.max_line_bytes));
        let (lines, mid_line) = (v.lines(), v.mid_line());
        let end = v.finish(clean);
        (header, problem, lines, mid_line, end, v.problem().cloned())
    }

    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let header = prop_oneof![
            4 => Just(b"{\"version\":2,\"width\":80,\"height\":24}".to_vec()),
            1 => Just(b"{\"version\":1}".to_vec()),
            1 => Just(b"{\"version\":2,\"width\":80,\"height\":24,\"env\":{\"TERM\":\"xterm-256color\",\"SHELL\":\"/bin/zsh\"}}".to_vec()),
            1 => Just(Vec::new()),
        ];
        let line = prop_oneof![
            6 => event_line().prop_map(|mut line| {
                line.retain(|&b| b != b'\n');
                line
            }),
            1 => Just(Vec::new()),
            1 => Just(b" \t\x0c".to_vec()),
            1 => (1usize..300).prop_map(|n| format!("[1,\"o\",\"{}\"]", "x".repeat(n)).into_bytes()),
        ];
        let ending = prop::sample::select(vec![&b"\n"[..], &b"\r\n"[..]]);
        (
            header,
            prop::collection::vec((line, ending), 0..12),
            prop_oneof![Just(Vec::new()), event_line()],
        )
            .prop_map(|(header, lines, tail)| {
                let mut out = header;
                out.push(b'\n');
                for (line, ending) in lines {
                    out.extend_from_slice(&line);
                    out.extend_from_slice(ending);
                }
                out.extend(tail.into_iter().filter(|&b| b != b'\n'));
                out
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Where the chunks are cut doesn't change what is found: lines checked in place
        /// (whole in one chunk) and lines assembled across chunks get the same verdicts,
        /// limits, line numbers and tails.
        #[test]
        fn verdicts_do_not_depend_on_chunking(
            stream in stream(),
            mut cuts in prop::collection::vec(any::<usize>(), 0..20),
            max_line in 20usize..200,
            max_header in 20usize..120,
            clean in any::<bool>(),
        ) {
            let limits = Limits { max_header_bytes: max_header, max_line_bytes: max_line };
            let len = stream.len().max(1);
            for cut in &mut cuts {
                *cut %= len;
            }
            cuts.sort_unstable();
            let whole = run(limits, &stream, &[], clean);
            let bytewise: Vec<usize> = (1..stream.len()).collect();
            prop_assert_eq!(&run(limits, &stream, &bytewise, clean), &whole);
            prop_assert_eq!(&run(limits, &stream, &cuts, clean), &whole);
        }
    }
}
