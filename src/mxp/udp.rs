//! The UDP socket under an endpoint, with the kernel's batching: GSO
//! (many equal-sized datagrams to one destination in one send), GRO and
//! `recvmmsg` (many datagrams in one receive), via `quinn-udp`.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use bytes::BytesMut;
use quinn_udp::{BATCH_SIZE, RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;

use crate::capture::{self, CaptureBatch, Direction};

/// Kernel socket buffers: large enough that a burst of a few milliseconds
/// at full rate is not dropped before the driver reads it.
const SOCKET_BUFFER: usize = 4 << 20;

/// A non-blocking UDP socket registered with tokio.
#[derive(Debug)]
pub(crate) struct Socket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
}

impl Socket {
    /// Binds to `addr`. Must be called inside a tokio runtime.
    pub(crate) fn bind(addr: SocketAddr) -> io::Result<Socket> {
        let std = std::net::UdpSocket::bind(addr)?;
        std.set_nonblocking(true)?;
        let state = UdpSocketState::new((&std).into())?;
        // Best effort: the kernel caps these at its configured maximum.
        let _ = state.set_send_buffer_size((&std).into(), SOCKET_BUFFER);
        let _ = state.set_recv_buffer_size((&std).into(), SOCKET_BUFFER);
        Ok(Socket {
            io: tokio::net::UdpSocket::from_std(std)?,
            state,
        })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// Most datagrams one send may carry (1 without GSO).
    pub(crate) fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Sends one (possibly GSO) transmit; `WouldBlock` if the socket buffer
    /// is full. Other errors are logged by quinn-udp and dropped, as a lost
    /// datagram would be.
    pub(crate) fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.io.try_io(Interest::WRITABLE, || {
            self.state.send((&self.io).into(), transmit)
        })
    }

    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.io.writable().await
    }

    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.io.readable().await
    }
}

/// Reusable receive buffers for one batch.
#[derive(Debug)]
pub(crate) struct RecvBuffers {
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
    /// Datagrams handed to the protocol are carved from this arena, so a
    /// datagram costs a copy but no allocation of its own.
    arena: BytesMut,
    /// Slots filled by the last `recv`.
    filled: usize,
}

/// Arena growth step.
const ARENA_BLOCK: usize = 256 * 1024;

impl RecvBuffers {
    pub(super) fn new(socket: &Socket) -> RecvBuffers {
        // With GRO one buffer holds many coalesced datagrams.
        let size = (65_535).max(1500 * socket.state.gro_segments());
        RecvBuffers {
            bufs: (0..BATCH_SIZE).map(|_| vec![0; size]).collect(),
            meta: vec![RecvMeta::default(); BATCH_SIZE],
            arena: BytesMut::new(),
            filled: 0,
        }
    }

    /// Receives what is waiting without blocking (`WouldBlock` if nothing
    /// was). The datagrams are then taken with [`drain`](Self::drain).
    pub(super) fn recv(&mut self, socket: &Socket) -> io::Result<usize> {
        let mut bufs = self.bufs.iter_mut();
        let mut slices: [IoSliceMut<'_>; BATCH_SIZE] =
            std::array::from_fn(|_| IoSliceMut::new(bufs.next().expect("BATCH_SIZE buffers")));
        let n = socket.io.try_io(Interest::READABLE, || {
            socket
                .state
                .recv((&socket.io).into(), &mut slices, &mut self.meta)
        })?;
        self.filled = n;
        Ok(n)
    }

    /// Hands every received datagram (GRO batches split) to `f`, and with
    /// `tap` also copies each into a capture batch, addressed from its
    /// source to `local` (with the destination address the kernel reported,
    /// where `local` is a wildcard).
    pub(super) fn drain(
        &mut self,
        mut tap: Option<(&mut CaptureBatch, SocketAddr)>,
        mut f: impl FnMut(SocketAddr, BytesMut),
    ) {
        let filled = std::mem::take(&mut self.filled);
        let time = match tap {
            Some(_) => capture::now(),
            None => Default::default(),
        };
        for (meta, buf) in self.meta.iter().zip(&self.bufs).take(filled) {
            let stride = meta.stride.max(1);
            for datagram in buf[..meta.len].chunks(stride) {
                if let Some((batch, local)) = tap.as_mut() {
                    let to = capture::local_address(*local, meta.dst_ip);
                    batch.push(time, Direction::Received, meta.addr, to, datagram);
                }
                if self.arena.capacity() < datagram.len() {
                    self.arena.reserve(ARENA_BLOCK);
                }
                self.arena.extend_from_slice(datagram);
                f(meta.addr, self.arena.split());
            }
        }
    }
}

/// Most bytes one GSO send may carry: the whole batch must fit in one UDP
/// payload (65,507 bytes over IPv4), or the kernel refuses it (EMSGSIZE)
/// and every datagram in it is lost.
const MAX_GSO_BYTES: usize = 65_000;

/// Datagrams waiting to be sent, grouped into GSO batches.
#[derive(Debug, Default)]
pub(crate) struct TxQueue {
    pub buf: Vec<u8>,
    batches: Vec<Batch>,
    next: usize,
}

#[derive(Debug, Clone, Copy)]
struct Batch {
    destination: SocketAddr,
    start: usize,
    len: usize,
    segment: usize,
    segments: usize,
    /// Ended by a short segment: nothing more may join it.
    closed: bool,
}

impl TxQueue {
    /// Whether nothing is queued.
    pub(super) fn is_empty(&self) -> bool {
        self.next == self.batches.len()
    }

