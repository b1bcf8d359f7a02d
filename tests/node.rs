//! A single recorder node, driven by independent real clients (curl) over real sockets.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::*;

const HEADER: &str = "{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":1700000000,\"sshUser\":\"bob\",\"localUser\":\"root\",\"srcNode\":\"laptop\",\"connectionID\":\"c-1\"}\n";

#[test]
fn v1_upload_with_expect_continue_is_byte_identical() -> Result<()> {
    let tmp = tempdir();
    let node = Node::start(tmp.path(), &[])?;
    let sample = samples().join("seed-echo-hi.cast");
    let out = curl(&[
        "-sS",
        "-v",
        "--http1.1",
        "-H",
        "Expect: 100-continue",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", sample.display()),
        &node.url("/record"),
    ])?;
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(
        trace.contains("HTTP/1.1 100 Continue"),
        "no 100 Continue:\n{trace}"
    );
    assert!(trace.contains("HTTP/1.1 200"), "no final 200:\n{trace}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(summary["state"], "complete");
    let sessions = node.sessions("")?;
    assert_eq!(sessions.len(), 1);
    let stored = node.read_recording(&sessions[0])?;
    assert_eq!(sha256(&stored), sha256(&std::fs::read(&sample)?));
    assert_eq!(sessions[0]["protocol"], "v1");
    assert_eq!(sessions[0]["header"]["sshUser"], "alice");
    assert_eq!(sessions[0]["node_dir"], "127.0.0.1");
    Ok(())
}

#[test]
fn v2_upload_acks_every_byte_and_is_byte_identical() -> Result<()> {
    let tmp = tempdir();
    let node = Node::start(tmp.path(), &[])?;
    for name in [
        "seed-echo-hi.cast",
        "asciinema-cli-2.4.cast",
        "k8s-exec-header.cast",
    ] {
        let sample = samples().join(name);
        let bytes = std::fs::read(&sample)?;
        let out = curl(&[
            "-sS",
            "--http2-prior-knowledge",
            "--data-binary",
            &format!("@{}", sample.display()),
            &node.url("/v2/record"),
        ])?;
        let acks: Vec<u64> = String::from_utf8(out.stdout)?
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).map(|v| v["ack"].as_u64()))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .context("a frame that is not an ack")?;
        assert_eq!(
            acks.last().copied(),
            Some(bytes.len() as u64),
            "{name}: {acks:?}"
        );
        assert!(
            acks.windows(2).all(|w| w[0] <= w[1]),
            "acks go backwards: {acks:?}"
        );
    }
    let sessions = node.wait_sessions("complete", 3)?;
    for record in &sessions {
        let stored = node.read_recording(record)?;
        let name = match record["header"]["width"].as_u64() {
            Some(203) => "seed-echo-hi.cast",
            Some(100) => "asciinema-cli-2.4.cast",
            _ => "k8s-exec-header.cast",
        };
        assert_eq!(
            sha256(&stored),
            sha256(&std::fs::read(samples().join(name))?),
            "{name}"
        );
    }
    Ok(())
}

#[test]
fn v2_probe_is_http2_only_over_h2c() -> Result<()> {
    let tmp = tempdir();
    let node = Node::start(tmp.path(), &[])?;
    let h2 = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
        "-I",
        "--http2-prior-knowledge",
        &node.url("/v2/record"),
    ])?;
    assert_eq!(String::from_utf8(h2.stdout)?, "200 2");
    // Over HTTP/1.1 the answer is not HTTP/2, so a Tailscale client falls back to v1.
    let h1 = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version}",
        "-I",
        "--http1.1",
        &node.url("/v2/record"),
    ])?;
    assert_eq!(String::from_utf8(h1.stdout)?, "1.1");
    let event = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-I",
        "--http2-prior-knowledge",
        &node.url("/v2/event"),
    ])?;
    assert_eq!(String::from_utf8(event.stdout)?, "200");
    Ok(())
}

