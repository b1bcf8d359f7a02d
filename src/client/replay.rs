//! Reading asciicast v2 recordings back: `quorumcast play` and `quorumcast cat`.
//!
//! The reader is tolerant, because recordings come from several writers: Tailscale SSH
//! (compact JSON, extra header fields), the asciinema CLI (spaces after commas), and the
//! Tailscale Kubernetes proxy, whose `"r"` events are `ROWSxCOLS` instead of `COLSxROWS`.
//! Malformed event lines are skipped with a warning naming the line; a missing or unusable
//! header is an error.

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::{warn, CatArgs, ClientError, PlayArgs};

/// Why a recording cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Opening or reading the file failed.
    #[error("{path}: {error}")]
    Io {
        /// The recording.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// The first line is not an asciicast header object.
    #[error("{path}: missing asciicast v2 header on line 1 ({reason})")]
    MissingHeader {
        /// The recording.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// A header of another format version.
    #[error("{path}: unsupported asciicast version {version} (only version 2 is supported)")]
    UnsupportedVersion {
        /// The recording.
        path: PathBuf,
        /// The header's version field.
        version: String,
    },
}

/// The header fields replay uses; every other field is accepted and ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayHeader {
    /// Terminal columns at start (0 when the writer did not know, as the k8s proxy does).
    pub width: u32,
    /// Terminal rows at start.
    pub height: u32,
    /// asciinema's suggested cap on pauses, in seconds.
    pub idle_time_limit: Option<f64>,
    /// The k8s proxy quirk: resize events are `ROWSxCOLS`.
    pub resize_rows_first: bool,
}

/// Wire shape of the header.
#[derive(Deserialize)]
struct RawHeader {
    /// Format version, must be 2.
    version: serde_json::Value,
    /// Columns.
    #[serde(default)]
    width: u32,
    /// Rows.
    #[serde(default)]
    height: u32,
    /// Pause cap.
    #[serde(default)]
    idle_time_limit: Option<f64>,
    /// Present (and an object) on recordings from the Tailscale Kubernetes proxy.
    #[serde(default)]
    kubernetes: Option<serde_json::Value>,
}

/// One event of a recording.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Terminal output.
    Output {
        /// Seconds since the start.
        time: f64,
        /// The text.
        data: String,
    },
    /// Window size change, normalised to columns and rows.
    Resize {
        /// Seconds since the start.
        time: f64,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// Input, markers, or future event types: kept for timing, not shown.
    Other {
        /// Seconds since the start.
        time: f64,
    },
}

impl Event {
    /// Seconds since the start of the recording.
    pub fn time(&self) -> f64 {
        match self {
            Event::Output { time, .. } | Event::Resize { time, .. } | Event::Other { time } => {
                *time
            }
        }
    }
}

/// Parses the header line.
fn parse_header(path: &Path, line: &[u8]) -> Result<ReplayHeader, ReplayError> {
    let missing = |reason: String| ReplayError::MissingHeader {
        path: path.to_owned(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| missing(format!("not JSON: {e}")))?;
    if !value.is_object() {
        return Err(missing(format!("found {} instead", kind_of(&value))));
    }
    let raw: RawHeader =
        serde_json::from_value(value).map_err(|e| missing(format!("bad header: {e}")))?;
    if raw.version != 2 {
        return Err(ReplayError::UnsupportedVersion {
            path: path.to_owned(),
            version: raw.version.to_string(),
        });
    }
    Ok(ReplayHeader {
        width: raw.width,
        height: raw.height,
        idle_time_limit: raw.idle_time_limit,
        resize_rows_first: raw.kubernetes.is_some_and(|k| k.is_object()),
    })
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Array(_) => "an event line (a JSON array)",
        serde_json::Value::Object(_) => "an object",
        _ => "a JSON scalar",
    }
}

/// Parses one event line; `Err` is the reason it is skipped.
fn parse_event(line: &[u8], header: &ReplayHeader) -> Result<Event, String> {
    let (time, code, data): (f64, String, String) = serde_json::from_slice(line)
        .map_err(|e| format!("not an event [time, code, data]: {e}"))?;
    if !time.is_finite() || time < 0.0 {
        return Err(format!("bad event time {time}"));
    }
    match code.as_str() {
        "o" => Ok(Event::Output { time, data }),
        "r" => {
            let (a, b) = data
                .split_once('x')
                .and_then(|(a, b)| {
                    Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
                })
                .ok_or_else(|| format!("bad resize {data:?}"))?;
            let (cols, rows) = if header.resize_rows_first {
                (b, a)
            } else {
                (a, b)
            };
            Ok(Event::Resize { time, cols, rows })
        }
        _ => Ok(Event::Other { time }),
    }
}

