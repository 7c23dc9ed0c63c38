//! MXP messages: the application-level units the transport carries.
//!
//! The wire format is fixed by the public MXP specification, so peers written
//! against that spec interoperate with this one byte for byte. Its shape
//! serves a few goals:
//!
//! - A **fixed 32-byte header** with the payload length up front lets a
//!   receiver learn the full size of a message from its first 32 bytes
//!   ([`peek_len`]) and reject an oversized one before buffering it, which
//!   bounds memory per connection.
//! - **Everything is little-endian**, the magic included, because every
//!   platform agents actually run on is; encoding and decoding are plain
//!   loads and stores.
//! - A **trailing XXH3-64 checksum** over header and payload catches corruption
//!   and framing bugs cheaply (a few ns for small messages). It is not a MAC:
//!   authenticity comes from the transport's AEAD, not from here.
//! - Each [`MessageType`] maps to a scheduling [`Band`], so the scheduler can
//!   let calls and responses overtake bulk streams without inspecting payloads.
//!
//! Decoding is zero-copy: a decoded [`Message`]'s payload is a slice of the
//! received [`Bytes`], sharing its allocation.

use std::collections::VecDeque;
use std::fmt;
use std::ops::{BitOr, BitOrAssign};

use bytes::{Buf, Bytes, BytesMut};
use xxhash_rust::xxh3::xxh3_64;

use crate::Band;

/// The magic number opening every message: ASCII `"MXP1"` read as a big-endian
/// u32, stored little-endian (on the wire: `31 50 58 4D`).
pub const MAGIC: u32 = 0x4D58_5031;

/// Length of the fixed message header in bytes.
pub const HEADER_LEN: usize = 32;

/// Length of the trailing XXH3-64 checksum in bytes.
pub const CHECKSUM_LEN: usize = 8;

/// Largest payload a message may carry: 16 MiB.
pub const MAX_PAYLOAD_LEN: usize = 16 * 1024 * 1024;

/// `MAX_PAYLOAD_LEN` as the wire's u64, for comparing before converting.
const MAX_PAYLOAD_LEN_U64: u64 = MAX_PAYLOAD_LEN as u64;

/// Bytes a message adds around its payload.
const OVERHEAD: usize = HEADER_LEN + CHECKSUM_LEN;

/// Why a message could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The buffer ends before the message does.
    #[error("message truncated: need {needed} bytes, only {available} available")]
    Truncated {
        /// Bytes needed to decode what was asked for (the header, or the whole message).
        needed: usize,
        /// Bytes that were available.
        available: usize,
    },
    /// The first four bytes are not the MXP magic.
    #[error("bad magic {0:#010x} (expected {MAGIC:#010x}): not an MXP message")]
    BadMagic(u32),
    /// The reserved header field is not zero.
    #[error("reserved header field is {0:#06x}, must be zero")]
    ReservedNonZero(u16),
    /// The message type byte names no known type.
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    /// The flags byte has reserved bits (4–7) set; carries the whole byte.
    #[error("unknown flag bits in {0:#04x}: only bits 0-3 are defined")]
    UnknownFlags(u8),
    /// The payload length exceeds [`MAX_PAYLOAD_LEN`].
    #[error("payload length {0} exceeds the maximum of {MAX_PAYLOAD_LEN} bytes")]
    PayloadTooLarge(u64),
    /// The checksum carried by the message does not match its contents.
    #[error("checksum mismatch: message carries {expected:#018x}, contents hash to {actual:#018x}")]
    ChecksumMismatch {
        /// The checksum stored in the message.
        expected: u64,
        /// The checksum computed over the received header and payload.
        actual: u64,
    },
}

impl MessageError {
    /// Every [`kind`](Self::kind), in declaration order: the label values
    /// of the runtime's message-error counter.
    pub const KINDS: [&'static str; 7] = [
        "truncated",
        "bad_magic",
        "reserved_nonzero",
        "unknown_type",
        "unknown_flags",
        "payload_too_large",
        "checksum_mismatch",
    ];

    /// A short stable name for the kind of error (a metric label).
    pub fn kind(&self) -> &'static str {
        let i = match self {
            MessageError::Truncated { .. } => 0,
            MessageError::BadMagic(_) => 1,
            MessageError::ReservedNonZero(_) => 2,
            MessageError::UnknownType(_) => 3,
            MessageError::UnknownFlags(_) => 4,
            MessageError::PayloadTooLarge(_) => 5,
            MessageError::ChecksumMismatch { .. } => 6,
        };
        Self::KINDS[i]
    }
}

/// What a message is, which fixes its priority [`Band`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// An agent announces itself.
    AgentRegister = 0x01,
    /// An agent looks for others.
    AgentDiscover = 0x02,
    /// An agent signals it is alive.
    AgentHeartbeat = 0x03,
    /// A request expecting a [`MessageType::Response`].
    Call = 0x10,
    /// The answer to a [`MessageType::Call`].
    Response = 0x11,
    /// A fire-and-forget notification.
    Event = 0x12,
    /// Opens a stream of chunks.
    StreamOpen = 0x20,
    /// One chunk of a stream.
    StreamChunk = 0x21,
    /// Closes a stream.
    StreamClose = 0x22,
    /// Acknowledges a message sent with [`Flags::REQUIRES_ACK`].
    Ack = 0xF0,
    /// Reports a failure.
    Error = 0xF1,
}

