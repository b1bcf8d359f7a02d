//! Node configuration: flags, environment variables and a TOML file, merged.
//!
//! Precedence, highest first: command-line flag, its environment variable (the same
//! ones tsrecorder reads, so quorumcast is a drop-in), the `--config` file, the default.
//! This module owns parsing and validation only; nothing here opens sockets or files
//! other than the config file itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::asciicast::Limits;
use crate::session::SessionConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("--dst (or TSRECORDER_DST, or `dst` in the config file) is required")]
    MissingDst,
    #[error("S3 storage is not available in this build yet (dst {0:?}); use a local directory")]
    S3NotAvailable(String),
    #[error("invalid value for {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// `quorumcast node` flags. Every field is optional so that the config file can fill it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeArgs {
    /// Where recordings are stored: `<dst>/<node dir>/<timestamp>.cast`.
    #[arg(long, env = "TSRECORDER_DST")]
    pub dst: Option<String>,
    /// State directory (session index). Default: `<dst>/state`.
    #[arg(long, env = "TS_STATE_DIR")]
    pub statedir: Option<PathBuf>,
    /// This recorder's name, shown in /healthz and logs.
    #[arg(long, env = "TSRECORDER_HOSTNAME")]
    pub hostname: Option<String>,
    /// HTTP listen address for ingest and the API (HTTP/1.1 and h2c). Default 0.0.0.0:80.
    #[arg(long, env = "QUORUMCAST_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// TOML file with any of these settings (flag names with `_` instead of `-`).
    #[arg(long, env = "QUORUMCAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// tailscaled's LocalAPI socket: name node directories by the peer's stable node ID.
    #[arg(long, env = "QUORUMCAST_TAILSCALED_SOCKET")]
    pub tailscaled_socket: Option<PathBuf>,
    /// Longest gap between v2 ack frames while idle, in milliseconds. Default 1000.
    #[arg(long)]
    pub ack_interval_ms: Option<u64>,
    /// Seconds a new session has to send its complete header line. Default 10.
    #[arg(long)]
    pub header_timeout_secs: Option<u64>,
    /// Concurrent recordings this node takes; more are refused (503). Default 10000.
    #[arg(long)]
    pub max_sessions: Option<usize>,
    /// Longest event line checked, in bytes (longer lines are stored but flagged). Default 1 MiB.
    #[arg(long)]
    pub max_line_bytes: Option<usize>,
}

/// The TOML file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    dst: Option<String>,
    statedir: Option<PathBuf>,
    hostname: Option<String>,
    listen: Option<SocketAddr>,
    tailscaled_socket: Option<PathBuf>,
    ack_interval_ms: Option<u64>,
    header_timeout_secs: Option<u64>,
    max_sessions: Option<usize>,
    max_line_bytes: Option<usize>,
    cluster: Option<ClusterFileConfig>,
}

/// `[cluster]` in the config file: this node's place in a recorder set. Relative paths
/// are relative to the config file's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFileConfig {
    node_id: u64,
    listen: SocketAddr,
    advertise_cluster: Option<String>,
    advertise_ingest: Option<String>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    initial_members: Vec<MemberConfig>,
    heartbeat_ms: Option<u64>,
    election_min_ms: Option<u64>,
    election_max_ms: Option<u64>,
    disk_check_ms: Option<u64>,
    snapshot_logs: Option<u64>,
    orphan_timeout_ms: Option<u64>,
    forget_ended_after_secs: Option<u64>,
}

/// Default of `forget_ended_after_secs`: a week.
const DEFAULT_FORGET_ENDED_SECS: u64 = 7 * 24 * 3600;

/// One member of the initial set, as the config file names it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: u64,
    /// QUIC address peers dial for Raft and replication.
    pub cluster_addr: String,
    /// HTTP address clients (and `cluster status`) use.
    pub ingest_addr: String,
}

/// A validated cluster configuration.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: u64,
    /// UDP address the QUIC endpoint binds.
    pub listen: SocketAddr,
    /// What peers should dial to reach this node's QUIC endpoint.
    pub advertise_cluster: String,
    /// What clients should dial to reach this node's HTTP ingest.
    pub advertise_ingest: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Members that bootstrap the set on first start; empty to join later as a learner.
    pub initial_members: Vec<MemberConfig>,
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// How often the dst file system's usage is checked.
    pub disk_check: Duration,
    /// Applied log entries between Raft snapshots (default 5000).
    pub snapshot_logs: Option<u64>,
    /// A live session whose owner is silent this long and that no client resumed is
    /// sealed by a replica (default 30 s: longer than a client's failover deadline).
    pub orphan_timeout: Duration,
    /// Ended sessions older than this (by start) leave the Raft table, so that it and its
    /// snapshots don't grow with every recording ever made (default 7 days; `0` keeps
    /// them forever). The leader's value applies. A replica away for longer than this
    /// is no longer repaired for those sessions; every node's own index keeps them.
    pub forget_ended_after: Option<Duration>,
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub dst: PathBuf,
    pub statedir: PathBuf,
    pub hostname: String,
    pub listen: SocketAddr,
    pub tailscaled_socket: Option<PathBuf>,
    pub session: SessionConfig,
    /// `None`: a standalone recorder (no Raft, no replication).
    pub cluster: Option<ClusterConfig>,
}

