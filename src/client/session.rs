//! `quorumcast record`: one recorded terminal session from start to exit code.
//!
//! Order of events: pick a recorder (before anything runs, so `--enforce` can refuse), send the
//! header, start the command on a PTY, then pump PTY output to stdout and into the recording
//! while forwarding stdin, window-size changes and termination signals, until the command has
//! exited and its output is drained. Finally confirm the upload and return the exit code.
//!
//! A broken recording stream does not stop the pump when the recorder speaks the resumable
//! extension: the upload fails over in the background (one line on stderr per move) while
//! output keeps going into its bounded buffer. Only when no recorder takes over within
//! `--failover-deadline` does the session end (`--enforce`) or go on unrecorded.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::Signal;
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::encoder::Encoder;
use super::failover::FailoverConfig;
use super::header::{Header, Invocation, SessionEnv};
use super::pty::{self, Pty, RawModeGuard, Size};
use super::recorder::{self, Extension, RecorderAddr, Timeouts};
use super::resume::SessionId;
use super::upload::{Upload, UploadError};
use super::{warn, ClientError, RecordArgs};

/// Bytes read from the PTY at a time; one read becomes at most one "o" event.
const PTY_READ_CHUNK: usize = 32 * 1024;
/// Bytes read from stdin at a time.
const STDIN_READ_CHUNK: usize = 16 * 1024;
/// Stdin chunks queued for the PTY: at most 8 x 16 KiB wait while the command is not reading
/// its input; the stdin thread blocks beyond that.
const STDIN_QUEUE_CHUNKS: usize = 8;
/// After the command exits, how long we keep reading output still buffered in the PTY when a
/// background process keeps the PTY open (normally EOF comes at once).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// `--enforce` termination: time between SIGHUP and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Runs the whole `record` subcommand.
pub async fn run(args: RecordArgs) -> Result<i32, ClientError> {
    let addrs = parse_addrs(&args.recorders)?;
    let env = SessionEnv::current();
    let invocation = Invocation::resolve(&args.command, &env);
    let tty = pty::is_tty(std::io::stdin());
    let size = initial_size(tty);
    let copy = match &args.output {
        Some(path) => Some(create_copy(path).await?),
        None => None,
    };
    // One id names the recording everywhere: the header's connectionID and, for the
    // resumable extension, the session the recorders know it by.
    let id = uuid::Uuid::new_v4();
    let upload = open_upload(&addrs, &args, SessionId::from_uuid(id)).await?;
    let header = Header::new(&env, &invocation, (size.cols, size.rows), unix_now(), id);
    let recording = Recording::start(upload, copy, &args, header).await?;

    let mut session = Session::start(&invocation.argv, size, tty, recording)?;
    let outcome = session.pump().await;
    session.stop_io().await;
    match outcome {
        Ok(status) => {
            session.restore_terminal();
            session.recording.finish().await?;
            Ok(exit_code(status))
        }
        Err(e) => {
            session.terminate().await;
            session.recording.flush_copy().await;
            Err(e)
        }
    }
}

