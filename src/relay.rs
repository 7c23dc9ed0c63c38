//! An impairment relay: a UDP forwarder that loses, delays, jitters,
//! reorders and duplicates datagrams, with seeded randomness.
//!
//! The kernels MXP is tested on have no `netem`, so tests and the perf
//! baseline put a [`Relay`] between a client and a node to get a lossy,
//! slow or shuffling network over real sockets. `mxp relay` runs one from
//! the command line.
//!
//! # How it forwards
//!
//! The relay listens on one socket. Every distinct client source address
//! gets its own *upstream* socket, connected to the target, so the target
//! sees one source address per client and its replies find their way back
//! to the right client through the listening socket. Client mappings live
//! as long as the relay (at most 1024 at once; a client silent in both
//! directions for [`RelayConfig::client_idle`] gives its slot to the next
//! new one, and datagrams from new clients while every slot is busy are
//! dropped and counted).
//!
//! Impairments apply in both directions, each decided by its own seeded
//! [`ChaCha8Rng`], so a run is reproducible given the same packet order.
//! Each datagram, in order:
//!
//! - is **lost** with probability [`loss`](RelayConfig::loss);
//! - is scheduled [`delay`](RelayConfig::delay) plus a uniform random
//!   [`jitter`](RelayConfig::jitter) after it arrived, but never before a
//!   datagram that arrived earlier in the same direction: delay and jitter
//!   behave like queueing on a link and never reorder;
//! - with probability [`reorder`](RelayConfig::reorder) is held back a
//!   further [`reorder_delay`](RelayConfig::reorder_delay), letting later
//!   datagrams overtake it (the only way the relay reorders);
//! - with probability [`duplicate`](RelayConfig::duplicate) is sent twice
//!   (the copy right after the original).
//!
//! Deadlines are kept with microsecond precision (a `timerfd` on Linux;
//! tokio's own timer rounds to milliseconds). A datagram that is due at
//! once is forwarded straight from the receive buffer without allocating.
//!
//! The relay is a network, not a filter: it forwards anything, empty or
//! garbage datagrams included. Socket errors are logged (`tracing`, target
//! `mxp::relay`) and never stop it.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as MemoryOrder};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, warn};

use crate::timer::Timer;

/// Largest datagram the relay carries whole (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;
/// See [`RelayConfig::max_clients`].
const MAX_CLIENTS: usize = 1024;
/// See [`RelayConfig::client_idle`].
const DEFAULT_CLIENT_IDLE: Duration = Duration::from_secs(30);
/// Delayed-packet buffers kept for reuse.
const SPARE_BUFFERS: usize = 1024;
/// The hold of a reordered datagram when none is configured and there is
/// no delay to scale it from.
const MIN_REORDER_DELAY: Duration = Duration::from_micros(200);

/// What a [`Relay`] listens on, where it forwards, and how it impairs.
///
/// Probabilities are per datagram and per direction, in `[0, 1]`.
/// [`RelayConfig::new`] gives a relay without impairment; set the fields
/// you need with struct update syntax:
///
/// ```
/// use std::time::Duration;
/// use mxp::relay::RelayConfig;
///
/// let config = RelayConfig {
///     loss: 0.05,
///     delay: Duration::from_millis(1),
///     jitter: Duration::from_micros(200),
///     ..RelayConfig::new("127.0.0.1:0".parse().unwrap(), "127.0.0.1:4433".parse().unwrap())
/// };
/// assert_eq!(config.effective_reorder_delay(), Duration::from_micros(2200));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RelayConfig {
    /// Address clients send to (port 0 picks a free port; see
    /// [`Relay::local_addr`]).
    pub listen: SocketAddr,
    /// Address everything from clients is forwarded to.
    pub to: SocketAddr,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Fixed one-way delay added to every datagram.
    pub delay: Duration,
    /// Upper bound of a uniform random extra delay per datagram. Jitter
    /// never reorders: a datagram waits for the ones before it.
    pub jitter: Duration,
    /// Probability that a datagram is held back by
    /// [`reorder_delay`](RelayConfig::reorder_delay) so later ones
    /// overtake it.
    pub reorder: f64,
    /// How long a reordered datagram is held beyond its normal delivery
    /// time. Zero (the default) means automatic: see
    /// [`effective_reorder_delay`](RelayConfig::effective_reorder_delay).
    pub reorder_delay: Duration,
    /// Probability that a datagram is sent twice.
    pub duplicate: f64,
    /// Seed of the randomness (each direction has its own stream).
    pub seed: u64,
    /// Clients with an upstream socket at once (default 1024).
    pub max_clients: usize,
    /// A client with no datagram either way for this long gives up its
    /// upstream socket when a new client needs one (default 30 s).
    pub client_idle: Duration,
}

