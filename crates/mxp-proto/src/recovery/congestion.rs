//! Congestion control: the [`Controller`] interface and NewReno (RFC 9002 §7).
//!
//! The connection owns bytes-in-flight accounting and loss detection; a
//! controller only turns those events into a congestion window. Keeping the
//! interface this small lets other algorithms (e.g. a delay-based one tuned
//! for shallow-buffered datacenter switches) drop in later.

use std::fmt::Debug;
use std::time::Instant;

use super::RttEstimator;

/// A congestion control algorithm, driven by the connection's loss recovery.
///
/// All times are supplied by the caller (sans-IO): a controller never reads a
/// clock.
pub(crate) trait Controller: Debug + Send {
    /// `bytes` of ack-eliciting, in-flight data were sent at `now`.
    ///
    /// Window-based algorithms such as NewReno need nothing here, hence the
    /// empty default; rate- or delay-based algorithms use it to track rounds.
    fn on_sent(&mut self, now: Instant, bytes: u64) {
        let _ = (now, bytes);
    }

    /// A packet of `bytes` sent at `sent` was acknowledged at `now`.
    ///
    /// `app_limited` is true when the sender was not using the whole window
    /// when that packet was sent; growing the window then would only measure
    /// the application, not the network (RFC 9002 §7.8).
    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    );

    /// Packets were declared lost (or ECN-CE was reported) at `now`; `sent`
    /// is the send time of the most recently sent of them and `lost_bytes`
    /// their total size. `is_persistent_congestion` is set when loss
    /// detection established persistent congestion (RFC 9002 §7.6).
    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    );

    /// Current congestion window in bytes: the most the sender may have in
    /// flight.
    fn window(&self) -> u64;
}

/// Parameters of [`NewReno`].
///
/// Built with [`NewRenoConfig::new`] from the path MTU, then adjusted field by
/// field if needed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct NewRenoConfig {
    /// Largest datagram the path carries: the unit of window growth in
    /// congestion avoidance, and of the defaults below.
    pub max_datagram_size: u64,
    /// Window at connection start and after idle.
    pub initial_window: u64,
    /// Floor of the window after any reduction, and the window after
    /// persistent congestion.
    pub minimum_window: u64,
    /// Factor applied to the window on a congestion event (0.5 in RFC 9002).
    pub loss_reduction_factor: f64,
}

impl NewRenoConfig {
    /// Initial window, in datagrams, used by [`NewRenoConfig::new`].
    ///
    /// RFC 9002 suggests ~10 packets for the open Internet. Inside a
    /// datacenter an RTT is tens of microseconds and 32 × 1200 B is ~38 KB —
    /// far below a single switch port's buffer and a few microseconds of a
    /// 100 Gb/s link — so starting smaller would only add round trips to
    /// every short request/response exchange (most agent traffic fits in the
    /// first window). The pacer still spreads this window over an RTT.
    pub(crate) const DEFAULT_INITIAL_PACKETS: u64 = 32;
    /// Minimum window in datagrams (RFC 9002 §7.2: 2 × max_datagram_size).
    pub(crate) const MINIMUM_PACKETS: u64 = 2;
    /// RFC 9002 §7.3.2 `kLossReductionFactor`.
    pub(crate) const DEFAULT_LOSS_REDUCTION_FACTOR: f64 = 0.5;

    /// Defaults for a path whose datagrams are at most `mtu` bytes:
    /// 32 × mtu initial window, 2 × mtu minimum, halving on loss.
    pub(crate) fn new(mtu: u64) -> Self {
        Self {
            max_datagram_size: mtu,
            initial_window: mtu.saturating_mul(Self::DEFAULT_INITIAL_PACKETS),
            minimum_window: mtu.saturating_mul(Self::MINIMUM_PACKETS),
            loss_reduction_factor: Self::DEFAULT_LOSS_REDUCTION_FACTOR,
        }
    }
}

/// NewReno congestion control as specified by RFC 9002 §7 and Appendix B.
///
/// * Slow start: the window grows by every acknowledged byte until it reaches
///   the slow-start threshold.
/// * Congestion avoidance: the window grows by one datagram per window's
///   worth of acknowledged bytes (one datagram per round trip).
/// * A congestion event multiplies the window by the loss reduction factor
///   (never below the minimum) and starts a recovery period; further events
///   for packets sent before that period began are ignored, so a burst of
///   losses costs one reduction per round trip, and acknowledgements of such
///   packets do not grow the window.
/// * Persistent congestion collapses the window to the minimum and ends
///   recovery, leaving the sender in slow start up to the new threshold.
/// * Acknowledgements of app-limited packets do not grow the window.
#[derive(Debug, Clone)]
pub(crate) struct NewReno {
    config: NewRenoConfig,
    window: u64,
    ssthresh: u64,
    /// Start of the most recent recovery period. Packets sent at or before
    /// it cannot trigger another reduction nor grow the window.
    recovery_start: Option<Instant>,
    /// Bytes acknowledged in congestion avoidance since the last increase.
    bytes_acked: u64,
}

