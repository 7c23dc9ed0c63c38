//! The receiving half of a stream: reassembles frames that arrive out of
//! order or more than once into the exact byte sequence that was sent.
//!
//! Received bytes are copied into one buffer per stream, at their offset.
//! Keeping the packets' own slices instead would let a peer pin a whole
//! receive buffer (a packet, and the socket's block it was carved from)
//! with every byte it sends out of order: one byte at a time, within flow
//! control, that is gigabytes per connection. A copy makes what a stream
//! holds its unread span, which flow control bounds. Holes are tracked as
//! ranges, and the connection caps how many (see
//! [`Streams`](super::Streams)).

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};

use crate::error::{TransportError, TransportErrorCode};

/// Spare room a drained buffer keeps for the next bytes; beyond it the
/// buffer is let go (a stream that once held a window's worth must not keep
/// it while idle).
const KEEP_CAPACITY: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct RecvBuffer {
    /// The bytes from `read` on, up to the highest offset received; holes
    /// (not yet received) are zeros.
    data: BytesMut,
    /// Everything in `read..contiguous` has arrived.
    contiguous: u64,
    /// Ranges received beyond `contiguous`: start to end, disjoint and
    /// never touching.
    ahead: BTreeMap<u64, u64>,
    /// Bytes delivered to the application.
    read: u64,
    /// One past the highest offset received: what flow control counts.
    high: u64,
    final_size: Option<u64>,
}

impl RecvBuffer {
    /// Takes in a frame's data. Returns by how much the highest received
    /// offset grew (the flow-control credit it consumed).
    pub(crate) fn insert(
        &mut self,
        offset: u64,
        data: &[u8],
        fin: bool,
    ) -> Result<u64, TransportError> {
        let end = offset + data.len() as u64;
        let final_size_error =
            |msg: &str| TransportError::new(TransportErrorCode::FINAL_SIZE_ERROR, msg);
        if let Some(size) = self.final_size {
            if end > size || (fin && end != size) {
                return Err(final_size_error(
                    "data beyond or conflicting with the final size",
                ));
            }
        }
        if fin {
            if end < self.high {
                return Err(final_size_error("final size below data already received"));
            }
            self.final_size = Some(end);
        }
        let grew = end.saturating_sub(self.high);
        self.high = self.high.max(end);

        // Keep only bytes not yet read.
        let start = offset.max(self.read);
        if start >= end {
            return Ok(grew);
        }
        let fresh = &data[(start - offset) as usize..];
        let at = (start - self.read) as usize;
        if at == self.data.len() {
            // In order (the common case), or the first bytes past a hole.
            self.data.extend_from_slice(fresh);
        } else {
            let need = (end - self.read) as usize;
            if need > self.data.len() {
                self.data.resize(need, 0);
            }
            self.data[at..at + fresh.len()].copy_from_slice(fresh);
        }
        self.mark_received(start, end);
        Ok(grew)
    }