#[test]
fn idle_v2_session_gets_keepalive_acks() -> Result<()> {
    let tmp = tempdir();
    let node = Node::start(tmp.path(), &["--ack-interval-ms", "200"])?;
    let mut upload = H2Upload::v2(&node)?;
    upload.send(HEADER.as_bytes())?;
    let n = HEADER.len() as u64;
    upload.wait_ack(n)?;
    // Idle: no new bytes, yet frames keep coming.
    let started = Instant::now();
    let mut keepalives = 0;
    while started.elapsed() < Duration::from_millis(1100) {
        if upload
            .lines
            .recv_timeout(Duration::from_millis(500))
            .is_ok()
        {
            keepalives += 1;
        }
    }
    assert!(
        keepalives >= 3,
        "only {keepalives} keep-alive acks in 1.1 s at 200 ms"
    );
    upload.send(b"[0.5,\"o\",\"late\"]\n")?;
    let total = upload.sent.len() as u64;
    upload.wait_ack(total)?;
    upload.finish()?;
    Ok(())
}

#[test]
fn events_are_stored_and_malformed_ones_kept_with_400() -> Result<()> {
    let tmp = tempdir();
    let node = Node::start(tmp.path(), &[])?;
    let event = r#"{"type":"Kubernetes API Request","id":"e1","timestamp":"2026-11-25T10:00:00Z","request":{"method":"GET","path":"/api/v1/pods"}}"#;
    let ok = curl(&[
        "-sS",
        "-w",
        "\n%{http_code}",
        "--http2-prior-knowledge",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        event,
        &node.url("/v2/event"),
    ])?;
    let text = String::from_utf8(ok.stdout)?;
    assert!(text.ends_with("\n200"), "{text}");
    let bad = curl(&[
        "-sS",
        "-w",
        "\n%{http_code}",
        "--http2-prior-knowledge",
        "--data-binary",
        "{not json",
        &node.url("/v2/event"),
    ])?;
    let text = String::from_utf8(bad.stdout)?;
    assert!(text.ends_with("\n400"), "{text}");
    assert!(text.contains("not valid JSON"), "{text}");
    let dir = node.dst().join("127.0.0.1").join("events");
    let mut stored: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)?
        .map(|e| {
            let e = e?;
            Ok((
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path())?,
            ))
        })
        .collect::<Result<_>>()?;
    stored.sort_by_key(|(name, _)| name.ends_with(".invalid.json"));
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].1, event.as_bytes());
    assert!(stored[1].0.ends_with(".invalid.json"));
    assert_eq!(stored[1].1, b"{not json");
    Ok(())
}

/// Every kind of bad recording is stored byte-for-byte and marked with its first problem.
#[test]
fn bad_recordings_are_kept_and_marked() -> Result<()> {
    let tmp = tempdir();
    let node = Node::start(tmp.path(), &[])?;
    let mut long_line = format!("{HEADER}[0.1,\"o\",\"").into_bytes();
    long_line.extend(std::iter::repeat_n(b'x', 1024 * 1024 + 10));
    long_line.extend_from_slice(b"\"]\n[0.2,\"o\",\"after\"]\n");
    let mut bad_utf8 = HEADER.as_bytes().to_vec();
    bad_utf8.extend_from_slice(b"[0.1,\"o\",\"\xc3\x28\"]\n");
    let cases: Vec<(&str, Vec<u8>, u64, &str)> = vec![
        (
            "no header",
            b"hello world\n[0.1,\"o\",\"x\"]\n".to_vec(),
            1,
            "header",
        ),
        (
            "bad event",
            format!("{HEADER}[0.1,\"o\",\"ok\"]\n[0.2,\"o\"\n").into_bytes(),
            3,
            "event",
        ),
        ("invalid utf-8", bad_utf8, 2, "UTF-8"),
        ("long line", long_line, 2, "longer than"),
        ("binary garbage", vec![0u8, 159, 146, 150, 10, 255], 1, ""),
    ];
    for (what, body, line, reason) in &cases {
        let path = tmp.path().join("body");
        std::fs::write(&path, body)?;
        let out = curl(&[
            "-sS",
            "--http2-prior-knowledge",
            "--data-binary",
            &format!("@{}", path.display()),
            &node.url("/v2/record"),
        ])?;
        let last = String::from_utf8(out.stdout)?
            .lines()
            .last()
            .map(str::to_string)
            .unwrap_or_default();
        assert_eq!(
            last,
            format!("{{\"ack\":{}}}", body.len()),
            "{what}: every byte acked"
        );
        let sessions = node.sessions("?state=invalid")?;
        let record = &sessions[0];
        assert_eq!(
            node.read_recording(record)?,
            *body,
            "{what}: stored as sent"
        );
        assert_eq!(
            record["problem"]["line"].as_u64(),
            Some(*line),
            "{what}: {record}"
        );
        let text = record["problem"]["reason"].as_str().unwrap_or_default();
        assert!(text.contains(reason), "{what}: reason {text:?}");
    }
    assert_eq!(node.sessions("?state=invalid")?.len(), cases.len());
    let metrics = node.get_text("/metrics")?;
    assert!(
        metrics.contains(&format!(
            "quorumcast_invalid_recordings_total {}",
            cases.len()
        )),
        "{metrics}"
    );
    Ok(())
}

