//! Replication and failover benchmark (issue 4): a real 3-node recorder set of release
//! `quorumcast node` processes on loopback ports, driven by real h2c clients with
//! realistic asciicast v2 content.
//!
//! Run with `cargo bench --bench replication` (add `-- --quick` for a small run, `-- --help`
//! for the knobs). `cargo bench` builds the `quorumcast` binary with the bench profile
//! (= release) and hands its path to this file as `CARGO_BIN_EXE_quorumcast`, so the set
//! measured is always the current source.
//!
//! What is measured (the comment on each measuring function says exactly what is timed):
//! 1. replication factor 1 vs 3 (a cluster setting, changed through the cluster API):
//!    bulk throughput of 16 streams spread over the 3 nodes, and the ack latency of paced
//!    streams;
//! 2. failover: a resumable session's owner is killed with SIGKILL mid-session; the time
//!    from the kill to the first ack that covers a byte sent after the kill, over many
//!    kills, and the sealed recording compared (sha256) with every byte the client sent;
//! 3. capacity: concurrent paced sessions (one line a second each) the set holds with a
//!    p99 ack latency under 100 ms.
//!
//! The bench writes only under a temp dir (default under /var/tmp) that it removes at the
//! end, and kills every node it started, also on error or Ctrl-C (Drop guards, and
//! PR_SET_PDEATHSIG in case the bench itself is killed).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use futures_util::future;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::content::Corpus;
use common::host::{command_output, git_commit, loadavg};

const NODE_BIN: &str = env!("CARGO_BIN_EXE_quorumcast");
const MIB: u64 = 1024 * 1024;
/// MB/s in this report are 10^6 bytes per second.
const MB: f64 = 1e6;
/// Nodes in the set.
const NODES: usize = 3;
/// The failover session sends one line this often.
const FAILOVER_LINE_EVERY: Duration = Duration::from_millis(20);
/// How long the failover session streams before its owner is killed.
const BEFORE_KILL: Duration = Duration::from_secs(1);
/// How long it goes on after the first durable ack past the kill, before it ends.
const AFTER_FAILOVER: Duration = Duration::from_millis(500);
/// Pause after a pass over every node that found none to take the session.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// A failover that takes longer than this is an error of its round.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);
/// Connect + response headers of one resume attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The node's default `election_min_ms` (the nodes run with default settings).
const DEFAULT_ELECTION_MIN_MS: u64 = 400;
/// Every /healthz 200 and one agreed leader, after a start or a restart.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);
/// The final ack of a recording and the end of its response.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Capacity sessions send one line this often.
const CAPACITY_LINE_EVERY: Duration = Duration::from_secs(1);
/// A capacity step passes when its p99 ack latency is below this (and nothing failed).
const CAPACITY_P99_LIMIT: Duration = Duration::from_millis(100);
/// After a step's sessions are open, before its window starts.
const CAPACITY_SETTLE: Duration = Duration::from_secs(2);
/// After a step's window, before its samples are read (late acks still count).
const CAPACITY_GRACE: Duration = Duration::from_secs(1);
/// Sessions opened at once while ramping.
const OPEN_CONCURRENCY: usize = 32;
/// One cluster-API or /metrics request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Environment variables `quorumcast node` reads: one left in the caller's shell would
/// override the generated config (e.g. point every node at one dst).
const NODE_ENV: [&str; 6] = [
    "TSRECORDER_DST",
    "TS_STATE_DIR",
    "TSRECORDER_HOSTNAME",
    "QUORUMCAST_LISTEN",
    "QUORUMCAST_CONFIG",
    "QUORUMCAST_TAILSCALED_SOCKET",
];

// ---------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------

