//! Sans-IO asciicast v2 event encoder: terminal bytes and times in, recording lines out.
//!
//! The PTY hands us arbitrary byte chunks; a multi-byte UTF-8 character can be split across two
//! reads. The encoder keeps such an incomplete tail for the next chunk, and turns bytes that can
//! never become valid UTF-8 into U+FFFD (the same maximal-subpart replacement
//! `String::from_utf8_lossy` does), so every line it produces is valid JSON.

use std::time::Duration;

/// Longest incomplete UTF-8 sequence that can be pending (a 4-byte character minus one byte).
const MAX_PENDING: usize = 3;

/// Turns output chunks and resizes into asciicast v2 event lines (`[t,"o","..."]\n`).
#[derive(Debug, Default)]
pub struct Encoder {
    /// Bytes of an incomplete UTF-8 sequence at the end of the previous chunk (at most 3).
    pending: Vec<u8>,
}

impl Encoder {
    /// A fresh encoder with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes an output chunk read at `at` (time since the session started).
    ///
    /// Returns `None` when the chunk only extended an incomplete character: there is nothing to
    /// emit yet, and an empty `"o"` event would be noise.
    pub fn output(&mut self, at: Duration, bytes: &[u8]) -> Option<Vec<u8>> {
        let text = self.decode(bytes);
        (!text.is_empty()).then(|| event_line(at, "o", &text))
    }

    /// Encodes a window-size change as `"COLSxROWS"`.
    pub fn resize(&self, at: Duration, cols: u16, rows: u16) -> Vec<u8> {
        event_line(at, "r", &format!("{cols}x{rows}"))
    }

    /// Flushes an incomplete character left at the end of the session (it becomes U+FFFD).
    pub fn finish(&mut self, at: Duration) -> Option<Vec<u8>> {
        if self.pending.is_empty() {
            return None;
        }
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(event_line(at, "o", &text))
    }

    /// Decodes `pending + bytes`, keeping a trailing incomplete sequence back in `pending`.
    fn decode(&mut self, bytes: &[u8]) -> String {
        let mut input = std::mem::take(&mut self.pending);
        input.extend_from_slice(bytes);
        let mut out = String::with_capacity(input.len());
        let mut rest = input.as_slice();
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    out.push_str(valid);
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // from_utf8 just validated this prefix; the lossy call cannot replace anything.
                    out.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        // The input ends inside a character: wait for its remaining bytes.
                        None => {
                            debug_assert!(after.len() <= MAX_PENDING);
                            self.pending.extend_from_slice(after);
                            break;
                        }
                    }
                }
            }
        }
        out
    }
}

/// Formats one event line: `[seconds, "code", "data"]` plus a newline.
fn event_line(at: Duration, code: &str, data: &str) -> Vec<u8> {
    // serde_json escapes control characters (ESC becomes \u001b) as asciicast players expect;
    // serializing a &str cannot fail.
    let data = serde_json::to_string(data).unwrap_or_else(|_| String::from("\"\""));
    format!("[{},\"{code}\",{data}]\n", format_time(at)).into_bytes()
}

/// Seconds with exactly microsecond precision, without float formatting surprises (`1e-6`).
fn format_time(at: Duration) -> String {
    format!("{}.{:06}", at.as_secs(), at.subsec_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(bytes: Option<Vec<u8>>) -> String {
        String::from_utf8(bytes.unwrap_or_default()).unwrap()
    }

    #[test]
    fn formats_time_with_microseconds() {
        assert_eq!(format_time(Duration::from_nanos(1_234_567_890)), "1.234567");
        assert_eq!(format_time(Duration::from_micros(1)), "0.000001");
        assert_eq!(format_time(Duration::ZERO), "0.000000");
    }

    #[test]
    fn encodes_output_and_resize_lines() {
        let mut enc = Encoder::new();
        let out = line(enc.output(Duration::from_millis(1500), b"\x1b[1mhi\r\n"));
        assert_eq!(out, "[1.500000,\"o\",\"\\u001b[1mhi\\r\\n\"]\n");
        let r = String::from_utf8(enc.resize(Duration::from_secs(2), 120, 40)).unwrap();
        assert_eq!(r, "[2.000000,\"r\",\"120x40\"]\n");
        let parsed: (f64, String, String) = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed.2, "\x1b[1mhi\r\n");
    }

    #[test]
    fn keeps_split_multibyte_character_for_next_chunk() {
        let snowman = "é☃🎉".as_bytes();
        let mut enc = Encoder::new();
        // Cut inside the 3-byte snowman (bytes 2..5) after its first byte.
        assert_eq!(
            line(enc.output(Duration::ZERO, &snowman[..3])),
            "[0.000000,\"o\",\"é\"]\n"
        );
        assert_eq!(enc.output(Duration::ZERO, &snowman[3..4]), None);
        let rest = line(enc.output(Duration::ZERO, &snowman[4..]));
        assert_eq!(rest, "[0.000000,\"o\",\"☃🎉\"]\n");
        assert_eq!(enc.finish(Duration::ZERO), None);
    }

    #[test]
    fn every_split_point_reassembles_the_text() {
        let text = "a ✓ 日本語 🎉 z";
        for cut in 0..=text.len() {
            let mut enc = Encoder::new();
            let mut got = String::new();
            for part in [&text.as_bytes()[..cut], &text.as_bytes()[cut..]] {
                if let Some(l) = enc.output(Duration::ZERO, part) {
                    let (_, _, data): (f64, String, String) = serde_json::from_slice(&l).unwrap();
                    got.push_str(&data);
                }
            }
            assert_eq!(got, text, "split at {cut}");
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut enc = Encoder::new();
        // 0xff is never valid; 0xe2 0x98 followed by 'x' is a truncated sequence mid-stream.
        let out = line(enc.output(Duration::ZERO, b"a\xffb\xe2\x98xc"));
        let (_, _, data): (f64, String, String) = serde_json::from_str(&out).unwrap();
        assert_eq!(data, String::from_utf8_lossy(b"a\xffb\xe2\x98xc"));
        assert_eq!(data, "a\u{fffd}b\u{fffd}xc");
    }

    #[test]
    fn finish_flushes_incomplete_tail_as_replacement() {
        let mut enc = Encoder::new();
        assert_eq!(enc.output(Duration::ZERO, b"\xf0\x9f"), None);
        let out = line(enc.finish(Duration::from_secs(1)));
        assert_eq!(out, "[1.000000,\"o\",\"\u{fffd}\"]\n");
    }
}
