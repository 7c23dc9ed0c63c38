//! What a node measures, in one shape that both outputs share: the
//! Prometheus text served at the admin endpoint's `GET /metrics`
//! ([`render`], with the `prometheus` feature) and the JSON [`Snapshot`] at `GET /snapshot`.
//! `docs/transport/metrics.md` is the table of every metric.
//!
//! Counting happens where the state already is: the protocol core counts
//! into its per-connection and per-endpoint state (behind the endpoint
//! lock the packet path holds anyway), QUIC's counters are quinn's, and
//! what the runtime counts itself (call durations, open QUIC streams) are
//! relaxed atomics. A scrape reads them all; nothing is counted twice.

#[cfg(feature = "prometheus")]
mod prometheus;
mod snapshot;

use mxp_proto::histogram::LatencyHistogram;
use mxp_proto::{Band, PeerLimitStats};

use crate::capture::CaptureState;
use crate::stats::CallSide;
use crate::{Carrier, Endpoint};

pub use crate::stats::ConnectionInfo;
#[cfg(feature = "prometheus")]
pub use prometheus::render;
pub use snapshot::{NodeInfo, Snapshot};

/// One metric: a name, what it means, and its samples (one per label set).
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The name, without the `_total` a counter gets on the wire (see
    /// [`exposed_name`](Self::exposed_name)).
    pub name: &'static str,
    /// What it counts.
    pub help: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The values.
    pub samples: Vec<Sample>,
}

impl Family {
    /// The name as `/metrics` shows it.
    pub fn exposed_name(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.name),
            _ => self.name.to_owned(),
        }
    }
}

/// Prometheus metric types used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (until the node restarts).
    Counter,
    /// A current value.
    Gauge,
    /// Latency samples in [`mxp_proto::histogram::LATENCY_BOUNDS_NS`]
    /// buckets, in seconds.
    Histogram,
}

/// One value of a metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Label names and values.
    pub labels: Vec<(&'static str, &'static str)>,
    /// The value.
    pub value: Value,
}

/// A sample's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A count.
    Count(u64),
    /// A measurement.
    Real(f64),
    /// A latency distribution.
    Histogram(LatencyHistogram),
}

/// The ways a connection ends that are failures (`mxp_connection_errors`):
/// every [`mxp_proto::ConnectionError::kind`] except closes by either
/// application.
pub(crate) const ERROR_KINDS: [&str; 10] = [
    "timed_out",
    "reset",
    "transport_error",
    "handshake_timed_out",
    "node_busy",
    "server_key_mismatch",
    "client_not_allowed",
    "version_mismatch",
    "clock_skew",
    "carrier_refused",
];

/// Builds the families of one kind, sample by sample.
struct Families(Vec<Family>);

impl Families {
    fn family(&mut self, kind: Kind, name: &'static str, help: &'static str) -> &mut Family {
        self.0.push(Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        });
        self.0.last_mut().expect("just pushed")
    }

    fn counter(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.family(Kind::Counter, name, help)
            .with(&[], Value::Count(value));
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, value: f64) {
        self.family(Kind::Gauge, name, help)
            .with(&[], Value::Real(value));
    }
}

impl Family {
    fn with(&mut self, labels: &[(&'static str, &'static str)], value: Value) -> &mut Family {
        self.samples.push(Sample {
            labels: labels.to_vec(),
            value,
        });
        self
    }

    /// One sample per carrier.
    fn per_carrier(&mut self, value: impl Fn(Carrier) -> Value) -> &mut Family {
        for carrier in Carrier::ALL {
            self.with(&[("carrier", carrier.as_str())], value(carrier));
        }
        self
    }

    /// One sample per scheduler band.
    fn per_band(&mut self, value: impl Fn(Band) -> u64) -> &mut Family {
        for band in Band::ALL {
            self.with(&[("band", band.as_str())], Value::Count(value(band)));
        }
        self
    }
}

fn flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}

