//! The endpoint: one UDP socket's worth of connections.
//!
//! It routes datagrams to connections by connection id, and on the server
//! side decides what an initiation is worth before any connection exists:
//! version and size checks, stateless retry under load, a rate limit on
//! Diffie-Hellman work, replay protection by timestamp, and the client
//! allow-list. Everything it refuses is counted in [`EndpointStats`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::HANDSHAKE;
use bytes::BytesMut;
use slab::Slab;
use thiserror::Error;
use tracing::{debug, trace};

use crate::config::{EndpointConfig, RetryPolicy, ServerConfig};
use crate::connection::{
    Accepted, ClientHello, Connection, ConnectionStats, Event, ServerHello, Transmit,
    initiation_digest,
};
use crate::crypto::ResetKey;
use crate::crypto::handshake::Responder;
use crate::crypto::token::TokenKey;
use crate::crypto::{HandshakeError, PublicKey};
use crate::error::ConnectionError;
use crate::packet::keys::KeyState;
use crate::packet::{
    self, ConnectionId, Header, MIN_INITIAL_SIZE, MIN_RESET_LEN, PacketError, RejectReason, VERSION,
};
use crate::transport_params::TransportParams;

/// Refers to a connection owned by an [`Endpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle(pub usize);

/// What became of a received datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Handed to an existing connection.
    Routed(ConnectionHandle),
    /// Started a new server-side connection.
    Accepted(ConnectionHandle),
    /// Answered without keeping state (retry, or a refusal).
    Answered(Refusal),
    /// Dropped.
    Dropped(Refusal),
}

/// Why a datagram did not reach or create a connection. Each has an
/// [`EndpointStats`] counter.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// Could not be parsed.
    #[error("malformed datagram: {0}")]
    Malformed(PacketError),
    /// Addressed to no connection this endpoint has.
    #[error("unknown connection id")]
    UnknownConnection,
    /// An initiation for a node that does not accept connections.
    #[error("this endpoint does not accept connections")]
    NotAServer,
    /// An initiation in a protocol version we do not speak.
    #[error("unsupported version {0:#010x}")]
    VersionMismatch(u32),
    /// An Initial smaller than the anti-amplification padding demands.
    #[error("initial datagram of {0} bytes is below the {MIN_INITIAL_SIZE}-byte minimum")]
    InitialTooSmall(usize),
    /// The client was sent a retry token to prove its address.
    #[error("address validation requested (retry)")]
    RetryRequested,
    /// A retry token that this server did not issue for this address, or
    /// that expired.
    #[error("invalid or expired retry token")]
    InvalidToken,
    /// More initiations than the handshake rate limit allows.
    #[error("handshake rate limit exceeded")]
    RateLimited,
    /// The connection limit is reached.
    #[error("connection limit reached")]
    ConnectionLimit,
    /// The initiation did not decrypt with our key (wrong server key, or
    /// corruption).
    #[error("handshake failed: {0}")]
    HandshakeFailed(HandshakeError),
    /// An initiation not newer than one already accepted from the same
    /// client key: a replay.
    #[error("replayed handshake initiation")]
    ReplayedInitiation,
    /// An initiation stamped further from our clock than the allowed skew:
    /// an old replay, or a client with a wrong clock (it is told so).
    #[error("handshake initiation outside the allowed clock skew")]
    StaleInitiation,
    /// The client key is not on the allow-list.
    #[error("client key not allowed")]
    ClientNotAllowed,
    /// The node does not accept MXP connections now (carrier switch).
    #[error("not accepting MXP connections")]
    NotAccepting,
}

/// Endpoint-wide counters: everything refused before reaching a
/// connection, and handshake outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams handed to [`Endpoint::handle`].
    pub datagrams_received: u64,
    /// Connections that completed their handshake (either side).
    pub connections_established: u64,
    /// Initiations refused because the node does not accept MXP now.
    pub carrier_refusals: u64,
    /// Their bytes.
    pub bytes_received: u64,
    /// Datagrams that could not be parsed.
    pub malformed: u64,
    /// Datagrams for unknown connection ids.
    pub unknown_connection: u64,
    /// Initials below the minimum size.
    pub initials_too_small: u64,
    /// Initials of another version (answered with a refusal).
    pub version_mismatches: u64,
    /// Retry packets sent.
    pub retries_sent: u64,
    /// Invalid or expired retry tokens.
    pub invalid_tokens: u64,
    /// Initiations dropped by the handshake rate limit.
    pub rate_limited: u64,
    /// Initiations dropped at the connection limit.
    pub connection_limit: u64,
    /// Handshakes accepted (node side).
    pub handshakes_accepted: u64,
    /// Handshakes completed (client side).
    pub handshakes_completed: u64,
    /// Initiations that did not decrypt (wrong server key or corruption).
    pub handshake_decrypt_failures: u64,
    /// Replayed initiations refused (not newer than the last accepted one
    /// from the same client key).
    pub replayed_initiations: u64,
    /// Initiations refused for a timestamp outside the allowed clock skew.
    pub stale_initiations: u64,
    /// Initiations sent to a client-only endpoint.
    pub not_a_server: u64,
    /// Stateless resets sent for connections this node no longer has.
    pub stateless_resets_sent: u64,
    /// Stateless resets received: a server lost one of our connections.
    pub stateless_resets_received: u64,
    /// Stateless answers withheld because they would exceed three times the
    /// bytes of the datagram that caused them.
    pub amplification_blocked: u64,
    /// Clients refused by the allow-list.
    pub clients_refused: u64,
    /// Bytes of stateless answers (retries, refusals) sent.
    pub stateless_bytes_sent: u64,
}