impl MessageType {
    /// Every message type, in wire-code order.
    pub const ALL: [MessageType; 11] = [
        MessageType::AgentRegister,
        MessageType::AgentDiscover,
        MessageType::AgentHeartbeat,
        MessageType::Call,
        MessageType::Response,
        MessageType::Event,
        MessageType::StreamOpen,
        MessageType::StreamChunk,
        MessageType::StreamClose,
        MessageType::Ack,
        MessageType::Error,
    ];

    /// The type with wire code `code`, if any.
    #[inline]
    pub fn from_u8(code: u8) -> Option<Self> {
        Some(match code {
            0x01 => MessageType::AgentRegister,
            0x02 => MessageType::AgentDiscover,
            0x03 => MessageType::AgentHeartbeat,
            0x10 => MessageType::Call,
            0x11 => MessageType::Response,
            0x12 => MessageType::Event,
            0x20 => MessageType::StreamOpen,
            0x21 => MessageType::StreamChunk,
            0x22 => MessageType::StreamClose,
            0xF0 => MessageType::Ack,
            0xF1 => MessageType::Error,
            _ => return None,
        })
    }

    /// The scheduling band messages of this type are sent in.
    #[inline]
    pub fn band(self) -> Band {
        match self {
            MessageType::Call | MessageType::Response => Band::Critical,
            MessageType::AgentRegister
            | MessageType::AgentDiscover
            | MessageType::AgentHeartbeat => Band::Control,
            MessageType::StreamOpen | MessageType::StreamChunk | MessageType::StreamClose => {
                Band::Streaming
            }
            MessageType::Event | MessageType::Ack | MessageType::Error => Band::Background,
        }
    }

    /// Snake-case name, as used in metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::AgentRegister => "agent_register",
            MessageType::AgentDiscover => "agent_discover",
            MessageType::AgentHeartbeat => "agent_heartbeat",
            MessageType::Call => "call",
            MessageType::Response => "response",
            MessageType::Event => "event",
            MessageType::StreamOpen => "stream_open",
            MessageType::StreamChunk => "stream_chunk",
            MessageType::StreamClose => "stream_close",
            MessageType::Ack => "ack",
            MessageType::Error => "error",
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The message flags byte; only the four defined bits can ever be set.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Flags(u8);

impl Flags {
    /// No flags.
    pub const EMPTY: Flags = Flags(0);
    /// The payload is compressed.
    pub const COMPRESSED: Flags = Flags(1 << 0);
    /// The payload is encrypted end to end (beyond the transport's own encryption).
    pub const ENCRYPTED: Flags = Flags(1 << 1);
    /// The receiver must answer with an [`MessageType::Ack`].
    pub const REQUIRES_ACK: Flags = Flags(1 << 2);
    /// The last message of a sequence (e.g. the last chunk of a stream).
    pub const FINAL: Flags = Flags(1 << 3);

    /// Bits that may be set; the rest are reserved and must be zero.
    const DEFINED: u8 = 0x0F;

