//! QUIC transport between cluster nodes: Raft RPCs now, replication streams later.
//!
//! Owns one quinn endpoint per node (it both accepts and dials), peer authentication, stream
//! framing, the outgoing connection cache, and shutdown of everything it spawned. Does not own
//! what the messages mean (the caller's `Req`/`Resp` types and [`RpcHandler`]), what a
//! replication stream carries ([`StreamHandler`]), or TLS material ([`super::tls`]).
//!
//! # Who is on the other end
//!
//! Every connection is mutual TLS against the cluster CA. The accepting side takes the peer's
//! node id from the certificate the handshake verified (`Connection::peer_identity`), never
//! from anything the peer sends; a connection that fails the handshake or carries no node id
//! never reaches a handler, and is logged and counted in [`REJECTED_CONNECTIONS_METRIC`].
//! With TLS 1.3 the dialling side's `connect()` resolves before the server has checked the
//! client certificate, so a refused client only learns of it when the server closes the
//! connection: a call on it fails with a connection error. The dialling side verifies the
//! server as `node-<target>.quorumcast` and checks the id in its certificate once more.
//!
//! # Wire format
//!
//! Each bidirectional stream starts with one byte, its [`StreamKind`].
//!
//! - [`StreamKind::Rpc`]: the caller sends one frame and finishes its side; the server answers
//!   with one frame and finishes. A frame is a `u32` big-endian length, then that many bytes of
//!   envelope: one byte [`WIRE_VERSION`], then the body in bincode 2 (`config::standard()`,
//!   serde). The request body is the caller's `Req`; the response body is a `Reply<Resp>`:
//!   either the handler's answer or the server's reason for refusing the request (unknown
//!   version, undecodable body, frame too large). bincode has no `deserialize_any`, so message
//!   types must not use `#[serde(untagged)]` or `#[serde(flatten)]`.
//!   Bodies carry no field tags, so any change of a message type is incompatible: the nodes
//!   of a set must run builds with the same messages (a rolling restart with one binary is
//!   supported; a rolling upgrade across such a change is not, and [`WIRE_VERSION`] does not
//!   detect it). Example: `ReadFinished`'s answer gained the session epoch in `21baa54`.
//! - [`StreamKind::Replication`]: after the kind byte, the stream belongs to the
//!   [`StreamHandler`]; this module adds nothing.
//!
//! # Bounds
//!
//! - A frame is at most [`Limits::max_frame`] bytes (default [`DEFAULT_MAX_FRAME`], 64 MiB, so
//!   a Raft snapshot fits in one RPC); larger requests fail locally before sending, a larger
//!   incoming length is refused without reading the body, and frame buffers grow with the bytes
//!   actually received, not with the length the peer claims.
//! - Streams per connection: [`super::tls::MAX_CONCURRENT_STREAMS`], enforced by QUIC flow
//!   control (a peer's `open_bi` waits), so per-stream tasks are bounded too.
//! - Accepted connections: [`Limits::max_connections`]; beyond it new ones are refused.
//! - An accepted stream must deliver its kind byte and request within
//!   [`Limits::request_timeout`].
//! - Outgoing connections: one cached per target node id, so as many as cluster members.
//!   A call that times out drops it only when the peer acked nothing during the call
//!   (a process that died); a slow but live peer keeps its connection.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use quinn::{RecvStream, SendStream, VarInt};
use rustls_pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::certs::{self, node_dns_name};
use super::tls::TlsConfig;

/// A cluster node's id, as carried in its certificate.
pub type NodeId = u64;

/// Counter: incoming cluster connections refused (failed handshake, no node id in the
/// certificate, too many connections), by `reason`.
pub const REJECTED_CONNECTIONS_METRIC: &str = "quorumcast_cluster_rejected_connections_total";

/// Version byte leading every RPC envelope; bump on an incompatible change of the envelope.
pub const WIRE_VERSION: u8 = 1;
/// Default maximum frame size: 64 MiB, enough for a Raft snapshot of the control-plane
/// state (a few records per session) in one RPC.
pub const DEFAULT_MAX_FRAME: u32 = 64 << 20;

/// After cancellation, how long in-flight requests get to finish before the endpoint closes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// After closing the endpoint, how long to wait for connections to drain.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Frame buffers start at most this big and grow as bytes arrive.
const INITIAL_FRAME_BUFFER: usize = 64 << 10;

/// Application error codes on connections and streams.
mod code {
    use quinn::VarInt;
    pub const SHUTDOWN: VarInt = VarInt::from_u32(0);
    pub const UNAUTHENTICATED: VarInt = VarInt::from_u32(1);
    pub const WRONG_PEER: VarInt = VarInt::from_u32(2);
    pub const UNKNOWN_KIND: VarInt = VarInt::from_u32(3);
    pub const NO_HANDLER: VarInt = VarInt::from_u32(4);
    pub const FRAME_TOO_LARGE: VarInt = VarInt::from_u32(5);
    pub const TIMEOUT: VarInt = VarInt::from_u32(6);
}

/// What a bidirectional stream carries, announced by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamKind {
    /// One request frame, one response frame.
    Rpc = 1,
    /// A replication stream, handed whole to the [`StreamHandler`].
    Replication = 2,
}

impl StreamKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Rpc),
            2 => Some(Self::Replication),
            _ => None,
        }
    }
}

/// Answers RPCs of one request/response type pair. `from` is the caller's node id, taken from
/// its verified certificate.
pub trait RpcHandler<Req, Resp>: Send + Sync + 'static {
    fn handle(&self, from: NodeId, req: Req) -> impl Future<Output = Resp> + Send;
}

