//! A deterministic in-process network for MXP endpoints.
//!
//! Endpoints exchange datagrams through links with seeded loss, delay,
//! jitter, reordering, duplication, corruption and optional bandwidth
//! limits, on a virtual clock. Nothing sleeps and nothing depends on the
//! machine's speed: the same seed gives the same run, so a failure found
//! once reproduces every time, and seconds of network time take
//! milliseconds to simulate.
//!
//! A node's handshake jobs (the Diffie-Hellman work of accepting a
//! connection) run on its own simulated workers and take
//! [`Network::set_handshake_cost`] of virtual time each, so a flood of
//! initiations meets the node's real capacity.
//!
//! ```
//! use std::time::Duration;
//! use mxp_proto::{Endpoint, EndpointConfig, Event, Keypair};
//! use mxp_sim::{LinkConfig, Network};
//!
//! let mut net = Network::new(7);
//! net.set_default_link(LinkConfig::lossy(Duration::from_micros(20), 0.05));
//! let server_keys = Keypair::generate();
//! let server_key = server_keys.public();
//! let server = net.add_endpoint("10.0.0.1:9000", EndpointConfig::server(server_keys));
//! let client = net.add_endpoint("10.0.0.2:5000", EndpointConfig::client(Keypair::generate()));
//! let now = net.now();
//! let addr = net.addr(server);
//! let conn = net.endpoint(client).connect(now, addr, server_key).unwrap();
//! let connected = net.run_until(Duration::from_secs(5), |net| {
//!     matches!(net.endpoint(client).poll_event(), Some((h, Event::Connected)) if h == conn)
//! });
//! assert!(connected);
//! ```

#![warn(missing_docs)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mxp_proto::{Endpoint, EndpointConfig, HandshakeDone, Incoming};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Impairments of one direction of a link. Probabilities are per datagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `0..=jitter`. Like queueing delay
    /// on a real path it never reorders: a datagram is not delivered before
    /// one sent earlier on the same link (use `reorder` for that).
    pub jitter: Duration,
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is held back by `reorder_delay`.
    pub reorder: f64,
    /// How long a reordered datagram is held back.
    pub reorder_delay: Duration,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability one bit of a datagram is flipped.
    pub corrupt: f64,
    /// Link rate in bytes per second; `None` for unlimited. With a rate,
    /// datagrams queue behind each other and are tail-dropped beyond
    /// `queue_bytes`, which is what congestion control reacts to.
    pub bandwidth: Option<u64>,
    /// Queue capacity when `bandwidth` is set.
    pub queue_bytes: u64,
}

impl LinkConfig {
    /// A perfect link with the given one-way delay.
    pub fn ideal(delay: Duration) -> Self {
        LinkConfig {
            delay,
            jitter: Duration::ZERO,
            loss: 0.0,
            reorder: 0.0,
            reorder_delay: delay * 2,
            duplicate: 0.0,
            corrupt: 0.0,
            bandwidth: None,
            queue_bytes: 256 * 1024,
        }
    }

    /// A link that loses a fraction of datagrams.
    pub fn lossy(delay: Duration, loss: f64) -> Self {
        LinkConfig {
            loss,
            ..Self::ideal(delay)
        }
    }
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self::ideal(Duration::from_micros(25))
    }
}

/// What a tap decides for a datagram about to enter the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapAction {
    /// Let it through (subject to the link's impairments).
    Pass,
    /// Drop it.
    Drop,
}

/// One datagram as seen by a tap or recorded in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// When it was sent.
    pub sent: Instant,
    /// Sender.
    pub from: SocketAddr,
    /// Receiver.
    pub to: SocketAddr,
    /// Bytes on the wire.
    pub data: Vec<u8>,
}

/// Bytes and datagrams that went one way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Datagrams sent (before impairments).
    pub sent_packets: u64,
    /// Bytes sent (before impairments).
    pub sent_bytes: u64,
    /// Datagrams delivered to an endpoint.
    pub delivered_packets: u64,
    /// Bytes delivered to an endpoint.
    pub delivered_bytes: u64,
}

