//! Cluster PKI: a private certificate authority and node certificates, made with rcgen.
//!
//! Owns the file names and modes (`ca.pem`, `ca.key`, `node.pem`, `node.key`), how a node id
//! is written into a certificate and how it is read back. Does not own TLS configuration
//! ([`super::tls`]) nor getting the files onto the nodes (the operator's job; `ca.key` should
//! stay where certificates are issued, nodes only need `ca.pem`).
//!
//! # A node's identity in its certificate
//!
//! A node certificate carries its id twice:
//!
//! - as the DNS SAN `node-<id>.quorumcast` ([`node_dns_name`], decimal, no leading zeros). This
//!   is the authoritative one: a dialling node verifies it as the TLS server name of the node
//!   it means to reach, and the accepting node reads it back with [`node_id_from_cert`];
//! - in the subject CN `quorumcast node <id>`, for humans reading the certificate.
//!
//! The `.quorumcast` suffix is reserved for these names: [`issue_node`] refuses extra SANs under
//! it (and wildcards), so the CA can't be made to issue a certificate that also names another
//! node. Every certificate is signed by the cluster CA and valid both as a TLS server and a TLS
//! client certificate, since every node both accepts and dials.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// File name of the CA certificate (PEM), needed by every node.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key (PEM, mode 0600), needed only to issue node certificates.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of a node certificate (PEM).
pub const NODE_CERT_FILE: &str = "node.pem";
/// File name of a node private key (PEM, mode 0600).
pub const NODE_KEY_FILE: &str = "node.key";

/// DNS suffix reserved for node identities.
const NODE_NAME_SUFFIX: &str = ".quorumcast";
const NODE_NAME_PREFIX: &str = "node-";

/// Validity of the CA. Long, because rotating a cluster CA means re-issuing every node
/// certificate; nodes' clocks may lag, hence validity starts a day early.
const CA_VALIDITY_YEARS: i32 = 20;
/// Validity of a node certificate. Re-issue and restart the node to rotate it.
const NODE_VALIDITY_YEARS: i32 = 10;

/// Errors of [`init_ca`] and [`issue_node`].
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{} already exists; refusing to overwrite it", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid subject alternative name {name:?}: {reason}")]
    BadSan { name: String, reason: &'static str },
    #[error("cannot load the CA from {}: {source}", dir.display())]
    LoadCa { dir: PathBuf, source: rcgen::Error },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The DNS name that identifies node `id` in its certificate: `node-<id>.quorumcast`.
pub fn node_dns_name(id: u64) -> String {
    format!("{NODE_NAME_PREFIX}{id}{NODE_NAME_SUFFIX}")
}

/// Creates a new cluster CA in `out_dir` (created if missing): `ca.pem` and `ca.key` (0600).
///
/// Refuses to overwrite either file, so an existing cluster's CA can't be replaced by mistake.
pub fn init_ca(out_dir: &Path) -> Result<(), CertError> {
    let cert_path = out_dir.join(CA_CERT_FILE);
    let key_path = out_dir.join(CA_KEY_FILE);
    refuse_existing(&[&cert_path, &key_path])?;
    create_dir(out_dir)?;

    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)
}

/// Issues the certificate of node `node_id` into `out_dir` (created if missing): `node.pem`
/// and `node.key` (0600), signed by the CA in `ca_dir`.
///
/// `sans` are extra DNS names or IP addresses (IPs become IP SANs) the node is reachable by;
/// `node-<id>.quorumcast` is always added. Refuses to overwrite existing files.
pub fn issue_node(
    ca_dir: &Path,
    node_id: u64,
    sans: &[String],
    out_dir: &Path,
) -> Result<(), CertError> {
    let cert_path = out_dir.join(NODE_CERT_FILE);
    let key_path = out_dir.join(NODE_KEY_FILE);
    refuse_existing(&[&cert_path, &key_path])?;
    let params = node_params(node_id, sans)?;
    let issuer = load_issuer(ca_dir)?;
    create_dir(out_dir)?;

    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)
}

/// Reads the node id back from a node certificate: the number in its single
/// `node-<id>.quorumcast` DNS SAN.
///
/// `None` if the certificate doesn't parse, has no such SAN, or names more than one node
/// (which [`issue_node`] never does). It does not verify the certificate: call it only on a
/// certificate the TLS handshake already verified against the cluster CA.
pub fn node_id_from_cert(der: &CertificateDer<'_>) -> Option<u64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => parse_node_dns_name(dns),
            _ => None,
        });
    let id = ids.next()?;
    ids.all(|other| other == id).then_some(id)
}

/// `node-<id>.quorumcast` → `id`; only the canonical decimal form, so one id has one name.
fn parse_node_dns_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(NODE_NAME_PREFIX)?
        .strip_suffix(NODE_NAME_SUFFIX)?;
    let id: u64 = digits.parse().ok()?;
    (id.to_string() == digits).then_some(id)
}

fn ca_params() -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    // A random suffix tells two clusters' CAs apart when a human reads a certificate chain.
    let cn = format!("quorumcast cluster CA {}", uuid::Uuid::new_v4().simple());
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "quorumcast");
    // Path length 0: the CA signs node certificates directly, never intermediates.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY_YEARS);
    Ok(params)
}

fn node_params(node_id: u64, sans: &[String]) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = node_sans(node_id, sans)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("quorumcast node {node_id}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "quorumcast");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every node both accepts (server) and dials (client) with this one certificate.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, NODE_VALIDITY_YEARS);
    Ok(params)
}

