//! Packet layouts.
//!
//! Two shapes, as in QUIC. Long-header packets carry the handshake and are
//! not encrypted by the packet layer (their Noise payload is its own
//! protection). Short-header packets carry everything after it: AEAD over
//! the frames, header protection over the packet number and flag bits.
//!
//! ```text
//! long:  | 1 1 t t 0 0 0 0 | version u32 | dcid 8 | scid 8 | body by type
//!         Initial:   token (varint len) | Noise msg 1 (varint len) | mac1 16 | zero padding
//!         Handshake: Noise msg 2 (varint len)
//!         Retry:     token (varint len)
//!         Reject:    reason u8
//! short: | 0 1 0 r r k p p | dcid 8 | packet number 1-4 | AEAD(frames) | tag 16
//!         r: reserved (0), k: key phase, pp: packet-number length - 1;
//!         the low five bits and the packet number are header-protected.
//! ```

pub mod keys;
pub mod number;
mod protect;

use std::fmt;

use thiserror::Error;

use crate::coding::{Reader, UnexpectedEnd, put_varint};
use crate::crypto::{MAC1_LEN, Mac1Key, SAMPLE_LEN, TAG_LEN};

pub use protect::{
    OpenedPacket, min_payload_len, open_payload, open_short, seal_short, short_dcid,
    write_short_header,
};

/// Length of every connection id.
pub const CID_LEN: usize = 8;
/// Protocol version this implementation speaks. Version 2 added mac1 to
/// the Initial.
pub const VERSION: u32 = 0x4d58_0002;
/// Smallest datagram that may carry an Initial. Padding the client's first
/// flight this far gives the server a 3× anti-amplification budget large
/// enough for its whole answer.
pub const MIN_INITIAL_SIZE: usize = 1200;

const LONG_BIT: u8 = 0x80;
const FIXED_BIT: u8 = 0x40;
const SHORT_RESERVED: u8 = 0x18;
const SHORT_UNUSED: u8 = 0x20;
pub(crate) const KEY_PHASE_BIT: u8 = 0x04;
pub(crate) const PN_LEN_MASK: u8 = 0x03;
/// Bits of the first short-header byte covered by header protection.
pub(crate) const PROTECTED_BITS: u8 = 0x1f;
/// Offset of the packet number in a short header.
pub const SHORT_PN_OFFSET: usize = 1 + CID_LEN;
/// Fixed part of a long header.
pub const LONG_HEADER_LEN: usize = 1 + 4 + 2 * CID_LEN;
/// Per-packet bytes a short packet adds around its frames, at most.
pub const SHORT_OVERHEAD: usize = SHORT_PN_OFFSET + 4 + TAG_LEN;
/// Smallest short packet: the header-protection sample must fit.
pub const MIN_SHORT_LEN: usize = SHORT_PN_OFFSET + 4 + SAMPLE_LEN;

/// Length of a stateless reset: shorter than any datagram that triggers
/// one (so two nodes cannot reset each other in a loop), long enough to
/// look like a short packet.
pub const MIN_RESET_LEN: usize = MIN_SHORT_LEN + 8;

/// Writes a stateless reset: random bytes shaped like a short packet,
/// ending in `token`.
pub fn write_stateless_reset(token: &[u8; crate::crypto::RESET_TOKEN_LEN], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + MIN_RESET_LEN - token.len(), 0);
    crate::crypto::fill_random(&mut out[start..]);
    out[start] = (out[start] & PROTECTED_BITS) | FIXED_BIT;
    out.extend_from_slice(token);
}

/// A connection id: routes a datagram to its connection without relying on
/// the sender's address, so a connection survives address changes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ConnectionId(pub [u8; CID_LEN]);

