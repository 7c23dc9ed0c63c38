//! The node's door: what an initiation is worth before any connection
//! exists, decided with cheap checks first and Diffie-Hellman work last.
//!
//! In order, for every Initial:
//!
//! 1. size and version;
//! 2. mac1, keyed by the node's public key: a sender that does not know
//!    the key costs one HMAC;
//! 3. the recent-initiation logs: an exact copy of an initiation already
//!    queued, worked on or accepted is dropped (a captured Initial sent
//!    from a thousand ports costs a thousand lookups, not a thousand DHs);
//! 4. the connection limit;
//! 5. address validation: under load (handshake work arriving faster than
//!    it is done) a client without a retry token gets one and must echo it
//!    from its address; a token buys one handshake;
//! 6. the handshake queue, bounded, with each source address and prefix
//!    held to a fair share;
//! 7. the handshake budget (a token bucket of DH work per second) and the
//!    number of jobs running at once, when jobs are handed out.
//!
//! Only then does a [`HandshakeJob`] do the DH work, off the packet path.
//! Its result comes back through [`Endpoint::complete_handshake`], where the
//! replay log has the last word. Every refusal is counted, and a client
//! whose initiation is set aside is told so (a `Busy` refusal) and starts
//! over at once instead of waiting out its timeout.
//!
//! Replay protection does not rely on one timestamp per client key, so any
//! number of replicas sharing a key can connect at the same moment: each
//! initiation is remembered by digest for the clock-skew window, and one
//! older than the window is refused by its timestamp.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use foldhash::{HashSet, HashSetExt};
use tracing::debug;

use super::job::{HandshakeDone, HandshakeJob, JobResult, Refused};
use super::peers::PeerCounts;
use super::queue::{Admit, HandshakeQueue, Initiation};
use super::{ConnectionHandle, Endpoint, Incoming, Refusal};
use crate::HANDSHAKE;
use crate::config::ServerConfig;
use crate::connection::{Accepted, Connection, initiation_digest};
use crate::crypto::Mac1Key;
use crate::crypto::token::TokenKey;
use crate::guard::{BoundedLog, LoadDetector, RateLimiter, SourceShares};
use crate::packet::keys::KeyState;
use crate::packet::{
    self, BusyReason, ConnectionId, Header, MIN_INITIAL_SIZE, PacketError, RejectReason, VERSION,
};
use crate::transport_params::TransportParams;
use crate::{HandshakeError, PublicKey};

/// Initiations remembered before any DH work (queued, worked on, or just
/// refused), to drop exact copies cheaply.
const RECENT_INITIATIONS: usize = 1 << 16;
/// Authenticated initiations remembered for replay protection. At the
/// default budget (1,000 handshakes/s) this covers over four minutes,
/// more than twice the clock-skew window.
const ACCEPTED_INITIATIONS: usize = 1 << 18;
/// Retry tokens remembered as used.
const USED_TOKENS: usize = 1 << 16;
/// Refusals (version, key and busy rejects) sent per second at most.
const REFUSALS_PER_SECOND: u32 = 1000;

/// What the node remembers of an initiation before its DH work is done.
#[derive(Debug, Clone, Copy)]
struct Recent {
    source: u64,
    /// Queued or running: its answer is on the way.
    pending: bool,
}

/// Every authenticated initiation of the last clock-skew windows (digest
/// to timestamp), and the timestamp at or below which the log may have
/// forgotten one: the floor only grows, as the oldest entries leave.
#[derive(Debug)]
struct ReplayLog {
    accepted: BoundedLog<u64>,
    floor: u64,
}

impl ReplayLog {
    fn new(retention_ns: u64) -> Self {
        ReplayLog {
            accepted: BoundedLog::new(ACCEPTED_INITIATIONS, retention_ns),
            floor: 0,
        }
    }

    /// Whether an initiation with this digest was accepted.
    fn contains(&mut self, now_ns: u64, digest: u64) -> bool {
        let floor = &mut self.floor;
        self.accepted
            .expire(now_ns, |&ts| *floor = (*floor).max(ts));
        self.accepted.get(digest).is_some()
    }