#[test]
fn client_disconnect_mid_line_keeps_bytes_and_aborts() -> Result<()> {
    let tmp = tempdir();
    let node = Node::start(tmp.path(), &[])?;
    let partial = format!("{HEADER}[0.1,\"o\",\"cut here");
    raw_v1_then_disconnect(&node.addr, partial.as_bytes())?;
    let sessions = node.wait_sessions("aborted", 1)?;
    assert_eq!(node.read_recording(&sessions[0])?, partial.as_bytes());
    assert_eq!(sessions[0]["bytes"].as_u64(), Some(partial.len() as u64));
    assert_eq!(sessions[0]["problem"]["line"].as_u64(), Some(2));
    let log = node.log_text();
    assert!(
        log.contains("WARN") && log.contains("session ends with a problem"),
        "a cut stream is logged as a warning:\n{log}"
    );
    let metrics = node.get_text("/metrics")?;
    assert!(
        metrics.contains("quorumcast_sessions_ended_total{state=\"aborted\"} 1"),
        "{metrics}"
    );
    Ok(())
}

#[test]
fn slow_header_is_cut_after_the_header_timeout() -> Result<()> {
    let tmp = tempdir();
    let node = Node::start(tmp.path(), &["--header-timeout-secs", "1"])?;
    let mut upload = H2Upload::v2(&node)?;
    upload.send(b"{\"version\":2,")?;
    let started = Instant::now();
    let lines: Vec<String> = upload
        .lines
        .iter()
        .take_while(|l| !l.contains("error"))
        .collect();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!lines.is_empty());
    let sessions = node.wait_sessions("invalid", 1)?;
    assert_eq!(node.read_recording(&sessions[0])?, b"{\"version\":2,");
    assert!(sessions[0]["problem"]["reason"]
        .as_str()
        .unwrap_or("")
        .contains("header"));
    let log = node.log_text();
    assert!(
        log.contains("WARN") && log.contains("no complete header line"),
        "a header timeout is logged as a warning:\n{log}"
    );
    let metrics = node.get_text("/metrics")?;
    assert!(
        metrics.contains("quorumcast_invalid_recordings_total 1"),
        "a header timeout counts as an invalid recording:\n{metrics}"
    );
    Ok(())
}

#[test]
fn full_node_refuses_fast_without_100_continue() -> Result<()> {
    let tmp = tempdir();
    let node = Node::start(tmp.path(), &["--max-sessions", "1"])?;
    let mut holder = H2Upload::v2(&node)?;
    holder.send(HEADER.as_bytes())?;
    holder.wait_ack(HEADER.len() as u64)?;
    let started = Instant::now();
    let out = curl(&[
        "-sS",
        "-v",
        "--http1.1",
        "-H",
        "Expect: 100-continue",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "x",
        &node.url("/record"),
    ])?;
    let elapsed = started.elapsed();
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(trace.contains("HTTP/1.1 503"), "{trace}");
    assert!(!trace.contains("100 Continue"), "{trace}");
    assert!(
        elapsed < Duration::from_millis(900),
        "refusal took {elapsed:?}"
    );
    let metrics = node.get_text("/metrics")?;
    assert!(
        metrics.contains("quorumcast_refusals_total{reason=\"too_many_sessions\"} 1"),
        "{metrics}"
    );
    holder.finish()?;
    Ok(())
}