/// Takes over [`StreamKind::Replication`] streams. Long-lived streams should watch their own
/// cancellation token: shutdown waits [`SHUTDOWN_GRACE`] for them, then closes the endpoint,
/// which fails their reads and writes.
pub trait StreamHandler: Send + Sync + 'static {
    fn handle(
        &self,
        from: NodeId,
        send: SendStream,
        recv: RecvStream,
    ) -> impl Future<Output = ()> + Send;
}

/// The "no replication yet" handler, to name the type in `None::<NoStreamHandler>`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStreamHandler;

impl StreamHandler for NoStreamHandler {
    async fn handle(&self, _from: NodeId, mut send: SendStream, mut recv: RecvStream) {
        refuse_stream(&mut send, &mut recv, code::NO_HANDLER);
    }
}

/// Limits of one transport; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum frame envelope size, requests and responses alike.
    pub max_frame: u32,
    /// Time an accepted stream has to deliver its kind byte and request frame.
    pub request_timeout: Duration,
    /// Maximum open connections (accepted and dialled) before new incoming ones are refused.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            // A 64 MiB snapshot at a slow 10 Mbit/s takes ~55 s.
            request_timeout: Duration::from_secs(60),
            // A cluster has a handful of nodes, each dialling each other once.
            max_connections: 256,
        }
    }
}

/// Errors of the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("the certificate names node {cert}, but this node is configured as node {configured}")]
    IdMismatch { configured: NodeId, cert: NodeId },
    #[error("cannot bind the cluster endpoint on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot resolve {addr}: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error("cannot dial node {node}: {source}")]
    Connect {
        node: NodeId,
        source: quinn::ConnectError,
    },
    #[error("connection to node {node}: {source}")]
    Connection {
        node: NodeId,
        source: quinn::ConnectionError,
    },
    #[error("the peer dialled as node {expected} identifies as {got:?}")]
    WrongPeer {
        expected: NodeId,
        got: Option<NodeId>,
    },
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream ended inside a frame")]
    FinishedEarly,
    #[error("stream already closed")]
    ClosedStream(#[from] quinn::ClosedStream),
    #[error("frame of {size} bytes exceeds the {max} byte limit")]
    FrameTooLarge { size: u64, max: u32 },
    #[error("encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("unsupported wire version {0} (this node speaks {WIRE_VERSION})")]
    Version(u8),
    #[error("node {node} refused the request: {reason}")]
    Remote { node: NodeId, reason: String },
    #[error("call to node {node} timed out after {timeout:?}")]
    Timeout { node: NodeId, timeout: Duration },
}

/// One RPC on `conn`: a new stream, the request frame, the reply frame.
async fn exchange_on(
    conn: &quinn::Connection,
    target_id: NodeId,
    payload: &[u8],
    max_frame: u32,
) -> Result<Vec<u8>, TransportError> {
    let (mut send, mut recv) = open_on(conn, target_id, StreamKind::Rpc).await?;
    write_frame(&mut send, payload).await?;
    send.finish()?;
    read_frame(&mut recv, max_frame).await
}

/// A new stream of `kind` on `conn`, its kind byte written.
async fn open_on(
    conn: &quinn::Connection,
    target_id: NodeId,
    kind: StreamKind,
) -> Result<(SendStream, RecvStream), TransportError> {
    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|source| TransportError::Connection {
            node: target_id,
            source,
        })?;
    send.write_all(&[kind as u8]).await?;
    Ok((send, recv))
}

/// The response envelope body: the handler's answer or why there is none.
#[derive(Serialize, Deserialize)]
enum Reply<T> {
    Ok(T),
    Refused(String),
}

/// Binds the cluster port ([`super::udp::bind`]) and a quinn endpoint on it that accepts
/// datagrams up to [`super::tls::MAX_UDP_PAYLOAD`].
fn bind_endpoint(
    listen: SocketAddr,
    server: quinn::ServerConfig,
) -> std::io::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for the cluster port"))?;
    let datagram = usize::from(super::tls::MAX_UDP_PAYLOAD);
    let socket = super::udp::bind(listen, datagram, runtime.as_ref())?;
    quinn::Endpoint::new_with_abstract_socket(
        super::tls::endpoint_config(),
        Some(server),
        socket,
        runtime,
    )
}

/// One outgoing connection, remembered with the address it was dialled at.
struct Cached {
    addr: String,
    conn: quinn::Connection,
}

/// Per-target slot; its async lock makes concurrent callers share one dial.
type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// A node's cluster endpoint: serves incoming streams and makes outgoing calls.
pub struct Transport {
    my_id: NodeId,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    limits: Limits,
    peers: Mutex<HashMap<NodeId, Slot>>,
    tracker: TaskTracker,
    rejected: Arc<AtomicU64>,
}

impl Transport {
    /// Binds the UDP socket with default [`Limits`]. Must run inside a tokio runtime.
    pub fn bind(listen: SocketAddr, tls: TlsConfig, my_id: NodeId) -> Result<Self, TransportError> {
        Self::bind_with_limits(listen, tls, my_id, Limits::default())
    }

