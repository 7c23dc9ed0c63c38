//! How connections end, and the protocol error codes peers exchange.

use std::fmt;

use bytes::Bytes;
use thiserror::Error;

/// A transport-level error code carried by CONNECTION_CLOSE (QUIC's values,
/// so operators can reuse what they know).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransportErrorCode(pub u64);

impl TransportErrorCode {
    /// Graceful close.
    pub const NO_ERROR: Self = Self(0x0);
    /// A bug or resource failure at the closing end.
    pub const INTERNAL_ERROR: Self = Self(0x1);
    /// The server refused the connection.
    pub const CONNECTION_REFUSED: Self = Self(0x2);
    /// The peer sent more than the flow-control credit it was given.
    pub const FLOW_CONTROL_ERROR: Self = Self(0x3);
    /// The peer opened more streams than allowed.
    pub const STREAM_LIMIT_ERROR: Self = Self(0x4);
    /// A frame referred to a stream in a state that does not allow it.
    pub const STREAM_STATE_ERROR: Self = Self(0x5);
    /// A stream's final size changed or was exceeded.
    pub const FINAL_SIZE_ERROR: Self = Self(0x6);
    /// A frame could not be decoded.
    pub const FRAME_ENCODING_ERROR: Self = Self(0x7);
    /// Handshake parameters were invalid.
    pub const TRANSPORT_PARAMETER_ERROR: Self = Self(0x8);
    /// Any other protocol rule was broken.
    pub const PROTOCOL_VIOLATION: Self = Self(0xa);
    /// The peer updated its packet keys faster than allowed.
    pub const KEY_UPDATE_ERROR: Self = Self(0xe);
    /// Too many packets failed authentication to keep using the keys.
    pub const AEAD_LIMIT_REACHED: Self = Self(0xf);

    /// Name of a known code.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x0 => "NO_ERROR",
            0x1 => "INTERNAL_ERROR",
            0x2 => "CONNECTION_REFUSED",
            0x3 => "FLOW_CONTROL_ERROR",
            0x4 => "STREAM_LIMIT_ERROR",
            0x5 => "STREAM_STATE_ERROR",
            0x6 => "FINAL_SIZE_ERROR",
            0x7 => "FRAME_ENCODING_ERROR",
            0x8 => "TRANSPORT_PARAMETER_ERROR",
            0xa => "PROTOCOL_VIOLATION",
            0xe => "KEY_UPDATE_ERROR",
            0xf => "AEAD_LIMIT_REACHED",
            _ => return None,
        })
    }
}

impl fmt::Debug for TransportErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "{:#x}", self.0),
        }
    }
}

impl fmt::Display for TransportErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A protocol violation, detected locally or reported by the peer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{code}: {reason}")]
pub struct TransportError {
    /// What kind of violation.
    pub code: TransportErrorCode,
    /// Type of the frame that caused it, if one did.
    pub frame_type: Option<u64>,
    /// Human-readable detail.
    pub reason: String,
}

impl TransportError {
    pub(crate) fn new(code: TransportErrorCode, reason: impl Into<String>) -> Self {
        TransportError {
            code,
            frame_type: None,
            reason: reason.into(),
        }
    }

    pub(crate) fn in_frame(mut self, frame_type: u64) -> Self {
        self.frame_type = Some(frame_type);
        self
    }
}