    /// Defined flags with their names, for `Debug`.
    const NAMES: [(Flags, &'static str); 4] = [
        (Flags::COMPRESSED, "COMPRESSED"),
        (Flags::ENCRYPTED, "ENCRYPTED"),
        (Flags::REQUIRES_ACK, "REQUIRES_ACK"),
        (Flags::FINAL, "FINAL"),
    ];

    /// The raw flags byte.
    #[inline]
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Flags from a raw byte, or `None` if any reserved bit (4–7) is set.
    #[inline]
    pub fn from_bits(bits: u8) -> Option<Flags> {
        if bits & !Self::DEFINED == 0 {
            Some(Flags(bits))
        } else {
            None
        }
    }

    /// Whether every flag in `other` is also set in `self`.
    #[inline]
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no flag is set.
    #[inline]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl BitOr for Flags {
    type Output = Flags;

    #[inline]
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl BitOrAssign for Flags {
    #[inline]
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for Flags {
    /// `REQUIRES_ACK | FINAL`, or `EMPTY` when no flag is set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("EMPTY");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// One MXP message.
///
/// Encoded as a 32-byte header, the payload, and an XXH3-64 checksum of both.
///
/// ```
/// use mxp_proto::message::{Flags, Message, MessageError, MessageType};
///
/// let msg = Message::new(MessageType::Call, "ping")
///     .with_message_id(7)
///     .with_trace_id(42)
///     .with_flags(Flags::REQUIRES_ACK);
/// let wire = msg.to_bytes()?;
/// assert_eq!(wire.len(), msg.encoded_len());
///
/// let (decoded, used) = Message::decode(&wire)?;
/// assert_eq!(decoded, msg);
/// assert_eq!(used, wire.len());
/// # Ok::<(), MessageError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// What the message is.
    pub kind: MessageType,
    /// Per-message flags.
    pub flags: Flags,
    /// Sender-chosen identifier, e.g. to match a response to its call.
    pub message_id: u64,
    /// Identifier shared by all messages of one distributed trace.
    pub trace_id: u64,
    /// The payload, at most [`MAX_PAYLOAD_LEN`] bytes to be encodable.
    pub payload: Bytes,
}

/// A validated header, before the body has been looked at.
#[derive(Debug, Clone, Copy)]
struct Header {
    kind: MessageType,
    flags: Flags,
    message_id: u64,
    trace_id: u64,
    /// Checked against `MAX_PAYLOAD_LEN`, so the sums below cannot overflow.
    payload_len: usize,
}

impl Header {
    /// Header + payload + checksum.
    #[inline]
    fn encoded_len(&self) -> usize {
        self.payload_len + OVERHEAD
    }

    /// Checks that the message this header opens is complete in `buf` and
    /// that its checksum matches; returns where the payload ends.
    #[inline]
    fn check_body(&self, buf: &[u8]) -> Result<usize, MessageError> {
        let body_end = HEADER_LEN + self.payload_len;
        let truncated = || MessageError::Truncated {
            needed: self.encoded_len(),
            available: buf.len(),
        };
        let (body, rest) = buf.split_at_checked(body_end).ok_or_else(truncated)?;
        let stored = rest.first_chunk::<CHECKSUM_LEN>().ok_or_else(truncated)?;
        let expected = u64::from_le_bytes(*stored);
        let actual = xxh3_64(body);
        if expected != actual {
            return Err(MessageError::ChecksumMismatch { expected, actual });
        }
        Ok(body_end)
    }

    /// The message with this header and `payload`.
    #[inline]
    fn into_message(self, payload: Bytes) -> Message {
        Message {
            kind: self.kind,
            flags: self.flags,
            message_id: self.message_id,
            trace_id: self.trace_id,
            payload,
        }
    }
}

/// Reads the little-endian u64 at `AT`; `AT` is a constant below 25.
#[inline(always)]
fn le_u64<const AT: usize>(h: &[u8; HEADER_LEN]) -> u64 {
    u64::from_le_bytes([
        h[AT],
        h[AT + 1],
        h[AT + 2],
        h[AT + 3],
        h[AT + 4],
        h[AT + 5],
        h[AT + 6],
        h[AT + 7],
    ])
}

/// Validates a header in the order magic, reserved, type, flags, length.
#[inline]
fn parse_header(h: &[u8; HEADER_LEN]) -> Result<Header, MessageError> {
    let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if magic != MAGIC {
        return Err(MessageError::BadMagic(magic));
    }
    let reserved = u16::from_le_bytes([h[6], h[7]]);
    if reserved != 0 {
        return Err(MessageError::ReservedNonZero(reserved));
    }
    let kind = MessageType::from_u8(h[4]).ok_or(MessageError::UnknownType(h[4]))?;
    let flags = Flags::from_bits(h[5]).ok_or(MessageError::UnknownFlags(h[5]))?;
    let len = le_u64::<24>(h);
    if len > MAX_PAYLOAD_LEN_U64 {
        return Err(MessageError::PayloadTooLarge(len));
    }
    Ok(Header {
        kind,
        flags,
        message_id: le_u64::<8>(h),
        trace_id: le_u64::<16>(h),
        // Lossless: len <= MAX_PAYLOAD_LEN, which fits any usize >= 32 bits.
        payload_len: len as usize,
    })
}

/// The full encoded length of the message starting at `buf`, from its header.
///
/// Returns `Ok(None)` if `buf` is shorter than a header, so a stream reader
/// knows to wait; otherwise validates the header (magic, reserved field, type,
/// flags, payload length) and returns header + payload + checksum length. The
/// checksum is not checked here: that needs the whole message.
#[inline]
pub fn peek_len(buf: &[u8]) -> Result<Option<usize>, MessageError> {
    match buf.first_chunk::<HEADER_LEN>() {
        None => Ok(None),
        Some(h) => parse_header(h).map(|hdr| Some(hdr.encoded_len())),
    }
}

impl Message {
    /// A message of type `kind` with no flags and zero message and trace ids.
    #[inline]
    pub fn new(kind: MessageType, payload: impl Into<Bytes>) -> Self {
        Message {
            kind,
            flags: Flags::EMPTY,
            message_id: 0,
            trace_id: 0,
            payload: payload.into(),
        }
    }

    /// Sets the message id.
    #[inline]
    #[must_use]
    pub fn with_message_id(mut self, message_id: u64) -> Self {
        self.message_id = message_id;
        self
    }

    /// Sets the trace id.
    #[inline]
    #[must_use]
    pub fn with_trace_id(mut self, trace_id: u64) -> Self {
        self.trace_id = trace_id;
        self
    }

    /// Sets the flags (replacing any already set).
    #[inline]
    #[must_use]
    pub fn with_flags(mut self, flags: Flags) -> Self {
        self.flags = flags;
        self
    }

    /// The scheduling band of this message, from its type.
    #[inline]
    pub fn band(&self) -> Band {
        self.kind.band()
    }

    /// Bytes [`Message::encode`] appends: header + payload + checksum.
    #[inline]
    pub fn encoded_len(&self) -> usize {
        self.payload.len() + OVERHEAD
    }

    /// Appends the encoded message to `out`.
    ///
    /// Fails only if the payload exceeds [`MAX_PAYLOAD_LEN`], in which case
    /// `out` is left untouched.
    #[inline]
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), MessageError> {
        let len = self.payload.len();
        if len > MAX_PAYLOAD_LEN {
            return Err(MessageError::PayloadTooLarge(len as u64));
        }
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4] = self.kind as u8;
        h[5] = self.flags.bits();
        // h[6..8]: reserved, zero.
        h[8..16].copy_from_slice(&self.message_id.to_le_bytes());
        h[16..24].copy_from_slice(&self.trace_id.to_le_bytes());
        h[24..32].copy_from_slice(&(len as u64).to_le_bytes());

        out.reserve(len + OVERHEAD);
        let start = out.len();
        out.extend_from_slice(&h);
        out.extend_from_slice(&self.payload);
        // Header and payload now sit contiguously in `out`: hash them in place.
        let checksum = xxh3_64(&out[start..]);
        out.extend_from_slice(&checksum.to_le_bytes());
        Ok(())
    }

    /// The encoded message in a buffer of its own.
    pub fn to_bytes(&self) -> Result<Bytes, MessageError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out)?;
        Ok(Bytes::from(out))
    }