    /// Records that `start..end` (all past `read`) has arrived.
    fn mark_received(&mut self, mut start: u64, mut end: u64) {
        if start <= self.contiguous {
            self.contiguous = self.contiguous.max(end);
            while let Some(entry) = self.ahead.first_entry() {
                if *entry.key() > self.contiguous {
                    break;
                }
                self.contiguous = self.contiguous.max(entry.remove());
            }
            return;
        }
        // Merge with every range it overlaps or touches.
        if let Some((&s, &e)) = self.ahead.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                self.ahead.remove(&s);
            }
        }
        while let Some((&s, &e)) = self.ahead.range(start..=end).next() {
            end = end.max(e);
            self.ahead.remove(&s);
        }
        self.ahead.insert(start, end);
    }

    /// Separate ranges received past a hole: what reassembly costs beyond
    /// the bytes themselves.
    pub(crate) fn fragments(&self) -> usize {
        self.ahead.len()
    }

    /// The next in-order bytes, at most `max`. `None` if the next byte has
    /// not arrived.
    pub(crate) fn read(&mut self, max: usize) -> Option<Bytes> {
        let ready = (self.contiguous - self.read) as usize;
        if ready == 0 {
            return None;
        }
        let n = ready.min(max);
        let chunk = self.data.split_to(n).freeze();
        self.read += n as u64;
        if self.data.is_empty() && self.data.capacity() > KEEP_CAPACITY {
            // The room left belongs to a large block the application may
            // still hold: let it go with the application's last chunk.
            self.data = BytesMut::new();
        }
        Some(chunk)
    }

    /// Whether the next byte can be read now.
    pub(crate) fn is_readable(&self) -> bool {
        self.contiguous > self.read || self.is_finished()
    }

    /// Every byte up to the final size has been read.
    pub(crate) fn is_finished(&self) -> bool {
        self.final_size == Some(self.read)
    }

    /// Bytes delivered to the application.
    pub(crate) fn bytes_read(&self) -> u64 {
        self.read
    }

    /// One past the highest offset received.
    pub(crate) fn high(&self) -> u64 {
        self.high
    }

    /// The final size, once known.
    pub(crate) fn final_size(&self) -> Option<u64> {
        self.final_size
    }

    /// The application stopped reading: forget what is buffered. Later data
    /// is still checked against the final size, then dropped the same way.
    pub(crate) fn discard(&mut self) {
        self.read = self.high;
        self.contiguous = self.high;
        self.data = BytesMut::new();
        self.ahead.clear();
    }

    /// The peer reset the stream at `final_size`. Returns the credit the
    /// reset consumed beyond what was received.
    pub(crate) fn reset(&mut self, final_size: u64) -> Result<u64, TransportError> {
        if self.final_size.is_some_and(|s| s != final_size) || final_size < self.high {
            return Err(TransportError::new(
                TransportErrorCode::FINAL_SIZE_ERROR,
                "reset final size conflicts with data received",
            ));
        }
        let grew = final_size - self.high;
        self.high = final_size;
        self.final_size = Some(final_size);
        self.data = BytesMut::new();
        self.ahead.clear();
        Ok(grew)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_all(buf: &mut RecvBuffer) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(c) = buf.read(usize::MAX) {
            out.extend_from_slice(&c);
        }
        out
    }

    #[test]
    fn out_of_order_and_duplicate_data_reassembles_exactly() {
        let mut buf = RecvBuffer::default();
        buf.insert(5, b"fghij", true).unwrap();
        assert_eq!(buf.read(10), None);
        buf.insert(0, b"abcdefg", false).unwrap();
        buf.insert(3, b"de", false).unwrap();
        assert_eq!(read_all(&mut buf), b"abcdefghij");
        assert!(buf.is_finished());
    }

    #[test]
    fn final_size_violations_are_errors() {
        let mut buf = RecvBuffer::default();
        buf.insert(0, b"abc", true).unwrap();
        assert!(buf.insert(2, b"cd", false).is_err());
        assert!(buf.insert(0, b"ab", true).is_err());
        let mut buf = RecvBuffer::default();
        buf.insert(10, b"x", false).unwrap();
        assert!(buf.insert(0, b"ab", true).is_err());
    }

    #[test]
    fn credit_counts_the_highest_offset_once() {
        let mut buf = RecvBuffer::default();
        assert_eq!(buf.insert(10, b"abc", false).unwrap(), 13);
        assert_eq!(buf.insert(0, b"abc", false).unwrap(), 0);
        assert_eq!(buf.insert(12, b"abc", false).unwrap(), 2);
    }

    #[test]
    fn partial_reads_split_segments() {
        let mut buf = RecvBuffer::default();
        buf.insert(0, b"abcdef", false).unwrap();
        assert_eq!(&buf.read(2).unwrap()[..], b"ab");
        assert_eq!(&buf.read(10).unwrap()[..], b"cdef");
        assert_eq!(buf.bytes_read(), 6);
    }

    #[test]
    fn scattered_bytes_cost_their_span_and_merge_when_the_holes_fill() {
        let mut buf = RecvBuffer::default();
        for i in 0..1000u64 {
            buf.insert(1 + 2 * i, b"x", false).unwrap();
        }
        assert_eq!(buf.fragments(), 1000);
        assert_eq!(buf.data.len(), 2000);
        assert!(buf.read(10).is_none());
        for i in 0..1000u64 {
            buf.insert(2 * i, b"y", false).unwrap();
        }
        assert_eq!(buf.fragments(), 0);
        assert_eq!(read_all(&mut buf).len(), 2000);
    }

    #[test]
    fn a_drained_buffer_lets_a_large_block_go() {
        let mut buf = RecvBuffer::default();
        buf.insert(0, &[1; 100_000], false).unwrap();
        let chunk = buf.read(usize::MAX).unwrap();
        assert_eq!(chunk.len(), 100_000);
        assert!(buf.data.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn a_stopped_stream_keeps_nothing() {
        let mut buf = RecvBuffer::default();
        buf.insert(5, b"abc", false).unwrap();
        buf.discard();
        // As the stream does for every later frame.
        buf.insert(20, b"abc", false).unwrap();
        buf.discard();
        assert_eq!((buf.fragments(), buf.high()), (0, 23));
        assert!(buf.data.capacity() == 0);
    }

    proptest! {
        #[test]
        fn any_delivery_order_with_duplicates_yields_the_original(
            len in 1usize..4000,
            cuts in proptest::collection::vec((0usize..4000, 1usize..700), 1..60),
            seed in any::<u64>(),
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i as u64 * 7 + seed) as u8).collect();
            // Random (possibly overlapping) frames, then the whole thing in
            // pieces so coverage is complete.
            let mut frames: Vec<(usize, usize)> = cuts
                .into_iter()
                .map(|(s, n)| (s % len, (s % len + n).min(len)))
                .collect();
            let mut s = 0;
            while s < len {
                let e = (s + 500).min(len);
                frames.push((s, e));
                s = e;
            }
            let n = frames.len();
            for i in 0..n {
                frames.swap(i, (seed as usize).wrapping_mul(i + 1) % n);
            }
            let mut buf = RecvBuffer::default();
            let mut out = Vec::new();
            for (s, e) in frames {
                buf.insert(s as u64, &data[s..e], e == len).unwrap();
                out.extend(read_all(&mut buf));
            }
            prop_assert_eq!(out, data);
            prop_assert!(buf.is_finished());
        }
    }
}