impl NodeArgs {
    /// Merges flags/env over the config file over defaults, and validates.
    pub fn resolve(self) -> Result<NodeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let base = self
            .config
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        // Paths from the file are relative to the file; paths from flags to the cwd.
        let dst = match (self.dst, file.dst) {
            (Some(flag), _) => local_dst(&flag)?,
            (None, Some(from_file)) => base.join(local_dst(&from_file)?),
            (None, None) => return Err(ConfigError::MissingDst),
        };
        let defaults = SessionConfig::default();
        let session = SessionConfig {
            ack_interval: Duration::from_millis(
                positive(
                    "ack_interval_ms",
                    self.ack_interval_ms.or(file.ack_interval_ms),
                )?
                .unwrap_or(defaults.ack_interval.as_millis() as u64),
            ),
            header_timeout: Duration::from_secs(
                positive(
                    "header_timeout_secs",
                    self.header_timeout_secs.or(file.header_timeout_secs),
                )?
                .unwrap_or(defaults.header_timeout.as_secs()),
            ),
            max_sessions: positive("max_sessions", self.max_sessions.or(file.max_sessions))?
                .unwrap_or(defaults.max_sessions),
            limits: Limits {
                max_line_bytes: positive(
                    "max_line_bytes",
                    self.max_line_bytes.or(file.max_line_bytes),
                )?
                .unwrap_or(defaults.limits.max_line_bytes),
                ..defaults.limits
            },
        };
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 80)));
        let cluster = file
            .cluster
            .map(|c| cluster_config(c, &base, listen))
            .transpose()?;
        Ok(NodeConfig {
            statedir: self
                .statedir
                .or(file.statedir.map(|p| base.join(p)))
                .unwrap_or_else(|| dst.join("state")),
            dst,
            hostname: self
                .hostname
                .or(file.hostname)
                .unwrap_or_else(|| "recorder".into()),
            listen,
            tailscaled_socket: self.tailscaled_socket.or(file.tailscaled_socket),
            session,
            cluster,
        })
    }
}