/// Regression (CI, cluster test): a v2 refusal sent while curl was still uploading was
/// followed by a stream reset, and curl 7.88 sometimes reported "Stream error in the
/// HTTP/2 framing layer" instead of the 503. A refused short upload must read as a 503,
/// every time.
#[test]
fn a_refused_v2_upload_reads_as_a_clean_503() -> Result<()> {
    let tmp = tempdir();
    let node = Node::start(tmp.path(), &["--max-sessions", "1"])?;
    let mut holder = H2Upload::v2(&node)?;
    holder.send(HEADER.as_bytes())?;
    holder.wait_ack(HEADER.len() as u64)?;
    let body = tmp.path().join("upload.cast");
    let mut content = HEADER.to_string();
    for i in 0..400 {
        content.push_str(&format!(
            "[{i}.0,\"o\",\"line {i} of a refused upload\\r\\n\"]\n"
        ));
    }
    std::fs::write(&body, &content)?;
    for attempt in 0..20 {
        let started = Instant::now();
        let out = curl(&[
            "-sS",
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_code}",
            "--data-binary",
            &format!("@{}", body.display()),
            &node.url("/v2/record"),
        ])?;
        let elapsed = started.elapsed();
        let text = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "attempt {attempt}: curl failed: {stderr}"
        );
        assert!(text.ends_with("\n503"), "attempt {attempt}: {text}");
        assert!(
            text.contains("concurrent sessions"),
            "attempt {attempt}: {text}"
        );
        assert!(
            elapsed < Duration::from_millis(900),
            "attempt {attempt}: refusal took {elapsed:?}"
        );
    }
    holder.finish()?;
    Ok(())
}

#[test]
fn kill_9_mid_session_keeps_acked_bytes_and_marks_aborted_on_restart() -> Result<()> {
    let tmp = tempdir();
    let mut node = Node::start(tmp.path(), &[])?;
    let mut upload = H2Upload::v2(&node)?;
    upload.send(HEADER.as_bytes())?;
    for i in 0..50 {
        upload.send(format!("[{}.0,\"o\",\"line {i}\\r\\n\"]\n", i).as_bytes())?;
    }
    let acked = upload.wait_ack(upload.sent.len() as u64)?;
    node.kill9();
    let sent = upload.sent.clone();
    upload.abort();
    let node = node.restart()?;
    let sessions = node.sessions("")?;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["state"], "aborted");
    let stored = node.read_recording(&sessions[0])?;
    assert!(stored.len() as u64 >= acked);
    assert_eq!(&stored[..], &sent[..stored.len()]);
    assert_eq!(sessions[0]["bytes"].as_u64(), Some(stored.len() as u64));
    assert!(node.log_text().contains("marked aborted"));
    // About the session, not a line of it (line 0).
    assert_eq!(
        sessions[0]["problem"],
        serde_json::json!({"line": 0, "reason": "recorder stopped while the session was live"})
    );
    Ok(())
}

#[test]
fn sigterm_syncs_marks_sessions_and_exits_zero() -> Result<()> {
    let tmp = tempdir();
    let mut node = Node::start(tmp.path(), &[])?;
    let mut upload = H2Upload::v2(&node)?;
    upload.send(HEADER.as_bytes())?;
    upload.send(b"[0.1,\"o\",\"bye\"]\n")?;
    upload.wait_ack(upload.sent.len() as u64)?;
    node.signal(libc::SIGTERM);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = node.child.try_wait()? {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "node did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit {status}");
    let last: Vec<String> = upload.lines.try_iter().collect();
    assert!(
        last.iter().any(|l| l.contains("shut down")),
        "no error frame: {last:?}"
    );
    let node = node.restart()?;
    let sessions = node.sessions("")?;
    assert_eq!(sessions[0]["state"], "aborted");
    assert_eq!(node.read_recording(&sessions[0])?, upload.sent);
    assert!(
        !node.log_text().contains("marked aborted"),
        "session was already marked before exit"
    );
    Ok(())
}