/// The node's identity SAN first, then the operator's names, each checked.
fn node_sans(node_id: u64, extra: &[String]) -> Result<Vec<SanType>, CertError> {
    let mut out = vec![dns_san(&node_dns_name(node_id))?];
    for name in extra {
        let name = name.trim();
        if let Ok(ip) = name.parse::<IpAddr>() {
            out.push(SanType::IpAddress(ip));
            continue;
        }
        check_extra_dns_name(name)?;
        out.push(dns_san(name)?);
    }
    Ok(out)
}

fn check_extra_dns_name(name: &str) -> Result<(), CertError> {
    let bad = |reason| {
        Err(CertError::BadSan {
            name: name.to_owned(),
            reason,
        })
    };
    let lower = name.to_ascii_lowercase();
    if name.is_empty() {
        return bad("empty");
    }
    if name.contains('*') {
        // A wildcard could match another node's identity name.
        return bad("wildcards are not allowed");
    }
    if lower.ends_with(NODE_NAME_SUFFIX) || lower == NODE_NAME_SUFFIX[1..] {
        return bad("names under .quorumcast are reserved for node identities");
    }
    Ok(())
}

fn dns_san(name: &str) -> Result<SanType, CertError> {
    let ia5 = name.try_into().map_err(|_| CertError::BadSan {
        name: name.to_owned(),
        reason: "not an ASCII DNS name",
    })?;
    Ok(SanType::DnsName(ia5))
}

fn load_issuer(ca_dir: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    let cert_pem = read_to_string(&ca_dir.join(CA_CERT_FILE))?;
    let key_pem = read_to_string(&ca_dir.join(CA_KEY_FILE))?;
    let load_err = |source| CertError::LoadCa {
        dir: ca_dir.to_owned(),
        source,
    };
    let key = KeyPair::from_pem(&key_pem).map_err(load_err)?;
    Issuer::from_ca_cert_pem(&cert_pem, key).map_err(load_err)
}

/// Valid from yesterday (clock skew between the issuing host and the nodes) for `years`.
fn set_validity(params: &mut CertificateParams, years: i32) {
    use chrono::Datelike;
    let start = chrono::Utc::now().date_naive() - chrono::Days::new(1);
    // Months and days come from chrono, so they are always in range for date_time_ymd; the
    // end date uses day 1 so that adding years never lands on a Feb 29 that doesn't exist.
    params.not_before = rcgen::date_time_ymd(start.year(), start.month() as u8, start.day() as u8);
    params.not_after = rcgen::date_time_ymd(start.year() + years, start.month() as u8, 1);
}

fn refuse_existing(paths: &[&Path]) -> Result<(), CertError> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(CertError::Exists(p.to_path_buf())),
        None => Ok(()),
    }
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CertError::Write {
            path: dir.to_owned(),
            source,
        })
}

/// Writes a new file created with `mode` (never chmod after the fact, so a key is never
/// readable by others, not even briefly) and fsyncs it. `create_new` makes a file that
/// appeared since [`refuse_existing`] an error rather than overwritten.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let write_err = |source| CertError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => CertError::Exists(path.to_owned()),
            _ => write_err(e),
        })?;
    file.write_all(bytes).map_err(write_err)?;
    file.sync_all().map_err(write_err)
}

fn read_to_string(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cert_der(path: &Path) -> CertificateDer<'static> {
        use rustls_pki_types::pem::PemObject;
        CertificateDer::from_pem_file(path).expect("read cert")
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn node_id_round_trips_and_keys_are_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, node) = (dir.path().join("ca"), dir.path().join("n7"));
        init_ca(&ca).expect("init ca");
        let sans = ["10.0.0.7".to_owned(), "rec-7.example.org".to_owned()];
        issue_node(&ca, 7, &sans, &node).expect("issue");

        assert_eq!(
            node_id_from_cert(&cert_der(&node.join(NODE_CERT_FILE))),
            Some(7)
        );
        assert_eq!(mode(&ca.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&node.join(NODE_KEY_FILE)), 0o600);
        // The CA certificate names no node.
        assert_eq!(node_id_from_cert(&cert_der(&ca.join(CA_CERT_FILE))), None);
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path()).expect("init ca");
        let before = std::fs::read(dir.path().join(CA_KEY_FILE)).expect("read");
        assert!(matches!(init_ca(dir.path()), Err(CertError::Exists(_))));
        assert_eq!(
            std::fs::read(dir.path().join(CA_KEY_FILE)).expect("read"),
            before
        );

        let node = dir.path().join("n1");
        issue_node(dir.path(), 1, &[], &node).expect("issue");
        let again = issue_node(dir.path(), 1, &[], &node);
        assert!(matches!(again, Err(CertError::Exists(_))));
    }

    #[test]
    fn refuses_reserved_and_wildcard_sans() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path()).expect("init ca");
        for bad in [
            "node-2.quorumcast",
            "*.quorumcast",
            "*.example.org",
            "NODE-2.QuorumCast",
        ] {
            let out = dir.path().join("n1");
            let res = issue_node(dir.path(), 1, &[bad.to_owned()], &out);
            assert!(
                matches!(res, Err(CertError::BadSan { .. })),
                "{bad}: {res:?}"
            );
            assert!(!out.join(NODE_KEY_FILE).exists());
        }
    }

    #[test]
    fn parses_only_canonical_node_names() {
        assert_eq!(parse_node_dns_name("node-0.quorumcast"), Some(0));
        assert_eq!(
            parse_node_dns_name(&node_dns_name(u64::MAX)),
            Some(u64::MAX)
        );
        for bad in [
            "node-07.quorumcast",
            "node-+7.quorumcast",
            "node-.quorumcast",
            "node-7.x",
        ] {
            assert_eq!(parse_node_dns_name(bad), None, "{bad}");
        }
    }
}
