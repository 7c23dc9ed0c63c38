//! Frames: the units of meaning inside a decrypted MXP packet.
//!
//! A packet payload is a sequence of frames, each a varint frame type followed
//! by that type's fields (varints unless stated otherwise). The frames are
//! deliberately shaped like QUIC's (RFC 9000 §19) — same type numbers, same
//! field order, same ACK range arithmetic — so the well-understood QUIC
//! semantics for flow control, stream lifecycle, acknowledgement and path
//! validation carry over unchanged, and so does the reviewer's intuition.
//!
//! What differs from QUIC:
//!
//! * **ACK delay is in microseconds.** There is no `ack_delay_exponent`
//!   transport parameter to negotiate or get wrong.
//! * **`GOAWAY` (0x1e)** tells the peer this connection is being drained:
//!   finish what is in flight, open new work elsewhere (the rollout's
//!   carrier switch).
//! * **`IMMEDIATE_ACK` (0x1f)** asks the receiver to acknowledge at once
//!   instead of waiting for its delayed-ACK timer; latency-critical traffic
//!   sets it so loss is detected a round trip sooner.
//! * **There is no STREAM-open frame.** The first STREAM frame a peer sends on
//!   a stream opens it; an empty STREAM frame at offset 0 opens a stream
//!   without data. (QUIC works the same way; this note is here because people
//!   keep asking.)
//! * There are no long-header-only frames (CRYPTO, NEW_TOKEN, connection-id
//!   management): the handshake and addressing live outside frames.
//!
//! Parsing is zero-copy: stream data, datagram payloads and close reasons are
//! [`Bytes::slice`]s of the packet payload handed to [`Iter::new`]. It never
//! panics: every malformed input is a typed [`FrameError`]. Frame types must
//! use their shortest varint encoding (RFC 9000 §12.4 permits insisting), so
//! every frame has exactly one type byte on the wire.

use std::iter::FusedIterator;
use std::ops::{Range, RangeInclusive};

use bytes::Bytes;

use crate::coding::{Reader, UnexpectedEnd, VARINT_MAX, put_varint, varint_len};
use crate::{Dir, StreamId};

/// Frame type numbers, as they appear on the wire.
pub mod types {
    /// A run of zero bytes, to pad a packet to a size.
    pub const PADDING: u64 = 0x00;
    /// Elicits an acknowledgement; keeps paths and NAT bindings alive.
    pub const PING: u64 = 0x01;
    /// Acknowledges received packets.
    pub const ACK: u64 = 0x02;
    /// Abandons sending on a stream.
    pub const RESET_STREAM: u64 = 0x04;
    /// Asks the peer to stop sending on a stream.
    pub const STOP_SENDING: u64 = 0x05;
    /// Lowest STREAM type; the low three bits are [`STREAM_OFF`],
    /// [`STREAM_LEN`] and [`STREAM_FIN`].
    pub const STREAM: u64 = 0x08;
    /// Highest STREAM type (all flag bits set).
    pub const STREAM_MAX: u64 = 0x0f;
    /// STREAM flag: an offset field is present (absent means offset 0).
    pub const STREAM_OFF: u64 = 0x04;
    /// STREAM flag: a length field is present (absent means the data runs to
    /// the end of the packet).
    pub const STREAM_LEN: u64 = 0x02;
    /// STREAM flag: this frame ends the stream.
    pub const STREAM_FIN: u64 = 0x01;
    /// Raises the connection-wide flow-control limit.
    pub const MAX_DATA: u64 = 0x10;
    /// Raises one stream's flow-control limit.
    pub const MAX_STREAM_DATA: u64 = 0x11;
    /// Raises the number of bidirectional streams the peer may open.
    pub const MAX_STREAMS_BIDI: u64 = 0x12;
    /// Raises the number of unidirectional streams the peer may open.
    pub const MAX_STREAMS_UNI: u64 = 0x13;
    /// The sender is blocked by the connection-wide flow-control limit.
    pub const DATA_BLOCKED: u64 = 0x14;
    /// The sender is blocked by a stream's flow-control limit.
    pub const STREAM_DATA_BLOCKED: u64 = 0x15;
    /// The sender wants to open a bidirectional stream but may not.
    pub const STREAMS_BLOCKED_BIDI: u64 = 0x16;
    /// The sender wants to open a unidirectional stream but may not.
    pub const STREAMS_BLOCKED_UNI: u64 = 0x17;
    /// Probes a path; the peer must echo the 8 bytes in a PATH_RESPONSE.
    pub const PATH_CHALLENGE: u64 = 0x1a;
    /// Echoes a PATH_CHALLENGE.
    pub const PATH_RESPONSE: u64 = 0x1b;
    /// Closes the connection because of a transport-level error.
    pub const CONNECTION_CLOSE: u64 = 0x1c;
    /// Closes the connection at the application's request.
    pub const APPLICATION_CLOSE: u64 = 0x1d;
    /// Asks the receiver to acknowledge immediately (MXP extension).
    pub const IMMEDIATE_ACK: u64 = 0x1f;
    /// The sender is draining the connection: no new work on it.
    pub const GOAWAY: u64 = 0x1e;
    /// Unreliable datagram running to the end of the packet.
    pub const DATAGRAM: u64 = 0x30;
    /// Unreliable datagram with an explicit length.
    pub const DATAGRAM_WITH_LEN: u64 = 0x31;
}

/// Most ranges one ACK frame may carry (the first range included).
///
/// Bounds the work and memory a single packet can make the receiver spend;
/// [`Ack::encode_ranges`] writes only the highest `MAX_ACK_RANGES` ranges, so
/// a conforming sender never exceeds it.
pub const MAX_ACK_RANGES: usize = 256;

// The range-count back-patch in `Ack::encode_ranges` writes at most a 2-byte
// varint.
const _: () = assert!(MAX_ACK_RANGES <= 1 << 14);

/// Largest stream count MAX_STREAMS / STREAMS_BLOCKED may carry (2^60): a
/// larger count could not be turned into a stream id below 2^62.
pub const MAX_STREAM_COUNT: u64 = 1 << 60;

/// Human-readable name of a frame type, for errors and logs.
pub fn frame_type_name(ty: u64) -> &'static str {
    match ty {
        types::PADDING => "PADDING",
        types::PING => "PING",
        types::ACK => "ACK",
        types::RESET_STREAM => "RESET_STREAM",
        types::STOP_SENDING => "STOP_SENDING",
        types::STREAM..=types::STREAM_MAX => "STREAM",
        types::MAX_DATA => "MAX_DATA",
        types::MAX_STREAM_DATA => "MAX_STREAM_DATA",
        types::MAX_STREAMS_BIDI | types::MAX_STREAMS_UNI => "MAX_STREAMS",
        types::DATA_BLOCKED => "DATA_BLOCKED",
        types::STREAM_DATA_BLOCKED => "STREAM_DATA_BLOCKED",
        types::STREAMS_BLOCKED_BIDI | types::STREAMS_BLOCKED_UNI => "STREAMS_BLOCKED",
        types::PATH_CHALLENGE => "PATH_CHALLENGE",
        types::PATH_RESPONSE => "PATH_RESPONSE",
        types::CONNECTION_CLOSE => "CONNECTION_CLOSE",
        types::APPLICATION_CLOSE => "APPLICATION_CLOSE",
        types::IMMEDIATE_ACK => "IMMEDIATE_ACK",
        types::GOAWAY => "GOAWAY",
        types::DATAGRAM | types::DATAGRAM_WITH_LEN => "DATAGRAM",
        _ => "unknown",
    }
}

