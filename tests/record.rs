//! `quorumcast record` in a real PTY against a real node; the asciinema CLI reads the result.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::*;

fn record(node_addr: &str, extra: &[&str], command: &[&str]) -> Result<Output> {
    Ok(Command::new(BIN)
        .arg("record")
        .args(["--recorder", node_addr])
        .args(extra)
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .output()?)
}

fn asciinema_cat(path: &std::path::Path) -> Result<String> {
    let out = Command::new("asciinema")
        .arg("cat")
        .arg(path)
        .output()
        .context("the asciinema CLI is needed (pip install asciinema); .ci/run installs it")?;
    assert!(
        out.status.success(),
        "asciinema cat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn pty_session_is_stored_byte_identical_and_readable_by_asciinema() -> Result<()> {
    let tmp = tempdir();
    let node = Node::start(tmp.path(), &[])?;
    let copy = tmp.path().join("client-copy.cast");
    let script =
        "printf 'hello from a pty\\n'; printf '\\033[1;32mgreen\\033[0m caf\\303\\251\\n'; \
                  if [ -t 1 ]; then echo stdout-is-a-tty; fi; stty size";
    let out = record(
        &node.addr,
        &["--output", copy.to_str().context("utf8")?],
        &["sh", "-c", script],
    )?;
    assert!(
        out.status.success(),
        "record failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mirrored = String::from_utf8_lossy(&out.stdout);
    assert!(
        mirrored.contains("hello from a pty"),
        "not mirrored to stdout: {mirrored}"
    );
    let sessions = node.wait_sessions("complete", 1)?;
    let stored_path = node
        .dst()
        .join(sessions[0]["path"].as_str().context("path")?);
    let stored = std::fs::read(&stored_path)?;
    assert_eq!(
        sha256(&stored),
        sha256(&std::fs::read(&copy)?),
        "stored != client copy"
    );
    let text = asciinema_cat(&stored_path)?;
    assert!(text.contains("hello from a pty"), "{text}");
    assert!(text.contains("green") && text.contains("café"), "{text}");
    assert!(
        text.contains("stdout-is-a-tty"),
        "command did not run in a PTY: {text}"
    );
    assert!(
        text.contains("24 80"),
        "default PTY size without a terminal: {text}"
    );
    assert_eq!(sessions[0]["protocol"], "v2");
    Ok(())
}

#[test]
fn exit_code_is_the_commands() -> Result<()> {
    let tmp = tempdir();
    let node = Node::start(tmp.path(), &[])?;
    let out = record(&node.addr, &[], &["sh", "-c", "echo bye; exit 7"])?;
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn enforce_without_a_recorder_never_starts_the_command() -> Result<()> {
    let tmp = tempdir();
    let marker = tmp.path().join("ran");
    let script = format!("touch {}", marker.display());
    let out = record("127.0.0.1:1", &["--enforce"], &["sh", "-c", &script])?;
    assert!(!out.status.success());
    assert!(
        !marker.exists(),
        "command ran although no recorder accepted"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.trim().lines().count() >= 1 && err.contains("127.0.0.1:1"),
        "{err}"
    );
    Ok(())
}

#[test]
fn fail_open_runs_unrecorded_with_a_warning() -> Result<()> {
    let tmp = tempdir();
    let marker = tmp.path().join("ran");
    let script = format!("touch {}", marker.display());
    let out = record("127.0.0.1:1", &[], &["sh", "-c", &script])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(marker.exists());
    assert!(!out.stderr.is_empty(), "no warning on stderr");
    Ok(())
}

#[test]
fn refusing_recorder_is_skipped_for_the_next() -> Result<()> {
    let tmp = tempdir();
    let full = Node::start(&tmp.path().join("full"), &["--max-sessions", "1"])?;
    let mut holder = H2Upload::v2(&full)?;
    holder.send(b"{\"version\":2,\"width\":80,\"height\":24}\n")?;
    holder.wait_ack(1)?;
    let healthy = Node::start(&tmp.path().join("healthy"), &[])?;
    let out = Command::new(BIN)
        .args([
            "record",
            "--recorder",
            &full.addr,
            "--recorder",
            &healthy.addr,
            "--enforce",
            "--",
        ])
        .args(["sh", "-c", "echo went-to-the-second"])
        .stdin(Stdio::null())
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sessions = healthy.wait_sessions("complete", 1)?;
    assert!(
        String::from_utf8_lossy(&healthy.read_recording(&sessions[0])?)
            .contains("went-to-the-second")
    );
    Ok(())
}

#[test]
fn enforce_terminates_the_command_when_the_recorder_dies() -> Result<()> {
    let tmp = tempdir();
    let ready = tmp.path().join("started");
    let script = format!("echo started > {}; sleep 60", ready.display());
    let (status, err) = enforce_until_the_recorder_dies(tmp.path(), &script, &ready)?;
    assert!(!status.success());
    assert!(!err.trim().is_empty(), "no reason printed");
    Ok(())
}

/// A command that ignores SIGHUP is killed (SIGKILL) after the grace, children included.
#[test]
fn enforce_kills_a_command_that_ignores_sighup() -> Result<()> {
    let tmp = tempdir();
    let pid_file = tmp.path().join("sleep.pid");
    let script = format!(
        "trap '' HUP; sleep 60 & echo $! > {}; wait",
        pid_file.display()
    );
    let (status, err) = enforce_until_the_recorder_dies(tmp.path(), &script, &pid_file)?;
    assert!(!status.success());
    assert!(!err.trim().is_empty(), "no reason printed");
    let pid = std::fs::read_to_string(&pid_file)?.trim().to_string();
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_dir.exists() && Instant::now() < deadline {
        // Reparented to init once its shell died; gone once reaped.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !proc_dir.exists(),
        "the command's child {pid} outlived SIGKILL"
    );
    Ok(())
}

/// Runs `script` under `record --enforce` against a node, kills the node with SIGKILL once
/// the session is live and the script has written `ready` (so it runs, traps set, when its
/// recorder dies), and waits (at most 40 s) for `record` to end.
fn enforce_until_the_recorder_dies(
    dir: &Path,
    script: &str,
    ready: &Path,
) -> Result<(std::process::ExitStatus, String)> {
    let mut node = Node::start(dir, &[])?;
    let mut child = Command::new(BIN)
        .args(["record", "--recorder", &node.addr, "--enforce", "--"])
        .args(["sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    node.wait_sessions("live", 1)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(ready).map_or(true, |m| m.len() == 0) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the script never wrote {ready:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    node.kill9();
    let killed_at = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if killed_at.elapsed() > Duration::from_secs(40) {
            let _ = child.kill();
            anyhow::bail!("enforce session still running 40 s after its recorder died");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut err)?;
    Ok((status, err))
}

#[test]
fn force_command_mode_fills_the_header_from_sshd_environment() -> Result<()> {
    let tmp = tempdir();
    let node = Node::start(tmp.path(), &[])?;
    let out = Command::new(BIN)
        .args(["record", "--recorder", &node.addr])
        .env("SSH_ORIGINAL_COMMAND", "echo forced-command")
        .env("SSH_CONNECTION", "10.1.2.3 50000 10.0.0.1 22")
        .env("USER", "carol")
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::null())
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sessions = node.wait_sessions("complete", 1)?;
    let header = &sessions[0]["header"];
    assert_eq!(header["sshUser"], "carol");
    assert_eq!(header["localUser"], "carol");
    assert_eq!(header["srcNode"], "10.1.2.3");
    assert!(header["connectionID"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert!(String::from_utf8_lossy(&node.read_recording(&sessions[0])?).contains("forced-command"));
    assert_eq!(node.sessions("?user=carol")?.len(), 1);
    Ok(())
}

#[test]
fn cat_and_play_read_the_samples() -> Result<()> {
    for (name, expect) in [
        ("seed-echo-hi.cast", "echo hi"),
        ("asciinema-cli-2.4.cast", "quorumcast sample"),
        ("k8s-exec-header.cast", "bin    dev"),
    ] {
        let path = samples().join(name);
        let cat = Command::new(BIN).arg("cat").arg(&path).output()?;
        assert!(cat.status.success());
        assert!(
            String::from_utf8_lossy(&cat.stdout).contains(expect),
            "{name}"
        );
        let play = Command::new(BIN)
            .args(["play", "--speed", "50", "--idle-limit", "0.1"])
            .arg(&path)
            .stdin(Stdio::null())
            .output()?;
        assert!(
            play.status.success(),
            "{}",
            String::from_utf8_lossy(&play.stderr)
        );
        assert_eq!(
            play.stdout, cat.stdout,
            "{name}: play and cat disagree on the output bytes"
        );
    }
    Ok(())
}

/// `record` on a real terminal, as under sshd: the user's terminal is raw while the command
/// runs and restored after; a window-size change reaches the command's own terminal and
/// becomes an `"r"` event in the recording.
#[test]
fn on_a_terminal_resizes_become_r_events_and_raw_mode_is_restored() -> Result<()> {
    use nix::sys::termios::{tcgetattr, LocalFlags};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let tmp = tempdir();
    let node = Node::start(tmp.path(), &[])?;
    let size = |cols, rows| nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size(80, 24)), None)?;
    let before = tcgetattr(&pty.slave)?;
    assert!(before
        .local_flags
        .contains(LocalFlags::ICANON | LocalFlags::ECHO));
    let mut command = Command::new(BIN);
    command
        .args(["record", "--recorder", &node.addr, "--"])
        // Waits (up to 10 s) for its terminal to change size, then shows the size it has.
        .args([
            "sh",
            "-c",
            "i=0; while [ \"$(stty size)\" = '24 80' ] && [ $i -lt 100 ]; \
             do sleep 0.1; i=$((i+1)); done; stty size; sleep 0.2",
        ])
        .stdin(Stdio::from(pty.slave.try_clone()?))
        .stdout(Stdio::from(pty.slave.try_clone()?))
        .stderr(Stdio::from(pty.slave.try_clone()?));
    // SAFETY: only async-signal-safe calls between fork and exec: a new session whose
    // controlling terminal is the PTY on stdin, as sshd sets it up.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    // The command holds copies of the terminal's slave side until dropped, and the master
    // reads end only once no copy is left but `pty.slave`, dropped below.
    drop(command);
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        // Ends with EIO once no one holds the terminal's other side.
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut master, &mut out);
        (out, master)
    });
    node.wait_sessions("live", 1)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while tcgetattr(&pty.slave)?
        .local_flags
        .contains(LocalFlags::ICANON)
    {
        anyhow::ensure!(Instant::now() < deadline, "the terminal never went raw");
        // Polled finely so the resize below comes as soon after raw mode as it can: a
        // SIGWINCH that arrived before `record` watched for it was lost (1 in 20 runs).
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(!tcgetattr(&pty.slave)?
        .local_flags
        .contains(LocalFlags::ECHO));
    // SAFETY: TIOCSWINSZ on the PTY's slave with a valid winsize: the kernel resizes the
    // terminal and signals its foreground process group (`record`), as a terminal emulator does.
    let rc = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCSWINSZ, &size(100, 30)) };
    assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    let status = child.wait()?;
    assert!(status.success(), "record failed: {status}");
    let after = tcgetattr(&pty.slave)?;
    assert!(
        after
            .local_flags
            .contains(LocalFlags::ICANON | LocalFlags::ECHO),
        "terminal not restored"
    );
    drop(pty.slave);
    let (out, _master) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    let shown = String::from_utf8_lossy(&out);
    assert!(
        shown.contains("30 100"),
        "the command saw the new size: {shown:?}"
    );
    let sessions = node.wait_sessions("complete", 1)?;
    let recording = String::from_utf8(node.read_recording(&sessions[0])?)?;
    let header: serde_json::Value =
        serde_json::from_str(recording.lines().next().unwrap_or_default())?;
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(80), Some(24))
    );
    let resizes: Vec<serde_json::Value> = recording
        .lines()
        .skip(1)
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event[1] == "r")
        .collect();
    assert_eq!(resizes.len(), 1, "{recording}");
    assert_eq!(resizes[0][2], "100x30");
    assert!(recording.contains("30 100"), "{recording}");
    Ok(())
}