fn parse_addrs(recorders: &[String]) -> Result<Vec<RecorderAddr>, ClientError> {
    recorders
        .iter()
        .filter(|a| !a.trim().is_empty())
        .map(|a| RecorderAddr::parse(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ClientError::Usage)
}

/// The terminal size to start with: the user's terminal, else `$COLUMNS`x`$LINES`, else 80x24.
fn initial_size(tty: bool) -> Size {
    let from_tty = if tty {
        pty::terminal_size(std::io::stdin())
    } else {
        pty::terminal_size(std::io::stdout())
    };
    from_tty.unwrap_or_else(|| Size::from_env(|k| std::env::var(k).ok()))
}

/// Connects to the first accepting recorder; `None` means run unrecorded (fail open).
async fn open_upload(
    addrs: &[RecorderAddr],
    args: &RecordArgs,
    session: SessionId,
) -> Result<Option<Upload>, ClientError> {
    let timeouts = Timeouts {
        ack_window: args.ack_timeout,
        ..Timeouts::default()
    };
    let ext = Extension {
        session: session.clone(),
        resume: None,
    };
    match recorder::connect(addrs, timeouts, Some(&ext)).await {
        Ok(transport) => {
            let (addr, protocol) = (transport.addr.clone(), transport.protocol);
            let failover = FailoverConfig {
                addrs: addrs.to_vec(),
                session: session.clone(),
                deadline: args.failover_deadline,
                ack_window: args.ack_timeout,
            };
            let upload = Upload::new(transport, args.unacked_limit, args.ack_timeout)
                .with_failover(failover);
            let resumable = upload.can_fail_over();
            tracing::debug!(
                recorder = %addr,
                ?protocol,
                resumable,
                %session,
                "recording stream accepted"
            );
            Ok(Some(upload))
        }
        Err(e) if args.enforce => Err(ClientError::NotRecorded(e)),
        Err(e) => {
            warn(false, &format!("{e}; running unrecorded"));
            Ok(None)
        }
    }
}

async fn create_copy(path: &Path) -> Result<tokio::fs::File, ClientError> {
    tokio::fs::File::create(path)
        .await
        .map_err(ClientError::io(format!("cannot create {}", path.display())))
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The command's exit code, or 128 + signal number as shells report it.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// The recording side of a session: encoder, upload, and the optional local copy.
struct Recording {
    /// Turns output bytes into event lines.
    encoder: Encoder,
    /// Time zero of the event timestamps.
    started: Instant,
    /// The live upload; `None` when unrecorded (no recorder, or the stream broke, fail-open).
    upload: Option<Upload>,
    /// `--output`: receives each recording byte once, when it is handed to the upload (a
    /// resend after a failover is the upload's business and never reaches the copy).
    copy: Option<tokio::fs::File>,
    /// Fail closed on a broken stream.
    enforce: bool,
    /// Longest wait for the recorder's final confirmation.
    finish_timeout: Duration,
    /// The user's terminal is in raw mode (affects warning line endings).
    raw: bool,
}

impl Recording {
    /// Starts the recording with its header line (time zero is now).
    async fn start(
        upload: Option<Upload>,
        copy: Option<tokio::fs::File>,
        args: &RecordArgs,
        header: Header,
    ) -> Result<Self, ClientError> {
        let mut recording = Self {
            encoder: Encoder::new(),
            started: Instant::now(),
            upload,
            copy,
            enforce: args.enforce,
            finish_timeout: args.finish_timeout,
            raw: false,
        };
        recording.emit(header.to_line()).await?;
        Ok(recording)
    }

    async fn output(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        if self.upload.is_none() {
            return Ok(());
        }
        match self.encoder.output(self.started.elapsed(), bytes) {
            Some(line) => self.emit(line).await,
            None => Ok(()),
        }
    }

    async fn resize(&mut self, size: Size) -> Result<(), ClientError> {
        let line = self
            .encoder
            .resize(self.started.elapsed(), size.cols, size.rows);
        self.emit(line).await
    }

    /// Sends one line (with back-pressure) and mirrors it to the copy.
    async fn emit(&mut self, line: Vec<u8>) -> Result<(), ClientError> {
        let Some(upload) = self.upload.as_mut() else {
            return Ok(());
        };
        let line = Bytes::from(line);
        let sent = upload.send(line.clone()).await;
        self.report_moves();
        match sent {
            Ok(()) => {
                self.write_copy(&line).await;
                Ok(())
            }
            Err(e) => self.stream_broke(e),
        }
    }

    /// One stderr line per failover that completed inside a send.
    fn report_moves(&mut self) {
        let Some(upload) = self.upload.as_mut() else {
            return;
        };
        for moved in upload.take_moves() {
            warn(self.raw, &moved.to_string());
        }
    }

    /// `--enforce`: the session must end. Otherwise: warn and go on unrecorded. The copy keeps
    /// what was sent (nothing more is written to it).
    fn stream_broke(&mut self, error: UploadError) -> Result<(), ClientError> {
        self.upload = None;
        if self.enforce {
            return Err(ClientError::RecordingBroken(error));
        }
        warn(
            self.raw,
            &format!("recording stream broke ({error}); continuing unrecorded"),
        );
        Ok(())
    }

    /// Resolves when the upload breaks for good; never while unrecorded. Meanwhile it drives
    /// failovers and reports each one. Cancel-safe (the pump `select!`s on it).
    async fn broken(&mut self) -> UploadError {
        let Some(upload) = self.upload.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            match upload.next_event().await {
                Ok(moved) => warn(self.raw, &moved.to_string()),
                Err(e) => return e,
            }
        }
    }

    async fn write_copy(&mut self, line: &[u8]) {
        let Some(copy) = self.copy.as_mut() else {
            return;
        };
        if let Err(e) = copy.write_all(line).await {
            warn(self.raw, &format!("--output copy stopped: {e}"));
            self.copy = None;
        }
    }

    /// Completes the pending writes of the `--output` copy.
    async fn flush_copy(&mut self) {
        if let Some(copy) = self.copy.as_mut() {
            if let Err(e) = copy.flush().await {
                warn(self.raw, &format!("--output copy incomplete: {e}"));
            }
        }
    }

    /// Flushes the encoder, ends the upload and waits for the recorder's confirmation.
    async fn finish(mut self) -> Result<(), ClientError> {
        if let Some(line) = self.encoder.finish(self.started.elapsed()) {
            self.emit(line).await?;
        }
        self.flush_copy().await;
        let Some(mut upload) = self.upload.take() else {
            return Ok(());
        };
        let confirmed = upload.finish(self.finish_timeout).await;
        for moved in upload.take_moves() {
            warn(self.raw, &moved.to_string());
        }
        match confirmed {
            Ok(_) => Ok(()),
            Err(e) if self.enforce => Err(ClientError::RecordingUnconfirmed(e)),
            Err(e) => {
                warn(self.raw, &e.to_string());
                Ok(())
            }
        }
    }
}

/// The running command and the plumbing around it.
struct Session {
    /// Master side of the command's PTY (shared with the stdin forwarder).
    pty: Arc<Pty>,
    /// The command; a session leader, so its pid is also its process group.
    child: Child,
    /// Where the output is recorded.
    recording: Recording,
    /// The user's stdin is a terminal (raw mode, window-size changes).
    tty: bool,
    /// Our stdout; `None` after a write failed (e.g. the reader went away): we stop mirroring
    /// but keep recording.
    stdout: Option<tokio::io::Stdout>,
    /// The PTY's size: the header's, then the last one applied. A resize to the same size is
    /// not recorded again.
    size: Size,
    /// Restores the user's terminal when dropped; `None` without a terminal.
    raw_mode: Option<RawModeGuard>,
    /// Copies stdin into the PTY.
    stdin_task: JoinHandle<()>,
    /// SIGWINCH, with a terminal. Watched from before raw mode and the command's start: a
    /// resize arriving earlier than the pump would otherwise be lost (ignored by default).
    winch: Option<tokio::signal::unix::Signal>,
    /// Signals passed on to the command, watched from before it starts for the same reason
    /// (a SIGTERM's default action would leave the user's terminal raw).
    forwarded: ForwardedSignals,
}

impl Session {
    /// Starts the command on a PTY and, with a terminal, switches it to raw mode.
    fn start(
        argv: &[String],
        size: Size,
        tty: bool,
        mut recording: Recording,
    ) -> Result<Self, ClientError> {
        let winch = match tty {
            true => Some(
                signal(SignalKind::window_change())
                    .map_err(ClientError::io("watching SIGWINCH"))?,
            ),
            false => None,
        };
        let forwarded = ForwardedSignals::new()?;
        // Raw mode first: if it fails, no command is left running.
        let raw_mode = tty.then(RawModeGuard::enter).transpose()?;
        recording.raw = tty;
        let (pty, mut child) = pty::spawn(argv, size)?;
        let pty = Arc::new(pty);
        let stdin_task = match forward_stdin(pty.clone(), tty) {
            Ok(task) => task,
            Err(e) => {
                let _ = child.start_kill();
                return Err(e);
            }
        };
        Ok(Self {
            pty,
            child,
            recording,
            tty,
            stdout: Some(tokio::io::stdout()),
            size,
            raw_mode,
            stdin_task,
            winch,
            forwarded,
        })
    }

    /// Stops forwarding input and completes pending output to stdout.
    async fn stop_io(&mut self) {
        self.stdin_task.abort();
        if let Some(stdout) = self.stdout.as_mut() {
            let _ = stdout.flush().await;
        }
    }

    /// Gives the user's terminal its settings back (also done on drop, on every path).
    fn restore_terminal(&mut self) {
        self.raw_mode = None;
        self.recording.raw = false;
    }

    /// Pumps until the command has exited and its output is drained.
    async fn pump(&mut self) -> Result<ExitStatus, ClientError> {
        let mut buf = vec![0u8; PTY_READ_CHUNK];
        let mut status = None;
        let mut drain_until: Option<Instant> = None;
        let mut pty_open = true;
        // The size was read before connecting to a recorder; a change since then sent its
        // SIGWINCH before we watched for it.
        if self.tty {
            self.resize().await?;
        }
        loop {
            if let Some(status) = status.filter(|_| !pty_open) {
                return Ok(status);
            }
            tokio::select! {
                read = self.pty.read(&mut buf), if pty_open => {
                    let n = read.map_err(ClientError::io("reading the pseudo-terminal"))?;
                    if n == 0 {
                        pty_open = false;
                        continue;
                    }
                    self.mirror(&buf[..n]).await;
                    // May wait for acks (back-pressure): the PTY is not read meanwhile.
                    self.recording.output(&buf[..n]).await?;
                }
                exited = self.child.wait(), if status.is_none() => {
                    status = Some(exited.map_err(ClientError::io("waiting for the command"))?);
                    drain_until = Some(Instant::now() + DRAIN_LIMIT);
                }
                // A background process still holds the PTY open: stop waiting for its EOF.
                () = sleep_until_some(drain_until) => pty_open = false,
                Some(()) = next_winch(&mut self.winch) => self.resize().await?,
                sig = self.forwarded.recv() => pty::signal_groups(&self.child, &self.pty, sig),
                error = self.recording.broken() => self.recording.stream_broke(error)?,
            }
        }
    }

    /// Applies the user's new terminal size to the PTY and records it.
    async fn resize(&mut self) -> Result<(), ClientError> {
        let Some(size) = pty::terminal_size(std::io::stdin()) else {
            return Ok(());
        };
        if size == self.size {
            return Ok(());
        }
        self.size = size;
        // Failing to resize only affects the display; keep the session going.
        let _ = self.pty.resize(size);
        self.recording.resize(size).await
    }

    async fn mirror(&mut self, bytes: &[u8]) {
        if let Some(stdout) = self.stdout.as_mut() {
            if stdout.write_all(bytes).await.is_err() {
                self.stdout = None;
            }
        }
    }

    /// Ends the command: SIGHUP to its process groups, SIGKILL after [`KILL_GRACE`].
    async fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        pty::signal_groups(&self.child, &self.pty, Signal::SIGHUP);
        if tokio::time::timeout(KILL_GRACE, self.child.wait())
            .await
            .is_err()
        {
            pty::signal_groups(&self.child, &self.pty, Signal::SIGKILL);
            let _ = tokio::time::timeout(KILL_GRACE, self.child.wait()).await;
        }
    }
}

