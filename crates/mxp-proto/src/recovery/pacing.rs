//! Pacing: spreading a congestion window over a round trip (RFC 9002 §7.7).
//!
//! Without pacing, an ACK that opens the window releases the whole window at
//! line rate; datacenter switches have shallow per-port buffers, so such
//! bursts from a few senders converging on one port (incast) overflow them
//! and cause exactly the losses congestion control then reacts to.
//!
//! [`Pacer`] is a token bucket:
//!
//! * **Rate** — `1.25 × window / smoothed_rtt` bytes per unit time. The 1.25
//!   (RFC 9002's `N`) lets the sender keep the window full even though timers
//!   fire late and the RTT estimate lags.
//! * **Capacity** (largest burst) — `window / 4`, clamped to between
//!   [`Pacer::MIN_BURST_PACKETS`] and [`Pacer::MAX_BURST_PACKETS`] datagrams
//!   of `mtu` bytes. A quarter window keeps each burst a small fraction of
//!   what the path holds; the 10-packet floor lets a sender whose timer fired
//!   late catch up instead of falling behind forever (and matches the size of
//!   a typical GSO batch); the 64-packet ceiling is the most UDP GSO sends in
//!   one call, and bounds what lands on a switch at once however large the
//!   window grows.
//!
//! The bucket starts full, so the first burst goes out immediately. All
//! arithmetic is integer (`u128` intermediates, nanoseconds), so the instants
//! returned are exact and nothing overflows or floors to a millisecond. A
//! zero smoothed RTT (or a zero window) means "no pacing": congestion control
//! alone governs the sender.

use std::time::{Duration, Instant};

/// Token-bucket pacer for one path.
///
/// Call [`delay`](Self::delay) before sending each packet and
/// [`on_sent`](Self::on_sent) after sending it.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    /// Largest burst in bytes, derived from `last_window` and `last_mtu`.
    capacity: u64,
    /// Bytes that may be sent right now.
    tokens: u64,
    /// Fraction of a token earned but not yet credited, in units of
    /// `1 / (4 · last_rtt in ns)` bytes, so that refills at arbitrary
    /// instants never lose time to rounding.
    frac: u128,
    last_window: u64,
    last_mtu: u64,
    /// RTT the `frac` unit refers to.
    last_rtt: Duration,
    /// When `tokens` was last refilled.
    prev: Instant,
}

impl Pacer {
    /// Smallest burst the bucket allows, in datagrams.
    pub(crate) const MIN_BURST_PACKETS: u64 = 10;
    /// Largest burst the bucket allows, in datagrams.
    pub(crate) const MAX_BURST_PACKETS: u64 = 64;

    /// A pacer with a full bucket at `now`, so the first burst is not delayed.
    pub(crate) fn new(now: Instant, mtu: u64, window: u64, smoothed_rtt: Duration) -> Self {
        let capacity = Self::capacity_for(window, mtu);
        Self {
            capacity,
            tokens: capacity,
            frac: 0,
            last_window: window,
            last_mtu: mtu,
            last_rtt: smoothed_rtt,
            prev: now,
        }
    }

    /// Burst size in bytes for a window and MTU (see the module docs).
    fn capacity_for(window: u64, mtu: u64) -> u64 {
        let lo = mtu.saturating_mul(Self::MIN_BURST_PACKETS);
        let hi = mtu.saturating_mul(Self::MAX_BURST_PACKETS);
        (window / 4).clamp(lo, hi)
    }

