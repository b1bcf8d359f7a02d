//! Single-node ingest benchmark (issue 2): one real `quorumcast node` process, real h2c
//! clients, realistic asciicast v2 content.
//!
//! Run with `cargo bench --bench ingest` (add `-- --quick` for a small run, `-- --help`
//! for the knobs). `cargo bench` builds the `quorumcast` binary with the bench profile
//! (= release) and hands its path to this file as `CARGO_BIN_EXE_quorumcast`, so the node
//! measured is always the current source.
//!
//! What is measured (see the comment on each function for exactly what is timed):
//! 1. bulk ingest: aggregate MB/s of 1, 16, 256 concurrent `POST /v2/record` streams;
//! 2. the limit: the same bytes written by a plain sequential writer + one fdatasync; and
//!    the ceiling: the same bytes through one loopback TCP connection into a file, the
//!    least any recorder on this machine must do with them (no HTTP, check, acks);
//! 3. ack latency of paced streams, alone and while bulk load runs;
//! 4. node RSS per idle v2 session.
//!
//! The bench writes only under a temp dir (default under /var/tmp) that it removes at the
//! end, and kills every node it started, also on error or Ctrl-C.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use futures_util::future;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use common::content::Corpus;
use common::host::{command_output, git_commit, loadavg};

const NODE_BIN: &str = env!("CARGO_BIN_EXE_quorumcast");
const MIB: u64 = 1024 * 1024;
/// MB/s in this report are 10^6 bytes per second.
const MB: f64 = 1e6;

// ---------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------

const USAGE: &str = "\
usage: cargo bench --bench ingest [-- OPTIONS]
  --quick                 small run: 64 MiB per bulk row, 1 run, 3 s paced, 200 idle sessions
  --total-mib N           bytes per bulk row, split evenly over its streams (default 1024)
  --streams A,B,..        concurrency levels of the bulk rows (default 1,16,256)
  --runs N                rounds over all bulk rows, each a limit + recorder run per row (3)
  --max-conns N           h2 connections per bulk row; streams beyond are multiplexed (64)
  --chunk-kib N           body chunk size handed to the h2 client, whole lines (16)
  --paced-streams N       paced streams for ack latency (16)
  --paced-interval-ms N   one ~200-byte line per stream every N ms (10)
  --paced-secs N          duration of the paced-only latency run (10)
  --idle-sessions N       idle v2 sessions for the RSS measurement (1000)
  --dst-root DIR          where the temp dir (node --dst, limit file) goes (/var/tmp)
  --node-log FILTER       RUST_LOG of the node (info, the default of the binary)
  --node-bin PATH         measure this quorumcast binary instead of the one cargo built
  --client-threads N      tokio worker threads of the load generator (1)
  --seed N                seed of the content generator (42)
  --no-prime              don't write and delete a file of the run's size before each bulk
                          measurement (see `settle`)";

#[derive(Debug, Clone)]
struct Options {
    total_bytes: u64,
    streams: Vec<usize>,
    runs: usize,
    max_conns: usize,
    chunk_bytes: usize,
    paced_streams: usize,
    paced_interval: Duration,
    paced_secs: u64,
    idle_sessions: usize,
    dst_root: PathBuf,
    node_log: String,
    node_bin: PathBuf,
    client_threads: usize,
    seed: u64,
    /// Whether each bulk measurement starts on pages the guest already holds (`settle`).
    prime: bool,
}

