//! rustls and quinn configuration for mutual TLS between cluster nodes.
//!
//! Owns loading the PEM files, the rustls server/client configs (TLS 1.3 only, as QUIC
//! requires; aws-lc-rs provider), ALPN, and the QUIC transport parameters (keep-alive, idle
//! timeout, flow-control windows, stream limits). Does not own making certificates
//! ([`super::certs`]) nor connections ([`super::transport`]).
//!
//! Both directions are authenticated by the cluster CA alone: the accepting side requires a
//! client certificate chaining to it (`WebPkiClientVerifier`), the dialling side verifies the
//! server certificate against it with the server name `node-<id>.quorumcast` of the node it
//! means to reach, so a node can't answer in another node's name.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::certs::{self, node_dns_name};

/// ALPN protocol id of the cluster transport; bump the suffix on an incompatible change so
/// mismatched nodes fail the handshake instead of misreading each other.
pub const ALPN: &[u8] = b"quorumcast/1";

/// Concurrent bidirectional streams a peer may open on one connection (the peer's `open_bi`
/// waits beyond this). Sized for a Raft leader's pipelined RPCs plus one stream per
/// replicated session; each open stream costs at most one stream window of buffer.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Keep-alive interval: keeps an idle connection's idle timer from firing while the peer
/// lives.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// Idle timeout: a peer silent this long (five missed keep-alives) is considered gone and its
/// connection closed, which fails its in-flight calls and makes the next call reconnect.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-stream receive window. One stream carries one replicated session, so this is the
/// bytes in flight per session: 8 MiB keeps ~1 Gbit/s flowing up to ~65 ms RTT
/// (bandwidth × RTT); quinn's default (1.25 MB) would cap a session at ~100 Mbit/s over
/// 100 ms.
pub const STREAM_WINDOW: u32 = 8 << 20;
/// Per-connection receive window: several sessions at full speed at once, while bounding the
/// buffer one peer can make us hold to 32 MiB.
pub const CONNECTION_WINDOW: u32 = 32 << 20;

/// Where a node's TLS material lives.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The cluster CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// This node's certificate (PEM), optionally followed by intermediates.
    pub node_cert: PathBuf,
    /// This node's private key (PEM).
    pub node_key: PathBuf,
}

impl TlsFiles {
    /// `<ca_dir>/ca.pem`, `<node_dir>/node.pem`, `<node_dir>/node.key`, as written by
    /// [`certs::init_ca`] and [`certs::issue_node`].
    pub fn new(ca_dir: &Path, node_dir: &Path) -> Self {
        Self {
            ca_cert: ca_dir.join(certs::CA_CERT_FILE),
            node_cert: node_dir.join(certs::NODE_CERT_FILE),
            node_key: node_dir.join(certs::NODE_KEY_FILE),
        }
    }
}

/// Errors loading TLS material or building the configs.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{} holds no certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("the certificate in {} carries no node id (node-<id>.quorumcast)", .0.display())]
    NoNodeId(PathBuf),
    #[error("the certificate in {} is not a valid node certificate of this cluster's CA: {source}", path.display())]
    NotFromCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("QUIC TLS configuration: {0}")]
    Quic(#[from] NoInitialCipherSuite),
}

/// This node's quinn server and client configurations, and the node id its certificate names.
#[derive(Clone)]
pub struct TlsConfig {
    node_id: u64,
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Loads the files and builds both configs. Checks up front that the node certificate is
    /// a valid server and client certificate of the CA, so a misconfigured node fails at
    /// start rather than on every connection.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let roots = load_roots(&files.ca_cert)?;
        let (chain, key) = load_identity(&files.node_cert, &files.node_key)?;
        let node_id = certs::node_id_from_cert(&chain[0])
            .ok_or_else(|| TlsError::NoNodeId(files.node_cert.clone()))?;
        check_issued_by(&roots, &chain, node_id).map_err(|source| TlsError::NotFromCa {
            path: files.node_cert.clone(),
            source,
        })?;
        let server = server_config(roots.clone(), chain.clone(), key.clone_key())?;
        let client = client_config(roots, Some((chain, key)))?;
        Ok(Self::from_parts(node_id, server, client))
    }

    /// Assembles a config from already built parts (tests build deliberately wrong ones).
    pub(crate) fn from_parts(
        node_id: u64,
        server: quinn::ServerConfig,
        client: quinn::ClientConfig,
    ) -> Self {
        Self {
            node_id,
            server,
            client,
        }
    }

    /// The node id named by this node's certificate.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The accepting side's quinn configuration.
    pub fn server_config(&self) -> &quinn::ServerConfig {
        &self.server
    }

    /// The dialling side's quinn configuration (connect with [`node_dns_name`] as server name).
    pub fn client_config(&self) -> &quinn::ClientConfig {
        &self.client
    }
}

