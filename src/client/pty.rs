//! The pseudo-terminal: spawning the command on a PTY, async I/O on the master side, window
//! sizes, and the raw-mode guard for the user's terminal.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Stdio;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::pty::{openpty, OpenptyResult, Winsize};
use nix::sys::signal::{killpg, Signal};
use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices, Termios};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};

/// Size used when there is no terminal and `$COLUMNS` / `$LINES` do not say otherwise.
pub const DEFAULT_SIZE: Size = Size { cols: 80, rows: 24 };

/// Errors of PTY setup and terminal control.
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    /// `openpty` or an fd flag change failed.
    #[error("cannot set up a pseudo-terminal: {0}")]
    Open(Errno),
    /// The command could not be started.
    #[error("cannot run {program:?}: {error}")]
    Spawn {
        /// argv[0].
        program: String,
        /// Why exec (or fork) failed.
        error: io::Error,
    },
    /// No program to run.
    #[error("empty command")]
    EmptyCommand,
    /// The user's terminal could not be switched to or from raw mode.
    #[error("cannot change terminal mode: {0}")]
    Termios(Errno),
    /// Registering the master fd with the tokio reactor failed.
    #[error("cannot watch the pseudo-terminal: {0}")]
    Reactor(io::Error),
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

impl Size {
    /// `$COLUMNS` x `$LINES` when both are positive numbers, else [`DEFAULT_SIZE`].
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let num = |k: &str| lookup(k)?.trim().parse::<u16>().ok().filter(|n| *n > 0);
        match (num("COLUMNS"), num("LINES")) {
            (Some(cols), Some(rows)) => Self { cols, rows },
            _ => DEFAULT_SIZE,
        }
    }

    fn to_winsize(self) -> Winsize {
        Winsize {
            ws_row: self.rows,
            ws_col: self.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }
    }
}

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, Winsize);
nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, Winsize);

/// The window size of a terminal, or `None` if `fd` is not one (or reports 0x0).
pub fn terminal_size(fd: impl AsFd) -> Option<Size> {
    let mut ws = Size { cols: 0, rows: 0 }.to_winsize();
    // SAFETY: TIOCGWINSZ writes one `winsize` into the valid pointer we pass.
    unsafe { tiocgwinsz(fd.as_fd().as_raw_fd(), &mut ws) }.ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then_some(Size {
        cols: ws.ws_col,
        rows: ws.ws_row,
    })
}

/// Whether `fd` is a terminal.
pub fn is_tty(fd: impl AsFd) -> bool {
    nix::unistd::isatty(fd).unwrap_or(false)
}

/// The master side of the command's PTY, non-blocking and registered with tokio.
#[derive(Debug)]
pub struct Pty {
    /// Master fd (O_NONBLOCK, close-on-exec).
    master: AsyncFd<OwnedFd>,
}

/// Starts `argv` as a session leader whose controlling terminal is a new PTY of `size`.
pub fn spawn(argv: &[String], size: Size) -> Result<(Pty, Child), PtyError> {
    let (program, args) = argv.split_first().ok_or(PtyError::EmptyCommand)?;
    let OpenptyResult { master, slave } =
        openpty(&size.to_winsize(), None).map_err(PtyError::Open)?;
    // The child must not inherit the master: it would keep the PTY alive after we exit.
    for fd in [&master, &slave] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(PtyError::Open)?;
    }
    fcntl(&master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(PtyError::Open)?;
    let spawn_err = |error| PtyError::Spawn {
        program: program.clone(),
        error,
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::from(slave.try_clone().map_err(spawn_err)?))
        .stdout(Stdio::from(slave.try_clone().map_err(spawn_err)?))
        .stderr(Stdio::from(slave));
    // SAFETY: the closure only makes async-signal-safe calls (setsid, ioctl).
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            // stdin is the slave by now: make it the controlling terminal of the new session.
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(spawn_err)?;
    // Close our copies of the slave now; otherwise reading the master never reports EOF (EIO).
    drop(cmd);
    // SAFETY: `OwnedFd` keeps this fd open and unchanged until the AsyncFd drops it.
    let master = unsafe { AsyncFd::register(master) }.map_err(|e| PtyError::Reactor(e.into()))?;
    Ok((Pty { master }, child))
}

impl Pty {
    /// Reads command output; `Ok(0)` once every slave fd is closed (Linux reports EIO).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.master.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` as terminal input.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.master.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// Signals end of input the way a terminal user would: the EOF character (^D), twice when
    /// the current line is not empty (the first one only submits the pending line). Does
    /// nothing when the line discipline is not canonical, where ^D would be plain data.
    pub async fn send_eof(&self, mid_line: bool) -> io::Result<()> {
        let attrs = termios::tcgetattr(self.master.get_ref()).map_err(io::Error::from)?;
        let eof = attrs.control_chars[SpecialCharacterIndices::VEOF as usize];
        if !attrs.local_flags.contains(LocalFlags::ICANON) || eof == libc::_POSIX_VDISABLE {
            return Ok(());
        }
        let count = if mid_line { 2 } else { 1 };
        self.write_all(&vec![eof; count]).await
    }