impl NewReno {
    /// NewReno for datagrams of at most `mtu` bytes starting at
    /// `initial_window` bytes; other parameters are RFC 9002's defaults.
    /// Use `NewRenoConfig::new(mtu).initial_window` for the crate's default.
    pub(crate) fn new(mtu: u64, initial_window: u64) -> Self {
        Self::with_config(NewRenoConfig {
            initial_window,
            ..NewRenoConfig::new(mtu)
        })
    }

    /// NewReno with explicit parameters. Nonsensical values are repaired
    /// rather than rejected: the reduction factor is clamped to `(0, 1]`
    /// (NaN becomes the default) and the initial window is raised to at least
    /// the minimum window.
    pub(crate) fn with_config(mut config: NewRenoConfig) -> Self {
        let f = config.loss_reduction_factor;
        config.loss_reduction_factor = if f.is_nan() || f <= 0.0 {
            NewRenoConfig::DEFAULT_LOSS_REDUCTION_FACTOR
        } else {
            f.min(1.0)
        };
        config.initial_window = config.initial_window.max(config.minimum_window);
        Self {
            config,
            window: config.initial_window,
            ssthresh: u64::MAX,
            recovery_start: None,
            bytes_acked: 0,
        }
    }

    /// The parameters in effect (after repair by [`with_config`](Self::with_config)).
    #[cfg(test)]
    pub(crate) fn config(&self) -> &NewRenoConfig {
        &self.config
    }

    /// Slow-start threshold: below it the window grows exponentially.
    /// `u64::MAX` until the first congestion event.
    #[cfg(test)]
    pub(crate) fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    /// Whether a packet sent at `sent` belongs to before the current recovery
    /// period (RFC 9002 `InCongestionRecovery`).
    fn in_recovery(&self, sent: Instant) -> bool {
        self.recovery_start.is_some_and(|start| sent <= start)
    }
}

impl Controller for NewReno {
    fn on_ack(
        &mut self,
        _now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        _rtt: &RttEstimator,
    ) {
        // The recovery start is kept after recovery ends (RFC 9002 B.5): a
        // packet sent before it belongs to a round that was already reduced.
        if app_limited || self.in_recovery(sent) {
            return;
        }

        if self.window < self.ssthresh {
            // Slow start.
            self.window = self.window.saturating_add(bytes);
            if self.window >= self.ssthresh {
                // Carry the overshoot into congestion avoidance.
                self.bytes_acked = self.window - self.ssthresh;
            }
        } else {
            // Congestion avoidance: +1 datagram per window of acked bytes.
            self.bytes_acked = self.bytes_acked.saturating_add(bytes);
            if self.bytes_acked >= self.window {
                self.bytes_acked -= self.window;
                self.window = self.window.saturating_add(self.config.max_datagram_size);
            }
        }
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        _lost_bytes: u64,
    ) {
        if !self.in_recovery(sent) {
            self.recovery_start = Some(now);
            let reduced = (self.window as f64 * self.config.loss_reduction_factor) as u64;
            self.window = reduced.max(self.config.minimum_window);
            self.ssthresh = self.window;
            self.bytes_acked = 0;
        }
        if is_persistent_congestion {
            // RFC 9002 §7.6.2 / B.8: collapse and leave recovery, so that
            // acknowledgements of packets in flight can reopen the window in
            // slow start (up to the threshold set above).
            self.window = self.config.minimum_window;
            self.recovery_start = None;
            self.bytes_acked = 0;
        }
    }

