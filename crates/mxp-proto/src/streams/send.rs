//! The sending half of a stream: bytes the application wrote, kept until
//! the peer acknowledges them, with lost ranges queued for retransmission.
//!
//! Retransmission works on byte ranges, not packets: a lost packet's stream
//! frames turn into ranges here, and the next packets carry them again,
//! coalesced with whatever else is pending.

use std::collections::VecDeque;
use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};

use crate::ranges::RangeSet;

/// Writes smaller than this are copied into a shared tail buffer rather than
/// kept as their own chunk, so thousands of 64-byte messages do not become
/// thousands of chunks to walk when building a packet.
const COALESCE_BELOW: usize = 1024;
/// Size at which the coalescing tail is sealed into a chunk.
const TAIL_CHUNK: usize = 16 * 1024;

#[derive(Debug, Default)]
pub(crate) struct SendBuffer {
    /// Unacknowledged data from `base` on, as written; `tail` follows it.
    chunks: VecDeque<Bytes>,
    tail: BytesMut,
    /// Offset of the first byte still held.
    base: u64,
    /// Offset one past the last byte written.
    end: u64,
    /// First offset never sent.
    unsent: u64,
    /// Sent ranges that were lost and must be sent again.
    retransmit: RangeSet,
    /// Acknowledged ranges above `base`.
    acked: RangeSet,
}

impl SendBuffer {
    /// Appends application data.
    pub(crate) fn write(&mut self, data: Bytes) {
        self.end += data.len() as u64;
        if data.len() < COALESCE_BELOW {
            self.tail.extend_from_slice(&data);
            if self.tail.len() >= TAIL_CHUNK {
                self.seal_tail();
            }
        } else {
            self.seal_tail();
            self.chunks.push_back(data);
        }
    }