    /// Applies a new window size; the kernel sends SIGWINCH to the foreground process group.
    pub fn resize(&self, size: Size) -> io::Result<()> {
        let ws = size.to_winsize();
        // SAFETY: TIOCSWINSZ reads one `winsize` from the valid pointer we pass.
        unsafe { tiocswinsz(self.master.get_ref().as_raw_fd(), &ws) }
            .map(drop)
            .map_err(io::Error::from)
    }

    /// The PTY's foreground process group (a job the shell started), if any.
    pub fn foreground_group(&self) -> Option<Pid> {
        nix::unistd::tcgetpgrp(self.master.get_ref()).ok()
    }
}

/// Sends `signal` to the process groups of the child (a session leader: pgid = pid) and of the
/// PTY's foreground job. Errors (group already gone) are expected and ignored.
pub fn signal_groups(child: &Child, pty: &Pty, signal: Signal) {
    let leader = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let foreground = pty.foreground_group().filter(|g| Some(*g) != leader);
    for group in [leader, foreground].into_iter().flatten() {
        let _ = killpg(group, signal);
    }
}

/// Puts the user's terminal (stdin) in raw mode and restores it when dropped, also on errors
/// and panics (unwinding runs the drop).
#[derive(Debug)]
pub struct RawModeGuard {
    /// Settings to restore.
    saved: Termios,
}

impl RawModeGuard {
    /// Switches stdin to raw mode.
    pub fn enter() -> Result<Self, PtyError> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(&stdin).map_err(PtyError::Termios)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSADRAIN, &raw).map_err(PtyError::Termios)?;
        Ok(Self { saved })
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        // Nothing sensible to do if restoring fails; the user can still run `reset`.
        let _ = termios::tcsetattr(io::stdin(), SetArg::TCSADRAIN, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn read_to_eof(pty: &Pty) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), pty.read(&mut buf))
                .await
                .expect("pty read timed out")
                .unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn size_from_env_needs_both_positive_numbers() {
        let env = |c: &'static str, l: &'static str| {
            move |k: &str| match k {
                "COLUMNS" => Some(c.to_owned()),
                "LINES" => Some(l.to_owned()),
                _ => None,
            }
        };
        assert_eq!(
            Size::from_env(env("132", "50")),
            Size {
                cols: 132,
                rows: 50
            }
        );
        assert_eq!(Size::from_env(env("0", "50")), DEFAULT_SIZE);
        assert_eq!(Size::from_env(env("x", "50")), DEFAULT_SIZE);
    }

    #[tokio::test]
    async fn child_runs_on_a_pty_with_the_given_size() {
        let cmd = argv(&["sh", "-c", "stty size; test -t 0 && echo tty"]);
        let (pty, mut child) = spawn(&cmd, Size { cols: 91, rows: 17 }).unwrap();
        let out = String::from_utf8(read_to_eof(&pty).await).unwrap();
        assert_eq!(out, "17 91\r\ntty\r\n");
        assert!(child.wait().await.unwrap().success());
    }

    #[tokio::test]
    async fn input_and_eof_reach_the_child() {
        let cmd = argv(&["sh", "-c", "stty -echo; echo ready; cat; echo done"]);
        let (pty, mut child) = spawn(&cmd, DEFAULT_SIZE).unwrap();
        let mut buf = [0u8; 64];
        let n = pty.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ready\r\n");
        // A partial line needs two EOF characters.
        pty.write_all(b"partial").await.unwrap();
        pty.send_eof(true).await.unwrap();
        let out = String::from_utf8(read_to_eof(&pty).await).unwrap();
        assert_eq!(out, "partialdone\r\n");
        assert!(child.wait().await.unwrap().success());
    }

    #[tokio::test]
    async fn resize_is_visible_to_the_child() {
        let cmd = argv(&["sh", "-c", "read x; stty size"]);
        let (pty, mut child) = spawn(&cmd, DEFAULT_SIZE).unwrap();
        pty.resize(Size {
            cols: 100,
            rows: 30,
        })
        .unwrap();
        pty.write_all(b"\n").await.unwrap();
        let out = String::from_utf8(read_to_eof(&pty).await).unwrap();
        assert!(out.ends_with("30 100\r\n"), "{out:?}");
        assert!(child.wait().await.unwrap().success());
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let err = rt
            .block_on(async { spawn(&argv(&["/nonexistent/quorumcast-test"]), DEFAULT_SIZE) })
            .unwrap_err();
        assert!(matches!(err, PtyError::Spawn { .. }), "{err}");
    }
}
