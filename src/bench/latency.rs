//! Latency samples and their nearest-rank summary.

use std::time::Duration;

use serde::Serialize;

/// Percentiles of a set of latencies, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Smallest sample.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// Latency samples.
#[derive(Debug, Default)]
pub struct Latencies(Vec<Duration>);

fn us(d: Duration) -> f64 {
    (d.as_nanos() as f64 / 1000.0 * 10.0).round() / 10.0
}

impl Latencies {
    /// Adds a sample.
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// Adds all of `other`'s samples (a measure taken in slices).
    pub fn append(&mut self, mut other: Latencies) {
        self.0.append(&mut other.0);
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Nearest-rank percentiles.
    pub fn summary(&mut self) -> Summary {
        if self.0.is_empty() {
            return Summary::default();
        }
        self.0.sort_unstable();
        let pick = |p: f64| {
            let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
            us(self.0[rank.clamp(1, self.0.len()) - 1])
        };
        let total: Duration = self.0.iter().sum();
        Summary {
            min: us(self.0[0]),
            p50: pick(50.0),
            p95: pick(95.0),
            p99: pick(99.0),
            max: us(self.0[self.0.len() - 1]),
            mean: us(total / self.0.len() as u32),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "min {:.1} µs  p50 {:.1} µs  p95 {:.1} µs  p99 {:.1} µs  max {:.1} µs",
            self.min, self.p50, self.p95, self.p99, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = Latencies::default();
        for i in 1..=100 {
            l.push(Duration::from_micros(i));
        }
        let s = l.summary();
        assert_eq!(
            (s.min, s.p50, s.p95, s.p99, s.max),
            (1.0, 50.0, 95.0, 99.0, 100.0)
        );
        assert_eq!(s.mean, 50.5);
        assert_eq!(Latencies::default().summary(), Summary::default());
    }
}