impl EndpointStats {
    /// Every datagram refused before it reached a connection, whatever the
    /// reason: the one number for "garbage at the door".
    pub fn datagrams_refused(&self) -> u64 {
        self.malformed
            + self.unknown_connection
            + self.not_a_server
            + self.initials_too_small
            + self.version_mismatches
            + self.invalid_tokens
            + self.rate_limited
            + self.connection_limit
            + self.handshake_decrypt_failures
            + self.replayed_initiations
            + self.stale_initiations
            + self.clients_refused
            + self.carrier_refusals
    }
}

/// Token bucket limiting Diffie-Hellman work per second.
#[derive(Debug)]
struct RateLimiter {
    /// Tokens scaled by 1e6 so refills stay exact at microsecond steps.
    micro_tokens: u64,
    rate: u64,
    burst: u64,
    last: Instant,
}

impl RateLimiter {
    fn new(rate: u32, burst: u32, now: Instant) -> Self {
        RateLimiter {
            micro_tokens: u64::from(burst) * 1_000_000,
            rate: u64::from(rate),
            burst: u64::from(burst),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let us = now.saturating_duration_since(self.last).as_micros() as u64;
        self.last = now.max(self.last);
        self.micro_tokens =
            (self.micro_tokens + us.saturating_mul(self.rate)).min(self.burst * 1_000_000);
    }

    fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.micro_tokens >= 1_000_000 {
            self.micro_tokens -= 1_000_000;
            true
        } else {
            false
        }
    }

    /// Less than half the burst left: handshakes are arriving fast.
    fn under_pressure(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.micro_tokens < self.burst * 500_000
    }
}

type InitialKey = (SocketAddr, ConnectionId, ConnectionId);

/// Stateless resets a node sends per second at most.
const RESETS_PER_SECOND: u32 = 1000;

/// An initiation that passed admission: where it came from and what it
/// proved.
#[derive(Debug)]
struct Initiation {
    remote: SocketAddr,
    dcid: ConnectionId,
    scid: ConnectionId,
    len: usize,
    digest: u64,
    /// The client echoed a valid retry token.
    validated: bool,
}

/// Server-only state.
#[derive(Debug)]
struct Server {
    /// New MXP connections are accepted (the rollout's carrier switch can
    /// turn this off at runtime).
    accepting: bool,
    /// Where refused clients are sent instead: the QUIC listener's port.
    quic_port: Option<u16>,
    token_key: TokenKey,
    /// Newest initiation timestamp accepted per client key.
    timestamps: HashMap<PublicKey, u64>,
    limiter: RateLimiter,
    /// Server connections whose client has not yet proven its address.
    unconfirmed: HashSet<ConnectionHandle>,
}

/// Which connections the endpoint's poll functions look at, so their cost
/// follows what happened rather than how many connections there are.
///
/// A connection is *touched* whenever something may have changed it: a
/// datagram for it, an expired timer, its creation, or the application
/// borrowing it through [`Endpoint::connection`]. At the next poll each
/// touched connection gets its timer re-indexed and joins the transmit and
/// event queues; it leaves a queue when it has nothing more for it.
#[derive(Debug, Default)]
struct Active {
    touched: Vec<usize>,
    /// Connections whose timers may have moved (they just sent, or found
    /// nothing to send) but that need no other look.
    retimed: Vec<usize>,
    transmit: VecDeque<usize>,
    events: VecDeque<usize>,
    /// Per connection slot: which of the lists above hold it
    /// ([`TOUCHED`], [`RETIMED`], [`TRANSMIT`], [`EVENTS`]) — a plain
    /// array, since the application touches a connection on every write.
    queued: Vec<u8>,
    /// Every connection's next timer, earliest first.
    deadlines: BTreeSet<(Instant, usize)>,
    /// Per connection slot: its entry in `deadlines`.
    deadline_of: Vec<Option<Instant>>,
}

const TOUCHED: u8 = 1;
const RETIMED: u8 = 2;
const TRANSMIT: u8 = 4;
const EVENTS: u8 = 8;