impl Options {
    fn parse() -> Result<Options> {
        let mut o = Options {
            total_bytes: 1024 * MIB,
            streams: vec![1, 16, 256],
            runs: 3,
            max_conns: 64,
            chunk_bytes: 16 * 1024,
            paced_streams: 16,
            paced_interval: Duration::from_millis(10),
            paced_secs: 10,
            idle_sessions: 1000,
            dst_root: PathBuf::from("/var/tmp"),
            node_log: "info".into(),
            node_bin: PathBuf::from(NODE_BIN),
            client_threads: 1,
            seed: 42,
            prime: true,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                // `cargo bench` passes --bench to harness = false targets.
                "--bench" => {}
                "--no-prime" => o.prime = false,
                "--quick" => {
                    o.total_bytes = 64 * MIB;
                    o.runs = 1;
                    o.paced_secs = 3;
                    o.idle_sessions = 200;
                }
                "--total-mib" => o.total_bytes = value()?.parse::<u64>()? * MIB,
                "--streams" => {
                    o.streams = value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?
                }
                "--runs" => o.runs = value()?.parse()?,
                "--max-conns" => o.max_conns = value()?.parse()?,
                "--chunk-kib" => o.chunk_bytes = value()?.parse::<usize>()? * 1024,
                "--paced-streams" => o.paced_streams = value()?.parse()?,
                "--paced-interval-ms" => {
                    o.paced_interval = Duration::from_millis(value()?.parse()?)
                }
                "--paced-secs" => o.paced_secs = value()?.parse()?,
                "--idle-sessions" => o.idle_sessions = value()?.parse()?,
                "--dst-root" => o.dst_root = PathBuf::from(value()?),
                "--node-log" => o.node_log = value()?,
                "--node-bin" => o.node_bin = PathBuf::from(value()?),
                "--client-threads" => o.client_threads = value()?.parse()?,
                "--seed" => o.seed = value()?.parse()?,
                "--help" | "-h" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        ensure!(
            o.runs > 0 && o.max_conns > 0 && o.chunk_bytes > 0 && o.client_threads > 0,
            "sizes must be positive"
        );
        ensure!(
            o.streams.iter().all(|&s| s > 0),
            "stream counts must be positive"
        );
        Ok(o)
    }
}

// ---------------------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------------------

fn main() -> std::process::ExitCode {
    let result = Options::parse().and_then(|options| {
        raise_fd_limit()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.client_threads)
            .enable_all()
            .build()
            .context("client runtime")?;
        runtime.block_on(async {
            tokio::select! {
                result = run(options) => result,
                _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            }
        })
        // Dropping the future above dropped the nodes (killed) and the temp dir (removed).
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingest bench failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(o: Options) -> Result<()> {
    // Declared first, dropped last: nodes are killed before their directories go.
    let work = tempfile::Builder::new()
        .prefix("qc-bench-")
        .tempdir_in(&o.dst_root)
        .with_context(|| format!("temp dir under {}", o.dst_root.display()))?;
    let machine = Machine::describe(work.path())?;
    machine.print(&o, work.path());
    let corpus = Arc::new(Corpus::generate(o.seed, 32 * MIB as usize, o.chunk_bytes));

    // A private copy: a rebuild in the shared target dir during the run can't swap it.
    let bin = work.path().join("quorumcast");
    std::fs::copy(&o.node_bin, &bin).with_context(|| format!("copy {}", o.node_bin.display()))?;
    let mut node = Node::start(&bin, &work.path().join("node-a"), &o.node_log)?;
    progress(&format!("node pid {} on {}", node.pid(), node.addr));
    warm_up(&node, &corpus, &o).await?;
    let bulk = bulk_rows(&node, &corpus, &o, work.path()).await?;
    let latency = latency_rows(&node, &corpus, &o).await?;
    let peak_rss = node.status_kib("VmHWM")?;
    warn_on_error(node.stop());

    // A fresh node, so that memory freed by the bulk rows does not hide the idle sessions' cost.
    let mut idle_node = Node::start(&bin, &work.path().join("node-b"), &o.node_log)?;
    let idle = idle_rss(&idle_node, &o).await?;
    warn_on_error(idle_node.stop());

    print_report(&o, &bulk, peak_rss, &latency, &idle, &machine);
    Ok(())
}

fn progress(message: &str) {
    eprintln!("[ingest bench] {message}");
}

/// A node that does not stop cleanly is worth a warning, not the loss of the figures.
fn warn_on_error(result: Result<()>) {
    if let Err(e) = result {
        progress(&format!("warning: {e:#}"));
    }
}

/// One untimed stream so that the first measured row does not pay for lazy start-up.
async fn warm_up(node: &Node, corpus: &Arc<Corpus>, o: &Options) -> Result<()> {
    let bytes = (o.total_bytes / 8).clamp(MIB, 64 * MIB);
    bulk_ingest(node, corpus, 1, bytes, o.max_conns, 0).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 1 + 2: bulk ingest vs. the sequential-writer limit
// ---------------------------------------------------------------------------------------

struct BulkRow {
    streams: usize,
    conns: usize,
    /// Bytes of one run (the same in every run).
    bytes: u64,
    /// (recorder, limit, ceiling) wall time of each run.
    runs: Vec<(Duration, Duration, Duration)>,
    /// CPU seconds used during all recorder runs of the row.
    cpu: CpuTimes,
    /// Group commit over all recorder runs of the row.
    commit: CommitStats,
}

impl BulkRow {
    fn new(streams: usize) -> BulkRow {
        BulkRow {
            streams,
            conns: 0,
            bytes: 0,
            runs: Vec::new(),
            cpu: CpuTimes::default(),
            commit: CommitStats::default(),
        }
    }

    fn add(&mut self, run: BulkRun, limit: Duration, ceiling: Duration) {
        (self.conns, self.bytes) = (run.conns, run.bytes);
        self.runs.push((run.elapsed, limit, ceiling));
        self.cpu = self.cpu.plus(&run.cpu);
        self.commit = self.commit.plus(&run.commit);
    }

    fn recorder_wall(&self) -> f64 {
        self.runs.iter().map(|(r, _, _)| r.as_secs_f64()).sum()
    }
}

/// `runs` rounds; in each, for every concurrency level in turn: the limit, then the
/// recorder, on the same bytes. Rounds go over all levels so that slow drifts of the disk
/// (this VM's host cache) hit every level alike instead of the first or last one.
async fn bulk_rows(
    node: &Node,
    corpus: &Arc<Corpus>,
    o: &Options,
    work: &Path,
) -> Result<Vec<BulkRow>> {
    let mut rows: Vec<BulkRow> = o.streams.iter().map(|&s| BulkRow::new(s)).collect();
    let mut stored = cast_bytes(&node.dst())?;
    for round in 1..=o.runs {
        for row in rows.iter_mut() {
            let streams = row.streams;
            settle(work, o).await?;
            let limit = common::sequential_limit(work, o.total_bytes).await?;
            settle(work, o).await?;
            let ceiling = tcp_ceiling(work, o.total_bytes, o.chunk_bytes).await?;
            settle(work, o).await?;
            let total = o.total_bytes;
            let run = bulk_ingest(node, corpus, streams, total, o.max_conns, 1000).await?;
            stored = check_stored(&node.dst(), stored, run.bytes)?;
            progress(&format!(
                "run {round}/{}, {streams} streams: recorder {:.1} MB/s, limit {:.1} MB/s, \
                 ceiling {:.1} MB/s",
                o.runs,
                mbps(run.bytes, run.elapsed),
                mbps(total, limit),
                mbps(total, ceiling)
            ));
            row.add(run, limit, ceiling);
        }
    }
    Ok(rows)
}

/// Before each bulk measurement: write back what earlier ones left dirty, let the disk
/// rest, then (unless `--no-prime`) write a file of the run's size without syncing it and
/// delete it at once.
///
/// Why the priming: this VM's balloon device reports free guest pages back to the host,
/// and the first write into such a page pays the host's fault inside the page-cache copy.
/// Whether a writer got pages just freed by the measurement before it (fast) or returned
/// ones (slow, 2-4x) depended on the order of the measurements: the limit ran at 0.3 or
/// 2 GB/s from one pair to the next. Priming gives every measurement (limit, ceiling,
/// recorder) the same start, on pages the guest holds, as on a machine without a balloon.
/// The file is deleted before writeback could start, so no disk write happens for it.
async fn settle(dir: &Path, o: &Options) -> Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    let _ = tokio::task::spawn_blocking(|| unsafe { libc::sync() }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    if !o.prime {
        return Ok(());
    }
    let (path, bytes) = (dir.join("prime.dat"), o.total_bytes);
    tokio::task::spawn_blocking(move || -> Result<()> {
        let block = vec![0u8; 64 * 1024];
        let mut file = std::fs::File::create(&path).context("create prime file")?;
        common::write_repeated(&mut file, &block, bytes)?;
        drop(file);
        std::fs::remove_file(&path).context("remove prime file")
    })
    .await?
}

/// Buffers circulating between the ceiling's reading and writing threads: at most this
/// many MiB are read but not yet written.
const CEILING_BUFFERS: usize = 4;

/// The ceiling: the least any recorder on this machine has to do with the same bytes,
/// measured so that the recorder's distance to the limit can be split into what this
/// machine imposes and what the recorder adds. One thread sends them over one loopback TCP
/// connection (`TCP_NODELAY`) in `chunk`-byte writes, as the bench's client sends its body
/// chunks. The receiver overlaps its two halves, as the recorder does: one thread reads the
/// socket into 1 MiB buffers, another `pwrite`s them in order into one new file and
/// fdatasyncs it once at the end. No HTTP, no content check, no acks, no index. Timed from
/// the connect to the end of the fdatasync.
///
/// Why overlapped: until session 21 one thread read and wrote in turn, and the recorder,
/// which overlaps its check and write with its reads, beat that "ceiling" in some runs.
async fn tcp_ceiling(dir: &Path, bytes: u64, chunk: usize) -> Result<Duration> {
    let path = dir.join("ceiling.dat");
    tokio::task::spawn_blocking(move || -> Result<Duration> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("ceiling listener")?;
        let addr = listener.local_addr()?;
        let started = Instant::now();
        let sender = std::thread::spawn(move || -> Result<()> {
            let block: Vec<u8> = (0..chunk)
                .map(|i| b"0123456789abcdef[],\"o\"\n"[i % 23])
                .collect();
            let mut socket = std::net::TcpStream::connect(addr).context("ceiling connect")?;
            socket.set_nodelay(true)?;
            common::write_repeated(&mut socket, &block, bytes)?;
            Ok(())
        });
        let (mut socket, _) = listener.accept().context("ceiling accept")?;
        let file = std::fs::File::create(&path).context("create ceiling file")?;
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel(CEILING_BUFFERS);
        let (free_tx, free_rx) = std::sync::mpsc::sync_channel(CEILING_BUFFERS);
        for _ in 0..CEILING_BUFFERS {
            free_tx.send(vec![0u8; MIB as usize])?;
        }
        let writer = std::thread::spawn(move || write_ceiling(&file, &full_rx, &free_tx));
        let received = receive_ceiling(&mut socket, &free_rx, &full_tx);
        drop(full_tx);
        let written = writer
            .join()
            .map_err(|_| anyhow::anyhow!("ceiling writer panicked"))??;
        let elapsed = started.elapsed();
        received?;
        sender
            .join()
            .map_err(|_| anyhow::anyhow!("ceiling sender panicked"))??;
        std::fs::remove_file(&path)?;
        ensure!(
            written == bytes,
            "ceiling received {written} of {bytes} bytes"
        );
        Ok(elapsed)
    })
    .await?
}

/// The ceiling's reading half: fill a free buffer with one `read`, pass it on, until EOF.
fn receive_ceiling(
    socket: &mut std::net::TcpStream,
    free: &std::sync::mpsc::Receiver<Vec<u8>>,
    full: &std::sync::mpsc::SyncSender<(Vec<u8>, usize)>,
) -> Result<()> {
    use std::io::Read;
    loop {
        let mut buf = free.recv().context("ceiling writer gone")?;
        let n = socket.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        full.send((buf, n)).context("ceiling writer gone")?;
    }
}

/// The ceiling's writing half: `pwrite` each buffer after the last, hand it back, and
/// fdatasync once the reader is done. Returns the bytes written.
fn write_ceiling(
    file: &std::fs::File,
    full: &std::sync::mpsc::Receiver<(Vec<u8>, usize)>,
    free: &std::sync::mpsc::SyncSender<Vec<u8>>,
) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut written = 0u64;
    for (buf, n) in full {
        file.write_all_at(&buf[..n], written)?;
        written += n as u64;
        // The reader may have stopped already; the buffer is then simply dropped.
        let _ = free.send(buf);
    }
    file.sync_data()?;
    Ok(written)
}

struct BulkRun {
    conns: usize,
    bytes: u64,
    /// Gate opened → last stream's final ack.
    elapsed: Duration,
    /// When the gate opened and when the last final ack arrived.
    window: (Instant, Instant),
    /// CPU used and group commit done within `window`.
    cpu: CpuTimes,
    commit: CommitStats,
}

/// Bulk ingest: `streams` v2 uploads over min(streams, max_conns) h2c connections
/// (round-robin), `total` bytes split evenly, each stream sending as fast as flow control
/// lets it. All streams are admitted (200 received) before the clock starts. Timed from
/// opening the gate (all bodies start at once) until the last stream has received an ack
/// equal to its byte count, i.e. until every byte is durable.
async fn bulk_ingest(
    node: &Node,
    corpus: &Arc<Corpus>,
    streams: usize,
    total: u64,
    max_conns: usize,
    first_id: usize,
) -> Result<BulkRun> {
    let addr = node.addr.as_str();
    let conns = streams.min(max_conns);
    let senders = future::try_join_all((0..conns).map(|_| connect(addr))).await?;
    let (go, gate) = watch::channel(false);
    let opened = stream::iter(0..streams)
        .map(|i| {
            let (chunks, bytes) = corpus.plan(first_id + i, total / streams as u64);
            let body = gated_body(chunks, gate.clone());
            let sender = senders[i % conns].clone();
            async move { Ok::<_, anyhow::Error>((open_upload(sender, addr, body).await?, bytes)) }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    let bytes = opened.iter().map(|(_, b)| b).sum();
    let (reached_tx, mut reached) = tokio::sync::mpsc::unbounded_channel();
    let readers: Vec<_> = opened
        .into_iter()
        .map(|(acks, bytes)| tokio::spawn(read_to_final_ack(acks, bytes, reached_tx.clone())))
        .collect();
    drop(reached_tx);
    let (cpu, commit) = (CpuTimes::now(node)?, node.commit_stats().await?);
    let started = Instant::now();
    go.send_replace(true);
    let mut last = started;
    for _ in 0..streams {
        // A reader that fails drops its sender without a report; its error comes below.
        let Some(at) = reached.recv().await else {
            break;
        };
        last = last.max(at);
    }
    let cpu = CpuTimes::now(node)?.minus(&cpu);
    let commit = node.commit_stats().await?.minus(&commit);
    for reader in readers {
        reader.await.context("ack reader")??;
    }
    Ok(BulkRun {
        conns,
        bytes,
        elapsed: last - started,
        window: (started, last),
        cpu,
        commit,
    })
}

/// Reads a stream's acks to the end of its response; reports on `reached` when the ack
/// first equals `bytes`.
async fn read_to_final_ack(
    mut acks: AckStream,
    bytes: u64,
    reached: tokio::sync::mpsc::UnboundedSender<Instant>,
) -> Result<()> {
    let mut seen = false;
    while let Some(ack) = acks.next().await? {
        ensure!(ack <= bytes, "ack {ack} is beyond the {bytes} bytes sent");
        if ack == bytes && !seen {
            seen = true;
            let _ = reached.send(Instant::now());
        }
    }
    ensure!(seen, "response ended without an ack of all {bytes} bytes");
    Ok(())
}

/// Body that waits for the gate, then yields `chunks` as fast as the connection takes them.
fn gated_body(chunks: Vec<Bytes>, mut gate: watch::Receiver<bool>) -> UploadBody {
    let wait = async move {
        let _ = gate.wait_for(|open| *open).await;
    };
    let gate = stream::once(wait).filter_map(|()| future::ready(None::<BodyItem>));
    let data = stream::iter(chunks).map(|chunk| Ok(Frame::data(chunk)));
    StreamBody::new(gate.chain(data).boxed())
}

/// Sum of the sizes of all recordings under `dst`; checks it grew by exactly `sent`.
fn check_stored(dst: &Path, before: u64, sent: u64) -> Result<u64> {
    let now = cast_bytes(dst)?;
    ensure!(
        now - before == sent,
        "recordings grew by {} bytes, {sent} were acked",
        now - before
    );
    Ok(now)
}

fn cast_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    if !dir.exists() {
        return Ok(0);
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            total += cast_bytes(&path)?;
        } else if path.extension().is_some_and(|e| e == "cast") {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------
// 3: ack latency of paced streams
// ---------------------------------------------------------------------------------------

struct LatencyRow {
    condition: String,
    samples: Vec<Duration>,
    /// Group commit while the samples were taken.
    commit: CommitStats,
    wall: Duration,
}

async fn latency_rows(node: &Node, corpus: &Arc<Corpus>, o: &Options) -> Result<Vec<LatencyRow>> {
    progress("paced streams on an otherwise idle node");
    let alone = paced_alone(node, corpus, o).await?;
    progress("paced streams during bulk ingest (16 streams)");
    let loaded = paced_during_bulk(node, corpus, o, 16).await?;
    Ok(vec![alone, loaded])
}

/// Paced streams for `paced_secs`, nothing else running.
async fn paced_alone(node: &Node, corpus: &Arc<Corpus>, o: &Options) -> Result<LatencyRow> {
    let stop = CancellationToken::new();
    let paced = paced_streams(node.addr.clone(), corpus.clone(), o.clone(), stop.clone());
    let paced = tokio::spawn(paced);
    let commit = node.commit_stats().await?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(o.paced_secs)).await;
    let commit = node.commit_stats().await?.minus(&commit);
    let wall = started.elapsed();
    stop.cancel();
    let samples = paced
        .await??
        .into_iter()
        .map(|(_, latency)| latency)
        .collect();
    let condition = "no other load".into();
    Ok(LatencyRow {
        condition,
        samples,
        commit,
        wall,
    })
}

/// Paced streams while `bulk_streams` bulk streams ingest `total_bytes`; only lines sent
/// between the start of the bulk bodies and the last bulk final ack count.
async fn paced_during_bulk(
    node: &Node,
    corpus: &Arc<Corpus>,
    o: &Options,
    bulk_streams: usize,
) -> Result<LatencyRow> {
    let stop = CancellationToken::new();
    let paced = paced_streams(node.addr.clone(), corpus.clone(), o.clone(), stop.clone());
    let paced = tokio::spawn(paced);
    let total = o.total_bytes;
    let bulk = bulk_ingest(node, corpus, bulk_streams, total, o.max_conns, 2000).await;
    stop.cancel();
    let samples = paced.await??;
    let bulk = bulk?;
    let (from, to) = bulk.window;
    let samples = samples
        .into_iter()
        .filter(|(sent, _)| *sent >= from && *sent <= to)
        .map(|(_, latency)| latency)
        .collect();
    let rate = mbps(bulk.bytes, bulk.elapsed);
    let condition = format!("during bulk: {bulk_streams} streams at {rate:.0} MB/s");
    Ok(LatencyRow {
        condition,
        samples,
        commit: bulk.commit,
        wall: bulk.elapsed,
    })
}

/// (send time, latency) of every paced line.
type Samples = Vec<(Instant, Duration)>;
/// Lines handed to the h2 client and not yet acked: (end offset, send time).
type Pending = Arc<Mutex<VecDeque<(u64, Instant)>>>;

/// `paced_streams` v2 uploads, one h2c connection each, each sending its header and then
/// one ~200-byte event line every `paced_interval` until `stop`. Start times are spread
/// over one interval. Returns every line's ack latency (see [`paced_acks`]).
async fn paced_streams(
    addr: String,
    corpus: Arc<Corpus>,
    o: Options,
    stop: CancellationToken,
) -> Result<Samples> {
    let mut readers = Vec::new();
    for i in 0..o.paced_streams {
        let pending = Pending::default();
        let header = corpus.header(10_000 + i);
        let lines = corpus.paced_lines(i, 256);
        let phase = o.paced_interval * i as u32 / o.paced_streams as u32;
        let body = paced_body(
            header,
            lines,
            o.paced_interval,
            phase,
            stop.clone(),
            pending.clone(),
        );
        let acks = open_upload(connect(&addr).await?, &addr, body).await?;
        readers.push(tokio::spawn(paced_acks(acks, pending)));
    }
    let mut samples = Vec::new();
    for reader in readers {
        samples.extend(reader.await.context("ack reader")??);
    }
    Ok(samples)
}

/// Ack latency: from the moment a line is handed to the h2 client (the body yields it) to
/// the arrival of the first ack frame whose offset covers the line's last byte.
async fn paced_acks(mut acks: AckStream, pending: Pending) -> Result<Samples> {
    let mut samples = Vec::new();
    while let Some(ack) = acks.next().await? {
        let now = Instant::now();
        let mut queue = lock(&pending);
        while let Some(&(end, sent)) = queue.front() {
            if end > ack {
                break;
            }
            queue.pop_front();
            samples.push((sent, now - sent));
        }
    }
    ensure!(
        lock(&pending).is_empty(),
        "paced stream ended with unacked lines"
    );
    Ok(samples)
}

fn paced_body(
    header: Bytes,
    lines: Vec<Bytes>,
    every: Duration,
    phase: Duration,
    stop: CancellationToken,
    pending: Pending,
) -> UploadBody {
    struct State {
        ticker: tokio::time::Interval,
        lines: Vec<Bytes>,
        next: usize,
        offset: u64,
        stop: CancellationToken,
        pending: Pending,
    }
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = State {
        ticker,
        lines,
        next: 0,
        offset: header.len() as u64,
        stop,
        pending,
    };
    let events = stream::unfold(state, |mut s| async move {
        tokio::select! {
            biased;
            _ = s.stop.cancelled() => return None,
            _ = s.ticker.tick() => {}
        }
        let line = s.lines[s.next % s.lines.len()].clone();
        s.next += 1;
        s.offset += line.len() as u64;
        lock(&s.pending).push_back((s.offset, Instant::now()));
        Some((Ok(Frame::data(line)), s))
    });
    StreamBody::new(
        stream::once(future::ready(Ok(Frame::data(header))))
            .chain(events)
            .boxed(),
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------
// 4: RSS per idle session
// ---------------------------------------------------------------------------------------

struct IdleResult {
    sessions: usize,
    rss_before_kib: u64,
    rss_after_kib: u64,
    min_keepalives: usize,
    idle_for: Duration,
    /// From the first connect to the last header ack.
    opening: Duration,
}

/// RSS per idle session: the node's VmRSS after one warm-up session, then with
/// `idle_sessions` open v2 sessions, each on its own h2c connection (as separate SSH
/// servers would connect), each having sent only its header and received an ack of it.
/// The "after" value is read after a settle time of two ack intervals.
async fn idle_rss(node: &Node, o: &Options) -> Result<IdleResult> {
    let corpus = Corpus::generate(o.seed, MIB as usize, o.chunk_bytes);
    bulk_ingest(node, &Arc::new(corpus.clone()), 1, MIB, 1, 0).await?;
    let rss_before_kib = node.status_kib("VmRSS")?;
    progress(&format!("opening {} idle sessions", o.idle_sessions));
    let end = CancellationToken::new();
    let opening = Instant::now();
    let (acked_tx, mut acked) = tokio::sync::mpsc::channel(o.idle_sessions.max(1));
    let readers = stream::iter(0..o.idle_sessions)
        .map(|i| {
            open_idle(
                &node.addr,
                corpus.header(20_000 + i),
                end.clone(),
                acked_tx.clone(),
            )
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    for _ in 0..o.idle_sessions {
        tokio::time::timeout(Duration::from_secs(60), acked.recv())
            .await
            .context("idle sessions were not all acked within 60 s")?;
    }
    let opening = opening.elapsed();
    let idle_since = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_kib = node.status_kib("VmRSS")?;
    let idle_for = idle_since.elapsed();
    end.cancel();
    let mut min_keepalives = usize::MAX;
    for reader in readers {
        min_keepalives = min_keepalives.min(reader.await.context("idle reader")??);
    }
    Ok(IdleResult {
        sessions: o.idle_sessions,
        rss_before_kib,
        rss_after_kib,
        min_keepalives,
        idle_for,
        opening,
    })
}

/// Opens one idle session on a new connection; its reader reports the header's ack on
/// `acked`, then counts the keep-alive acks (same offset) until the response ends.
async fn open_idle(
    addr: &str,
    header: Bytes,
    end: CancellationToken,
    acked: tokio::sync::mpsc::Sender<()>,
) -> Result<tokio::task::JoinHandle<Result<usize>>> {
    let len = header.len() as u64;
    let wait = stream::once(end.cancelled_owned()).filter_map(|()| future::ready(None::<BodyItem>));
    let body = StreamBody::new(
        stream::once(future::ready(Ok(Frame::data(header))))
            .chain(wait)
            .boxed(),
    );
    let mut acks = open_upload(connect(addr).await?, addr, body).await?;
    Ok(tokio::spawn(async move {
        let mut keepalives = 0;
        let mut seen = false;
        while let Some(ack) = acks.next().await? {
            if ack == len && !seen {
                seen = true;
                let _ = acked.send(()).await;
            } else if ack == len {
                keepalives += 1;
            }
        }
        Ok(keepalives)
    }))
}

// ---------------------------------------------------------------------------------------
// h2c client: prior knowledge, one POST /v2/record per upload
// ---------------------------------------------------------------------------------------

type BodyItem = Result<Frame<Bytes>, Infallible>;
type UploadBody = StreamBody<BoxStream<'static, BodyItem>>;

/// A new h2c connection (prior knowledge, TCP_NODELAY), driven by a spawned task.
async fn connect(addr: &str) -> Result<SendRequest<UploadBody>> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .context("h2c handshake")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            progress(&format!("h2 connection ended with an error: {e}"));
        }
    });
    Ok(sender)
}

/// `POST /v2/record` with `body`; returns the ack stream once the 200 has arrived.
async fn open_upload(
    mut sender: SendRequest<UploadBody>,
    addr: &str,
    body: UploadBody,
) -> Result<AckStream> {
    sender.ready().await.context("h2 connection not ready")?;
    let request = http::Request::post(format!("http://{addr}/v2/record")).body(body)?;
    let response = sender
        .send_request(request)
        .await
        .context("POST /v2/record")?;
    ensure!(
        response.status() == http::StatusCode::OK,
        "upload refused: {}",
        response.status()
    );
    Ok(AckStream {
        body: response.into_body(),
        buf: Vec::new(),
    })
}

/// The response body of a v2 upload: newline-separated `{"ack":N}` / `{"error":"..."}`.
struct AckStream {
    body: Incoming,
    buf: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct AckFrame {
    ack: Option<u64>,
    error: Option<String>,
}

impl AckStream {
    /// The next ack offset; `None` at the end of the response; an error frame is an error.
    async fn next(&mut self) -> Result<Option<u64>> {
        loop {
            if let Some(at) = memchr::memchr(b'\n', &self.buf) {
                let line: Vec<u8> = self.buf.drain(..=at).collect();
                let frame: AckFrame = serde_json::from_slice(&line).with_context(|| {
                    format!("bad ack frame {:?}", String::from_utf8_lossy(&line))
                })?;
                if let Some(error) = frame.error {
                    bail!("recorder sent an error frame: {error}");
                }
                if let Some(ack) = frame.ack {
                    return Ok(Some(ack));
                }
                continue;
            }
            match self.body.frame().await {
                None if self.buf.is_empty() => return Ok(None),
                None => bail!("ack stream ended inside a frame"),
                Some(frame) => {
                    if let Ok(data) = frame.context("reading the ack stream")?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The node process
// ---------------------------------------------------------------------------------------

/// Group-commit counters from the node's `/metrics` (histogram sums, counts, buckets).
#[derive(Debug, Default, Clone)]
struct CommitStats {
    rounds: f64,
    seconds: f64,
    files: f64,
    /// Round-duration histogram: (upper bound in seconds, cumulative count), ascending.
    buckets: Vec<(f64, f64)>,
}

impl CommitStats {
    fn parse(metrics: &str) -> CommitStats {
        let value = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        let buckets = metrics
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("quorumcast_fsync_seconds_bucket{le=\"")?;
                let (le, count) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect();
        CommitStats {
            rounds: value("quorumcast_fsync_seconds_count"),
            seconds: value("quorumcast_fsync_seconds_sum"),
            files: value("quorumcast_commit_batch_files_sum"),
            buckets,
        }
    }

    fn minus(&self, earlier: &CommitStats) -> CommitStats {
        self.combine(earlier, -1.0)
    }

    fn plus(&self, other: &CommitStats) -> CommitStats {
        self.combine(other, 1.0)
    }

    fn combine(&self, other: &CommitStats, sign: f64) -> CommitStats {
        let buckets = if other.buckets.is_empty() {
            self.buckets.clone()
        } else if self.buckets.is_empty() {
            other
                .buckets
                .iter()
                .map(|&(le, n)| (le, sign * n))
                .collect()
        } else {
            let pairs = self.buckets.iter().zip(&other.buckets);
            pairs
                .map(|(&(le, a), &(_, b))| (le, a + sign * b))
                .collect()
        };
        CommitStats {
            rounds: self.rounds + sign * other.rounds,
            seconds: self.seconds + sign * other.seconds,
            files: self.files + sign * other.files,
            buckets,
        }
    }

    /// Upper bound of the histogram bucket holding quantile `q` of the rounds.
    fn quantile(&self, q: f64) -> String {
        let want = q * self.rounds;
        match self
            .buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= want)
        {
            Some((le, _)) if le.is_finite() => format!("<={:.1}ms", le * 1e3),
            _ => "> last bucket".into(),
        }
    }

    /// Rounds per second over `wall` seconds, mean / p50 / p99 round time, files per round.
    fn describe(&self, wall: f64) -> String {
        let rounds = self.rounds.max(1.0);
        format!(
            "{:.0} rounds/s, round mean {:.1}ms p50 {} p99 {}, {:.1} files/round",
            self.rounds / wall,
            1e3 * self.seconds / rounds,
            self.quantile(0.5),
            self.quantile(0.99),
            self.files / rounds
        )
    }
}

/// `GET /metrics` over plain HTTP/1.1 (Connection: close) and the response as text.
async fn get_metrics(addr: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tcp.read_to_string(&mut response)
        .await
        .context("read /metrics")?;
    ensure!(response.starts_with("HTTP/1.1 200"), "GET /metrics failed");
    Ok(response)
}

/// A `quorumcast node` child process; killed on drop.
struct Node {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Node {
    /// Starts `bin node` with its dst under `dir`, logging to `dir/node.log`.
    fn start(bin: &Path, dir: &Path, log_filter: &str) -> Result<Node> {
        std::fs::create_dir_all(dir)?;
        let log = std::fs::File::create(dir.join("node.log"))?;
        let mut command = Command::new(bin);
        command
            .args([
                "node",
                "--listen",
                "127.0.0.1:0",
                "--hostname",
                "bench",
                "--dst",
            ])
            .arg(dir.join("dst"))
            .env("RUST_LOG", log_filter)
            .stdout(Stdio::piped())
            .stderr(log);
        // SAFETY: prctl only sets a flag of the child; it is async-signal-safe. The node
        // then dies with the bench even if the bench is killed without unwinding.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let stdout = child.stdout.take().context("node stdout")?;
        let mut node = Node {
            child,
            addr: String::new(),
            dir: dir.to_path_buf(),
        };
        node.addr = wait_for_listening(stdout).with_context(|| {
            format!(
                "node did not start; log:\n{}",
                std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
            )
        })?;
        Ok(node)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn dst(&self) -> PathBuf {
        self.dir.join("dst")
    }

    async fn commit_stats(&self) -> Result<CommitStats> {
        Ok(CommitStats::parse(&get_metrics(&self.addr).await?))
    }

    /// A `kB` field of /proc/PID/status, e.g. VmRSS or VmHWM.
    fn status_kib(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .with_context(|| format!("no {field} in /proc/PID/status"))?;
        let kib = line
            .split_whitespace()
            .nth(1)
            .context("malformed status line")?;
        Ok(kib.parse()?)
    }

    /// User + system CPU seconds the node has used so far.
    fn cpu_secs(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        let after_name = stat.rsplit_once(')').context("malformed stat")?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // Fields 14 and 15 of proc(5); index 0 here is field 3 (state).
        let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
            + fields.get(12).context("stime")?.parse::<u64>()?;
        // SAFETY: sysconf has no memory effects.
        let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok(ticks as f64 / per_sec)
    }

    /// SIGTERM, then up to 20 s for a graceful exit, then SIGKILL.
    fn stop(&mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "node exited with {status}");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("node did not stop within 20 s of SIGTERM")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads the node's stdout until `listening on http://ADDR`, then keeps draining it.
fn wait_for_listening(stdout: std::process::ChildStdout) -> Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on http://") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .context("no 'listening on' line within 20 s")
}

fn raise_fd_limit() -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0,
            "getrlimit"
        );
        limit.rlim_cur = limit.rlim_max;
        ensure!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0,
            "setrlimit"
        );
    }
    Ok(())
}

/// CPU seconds used by the node, by this process (the client) and by the whole machine.
#[derive(Debug, Default, Clone, Copy)]
struct CpuTimes {
    node: f64,
    client: f64,
    machine: f64,
}

impl CpuTimes {
    fn now(node: &Node) -> Result<CpuTimes> {
        Ok(CpuTimes {
            node: node.cpu_secs()?,
            client: self_cpu_secs(),
            machine: machine_cpu_secs()?,
        })
    }

    fn minus(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            node: self.node - earlier.node,
            client: self.client - earlier.client,
            machine: self.machine - earlier.machine,
        }
    }

    fn plus(&self, other: &CpuTimes) -> CpuTimes {
        CpuTimes {
            node: self.node + other.node,
            client: self.client + other.client,
            machine: self.machine + other.machine,
        }
    }

    /// Everything else on the machine: kernel writeback threads, other users.
    fn other(&self) -> f64 {
        self.machine - self.node - self.client
    }
}

/// Busy CPU seconds of the whole machine so far (all of /proc/stat's "cpu" line but idle
/// and iowait).
fn machine_cpu_secs() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    // SAFETY: sysconf has no memory effects.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(busy as f64 / per_sec)
}

/// User + system CPU seconds of this (bench) process so far.
fn self_cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

// ---------------------------------------------------------------------------------------
// Machine description and the report
// ---------------------------------------------------------------------------------------

struct Machine {
    cpus: usize,
    cpu_model: String,
    mem_gib: f64,
    kernel: String,
    df: String,
    fs_type: String,
    commit: String,
    load_start: String,
}

impl Machine {
    fn describe(dst: &Path) -> Result<Machine> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let df = command_output("df", &["-T", &dst.to_string_lossy()])?;
        let df_line = df
            .lines()
            .nth(1)
            .context("df -T printed no file system")?
            .to_string();
        Ok(Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                .unwrap_or_else(|| "unknown CPU".into()),
            mem_gib: mem_kib / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            fs_type: df_line.split_whitespace().nth(1).unwrap_or("?").to_string(),
            df: df_line,
            commit: git_commit(),
            load_start: loadavg(),
        })
    }

    fn print(&self, o: &Options, work: &Path) {
        println!("quorumcast single-node ingest benchmark");
        println!("  commit    {}", self.commit);
        println!(
            "  machine   {} CPUs ({}), {:.1} GiB RAM, Linux {}",
            self.cpus, self.cpu_model, self.mem_gib, self.kernel
        );
        println!(
            "  dst       {} (node --dst and the limit file; same file system)",
            work.display()
        );
        println!("  df -T     {}", self.df);
        if self.fs_type == "tmpfs" {
            println!("  WARNING   dst is tmpfs: nothing here reaches a disk; use --dst-root");
        }
        let built = if o.node_bin == Path::new(NODE_BIN) {
            "built by cargo bench (bench profile = release), "
        } else {
            ""
        };
        println!(
            "  node      {} ({built}run as a copy), RUST_LOG={}, default flags, no cluster",
            o.node_bin.display(),
            o.node_log
        );
        println!(
            "  client    this process, {} tokio worker thread(s), h2c prior knowledge, TCP_NODELAY",
            o.client_threads
        );
        println!("  loadavg   {} (at start)", self.load_start);
    }
}

fn mbps(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MB / elapsed.as_secs_f64()
}

fn print_report(
    o: &Options,
    bulk: &[BulkRow],
    peak_rss: u64,
    latency: &[LatencyRow],
    idle: &IdleResult,
    m: &Machine,
) {
    print_bulk(o, bulk, peak_rss);
    print_latency(o, latency);
    print_idle(idle);
    println!();
    println!("loadavg {} at start, {} at end", m.load_start, loadavg());
}

/// The ceiling's row per level: what the machine allows any recorder, against the limit,
/// and how much of it the recorder reaches.
fn print_ceiling(o: &Options, bulk: &[BulkRow]) {
    println!("  the machine's ceiling (one TCP connection -> one file, measured with each pair):");
    println!("  streams  ceiling MB/s  ceiling/limit [range]  recorder/ceiling [range]");
    for r in bulk {
        let per_run = |f: &dyn Fn(&(Duration, Duration, Duration)) -> f64| -> Vec<f64> {
            r.runs.iter().map(f).collect()
        };
        let recorder = per_run(&|run| mbps(r.bytes, run.0));
        let limit = per_run(&|run| mbps(o.total_bytes, run.1));
        let ceiling = per_run(&|run| mbps(o.total_bytes, run.2));
        let of_limit: Vec<f64> = ceiling.iter().zip(&limit).map(|(c, l)| c / l).collect();
        let reached: Vec<f64> = recorder.iter().zip(&ceiling).map(|(r, c)| r / c).collect();
        println!(
            "  {:>7}  {:>12.1}  {:>6.0}% [{:>3.0}-{:>3.0}%]  {:>9.0}% [{:>3.0}-{:>3.0}%]",
            r.streams,
            median(&ceiling),
            100.0 * median(&ceiling) / median(&limit),
            100.0 * min(&of_limit),
            100.0 * max(&of_limit),
            100.0 * median(&recorder) / median(&ceiling),
            100.0 * min(&reached),
            100.0 * max(&reached)
        );
    }
}

fn print_bulk(o: &Options, bulk: &[BulkRow], peak_rss: u64) {
    println!(
        "
1+2. Bulk ingest, POST /v2/record: {total} MiB per run, split evenly over the streams, sent
     in {chunk} KiB body chunks of whole lines; one h2c connection per stream up to {conns},
     beyond that streams multiplexed round-robin. Recorder time: all bodies start -> the
     last stream's final ack. Limit: the same bytes, one file, 64 KiB write()s + one
     fdatasync. Ceiling: the same bytes sent over one loopback TCP connection in {chunk}
     KiB writes, read in 1 MiB reads by one thread and pwrite()n to one file by another +
     one fdatasync (what any recorder must do at least: no HTTP, check or acks). Both measured right before each
     recorder run. sync(2) and a 1 s pause before every measurement, then {prime};
     {runs} round(s), each over all rows in turn. Per row: MB/s are medians, ratio = median/median, [range] =
     lowest and highest ratio of a (limit, recorder) pair. MB = 10^6 bytes. CPU = CPU seconds / recorder wall seconds (2 CPUs =
     200%); other = everything else on the machine (kernel writeback threads, other
     users), idle and iowait excluded.
",
        total = o.total_bytes / MIB,
        chunk = o.chunk_bytes / 1024,
        conns = o.max_conns,
        runs = o.runs,
        prime = if o.prime {
            "a file of the\n     run's size written and deleted unsynced (pages the guest holds, see `settle`)"
        } else {
            "no priming\n     (--no-prime)"
        }
    );
    println!("  streams  conns   MiB/run  recorder MB/s  limit MB/s  recorder/limit [range]  node CPU  client CPU  other CPU");
    for r in bulk {
        let recorder: Vec<f64> = r
            .runs
            .iter()
            .map(|(rec, _, _)| mbps(r.bytes, *rec))
            .collect();
        let limit: Vec<f64> = r
            .runs
            .iter()
            .map(|(_, lim, _)| mbps(o.total_bytes, *lim))
            .collect();
        let ratios: Vec<f64> = recorder.iter().zip(&limit).map(|(r, l)| r / l).collect();
        let (lo, hi) = (min(&ratios), max(&ratios));
        let wall = r.recorder_wall();
        println!(
            "  {:>7}  {:>5}  {:>8.1}  {:>13.1}  {:>10.1}  {:>7.0}% [{:>3.0}-{:>3.0}%]  {:>7.0}%  {:>9.0}%  {:>8.0}%",
            r.streams,
            r.conns,
            r.bytes as f64 / MIB as f64,
            median(&recorder),
            median(&limit),
            100.0 * median(&recorder) / median(&limit),
            100.0 * lo,
            100.0 * hi,
            100.0 * r.cpu.node / wall,
            100.0 * r.cpu.client / wall,
            100.0 * r.cpu.other() / wall
        );
    }
    let met = bulk.iter().all(|r| {
        let recorder: Vec<f64> = r
            .runs
            .iter()
            .map(|(rec, _, _)| mbps(r.bytes, *rec))
            .collect();
        let limit: Vec<f64> = r
            .runs
            .iter()
            .map(|(_, lim, _)| mbps(o.total_bytes, *lim))
            .collect();
        median(&recorder) >= 0.8 * median(&limit)
    });
    let verdict = if met { "MET" } else { "MISSED" };
    println!("  goal (median recorder >= 80% of median limit on every row): {verdict}");
    print_ceiling(o, bulk);
    println!("  node group commit during the recorder runs:");
    for r in bulk {
        println!(
            "    {:>3} streams: {}",
            r.streams,
            r.commit.describe(r.recorder_wall())
        );
    }
    println!(
        "  node peak RSS (VmHWM) over the bulk and latency runs: {:.1} MiB",
        peak_rss as f64 / 1024.0
    );
}

fn print_latency(o: &Options, latency: &[LatencyRow]) {
    println!(
        "
3. Ack latency: {streams} paced streams, 1 h2c connection each, each sending one ~200-byte
   line every {every} ms. Time: line handed to the h2 client -> first ack frame >= its end
   offset. Under load: only lines sent between the start and the end of the bulk run.
",
        streams = o.paced_streams,
        every = o.paced_interval.as_millis()
    );
    println!("  condition                                   lines      p50      p99      max");
    for row in latency {
        let (p50, p99, max) = percentiles(&row.samples);
        println!(
            "  {:<42} {:>6} {:>8} {:>8} {:>8}",
            row.condition,
            row.samples.len(),
            ms(p50),
            ms(p99),
            ms(max)
        );
    }
    println!("  node group commit meanwhile:");
    for row in latency {
        println!(
            "    {:<42} {}",
            row.condition,
            row.commit.describe(row.wall.as_secs_f64())
        );
    }
}

fn print_idle(idle: &IdleResult) {
    let delta = idle.rss_after_kib as f64 - idle.rss_before_kib as f64;
    println!(
        "
4. Idle sessions: {n} v2 sessions on a fresh node (after one warm-up session), 1 h2c
   connection each, header only, every header acked. VmRSS from /proc/PID/status.
   node VmRSS before {before} KiB, after {after} KiB (read {idle:.1} s after the last header ack)
   RSS per idle session: {per:.1} KiB
   opening them took {opening:.2} s from the first connect to the last header ack (64 at a time)
   keep-alive acks per session while idle (fewest): {keepalives}",
        n = idle.sessions,
        before = idle.rss_before_kib,
        after = idle.rss_after_kib,
        idle = idle.idle_for.as_secs_f64(),
        per = delta / idle.sessions.max(1) as f64,
        opening = idle.opening.as_secs_f64(),
        keepalives = idle.min_keepalives
    );
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn percentiles(samples: &[Duration]) -> (Option<Duration>, Option<Duration>, Option<Duration>) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = |q: f64| {
        sorted
            .get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
    };
    (at(0.50), at(0.99), sorted.last().copied())
}

fn ms(value: Option<Duration>) -> String {
    value
        .map(|d| format!("{:.2}ms", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}