impl ConnectionId {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut id = [0u8; CID_LEN];
        crate::crypto::fill_random(&mut id);
        ConnectionId(id)
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Kinds of long-header packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongType {
    /// Client → server: Noise message 1, padded.
    Initial = 0,
    /// Server → client: Noise message 2.
    Handshake = 1,
    /// Server → client: prove your address by echoing this token.
    Retry = 2,
    /// Server → client: the initiation could not be processed.
    Reject = 3,
}

/// Why a server refused an initiation before any key was agreed. Sent in
/// the clear, so a client treats the key and version refusals as hints it
/// confirms (see the connection's handshake logic), never as proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The server speaks another protocol version.
    VersionMismatch,
    /// The initiation did not decrypt: the client used the wrong server key.
    ServerKeyMismatch,
    /// The node does not accept new MXP connections now (its operator
    /// switched it to the QUIC carrier); `quic_port` (0: none) is where it
    /// does. Believing a forged one only moves a client to another
    /// authenticated carrier, so it is believed at once.
    CarrierRefused {
        /// UDP port of the node's QUIC listener, or 0.
        quic_port: u16,
    },
    /// The node did not work on this initiation; the client starts over
    /// with a fresh one (backing off if it keeps hearing this). Believing a
    /// forged one costs the client a round trip, so it is believed at once.
    Busy(BusyReason),
}

/// Why a node set an initiation aside without working on it. The client
/// says so in its error if the node keeps refusing until its handshake
/// timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BusyReason {
    /// Handshakes arrive faster than the node's handshake budget, and this
    /// one did not win a fair share of it.
    Overloaded,
    /// The node serves as many connections as it is configured for.
    ConnectionLimit,
    /// The node could not tell whether this initiation is a replay (it
    /// looks like one it has seen, or it is older than what the node still
    /// remembers): a fresh initiation is accepted.
    Unverifiable,
}

impl BusyReason {
    /// Short stable name, for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BusyReason::Overloaded => "overloaded",
            BusyReason::ConnectionLimit => "connection_limit",
            BusyReason::Unverifiable => "unverifiable",
        }
    }
}

impl fmt::Display for BusyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BusyReason::Overloaded => {
                "its handshake budget is taken (a flood, or a burst of clients)"
            }
            BusyReason::ConnectionLimit => "it serves as many connections as it allows",
            BusyReason::Unverifiable => "it could not check our initiation for replay",
        })
    }
}

impl RejectReason {
    fn decode(r: &mut Reader<'_>) -> Result<Self, PacketError> {
        Ok(match r.u8()? {
            1 => Self::VersionMismatch,
            2 => Self::ServerKeyMismatch,
            3 => Self::CarrierRefused {
                quic_port: r.u16()?,
            },
            4 => Self::Busy(match r.u8()? {
                1 => BusyReason::Overloaded,
                2 => BusyReason::ConnectionLimit,
                3 => BusyReason::Unverifiable,
                _ => return Err(PacketError::Malformed),
            }),
            _ => return Err(PacketError::Malformed),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::VersionMismatch => out.push(1),
            Self::ServerKeyMismatch => out.push(2),
            Self::CarrierRefused { quic_port } => {
                out.push(3);
                out.extend_from_slice(&quic_port.to_be_bytes());
            }
            Self::Busy(why) => out.extend_from_slice(&[
                4,
                match why {
                    BusyReason::Overloaded => 1,
                    BusyReason::ConnectionLimit => 2,
                    BusyReason::Unverifiable => 3,
                },
            ]),
        }
    }
}

/// A parsed packet header. Short packets are only routed here; opening them
/// needs the connection's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header<'a> {
    /// Client's first flight.
    Initial {
        /// Protocol version the client speaks.
        version: u32,
        /// Random id chosen by the client for the server's side.
        dcid: ConnectionId,
        /// The client's own id.
        scid: ConnectionId,
        /// Retry token, empty on the first attempt.
        token: &'a [u8],
        /// Noise message 1.
        noise: &'a [u8],
        /// MAC over `covered`, keyed by the node's public key (empty in a
        /// foreign version's Initial).
        mac1: &'a [u8],
        /// The bytes mac1 covers: the packet from its first byte to mac1.
        covered: &'a [u8],
    },
    /// Server's answer.
    Handshake {
        /// The client's id.
        dcid: ConnectionId,
        /// The server's id for this connection.
        scid: ConnectionId,
        /// Noise message 2.
        noise: &'a [u8],
    },
    /// Stateless retry.
    Retry {
        /// The client's id.
        dcid: ConnectionId,
        /// Echo of the Initial's dcid, so a client only accepts a retry from
        /// someone who saw its Initial.
        scid: ConnectionId,
        /// Token to echo.
        token: &'a [u8],
    },
    /// Stateless refusal.
    Reject {
        /// The client's id.
        dcid: ConnectionId,
        /// Echo of the Initial's dcid.
        scid: ConnectionId,
        /// Why.
        reason: RejectReason,
    },
    /// Protected packet for an established connection.
    Short {
        /// Id of the receiving end.
        dcid: ConnectionId,
    },
}