#[test]
fn session_list_filters_and_metrics() -> Result<()> {
    let tmp = tempdir();
    let node = Node::start(tmp.path(), &[])?;
    let sample = samples().join("seed-echo-hi.cast");
    curl(&[
        "-sS",
        "--http2-prior-knowledge",
        "--data-binary",
        &format!("@{}", sample.display()),
        &node.url("/v2/record"),
    ])?;
    let body = format!("{HEADER}[0.1,\"o\",\"x\"]\n");
    curl(&[
        "-sS",
        "--http2-prior-knowledge",
        "--data-binary",
        &body,
        &node.url("/v2/record"),
    ])?;
    node.wait_sessions("complete", 2)?;
    assert_eq!(node.sessions("?user=alice")?.len(), 1);
    assert_eq!(node.sessions("?user=root")?.len(), 1);
    assert_eq!(node.sessions("?node=127.0.0.1")?.len(), 2);
    assert_eq!(node.sessions("?node=10.0.0.1")?.len(), 0);
    assert_eq!(node.sessions("?since=2999-01-01T00:00:00Z")?.len(), 0);
    let all = node.sessions("?since=2000-01-01T00:00:00Z")?;
    assert_eq!(all.len(), 2);
    assert!(
        all[0]["started_at"].as_str() >= all[1]["started_at"].as_str(),
        "newest first"
    );
    assert_eq!(node.sessions("?until=2000-01-01T00:00:00Z")?.len(), 0);
    assert_eq!(node.sessions("?until=2999-01-01T00:00:00Z")?.len(), 2);
    let older = all[1]["started_at"].as_str().unwrap_or_default();
    let upto_older = node.sessions(&format!("?until={}", older.replace('+', "%2B")))?;
    assert_eq!(upto_older.last().map(|r| &r["id"]), Some(&all[1]["id"]));
    if all[0]["started_at"] != all[1]["started_at"] {
        assert_eq!(
            upto_older.len(),
            1,
            "until excludes the newer: {upto_older:?}"
        );
    }
    let bad = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &node.url("/api/v1/sessions?state=bogus"),
    ])?;
    assert_eq!(String::from_utf8(bad.stdout)?, "400");
    let metrics = node.get_text("/metrics")?;
    for name in [
        "quorumcast_sessions_live 0",
        "quorumcast_sessions_total{protocol=\"v2\"} 2",
        "quorumcast_ingest_bytes_total",
        "quorumcast_acks_sent_total",
        "quorumcast_fsync_seconds_bucket",
        // The repository's builds (.cargo/config.toml) run tokio without its LIFO slot.
        "tokio_lifo_slot=\"off\"",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    let health = node.get_text("/healthz")?;
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    assert!(
        health.contains("\"hostname\":\"recorder\""),
        "default hostname: {health}"
    );
    Ok(())
}

/// tsrecorder's environment variables configure the node without any flag, so it is a
/// drop-in: `TSRECORDER_DST`, `TS_STATE_DIR`, `TSRECORDER_HOSTNAME`.
#[test]
fn tsrecorder_environment_variables_configure_the_node() -> Result<()> {
    let tmp = tempdir();
    let state = tmp.path().join("state-from-env");
    let envs = [
        (
            "TSRECORDER_DST",
            tmp.path().join("dst").display().to_string(),
        ),
        ("TS_STATE_DIR", state.display().to_string()),
        ("TSRECORDER_HOSTNAME", "rec-from-env".to_string()),
    ];
    let node = Node::start_env(tmp.path(), &envs)?;
    let health = node.get_text("/healthz")?;
    assert!(health.contains("\"hostname\":\"rec-from-env\""), "{health}");
    let body = format!("{HEADER}[0.1,\"o\",\"x\"]\n");
    curl(&[
        "-sS",
        "--http2-prior-knowledge",
        "--data-binary",
        &body,
        &node.url("/v2/record"),
    ])?;
    let sessions = node.wait_sessions("complete", 1)?;
    assert_eq!(node.read_recording(&sessions[0])?, body.as_bytes());
    assert!(
        state.join("index.redb").is_file(),
        "index under TS_STATE_DIR"
    );
    assert!(
        !node.dst().join("state").exists(),
        "no index under the default statedir"
    );
    Ok(())
}

