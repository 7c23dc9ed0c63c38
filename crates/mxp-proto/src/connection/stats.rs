//! Per-connection counters: what operators graph and alert on.

use std::time::Duration;

use crate::Band;
use crate::datagrams::DatagramStats;
use crate::histogram::LatencyHistogram;
use crate::scheduler::BandStats;
use crate::streams::FlowStats;

/// Counters and current values of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Datagrams sent.
    pub packets_sent: u64,
    /// Datagrams received and accepted.
    pub packets_received: u64,
    /// Bytes sent, on the wire.
    pub bytes_sent: u64,
    /// Bytes received, on the wire.
    pub bytes_received: u64,
    /// Packets declared lost.
    pub packets_lost: u64,
    /// Bytes of packets declared lost.
    pub bytes_lost: u64,
    /// Stream frames queued again after a loss or probe.
    pub retransmitted_frames: u64,
    /// Probe timeouts that fired.
    pub probes: u64,
    /// Packets that only carried an ACK.
    pub ack_only_packets: u64,
    /// ACK frames sent.
    pub acks_sent: u64,
    /// Packets refused by the replay window as already received.
    pub duplicate_packets: u64,
    /// Packets refused by the replay window as too old to judge.
    pub old_packets: u64,
    /// Packets that failed authentication (corrupted, forged, old keys).
    pub decrypt_failures: u64,
    /// Datagrams that could not be parsed.
    pub malformed_packets: u64,
    /// Packets ignored for other reasons (wrong state, unexpected type).
    pub dropped_packets: u64,
    /// Times sending was held back by the anti-amplification limit.
    pub amplification_blocked: u64,
    /// Connections closed because the peer broke the protocol.
    pub protocol_errors: u64,
    /// BLOCKED frames the peer sent us (it wanted more credit).
    pub peer_blocked_frames: u64,
    /// Peer address changes followed.
    pub migrations: u64,
    /// Key rotations so far.
    pub key_updates: u64,
    /// Smoothed RTT.
    pub rtt: Duration,
    /// Smallest RTT seen.
    pub min_rtt: Duration,
    /// Congestion window, bytes.
    pub congestion_window: u64,
    /// Bytes sent and not yet acknowledged or lost.
    pub bytes_in_flight: u64,
    /// Streams currently open.
    pub streams_active: u64,
    /// Flow control.
    pub flow: FlowStats,
    /// Scheduler, per band ([`Band::index`]).
    pub bands: [BandStats; Band::COUNT],
    /// Datagrams.
    pub datagrams: DatagramStats,
    /// Every RTT sample taken.
    pub rtt_samples: LatencyHistogram,
    /// Limits the peer ran into.
    pub peer_limits: PeerLimitStats,
}

/// Times a peer ran into one of the limits that bound what it can make a
/// node hold or do (see docs/transport/security.md). The ones that close
/// the connection count once each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerLimitStats {
    /// Closed: the peer's stream data arrived in more separate pieces than
    /// the connection keeps.
    pub fragmented: u64,
    /// Closed: a DATAGRAM frame where datagrams are disabled.
    pub datagrams_disabled: u64,
    /// PATH_CHALLENGE answers dropped beyond the few kept (the oldest go).
    pub path_responses_dropped: u64,
    /// ACK frames beyond the per-packet bound, ignored.
    pub acks_ignored: u64,
    /// Closed: the peer updated its keys faster than the rate limit.
    pub key_updates: u64,
    /// Closed: the failed-decryption budget ran out.
    pub decrypt_budget: u64,
    /// Closed: the peer left too many of our packets unacknowledged.
    pub unacknowledged: u64,
}

impl PeerLimitStats {
    /// Label values of the runtime's `mxp_peer_limits_total`, in the order
    /// [`counts`](Self::counts) gives them.
    pub const KINDS: [&'static str; 7] = [
        "fragmented",
        "datagrams_disabled",
        "path_responses_dropped",
        "acks_ignored",
        "key_updates",
        "decrypt_budget",
        "unacknowledged",
    ];

    /// The counters, in [`KINDS`](Self::KINDS) order.
    pub fn counts(&self) -> [u64; 7] {
        [
            self.fragmented,
            self.datagrams_disabled,
            self.path_responses_dropped,
            self.acks_ignored,
            self.key_updates,
            self.decrypt_budget,
            self.unacknowledged,
        ]
    }

    /// Adds `other`'s counters.
    pub fn accumulate(&mut self, other: &PeerLimitStats) {
        self.fragmented += other.fragmented;
        self.datagrams_disabled += other.datagrams_disabled;
        self.path_responses_dropped += other.path_responses_dropped;
        self.acks_ignored += other.acks_ignored;
        self.key_updates += other.key_updates;
        self.decrypt_budget += other.decrypt_budget;
        self.unacknowledged += other.unacknowledged;
    }
}

impl ConnectionStats {
    /// Adds `other`'s counters (not its current values: RTT, window, bytes
    /// in flight, open streams), to total connections up over time.
    pub fn accumulate(&mut self, other: &ConnectionStats) {
        self.packets_sent += other.packets_sent;
        self.packets_received += other.packets_received;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.packets_lost += other.packets_lost;
        self.bytes_lost += other.bytes_lost;
        self.retransmitted_frames += other.retransmitted_frames;
        self.probes += other.probes;
        self.ack_only_packets += other.ack_only_packets;
        self.acks_sent += other.acks_sent;
        self.duplicate_packets += other.duplicate_packets;
        self.old_packets += other.old_packets;
        self.decrypt_failures += other.decrypt_failures;
        self.malformed_packets += other.malformed_packets;
        self.dropped_packets += other.dropped_packets;
        self.amplification_blocked += other.amplification_blocked;
        self.protocol_errors += other.protocol_errors;
        self.peer_blocked_frames += other.peer_blocked_frames;
        self.migrations += other.migrations;
        self.key_updates += other.key_updates;
        self.flow.accumulate(&other.flow);
        for (a, b) in self.bands.iter_mut().zip(&other.bands) {
            a.accumulate(b);
        }
        self.datagrams.accumulate(&other.datagrams);
        self.rtt_samples.merge(&other.rtt_samples);
        self.peer_limits.accumulate(&other.peer_limits);
    }
}
