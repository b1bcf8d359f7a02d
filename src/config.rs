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
}

impl NodeArgs {
    /// Merges flags/env over the config file over defaults, and validates.
    pub fn resolve(self) -> Result<NodeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let dst = self.dst.or(file.dst).ok_or(ConfigError::MissingDst)?;
        let dst = local_dst(&dst)?;
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
        Ok(NodeConfig {
            statedir: self
                .statedir
                .or(file.statedir)
                .unwrap_or_else(|| dst.join("state")),
            dst,
            hostname: self
                .hostname
                .or(file.hostname)
                .unwrap_or_else(|| "recorder".into()),
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 80))),
            tailscaled_socket: self.tailscaled_socket.or(file.tailscaled_socket),
            session,
        })
    }
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