    /// Records an authenticated initiation; false if it is stamped at or
    /// below the floor (the log could not tell it from a replay).
    fn record(&mut self, now_ns: u64, digest: u64, timestamp: u64) -> bool {
        if timestamp <= self.floor {
            return false;
        }
        let floor = &mut self.floor;
        self.accepted
            .insert(now_ns, digest, timestamp, |&ts| *floor = (*floor).max(ts));
        true
    }
}

/// Server-only state.
#[derive(Debug)]
pub(super) struct Server {
    pub policy: Arc<ServerConfig>,
    /// New MXP connections are accepted (the rollout's carrier switch can
    /// turn this off at runtime).
    pub accepting: bool,
    /// Where refused clients are sent instead: the QUIC listener's port.
    pub quic_port: Option<u16>,
    mac1: Mac1Key,
    token_key: TokenKey,
    used_tokens: BoundedLog<()>,
    recent: BoundedLog<Recent>,
    accepted: ReplayLog,
    sources: SourceShares,
    pub queue: HandshakeQueue,
    budget: RateLimiter,
    refusals: RateLimiter,
    load: LoadDetector,
    /// Server connections whose client has not yet proven its address.
    pub unconfirmed: HashSet<ConnectionHandle>,
    /// Open connections per address and per client key.
    pub peers: PeerCounts,
    /// Digests an initiation's source: (address, connection ids).
    sources_hasher: foldhash::fast::RandomState,
}

impl Server {
    pub(super) fn new(policy: Arc<ServerConfig>, node_key: &PublicKey, now: Instant) -> Server {
        // Initiations are remembered for twice the skew window: one stamped
        // at the window's far edge is refused by its timestamp afterwards.
        let window = 2 * policy.max_clock_skew.as_nanos() as u64 + 1_000_000_000;
        Server {
            accepting: true,
            quic_port: None,
            mac1: Mac1Key::for_node(node_key),
            token_key: TokenKey::generate(),
            used_tokens: BoundedLog::new(USED_TOKENS, policy.token_lifetime.as_nanos() as u64),
            recent: BoundedLog::new(RECENT_INITIATIONS, window),
            accepted: ReplayLog::new(window),
            sources: SourceShares::new(now),
            queue: HandshakeQueue::new(policy.handshake_queue),
            budget: RateLimiter::new(policy.handshake_rate, policy.handshake_burst, now),
            refusals: RateLimiter::new(REFUSALS_PER_SECOND, REFUSALS_PER_SECOND, now),
            load: LoadDetector::default(),
            unconfirmed: HashSet::new(),
            peers: PeerCounts::new(),
            sources_hasher: Default::default(),
            policy,
        }
    }

    /// Whether new initiations must prove their address first: while work
    /// waits for a worker or for the budget (handshakes arrive faster than
    /// they are done), or too many accepted clients have not confirmed.
    fn demands_retry(&mut self, now: Instant) -> bool {
        let piling_up = self.queue.waiting() > 0 || !self.budget.has_token(now);
        let loaded = self.load.observe(now, piling_up)
            || self.unconfirmed.len() >= self.policy.retry_pending_threshold;
        self.policy.retry.demands_retry(loaded)
    }

    /// An initiation's work is over (done, or given up): a copy of it from
    /// its sender no longer means its answer is on the way.
    fn settle(&mut self, digest: u64) {
        if let Some(r) = self.recent.get_mut(digest) {
            r.pending = false;
        }
    }

    /// Whether a waiting initiation could start now but for the budget.
    fn worker_free(&self) -> bool {
        self.queue.waiting() > 0 && self.queue.running() < self.policy.handshake_workers.max(1)
    }

    /// When a waiting job can be handed out, if a worker is free for it
    /// (it may wait for the budget).
    pub(super) fn next_job_at(&self) -> Option<Instant> {
        self.worker_free().then(|| self.budget.next_token_at())
    }
}

impl Endpoint {
    /// Sends a stateless refusal, within the refusal rate limit.
    fn reject(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        (scid, dcid): (ConnectionId, ConnectionId),
        reason: RejectReason,
        received: usize,
    ) {
        let Some(server) = &mut self.server else {
            return;
        };
        if !server.refusals.try_take(now) {
            self.stats.refusals_suppressed += 1;
            return;
        }
        let mut out = Vec::new();
        packet::write_reject(scid, dcid, reason, &mut out);
        self.answer(remote, out, received);
    }