impl RelayConfig {
    /// A relay from `listen` to `to` without impairment, seed 1.
    pub fn new(listen: SocketAddr, to: SocketAddr) -> RelayConfig {
        RelayConfig {
            listen,
            to,
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            duplicate: 0.0,
            seed: 1,
            max_clients: MAX_CLIENTS,
            client_idle: DEFAULT_CLIENT_IDLE,
        }
    }

    /// The hold applied to a reordered datagram: `reorder_delay` if set,
    /// otherwise `2 × delay + jitter`, and never less than 200 µs (so
    /// later datagrams get a real chance to overtake).
    pub fn effective_reorder_delay(&self) -> Duration {
        if !self.reorder_delay.is_zero() {
            return self.reorder_delay;
        }
        (self.delay.saturating_mul(2).saturating_add(self.jitter)).max(MIN_REORDER_DELAY)
    }

    /// Whether the relay changes anything about the traffic.
    pub fn is_transparent(&self) -> bool {
        self.loss == 0.0
            && self.delay.is_zero()
            && self.jitter.is_zero()
            && self.reorder == 0.0
            && self.duplicate == 0.0
    }

    fn validate(&self) -> io::Result<()> {
        for (name, p) in [
            ("loss", self.loss),
            ("reorder", self.reorder),
            ("duplicate", self.duplicate),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("relay {name} probability must be in [0, 1], got {p}"),
                ));
            }
        }
        Ok(())
    }
}

/// Counters of one direction of a [`Relay`].
///
/// Every received datagram ends up exactly once as `lost`, `forwarded` or
/// `dropped`; until then it is [`pending`](DirectionStats::pending).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams sent on (counting each once, not its duplicate).
    pub forwarded: u64,
    /// Datagrams discarded by the loss impairment.
    pub lost: u64,
    /// Extra copies sent by the duplicate impairment.
    pub duplicated: u64,
    /// Datagrams held back by the reorder impairment.
    pub reordered: u64,
    /// Datagrams that could not be sent (socket error, or no upstream
    /// socket for a new client).
    pub dropped: u64,
}

impl DirectionStats {
    /// Datagrams received but not yet forwarded, lost or dropped (the ones
    /// waiting out a delay).
    pub fn pending(&self) -> u64 {
        self.received
            .saturating_sub(self.forwarded)
            .saturating_sub(self.lost)
            .saturating_sub(self.dropped)
    }
}

/// A snapshot of a [`Relay`]'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// From clients towards the target.
    pub upstream: DirectionStats,
    /// From the target back to clients.
    pub downstream: DirectionStats,
    /// Clients that have been given an upstream socket.
    pub clients: u64,
}

impl fmt::Display for DirectionStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received {}, forwarded {}, lost {}, duplicated {}, reordered {}, dropped {}",
            self.received, self.forwarded, self.lost, self.duplicated, self.reordered, self.dropped
        )
    }
}

impl fmt::Display for RelayStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} client(s); to target: {}; to clients: {}",
            self.clients, self.upstream, self.downstream
        )
    }
}

/// A running impairment relay (see the [module docs](self)).
///
/// It runs as a task on the tokio runtime it was bound on and stops when
/// dropped or [closed](Relay::close).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use std::time::Duration;
/// use mxp::relay::{Relay, RelayConfig};
/// use tokio::net::UdpSocket;
///
/// let server = UdpSocket::bind("127.0.0.1:0").await?;
/// let relay = Relay::bind(RelayConfig {
///     delay: Duration::from_micros(300),
///     ..RelayConfig::new("127.0.0.1:0".parse().unwrap(), server.local_addr()?)
/// })
/// .await?;
///
/// let client = UdpSocket::bind("127.0.0.1:0").await?;
/// client.send_to(b"hello", relay.local_addr()).await?;
///
/// // The server sees the relay's upstream socket for this client...
/// let mut buf = [0; 64];
/// let (n, via) = server.recv_from(&mut buf).await?;
/// server.send_to(&buf[..n], via).await?;
///
/// // ...and its reply comes back to the client from the relay.
/// let (n, from) = client.recv_from(&mut buf).await?;
/// assert_eq!(&buf[..n], b"hello");
/// assert_eq!(from, relay.local_addr());
/// assert_eq!(relay.stats().upstream.forwarded, 1);
/// relay.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Relay {
    local_addr: SocketAddr,
    counters: Arc<Counters>,
    task: Option<JoinHandle<()>>,
}