/// Identifies an endpoint in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(pub usize);

#[derive(Debug)]
struct Node {
    addr: SocketAddr,
    endpoint: Endpoint,
    /// Handshake jobs being worked on, and when each is done.
    jobs: Vec<(Instant, HandshakeDone)>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    seq: u64,
    /// When it was put on the wire (what the log reports as `sent`).
    sent: Instant,
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
}

type Tap = Box<dyn FnMut(&Datagram) -> TapAction>;

/// The simulated network.
pub struct Network {
    now: Instant,
    start: Instant,
    rng: ChaCha8Rng,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    default_link: LinkConfig,
    links: HashMap<(SocketAddr, SocketAddr), LinkConfig>,
    busy_until: HashMap<(SocketAddr, SocketAddr), Instant>,
    /// Latest in-order delivery time per link, so jitter keeps FIFO order.
    last_arrival: HashMap<(SocketAddr, SocketAddr), Instant>,
    traffic: HashMap<(SocketAddr, SocketAddr), Traffic>,
    log: Option<Vec<(Instant, Datagram, bool)>>,
    taps: Vec<Tap>,
    /// What endpoints said about each delivered datagram (and each
    /// completed handshake job), newest last.
    outcomes: Vec<(SocketAddr, Incoming)>,
    /// Virtual time one handshake job takes.
    handshake_cost: Duration,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("elapsed", &self.elapsed())
            .field("nodes", &self.nodes.len())
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

/// Wall-clock time the simulation pretends it starts at (for handshake
/// timestamps): a fixed instant, so runs are reproducible.
pub const UNIX_START: Duration = Duration::from_secs(1_767_225_600);

impl Network {
    /// An empty network whose randomness is derived from `seed`.
    pub fn new(seed: u64) -> Self {
        let start = Instant::now();
        Network {
            now: start,
            start,
            rng: ChaCha8Rng::seed_from_u64(seed),
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            in_flight: BinaryHeap::new(),
            seq: 0,
            default_link: LinkConfig::default(),
            links: HashMap::new(),
            busy_until: HashMap::new(),
            last_arrival: HashMap::new(),
            traffic: HashMap::new(),
            log: None,
            taps: Vec::new(),
            outcomes: Vec::new(),
            handshake_cost: Duration::ZERO,
            buf: Vec::with_capacity(65_536),
        }
    }

    /// Current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since the network was created.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Virtual wall-clock time, for [`Endpoint::new`].
    pub fn unix_time(&self) -> Duration {
        UNIX_START + self.elapsed()
    }

    /// Creates an endpoint at `addr` and attaches it.
    pub fn add_endpoint(&mut self, addr: &str, config: EndpointConfig) -> NodeId {
        let addr: SocketAddr = addr.parse().expect("valid socket address");
        let endpoint = Endpoint::new(config, self.now, self.unix_time());
        self.attach(addr, endpoint)
    }

    /// Attaches an existing endpoint at `addr` (replacing any endpoint
    /// there, as a restarted node would).
    pub fn attach(&mut self, addr: SocketAddr, endpoint: Endpoint) -> NodeId {
        if let Some(&i) = self.by_addr.get(&addr) {
            self.nodes[i].endpoint = endpoint;
            self.nodes[i].jobs.clear();
            return NodeId(i);
        }
        self.nodes.push(Node {
            addr,
            endpoint,
            jobs: Vec::new(),
        });
        self.by_addr.insert(addr, self.nodes.len() - 1);
        NodeId(self.nodes.len() - 1)
    }

    /// Moves an endpoint to another address (a NAT rebinding).
    pub fn rebind(&mut self, node: NodeId, addr: SocketAddr) {
        let old = self.nodes[node.0].addr;
        self.by_addr.remove(&old);
        self.nodes[node.0].addr = addr;
        self.by_addr.insert(addr, node.0);
    }

    /// The endpoint of a node.
    pub fn endpoint(&mut self, node: NodeId) -> &mut Endpoint {
        &mut self.nodes[node.0].endpoint
    }