/// An event over the in-memory limit is still stored whole, as received, and answered 413.
#[test]
fn oversized_event_is_stored_whole_with_413() -> Result<()> {
    let tmp = tempdir();
    let node = Node::start(tmp.path(), &[])?;
    let mut event = br#"{"type":"Kubernetes API Request","request":{"body":""#.to_vec();
    event.extend(std::iter::repeat_n(b'a', 1536 * 1024));
    event.extend_from_slice(b"\"}}");
    let path = tmp.path().join("event.json");
    std::fs::write(&path, &event)?;
    let out = curl(&[
        "-sS",
        "-w",
        "\n%{http_code}",
        "--http2-prior-knowledge",
        "--data-binary",
        &format!("@{}", path.display()),
        &node.url("/v2/event"),
    ])?;
    let text = String::from_utf8(out.stdout)?;
    assert!(text.ends_with("\n413"), "{text}");
    assert!(text.contains("stored as"), "{text}");
    let dir = node.dst().join("127.0.0.1").join("events");
    let stored: Vec<std::fs::DirEntry> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
    assert_eq!(stored.len(), 1);
    let name = stored[0].file_name().to_string_lossy().into_owned();
    assert!(name.ends_with(".invalid.json"), "{name}");
    assert_eq!(sha256(&std::fs::read(stored[0].path())?), sha256(&event));
    let metrics = node.get_text("/metrics")?;
    assert!(
        metrics.contains("quorumcast_events_total{result=\"too_large\"} 1"),
        "{metrics}"
    );
    Ok(())
}

#[test]
fn s3_dst_is_refused_with_a_clear_error() -> Result<()> {
    let out = std::process::Command::new(BIN)
        .args(["node", "--dst", "s3://bucket/prefix"])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("S3 storage is not available in this build yet"),
        "{err}"
    );
    Ok(())
}

/// A stand-in for tailscaled's LocalAPI socket (an external dependency, not the thing
/// under test): answers `whois` with a hostile stable ID to check path sanitising.
fn fake_tailscaled(socket: &std::path::Path, stable_id: &'static str) -> Result<()> {
    use std::io::{Read, Write};
    let listener = std::os::unix::net::UnixListener::bind(socket)?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let asked_whois = String::from_utf8_lossy(&request)
                .starts_with("GET /localapi/v0/whois?addr=127.0.0.1:");
            let body = if asked_whois {
                serde_json::json!({"Node": {"StableID": stable_id}}).to_string()
            } else {
                "{}".to_string()
            };
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    Ok(())
}

#[test]
fn node_dirs_from_tailscaled_whois_are_sanitized() -> Result<()> {
    let tmp = tempdir();
    let socket = tmp.path().join("tailscaled.sock");
    fake_tailscaled(&socket, "../../../etc/evil")?;
    let node = Node::start(
        tmp.path(),
        &["--tailscaled-socket", socket.to_str().context("utf8")?],
    )?;
    let sample = samples().join("seed-echo-hi.cast");
    let out = curl(&[
        "-sS",
        "--http2-prior-knowledge",
        "--data-binary",
        &format!("@{}", sample.display()),
        &node.url("/v2/record"),
    ])?;
    let text = String::from_utf8(out.stdout)?;
    assert!(text.contains("\"ack\":1703"), "{text}\n{}", node.log_text());
    let event = curl(&[
        "-sS",
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        "--data-binary",
        "{}",
        &node.url("/v2/event"),
    ])?;
    assert_eq!(String::from_utf8(event.stdout)?, "200");
    let sessions = node.sessions("")?;
    let dir = sessions[0]["node_dir"].as_str().context("node_dir")?;
    assert_eq!(dir, ".._.._.._etc_evil");
    // Everything the node wrote is inside dst, in that one directory.
    let entries: Vec<String> = std::fs::read_dir(node.dst())?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    let mut entries = entries;
    entries.sort();
    assert_eq!(entries, [".._.._.._etc_evil", "state"]);
    assert!(!tmp.path().join("etc").exists());
    Ok(())
}

