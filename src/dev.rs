//! `quorumcast dev`: a local recorder set on loopback, started, watched and stopped as one.
//!
//! Owns the dev data directory's layout (certificates, generated node configs, per-node
//! recordings, state and logs), the loopback port plan, the lifetime of the node processes
//! (children of this one, so a user can `kill -9` one and watch a failover) and what is
//! printed to the user. It does not own how a node runs: each child is this executable's
//! `node` subcommand, configured only through the TOML written here. It holds no cluster
//! logic either: readiness is what each node's `/healthz` says, certificates come from
//! [`crate::cluster::certs`].
//!
//! Layout of `--data` (default `./quorumcast-data`):
//!
//! ```text
//! dev.toml          the set's shape (node count, base port), fixed at first start
//! certs/ca/         the cluster CA; certs/nodeN/ each node's certificate (made once)
//! nodeN.toml        node N's config (rewritten at every start; paths relative to it)
//! nodeN/recordings  node N's dst
//! nodeN/state       node N's session index and Raft log
//! nodeN.log         node N's stderr and stdout
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::cluster::certs::{self, CertError};

/// How long the set has to become healthy before `dev` gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node has to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// One `/healthz` request; a node that takes longer is not ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A `/healthz` answer is a small JSON object.
const MAX_HEALTH_BYTES: usize = 64 * 1024;
/// Node N's cluster (QUIC) port is this far above its ingest port.
const CLUSTER_PORT_OFFSET: u16 = 10;
/// Lines of each node's log shown when the set fails to start.
const LOG_TAIL_LINES: usize = 20;
const DEV_FILE: &str = "dev.toml";
/// Environment variables `quorumcast node` reads (flags > env > file): one left over in the
/// user's shell would override the generated config, e.g. point every node at one dst.
const NODE_ENV: [&str; 6] = [
    "TSRECORDER_DST",
    "TS_STATE_DIR",
    "TSRECORDER_HOSTNAME",
    "QUORUMCAST_LISTEN",
    "QUORUMCAST_CONFIG",
    "QUORUMCAST_TAILSCALED_SOCKET",
];

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("--base-port {base} with {nodes} nodes needs ports up to {base}+{}, past 65535", CLUSTER_PORT_OFFSET as usize + nodes)]
    PortRange { base: u16, nodes: usize },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds a {nodes}-node set on base port {base_port}, and its Raft state remembers those addresses; start it with --nodes {nodes} --base-port {base_port}, or use another --data", data.display())]
    ShapeChanged {
        data: PathBuf,
        nodes: usize,
        base_port: u16,
    },
    #[error("{} is not a dev.toml written by quorumcast dev: {message}", path.display())]
    BadDevFile { path: PathBuf, message: String },
    #[error("the CA in {}/ca is missing but node certificates from an older one remain; delete {} to make new ones", certs.display(), certs.display())]
    StaleCerts { certs: PathBuf },
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error(
        "{proto} port {addr} is in use (another quorumcast dev?); pick free ports with --base-port"
    )]
    PortInUse {
        proto: &'static str,
        addr: SocketAddr,
    },
    #[error("cannot find this executable to start the nodes: {0}")]
    CurrentExe(#[source] std::io::Error),
    #[error("cannot start node {id}: {source}")]
    Spawn {
        id: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("node {id} (pid {pid}) exited during start-up ({status}); its log is above")]
    ExitedAtStart { id: u64, pid: u32, status: String },
    #[error("the set was not healthy within {} s ({problems}); node logs are above", READY_TIMEOUT.as_secs())]
    NotReady { problems: String },
}

/// `quorumcast dev` flags.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Ports: node N (1-based) takes sessions on 127.0.0.1:<base-port + N> and talks to \
                  its peers (QUIC) on 127.0.0.1:<base-port + 10 + N>; with the defaults, ingest on \
                  8081-8083 and cluster on 8091-8093. Ctrl-C stops every node."
)]
pub struct DevArgs {
    /// Directory for certificates, node configs, recordings, state and logs (created if missing).
    #[arg(long, default_value = "./quorumcast-data")]
    pub data: PathBuf,
    /// Node N listens for sessions on BASE+N and for its peers (QUIC) on BASE+10+N.
    #[arg(long, default_value_t = 8080)]
    pub base_port: u16,
    /// How many nodes (1 to 5); 3 survives the loss of one.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nodes: u8,
}