    /// The address of a node.
    pub fn addr(&self, node: NodeId) -> SocketAddr {
        self.nodes[node.0].addr
    }

    /// How long one handshake job (about five X25519 operations) takes on a
    /// node's worker, in virtual time. Zero (the default) completes jobs at
    /// once; flood tests set what the machine really spends (about 320 µs
    /// on the machines these tests run on).
    pub fn set_handshake_cost(&mut self, cost: Duration) {
        self.handshake_cost = cost;
    }

    /// Impairments for links without their own configuration.
    pub fn set_default_link(&mut self, link: LinkConfig) {
        self.default_link = link;
    }

    /// Impairments from `from` to `to` (one direction).
    pub fn set_link(&mut self, from: SocketAddr, to: SocketAddr, link: LinkConfig) {
        self.links.insert((from, to), link);
    }

    /// Adds a tap that sees (and may drop) every datagram as it is sent.
    pub fn add_tap(&mut self, tap: impl FnMut(&Datagram) -> TapAction + 'static) {
        self.taps.push(Box::new(tap));
    }

    /// Starts recording every datagram sent, with whether it was delivered.
    pub fn record(&mut self) {
        self.log.get_or_insert_with(Vec::new);
    }

    /// The recording: (delivery or drop time, datagram, delivered).
    pub fn log(&self) -> &[(Instant, Datagram, bool)] {
        self.log.as_deref().unwrap_or(&[])
    }

    /// Traffic from `from` to `to` so far.
    pub fn traffic(&self, from: SocketAddr, to: SocketAddr) -> Traffic {
        self.traffic.get(&(from, to)).copied().unwrap_or_default()
    }

    /// What endpoints decided about delivered datagrams (drained).
    pub fn take_outcomes(&mut self) -> Vec<(SocketAddr, Incoming)> {
        std::mem::take(&mut self.outcomes)
    }

    /// Puts raw bytes on the wire from any address (spoofing included), to
    /// arrive after the link's delay; impairments do not apply.
    pub fn inject(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        let link = self.link(from, to);
        let t = self.traffic.entry((from, to)).or_default();
        t.sent_packets += 1;
        t.sent_bytes += data.len() as u64;
        self.schedule(self.now + link.delay, from, to, data);
    }

    fn link(&self, from: SocketAddr, to: SocketAddr) -> LinkConfig {
        self.links
            .get(&(from, to))
            .copied()
            .unwrap_or(self.default_link)
    }

    fn schedule(&mut self, at: Instant, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        self.seq += 1;
        self.in_flight.push(Reverse(InFlight {
            at,
            seq: self.seq,
            sent: self.now,
            from,
            to,
            data,
        }));
    }

    fn note(&mut self, at: Instant, d: Datagram, delivered: bool) {
        if let Some(log) = &mut self.log {
            log.push((at, d, delivered));
        }
    }