/// Every metric of `endpoint`, read now.
pub(crate) fn collect(endpoint: &Endpoint) -> Vec<Family> {
    let (mxp, door) = endpoint.mxp_totals();
    let quic = endpoint.quic_totals();
    let of = |c: Carrier| match c {
        Carrier::Mxp => &mxp,
        Carrier::Quic => &quic,
    };
    let all = &mxp.counters;
    let status = endpoint.status();
    let capture = endpoint.capture_status();
    let calls = endpoint.call_durations();
    let mut f = Families(Vec::new());
    use Kind::{Counter, Gauge, Histogram};
    let count = Value::Count;

    // Connections and streams.
    f.family(Gauge, "mxp_connections_active", "Open connections")
        .per_carrier(|c| Value::Real(of(c).active as f64));
    f.family(Counter, "mxp_connections", "Connections established")
        .per_carrier(|c| count(of(c).established));
    let errors = f.family(
        Counter,
        "mxp_connection_errors",
        "Connections that ended abnormally, by kind",
    );
    for carrier in Carrier::ALL {
        for kind in ERROR_KINDS {
            let n = of(carrier).ended.get(kind).copied().unwrap_or(0);
            errors.with(&[("carrier", carrier.as_str()), ("kind", kind)], count(n));
        }
    }
    f.family(Gauge, "mxp_streams_active", "Open streams")
        .per_carrier(|c| Value::Real(of(c).streams_active as f64));
    let handshakes = f.family(Counter, "mxp_handshakes", "Handshake outcomes");
    for carrier in Carrier::ALL {
        for (&result, &n) in &of(carrier).handshakes {
            handshakes.with(
                &[("carrier", carrier.as_str()), ("result", result)],
                count(n),
            );
        }
    }
    let limited = f.family(
        Counter,
        "mxp_handshakes_limited",
        "Initiations set aside without handshake work to protect the node, by reason",
    );
    for carrier in Carrier::ALL {
        for (&reason, &n) in &of(carrier).limited {
            limited.with(
                &[("carrier", carrier.as_str()), ("reason", reason)],
                count(n),
            );
        }
    }
    f.family(
        Counter,
        "mxp_handshake_jobs",
        "Handshake jobs run: the Diffie-Hellman work done for new sessions",
    )
    .per_carrier(|c| count(of(c).handshake_jobs));
    f.family(
        Gauge,
        "mxp_handshake_queue_depth",
        "Initiations waiting for, or in, handshake work",
    )
    .per_carrier(|c| Value::Real(of(c).handshake_queue as f64));

    // Flow control and the scheduler (the MXP carrier's own machinery).
    f.family(
        Counter,
        "mxp_flow_credit_consumed_bytes",
        "Flow-control credit used: send (the peer's, by our writes), recv (ours, by the peer's data)",
    )
    .with(
        &[("direction", "send")],
        count(all.flow.send_credit_consumed),
    )
    .with(
        &[("direction", "recv")],
        count(all.flow.recv_credit_consumed),
    );
    f.counter(
        "mxp_flow_window_updates",
        "MAX_DATA / MAX_STREAM_DATA frames sent",
        all.flow.window_updates_sent,
    );
    f.counter(
        "mxp_flow_blocked",
        "Writes refused or cut short by a full flow-control window",
        all.flow.blocked_events,
    );
    f.family(
        Counter,
        "mxp_scheduler_enqueued",
        "Flows that became ready to send, per band",
    )
    .per_band(|b| all.bands[b.index()].enqueued);
    f.family(
        Counter,
        "mxp_scheduler_dequeued_frames",
        "Frames sent, per band",
    )
    .per_band(|b| all.bands[b.index()].dequeued_frames);
    f.family(
        Counter,
        "mxp_scheduler_dequeued_bytes",
        "Bytes sent, per band",
    )
    .per_band(|b| all.bands[b.index()].dequeued_bytes);

    // Packets, bytes, loss, latency.
    f.family(Counter, "mxp_packets_sent", "Packets sent")
        .per_carrier(|c| count(of(c).counters.packets_sent));
    f.family(
        Counter,
        "mxp_packets_received",
        "Packets received and accepted",
    )
    .per_carrier(|c| count(of(c).counters.packets_received));
    f.family(Counter, "mxp_packets_lost", "Packets declared lost")
        .per_carrier(|c| count(of(c).counters.packets_lost));
    f.counter(
        "mxp_frames_retransmitted",
        "Stream frames queued again after a loss or probe",
        all.retransmitted_frames,
    );
    f.family(Counter, "mxp_bytes_sent", "Bytes sent (UDP payload)")
        .per_carrier(|c| count(of(c).counters.bytes_sent));
    f.family(
        Counter,
        "mxp_bytes_received",
        "Bytes received (UDP payload)",
    )
    .per_carrier(|c| count(of(c).counters.bytes_received));
    f.family(
        Histogram,
        "mxp_rtt_seconds",
        "Round-trip-time samples (MXP carrier)",
    )
    .with(&[], Value::Histogram(all.rtt_samples));
    let durations = f.family(
        Histogram,
        "mxp_call_duration_seconds",
        "Calls: at a client, request sent to response received; at a node, call read to response handed to the transport",
    );
    for carrier in Carrier::ALL {
        for side in CallSide::ALL {
            let h = calls.load(carrier, side);
            durations.with(
                &[("carrier", carrier.as_str()), ("side", side.as_str())],
                Value::Histogram(h),
            );
        }
    }

    // Security.
    f.family(
        Counter,
        "mxp_replay_rejections",
        "Replays refused: handshake initiations (replayed: an attack; stale: an attack or a client clock off) and data packets (networks duplicate packets too)",
    )
    .with(
        &[("kind", "initiation_replayed")],
        count(door.replayed_initiations),
    )
    .with(
        &[("kind", "initiation_stale")],
        count(door.stale_initiations),
    )
    .with(&[("kind", "packet_duplicate")], count(all.duplicate_packets))
    .with(&[("kind", "packet_too_old")], count(all.old_packets));
    f.counter(
        "mxp_amplification_blocked",
        "Sends held back by the 3x anti-amplification limit",
        door.amplification_blocked + all.amplification_blocked,
    );
    f.counter(
        "mxp_refusals_suppressed",
        "Stateless refusals not sent: more than 1000 a second were due (a flood must not make the node a reflector)",
        door.refusals_suppressed,
    );
    f.counter(
        "mxp_decrypt_failures",
        "Packets that failed authentication",
        all.decrypt_failures,
    );
    f.counter(
        "mxp_datagrams_refused",
        "Datagrams refused before reaching a connection (garbage, unknown connection, refused handshakes)",
        door.datagrams_refused(),
    );
    f.counter("mxp_key_rotations", "Packet-key rotations", all.key_updates);
    let limits = f.family(
        Counter,
        "mxp_peer_limits",
        "Times an authenticated peer ran into a limit on what it can make the node hold or do, by limit (see docs/transport/security.md)",
    );
    for (limit, n) in PeerLimitStats::KINDS
        .into_iter()
        .zip(all.peer_limits.counts())
    {
        limits.with(&[("limit", limit)], count(n));
    }
    f.family(
        Counter,
        "mxp_stateless_resets",
        "Stateless resets sent (for connections this node no longer has) and received",
    )
    .with(&[("direction", "sent")], count(door.stateless_resets_sent))
    .with(
        &[("direction", "received")],
        count(door.stateless_resets_received),
    );
    let d = &all.datagrams;
    f.family(Counter, "mxp_datagrams", "Unreliable datagrams, by event")
        .with(&[("event", "sent")], count(d.sent))
        .with(&[("event", "received")], count(d.received))
        .with(&[("event", "dropped_send")], count(d.dropped_send))
        .with(&[("event", "dropped_recv")], count(d.dropped_recv))
        .with(&[("event", "lost")], count(d.lost));

    // The deployment switch and drains.
    f.family(
        Gauge,
        "mxp_carrier_accepting",
        "Whether the carrier accepts new sessions (the deployment switch)",
    )
    .per_carrier(|c| Value::Real(flag(status.accepting.accepts(c))));
    f.family(
        Gauge,
        "mxp_drain_active",
        "Whether the carrier is being drained",
    )
    .per_carrier(|c| Value::Real(flag(status.draining.iter().any(|d| d.carrier == c))));
    f.family(
        Gauge,
        "mxp_drain_deadline_seconds",
        "Seconds until a draining carrier's remaining connections are closed (0: not draining)",
    )
    .per_carrier(|c| {
        let left = status.draining.iter().find(|d| d.carrier == c);
        Value::Real(left.map_or(0.0, |d| d.deadline_in_s))
    });
    let refused = f.family(
        Counter,
        "mxp_message_errors",
        "MXP messages refused by the codec on a stream, by kind",
    );
    for (kind, n) in endpoint.message_errors().load() {
        refused.with(&[("kind", kind)], count(n));
    }
    f.counter(
        "mxp_carrier_fallbacks",
        "Client connections that fell back from MXP to QUIC",
        status.fallbacks,
    );

    // Packet capture.
    let recording = matches!(
        capture.state,
        CaptureState::Recording | CaptureState::LimitReached
    );
    f.gauge(
        "mxp_capture_active",
        "Whether a packet capture is running",
        flag(recording),
    );
    f.counter(
        "mxp_capture_bytes",
        "Bytes written to packet captures",
        capture.bytes_total,
    );
    f.0
}
