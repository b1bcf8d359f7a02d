//! quorumcast chaos harness: a 3- or 5-node recorder set as separate hosts (network namespaces
//! on a bridge), dozens of `quorumcast record --enforce` clients, seeded faults, and invariant
//! checks after every scenario. See chaos-tests/README.md; run it through `chaos-tests/run`.
//!
//!   chaos [--quick] [--seed N] [--scenario NAME[,NAME..]] [--clients N] [--duration S]
//!         [--keep] [--results FILE] [--list]
//!   chaos --generate SEED --duration S      (the recorded command; used by the clients)

mod check;
mod clients;
mod disk;
mod faults;
mod gen;
mod net;
mod pids;
mod set;
mod timeline;
mod util;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::check::Outcome;
use crate::faults::{Ctx, Scenario};
use crate::set::Cluster;
use crate::timeline::Timeline;
use crate::util::{log, percentile, Rng};

/// Everything a run leaves on disk lives here; the next run removes it first.
const RUN_ROOT: &str = "/tmp/qc-chaos";

struct Opts {
    quick: bool,
    seed: u64,
    scenarios: Vec<Scenario>,
    clients: Option<usize>,
    duration_s: Option<u64>,
    keep: bool,
    results: Option<PathBuf>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match real_main(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

fn real_main(args: &[String]) -> Result<i32> {
    if let Some(seed) = flag(args, "--generate") {
        let secs = flag(args, "--duration").unwrap_or(30);
        gen::generate(seed, Duration::from_secs(secs))?;
        return Ok(0);
    }
    if args.iter().any(|a| a == "--list") {
        for s in faults::ALL {
            println!("{:18} {} nodes  {}", s.name, s.nodes, s.about);
        }
        return Ok(0);
    }
    let opts = parse(args)?;
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "run as root (namespaces, iptables, tc, mount)"
    );
    prepare_root()?;
    spawn_signal_cleanup()?;
    run_all(&opts)
}

/// `--name N` parsed as a number.
fn flag(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn text_flag(args: &[String], name: &str) -> Option<String> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).cloned()
}

fn parse(args: &[String]) -> Result<Opts> {
    const KNOWN: &[&str] = &[
        "--quick",
        "--seed",
        "--scenario",
        "--clients",
        "--duration",
        "--keep",
        "--results",
    ];
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if !KNOWN.contains(&a) {
            bail!("unknown argument {a:?}; usage: chaos [--quick] [--seed N] [--scenario NAME[,NAME..]] [--clients N] [--duration S] [--keep] [--results FILE] [--list]");
        }
        i += if matches!(a, "--quick" | "--keep") {
            1
        } else {
            2
        };
    }
    let quick = args.iter().any(|a| a == "--quick");
    let seed = match text_flag(args, "--seed") {
        Some(s) => s.parse().context("--seed wants a number")?,
        None => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as u64
                % 1_000_000_000
        }
    };
    let names: Vec<String> = match text_flag(args, "--scenario") {
        Some(list) => list.split(',').map(str::to_string).collect(),
        None if quick => faults::QUICK.iter().map(|s| s.to_string()).collect(),
        None => faults::ALL.iter().map(|s| s.name.to_string()).collect(),
    };
    let scenarios = names
        .iter()
        .map(|n| faults::find(n).with_context(|| format!("no scenario {n:?} (see --list)")))
        .collect::<Result<Vec<_>>>()?;
    Ok(Opts {
        quick,
        seed,
        scenarios,
        clients: flag(args, "--clients").map(|n| n as usize),
        duration_s: flag(args, "--duration"),
        keep: args.iter().any(|a| a == "--keep"),
        results: text_flag(args, "--results").map(PathBuf::from),
    })
}