/// Resolves at `deadline`, or never when there is none.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next SIGWINCH, or never without a terminal.
async fn next_winch(winch: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match winch {
        Some(w) => w.recv().await,
        None => std::future::pending().await,
    }
}

/// Termination signals sent to us, which we pass on to the command (it runs in its own
/// session, so a terminal hangup or ^C in a pipeline would not reach it otherwise). We exit
/// when it does, after finishing the recording.
struct ForwardedSignals {
    /// SIGHUP (e.g. the SSH connection dropped).
    hup: tokio::signal::unix::Signal,
    /// SIGTERM.
    term: tokio::signal::unix::Signal,
    /// SIGINT.
    int: tokio::signal::unix::Signal,
    /// SIGQUIT.
    quit: tokio::signal::unix::Signal,
}

impl ForwardedSignals {
    fn new() -> Result<Self, ClientError> {
        let watch = |kind| signal(kind).map_err(ClientError::io("installing signal handlers"));
        Ok(Self {
            hup: watch(SignalKind::hangup())?,
            term: watch(SignalKind::terminate())?,
            int: watch(SignalKind::interrupt())?,
            quit: watch(SignalKind::quit())?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            Some(()) = self.hup.recv() => Signal::SIGHUP,
            Some(()) = self.term.recv() => Signal::SIGTERM,
            Some(()) = self.int.recv() => Signal::SIGINT,
            Some(()) = self.quit.recv() => Signal::SIGQUIT,
            else => std::future::pending().await,
        }
    }
}

/// Copies our stdin into the PTY. A blocking read runs on its own thread (not tokio's blocking
/// pool, whose shutdown would wait for a read that may never return); the async half writes.
fn forward_stdin(pty: Arc<Pty>, tty: bool) -> Result<JoinHandle<()>, ClientError> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(STDIN_QUEUE_CHUNKS);
    std::thread::Builder::new()
        .name("quorumcast-stdin".into())
        .spawn(move || read_stdin(&tx))
        .map_err(ClientError::io("starting the stdin reader"))?;
    Ok(tokio::spawn(async move {
        let mut mid_line = false;
        while let Some(chunk) = rx.recv().await {
            if pty.write_all(&chunk).await.is_err() {
                return; // the command is gone
            }
            mid_line = chunk.last() != Some(&b'\n');
        }
        // A pipe or file ended (a raw terminal never does): tell the command like ^D would.
        if !tty {
            let _ = pty.send_eof(mid_line).await;
        }
    }))
}