/// A recording being read event by event.
pub struct Recording<R> {
    /// Where it comes from (for messages).
    path: PathBuf,
    /// The parsed header.
    pub header: ReplayHeader,
    /// The remaining lines.
    reader: R,
    /// Number of the last line read (1-based; the header is line 1).
    line_no: usize,
}

impl Recording<BufReader<std::fs::File>> {
    /// Opens a recording file and reads its header.
    pub fn open(path: &Path) -> Result<Self, ReplayError> {
        let file = std::fs::File::open(path).map_err(|error| ReplayError::Io {
            path: path.to_owned(),
            error,
        })?;
        Self::from_reader(path, BufReader::new(file))
    }
}

impl<R: BufRead> Recording<R> {
    /// Reads the header from `reader`; `path` only names the source in messages.
    pub fn from_reader(path: &Path, mut reader: R) -> Result<Self, ReplayError> {
        let mut line = Vec::new();
        let io_err = |error| ReplayError::Io {
            path: path.to_owned(),
            error,
        };
        reader.read_until(b'\n', &mut line).map_err(io_err)?;
        if line.iter().all(u8::is_ascii_whitespace) {
            return Err(ReplayError::MissingHeader {
                path: path.to_owned(),
                reason: "the file is empty".into(),
            });
        }
        let header = parse_header(path, &line)?;
        Ok(Self {
            path: path.to_owned(),
            header,
            reader,
            line_no: 1,
        })
    }

    /// The next event; malformed lines are reported to `skipped(line_no, reason)` and passed over.
    pub fn next_event(
        &mut self,
        mut skipped: impl FnMut(usize, &str),
    ) -> Result<Option<Event>, ReplayError> {
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut line)
                .map_err(|error| ReplayError::Io {
                    path: self.path.clone(),
                    error,
                })?;
            if n == 0 {
                return Ok(None);
            }
            self.line_no += 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_event(&line, &self.header) {
                Ok(event) => return Ok(Some(event)),
                Err(reason) => skipped(self.line_no, &reason),
            }
        }
    }
}

/// Reports a skipped line on stderr as `FILE:LINE: skipped: reason`.
fn warn_skipped(path: &Path) -> impl FnMut(usize, &str) + '_ {
    move |line, reason| {
        warn(
            false,
            &format!("{}:{line}: skipped: {reason}", path.display()),
        )
    }
}

/// `quorumcast cat`: writes the concatenated output text to stdout.
pub fn cat(args: CatArgs) -> Result<(), ClientError> {
    let mut recording = Recording::open(&args.file)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let path = args.file.clone();
    while let Some(event) = recording.next_event(warn_skipped(&path))? {
        if let Event::Output { data, .. } = event {
            if let Err(e) = out.write_all(data.as_bytes()) {
                return stdout_result(e);
            }
        }
    }
    out.flush().or_else(stdout_result)
}

/// A closed pipe (`quorumcast cat f | head`) is a normal way for the reader to stop.
fn stdout_result(e: io::Error) -> Result<(), ClientError> {
    match e.kind() {
        io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(ClientError::io("writing to stdout")(e)),
    }
}

/// How long to wait before an event: the gap since the previous event, capped at the idle
/// limit, divided by the speed. Out-of-order times count as no gap.
fn delay(previous: f64, time: f64, speed: f64, idle_limit: Option<f64>) -> Duration {
    let gap = (time - previous).max(0.0);
    let gap = idle_limit.map_or(gap, |limit| gap.min(limit));
    Duration::try_from_secs_f64(gap / speed).unwrap_or(Duration::ZERO)
}

