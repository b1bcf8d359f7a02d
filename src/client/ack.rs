//! Sans-IO parser for the v2 response body: a stream of JSON objects `{"ack":N}`, possibly
//! ending with `{"error":"text"}` (with the resumable extension, `"reconnect":true` may say
//! that the recorder hands the session off). With the extension, N is an absolute offset in
//! the recording; for a stream that starts at 0 that is the same as body bytes.
//!
//! Frames are usually newline-separated, but nothing guarantees that an HTTP/2 DATA frame ends
//! at a frame boundary or that separators are present, so the parser accepts any concatenation
//! of JSON objects split at arbitrary byte positions.

use serde::Deserialize;

/// Most bytes of one incomplete frame we keep; a recorder sending more is broken or hostile.
const MAX_PARTIAL_FRAME: usize = 64 * 1024;

/// One message from the recorder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckFrame {
    /// The recorder has received (in quorumcast: durably stored) the recording up to here.
    Ack(u64),
    /// The recorder gave up on the recording; it ends the response after this.
    Error {
        /// The recorder's reason.
        text: String,
        /// `"reconnect": true`: a hand-off (shutdown, disk full), resume elsewhere.
        reconnect: bool,
    },
    /// A well-formed object with neither field: proves liveness only.
    Other,
}

/// Why the response body cannot be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AckParseError {
    /// Bytes that are not a JSON object stream.
    #[error("malformed ack stream from recorder: {0}")]
    Malformed(String),
    /// A single frame grew beyond [`MAX_PARTIAL_FRAME`].
    #[error("ack frame from recorder exceeds {MAX_PARTIAL_FRAME} bytes")]
    TooLarge,
}

/// The wire shape of a frame; unknown fields are ignored for forward compatibility.
#[derive(Deserialize)]
struct RawFrame {
    /// Bytes received so far.
    ack: Option<u64>,
    /// Terminal error text.
    error: Option<String>,
    /// Extension: the error is a hand-off.
    reconnect: Option<bool>,
}

/// Accumulates response body bytes and yields complete frames.
#[derive(Debug, Default)]
pub struct AckParser {
    /// Bytes of a frame that has not been completed yet.
    partial: Vec<u8>,
}

impl AckParser {
    /// Feeds the next chunk of the response body and returns the frames it completes.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<AckFrame>, AckParseError> {
        self.partial.extend_from_slice(chunk);
        let mut frames = Vec::new();
        let mut stream =
            serde_json::Deserializer::from_slice(&self.partial).into_iter::<RawFrame>();
        let consumed = loop {
            let before = stream.byte_offset();
            match stream.next() {
                None => break stream.byte_offset(),
                Some(Ok(raw)) => frames.push(raw.into()),
                // Ran out of bytes inside a frame: keep it for the next chunk.
                Some(Err(e)) if e.is_eof() => break before,
                Some(Err(e)) => return Err(AckParseError::Malformed(e.to_string())),
            }
        };
        self.partial.drain(..consumed);
        if self.partial.len() > MAX_PARTIAL_FRAME {
            return Err(AckParseError::TooLarge);
        }
        Ok(frames)
    }
}

impl From<RawFrame> for AckFrame {
    fn from(raw: RawFrame) -> Self {
        match (raw.error, raw.ack) {
            (Some(text), _) => AckFrame::Error {
                text,
                reconnect: raw.reconnect == Some(true),
            },
            (None, Some(n)) => AckFrame::Ack(n),
            (None, None) => AckFrame::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_newline_separated_frames() {
        let mut p = AckParser::default();
        let frames = p.push(b"{\"ack\":10}\n{\"ack\": 25}\n").unwrap();
        assert_eq!(frames, [AckFrame::Ack(10), AckFrame::Ack(25)]);
    }

    #[test]
    fn parses_concatenated_frames_split_anywhere() {
        let wire = b"{\"ack\":1}{\"ack\":200} {\"error\":\"disk full\"}";
        for cut in 0..=wire.len() {
            let mut p = AckParser::default();
            let mut frames = p.push(&wire[..cut]).unwrap();
            frames.extend(p.push(&wire[cut..]).unwrap());
            assert_eq!(
                frames,
                [
                    AckFrame::Ack(1),
                    AckFrame::Ack(200),
                    AckFrame::Error {
                        text: "disk full".into(),
                        reconnect: false
                    }
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn ignores_unknown_fields_and_reports_empty_objects() {
        let mut p = AckParser::default();
        let frames = p.push(b"{\"ack\":7,\"epoch\":3}\n{}\n").unwrap();
        assert_eq!(frames, [AckFrame::Ack(7), AckFrame::Other]);
    }

    #[test]
    fn reads_the_hand_off_flag() {
        let mut p = AckParser::default();
        let frames = p
            .push(b"{\"ack\":9}{\"error\":\"shutting down\",\"reconnect\":true}")
            .unwrap();
        assert_eq!(
            frames,
            [
                AckFrame::Ack(9),
                AckFrame::Error {
                    text: "shutting down".into(),
                    reconnect: true
                }
            ]
        );
    }

    #[test]
    fn rejects_garbage() {
        let mut p = AckParser::default();
        assert!(matches!(
            p.push(b"<html>"),
            Err(AckParseError::Malformed(_))
        ));
        let mut p = AckParser::default();
        assert!(matches!(
            p.push(b"{\"ack\":-1}"),
            Err(AckParseError::Malformed(_))
        ));
    }

    #[test]
    fn bounds_an_endless_frame() {
        let mut p = AckParser::default();
        let mut chunk = b"{\"error\":\"".to_vec();
        chunk.resize(MAX_PARTIAL_FRAME + 1, b'x');
        assert_eq!(p.push(&chunk), Err(AckParseError::TooLarge));
    }
}