    fn window(&self) -> u64 {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MTU: u64 = 1200;

    struct Clock(Instant);

    impl Clock {
        fn at(&self, us: u64) -> Instant {
            self.0 + Duration::from_micros(us)
        }
    }

    fn setup() -> (Clock, NewReno, RttEstimator) {
        (
            Clock(Instant::now()),
            NewReno::with_config(NewRenoConfig::new(MTU)),
            RttEstimator::new(Duration::from_micros(50)),
        )
    }

    #[test]
    fn defaults() {
        let (_, cc, _) = setup();
        assert_eq!(cc.window(), 32 * MTU);
        assert_eq!(cc.config().initial_window, 32 * MTU);
        assert_eq!(cc.config().minimum_window, 2 * MTU);
        assert_eq!(cc.ssthresh(), u64::MAX);
        let custom = NewReno::new(MTU, 10 * MTU);
        assert_eq!(custom.window(), 10 * MTU);
        assert_eq!(custom.config().initial_window, 10 * MTU);
    }

    #[test]
    fn usable_as_trait_object() {
        let (c, cc, rtt) = setup();
        let mut boxed: Box<dyn Controller> = Box::new(cc);
        boxed.on_sent(c.at(0), MTU);
        boxed.on_ack(c.at(50), c.at(0), MTU, false, &rtt);
        assert_eq!(boxed.window(), 33 * MTU);
    }

    #[test]
    fn slow_start_grows_by_acked_bytes() {
        let (c, mut cc, rtt) = setup();
        for i in 0..32 {
            cc.on_ack(c.at(50 + i), c.at(i), MTU, false, &rtt);
        }
        assert_eq!(cc.window(), 64 * MTU);
    }

    #[test]
    fn app_limited_acks_do_not_grow() {
        let (c, mut cc, rtt) = setup();
        for i in 0..32 {
            cc.on_ack(c.at(50 + i), c.at(i), MTU, true, &rtt);
        }
        assert_eq!(cc.window(), 32 * MTU);
        // Also in congestion avoidance.
        cc.on_congestion_event(c.at(100), c.at(60), false, MTU);
        let w = cc.window();
        for i in 0..1000 {
            cc.on_ack(c.at(200 + i), c.at(150 + i), MTU, true, &rtt);
        }
        assert_eq!(cc.window(), w);
    }

    #[test]
    fn loss_halves_and_sets_ssthresh() {
        let (c, mut cc, _) = setup();
        cc.on_congestion_event(c.at(100), c.at(10), false, MTU);
        assert_eq!(cc.window(), 16 * MTU);
        assert_eq!(cc.ssthresh(), 16 * MTU);
    }

    #[test]
    fn one_reduction_per_recovery_period() {
        let (c, mut cc, rtt) = setup();
        cc.on_congestion_event(c.at(100), c.at(10), false, MTU);
        assert_eq!(cc.window(), 16 * MTU);
        // More losses of packets sent before recovery began (including at the
        // very instant it began) are ignored.
        cc.on_congestion_event(c.at(110), c.at(20), false, MTU);
        cc.on_congestion_event(c.at(120), c.at(100), false, MTU);
        assert_eq!(cc.window(), 16 * MTU);
        // Their ACKs do not grow the window either.
        cc.on_ack(c.at(130), c.at(90), MTU, false, &rtt);
        assert_eq!(cc.window(), 16 * MTU);
        // A loss of a packet sent after recovery began is a new event.
        cc.on_congestion_event(c.at(200), c.at(101), false, MTU);
        assert_eq!(cc.window(), 8 * MTU);
    }

    #[test]
    fn congestion_avoidance_adds_one_datagram_per_window() {
        let (c, mut cc, rtt) = setup();
        cc.on_congestion_event(c.at(100), c.at(10), false, MTU);
        let w = cc.window();
        assert_eq!(w, 16 * MTU);
        // One window's worth of ACKs for packets sent after recovery began,
        // minus one byte: no growth yet.
        let mut t = 200;
        for _ in 0..15 {
            cc.on_ack(c.at(t + 50), c.at(t), MTU, false, &rtt);
            t += 1;
        }
        cc.on_ack(c.at(t + 50), c.at(t), MTU - 1, false, &rtt);
        assert_eq!(cc.window(), w);
        cc.on_ack(c.at(t + 51), c.at(t + 1), 1, false, &rtt);
        assert_eq!(cc.window(), w + MTU);
        // The next increase needs a full (larger) window of ACKs.
        for i in 0..17 {
            cc.on_ack(c.at(t + 60 + i), c.at(t + 10 + i), MTU, false, &rtt);
        }
        assert_eq!(cc.window(), w + 2 * MTU);
    }

    #[test]
    fn slow_start_overshoot_carries_into_avoidance() {
        let (c, mut cc, rtt) = setup();
        cc.on_congestion_event(c.at(100), c.at(10), false, MTU);
        // Persistent congestion drops to the minimum, below ssthresh.
        cc.on_congestion_event(c.at(100), c.at(10), true, MTU);
        assert_eq!(cc.window(), 2 * MTU);
        assert_eq!(cc.ssthresh(), 16 * MTU);
        // Slow start up to 16·MTU, then a 2·MTU ack overshoots by 1·MTU.
        let mut t = 200;
        while cc.window() < 15 * MTU {
            cc.on_ack(c.at(t + 50), c.at(t), MTU, false, &rtt);
            t += 1;
        }
        cc.on_ack(c.at(t + 50), c.at(t), 2 * MTU, false, &rtt);
        assert_eq!(cc.window(), 17 * MTU);
        assert_eq!(cc.bytes_acked, MTU);
    }

    #[test]
    fn persistent_congestion_collapses_to_minimum() {
        let (c, mut cc, rtt) = setup();
        cc.on_congestion_event(c.at(100), c.at(10), true, 20 * MTU);
        assert_eq!(cc.window(), 2 * MTU);
        assert_eq!(cc.ssthresh(), 16 * MTU);
        // Recovery is over: ACKs of packets in flight reopen the window.
        cc.on_ack(c.at(110), c.at(50), MTU, false, &rtt);
        assert_eq!(cc.window(), 3 * MTU);
    }

    #[test]
    fn persistent_congestion_applies_even_during_recovery() {
        let (c, mut cc, _) = setup();
        cc.on_congestion_event(c.at(100), c.at(10), false, MTU);
        assert_eq!(cc.window(), 16 * MTU);
        cc.on_congestion_event(c.at(150), c.at(20), true, 10 * MTU);
        assert_eq!(cc.window(), 2 * MTU);
        assert_eq!(cc.ssthresh(), 16 * MTU);
    }

    #[test]
    fn never_below_minimum_window() {
        let (c, mut cc, _) = setup();
        for i in 0..20 {
            let now = c.at(1000 * (i + 1));
            cc.on_congestion_event(now, now, false, MTU);
            assert!(cc.window() >= 2 * MTU);
        }
        assert_eq!(cc.window(), 2 * MTU);
    }

    #[test]
    fn late_losses_from_reduced_rounds_stay_ignored() {
        let (c, mut cc, rtt) = setup();
        cc.on_congestion_event(c.at(100), c.at(10), false, MTU);
        let w = cc.window();
        // Packets sent after recovery began are acknowledged: recovery is
        // over and the window grows again (congestion avoidance)...
        for i in 0..16 {
            cc.on_ack(c.at(160 + i), c.at(110 + i), MTU, false, &rtt);
        }
        assert_eq!(cc.window(), w + MTU);
        // ...but a late loss report for a packet of the round that was
        // already reduced does not reduce again.
        cc.on_congestion_event(c.at(170), c.at(90), false, MTU);
        assert_eq!(cc.window(), w + MTU);
        // A loss from the new round does.
        cc.on_congestion_event(c.at(180), c.at(120), false, MTU);
        assert_eq!(cc.window(), (w + MTU) / 2);
    }

    #[test]
    fn config_repair() {
        let cc = NewReno::with_config(NewRenoConfig {
            loss_reduction_factor: f64::NAN,
            ..NewRenoConfig::new(MTU)
        });
        assert_eq!(cc.config().loss_reduction_factor, 0.5);
        let cc = NewReno::with_config(NewRenoConfig {
            loss_reduction_factor: 7.0,
            initial_window: 1,
            ..NewRenoConfig::new(MTU)
        });
        assert_eq!(cc.config().loss_reduction_factor, 1.0);
        assert_eq!(cc.window(), 2 * MTU);
        assert_eq!(cc.config().initial_window, 2 * MTU);
    }

    #[test]
    fn custom_reduction_factor() {
        let (c, _, _) = setup();
        let mut cc = NewReno::with_config(NewRenoConfig {
            loss_reduction_factor: 0.7,
            ..NewRenoConfig::new(MTU)
        });
        cc.on_congestion_event(c.at(100), c.at(10), false, MTU);
        assert_eq!(cc.window(), (32.0 * MTU as f64 * 0.7) as u64);
    }

    #[test]
    fn huge_windows_saturate() {
        let (c, _, rtt) = setup();
        let mut cc = NewReno::new(MTU, u64::MAX - 10);
        cc.on_ack(c.at(50), c.at(0), u64::MAX, false, &rtt);
        assert_eq!(cc.window(), u64::MAX);
        cc.on_congestion_event(c.at(100), c.at(10), false, MTU);
        assert!(cc.window() > u64::MAX / 4);
    }
}
