//! The cluster port's UDP socket as quinn sees it: the kernel's socket with bigger buffers,
//! and a cap on how many datagrams one send may carry.
//!
//! Why a cap: quinn hands the kernel up to 10 datagrams per `sendmsg` (UDP GSO), and the
//! kernel refuses (`EMSGSIZE`) a GSO send over [`MAX_GSO_SEND`] bytes, a failure quinn drops
//! silently, as if it were a lost MTU probe. With 10 segments per send, a datagram could be
//! at most 6.5 KB, so a replication stream on loopback or a jumbo-frame network paid a
//! packet's costs (header, AEAD call, ACK entry, loss-detection entry) per 6.5 KB. Reporting
//! fewer segments per send lets the datagrams be as large as the path carries while every
//! send still fits.
//!
//! Owns: socket options and the segment arithmetic. Doesn't own: the datagram size (the
//! QUIC transport parameters in [`super::tls`]) or what is sent.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Largest UDP payload of one send, GSO included (65535 minus the IPv4 and UDP headers).
pub const MAX_GSO_SEND: usize = 65_507;

/// Largest datagram the kernel delivers in one receive, GRO included: a receive slot at
/// least this big never truncates.
const MAX_GRO_RECEIVE: usize = 65_536;

/// Socket buffers asked for on the cluster port. Replication sends bursts of GSO
/// datagrams, and the default receive buffer (208 KiB) overflows under them: every drop is
/// a QUIC loss, a congestion event and a retransmission, and a run of them makes quinn's
/// black-hole detection take the path back to 1200-byte datagrams until it probes again
/// ([`super::tls::BLACK_HOLE_COOLDOWN`]). The kernel
/// caps what is asked at `net.core.rmem_max`/`wmem_max` unless the process may exceed it
/// (`CAP_NET_ADMIN`, as root), which [`bind`] then does.
pub const UDP_BUFFER_BYTES: usize = 32 * 1024 * 1024;

/// Binds `listen` with [`UDP_BUFFER_BYTES`] of socket buffers and wraps it for quinn so that
/// no send carries more than [`MAX_GSO_SEND`] bytes of `datagram`-sized segments.
pub fn bind(
    listen: SocketAddr,
    datagram: usize,
    runtime: &dyn quinn::Runtime,
) -> io::Result<Arc<dyn AsyncUdpSocket>> {
    let socket = buffered_socket(listen)?;
    let inner = runtime.wrap_udp_socket(std::net::UdpSocket::from(socket))?;
    Ok(Arc::new(SegmentCapped::new(inner, datagram)))
}

/// A UDP socket bound to `listen` with buffers of [`UDP_BUFFER_BYTES`] where allowed.
fn buffered_socket(listen: SocketAddr) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    // Best effort: a smaller buffer than asked only costs throughput.
    if let Err(e) = socket.set_recv_buffer_size(UDP_BUFFER_BYTES) {
        tracing::debug!(error = %e, "cluster port: receive buffer size not set");
    }
    if let Err(e) = socket.set_send_buffer_size(UDP_BUFFER_BYTES) {
        tracing::debug!(error = %e, "cluster port: send buffer size not set");
    }
    force_buffers_past_the_system_cap(&socket);
    socket.bind(&listen.into())?;
    Ok(socket)
}

/// Where the system's cap kept a buffer below [`UDP_BUFFER_BYTES`], asks again with the
/// `*BUFFORCE` options, which only a process with `CAP_NET_ADMIN` may use; without it the
/// capped size stays (logged once at start).
fn force_buffers_past_the_system_cap(socket: &socket2::Socket) {
    use std::os::fd::AsRawFd;
    let wanted = [
        (
            libc::SO_RCVBUFFORCE,
            socket.recv_buffer_size().ok(),
            "receive",
        ),
        (libc::SO_SNDBUFFORCE, socket.send_buffer_size().ok(), "send"),
    ];
    for (option, got, which) in wanted {
        // Linux reports twice the size asked (its bookkeeping overhead).
        if got.is_some_and(|got| got >= UDP_BUFFER_BYTES) {
            continue;
        }
        let size = libc::c_int::try_from(UDP_BUFFER_BYTES).unwrap_or(libc::c_int::MAX);
        // SAFETY: a valid socket, an int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                std::ptr::addr_of!(size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::info!(buffer = which, got = ?got, wanted = UDP_BUFFER_BYTES,
                error = %io::Error::last_os_error(),
                "cluster port: socket buffer capped by net.core.{{r,w}}mem_max");
        }
    }
}

