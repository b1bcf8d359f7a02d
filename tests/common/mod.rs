//! Test harness: real `quorumcast node` processes on ephemeral ports, and real clients.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

pub mod ports;
pub mod set;

pub const BIN: &str = env!("CARGO_BIN_EXE_quorumcast");

pub fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/samples")
}

pub fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A node process with its own dst/statedir; killed on drop.
pub struct Node {
    pub child: Child,
    pub addr: String,
    pub dir: PathBuf,
    pub args: Vec<String>,
    /// stderr log file, for failure messages.
    pub log: PathBuf,
}

impl Node {
    /// Starts a node in a fresh temp dir (kept under `root`).
    pub fn start(root: &Path, extra: &[&str]) -> Result<Node> {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let listen = format!("127.0.0.1:{}", ports::free_port()?);
        Node::start_in(root.to_path_buf(), args, &listen)
    }

    /// Starts a node configured by environment variables (`(name, value)`) besides `--listen`.
    pub fn start_env(root: &Path, envs: &[(&str, String)]) -> Result<Node> {
        let listen = format!("127.0.0.1:{}", ports::free_port()?);
        Node::spawn(root.to_path_buf(), Vec::new(), &listen, envs)
    }

    pub fn start_in(dir: PathBuf, args: Vec<String>, listen: &str) -> Result<Node> {
        Node::spawn(dir, args, listen, &[])
    }

