//! What the runtime counts, at the bottom of its layers: plain data about
//! connections that the carriers fill in, and the recorders the facade
//! counts calls and refused messages into. Metrics, snapshots and the admin
//! endpoint read it all; nothing here knows a carrier's internals or an
//! output format.

mod calls;
mod messages;

use std::collections::BTreeMap;

use mxp_proto::{ConnectionStats, PublicKey, Side};
use serde::Serialize;

use crate::Carrier;

pub(crate) use calls::{CallDurations, CallSide};
pub(crate) use messages::MessageErrors;

/// Counters over every connection a carrier of one endpoint has had.
#[derive(Debug, Clone, Default)]
pub(crate) struct CarrierTotals {
    /// Connections now (any state).
    pub active: u64,
    /// Connections whose handshake completed, ever.
    pub established: u64,
    /// Streams open now, over every connection.
    pub streams_active: u64,
    /// Counters of live connections plus those of closed ones.
    pub counters: ConnectionStats,
    /// How connections ended, by [`mxp_proto::ConnectionError::kind`].
    pub ended: BTreeMap<&'static str, u64>,
    /// Handshake outcomes, every known one present (zero or not).
    pub handshakes: BTreeMap<&'static str, u64>,
    /// Initiations set aside without handshake work to protect the node,
    /// by reason, every known one present.
    pub limited: BTreeMap<&'static str, u64>,
    /// Handshake jobs run: the Diffie-Hellman work done for new sessions.
    pub handshake_jobs: u64,
    /// Initiations waiting for, or in, handshake work now.
    pub handshake_queue: u64,
}

/// One connection's stats.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    /// What carries it.
    pub carrier: Carrier,
    /// `client` (this endpoint opened it) or `node` (it accepted it).
    pub side: &'static str,
    /// The `conn=` of this connection's log lines: `grep 'conn=VALUE'`
    /// finds its whole life in the node's log.
    pub conn: String,
    /// The peer's address.
    pub peer: String,
    /// The peer's static public key (hex), once authenticated.
    pub peer_key: Option<String>,
    /// Whether the handshake has completed.
    pub established: bool,
    /// Smoothed round-trip time, in microseconds.
    pub rtt_us: u64,
    /// Smallest round-trip time seen, in microseconds.
    pub min_rtt_us: u64,
    /// Congestion window, in bytes.
    pub congestion_window: u64,
    /// Bytes sent and not yet acknowledged or declared lost.
    pub bytes_in_flight: u64,
    /// Packets sent.
    pub packets_sent: u64,
    /// Packets received.
    pub packets_received: u64,
    /// Packets declared lost.
    pub packets_lost: u64,
    /// `packets_lost / packets_sent` (0 before anything is sent).
    pub loss_ratio: f64,
    /// Bytes sent (UDP payload).
    pub bytes_sent: u64,
    /// Bytes received (UDP payload).
    pub bytes_received: u64,
    /// Streams open now.
    pub streams_active: u64,
}

impl ConnectionInfo {
    pub(crate) fn new(
        carrier: Carrier,
        side: Side,
        conn: String,
        peer: std::net::SocketAddr,
        peer_key: Option<PublicKey>,
        established: bool,
        s: &ConnectionStats,
    ) -> ConnectionInfo {
        let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        ConnectionInfo {
            carrier,
            side: side.as_str(),
            conn,
            peer: peer.to_string(),
            peer_key: peer_key.map(|k| k.to_string()),
            established,
            rtt_us: micros(s.rtt),
            min_rtt_us: micros(s.min_rtt),
            congestion_window: s.congestion_window,
            bytes_in_flight: s.bytes_in_flight,
            packets_sent: s.packets_sent,
            packets_received: s.packets_received,
            packets_lost: s.packets_lost,
            loss_ratio: if s.packets_sent == 0 {
                0.0
            } else {
                s.packets_lost as f64 / s.packets_sent as f64
            },
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            streams_active: s.streams_active,
        }
    }
}
