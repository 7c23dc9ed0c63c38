//! The QUIC carrier's door: what a new QUIC connection attempt is worth
//! before quinn spends TLS work on it, and what its identity exchange may
//! cost. The same protections as the MXP carrier's, so rolling back to
//! QUIC keeps a node safe from floods:
//!
//! - a copy of a captured Initial (same original destination connection
//!   id, another address) is ignored;
//! - under load (more attempts in their handshake than the workers take
//!   at once, or the handshake budget spent; held for
//!   [`LOAD_HOLD`](mxp_proto::guard::LOAD_HOLD)) an attempt must prove its
//!   address with quinn's stateless Retry first;
//! - a source (address prefix: /24, /56) that asked for more than its share
//!   of handshakes lately is ignored;
//! - attempts that have not finished the identity exchange are capped,
//!   and each has a short deadline;
//! - the identity exchange's Diffie-Hellman runs on the handshake workers.
//!
//! An ignored attempt costs its client a retransmission (quinn resends its
//! Initial), not its connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use mxp_proto::ServerConfig;
use mxp_proto::guard::{BoundedLog, LoadDetector, RateLimiter, SourceShares};

use crate::lock;

/// How long an authenticated TLS session may take to prove its MXP
/// identity (one round trip and a DH on each side: milliseconds). Short,
/// so a peer that completes TLS and then stalls holds a slot briefly.
pub(super) const IDENTITY_DEADLINE: Duration = Duration::from_secs(2);
/// Original destination connection ids remembered, to ignore copies.
const RECENT_ATTEMPTS: usize = 1 << 16;
const RECENT_RETENTION: Duration = Duration::from_secs(10);

/// Why an attempt was set aside, as `mxp_handshakes_limited_total` labels it.
pub(super) mod reason {
    pub(crate) const UNCONFIRMED_LIMIT: &str = "unconfirmed_limit";
    pub(crate) const SOURCE_SHARE: &str = "source_share";
    pub(crate) const BUDGET: &str = "budget";
    pub(crate) const ALL: [&str; 3] = [UNCONFIRMED_LIMIT, SOURCE_SHARE, BUDGET];
}

/// What to do with an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Accept,
    /// Ask it to prove its address (quinn's Retry).
    Retry,
    /// A copy of an attempt from elsewhere.
    Replayed,
    /// Set aside, for this reason.
    Limited(&'static str),
}

#[derive(Debug)]
struct State {
    budget: RateLimiter,
    sources: SourceShares,
    /// Digest of the original destination connection id → digest of the
    /// address it came from.
    recent: BoundedLog<u64>,
    load: LoadDetector,
    epoch: Instant,
}

/// The admission state of one QUIC node.
#[derive(Debug)]
pub(super) struct Guard {
    policy: Arc<ServerConfig>,
    state: std::sync::Mutex<State>,
    hasher: RandomState,
    /// Attempts accepted that have not finished (or failed) the identity
    /// exchange.
    unconfirmed: AtomicUsize,
    /// Identity exchanges computed on the handshake workers.
    pub jobs: Arc<AtomicU64>,
}

/// One accepted attempt's claim on the unconfirmed cap; released on drop.
#[derive(Debug)]
pub(super) struct Unconfirmed(Arc<Guard>);