    /// Binds the UDP socket. Fails if the certificate in `tls` names another node than `my_id`.
    pub fn bind_with_limits(
        listen: SocketAddr,
        tls: TlsConfig,
        my_id: NodeId,
        limits: Limits,
    ) -> Result<Self, TransportError> {
        if tls.node_id() != my_id {
            return Err(TransportError::IdMismatch {
                configured: my_id,
                cert: tls.node_id(),
            });
        }
        let endpoint = bind_endpoint(listen, tls.server_config().clone()).map_err(|source| {
            TransportError::Bind {
                addr: listen,
                source,
            }
        })?;
        Ok(Self {
            my_id,
            endpoint,
            client: tls.client_config().clone(),
            limits,
            peers: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            rejected: Arc::new(AtomicU64::new(0)),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.my_id
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Incoming connections refused so far (the metric's value for this transport).
    pub fn rejected_connections(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Serves incoming connections until `cancel`, then shuts down: refuses new connections,
    /// gives in-flight streams [`SHUTDOWN_GRACE`] to finish, closes the endpoint and waits for
    /// every task it spawned. Call once per transport.
    pub async fn serve<Req, Resp, H, R>(
        &self,
        rpc: H,
        replication: Option<R>,
        cancel: CancellationToken,
    ) where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        H: RpcHandler<Req, Resp>,
        R: StreamHandler,
    {
        let ctx = Arc::new(ServeCtx {
            rpc,
            replication,
            limits: self.limits,
            tracker: self.tracker.clone(),
            rejected: self.rejected.clone(),
            cancel: cancel.clone(),
            _types: std::marker::PhantomData,
        });
        self.accept_loop(&ctx).await;
        self.shutdown().await;
    }

    async fn accept_loop<Req, Resp, H, R>(&self, ctx: &Arc<ServeCtx<Req, Resp, H, R>>)
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        H: RpcHandler<Req, Resp>,
        R: StreamHandler,
    {
        loop {
            let incoming = tokio::select! {
                _ = ctx.cancel.cancelled() => return,
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => return, // endpoint closed
                },
            };
            if self.endpoint.open_connections() >= self.limits.max_connections {
                let remote = incoming.remote_address();
                incoming.refuse();
                ctx.reject(remote, "too_many_connections", &"connection limit reached");
                continue;
            }
            self.tracker.spawn(accept_connection(incoming, ctx.clone()));
        }
    }

    async fn shutdown(&self) {
        // No new handshakes; in-flight ones and streams get a grace period.
        self.endpoint.set_server_config(None);
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("cluster transport: in-flight streams outlived the shutdown grace period");
        }
        self.endpoint.close(code::SHUTDOWN, b"shutdown");
        // Closing fails every remaining stream, so their tasks end promptly now.
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait()).await;
        // Lets close frames be retransmitted so peers learn of the close now rather than at
        // their idle timeout; a good-faith effort, bounded.
        let _ = tokio::time::timeout(CLOSE_LINGER, self.endpoint.wait_idle()).await;
    }

    /// Calls node `target_id` at `target_addr` (`host:port`, resolved on each new connection)
    /// and returns its handler's response. `timeout` bounds everything: resolving, dialling,
    /// sending, the handler, receiving.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target_id: NodeId,
        target_addr: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        // Encode and size-check before any I/O: an oversized request never leaves the node.
        let payload = encode_envelope(req, self.limits.max_frame)?;
        let timed_out = || TransportError::Timeout {
            node: target_id,
            timeout,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let (conn, dialled) =
            tokio::time::timeout_at(deadline, self.connection(target_id, target_addr))
                .await
                .map_err(|_| timed_out())??;
        let acks_before = conn.stats().frame_rx.acks;
        let exchange = exchange_on(&conn, target_id, &payload, self.limits.max_frame);
        let Ok(reply) = tokio::time::timeout_at(deadline, exchange).await else {
            // A handshake that completed within this call already showed the peer alive;
            // the rest of the budget may have been too short for its acks to arrive.
            if !dialled {
                self.forget_if_silent(target_id, &conn, acks_before);
            }
            return Err(timed_out());
        };
        match decode_envelope::<Reply<Resp>>(&reply?)? {
            Reply::Ok(resp) => Ok(resp),
            Reply::Refused(reason) => Err(TransportError::Remote {
                node: target_id,
                reason,
            }),
        }
    }

    /// After a call timed out: drops the cached connection only if the peer acknowledged
    /// nothing on it meanwhile. A peer that acks our packets is alive and merely slow (a
    /// follower's append waiting for its disk): its connection is kept, since dialling
    /// afresh would cost a handshake and fail the calls still in flight on the old one.
    /// A peer that acks nothing may be a process that died: dial afresh next time rather
    /// than wait for QUIC's idle timeout.
    fn forget_if_silent(&self, target_id: NodeId, conn: &quinn::Connection, acks_before: u64) {
        if conn.stats().frame_rx.acks != acks_before {
            return;
        }
        let mut peers = self.peers_lock();
        let same = peers.get(&target_id).is_some_and(|slot| {
            slot.try_lock()
                .ok()
                .and_then(|cached| cached.as_ref().map(|c| c.conn.stable_id()))
                == Some(conn.stable_id())
        });
        if same {
            debug!(
                node = target_id,
                "call timed out with no ack from the peer: dropping its connection"
            );
            peers.remove(&target_id);
        }
    }

    /// Opens a stream of `kind` to node `target_id` (the kind byte is already written). Not
    /// bounded in time: wrap it in a timeout.
    pub async fn open_stream(
        &self,
        target_id: NodeId,
        target_addr: &str,
        kind: StreamKind,
    ) -> Result<(SendStream, RecvStream), TransportError> {
        let (conn, _) = self.connection(target_id, target_addr).await?;
        open_on(&conn, target_id, kind).await
    }

    /// Drops the cached connection to `target_id` (e.g. after it left the cluster); in-flight
    /// calls on it finish, and the connection closes when the last one does.
    pub fn forget(&self, target_id: NodeId) {
        self.peers_lock().remove(&target_id);
    }

    /// Statistics of the open outgoing connections, by peer, for metrics. A connection
    /// being dialled right now is skipped (its slot is locked), never waited for.
    pub fn path_stats(&self) -> Vec<(NodeId, quinn::ConnectionStats)> {
        let slots: Vec<(NodeId, Slot)> = self
            .peers_lock()
            .iter()
            .map(|(id, slot)| (*id, slot.clone()))
            .collect();
        slots
            .into_iter()
            .filter_map(|(id, slot)| {
                let cached = slot.try_lock().ok()?;
                let conn = &cached.as_ref()?.conn;
                conn.close_reason().is_none().then(|| (id, conn.stats()))
            })
            .collect()
    }

    fn peers_lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Slot>> {
        // The map holds no invariant a panicking holder could break halfway.
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached connection to `target_id` if it is open and was dialled at `addr`, else a new
    /// one (then `true`: dialled by this call). Concurrent callers wait for one dial instead
    /// of racing several.
    async fn connection(
        &self,
        target_id: NodeId,
        addr: &str,
    ) -> Result<(quinn::Connection, bool), TransportError> {
        let slot = self.peers_lock().entry(target_id).or_default().clone();
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref() {
            if c.addr == addr && c.conn.close_reason().is_none() {
                return Ok((c.conn.clone(), false));
            }
        }
        // A replaced connection closes once in-flight calls drop their handles.
        *cached = None;
        let conn = self.dial(target_id, addr).await?;
        *cached = Some(Cached {
            addr: addr.to_owned(),
            conn: conn.clone(),
        });
        Ok((conn, true))
    }

    async fn dial(
        &self,
        target_id: NodeId,
        addr: &str,
    ) -> Result<quinn::Connection, TransportError> {
        let remote = self.resolve(addr).await?;
        let server_name = node_dns_name(target_id);
        let conn = self
            .endpoint
            .connect_with(self.client.clone(), remote, &server_name)
            .map_err(|source| TransportError::Connect {
                node: target_id,
                source,
            })?
            .await
            .map_err(|source| TransportError::Connection {
                node: target_id,
                source,
            })?;
        // The server name check already pinned the identity; this guards against a CA that
        // issued a name we would not parse the same way.
        let got = peer_node_id(&conn);
        if got != Some(target_id) {
            conn.close(code::WRONG_PEER, b"unexpected node identity");
            return Err(TransportError::WrongPeer {
                expected: target_id,
                got,
            });
        }
        debug!(node = target_id, %remote, "cluster connection established");
        Ok(conn)
    }

    /// Resolves `host:port`, preferring an address of our socket's family (an IPv4 socket
    /// can't reach IPv6 addresses).
    async fn resolve(&self, addr: &str) -> Result<SocketAddr, TransportError> {
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(|source| TransportError::Resolve {
                addr: addr.to_owned(),
                source,
            })?
            .collect();
        let ipv4 = self
            .endpoint
            .local_addr()
            .map(|a| a.is_ipv4())
            .unwrap_or(true);
        resolved
            .iter()
            .find(|a| a.is_ipv4() == ipv4)
            .or_else(|| resolved.first())
            .copied()
            .ok_or_else(|| TransportError::NoAddress(addr.to_owned()))
    }
}

/// What the serving tasks share.
struct ServeCtx<Req, Resp, H, R> {
    rpc: H,
    replication: Option<R>,
    limits: Limits,
    tracker: TaskTracker,
    rejected: Arc<AtomicU64>,
    cancel: CancellationToken,
    // fn() -> _ : the context neither owns nor sends these types, so they don't constrain
    // its Send/Sync.
    _types: std::marker::PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp, H, R> ServeCtx<Req, Resp, H, R> {
    fn reject(&self, remote: SocketAddr, reason: &'static str, error: &dyn std::fmt::Display) {
        warn!(%remote, reason, %error, "cluster connection rejected");
        metrics::counter!(REJECTED_CONNECTIONS_METRIC, "reason" => reason).increment(1);
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }
}

/// Completes the handshake and authenticates the peer by its certificate, then serves it.
async fn accept_connection<Req, Resp, H, R>(
    incoming: quinn::Incoming,
    ctx: Arc<ServeCtx<Req, Resp, H, R>>,
) where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    H: RpcHandler<Req, Resp>,
    R: StreamHandler,
{
    let remote = incoming.remote_address();
    // A client without a certificate, or with one the CA didn't sign, fails here: rustls
    // refuses it and quinn closes the connection before it is ever returned.
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => return ctx.reject(remote, "handshake", &e),
    };
    let Some(from) = peer_node_id(&conn) else {
        conn.close(code::UNAUTHENTICATED, b"certificate carries no node id");
        return ctx.reject(
            remote,
            "no_node_id",
            &"verified certificate carries no node id",
        );
    };
    debug!(node = from, %remote, "cluster connection accepted");
    serve_connection(conn, from, ctx).await;
}

/// Accepts streams until the connection ends or shutdown starts; each stream is a task.
async fn serve_connection<Req, Resp, H, R>(
    conn: quinn::Connection,
    from: NodeId,
    ctx: Arc<ServeCtx<Req, Resp, H, R>>,
) where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    H: RpcHandler<Req, Resp>,
    R: StreamHandler,
{
    loop {
        let (send, recv) = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            stream = conn.accept_bi() => match stream {
                Ok(stream) => stream,
                Err(e) => {
                    debug!(node = from, error = %e, "cluster connection ended");
                    return;
                }
            },
        };
        ctx.tracker
            .spawn(serve_stream(from, send, recv, ctx.clone()));
    }
}

async fn serve_stream<Req, Resp, H, R>(
    from: NodeId,
    mut send: SendStream,
    mut recv: RecvStream,
    ctx: Arc<ServeCtx<Req, Resp, H, R>>,
) where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    H: RpcHandler<Req, Resp>,
    R: StreamHandler,
{
    let mut kind = [0u8; 1];
    let read_kind = tokio::time::timeout(ctx.limits.request_timeout, recv.read_exact(&mut kind));
    match read_kind.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return debug!(node = from, error = %e, "stream ended before its kind"),
        Err(_) => return refuse_stream(&mut send, &mut recv, code::TIMEOUT),
    }
    match (StreamKind::from_byte(kind[0]), &ctx.replication) {
        (Some(StreamKind::Rpc), _) => serve_rpc(from, send, recv, &ctx).await,
        (Some(StreamKind::Replication), Some(handler)) => handler.handle(from, send, recv).await,
        (Some(StreamKind::Replication), None) => {
            refuse_stream(&mut send, &mut recv, code::NO_HANDLER)
        }
        (None, _) => {
            warn!(node = from, kind = kind[0], "unknown cluster stream kind");
            refuse_stream(&mut send, &mut recv, code::UNKNOWN_KIND);
        }
    }
}

/// Reads one request, answers it with one frame, finishes the stream.
async fn serve_rpc<Req, Resp, H, R>(
    from: NodeId,
    mut send: SendStream,
    mut recv: RecvStream,
    ctx: &ServeCtx<Req, Resp, H, R>,
) where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    H: RpcHandler<Req, Resp>,
{
    let max = ctx.limits.max_frame;
    let request = tokio::time::timeout(ctx.limits.request_timeout, read_frame(&mut recv, max));
    let reply = match request.await {
        Err(_) => return refuse_stream(&mut send, &mut recv, code::TIMEOUT),
        Ok(Err(e @ TransportError::FrameTooLarge { .. })) => {
            // Don't make the caller push a body nobody will read.
            let _ = recv.stop(code::FRAME_TOO_LARGE);
            refused(&e)
        }
        Ok(Err(e)) => return debug!(node = from, error = %e, "RPC request not received"),
        Ok(Ok(frame)) => match decode_envelope::<Req>(&frame) {
            Ok(req) => answer(ctx, from, req).await,
            Err(e) => refused(&e),
        },
    };
    if let Err(e) = send_reply(&mut send, &reply).await {
        debug!(node = from, error = %e, "RPC response not sent");
    }
}

/// Runs the handler and encodes its answer, or a refusal if the answer is too large.
async fn answer<Req, Resp, H, R>(ctx: &ServeCtx<Req, Resp, H, R>, from: NodeId, req: Req) -> Vec<u8>
where
    Resp: Serialize,
    H: RpcHandler<Req, Resp>,
{
    let resp = ctx.rpc.handle(from, req).await;
    match encode_envelope(&Reply::Ok(&resp), ctx.limits.max_frame) {
        Ok(bytes) => bytes,
        Err(e) => {
            warn!(node = from, error = %e, "RPC response not encodable");
            refused(&e)
        }
    }
}

/// An encoded `Reply::Refused`. Its reason is short, so it always fits a frame.
fn refused(reason: &dyn std::fmt::Display) -> Vec<u8> {
    let reply: Reply<()> = Reply::Refused(reason.to_string());
    encode_envelope(&reply, u32::MAX).unwrap_or_default()
}

async fn send_reply(send: &mut SendStream, reply: &[u8]) -> Result<(), TransportError> {
    write_frame(send, reply).await?;
    send.finish()?;
    Ok(())
}

fn refuse_stream(send: &mut SendStream, recv: &mut RecvStream, code: VarInt) {
    // Either may already be closed by the peer; nothing more to do then.
    let _ = send.reset(code);
    let _ = recv.stop(code);
}

/// The node id in the certificate the peer presented in the handshake, if any.
fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs::node_id_from_cert(chain.first()?)
}