    /// Refuses an initiation because the node does not accept MXP now,
    /// naming the QUIC port (the client falls back at once).
    fn refuse_carrier(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        ids: (ConnectionId, ConnectionId),
        received: usize,
    ) -> Incoming {
        let quic_port = self.server.as_ref().and_then(|s| s.quic_port).unwrap_or(0);
        self.stats.carrier_refusals += 1;
        let reason = RejectReason::CarrierRefused { quic_port };
        self.reject(now, remote, ids, reason, received);
        Incoming::Answered(Refusal::NotAccepting)
    }

    fn busy(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        ids: (ConnectionId, ConnectionId),
        why: BusyReason,
        received: usize,
    ) -> Incoming {
        debug!(target: HANDSHAKE, peer = %remote, reason = why.as_str(), "initiation set aside");
        self.reject(now, remote, ids, RejectReason::Busy(why), received);
        Incoming::Answered(Refusal::Busy(why))
    }

    /// Admission of an Initial of `len` bytes that no connection claimed
    /// (see the module doc).
    pub(super) fn handle_initiation(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        initial: &Header<'_>,
        len: usize,
    ) -> Incoming {
        let &Header::Initial {
            version,
            dcid,
            scid,
            token,
            noise,
            mac1,
            covered,
        } = initial
        else {
            return Incoming::Dropped(Refusal::Malformed(PacketError::Malformed));
        };
        let ids = (scid, dcid);
        if self.server.is_none() {
            self.stats.not_a_server += 1;
            return Incoming::Dropped(Refusal::NotAServer);
        }
        if len < MIN_INITIAL_SIZE {
            self.stats.initials_too_small += 1;
            return Incoming::Dropped(Refusal::InitialTooSmall(len));
        }
        if version != VERSION {
            self.stats.version_mismatches += 1;
            self.reject(now, remote, ids, RejectReason::VersionMismatch, len);
            return Incoming::Answered(Refusal::VersionMismatch(version));
        }
        let now_ns = self.monotonic_ns(now);
        let server = self.server.as_mut().expect("checked above");
        if !server.mac1.verify(covered, mac1) {
            // A client with the wrong node key computes a wrong mac1: tell
            // it (unauthenticated, so it believes two of these).
            self.stats.mac_failures += 1;
            self.reject(now, remote, ids, RejectReason::ServerKeyMismatch, len);
            return Incoming::Answered(Refusal::BadMac);
        }
        if !server.accepting {
            return self.refuse_carrier(now, remote, ids, len);
        }
        let digest = initiation_digest(noise);
        let source = std::hash::BuildHasher::hash_one(&server.sources_hasher, (remote, scid, dcid));
        server.recent.expire(now_ns, |_| {});
        let seen = server.recent.get(digest).copied();
        if server.accepted.contains(now_ns, digest) || seen.is_some_and(|r| r.source != source) {
            self.stats.replayed_initiations += 1;
            debug!(target: HANDSHAKE, peer = %remote, "replayed handshake initiation dropped");
            return Incoming::Dropped(Refusal::ReplayedInitiation);
        }
        if let Some(recent) = seen {
            self.stats.duplicate_initiations += 1;
            if recent.pending {
                // Its answer is on the way.
                return Incoming::Dropped(Refusal::DuplicateInitiation);
            }
            // Worked on and refused (or its connection is gone): the
            // client should start over.
            return self.busy(now, remote, ids, BusyReason::Unverifiable, len);
        }
        if self.connections.len() + server.queue.len() >= server.policy.max_connections {
            self.stats.connection_limit += 1;
            return self.busy(now, remote, ids, BusyReason::ConnectionLimit, len);
        }
        if server.peers.at_address(remote.ip()) >= server.policy.max_connections_per_address {
            self.stats.address_limit += 1;
            debug!(target: HANDSHAKE, peer = %remote, "at the limit of connections from this address");
            return self.busy(now, remote, ids, BusyReason::ConnectionLimit, len);
        }
        let mut binding = [0u8; 16];
        binding[..8].copy_from_slice(&dcid.0);
        binding[8..].copy_from_slice(&scid.0);
        let now_us = now_ns / 1_000;
        let validated = if token.is_empty() {
            if server.demands_retry(now) {
                let token = server.token_key.issue(now_us, &remote, &binding);
                let mut out = Vec::new();
                packet::write_retry(scid, dcid, &token, &mut out);
                self.stats.retries_sent += 1;
                self.answer(remote, out, len);
                return Incoming::Answered(Refusal::RetryRequested);
            }
            false
        } else {
            let lifetime = server.policy.token_lifetime.as_micros() as u64;
            if server
                .token_key
                .validate(token, &remote, &binding, now_us, lifetime)
                .is_err()
            {
                self.stats.invalid_tokens += 1;
                return Incoming::Dropped(Refusal::InvalidToken);
            }
            let token = initiation_digest(token);
            if server.used_tokens.get(token).is_some() {
                self.stats.tokens_reused += 1;
                return Incoming::Dropped(Refusal::TokenReused);
            }
            server.used_tokens.insert(now_ns, token, (), |_| {});
            true
        };
        let share = server.sources.share(now, &remote);
        let initiation = Initiation {
            remote,
            dcid,
            scid,
            len,
            digest,
            validated,
        };
        match server.queue.admit(initiation, noise.to_vec(), share) {
            Admit::Queued => {}
            Admit::Full => {
                self.stats.queue_full += 1;
                return self.busy(now, remote, ids, BusyReason::Overloaded, len);
            }
            Admit::Displaced(old) => {
                self.stats.displaced += 1;
                server.settle(old.digest);
                self.busy(
                    now,
                    old.remote,
                    (old.scid, old.dcid),
                    BusyReason::Overloaded,
                    old.len,
                );
            }
        }
        let server = self.server.as_mut().expect("checked above");
        server.sources.charge(now, &remote);
        server.recent.insert(
            now_ns,
            digest,
            Recent {
                source,
                pending: true,
            },
            |_| {},
        );
        Incoming::Queued
    }