/// Removes what a crashed earlier run left: its processes, namespaces, mounts and files.
fn prepare_root() -> Result<()> {
    let root = Path::new(RUN_ROOT);
    pids::init(root.join("pids"));
    pids::kill_leftovers();
    net::cleanup_leftovers();
    disk::unmount_all_under(root);
    if root.exists() {
        std::fs::remove_dir_all(root).with_context(|| format!("removing {RUN_ROOT}"))?;
    }
    std::fs::create_dir_all(root)?;
    Ok(())
}

/// SIGINT/SIGTERM/SIGHUP: clean up namespaces and mounts, then exit (children die with us).
fn spawn_signal_cleanup() -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()?;
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            log(&format!("{sig}: cleaning up"));
            pids::kill_leftovers();
            net::cleanup_leftovers();
            disk::unmount_all_under(Path::new(RUN_ROOT));
            std::process::exit(130);
        }
    });
    Ok(())
}

struct ScenarioRun {
    scenario: Scenario,
    clients: usize,
    seed: u64,
    faults: usize,
    fault_log: Vec<String>,
    outcome: Outcome,
    dir: PathBuf,
    elapsed: Duration,
}

fn run_all(opts: &Opts) -> Result<i32> {
    let built = std::env::current_exe()?;
    let bin = match std::env::var_os("QUORUMCAST_BIN") {
        Some(p) => PathBuf::from(p),
        None => built
            .parent()
            .and_then(Path::parent)
            .context("exe dir")?
            .join("quorumcast"),
    };
    anyhow::ensure!(
        bin.exists(),
        "{} missing (cargo build --release --bin quorumcast)",
        bin.display()
    );
    // Private copies: a shared target directory may be rebuilt by someone else mid-run, and a
    // node restarted later must run the very binary its peers run.
    let bin = private_copy(&bin, "quorumcast")?;
    // Read now: what was built; the tree may move on during the run.
    let revision = git_revision();
    let harness = private_copy(&built, "chaos")?;
    let harness = harness.as_path();
    println!(
        "chaos: seed {} ({} mode), quorumcast {} (sha256 {}), git {}",
        opts.seed,
        if opts.quick { "quick" } else { "full" },
        bin.display(),
        &util::sha256(&std::fs::read(&bin)?)[..16],
        revision
    );
    let mut runs = Vec::new();
    for sc in &opts.scenarios {
        let run = run_scenario(*sc, opts, &bin, harness)
            .with_context(|| format!("scenario {} (seed {})", sc.name, opts.seed))?;
        print_details(&run);
        runs.push(run);
    }
    let table = table(&runs, opts);
    println!("\n{table}");
    if let Some(path) = &opts.results {
        std::fs::write(path, results_markdown(&runs, opts, &table, &revision))?;
    }
    let failed: Vec<&ScenarioRun> = runs
        .iter()
        .filter(|r| !r.outcome.violations.is_empty())
        .collect();
    for r in &failed {
        println!("FAILED {}: {} violation(s); replay: chaos-tests/run --scenario {} --seed {}{}; logs kept in {}",
            r.scenario.name, r.outcome.violations.len(), r.scenario.name, r.seed,
            if opts.quick { " --quick" } else { "" }, r.dir.display());
    }
    Ok(if failed.is_empty() { 0 } else { 1 })
}