/// Why a connection ended. Every way a connection can end has its own
/// variant, so callers (and metrics) can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The server does not speak this protocol version.
    #[error(
        "the server does not speak MXP version {:#010x}",
        crate::packet::VERSION
    )]
    VersionMismatch,
    /// The server could not decrypt our initiation: the server public key we
    /// were given is not the server's.
    #[error(
        "handshake refused: the server public key does not match the server (check --server-key)"
    )]
    ServerKeyMismatch,
    /// The server authenticated us and refused our client key.
    #[error("handshake refused: this client's key is not on the server's allow-list")]
    ClientNotAllowed,
    /// The server refused our handshake timestamp: the clocks of the two
    /// hosts differ by more than the server allows (replay protection
    /// relies on them roughly agreeing).
    #[error(
        "handshake refused: this host's clock is {local_ahead_ms} ms off the server's, more than it allows (check time sync)"
    )]
    ClockSkew {
        /// How far this host's clock is ahead of the server's (negative:
        /// behind), in milliseconds.
        local_ahead_ms: i64,
    },
    /// The node does not accept MXP connections now (its operator switched
    /// it to the QUIC carrier); it accepts QUIC on `quic_port` if given.
    #[error("the node does not accept MXP connections now{}", quic_hint(*quic_port))]
    CarrierRefused {
        /// UDP port of the node's QUIC listener, if it has one.
        quic_port: Option<u16>,
    },
    /// No answer to the handshake within the handshake timeout.
    #[error("handshake timed out: no answer from the server")]
    HandshakeTimedOut,
    /// The node kept setting our initiations aside until the handshake
    /// timeout, and said why.
    #[error("handshake refused until the timeout: the node said {reason}")]
    NodeBusy {
        /// What the node said the last time.
        reason: crate::packet::BusyReason,
    },
    /// The peer broke the protocol, or we did and the peer said so.
    #[error("transport error: {0}")]
    TransportError(#[from] TransportError),
    /// The peer's application closed the connection.
    #[error("closed by peer: code {code}{}", reason_suffix(reason))]
    ApplicationClosed {
        /// Application-defined code.
        code: u64,
        /// Application-supplied reason.
        reason: Bytes,
    },
    /// The peer no longer has this connection (it restarted, or lost its
    /// state) and said so with a stateless reset.
    #[error("connection reset: the peer no longer has this connection (did it restart?)")]
    Reset,
    /// Nothing was heard from the peer for the idle timeout.
    #[error("connection timed out (idle)")]
    TimedOut,
    /// This end closed the connection.
    #[error("connection closed locally")]
    LocallyClosed,
}

fn quic_hint(port: Option<u16>) -> String {
    port.map(|p| format!(" (it accepts QUIC on port {p})"))
        .unwrap_or_default()
}

fn reason_suffix(reason: &Bytes) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", String::from_utf8_lossy(reason))
    }
}

impl ConnectionError {
    /// Short stable name, used as a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectionError::VersionMismatch => "version_mismatch",
            ConnectionError::ServerKeyMismatch => "server_key_mismatch",
            ConnectionError::ClientNotAllowed => "client_not_allowed",
            ConnectionError::ClockSkew { .. } => "clock_skew",
            ConnectionError::CarrierRefused { .. } => "carrier_refused",
            ConnectionError::HandshakeTimedOut => "handshake_timed_out",
            ConnectionError::NodeBusy { .. } => "node_busy",
            ConnectionError::TransportError(_) => "transport_error",
            ConnectionError::ApplicationClosed { .. } => "application_closed",
            ConnectionError::Reset => "reset",
            ConnectionError::TimedOut => "timed_out",
            ConnectionError::LocallyClosed => "locally_closed",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use bytes::Bytes;

    use super::*;
    use crate::BusyReason;

    #[test]
    fn every_connection_error_has_a_distinct_kind_and_message() {
        let all = [
            ConnectionError::VersionMismatch,
            ConnectionError::ServerKeyMismatch,
            ConnectionError::ClientNotAllowed,
            ConnectionError::ClockSkew { local_ahead_ms: 5 },
            ConnectionError::CarrierRefused {
                quic_port: Some(4434),
            },
            ConnectionError::HandshakeTimedOut,
            ConnectionError::TransportError(TransportError {
                code: TransportErrorCode::FLOW_CONTROL_ERROR,
                frame_type: None,
                reason: "x".into(),
            }),
            ConnectionError::ApplicationClosed {
                code: 1,
                reason: Bytes::new(),
            },
            ConnectionError::NodeBusy {
                reason: BusyReason::Overloaded,
            },
            ConnectionError::Reset,
            ConnectionError::TimedOut,
            ConnectionError::LocallyClosed,
        ];
        // Exhaustive: a new variant must be added here (and given a kind).
        for e in &all {
            match e {
                ConnectionError::VersionMismatch
                | ConnectionError::ServerKeyMismatch
                | ConnectionError::ClientNotAllowed
                | ConnectionError::ClockSkew { .. }
                | ConnectionError::CarrierRefused { .. }
                | ConnectionError::HandshakeTimedOut
                | ConnectionError::NodeBusy { .. }
                | ConnectionError::TransportError(_)
                | ConnectionError::ApplicationClosed { .. }
                | ConnectionError::Reset
                | ConnectionError::TimedOut
                | ConnectionError::LocallyClosed => {}
            }
        }
        let kinds: HashSet<&str> = all.iter().map(ConnectionError::kind).collect();
        assert_eq!(kinds.len(), all.len(), "kinds collide: {kinds:?}");
        for k in &kinds {
            assert!(
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{k:?} is not a metric label"
            );
        }
        let messages: HashSet<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), all.len());
    }
}