    /// Largest burst in bytes under the parameters last seen; for stats and
    /// for sizing send batches.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// When a packet of `packet_size` bytes may be sent: `None` if it may go
    /// now, otherwise the exact instant from which it may go (the caller arms
    /// a timer for it and asks again then).
    ///
    /// `mtu`, `window` and `smoothed_rtt` are the path's current values; a
    /// changed window or MTU resizes the bucket. A packet larger than the
    /// whole bucket is sent once the bucket is full. A zero `smoothed_rtt` or
    /// `window` disables pacing, as do parameters so extreme that the wait
    /// cannot be represented as an `Instant`.
    pub(crate) fn delay(
        &mut self,
        now: Instant,
        packet_size: u64,
        mtu: u64,
        window: u64,
        smoothed_rtt: Duration,
    ) -> Option<Instant> {
        if window != self.last_window || mtu != self.last_mtu {
            self.capacity = Self::capacity_for(window, mtu);
            self.tokens = self.tokens.min(self.capacity);
            self.last_window = window;
            self.last_mtu = mtu;
        }

        if smoothed_rtt.is_zero() || window == 0 {
            return None;
        }

        // Credit what was earned up to `now` before spending, even when the
        // bucket looks full enough: a full bucket earns nothing, and moving
        // `prev` to `now` records that. Skipping it would leave `prev` at
        // the last refill, however long ago, so once a burst emptied the
        // bucket the whole time since would be credited at once — a second
        // full bucket at the same instant.
        self.refill(now, window, smoothed_rtt);
        let needed = packet_size.min(self.capacity);
        if self.tokens >= needed {
            return None;
        }

        // Time to earn the deficit at 5·window / (4·rtt) bytes per ns, less
        // the fraction already earned, rounded up so that a refill at the
        // returned instant always covers it: a caller woken exactly then can
        // send. `frac < 4·rtt ≤ deficit·4·rtt`, so the wait is at least 1 ns.
        let deficit = u128::from(needed - self.tokens);
        let wait_ns = deficit
            .checked_mul(4)
            .and_then(|x| x.checked_mul(smoothed_rtt.as_nanos()))
            .map(|x| x.saturating_sub(self.frac).div_ceil(5 * u128::from(window)))
            .and_then(|ns| u64::try_from(ns).ok())?;
        self.prev.checked_add(Duration::from_nanos(wait_ns))
    }

    /// Records that `bytes` were sent, spending that many tokens.
    pub(crate) fn on_sent(&mut self, bytes: u64) {
        self.tokens = self.tokens.saturating_sub(bytes);
    }