    /// Decodes one message from the front of `buf`, returning it and the
    /// number of bytes it took. Bytes after the message are ignored.
    ///
    /// Zero-copy: the payload is a slice of `buf`. Checks, in order: header
    /// length, magic, reserved field, type, flags, payload length, message
    /// length, checksum. Never panics, whatever `buf` holds.
    #[inline]
    pub fn decode(buf: &Bytes) -> Result<(Message, usize), MessageError> {
        let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
            return Err(MessageError::Truncated {
                needed: HEADER_LEN,
                available: buf.len(),
            });
        };
        let header = parse_header(h)?;
        let body_end = header.check_body(buf)?;
        // In bounds: check_body established body_end <= buf.len().
        let payload = buf.slice(HEADER_LEN..body_end);
        Ok((header.into_message(payload), header.encoded_len()))
    }
}

/// Reassembles messages from a byte stream delivered in arbitrary chunks.
///
/// A message that lies within one pushed chunk is decoded zero-copy from it;
/// only a message straddling chunks is copied, once, into a buffer of its own.
/// A header announcing an oversized payload is rejected as soon as its 32
/// bytes have arrived, so a peer cannot make the decoder wait for (and the
/// caller buffer) more than one maximum-size message.
///
/// Errors are not recoverable: once the stream is corrupt its framing cannot
/// be trusted, so an error consumes nothing and is returned again by every
/// later call.
#[derive(Debug)]
pub struct MessageDecoder {
    /// Unconsumed received bytes, oldest first; never holds an empty chunk.
    chunks: VecDeque<Bytes>,
    /// Total length of `chunks`.
    buffered: usize,
    /// Largest payload accepted.
    limit: usize,
}

impl Default for MessageDecoder {
    fn default() -> Self {
        Self::with_limit(MAX_PAYLOAD_LEN)
    }
}

impl MessageDecoder {
    /// An empty decoder accepting payloads up to [`MAX_PAYLOAD_LEN`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty decoder that refuses, with
    /// [`MessageError::PayloadTooLarge`], a header announcing a payload
    /// over `max_payload` (itself capped at [`MAX_PAYLOAD_LEN`]).
    pub fn with_limit(max_payload: usize) -> Self {
        MessageDecoder {
            chunks: VecDeque::new(),
            buffered: 0,
            limit: max_payload.min(MAX_PAYLOAD_LEN),
        }
    }

    /// Appends received bytes.
    #[inline]
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.buffered += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// Bytes received but not yet returned as messages.
    #[inline]
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// The next complete message, `Ok(None)` if more bytes are needed, or the
    /// error that makes the stream unusable.
    pub fn next_message(&mut self) -> Result<Option<Message>, MessageError> {
        let Some(header) = self.peek_header()? else {
            return Ok(None);
        };
        if header.payload_len > self.limit {
            return Err(MessageError::PayloadTooLarge(header.payload_len as u64));
        }
        let total = header.encoded_len();
        if self.buffered < total {
            return Ok(None);
        }
        let Some(front) = self.chunks.front_mut() else {
            return Ok(None);
        };
        let mut whole = if front.len() >= total {
            // Zero-copy: the message's bytes are split off the chunk (or are
            // the chunk itself when it holds exactly this message).
            header.check_body(front)?;
            if front.len() == total {
                let whole = std::mem::take(front);
                self.chunks.pop_front();
                whole
            } else {
                front.split_to(total)
            }
        } else {
            let mut joined = BytesMut::with_capacity(total);
            self.for_each_prefix(total, |piece| joined.extend_from_slice(piece));
            header.check_body(&joined)?;
            self.consume(total);
            joined.freeze()
        };
        self.buffered = self.buffered.saturating_sub(total);
        whole.truncate(HEADER_LEN + header.payload_len);
        whole.advance(HEADER_LEN);
        Ok(Some(header.into_message(whole)))
    }

    /// The header of the next message, once its 32 bytes have arrived.
    #[inline]
    fn peek_header(&self) -> Result<Option<Header>, MessageError> {
        if self.buffered < HEADER_LEN {
            return Ok(None);
        }
        let Some(front) = self.chunks.front() else {
            return Ok(None);
        };
        if let Some(h) = front.first_chunk::<HEADER_LEN>() {
            return parse_header(h).map(Some);
        }
        let mut h = [0u8; HEADER_LEN];
        let mut at = 0;
        self.for_each_prefix(HEADER_LEN, |piece| {
            if let Some(dst) = h.get_mut(at..at + piece.len()) {
                dst.copy_from_slice(piece);
            }
            at += piece.len();
        });
        parse_header(&h).map(Some)
    }

    /// Calls `f` on successive pieces of the first `n` buffered bytes.
    fn for_each_prefix(&self, mut n: usize, mut f: impl FnMut(&[u8])) {
        for chunk in &self.chunks {
            if n == 0 {
                break;
            }
            let take = n.min(chunk.len());
            if let Some(piece) = chunk.get(..take) {
                f(piece);
            }
            n -= take;
        }
    }