/// Sessions from one SSH server that start in the same second get one file each: the
/// second and later ones `<time>-N.cast`, none overwriting another.
#[test]
fn sessions_started_in_the_same_second_never_share_a_file() -> Result<()> {
    let tmp = tempdir();
    let node = Node::start(tmp.path(), &[])?;
    let bodies: Vec<String> = (0..8)
        .map(|k| format!("{HEADER}[0.1,\"o\",\"marker-{k}\"]\n"))
        .collect();
    curl_uploads_at_once(
        bodies
            .iter()
            .map(|body| (node.url("/v2/record"), body.clone()))
            .collect(),
    )?;
    let sessions = node.wait_sessions("complete", bodies.len())?;
    let mut paths: Vec<&str> = sessions
        .iter()
        .map(|s| s["path"].as_str().unwrap_or_default())
        .collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), bodies.len(), "one file per session: {paths:?}");
    let mut stored: Vec<Vec<u8>> = sessions
        .iter()
        .map(|s| node.read_recording(s))
        .collect::<Result<_>>()?;
    stored.sort();
    let mut sent: Vec<Vec<u8>> = bodies.iter().map(|b| b.clone().into_bytes()).collect();
    sent.sort();
    assert_eq!(stored, sent, "every session's bytes, none overwritten");
    // `<RFC 3339 second>Z.cast` for the first of a second, `...Z-<n>.cast` after it.
    let shared_second = paths.iter().filter(|p| p.contains("Z-")).count();
    assert!(
        shared_second > 0,
        "no two of {} sessions started in the same second, so nothing was tested: {paths:?}",
        bodies.len()
    );
    Ok(())
}

