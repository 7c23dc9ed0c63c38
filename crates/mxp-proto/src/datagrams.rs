//! Unreliable datagrams: sent at most once, never retransmitted, bounded
//! queues both ways with the oldest dropped (and counted) when full.
//!
//! Each queue is bounded by bytes and by count, and an entry costs
//! [`DATAGRAM_ENTRY_COST`] bytes on top of its payload, so a flood of empty
//! datagrams fills a queue as surely as large ones. Received datagrams are
//! copied out of their packets into blocks of this connection's own: the
//! queue is first in, first out, so the blocks it keeps alive span only
//! what it holds.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::Band;
use crate::frame;

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// The peer does not accept datagrams.
    #[error("the peer does not accept datagrams")]
    Disabled,
    /// Larger than a packet (or the peer) can carry.
    #[error("datagram of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Size offered.
        size: usize,
        /// Largest allowed.
        max: usize,
    },
}

/// Datagram counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatagramStats {
    /// Datagrams put in packets.
    pub sent: u64,
    /// Datagrams received and queued for the application.
    pub received: u64,
    /// Outgoing datagrams dropped because the send queue was full.
    pub dropped_send: u64,
    /// Incoming datagrams dropped because the application did not keep up.
    pub dropped_recv: u64,
    /// Sent datagrams whose packet was declared lost (never retransmitted).
    pub lost: u64,
}

impl DatagramStats {
    /// Adds `other`'s counters.
    pub fn accumulate(&mut self, other: &DatagramStats) {
        self.sent += other.sent;
        self.received += other.received;
        self.dropped_send += other.dropped_send;
        self.dropped_recv += other.dropped_recv;
        self.lost += other.lost;
    }
}

/// What a queued datagram is charged beyond its payload: its slot.
pub const DATAGRAM_ENTRY_COST: usize = 32;

/// Most datagrams one queue holds, whatever their size.
pub(crate) const MAX_QUEUED: usize = 4096;

/// Size of the blocks received datagrams are copied into.
const RECV_BLOCK: usize = 64 * 1024;

/// Whether a queue of `count` entries charged `bytes` is over its limits.
fn over(count: usize, bytes: usize, limit: usize) -> bool {
    count > MAX_QUEUED || bytes > limit
}

#[derive(Debug)]
pub(crate) struct Datagrams {
    outgoing: [VecDeque<Bytes>; Band::COUNT],
    outgoing_bytes: usize,
    send_limit: usize,
    incoming: VecDeque<Bytes>,
    incoming_bytes: usize,
    recv_limit: usize,
    /// Where received datagrams are copied to.
    recv_block: BytesMut,
    scheduled: [bool; Band::COUNT],
    pub stats: DatagramStats,
}

impl Datagrams {
    pub(crate) fn new(send_limit: usize, recv_limit: usize) -> Self {
        Datagrams {
            outgoing: Default::default(),
            outgoing_bytes: 0,
            send_limit,
            incoming: VecDeque::new(),
            incoming_bytes: 0,
            recv_limit,
            recv_block: BytesMut::new(),
            scheduled: [false; Band::COUNT],
            stats: DatagramStats::default(),
        }
    }

    /// Queues a datagram. Returns true if the band's queue needs scheduling.
    pub(crate) fn send(
        &mut self,
        data: Bytes,
        band: Band,
        max: usize,
    ) -> Result<bool, DatagramError> {
        if max == 0 {
            return Err(DatagramError::Disabled);
        }
        if data.len() > max {
            return Err(DatagramError::TooLarge {
                size: data.len(),
                max,
            });
        }
        self.outgoing_bytes += data.len() + DATAGRAM_ENTRY_COST;
        self.outgoing[band.index()].push_back(data);
        // Over the limit: drop the oldest of the least important band.
        let queued = |o: &[VecDeque<Bytes>; Band::COUNT]| o.iter().map(VecDeque::len).sum();
        while over(queued(&self.outgoing), self.outgoing_bytes, self.send_limit) {
            let Some(q) = self.outgoing.iter_mut().rev().find(|q| !q.is_empty()) else {
                break;
            };
            if let Some(old) = q.pop_front() {
                self.outgoing_bytes -= old.len() + DATAGRAM_ENTRY_COST;
                self.stats.dropped_send += 1;
            }
        }
        let i = band.index();
        let schedule = !self.scheduled[i] && !self.outgoing[i].is_empty();
        self.scheduled[i] |= schedule;
        Ok(schedule)
    }

