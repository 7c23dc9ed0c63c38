//! A fixed-bucket latency histogram: cheap to record into on the packet
//! path (a few comparisons and an increment), cheap to add up across
//! connections, and with buckets that resolve P50/P95/P99 between 25 µs
//! and 10 ms — the range agent traffic inside a datacenter lives in.

use std::time::Duration;

/// Upper bounds of the buckets, in nanoseconds; a last bucket takes
/// everything above.
pub const LATENCY_BOUNDS_NS: [u64; 18] = [
    25_000, 35_000, 50_000, 70_000, 100_000, 140_000, 200_000, 280_000, 400_000, 560_000, 800_000,
    1_100_000, 1_600_000, 2_300_000, 3_200_000, 4_500_000, 6_400_000, 10_000_000,
];

/// Counts of samples per bucket (not cumulative), and their sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// One count per bound in [`LATENCY_BOUNDS_NS`], then the overflow.
    pub buckets: [u64; LATENCY_BOUNDS_NS.len() + 1],
    /// Sum of all samples, in nanoseconds.
    pub sum_ns: u64,
}

impl LatencyHistogram {
    /// Index of the bucket a sample falls in.
    pub fn bucket_of(sample: Duration) -> usize {
        let ns = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX);
        LATENCY_BOUNDS_NS.partition_point(|&bound| bound < ns)
    }

    /// Records one sample.
    pub fn record(&mut self, sample: Duration) {
        self.buckets[Self::bucket_of(sample)] += 1;
        self.sum_ns = self
            .sum_ns
            .saturating_add(u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let us = Duration::from_micros;
        assert_eq!(LatencyHistogram::bucket_of(us(1)), 0);
        assert_eq!(LatencyHistogram::bucket_of(us(25)), 0);
        assert_eq!(LatencyHistogram::bucket_of(Duration::from_nanos(25_001)), 1);
        assert_eq!(LatencyHistogram::bucket_of(us(400)), 8);
        assert_eq!(LatencyHistogram::bucket_of(us(10_000)), 17);
        assert_eq!(LatencyHistogram::bucket_of(us(10_001)), 18);
        assert_eq!(LatencyHistogram::bucket_of(Duration::MAX), 18);
    }

    #[test]
    fn merging_adds_counts_and_sums() {
        let mut a = LatencyHistogram::default();
        a.record(Duration::from_micros(30));
        let mut b = LatencyHistogram::default();
        b.record(Duration::from_micros(30));
        b.record(Duration::from_millis(20));
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.buckets[1], 2);
        assert_eq!(a.buckets[18], 1);
        assert_eq!(a.sum_ns, 20_060_000);
    }
}