/// An ack of N is sent only after an `fdatasync` covering the first N bytes has returned.
/// A shim preloaded into the node holds every `fdatasync` while a gate file is absent; the
/// bytes sent meanwhile must stay unacknowledged (keep-alive acks repeat the old offset)
/// until the gate opens.
#[test]
fn acks_wait_for_fdatasync_to_return() -> Result<()> {
    let tmp = tempdir();
    let (node, gate) = start_with_fdatasync_gate(tmp.path())?;
    let mut upload = H2Upload::v2(&node)?;
    upload.send(HEADER.as_bytes())?;
    let header_len = HEADER.len() as u64;
    upload.wait_ack(header_len)?;
    // From here on every fdatasync the node starts waits; none that started earlier can
    // cover bytes written after this point.
    std::fs::remove_file(&gate)?;
    let line = b"[0.1,\"o\",\"held until the gate opens\"]\n";
    upload.send(line)?;
    let total = header_len + line.len() as u64;
    let held_until = Instant::now() + Duration::from_millis(2500);
    let mut acks_meanwhile = Vec::new();
    while let Some(left) = held_until.checked_duration_since(Instant::now()) {
        match upload.lines.recv_timeout(left) {
            Ok(frame) => {
                let frame: serde_json::Value = serde_json::from_str(&frame)?;
                acks_meanwhile.push(frame["ack"].as_u64().context("an ack frame")?);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("upload ended"),
        }
    }
    assert!(
        acks_meanwhile.iter().all(|ack| *ack <= header_len),
        "bytes acked before their fdatasync returned: {acks_meanwhile:?}"
    );
    assert!(
        acks_meanwhile.len() >= 2,
        "keep-alive acks stopped while the sync was held: {acks_meanwhile:?}"
    );
    std::fs::write(&gate, b"")?;
    assert_eq!(upload.wait_ack(total)?, total);
    upload.finish()?;
    Ok(())
}

/// During a shutdown the node refuses new connections at once, while the sessions it has
/// finish: their last sync (held here by the fdatasync gate) keeps the process alive, yet a
/// new client's connect is refused rather than left waiting, so it moves on to another
/// recorder. Once the sync returns the node exits 0 and every byte read is stored.
#[test]
fn sigterm_refuses_new_connections_while_open_sessions_finish() -> Result<()> {
    let tmp = tempdir();
    let (mut node, gate) = start_with_fdatasync_gate(tmp.path())?;
    let mut upload = H2Upload::v2(&node)?;
    upload.send(HEADER.as_bytes())?;
    upload.wait_ack(HEADER.len() as u64)?;
    std::fs::remove_file(&gate)?;
    upload.send(b"[0.1,\"o\",\"synced during the shutdown\"]\n")?;
    let sent = upload.sent.len();
    let series = format!("quorumcast_ingest_bytes_total {sent}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.get_text("/metrics")?.lines().any(|l| l == series) {
        anyhow::ensure!(Instant::now() < deadline, "the node never read the line");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A client still sending its request keeps its connection open (up to the 10 s
    // header read time): the listener must not wait for it.
    let mut slow = std::net::TcpStream::connect(&node.addr)?;
    std::io::Write::write_all(&mut slow, b"POST /record HTTP/1.1\r\nHost: x\r\n")?;
    let addr: std::net::SocketAddr = node.addr.parse()?;
    node.signal(libc::SIGTERM);
    let sigterm_at = Instant::now();
    // Refused once the listener is closed; the process stays while the sync is held. (A
    // listener that lingers takes connects into its backlog, then leaves them hanging; one
    // caught in its backlog as it closes is reset.)
    let refused = loop {
        use std::io::ErrorKind::{ConnectionRefused, ConnectionReset, TimedOut};
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Err(e) if e.kind() == ConnectionRefused => break e,
            Err(e) if ![TimedOut, ConnectionReset].contains(&e.kind()) => {
                bail!("connect failed: {e}")
            }
            _ => {
                anyhow::ensure!(
                    sigterm_at.elapsed() < Duration::from_secs(5),
                    "still accepting 5 s after SIGTERM"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    drop(slow);
    assert!(
        node.child.try_wait()?.is_none(),
        "the node exited before its session synced ({refused})"
    );
    let started = Instant::now();
    std::fs::write(&gate, b"")?;
    let status = loop {
        if let Some(status) = node.child.try_wait()? {
            break status;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "node did not exit once the sync returned"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit {status}");
    let node = node.restart()?;
    let sessions = node.sessions("")?;
    assert_eq!(sessions[0]["state"], "aborted");
    assert_eq!(node.read_recording(&sessions[0])?, upload.sent);
    Ok(())
}

/// Starts a node whose every `fdatasync` waits while the returned gate file is absent (it
/// exists at first: remove it to hold syncs, write it to let them go).
fn start_with_fdatasync_gate(dir: &std::path::Path) -> Result<(Node, std::path::PathBuf)> {
    let shim = build_fdatasync_gate(dir)?;
    let gate = dir.join("fdatasync-open");
    std::fs::write(&gate, b"")?;
    let envs = [
        ("LD_PRELOAD", shim.display().to_string()),
        ("QC_FDATASYNC_GATE", gate.display().to_string()),
    ];
    Ok((Node::start_env(dir, &envs)?, gate))
}

/// Builds (with the system's C compiler) a shared object whose `fdatasync` waits until the
/// file named by `QC_FDATASYNC_GATE` exists, then calls the real one.
fn build_fdatasync_gate(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let source = dir.join("fdatasync_gate.c");
    std::fs::write(
        &source,
        r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>
int fdatasync(int fd) {
    static int (*real)(int);
    const char *gate = getenv("QC_FDATASYNC_GATE");
    while (gate && access(gate, F_OK) != 0) usleep(5000);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
"#,
    )?;
    let shim = dir.join("fdatasync_gate.so");
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&shim)
        .arg(&source)
        .arg("-ldl")
        .output()
        .context("a C compiler (cc) is needed; .ci/run installs gcc")?;
    anyhow::ensure!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(shim)
}

/// A new session may not reuse an id the node already has (our extension's
/// `Quorumcast-Session`): `409`, and the earlier session's record and bytes stay.
#[test]
fn a_new_session_reusing_a_known_id_gets_409_and_changes_nothing() -> Result<()> {
    let tmp = tempdir();
    let node = Node::start(tmp.path(), &[])?;
    let upload = |body: &str| -> Result<String> {
        let out = curl(&[
            "-sS",
            "-w",
            "\n%{http_code}",
            "--http2-prior-knowledge",
            "-H",
            "Quorumcast-Session: reused-id-1",
            "--data-binary",
            body,
            &node.url("/v2/record"),
        ])?;
        Ok(String::from_utf8(out.stdout)?)
    };
    let first = format!("{HEADER}[0.1,\"o\",\"first\"]\n");
    let answer = upload(&first)?;
    assert!(answer.ends_with("\n200"), "{answer}");
    let sessions = node.wait_sessions("complete", 1)?;
    let answer = upload(&format!("{HEADER}[0.1,\"o\",\"second\"]\n"))?;
    assert!(answer.ends_with("\n409"), "{answer}");
    assert!(answer.contains("already exists"), "{answer}");
    let after = node.sessions("")?;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["id"], "reused-id-1");
    assert_eq!(after[0]["path"], sessions[0]["path"]);
    assert_eq!(node.read_recording(&after[0])?, first.as_bytes());
    let metrics = node.get_text("/metrics")?;
    assert!(
        metrics.contains("quorumcast_refusals_total{reason=\"conflict\"} 1"),
        "{metrics}"
    );
    Ok(())
}