impl Active {
    /// Sets `flag` for slot `k`; whether it was clear.
    fn mark(&mut self, k: usize, flag: u8) -> bool {
        if k >= self.queued.len() {
            self.queued.resize(k + 1, 0);
            self.deadline_of.resize(k + 1, None);
        }
        let was_clear = self.queued[k] & flag == 0;
        self.queued[k] |= flag;
        was_clear
    }

    fn clear(&mut self, k: usize, flag: u8) {
        if let Some(q) = self.queued.get_mut(k) {
            *q &= !flag;
        }
    }

    fn touch(&mut self, k: usize) {
        if self.mark(k, TOUCHED) {
            self.touched.push(k);
        }
    }

    fn retime(&mut self, k: usize) {
        if self.mark(k, RETIMED) {
            self.retimed.push(k);
        }
    }

    /// Re-indexes slot `k`'s timer at `at`.
    fn set_deadline(&mut self, k: usize, at: Option<Instant>) {
        self.mark(k, 0);
        if self.deadline_of[k] == at {
            return;
        }
        if let Some(old) = std::mem::replace(&mut self.deadline_of[k], at) {
            self.deadlines.remove(&(old, k));
        }
        if let Some(at) = at {
            self.deadlines.insert((at, k));
        }
    }

    /// A removed connection's slot may be reused: nothing of it may stay.
    fn forget(&mut self, k: usize) {
        if k < self.queued.len() {
            self.set_deadline(k, None);
            self.queued[k] = 0;
        }
        self.touched.retain(|&t| t != k);
        self.retimed.retain(|&t| t != k);
        self.transmit.retain(|&t| t != k);
        self.events.retain(|&t| t != k);
    }
}

/// A set of connections sharing one socket.
#[derive(Debug)]
pub struct Endpoint {
    config: EndpointConfig,
    connections: Slab<Connection>,
    by_cid: HashMap<ConnectionId, ConnectionHandle>,
    by_initial: HashMap<InitialKey, ConnectionHandle>,
    initial_keys: HashMap<ConnectionHandle, InitialKey>,
    server: Option<Server>,
    /// Stateless answers waiting to be sent.
    stateless: VecDeque<(SocketAddr, Vec<u8>)>,
    epoch: Instant,
    unix_epoch_ns: u64,
    /// Which connections the poll functions look at (see [`Active`]).
    active: Active,
    stats: EndpointStats,
    reset_key: ResetKey,
    /// Bounds stateless resets, so garbage aimed at a node cannot turn it
    /// into a traffic source.
    reset_limiter: RateLimiter,
    /// Counters of connections already forgotten, so totals never go back.
    retired: ConnectionStats,
    /// How connections ended, by [`ConnectionError::kind`] (`closed` for a
    /// connection that ended without an error).
    ended: BTreeMap<&'static str, u64>,
}

/// Why a connection could not be started.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConnectError {
    /// Building the first handshake message failed.
    #[error("cannot start handshake: {0}")]
    Handshake(#[from] HandshakeError),
}

impl Endpoint {
    /// Creates an endpoint. `unix_time` is the wall-clock time at `now`
    /// (time since the Unix epoch); handshake timestamps are derived from it
    /// so the core itself never reads a clock.
    pub fn new(config: EndpointConfig, now: Instant, unix_time: Duration) -> Self {
        let reset_key = ResetKey::new(config.keypair.secret_bytes());
        let server = config.server.as_ref().map(|s| Server {
            accepting: true,
            quic_port: None,
            token_key: TokenKey::generate(),
            timestamps: HashMap::new(),
            limiter: RateLimiter::new(s.handshake_rate, s.handshake_burst, now),
            unconfirmed: HashSet::new(),
        });
        Endpoint {
            config,
            connections: Slab::new(),
            by_cid: HashMap::new(),
            by_initial: HashMap::new(),
            initial_keys: HashMap::new(),
            server,
            stateless: VecDeque::new(),
            epoch: now,
            unix_epoch_ns: unix_time.as_nanos() as u64,
            active: Active::default(),
            stats: EndpointStats::default(),
            reset_key,
            reset_limiter: RateLimiter::new(RESETS_PER_SECOND, RESETS_PER_SECOND, now),
            retired: ConnectionStats::default(),
            ended: BTreeMap::new(),
        }
    }

    /// Whether new MXP connections are accepted. When they are not, each
    /// initiation is answered with a refusal naming `quic_port` (the node's
    /// QUIC listener), so clients fall back at once instead of timing out.
    /// Existing connections are unaffected (drain them with
    /// [`Connection::go_away`]).
    pub fn set_accepting(&mut self, accepting: bool, quic_port: Option<u16>) {
        if let Some(server) = &mut self.server {
            server.accepting = accepting;
            server.quic_port = quic_port;
        }
    }

    /// Whether new MXP connections are accepted (false for a client-only
    /// endpoint).
    pub fn is_accepting(&self) -> bool {
        self.server.as_ref().is_some_and(|s| s.accepting)
    }

