//! Limits each end announces in the handshake (inside the encrypted Noise
//! payloads), as tagged varints so later versions can add parameters that
//! older peers skip.

use std::time::Duration;

use thiserror::Error;

use crate::coding::{Reader, UnexpectedEnd, put_varint, varint_len};
use crate::config::TransportConfig;

/// The limits one end imposes on the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportParams {
    /// Idle timeout of the announcing end.
    pub idle_timeout: Duration,
    /// Largest UDP payload the announcing end accepts.
    pub max_udp_payload_size: u64,
    /// Connection-level flow-control credit.
    pub initial_max_data: u64,
    /// Per-stream flow-control credit.
    pub initial_max_stream_data: u64,
    /// Bidirectional streams the peer may open.
    pub initial_max_streams_bidi: u64,
    /// Unidirectional streams the peer may open.
    pub initial_max_streams_uni: u64,
    /// Largest datagram payload accepted; 0: datagrams disabled.
    pub max_datagram_size: u64,
    /// Longest the announcing end delays acknowledgements.
    pub max_ack_delay: Duration,
}

/// Announced parameters could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParamsError {
    /// The encoding was cut short.
    #[error("transport parameters truncated")]
    Truncated,
    /// A value is out of its allowed range.
    #[error("transport parameter {0:#x} has an invalid value")]
    Invalid(u64),
}

impl From<UnexpectedEnd> for ParamsError {
    fn from(_: UnexpectedEnd) -> Self {
        ParamsError::Truncated
    }
}

mod id {
    pub(super) const IDLE_TIMEOUT_US: u64 = 0x01;
    pub(super) const MAX_UDP_PAYLOAD: u64 = 0x03;
    pub(super) const MAX_DATA: u64 = 0x04;
    pub(super) const MAX_STREAM_DATA: u64 = 0x05;
    pub(super) const MAX_STREAMS_BIDI: u64 = 0x08;
    pub(super) const MAX_STREAMS_UNI: u64 = 0x09;
    pub(super) const MAX_ACK_DELAY_US: u64 = 0x0b;
    pub(super) const MAX_DATAGRAM: u64 = 0x20;
}

impl TransportParams {
    /// What this end announces, from its configuration.
    pub fn from_config(c: &TransportConfig) -> Self {
        TransportParams {
            idle_timeout: c.idle_timeout,
            max_udp_payload_size: u64::from(c.max_udp_payload_size),
            initial_max_data: c.receive_window,
            initial_max_stream_data: c.stream_receive_window,
            initial_max_streams_bidi: c.max_concurrent_bidi_streams,
            initial_max_streams_uni: c.max_concurrent_uni_streams,
            max_datagram_size: u64::from(c.max_datagram_size),
            max_ack_delay: c.max_ack_delay,
        }
    }

    fn fields(&self) -> [(u64, u64); 8] {
        [
            (id::IDLE_TIMEOUT_US, self.idle_timeout.as_micros() as u64),
            (id::MAX_UDP_PAYLOAD, self.max_udp_payload_size),
            (id::MAX_DATA, self.initial_max_data),
            (id::MAX_STREAM_DATA, self.initial_max_stream_data),
            (id::MAX_STREAMS_BIDI, self.initial_max_streams_bidi),
            (id::MAX_STREAMS_UNI, self.initial_max_streams_uni),
            (id::MAX_ACK_DELAY_US, self.max_ack_delay.as_micros() as u64),
            (id::MAX_DATAGRAM, self.max_datagram_size),
        ]
    }

    /// Appends the encoding: (id, length, varint value) triples.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for (id, value) in self.fields() {
            let value = value.min(crate::coding::VARINT_MAX);
            put_varint(out, id);
            put_varint(out, varint_len(value) as u64);
            put_varint(out, value);
        }
    }

    /// Reads an encoding; unknown ids are skipped, absent ones default to
    /// the most conservative value (zero credit).
    pub fn decode(buf: &[u8]) -> Result<Self, ParamsError> {
        let mut p = TransportParams {
            idle_timeout: Duration::ZERO,
            max_udp_payload_size: 1200,
            initial_max_data: 0,
            initial_max_stream_data: 0,
            initial_max_streams_bidi: 0,
            initial_max_streams_uni: 0,
            max_datagram_size: 0,
            max_ack_delay: Duration::ZERO,
        };
        let mut r = Reader::new(buf);
        while !r.is_empty() {
            let id = r.varint()?;
            let body = r.length_prefixed()?;
            let mut v = Reader::new(body);
            let value = match id {
                id::IDLE_TIMEOUT_US
                | id::MAX_UDP_PAYLOAD
                | id::MAX_DATA
                | id::MAX_STREAM_DATA
                | id::MAX_STREAMS_BIDI
                | id::MAX_STREAMS_UNI
                | id::MAX_ACK_DELAY_US
                | id::MAX_DATAGRAM => {
                    let value = v.varint()?;
                    if !v.is_empty() {
                        return Err(ParamsError::Invalid(id));
                    }
                    value
                }
                _ => continue,
            };
            match id {
                id::IDLE_TIMEOUT_US => p.idle_timeout = Duration::from_micros(value),
                id::MAX_UDP_PAYLOAD if value < 1200 => return Err(ParamsError::Invalid(id)),
                id::MAX_UDP_PAYLOAD => p.max_udp_payload_size = value,
                id::MAX_DATA => p.initial_max_data = value,
                id::MAX_STREAM_DATA => p.initial_max_stream_data = value,
                id::MAX_STREAMS_BIDI | id::MAX_STREAMS_UNI if value > 1 << 60 => {
                    return Err(ParamsError::Invalid(id));
                }
                id::MAX_STREAMS_BIDI => p.initial_max_streams_bidi = value,
                id::MAX_STREAMS_UNI => p.initial_max_streams_uni = value,
                id::MAX_ACK_DELAY_US if value >= 1 << 24 => return Err(ParamsError::Invalid(id)),
                id::MAX_ACK_DELAY_US => p.max_ack_delay = Duration::from_micros(value),
                _ => p.max_datagram_size = value,
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults_round_trip() {
        let p = TransportParams::from_config(&TransportConfig::default());
        let mut buf = Vec::new();
        p.encode(&mut buf);
        assert_eq!(TransportParams::decode(&buf), Ok(p));
    }

    #[test]
    fn unknown_parameters_are_skipped() {
        let p = TransportParams::from_config(&TransportConfig::default());
        let mut buf = vec![0x3f, 2, 0xaa, 0xbb];
        p.encode(&mut buf);
        assert_eq!(TransportParams::decode(&buf), Ok(p));
    }

    #[test]
    fn bad_values_are_refused() {
        let mut buf = Vec::new();
        put_varint(&mut buf, id::MAX_UDP_PAYLOAD);
        put_varint(&mut buf, 2);
        put_varint(&mut buf, 100);
        assert_eq!(
            TransportParams::decode(&buf),
            Err(ParamsError::Invalid(id::MAX_UDP_PAYLOAD))
        );
        assert_eq!(
            TransportParams::decode(&[0x04, 5, 1]),
            Err(ParamsError::Truncated)
        );
    }

    proptest! {
        #[test]
        fn decoding_junk_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = TransportParams::decode(&data);
        }
    }
}
