//! Call durations, recorded by whichever task finishes a call: relaxed
//! atomics, so recording never waits on a lock or on a scrape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mxp_proto::histogram::{LATENCY_BOUNDS_NS, LatencyHistogram};

use crate::Carrier;

/// Which end measured a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallSide {
    /// Request sent to response received.
    Client,
    /// Request received to response acknowledged.
    Node,
}

impl CallSide {
    pub(crate) const ALL: [CallSide; 2] = [CallSide::Client, CallSide::Node];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CallSide::Client => "client",
            CallSide::Node => "node",
        }
    }
}

/// A [`LatencyHistogram`] many tasks record into at once.
#[derive(Debug, Default)]
struct AtomicHistogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl AtomicHistogram {
    fn record(&self, sample: Duration) {
        self.buckets[LatencyHistogram::bucket_of(sample)].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn load(&self) -> LatencyHistogram {
        LatencyHistogram {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// Call durations of an endpoint, per carrier and side.
#[derive(Debug, Default)]
pub(crate) struct CallDurations {
    by: [[AtomicHistogram; 2]; 2],
}

fn index(carrier: Carrier, side: CallSide) -> (usize, usize) {
    let c = match carrier {
        Carrier::Mxp => 0,
        Carrier::Quic => 1,
    };
    let s = match side {
        CallSide::Client => 0,
        CallSide::Node => 1,
    };
    (c, s)
}

impl CallDurations {
    pub(crate) fn record(&self, carrier: Carrier, side: CallSide, took: Duration) {
        let (c, s) = index(carrier, side);
        self.by[c][s].record(took);
    }

    pub(crate) fn load(&self, carrier: Carrier, side: CallSide) -> LatencyHistogram {
        let (c, s) = index(carrier, side);
        self.by[c][s].load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_carrier_and_side_has_its_own_histogram() {
        let calls = CallDurations::default();
        calls.record(Carrier::Mxp, CallSide::Client, Duration::from_micros(60));
        calls.record(Carrier::Mxp, CallSide::Client, Duration::from_micros(60));
        calls.record(Carrier::Quic, CallSide::Node, Duration::from_millis(3));
        let mxp = calls.load(Carrier::Mxp, CallSide::Client);
        assert_eq!((mxp.count(), mxp.buckets[3], mxp.sum_ns), (2, 2, 120_000));
        assert_eq!(calls.load(Carrier::Mxp, CallSide::Node).count(), 0);
        assert_eq!(calls.load(Carrier::Quic, CallSide::Client).count(), 0);
        assert_eq!(calls.load(Carrier::Quic, CallSide::Node).buckets[14], 1);
    }
}