/// Why a datagram could not be parsed or opened. Every variant is counted by
/// the endpoint; none of them panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Shorter than its header claims.
    #[error("packet truncated")]
    Truncated,
    /// The fixed bit is clear: not an MXP packet.
    #[error("not an MXP packet (fixed bit clear)")]
    NotMxp,
    /// A long header with reserved bits set or an unknown reject reason.
    #[error("malformed packet header")]
    Malformed,
    /// Long header of a version this node does not speak.
    #[error("unsupported protocol version {0:#010x}")]
    UnsupportedVersion(u32),
    /// A protected packet failed authentication.
    #[error("packet failed authentication")]
    Decrypt,
    /// Authenticated, but reserved header bits were set.
    #[error("reserved header bits set")]
    ReservedBits,
}

impl From<crate::crypto::DecryptError> for PacketError {
    fn from(_: crate::crypto::DecryptError) -> Self {
        PacketError::Decrypt
    }
}

impl From<UnexpectedEnd> for PacketError {
    fn from(_: UnexpectedEnd) -> Self {
        PacketError::Truncated
    }
}

fn cid(r: &mut Reader<'_>) -> Result<ConnectionId, UnexpectedEnd> {
    r.array().map(ConnectionId)
}

/// Reads the destination connection id a datagram is addressed to, for
/// routing, without validating anything else.
pub fn peek_dcid(datagram: &[u8]) -> Option<ConnectionId> {
    let first = *datagram.first()?;
    let at = if first & LONG_BIT != 0 { 5 } else { 1 };
    let bytes = datagram.get(at..at + CID_LEN)?;
    Some(ConnectionId(bytes.try_into().ok()?))
}

/// Parses the unprotected part of a datagram's header.
pub fn parse(datagram: &[u8]) -> Result<Header<'_>, PacketError> {
    let mut r = Reader::new(datagram);
    let first = r.u8()?;
    if first & FIXED_BIT == 0 {
        return Err(PacketError::NotMxp);
    }
    if first & LONG_BIT == 0 {
        if first & SHORT_UNUSED != 0 {
            return Err(PacketError::Malformed);
        }
        let dcid = cid(&mut r)?;
        if datagram.len() < MIN_SHORT_LEN {
            return Err(PacketError::Truncated);
        }
        return Ok(Header::Short { dcid });
    }
    if first & 0x0f != 0 {
        return Err(PacketError::Malformed);
    }
    let version = r.u32()?;
    let dcid = cid(&mut r)?;
    let scid = cid(&mut r)?;
    let ty = (first >> 4) & 0x03;
    if version != VERSION {
        // Only an Initial can start a conversation in another version; the
        // server answers it with a Reject. Anything else is noise.
        return match ty {
            0 => Ok(Header::Initial {
                version,
                dcid,
                scid,
                token: &[],
                noise: &[],
                mac1: &[],
                covered: &[],
            }),
            _ => Err(PacketError::UnsupportedVersion(version)),
        };
    }
    Ok(match ty {
        0 => {
            let token = r.length_prefixed()?;
            let noise = r.length_prefixed()?;
            let covered = &datagram[..r.position()];
            let mac1 = r.bytes(MAC1_LEN)?;
            Header::Initial {
                version,
                dcid,
                scid,
                token,
                noise,
                mac1,
                covered,
            }
        }
        1 => Header::Handshake {
            dcid,
            scid,
            noise: r.length_prefixed()?,
        },
        2 => Header::Retry {
            dcid,
            scid,
            token: r.length_prefixed()?,
        },
        _ => Header::Reject {
            dcid,
            scid,
            reason: RejectReason::decode(&mut r)?,
        },
    })
}