    fn spawn(
        dir: PathBuf,
        args: Vec<String>,
        listen: &str,
        envs: &[(&str, String)],
    ) -> Result<Node> {
        std::fs::create_dir_all(&dir)?;
        let log = dir.join(format!("node-{}.log", std::process::id()));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut command = Command::new(BIN);
        command.arg("node");
        let dst_in_env = envs.iter().any(|(name, _)| *name == "TSRECORDER_DST");
        if !args.iter().any(|a| a == "--dst") && !dst_in_env {
            command.arg("--dst").arg(dir.join("dst"));
        }
        command.envs(envs.iter().map(|(name, value)| (name, value)));
        let mut child = command
            .arg("--listen")
            .arg(listen)
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawn node")?;
        let stdout = child.stdout.take().context("stdout")?;
        let addr = wait_for_listening(stdout, Duration::from_secs(20)).with_context(|| {
            format!(
                "node did not start; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        Ok(Node {
            child,
            addr,
            dir,
            args,
            log,
        })
    }

    /// Restarts on the same dirs and port (after a kill).
    pub fn restart(mut self) -> Result<Node> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = self.dir.clone();
        let args = std::mem::take(&mut self.args);
        let addr = self.addr.clone();
        drop(self);
        Node::start_in(dir, args, &addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn dst(&self) -> PathBuf {
        self.dir.join("dst")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// SIGSTOP, then waits until every thread of the node is stopped: kill(2) returns once
    /// the signal is queued, and a thread running on the other CPU can go on for a moment
    /// (long enough to read, replicate and ack bytes sent right after).
    pub fn freeze(&self) -> Result<()> {
        self.signal(libc::SIGSTOP);
        let tasks = format!("/proc/{}/task", self.child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let mut all_stopped = true;
            for task in std::fs::read_dir(&tasks)? {
                let stat = std::fs::read_to_string(task?.path().join("stat")).unwrap_or_default();
                // The state follows the command name, which is in parentheses and may hold any
                // character: read it after the last `)`.
                let state = stat
                    .rsplit(')')
                    .next()
                    .and_then(|rest| rest.trim_start().chars().next());
                all_stopped &= matches!(state, Some('T' | 't') | None);
            }
            if all_stopped {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("node at {} not stopped 5 s after SIGSTOP", self.addr);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// The body of `GET path` as text; fails on an HTTP error status.
    pub fn get_text(&self, path: &str) -> Result<String> {
        Ok(String::from_utf8(
            curl(&["-sS", "--fail", &self.url(path)])?.stdout,
        )?)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/sessions` with a query string.
    pub fn sessions(&self, query: &str) -> Result<Vec<serde_json::Value>> {
        let out = curl(&[
            "-sS",
            "--fail",
            &self.url(&format!("/api/v1/sessions{query}")),
        ])?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Waits until the session list has `n` sessions in `state`.
    pub fn wait_sessions(&self, state: &str, n: usize) -> Result<Vec<serde_json::Value>> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let list = self.sessions(&format!("?state={state}"))?;
            if list.len() >= n {
                return Ok(list);
            }
            if Instant::now() > deadline {
                bail!("wanted {n} {state} sessions, have {list:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn read_recording(&self, record: &serde_json::Value) -> Result<Vec<u8>> {
        let rel = record["path"].as_str().context("path")?;
        Ok(std::fs::read(self.dst().join(rel))?)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_listening(stdout: ChildStdout, timeout: Duration) -> Result<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if let Some(addr) = line.strip_prefix("listening on http://") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    rx.recv_timeout(timeout).context("no 'listening on' line")
}

pub fn curl(args: &[&str]) -> Result<std::process::Output> {
    let out = Command::new("curl")
        .args(args)
        .output()
        .context("run curl")?;
    Ok(out)
}

/// Uploads each `(url, body)` with `curl --http2-prior-knowledge`, all at once (one thread
/// each, so that they start in the same second), and checks that every curl succeeded.
pub fn curl_uploads_at_once(uploads: Vec<(String, String)>) -> Result<()> {
    let threads: Vec<_> = uploads
        .into_iter()
        .map(|(url, body)| {
            std::thread::spawn(move || {
                curl(&[
                    "-sS",
                    "--http2-prior-knowledge",
                    "--data-binary",
                    &body,
                    &url,
                ])
            })
        })
        .collect();
    for thread in threads {
        let out = thread
            .join()
            .map_err(|_| anyhow::anyhow!("upload thread panicked"))??;
        anyhow::ensure!(out.status.success(), "curl failed: {out:?}");
    }
    Ok(())
}

/// A streaming v2 upload over h2c, written here with hyper's low-level client (not the
/// product's client), so that tests control exactly when each byte is sent. curl reads a
/// piped body with fread and holds bytes back, so it can't pace a live session.
pub struct H2Upload {
    runtime: tokio::runtime::Runtime,
    body: Option<
        tokio::sync::mpsc::Sender<
            Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
        >,
    >,
    /// Response lines (ack and error frames) as they arrive.
    pub lines: mpsc::Receiver<String>,
    /// Every byte handed to the connection, in order.
    pub sent: Vec<u8>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl H2Upload {
    pub fn v2(node: &Node) -> Result<H2Upload> {
        H2Upload::to(&node.addr)
    }

    pub fn to(addr: &str) -> Result<H2Upload> {
        H2Upload::with_headers(addr, &[]).map(|(upload, _)| upload)
    }

    /// With extra request headers (our resumable extension); also returns the response headers.
    pub fn with_headers(
        addr: &str,
        headers: &[(&str, String)],
    ) -> Result<(H2Upload, http::HeaderMap)> {
        use http_body_util::BodyExt;
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (body_tx, body_rx) = tokio::sync::mpsc::channel(64);
        let (line_tx, lines) = mpsc::channel();
        let addr = addr.to_string();
        let (ready_tx, ready_rx) = mpsc::channel();
        let task = runtime.spawn(async move {
            let stream = tokio::net::TcpStream::connect(&addr).await?;
            let (mut sender, connection) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(stream),
            )
            .await?;
            tokio::spawn(connection);
            let body = http_body_util::StreamBody::new(Box::pin(tokio_stream_from(body_rx)));
            let mut request = http::Request::post(format!("http://{addr}/v2/record"));
            for (name, value) in &headers {
                request = request.header(name.as_str(), value.as_str());
            }
            let response = sender.send_request(request.body(body)?).await?;
            let _ = ready_tx.send((response.status().as_u16(), response.headers().clone()));
            let mut body = response.into_body();
            let mut pending = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame?.into_data() else {
                    continue;
                };
                pending.extend_from_slice(&data);
                while let Some(at) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=at).collect();
                    let _ = line_tx.send(String::from_utf8_lossy(&line).trim().to_string());
                }
            }
            Ok(())
        });
        let (status, response_headers) = match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(answer) => answer,
            Err(_) => {
                let failure = runtime
                    .block_on(task)
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r);
                bail!("no response headers: {failure:?}");
            }
        };
        if status != 200 {
            bail!("upload refused with status {status}");
        }
        let upload = H2Upload {
            runtime,
            body: Some(body_tx),
            lines,
            sent: Vec::new(),
            task: Some(task),
        };
        Ok((upload, response_headers))
    }

    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let body = self.body.as_ref().context("body closed")?;
        let frame = hyper::body::Frame::data(bytes::Bytes::copy_from_slice(bytes));
        self.runtime
            .block_on(body.send(Ok(frame)))
            .map_err(|_| anyhow::anyhow!("upload ended"))?;
        self.sent.extend_from_slice(bytes);
        Ok(())
    }

    /// Waits for an ack frame of at least `n`; returns it.
    pub fn wait_ack(&self, n: u64) -> Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .with_context(|| format!("no ack of {n}"))?;
            let frame: serde_json::Value = serde_json::from_str(&line)?;
            if let Some(ack) = frame["ack"].as_u64() {
                if ack >= n {
                    return Ok(ack);
                }
            }
        }
    }

    /// Ends the body and collects the remaining response lines.
    pub fn finish(mut self) -> Result<Vec<String>> {
        drop(self.body.take());
        if let Some(task) = self.task.take() {
            self.runtime.block_on(task)??;
        }
        Ok(self.lines.try_iter().collect())
    }

    /// Drops the connection without ending the body (a client that vanished).
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// A tiny HTTP/1.1 client over TCP: sends headers and a partial chunked body, then drops.
pub fn raw_v1_then_disconnect(addr: &str, body: &[u8]) -> Result<()> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let head = format!(
        "POST /record HTTP/1.1\r\nHost: {addr}\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes())?;
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf)?;
    let got = String::from_utf8_lossy(&buf[..n]).to_string();
    if !got.starts_with("HTTP/1.1 100") {
        bail!("expected 100 Continue, got {got:?}");
    }
    stream.write_all(format!("{:x}\r\n", body.len()).as_bytes())?;
    stream.write_all(body)?;
    stream.write_all(b"\r\n")?;
    stream.flush()?;
    std::thread::sleep(Duration::from_millis(200));
    Ok(())
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("qc-test-")
        .tempdir()
        .expect("tempdir")
}