/// Why a packet payload could not be parsed into frames.
///
/// Any of these means the peer sent something no conforming implementation
/// would; the connection should be closed with a frame-encoding error naming
/// [`FrameError::frame_type`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame type is not one MXP defines. A frame type varint cut off by
    /// the end of the packet is reported here too (with the bits that were
    /// present): every MXP frame type fits in one byte, so it cannot have been
    /// a known one.
    #[error("unknown frame type {0:#x}")]
    UnknownType(u64),
    /// The packet ended in the middle of a frame.
    #[error("{} frame truncated", frame_type_name(*.frame_type))]
    Truncated {
        /// Type of the frame being parsed.
        frame_type: u64,
    },
    /// The frame is complete but its contents break a rule.
    #[error("invalid {} frame: {reason}", frame_type_name(*.frame_type))]
    Invalid {
        /// Type of the frame being parsed.
        frame_type: u64,
        /// Which rule was broken.
        reason: &'static str,
    },
}

impl FrameError {
    /// The type of the offending frame, for the CONNECTION_CLOSE it provokes.
    pub fn frame_type(&self) -> u64 {
        match *self {
            FrameError::UnknownType(ty) => ty,
            FrameError::Truncated { frame_type } | FrameError::Invalid { frame_type, .. } => {
                frame_type
            }
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// That many zero bytes (parsing merges a whole run into one frame).
    Padding(usize),
    /// Asks for an acknowledgement and nothing else.
    Ping,
    /// Acknowledges packets.
    Ack(Ack),
    /// The sender abandons a stream's send side.
    ResetStream(ResetStream),
    /// The sender asks the peer to stop sending on a stream.
    StopSending(StopSending),
    /// Stream data; the first one on a stream also opens it.
    Stream(Stream),
    /// Connection-wide flow-control limit, in bytes.
    MaxData(u64),
    /// Flow-control limit for one stream, in bytes.
    MaxStreamData {
        /// The stream the limit applies to.
        id: StreamId,
        /// Highest offset the peer may send up to.
        max: u64,
    },
    /// How many streams of a direction the peer may open in total.
    MaxStreams {
        /// Which kind of stream.
        dir: Dir,
        /// Cumulative count, at most [`MAX_STREAM_COUNT`].
        count: u64,
    },
    /// The sender has data but hit the connection-wide limit.
    DataBlocked(u64),
    /// The sender has data but hit a stream's limit.
    StreamDataBlocked {
        /// The blocked stream.
        id: StreamId,
        /// The limit it is blocked at.
        limit: u64,
    },
    /// The sender wants to open a stream but hit the stream-count limit.
    StreamsBlocked {
        /// Which kind of stream.
        dir: Dir,
        /// The count it is blocked at, at most [`MAX_STREAM_COUNT`].
        limit: u64,
    },
    /// Path validation probe.
    PathChallenge([u8; 8]),
    /// Path validation answer echoing the challenge.
    PathResponse([u8; 8]),
    /// The connection is being closed.
    Close(Close),
    /// Acknowledge this packet now rather than after the ACK delay.
    ImmediateAck,
    /// The connection is draining: finish in-flight work, open nothing new.
    GoAway,
    /// An unreliable, unordered message.
    Datagram(Bytes),
}

impl Frame {
    /// Whether receiving this frame obliges the receiver to send an ACK.
    ///
    /// ACKs must not elicit ACKs (or two idle peers would ping-pong forever),
    /// padding carries nothing, and a closing connection sends no more ACKs.
    pub fn is_ack_eliciting(&self) -> bool {
        !matches!(self, Frame::Padding(_) | Frame::Ack(_) | Frame::Close(_))
    }

    /// The wire type [`Frame::encode`] writes for this frame.
    pub fn frame_type(&self) -> u64 {
        match self {
            Frame::Padding(_) => types::PADDING,
            Frame::Ping => types::PING,
            Frame::Ack(_) => types::ACK,
            Frame::ResetStream(_) => types::RESET_STREAM,
            Frame::StopSending(_) => types::STOP_SENDING,
            Frame::Stream(s) => stream_type(s.offset, s.fin, true),
            Frame::MaxData(_) => types::MAX_DATA,
            Frame::MaxStreamData { .. } => types::MAX_STREAM_DATA,
            Frame::MaxStreams { dir: Dir::Bi, .. } => types::MAX_STREAMS_BIDI,
            Frame::MaxStreams { dir: Dir::Uni, .. } => types::MAX_STREAMS_UNI,
            Frame::DataBlocked(_) => types::DATA_BLOCKED,
            Frame::StreamDataBlocked { .. } => types::STREAM_DATA_BLOCKED,
            Frame::StreamsBlocked { dir: Dir::Bi, .. } => types::STREAMS_BLOCKED_BIDI,
            Frame::StreamsBlocked { dir: Dir::Uni, .. } => types::STREAMS_BLOCKED_UNI,
            Frame::PathChallenge(_) => types::PATH_CHALLENGE,
            Frame::PathResponse(_) => types::PATH_RESPONSE,
            Frame::Close(c) => c.kind.frame_type(),
            Frame::ImmediateAck => types::IMMEDIATE_ACK,
            Frame::GoAway => types::GOAWAY,
            Frame::Datagram(_) => types::DATAGRAM_WITH_LEN,
        }
    }

    /// Appends the wire encoding of this frame.
    ///
    /// STREAM and DATAGRAM frames are always written with an explicit length,
    /// so the result can be followed by further frames; a packet builder that
    /// wants the shorter run-to-end form for its last frame uses
    /// [`encode_stream_header`] / [`encode_datagram_header`] instead.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Padding(n) => out.resize(out.len() + n, 0),
            Frame::Ping | Frame::ImmediateAck | Frame::GoAway => put_varint(out, self.frame_type()),
            Frame::Ack(ack) => {
                debug_assert_eq!(
                    ack.ranges.first().map(|r| *r.end()),
                    Some(ack.largest),
                    "the first ACK range must end at `largest`"
                );
                Ack::encode_ranges(ack.half_open(), ack.delay_us, out);
            }
            Frame::ResetStream(r) => {
                put_varint(out, types::RESET_STREAM);
                put_varint(out, r.id.0);
                put_varint(out, r.error_code);
                put_varint(out, r.final_size);
            }
            Frame::StopSending(s) => {
                put_varint(out, types::STOP_SENDING);
                put_varint(out, s.id.0);
                put_varint(out, s.error_code);
            }
            Frame::Stream(s) => {
                encode_stream_header(s.id, s.offset, s.data.len(), s.fin, true, out);
                out.extend_from_slice(&s.data);
            }
            Frame::MaxData(v) | Frame::DataBlocked(v) => {
                put_varint(out, self.frame_type());
                put_varint(out, *v);
            }
            Frame::MaxStreamData { id, max: v } | Frame::StreamDataBlocked { id, limit: v } => {
                put_varint(out, self.frame_type());
                put_varint(out, id.0);
                put_varint(out, *v);
            }
            Frame::MaxStreams { count: v, .. } | Frame::StreamsBlocked { limit: v, .. } => {
                debug_assert!(*v <= MAX_STREAM_COUNT, "stream count above 2^60");
                put_varint(out, self.frame_type());
                put_varint(out, *v);
            }
            Frame::PathChallenge(data) | Frame::PathResponse(data) => {
                put_varint(out, self.frame_type());
                out.extend_from_slice(data);
            }
            Frame::Close(c) => {
                put_varint(out, c.kind.frame_type());
                put_varint(out, c.error_code);
                if let CloseKind::Transport { frame_type } = c.kind {
                    put_varint(out, frame_type);
                }
                put_varint(out, c.reason.len() as u64);
                out.extend_from_slice(&c.reason);
            }
            Frame::Datagram(data) => {
                encode_datagram_header(data.len(), true, out);
                out.extend_from_slice(data);
            }
        }
    }

