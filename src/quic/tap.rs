//! The QUIC listener's socket with the endpoint's packet capture tapped in,
//! so that a capture taken around a carrier switch shows both carriers: the
//! rollback moves traffic from MXP to QUIC, and a capture of MXP alone
//! would go quiet exactly when it matters.
//!
//! quinn owns the socket it is given; it accepts any [`AsyncUdpSocket`], so
//! this one wraps tokio's and copies what passes to the capture while it
//! records (one relaxed atomic load per send and receive call while it does
//! not).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};

use crate::capture::{self, Capture, CaptureBatch, Direction};

#[derive(Debug)]
struct Tapped {
    inner: Arc<dyn AsyncUdpSocket>,
    capture: Capture,
    local: SocketAddr,
}

impl AsyncUdpSocket for Tapped {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)?;
        if self.capture.is_recording() {
            let mut batch = CaptureBatch::default();
            let time = capture::now();
            let from = capture::local_address(self.local, transmit.src_ip);
            let segment = transmit
                .segment_size
                .unwrap_or(transmit.contents.len())
                .max(1);
            for datagram in transmit.contents.chunks(segment) {
                batch.push(time, Direction::Sent, from, transmit.destination, datagram);
            }
            self.capture.submit(&mut batch);
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
        if self.capture.is_recording() {
            let mut batch = CaptureBatch::default();
            let time = capture::now();
            for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
                let to = capture::local_address(self.local, m.dst_ip);
                for datagram in buf[..m.len].chunks(m.stride.max(1)) {
                    batch.push(time, Direction::Received, m.addr, to, datagram);
                }
            }
            self.capture.submit(&mut batch);
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// What `quinn::Endpoint::server` does, on a socket `capture` sees.
pub(super) fn server(
    config: quinn::ServerConfig,
    addr: SocketAddr,
    capture: Capture,
) -> io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let runtime = Arc::new(TokioRuntime);
    let inner = runtime.wrap_udp_socket(socket)?;
    let local = inner.local_addr()?;
    let tapped = Arc::new(Tapped {
        inner,
        capture,
        local,
    });
    quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(config),
        tapped,
        runtime,
    )
}