impl Relay {
    /// Binds the listening socket and starts relaying on the current tokio
    /// runtime.
    ///
    /// Fails if the address cannot be bound or a probability is outside
    /// `[0, 1]` (`InvalidInput`). Panics if called outside a tokio
    /// runtime.
    pub async fn bind(config: RelayConfig) -> io::Result<Relay> {
        config.validate()?;
        let listen = UdpSocket::bind(config.listen).await?;
        let local_addr = listen.local_addr()?;
        let timer = Timer::new()?;
        let counters = Arc::new(Counters::default());
        let worker = Worker::new(listen, &config, counters.clone());
        let span = tracing::debug_span!("relay", listen = %local_addr, to = %config.to);
        let task = tokio::spawn(worker.run(timer).instrument(span));
        debug!(listen = %local_addr, to = %config.to, ?config, "relay started");
        Ok(Relay {
            local_addr,
            counters,
            task: Some(task),
        })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters so far.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Stops the relay, waits until its sockets are closed, and returns the
    /// final counters. Datagrams still waiting out a delay are discarded
    /// (and stay [`pending`](DirectionStats::pending)). Dropping the relay
    /// also stops it, without waiting.
    pub async fn close(mut self) -> RelayStats {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        self.stats()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Live counters of one direction.
///
/// The outcome counters (`forwarded`, `lost`, `dropped`) are bumped last
/// for each datagram and read first by [`DirCounters::snapshot`], so a
/// snapshot with nothing pending really has nothing pending, and
/// `duplicated` already counts the copies of everything forwarded.
#[derive(Debug, Default)]
struct DirCounters {
    received: AtomicU64,
    forwarded: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    dropped: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, MemoryOrder::Release);
}

impl DirCounters {
    fn snapshot(&self) -> DirectionStats {
        let load = |c: &AtomicU64| c.load(MemoryOrder::Acquire);
        let forwarded = load(&self.forwarded);
        let lost = load(&self.lost);
        let dropped = load(&self.dropped);
        let duplicated = load(&self.duplicated);
        let reordered = load(&self.reordered);
        let received = load(&self.received);
        DirectionStats {
            received,
            forwarded,
            lost,
            duplicated,
            reordered,
            dropped,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    dirs: [DirCounters; 2],
    clients: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> RelayStats {
        RelayStats {
            upstream: self.dirs[Dir::Up as usize].snapshot(),
            downstream: self.dirs[Dir::Down as usize].snapshot(),
            clients: self.clients.load(MemoryOrder::Acquire),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Client to target.
    Up = 0,
    /// Target to client.
    Down = 1,
}

/// The impairments, shared by both directions.
#[derive(Debug)]
struct Impairment {
    loss: f64,
    delay: Duration,
    jitter: Duration,
    reorder: f64,
    reorder_delay: Duration,
    duplicate: f64,
}

/// One direction's randomness and queueing state.
#[derive(Debug)]
struct Link {
    rng: ChaCha8Rng,
    /// Delivery time of the last datagram that was not reordered: later
    /// ones are never scheduled before it.
    last_due: Option<Instant>,
}

/// What happens to one datagram.
enum Fate {
    Lost,
    Send {
        due: Instant,
        copies: u8,
        reordered: bool,
    },
}

impl Link {
    fn new(seed: u64, dir: Dir) -> Link {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(dir as u64);
        Link {
            rng,
            last_due: None,
        }
    }

    fn decide(&mut self, now: Instant, imp: &Impairment) -> Fate {
        // Always four draws per datagram: each decision depends only on
        // the datagram's position in the direction, not on earlier fates.
        let lose: f64 = self.rng.random();
        let jitter: f64 = self.rng.random();
        let reorder: f64 = self.rng.random();
        let duplicate: f64 = self.rng.random();
        if lose < imp.loss {
            return Fate::Lost;
        }
        let mut due = now + imp.delay + imp.jitter.mul_f64(jitter);
        if let Some(last) = self.last_due {
            due = due.max(last);
        }
        let reordered = reorder < imp.reorder;
        if reordered {
            due += imp.reorder_delay;
        } else {
            self.last_due = Some(due);
        }
        Fate::Send {
            due,
            copies: if duplicate < imp.duplicate { 2 } else { 1 },
            reordered,
        }
    }
}

/// A datagram waiting out its delay.
#[derive(Debug)]
struct Scheduled {
    due: Instant,
    /// Arrival order, to keep datagrams due at the same instant in order.
    seq: u64,
    dir: Dir,
    client: usize,
    copies: u8,
    data: Vec<u8>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// Reversed, so that `BinaryHeap` pops the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

#[derive(Debug)]
struct Client {
    addr: SocketAddr,
    /// Connected to the target.
    socket: UdpSocket,
    /// The last datagram either way.
    last_seen: Instant,
}

/// Where a received datagram came from.
enum Source {
    Client(SocketAddr),
    /// The target, on the upstream socket of this client.
    Target(usize),
}

/// The relay task's state.
#[derive(Debug)]
struct Worker {
    listen: UdpSocket,
    to: SocketAddr,
    upstream_bind: SocketAddr,
    client_idle: Duration,
    max_clients: usize,
    clients: Vec<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    table_full_logged: bool,
    impairment: Impairment,
    links: [Link; 2],
    queue: BinaryHeap<Scheduled>,
    spare: Vec<Vec<u8>>,
    seq: u64,
    /// Which socket `poll_input` tries first (round robin, so a busy
    /// socket cannot starve the others).
    next_poll: usize,
    counters: Arc<Counters>,
}

impl Worker {
    fn new(listen: UdpSocket, config: &RelayConfig, counters: Arc<Counters>) -> Worker {
        let ip = match (config.to.ip(), config.to.ip().is_loopback()) {
            (IpAddr::V4(_), true) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            (IpAddr::V4(_), false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (IpAddr::V6(_), true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            (IpAddr::V6(_), false) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        Worker {
            listen,
            to: config.to,
            upstream_bind: SocketAddr::new(ip, 0),
            client_idle: config.client_idle,
            max_clients: config.max_clients.max(1),
            clients: Vec::new(),
            by_addr: HashMap::new(),
            table_full_logged: false,
            impairment: Impairment {
                loss: config.loss,
                delay: config.delay,
                jitter: config.jitter,
                reorder: config.reorder,
                reorder_delay: config.effective_reorder_delay(),
                duplicate: config.duplicate,
            },
            links: [
                Link::new(config.seed, Dir::Up),
                Link::new(config.seed, Dir::Down),
            ],
            queue: BinaryHeap::new(),
            spare: Vec::new(),
            seq: 0,
            next_poll: 0,
            counters,
        }
    }

    async fn run(mut self, mut timer: Timer) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let input = tokio::select! {
                biased;
                r = timer.expired() => {
                    if let Err(e) = r {
                        warn!(error = %e, "relay timer failed");
                    }
                    None
                }
                input = poll_fn(|cx| self.poll_input(cx, &mut buf)) => Some(input),
            };
            let now = Instant::now();
            self.flush(now).await;
            if let Some((source, len)) = input {
                self.on_datagram(now, source, &buf[..len]).await;
            }
            if let Err(e) = timer.set(self.queue.peek().map(|s| s.due)) {
                warn!(error = %e, "cannot arm the relay timer");
            }
        }
    }

    /// Receives the next datagram from any socket into `buf`.
    fn poll_input(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<(Source, usize)> {
        let sockets = self.clients.len() + 1;
        let start = self.next_poll % sockets;
        for k in 0..sockets {
            let i = (start + k) % sockets;
            // A socket is polled until it is pending (so it will wake us)
            // or yields a datagram; errors are logged and skipped. One
            // that keeps failing gets us polled again instead of spinning
            // here.
            let mut errors = 0;
            loop {
                if errors == 16 {
                    cx.waker().wake_by_ref();
                    break;
                }
                let mut rb = ReadBuf::new(buf);
                let result = if i == 0 {
                    self.listen
                        .poll_recv_from(cx, &mut rb)
                        .map_ok(Source::Client)
                } else {
                    self.clients[i - 1]
                        .socket
                        .poll_recv(cx, &mut rb)
                        .map_ok(|()| Source::Target(i - 1))
                };
                match result {
                    Poll::Ready(Ok(source)) => {
                        let len = rb.filled().len();
                        self.next_poll = i + 1;
                        return Poll::Ready((source, len));
                    }
                    Poll::Ready(Err(e)) => {
                        self.log_error("receive", i, &e);
                        errors += 1;
                    }
                    Poll::Pending => break,
                }
            }
        }
        Poll::Pending
    }

    fn log_error(&self, what: &str, socket: usize, e: &io::Error) {
        let on = if socket == 0 {
            "listening socket".to_string()
        } else {
            format!("upstream socket of {}", self.clients[socket - 1].addr)
        };
        // The target being down shows up as "connection refused" (ICMP):
        // expected on a network, so only at debug.
        if e.kind() == io::ErrorKind::ConnectionRefused {
            debug!(error = %e, "{what} on {on} failed");
        } else {
            warn!(error = %e, "{what} on {on} failed");
        }
    }

    /// Sends everything due by `now`.
    async fn flush(&mut self, now: Instant) {
        while self.queue.peek().is_some_and(|s| s.due <= now) {
            let Some(s) = self.queue.pop() else { break };
            self.send(s.dir, s.client, &s.data, s.copies).await;
            if self.spare.len() < SPARE_BUFFERS {
                self.spare.push(s.data);
            }
        }
    }

    async fn on_datagram(&mut self, now: Instant, source: Source, data: &[u8]) {
        let (dir, client) = match source {
            Source::Target(client) => (Dir::Down, client),
            Source::Client(addr) => match self.client(now, addr).await {
                Some(client) => (Dir::Up, client),
                None => {
                    let counters = &self.counters.dirs[Dir::Up as usize];
                    bump(&counters.received);
                    bump(&counters.dropped);
                    return;
                }
            },
        };
        self.clients[client].last_seen = now;
        let counters = &self.counters.dirs[dir as usize];
        bump(&counters.received);
        match self.links[dir as usize].decide(now, &self.impairment) {
            Fate::Lost => bump(&counters.lost),
            Fate::Send {
                due,
                copies,
                reordered,
            } => {
                if reordered {
                    bump(&counters.reordered);
                }
                if due <= now && !reordered {
                    // Nothing of this direction is queued (whatever was
                    // due by now has just been flushed): no need to copy.
                    self.send(dir, client, data, copies).await;
                } else {
                    let mut buf = self.spare.pop().unwrap_or_default();
                    buf.clear();
                    buf.extend_from_slice(data);
                    self.seq += 1;
                    self.queue.push(Scheduled {
                        due,
                        seq: self.seq,
                        dir,
                        client,
                        copies,
                        data: buf,
                    });
                }
            }
        }
    }

    /// The index of `addr`'s client entry, opening its upstream socket if
    /// it is new; `None` if that is impossible.
    async fn client(&mut self, now: Instant, addr: SocketAddr) -> Option<usize> {
        if let Some(&i) = self.by_addr.get(&addr) {
            return Some(i);
        }
        let idle = self.client_idle;
        let reuse = if self.clients.len() < self.max_clients {
            None
        } else {
            // The slot of a client silent for long enough that nothing of
            // its can still be queued (delays are far shorter).
            let Some(i) = self
                .clients
                .iter()
                .position(|c| now.saturating_duration_since(c.last_seen) >= idle)
            else {
                if !self.table_full_logged {
                    let max = self.max_clients;
                    warn!(client = %addr, "relay has {max} active clients; dropping datagrams from new ones");
                    self.table_full_logged = true;
                }
                return None;
            };
            Some(i)
        };
        let socket = match self.open_upstream().await {
            Ok(socket) => socket,
            Err(e) => {
                warn!(client = %addr, error = %e, "cannot open an upstream socket");
                return None;
            }
        };
        debug!(client = %addr, upstream = ?socket.local_addr().ok(), "new client");
        let client = Client {
            addr,
            socket,
            last_seen: now,
        };
        let i = match reuse {
            Some(i) => {
                let old = std::mem::replace(&mut self.clients[i], client);
                self.by_addr.remove(&old.addr);
                debug!(client = %old.addr, "idle client's slot reused");
                i
            }
            None => {
                self.clients.push(client);
                self.clients.len() - 1
            }
        };
        self.by_addr.insert(addr, i);
        self.counters.clients.fetch_add(1, MemoryOrder::Release);
        Some(i)
    }

    async fn open_upstream(&self) -> io::Result<UdpSocket> {
        let socket = UdpSocket::bind(self.upstream_bind).await?;
        socket.connect(self.to).await?;
        Ok(socket)
    }

    /// Sends `copies` copies of one datagram and counts the outcome.
    async fn send(&self, dir: Dir, client: usize, data: &[u8], copies: u8) {
        let counters = &self.counters.dirs[dir as usize];
        let c = &self.clients[client];
        let mut sent = 0u8;
        for _ in 0..copies {
            let result = match dir {
                Dir::Up => c.socket.send(data).await,
                Dir::Down => self.listen.send_to(data, c.addr).await,
            };
            match result {
                Ok(_) => sent += 1,
                Err(e) => self.log_error("send", if dir == Dir::Up { client + 1 } else { 0 }, &e),
            }
        }
        // Copies first, outcome last (see `DirCounters`).
        for _ in 1..sent {
            bump(&counters.duplicated);
        }
        if sent > 0 {
            bump(&counters.forwarded);
        } else {
            bump(&counters.dropped);
        }
    }
}
