//! The receiving half of a stream: reassembles frames that arrive out of
//! order or more than once into the exact byte sequence that was sent.
//! Payloads stay the `Bytes` slices of the packets they arrived in.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::error::{TransportError, TransportErrorCode};

#[derive(Debug, Default)]
pub(crate) struct RecvBuffer {
    /// Received data not yet read, keyed by offset; never overlapping.
    segments: BTreeMap<u64, Bytes>,
    /// Bytes delivered to the application.
    read: u64,
    /// One past the highest offset received: what flow control counts.
    high: u64,
    final_size: Option<u64>,
}

impl RecvBuffer {
    /// Takes in a frame's data. Returns by how much the highest received
    /// offset grew (the flow-control credit it consumed).
    pub fn insert(&mut self, offset: u64, data: Bytes, fin: bool) -> Result<u64, TransportError> {
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

        // Keep only bytes not yet read and not already buffered.
        let mut cursor = offset.max(self.read);
        if cursor >= end {
            return Ok(grew);
        }
        // In-order data (the common case) lies past everything buffered:
        // nothing to trim.
        let buffered_end = self
            .segments
            .last_key_value()
            .map_or(0, |(&o, b)| o + b.len() as u64);
        if cursor >= buffered_end {
            let fresh = (cursor - offset) as usize..data.len();
            self.segments.insert(cursor, data.slice(fresh));
            return Ok(grew);
        }
        let first = self
            .segments
            .range(..=cursor)
            .next_back()
            .map(|(&o, _)| o)
            .unwrap_or(cursor);
        let overlapping: Vec<(u64, u64)> = self
            .segments
            .range(first..end)
            .map(|(&o, b)| (o, o + b.len() as u64))
            .collect();
        for (seg_start, seg_end) in overlapping {
            if seg_end <= cursor {
                continue;
            }
            if seg_start > cursor {
                let gap = (cursor - offset) as usize..(seg_start - offset) as usize;
                self.segments.insert(cursor, data.slice(gap));
            }
            cursor = cursor.max(seg_end);
            if cursor >= end {
                return Ok(grew);
            }
        }
        let rest = (cursor - offset) as usize..data.len();
        self.segments.insert(cursor, data.slice(rest));
        Ok(grew)
    }

    /// The next in-order bytes, at most `max`. `None` if the next byte has
    /// not arrived.
    pub fn read(&mut self, max: usize) -> Option<Bytes> {
        let mut entry = self.segments.first_entry()?;
        if *entry.key() != self.read {
            return None;
        }
        let chunk = if entry.get().len() > max {
            let head = entry.get_mut().split_to(max);
            let rest = entry.remove();
            self.segments.insert(self.read + max as u64, rest);
            head
        } else {
            entry.remove()
        };
        self.read += chunk.len() as u64;
        Some(chunk)
    }

    /// Whether the next byte can be read now.
    pub fn is_readable(&self) -> bool {
        self.segments
            .first_key_value()
            .is_some_and(|(&o, _)| o == self.read)
            || self.is_finished()
    }

    /// Every byte up to the final size has been read.
    pub fn is_finished(&self) -> bool {
        self.final_size == Some(self.read)
    }

    /// Bytes delivered to the application.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// One past the highest offset received.
    pub fn high(&self) -> u64 {
        self.high
    }

    /// The final size, once known.
    pub fn final_size(&self) -> Option<u64> {
        self.final_size
    }

    /// The peer reset the stream at `final_size`. Returns the credit the
    /// reset consumed beyond what was received.
    pub fn reset(&mut self, final_size: u64) -> Result<u64, TransportError> {
        if self.final_size.is_some_and(|s| s != final_size) || final_size < self.high {
            return Err(TransportError::new(
                TransportErrorCode::FINAL_SIZE_ERROR,
                "reset final size conflicts with data received",
            ));
        }
        let grew = final_size - self.high;
        self.high = final_size;
        self.final_size = Some(final_size);
        self.segments.clear();
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
        buf.insert(5, Bytes::from_static(b"fghij"), true).unwrap();
        assert_eq!(buf.read(10), None);
        buf.insert(0, Bytes::from_static(b"abcdefg"), false)
            .unwrap();
        buf.insert(3, Bytes::from_static(b"de"), false).unwrap();
        assert_eq!(read_all(&mut buf), b"abcdefghij");
        assert!(buf.is_finished());
    }

    #[test]
    fn final_size_violations_are_errors() {
        let mut buf = RecvBuffer::default();
        buf.insert(0, Bytes::from_static(b"abc"), true).unwrap();
        assert!(buf.insert(2, Bytes::from_static(b"cd"), false).is_err());
        assert!(buf.insert(0, Bytes::from_static(b"ab"), true).is_err());
        let mut buf = RecvBuffer::default();
        buf.insert(10, Bytes::from_static(b"x"), false).unwrap();
        assert!(buf.insert(0, Bytes::from_static(b"ab"), true).is_err());
    }

    #[test]
    fn credit_counts_the_highest_offset_once() {
        let mut buf = RecvBuffer::default();
        assert_eq!(
            buf.insert(10, Bytes::from_static(b"abc"), false).unwrap(),
            13
        );
        assert_eq!(buf.insert(0, Bytes::from_static(b"abc"), false).unwrap(), 0);
        assert_eq!(
            buf.insert(12, Bytes::from_static(b"abc"), false).unwrap(),
            2
        );
    }

    #[test]
    fn partial_reads_split_segments() {
        let mut buf = RecvBuffer::default();
        buf.insert(0, Bytes::from_static(b"abcdef"), false).unwrap();
        assert_eq!(&buf.read(2).unwrap()[..], b"ab");
        assert_eq!(&buf.read(10).unwrap()[..], b"cdef");
        assert_eq!(buf.bytes_read(), 6);
    }

    proptest! {
        #[test]
        fn any_delivery_order_with_duplicates_yields_the_original(
            len in 1usize..4000,
            cuts in proptest::collection::vec((0usize..4000, 1usize..700), 1..60),
            seed in any::<u64>(),
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i as u64 * 7 + seed) as u8).collect();
            let all = Bytes::from(data.clone());
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
                buf.insert(s as u64, all.slice(s..e), e == len).unwrap();
                out.extend(read_all(&mut buf));
            }
            prop_assert_eq!(out, data);
            prop_assert!(buf.is_finished());
        }
    }
}