/// `[WIRE_VERSION][bincode body]`, refused if longer than `max`.
fn encode_envelope<T: Serialize>(value: &T, max: u32) -> Result<Vec<u8>, TransportError> {
    let mut buf = vec![WIRE_VERSION];
    bincode::serde::encode_into_std_write(value, &mut buf, bincode::config::standard())?;
    if buf.len() as u64 > u64::from(max) {
        return Err(TransportError::FrameTooLarge {
            size: buf.len() as u64,
            max,
        });
    }
    Ok(buf)
}

/// Checks the version byte, decodes the body, and insists it used every byte.
fn decode_envelope<T: DeserializeOwned>(frame: &[u8]) -> Result<T, TransportError> {
    let (&version, body) = frame
        .split_first()
        .ok_or(TransportError::Malformed("empty frame"))?;
    if version != WIRE_VERSION {
        return Err(TransportError::Version(version));
    }
    let (value, used) = bincode::serde::decode_from_slice(body, bincode::config::standard())?;
    if used != body.len() {
        return Err(TransportError::Malformed("trailing bytes after the body"));
    }
    Ok(value)
}

async fn write_frame(send: &mut SendStream, payload: &[u8]) -> Result<(), TransportError> {
    let len = u32::try_from(payload.len()).map_err(|_| TransportError::FrameTooLarge {
        size: payload.len() as u64,
        max: u32::MAX,
    })?;
    send.write_all(&len.to_be_bytes()).await?;
    send.write_all(payload).await?;
    Ok(())
}