    /// Sends one datagram through its link's impairments.
    fn send(&mut self, from: SocketAddr, to: SocketAddr, mut data: Vec<u8>) {
        let t = self.traffic.entry((from, to)).or_default();
        t.sent_packets += 1;
        t.sent_bytes += data.len() as u64;
        let d = Datagram {
            sent: self.now,
            from,
            to,
            data,
        };
        if self.taps.iter_mut().any(|tap| tap(&d) == TapAction::Drop) {
            self.note(self.now, d, false);
            return;
        }
        data = d.data;
        let link = self.link(from, to);
        let mut depart = self.now;
        if let Some(rate) = link.bandwidth {
            let busy = self.busy_until.entry((from, to)).or_insert(self.now);
            let backlog = busy.saturating_duration_since(self.now);
            let queued = backlog.as_nanos() as u64 * rate / 1_000_000_000;
            if queued + data.len() as u64 > link.queue_bytes {
                let d = Datagram {
                    sent: self.now,
                    from,
                    to,
                    data,
                };
                self.note(self.now, d, false);
                return;
            }
            let serialise = Duration::from_nanos(data.len() as u64 * 1_000_000_000 / rate);
            *busy = (*busy).max(self.now) + serialise;
            depart = *busy;
        }
        if self.rng.random_bool(link.loss.clamp(0.0, 1.0)) {
            let d = Datagram {
                sent: self.now,
                from,
                to,
                data,
            };
            self.note(self.now, d, false);
            return;
        }
        if self.rng.random_bool(link.corrupt.clamp(0.0, 1.0)) && !data.is_empty() {
            let i = self.rng.random_range(0..data.len());
            data[i] ^= 1 << self.rng.random_range(0..8);
        }
        let copies = if self.rng.random_bool(link.duplicate.clamp(0.0, 1.0)) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut at = depart + link.delay;
            if !link.jitter.is_zero() {
                let ns = self.rng.random_range(0..=link.jitter.as_nanos() as u64);
                at += Duration::from_nanos(ns);
                let last = self.last_arrival.entry((from, to)).or_insert(at);
                at = at.max(*last);
                *last = at;
            }
            if self.rng.random_bool(link.reorder.clamp(0.0, 1.0)) {
                at += link.reorder_delay;
            }
            self.schedule(at, from, to, data.clone());
        }
    }

    /// Completes the handshake jobs that are due and starts the ones the
    /// endpoints hand out.
    fn work(&mut self) {
        let now = self.now;
        for n in &mut self.nodes {
            loop {
                while let Some(k) = n.jobs.iter().position(|(at, _)| *at <= now) {
                    let (_, done) = n.jobs.swap_remove(k);
                    let outcome = n.endpoint.complete_handshake(now, done);
                    if self.outcomes.len() < 100_000 {
                        self.outcomes.push((n.addr, outcome));
                    }
                }
                let Some(job) = n.endpoint.poll_handshake(now) else {
                    break;
                };
                // The real work runs now; its result counts from when the
                // simulated worker would be done with it.
                n.jobs.push((now + self.handshake_cost, job.run()));
            }
        }
    }

    /// When the next handshake job is done.
    fn next_job(&self) -> Option<Instant> {
        self.nodes
            .iter()
            .flat_map(|n| n.jobs.iter().map(|(at, _)| *at))
            .min()
    }

    /// Collects everything every endpoint wants to send now.
    fn flush(&mut self) {
        self.work();
        for i in 0..self.nodes.len() {
            loop {
                self.buf.clear();
                let now = self.now;
                let Some(t) = self.nodes[i].endpoint.poll_transmit(now, &mut self.buf) else {
                    break;
                };
                let from = self.nodes[i].addr;
                let data = self.buf[self.buf.len() - t.size..].to_vec();
                self.send(from, t.destination, data);
            }
        }
    }

