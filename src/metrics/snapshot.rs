//! The JSON a node gives at `GET /snapshot` (`mxp admin ADDR snapshot`):
//! every metric of `/metrics` plus the stats of each connection, for the
//! "before" and "after" of an incident report.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use mxp_proto::histogram::{LATENCY_BOUNDS_NS, LatencyHistogram};
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};

use super::{Family, Kind, Sample, Value};
use crate::Endpoint;
use crate::capture::CaptureStatus;
use crate::endpoint::Status;
use crate::stats::ConnectionInfo;

/// A node's state at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// When it was taken, in milliseconds since the Unix epoch.
    pub taken_at_unix_ms: u64,
    /// Who took it.
    pub node: NodeInfo,
    /// The deployment switch and drains, as `mxp admin status` shows them.
    pub status: Status,
    /// The packet capture.
    pub capture: CaptureStatus,
    /// Every metric `/metrics` serves, same names and labels.
    pub metrics: Vec<Family>,
    /// Every open connection, both carriers.
    pub connections: Vec<ConnectionInfo>,
}

/// The node's addresses and identity.
#[derive(Debug, Clone, Serialize)]
pub struct NodeInfo {
    /// Its static public key (hex), what clients pin.
    pub public_key: String,
    /// The MXP socket.
    pub mxp_addr: String,
    /// The QUIC listener, if any.
    pub quic_addr: Option<String>,
}

impl Endpoint {
    /// Every metric and every connection's stats, now (`GET /snapshot`).
    pub fn snapshot(&self) -> Snapshot {
        let taken_at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Snapshot {
            taken_at_unix_ms,
            node: NodeInfo {
                public_key: self.public_key().to_string(),
                mxp_addr: self.local_addr().to_string(),
                quic_addr: self.quic_addr().map(|a| a.to_string()),
            },
            status: self.status(),
            capture: self.capture_status(),
            metrics: super::collect(self),
            connections: self.connection_infos(),
        }
    }
}

impl Serialize for Family {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Family", 4)?;
        s.serialize_field("name", &self.exposed_name())?;
        s.serialize_field(
            "type",
            match self.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            },
        )?;
        s.serialize_field("help", self.help)?;
        s.serialize_field("samples", &self.samples)?;
        s.end()
    }
}

impl Serialize for Sample {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let labels: BTreeMap<_, _> = self.labels.iter().copied().collect();
        let mut s = serializer.serialize_map(None)?;
        s.serialize_entry("labels", &labels)?;
        match &self.value {
            Value::Count(n) => s.serialize_entry("value", n)?,
            Value::Real(x) => s.serialize_entry("value", x)?,
            Value::Histogram(h) => s.serialize_entry("value", &HistogramJson::of(h))?,
        }
        s.end()
    }
}

/// A histogram as JSON: cumulative buckets like Prometheus', and the
/// quantiles they resolve (each the upper bound of the bucket the
/// quantile falls in; `null` when empty or beyond the last bound).
#[derive(Serialize)]
struct HistogramJson {
    count: u64,
    sum_s: f64,
    p50_s: Option<f64>,
    p95_s: Option<f64>,
    p99_s: Option<f64>,
    buckets: Vec<Bucket>,
}

#[derive(Serialize)]
struct Bucket {
    /// Upper bound in seconds; `None` (null) for the last, unbounded one.
    le: Option<f64>,
    /// Samples at or below `le`.
    count: u64,
}

impl HistogramJson {
    fn of(h: &LatencyHistogram) -> HistogramJson {
        let mut seen = 0;
        let buckets: Vec<Bucket> = h
            .buckets
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                seen += n;
                Bucket {
                    le: LATENCY_BOUNDS_NS.get(i).map(|&ns| ns as f64 / 1e9),
                    count: seen,
                }
            })
            .collect();
        let count = h.count();
        let quantile = |q: f64| {
            if count == 0 {
                return None;
            }
            let rank = (q * count as f64).ceil() as u64;
            buckets.iter().find(|b| b.count >= rank).and_then(|b| b.le)
        };
        HistogramJson {
            count,
            sum_s: h.sum_ns as f64 / 1e9,
            p50_s: quantile(0.50),
            p95_s: quantile(0.95),
            p99_s: quantile(0.99),
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn quantiles_are_the_bounds_of_the_buckets_they_fall_in() {
        let mut h = LatencyHistogram::default();
        for _ in 0..98 {
            h.record(Duration::from_micros(30));
        }
        h.record(Duration::from_micros(300));
        h.record(Duration::from_millis(50));
        let json = HistogramJson::of(&h);
        assert_eq!(json.count, 100);
        assert_eq!(json.p50_s, Some(35e-6));
        assert_eq!(json.p95_s, Some(35e-6));
        assert_eq!(json.p99_s, Some(400e-6));
        assert_eq!(
            json.buckets.last().map(|b| (b.le, b.count)),
            Some((None, 100))
        );
        assert_eq!(HistogramJson::of(&LatencyHistogram::default()).p99_s, None);
    }

    #[test]
    fn a_family_serialises_with_its_exposed_name_and_labels() {
        let family = Family {
            name: "mxp_packets_lost",
            help: "Packets declared lost",
            kind: Kind::Counter,
            samples: vec![Sample {
                labels: vec![("carrier", "mxp")],
                value: Value::Count(3),
            }],
        };
        let json = serde_json::to_value(&family).unwrap();
        assert_eq!(json["name"], "mxp_packets_lost_total");
        assert_eq!(json["type"], "counter");
        assert_eq!(json["samples"][0]["labels"]["carrier"], "mxp");
        assert_eq!(json["samples"][0]["value"], 3);
    }
}