    /// The next handshake job to run, if one waits and the handshake budget
    /// and the number of running jobs allow it. Call after every
    /// [`handle`](Self::handle), [`handle_timeout`](Self::handle_timeout)
    /// and [`complete_handshake`](Self::complete_handshake) until it
    /// returns `None`; [`poll_timeout`](Self::poll_timeout) says when a job
    /// waiting for the budget can go.
    pub fn poll_handshake(&mut self, now: Instant) -> Option<HandshakeJob> {
        let server = self.server.as_mut()?;
        if !server.worker_free() || !server.budget.try_take(now) {
            return None;
        }
        let (id, initiation, noise) = server.queue.start()?;
        let policy = server.policy.clone();
        let local_cid = self.fresh_cid();
        self.stats.handshake_jobs += 1;
        Some(HandshakeJob {
            id,
            keypair: self.config.keypair.clone(),
            policy,
            prologue: packet::handshake_prologue(initiation.dcid, initiation.scid),
            noise,
            unix_now_ns: self.unix_now_ns(now),
            local_cid,
            reset_token: self.reset_key.token(&local_cid.0),
            params: TransportParams::from_config(&self.config.transport),
        })
    }

    /// Runs every handshake job that can go now on the calling thread.
    /// For tests and single-threaded embedders: a runtime that moves
    /// established connections' packets should run jobs elsewhere.
    pub fn run_handshakes(&mut self, now: Instant) -> Vec<Incoming> {
        let mut outcomes = Vec::new();
        while let Some(job) = self.poll_handshake(now) {
            outcomes.push(self.complete_handshake(now, job.run()));
        }
        outcomes
    }

