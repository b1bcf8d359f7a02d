//! Who is streaming: the connecting SSH server's identity, which names its directory.
//!
//! By default the peer IP address. With `--tailscaled-socket`, the stable node ID that
//! the local tailscaled's LocalAPI `whois` returns for the peer address, which is how
//! tsrecorder lays out a real tailnet deployment. Either way the result goes through
//! [`sanitize_component`] before it can become a path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::storage::layout::sanitize_component;

/// A whois that takes longer than this refuses the session, so the client moves on.
const WHOIS_TIMEOUT: Duration = Duration::from_secs(5);
/// tailscaled's whois answers are a few KiB.
const WHOIS_MAX_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("tailscaled whois for {peer}: {message}")]
    Whois { peer: SocketAddr, message: String },
}

/// How node directories are named.
#[derive(Debug, Clone)]
pub enum Identity {
    /// The peer's IP address.
    PeerAddress,
    /// Ask tailscaled at this LocalAPI socket.
    Tailscaled { socket: PathBuf },
}

#[derive(Deserialize)]
struct WhoIs {
    #[serde(rename = "Node")]
    node: Option<WhoIsNode>,
}

#[derive(Deserialize)]
struct WhoIsNode {
    #[serde(rename = "StableID")]
    stable_id: Option<String>,
}

/// Names under dst that belong to the node itself (the default statedir is `<dst>/state`).
const RESERVED: &[&str] = &["state"];

/// A safe directory name that can't collide with the node's own directories.
fn node_dir_name(raw: &str) -> String {
    let name = sanitize_component(raw);
    if RESERVED.contains(&name.as_str()) {
        format!("_{name}")
    } else {
        name
    }
}

impl Identity {
    /// The sanitized directory name for recordings from `peer`.
    pub async fn node_dir(&self, peer: SocketAddr) -> Result<String, IdentityError> {
        match self {
            Identity::PeerAddress => Ok(node_dir_name(&peer.ip().to_canonical().to_string())),
            Identity::Tailscaled { socket } => {
                let fail = |message: String| IdentityError::Whois { peer, message };
                let id = tokio::time::timeout(WHOIS_TIMEOUT, whois(socket, peer))
                    .await
                    .map_err(|_| fail("timed out".into()))?
                    .map_err(fail)?;
                Ok(node_dir_name(&id))
            }
        }
    }
}

/// `GET /localapi/v0/whois?addr=IP:PORT` over tailscaled's unix socket.
async fn whois(socket: &PathBuf, peer: SocketAddr) -> Result<String, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect {}: {e}", socket.display()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let request = http::Request::get(format!("/localapi/v0/whois?addr={peer}"))
        .header(http::header::HOST, "local-tailscaled.sock")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), WHOIS_MAX_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        let who: WhoIs = serde_json::from_slice(&body).map_err(|e| format!("bad answer: {e}"))?;
        who.node
            .and_then(|n| n.stable_id)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| "answer has no Node.StableID".to_string())
    };
    // The connection future drives the socket. tailscaled may close it right after the
    // response, before `exchange` has read the buffered body, so its end decides nothing:
    // a real failure surfaces as an error in `exchange`.
    let drive = async {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "tailscaled connection ended");
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        result = exchange => result,
        () = drive => Err("unreachable: connection driver ended".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_are_prefixed() {
        assert_eq!(node_dir_name("state"), "_state");
        assert_eq!(node_dir_name("nXyZ12CNTRL"), "nXyZ12CNTRL");
        assert_eq!(node_dir_name("../state"), ".._state");
    }
}