fn run_scenario(sc: Scenario, opts: &Opts, bin: &Path, harness: &Path) -> Result<ScenarioRun> {
    let dir = Path::new(RUN_ROOT).join(sc.name);
    std::fs::create_dir_all(&dir)?;
    let n_clients = opts.clients.unwrap_or(if opts.quick { 12 } else { 50 });
    let duration_s = opts.duration_s.unwrap_or(if opts.quick { 30 } else { 45 });
    let rng = Rng::new(opts.seed).fork(sc.name);
    log(&format!(
        "=== {} ({} nodes, {n_clients} clients, {duration_s} s, seed {}): {}",
        sc.name, sc.nodes, opts.seed, sc.about
    ));
    let started = Instant::now();
    let net = net::Net::setup(sc.nodes)?;
    let disk_node = sc
        .small_disk
        .then(|| rng.fork("disk").range(1, sc.nodes as u64));
    let cluster = Cluster::start(&dir, bin, sc.nodes, disk_node)?;
    if sc.small_disk {
        cluster.set_settings(disk::SETTINGS)?;
    }
    let cluster = Mutex::new(cluster);
    let timeline = Mutex::new(Timeline::default());
    let recorders: Vec<String> = (1..=sc.nodes as u64)
        .map(|id| format!("{}:{}", net::node_ip(id), net::INGEST_PORT))
        .collect();
    let spawn = clients::Spawn {
        bin,
        harness,
        recorders: &recorders,
        dir: &dir,
        duration_s,
    };
    let t0 = Instant::now();
    let clients = clients::start_all(&spawn, n_clients, &rng, t0)?;
    let mut ctx = Ctx {
        cluster: &cluster,
        timeline: &timeline,
        rng: rng.fork("faults"),
        t0,
        faults: 0,
        log: Vec::new(),
        problems: Vec::new(),
        disk_node,
    };
    let limit_ms = (duration_s + clients::FAILOVER_DEADLINE_S * 2 + 60) * 1000;
    let clients = std::thread::scope(|s| {
        let poller = s.spawn(|| watch_clients(clients, &cluster, &timeline, t0, limit_ms));
        // Faults run on this (long-lived) thread: nodes it restarts are its children, and a
        // child's parent-death signal fires when the thread that forked it exits.
        (sc.run)(&mut ctx);
        ctx.heal_everything();
        poller
            .join()
            .map_err(|_| anyhow::anyhow!("client watcher panicked"))
    })?;
    log("clients done; healing and settling");
    ctx.heal_everything();
    let (mut problems, mut fault_log, faults) = (ctx.problems, ctx.log, ctx.faults);
    let mut cluster = cluster
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    if let Err(e) = cluster.wait_healthy(Duration::from_secs(60)) {
        problems.push(format!(
            "set did not recover after the faults were undone: {e:#}"
        ));
        problems.extend(cluster.diagnose_unresponsive(&dir));
    }
    let ids: Vec<String> = clients
        .iter()
        .filter_map(|c| session_of(&c.output))
        .collect();
    let table = check::settle(&cluster, &ids);
    if table.is_none() {
        problems.push("could not read a settled cluster table".into());
    }
    cluster.reap_unexpected();
    let timeline = timeline
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut outcome = check::check(check::Inputs {
        cluster: &cluster,
        clients: &clients,
        timeline: &timeline,
        table,
    });
    for p in &problems {
        outcome.violations.push(check::Violation {
            rule: "fault handling",
            client: None,
            detail: p.clone(),
        });
    }
    fault_log.push(format!("timeline: {}", timeline.describe().join("; ")));
    drop(clients);
    drop(cluster);
    disk::unmount_all_under(&dir);
    drop(net);
    if outcome.violations.is_empty() && !opts.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(ScenarioRun {
        scenario: sc,
        clients: n_clients,
        seed: opts.seed,
        faults,
        fault_log,
        outcome,
        dir,
        elapsed: started.elapsed(),
    })
}

/// Copies `from` to `<run root>/bin/<name>` (executable) and returns the copy's path.
fn private_copy(from: &Path, name: &str) -> Result<PathBuf> {
    let dir = Path::new(RUN_ROOT).join("bin");
    std::fs::create_dir_all(&dir)?;
    let to = dir.join(name);
    std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
    Ok(to)
}

/// `git describe --always --dirty` of the working directory, for the record.
fn git_revision() -> String {
    util::run_for(
        std::process::Command::new("git").args(["describe", "--always", "--dirty"]),
        Duration::from_secs(10),
    )
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    .unwrap_or_default()
}

fn session_of(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let first = bytes.split(|b| *b == b'\n').next()?;
    let v: serde_json::Value = serde_json::from_slice(first).ok()?;
    v["connectionID"].as_str().map(str::to_string)
}