    /// Takes back a finished [`HandshakeJob`]: starts the connection, or
    /// sends the refusal the job wrote.
    pub fn complete_handshake(&mut self, now: Instant, done: HandshakeDone) -> Incoming {
        let Some(server) = self.server.as_mut() else {
            return Incoming::Dropped(Refusal::NotAServer);
        };
        let Some(initiation) = server.queue.finish(done.id) else {
            return Incoming::Dropped(Refusal::UnknownConnection);
        };
        server.settle(initiation.digest);
        let ids = (initiation.scid, initiation.dcid);
        let (remote, len) = (initiation.remote, initiation.len);
        match done.result {
            JobResult::Failed(e) => {
                self.stats.server_key_mismatches += 1;
                debug!(target: HANDSHAKE, peer = %remote, error = %e, "initiation did not decrypt");
                if e == HandshakeError::Decrypt {
                    self.reject(now, remote, ids, RejectReason::ServerKeyMismatch, len);
                    return Incoming::Answered(Refusal::HandshakeFailed(e));
                }
                Incoming::Dropped(Refusal::HandshakeFailed(e))
            }
            JobResult::Malformed => {
                self.stats.malformed += 1;
                Incoming::Dropped(Refusal::Malformed(PacketError::Malformed))
            }
            JobResult::Refuse {
                msg2,
                client_key,
                why,
            } => {
                let refusal = match why {
                    Refused::ClientNotAllowed => {
                        self.stats.clients_not_allowed += 1;
                        debug!(target: HANDSHAKE, peer = %remote, client = %client_key, "client key not on the allow-list");
                        Refusal::ClientNotAllowed
                    }
                    Refused::ClockSkew { offset_ns } => {
                        self.stats.stale_initiations += 1;
                        let offset_ms = offset_ns / 1_000_000;
                        debug!(target: HANDSHAKE, peer = %remote, client = %client_key, offset_ms, "handshake timestamp outside the allowed clock skew");
                        Refusal::StaleInitiation
                    }
                };
                let mut out = Vec::new();
                packet::write_handshake(initiation.scid, ConnectionId::random(), &msg2, &mut out);
                self.answer(remote, out, len);
                Incoming::Answered(refusal)
            }
            JobResult::Accept {
                msg2,
                secrets,
                client_key,
                hello,
                local_cid,
            } => {
                let now_ns = self.monotonic_ns(now);
                let server = self.server.as_mut().expect("checked above");
                if !server
                    .accepted
                    .record(now_ns, initiation.digest, hello.timestamp)
                {
                    self.stats.replayed_initiations += 1;
                    debug!(target: HANDSHAKE, peer = %remote, client = %client_key, "initiation older than the replay log remembers");
                    return self.busy(now, remote, ids, BusyReason::Unverifiable, len);
                }
                if !server.accepting {
                    return self.refuse_carrier(now, remote, ids, len);
                }
                if server.peers.with_key(&client_key) >= server.policy.max_connections_per_key {
                    self.stats.key_limit += 1;
                    debug!(target: HANDSHAKE, peer = %remote, client = %client_key, "at the limit of connections with this client key");
                    return self.busy(now, remote, ids, BusyReason::ConnectionLimit, len);
                }
                if self.by_cid.contains_key(&local_cid) {
                    // Another connection took the id meanwhile (2^-64).
                    return self.busy(now, remote, ids, BusyReason::Overloaded, len);
                }
                let mut reply = Vec::new();
                packet::write_handshake(initiation.scid, local_cid, &msg2, &mut reply);
                self.start_connection(
                    now, initiation, secrets, client_key, hello, local_cid, reply,
                )
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_connection(
        &mut self,
        now: Instant,
        initiation: Initiation,
        secrets: crate::crypto::SessionSecrets,
        client_key: PublicKey,
        hello: crate::connection::ClientHello,
        local_cid: ConnectionId,
        reply: Vec<u8>,
    ) -> Incoming {
        let conn = Connection::accepted(
            now,
            self.config.transport.clone(),
            Accepted {
                keys: KeyState::new(secrets, now),
                client_key,
                client_params: hello.params,
                remote: initiation.remote,
                local_cid,
                remote_cid: initiation.scid,
                reply,
                initial_len: initiation.len,
                initiation: initiation.digest,
                address_validated: initiation.validated,
            },
        );
        let h = ConnectionHandle(self.connections.insert(conn));
        self.active.touch(h.0);
        let key = (initiation.remote, initiation.scid, initiation.dcid);
        self.by_cid.insert(local_cid, h);
        self.by_initial.insert(key, h);
        self.initial_keys.insert(h, key);
        if let Some(server) = &mut self.server {
            server.unconfirmed.insert(h);
            server.peers.add(h, initiation.remote.ip(), client_key);
        }
        self.stats.handshakes_accepted += 1;
        let span = self.connections[h.0].span();
        debug!(target: HANDSHAKE, parent: span, client = %client_key, "handshake accepted");
        Incoming::Accepted(h)
    }
}