/// Reads one frame of at most `max` bytes. The buffer grows with what arrives, so a peer
/// claiming a large frame and sending nothing costs nothing.
async fn read_frame(recv: &mut RecvStream, max: u32) -> Result<Vec<u8>, TransportError> {
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => TransportError::FinishedEarly,
        quinn::ReadExactError::ReadError(e) => TransportError::Read(e),
    })?;
    let len = u32::from_be_bytes(header);
    if len > max {
        return Err(TransportError::FrameTooLarge {
            size: len.into(),
            max,
        });
    }
    let len = len as usize;
    let mut buf = Vec::with_capacity(len.min(INITIAL_FRAME_BUFFER));
    while buf.len() < len {
        let chunk = recv
            .read_chunk(len - buf.len(), true)
            .await?
            .ok_or(TransportError::FinishedEarly)?;
        buf.extend_from_slice(&chunk.bytes);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::tls::{self, TlsFiles};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    const CALL: Duration = Duration::from_secs(10);

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    enum TestReq {
        Echo(String),
        Blob(Vec<u8>),
        /// Asks for a response of this many bytes.
        Big(usize),
        /// Answers after this many milliseconds (a peer that is alive but slow).
        Sleep(u64),
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct TestResp {
        from: NodeId,
        me: NodeId,
        echo: String,
        data: Vec<u8>,
    }

    #[derive(Clone)]
    struct Counting {
        me: NodeId,
        calls: Arc<AtomicUsize>,
    }

    impl RpcHandler<TestReq, TestResp> for Counting {
        async fn handle(&self, from: NodeId, req: TestReq) -> TestResp {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let (echo, data) = match req {
                TestReq::Echo(s) => (s, Vec::new()),
                TestReq::Blob(b) => (b.len().to_string(), Vec::new()),
                TestReq::Big(n) => (String::new(), vec![7; n]),
                TestReq::Sleep(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    (ms.to_string(), Vec::new())
                }
            };
            TestResp {
                from,
                me: self.me,
                echo,
                data,
            }
        }
    }

    /// A CA and node certificates in a temp dir.
    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            certs::init_ca(&dir.path().join("ca")).expect("ca");
            Self { dir }
        }
        fn ca(&self) -> PathBuf {
            self.dir.path().join("ca")
        }
        fn node_dir(&self, id: NodeId) -> PathBuf {
            let out = self.dir.path().join(format!("n{id}"));
            if !out.exists() {
                certs::issue_node(&self.ca(), id, &["127.0.0.1".into()], &out).expect("issue");
            }
            out
        }
        fn tls(&self, id: NodeId) -> TlsConfig {
            TlsConfig::load(&TlsFiles::new(&self.ca(), &self.node_dir(id))).expect("load tls")
        }
    }

    /// A node whose server side is `own`'s node `id` but whose client side trusts `trust_ca`
    /// and presents `identity` (a node dir) or nothing.
    fn rogue_tls(own: &Pki, id: NodeId, trust_ca: &Path, identity: Option<&Path>) -> TlsConfig {
        let honest = own.tls(id);
        let roots = tls::load_roots(&trust_ca.join(certs::CA_CERT_FILE)).expect("roots");
        let identity = identity.map(|dir| {
            tls::load_identity(
                &dir.join(certs::NODE_CERT_FILE),
                &dir.join(certs::NODE_KEY_FILE),
            )
            .expect("identity")
        });
        let client = tls::client_config(roots, identity).expect("client config");
        TlsConfig::from_parts(id, honest.server_config().clone(), client)
    }

    struct Node {
        transport: Arc<Transport>,
        addr: String,
        calls: Arc<AtomicUsize>,
        cancel: CancellationToken,
        served: tokio::task::JoinHandle<()>,
    }

    impl Node {
        fn start(tls: TlsConfig, id: NodeId) -> Self {
            Self::start_with(tls, id, Limits::default())
        }
        /// Binds `listen` once the previous endpoint's driver task has let go of the port.
        async fn start_at(tls: TlsConfig, id: NodeId, listen: SocketAddr) -> Self {
            let deadline = Instant::now() + CALL;
            while std::net::UdpSocket::bind(listen).is_err() {
                assert!(Instant::now() < deadline, "{listen} stays in use");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Self::start_on(tls, id, listen, Limits::default())
        }
        fn start_with(tls: TlsConfig, id: NodeId, limits: Limits) -> Self {
            let listen = "127.0.0.1:0".parse().expect("addr");
            Self::start_on(tls, id, listen, limits)
        }
        fn start_on(tls: TlsConfig, id: NodeId, listen: SocketAddr, limits: Limits) -> Self {
            let transport =
                Arc::new(Transport::bind_with_limits(listen, tls, id, limits).expect("bind"));
            let addr = transport.local_addr().expect("local addr").to_string();
            let calls = Arc::new(AtomicUsize::new(0));
            let handler = Counting {
                me: id,
                calls: calls.clone(),
            };
            let cancel = CancellationToken::new();
            let (t, c) = (transport.clone(), cancel.clone());
            let served = tokio::spawn(async move {
                t.serve(handler, None::<NoStreamHandler>, c).await;
            });
            Self {
                transport,
                addr,
                calls,
                cancel,
                served,
            }
        }
        async fn call(&self, target: &Node, req: TestReq) -> Result<TestResp, TransportError> {
            let id = target.transport.node_id();
            self.transport.call(id, &target.addr, &req, CALL).await
        }
        async fn stop(self) {
            self.cancel.cancel();
            tokio::time::timeout(Duration::from_secs(20), self.served)
                .await
                .expect("serve returns after cancel")
                .expect("serve task");
        }
    }

    /// The server noticed and counted a refused connection.
    async fn wait_rejected(node: &Node) {
        let deadline = Instant::now() + CALL;
        while node.transport.rejected_connections() == 0 {
            assert!(
                Instant::now() < deadline,
                "server never counted a rejection"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn rpc_round_trips_both_ways_on_one_cached_connection() {
        let pki = Pki::new();
        let (a, b) = (Node::start(pki.tls(1), 1), Node::start(pki.tls(2), 2));

        let resp = a.call(&b, TestReq::Echo("hi".into())).await.expect("a→b");
        assert_eq!((resp.from, resp.me, resp.echo.as_str()), (1, 2, "hi"));
        let resp = b.call(&a, TestReq::Echo("yo".into())).await.expect("b→a");
        assert_eq!((resp.from, resp.me, resp.echo.as_str()), (2, 1, "yo"));

        let calls = (0..200).map(|i| a.call(&b, TestReq::Echo(i.to_string())));
        let results = futures_util::future::join_all(calls).await;
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r.expect("concurrent call").echo, i.to_string());
        }
        assert_eq!(b.calls.load(Ordering::SeqCst), 201);
        // a dialled b once (and accepted b's one connection): the cache held.
        assert_eq!(a.transport.endpoint.open_connections(), 2);

        // A fresh connection (likely a resumed TLS session) still carries both identities.
        a.transport.forget(2);
        let resp = a
            .call(&b, TestReq::Echo("again".into()))
            .await
            .expect("redial");
        assert_eq!((resp.from, resp.me), (1, 2));
        a.stop().await;
        b.stop().await;
    }

    #[tokio::test]
    async fn client_cert_from_another_ca_never_reaches_the_handler() {
        let (pki, other) = (Pki::new(), Pki::new());
        let server = Node::start(pki.tls(1), 1);
        // Trusts the real CA (so it accepts the server) but presents another CA's node 5.
        let rogue = Node::start(rogue_tls(&pki, 5, &pki.ca(), Some(&other.node_dir(5))), 5);

        let started = Instant::now();
        let err = rogue.call(&server, TestReq::Echo("x".into())).await;
        assert!(err.is_err(), "{err:?}");
        assert!(
            !matches!(err, Err(TransportError::Timeout { .. })),
            "{err:?}"
        );
        assert!(started.elapsed() < CALL);
        wait_rejected(&server).await;
        assert_eq!(server.calls.load(Ordering::SeqCst), 0);
        server.stop().await;
        rogue.stop().await;
    }

    #[tokio::test]
    async fn client_without_cert_never_reaches_the_handler() {
        let pki = Pki::new();
        let server = Node::start(pki.tls(1), 1);
        let anonymous = Node::start(rogue_tls(&pki, 6, &pki.ca(), None), 6);

        let err = anonymous.call(&server, TestReq::Echo("x".into())).await;
        assert!(err.is_err(), "{err:?}");
        assert!(
            !matches!(err, Err(TransportError::Timeout { .. })),
            "{err:?}"
        );
        wait_rejected(&server).await;
        // A second attempt (fresh connection) is refused too.
        let again = anonymous.call(&server, TestReq::Echo("x".into())).await;
        assert!(again.is_err(), "{again:?}");
        assert_eq!(server.calls.load(Ordering::SeqCst), 0);
        server.stop().await;
        anonymous.stop().await;
    }

    #[tokio::test]
    async fn a_node_cannot_answer_as_another() {
        let pki = Pki::new();
        let a = Node::start(pki.tls(1), 1);
        let two = Node::start(pki.tls(2), 2);

        let req = TestReq::Echo("x".into());
        let err = a
            .transport
            .call::<_, TestResp>(3, &two.addr, &req, CALL)
            .await;
        match err {
            Err(TransportError::Connection { node: 3, source }) => {
                assert!(source.to_string().contains("certificate"), "{source}")
            }
            other => panic!("expected a TLS failure, got {other:?}"),
        }
        assert_eq!(two.calls.load(Ordering::SeqCst), 0);
        // Dialled under its own name, the same node answers.
        let ok = a
            .call(&two, TestReq::Echo("y".into()))
            .await
            .expect("as node 2");
        assert_eq!(ok.me, 2);
        a.stop().await;
        two.stop().await;
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_cleanly() {
        let pki = Pki::new();
        let limits = Limits {
            max_frame: 1 << 20,
            ..Limits::default()
        };
        let a = Node::start_with(pki.tls(1), 1, limits);
        let b = Node::start_with(pki.tls(2), 2, limits);

        // Too large to send: refused locally, nothing leaves the node.
        let err = a.call(&b, TestReq::Blob(vec![0; 2 << 20])).await;
        assert!(
            matches!(err, Err(TransportError::FrameTooLarge { .. })),
            "{err:?}"
        );

        // A peer announcing a too large frame gets a refusal, not a reset connection.
        let (mut send, mut recv) = a
            .transport
            .open_stream(2, &b.addr, StreamKind::Rpc)
            .await
            .expect("open stream");
        send.write_all(&(limits.max_frame + 1).to_be_bytes())
            .await
            .expect("write header");
        let reply = read_frame(&mut recv, limits.max_frame)
            .await
            .expect("reply");
        match decode_envelope::<Reply<TestResp>>(&reply).expect("decode") {
            Reply::Refused(reason) => assert!(reason.contains("exceeds"), "{reason}"),
            Reply::Ok(r) => panic!("handler answered: {r:?}"),
        }

        // A too large response is refused by the server, not sent.
        let err = a.call(&b, TestReq::Big(2 << 20)).await;
        assert!(
            matches!(err, Err(TransportError::Remote { node: 2, .. })),
            "{err:?}"
        );

        // The connection is still good.
        let ok = a
            .call(&b, TestReq::Blob(vec![1; 1000]))
            .await
            .expect("normal call");
        assert_eq!(ok.echo, "1000");
        assert_eq!(b.calls.load(Ordering::SeqCst), 2);
        a.stop().await;
        b.stop().await;
    }

    #[tokio::test]
    async fn unknown_stream_kind_and_garbage_are_refused() {
        let pki = Pki::new();
        let (a, b) = (Node::start(pki.tls(1), 1), Node::start(pki.tls(2), 2));

        // Replication without a handler: the stream is reset.
        let (_send, mut recv) = a
            .transport
            .open_stream(2, &b.addr, StreamKind::Replication)
            .await
            .expect("open");
        let read = recv.read_to_end(16).await;
        assert!(read.is_err(), "{read:?}");

        // An RPC whose body isn't a request decodes to a refusal.
        let (mut send, mut recv) = a
            .transport
            .open_stream(2, &b.addr, StreamKind::Rpc)
            .await
            .expect("open");
        write_frame(&mut send, &[WIRE_VERSION, 0xff, 0xff, 0xff])
            .await
            .expect("write");
        send.finish().expect("finish");
        let reply = read_frame(&mut recv, DEFAULT_MAX_FRAME)
            .await
            .expect("reply");
        assert!(matches!(
            decode_envelope::<Reply<TestResp>>(&reply),
            Ok(Reply::Refused(_))
        ));
        assert_eq!(b.calls.load(Ordering::SeqCst), 0);
        a.stop().await;
        b.stop().await;
    }

    /// The stable id of the connection `transport` has cached for `target`, if any.
    fn cached_connection(transport: &Transport, target: NodeId) -> Option<usize> {
        let peers = transport.peers_lock();
        let slot = peers.get(&target)?.clone();
        let cached = slot.try_lock().ok()?;
        cached.as_ref().map(|c| c.conn.stable_id())
    }

    #[tokio::test]
    async fn a_slow_answer_keeps_the_connection_of_a_live_peer() {
        let pki = Pki::new();
        let a = Node::start(pki.tls(1), 1);
        let b = Node::start(pki.tls(2), 2);
        a.call(&b, TestReq::Echo("1".into())).await.expect("first");
        let before = cached_connection(&a.transport, 2);
        assert!(before.is_some());

        // b takes 400 ms to answer a call that may last 100 ms: a timeout, but b acked
        // the request meanwhile, so the connection stays.
        let slow = TestReq::Sleep(400);
        let err = a
            .transport
            .call::<_, TestResp>(2, &b.addr, &slow, Duration::from_millis(100))
            .await;
        assert!(
            matches!(err, Err(TransportError::Timeout { .. })),
            "{err:?}"
        );
        assert_eq!(cached_connection(&a.transport, 2), before);

        let ok = a.call(&b, TestReq::Echo("2".into())).await.expect("after");
        assert_eq!(ok.echo, "2");
        assert_eq!(cached_connection(&a.transport, 2), before, "no redial");
        b.stop().await;
        a.stop().await;
    }

    #[tokio::test]
    async fn reconnects_after_the_peer_restarts() {
        let pki = Pki::new();
        let a = Node::start(pki.tls(1), 1);
        let b = Node::start(pki.tls(2), 2);
        a.call(&b, TestReq::Echo("1".into())).await.expect("first");

        // Restarted on the same address: the cached connection is closed, a new one is dialled.
        let listen: SocketAddr = b.addr.parse().expect("addr");
        b.stop().await;
        let b = Node::start_at(pki.tls(2), 2, listen).await;
        let ok = a
            .call(&b, TestReq::Echo("2".into()))
            .await
            .expect("same address");
        assert_eq!((ok.me, ok.echo.as_str()), (2, "2"));

        // Gone: calls fail within their timeout.
        b.stop().await;
        let req = TestReq::Echo("x".into());
        let short = Duration::from_secs(2);
        let err = a
            .transport
            .call::<_, TestResp>(2, &listen.to_string(), &req, short)
            .await;
        assert!(err.is_err(), "{err:?}");

        // Back at another address.
        let b = Node::start(pki.tls(2), 2);
        let ok = a
            .call(&b, TestReq::Echo("3".into()))
            .await
            .expect("new address");
        assert_eq!((ok.me, ok.echo.as_str()), (2, "3"));
        b.stop().await;
        a.stop().await;
    }

    #[tokio::test]
    async fn bind_refuses_a_certificate_of_another_node() {
        let pki = Pki::new();
        let listen = "127.0.0.1:0".parse().expect("addr");
        let err = Transport::bind(listen, pki.tls(1), 2);
        assert!(matches!(
            err,
            Err(TransportError::IdMismatch {
                configured: 2,
                cert: 1
            })
        ));
    }

    #[tokio::test]
    async fn shutdown_is_prompt_and_later_calls_fail() {
        let pki = Pki::new();
        let (a, b) = (Node::start(pki.tls(1), 1), Node::start(pki.tls(2), 2));
        a.call(&b, TestReq::Echo("x".into())).await.expect("call");
        let a_transport = a.transport.clone();
        let started = Instant::now();
        a.stop().await;
        assert!(
            started.elapsed() < SHUTDOWN_GRACE,
            "{:?}",
            started.elapsed()
        );
        let req = TestReq::Echo("x".into());
        let err = a_transport
            .call::<_, TestResp>(2, &b.addr, &req, CALL)
            .await;
        assert!(err.is_err(), "{err:?}");
        b.stop().await;
    }
}