fn read_stdin(tx: &mpsc::Sender<Bytes>) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; STDIN_READ_CHUNK];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake_recorder::{Acks, Behaviour, FakeRecorder, Offer};
    use super::super::DEFAULT_UNACKED_LIMIT;
    use super::*;
    use http::StatusCode;

    fn args(recorder: &FakeRecorder, output: Option<&Path>, command: &[&str]) -> RecordArgs {
        args_for(&[recorder], output, command)
    }

    fn args_for(
        recorders: &[&FakeRecorder],
        output: Option<&Path>,
        command: &[&str],
    ) -> RecordArgs {
        RecordArgs {
            recorders: recorders.iter().map(|r| r.addr.to_string()).collect(),
            enforce: true,
            output: output.map(Path::to_owned),
            ack_timeout: Duration::from_secs(5),
            failover_deadline: Duration::from_secs(5),
            finish_timeout: Duration::from_secs(5),
            unacked_limit: DEFAULT_UNACKED_LIMIT,
            command: command.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn records_a_command_end_to_end() {
        if pty::is_tty(std::io::stdin()) {
            // `record` would switch the developer's terminal to raw mode; CI has no terminal.
            eprintln!("skipped: stdin is a terminal");
            return;
        }
        let rec = FakeRecorder::start(Behaviour::V2 { auto_ack: true }).await;
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy.cast");
        // "é" is split across two writes (and so across PTY reads) on purpose.
        let cmd = [
            "sh",
            "-c",
            r"printf 'caf\303'; sleep 0.2; printf '\251\n'; exit 3",
        ];
        let code = run(args(&rec, Some(&copy), &cmd)).await.unwrap();
        assert_eq!(code, 3);

        let sent = std::fs::read(&copy).unwrap();
        assert_eq!(rec.received(), sent, "recorder and --output copy differ");
        let mut lines = sent.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        let header: serde_json::Value = serde_json::from_slice(lines.next().unwrap()).unwrap();
        assert_eq!(header["version"], 2);
        let quoted = r"sh -c 'printf '\''caf\303'\''; sleep 0.2; printf '\''\251\n'\''; exit 3'";
        assert_eq!(header["command"], quoted);
        let text: String = lines
            .map(|l| serde_json::from_slice::<(f64, String, String)>(l).unwrap())
            .filter(|(_, code, _)| code == "o")
            .map(|(_, _, data)| data)
            .collect();
        assert_eq!(text, "café\r\n");
    }

    #[tokio::test]
    async fn enforce_refuses_to_run_without_a_recorder() {
        let rec = FakeRecorder::start(Behaviour::Refuse(StatusCode::SERVICE_UNAVAILABLE)).await;
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let touch = format!("touch {}", marker.display());
        let err = run(args(&rec, None, &["sh", "-c", &touch]))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::NotRecorded(_)), "{err}");
        assert!(
            !marker.exists(),
            "the command ran although no recorder accepted"
        );
    }

    /// `record` would switch the developer's terminal to raw mode; CI has no terminal.
    fn skip_on_a_terminal() -> bool {
        let tty = pty::is_tty(std::io::stdin());
        if tty {
            eprintln!("skipped: stdin is a terminal");
        }
        tty
    }

    /// Waits until `rec` received `needle`, then kills it like `kill -9` would.
    async fn kill_after(rec: &FakeRecorder, needle: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !rec.received().windows(needle.len()).any(|w| w == needle) {
            assert!(
                Instant::now() < deadline,
                "the recorder never got {needle:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rec.kill();
    }

    fn resumable(acks: Acks) -> Behaviour {
        Behaviour::Resumable {
            acks,
            offer: Offer::Echo,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_recording_moves_when_its_recorder_dies_and_no_byte_is_lost_or_doubled() {
        if skip_on_a_terminal() {
            return;
        }
        // The first recorder acks only half of what it got: the rest must be resent.
        let first = FakeRecorder::start(resumable(Acks::Half)).await;
        let second = FakeRecorder::start(resumable(Acks::Every)).await;
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy.cast");
        let cmd = [
            "sh",
            "-c",
            "printf 'one\\n'; sleep 1; printf 'two\\n'; sleep 0.3; printf 'three\\n'",
        ];
        let record = tokio::spawn(run(args_for(&[&first, &second], Some(&copy), &cmd)));
        kill_after(&first, b"one").await;
        let code = record.await.unwrap().unwrap();
        assert_eq!(code, 0);

        let resumed_at = second.requests()[0].offered.unwrap() as usize;
        let from_first = first.received();
        assert!(resumed_at < from_first.len(), "nothing was resent");
        let mut stored = from_first[..resumed_at].to_vec();
        stored.extend(second.received());
        let sent = std::fs::read(&copy).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&stored),
            String::from_utf8_lossy(&sent),
            "stored recording and --output copy differ"
        );
        let text: String = sent
            .split(|b| *b == b'\n')
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice::<(f64, String, String)>(l)
                    .unwrap()
                    .2
            })
            .collect();
        assert_eq!(text, "one\r\ntwo\r\nthree\r\n");
        assert_eq!(first.requests()[0].session, second.requests()[0].session);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn enforce_terminates_the_command_when_no_recorder_takes_over() {
        if skip_on_a_terminal() {
            return;
        }
        let first = FakeRecorder::start(resumable(Acks::Every)).await;
        let busy = FakeRecorder::start(Behaviour::RefusePost(
            StatusCode::SERVICE_UNAVAILABLE,
            "no quorum",
        ))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!(
            "echo $$ > {}; echo started; exec sleep 60",
            pid_file.display()
        );
        let mut args = args_for(&[&first, &busy], None, &["sh", "-c", &script]);
        args.failover_deadline = Duration::from_millis(500);
        let record = tokio::spawn(run(args));
        kill_after(&first, b"started").await;
        let outcome = tokio::time::timeout(Duration::from_secs(15), record)
            .await
            .expect("the command was not terminated")
            .unwrap();
        let err = outcome.unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::RecordingBroken(UploadError::NoTakeover { .. })
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("no recorder took over within 500ms"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        assert!(!alive, "the command is still running");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn without_enforce_the_command_goes_on_unrecorded_after_the_deadline() {
        if skip_on_a_terminal() {
            return;
        }
        let first = FakeRecorder::start(resumable(Acks::Every)).await;
        let busy = FakeRecorder::start(Behaviour::RefusePost(
            StatusCode::SERVICE_UNAVAILABLE,
            "no quorum",
        ))
        .await;
        let cmd = ["sh", "-c", "echo started; sleep 1.5; echo after; exit 4"];
        let mut args = args_for(&[&first, &busy], None, &cmd);
        args.enforce = false;
        args.failover_deadline = Duration::from_millis(300);
        let record = tokio::spawn(run(args));
        kill_after(&first, b"started").await;
        assert_eq!(record.await.unwrap().unwrap(), 4);
        assert!(busy.received().is_empty());
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }
}