    /// Bytes queued.
    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Records a datagram of `size` bytes just appended to `buf`, joining
    /// the previous batch when GSO allows.
    pub(super) fn push(&mut self, destination: SocketAddr, size: usize, max_segments: usize) {
        let start = self.buf.len() - size;
        let last_unsent = self.batches.len() > self.next;
        if let Some(last) = self.batches.last_mut() {
            if last_unsent
                && last.destination == destination
                && !last.closed
                && last.segments < max_segments
                && size <= last.segment
                && last.len + size <= MAX_GSO_BYTES
            {
                last.len += size;
                last.segments += 1;
                last.closed = size < last.segment;
                return;
            }
        }
        self.batches.push(Batch {
            destination,
            start,
            len: size,
            segment: size,
            segments: 1,
            closed: false,
        });
    }

    /// Sends as much as the socket takes. `WouldBlock` leaves the rest
    /// queued. With `tap`, every datagram the socket took (GSO batches
    /// split into their segments) is also copied into a capture batch, from
    /// the given local address.
    pub(super) fn send(
        &mut self,
        socket: &Socket,
        mut tap: Option<(&mut CaptureBatch, SocketAddr)>,
    ) -> io::Result<()> {
        let time = match tap {
            Some(_) => capture::now(),
            None => Default::default(),
        };
        while let Some(b) = self.batches.get(self.next) {
            let contents = &self.buf[b.start..b.start + b.len];
            let transmit = Transmit {
                destination: b.destination,
                ecn: None,
                contents,
                segment_size: (b.segments > 1).then_some(b.segment),
                src_ip: None,
            };
            socket.try_send(&transmit)?;
            if let Some((batch, local)) = tap.as_mut() {
                for datagram in contents.chunks(b.segment) {
                    batch.push(time, Direction::Sent, *local, b.destination, datagram);
                }
            }
            self.next += 1;
        }
        self.buf.clear();
        self.batches.clear();
        self.next = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(sizes: &[(u16, usize)], max_segments: usize) -> TxQueue {
        let mut q = TxQueue::default();
        for &(port, size) in sizes {
            q.buf.extend(std::iter::repeat_n(0u8, size));
            q.push(SocketAddr::from(([127, 0, 0, 1], port)), size, max_segments);
        }
        q
    }

    #[test]
    fn equal_datagrams_to_one_destination_share_a_batch_within_the_udp_limit() {
        let q = queue(&[(1, 1452); 100], 64);
        assert!(q.batches.iter().all(|b| b.len <= MAX_GSO_BYTES));
        assert_eq!(q.batches.iter().map(|b| b.segments).sum::<usize>(), 100);
        assert!(q.batches.len() < 10, "batched: {}", q.batches.len());
    }

    #[test]
    fn a_short_datagram_ends_a_batch_and_destinations_never_mix() {
        let q = queue(&[(1, 1000), (1, 1000), (1, 300), (1, 1000), (2, 1000)], 64);
        let shape: Vec<_> = q
            .batches
            .iter()
            .map(|b| (b.destination.port(), b.segments))
            .collect();
        assert_eq!(shape, [(1, 3), (1, 1), (2, 1)]);
    }

    #[test]
    fn without_gso_every_datagram_is_its_own_send() {
        let q = queue(&[(1, 500); 5], 1);
        assert_eq!(q.batches.len(), 5);
    }
}