/// Most segments per send such that `datagram`-sized segments fit in one GSO send (at
/// least one).
pub fn segments_per_send(datagram: usize) -> usize {
    (MAX_GSO_SEND / datagram.max(1)).max(1)
}

/// Fewest segments per receive slot for a slot to hold the largest GRO delivery.
fn segments_per_receive(datagram: usize) -> usize {
    MAX_GRO_RECEIVE.div_ceil(datagram.max(1))
}

/// The runtime's socket, reporting at most [`segments_per_send`] segments per send (and
/// receive slots just big enough, which keeps quinn's receive buffer small).
struct SegmentCapped {
    inner: Arc<dyn AsyncUdpSocket>,
    /// Largest datagram quinn will build (the endpoint's maximum UDP payload).
    datagram: usize,
}

impl SegmentCapped {
    fn new(inner: Arc<dyn AsyncUdpSocket>, datagram: usize) -> SegmentCapped {
        SegmentCapped { inner, datagram }
    }
}

impl fmt::Debug for SegmentCapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentCapped")
            .field("inner", &self.inner)
            .field("datagram", &self.datagram)
            .finish()
    }
}

impl AsyncUdpSocket for SegmentCapped {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner
            .max_transmit_segments()
            .min(segments_per_send(self.datagram))
    }

    fn max_receive_segments(&self) -> usize {
        self.inner
            .max_receive_segments()
            .min(segments_per_receive(self.datagram))
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_send_fits_the_kernels_gso_limit_and_every_slot_the_largest_delivery() {
        for datagram in [1200, 1452, 6500, 16 * 1024, 21_835, 32 * 1024, 65_507] {
            let per_send = segments_per_send(datagram);
            assert!(per_send >= 1);
            assert!(
                per_send * datagram <= MAX_GSO_SEND,
                "{datagram}: {per_send}"
            );
            assert!(
                segments_per_receive(datagram) * datagram >= MAX_GRO_RECEIVE,
                "{datagram}"
            );
        }
        assert_eq!(segments_per_send(1452), 45);
        assert_eq!(segments_per_send(32 * 1024), 1);
    }

    #[test]
    fn a_privileged_node_gets_the_whole_buffer_past_the_system_cap() {
        let socket = buffered_socket("127.0.0.1:0".parse().expect("addr")).expect("socket");
        let (receive, send) = (
            socket.recv_buffer_size().expect("rcvbuf"),
            socket.send_buffer_size().expect("sndbuf"),
        );
        let cap = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(0);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 || cap >= UDP_BUFFER_BYTES {
            assert!(receive >= UDP_BUFFER_BYTES, "receive buffer {receive}");
            assert!(send >= UDP_BUFFER_BYTES, "send buffer {send}");
        } else {
            assert!(receive > 0 && send > 0);
        }
    }

    #[tokio::test]
    async fn the_wrapped_socket_reports_the_capped_segments_and_still_carries_datagrams() {
        let runtime = quinn::TokioRuntime;
        let local: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let socket = bind(local, 32 * 1024, &runtime).expect("bind");
        assert_eq!(socket.max_transmit_segments(), 1);
        assert!(socket.max_receive_segments() <= 2);
        let to = socket.local_addr().expect("addr");
        let payload = vec![7u8; 30_000];
        let sender = std::net::UdpSocket::bind(local).expect("sender");
        sender.send_to(&payload, to).expect("send");
        let mut buf = vec![0u8; MAX_GRO_RECEIVE];
        let mut meta = [RecvMeta::default()];
        let got = std::future::poll_fn(|cx| {
            let mut bufs = [IoSliceMut::new(&mut buf)];
            socket.poll_recv(cx, &mut bufs, &mut meta)
        })
        .await
        .expect("recv");
        assert_eq!(got, 1);
        assert_eq!(meta[0].len, payload.len());
        assert_eq!(&buf[..payload.len()], &payload[..]);
    }
}