/// The set's shape: fixed once the nodes have Raft state, since Raft stores their addresses.
#[derive(Debug, PartialEq, Eq, serde::Deserialize)]
struct Shape {
    nodes: usize,
    base_port: u16,
}

/// Where node `id` lives and listens.
#[derive(Debug, Clone)]
struct NodePlan {
    id: u64,
    ingest: SocketAddr,
    cluster: SocketAddr,
}

impl NodePlan {
    fn config(&self, data: &Path) -> PathBuf {
        data.join(format!("node{}.toml", self.id))
    }

    fn dir(&self, data: &Path) -> PathBuf {
        data.join(format!("node{}", self.id))
    }

    fn log(&self, data: &Path) -> PathBuf {
        data.join(format!("node{}.log", self.id))
    }
}

/// Starts the set, waits until it is healthy, prints how to use it, and runs until SIGINT or
/// SIGTERM; then stops every node. A node that dies meanwhile is reported, not replaced.
pub async fn run(args: DevArgs) -> Result<(), DevError> {
    let shape = Shape {
        nodes: usize::from(args.nodes),
        base_port: args.base_port,
    };
    let plan = plan_nodes(&shape)?;
    let data = prepare_data(&args.data, &shape, &plan)?;
    check_ports_free(&plan)?;
    let exe = std::env::current_exe().map_err(DevError::CurrentExe)?;
    // Installed before any child exists, so an early Ctrl-C still stops them in order.
    let mut signals = Signals::install()?;
    println!(
        "quorumcast dev: starting {}, data in {}",
        nodes(plan.len()),
        data.display()
    );
    let mut set = NodeSet::spawn(&exe, &data, &plan)?;
    let started = Instant::now();
    let leader = tokio::select! {
        ready = wait_ready(&mut set) => ready,
        name = signals.recv() => {
            println!("{name} during start-up: stopping the nodes");
            set.stop().await;
            return Ok(());
        }
    };
    let leader = match leader {
        Ok(leader) => leader,
        Err(e) => {
            print_log_tails(&set);
            set.stop().await;
            return Err(e);
        }
    };
    print_ready(&exe, &data, &set, leader, started.elapsed());
    watch(&mut set, &mut signals).await;
    set.stop().await;
    Ok(())
}

/// Ingest on base+1.., cluster on base+11..; refuses a plan that runs past port 65535.
fn plan_nodes(shape: &Shape) -> Result<Vec<NodePlan>, DevError> {
    let too_far = || DevError::PortRange {
        base: shape.base_port,
        nodes: shape.nodes,
    };
    (1..=shape.nodes)
        .map(|n| {
            let n = u16::try_from(n).map_err(|_| too_far())?;
            let ingest = shape.base_port.checked_add(n).ok_or_else(too_far)?;
            let cluster = ingest
                .checked_add(CLUSTER_PORT_OFFSET)
                .ok_or_else(too_far)?;
            Ok(NodePlan {
                id: u64::from(n),
                ingest: SocketAddr::from((Ipv4Addr::LOCALHOST, ingest)),
                cluster: SocketAddr::from((Ipv4Addr::LOCALHOST, cluster)),
            })
        })
        .collect()
}

/// Creates the data directory's layout and returns its absolute path (so printed paths and
/// the children don't depend on the working directory).
fn prepare_data(data: &Path, shape: &Shape, plan: &[NodePlan]) -> Result<PathBuf, DevError> {
    create_dir(data)?;
    let data = std::fs::canonicalize(data).map_err(|source| DevError::Io {
        what: "cannot resolve",
        path: data.to_path_buf(),
        source,
    })?;
    check_shape(&data, shape)?;
    make_certs(&data, plan)?;
    for node in plan {
        create_dir(&node.dir(&data).join("recordings"))?;
        create_dir(&node.dir(&data).join("state"))?;
        write_file(&node.config(&data), &node_config(node, plan))?;
    }
    Ok(data)
}

