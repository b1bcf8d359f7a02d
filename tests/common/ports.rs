//! Loopback ports for the nodes the tests start.
//!
//! Why not `bind(":0")` and hand the port on: the kernel picks such ports from its ephemeral
//! range, the same range every outgoing connection (curl, a node's HTTP client, the test's
//! own probes) takes its local port from. Between the probe and the node's own `bind` — or
//! between a kill and the restart on the same port — an outgoing connection could take the
//! port, and the node fails with "Address already in use" (a CI run failed that way). So the
//! ports here come from below the ephemeral range, where nothing is assigned implicitly, and
//! one process never hands the same port out twice.

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Result};

/// Lowest port handed out: clear of the well-known and commonly configured service ports.
const FLOOR: u32 = 10_000;

/// Ports handed out so far by this process; the next probe starts after them.
static HANDED_OUT: AtomicU32 = AtomicU32::new(0);

/// A port free for both TCP (ingest) and UDP (the cluster's QUIC) right now, outside the
/// ephemeral range, and never returned before by this process.
pub fn free_port() -> Result<u16> {
    free_run(1, tcp_and_udp_free)
}

/// A base port for which `usable` holds and whose next `span` ports are reserved with it
/// (`quorumcast dev --base-port` takes one), with the same guarantees as [`free_port`].
pub fn free_base(span: u16, usable: impl Fn(u16) -> bool) -> Result<u16> {
    free_run(u32::from(span) + 1, usable)
}

/// Walks the unassigned range from a per-process offset (so that test binaries run one after
/// another do not start on the ports the previous one may have left in TIME_WAIT), reserving
/// `width` ports per candidate.
fn free_run(width: u32, usable: impl Fn(u16) -> bool) -> Result<u16> {
    let (low, high) = unassigned_range();
    let span = high - low;
    let offset = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span / width {
        let start = HANDED_OUT.fetch_add(width, Ordering::SeqCst);
        let candidate = low + (offset + start) % span;
        if candidate + width > high {
            continue;
        }
        let Ok(port) = u16::try_from(candidate) else {
            continue;
        };
        if usable(port) {
            return Ok(port);
        }
    }
    bail!("no free loopback port in {low}..{high}")
}

fn tcp_and_udp_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

/// `[FLOOR, first ephemeral port)`, or the ports above the ephemeral range when the system's
/// range starts too low to leave room below it.
fn unassigned_range() -> (u32, u32) {
    let (eph_low, eph_high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut parts = s.split_whitespace().map(str::parse::<u32>);
            Some((parts.next()?.ok()?, parts.next()?.ok()?))
        })
        .unwrap_or((32_768, 60_999));
    if eph_low >= FLOOR + 4_096 {
        (FLOOR, eph_low)
    } else {
        (eph_high + 1, 65_536)
    }
}