    /// Drops the first `n` bytes of `chunks` (the caller adjusts `buffered`).
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() <= n {
                n -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_flags() -> impl Iterator<Item = Flags> {
        (0u8..16).map(|b| Flags::from_bits(b).expect("defined bits"))
    }

    fn sample(kind: MessageType, flags: Flags, payload_len: usize) -> Message {
        let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7 + 3) as u8).collect();
        Message::new(kind, payload)
            .with_flags(flags)
            .with_message_id(0xDEAD_BEEF_0000_0001)
            .with_trace_id(0x0123_4567_89AB_CDEF)
    }

    fn valid_wire() -> Vec<u8> {
        let mut out = Vec::new();
        sample(MessageType::Call, Flags::FINAL, 20)
            .encode(&mut out)
            .unwrap();
        out
    }

    fn decode_vec(v: &[u8]) -> Result<(Message, usize), MessageError> {
        Message::decode(&Bytes::copy_from_slice(v))
    }

    #[test]
    fn known_answer() {
        let msg = Message::new(MessageType::Call, &b"hello"[..])
            .with_flags(Flags::REQUIRES_ACK | Flags::FINAL)
            .with_message_id(0x0102_0304_0506_0708)
            .with_trace_id(0x1112_1314_1516_1718);
        // Checksum computed independently with the reference xxHash (Python
        // `xxhash.xxh3_64_intdigest`) over the 37 bytes before it.
        let expected = hex::decode(concat!(
            "3150584d",         // magic 0x4D585031, little-endian
            "10",               // type: Call
            "0c",               // flags: REQUIRES_ACK | FINAL
            "0000",             // reserved
            "0807060504030201", // message id
            "1817161514131211", // trace id
            "0500000000000000", // payload length
            "68656c6c6f",       // "hello"
            "464fd2bfdb7d639f", // XXH3-64 = 0x9f637ddbbfd24f46, little-endian
        ))
        .unwrap();
        let wire = msg.to_bytes().unwrap();
        assert_eq!(hex::encode(&wire), hex::encode(&expected));
        assert_eq!(wire.len(), msg.encoded_len());
        assert_eq!(peek_len(&wire), Ok(Some(expected.len())));
        let (decoded, used) = Message::decode(&wire).unwrap();
        assert_eq!(decoded, msg);
        assert_eq!(used, expected.len());
    }

    #[test]
    fn xxh3_reference_vector() {
        // Published XXH3-64 (seed 0) of the empty input.
        assert_eq!(xxh3_64(b""), 0x2D06_8005_38D3_94C2);
    }

    #[test]
    fn encode_appends() {
        let msg = sample(MessageType::Event, Flags::EMPTY, 3);
        let mut out = b"prefix".to_vec();
        msg.encode(&mut out).unwrap();
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(out[6..], msg.to_bytes().unwrap()[..]);
    }

    #[test]
    fn round_trip_every_type_and_flag_combination() {
        let mut seen = 0;
        for kind in MessageType::ALL {
            for flags in all_flags() {
                for len in [0, 1, 255] {
                    let msg = sample(kind, flags, len);
                    let wire = msg.to_bytes().unwrap();
                    assert_eq!(wire[4], kind as u8);
                    assert_eq!(wire[5], flags.bits());
                    let (decoded, used) = Message::decode(&wire).unwrap();
                    assert_eq!(decoded, msg);
                    assert_eq!(used, wire.len());
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 11 * 16 * 3);
    }

    #[test]
    fn decode_ignores_trailing_bytes_and_is_zero_copy() {
        let msg = sample(MessageType::StreamChunk, Flags::EMPTY, 64);
        let mut out = Vec::new();
        msg.encode(&mut out).unwrap();
        out.extend_from_slice(b"next message");
        let buf = Bytes::from(out);
        let (decoded, used) = Message::decode(&buf).unwrap();
        assert_eq!(used, msg.encoded_len());
        assert_eq!(decoded, msg);
        assert_eq!(decoded.payload.as_ptr(), buf[HEADER_LEN..].as_ptr());
    }

    #[test]
    fn type_codes_names_and_bands() {
        for code in 0..=u8::MAX {
            match MessageType::from_u8(code) {
                Some(kind) => assert_eq!(kind as u8, code),
                None => assert!(!MessageType::ALL.iter().any(|k| *k as u8 == code)),
            }
        }
        for kind in MessageType::ALL {
            assert_eq!(MessageType::from_u8(kind as u8), Some(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(MessageType::AgentRegister.as_str(), "agent_register");
        assert_eq!(MessageType::StreamClose.as_str(), "stream_close");
        use MessageType as T;
        let bands = [
            (T::Call, Band::Critical),
            (T::Response, Band::Critical),
            (T::AgentRegister, Band::Control),
            (T::AgentDiscover, Band::Control),
            (T::AgentHeartbeat, Band::Control),
            (T::StreamOpen, Band::Streaming),
            (T::StreamChunk, Band::Streaming),
            (T::StreamClose, Band::Streaming),
            (T::Event, Band::Background),
            (T::Ack, Band::Background),
            (T::Error, Band::Background),
        ];
        for (kind, band) in bands {
            assert_eq!(kind.band(), band);
            assert_eq!(Message::new(kind, Bytes::new()).band(), band);
        }
    }

    #[test]
    fn flags_api() {
        let f = Flags::REQUIRES_ACK | Flags::FINAL;
        assert_eq!(f.bits(), 0x0C);
        assert!(f.contains(Flags::FINAL));
        assert!(f.contains(Flags::EMPTY));
        assert!(!f.contains(Flags::COMPRESSED | Flags::FINAL));
        let mut g = Flags::EMPTY;
        assert!(g.is_empty());
        g |= Flags::COMPRESSED;
        g |= Flags::ENCRYPTED;
        assert_eq!(g.bits(), 0x03);
        assert_eq!(Flags::default(), Flags::EMPTY);
        assert_eq!(format!("{f:?}"), "REQUIRES_ACK | FINAL");
        assert_eq!(format!("{:?}", Flags::EMPTY), "EMPTY");
        assert_eq!(
            format!("{:?}", Flags::from_bits(0x0F).unwrap()),
            "COMPRESSED | ENCRYPTED | REQUIRES_ACK | FINAL"
        );
        for bits in 0..=u8::MAX {
            assert_eq!(Flags::from_bits(bits).is_some(), bits < 16, "{bits:#x}");
        }
    }

    #[test]
    fn error_bad_magic() {
        let mut w = valid_wire();
        w[0] = 0x32;
        assert_eq!(decode_vec(&w), Err(MessageError::BadMagic(0x4D58_5032)));
        // A big-endian magic is rejected too.
        w[..4].copy_from_slice(&MAGIC.to_be_bytes());
        assert_eq!(decode_vec(&w), Err(MessageError::BadMagic(0x3150_584D)));
    }

    #[test]
    fn error_reserved_non_zero() {
        let mut w = valid_wire();
        w[7] = 0x80;
        assert_eq!(decode_vec(&w), Err(MessageError::ReservedNonZero(0x8000)));
    }

    #[test]
    fn error_unknown_type() {
        let mut w = valid_wire();
        for code in [0x00, 0x04, 0x13, 0x23, 0xEF, 0xF2, 0xFF] {
            w[4] = code;
            assert_eq!(decode_vec(&w), Err(MessageError::UnknownType(code)));
        }
    }

    #[test]
    fn error_unknown_flags() {
        let mut w = valid_wire();
        for bits in [0x10, 0x28, 0xFF] {
            w[5] = bits;
            assert_eq!(decode_vec(&w), Err(MessageError::UnknownFlags(bits)));
        }
    }

    #[test]
    fn error_payload_too_large() {
        let mut w = valid_wire();
        for len in [MAX_PAYLOAD_LEN_U64 + 1, u64::MAX, 1 << 32, 1 << 63] {
            w[24..32].copy_from_slice(&len.to_le_bytes());
            assert_eq!(decode_vec(&w), Err(MessageError::PayloadTooLarge(len)));
            assert_eq!(peek_len(&w), Err(MessageError::PayloadTooLarge(len)));
        }
        // Exactly the maximum is a valid header; the body is just missing.
        w[24..32].copy_from_slice(&MAX_PAYLOAD_LEN_U64.to_le_bytes());
        assert_eq!(peek_len(&w), Ok(Some(MAX_PAYLOAD_LEN + OVERHEAD)));
        assert_eq!(
            decode_vec(&w),
            Err(MessageError::Truncated {
                needed: MAX_PAYLOAD_LEN + OVERHEAD,
                available: w.len()
            })
        );
    }

    #[test]
    fn encode_rejects_oversized_payload() {
        let msg = Message::new(MessageType::StreamChunk, vec![0u8; MAX_PAYLOAD_LEN + 1]);
        let mut out = vec![1, 2, 3];
        assert_eq!(
            msg.encode(&mut out),
            Err(MessageError::PayloadTooLarge(MAX_PAYLOAD_LEN as u64 + 1))
        );
        assert_eq!(out, [1, 2, 3]);
        assert!(msg.to_bytes().is_err());
        // The maximum itself encodes and decodes.
        let msg = Message::new(MessageType::StreamChunk, vec![0xAB; MAX_PAYLOAD_LEN]);
        let wire = msg.to_bytes().unwrap();
        assert_eq!(Message::decode(&wire).unwrap().0, msg);
    }

    #[test]
    fn error_checksum_mismatch() {
        let w = valid_wire();
        let stored = u64::from_le_bytes(w[w.len() - 8..].try_into().unwrap());
        let mut bad = w.clone();
        bad[HEADER_LEN + 3] ^= 0x01;
        let actual = xxh3_64(&bad[..bad.len() - 8]);
        assert_eq!(
            decode_vec(&bad),
            Err(MessageError::ChecksumMismatch {
                expected: stored,
                actual
            })
        );
        // Corrupting the checksum itself is caught too.
        let mut bad = w.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x80;
        assert!(matches!(
            decode_vec(&bad),
            Err(MessageError::ChecksumMismatch { .. })
        ));
        // As is a changed id, which only the checksum covers.
        let mut bad = w;
        bad[9] ^= 0x01;
        assert!(matches!(
            decode_vec(&bad),
            Err(MessageError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn validation_order() {
        // Everything wrong at once; fix one field at a time and watch the
        // reported error move down the list.
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
        h[4] = 0x77;
        h[5] = 0xF0;
        h[6] = 1;
        h[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        let short = &h[..HEADER_LEN - 1];
        assert_eq!(
            decode_vec(short),
            Err(MessageError::Truncated {
                needed: HEADER_LEN,
                available: HEADER_LEN - 1
            })
        );
        assert_eq!(peek_len(short), Ok(None));
        assert_eq!(decode_vec(&h), Err(MessageError::BadMagic(0xFFFF_FFFF)));
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        assert_eq!(decode_vec(&h), Err(MessageError::ReservedNonZero(1)));
        h[6] = 0;
        assert_eq!(decode_vec(&h), Err(MessageError::UnknownType(0x77)));
        h[4] = MessageType::Ack as u8;
        assert_eq!(decode_vec(&h), Err(MessageError::UnknownFlags(0xF0)));
        h[5] = 0;
        assert_eq!(decode_vec(&h), Err(MessageError::PayloadTooLarge(u64::MAX)));
        h[24..32].copy_from_slice(&4u64.to_le_bytes());
        let mut w = h.to_vec();
        w.extend_from_slice(&[1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            decode_vec(&w),
            Err(MessageError::Truncated {
                needed: 44,
                available: 43
            })
        );
        w.push(0);
        assert!(matches!(
            decode_vec(&w),
            Err(MessageError::ChecksumMismatch { expected: 0, .. })
        ));
    }

    #[test]
    fn truncation_at_every_length() {
        let wire = sample(MessageType::Response, Flags::ENCRYPTED, 50)
            .to_bytes()
            .unwrap();
        for n in 0..wire.len() {
            let needed = if n < HEADER_LEN {
                HEADER_LEN
            } else {
                wire.len()
            };
            assert_eq!(
                Message::decode(&wire.slice(..n)),
                Err(MessageError::Truncated {
                    needed,
                    available: n
                }),
                "at {n}"
            );
            let peeked = peek_len(&wire[..n]).unwrap();
            assert_eq!(peeked, (n >= HEADER_LEN).then_some(wire.len()));
        }
    }

    #[test]
    fn error_messages_name_the_problem() {
        let cases = [
            (
                MessageError::Truncated {
                    needed: 40,
                    available: 3,
                },
                "truncated",
            ),
            (MessageError::BadMagic(0x1234), "magic"),
            (MessageError::ReservedNonZero(1), "reserved"),
            (MessageError::UnknownType(0x99), "0x99"),
            (MessageError::UnknownFlags(0x80), "flag"),
            (MessageError::PayloadTooLarge(1 << 40), "16777216"),
            (
                MessageError::ChecksumMismatch {
                    expected: 1,
                    actual: 2,
                },
                "checksum",
            ),
        ];
        for (err, needle) in cases {
            let text = err.to_string();
            assert!(text.contains(needle), "{text:?} lacks {needle:?}");
        }
    }

    /// Three messages, one of them empty, back to back.
    fn stream() -> (Vec<Message>, Vec<u8>) {
        let msgs = vec![
            sample(MessageType::Call, Flags::REQUIRES_ACK, 10),
            sample(MessageType::Ack, Flags::EMPTY, 0),
            sample(MessageType::StreamChunk, Flags::FINAL, 70),
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            m.encode(&mut wire).unwrap();
        }
        (msgs, wire)
    }

    fn drain(dec: &mut MessageDecoder) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(m) = dec.next_message().unwrap() {
            out.push(m);
        }
        out
    }

    #[test]
    fn decoder_refuses_a_header_over_its_limit_before_the_payload_arrives() {
        let mut d = MessageDecoder::with_limit(1000);
        let at_limit = Message::new(MessageType::Call, vec![1u8; 1000]);
        d.push(at_limit.to_bytes().unwrap());
        assert_eq!(d.next_message().unwrap(), Some(at_limit));
        let over = Message::new(MessageType::Call, vec![1u8; 1001])
            .to_bytes()
            .unwrap();
        // The header alone is enough to refuse it, and the refusal sticks.
        d.push(over.slice(..HEADER_LEN));
        assert_eq!(d.next_message(), Err(MessageError::PayloadTooLarge(1001)));
        assert_eq!(d.next_message(), Err(MessageError::PayloadTooLarge(1001)));
        // The format's ceiling caps any limit.
        assert_eq!(
            MessageDecoder::with_limit(usize::MAX).limit,
            MAX_PAYLOAD_LEN
        );
    }

    #[test]
    fn decoder_split_at_every_point() {
        let (msgs, wire) = stream();
        for cut in 0..=wire.len() {
            let mut dec = MessageDecoder::new();
            let mut got = Vec::new();
            dec.push(Bytes::copy_from_slice(&wire[..cut]));
            got.extend(drain(&mut dec));
            dec.push(Bytes::copy_from_slice(&wire[cut..]));
            got.extend(drain(&mut dec));
            assert_eq!(got, msgs, "cut at {cut}");
            assert_eq!(dec.buffered(), 0);
        }
    }

    #[test]
    fn decoder_split_at_every_pair_of_points() {
        let (msgs, wire) = stream();
        for a in 0..=wire.len() {
            for b in a..=wire.len() {
                let mut dec = MessageDecoder::default();
                let mut got = Vec::new();
                for piece in [&wire[..a], &wire[a..b], &wire[b..]] {
                    dec.push(Bytes::copy_from_slice(piece));
                    got.extend(drain(&mut dec));
                }
                assert_eq!(got, msgs, "cuts at {a}, {b}");
                assert_eq!(dec.buffered(), 0);
            }
        }
    }

    #[test]
    fn decoder_byte_at_a_time() {
        let (msgs, wire) = stream();
        let mut dec = MessageDecoder::new();
        let mut got = Vec::new();
        for (i, byte) in wire.iter().enumerate() {
            dec.push(Bytes::copy_from_slice(&[*byte]));
            got.extend(drain(&mut dec));
            let consumed: usize = got.iter().map(Message::encoded_len).sum();
            assert_eq!(dec.buffered(), i + 1 - consumed);
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn decoder_several_messages_in_one_chunk_zero_copy() {
        let (msgs, wire) = stream();
        let chunk = Bytes::from(wire);
        let range = chunk.as_ptr_range();
        let mut dec = MessageDecoder::new();
        dec.push(chunk.clone());
        assert_eq!(dec.buffered(), chunk.len());
        let got = drain(&mut dec);
        assert_eq!(got, msgs);
        assert_eq!(dec.buffered(), 0);
        for m in got.iter().filter(|m| !m.payload.is_empty()) {
            assert!(range.contains(&m.payload.as_ptr()), "payload was copied");
        }
    }

    #[test]
    fn decoder_partial_chunk_then_rest() {
        // First chunk holds message 1 and the start of message 2: message 1
        // stays zero-copy, message 2 is reassembled.
        let (msgs, wire) = stream();
        let split = msgs[0].encoded_len() + 5;
        let first = Bytes::copy_from_slice(&wire[..split]);
        let range = first.as_ptr_range();
        let mut dec = MessageDecoder::new();
        dec.push(first);
        dec.push(Bytes::new());
        let m1 = dec.next_message().unwrap().unwrap();
        assert!(range.contains(&m1.payload.as_ptr()));
        assert_eq!(dec.next_message(), Ok(None));
        assert_eq!(dec.buffered(), 5);
        dec.push(Bytes::copy_from_slice(&wire[split..]));
        let rest = drain(&mut dec);
        assert_eq!([vec![m1], rest].concat(), msgs);
    }

    #[test]
    fn decoder_rejects_oversized_header_immediately() {
        let mut h = valid_wire()[..HEADER_LEN].to_vec();
        h[24..32].copy_from_slice(&(MAX_PAYLOAD_LEN_U64 + 1).to_le_bytes());
        let mut dec = MessageDecoder::new();
        // Header split across chunks, and nothing of the body yet.
        dec.push(Bytes::copy_from_slice(&h[..10]));
        assert_eq!(dec.next_message(), Ok(None));
        dec.push(Bytes::copy_from_slice(&h[10..]));
        let err = Err(MessageError::PayloadTooLarge(MAX_PAYLOAD_LEN_U64 + 1));
        assert_eq!(dec.next_message(), err);
        // Sticky: the stream stays broken.
        assert_eq!(dec.next_message(), err);
        assert_eq!(dec.buffered(), HEADER_LEN);
    }

    #[test]
    fn decoder_reports_corruption() {
        let (_, mut wire) = stream();
        wire[HEADER_LEN + 2] ^= 0xFF;
        // Whole message in one chunk, and straddling two.
        for cut in [wire.len(), HEADER_LEN + 5] {
            let mut dec = MessageDecoder::new();
            dec.push(Bytes::copy_from_slice(&wire[..cut]));
            dec.push(Bytes::copy_from_slice(&wire[cut..]));
            for _ in 0..2 {
                assert!(matches!(
                    dec.next_message(),
                    Err(MessageError::ChecksumMismatch { .. })
                ));
                assert_eq!(dec.buffered(), wire.len());
            }
        }
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        (
            prop::sample::select(MessageType::ALL.to_vec()),
            0u8..16,
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..4096),
        )
            .prop_map(|(kind, bits, id, trace, payload)| {
                Message::new(kind, payload)
                    .with_flags(Flags::from_bits(bits).unwrap())
                    .with_message_id(id)
                    .with_trace_id(trace)
            })
    }

    proptest! {
        #[test]
        fn prop_round_trip(msg in arb_message()) {
            let wire = msg.to_bytes().unwrap();
            prop_assert_eq!(wire.len(), msg.encoded_len());
            prop_assert_eq!(peek_len(&wire), Ok(Some(wire.len())));
            let (decoded, used) = Message::decode(&wire).unwrap();
            prop_assert_eq!(used, wire.len());
            prop_assert_eq!(decoded, msg);
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
            let buf = Bytes::from(data);
            let _ = Message::decode(&buf);
            let _ = peek_len(&buf);
            let mut dec = MessageDecoder::new();
            dec.push(buf);
            let _ = dec.next_message();
        }

        #[test]
        fn prop_arbitrary_after_magic_never_panics(
            header in prop::array::uniform28(any::<u8>()),
            tail in prop::collection::vec(any::<u8>(), 0..512),
            cut in any::<prop::sample::Index>(),
        ) {
            // Past the magic check, so every later field sees random values.
            let mut data = MAGIC.to_le_bytes().to_vec();
            data.extend_from_slice(&header);
            data.extend_from_slice(&tail);
            let buf = Bytes::from(data);
            if let Ok((m, used)) = Message::decode(&buf) {
                prop_assert_eq!(used, m.encoded_len());
            }
            let _ = peek_len(&buf);
            let at = cut.index(buf.len() + 1);
            let mut dec = MessageDecoder::new();
            dec.push(buf.slice(..at));
            dec.push(buf.slice(at..));
            while let Ok(Some(_)) = dec.next_message() {}
        }

        #[test]
        fn prop_flipped_byte_is_detected(
            msg in arb_message(),
            pos in any::<prop::sample::Index>(),
            xor in 1u8..=255,
        ) {
            let mut wire = msg.to_bytes().unwrap().to_vec();
            let i = pos.index(wire.len());
            wire[i] ^= xor;
            let buf = Bytes::from(wire);
            prop_assert!(Message::decode(&buf).is_err(), "flip at {} undetected", i);
            let mut dec = MessageDecoder::new();
            dec.push(buf);
            prop_assert!(!matches!(dec.next_message(), Ok(Some(_))));
        }

        #[test]
        fn prop_decoder_arbitrary_chunking(
            msgs in prop::collection::vec(arb_message(), 1..5),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut wire = Vec::new();
            for m in &msgs {
                m.encode(&mut wire).unwrap();
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            points.push(0);
            points.push(wire.len());
            points.sort_unstable();
            let mut dec = MessageDecoder::new();
            let mut got = Vec::new();
            for pair in points.windows(2) {
                dec.push(Bytes::copy_from_slice(&wire[pair[0]..pair[1]]));
                while let Some(m) = dec.next_message().unwrap() {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, msgs);
            prop_assert_eq!(dec.buffered(), 0);
        }
    }
}