fn cluster_config(
    c: ClusterFileConfig,
    base: &Path,
    listen: SocketAddr,
) -> Result<ClusterConfig, ConfigError> {
    let ms = |v: Option<u64>, default: u64| Duration::from_millis(v.unwrap_or(default));
    // Election timeouts bound failover: openraft 0.9 lets a follower campaign only after
    // the leader lease (= election max) plus its own election timeout, so the defaults
    // aim at a new leader within ~1.5 s after a crash on a LAN.
    let config = ClusterConfig {
        node_id: c.node_id,
        listen: c.listen,
        advertise_cluster: c.advertise_cluster.unwrap_or_else(|| c.listen.to_string()),
        advertise_ingest: c.advertise_ingest.unwrap_or_else(|| listen.to_string()),
        ca: base.join(c.ca),
        cert: base.join(c.cert),
        key: base.join(c.key),
        initial_members: c.initial_members,
        heartbeat: ms(c.heartbeat_ms, 75),
        election_min: ms(c.election_min_ms, 400),
        election_max: ms(c.election_max_ms, 750),
        disk_check: ms(c.disk_check_ms, 1000),
        snapshot_logs: c.snapshot_logs,
        orphan_timeout: ms(c.orphan_timeout_ms, 30_000),
        forget_ended_after: match c
            .forget_ended_after_secs
            .unwrap_or(DEFAULT_FORGET_ENDED_SECS)
        {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        },
    };
    let invalid = |message: &str| ConfigError::Invalid {
        field: "cluster",
        message: message.to_string(),
    };
    if config.heartbeat.is_zero() || config.election_min <= config.heartbeat * 2 {
        return Err(invalid(
            "election_min_ms must be more than twice heartbeat_ms",
        ));
    }
    if config.election_max <= config.election_min {
        return Err(invalid(
            "election_max_ms must be greater than election_min_ms",
        ));
    }
    let mut ids: Vec<u64> = config.initial_members.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != config.initial_members.len() {
        return Err(invalid("initial_members has duplicate ids"));
    }
    if !config.initial_members.is_empty() && !ids.contains(&config.node_id) {
        return Err(invalid(
            "initial_members must include this node's node_id (or be empty to join later)",
        ));
    }
    Ok(config)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Accepts a local directory; S3 URLs are recognised and refused with a clear message.
fn local_dst(dst: &str) -> Result<PathBuf, ConfigError> {
    let lower = dst.to_ascii_lowercase();
    if lower.starts_with("s3://") || lower.starts_with("https://") || lower.starts_with("http://") {
        return Err(ConfigError::S3NotAvailable(dst.to_string()));
    }
    if dst.is_empty() {
        return Err(ConfigError::MissingDst);
    }
    Ok(PathBuf::from(dst))
}

fn positive<T: Default + PartialEq + Copy>(
    field: &'static str,
    value: Option<T>,
) -> Result<Option<T>, ConfigError> {
    match value {
        Some(v) if v == T::default() => Err(ConfigError::Invalid {
            field,
            message: "must be greater than zero".into(),
        }),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_dst_is_refused_clearly() {
        for dst in ["s3://bucket/x", "https://s3.example/b"] {
            let args = NodeArgs {
                dst: Some(dst.into()),
                ..NodeArgs::default()
            };
            let err = args.resolve().expect_err("must refuse");
            assert!(err
                .to_string()
                .contains("S3 storage is not available in this build yet"));
        }
    }

    #[test]
    fn flags_override_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "dst = \"/from/file\"\nhostname = \"file-host\"\nmax_sessions = 7\n",
        )
        .expect("write");
        let args = NodeArgs {
            config: Some(path),
            hostname: Some("flag-host".into()),
            ..NodeArgs::default()
        };
        let config = args.resolve().expect("resolve");
        assert_eq!(config.dst, PathBuf::from("/from/file"));
        assert_eq!(config.statedir, PathBuf::from("/from/file/state"));
        assert_eq!(config.hostname, "flag-host");
        assert_eq!(config.session.max_sessions, 7);
        assert_eq!(config.listen, SocketAddr::from(([0, 0, 0, 0], 80)));
    }

    #[test]
    fn cluster_section_resolves_relative_paths_and_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node1.toml");
        let text = r#"
            dst = "/x"
            listen = "127.0.0.1:8081"
            [cluster]
            node_id = 1
            listen = "127.0.0.1:7001"
            ca = "certs/ca.pem"
            cert = "certs/node1/node.pem"
            key = "certs/node1/node.key"
            initial_members = [
              { id = 1, cluster_addr = "127.0.0.1:7001", ingest_addr = "127.0.0.1:8081" },
              { id = 2, cluster_addr = "127.0.0.1:7002", ingest_addr = "127.0.0.1:8082" },
            ]
        "#;
        std::fs::write(&path, text).expect("write");
        let args = NodeArgs {
            config: Some(path),
            ..NodeArgs::default()
        };
        let cluster = args.resolve().expect("resolve").cluster.expect("cluster");
        assert_eq!(cluster.ca, dir.path().join("certs/ca.pem"));
        assert_eq!(cluster.advertise_ingest, "127.0.0.1:8081");
        assert_eq!(cluster.advertise_cluster, "127.0.0.1:7001");
        assert_eq!(cluster.initial_members.len(), 2);
        assert_eq!(cluster.heartbeat, Duration::from_millis(75));
    }

    /// The configs shipped in `cluster-configs/local-3node/` resolve, agree on the set,
    /// and each names itself in it.
    #[test]
    fn shipped_local_3node_configs_resolve_and_agree() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster-configs/local-3node");
        let mut member_lists = Vec::new();
        for id in 1..=3u64 {
            let args = NodeArgs {
                config: Some(dir.join(format!("node{id}.toml"))),
                ..NodeArgs::default()
            };
            let config = args.resolve().expect("shipped config resolves");
            assert_eq!(config.dst, dir.join(format!("data/node{id}/recordings")));
            assert_eq!(config.listen.port(), 8080 + id as u16);
            let cluster = config.cluster.expect("a [cluster] section");
            assert_eq!(cluster.node_id, id);
            assert_eq!(cluster.listen.port(), 7000 + id as u16);
            assert!(cluster.cert.starts_with(&dir), "{:?}", cluster.cert);
            let members: Vec<(u64, String, String)> = cluster
                .initial_members
                .iter()
                .map(|m| (m.id, m.cluster_addr.clone(), m.ingest_addr.clone()))
                .collect();
            member_lists.push(members);
        }
        assert_eq!(member_lists[0].len(), 3);
        assert!(member_lists.iter().all(|m| *m == member_lists[0]));
    }

    #[test]
    fn cluster_members_must_include_self() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("n.toml");
        let text = "dst = \"/x\"\n[cluster]\nnode_id = 9\nlisten = \"127.0.0.1:7001\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\ninitial_members = [{ id = 1, cluster_addr = \"x:1\", ingest_addr = \"x:2\" }]\n";
        std::fs::write(&path, text).expect("write");
        let args = NodeArgs {
            config: Some(path),
            ..NodeArgs::default()
        };
        assert!(matches!(args.resolve(), Err(ConfigError::Invalid { .. })));
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "dst = \"/x\"\nlisten_addr = \"1.2.3.4:5\"\n").expect("write");
        let args = NodeArgs {
            config: Some(path),
            ..NodeArgs::default()
        };
        assert!(matches!(args.resolve(), Err(ConfigError::Parse { .. })));
    }
}