impl Drop for Unconfirmed {
    fn drop(&mut self) {
        self.0.unconfirmed.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Guard {
    pub(super) fn new(policy: Arc<ServerConfig>) -> Arc<Guard> {
        let now = Instant::now();
        Arc::new(Guard {
            state: std::sync::Mutex::new(State {
                budget: RateLimiter::new(policy.handshake_rate, policy.handshake_burst, now),
                sources: SourceShares::new(now),
                recent: BoundedLog::new(RECENT_ATTEMPTS, RECENT_RETENTION.as_nanos() as u64),
                load: LoadDetector::default(),
                epoch: now,
            }),
            hasher: RandomState::default(),
            unconfirmed: AtomicUsize::new(0),
            jobs: Arc::default(),
            policy,
        })
    }

    /// Attempts waiting for, or in, their identity exchange.
    pub(super) fn unconfirmed(&self) -> usize {
        self.unconfirmed.load(Ordering::Relaxed)
    }

    /// Most attempts in their handshake at once.
    fn unconfirmed_cap(&self) -> usize {
        self.policy.handshake_queue
    }

    /// Attempts in their handshake beyond which the node counts as loaded:
    /// more than the workers can take at once.
    fn load_threshold(&self) -> usize {
        4 * self.policy.handshake_workers.max(1)
    }

    /// Decides on one attempt from `remote` whose Initial was addressed to
    /// `orig_dst_cid`.
    pub(super) fn admit(
        &self,
        remote: SocketAddr,
        orig_dst_cid: &[u8],
        validated: bool,
    ) -> Verdict {
        let now = Instant::now();
        let from = std::hash::BuildHasher::hash_one(&self.hasher, remote);
        let key = std::hash::BuildHasher::hash_one(&self.hasher, orig_dst_cid);
        let mut st = lock(&self.state);
        let now_ns = now.saturating_duration_since(st.epoch).as_nanos() as u64;
        st.recent.expire(now_ns, |_| {});
        match st.recent.get(key) {
            Some(&first) if first != from => return Verdict::Replayed,
            Some(_) => {}
            None => st.recent.insert(now_ns, key, from, |_| {}),
        }
        let unconfirmed = self.unconfirmed();
        let piling_up = unconfirmed >= self.load_threshold() || !st.budget.has_token(now);
        let loaded = st.load.observe(now, piling_up);
        if self.policy.retry.demands_retry(loaded) && !validated {
            return Verdict::Retry;
        }
        if unconfirmed >= self.unconfirmed_cap() {
            return Verdict::Limited(reason::UNCONFIRMED_LIMIT);
        }
        // A source's share: a quarter of the budget over the last one to
        // two seconds, never below one burst.
        let share = (self.policy.handshake_rate / 4).max(self.policy.handshake_burst);
        let (prefix_usage, _) = st.sources.share(now, &remote);
        if loaded && prefix_usage >= share {
            return Verdict::Limited(reason::SOURCE_SHARE);
        }
        if !st.budget.try_take(now) {
            return Verdict::Limited(reason::BUDGET);
        }
        st.sources.charge(now, &remote);
        Verdict::Accept
    }

    /// Claims a place among the unconfirmed attempts.
    pub(super) fn claim(self: &Arc<Self>) -> Unconfirmed {
        self.unconfirmed.fetch_add(1, Ordering::Relaxed);
        Unconfirmed(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Arc<ServerConfig> {
        // A source's share: max(rate / 4, burst) = 4.
        Arc::new({
            let mut server_config = ServerConfig::default();
            server_config.handshake_rate = 8;
            server_config.handshake_burst = 4;
            server_config
        })
    }

    #[test]
    fn a_copy_of_an_attempt_from_another_address_is_a_replay() {
        let g = Guard::new(policy());
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:2".parse().unwrap();
        assert_eq!(g.admit(a, b"cid-1", false), Verdict::Accept);
        assert_eq!(g.admit(b, b"cid-1", false), Verdict::Replayed);
        assert_eq!(
            g.admit(a, b"cid-1", true),
            Verdict::Accept,
            "its own retransmission"
        );
    }

    #[test]
    fn once_the_budget_is_spent_attempts_must_prove_their_address_then_wait() {
        let g = Guard::new(policy());
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        for i in 0..4u8 {
            assert_eq!(g.admit(a, &[i], false), Verdict::Accept);
        }
        assert_eq!(g.admit(a, b"next", false), Verdict::Retry);
        assert_eq!(
            g.admit(a, b"next", true),
            Verdict::Limited(reason::SOURCE_SHARE)
        );
        let other: SocketAddr = "10.9.0.1:1".parse().unwrap();
        assert_eq!(g.admit(other, b"x", true), Verdict::Limited(reason::BUDGET));
    }

    #[test]
    fn unconfirmed_attempts_are_capped() {
        let g = Guard::new(Arc::new({
            let mut server_config = ServerConfig::default();
            server_config.handshake_queue = 2;
            server_config.retry = mxp_proto::RetryPolicy::Never;
            server_config
        }));
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let held = [g.claim(), g.claim()];
        assert_eq!(
            g.admit(a, b"c", false),
            Verdict::Limited(reason::UNCONFIRMED_LIMIT)
        );
        drop(held);
        assert_eq!(g.admit(a, b"d", false), Verdict::Accept);
    }
}
