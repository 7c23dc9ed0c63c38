//! Round-trip time estimation (RFC 9002 §5).
//!
//! Loss detection and the probe timeout are only as good as the RTT estimate
//! behind them. Inside a datacenter RTTs are tens of microseconds, so every
//! quantity here is a [`Duration`] kept to the nanosecond: there is no
//! millisecond rounding or floor anywhere, and the only lower bound is the
//! `granularity` the caller passes in.

use std::time::Duration;

/// Smoothed RTT, RTT variance and minimum RTT of one path.
///
/// Before the first sample, [`smoothed`](Self::smoothed),
/// [`latest`](Self::latest) and [`min`](Self::min) report the configured
/// initial RTT and [`rttvar`](Self::rttvar) half of it, exactly as RFC 9002
/// §6.2.2 prescribes for the initial probe timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RttEstimator {
    latest: Duration,
    smoothed: Duration,
    var: Duration,
    min: Duration,
    has_sample: bool,
}

impl RttEstimator {
    /// An estimator that has seen no sample yet and assumes `initial_rtt`.
    pub(crate) fn new(initial_rtt: Duration) -> Self {
        Self {
            latest: initial_rtt,
            smoothed: initial_rtt,
            var: initial_rtt / 2,
            min: initial_rtt,
            has_sample: false,
        }
    }

    /// Folds in one RTT sample (RFC 9002 §5.3).
    ///
    /// `latest_rtt` is the time from sending the largest newly acknowledged
    /// packet to receiving its ACK; `ack_delay` is the delay the peer reported
    /// in that ACK, clamped to `max_ack_delay` (pass `Duration::MAX` to skip
    /// the clamp, e.g. before the handshake is confirmed). The ack delay is
    /// subtracted only if that does not take the sample below `min_rtt`, so a
    /// lying or confused peer cannot drive the estimate under the path's
    /// physical RTT. The first sample ignores `ack_delay` entirely.
    pub(crate) fn update(
        &mut self,
        latest_rtt: Duration,
        ack_delay: Duration,
        max_ack_delay: Duration,
    ) {
        self.latest = latest_rtt;
        if !self.has_sample {
            self.has_sample = true;
            self.min = latest_rtt;
            self.smoothed = latest_rtt;
            self.var = latest_rtt / 2;
            return;
        }

        // min_rtt ignores ack delay: it is the best the path ever did.
        self.min = self.min.min(latest_rtt);

        let ack_delay = ack_delay.min(max_ack_delay);
        let adjusted = match latest_rtt.checked_sub(ack_delay) {
            Some(adjusted) if adjusted >= self.min => adjusted,
            _ => latest_rtt,
        };

        let var_sample = self.smoothed.abs_diff(adjusted);
        // rttvar = 3/4·rttvar + 1/4·sample; smoothed = 7/8·smoothed + 1/8·adjusted.
        // Scaling before dividing keeps the result exact to the nanosecond.
        self.var = (self.var.saturating_mul(3).saturating_add(var_sample)) / 4;
        self.smoothed = (self.smoothed.saturating_mul(7).saturating_add(adjusted)) / 8;
    }

    /// Whether at least one sample has been taken; until then the values are
    /// the configured initial guess.
    pub(crate) fn has_sample(&self) -> bool {
        self.has_sample
    }

    /// Exponentially weighted moving average of the (ack-delay adjusted)
    /// samples: the RTT to plan around.
    pub(crate) fn smoothed(&self) -> Duration {
        self.smoothed
    }

    /// Mean deviation of the samples: how much slack timers need.
    #[cfg(test)]
    pub(crate) fn rttvar(&self) -> Duration {
        self.var
    }

    /// Smallest sample seen, not adjusted for ack delay: the path's floor.
    pub(crate) fn min(&self) -> Duration {
        self.min
    }

    /// Most recent raw sample.
    #[cfg(test)]
    pub(crate) fn latest(&self) -> Duration {
        self.latest
    }

    /// `smoothed + max(4·rttvar, granularity)`: the probe timeout before the
    /// peer's `max_ack_delay` and backoff are applied, which the caller adds
    /// (RFC 9002 §6.2.1).
    pub(crate) fn pto_base(&self, granularity: Duration) -> Duration {
        self.smoothed
            .saturating_add(self.var.saturating_mul(4).max(granularity))
    }

