//! The `quorumcast` command line. Errors here are `anyhow`: this is the edge.

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use quorumcast::{admin, client, cluster::certs, config::NodeArgs, node};

/// A highly available, clustered recorder for SSH session recordings.
#[derive(Parser)]
#[command(name = "quorumcast", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a recorder node (wire-compatible with Tailscale SSH session recording).
    Node(NodeArgs),
    /// Run a command in a PTY and stream its recording to a recorder.
    Record(client::RecordArgs),
    /// Replay a recording in the terminal.
    Play(client::PlayArgs),
    /// Print a recording's output text.
    Cat(client::CatArgs),
    /// Inspect and change the recorder set through any node's HTTP address.
    Cluster(admin::ClusterArgs),
    /// Start a local recorder set on loopback (children of this process) until Ctrl-C.
    Dev(quorumcast::dev::DevArgs),
    /// Exit 0 if a node's /healthz answers 200, else 1 (the container image's HEALTHCHECK).
    Healthcheck {
        /// The node's HTTP (ingest) address.
        #[arg(
            long,
            default_value = "127.0.0.1:8080",
            env = "QUORUMCAST_HEALTHCHECK_ADDR"
        )]
        addr: String,
    },
    /// Create the cluster CA and node certificates (mutual TLS between nodes).
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a cluster CA: DIR/ca.pem and DIR/ca.key (0600).
    Init {
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Issue a node certificate signed by the CA: DIR/node.pem and DIR/node.key (0600).
    Issue {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca: std::path::PathBuf,
        #[arg(long)]
        node_id: u64,
        /// Extra DNS names or IP addresses the node is reached at (repeatable).
        #[arg(long)]
        san: Vec<String>,
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = runtime()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(dispatch(cli.command)));
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("quorumcast: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// The multi-threaded runtime every subcommand runs on.
///
/// Without a LIFO slot: by default a task woken by another task on the same worker (a
/// session's reader, woken by its HTTP/2 connection as body data arrives) runs next on
/// that worker, and no other worker may steal it. One busy stream then kept its
/// connection and its content check on one core in turn while the other idled: with the
/// slot disabled, one stream's ingest went from 738 to 862 MB/s (medians of 6 alternated
/// runs, BENCHMARKS.md "the LIFO slot"); 16 streams did not change. The call is tokio's
/// unstable API, enabled for this repository's builds by `.cargo/config.toml`.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

async fn dispatch(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Node(args) => run_node(args).await.map(|()| 0),
        Command::Record(args) => {
            let code = client::run_record(args).await?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
        Command::Play(args) => client::run_play(args).await.map(|()| 0).map_err(Into::into),
        Command::Cat(args) => client::run_cat(args).map(|()| 0).map_err(Into::into),
        Command::Cluster(args) => admin::run(args).await.map(|()| 0).map_err(Into::into),
        Command::Healthcheck { addr } => {
            let health = admin::get(&addr, "/healthz").await?;
            println!("{health}");
            Ok(0)
        }
        Command::Certs { command } => run_certs(command).map(|()| 0),
        Command::Dev(args) => quorumcast::dev::run(args)
            .await
            .map(|()| 0)
            .map_err(Into::into),
    }
}

async fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    raise_fd_limit();
    let metrics = quorumcast::metrics::install()?;
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
    let result = node::run(config, Some(metrics), shutdown).await;
    signals.abort();
    result.map_err(Into::into)
}

fn run_certs(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { out } => {
            certs::init_ca(&out)?;
            println!("cluster CA written to {}", out.display());
        }
        CertsCommand::Issue {
            ca,
            node_id,
            san,
            out,
        } => {
            certs::issue_node(&ca, node_id, &san, &out)?;
            println!(
                "certificate for node {node_id} written to {}",
                out.display()
            );
        }
    }
    Ok(())
}

/// SIGTERM or SIGINT starts a graceful shutdown.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the node with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}

/// Each live session holds a socket and a file: lift the soft limit to the hard one.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