    /// Exactly how many bytes [`Frame::encode`] appends, so a packet builder
    /// can check a frame fits before writing it.
    pub fn encoded_len(&self) -> usize {
        match self {
            Frame::Padding(n) => *n,
            Frame::Ping | Frame::ImmediateAck | Frame::GoAway => 1,
            Frame::Ack(ack) => Ack::ranges_encoded_len(ack.half_open(), ack.delay_us),
            Frame::ResetStream(r) => {
                1 + varint_len(r.id.0) + varint_len(r.error_code) + varint_len(r.final_size)
            }
            Frame::StopSending(s) => 1 + varint_len(s.id.0) + varint_len(s.error_code),
            Frame::Stream(s) => {
                stream_header_len(s.id, s.offset, s.data.len(), true) + s.data.len()
            }
            Frame::MaxData(v)
            | Frame::DataBlocked(v)
            | Frame::MaxStreams { count: v, .. }
            | Frame::StreamsBlocked { limit: v, .. } => 1 + varint_len(*v),
            Frame::MaxStreamData { id, max: v } | Frame::StreamDataBlocked { id, limit: v } => {
                1 + varint_len(id.0) + varint_len(*v)
            }
            Frame::PathChallenge(_) | Frame::PathResponse(_) => 1 + 8,
            Frame::Close(c) => {
                let frame_type = match c.kind {
                    CloseKind::Transport { frame_type } => varint_len(frame_type),
                    CloseKind::Application => 0,
                };
                1 + varint_len(c.error_code)
                    + frame_type
                    + varint_len(c.reason.len() as u64)
                    + c.reason.len()
            }
            Frame::Datagram(data) => datagram_header_len(data.len(), true) + data.len(),
        }
    }
}

/// Acknowledgement of received packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Highest packet number acknowledged.
    pub largest: u64,
    /// How long the receiver held the ACK back after receiving `largest`, in
    /// microseconds, so the sender can subtract it from its RTT sample.
    pub delay_us: u64,
    /// Acknowledged packet numbers, highest range first; the first range
    /// contains `largest`. Ranges never overlap or touch.
    pub ranges: Vec<RangeInclusive<u64>>,
}

impl Ack {
    /// Appends an ACK frame acknowledging `ranges_desc` — half-open ranges in
    /// descending order, non-empty and separated by at least one missing
    /// packet; `largest` is the first one's `end - 1`.
    ///
    /// Taking an iterator lets the receiver write straight from its
    /// received-packet set without building an [`Ack`]. Only the first
    /// [`MAX_ACK_RANGES`] ranges are written: the newest packets are the ones
    /// the sender's loss detection needs to hear about. An empty iterator
    /// writes nothing (and is a bug, asserted in debug builds).
    pub fn encode_ranges<I: Iterator<Item = Range<u64>>>(
        ranges_desc: I,
        delay_us: u64,
        out: &mut Vec<u8>,
    ) {
        let mut ranges = ranges_desc.take(MAX_ACK_RANGES);
        let Some(first) = ranges.next() else {
            debug_assert!(false, "an ACK frame needs at least one range");
            return;
        };
        debug_assert!(first.start < first.end, "empty ACK range");
        let largest = first.end.saturating_sub(1);
        put_varint(out, types::ACK);
        put_varint(out, largest);
        put_varint(out, delay_us);
        // The range count comes before the ranges but is only known after
        // walking them: reserve one byte and back-patch.
        let count_at = out.len();
        out.push(0);
        put_varint(out, largest.saturating_sub(first.start));
        let mut prev_start = first.start;
        let mut count: u64 = 0;
        for r in ranges {
            debug_assert!(
                r.start < r.end && r.end < prev_start,
                "ACK ranges must be non-empty, descending and separated by a gap"
            );
            put_varint(out, prev_start.saturating_sub(r.end).saturating_sub(1));
            put_varint(out, r.end.saturating_sub(r.start).saturating_sub(1));
            prev_start = r.start;
            count += 1;
        }
        if count < 1 << 6 {
            out[count_at] = count as u8;
        } else {
            out[count_at] = 0x40 | (count >> 8) as u8;
            out.insert(count_at + 1, count as u8);
        }
    }

    /// Exactly how many bytes [`Ack::encode_ranges`] would append for the
    /// same arguments.
    pub fn ranges_encoded_len<I: Iterator<Item = Range<u64>>>(
        ranges_desc: I,
        delay_us: u64,
    ) -> usize {
        let mut ranges = ranges_desc.take(MAX_ACK_RANGES);
        let Some(first) = ranges.next() else {
            return 0;
        };
        let largest = first.end.saturating_sub(1);
        let mut len = 1
            + varint_len(largest)
            + varint_len(delay_us)
            + varint_len(largest.saturating_sub(first.start));
        let mut prev_start = first.start;
        let mut count: u64 = 0;
        for r in ranges {
            len += varint_len(prev_start.saturating_sub(r.end).saturating_sub(1));
            len += varint_len(r.end.saturating_sub(r.start).saturating_sub(1));
            prev_start = r.start;
            count += 1;
        }
        len + varint_len(count)
    }

    /// The acknowledged ranges, highest first.
    pub fn iter(&self) -> std::iter::Cloned<std::slice::Iter<'_, RangeInclusive<u64>>> {
        self.ranges.iter().cloned()
    }

    /// The ranges as half-open ranges, as [`Ack::encode_ranges`] takes them.
    fn half_open(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.ranges
            .iter()
            .map(|r| *r.start()..r.end().saturating_add(1))
    }
}

/// The sender abandons its side of a stream; the receiver can discard what
/// it buffered and release flow-control credit up to `final_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetStream {
    /// The stream being reset.
    pub id: StreamId,
    /// Application-defined reason.
    pub error_code: u64,
    /// Total bytes the stream carried, so both ends agree on flow-control
    /// accounting.
    pub final_size: u64,
}

/// The receiver no longer wants a stream's data; the sender should answer
/// with RESET_STREAM instead of spending bandwidth on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopSending {
    /// The stream to stop.
    pub id: StreamId,
    /// Application-defined reason, echoed in the RESET_STREAM.
    pub error_code: u64,
}