    /// Credits the tokens earned since the last refill at the current rate.
    fn refill(&mut self, now: Instant, window: u64, smoothed_rtt: Duration) {
        if smoothed_rtt != self.last_rtt {
            // The fraction's unit changed; dropping it loses under a byte.
            self.frac = 0;
            self.last_rtt = smoothed_rtt;
        }
        // A caller whose clock went backwards earns nothing, and `prev` never
        // moves back.
        let Some(elapsed) = now.checked_duration_since(self.prev) else {
            return;
        };
        self.prev = now;
        let denom = 4 * smoothed_rtt.as_nanos();
        let earned = elapsed
            .as_nanos()
            .checked_mul(5 * u128::from(window))
            .and_then(|x| x.checked_add(self.frac));
        let credit = match earned {
            Some(earned) => {
                self.frac = earned % denom;
                u64::try_from(earned / denom).unwrap_or(u64::MAX)
            }
            None => u64::MAX,
        };
        self.tokens = self.tokens.saturating_add(credit);
        if self.tokens >= self.capacity {
            self.tokens = self.capacity;
            self.frac = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u64 = 1200;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn ns(n: u64) -> Duration {
        Duration::from_nanos(n)
    }

    /// Sends `count` packets of `MTU` as fast as the pacer allows on a
    /// synthetic clock, returning each packet's send time offset.
    fn drive(
        pacer: &mut Pacer,
        start: Instant,
        count: usize,
        window: u64,
        rtt: Duration,
    ) -> Vec<Duration> {
        let mut now = start;
        let mut sent = Vec::with_capacity(count);
        while sent.len() < count {
            match pacer.delay(now, MTU, MTU, window, rtt) {
                None => {
                    pacer.on_sent(MTU);
                    sent.push(now - start);
                }
                Some(at) => {
                    assert!(at > now, "pacer must not ask to wait for the past");
                    now = at;
                }
            }
        }
        sent
    }

    #[test]
    fn capacity_rule() {
        let t = Instant::now();
        let rtt = us(100);
        // Small window: 10-packet floor.
        assert_eq!(Pacer::new(t, MTU, 2 * MTU, rtt).capacity(), 10 * MTU);
        // Mid window: a quarter of it.
        assert_eq!(Pacer::new(t, MTU, 100 * MTU, rtt).capacity(), 25 * MTU);
        // Huge window: 64-packet ceiling.
        assert_eq!(Pacer::new(t, MTU, u64::MAX, rtt).capacity(), 64 * MTU);
        // Absurd MTU does not overflow.
        assert_eq!(Pacer::new(t, u64::MAX, 1000, rtt).capacity(), u64::MAX);
    }

    #[test]
    fn first_burst_goes_immediately() {
        let t = Instant::now();
        let window = 12 * MTU;
        let mut p = Pacer::new(t, MTU, window, us(100));
        for _ in 0..10 {
            assert_eq!(p.delay(t, MTU, MTU, window, us(100)), None);
            p.on_sent(MTU);
        }
        assert!(p.delay(t, MTU, MTU, window, us(100)).is_some());
    }

    #[test]
    fn sustained_sender_spread_exactly() {
        // window 10·MTU over 100 µs at 1.25× → 150 B/µs → one 1200 B packet
        // every 8 µs once the 10-packet burst is spent.
        let t = Instant::now();
        let window = 10 * MTU;
        let rtt = us(100);
        let mut p = Pacer::new(t, MTU, window, rtt);
        let sent = drive(&mut p, t, 30, window, rtt);
        for (i, &at) in sent.iter().enumerate() {
            let expected = if i < 10 {
                Duration::ZERO
            } else {
                us(8 * (i as u64 - 9))
            };
            assert_eq!(at, expected, "packet {i}");
        }
    }

    #[test]
    fn returned_instant_is_exact_and_sufficient() {
        let t = Instant::now();
        let window = 32 * MTU; // 38 400 B
        let rtt = us(50); // → 960 B/µs → 1250 ns per packet
        let mut p = Pacer::new(t, MTU, window, rtt);
        p.on_sent(p.capacity());
        let at = p.delay(t, MTU, MTU, window, rtt).unwrap();
        assert_eq!(at, t + ns(1250));
        // One nanosecond early is still too early, and asks for the same time.
        assert_eq!(p.delay(at - ns(1), MTU, MTU, window, rtt), Some(at));
        assert_eq!(p.delay(at, MTU, MTU, window, rtt), None);
    }

    #[test]
    fn rate_matches_formula_for_awkward_numbers() {
        let t = Instant::now();
        let mtu = 1472;
        let window = 100_003;
        let rtt = ns(37_123);
        let mut p = Pacer::new(t, mtu, window, rtt);
        let capacity = p.capacity();
        assert_eq!(capacity, window / 4);
        let count = 10_000u64;
        let mut now = t;
        let mut sent = 0;
        while sent < count {
            match p.delay(now, mtu, mtu, window, rtt) {
                None => {
                    p.on_sent(mtu);
                    sent += 1;
                }
                Some(at) => now = at,
            }
        }
        // Bytes beyond the initial burst, at 1.25·window/rtt.
        let paced_bytes = (count * mtu - capacity) as f64;
        let expected = paced_bytes * rtt.as_nanos() as f64 / (1.25 * window as f64);
        let got = (now - t).as_nanos() as f64;
        let err = (got - expected).abs() / expected;
        assert!(err < 1e-3, "elapsed {got} ns, expected {expected} ns");
    }

    #[test]
    fn tiny_rtt_does_not_stall() {
        // 10 µs RTT: 4800 B/µs → one packet every 250 ns.
        let t = Instant::now();
        let window = 32 * MTU;
        let rtt = us(10);
        let mut p = Pacer::new(t, MTU, window, rtt);
        let sent = drive(&mut p, t, 1000, window, rtt);
        assert_eq!(sent[9], Duration::ZERO);
        assert_eq!(sent[10], ns(250));
        assert_eq!(*sent.last().unwrap(), ns(250 * 990));
        for w in sent.windows(2) {
            assert!(w[1] - w[0] <= rtt);
        }
    }

    #[test]
    fn zero_rtt_means_no_pacing() {
        let t = Instant::now();
        let window = 32 * MTU;
        let mut p = Pacer::new(t, MTU, window, Duration::ZERO);
        for _ in 0..1000 {
            assert_eq!(p.delay(t, MTU, MTU, window, Duration::ZERO), None);
            p.on_sent(MTU);
        }
        // Zero window: pacing off too (congestion control blocks instead).
        assert_eq!(p.delay(t, MTU, MTU, 0, us(10)), None);
    }

    #[test]
    fn a_burst_after_an_idle_period_is_one_bucket() {
        // The bucket was full (and so never refilled) for a millisecond; a
        // sender that then empties it gets no second bucket at that instant.
        let t = Instant::now();
        let window = 10 * MTU;
        let rtt = us(100);
        let mut p = Pacer::new(t, MTU, window, rtt);
        let sent = drive(&mut p, t + Duration::from_millis(1), 12, window, rtt);
        assert_eq!(sent[9], Duration::ZERO);
        assert_eq!(sent[10], us(8));
        assert_eq!(sent[11], us(16));
    }

    #[test]
    fn idle_refills_only_up_to_capacity() {
        let t = Instant::now();
        let window = 10 * MTU;
        let rtt = us(100);
        let mut p = Pacer::new(t, MTU, window, rtt);
        p.on_sent(p.capacity());
        // A long idle period earns at most one bucket.
        let later = t + Duration::from_secs(3600);
        let sent = drive(&mut p, later, 11, window, rtt);
        assert_eq!(sent[9], Duration::ZERO);
        assert_eq!(sent[10], us(8));
    }

    #[test]
    fn window_change_resizes_bucket() {
        let t = Instant::now();
        let rtt = us(100);
        let mut p = Pacer::new(t, MTU, 256 * MTU, rtt);
        assert_eq!(p.capacity(), 64 * MTU);
        // The window collapses: the bucket shrinks and its tokens with it.
        assert_eq!(p.delay(t, MTU, MTU, 2 * MTU, rtt), None);
        assert_eq!(p.capacity(), 10 * MTU);
        assert_eq!(p.tokens, 10 * MTU);
    }

    #[test]
    fn oversized_packet_waits_for_full_bucket() {
        let t = Instant::now();
        let window = 10 * MTU;
        let rtt = us(100);
        let mut p = Pacer::new(t, MTU, window, rtt);
        let big = 100 * MTU;
        assert_eq!(p.delay(t, big, MTU, window, rtt), None);
        p.on_sent(big);
        // Refill of a whole bucket (12 000 B at 150 B/µs) takes 80 µs.
        assert_eq!(p.delay(t, big, MTU, window, rtt), Some(t + us(80)));
        assert_eq!(p.delay(t + us(80), big, MTU, window, rtt), None);
    }

    #[test]
    fn clock_going_backwards_is_harmless() {
        let t = Instant::now() + Duration::from_secs(1);
        let window = 10 * MTU;
        let rtt = us(100);
        let mut p = Pacer::new(t, MTU, window, rtt);
        p.on_sent(p.capacity());
        let at = p.delay(t, MTU, MTU, window, rtt).unwrap();
        assert_eq!(at, t + us(8));
        assert_eq!(p.delay(t - us(500), MTU, MTU, window, rtt), Some(at));
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let t = Instant::now();
        let mtu = 9000;
        let mut p = Pacer::new(t, mtu, u64::MAX, us(10));
        p.on_sent(u64::MAX);
        // Rate is astronomically high: the smallest possible wait.
        assert_eq!(p.delay(t, mtu, mtu, u64::MAX, us(10)), Some(t + ns(1)));
        assert_eq!(
            p.delay(
                t + Duration::from_secs(1_000_000),
                mtu,
                mtu,
                u64::MAX,
                us(10)
            ),
            None
        );
        // Absurd RTT: the wait is unrepresentable, so pacing steps aside
        // rather than panicking.
        let mut p = Pacer::new(t, mtu, 20 * mtu, Duration::MAX);
        p.on_sent(u64::MAX);
        assert_eq!(p.delay(t, mtu, mtu, 20 * mtu, Duration::MAX), None);
    }

    #[test]
    fn rtt_change_takes_effect_and_never_stalls() {
        let t = Instant::now();
        let window = 10 * MTU;
        let mut p = Pacer::new(t, MTU, window, us(100));
        p.on_sent(p.capacity());
        // Earn a fraction of a packet at 100 µs RTT...
        assert_eq!(
            p.delay(t + ns(1001), MTU, MTU, window, us(100)),
            Some(t + us(8))
        );
        // ...then the RTT halves: the rate doubles from here on.
        let at = p.delay(t + ns(1001), MTU, MTU, window, us(50)).unwrap();
        assert!(at <= t + us(8));
        assert_eq!(p.delay(at, MTU, MTU, window, us(50)), None);
    }

    proptest::proptest! {
        #[test]
        fn woken_at_returned_instant_can_send(
            mtu in 1u64..10_000,
            window in 1u64..1 << 40,
            rtt_ns in 1u64..10_000_000,
            steps in proptest::collection::vec((0u64..3_000, 1u64..20_000), 1..200),
        ) {
            let t = Instant::now();
            let rtt = ns(rtt_ns);
            let mut p = Pacer::new(t, mtu, window, rtt);
            let mut now = t;
            for (gap, size) in steps {
                now += ns(gap);
                match p.delay(now, size, mtu, window, rtt) {
                    None => p.on_sent(size),
                    Some(at) => {
                        proptest::prop_assert!(at > now);
                        // Never longer than refilling a whole bucket takes.
                        let full = u128::from(p.capacity()) * 4 * u128::from(rtt_ns)
                            / (5 * u128::from(window)) + 1;
                        proptest::prop_assert!((at - now).as_nanos() <= full);
                        now = at;
                        proptest::prop_assert_eq!(p.delay(now, size, mtu, window, rtt), None);
                        p.on_sent(size);
                    }
                }
            }
        }
    }
}