/// Largest UDP payload this node accepts and probes for (MTU discovery). quinn's default,
/// 1452, fits Ethernet; on loopback or a jumbo-frame network a replication stream then
/// costs a datagram (a packet header, an AEAD call, an ACK entry, a loss-detection entry)
/// per 1.4 KB. MTU discovery only raises the size a path proves it carries, so a 1500-byte
/// network still ends at 1452.
///
/// Two such datagrams fill one GSO send ([`super::udp::MAX_GSO_SEND`]); the cluster socket
/// tells quinn to put no more in one send ([`super::udp`]), since the kernel refuses larger
/// sends and quinn drops them without a word, as if they were lost MTU probes.
pub const MAX_UDP_PAYLOAD: u16 = 32_753;

/// How soon MTU discovery probes again after quinn judged the path a black hole for large
/// datagrams. Its detector counts any run of lost large packets, and a replica that falls
/// behind under load drops datagrams from its full socket buffer (bulk runs on loopback
/// showed paths at 1200 bytes): quinn's default (a minute) keeps such a connection at
/// 1200-byte datagrams, 27 times the packets, for longer than most bulk transfers last.
/// Probing again sooner costs a few probe packets on a path that really is a black hole.
pub const BLACK_HOLE_COOLDOWN: Duration = Duration::from_secs(2);

/// The endpoint's own settings: the payload size it accepts.
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    // MAX_UDP_PAYLOAD is within QUIC's bounds (1200..=65527), so this can't fail; keep
    // the default if it ever does.
    if let Err(e) = config.max_udp_payload_size(MAX_UDP_PAYLOAD) {
        tracing::warn!(error = ?e, "cluster port: keeping quinn's default UDP payload size");
    }
    config
}

/// QUIC transport parameters shared by both sides; see the constants for the reasons.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    mtu.black_hole_cooldown(BLACK_HOLE_COOLDOWN);
    t.mtu_discovery_config(Some(mtu));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // 5 s is far below quinn's IdleTimeout maximum (2^62 ms), so the conversion can't fail;
    // fall back to quinn's default rather than panic anyway.
    if let Ok(idle) = IDLE_TIMEOUT.try_into() {
        t.max_idle_timeout(Some(idle));
    }
    t.stream_receive_window(STREAM_WINDOW.into());
    t.receive_window(CONNECTION_WINDOW.into());
    // Let a sender keep a full connection window in flight, no more.
    t.send_window(u64::from(CONNECTION_WINDOW));
    t.max_concurrent_bidi_streams(MAX_CONCURRENT_STREAMS.into());
    // Every exchange is request/response or a duplex replication stream; nothing is
    // unidirectional and nothing uses (unreliable) datagrams.
    t.max_concurrent_uni_streams(0u32.into());
    t.datagram_receive_buffer_size(None);
    t
}

/// The aws-lc-rs provider, named explicitly so the choice doesn't depend on which rustls
/// providers other dependencies happen to enable.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads every certificate of a PEM file into a root store.
pub(crate) fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

/// Loads a certificate chain (leaf first) and its private key.
pub(crate) fn load_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
        path: key.to_owned(),
        source,
    })?;
    Ok((chain, key))
}

/// At least one certificate, or an error naming the file.
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_err = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// Verifies our own chain the way peers will: as the server named `node-<id>.quorumcast` and
/// as a client certificate.
fn check_issued_by(
    roots: &Arc<RootCertStore>,
    chain: &[CertificateDer<'static>],
    node_id: u64,
) -> Result<(), rustls::Error> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    let name = ServerName::try_from(node_dns_name(node_id))
        .map_err(|_| rustls::Error::General("node name is not a DNS name".into()))?;
    let now = UnixTime::now();
    let server =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    server.verify_server_cert(leaf, intermediates, &name, &[], now)?;
    let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    client.verify_client_cert(leaf, intermediates, now)?;
    Ok(())
}

/// Accepting side: TLS 1.3, our certificate, and a client certificate required and verified
/// against `roots`. A client without one fails the handshake.
pub(crate) fn server_config(
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    server.transport_config(Arc::new(transport_config()));
    Ok(server)
}

/// Dialling side: TLS 1.3, servers verified against `roots`, and `identity` presented as the
/// client certificate (`None` only in tests of the refusal path).
pub(crate) fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<quinn::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    client.transport_config(Arc::new(transport_config()));
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_a_node_and_rejects_a_foreign_cert() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, other_ca) = (dir.path().join("ca"), dir.path().join("other-ca"));
        certs::init_ca(&ca).expect("ca");
        certs::init_ca(&other_ca).expect("other ca");
        certs::issue_node(&ca, 4, &["127.0.0.1".into()], &dir.path().join("n4")).expect("n4");
        certs::issue_node(&other_ca, 5, &[], &dir.path().join("n5")).expect("n5");

        let ok = TlsConfig::load(&TlsFiles::new(&ca, &dir.path().join("n4"))).expect("load");
        assert_eq!(ok.node_id(), 4);

        let foreign = TlsConfig::load(&TlsFiles::new(&ca, &dir.path().join("n5")));
        assert!(
            matches!(foreign, Err(TlsError::NotFromCa { .. })),
            "{foreign:?}"
        );

        let missing = TlsConfig::load(&TlsFiles::new(&ca, &dir.path().join("nope")));
        assert!(matches!(missing, Err(TlsError::Read { .. })), "{missing:?}");
    }
}