/// A chunk of stream data.
///
/// The first STREAM frame seen on a stream opens it — there is no separate
/// open frame; an empty frame at offset 0 opens a stream without data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// The stream the data belongs to.
    pub id: StreamId,
    /// Position of `data` in the stream.
    pub offset: u64,
    /// Whether the stream ends with this data.
    pub fin: bool,
    /// The bytes, a slice of the packet payload.
    pub data: Bytes,
}

/// Which layer closed the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// A transport error (CONNECTION_CLOSE, 0x1c).
    Transport {
        /// The type of the frame that caused the error, or 0 if none did.
        frame_type: u64,
    },
    /// The application closed the connection (APPLICATION_CLOSE, 0x1d).
    Application,
}

impl CloseKind {
    fn frame_type(self) -> u64 {
        match self {
            CloseKind::Transport { .. } => types::CONNECTION_CLOSE,
            CloseKind::Application => types::APPLICATION_CLOSE,
        }
    }
}

/// The connection is closing; both close frame types share this shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// Transport or application close, with the transport's culprit frame.
    pub kind: CloseKind,
    /// Error code in the space of `kind`.
    pub error_code: u64,
    /// Human-readable explanation for logs; not necessarily UTF-8.
    pub reason: Bytes,
}

fn stream_type(offset: u64, fin: bool, with_len: bool) -> u64 {
    let mut ty = types::STREAM;
    if offset != 0 {
        ty |= types::STREAM_OFF;
    }
    if with_len {
        ty |= types::STREAM_LEN;
    }
    if fin {
        ty |= types::STREAM_FIN;
    }
    ty
}

/// Bytes [`encode_stream_header`] appends for the same arguments, so the
/// packet builder can work out how much stream data still fits.
pub fn stream_header_len(id: StreamId, offset: u64, data_len: usize, with_len: bool) -> usize {
    1 + varint_len(id.0)
        + if offset != 0 { varint_len(offset) } else { 0 }
        + if with_len {
            varint_len(data_len as u64)
        } else {
            0
        }
}

/// Appends a STREAM frame header for `data_len` bytes of data at `offset`;
/// the caller appends the data itself, copying straight from its send buffer.
///
/// Offset 0 is written by omitting the offset field. Without `with_len` the
/// data runs to the end of the packet, so this must then be the last frame.
pub fn encode_stream_header(
    id: StreamId,
    offset: u64,
    data_len: usize,
    fin: bool,
    with_len: bool,
    out: &mut Vec<u8>,
) {
    put_varint(out, stream_type(offset, fin, with_len));
    put_varint(out, id.0);
    if offset != 0 {
        put_varint(out, offset);
    }
    if with_len {
        put_varint(out, data_len as u64);
    }
}

/// Bytes [`encode_datagram_header`] appends for the same arguments.
pub fn datagram_header_len(len: usize, with_len: bool) -> usize {
    1 + if with_len { varint_len(len as u64) } else { 0 }
}

/// Appends a DATAGRAM frame header for a `len`-byte payload; the caller
/// appends the payload. Without `with_len` the payload runs to the end of the
/// packet, so this must then be the last frame.
pub fn encode_datagram_header(len: usize, with_len: bool, out: &mut Vec<u8>) {
    if with_len {
        put_varint(out, types::DATAGRAM_WITH_LEN);
        put_varint(out, len as u64);
    } else {
        put_varint(out, types::DATAGRAM);
    }
}

/// Parses the frames of a decrypted packet payload, in order.
///
/// Yields `Err` at the first malformed frame and `None` after it: once one
/// frame is unreadable, where the next one starts is unknowable.
#[derive(Debug, Clone)]
pub struct Iter {
    payload: Bytes,
    pos: usize,
}

impl Iter {
    /// Starts parsing `payload`; frames carrying data will hold slices of it.
    pub fn new(payload: Bytes) -> Self {
        Self { payload, pos: 0 }
    }
}

impl Iterator for Iter {
    type Item = Result<Frame, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.payload.len() {
            return None;
        }
        match parse_frame(&self.payload, self.pos) {
            Ok((frame, next)) => {
                self.pos = next;
                Some(Ok(frame))
            }
            Err(e) => {
                self.pos = self.payload.len();
                Some(Err(e))
            }
        }
    }
}

impl FusedIterator for Iter {}

fn invalid(frame_type: u64, reason: &'static str) -> FrameError {
    FrameError::Invalid { frame_type, reason }
}

/// Reads the frame type, insisting on the shortest encoding (as RFC 9000
/// §12.4 allows) so each frame has exactly one representation.
fn read_type(r: &mut Reader<'_>) -> Result<u64, FrameError> {
    let rest = r.rest();
    let Some(&first) = rest.first() else {
        // Callers never parse an empty remainder; be total anyway.
        return Err(FrameError::UnknownType(0));
    };
    let len = 1usize << (first >> 6);
    match r.varint() {
        Ok(ty) if varint_len(ty) == len => Ok(ty),
        Ok(ty) => Err(invalid(ty, "frame type not minimally encoded")),
        Err(UnexpectedEnd) => {
            let mut partial = u64::from(first & 0x3f);
            for i in 1..len {
                partial = (partial << 8) | u64::from(rest.get(i).copied().unwrap_or(0));
            }
            Err(FrameError::UnknownType(partial))
        }
    }
}

/// Reads `len` bytes as a zero-copy slice of `payload`, where `r` reads
/// `payload[base..]`.
fn take(
    payload: &Bytes,
    base: usize,
    r: &mut Reader<'_>,
    len: u64,
) -> Result<Bytes, UnexpectedEnd> {
    let len = usize::try_from(len).map_err(|_| UnexpectedEnd)?;
    let at = base + r.position();
    r.bytes(len)?;
    Ok(payload.slice(at..at + len))
}