    /// Advances to the next thing that happens (a delivery or a timer) and
    /// does it. Returns false if nothing will ever happen again.
    pub fn step(&mut self) -> bool {
        self.flush();
        let Some(next) = self.next_event() else {
            return false;
        };
        self.now = self.now.max(next);
        while let Some(Reverse(p)) = self.in_flight.peek() {
            if p.at > self.now {
                break;
            }
            let Reverse(p) = self.in_flight.pop().expect("peeked");
            self.deliver(p);
        }
        let now = self.now;
        for n in &mut self.nodes {
            if n.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                n.endpoint.handle_timeout(now);
            }
        }
        self.flush();
        true
    }

    fn deliver(&mut self, p: InFlight) {
        let d = Datagram {
            sent: p.sent,
            from: p.from,
            to: p.to,
            data: p.data,
        };
        let Some(&i) = self.by_addr.get(&p.to) else {
            self.note(self.now, d, false);
            return;
        };
        let t = self.traffic.entry((p.from, p.to)).or_default();
        t.delivered_packets += 1;
        t.delivered_bytes += d.data.len() as u64;
        let bytes = BytesMut::from(&d.data[..]);
        let outcome = self.nodes[i].endpoint.handle(self.now, p.from, bytes);
        if self.outcomes.len() < 100_000 {
            self.outcomes.push((p.to, outcome));
        }
        self.note(self.now, d, true);
    }

    /// Steps until `done` returns true (checked after every step) or
    /// `limit` of virtual time passes. Returns whether `done` was reached.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&mut Network) -> bool,
    ) -> bool {
        let deadline = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            if self.now >= deadline {
                return false;
            }
            // Nothing beyond the deadline happens: a far-off timer (an idle
            // timeout, say) must not fire because `done` was never reached.
            self.flush();
            match self.next_event() {
                None => return done(self),
                Some(next) if next > deadline => self.now = deadline,
                Some(_) => {
                    self.step();
                }
            }
        }
    }

    /// When the next delivery or timer is due.
    fn next_event(&mut self) -> Option<Instant> {
        let delivery = self.in_flight.peek().map(|Reverse(p)| p.at);
        let timer = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.endpoint.poll_timeout())
            .min();
        [delivery, timer, self.next_job()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Steps for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let deadline = self.now + duration;
        while self.now < deadline {
            match self.next_event() {
                Some(t) if t <= deadline => {
                    self.step();
                }
                _ => {
                    // What the endpoints send now (data written since the
                    // last step) must still be delivered before the deadline.
                    self.flush();
                    if self.next_event().is_none_or(|t| t > deadline) {
                        self.now = deadline;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mxp_proto::Keypair;

    #[test]
    fn log_reports_send_time_and_delivery_time_separately() {
        let mut net = Network::new(1);
        net.set_default_link(LinkConfig::ideal(Duration::from_millis(3)));
        let node = net.add_endpoint("10.0.0.1:1", EndpointConfig::client(Keypair::generate()));
        let to = net.addr(node);
        let from: SocketAddr = "10.9.9.9:9".parse().unwrap();
        net.record();
        let sent = net.now();
        net.inject(from, to, vec![0; 10]);
        net.run_for(Duration::from_millis(5));
        let (at, d, delivered) = &net.log()[0];
        assert!(*delivered);
        assert_eq!(d.sent, sent, "`sent` is when the datagram went on the wire");
        assert_eq!(
            *at,
            sent + Duration::from_millis(3),
            "the entry's time is its delivery"
        );
    }

    #[test]
    fn run_for_delivers_what_is_sent_when_nothing_else_is_due() {
        // A fresh connect has a datagram to send but no timer before the
        // deadline: it must still go out and arrive within the run.
        let mut net = Network::new(2);
        let server_keys = Keypair::generate();
        let server_key = server_keys.public();
        let server = net.add_endpoint("10.0.0.1:1", EndpointConfig::server(server_keys));
        let client = net.add_endpoint("10.0.0.2:2", EndpointConfig::client(Keypair::generate()));
        let (now, to) = (net.now(), net.addr(server));
        net.endpoint(client).connect(now, to, server_key).unwrap();
        net.run_for(Duration::from_millis(1));
        let from = net.addr(client);
        assert!(
            net.traffic(from, to).delivered_packets >= 1,
            "the Initial arrived"
        );
        assert!(
            net.traffic(to, from).delivered_packets >= 1,
            "the server answered"
        );
    }

    #[test]
    fn run_until_stops_at_its_limit_instead_of_firing_later_timers() {
        let mut net = Network::new(3);
        let server_keys = Keypair::generate();
        let server_key = server_keys.public();
        let server = net.add_endpoint("10.0.0.1:1", EndpointConfig::server(server_keys));
        let client = net.add_endpoint("10.0.0.2:2", EndpointConfig::client(Keypair::generate()));
        let (now, to) = (net.now(), net.addr(server));
        let h = net.endpoint(client).connect(now, to, server_key).unwrap();
        net.run_for(Duration::from_millis(10));
        // The only timers left are seconds away (idle, keep-alive).
        let start = net.now();
        assert!(!net.run_until(Duration::from_millis(100), |_| false));
        assert_eq!(net.now(), start + Duration::from_millis(100));
        assert!(
            net.endpoint(client)
                .connection(h)
                .is_some_and(|c| c.is_established())
        );
    }
}