/// `quorumcast play`: writes the output events to stdout with their timing.
pub async fn play(args: PlayArgs) -> Result<(), ClientError> {
    if !(args.speed.is_finite() && args.speed > 0.0) {
        return Err(ClientError::Usage(format!(
            "--speed must be a positive number, got {}",
            args.speed
        )));
    }
    if args
        .idle_limit
        .is_some_and(|l| !(l.is_finite() && l >= 0.0))
    {
        return Err(ClientError::Usage(
            "--idle-limit must be a non-negative number".into(),
        ));
    }
    // Read the file up front so the playback loop does no blocking I/O.
    let bytes = tokio::fs::read(&args.file)
        .await
        .map_err(|error| ReplayError::Io {
            path: args.file.clone(),
            error,
        })?;
    let mut recording = Recording::from_reader(&args.file, bytes.as_slice())?;
    let idle_limit = args.idle_limit.or(recording.header.idle_time_limit);
    let mut out = tokio::io::stdout();
    let mut previous = 0.0;
    let mut due = Instant::now();
    let path = args.file.clone();
    while let Some(event) = recording.next_event(warn_skipped(&path))? {
        due += delay(previous, event.time(), args.speed, idle_limit);
        previous = event.time();
        let Event::Output { data, .. } = event else {
            continue;
        };
        tokio::time::sleep_until(due).await;
        let written = async {
            out.write_all(data.as_bytes()).await?;
            out.flush().await
        };
        if let Err(e) = written.await {
            return stdout_result(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/samples")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// All events and skipped-line reports of a recording.
    fn read_all(bytes: &[u8]) -> (ReplayHeader, Vec<Event>, Vec<(usize, String)>) {
        let mut rec = Recording::from_reader(Path::new("test.cast"), bytes).unwrap();
        let mut events = Vec::new();
        let mut skipped = Vec::new();
        while let Some(e) = rec
            .next_event(|line, reason| skipped.push((line, reason.to_owned())))
            .unwrap()
        {
            events.push(e);
        }
        (rec.header, events, skipped)
    }

    fn output_text(events: &[Event]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Output { data, .. } => Some(data.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn reads_the_tailscale_sample() {
        let (header, events, skipped) = read_all(&sample("seed-echo-hi.cast"));
        assert_eq!((header.width, header.height), (203, 38));
        assert!(!header.resize_rows_first);
        assert!(skipped.is_empty(), "{skipped:?}");
        let text = output_text(&events);
        assert!(text.starts_with("Last login: Tue Mar 21 16:35:14 from 1.2.3.4\r\n"));
        assert!(text.contains("\u{1b}]1;echo\u{7}hi\r\n"));
        assert!(events.windows(2).all(|w| w[0].time() <= w[1].time()));
    }

    #[test]
    fn reads_the_asciinema_cli_sample_with_spaces() {
        let (header, events, skipped) = read_all(&sample("asciinema-cli-2.4.cast"));
        assert_eq!((header.width, header.height), (100, 30));
        assert!(skipped.is_empty(), "{skipped:?}");
        let text = output_text(&events);
        assert!(text.contains("unicode: héllo wörld — ✓ 日本語 🎉\r\n"));
        assert!(text.ends_with("bell\u{7} and backspace: abc\u{8}\u{8}XY\r\n"));
    }

    #[test]
    fn k8s_resizes_are_rows_first() {
        let (header, events, skipped) = read_all(&sample("k8s-exec-header.cast"));
        assert!(header.resize_rows_first);
        assert!(skipped.is_empty(), "{skipped:?}");
        let resizes: Vec<(u16, u16)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Resize { cols, rows, .. } => Some((*cols, *rows)),
                _ => None,
            })
            .collect();
        assert_eq!(resizes, [(80, 24), (120, 40)]);
        assert_eq!(output_text(&events), "/ # ls\r\nbin    dev    etc    home   lib    proc   root   sys    tmp    usr    var\r\n/ # exit\r\n");
    }

    #[test]
    fn standard_resizes_are_columns_first() {
        let (_, events, _) =
            read_all(b"{\"version\":2,\"width\":80,\"height\":24}\n[1.0,\"r\",\"132x43\"]\n");
        assert_eq!(
            events,
            [Event::Resize {
                time: 1.0,
                cols: 132,
                rows: 43
            }]
        );
    }

    #[test]
    fn malformed_lines_are_skipped_with_their_line_numbers() {
        let file = b"{\"version\": 2, \"width\": 80, \"height\": 24}\n\
            [0.1, \"o\", \"a\"]\n\
            [0.2, \"o\"\n\
            \n\
            not json\n\
            [0.3, \"r\", \"wide\"]\n\
            [-1, \"o\", \"x\"]\n\
            [0.4, \"i\", \"typed\"]\n\
            [0.5, \"o\", \"b\"]";
        let (_, events, skipped) = read_all(file);
        assert_eq!(output_text(&events), "ab");
        let lines: Vec<usize> = skipped.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [3, 5, 6, 7]);
        assert!(skipped[2].1.contains("bad resize"));
    }

    #[test]
    fn missing_or_wrong_headers_are_errors() {
        let err = |bytes: &[u8]| {
            Recording::from_reader(Path::new("r.cast"), bytes)
                .err()
                .map(|e| e.to_string())
        };
        let missing = err(b"[0.1, \"o\", \"hi\"]\n").unwrap();
        assert!(
            missing.contains("r.cast: missing asciicast v2 header on line 1"),
            "{missing}"
        );
        assert!(err(b"").unwrap().contains("empty"));
        assert!(err(b"hello\n")
            .unwrap()
            .contains("missing asciicast v2 header"));
        assert!(err(b"{\"version\": 1, \"stdout\": []}\n")
            .unwrap()
            .contains("unsupported asciicast version 1"));
    }

    #[test]
    fn delays_follow_speed_and_idle_limit() {
        assert_eq!(delay(1.0, 3.0, 1.0, None), Duration::from_secs(2));
        assert_eq!(delay(1.0, 3.0, 2.0, None), Duration::from_secs(1));
        assert_eq!(delay(1.0, 11.0, 1.0, Some(0.5)), Duration::from_millis(500));
        assert_eq!(delay(5.0, 3.0, 1.0, None), Duration::ZERO);
    }
}