    /// This node's public key: what clients need to connect to it.
    pub fn public_key(&self) -> PublicKey {
        self.config.keypair.public()
    }

    /// Endpoint-wide counters.
    pub fn stats(&self) -> EndpointStats {
        self.stats
    }

    /// Number of connections (in any state).
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Handles of all connections.
    pub fn connection_handles(&self) -> impl Iterator<Item = ConnectionHandle> + '_ {
        self.connections.iter().map(|(k, _)| ConnectionHandle(k))
    }

    /// A connection, to use its stream and datagram API.
    ///
    /// Whatever is done with it, the next poll looks at it again.
    pub fn connection(&mut self, handle: ConnectionHandle) -> Option<&mut Connection> {
        let conn = self.connections.get_mut(handle.0)?;
        self.active.touch(handle.0);
        Some(conn)
    }

    /// A connection, read-only.
    pub fn connection_ref(&self, handle: ConnectionHandle) -> Option<&Connection> {
        self.connections.get(handle.0)
    }

    fn unix_now_ns(&self, now: Instant) -> u64 {
        self.unix_epoch_ns + now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn fresh_cid(&self) -> ConnectionId {
        loop {
            let cid = ConnectionId::random();
            if !self.by_cid.contains_key(&cid) {
                return cid;
            }
        }
    }

    /// Starts connecting to the node at `remote` whose public key is
    /// `server_key`.
    pub fn connect(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        server_key: PublicKey,
    ) -> Result<ConnectionHandle, ConnectError> {
        let local_cid = self.fresh_cid();
        let conn = Connection::connect(
            now,
            self.config.transport.clone(),
            &self.config.keypair,
            &server_key,
            remote,
            local_cid,
            ConnectionId::random(),
            self.unix_now_ns(now),
        )?;
        let handle = ConnectionHandle(self.connections.insert(conn));
        self.active.touch(handle.0);
        self.by_cid.insert(local_cid, handle);
        let span = self.connections[handle.0].span();
        debug!(target: HANDSHAKE, parent: span, server = %server_key, "connecting");
        Ok(handle)
    }

    /// Takes in a datagram received from `remote`.
    pub fn handle(&mut self, now: Instant, remote: SocketAddr, datagram: BytesMut) -> Incoming {
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += datagram.len() as u64;
        let header = match packet::parse(&datagram) {
            Ok(h) => h,
            Err(e) => {
                self.stats.malformed += 1;
                trace!(peer = %remote, error = %e, "malformed datagram");
                return Incoming::Dropped(Refusal::Malformed(e));
            }
        };
        let short = matches!(header, Header::Short { .. });
        let dcid = match &header {
            Header::Initial {
                version,
                dcid,
                scid,
                token,
                noise,
            } => {
                let key = (remote, *scid, *dcid);
                if let Some(&h) = self.by_initial.get(&key) {
                    self.deliver(now, h, remote, datagram);
                    return Incoming::Routed(h);
                }
                let (version, dcid, scid) = (*version, *dcid, *scid);
                let (token, noise) = (token.to_vec(), noise.to_vec());
                return self.handle_initiation(
                    now,
                    remote,
                    version,
                    dcid,
                    scid,
                    &token,
                    &noise,
                    datagram.len(),
                );
            }
            Header::Handshake { dcid, .. }
            | Header::Retry { dcid, .. }
            | Header::Reject { dcid, .. }
            | Header::Short { dcid } => *dcid,
        };
        if let Some(&h) = self.by_cid.get(&dcid) {
            self.deliver(now, h, remote, datagram);
            return Incoming::Routed(h);
        }
        if short {
            if let Some(h) = self.find_reset(remote, &datagram) {
                self.stats.stateless_resets_received += 1;
                if let Some(conn) = self.connections.get_mut(h.0) {
                    conn.stateless_reset();
                    self.active.touch(h.0);
                }
                return Incoming::Routed(h);
            }
            self.send_stateless_reset(now, remote, dcid, datagram.len());
        }
        self.stats.unknown_connection += 1;
        Incoming::Dropped(Refusal::UnknownConnection)
    }

    /// A connection to `remote` whose stateless-reset token ends the
    /// datagram: the server lost that connection.
    fn find_reset(&self, remote: SocketAddr, datagram: &[u8]) -> Option<ConnectionHandle> {
        self.connections
            .iter()
            .find(|(_, c)| c.remote_address() == remote && c.is_stateless_reset(datagram))
            .map(|(k, _)| ConnectionHandle(k))
    }

    /// Tells a client whose connection this node no longer has (it
    /// restarted) that it is gone: the token proves it is this node.
    fn send_stateless_reset(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        dcid: ConnectionId,
        received: usize,
    ) {
        if self.config.server.is_none()
            || received <= MIN_RESET_LEN
            || !self.reset_limiter.try_take(now)
        {
            return;
        }
        let mut out = Vec::with_capacity(MIN_RESET_LEN);
        packet::write_stateless_reset(&self.reset_key.token(&dcid.0), &mut out);
        self.stats.stateless_resets_sent += 1;
        self.answer(remote, out, received);
    }

    fn deliver(
        &mut self,
        now: Instant,
        h: ConnectionHandle,
        remote: SocketAddr,
        datagram: BytesMut,
    ) {
        let Some(conn) = self.connections.get_mut(h.0) else {
            return;
        };
        self.active.touch(h.0);
        let was_established = conn.is_established();
        conn.handle(now, remote, datagram);
        if conn.is_established() {
            if !was_established && conn.side() == crate::Side::Client {
                // The client's handshake completed with this datagram.
                self.stats.handshakes_completed += 1;
            }
            if let Some(server) = &mut self.server {
                server.unconfirmed.remove(&h);
            }
        }
    }

    /// Queues a stateless answer, never more than three times the bytes of
    /// the datagram that caused it (anti-amplification, even for answers
    /// that hold no state).
    fn answer(&mut self, remote: SocketAddr, packet: Vec<u8>, received: usize) {
        if packet.len() > 3 * received {
            self.stats.amplification_blocked += 1;
            return;
        }
        self.stats.stateless_bytes_sent += packet.len() as u64;
        self.stateless.push_back((remote, packet));
    }

    /// Refuses an authenticated initiation with a reason the client can
    /// trust (it is inside Noise message 2).
    fn refuse(
        &mut self,
        remote: SocketAddr,
        scid: ConnectionId,
        responder: Responder,
        hello: ServerHello,
        received: usize,
    ) {
        let mut payload = Vec::new();
        hello.encode(&mut payload);
        if let Ok((msg2, _)) = responder.respond(&payload) {
            let mut out = Vec::new();
            packet::write_handshake(scid, ConnectionId::random(), &msg2, &mut out);
            self.answer(remote, out, received);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_initiation(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        version: u32,
        dcid: ConnectionId,
        scid: ConnectionId,
        token: &[u8],
        noise: &[u8],
        len: usize,
    ) -> Incoming {
        let Some(policy) = self.config.server.clone() else {
            self.stats.not_a_server += 1;
            return Incoming::Dropped(Refusal::NotAServer);
        };
        if len < MIN_INITIAL_SIZE {
            self.stats.initials_too_small += 1;
            return Incoming::Dropped(Refusal::InitialTooSmall(len));
        }
        if version != VERSION {
            self.stats.version_mismatches += 1;
            let mut out = Vec::new();
            packet::write_reject(scid, dcid, RejectReason::VersionMismatch, &mut out);
            self.answer(remote, out, len);
            return Incoming::Answered(Refusal::VersionMismatch(version));
        }
        if let Some(server) = self.server.as_ref().filter(|s| !s.accepting) {
            let quic_port = server.quic_port.unwrap_or(0);
            self.stats.carrier_refusals += 1;
            let mut out = Vec::new();
            packet::write_reject(
                scid,
                dcid,
                RejectReason::CarrierRefused { quic_port },
                &mut out,
            );
            self.answer(remote, out, len);
            return Incoming::Answered(Refusal::NotAccepting);
        }
        if self.connections.len() >= policy.max_connections {
            self.stats.connection_limit += 1;
            return Incoming::Dropped(Refusal::ConnectionLimit);
        }
        let now_us = now.saturating_duration_since(self.epoch).as_micros() as u64;
        let mut binding = [0u8; 16];
        binding[..8].copy_from_slice(&dcid.0);
        binding[8..].copy_from_slice(&scid.0);
        let server = self
            .server
            .as_mut()
            .expect("server state exists with server config");
        let validated = if token.is_empty() {
            let retry = match policy.retry {
                RetryPolicy::Never => false,
                RetryPolicy::Always => true,
                RetryPolicy::UnderLoad => {
                    server.unconfirmed.len() >= policy.retry_pending_threshold
                        || server.limiter.under_pressure(now)
                }
            };
            if retry {
                let token = server.token_key.issue(now_us, &remote, &binding);
                let mut out = Vec::new();
                packet::write_retry(scid, dcid, &token, &mut out);
                self.stats.retries_sent += 1;
                self.answer(remote, out, len);
                return Incoming::Answered(Refusal::RetryRequested);
            }
            false
        } else {
            let lifetime = policy.token_lifetime.as_micros() as u64;
            if server
                .token_key
                .validate(token, &remote, &binding, now_us, lifetime)
                .is_err()
            {
                self.stats.invalid_tokens += 1;
                return Incoming::Dropped(Refusal::InvalidToken);
            }
            true
        };
        if !server.limiter.try_take(now) {
            self.stats.rate_limited += 1;
            return Incoming::Dropped(Refusal::RateLimited);
        }
        // Only now is the Diffie-Hellman work spent.
        let prologue = packet::handshake_prologue(dcid, scid);
        let (responder, client_key, payload) = match Responder::read(
            &self.config.keypair,
            &prologue,
            noise,
        ) {
            Ok(r) => r,
            Err(e) => {
                self.stats.handshake_decrypt_failures += 1;
                debug!(target: HANDSHAKE, peer = %remote, error = %e, "initiation did not decrypt");
                if e == HandshakeError::Decrypt {
                    let mut out = Vec::new();
                    packet::write_reject(scid, dcid, RejectReason::ServerKeyMismatch, &mut out);
                    self.answer(remote, out, len);
                    return Incoming::Answered(Refusal::HandshakeFailed(e));
                }
                return Incoming::Dropped(Refusal::HandshakeFailed(e));
            }
        };
        let Some(hello) = ClientHello::decode(&payload) else {
            self.stats.malformed += 1;
            return Incoming::Dropped(Refusal::Malformed(PacketError::Malformed));
        };
        match self.check_replay(now, &policy, client_key, hello.timestamp) {
            Ok(()) => {}
            Err(Refusal::StaleInitiation) => {
                let server_time_ns = self.unix_now_ns(now);
                self.refuse(
                    remote,
                    scid,
                    responder,
                    ServerHello::ClockSkew { server_time_ns },
                    len,
                );
                return Incoming::Answered(Refusal::StaleInitiation);
            }
            Err(refusal) => return Incoming::Dropped(refusal),
        }
        let allowed = policy
            .allowed_clients
            .as_ref()
            .is_none_or(|list| list.contains(&client_key));
        if !allowed {
            self.stats.clients_refused += 1;
            debug!(target: HANDSHAKE, peer = %remote, client = %client_key, "client key not on the allow-list");
            self.refuse(remote, scid, responder, ServerHello::ClientNotAllowed, len);
            return Incoming::Answered(Refusal::ClientNotAllowed);
        }
        let initiation = Initiation {
            remote,
            dcid,
            scid,
            len,
            digest: initiation_digest(noise),
            validated,
        };
        self.accept(now, initiation, responder, client_key, hello)
    }

    /// Replay protection: the initiation must be newer than the last one
    /// accepted from this client key, and within the clock-skew window
    /// (which is what lets old entries be forgotten safely).
    fn check_replay(
        &mut self,
        now: Instant,
        policy: &ServerConfig,
        client: PublicKey,
        timestamp: u64,
    ) -> Result<(), Refusal> {
        let now_ns = self.unix_now_ns(now);
        let skew = policy.max_clock_skew.as_nanos() as u64;
        let server = self.server.as_mut().expect("server");
        if timestamp.abs_diff(now_ns) > skew {
            self.stats.stale_initiations += 1;
            let offset_ms = (timestamp as i128 - now_ns as i128) / 1_000_000;
            debug!(target: HANDSHAKE, client = %client, offset_ms, "handshake timestamp outside the allowed clock skew");
            return Err(Refusal::StaleInitiation);
        }
        if server
            .timestamps
            .get(&client)
            .is_some_and(|&last| timestamp <= last)
        {
            self.stats.replayed_initiations += 1;
            debug!(target: HANDSHAKE, client = %client, "replayed handshake initiation refused");
            return Err(Refusal::ReplayedInitiation);
        }
        server.timestamps.insert(client, timestamp);
        if server.timestamps.len() > 65_536 {
            let floor = now_ns.saturating_sub(skew);
            server.timestamps.retain(|_, &mut t| t >= floor);
        }
        Ok(())
    }

    fn accept(
        &mut self,
        now: Instant,
        initiation: Initiation,
        responder: Responder,
        client_key: PublicKey,
        hello: ClientHello,
    ) -> Incoming {
        let Initiation {
            remote,
            dcid,
            scid,
            len,
            digest,
            validated,
        } = initiation;
        let local_cid = self.fresh_cid();
        let mut payload = Vec::new();
        ServerHello::Accept {
            cid: local_cid,
            reset_token: self.reset_key.token(&local_cid.0),
            params: TransportParams::from_config(&self.config.transport),
        }
        .encode(&mut payload);
        let (msg2, secrets) = match responder.respond(&payload) {
            Ok(r) => r,
            Err(e) => return Incoming::Dropped(Refusal::HandshakeFailed(e)),
        };
        let mut reply = Vec::new();
        packet::write_handshake(scid, local_cid, &msg2, &mut reply);
        let conn = Connection::accepted(
            now,
            self.config.transport.clone(),
            Accepted {
                keys: KeyState::new(secrets, now),
                client_key,
                client_params: hello.params,
                remote,
                local_cid,
                remote_cid: scid,
                reply,
                initial_len: len,
                initiation: digest,
                address_validated: validated,
            },
        );
        let h = ConnectionHandle(self.connections.insert(conn));
        self.active.touch(h.0);
        let key = (remote, scid, dcid);
        self.by_cid.insert(local_cid, h);
        self.by_initial.insert(key, h);
        self.initial_keys.insert(h, key);
        if let Some(server) = &mut self.server {
            server.unconfirmed.insert(h);
        }
        self.stats.handshakes_accepted += 1;
        let span = self.connections[h.0].span();
        debug!(target: HANDSHAKE, parent: span, client = %client_key, "handshake accepted");
        Incoming::Accepted(h)
    }

    /// The next datagram to send, appended to `buf`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if let Some((destination, packet)) = self.stateless.pop_front() {
            buf.extend_from_slice(&packet);
            return Some(Transmit {
                destination,
                size: packet.len(),
            });
        }
        // Round-robin over the connections that may have something to
        // send, so one busy connection cannot starve the others.
        self.settle();
        while let Some(k) = self.active.transmit.pop_front() {
            let Some(conn) = self.connections.get_mut(k) else {
                continue;
            };
            let sent = conn.poll_transmit(now, buf);
            // Sending, or finding nothing to send, can move its timers.
            self.active.retime(k);
            if let Some(t) = sent {
                self.active.transmit.push_back(k);
                return Some(t);
            }
            self.active.clear(k, TRANSMIT);
        }
        None
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.settle();
        self.active.deadlines.first().map(|&(at, _)| at)
    }

    /// Runs expired timers of every connection.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.settle();
        let due: Vec<usize> = self
            .active
            .deadlines
            .range(..=(now, usize::MAX))
            .map(|&(_, k)| k)
            .collect();
        for k in due {
            if let Some(conn) = self.connections.get_mut(k) {
                if conn.poll_timeout().is_some_and(|t| t <= now) {
                    conn.handle_timeout(now);
                }
            }
            self.active.touch(k);
        }
    }

    /// Next event of any connection. A connection is removed right after
    /// its [`Event::Drained`] is returned.
    pub fn poll_event(&mut self) -> Option<(ConnectionHandle, Event)> {
        self.settle();
        let mut found = None;
        while let Some(&k) = self.active.events.front() {
            if let Some(e) = self.connections.get_mut(k).and_then(Connection::poll_event) {
                found = Some((ConnectionHandle(k), e));
                break;
            }
            self.active.events.pop_front();
            self.active.clear(k, EVENTS);
        }
        let (h, event) = found?;
        match event {
            Event::Connected => self.stats.connections_established += 1,
            Event::Drained => self.remove(h),
            _ => {}
        }
        Some((h, event))
    }

    /// Brings the poll queues and the timer index up to date with the
    /// connections touched since the last poll.
    fn settle(&mut self) {
        let active = &mut self.active;
        while let Some(k) = active.retimed.pop() {
            active.clear(k, RETIMED);
            let at = self.connections.get(k).and_then(Connection::poll_timeout);
            active.set_deadline(k, at);
        }
        while let Some(k) = active.touched.pop() {
            active.clear(k, TOUCHED);
            let Some(conn) = self.connections.get(k) else {
                active.set_deadline(k, None);
                continue;
            };
            active.set_deadline(k, conn.poll_timeout());
            if active.mark(k, TRANSMIT) {
                active.transmit.push_back(k);
            }
            if active.mark(k, EVENTS) {
                active.events.push_back(k);
            }
        }
    }

    /// Counters of every connection this endpoint ever had (live ones as of
    /// now), and the number of streams open now.
    pub fn totals(&self) -> (ConnectionStats, u64) {
        let mut totals = self.retired;
        let mut open_streams = 0;
        for (_, c) in self.connections.iter() {
            let s = c.stats();
            totals.accumulate(&s);
            open_streams += s.open_streams;
        }
        (totals, open_streams)
    }

    /// How connections ended, by [`ConnectionError::kind`] (`closed` for a
    /// connection that ended without an error).
    pub fn ended_by_kind(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.ended.iter().map(|(&k, &v)| (k, v))
    }

    fn remove(&mut self, h: ConnectionHandle) {
        let conn = self.connections.remove(h.0);
        self.active.forget(h.0);
        self.retired.accumulate(&conn.stats());
        let kind = conn.error().map_or("closed", ConnectionError::kind);
        *self.ended.entry(kind).or_default() += 1;
        self.by_cid.remove(&conn.local_cid());
        if let Some(key) = self.initial_keys.remove(&h) {
            self.by_initial.remove(&key);
        }
        if let Some(server) = &mut self.server {
            server.unconfirmed.remove(&h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Pair;

    #[test]
    fn both_ends_count_a_completed_handshake() {
        let mut p = Pair::new();
        assert_eq!(p.client_to_server(), 1);
        assert_eq!(p.server.stats().handshakes_accepted, 1);
        assert_eq!(
            p.client.stats().handshakes_completed,
            0,
            "not before the answer"
        );
        assert_eq!(p.server_to_client(), 1);
        assert_eq!(p.client.stats().handshakes_completed, 1);
        assert_eq!(
            p.client.stats().handshakes_accepted,
            0,
            "a client accepts none"
        );
        // Later packets do not count it again.
        p.client_to_server();
        p.server_to_client();
        assert_eq!(p.client.stats().handshakes_completed, 1);
    }

    #[test]
    fn a_restarted_server_resets_the_client_at_once() {
        let mut p = Pair::new();
        p.client_to_server();
        p.server_to_client();
        p.client_to_server();
        assert!(p.client.connection(p.conn).unwrap().is_established());
        // The node restarts with the same key and no connections.
        p.restart_server();
        let c = p.client.connection(p.conn).unwrap();
        let stream = c.open(crate::Dir::Uni, crate::Band::Streaming).unwrap();
        c.write(stream, &b"are you there?"[..]).unwrap();
        assert_eq!(p.client_to_server(), 1);
        assert_eq!(p.server.stats().stateless_resets_sent, 1);
        assert_eq!(p.server_to_client(), 1);
        assert_eq!(p.client.stats().stateless_resets_received, 1);
        let reset = crate::Event::ConnectionLost {
            reason: ConnectionError::Reset,
        };
        let events: Vec<_> = std::iter::from_fn(|| p.client.poll_event()).collect();
        assert!(events.contains(&(p.conn, reset)), "{events:?}");
    }

    #[test]
    fn totals_keep_the_counters_of_connections_that_are_gone() {
        let mut p = Pair::new();
        p.client_to_server();
        p.server_to_client();
        p.client_to_server();
        let (live, _) = p.client.totals();
        assert!(live.packets_sent >= 2, "{live:?}");
        assert_eq!(p.client.ended_by_kind().count(), 0);
        p.restart_server();
        let c = p.client.connection(p.conn).unwrap();
        let stream = c.open(crate::Dir::Uni, crate::Band::Streaming).unwrap();
        c.write(stream, &b"are you there?"[..]).unwrap();
        p.client_to_server();
        p.server_to_client();
        assert_eq!(p.server.stats().stateless_resets_sent, 1);
        while p.client.poll_event().is_some() {}
        assert!(p.client.connection(p.conn).is_none(), "forgotten");
        let (after, open_streams) = p.client.totals();
        assert_eq!(open_streams, 0);
        assert!(after.packets_sent > live.packets_sent, "{after:?}");
        let ended: Vec<_> = p.client.ended_by_kind().collect();
        assert_eq!(ended, vec![(ConnectionError::Reset.kind(), 1)]);
    }

    #[test]
    fn an_idle_connection_leaves_the_poll_queues_but_keeps_its_timers() {
        let mut p = Pair::new();
        p.client_to_server();
        p.server_to_client();
        p.client_to_server();
        while p.client.poll_event().is_some() {}
        // Idle: nothing to send, no event; its keep-alive and idle timers
        // are still indexed.
        let mut buf = Vec::new();
        assert!(p.client.poll_transmit(p.now, &mut buf).is_none());
        assert!(p.client.poll_event().is_none());
        assert!(p.client.active.transmit.is_empty());
        assert!(p.client.active.events.is_empty());
        assert!(p.client.poll_timeout().is_some(), "timers stay indexed");
        // Written to through `connection`, it is polled again and sends.
        let c = p.client.connection(p.conn).unwrap();
        let stream = c.open(crate::Dir::Uni, crate::Band::Streaming).unwrap();
        c.write(stream, &b"hello"[..]).unwrap();
        assert!(p.client.poll_transmit(p.now, &mut buf).is_some());
        // Its timer fires when due even though nothing polled it since.
        while p.client.poll_transmit(p.now, &mut buf).is_some() {}
        let due = p.client.poll_timeout().expect("a timer");
        p.client.handle_timeout(due);
        assert!(
            p.client.poll_timeout().is_some_and(|t| t > due),
            "the fired timer was re-indexed"
        );
    }

    #[test]
    fn a_reset_with_the_wrong_token_is_ignored() {
        let mut p = Pair::new();
        p.client_to_server();
        p.server_to_client();
        let mut forged = Vec::new();
        crate::packet::write_stateless_reset(&[7; 16], &mut forged);
        let outcome = p
            .client
            .handle(p.now, p.server_addr, BytesMut::from(&forged[..]));
        assert_eq!(outcome, Incoming::Dropped(Refusal::UnknownConnection));
        assert!(p.client.connection(p.conn).unwrap().is_established());
    }

    #[test]
    fn small_unknown_packets_get_no_reset_so_resets_cannot_loop() {
        let mut p = Pair::new();
        let mut tiny = Vec::new();
        crate::packet::write_stateless_reset(&[7; 16], &mut tiny);
        p.server
            .handle(p.now, p.client_addr, BytesMut::from(&tiny[..]));
        assert_eq!(p.server.stats().stateless_resets_sent, 0);
    }
}