/// Parses the frame starting at `payload[start]` (which must exist); returns
/// it and where the next frame starts.
fn parse_frame(payload: &Bytes, start: usize) -> Result<(Frame, usize), FrameError> {
    let mut r = Reader::new(payload.get(start..).unwrap_or_default());
    let ty = read_type(&mut r)?;
    let t = |_: UnexpectedEnd| FrameError::Truncated { frame_type: ty };
    let frame = match ty {
        types::PADDING => {
            let run = r.rest().iter().take_while(|&&b| b == 0).count();
            r.bytes(run).map_err(t)?;
            Frame::Padding(1 + run)
        }
        types::PING => Frame::Ping,
        types::ACK => {
            let largest = r.varint().map_err(t)?;
            let delay_us = r.varint().map_err(t)?;
            let count = r.varint().map_err(t)?;
            if count >= MAX_ACK_RANGES as u64 {
                return Err(invalid(ty, "more than MAX_ACK_RANGES ranges"));
            }
            let first = r.varint().map_err(t)?;
            let mut low = largest
                .checked_sub(first)
                .ok_or(invalid(ty, "first range extends below packet 0"))?;
            let mut ranges = Vec::with_capacity(count as usize + 1);
            ranges.push(low..=largest);
            for _ in 0..count {
                let gap = r.varint().map_err(t)?;
                let len = r.varint().map_err(t)?;
                let high = low
                    .checked_sub(gap)
                    .and_then(|v| v.checked_sub(2))
                    .ok_or(invalid(ty, "gap extends below packet 0"))?;
                low = high
                    .checked_sub(len)
                    .ok_or(invalid(ty, "range extends below packet 0"))?;
                ranges.push(low..=high);
            }
            Frame::Ack(Ack {
                largest,
                delay_us,
                ranges,
            })
        }
        types::RESET_STREAM => Frame::ResetStream(ResetStream {
            id: StreamId(r.varint().map_err(t)?),
            error_code: r.varint().map_err(t)?,
            final_size: r.varint().map_err(t)?,
        }),
        types::STOP_SENDING => Frame::StopSending(StopSending {
            id: StreamId(r.varint().map_err(t)?),
            error_code: r.varint().map_err(t)?,
        }),
        types::STREAM..=types::STREAM_MAX => {
            let id = StreamId(r.varint().map_err(t)?);
            let offset = if ty & types::STREAM_OFF != 0 {
                r.varint().map_err(t)?
            } else {
                0
            };
            let len = if ty & types::STREAM_LEN != 0 {
                r.varint().map_err(t)?
            } else {
                r.remaining() as u64
            };
            let data = take(payload, start, &mut r, len).map_err(t)?;
            if offset.checked_add(len).is_none_or(|end| end > VARINT_MAX) {
                return Err(invalid(ty, "offset + length exceeds 2^62-1"));
            }
            Frame::Stream(Stream {
                id,
                offset,
                fin: ty & types::STREAM_FIN != 0,
                data,
            })
        }
        types::MAX_DATA => Frame::MaxData(r.varint().map_err(t)?),
        types::MAX_STREAM_DATA => Frame::MaxStreamData {
            id: StreamId(r.varint().map_err(t)?),
            max: r.varint().map_err(t)?,
        },
        types::MAX_STREAMS_BIDI | types::MAX_STREAMS_UNI => {
            let count = r.varint().map_err(t)?;
            if count > MAX_STREAM_COUNT {
                return Err(invalid(ty, "stream count exceeds 2^60"));
            }
            Frame::MaxStreams {
                dir: streams_dir(ty, types::MAX_STREAMS_BIDI),
                count,
            }
        }
        types::DATA_BLOCKED => Frame::DataBlocked(r.varint().map_err(t)?),
        types::STREAM_DATA_BLOCKED => Frame::StreamDataBlocked {
            id: StreamId(r.varint().map_err(t)?),
            limit: r.varint().map_err(t)?,
        },
        types::STREAMS_BLOCKED_BIDI | types::STREAMS_BLOCKED_UNI => {
            let limit = r.varint().map_err(t)?;
            if limit > MAX_STREAM_COUNT {
                return Err(invalid(ty, "stream count exceeds 2^60"));
            }
            Frame::StreamsBlocked {
                dir: streams_dir(ty, types::STREAMS_BLOCKED_BIDI),
                limit,
            }
        }
        types::PATH_CHALLENGE => Frame::PathChallenge(r.array().map_err(t)?),
        types::PATH_RESPONSE => Frame::PathResponse(r.array().map_err(t)?),
        types::CONNECTION_CLOSE | types::APPLICATION_CLOSE => {
            let error_code = r.varint().map_err(t)?;
            let kind = if ty == types::CONNECTION_CLOSE {
                CloseKind::Transport {
                    frame_type: r.varint().map_err(t)?,
                }
            } else {
                CloseKind::Application
            };
            let len = r.varint().map_err(t)?;
            let reason = take(payload, start, &mut r, len).map_err(t)?;
            Frame::Close(Close {
                kind,
                error_code,
                reason,
            })
        }
        types::IMMEDIATE_ACK => Frame::ImmediateAck,
        types::GOAWAY => Frame::GoAway,
        types::DATAGRAM => {
            let len = r.remaining() as u64;
            Frame::Datagram(take(payload, start, &mut r, len).map_err(t)?)
        }
        types::DATAGRAM_WITH_LEN => {
            let len = r.varint().map_err(t)?;
            Frame::Datagram(take(payload, start, &mut r, len).map_err(t)?)
        }
        _ => return Err(FrameError::UnknownType(ty)),
    };
    Ok((frame, start + r.position()))
}

