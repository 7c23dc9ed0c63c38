//! The endpoint: one UDP socket's worth of connections.
//!
//! It routes datagrams to connections by connection id and, on the server
//! side, decides what an initiation is worth before any connection exists
//! ([`admission`]): the Diffie-Hellman work of new handshakes leaves the
//! endpoint as [`HandshakeJob`]s, to run off the packet path. Everything it
//! refuses is counted in [`EndpointStats`].

mod active;
mod admission;
mod job;
mod peers;
mod queue;
mod stats;

use std::collections::{BTreeMap, VecDeque};

use foldhash::{HashMap, HashMapExt};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::HANDSHAKE;
use bytes::BytesMut;
use slab::Slab;
use tracing::{debug, trace};

use crate::config::EndpointConfig;
use crate::connection::{Connection, ConnectionStats, Event, Transmit};
use crate::crypto::{HandshakeError, PublicKey, RESET_TOKEN_LEN, ResetKey};
use crate::error::ConnectionError;
use crate::packet::{self, ConnectionId, Header, MIN_RESET_LEN};

use crate::guard::RateLimiter;
use active::{Active, EVENTS, RETIMED, TOUCHED, TRANSMIT};
use admission::Server;
pub use job::{HandshakeDone, HandshakeJob};
pub use stats::{EndpointStats, Incoming, Refusal};

/// Refers to a connection owned by an [`Endpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle(pub usize);

type InitialKey = (SocketAddr, ConnectionId, ConnectionId);

/// Stateless resets a node sends per second at most.
const RESETS_PER_SECOND: u32 = 1000;

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
    /// Client connections by the stateless-reset token their server gave,
    /// so an unknown short packet costs one lookup, not a scan.
    by_reset_token: HashMap<[u8; RESET_TOKEN_LEN], ConnectionHandle>,
    /// Counters of connections already forgotten, so totals never go back.
    retired: ConnectionStats,
    /// How connections ended, by [`ConnectionError::kind`] (`closed` for a
    /// connection that ended without an error).
    ended: BTreeMap<&'static str, u64>,
}

impl Endpoint {
    /// Creates an endpoint. `unix_time` is the wall-clock time at `now`
    /// (time since the Unix epoch); handshake timestamps are derived from it
    /// so the core itself never reads a clock.
    pub fn new(config: EndpointConfig, now: Instant, unix_time: Duration) -> Self {
        let reset_key = ResetKey::new(config.keypair.secret_bytes());
        let node_key = config.keypair.public();
        let server = config
            .server
            .as_ref()
            .map(|s| Server::new(s.clone(), &node_key, now));
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
            by_reset_token: HashMap::new(),
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

    /// Initiations waiting for a handshake job, or in one now.
    pub fn handshake_queue_depth(&self) -> usize {
        self.server.as_ref().map_or(0, |s| s.queue.len())
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

    /// Nanoseconds since this endpoint was created.
    fn monotonic_ns(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn unix_now_ns(&self, now: Instant) -> u64 {
        self.unix_epoch_ns + self.monotonic_ns(now)
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
    /// `server_key`. Fails only if the first handshake message cannot be
    /// built.
    pub fn connect(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        server_key: PublicKey,
    ) -> Result<ConnectionHandle, HandshakeError> {
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
        if let Header::Initial { dcid, scid, .. } = header {
            if let Some(&h) = self.by_initial.get(&(remote, scid, dcid)) {
                self.deliver(now, h, remote, datagram);
                return Incoming::Routed(h);
            }
            return self.handle_initiation(now, remote, &header, datagram.len());
        }
        let short = matches!(header, Header::Short { .. });
        let dcid = match &header {
            Header::Reject {
                dcid,
                reason: packet::RejectReason::Busy(_),
                ..
            } => {
                self.stats.busy_received += 1;
                *dcid
            }
            // Initials were taken above.
            Header::Initial { dcid, .. }
            | Header::Handshake { dcid, .. }
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
        let tail = datagram.len().checked_sub(RESET_TOKEN_LEN)?;
        let token: [u8; RESET_TOKEN_LEN] = datagram[tail..].try_into().ok()?;
        let &h = self.by_reset_token.get(&token)?;
        let c = self.connections.get(h.0)?;
        (c.remote_address() == remote && c.is_stateless_reset(datagram)).then_some(h)
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
                if let Some(token) = conn.reset_token() {
                    self.by_reset_token.insert(token, h);
                }
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

    /// When [`handle_timeout`](Self::handle_timeout) must next be called
    /// (or, for a handshake job waiting for the budget,
    /// [`poll_handshake`](Self::poll_handshake)).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.settle();
        let conns = self.active.deadlines.first().map(|&(at, _)| at);
        let job = self.server.as_ref().and_then(Server::next_job_at);
        [conns, job].into_iter().flatten().min()
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
        let mut streams_active = 0;
        for (_, c) in self.connections.iter() {
            let s = c.stats();
            totals.accumulate(&s);
            streams_active += s.streams_active;
        }
        (totals, streams_active)
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
        if let Some(token) = conn.reset_token() {
            if self.by_reset_token.get(&token) == Some(&h) {
                self.by_reset_token.remove(&token);
            }
        }
        if let Some(key) = self.initial_keys.remove(&h) {
            self.by_initial.remove(&key);
        }
        if let Some(server) = &mut self.server {
            server.unconfirmed.remove(&h);
            server.peers.remove(h);
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
        // Found by its token in one lookup, not by a scan of connections.
        assert_eq!(p.client.by_reset_token.len(), 1);
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
        let (after, streams_active) = p.client.totals();
        assert_eq!(streams_active, 0);
        assert!(after.packets_sent > live.packets_sent, "{after:?}");
        let ended: Vec<_> = p.client.ended_by_kind().collect();
        assert_eq!(ended, vec![(ConnectionError::Reset.kind(), 1)]);
        assert!(
            p.client.by_reset_token.is_empty(),
            "a forgotten connection leaves the reset index"
        );
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