const USAGE: &str = "\
usage: cargo bench --bench replication [-- OPTIONS]
  --quick                 small run: 32 MiB bulk, 1 run, 3 s paced, 10 kills,
                          capacity steps 100,250 of 5 s each
  --only LIST             sections to run, of factors,failover,capacity (all)
  --total-mib N           bulk bytes per run, split evenly over the streams (256)
  --bulk-streams N        concurrent bulk streams, stream i to node i mod 3 (16)
  --runs N                bulk runs per replication factor, RF1 and RF3 alternating (3)
  --chunk-kib N           body chunk size handed to the h2 client, whole lines (16)
  --paced-streams N       paced streams for ack latency, stream i to node i mod 3 (32)
  --paced-interval-ms N   one ~200-byte line per paced stream every N ms (20)
  --paced-secs N          duration of each paced latency run (10)
  --kills N               failover rounds, one kill -9 of the session's owner each (50)
  --steps A,B,..          capacity steps, concurrent sessions (100,250,500,1000,2000)
  --step-secs N           measuring window of each capacity step (10)
  --dst-root DIR          where the temp dir (3 nodes' dst, state, logs) goes (/var/tmp)
  --node-log FILTER       RUST_LOG of the nodes (info)
  --client-threads N      tokio worker threads of the load generator (1)
  --keep                  keep the temp dir (node logs, recordings) and print its path
  --node-bin PATH         run this quorumcast binary instead of the one cargo built (A/B runs)
  --seed N                seed of the content generator (42)";

#[derive(Debug, Clone)]
struct Options {
    factors: bool,
    failover: bool,
    capacity: bool,
    total_bytes: u64,
    bulk_streams: usize,
    runs: usize,
    chunk_bytes: usize,
    paced_streams: usize,
    paced_interval: Duration,
    paced_secs: u64,
    kills: usize,
    steps: Vec<usize>,
    step_secs: u64,
    dst_root: PathBuf,
    node_log: String,
    client_threads: usize,
    keep: bool,
    seed: u64,
    /// The binary the set runs (a copy of it): cargo's build unless `--node-bin`.
    node_bin: PathBuf,
}

impl Options {
    fn defaults() -> Options {
        Options {
            factors: true,
            failover: true,
            capacity: true,
            total_bytes: 256 * MIB,
            bulk_streams: 16,
            runs: 3,
            chunk_bytes: 16 * 1024,
            paced_streams: 32,
            paced_interval: Duration::from_millis(20),
            paced_secs: 10,
            kills: 50,
            steps: vec![100, 250, 500, 1000, 2000],
            step_secs: 10,
            dst_root: PathBuf::from("/var/tmp"),
            node_log: "info".into(),
            client_threads: 1,
            keep: false,
            seed: 42,
            node_bin: PathBuf::from(NODE_BIN),
        }
    }

    fn quick(&mut self) {
        self.total_bytes = 32 * MIB;
        self.runs = 1;
        self.paced_secs = 3;
        self.kills = 10;
        self.steps = vec![100, 250];
        self.step_secs = 5;
    }

    fn parse() -> Result<Options> {
        let mut o = Options::defaults();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                // `cargo bench` passes --bench to harness = false targets.
                "--bench" => {}
                "--quick" => o.quick(),
                "--only" => o.only(&value()?)?,
                "--total-mib" => o.total_bytes = value()?.parse::<u64>()? * MIB,
                "--bulk-streams" => o.bulk_streams = value()?.parse()?,
                "--runs" => o.runs = value()?.parse()?,
                "--chunk-kib" => o.chunk_bytes = value()?.parse::<usize>()? * 1024,
                "--paced-streams" => o.paced_streams = value()?.parse()?,
                "--paced-interval-ms" => {
                    o.paced_interval = Duration::from_millis(value()?.parse()?)
                }
                "--paced-secs" => o.paced_secs = value()?.parse()?,
                "--kills" => o.kills = value()?.parse()?,
                "--steps" => o.steps = parse_list(&value()?)?,
                "--step-secs" => o.step_secs = value()?.parse()?,
                "--dst-root" => o.dst_root = PathBuf::from(value()?),
                "--node-log" => o.node_log = value()?,
                "--client-threads" => o.client_threads = value()?.parse()?,
                "--keep" => o.keep = true,
                "--node-bin" => o.node_bin = PathBuf::from(value()?),
                "--seed" => o.seed = value()?.parse()?,
                "--help" | "-h" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        o.check()?;
        Ok(o)
    }

    fn only(&mut self, list: &str) -> Result<()> {
        (self.factors, self.failover, self.capacity) = (false, false, false);
        for section in list.split(',') {
            match section {
                "factors" => self.factors = true,
                "failover" => self.failover = true,
                "capacity" => self.capacity = true,
                other => bail!("unknown section {other:?} (factors, failover, capacity)"),
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<()> {
        ensure!(
            self.bulk_streams > 0
                && self.runs > 0
                && self.chunk_bytes > 0
                && self.paced_streams > 0
                && self.client_threads > 0,
            "sizes must be positive"
        );
        ensure!(
            !self.paced_interval.is_zero(),
            "--paced-interval-ms must be positive"
        );
        ensure!(
            self.steps.iter().all(|&s| s > 0) && self.steps.windows(2).all(|w| w[0] < w[1]),
            "capacity steps must be positive and increasing"
        );
        Ok(())
    }
}

fn parse_list(text: &str) -> Result<Vec<usize>> {
    Ok(text.split(',').map(str::parse).collect::<Result<_, _>>()?)
}

// ---------------------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------------------

fn main() -> std::process::ExitCode {
    let result = Options::parse().and_then(|options| {
        // Before any node starts: the nodes inherit the raised limit.
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
        // Dropping the future above dropped the set (nodes killed) and the temp dir.
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replication bench failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(o: Options) -> Result<()> {
    // Declared first, dropped last: the nodes are killed before their directories go.
    let work = tempfile::Builder::new()
        .prefix("qc-repl-bench-")
        .disable_cleanup(o.keep)
        .tempdir_in(&o.dst_root)
        .with_context(|| format!("temp dir under {}", o.dst_root.display()))?;
    let machine = Machine::describe(work.path())?;
    machine.print(&o, work.path());
    let corpus = Arc::new(Corpus::generate(o.seed, 32 * MIB as usize, o.chunk_bytes));
    let mut set = RecorderSet::create(work.path(), &o.node_bin, &o.node_log)?;
    let leader = set.wait_healthy().await?;
    progress(&format!("set healthy, leader node {}", leader + 1));
    let mut goals = Vec::new();
    if o.factors {
        let factors = compare_factors(&set, &corpus, &o).await?;
        goals.extend(print_factors(&o, &factors));
    }
    set.set_replication_factor(3).await?;
    if o.failover {
        let failover = failovers(&mut set, &corpus, &o).await?;
        goals.extend(print_failover(&failover));
    }
    if o.capacity {
        let steps = capacity(&set, &corpus, &o).await?;
        goals.extend(print_capacity(&steps));
    }
    print_summary(&goals, &machine);
    if o.keep {
        println!("kept {} (node logs: node1.log ...)", work.path().display());
    }
    drop(set);
    Ok(())
}

fn progress(message: &str) {
    eprintln!("[replication bench] {message}");
}

/// One goal and whether this run met it (None: a figure reported, no target), for the
/// summary.
struct Goal {
    what: String,
    met: Option<bool>,
}

// ---------------------------------------------------------------------------------------
// 1: replication factor 1 vs 3
// ---------------------------------------------------------------------------------------

struct Factors {
    /// RF1, then RF3.
    results: Vec<FactorResult>,
    /// The disk's sequential write limit, once per run (see [`common::sequential_limit`]).
    limits: Vec<Duration>,
}

struct FactorResult {
    rf: usize,
    bulk: Vec<BulkRun>,
    paced: PacedRun,
}

/// Bulk runs alternate RF1, RF3 (`runs` each, after one untimed warm-up), then one paced
/// latency run per factor. The factor is changed through the cluster API between runs;
/// it applies to sessions claimed afterwards, and every run opens new sessions.
async fn compare_factors(set: &RecorderSet, corpus: &Arc<Corpus>, o: &Options) -> Result<Factors> {
    set.set_replication_factor(3).await?;
    progress("warm-up: one untimed bulk run at RF3");
    bulk_run(set, corpus, o.bulk_streams, (o.total_bytes / 8).max(MIB), 0).await?;
    let mut bulk: [Vec<BulkRun>; 2] = [Vec::new(), Vec::new()];
    let mut limits = Vec::new();
    for run in 0..o.runs {
        settle().await;
        limits.push(common::sequential_limit(&set.root, o.total_bytes).await?);
        for (slot, rf) in [1usize, 3].into_iter().enumerate() {
            set.set_replication_factor(rf).await?;
            settle().await;
            let first_id = 1000 * (1 + run * 2 + slot);
            let result = bulk_run(set, corpus, o.bulk_streams, o.total_bytes, first_id).await?;
            progress(&format!(
                "bulk RF{rf} run {}: {:.1} MB/s",
                run + 1,
                mbps(result.bytes, result.elapsed)
            ));
            bulk[slot].push(result);
        }
    }
    let mut results = Vec::new();
    for (slot, rf) in [1usize, 3].into_iter().enumerate() {
        set.set_replication_factor(rf).await?;
        settle().await;
        progress(&format!("paced latency at RF{rf}"));
        let paced = paced_run(set, corpus, o, 20_000 + 1000 * rf).await?;
        results.push(FactorResult {
            rf,
            bulk: std::mem::take(&mut bulk[slot]),
            paced,
        });
    }
    Ok(Factors { results, limits })
}

/// Before each measurement: write back what earlier ones left dirty, then let the disk rest.
async fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    let _ = tokio::task::spawn_blocking(|| unsafe { libc::sync() }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
}

struct BulkRun {
    bytes: u64,
    /// Gate opened → last stream's final ack.
    elapsed: Duration,
    usage: Usage,
}

/// Bulk: `streams` stock v2 uploads, stream i to node i mod 3, each on its own h2c
/// connection, `total` bytes split evenly, each sending as fast as h2 flow control lets it.
/// All streams are admitted (200 received) before the clock starts. Timed from opening the
/// gate (every body starts at once) until the last stream has received an ack equal to its
/// length, i.e. until every byte is durable on a majority of its session's replica set.
async fn bulk_run(
    set: &RecorderSet,
    corpus: &Arc<Corpus>,
    streams: usize,
    total: u64,
    first_id: usize,
) -> Result<BulkRun> {
    let (go, gate) = watch::channel(false);
    let opened = stream::iter(0..streams)
        .map(|i| {
            let addr = set.ingest(i % NODES).to_string();
            let (chunks, bytes) = corpus.plan(first_id + i, total / streams as u64);
            let body = gated_body(chunks, gate.clone());
            async move {
                let (sender, _connection) = connect(&addr, next_client_ip()).await?;
                Ok::<_, anyhow::Error>((open_stock(sender, &addr, body).await?, bytes))
            }
        })
        .buffer_unordered(OPEN_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let bytes = opened.iter().map(|(_, b)| b).sum();
    let (reached_tx, mut reached) = mpsc::unbounded_channel();
    let readers: Vec<_> = opened
        .into_iter()
        .map(|(acks, bytes)| tokio::spawn(read_to_final_ack(acks, bytes, reached_tx.clone())))
        .collect();
    drop(reached_tx);
    let before = Usage::now(set).await?;
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
    let usage = Usage::now(set).await?.minus(&before);
    for reader in readers {
        reader.await.context("ack reader")??;
    }
    Ok(BulkRun {
        bytes,
        elapsed: last - started,
        usage,
    })
}

/// Reads a stream's acks to the end of its response; reports on `reached` when the ack
/// first equals `bytes`.
async fn read_to_final_ack(
    mut acks: AckStream,
    bytes: u64,
    reached: mpsc::UnboundedSender<Instant>,
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

struct PacedRun {
    samples: Vec<Duration>,
    wall: Duration,
    usage: Usage,
}

/// Ack latency of paced streams: `paced_streams` stock v2 uploads, stream i to node
/// i mod 3, each on its own h2c connection, each sending its header and then one
/// ~200-byte line every `paced_interval` (start phases spread over one interval) for
/// `paced_secs`. A line's latency is timed from the moment the body hands it to the h2
/// client to the arrival of the first ack frame whose offset is >= the line's end offset.
async fn paced_run(
    set: &RecorderSet,
    corpus: &Arc<Corpus>,
    o: &Options,
    first_id: usize,
) -> Result<PacedRun> {
    let stop = CancellationToken::new();
    let sink = Sink::default();
    let errors = Arc::new(ErrorLog::default());
    let mut sessions = Vec::new();
    for i in 0..o.paced_streams {
        let paced = Paced {
            header: corpus.header(first_id + i),
            lines: corpus.paced_lines(first_id + i, 256),
            every: o.paced_interval,
            phase: o.paced_interval * i as u32 / o.paced_streams as u32,
        };
        let addr = set.ingest(i % NODES);
        sessions.push(open_paced(addr, paced, &stop, &sink, &errors).await?);
    }
    let before = Usage::now(set).await?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(o.paced_secs)).await;
    let usage = Usage::now(set).await?.minus(&before);
    let wall = started.elapsed();
    stop.cancel();
    for session in sessions {
        session.reader.await.context("ack reader")??;
    }
    let samples = lock(&sink).iter().map(|(_, latency)| *latency).collect();
    Ok(PacedRun {
        samples,
        wall,
        usage,
    })
}

/// Latency samples of paced lines: (send time, latency).
type Sink = Arc<Mutex<Vec<(Instant, Duration)>>>;
/// Lines handed to the h2 client and not yet acked: (end offset, send time).
type Pending = Arc<Mutex<VecDeque<(u64, Instant)>>>;

/// What a paced session sends.
struct Paced {
    header: Bytes,
    lines: Vec<Bytes>,
    every: Duration,
    phase: Duration,
}

/// A paced session in flight: its unacked lines and its ack reader.
struct PacedSession {
    pending: Pending,
    reader: JoinHandle<Result<()>>,
}

/// Failures of paced sessions: how many, and the first one's text.
#[derive(Default)]
struct ErrorLog {
    count: AtomicUsize,
    first: Mutex<Option<String>>,
}

impl ErrorLog {
    fn record(&self, error: &anyhow::Error) {
        self.count.fetch_add(1, Ordering::Relaxed);
        lock(&self.first).get_or_insert_with(|| format!("{error:#}"));
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// Opens one paced stock v2 session on its own h2c connection; its reader feeds `sink`
/// and records its failure in `errors`.
async fn open_paced(
    addr: &str,
    paced: Paced,
    stop: &CancellationToken,
    sink: &Sink,
    errors: &Arc<ErrorLog>,
) -> Result<PacedSession> {
    let pending = Pending::default();
    let body = paced_body(paced, stop.clone(), pending.clone());
    let (sender, _connection) = connect(addr, next_client_ip()).await?;
    let acks = open_stock(sender, addr, body).await?;
    let (queue, sink, errors) = (pending.clone(), sink.clone(), errors.clone());
    let reader = tokio::spawn(async move {
        let result = paced_acks(acks, queue, sink).await;
        if let Err(e) = &result {
            errors.record(e);
        }
        result
    });
    Ok(PacedSession { pending, reader })
}

/// Moves acked lines from `pending` to `sink` as ack frames arrive: a line's latency ends
/// at the first ack frame whose offset covers its last byte.
async fn paced_acks(mut acks: AckStream, pending: Pending, sink: Sink) -> Result<()> {
    while let Some(ack) = acks.next().await? {
        let now = Instant::now();
        let mut acked = Vec::new();
        {
            let mut queue = lock(&pending);
            while let Some(&(end, sent)) = queue.front() {
                if end > ack {
                    break;
                }
                queue.pop_front();
                acked.push((sent, now - sent));
            }
        }
        lock(&sink).extend(acked);
    }
    ensure!(
        lock(&pending).is_empty(),
        "paced stream ended with unacked lines"
    );
    Ok(())
}

/// The header, then one line every `every` (first after `phase` + `every`) until `stop`;
/// each line goes on `pending` with its end offset when the body hands it over.
fn paced_body(paced: Paced, stop: CancellationToken, pending: Pending) -> UploadBody {
    struct State {
        ticker: tokio::time::Interval,
        lines: Vec<Bytes>,
        next: usize,
        offset: u64,
        stop: CancellationToken,
        pending: Pending,
    }
    let start = tokio::time::Instant::now() + paced.phase + paced.every;
    let mut ticker = tokio::time::interval_at(start, paced.every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = State {
        ticker,
        lines: paced.lines,
        next: 0,
        offset: paced.header.len() as u64,
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
        stream::once(future::ready(Ok(Frame::data(paced.header))))
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
// 2: failover
// ---------------------------------------------------------------------------------------

struct FailoverResult {
    rounds: Vec<Round>,
    /// Rounds that failed outright (no failover within the limit, a broken final stream).
    errors: Vec<String>,
    /// See [`RecorderSet::health_ahead_of_leader`], over the rounds.
    health_ahead_of_leader: Vec<Duration>,
}

/// One kill.
struct Round {
    /// Index of the killed node (the session's owner).
    killed: usize,
    killed_leader: bool,
    /// Replica set size of the session before the kill.
    replicas: usize,
    /// Index of the node that took the session over.
    new_owner: usize,
    /// Kill → the client saw its stream break.
    detected: Duration,
    /// Kill → a node answered 200 to the resume.
    accepted: Duration,
    /// Kill → the first ack covering a byte sent after the kill: the failover time.
    failover: Duration,
    /// Resume requests sent until one was accepted (connection refusals included).
    attempts: usize,
    /// Non-200 answers to resume requests (status and reason), not connection refusals.
    refusals: Vec<String>,
    /// `took_ms` of the new owner's "took the session over" log line.
    takeover_ms: Option<u64>,
    sent_at_kill: u64,
    acked_at_kill: u64,
    resume_at: u64,
    bytes: u64,
    /// Why the sealed recording differs from the client's bytes, if it does.
    mismatch: Option<String>,
    /// Ending the recording on the new owner (the killed node still down).
    ending: Ending,
    /// Restart of the killed node → every /healthz 200 with one agreed leader.
    rejoin: Duration,
}

/// `kills` rounds; each kills the node that owns that round's session (see [`pick_target`]).
async fn failovers(set: &mut RecorderSet, corpus: &Corpus, o: &Options) -> Result<FailoverResult> {
    let ahead_before = set.health_ahead_of_leader.borrow().len();
    let mut result = FailoverResult {
        rounds: Vec::new(),
        errors: Vec::new(),
        health_ahead_of_leader: Vec::new(),
    };
    for round in 0..o.kills {
        match failover_round(set, corpus, round, o.seed).await {
            Ok(r) => {
                progress(&describe_round(round, &r));
                result.rounds.push(r);
            }
            Err(e) => {
                let text = format!("round {round}: {e:#}");
                progress(&text);
                result.errors.push(text);
                set.start_stopped()?;
                set.wait_healthy().await?;
            }
        }
    }
    result.health_ahead_of_leader = set.health_ahead_of_leader.borrow()[ahead_before..].to_vec();
    Ok(result)
}

fn describe_round(round: usize, r: &Round) -> String {
    format!(
        "round {round}: killed node {}{} -> node {} after {} attempt(s), failover {}, takeover {}, {}",
        r.killed + 1,
        if r.killed_leader { " (leader)" } else { "" },
        r.new_owner + 1,
        r.attempts,
        ms(Some(r.failover)),
        r.takeover_ms
            .map(|t| format!("{t}ms"))
            .unwrap_or_else(|| "?".into()),
        r.mismatch.as_deref().unwrap_or("sha256 equal")
    )
}

/// One round: a resumable session on the round's target node (its owner, see
/// [`pick_target`]), a line every 20 ms;
/// after 1 s the owner is killed with SIGKILL; the client fails over and goes on; then it
/// ends the recording, the sealed recording on the new owner is compared with the
/// client's bytes, and the killed node is restarted until the set is healthy again.
async fn failover_round(
    set: &mut RecorderSet,
    corpus: &Corpus,
    round: usize,
    seed: u64,
) -> Result<Round> {
    let target = pick_target(round, set.wait_healthy().await?);
    let id = format!("failover-{seed}-r{round:04}");
    let mut rec = Recording::new(corpus, 30_000 + round);
    let mut stream =
        match ResumableStream::open(target, set.ingest(target), rec.client, &id, None).await {
            Attempt::Accepted(stream) => stream,
            Attempt::Refused(reason) => bail!("node {} refused the session: {reason}", target + 1),
        };
    ensure!(stream.offset == 0, "a new session must start at offset 0");
    stream.send(rec.start()).await;
    let replicas = session_replicas(set, target, &id).await?;
    let mut ticker = tokio::time::interval(FAILOVER_LINE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    stream_before_kill(&mut rec, &mut stream, &mut ticker).await?;
    let leader = healthy_leader(set.ingest(target)).await;
    let (sent_at_kill, acked_at_kill) = (rec.len(), rec.acked);
    let killed_at = Instant::now();
    set.kill(target)?;
    let moved = fail_over(set, &mut rec, stream, &mut ticker, &id, target, killed_at).await?;
    let new_owner = moved.stream.node;
    let ending = finish(&mut rec, moved.stream).await?;
    let mismatch = verify(set, new_owner, &id, &rec.bytes).await?;
    let takeover_ms = takeover_ms(&set.members[new_owner].log, &id);
    let restarted = Instant::now();
    set.start(target)?;
    set.wait_healthy().await?;
    Ok(Round {
        killed: target,
        killed_leader: leader == Some(set.members[target].id),
        replicas,
        new_owner,
        detected: moved.detected - killed_at,
        accepted: moved.accepted - killed_at,
        failover: moved.first_ack - killed_at,
        attempts: moved.attempts,
        refusals: moved.refusals,
        takeover_ms,
        sent_at_kill,
        acked_at_kill,
        resume_at: moved.resume_at,
        bytes: rec.len(),
        mismatch,
        ending,
        rejoin: restarted.elapsed(),
    })
}

/// Round r kills the Raft leader when r mod 3 = 0, else a follower (the two take turns):
/// a third of the kills hit the leader, as for sessions spread evenly over the nodes.
fn pick_target(round: usize, leader: usize) -> usize {
    let followers: Vec<usize> = (0..NODES).filter(|&i| i != leader).collect();
    match round % 3 {
        0 => leader,
        k => followers[(round / 3 + k) % followers.len()],
    }
}

/// The client side of one resumable session: every byte it produced, in order (a real
/// client drops acked bytes; here they are kept to compare with the sealed recording),
/// and the highest ack from any node.
struct Recording {
    /// The client's source address, the same on every connection.
    client: IpAddr,
    bytes: Vec<u8>,
    acked: u64,
    header: Bytes,
    lines: Vec<Bytes>,
    next: usize,
}

impl Recording {
    fn new(corpus: &Corpus, id: usize) -> Recording {
        Recording {
            client: next_client_ip(),
            bytes: Vec::new(),
            acked: 0,
            header: corpus.header(id),
            lines: corpus.paced_lines(id, 256),
            next: 0,
        }
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The header line, appended to the recording.
    fn start(&mut self) -> Bytes {
        self.bytes.extend_from_slice(&self.header);
        self.header.clone()
    }

    /// The next output line, appended to the recording.
    fn next_line(&mut self) -> Bytes {
        let line = self.lines[self.next % self.lines.len()].clone();
        self.next += 1;
        self.bytes.extend_from_slice(&line);
        line
    }

    fn on_ack(&mut self, ack: u64) -> Result<()> {
        ensure!(
            ack <= self.len(),
            "ack {ack} beyond the {} bytes sent",
            self.len()
        );
        self.acked = self.acked.max(ack);
        Ok(())
    }
}

/// Streams a line every tick for [`BEFORE_KILL`], and at least until the first line is
/// acked (so the kill always hits a session with durable bytes).
async fn stream_before_kill(
    rec: &mut Recording,
    stream: &mut ResumableStream,
    ticker: &mut tokio::time::Interval,
) -> Result<()> {
    let until = Instant::now() + BEFORE_KILL;
    let first_line_end = rec.len() + 1;
    while Instant::now() < until || rec.acked < first_line_end {
        tokio::select! {
            _ = ticker.tick() => {
                let line = rec.next_line();
                stream.send(line).await;
            }
            event = stream.events.recv() => match event {
                Some(StreamEvent::Ack(ack, _)) => rec.on_ack(ack)?,
                Some(StreamEvent::Ended) | None => bail!("the stream ended before the kill"),
                Some(StreamEvent::Broken(e)) => bail!("the stream broke before the kill: {e}"),
            },
        }
    }
    Ok(())
}

/// How the session moved.
struct Moved {
    stream: ResumableStream,
    detected: Instant,
    accepted: Instant,
    first_ack: Instant,
    attempts: usize,
    refusals: Vec<String>,
    resume_at: u64,
}

/// What the failover loop has seen so far.
#[derive(Default)]
struct FailoverState {
    detected: Option<Instant>,
    accepted: Option<Instant>,
    first_ack: Option<Instant>,
    attempts: usize,
    refusals: Vec<String>,
    resume_at: u64,
}

/// After the kill: the client keeps producing a line every 20 ms (buffered while no node
/// has the session). When its stream breaks it reconnects in the background with
/// `Quorumcast-Resume: <last ack>`, trying the nodes after the failed one in order (the
/// failed one last) until one accepts, then resends from the resume offset it answered.
/// Returns [`AFTER_FAILOVER`] after the first ack past the bytes sent before the kill.
async fn fail_over(
    set: &RecorderSet,
    rec: &mut Recording,
    old: ResumableStream,
    ticker: &mut tokio::time::Interval,
    id: &str,
    failed: usize,
    killed_at: Instant,
) -> Result<Moved> {
    let sent_at_kill = rec.len();
    let deadline = tokio::time::Instant::from_std(killed_at + FAILOVER_LIMIT);
    let mut current = Some(old);
    let mut reconnecting: Option<JoinHandle<Result<Reconnected>>> = None;
    let mut state = FailoverState::default();
    loop {
        if let Some(first) = state.first_ack {
            if Instant::now() >= first + AFTER_FAILOVER {
                break;
            }
        }
        tokio::select! {
            _ = ticker.tick() => {
                let line = rec.next_line();
                if let Some(stream) = &current {
                    stream.send(line).await;
                }
            }
            event = next_event(&mut current) => match event {
                StreamEvent::Ack(ack, at) => {
                    rec.on_ack(ack)?;
                    if ack > sent_at_kill && state.first_ack.is_none() {
                        state.first_ack = Some(at);
                    }
                }
                StreamEvent::Ended | StreamEvent::Broken(_) => {
                    state.detected.get_or_insert_with(Instant::now);
                    current = None;
                    let order = set.try_order(failed);
                    let task = reconnect(order, (id.to_string(), rec.client), rec.acked, deadline);
                    reconnecting = Some(tokio::spawn(task));
                }
            },
            joined = join_reconnect(&mut reconnecting) => {
                reconnecting = None;
                let reconnected = joined.context("reconnect task")??;
                current = Some(resume(rec, reconnected, &mut state).await?);
            }
            _ = tokio::time::sleep_until(deadline) => {
                bail!("no ack past byte {sent_at_kill} within {FAILOVER_LIMIT:?} of the kill")
            }
        }
    }
    let stream = current.context("no stream after the failover")?;
    Ok(Moved {
        stream,
        detected: state.detected.context("the old stream never broke")?,
        accepted: state.accepted.context("no resume accepted")?,
        first_ack: state.first_ack.context("no ack")?,
        attempts: state.attempts,
        refusals: state.refusals,
        resume_at: state.resume_at,
    })
}

/// Checks the resume offset N (last ack <= N <= bytes sent) and resends `[N..)`.
async fn resume(
    rec: &Recording,
    reconnected: Reconnected,
    state: &mut FailoverState,
) -> Result<ResumableStream> {
    state.accepted.get_or_insert_with(Instant::now);
    state.attempts += reconnected.attempts;
    state.refusals.extend(reconnected.refusals);
    let stream = reconnected.stream;
    let n = stream.offset;
    ensure!(
        rec.acked <= n && n <= rec.len(),
        "node {} answered resume offset {n}, outside [{}, {}]",
        stream.node + 1,
        rec.acked,
        rec.len()
    );
    state.resume_at = n;
    stream
        .send(Bytes::copy_from_slice(&rec.bytes[n as usize..]))
        .await;
    Ok(stream)
}

async fn next_event(current: &mut Option<ResumableStream>) -> StreamEvent {
    match current.as_mut() {
        Some(stream) => stream
            .events
            .recv()
            .await
            .unwrap_or_else(|| StreamEvent::Broken("ack reader gone".into())),
        None => future::pending().await,
    }
}

async fn join_reconnect(
    task: &mut Option<JoinHandle<Result<Reconnected>>>,
) -> Result<Result<Reconnected>, tokio::task::JoinError> {
    match task.as_mut() {
        Some(task) => task.await,
        None => future::pending().await,
    }
}

struct Reconnected {
    stream: ResumableStream,
    attempts: usize,
    refusals: Vec<String>,
}

/// Resume requests to the nodes of `order`, pass after pass (a [`RETRY_PAUSE`] between
/// passes), until one answers 200 or `deadline` passes.
async fn reconnect(
    order: Vec<(usize, String)>,
    (id, from): (String, IpAddr),
    acked: u64,
    deadline: tokio::time::Instant,
) -> Result<Reconnected> {
    let mut attempts = 0;
    let mut refusals = Vec::new();
    loop {
        for (node, addr) in &order {
            attempts += 1;
            match ResumableStream::open(*node, addr, from, &id, Some(acked)).await {
                Attempt::Accepted(stream) => {
                    return Ok(Reconnected {
                        stream,
                        attempts,
                        refusals,
                    })
                }
                Attempt::Refused(reason) if reason.starts_with("connect:") => {}
                Attempt::Refused(reason) => refusals.push(format!("node {}: {reason}", node + 1)),
            }
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no node took the session over; refusals: {refusals:?}"
        );
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// How long the end of a recording took, from the clean end of the request body.
struct Ending {
    /// → the ack of every byte.
    final_ack: Duration,
    /// → the end of the response (the node has sealed the session).
    response_end: Duration,
}

/// Ends the recording (END_STREAM), then waits for an ack of every byte and the end of
/// the response; times both from the end of the body.
async fn finish(rec: &mut Recording, mut stream: ResumableStream) -> Result<Ending> {
    stream.end_body();
    let ended_body = Instant::now();
    let total = rec.len();
    // The ack of every byte may already be here (the last line acked before the end).
    let mut final_ack = (rec.acked == total).then_some(Duration::ZERO);
    let deadline = tokio::time::sleep(FINISH_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            event = stream.events.recv() => match event {
                Some(StreamEvent::Ack(ack, at)) => {
                    rec.on_ack(ack)?;
                    if ack == total {
                        final_ack.get_or_insert(at - ended_body);
                    }
                }
                Some(StreamEvent::Ended) => {
                    let final_ack = final_ack
                        .with_context(|| format!("response ended at ack {} of {total}", rec.acked))?;
                    let response_end = ended_body.elapsed();
                    return Ok(Ending { final_ack, response_end });
                }
                Some(StreamEvent::Broken(e)) => bail!("the stream broke while ending: {e}"),
                None => bail!("the ack reader vanished while ending"),
            },
            _ = &mut deadline => bail!("no final ack of {total} and end of response within {FINISH_TIMEOUT:?}"),
        }
    }
}

/// The sealed recording on `node` (its local index record of `id` in state `complete`)
/// against the client's bytes, by sha256. `Some(reason)` when they differ.
async fn verify(set: &RecorderSet, node: usize, id: &str, sent: &[u8]) -> Result<Option<String>> {
    let deadline = Instant::now() + FINISH_TIMEOUT;
    let path = loop {
        let (status, body) = http_get(set.ingest(node), "/api/v1/sessions").await?;
        ensure!(status == 200, "GET /api/v1/sessions: {status}");
        let records: Vec<Value> = serde_json::from_str(&body)?;
        let found = records
            .iter()
            .find(|r| r["id"] == id && r["state"] == "complete");
        if let Some(path) = found.and_then(|r| r["path"].as_str()) {
            break path.to_string();
        }
        if Instant::now() > deadline {
            return Ok(Some(format!("no complete record on node {}", node + 1)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stored = std::fs::read(set.dst(node).join(&path)).context("read the sealed recording")?;
    if sha256(&stored) == sha256(sent) {
        return Ok(None);
    }
    Ok(Some(format!(
        "sha256 differs: stored {} bytes, sent {}",
        stored.len(),
        sent.len()
    )))
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The session's replica set size from the cluster table (as `via` has applied it).
async fn session_replicas(set: &RecorderSet, via: usize, id: &str) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) =
            http_get(set.ingest(via), "/api/v1/cluster/sessions?live=true").await?;
        ensure!(status == 200, "GET /api/v1/cluster/sessions: {status}");
        let table: Vec<Value> = serde_json::from_str(&body)?;
        let replicas = table
            .iter()
            .find(|s| s["id"] == id)
            .and_then(|s| s["replicas"].as_array().map(Vec::len));
        if let Some(n) = replicas {
            return Ok(n);
        }
        ensure!(
            Instant::now() < deadline,
            "session {id} not in the cluster table"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `took_ms` of the "took the session over" line for `id` in a node's log.
fn takeover_ms(log: &Path, id: &str) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .rfind(|l| l.contains("took the session over") && l.contains(&format!("id={id} ")))?;
    let rest = line.split("took_ms=").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------
// A resumable stream: our extension of POST /v2/record, on its own h2c connection
// ---------------------------------------------------------------------------------------

enum StreamEvent {
    /// An ack frame and when it arrived.
    Ack(u64, Instant),
    /// The response ended cleanly.
    Ended,
    /// Reset, error frame, unreadable frame.
    Broken(String),
}

enum Attempt {
    Accepted(ResumableStream),
    /// Why not (a reason starting with "connect:" means the TCP connect failed).
    Refused(String),
}

/// One `POST /v2/record` with `Quorumcast-Session` on its own connection. Dropping it
/// abandons the stream with a reset (never a clean end of the body): only
/// [`ResumableStream::end_body`] ends the recording.
struct ResumableStream {
    node: usize,
    /// The `Quorumcast-Resume-Offset` the node answered.
    offset: u64,
    body: Option<mpsc::Sender<Bytes>>,
    abandon: CancellationToken,
    events: mpsc::UnboundedReceiver<StreamEvent>,
    connection: JoinHandle<()>,
    reader: JoinHandle<()>,
}

impl ResumableStream {
    /// Opens the session `id` on `addr` from the client address `from`: new when `resume`
    /// is None, else resumed with `Quorumcast-Resume: <resume>`.
    async fn open(node: usize, addr: &str, from: IpAddr, id: &str, resume: Option<u64>) -> Attempt {
        let (connected, connection) =
            match tokio::time::timeout(ATTEMPT_TIMEOUT, connect(addr, from)).await {
                Ok(Ok(connected)) => connected,
                Ok(Err(e)) => return Attempt::Refused(format!("connect: {e:#}")),
                Err(_) => return Attempt::Refused("connect: timed out".into()),
            };
        let (body_tx, body_rx) = mpsc::channel(1024);
        let abandon = CancellationToken::new();
        let body = channel_body(body_rx, abandon.clone());
        let mut headers = vec![("quorumcast-session", id.to_string())];
        if let Some(acked) = resume {
            headers.push(("quorumcast-resume", acked.to_string()));
        }
        let request = send_upload(connected, addr, body, &headers);
        let response = match tokio::time::timeout(ATTEMPT_TIMEOUT, request).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return refused(&abandon, &connection, format!("{e:#}")),
            Err(_) => return refused(&abandon, &connection, "no answer in time".into()),
        };
        let status = response.status();
        if status != http::StatusCode::OK {
            let text = read_text(response.into_body()).await;
            return refused(&abandon, &connection, format!("{status}: {}", text.trim()));
        }
        let offset = response
            .headers()
            .get("quorumcast-resume-offset")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let Some(offset) = offset else {
            let reason = "no valid Quorumcast-Resume-Offset".to_string();
            return refused(&abandon, &connection, reason);
        };
        let (events_tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(forward_acks(
            AckStream::new(response.into_body()),
            events_tx,
        ));
        Attempt::Accepted(ResumableStream {
            node,
            offset,
            body: Some(body_tx),
            abandon,
            events,
            connection,
            reader,
        })
    }

    /// Hands bytes to the h2 client; a stream that is gone drops them (its break event
    /// follows, and the bytes are resent from the resume offset).
    async fn send(&self, bytes: Bytes) {
        if let Some(body) = &self.body {
            let _ = body.send(bytes).await;
        }
    }

    /// Ends the request body cleanly: the end of the recording.
    fn end_body(&mut self) {
        self.body = None;
    }
}

impl Drop for ResumableStream {
    fn drop(&mut self) {
        self.abandon.cancel();
        self.reader.abort();
        self.connection.abort();
    }
}

fn refused(abandon: &CancellationToken, connection: &JoinHandle<()>, reason: String) -> Attempt {
    abandon.cancel();
    connection.abort();
    Attempt::Refused(reason)
}

/// A request body fed from a channel: the channel's end is the body's clean end; a
/// cancelled `abandon` yields an error instead, which resets the h2 stream.
fn channel_body(rx: mpsc::Receiver<Bytes>, abandon: CancellationToken) -> UploadBody {
    let frames = stream::unfold(Some((rx, abandon)), |state| async move {
        let (mut rx, abandon) = state?;
        tokio::select! {
            biased;
            _ = abandon.cancelled() => {
                Some((Err(std::io::Error::other("stream abandoned")), None))
            }
            next = rx.recv() => next.map(|bytes| (Ok(Frame::data(bytes)), Some((rx, abandon)))),
        }
    });
    StreamBody::new(frames.boxed())
}

/// Turns a response's ack frames into events, until its end or its failure.
async fn forward_acks(mut acks: AckStream, events: mpsc::UnboundedSender<StreamEvent>) {
    loop {
        let event = match acks.next().await {
            Ok(Some(ack)) => StreamEvent::Ack(ack, Instant::now()),
            Ok(None) => StreamEvent::Ended,
            Err(e) => StreamEvent::Broken(format!("{e:#}")),
        };
        let last = !matches!(event, StreamEvent::Ack(..));
        if events.send(event).is_err() || last {
            return;
        }
    }
}

async fn read_text(body: Incoming) -> String {
    let read = tokio::time::timeout(HTTP_TIMEOUT, body.collect()).await;
    match read {
        Ok(Ok(collected)) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        _ => String::new(),
    }
}

// ---------------------------------------------------------------------------------------
// 3: capacity
// ---------------------------------------------------------------------------------------

struct Step {
    sessions: usize,
    /// Sessions open when the window started.
    open: usize,
    /// Opening this step's new sessions, first connect to last 200.
    opening: Duration,
    samples: Vec<Duration>,
    /// Lines sent in the window and still unacked when read (counted in the samples with
    /// their age, a lower bound).
    unacked: usize,
    /// Failed opens and broken sessions during the step.
    errors: usize,
    first_error: Option<String>,
    wall: Duration,
    usage: Usage,
    /// VmRSS of each node at the end of the window, KiB.
    rss_kib: Vec<u64>,
}

impl Step {
    fn p99(&self) -> Option<Duration> {
        percentiles(&self.samples).1
    }

    fn passed(&self) -> bool {
        self.errors == 0 && self.p99().is_some_and(|p99| p99 < CAPACITY_P99_LIMIT)
    }
}

/// Sessions open while ramping.
struct Live {
    stop: CancellationToken,
    sessions: Vec<PacedSession>,
    sink: Sink,
    errors: Arc<ErrorLog>,
}

/// Ramps concurrent paced sessions (each: header, then one ~200-byte line a second,
/// session i to node i mod 3, each on its own h2c connection) through `steps`; stops
/// after the first step that fails.
async fn capacity(set: &RecorderSet, corpus: &Arc<Corpus>, o: &Options) -> Result<Vec<Step>> {
    let mut live = Live {
        stop: CancellationToken::new(),
        sessions: Vec::new(),
        sink: Sink::default(),
        errors: Arc::new(ErrorLog::default()),
    };
    let mut steps = Vec::new();
    for &target in &o.steps {
        settle().await;
        let step = capacity_step(set, corpus, &mut live, target, o.step_secs).await?;
        let passed = step.passed();
        progress(&format!(
            "capacity {target}: p99 {}, {} error(s)",
            ms(step.p99()),
            step.errors
        ));
        steps.push(step);
        if !passed {
            break;
        }
    }
    close(live).await;
    Ok(steps)
}

/// One step: opens sessions up to `target`, waits [`CAPACITY_SETTLE`], then measures
/// for `secs`. A sample is a line sent inside the window: from the moment the body hands
/// it to the h2 client to the first ack frame covering its last byte (read
/// [`CAPACITY_GRACE`] after the window, so late acks still count).
async fn capacity_step(
    set: &RecorderSet,
    corpus: &Arc<Corpus>,
    live: &mut Live,
    target: usize,
    secs: u64,
) -> Result<Step> {
    let errors_before = live.errors.count();
    progress(&format!(
        "capacity: opening sessions {}..{target}",
        live.sessions.len()
    ));
    let opening = open_sessions(set, corpus, live, target).await;
    tokio::time::sleep(CAPACITY_SETTLE).await;
    let before = Usage::now(set).await?;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let to = Instant::now();
    let usage = Usage::now(set).await?.minus(&before);
    let rss_kib = set.rss_kib()?;
    tokio::time::sleep(CAPACITY_GRACE).await;
    let (samples, unacked) = window_samples(live, from, to);
    let errors = live.errors.count() - errors_before;
    Ok(Step {
        sessions: target,
        open: live.sessions.len(),
        opening,
        samples,
        unacked,
        errors,
        first_error: lock(&live.errors.first).clone(),
        wall: to - from,
        usage,
        rss_kib,
    })
}

/// Opens sessions `live.sessions.len()..target`, [`OPEN_CONCURRENCY`] at a time, start
/// phases spread over the line interval; a failed open is recorded in `live.errors`.
async fn open_sessions(
    set: &RecorderSet,
    corpus: &Arc<Corpus>,
    live: &mut Live,
    target: usize,
) -> Duration {
    let started = Instant::now();
    let (stop, sink, errors) = (&live.stop, &live.sink, &live.errors);
    let opened: Vec<Result<PacedSession>> = stream::iter(live.sessions.len()..target)
        .map(|i| {
            let paced = Paced {
                header: corpus.header(100_000 + i),
                lines: corpus.paced_lines(100_000 + i, 16),
                every: CAPACITY_LINE_EVERY,
                // Golden-ratio spacing keeps the phases even at every step.
                phase: CAPACITY_LINE_EVERY.mul_f64((i as f64 * 0.618_033_988_75).fract()),
            };
            let addr = set.ingest(i % NODES).to_string();
            async move { open_paced(&addr, paced, stop, sink, errors).await }
        })
        .buffer_unordered(OPEN_CONCURRENCY)
        .collect()
        .await;
    for result in opened {
        match result {
            Ok(session) => live.sessions.push(session),
            Err(e) => live.errors.record(&e.context("opening a session")),
        }
    }
    started.elapsed()
}

/// Latencies of the lines sent in `[from, to]`: acked ones, plus the age of those still
/// unacked (counted separately too). Older samples are dropped from the sink.
fn window_samples(live: &Live, from: Instant, to: Instant) -> (Vec<Duration>, usize) {
    let inside = |sent: &Instant| *sent >= from && *sent <= to;
    let mut samples: Vec<Duration> = lock(&live.sink)
        .iter()
        .filter(|(sent, _)| inside(sent))
        .map(|(_, latency)| *latency)
        .collect();
    let now = Instant::now();
    let mut unacked = 0;
    for session in &live.sessions {
        for (_, sent) in lock(&session.pending).iter().filter(|(_, s)| inside(s)) {
            unacked += 1;
            samples.push(now - *sent);
        }
    }
    lock(&live.sink).retain(|(sent, _)| *sent > to);
    (samples, unacked)
}

/// Ends every session's body and waits (bounded) for their final acks.
async fn close(live: Live) {
    live.stop.cancel();
    let count = live.sessions.len();
    let readers = future::join_all(live.sessions.into_iter().map(|s| s.reader));
    match tokio::time::timeout(Duration::from_secs(60), readers).await {
        Ok(results) => {
            let clean = results.iter().filter(|r| matches!(r, Ok(Ok(())))).count();
            progress(&format!(
                "capacity: {clean} of {count} sessions ended cleanly"
            ));
        }
        Err(_) => progress(&format!(
            "capacity: {count} sessions did not all end within 60 s"
        )),
    }
}

// ---------------------------------------------------------------------------------------
// h2c client: prior knowledge, one POST /v2/record per upload
// ---------------------------------------------------------------------------------------

type BodyItem = Result<Frame<Bytes>, std::io::Error>;
type UploadBody = StreamBody<BoxStream<'static, BodyItem>>;

/// Source addresses handed out so far (see [`next_client_ip`]).
static CLIENTS: AtomicUsize = AtomicUsize::new(0);

/// A loopback source address of its own for every session the bench opens, as if each
/// came from its own SSH server. Recordings are named after the peer's address and their
/// start second; sessions from one address started in the same second need suffixed
/// names, reserved set-wide by retried claims (one Raft proposal each), a cost of one
/// busy SSH server that these measurements keep out.
fn next_client_ip() -> IpAddr {
    let n = CLIENTS.fetch_add(1, Ordering::Relaxed);
    IpAddr::V4(Ipv4Addr::new(
        127,
        10 + (n / 62_500 % 200) as u8,
        (n / 250 % 250) as u8,
        (n % 250 + 1) as u8,
    ))
}

/// A new h2c connection (prior knowledge, TCP_NODELAY) from `from`, driven by a spawned
/// task whose handle is returned (aborting it drops the connection).
async fn connect(addr: &str, from: IpAddr) -> Result<(SendRequest<UploadBody>, JoinHandle<()>)> {
    let target: SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(from, 0))
        .with_context(|| format!("bind {from}"))?;
    let tcp = socket
        .connect(target)
        .await
        .with_context(|| format!("connect {addr} from {from}"))?;
    tcp.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .context("h2c handshake")?;
    let task = tokio::spawn(async move {
        // Errors here (a killed node) surface on the request's own streams.
        let _ = connection.await;
    });
    Ok((sender, task))
}

/// `POST /v2/record` with `body` and extra `headers`; the response, whatever its status.
async fn send_upload(
    mut sender: SendRequest<UploadBody>,
    addr: &str,
    body: UploadBody,
    headers: &[(&str, String)],
) -> Result<http::Response<Incoming>> {
    sender.ready().await.context("h2 connection not ready")?;
    let mut request = http::Request::post(format!("http://{addr}/v2/record"));
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    sender
        .send_request(request.body(body)?)
        .await
        .context("POST /v2/record")
}

/// A stock v2 upload (no extension headers); its ack stream once the 200 has arrived.
async fn open_stock(
    sender: SendRequest<UploadBody>,
    addr: &str,
    body: UploadBody,
) -> Result<AckStream> {
    let response = send_upload(sender, addr, body, &[]).await?;
    let status = response.status();
    if status != http::StatusCode::OK {
        let text = read_text(response.into_body()).await;
        bail!("upload refused: {status}: {}", text.trim());
    }
    Ok(AckStream::new(response.into_body()))
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
    fn new(body: Incoming) -> AckStream {
        AckStream {
            body,
            buf: Vec::new(),
        }
    }

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

/// One HTTP/1.1 request (cluster API, /healthz, /metrics); status and body text.
async fn http_request(
    addr: &str,
    method: http::Method,
    path: &str,
    json: Option<String>,
) -> Result<(u16, String)> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr);
        if json.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let body = Full::new(Bytes::from(json.unwrap_or_default()));
        let response = sender.send_request(request.body(body)?).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .with_context(|| format!("http://{addr}{path} timed out"))?
        .with_context(|| format!("http://{addr}{path}"))
}

async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    http_request(addr, http::Method::GET, path, None).await
}

// ---------------------------------------------------------------------------------------
// The recorder set: certificates, configs, node processes
// ---------------------------------------------------------------------------------------

struct Member {
    id: u64,
    ingest: String,
    cluster: String,
    dir: PathBuf,
    config: PathBuf,
    /// stderr of every incarnation of the node (appended across restarts).
    log: PathBuf,
    node: Option<NodeProcess>,
}

struct RecorderSet {
    /// The work dir: the nodes' dirs, configs and logs are in it.
    root: PathBuf,
    /// The node binary, copied into the work dir: another build replacing the one in
    /// the target dir cannot change what a restarted node runs.
    bin: PathBuf,
    members: Vec<Member>,
    log_filter: String,
    /// Waits for health in which every /healthz was already 200 (one agreed leader) while
    /// the leader did not yet count every member up, and for how long: how often, and how
    /// far, the nodes' own health ran ahead of the leader's view.
    health_ahead_of_leader: std::cell::RefCell<Vec<Duration>>,
}

impl RecorderSet {
    /// A CA, one certificate and TOML config per node, and the 3 nodes started.
    fn create(root: &Path, node_bin: &Path, log_filter: &str) -> Result<RecorderSet> {
        let bin = root.join("quorumcast");
        std::fs::copy(node_bin, &bin).with_context(|| format!("copy {}", node_bin.display()))?;
        run_quorumcast(
            &bin,
            &["certs", "init", "--out", path_str(&root.join("ca"))?],
        )?;
        let mut members = Vec::new();
        for id in 1..=NODES as u64 {
            members.push(Member {
                id,
                ingest: format!("127.0.0.1:{}", common::ports::free_port()?),
                cluster: format!("127.0.0.1:{}", common::ports::free_port()?),
                dir: root.join(format!("node{id}")),
                config: root.join(format!("node{id}.toml")),
                log: root.join(format!("node{id}.log")),
                node: None,
            });
        }
        let initial: Vec<String> = members
            .iter()
            .map(|m| {
                format!(
                    "{{ id = {}, cluster_addr = \"{}\", ingest_addr = \"{}\" }}",
                    m.id, m.cluster, m.ingest
                )
            })
            .collect();
        for m in &members {
            write_node_config(&bin, root, m, &initial.join(", "))?;
        }
        let mut set = RecorderSet {
            root: root.to_path_buf(),
            bin,
            members,
            log_filter: log_filter.to_string(),
            health_ahead_of_leader: std::cell::RefCell::new(Vec::new()),
        };
        for i in 0..NODES {
            set.start(i)?;
        }
        Ok(set)
    }

    fn ingest(&self, i: usize) -> &str {
        &self.members[i].ingest
    }

    fn dst(&self, i: usize) -> PathBuf {
        self.members[i].dir.join("dst")
    }

    /// Starts node `i` on its dirs and ports (after a kill: a restart).
    fn start(&mut self, i: usize) -> Result<()> {
        let node = NodeProcess::spawn(&self.bin, &self.members[i], &self.log_filter)?;
        self.members[i].node = Some(node);
        Ok(())
    }

    /// Starts every node that is not running.
    fn start_stopped(&mut self) -> Result<()> {
        for i in 0..NODES {
            if self.members[i].node.is_none() {
                self.start(i)?;
            }
        }
        Ok(())
    }

    /// SIGKILL to node `i`, and reaps it.
    fn kill(&mut self, i: usize) -> Result<()> {
        let mut node = self.members[i].node.take().context("node not running")?;
        node.kill()
    }

    /// The nodes after `failed` in order, wrapping around, `failed` last.
    fn try_order(&self, failed: usize) -> Vec<(usize, String)> {
        (1..=NODES)
            .map(|k| (failed + k) % NODES)
            .map(|i| (i, self.members[i].ingest.clone()))
            .collect()
    }

    /// Waits until every node answers /healthz 200 and all name the same leader; returns
    /// the leader's index.
    async fn wait_healthy(&self) -> Result<usize> {
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        let mut ahead_since: Option<Instant> = None;
        loop {
            let mut leaders = Vec::new();
            for m in &self.members {
                leaders.push(healthy_leader(&m.ingest).await);
            }
            let first = leaders[0];
            if first.is_some() && leaders.iter().all(|l| *l == first) {
                let leader = first.context("no leader")?;
                let index = self
                    .members
                    .iter()
                    .position(|m| m.id == leader)
                    .context("the leader is not a member")?;
                // A node's own /healthz can't tell whether the leader has heard from it
                // yet; until it has, new sessions get a replica set without it.
                if all_up_for_leader(self.ingest(index)).await {
                    if let Some(since) = ahead_since {
                        self.health_ahead_of_leader
                            .borrow_mut()
                            .push(since.elapsed());
                    }
                    return Ok(index);
                }
                if ahead_since.is_none() {
                    ahead_since = Some(Instant::now());
                    progress(&format!(
                        "every /healthz is 200 but the leader (node {leader}) does not count every member up yet: {}",
                        members_seen_by(self.ingest(index)).await
                    ));
                }
            }
            ensure!(
                Instant::now() < deadline,
                "set not healthy within {HEALTHY_TIMEOUT:?}: leaders {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sets the cluster's replication factor (other settings as they are) and waits until
    /// every node has applied it.
    async fn set_replication_factor(&self, rf: usize) -> Result<()> {
        let path = "/api/v1/cluster/settings";
        let (status, body) = http_get(self.ingest(0), path).await?;
        ensure!(status == 200, "GET {path}: {status} {body}");
        let mut settings: Value = serde_json::from_str(&body)?;
        settings["replication_factor"] = rf.into();
        let json = Some(settings.to_string());
        let (status, body) = http_request(self.ingest(0), http::Method::POST, path, json).await?;
        ensure!(status == 200, "POST {path}: {status} {body}");
        let deadline = Instant::now() + Duration::from_secs(10);
        for m in &self.members {
            loop {
                let (_, body) = http_get(&m.ingest, path).await?;
                let applied: Value = serde_json::from_str(&body)?;
                if applied["replication_factor"] == rf {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "node {} never applied RF{rf}",
                    m.id
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.node.as_ref().map(|n| n.child.id()))
            .collect()
    }

    fn rss_kib(&self) -> Result<Vec<u64>> {
        self.pids()
            .into_iter()
            .map(|pid| status_kib(pid, "VmRSS"))
            .collect()
    }
}

/// Whether the leader's cluster status counts every member as up for new replica sets.
async fn all_up_for_leader(leader: &str) -> bool {
    let Ok((200, body)) = http_get(leader, "/api/v1/cluster/status").await else {
        return false;
    };
    let Ok(status) = serde_json::from_str::<Value>(&body) else {
        return false;
    };
    let leader = status["node_id"].clone();
    let members = status["members"].as_array().cloned().unwrap_or_default();
    !members.is_empty() && members.iter().all(|m| member_up(m, &leader))
}

/// Each member's id, `up` and last contact in a node's status, for the bench's log.
async fn members_seen_by(node: &str) -> String {
    let Ok((_, body)) = http_get(node, "/api/v1/cluster/status").await else {
        return "(no status)".into();
    };
    let status: Value = serde_json::from_str(&body).unwrap_or_default();
    let members = status["members"].as_array().cloned().unwrap_or_default();
    members
        .iter()
        .map(|m| {
            format!(
                "node {} up {} contact {} ms",
                m["id"], m["up"], m["last_contact_ms"]
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A member's `up` in the leader's status. Builds before `up` existed (A/B runs with
/// `--node-bin`) get the rule it reports: the leader itself, or a last contact within the
/// default minimum election timeout.
fn member_up(member: &Value, leader: &Value) -> bool {
    match member["up"].as_bool() {
        Some(up) => up,
        None => {
            member["id"] == *leader
                || member["last_contact_ms"]
                    .as_u64()
                    .is_some_and(|ms| ms <= DEFAULT_ELECTION_MIN_MS)
        }
    }
}

/// The leader a node names, if its /healthz answers 200.
async fn healthy_leader(addr: &str) -> Option<u64> {
    let (status, body) = http_get(addr, "/healthz").await.ok()?;
    if status != 200 {
        return None;
    }
    serde_json::from_str::<Value>(&body).ok()?["leader"].as_u64()
}

fn write_node_config(bin: &Path, root: &Path, m: &Member, initial: &str) -> Result<()> {
    let certs = root.join(format!("certs{}", m.id));
    run_quorumcast(
        bin,
        &[
            "certs",
            "issue",
            "--ca",
            path_str(&root.join("ca"))?,
            "--node-id",
            &m.id.to_string(),
            "--san",
            "127.0.0.1",
            "--out",
            path_str(&certs)?,
        ],
    )?;
    let text = format!(
        "statedir = \"{dir}/state\"\n\
         [cluster]\nnode_id = {id}\nlisten = \"{cluster}\"\n\
         ca = \"{root}/ca/ca.pem\"\ncert = \"{certs}/node.pem\"\nkey = \"{certs}/node.key\"\n\
         initial_members = [{initial}]\n",
        dir = path_str(&m.dir)?,
        id = m.id,
        cluster = m.cluster,
        root = path_str(root)?,
        certs = path_str(&certs)?,
    );
    std::fs::write(&m.config, text).context("write node config")?;
    Ok(())
}

fn run_quorumcast(bin: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .context("run quorumcast")?;
    ensure!(
        out.status.success(),
        "quorumcast {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

/// A `quorumcast node` child process; killed on drop.
struct NodeProcess {
    child: Child,
}

impl NodeProcess {
    fn spawn(bin: &Path, m: &Member, log_filter: &str) -> Result<NodeProcess> {
        std::fs::create_dir_all(&m.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)?;
        let mut command = Command::new(bin);
        command
            .arg("node")
            .arg("--config")
            .arg(&m.config)
            .arg("--dst")
            .arg(m.dir.join("dst"))
            .arg("--listen")
            .arg(&m.ingest)
            .env("RUST_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        for var in NODE_ENV {
            command.env_remove(var);
        }
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
        // From here on a failure kills the child (Drop).
        let node = NodeProcess { child };
        wait_for_listening(stdout).with_context(|| {
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            format!(
                "node {} did not start; log tail:\n{}",
                m.id,
                tail.join("\n")
            )
        })?;
        Ok(node)
    }

    fn kill(&mut self) -> Result<()> {
        self.child.kill().context("kill -9 node")?;
        self.child.wait().context("reap node")?;
        Ok(())
    }
}

impl Drop for NodeProcess {
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

fn fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_cur
}

// ---------------------------------------------------------------------------------------
// Resource usage: CPU of the nodes, the client and the machine; group commit
// ---------------------------------------------------------------------------------------

/// Counters at one moment (or the difference of two).
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    /// CPU seconds of all running nodes.
    nodes: f64,
    /// CPU seconds of this process (the load generator).
    client: f64,
    /// Busy CPU seconds of the whole machine.
    machine: f64,
    /// Group-commit rounds (`quorumcast_fsync_seconds_count`) of all nodes.
    fsync_rounds: f64,
    /// Their total time (`quorumcast_fsync_seconds_sum`).
    fsync_secs: f64,
}

impl Usage {
    async fn now(set: &RecorderSet) -> Result<Usage> {
        let mut usage = Usage {
            client: self_cpu_secs(),
            machine: machine_cpu_secs()?,
            ..Usage::default()
        };
        for pid in set.pids() {
            usage.nodes += process_cpu_secs(pid)?;
        }
        for m in &set.members {
            let (_, text) = http_get(&m.ingest, "/metrics").await?;
            usage.fsync_rounds += metric(&text, "quorumcast_fsync_seconds_count");
            usage.fsync_secs += metric(&text, "quorumcast_fsync_seconds_sum");
        }
        Ok(usage)
    }

    fn minus(&self, earlier: &Usage) -> Usage {
        Usage {
            nodes: self.nodes - earlier.nodes,
            client: self.client - earlier.client,
            machine: self.machine - earlier.machine,
            fsync_rounds: self.fsync_rounds - earlier.fsync_rounds,
            fsync_secs: self.fsync_secs - earlier.fsync_secs,
        }
    }

    /// "nodes 150% client 20% other 10%" of `wall` (2 CPUs = 200%), then group commit.
    fn describe(&self, wall: Duration) -> String {
        let pct = |secs: f64| 100.0 * secs / wall.as_secs_f64();
        let other = self.machine - self.nodes - self.client;
        format!(
            "CPU nodes {:.0}% client {:.0}% other {:.0}%; fsync rounds {:.0}/s, mean {:.1}ms",
            pct(self.nodes),
            pct(self.client),
            pct(other),
            self.fsync_rounds / wall.as_secs_f64(),
            1e3 * self.fsync_secs / self.fsync_rounds.max(1.0)
        )
    }
}

/// The value of an unlabelled metric in Prometheus text, 0 when absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// User + system CPU seconds of process `pid` so far.
fn process_cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); index 0 here is field 3 (state).
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    Ok(ticks as f64 / clock_ticks())
}

/// A `kB` field of /proc/PID/status, e.g. VmRSS.
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .context("malformed status line")?;
    Ok(kib.parse()?)
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
    Ok(busy as f64 / clock_ticks())
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
    nproc: String,
    cpu_model: String,
    mem_gib: f64,
    kernel: String,
    df: String,
    fs_type: String,
    commit: String,
    load_start: String,
    others: Vec<String>,
}

impl Machine {
    fn describe(dir: &Path) -> Result<Machine> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let df = command_output("df", &["-T", &dir.to_string_lossy()])?;
        let df_line = df
            .lines()
            .nth(1)
            .context("df -T printed no file system")?
            .to_string();
        Ok(Machine {
            nproc: command_output("nproc", &[])?.trim().to_string(),
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
            others: other_benchmarks(),
        })
    }

    fn print(&self, o: &Options, work: &Path) {
        println!("quorumcast replication and failover benchmark (issue 4)");
        println!("  commit    {}", self.commit);
        println!(
            "  machine   nproc {}, {}, {:.1} GiB RAM, Linux {}",
            self.nproc, self.cpu_model, self.mem_gib, self.kernel
        );
        println!("  data      {} (node1..3 dst, state, logs)", work.display());
        println!("  df -T     {}", self.df);
        if self.fs_type == "tmpfs" {
            println!(
                "  WARNING   the data dirs are on tmpfs: nothing reaches a disk; use --dst-root"
            );
        }
        println!(
            "  set       3 x quorumcast node (copied from {}, {}) on 127.0.0.1, RUST_LOG={},",
            o.node_bin.display(),
            if o.node_bin == Path::new(NODE_BIN) {
                "bench profile = release"
            } else {
                "--node-bin"
            },
            o.node_log
        );
        println!(
            "            every setting the binary's default (Raft heartbeat and election timeouts too)"
        );
        println!(
            "  client    this process, {} tokio worker thread(s), h2c prior knowledge, TCP_NODELAY, RLIMIT_NOFILE {},\n            each session from its own source address 127.10.x.y",
            o.client_threads,
            fd_limit()
        );
        println!("  loadavg   {} (at start)", self.load_start);
        if self.others.is_empty() {
            println!("  other benchmarks running at start: none");
        } else {
            println!(
                "  WARNING   other benchmarks were running at start (figures measured under load):"
            );
            for line in &self.others {
                println!("            {line}");
            }
        }
    }
}

/// `pgrep -af 'bench|quorumcast node|etcd'` without this process and the cargo that ran it.
fn other_benchmarks() -> Vec<String> {
    let own = std::process::id().to_string();
    // SAFETY: getppid has no memory effects.
    let parent = unsafe { libc::getppid() }.to_string();
    let out = Command::new("pgrep")
        .args(["-af", "bench|quorumcast node|etcd"])
        .output();
    let Ok(out) = out else {
        return vec!["(pgrep failed)".into()];
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            let pid = l.split_whitespace().next().unwrap_or("");
            pid != own && pid != parent && !l.contains("--bench replication")
        })
        .map(str::to_string)
        .collect()
}

fn mbps(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MB / elapsed.as_secs_f64()
}

fn verdict(met: bool) -> &'static str {
    if met {
        "MET"
    } else {
        "MISSED"
    }
}

fn print_factors(o: &Options, factors: &Factors) -> Vec<Goal> {
    let results = &factors.results;
    println!(
        "
1. Replication factor 1 vs 3 (cluster setting, changed through POST /api/v1/cluster/settings;
   each run opens new sessions, claimed under the factor in force).
   Bulk: {streams} stock v2 streams, stream i to node i mod 3, one h2c connection each,
   {total} MiB per run split evenly, {chunk} KiB body chunks of whole lines, sent as fast as
   flow control allows. Time: all bodies start -> every stream's final ack = its length
   (durable on a majority of its replica set). {runs} run(s) per factor, RF1 and RF3
   alternating, sync(2) + 1 s pause before each; MB/s = median (10^6 bytes/s).
   Ack latency: {paced} paced stock v2 streams, stream i to node i mod 3, one ~200-byte line
   each every {every} ms for {secs} s. Time: line handed to the h2 client -> first ack frame
   >= its end offset.
",
        streams = o.bulk_streams,
        total = o.total_bytes / MIB,
        chunk = o.chunk_bytes / 1024,
        runs = o.runs,
        paced = o.paced_streams,
        every = o.paced_interval.as_millis(),
        secs = o.paced_secs
    );
    let rates: Vec<Vec<f64>> = results
        .iter()
        .map(|r| r.bulk.iter().map(|b| mbps(b.bytes, b.elapsed)).collect())
        .collect();
    let medians: Vec<f64> = rates.iter().map(|r| median(r)).collect();
    let ratio = medians[1] / medians[0];
    print_factor_table(results, &rates, &medians, ratio);
    print_disk_budget(o, &factors.limits, &medians);
    let met = ratio >= 0.5;
    println!(
        "  goal (RF3 bulk throughput >= 50% of RF1): {} ({:.0}%)",
        verdict(met),
        100.0 * ratio
    );
    vec![Goal {
        what: format!("RF3/RF1 bulk throughput >= 50% (got {:.0}%)", 100.0 * ratio),
        met: Some(met),
    }]
}

fn print_factor_table(results: &[FactorResult], rates: &[Vec<f64>], medians: &[f64], ratio: f64) {
    let (a, b) = (&results[0], &results[1]);
    let runs = |r: &[f64]| {
        r.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let lat = |r: &FactorResult| percentiles(&r.paced.samples);
    let (la, lb) = (lat(a), lat(b));
    println!(
        "                              RF{:<16} RF{:<16} RF3/RF1",
        a.rf, b.rf
    );
    println!(
        "  bulk MB/s (median)          {:<18.1} {:<18.1} {:.0}%",
        medians[0],
        medians[1],
        100.0 * ratio
    );
    println!(
        "  bulk MB/s (each run)        {:<18} {:<18}",
        runs(&rates[0]),
        runs(&rates[1])
    );
    println!(
        "  paced lines                 {:<18} {:<18}",
        a.paced.samples.len(),
        b.paced.samples.len()
    );
    println!(
        "  ack latency p50             {:<18} {:<18}",
        ms(la.0),
        ms(lb.0)
    );
    println!(
        "  ack latency p99             {:<18} {:<18}",
        ms(la.1),
        ms(lb.1)
    );
    println!(
        "  ack latency max             {:<18} {:<18}",
        ms(la.2),
        ms(lb.2)
    );
    for r in results {
        let wall: Duration = r.bulk.iter().map(|b| b.elapsed).sum();
        let usage = r
            .bulk
            .iter()
            .fold(Usage::default(), |acc, b| sum_usage(&acc, &b.usage));
        println!("  RF{} bulk:   {}", r.rf, usage.describe(wall));
        println!(
            "  RF{} paced:  {}",
            r.rf,
            r.paced.usage.describe(r.paced.wall)
        );
    }
}

/// The disk limit next to what each factor makes the set write: every node stores every
/// byte of each session it replicates, so the set writes RF x the ingest rate.
fn print_disk_budget(o: &Options, limits: &[Duration], medians: &[f64]) {
    let limit: Vec<f64> = limits.iter().map(|l| mbps(o.total_bytes, *l)).collect();
    let disk = median(&limit);
    println!(
        "  disk limit (one writer, {} MiB in 64 KiB writes + fdatasync, before each run): median {:.1} MB/s",
        o.total_bytes / MIB,
        disk
    );
    for (rf, rate) in [(1.0, medians[0]), (3.0, medians[1])] {
        println!(
            "  RF{rf}: the set writes {rf} x {rate:.1} = {:.1} MB/s to the one disk ({:.0}% of the limit)",
            rf * rate,
            100.0 * rf * rate / disk
        );
    }
}

fn sum_usage(a: &Usage, b: &Usage) -> Usage {
    Usage {
        nodes: a.nodes + b.nodes,
        client: a.client + b.client,
        machine: a.machine + b.machine,
        fsync_rounds: a.fsync_rounds + b.fsync_rounds,
        fsync_secs: a.fsync_secs + b.fsync_secs,
    }
}

fn print_failover(result: &FailoverResult) -> Vec<Goal> {
    println!(
        "
2. Failover: {kills} kills (RF3). Round r: a resumable session (Quorumcast-Session) on the
   Raft leader when r mod 3 = 0, else on a follower (the two take turns), so a third of the
   kills hit the leader; one ~200-byte line every {every} ms; after {before} s SIGKILL to the
   session's owner (the node the client talks to). The client keeps producing, reconnects
   at once with Quorumcast-Resume: <last ack> to the other nodes in order (failed node last,
   {pause} ms pause after a fruitless pass), resends from the Quorumcast-Resume-Offset, goes
   on {after} ms, ends the recording. Failover time: kill(2) -> first ack frame covering a
   byte sent after the kill. Then the sealed recording on the new owner is compared (sha256)
   with every byte the client sent, and the killed node is restarted until every /healthz is
   200 with one agreed leader and the leader counts every member up for new replica sets.
",
        kills = result.rounds.len() + result.errors.len(),
        every = FAILOVER_LINE_EVERY.as_millis(),
        before = BEFORE_KILL.as_secs_f64(),
        pause = RETRY_PAUSE.as_millis(),
        after = AFTER_FAILOVER.as_millis()
    );
    let rounds = &result.rounds;
    let times: Vec<Duration> = rounds.iter().map(|r| r.failover).collect();
    let (p50, p99, max) = percentiles(&times);
    print_failover_table(rounds);
    let ahead = &result.health_ahead_of_leader;
    println!(
        "  waits for health in which every /healthz was 200 before the leader counted every member up: {}{}",
        ahead.len(),
        percentiles_if_any(ahead)
    );
    let mismatches = rounds.iter().filter(|r| r.mismatch.is_some()).count();
    println!(
        "  sha256 of the sealed recording vs the client's bytes: {} equal, {mismatches} mismatch(es)",
        rounds.len() - mismatches
    );
    for r in rounds.iter().filter(|r| r.mismatch.is_some()) {
        println!(
            "    node {}: {}",
            r.new_owner + 1,
            r.mismatch.as_deref().unwrap_or("")
        );
    }
    println!("  rounds that failed outright: {}", result.errors.len());
    for e in &result.errors {
        println!("    {e}");
    }
    print_refusals(rounds);
    let clean = mismatches == 0 && result.errors.is_empty();
    let p50_met = p50.is_some_and(|p| p < Duration::from_secs(1)) && clean;
    let p99_met = p99.is_some_and(|p| p < Duration::from_secs(2)) && clean;
    println!(
        "  goal p50 < 1 s: {} ({}); goal p99 < 2 s: {} ({}); max {}; mismatches {} (must be 0)",
        verdict(p50_met),
        ms(p50),
        verdict(p99_met),
        ms(p99),
        ms(max),
        mismatches
    );
    vec![
        Goal {
            what: format!("failover p50 < 1 s (got {})", ms(p50)),
            met: Some(p50_met),
        },
        Goal {
            what: format!("failover p99 < 2 s (got {})", ms(p99)),
            met: Some(p99_met),
        },
        Goal {
            what: format!(
                "0 recording mismatches and 0 failed rounds (got {mismatches}, {})",
                result.errors.len()
            ),
            met: Some(clean),
        },
    ]
}

/// Which rounds a row of the failover table covers.
type RoundFilter = fn(&Round) -> bool;

fn print_failover_table(rounds: &[Round]) {
    let groups: [(&str, RoundFilter); 3] = [
        ("all kills", |_| true),
        ("killed node was the Raft leader", |r| r.killed_leader),
        ("killed node was a follower", |r| !r.killed_leader),
    ];
    println!("  times from kill(2), ms            kills     p50      p99      max");
    for (name, keep) in &groups {
        let chosen: Vec<&Round> = rounds.iter().filter(|r| keep(r)).collect();
        let row = |label: &str, f: &dyn Fn(&Round) -> Duration| {
            let samples: Vec<Duration> = chosen.iter().map(|r| f(r)).collect();
            let (p50, p99, max) = percentiles(&samples);
            println!(
                "    {label:<31} {:>5} {:>8} {:>8} {:>8}",
                samples.len(),
                ms(p50),
                ms(p99),
                ms(max)
            );
        };
        println!("  {name}:");
        row("failover (first durable ack)", &|r| r.failover);
        row("stream broke at the client", &|r| r.detected);
        row("resume accepted (200)", &|r| r.accepted);
        let takeovers: Vec<Duration> = chosen
            .iter()
            .filter_map(|r| r.takeover_ms.map(Duration::from_millis))
            .collect();
        let (p50, p99, max) = percentiles(&takeovers);
        println!(
            "    {:<31} {:>5} {:>8} {:>8} {:>8}",
            "takeover inside the node (log)",
            takeovers.len(),
            ms(p50),
            ms(p99),
            ms(max)
        );
    }
    print_round_facts(rounds);
}

/// ", for p50 X, max Y" of `times`, or nothing when there are none.
fn percentiles_if_any(times: &[Duration]) -> String {
    if times.is_empty() {
        return String::new();
    }
    let (p50, _, max) = percentiles(times);
    format!(", for p50 {}, max {}", ms(p50), ms(max))
}

fn print_round_facts(rounds: &[Round]) {
    let count = rounds.len().max(1) as f64;
    let attempts: usize = rounds.iter().map(|r| r.attempts).sum();
    let resent: u64 = rounds
        .iter()
        .map(|r| r.sent_at_kill - r.resume_at.min(r.sent_at_kill))
        .sum();
    let beyond_ack = rounds
        .iter()
        .filter(|r| r.resume_at > r.acked_at_kill)
        .count();
    let full_sets = rounds.iter().filter(|r| r.replicas == NODES).count();
    let rejoin: Vec<Duration> = rounds.iter().map(|r| r.rejoin).collect();
    let bytes: u64 = rounds.iter().map(|r| r.bytes).sum();
    println!(
        "  per round: {:.1} resume requests on average; replica set of {NODES} in {full_sets} of {} rounds",
        attempts as f64 / count,
        rounds.len()
    );
    println!(
        "  resume offset above the last ack in {beyond_ack} of {} rounds; {:.0} bytes resent per round on average",
        rounds.len(),
        resent as f64 / count
    );
    let acks: Vec<Duration> = rounds.iter().map(|r| r.ending.final_ack).collect();
    let ends: Vec<Duration> = rounds.iter().map(|r| r.ending.response_end).collect();
    let ((a50, _, amax), (e50, _, emax)) = (percentiles(&acks), percentiles(&ends));
    println!(
        "  ending the recording (body end, killed node still down): final ack p50 {} max {}; end of response p50 {} max {}",
        ms(a50),
        ms(amax),
        ms(e50),
        ms(emax)
    );
    let (p50, _, max) = percentiles(&rejoin);
    println!(
        "  killed node restarted -> set healthy: p50 {}, max {}; {:.1} KiB per recording on average",
        ms(p50),
        ms(max),
        bytes as f64 / count / 1024.0
    );
}

/// Non-200 answers seen during failovers, grouped by their text (digits masked).
fn print_refusals(rounds: &[Round]) {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for reason in rounds.iter().flat_map(|r| &r.refusals) {
        let key: String = reason
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        match counts.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => counts.push((key, 1)),
        }
    }
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    println!("  refused resume requests (non-200 answers): {total}");
    counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for (reason, n) in counts.iter().take(8) {
        println!("    {n:>4} x {reason}");
    }
}

fn print_capacity(steps: &[Step]) -> Vec<Goal> {
    println!(
        "
3. Capacity (RF3): concurrent paced sessions, session i to node i mod 3, each on its own h2c
   connection, one ~200-byte line a second; steps add sessions to the open ones. Per step:
   {settle} s after the last open, a window of the step's length; a sample is a line sent in
   the window, timed from handing it to the h2 client to the first ack frame >= its end
   offset (lines still unacked {grace} s after the window count with their age). A step passes
   with p99 < {limit} ms and no failed open or broken session; the ramp stops at the first
   failing step. CPU: 2 CPUs = 200%; other = the rest of the machine (kernel threads,
   other users), idle and iowait excluded.
",
        settle = CAPACITY_SETTLE.as_secs(),
        grace = CAPACITY_GRACE.as_secs(),
        limit = CAPACITY_P99_LIMIT.as_millis()
    );
    println!("  sessions   open  opening s    lines  unacked      p50      p99      max  errors  node CPU  client CPU  other CPU  node RSS MiB");
    for s in steps {
        let (p50, p99, max) = percentiles(&s.samples);
        let pct = |secs: f64| 100.0 * secs / s.wall.as_secs_f64();
        let rss: Vec<String> = s
            .rss_kib
            .iter()
            .map(|k| format!("{:.0}", *k as f64 / 1024.0))
            .collect();
        println!(
            "  {:>8} {:>6} {:>10.1} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8.0}% {:>10.0}% {:>9.0}%  {}",
            s.sessions,
            s.open,
            s.opening.as_secs_f64(),
            s.samples.len(),
            s.unacked,
            ms(p50),
            ms(p99),
            ms(max),
            s.errors,
            pct(s.usage.nodes),
            pct(s.usage.client),
            pct(s.usage.machine - s.usage.nodes - s.usage.client),
            rss.join("/")
        );
    }
    for s in steps.iter().filter(|s| s.errors > 0) {
        println!(
            "  step {}: first error: {}",
            s.sessions,
            s.first_error.as_deref().unwrap_or("?")
        );
    }
    let best = steps
        .iter()
        .filter(|s| s.passed())
        .map(|s| s.sessions)
        .max();
    let all_passed = steps.iter().all(Step::passed);
    match best {
        Some(n) if all_passed => println!(
            "  largest passing step: {n} concurrent sessions (every step passed: the ramp ended before the limit)"
        ),
        Some(n) => println!("  largest passing step: {n} concurrent sessions"),
        None => println!("  largest passing step: none (the first step already failed)"),
    }
    let held = match best {
        Some(n) if all_passed => format!("at least {n} (every step passed)"),
        Some(n) => n.to_string(),
        None => "none of the steps".into(),
    };
    vec![Goal {
        what: format!("concurrent live sessions held with p99 ack < 100 ms: {held}"),
        met: None,
    }]
}

fn print_summary(goals: &[Goal], machine: &Machine) {
    println!();
    println!("Summary");
    for goal in goals {
        let verdict = goal.met.map(verdict).unwrap_or("FIGURE");
        println!("  {verdict:<7} {}", goal.what);
    }
    println!(
        "loadavg {} at start, {} at end",
        machine.load_start,
        loadavg()
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

/// Nearest-rank p50, p99 and max.
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
        .map(|d| format!("{:.1}ms", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}