/// Refuses to start a set of another shape on existing Raft state, which would never elect a
/// leader; records the shape on first start.
fn check_shape(data: &Path, shape: &Shape) -> Result<(), DevError> {
    let path = data.join(DEV_FILE);
    let has_state = data.join("node1").join("state").exists();
    if has_state && path.exists() {
        let text = std::fs::read_to_string(&path).map_err(|source| DevError::Io {
            what: "cannot read",
            path: path.clone(),
            source,
        })?;
        let old: Shape = toml::from_str(&text).map_err(|e| DevError::BadDevFile {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if old != *shape {
            return Err(DevError::ShapeChanged {
                data: data.to_path_buf(),
                nodes: old.nodes,
                base_port: old.base_port,
            });
        }
        return Ok(());
    }
    let text = format!(
        "# Written by `quorumcast dev` at first start. The nodes' Raft state remembers these\n\
         # addresses: start this set with the same --nodes and --base-port.\n\
         nodes = {}\nbase_port = {}\n",
        shape.nodes, shape.base_port
    );
    write_file(&path, &text)
}

/// The CA and each node's certificate, made only if absent so restarts keep the same set.
fn make_certs(data: &Path, plan: &[NodePlan]) -> Result<(), DevError> {
    let certs_dir = data.join("certs");
    let ca = certs_dir.join("ca");
    if !ca.join(certs::CA_CERT_FILE).exists() {
        // Certificates from a lost CA would fail every TLS handshake, silently to the user.
        if plan.iter().any(|n| node_cert_dir(data, n.id).exists()) {
            return Err(DevError::StaleCerts { certs: certs_dir });
        }
        certs::init_ca(&ca)?;
    }
    let sans = ["127.0.0.1".to_string(), "localhost".to_string()];
    for node in plan {
        let out = node_cert_dir(data, node.id);
        if !out.join(certs::NODE_CERT_FILE).exists() {
            certs::issue_node(&ca, node.id, &sans, &out)?;
        }
    }
    Ok(())
}

fn node_cert_dir(data: &Path, id: u64) -> PathBuf {
    data.join("certs").join(format!("node{id}"))
}

/// Node config as TOML; paths are relative to the file, so the data directory can move.
fn node_config(node: &NodePlan, plan: &[NodePlan]) -> String {
    let members: Vec<String> = plan
        .iter()
        .map(|m| {
            format!(
                "  {{ id = {}, cluster_addr = \"{}\", ingest_addr = \"{}\" }},",
                m.id, m.cluster, m.ingest
            )
        })
        .collect();
    let id = node.id;
    format!(
        "# Node {id} of a `quorumcast dev` set, rewritten at every start. Run it by hand with\n\
         #   quorumcast node --config node{id}.toml\n\
         dst = \"node{id}/recordings\"\n\
         statedir = \"node{id}/state\"\n\
         hostname = \"recorder-{id}\"\n\
         listen = \"{ingest}\"\n\n\
         [cluster]\n\
         node_id = {id}\n\
         listen = \"{cluster}\"\n\
         ca = \"certs/ca/{ca}\"\n\
         cert = \"certs/node{id}/{cert}\"\n\
         key = \"certs/node{id}/{key}\"\n\
         initial_members = [\n{members}\n]\n",
        ingest = node.ingest,
        cluster = node.cluster,
        ca = certs::CA_CERT_FILE,
        cert = certs::NODE_CERT_FILE,
        key = certs::NODE_KEY_FILE,
        members = members.join("\n"),
    )
}

/// A clear error now beats a node dying on a bind error in its log. (A port can still be taken
/// between this check and the node's bind; the node then exits and `dev` says so.)
fn check_ports_free(plan: &[NodePlan]) -> Result<(), DevError> {
    for node in plan {
        if std::net::TcpListener::bind(node.ingest).is_err() {
            return Err(DevError::PortInUse {
                proto: "TCP",
                addr: node.ingest,
            });
        }
        if std::net::UdpSocket::bind(node.cluster).is_err() {
            return Err(DevError::PortInUse {
                proto: "UDP",
                addr: node.cluster,
            });
        }
    }
    Ok(())
}

fn create_dir(path: &Path) -> Result<(), DevError> {
    std::fs::create_dir_all(path).map_err(|source| DevError::Io {
        what: "cannot create",
        path: path.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, text: &str) -> Result<(), DevError> {
    std::fs::write(path, text).map_err(|source| DevError::Io {
        what: "cannot write",
        path: path.to_path_buf(),
        source,
    })
}

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP (terminal closed) all mean: stop the set.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, DevError> {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind| signal(kind).map_err(DevError::Signals);
        Ok(Signals {
            int: install(SignalKind::interrupt())?,
            term: install(SignalKind::terminate())?,
            hup: install(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// One child node process.
struct RunningNode {
    plan: NodePlan,
    log: PathBuf,
    pid: u32,
    /// `kill_on_drop`: if `dev` returns early or panics, dropping this kills the node.
    child: Child,
    /// Set once the child has been reaped; its pid may then belong to someone else.
    exited: Option<ExitStatus>,
}

/// The set of child nodes; dropping it SIGKILLs any still running (see [`RunningNode::child`]).
struct NodeSet {
    nodes: Vec<RunningNode>,
}

impl NodeSet {
    /// Starts every node, printing each one's pid as it starts.
    fn spawn(exe: &Path, data: &Path, plan: &[NodePlan]) -> Result<NodeSet, DevError> {
        let mut set = NodeSet { nodes: Vec::new() };
        for node in plan {
            let running = spawn_node(exe, data, node)?;
            println!(
                "  node {}  pid {}  ingest {}  cluster {}  log {}",
                node.id,
                running.pid,
                node.ingest,
                node.cluster,
                running.log.display()
            );
            set.nodes.push(running);
        }
        Ok(set)
    }

    /// Waits for the next child to exit, records and returns it; never returns if none runs.
    /// Cancel-safe: tokio's `Child::wait` is.
    async fn next_exit(&mut self) -> (usize, std::io::Result<ExitStatus>) {
        let waits: Vec<_> = self
            .nodes
            .iter_mut()
            .enumerate()
            .filter(|(_, n)| n.exited.is_none())
            .map(|(i, n)| Box::pin(async move { (i, n.child.wait().await) }))
            .collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        let ((i, status), _, _) = futures_util::future::select_all(waits).await;
        if let Ok(status) = &status {
            self.nodes[i].exited = Some(*status);
        }
        (i, status)
    }

    /// A child that already exited, if any (reaping it).
    fn find_exited(&mut self) -> Option<&RunningNode> {
        let i = self.nodes.iter_mut().position(|n| n.poll_exit())?;
        Some(&self.nodes[i])
    }

    /// SIGTERM to every running node at once (they stop in parallel), then up to
    /// [`STOP_GRACE`] for all of them, then SIGKILL for any left.
    async fn stop(&mut self) {
        let running: Vec<&mut RunningNode> = self
            .nodes
            .iter_mut()
            .filter_map(|n| (!n.poll_exit()).then_some(n))
            .collect();
        if running.is_empty() {
            return;
        }
        println!("stopping {} (SIGTERM)...", nodes(running.len()));
        for node in &running {
            node.terminate();
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for node in running {
            let status = match tokio::time::timeout_at(deadline, node.child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    println!(
                        "node {} (pid {}) did not stop within {} s: SIGKILL",
                        node.plan.id,
                        node.pid,
                        STOP_GRACE.as_secs()
                    );
                    // `kill` sends SIGKILL and reaps; `wait` then returns the status.
                    match node.child.kill().await {
                        Ok(()) => node.child.wait().await,
                        Err(e) => Err(e),
                    }
                }
            };
            match status {
                Ok(status) => {
                    node.exited = Some(status);
                    println!("  node {} stopped ({status})", node.plan.id);
                }
                Err(e) => println!("  node {}: cannot wait for it: {e}", node.plan.id),
            }
        }
    }
}

impl RunningNode {
    /// True if the child has exited (and is now reaped); records its status.
    fn poll_exit(&mut self) -> bool {
        if self.exited.is_some() {
            return true;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                true
            }
            // An error here means we can't tell; treat it as running so stop() still tries.
            Ok(None) | Err(_) => false,
        }
    }

    /// SIGTERM: the node's graceful shutdown. Only called while not reaped, so the pid is
    /// still this child's.
    fn terminate(&self) {
        let Ok(pid) = i32::try_from(self.pid) else {
            return;
        };
        if let Err(e) = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM) {
            println!("  node {}: cannot send SIGTERM: {e}", self.plan.id);
        }
    }
}

/// Starts `exe node --config nodeN.toml` with stdout and stderr in `nodeN.log`.
fn spawn_node(exe: &Path, data: &Path, node: &NodePlan) -> Result<RunningNode, DevError> {
    let log = node.log(data);
    let io_err = |source| DevError::Io {
        what: "cannot create",
        path: log.clone(),
        source,
    };
    // One open file shared by both streams: two opens would each write from offset 0.
    let stdout = std::fs::File::create(&log).map_err(io_err)?;
    let stderr = stdout.try_clone().map_err(io_err)?;
    let mut command = Command::new(exe);
    command
        .arg("node")
        .arg("--config")
        .arg(node.config(data))
        .current_dir(data)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        // Its own process group: the terminal's Ctrl-C reaches only `dev`, which then stops
        // the nodes in order (and doesn't report them as crashed).
        .process_group(0);
    for var in NODE_ENV {
        command.env_remove(var);
    }
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (prctl, getppid), allocating nothing.
    unsafe {
        command.pre_exec(move || die_with_parent(parent));
    }
    let child = command.spawn().map_err(|source| DevError::Spawn {
        id: node.id,
        source,
    })?;
    let pid = child.id().ok_or_else(|| DevError::Spawn {
        id: node.id,
        source: std::io::Error::other("exited before it could be watched"),
    })?;
    Ok(RunningNode {
        plan: node.clone(),
        log,
        pid,
        child,
        exited: None,
    })
}

/// In the child: SIGTERM when `dev` dies, even by SIGKILL, so no node outlives it. The
/// kernel sends it when the thread that forked exits; `dev` forks from the thread running
/// `block_on`, which lives as long as the process.
fn die_with_parent(parent: u32) -> std::io::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
    // The parent may have died before prctl: then nobody would ever send the signal.
    if nix::unistd::getppid().as_raw() as u32 != parent {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// What one `/healthz` probe said.
#[derive(Debug)]
struct Health {
    ok: bool,
    leader: Option<u64>,
    detail: String,
}

/// Polls every node's `/healthz` until all answer 200 and name the same leader; returns it.
/// Fails fast if a node exits, or after [`READY_TIMEOUT`].
async fn wait_ready(set: &mut NodeSet) -> Result<u64, DevError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    println!("waiting for every node's /healthz (a leader in touch with its quorum)...");
    loop {
        if let Some(node) = set.find_exited() {
            return Err(DevError::ExitedAtStart {
                id: node.plan.id,
                pid: node.pid,
                status: node.exited.map(|s| s.to_string()).unwrap_or_default(),
            });
        }
        let mut health = Vec::new();
        for node in &set.nodes {
            health.push((node.plan.id, probe(node.plan.ingest).await));
        }
        if let Some(leader) = agreed_leader(&health) {
            return Ok(leader);
        }
        if Instant::now() > deadline {
            let problems: Vec<String> = health
                .iter()
                .map(|(id, h)| format!("node {id}: {}", h.detail))
                .collect();
            return Err(DevError::NotReady {
                problems: problems.join("; "),
            });
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

fn agreed_leader(health: &[(u64, Health)]) -> Option<u64> {
    let leader = health.first()?.1.leader?;
    health
        .iter()
        .all(|(_, h)| h.ok && h.leader == Some(leader))
        .then_some(leader)
}

async fn probe(addr: SocketAddr) -> Health {
    let answer = match tokio::time::timeout(PROBE_TIMEOUT, get_healthz(addr)).await {
        Ok(answer) => answer,
        Err(_) => Err("/healthz timed out".to_string()),
    };
    match answer {
        Ok((status, body)) => {
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            Health {
                ok: status == 200,
                leader: json["leader"].as_u64(),
                detail: match json["problem"].as_str() {
                    Some(problem) => problem.to_string(),
                    None => format!("/healthz answered {status}"),
                },
            }
        }
        Err(detail) => Health {
            ok: false,
            leader: None,
            detail,
        },
    }
}

/// `GET /healthz` over HTTP/1.1; errors are only descriptions (a node not up yet is normal).
async fn get_healthz(addr: SocketAddr) -> Result<(u16, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("not answering on {addr} yet ({e})"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let request = http::Request::get("/healthz")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_HEALTH_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    answer
}

fn print_log_tails(set: &NodeSet) {
    for node in &set.nodes {
        println!(
            "--- node {} log, last {LOG_TAIL_LINES} lines ({}) ---",
            node.plan.id,
            node.log.display()
        );
        match std::fs::read(&node.log) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text.lines().collect();
                for line in &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..] {
                    println!("{line}");
                }
            }
            Err(e) => println!("(cannot read it: {e})"),
        }
    }
}

/// The "ready" line (scripts and tests wait for it), then copy-pasteable next steps.
fn print_ready(exe: &Path, data: &Path, set: &NodeSet, leader: u64, took: Duration) {
    let qc = command_name(exe);
    let ingest: Vec<String> = set
        .nodes
        .iter()
        .map(|n| n.plan.ingest.to_string())
        .collect();
    let first = ingest.first().cloned().unwrap_or_default();
    let recorders: Vec<String> = ingest.iter().map(|a| format!("--recorder {a}")).collect();
    println!(
        "ready: {} healthy in {:.1} s, leader is node {leader}",
        nodes(set.nodes.len()),
        took.as_secs_f64()
    );
    println!();
    println!("  ingest (HTTP, h2c):  {}", ingest.join("  "));
    let pids: Vec<String> = set
        .nodes
        .iter()
        .map(|n| format!("node {} = {}", n.plan.id, n.pid))
        .collect();
    println!("  pids:                {}", pids.join(", "));
    println!();
    println!("Record a session (it fails over between the recorders):");
    println!("  {qc} record {} -- bash", recorders.join(" "));
    println!("See the set and its sessions:");
    println!("  {qc} cluster status --node {first}");
    println!("  {qc} cluster sessions --node {first}");
    println!("Recordings land under the node that took the session:");
    println!(
        "  {}/node*/recordings/<ssh server>/<start time>.cast",
        data.display()
    );
    print_failover_hint(&qc, data, set, leader);
    println!();
    println!(
        "Ctrl-C stops every node. Node logs: {}/node*.log",
        data.display()
    );
}

fn print_failover_hint(qc: &str, data: &Path, set: &NodeSet, leader: u64) {
    let Some(victim) = set.nodes.iter().find(|n| n.plan.id == leader) else {
        return;
    };
    let Some(survivor) = set.nodes.iter().find(|n| n.plan.id != leader) else {
        return;
    };
    println!("Watch a failover: kill the leader, then ask a survivor who leads now:");
    println!(
        "  kill -9 {} && sleep 3 && {qc} cluster status --node {}",
        victim.pid, survivor.plan.ingest
    );
    println!(
        "  (bring it back in another terminal: {qc} node --config {})",
        victim.plan.config(data).display()
    );
}

/// "1 node", "3 nodes".
fn nodes(n: usize) -> String {
    match n {
        1 => "1 node".to_string(),
        n => format!("{n} nodes"),
    }
}

/// `quorumcast` if that name on PATH is this very executable, else its full path, so that
/// printed commands work as pasted (e.g. under `cargo run`).
fn command_name(exe: &Path) -> String {
    let full = exe.display().to_string();
    let (Some(name), Some(path)) = (exe.file_name(), std::env::var_os("PATH")) else {
        return full;
    };
    let on_path = std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    match on_path {
        Some(found) if same(&found, exe) => name.to_string_lossy().into_owned(),
        _ => full,
    }
}

/// Until a stop signal: reports each node that exits, and leaves the others running (that is
/// the failover demo).
async fn watch(set: &mut NodeSet, signals: &mut Signals) {
    loop {
        tokio::select! {
            name = signals.recv() => {
                println!("{name}: stopping the set");
                return;
            }
            (i, status) = set.next_exit() => report_exit(set, i, status),
        }
    }
}

fn report_exit(set: &NodeSet, i: usize, status: std::io::Result<ExitStatus>) {
    let node = &set.nodes[i];
    let status = match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("cannot tell how: {e}"),
    };
    let left = set.nodes.iter().filter(|n| n.exited.is_none()).count();
    println!(
        "node {} (pid {}) exited ({status}); {left} of {} still running. Its log: {}",
        node.plan.id,
        node.pid,
        set.nodes.len(),
        node.log.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeArgs;

    fn shape(nodes: usize, base_port: u16) -> Shape {
        Shape { nodes, base_port }
    }

    #[test]
    fn ports_follow_the_base_and_refuse_to_overflow() {
        let plan = plan_nodes(&shape(3, 8080)).expect("plan");
        let ports: Vec<(u16, u16)> = plan
            .iter()
            .map(|n| (n.ingest.port(), n.cluster.port()))
            .collect();
        assert_eq!(ports, [(8081, 8091), (8082, 8092), (8083, 8093)]);
        assert!(plan_nodes(&shape(5, 65520)).is_ok());
        assert!(matches!(
            plan_nodes(&shape(5, 65521)),
            Err(DevError::PortRange { .. })
        ));
    }

    #[test]
    fn generated_configs_resolve_to_the_planned_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan_nodes(&shape(3, 9000)).expect("plan");
        let data = prepare_data(dir.path(), &shape(3, 9000), &plan).expect("prepare");
        let args = NodeArgs {
            config: Some(plan[1].config(&data)),
            ..NodeArgs::default()
        };
        let config = args.resolve().expect("resolve");
        assert_eq!(config.dst, data.join("node2/recordings"));
        assert_eq!(config.statedir, data.join("node2/state"));
        assert_eq!(config.listen.port(), 9002);
        let cluster = config.cluster.expect("cluster section");
        assert_eq!((cluster.node_id, cluster.listen.port()), (2, 9012));
        assert!(cluster.cert.exists() && cluster.key.exists() && cluster.ca.exists());
        assert_eq!(cluster.initial_members.len(), 3);
        assert_eq!(cluster.initial_members[2].ingest_addr, "127.0.0.1:9003");
    }

    #[test]
    fn a_second_start_keeps_certs_and_refuses_another_shape() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan_nodes(&shape(3, 9000)).expect("plan");
        let data = prepare_data(dir.path(), &shape(3, 9000), &plan).expect("prepare");
        let ca = std::fs::read(data.join("certs/ca/ca.pem")).expect("ca");
        prepare_data(&data, &shape(3, 9000), &plan).expect("same shape again");
        assert_eq!(std::fs::read(data.join("certs/ca/ca.pem")).expect("ca"), ca);
        let other = plan_nodes(&shape(3, 9100)).expect("plan");
        assert!(matches!(
            prepare_data(&data, &shape(3, 9100), &other),
            Err(DevError::ShapeChanged {
                nodes: 3,
                base_port: 9000,
                ..
            })
        ));
    }

    #[test]
    fn leader_must_be_agreed_by_every_healthy_node() {
        let h = |ok, leader| Health {
            ok,
            leader,
            detail: String::new(),
        };
        assert_eq!(
            agreed_leader(&[(1, h(true, Some(2))), (2, h(true, Some(2)))]),
            Some(2)
        );
        assert_eq!(
            agreed_leader(&[(1, h(true, Some(2))), (2, h(false, Some(2)))]),
            None
        );
        assert_eq!(
            agreed_leader(&[(1, h(true, Some(2))), (2, h(true, Some(1)))]),
            None
        );
    }
}