fn streams_dir(ty: u64, bidi: u64) -> Dir {
    if ty == bidi { Dir::Bi } else { Dir::Uni }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_all(frames: &[Frame]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            let before = out.len();
            f.encode(&mut out);
            assert_eq!(out.len() - before, f.encoded_len(), "encoded_len of {f:?}");
        }
        out
    }

    fn parse(bytes: &[u8]) -> Vec<Result<Frame, FrameError>> {
        Iter::new(Bytes::copy_from_slice(bytes)).collect()
    }

    fn parse_ok(bytes: &[u8]) -> Vec<Frame> {
        parse(bytes)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{e} parsing {}", hex::encode(bytes)))
    }

    /// Encodes one frame, checks `encoded_len`, parses it back.
    fn round_trip(frame: &Frame) -> Result<(), TestCaseError> {
        let bytes = encode_all(std::slice::from_ref(frame));
        prop_assert_eq!(
            parse_ok(&bytes),
            vec![frame.clone()],
            "{}",
            hex::encode(&bytes)
        );
        Ok(())
    }

    /// Merges adjacent padding, as parsing does.
    fn normalise(frames: Vec<Frame>) -> Vec<Frame> {
        let mut out: Vec<Frame> = Vec::new();
        for f in frames {
            match (out.last_mut(), &f) {
                (Some(Frame::Padding(a)), Frame::Padding(b)) => *a += b,
                _ => out.push(f),
            }
        }
        out
    }

    fn varint() -> impl Strategy<Value = u64> {
        prop_oneof![
            0..64u64,
            0..1u64 << 14,
            0..1u64 << 30,
            0..=VARINT_MAX,
            Just(VARINT_MAX)
        ]
    }

    fn stream_id() -> impl Strategy<Value = StreamId> {
        varint().prop_map(StreamId)
    }

    fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn dir() -> impl Strategy<Value = Dir> {
        prop_oneof![Just(Dir::Bi), Just(Dir::Uni)]
    }

    fn stream_count() -> impl Strategy<Value = u64> {
        prop_oneof![0..100u64, 0..=MAX_STREAM_COUNT, Just(MAX_STREAM_COUNT)]
    }

    /// Builds valid descending ranges from `largest`, a first-range length
    /// and (gap, len) pairs, stopping where packet 0 is reached.
    fn build_ack(largest: u64, delay_us: u64, first: u64, rest: &[(u64, u64)]) -> Ack {
        let mut low = largest - first.min(largest);
        let mut ranges = vec![low..=largest];
        for &(gap, len) in rest {
            let Some(high) = low.checked_sub(gap).and_then(|v| v.checked_sub(2)) else {
                break;
            };
            low = high - len.min(high);
            ranges.push(low..=high);
        }
        Ack {
            largest,
            delay_us,
            ranges,
        }
    }

    fn ack() -> impl Strategy<Value = Ack> {
        let small = || prop_oneof![0..4u64, 0..100u64, varint()];
        (
            varint(),
            varint(),
            small(),
            prop::collection::vec((small(), small()), 0..MAX_ACK_RANGES),
        )
            .prop_map(|(largest, delay, first, rest)| build_ack(largest, delay, first, &rest))
    }

    fn stream() -> impl Strategy<Value = Stream> {
        (
            stream_id(),
            bytes(64),
            varint(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(id, data, offset, zero, fin)| {
                let max = VARINT_MAX - data.len() as u64;
                let offset = if zero { 0 } else { offset.min(max) };
                Stream {
                    id,
                    offset,
                    fin,
                    data,
                }
            })
    }

    fn close() -> impl Strategy<Value = Close> {
        (
            prop_oneof![
                varint().prop_map(|frame_type| CloseKind::Transport { frame_type }),
                Just(CloseKind::Application)
            ],
            varint(),
            bytes(64),
        )
            .prop_map(|(kind, error_code, reason)| Close {
                kind,
                error_code,
                reason,
            })
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (1..40usize).prop_map(Frame::Padding),
            Just(Frame::Ping),
            ack().prop_map(Frame::Ack),
            (stream_id(), varint(), varint()).prop_map(|(id, error_code, final_size)| {
                Frame::ResetStream(ResetStream {
                    id,
                    error_code,
                    final_size,
                })
            }),
            (stream_id(), varint())
                .prop_map(|(id, error_code)| Frame::StopSending(StopSending { id, error_code })),
            stream().prop_map(Frame::Stream),
            varint().prop_map(Frame::MaxData),
            (stream_id(), varint()).prop_map(|(id, max)| Frame::MaxStreamData { id, max }),
            (dir(), stream_count()).prop_map(|(dir, count)| Frame::MaxStreams { dir, count }),
            varint().prop_map(Frame::DataBlocked),
            (stream_id(), varint()).prop_map(|(id, limit)| Frame::StreamDataBlocked { id, limit }),
            (dir(), stream_count()).prop_map(|(dir, limit)| Frame::StreamsBlocked { dir, limit }),
            any::<[u8; 8]>().prop_map(Frame::PathChallenge),
            any::<[u8; 8]>().prop_map(Frame::PathResponse),
            close().prop_map(Frame::Close),
            Just(Frame::ImmediateAck),
            Just(Frame::GoAway),
            bytes(64).prop_map(Frame::Datagram),
        ]
    }

    proptest! {
        #[test]
        fn padding_round_trips(n in 1..2000usize) {
            round_trip(&Frame::Padding(n))?;
        }

        #[test]
        fn ack_round_trips(ack in ack()) {
            round_trip(&Frame::Ack(ack))?;
        }

        #[test]
        fn reset_stream_round_trips(id in stream_id(), error_code in varint(), final_size in varint()) {
            round_trip(&Frame::ResetStream(ResetStream { id, error_code, final_size }))?;
        }

        #[test]
        fn stop_sending_round_trips(id in stream_id(), error_code in varint()) {
            round_trip(&Frame::StopSending(StopSending { id, error_code }))?;
        }

        #[test]
        fn stream_round_trips(s in stream()) {
            round_trip(&Frame::Stream(s))?;
        }

        #[test]
        fn flow_control_frames_round_trip(
            id in stream_id(),
            v in varint(),
            dir in dir(),
            count in stream_count(),
        ) {
            round_trip(&Frame::MaxData(v))?;
            round_trip(&Frame::MaxStreamData { id, max: v })?;
            round_trip(&Frame::MaxStreams { dir, count })?;
            round_trip(&Frame::DataBlocked(v))?;
            round_trip(&Frame::StreamDataBlocked { id, limit: v })?;
            round_trip(&Frame::StreamsBlocked { dir, limit: count })?;
        }

        #[test]
        fn path_frames_round_trip(data in any::<[u8; 8]>()) {
            round_trip(&Frame::PathChallenge(data))?;
            round_trip(&Frame::PathResponse(data))?;
        }

        #[test]
        fn close_round_trips(c in close()) {
            round_trip(&Frame::Close(c))?;
        }

        #[test]
        fn datagram_round_trips(data in bytes(2000)) {
            round_trip(&Frame::Datagram(data))?;
        }

        #[test]
        fn any_frame_round_trips(f in frame()) {
            round_trip(&f)?;
        }

        #[test]
        fn frames_back_to_back_round_trip(frames in prop::collection::vec(frame(), 0..12)) {
            let bytes = encode_all(&frames);
            prop_assert_eq!(bytes.len(), frames.iter().map(Frame::encoded_len).sum::<usize>());
            prop_assert_eq!(parse_ok(&bytes), normalise(frames));
        }

        /// The length-less forms a packet builder uses for its last frame.
        #[test]
        fn run_to_end_forms_round_trip(
            mut frames in prop::collection::vec(frame(), 0..6),
            last in prop_oneof![stream().prop_map(Frame::Stream), bytes(64).prop_map(Frame::Datagram)],
        ) {
            let mut bytes = encode_all(&frames);
            let before = bytes.len();
            match &last {
                Frame::Stream(s) => {
                    encode_stream_header(s.id, s.offset, s.data.len(), s.fin, false, &mut bytes);
                    prop_assert_eq!(bytes.len() - before, stream_header_len(s.id, s.offset, s.data.len(), false));
                    bytes.extend_from_slice(&s.data);
                }
                Frame::Datagram(d) => {
                    encode_datagram_header(d.len(), false, &mut bytes);
                    prop_assert_eq!(bytes.len() - before, datagram_header_len(d.len(), false));
                    bytes.extend_from_slice(d);
                }
                _ => unreachable!(),
            }
            frames.push(last);
            prop_assert_eq!(parse_ok(&bytes), normalise(frames));
        }

        #[test]
        fn header_helpers_match_frame_encoding(s in stream(), d in bytes(300)) {
            let mut via_header = Vec::new();
            encode_stream_header(s.id, s.offset, s.data.len(), s.fin, true, &mut via_header);
            prop_assert_eq!(via_header.len(), stream_header_len(s.id, s.offset, s.data.len(), true));
            via_header.extend_from_slice(&s.data);
            prop_assert_eq!(&via_header, &encode_all(&[Frame::Stream(s)]));

            let mut via_header = Vec::new();
            encode_datagram_header(d.len(), true, &mut via_header);
            prop_assert_eq!(via_header.len(), datagram_header_len(d.len(), true));
            via_header.extend_from_slice(&d);
            prop_assert_eq!(&via_header, &encode_all(&[Frame::Datagram(d)]));
        }

        #[test]
        fn encode_ranges_matches_frame_encoding(ack in ack()) {
            let half_open = || ack.iter().map(|r| *r.start()..*r.end() + 1);
            let mut direct = vec![0xaa]; // appends, never overwrites
            Ack::encode_ranges(half_open(), ack.delay_us, &mut direct);
            prop_assert_eq!(direct.len() - 1, Ack::ranges_encoded_len(half_open(), ack.delay_us));
            prop_assert_eq!(&direct[1..], &encode_all(&[Frame::Ack(ack.clone())])[..]);
        }

        #[test]
        fn truncation_at_every_byte_is_reported(f in frame()) {
            let bytes = encode_all(std::slice::from_ref(&f));
            prop_assert!(parse(&bytes[..0]).is_empty());
            for cut in 1..bytes.len() {
                // Padding has no structure to truncate: a shorter run is
                // just shorter padding.
                let expected = match f {
                    Frame::Padding(_) => Ok(Frame::Padding(cut)),
                    _ => Err(FrameError::Truncated { frame_type: f.frame_type() }),
                };
                prop_assert_eq!(
                    parse(&bytes[..cut]),
                    vec![expected],
                    "cut at {} of {}", cut, hex::encode(&bytes)
                );
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..512)) {
            check_parse_invariants(&input)?;
        }

        /// Random tails after a known type byte reach deeper into each parser.
        #[test]
        fn arbitrary_fields_never_panic(
            ty in prop::sample::select(KNOWN_TYPES.to_vec()),
            tail in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut input = vec![ty as u8];
            input.extend_from_slice(&tail);
            check_parse_invariants(&input)?;
        }
    }

    const KNOWN_TYPES: &[u64] = &[
        0x00, 0x01, 0x02, 0x04, 0x05, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11,
        0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x1a, 0x1b, 0x1c, 0x1d, 0x1f, 0x30, 0x31,
    ];

    /// Parsing terminates, errors only last, and every frame it accepts
    /// re-encodes to something that parses back to the same frame.
    fn check_parse_invariants(input: &[u8]) -> Result<(), TestCaseError> {
        let parsed = parse(input);
        prop_assert!(parsed.len() <= input.len());
        if let Some(i) = parsed.iter().position(Result::is_err) {
            prop_assert_eq!(i, parsed.len() - 1, "error is not last");
        }
        for f in parsed.into_iter().flatten() {
            if let Frame::Ack(a) = &f {
                prop_assert!(a.ranges.len() <= MAX_ACK_RANGES);
            }
            round_trip(&f)?;
        }
        Ok(())
    }

    #[test]
    fn unit_frames_round_trip() {
        for f in [Frame::Ping, Frame::ImmediateAck, Frame::GoAway] {
            let bytes = encode_all(std::slice::from_ref(&f));
            assert_eq!(bytes, [f.frame_type() as u8]);
            assert_eq!(parse_ok(&bytes), vec![f]);
        }
    }

    #[test]
    fn known_encodings() {
        let ack = Frame::Ack(Ack {
            largest: 10,
            delay_us: 100,
            ranges: vec![8..=10, 2..=5, 0..=0],
        });
        // largest 10, delay 100 (2-byte varint), 2 more ranges, first 2;
        // gap 8-5-2 = 1, len 3; gap 2-0-2 = 0, len 0.
        assert_eq!(hex::encode(encode_all(&[ack])), "020a4064020201030000");

        let s = Frame::Stream(Stream {
            id: StreamId(4),
            offset: 0,
            fin: true,
            data: Bytes::from_static(b"hi"),
        });
        assert_eq!(hex::encode(encode_all(&[s])), "0b04026869");
        let s = Frame::Stream(Stream {
            id: StreamId(4),
            offset: 5,
            fin: false,
            data: Bytes::new(),
        });
        assert_eq!(hex::encode(encode_all(&[s])), "0e040500");

        let close = Frame::Close(Close {
            kind: CloseKind::Application,
            error_code: 7,
            reason: Bytes::from_static(b"bye"),
        });
        assert_eq!(hex::encode(encode_all(&[close])), "1d0703627965");
    }

    #[test]
    fn empty_stream_frame_at_offset_zero_opens_a_stream() {
        let f = Frame::Stream(Stream {
            id: StreamId(0),
            offset: 0,
            fin: false,
            data: Bytes::new(),
        });
        assert_eq!(encode_all(std::slice::from_ref(&f)), [0x0a, 0x00, 0x00]);
        assert_eq!(parse_ok(&[0x0a, 0x00, 0x00]), vec![f.clone()]);
        // The shortest form: no offset, no length, nothing after it.
        assert_eq!(parse_ok(&[0x08, 0x00]), vec![f]);
    }

    #[test]
    fn ack_eliciting() {
        let ack = Frame::Ack(Ack {
            largest: 0,
            delay_us: 0,
            ranges: vec![0..=0],
        });
        let close = Frame::Close(Close {
            kind: CloseKind::Application,
            error_code: 0,
            reason: Bytes::new(),
        });
        for f in [Frame::Padding(1), ack, close] {
            assert!(!f.is_ack_eliciting(), "{f:?}");
        }
        for f in [
            Frame::Ping,
            Frame::ImmediateAck,
            Frame::MaxData(1),
            Frame::Datagram(Bytes::new()),
        ] {
            assert!(f.is_ack_eliciting(), "{f:?}");
        }
    }

    fn ack_bytes(largest: u64, first: u64, rest: &[(u64, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [types::ACK, largest, 0, rest.len() as u64, first] {
            put_varint(&mut out, v);
        }
        for &(gap, len) in rest {
            put_varint(&mut out, gap);
            put_varint(&mut out, len);
        }
        out
    }

    fn assert_invalid(bytes: &[u8], frame_type: u64) {
        match parse(bytes).as_slice() {
            [Err(FrameError::Invalid { frame_type: ty, .. })] if *ty == frame_type => {}
            other => panic!("{} parsed as {other:?}", hex::encode(bytes)),
        }
    }

    #[test]
    fn ack_ranges_below_zero_are_rejected() {
        // First range longer than `largest`.
        assert_invalid(&ack_bytes(3, 4, &[]), types::ACK);
        // Exactly down to 0 is fine.
        assert_eq!(parse_ok(&ack_bytes(3, 3, &[])).len(), 1);
        // 3..=5, then gap 2 would put the next largest at -1.
        assert_invalid(&ack_bytes(5, 2, &[(2, 0)]), types::ACK);
        // ... gap 1 puts it at 0: fine.
        let parsed = parse_ok(&ack_bytes(5, 2, &[(1, 0)]));
        assert_eq!(
            parsed,
            vec![Frame::Ack(Ack {
                largest: 5,
                delay_us: 0,
                ranges: vec![3..=5, 0..=0]
            })]
        );
        // Next range at 8, length 9 (packets 8..=-1).
        assert_invalid(&ack_bytes(10, 0, &[(0, 9)]), types::ACK);
        // Huge gap.
        assert_invalid(&ack_bytes(10, 0, &[(VARINT_MAX, 0)]), types::ACK);
    }

    #[test]
    fn too_many_ack_ranges_are_rejected() {
        let largest = 10_000;
        let max = vec![(0, 0); MAX_ACK_RANGES - 1];
        let parsed = parse_ok(&ack_bytes(largest, 0, &max));
        let [Frame::Ack(ack)] = parsed.as_slice() else {
            panic!("{parsed:?}")
        };
        assert_eq!(ack.ranges.len(), MAX_ACK_RANGES);
        assert_invalid(
            &ack_bytes(largest, 0, &vec![(0, 0); MAX_ACK_RANGES]),
            types::ACK,
        );
        // A huge count is rejected up front, not read as "truncated".
        let mut huge = Vec::new();
        for v in [types::ACK, 5, 0, VARINT_MAX, 0] {
            put_varint(&mut huge, v);
        }
        assert_invalid(&huge, types::ACK);
    }

    #[test]
    fn encode_ranges_writes_at_most_max_ranges() {
        // Every other packet of 0..1000 received: 500 ranges.
        let ranges = (0..500u64).rev().map(|i| 2 * i..2 * i + 1);
        let mut out = Vec::new();
        Ack::encode_ranges(ranges.clone(), 7, &mut out);
        assert_eq!(out.len(), Ack::ranges_encoded_len(ranges.clone(), 7));
        let parsed = parse_ok(&out);
        let [Frame::Ack(ack)] = parsed.as_slice() else {
            panic!("{parsed:?}")
        };
        assert_eq!(ack.largest, 998);
        assert_eq!(ack.delay_us, 7);
        assert_eq!(ack.ranges.len(), MAX_ACK_RANGES);
        assert!(
            ack.iter()
                .zip(ranges)
                .all(|(a, b)| *a.start() == b.start && *a.end() + 1 == b.end)
        );
    }

    #[test]
    fn encode_ranges_range_count_straddling_one_byte() {
        for n in [1u64, 63, 64, 65, 200, 256] {
            let ranges = (0..n).rev().map(|i| 3 * i..3 * i + 2);
            let mut out = Vec::new();
            Ack::encode_ranges(ranges.clone(), 1 << 20, &mut out);
            assert_eq!(out.len(), Ack::ranges_encoded_len(ranges, 1 << 20), "{n}");
            let parsed = parse(&out);
            let [Ok(Frame::Ack(ack))] = parsed.as_slice() else {
                panic!("{n}")
            };
            assert_eq!(ack.ranges.len() as u64, n);
        }
    }

    #[test]
    fn unknown_types_are_rejected() {
        for ty in [
            0x03u64, 0x06, 0x07, 0x18, 0x19, 0x20, 0x2f, 0x32, 0x3f, 64, 0x1234, VARINT_MAX,
        ] {
            let mut bytes = Vec::new();
            put_varint(&mut bytes, ty);
            bytes.push(0x01);
            assert_eq!(
                parse(&bytes),
                vec![Err(FrameError::UnknownType(ty))],
                "{ty:#x}"
            );
        }
        // A type varint cut short.
        assert_eq!(
            parse(&[0x01, 0x80, 0x01]),
            vec![Ok(Frame::Ping), Err(FrameError::UnknownType(0x0001_0000))]
        );
    }

    #[test]
    fn non_minimal_frame_type_is_rejected() {
        // PING written as a two-byte varint.
        assert_invalid(&[0x40, 0x01], types::PING);
    }

    #[test]
    fn parsing_stops_after_an_error() {
        let parsed = parse(&[0x01, 0x03, 0x01, 0x01]);
        assert_eq!(
            parsed,
            vec![Ok(Frame::Ping), Err(FrameError::UnknownType(3))]
        );
        let mut iter = Iter::new(Bytes::from_static(&[0x03]));
        assert!(iter.next().unwrap().is_err());
        assert!(iter.next().is_none());
        assert!(iter.next().is_none());
    }

    #[test]
    fn oversized_stream_offset_is_rejected() {
        let id = StreamId(0);
        // offset 2^62-1 with one byte of data: the byte would sit at 2^62-1.
        let mut bytes = Vec::new();
        encode_stream_header(id, VARINT_MAX, 1, false, true, &mut bytes);
        bytes.push(0xff);
        assert_invalid(&bytes, 0x0e);
        // Same with the data running to the end of the packet.
        let mut bytes = Vec::new();
        encode_stream_header(id, VARINT_MAX, 2, false, false, &mut bytes);
        bytes.extend_from_slice(&[1, 2]);
        assert_invalid(&bytes, 0x0c);
        // An empty frame at the very last offset is fine (it can carry FIN).
        let mut bytes = Vec::new();
        encode_stream_header(id, VARINT_MAX, 0, true, true, &mut bytes);
        assert_eq!(parse_ok(&bytes).len(), 1);
    }

    #[test]
    fn oversized_stream_counts_are_rejected() {
        for ty in [
            types::MAX_STREAMS_BIDI,
            types::MAX_STREAMS_UNI,
            types::STREAMS_BLOCKED_BIDI,
            types::STREAMS_BLOCKED_UNI,
        ] {
            let mut bytes = vec![ty as u8];
            put_varint(&mut bytes, MAX_STREAM_COUNT + 1);
            assert_invalid(&bytes, ty);
        }
    }

    #[test]
    fn lengths_beyond_the_packet_are_truncation() {
        // STREAM claiming 10 bytes, 2 present.
        assert_eq!(
            parse(&[0x0a, 0x00, 0x0a, 1, 2]),
            vec![Err(FrameError::Truncated { frame_type: 0x0a })]
        );
        // DATAGRAM claiming 2^62-1 bytes.
        let mut bytes = vec![0x31];
        put_varint(&mut bytes, VARINT_MAX);
        assert_eq!(
            parse(&bytes),
            vec![Err(FrameError::Truncated { frame_type: 0x31 })]
        );
        // APPLICATION_CLOSE reason running off the end.
        assert_eq!(
            parse(&[0x1d, 0x00, 0x05, b'a']),
            vec![Err(FrameError::Truncated { frame_type: 0x1d })]
        );
    }

    #[test]
    fn padding_runs_merge_and_stop_at_nonzero() {
        assert_eq!(
            parse_ok(&[0, 0, 0, 1, 0, 0x1f]),
            vec![
                Frame::Padding(3),
                Frame::Ping,
                Frame::Padding(1),
                Frame::ImmediateAck
            ]
        );
    }

    #[test]
    fn error_messages_name_the_frame() {
        assert_eq!(
            FrameError::Truncated {
                frame_type: types::ACK
            }
            .to_string(),
            "ACK frame truncated"
        );
        assert_eq!(
            FrameError::Invalid {
                frame_type: 0x0e,
                reason: "offset + length exceeds 2^62-1"
            }
            .to_string(),
            "invalid STREAM frame: offset + length exceeds 2^62-1"
        );
        assert_eq!(
            FrameError::UnknownType(0x21).to_string(),
            "unknown frame type 0x21"
        );
        assert_eq!(FrameError::UnknownType(0x21).frame_type(), 0x21);
        assert_eq!(frame_type_name(types::DATAGRAM_WITH_LEN), "DATAGRAM");
    }

    #[test]
    fn parsing_is_zero_copy() {
        let frames = [
            Frame::Stream(Stream {
                id: StreamId(8),
                offset: 1000,
                fin: false,
                data: Bytes::from_static(b"stream data"),
            }),
            Frame::Datagram(Bytes::from_static(b"datagram")),
            Frame::Close(Close {
                kind: CloseKind::Transport { frame_type: 0x08 },
                error_code: 1,
                reason: Bytes::from_static(b"reason"),
            }),
        ];
        let mut bytes = encode_all(&frames);
        encode_stream_header(StreamId(8), 2000, 4, true, false, &mut bytes);
        bytes.extend_from_slice(b"tail");
        let payload = Bytes::from(bytes);
        let whole = payload.as_ptr_range();
        let inside = |b: &Bytes| {
            let r = b.as_ptr_range();
            assert!(!b.is_empty());
            assert!(
                whole.start <= r.start && r.end <= whole.end,
                "{b:?} was copied"
            );
        };
        let parsed: Vec<Frame> = Iter::new(payload.clone())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(parsed.len(), 4);
        for f in &parsed {
            match f {
                Frame::Stream(s) => inside(&s.data),
                Frame::Datagram(d) => inside(d),
                Frame::Close(c) => inside(&c.reason),
                other => panic!("{other:?}"),
            }
        }
    }
}