fn long_header(ty: LongType, dcid: ConnectionId, scid: ConnectionId, out: &mut Vec<u8>) {
    out.push(LONG_BIT | FIXED_BIT | ((ty as u8) << 4));
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&dcid.0);
    out.extend_from_slice(&scid.0);
}

fn length_prefixed(bytes: &[u8], out: &mut Vec<u8>) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Writes an Initial, with its mac1 under `mac1` (the node's key), padded
/// to at least [`MIN_INITIAL_SIZE`].
pub fn write_initial(
    dcid: ConnectionId,
    scid: ConnectionId,
    token: &[u8],
    noise: &[u8],
    mac1: &Mac1Key,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    long_header(LongType::Initial, dcid, scid, out);
    length_prefixed(token, out);
    length_prefixed(noise, out);
    let mac = mac1.compute(&out[start..]);
    out.extend_from_slice(&mac);
    let len = out.len() - start;
    if len < MIN_INITIAL_SIZE {
        out.resize(start + MIN_INITIAL_SIZE, 0);
    }
}

/// Writes the server's handshake answer.
pub fn write_handshake(dcid: ConnectionId, scid: ConnectionId, noise: &[u8], out: &mut Vec<u8>) {
    long_header(LongType::Handshake, dcid, scid, out);
    length_prefixed(noise, out);
}

/// Writes a stateless retry.
pub fn write_retry(dcid: ConnectionId, scid: ConnectionId, token: &[u8], out: &mut Vec<u8>) {
    long_header(LongType::Retry, dcid, scid, out);
    length_prefixed(token, out);
}

/// Writes a stateless refusal.
pub fn write_reject(
    dcid: ConnectionId,
    scid: ConnectionId,
    reason: RejectReason,
    out: &mut Vec<u8>,
) {
    long_header(LongType::Reject, dcid, scid, out);
    reason.encode(out);
}

/// Length of [`handshake_prologue`]'s output.
pub const PROLOGUE_LEN: usize = 5 + 4 + 2 * CID_LEN;

/// The Noise prologue for a handshake: binds the version and both
/// connection ids of the Initial, so tampering with them breaks the
/// handshake instead of misrouting it.
pub fn handshake_prologue(dcid: ConnectionId, scid: ConnectionId) -> [u8; PROLOGUE_LEN] {
    let mut p = [0u8; PROLOGUE_LEN];
    p[..5].copy_from_slice(b"MXP/1");
    p[5..9].copy_from_slice(&VERSION.to_be_bytes());
    p[9..17].copy_from_slice(&dcid.0);
    p[17..].copy_from_slice(&scid.0);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: ConnectionId = ConnectionId([1; 8]);
    const B: ConnectionId = ConnectionId([2; 8]);

    fn mac1_key() -> Mac1Key {
        Mac1Key::for_node(&crate::crypto::PublicKey([5; 32]))
    }

    #[test]
    fn initial_is_padded_and_parses_back() {
        let mut buf = Vec::new();
        let key = mac1_key();
        write_initial(A, B, b"tok", b"noise", &key, &mut buf);
        assert_eq!(buf.len(), MIN_INITIAL_SIZE);
        let Ok(Header::Initial {
            version,
            dcid,
            scid,
            token,
            noise,
            mac1,
            covered,
        }) = parse(&buf)
        else {
            panic!("an Initial");
        };
        assert_eq!((version, dcid, scid), (VERSION, A, B));
        assert_eq!((token, noise), (&b"tok"[..], &b"noise"[..]));
        assert_eq!(covered, &buf[..LONG_HEADER_LEN + 4 + 6]);
        assert!(
            key.verify(covered, mac1),
            "mac1 covers the header, token and noise"
        );
        assert_eq!(peek_dcid(&buf), Some(A));
    }

    #[test]
    fn a_changed_byte_anywhere_before_mac1_breaks_it() {
        let key = mac1_key();
        let mut buf = Vec::new();
        write_initial(A, B, b"tok", b"noise", &key, &mut buf);
        for i in 0..LONG_HEADER_LEN + 4 + 6 {
            let mut spoiled = buf.clone();
            spoiled[i] ^= 0x01;
            if let Ok(Header::Initial { mac1, covered, .. }) = parse(&spoiled) {
                assert!(!key.verify(covered, mac1), "byte {i}");
            }
        }
    }

    #[test]
    fn server_packets_parse_back() {
        let mut buf = Vec::new();
        write_handshake(B, A, b"msg2", &mut buf);
        assert_eq!(
            parse(&buf).unwrap(),
            Header::Handshake {
                dcid: B,
                scid: A,
                noise: b"msg2"
            }
        );
        buf.clear();
        write_retry(B, A, b"t", &mut buf);
        assert_eq!(
            parse(&buf).unwrap(),
            Header::Retry {
                dcid: B,
                scid: A,
                token: b"t"
            }
        );
        buf.clear();
        write_reject(
            B,
            A,
            RejectReason::CarrierRefused { quic_port: 4434 },
            &mut buf,
        );
        assert_eq!(
            parse(&buf).unwrap(),
            Header::Reject {
                dcid: B,
                scid: A,
                reason: RejectReason::CarrierRefused { quic_port: 4434 }
            }
        );
        for why in [
            BusyReason::Overloaded,
            BusyReason::ConnectionLimit,
            BusyReason::Unverifiable,
        ] {
            buf.clear();
            write_reject(B, A, RejectReason::Busy(why), &mut buf);
            assert_eq!(
                parse(&buf).unwrap(),
                Header::Reject {
                    dcid: B,
                    scid: A,
                    reason: RejectReason::Busy(why)
                }
            );
        }
        buf.clear();
        write_reject(B, A, RejectReason::ServerKeyMismatch, &mut buf);
        assert_eq!(
            parse(&buf).unwrap(),
            Header::Reject {
                dcid: B,
                scid: A,
                reason: RejectReason::ServerKeyMismatch
            }
        );
    }

    #[test]
    fn foreign_version_initial_is_surfaced_other_types_rejected() {
        let mut buf = Vec::new();
        write_initial(A, B, b"", b"x", &mac1_key(), &mut buf);
        buf[1..5].copy_from_slice(&7u32.to_be_bytes());
        assert!(matches!(
            parse(&buf),
            Ok(Header::Initial { version: 7, .. })
        ));
        buf[0] = LONG_BIT | FIXED_BIT | (1 << 4);
        assert_eq!(parse(&buf), Err(PacketError::UnsupportedVersion(7)));
    }

    #[test]
    fn junk_is_typed_errors() {
        assert_eq!(parse(&[]), Err(PacketError::Truncated));
        assert_eq!(parse(&[0x00; 40]), Err(PacketError::NotMxp));
        assert_eq!(parse(&[0xcf; 40]), Err(PacketError::Malformed));
        assert_eq!(parse(&[0x40; 20]), Err(PacketError::Truncated));
        let mut buf = Vec::new();
        write_handshake(B, A, b"msg2", &mut buf);
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut]), Err(PacketError::Truncated), "cut {cut}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = parse(&data);
            let _ = peek_dcid(&data);
        }
    }
}