/// Polls clients until all have exited (or hit `limit_ms`, then killed as hung); meanwhile
/// notices nodes that die on their own and marks them on the timeline.
fn watch_clients(
    mut clients: Vec<clients::Client>,
    cluster: &Mutex<Cluster>,
    timeline: &Mutex<Timeline>,
    t0: Instant,
    limit_ms: u64,
) -> Vec<clients::Client> {
    let mut last_report = 0;
    loop {
        let now = t0.elapsed().as_millis() as u64;
        let running = clients
            .iter_mut()
            .map(|c| c.poll(now))
            .filter(|done| !done)
            .count();
        if running == 0 {
            return clients;
        }
        if now > limit_ms {
            clients.iter_mut().for_each(|c| c.kill_hung(now));
            return clients;
        }
        if let Ok(mut c) = cluster.try_lock() {
            for node in c.reap_unexpected() {
                log(&format!("node {node} exited on its own!"));
                if let Ok(mut tl) = timeline.lock() {
                    tl.down(node, now, "crashed");
                }
            }
        }
        if now - last_report >= 10_000 {
            last_report = now;
            log(&format!(
                "{running} of {} clients still running",
                clients.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ms(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn table(runs: &[ScenarioRun], opts: &Opts) -> String {
    let mut t = format!("seed {}\n\n", opts.seed);
    t.push_str("| scenario | nodes | clients | sessions | bytes | faults | failovers | failover p50 ms | failover p99 ms | cut (excused) | stale-epoch refusals | violations | time |\n");
    t.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in runs {
        let o = &r.outcome;
        let mut sorted = o.failover_ms.clone();
        sorted.sort_unstable();
        let stale: Vec<String> = o
            .stale_refusals
            .iter()
            .map(|(n, v)| format!("n{n}:{v}"))
            .collect();
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} s |\n",
            r.scenario.name,
            r.scenario.nodes,
            r.clients,
            o.sessions,
            o.bytes,
            r.faults,
            o.failovers,
            ms(percentile(&sorted, 50.0)),
            ms(percentile(&sorted, 99.0)),
            o.cut_excused,
            stale.join(" "),
            o.violations.len(),
            r.elapsed.as_secs_f64()
        ));
    }
    t
}

fn print_details(r: &ScenarioRun) {
    println!("\n--- {} (seed {}) ---", r.scenario.name, r.seed);
    for line in &r.fault_log {
        println!("  {line}");
    }
    for v in &r.outcome.violations {
        println!(
            "  VIOLATION [{}]{}: {}",
            v.rule,
            v.client.map(|c| format!(" client {c}")).unwrap_or_default(),
            v.detail
        );
    }
    println!(
        "  checked {} copies ({} sealed) of {} sessions",
        r.outcome.copies, r.outcome.sealed_copies, r.outcome.sessions
    );
    if r.outcome.violations.is_empty() {
        println!("  no violations");
    }
}

fn results_markdown(runs: &[ScenarioRun], opts: &Opts, table: &str, revision: &str) -> String {
    let mut md = String::from("# chaos-tests results (latest run, generated by the harness)\n\n");
    md.push_str(&format!(
        "Source: git {revision} (built at the start of the run)\n\n"
    ));
    md.push_str(&format!(
        "Command: `chaos-tests/run{} --seed {}`\n\n",
        if opts.quick { " --quick" } else { "" },
        opts.seed
    ));
    md.push_str(table);
    md.push_str("\n## Faults and violations per scenario\n");
    for r in runs {
        md.push_str(&format!("\n### {}\n\n", r.scenario.name));
        for line in &r.fault_log {
            md.push_str(&format!("- {line}\n"));
        }
        for v in &r.outcome.violations {
            md.push_str(&format!("- **VIOLATION [{}]**: {}\n", v.rule, v.detail));
        }
    }
    md
}
