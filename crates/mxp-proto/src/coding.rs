//! Wire primitives shared by every codec: QUIC-style variable-length integers
//! and a bounds-checked reader.
//!
//! Every parser in the crate reads through [`Reader`], so running off the end
//! of a datagram is always a typed [`UnexpectedEnd`], never a panic.

use thiserror::Error;

/// The input ended before a complete field could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("unexpected end of input")]
pub struct UnexpectedEnd;

/// Largest value a varint can carry (2^62 - 1).
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// Number of bytes [`put_varint`] uses for `v`.
#[inline]
pub fn varint_len(v: u64) -> usize {
    if v < 1 << 6 {
        1
    } else if v < 1 << 14 {
        2
    } else if v < 1 << 30 {
        4
    } else {
        debug_assert!(v <= VARINT_MAX, "varint overflow");
        8
    }
}

/// Appends `v` as a variable-length integer (RFC 9000 §16 layout: the two top
/// bits of the first byte give the length).
#[inline]
pub fn put_varint(out: &mut Vec<u8>, v: u64) {
    match varint_len(v) {
        1 => out.push(v as u8),
        2 => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        4 => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&((v & VARINT_MAX) | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// A cursor over a byte slice whose every read is bounds-checked.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether everything has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The unread part of the input, without consuming it.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Reads `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], UnexpectedEnd> {
        if self.remaining() < n {
            return Err(UnexpectedEnd);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Reads a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], UnexpectedEnd> {
        let mut out = [0; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, UnexpectedEnd> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, UnexpectedEnd> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, UnexpectedEnd> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, UnexpectedEnd> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads a variable-length integer.
    pub fn varint(&mut self) -> Result<u64, UnexpectedEnd> {
        let first = *self.buf.get(self.pos).ok_or(UnexpectedEnd)?;
        let len = 1usize << (first >> 6);
        let raw = self.bytes(len)?;
        let mut v = u64::from(raw[0] & 0x3f);
        for &b in &raw[1..] {
            v = (v << 8) | u64::from(b);
        }
        Ok(v)
    }

    /// Reads a varint length prefix followed by that many bytes.
    pub fn length_prefixed(&mut self) -> Result<&'a [u8], UnexpectedEnd> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| UnexpectedEnd)?;
        self.bytes(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varint_boundaries_use_the_documented_lengths() {
        for (v, len) in [
            (0, 1),
            (63, 1),
            (64, 2),
            (16_383, 2),
            (16_384, 4),
            ((1 << 30) - 1, 4),
            (1 << 30, 8),
            (VARINT_MAX, 8),
        ] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(buf.len(), len, "length of {v}");
            assert_eq!(varint_len(v), len);
        }
    }

    #[test]
    fn truncated_varint_is_an_error() {
        let mut buf = Vec::new();
        put_varint(&mut buf, 1 << 20);
        for cut in 0..buf.len() {
            assert_eq!(Reader::new(&buf[..cut]).varint(), Err(UnexpectedEnd));
        }
    }

    proptest! {
        #[test]
        fn varint_round_trips(v in 0..=VARINT_MAX) {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut r = Reader::new(&buf);
            prop_assert_eq!(r.varint().unwrap(), v);
            prop_assert!(r.is_empty());
        }
    }
}