    /// Writes the band's next datagram if it fits in `space`. Returns the
    /// frame's size (0 if nothing was written) and whether more are queued.
    pub(crate) fn write(&mut self, band: Band, space: usize, out: &mut Vec<u8>) -> (usize, bool) {
        let i = band.index();
        let q = &mut self.outgoing[i];
        let Some(front) = q.front() else {
            self.scheduled[i] = false;
            return (0, false);
        };
        let need = frame::datagram_header_len(front.len(), true) + front.len();
        if need > space {
            return (0, true);
        }
        let d = q.pop_front().expect("front exists");
        frame::encode_datagram_header(d.len(), true, out);
        out.extend_from_slice(&d);
        self.outgoing_bytes -= d.len() + DATAGRAM_ENTRY_COST;
        self.stats.sent += 1;
        let more = !q.is_empty();
        self.scheduled[i] = more;
        (need, more)
    }

    /// A datagram arrived. Returns whether the queue was empty (the
    /// application needs telling only then: it reads until it is empty).
    pub(crate) fn receive(&mut self, data: &[u8]) -> bool {
        let was_empty = self.incoming.is_empty();
        if self.recv_block.capacity() < data.len() {
            self.recv_block.reserve(RECV_BLOCK.max(data.len()));
        }
        self.recv_block.extend_from_slice(data);
        self.incoming.push_back(self.recv_block.split().freeze());
        self.incoming_bytes += data.len() + DATAGRAM_ENTRY_COST;
        self.stats.received += 1;
        while over(self.incoming.len(), self.incoming_bytes, self.recv_limit) {
            match self.incoming.pop_front() {
                Some(old) => {
                    self.incoming_bytes -= old.len() + DATAGRAM_ENTRY_COST;
                    self.stats.dropped_recv += 1;
                }
                None => break,
            }
        }
        was_empty
    }

    /// Next received datagram.
    pub(crate) fn recv(&mut self) -> Option<Bytes> {
        let d = self.incoming.pop_front()?;
        self.incoming_bytes -= d.len() + DATAGRAM_ENTRY_COST;
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_checked_and_overflow_drops_the_oldest() {
        let mut d = Datagrams::new(300, 300);
        assert_eq!(
            d.send(Bytes::from(vec![0; 101]), Band::Critical, 100),
            Err(DatagramError::TooLarge {
                size: 101,
                max: 100
            })
        );
        assert_eq!(
            d.send(Bytes::new(), Band::Critical, 0),
            Err(DatagramError::Disabled)
        );
        assert_eq!(
            d.send(Bytes::from(vec![1; 100]), Band::Background, 100),
            Ok(true)
        );
        assert_eq!(
            d.send(Bytes::from(vec![2; 100]), Band::Critical, 100),
            Ok(true)
        );
        assert_eq!(
            d.send(Bytes::from(vec![3; 100]), Band::Critical, 100),
            Ok(false)
        );
        // The background datagram went first.
        assert_eq!(d.stats.dropped_send, 1);
        let mut out = Vec::new();
        assert_eq!(d.write(Band::Background, 1500, &mut out), (0, false));
        assert!(d.write(Band::Critical, 1500, &mut out).1);
    }

    #[test]
    fn receive_queue_is_bounded() {
        let mut d = Datagrams::new(1000, 150);
        d.receive(&[1; 100]);
        d.receive(&[2; 100]);
        assert_eq!(d.stats.dropped_recv, 1);
        assert_eq!(d.recv().unwrap()[0], 2);
        assert_eq!(d.recv(), None);
    }

    #[test]
    fn empty_datagrams_fill_the_queue_too() {
        let mut d = Datagrams::new(1 << 20, 1 << 20);
        for _ in 0..3 * MAX_QUEUED {
            d.receive(&[]);
        }
        assert_eq!(d.incoming.len(), MAX_QUEUED);
        assert_eq!(d.stats.dropped_recv, 2 * MAX_QUEUED as u64);
        let mut d = Datagrams::new(1000, 1000);
        for _ in 0..100 {
            d.receive(&[]);
        }
        assert_eq!(d.incoming.len(), 1000 / DATAGRAM_ENTRY_COST);
        for _ in 0..100 {
            let _ = d.send(Bytes::new(), Band::Critical, 100);
        }
        assert_eq!(d.outgoing[0].len(), 1000 / DATAGRAM_ENTRY_COST);
    }

    #[test]
    fn received_datagrams_do_not_keep_their_packets() {
        let packet = Bytes::from(vec![7u8; 1400]);
        let mut d = Datagrams::new(1000, 1 << 20);
        d.receive(&packet[100..110]);
        // A copy: the packet's buffer is ours alone again.
        assert!(packet.is_unique());
        assert_eq!(&d.recv().unwrap()[..], &[7u8; 10][..]);
    }
}
