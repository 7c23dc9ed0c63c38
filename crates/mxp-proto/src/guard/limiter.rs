//! A token bucket, exact at microsecond steps.

use std::time::{Duration, Instant};

/// A token bucket of `rate` tokens a second, holding at most `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    /// Tokens scaled by 1e6 so refills stay exact at microsecond steps.
    micro_tokens: u64,
    rate: u64,
    burst: u64,
    last: Instant,
}

impl RateLimiter {
    /// A full bucket at `now`.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        RateLimiter {
            micro_tokens: u64::from(burst.max(1)) * 1_000_000,
            rate: u64::from(rate.max(1)),
            burst: u64::from(burst.max(1)),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let us = now.saturating_duration_since(self.last).as_micros() as u64;
        if us == 0 {
            return;
        }
        // Advance by whole microseconds only, so no fraction is lost.
        self.last += Duration::from_micros(us);
        self.micro_tokens =
            (self.micro_tokens + us.saturating_mul(self.rate)).min(self.burst * 1_000_000);
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.micro_tokens >= 1_000_000 {
            self.micro_tokens -= 1_000_000;
            true
        } else {
            false
        }
    }

    /// Whether a token could be taken now.
    pub fn has_token(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.micro_tokens >= 1_000_000
    }

    /// When the next token is (or was) there: no clock needed, the bucket
    /// fills at a known rate since its last refill.
    pub fn next_token_at(&self) -> Instant {
        let missing = 1_000_000u64.saturating_sub(self.micro_tokens);
        self.last + Duration::from_micros(missing.div_ceil(self.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(1000, 3, t0);
        assert!((0..3).all(|_| r.try_take(t0)));
        assert!(!r.try_take(t0));
        assert_eq!(r.next_token_at(), t0 + Duration::from_millis(1));
        assert!(!r.try_take(t0 + Duration::from_micros(999)));
        assert!(r.try_take(t0 + Duration::from_millis(1)));
        // A long pause refills the burst, no more.
        let later = t0 + Duration::from_secs(10);
        assert!((0..3).all(|_| r.try_take(later)));
        assert!(!r.has_token(later));
    }
}
