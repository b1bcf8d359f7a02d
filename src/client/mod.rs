//! The client side of quorumcast: `record`, `play` and `cat`.
//!
//! This module owns everything that runs next to the user: running a command in a PTY and
//! mirroring it to the terminal ([`pty`]), describing the session ([`header`]), encoding
//! asciicast v2 events ([`encoder`]), choosing a recorder and speaking the Tailscale recorder
//! protocol to it ([`recorder`], [`ack`]), streaming with a bounded unacked buffer ([`upload`]),
//! moving a live recording to another recorder when its stream breaks ([`failover`], with the
//! sans-IO rules of the resumable extension in [`resume`]; the wire contract is
//! `docs/protocol.md`), and replaying recordings ([`replay`]). [`session`] ties the `record`
//! pieces together.
//!
//! It does not own the recorder server, storage, or the CLI definition (`main.rs` embeds the
//! `*Args` structs below as subcommands). Nothing here reads server-side state.

mod ack;
mod encoder;
mod failover;
#[cfg(test)]
mod fake_recorder;
mod header;
mod pty;
mod recorder;
mod replay;
mod resume;
mod session;
mod upload;

use std::path::PathBuf;
use std::time::Duration;

pub use upload::DEFAULT_UNACKED_LIMIT;

/// `quorumcast record`: run a command in a PTY and stream its recording to a recorder.
#[derive(clap::Args, Debug, Clone)]
pub struct RecordArgs {
    /// Recorder address (host:port or http://host:port). Repeat (or separate with commas) for
    /// fallbacks, tried in order.
    #[arg(
        long = "recorder",
        value_name = "ADDR",
        env = "QUORUMCAST_RECORDERS",
        value_delimiter = ','
    )]
    pub recorders: Vec<String>,
    /// Fail closed: do not start the command unless a recorder accepted, and terminate it if
    /// the recording stream breaks and no recorder takes over within the failover deadline.
    #[arg(long)]
    pub enforce: bool,
    /// Also write the recording to FILE: every byte once, as produced (bytes resent after a
    /// failover are not repeated), so it equals what the recorders store.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Seconds without an ack frame (v2) or without accepted bytes while data waits (v1) after
    /// which the recording stream counts as broken.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    pub ack_timeout: Duration,
    /// Seconds after a broken recording stream within which another recorder must take the
    /// session over (quorumcast recorders only); the command keeps running meanwhile.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub failover_deadline: Duration,
    /// Seconds to wait for the recorder's final confirmation after the command exits.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub finish_timeout: Duration,
    /// Bytes sent but not yet acknowledged that are kept (for resending); when full, reading
    /// the command's output pauses instead of dropping it.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_UNACKED_LIMIT)]
    pub unacked_limit: usize,
    /// Command to run (default: $SHELL -c "$SSH_ORIGINAL_COMMAND" under an OpenSSH
    /// ForceCommand, else $SHELL, else /bin/sh).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// `quorumcast play`: replay a recording in the terminal with its timing.
#[derive(clap::Args, Debug, Clone)]
pub struct PlayArgs {
    /// The asciicast v2 file.
    pub file: PathBuf,
    /// Playback speed factor (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Cap pauses between events at this many seconds (default: the header's
    /// idle_time_limit, if any).
    #[arg(long, value_name = "SECS")]
    pub idle_limit: Option<f64>,
}

/// `quorumcast cat`: print a recording's output text.
#[derive(clap::Args, Debug, Clone)]
pub struct CatArgs {
    /// The asciicast v2 file.
    pub file: PathBuf,
}

/// Client failures. Each displays as one line, suitable for `quorumcast: {error}` on stderr.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A flag value is unusable.
    #[error("invalid argument: {0}")]
    Usage(String),
    /// `--enforce` and no recorder accepted: the command was not started.
    #[error("not starting the command (--enforce): {0}")]
    NotRecorded(recorder::ConnectError),
    /// `--enforce` and the stream broke mid-session (and no recorder took over): the command
    /// was terminated.
    #[error("recording stream broke, ending the session (--enforce): {0}")]
    RecordingBroken(upload::UploadError),
    /// `--enforce` and the recorder did not confirm the end of the recording.
    #[error("recording not confirmed (--enforce): {0}")]
    RecordingUnconfirmed(upload::UploadError),
    /// PTY or terminal setup failed.
    #[error(transparent)]
    Pty(#[from] pty::PtyError),
    /// A recording could not be read.
    #[error(transparent)]
    Replay(#[from] replay::ReplayError),
    /// Local I/O failed (output copy, terminal, stdout).
    #[error("{context}: {error}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        error: std::io::Error,
    },
}

impl ClientError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |error| Self::Io { context, error }
    }
}

/// Runs `quorumcast record`; returns the exit code to use (the command's, or 128+signal).
pub async fn run_record(args: RecordArgs) -> Result<i32, ClientError> {
    session::run(args).await
}

/// Runs `quorumcast play`.
pub async fn run_play(args: PlayArgs) -> Result<(), ClientError> {
    replay::play(args).await
}

/// Runs `quorumcast cat`.
pub fn run_cat(args: CatArgs) -> Result<(), ClientError> {
    replay::cat(args)
}

/// Parses a non-negative number of seconds (fractions allowed).
fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Prints a one-line warning on stderr. In raw mode the terminal does not turn `\n` into
/// `\r\n`, so the caller says which line ending to use.
fn warn(raw_terminal: bool, message: &str) {
    let end = if raw_terminal { "\r\n" } else { "\n" };
    eprint!("quorumcast: {message}{end}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        record: RecordArgs,
    }

    #[test]
    fn record_args_take_repeated_recorders_and_a_trailing_command() {
        let cli = Cli::try_parse_from([
            "q",
            "--recorder",
            "a:1",
            "--recorder",
            "b:2",
            "--enforce",
            "--ack-timeout",
            "0.5",
            "--",
            "sh",
            "-c",
            "echo --enforce",
        ])
        .unwrap();
        let r = cli.record;
        assert_eq!(r.recorders, ["a:1", "b:2"]);
        assert!(r.enforce);
        assert_eq!(r.ack_timeout, Duration::from_millis(500));
        assert_eq!(r.finish_timeout, Duration::from_secs(10));
        assert_eq!(r.failover_deadline, Duration::from_secs(10));
        assert_eq!(r.command, ["sh", "-c", "echo --enforce"]);
    }

    #[test]
    fn command_flags_after_the_program_belong_to_it() {
        let cli = Cli::try_parse_from(["q", "ls", "-la", "--enforce"]).unwrap();
        assert!(!cli.record.enforce);
        assert_eq!(cli.record.command, ["ls", "-la", "--enforce"]);
    }

    #[test]
    fn seconds_must_be_non_negative_numbers() {
        assert_eq!(parse_secs("1.25"), Ok(Duration::from_millis(1250)));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
    }

    #[test]
    fn errors_are_one_line_and_carry_no_duplicate_cause() {
        // main prints errors with anyhow's `{:#}`, which appends every source: the inner error
        // is already in the message, so there must be none.
        let failures = vec!["a:1: connect: refused".to_owned()];
        let e = ClientError::NotRecorded(recorder::ConnectError::AllFailed(failures));
        assert_eq!(
            e.to_string(),
            "not starting the command (--enforce): no recorder accepted the recording \
             (a:1: connect: refused)"
        );
        assert!(std::error::Error::source(&e).is_none());
        let io = ClientError::io("writing")(std::io::ErrorKind::BrokenPipe.into());
        assert!(std::error::Error::source(&io).is_none());
    }
}