    /// Appends application data from a slice: small writes are copied into
    /// the coalescing tail, larger ones into a chunk of their own.
    pub(crate) fn write_slice(&mut self, data: &[u8]) {
        if data.len() < COALESCE_BELOW {
            self.end += data.len() as u64;
            self.tail.extend_from_slice(data);
            if self.tail.len() >= TAIL_CHUNK {
                self.seal_tail();
            }
        } else {
            self.write(Bytes::copy_from_slice(data));
        }
    }

    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            let chunk = self.tail.split().freeze();
            self.chunks.push_back(chunk);
        }
    }

    /// Offset one past the last byte written.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Whether anything is waiting to be (re)sent.
    pub(crate) fn has_pending(&self) -> bool {
        !self.retransmit.is_empty() || self.unsent < self.end
    }

    /// The next range to send, at most `max_len` bytes: lost data first, so
    /// the receiver's reassembly gap closes as soon as possible.
    pub(crate) fn next_range(&self, max_len: u64) -> Option<Range<u64>> {
        if let Some(r) = self.retransmit.peek_min() {
            return Some(r.start..r.end.min(r.start + max_len));
        }
        (self.unsent < self.end).then(|| self.unsent..self.end.min(self.unsent + max_len))
    }

    /// Records that `range` (from [`next_range`](Self::next_range)) went out.
    pub(crate) fn mark_sent(&mut self, range: Range<u64>) {
        if range.start < self.unsent {
            self.retransmit.remove(range.clone());
        }
        self.unsent = self.unsent.max(range.end);
    }

    /// Copies the bytes of `range` into `out`.
    pub(crate) fn copy_range(&self, range: Range<u64>, out: &mut Vec<u8>) {
        debug_assert!(range.start >= self.base && range.end <= self.end);
        let mut offset = self.base;
        let tail = std::iter::once(&self.tail[..]);
        for chunk in self.chunks.iter().map(|c| &c[..]).chain(tail) {
            let chunk_end = offset + chunk.len() as u64;
            if chunk_end > range.start {
                let from = range.start.saturating_sub(offset) as usize;
                let to = (range.end.min(chunk_end) - offset) as usize;
                out.extend_from_slice(&chunk[from..to]);
            }
            offset = chunk_end;
            if offset >= range.end {
                break;
            }
        }
    }

    /// The peer acknowledged `range`: forget it (and stop retransmitting it).
    pub(crate) fn on_ack(&mut self, range: Range<u64>) {
        self.retransmit.remove(range.clone());
        // Parts below `base` were acknowledged before (a retransmission and
        // its original can both be acknowledged).
        let range = range.start.max(self.base)..range.end;
        if range.is_empty() {
            return;
        }
        self.acked.insert(range);
        let Some(first) = self.acked.peek_min() else {
            return;
        };
        if first.start > self.base {
            return;
        }
        self.acked.pop_min();
        let mut drop = first.end - self.base;
        self.base = first.end;
        while drop > 0 {
            let Some(front) = self.chunks.front_mut() else {
                // What remains is in the tail.
                self.tail.advance(drop as usize);
                break;
            };
            let len = front.len() as u64;
            if len <= drop {
                drop -= len;
                self.chunks.pop_front();
            } else {
                front.advance(drop as usize);
                drop = 0;
            }
        }
    }

    /// The packet carrying `range` was lost: queue whatever of it is still
    /// unacknowledged.
    pub(crate) fn on_lost(&mut self, range: Range<u64>) {
        let start = range.start.max(self.base);
        let end = range.end.min(self.unsent);
        if start >= end {
            return;
        }
        self.retransmit.insert(start..end);
        for acked in self.acked.iter() {
            if acked.start >= end {
                break;
            }
            self.retransmit.remove(acked);
        }
    }

    /// Whether every written byte has been acknowledged.
    /// Bytes kept for the peer to acknowledge.
    pub(crate) fn unacked(&self) -> u64 {
        self.end - self.base
    }

    pub(crate) fn all_acked(&self) -> bool {
        self.base == self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(buf: &mut SendBuffer, max: u64) -> Vec<(Range<u64>, Vec<u8>)> {
        let mut sent = Vec::new();
        while let Some(r) = buf.next_range(max) {
            let mut out = Vec::new();
            buf.copy_range(r.clone(), &mut out);
            buf.mark_sent(r.clone());
            sent.push((r, out));
        }
        sent
    }

    #[test]
    fn small_writes_coalesce_and_come_out_in_order() {
        let mut buf = SendBuffer::default();
        let mut all = Vec::new();
        for i in 0..100u8 {
            let msg = vec![i; 64];
            all.extend_from_slice(&msg);
            buf.write(Bytes::from(msg));
        }
        assert!(buf.chunks.len() <= 1);
        let sent = drain(&mut buf, 1000);
        let joined: Vec<u8> = sent.iter().flat_map(|(_, d)| d.clone()).collect();
        assert_eq!(joined, all);
    }

    #[test]
    fn lost_ranges_are_resent_first_and_acked_ones_never() {
        let mut buf = SendBuffer::default();
        buf.write(Bytes::from(vec![7u8; 3000]));
        let sent = drain(&mut buf, 1000);
        assert_eq!(sent.len(), 3);
        buf.on_ack(2000..3000);
        buf.on_lost(0..1000);
        buf.on_lost(2000..3000); // acknowledged meanwhile: not resent
        assert_eq!(buf.next_range(5000), Some(0..1000));
        buf.mark_sent(0..1000);
        assert_eq!(buf.next_range(5000), None);
        buf.on_ack(0..1000);
        assert!(!buf.all_acked());
        buf.on_ack(1000..2000);
        assert!(buf.all_acked());
    }

    #[test]
    fn acknowledging_the_same_range_twice_is_harmless() {
        let mut buf = SendBuffer::default();
        buf.write(Bytes::from(vec![1u8; 100]));
        drain(&mut buf, 1000);
        buf.on_ack(0..100);
        buf.on_ack(0..100);
        buf.on_ack(50..100);
        assert!(buf.all_acked());
    }

    proptest! {
        /// Whatever the ack/loss order, retransmitted bytes equal the
        /// originals and everything is eventually acknowledged.
        #[test]
        fn retransmissions_carry_the_original_bytes(
            sizes in proptest::collection::vec(1usize..3000, 1..20),
            frame in 100u64..1500,
            fate in proptest::collection::vec(any::<bool>(), 64),
        ) {
            let mut buf = SendBuffer::default();
            let mut all = Vec::new();
            for (i, n) in sizes.iter().enumerate() {
                let data: Vec<u8> = (0..*n).map(|j| (i * 31 + j) as u8).collect();
                all.extend_from_slice(&data);
                buf.write(Bytes::from(data));
            }
            let mut round = 0;
            while !buf.all_acked() {
                for (r, data) in drain(&mut buf, frame) {
                    prop_assert_eq!(&data[..], &all[r.start as usize..r.end as usize]);
                    if fate[round % fate.len()] || round > 200 {
                        buf.on_ack(r.clone());
                        // Acknowledgements may repeat (original and copy).
                        buf.on_ack(r);
                    } else {
                        buf.on_lost(r);
                    }
                    round += 1;
                }
            }
        }
    }
}