    /// `max(9/8·max(smoothed, latest), granularity)`: how long after a later
    /// packet was acknowledged an earlier one is declared lost
    /// (RFC 9002 §6.1.2).
    pub(crate) fn loss_delay(&self, granularity: Duration) -> Duration {
        let base = self.smoothed.max(self.latest);
        (base.saturating_mul(9) / 8).max(granularity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    const NO_CLAMP: Duration = Duration::MAX;

    #[test]
    fn initial_state() {
        let rtt = RttEstimator::new(us(100));
        assert!(!rtt.has_sample());
        assert_eq!(rtt.smoothed(), us(100));
        assert_eq!(rtt.rttvar(), us(50));
        assert_eq!(rtt.min(), us(100));
        assert_eq!(rtt.latest(), us(100));
        // 100 + 4·50
        assert_eq!(rtt.pto_base(Duration::from_nanos(1)), us(300));
    }

    #[test]
    fn first_sample_ignores_ack_delay() {
        let mut rtt = RttEstimator::new(Duration::from_millis(333));
        rtt.update(us(40), us(10), us(25));
        assert!(rtt.has_sample());
        assert_eq!(rtt.smoothed(), us(40));
        assert_eq!(rtt.rttvar(), us(20));
        assert_eq!(rtt.min(), us(40));
        assert_eq!(rtt.latest(), us(40));
    }

    #[test]
    fn ewma_is_exact() {
        let mut rtt = RttEstimator::new(us(1000));
        rtt.update(us(80), Duration::ZERO, NO_CLAMP);
        rtt.update(us(160), Duration::ZERO, NO_CLAMP);
        // var = (3·40 + |80 − 160|) / 4 = 50; smoothed = (7·80 + 160) / 8 = 90
        assert_eq!(rtt.rttvar(), us(50));
        assert_eq!(rtt.smoothed(), us(90));
        assert_eq!(rtt.min(), us(80));
        assert_eq!(rtt.latest(), us(160));
        // var = (3·50 + |90 − 10|) / 4 = 57.5; smoothed = (7·90 + 10) / 8 = 80
        rtt.update(us(10), Duration::ZERO, NO_CLAMP);
        assert_eq!(rtt.rttvar(), Duration::from_nanos(57_500));
        assert_eq!(rtt.smoothed(), us(80));
        assert_eq!(rtt.min(), us(10));
    }

    #[test]
    fn ack_delay_subtracted_when_above_min() {
        let mut rtt = RttEstimator::new(us(1000));
        rtt.update(us(20), Duration::ZERO, NO_CLAMP);
        // 60 − 24 = 36 ≥ min 20 → adjusted 36.
        rtt.update(us(60), us(24), us(50));
        // var = (3·10 + 16) / 4 = 11.5; smoothed = (7·20 + 36) / 8 = 22
        assert_eq!(rtt.smoothed(), us(22));
        assert_eq!(rtt.rttvar(), Duration::from_nanos(11_500));
        assert_eq!(rtt.min(), us(20));
    }

    #[test]
    fn ack_delay_not_subtracted_below_min() {
        let mut rtt = RttEstimator::new(us(1000));
        rtt.update(us(20), Duration::ZERO, NO_CLAMP);
        // 30 − 15 = 15 < min 20 → use the raw 30.
        rtt.update(us(30), us(15), us(50));
        // smoothed = (7·20 + 30) / 8 = 21.25
        assert_eq!(rtt.smoothed(), Duration::from_nanos(21_250));
        // Ack delay larger than the sample itself.
        let mut rtt2 = RttEstimator::new(us(1000));
        rtt2.update(us(20), Duration::ZERO, NO_CLAMP);
        rtt2.update(us(30), us(45), NO_CLAMP);
        assert_eq!(rtt2.smoothed(), Duration::from_nanos(21_250));
    }

    #[test]
    fn ack_delay_clamped_to_max() {
        let mut rtt = RttEstimator::new(us(1000));
        rtt.update(us(20), Duration::ZERO, NO_CLAMP);
        // Peer claims 60 µs of delay but max_ack_delay is 10 µs: 100 − 10 = 90.
        rtt.update(us(100), us(60), us(10));
        // smoothed = (7·20 + 90) / 8 = 28.75
        assert_eq!(rtt.smoothed(), Duration::from_nanos(28_750));
    }

    #[test]
    fn min_rtt_uses_raw_samples() {
        let mut rtt = RttEstimator::new(us(1000));
        rtt.update(us(50), Duration::ZERO, NO_CLAMP);
        rtt.update(us(45), us(40), NO_CLAMP);
        assert_eq!(rtt.min(), us(45));
    }

    #[test]
    fn pto_base_has_no_millisecond_floor() {
        let mut rtt = RttEstimator::new(us(1000));
        rtt.update(us(12), Duration::ZERO, NO_CLAMP);
        // smoothed 12 µs, var 6 µs → 12 + 24 = 36 µs.
        assert_eq!(rtt.pto_base(us(1)), us(36));
        // Granularity dominates a tiny variance.
        for _ in 0..200 {
            rtt.update(us(12), Duration::ZERO, NO_CLAMP);
        }
        assert_eq!(rtt.smoothed(), us(12));
        assert!(rtt.rttvar() < Duration::from_nanos(10));
        assert_eq!(rtt.pto_base(us(5)), us(17));
    }

    #[test]
    fn loss_delay() {
        let mut rtt = RttEstimator::new(us(1000));
        rtt.update(us(16), Duration::ZERO, NO_CLAMP);
        assert_eq!(rtt.loss_delay(Duration::from_nanos(1)), us(18));
        // latest above smoothed takes over: smoothed = (7·16 + 80) / 8 = 24.
        rtt.update(us(80), Duration::ZERO, NO_CLAMP);
        assert_eq!(rtt.smoothed(), us(24));
        assert_eq!(rtt.loss_delay(Duration::from_nanos(1)), us(90));
        // Granularity floor.
        assert_eq!(rtt.loss_delay(us(500)), us(500));
        // Non-multiples of 8 stay nanosecond-exact: 9/8 · 10 µs = 11.25 µs.
        let mut rtt = RttEstimator::new(us(10));
        rtt.update(us(10), Duration::ZERO, NO_CLAMP);
        assert_eq!(rtt.loss_delay(Duration::ZERO), Duration::from_nanos(11_250));
    }

    #[test]
    fn zero_and_huge_samples_do_not_panic() {
        let mut rtt = RttEstimator::new(Duration::ZERO);
        rtt.update(Duration::ZERO, Duration::ZERO, Duration::ZERO);
        assert_eq!(rtt.smoothed(), Duration::ZERO);
        assert_eq!(rtt.pto_base(us(1)), us(1));
        assert_eq!(rtt.loss_delay(us(1)), us(1));
        rtt.update(Duration::MAX, Duration::MAX, Duration::MAX);
        rtt.update(Duration::MAX, Duration::ZERO, Duration::MAX);
        let _ = rtt.pto_base(us(1));
        let _ = rtt.loss_delay(us(1));
    }
}
