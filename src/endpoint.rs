//! An MXP endpoint: the MXP carrier on one UDP socket, and (for a node that
//! keeps the legacy path, or a client that may fall back) the QUIC carrier
//! beside it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mxp_proto::{ConnectionError, EndpointConfig, EndpointStats, PublicKey};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{Instrument, info, info_span, warn};

use crate::capture::{CaptureError, CaptureStatus, CaptureSummary};
use crate::carrier::{Carrier, CarrierMode, Carriers, Target};
use crate::connection::{Connection, Dial, FromEndpoint};
use crate::error::ConnectError;
use crate::handshake_workers::HandshakeWorkers;
use crate::link::Link;
use crate::lock;
use crate::mxp::endpoint::MxpEndpoint;
use crate::quic::{self, QuicEndpoint};
use crate::stats::{CallDurations, CarrierTotals, ConnectionInfo, MessageErrors};

/// Everything an [`Endpoint`] can be configured with beyond the protocol
/// core's [`EndpointConfig`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Identity, transport settings and (for a node) admission policy.
    pub config: EndpointConfig,
    /// A node also listens for the QUIC carrier here.
    pub quic_listen: Option<SocketAddr>,
    /// Which carriers a node accepts new sessions on at start.
    pub carriers: Carriers,
    /// How a client picks the carrier of a new connection.
    pub carrier: CarrierMode,
    /// How long `Auto` waits for MXP before trying QUIC.
    pub mxp_timeout: Duration,
    /// After MXP did not answer, how long `Auto` goes straight to QUIC
    /// before trying MXP again.
    pub mxp_retry_after: Duration,
    /// How long a drained carrier's connections may finish their work
    /// before they are closed.
    pub drain_timeout: Duration,
}

impl Options {
    /// Defaults around `config`: both carriers accepted, `Auto` carrier
    /// choice, 1 s MXP patience, a 5-minute drain.
    pub fn new(config: EndpointConfig) -> Options {
        Options {
            config,
            quic_listen: None,
            carriers: Carriers::BOTH,
            carrier: CarrierMode::Auto,
            mxp_timeout: Duration::from_secs(1),
            mxp_retry_after: Duration::from_secs(5),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// How long a drained carrier's connections may finish their work by
/// default: the rollout checklist's five minutes.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// A carrier being drained.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DrainStatus {
    /// The carrier whose connections are told to go away.
    pub carrier: Carrier,
    /// Seconds until the remaining connections are closed.
    pub deadline_in_s: f64,
    /// Connections still open on it.
    pub connections: usize,
}

/// What `mxp admin status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Which carriers accept new sessions.
    pub accepting: Carriers,
    /// Drains in progress.
    pub draining: Vec<DrainStatus>,
    /// Connections per carrier.
    pub connections: ConnectionsPerCarrier,
    /// Client-side fallbacks from MXP to QUIC so far.
    pub fallbacks: u64,
}

/// Connections per carrier.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ConnectionsPerCarrier {
    /// On MXP.
    pub mxp: usize,
    /// On QUIC.
    pub quic: usize,
}

#[derive(Debug)]
struct Drain {
    carrier: Carrier,
    deadline: Instant,
    /// Cancels the scheduled close when the carrier is accepted again.
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Inner {
    options: Options,
    mxp: MxpEndpoint,
    /// A node's QUIC listener, or a client's QUIC socket once needed.
    quic: tokio::sync::OnceCell<QuicEndpoint>,
    carriers: Mutex<Carriers>,
    /// Deadline for drains started by a switch (changeable at runtime).
    drain_timeout: Mutex<Duration>,
    drains: Mutex<Vec<Drain>>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Link>>,
    fallbacks: AtomicU64,
    /// MXP did not answer: `Auto` skips it until then.
    mxp_silent_until: Mutex<Option<Instant>>,
    calls: Arc<CallDurations>,
    message_errors: Arc<MessageErrors>,
}

/// An MXP node or client.
///
/// [`bind`](Self::bind) opens the MXP socket and spawns its driver on the
/// current tokio runtime. A node configured with a QUIC address also
/// listens on the legacy QUIC path, and [`accept`](Self::accept) yields
/// connections from both; [`set_carriers`](Self::set_carriers) flips which
/// carriers take new sessions and drains the other, at runtime. Clones
/// share the endpoint.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use mxp::proto::message::{Message, MessageType};
/// use mxp::proto::{EndpointConfig, Keypair};
/// use mxp::Endpoint;
///
/// // A node.
/// let node = Endpoint::bind("127.0.0.1:0".parse()?, EndpointConfig::server(Keypair::generate()))?;
/// let (addr, key) = (node.local_addr(), node.public_key());
/// tokio::spawn(async move {
///     while let Some(conn) = node.accept().await {
///         tokio::spawn(async move {
///             while let Ok((mut send, mut recv)) = conn.accept_bi().await {
///                 if let Ok(Some(call)) = recv.read_message().await {
///                     let reply = Message::new(MessageType::Response, call.payload.clone())
///                         .with_message_id(call.message_id);
///                     let _ = send.write_message(&reply).await;
///                 }
///             }
///         });
///     }
/// });
///
/// // A client calling it.
/// let client = Endpoint::bind("127.0.0.1:0".parse()?, EndpointConfig::client(Keypair::generate()))?;
/// let conn = client.connect(&format!("mxp://{addr}"), key).await?;
/// let answer = conn.call(&Message::new(MessageType::Call, "ping")).await?;
/// assert_eq!(&answer.payload[..], b"ping");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Endpoint(Arc<Inner>);

impl Endpoint {
    /// An endpoint on `addr` with default options (a node, if `config` has
    /// a server policy, listens on MXP only).
    pub fn bind(addr: SocketAddr, config: EndpointConfig) -> io::Result<Endpoint> {
        Self::with_options(addr, Options::new(config))
    }

    /// An endpoint on `addr` with explicit options.
    pub fn with_options(addr: SocketAddr, options: Options) -> io::Result<Endpoint> {
        let node_policy = options.config.server.clone();
        // A node's handshake work runs on its own threads, shared by both
        // carriers.
        let workers = node_policy
            .as_ref()
            .map(|p| HandshakeWorkers::start(p.handshake_workers));
        let mxp = MxpEndpoint::bind(addr, options.config.clone(), workers.clone())?;
        let quic = tokio::sync::OnceCell::new();
        if let (Some(listen), Some(policy), Some(workers)) =
            (options.quic_listen, node_policy.clone(), workers)
        {
            let q = QuicEndpoint::node(
                listen,
                options.config.keypair.clone(),
                &options.config.transport,
                policy,
                mxp.capture().clone(),
                workers,
            )?;
            quic.set(q).expect("fresh cell");
        }
        let (tx, rx) = mpsc::channel(1024);
        let inner = Arc::new(Inner {
            carriers: Mutex::new(options.carriers),
            drain_timeout: Mutex::new(options.drain_timeout),
            options,
            mxp,
            quic,
            drains: Mutex::new(Vec::new()),
            incoming: tokio::sync::Mutex::new(rx),
            fallbacks: AtomicU64::new(0),
            mxp_silent_until: Mutex::new(None),
            calls: Arc::default(),
            message_errors: Arc::default(),
        });
        let endpoint = Endpoint(inner);
        if node_policy.is_some() {
            endpoint.forward_incoming(tx);
            endpoint.apply_carriers(endpoint.carriers());
        }
        Ok(endpoint)
    }

    /// Feeds accepted connections of both carriers into one queue.
    fn forward_incoming(&self, tx: mpsc::Sender<Link>) {
        let mxp = self.0.mxp.clone();
        let mxp_tx = tx.clone();
        tokio::spawn(async move {
            while let Some(c) = mxp.accept().await {
                if mxp_tx.send(Link::Mxp(c)).await.is_err() {
                    break;
                }
            }
        });
        if let Some(quic) = self.0.quic.get().cloned() {
            tokio::spawn(async move {
                while let Some(c) = quic.accept().await {
                    if tx.send(Link::Quic(c)).await.is_err() {
                        break;
                    }
                }
            });
        }
    }

    /// The MXP socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.0.mxp.local_addr()
    }

    /// The QUIC listener's address, if this node has one.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.0
            .options
            .quic_listen
            .and(self.0.quic.get()?.local_addr().ok())
    }

    /// This node's public key: what a client passes to
    /// [`connect`](Self::connect).
    pub fn public_key(&self) -> PublicKey {
        self.0.options.config.keypair.public()
    }

    /// MXP-carrier counters: handshakes, refusals, garbage.
    pub fn stats(&self) -> EndpointStats {
        self.0.mxp.stats()
    }

    /// The next connection a client opened to this node, on either carrier;
    /// `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<Connection> {
        let link = self.0.incoming.lock().await.recv().await?;
        Some(Connection::node_side(link, self.for_connections()))
    }

    /// Connects to `address` — `mxp://host:port`, optionally with
    /// `?quic=PORT` naming the node's QUIC port (default: the MXP port + 1,
    /// then the MXP port itself) — which must hold the secret key for
    /// `server_key`. The carrier follows [`Options::carrier`].
    pub async fn connect(
        &self,
        address: &str,
        server_key: PublicKey,
    ) -> Result<Connection, ConnectError> {
        let target = resolve_target(address, server_key).await?;
        self.connect_target(target).await
    }

    /// Connects to a node's MXP socket address (QUIC, if needed, at the
    /// next port up or the same port).
    pub async fn connect_to(
        &self,
        remote: SocketAddr,
        server_key: PublicKey,
    ) -> Result<Connection, ConnectError> {
        self.connect_target(Target {
            mxp: remote,
            quic: default_quic_addrs(remote),
            key: server_key,
        })
        .await
    }

    async fn connect_target(&self, target: Target) -> Result<Connection, ConnectError> {
        let link = self.establish(&target, self.0.options.carrier).await?;
        let dialer = Arc::new(self.clone());
        Ok(Connection::client_side(
            link,
            dialer,
            target,
            self.for_connections(),
        ))
    }

    /// Opens a carrier connection to `target` following `mode`.
    async fn establish(&self, target: &Target, mode: CarrierMode) -> Result<Link, ConnectError> {
        match mode {
            CarrierMode::Mxp => Ok(Link::Mxp(
                self.0.mxp.connect_to(target.mxp, target.key).await?,
            )),
            CarrierMode::Quic => self.connect_quic(&target.quic, target.key).await,
            CarrierMode::Auto => self.connect_auto(target).await,
        }
    }

    async fn connect_auto(&self, target: &Target) -> Result<Link, ConnectError> {
        let silent = lock(&self.0.mxp_silent_until).is_some_and(|until| Instant::now() < until);
        let mut quic_addrs = target.quic.clone();
        let why = if silent {
            "MXP did not answer recently"
        } else {
            let attempt = self.0.mxp.connect_to(target.mxp, target.key);
            match tokio::time::timeout(self.0.options.mxp_timeout, attempt).await {
                Ok(Ok(c)) => return Ok(Link::Mxp(c)),
                Ok(Err(ConnectError::Handshake(ConnectionError::CarrierRefused { quic_port }))) => {
                    if let Some(port) = quic_port {
                        quic_addrs = vec![SocketAddr::new(target.mxp.ip(), port)];
                    }
                    "the node refused MXP"
                }
                // Identity problems are the same on every carrier.
                Ok(Err(
                    e @ ConnectError::Handshake(
                        ConnectionError::ServerKeyMismatch
                        | ConnectionError::ClientNotAllowed
                        | ConnectionError::ClockSkew { .. },
                    ),
                )) => return Err(e),
                Ok(Err(_)) | Err(_) => {
                    *lock(&self.0.mxp_silent_until) =
                        Some(Instant::now() + self.0.options.mxp_retry_after);
                    "MXP did not answer"
                }
            }
        };
        self.0.fallbacks.fetch_add(1, Ordering::Relaxed);
        info!(peer = %target.mxp, carrier = "quic", reason = why, "falling back to QUIC");
        self.connect_quic(&quic_addrs, target.key).await
    }

    async fn quic(&self) -> Result<&QuicEndpoint, ConnectError> {
        self.0
            .quic
            .get_or_try_init(|| async {
                let bind = if self.local_addr().is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                QuicEndpoint::client(
                    bind.parse().expect("literal"),
                    self.0.options.config.keypair.clone(),
                    &self.0.options.config.transport,
                )
                .map_err(|e| ConnectError::Quic(e.to_string()))
            })
            .await
    }

    /// Tries the QUIC addresses together; the first to authenticate wins,
    /// within the handshake timeout.
    async fn connect_quic(
        &self,
        addrs: &[SocketAddr],
        key: PublicKey,
    ) -> Result<Link, ConnectError> {
        let patience = self.0.options.config.transport.handshake_timeout;
        tokio::time::timeout(patience, self.race_quic(addrs, key))
            .await
            .unwrap_or(Err(ConnectError::Handshake(
                ConnectionError::HandshakeTimedOut,
            )))
    }

    async fn race_quic(&self, addrs: &[SocketAddr], key: PublicKey) -> Result<Link, ConnectError> {
        let quic = self.quic().await?;
        let mut attempts = tokio::task::JoinSet::new();
        for &addr in addrs {
            let quic = quic.clone();
            attempts.spawn(async move { quic.connect(addr, key).await });
        }
        let mut last = ConnectError::Quic("no QUIC address to try".into());
        while let Some(done) = attempts.join_next().await {
            match done {
                Ok(Ok(c)) => return Ok(Link::Quic(c)),
                // The node itself answered: no point waiting for the others.
                Ok(Err(e)) if is_the_nodes_answer(&e) => return Err(e),
                Ok(Err(e)) => last = e,
                Err(e) => last = ConnectError::Quic(e.to_string()),
            }
        }
        Err(last)
    }

    /// Which carriers accept new sessions.
    pub fn carriers(&self) -> Carriers {
        *lock(&self.0.carriers)
    }

    /// Flips which carriers accept new sessions (the deployment switch).
    /// Connections on a carrier that stops accepting are told to go away
    /// and closed after the drain timeout; a carrier accepted again stops
    /// being drained.
    pub fn set_carriers(&self, carriers: Carriers) {
        let before = {
            let mut c = lock(&self.0.carriers);
            std::mem::replace(&mut *c, carriers)
        };
        let span = info_span!("carrier_switch", from = %before, to = %carriers);
        let _in = span.enter();
        info!("carrier switch");
        self.apply_carriers(carriers);
        let timeout = self.drain_timeout();
        for carrier in [Carrier::Mxp, Carrier::Quic] {
            if before.accepts(carrier) && !carriers.accepts(carrier) {
                self.drain(carrier, timeout);
            }
        }
    }

    /// How long connections on a carrier switched off may finish their
    /// work before they are closed.
    pub fn drain_timeout(&self) -> Duration {
        *lock(&self.0.drain_timeout)
    }

    /// Changes the drain timeout for later switches (a config reload).
    pub fn set_drain_timeout(&self, timeout: Duration) {
        *lock(&self.0.drain_timeout) = timeout;
    }

    fn apply_carriers(&self, carriers: Carriers) {
        let quic_port = self.quic_addr().map(|a| a.port());
        self.0.mxp.set_accepting(carriers.mxp, quic_port);
        if let Some(quic) = self.0.quic.get() {
            quic.set_accepting(carriers.quic);
        }
        // Accepting again ends a drain.
        lock(&self.0.drains).retain(|d| {
            let keep = !carriers.accepts(d.carrier);
            if !keep {
                d.task.abort();
            }
            keep
        });
    }

    /// Drains `carrier`: its connections are told to go away now and the
    /// rest closed after `timeout`. Calling it again moves the deadline.
    pub fn drain(&self, carrier: Carrier, timeout: Duration) {
        let span = info_span!(
            "drain",
            %carrier,
            timeout_s = timeout.as_secs_f64(),
            connections = self.connections(carrier)
        );
        let _in = span.enter();
        info!("drain: connections are told to take new work elsewhere");
        match carrier {
            Carrier::Mxp => self.0.mxp.go_away_all(),
            Carrier::Quic => {
                if let Some(q) = self.0.quic.get() {
                    q.go_away_all();
                }
            }
        }
        let this = self.clone();
        let task = tokio::spawn(
            async move {
                tokio::time::sleep(timeout).await;
                let still = !this.carriers().accepts(carrier);
                if still {
                    warn!(%carrier, "drain deadline: closing the remaining connections");
                    this.close_carrier(carrier, crate::DRAINED, b"drained: reconnect to the node");
                }
            }
            .instrument(span.clone()),
        );
        let mut drains = lock(&self.0.drains);
        drains.retain(|d| {
            let keep = d.carrier != carrier;
            if !keep {
                d.task.abort();
            }
            keep
        });
        drains.push(Drain {
            carrier,
            deadline: Instant::now() + timeout,
            task,
        });
    }

    /// Drains every carrier that is not accepting, with a new deadline.
    pub fn drain_all(&self, timeout: Duration) -> Vec<Carrier> {
        let carriers = self.carriers();
        [Carrier::Mxp, Carrier::Quic]
            .into_iter()
            .filter(|&c| !carriers.accepts(c))
            .inspect(|&c| self.drain(c, timeout))
            .collect()
    }

    fn close_carrier(&self, carrier: Carrier, code: u64, reason: &[u8]) {
        match carrier {
            Carrier::Mxp => self.0.mxp.close_all(code, reason),
            Carrier::Quic => {
                if let Some(q) = self.0.quic.get() {
                    q.close_all(code, reason);
                }
            }
        }
    }

    fn connections(&self, carrier: Carrier) -> usize {
        match carrier {
            Carrier::Mxp => self.0.mxp.connection_count(),
            Carrier::Quic => self.0.quic.get().map_or(0, QuicEndpoint::connection_count),
        }
    }

    /// What `mxp admin status` shows.
    pub fn status(&self) -> Status {
        let now = Instant::now();
        let draining = lock(&self.0.drains)
            .iter()
            .map(|d| DrainStatus {
                carrier: d.carrier,
                deadline_in_s: d.deadline.saturating_duration_since(now).as_secs_f64(),
                connections: self.connections(d.carrier),
            })
            .collect();
        Status {
            accepting: self.carriers(),
            draining,
            connections: ConnectionsPerCarrier {
                mxp: self.connections(Carrier::Mxp),
                quic: self.connections(Carrier::Quic),
            },
            fallbacks: self.0.fallbacks.load(Ordering::Relaxed),
        }
    }

    /// The MXP carrier's totals and the endpoint's own counters.
    pub(crate) fn mxp_totals(&self) -> (CarrierTotals, EndpointStats) {
        self.0.mxp.totals()
    }

    /// The QUIC carrier's totals (zeros without a QUIC socket).
    pub(crate) fn quic_totals(&self) -> CarrierTotals {
        self.0
            .quic
            .get()
            .map_or_else(quic::idle_totals, QuicEndpoint::totals)
    }

    pub(crate) fn call_durations(&self) -> Arc<CallDurations> {
        self.0.calls.clone()
    }

    pub(crate) fn message_errors(&self) -> Arc<MessageErrors> {
        self.0.message_errors.clone()
    }

    /// What each of this endpoint's connections takes from it.
    pub(crate) fn for_connections(&self) -> FromEndpoint {
        FromEndpoint {
            calls: self.call_durations(),
            message_errors: self.message_errors(),
            max_message_size: self.0.options.config.transport.max_message_size,
        }
    }

    /// Every open connection's stats, both carriers.
    pub(crate) fn connection_infos(&self) -> Vec<ConnectionInfo> {
        let mut infos = self.0.mxp.connection_infos();
        if let Some(q) = self.0.quic.get() {
            infos.extend(q.connection_infos());
        }
        infos
    }

    /// Starts recording what this endpoint's sockets send and receive
    /// (encrypted, as on the wire) into a new pcap file at `path`, of at
    /// most `max_bytes` bytes ([`DEFAULT_MAX_BYTES`] is a sensible limit):
    /// the "before" and "after" of an incident without a restart or root.
    /// A node's file holds both carriers (its MXP socket and its QUIC
    /// listener), so a capture across a carrier switch shows the traffic
    /// moving; a client's holds its MXP socket only. See [`crate::capture`]
    /// for the format and the cost.
    ///
    /// [`DEFAULT_MAX_BYTES`]: crate::capture::DEFAULT_MAX_BYTES
    pub fn start_capture(
        &self,
        path: impl AsRef<std::path::Path>,
        max_bytes: u64,
    ) -> Result<(), CaptureError> {
        self.0.mxp.capture().start(path, max_bytes)
    }

    /// Stops the running capture once everything recorded is in its file,
    /// and says what it holds; `None` if none was running. It waits for the
    /// file to be written, so async code should call it where blocking is
    /// allowed (`tokio::task::spawn_blocking`).
    pub fn stop_capture(&self) -> Option<CaptureSummary> {
        self.0.mxp.capture().stop()
    }

    /// The running packet capture (or the last one), with live counters.
    pub fn capture_status(&self) -> CaptureStatus {
        self.0.mxp.capture().status()
    }

    /// Stops accepting and closes every connection on both carriers.
    pub fn close(&self, code: u64, reason: &[u8]) {
        self.0.mxp.close(code, reason);
        if let Some(q) = self.0.quic.get() {
            q.close(code, reason);
        }
    }

    /// Waits until every connection has finished closing.
    pub async fn wait_idle(&self) {
        self.0.mxp.wait_idle().await;
        if let Some(q) = self.0.quic.get() {
            q.wait_idle().await;
        }
    }
}

/// Whether a failed QUIC attempt was answered by the node itself (a
/// refusal, or an identity problem), rather than lost in the network.
fn is_the_nodes_answer(e: &ConnectError) -> bool {
    match e {
        ConnectError::Handshake(ConnectionError::TransportError(t)) => {
            t.code == mxp_proto::TransportErrorCode::CONNECTION_REFUSED
        }
        ConnectError::Handshake(
            ConnectionError::ServerKeyMismatch | ConnectionError::ClientNotAllowed,
        ) => true,
        _ => false,
    }
}

/// The QUIC addresses to try when only the MXP address is known: the next
/// port up (the default layout) and the same port.
fn default_quic_addrs(mxp: SocketAddr) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    if let Some(next) = mxp.port().checked_add(1) {
        addrs.push(SocketAddr::new(mxp.ip(), next));
    }
    addrs.push(mxp);
    addrs
}

async fn resolve_target(address: &str, key: PublicKey) -> Result<Target, ConnectError> {
    let (base, quic_port) = match address.split_once("?quic=") {
        Some((base, port)) => {
            let port: u16 = port
                .parse()
                .map_err(|_| ConnectError::InvalidAddress(address.to_owned()))?;
            (base, Some(port))
        }
        None => (address, None),
    };
    let mxp = resolve_address(base).await?;
    let quic = match quic_port {
        Some(p) => vec![SocketAddr::new(mxp.ip(), p)],
        None => default_quic_addrs(mxp),
    };
    Ok(Target { mxp, quic, key })
}

/// Resolves `mxp://host:port` (or `host:port`) to a socket address,
/// preferring IPv4 when a name has both.
pub async fn resolve_address(address: &str) -> Result<SocketAddr, ConnectError> {
    let rest = address.strip_prefix("mxp://").unwrap_or(address);
    let host_port = rest.split(['/', '?']).next().unwrap_or_default();
    if host_port.is_empty() || !host_port.contains(':') {
        return Err(ConnectError::InvalidAddress(address.to_owned()));
    }
    if let Ok(addr) = host_port.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let addrs =
        tokio::net::lookup_host(host_port)
            .await
            .map_err(|source| ConnectError::Resolve {
                host: host_port.to_owned(),
                source,
            })?;
    let mut first = None;
    for a in addrs {
        if a.is_ipv4() {
            return Ok(a);
        }
        first.get_or_insert(a);
    }
    first.ok_or_else(|| ConnectError::Resolve {
        host: host_port.to_owned(),
        source: io::Error::new(io::ErrorKind::NotFound, "no address"),
    })
}

impl Dial for Endpoint {
    fn dial<'a>(
        &'a self,
        target: &'a Target,
        mode: CarrierMode,
    ) -> Pin<Box<dyn Future<Output = Result<Link, ConnectError>> + Send + 'a>> {
        Box::pin(self.establish(target, mode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn addresses_parse_with_or_without_scheme_and_a_quic_port() {
        for a in [
            "mxp://127.0.0.1:9000",
            "127.0.0.1:9000",
            "mxp://127.0.0.1:9000/agent-1",
        ] {
            assert_eq!(
                resolve_address(a).await.unwrap(),
                "127.0.0.1:9000".parse().unwrap()
            );
        }
        assert_eq!(
            resolve_address("mxp://localhost:9000")
                .await
                .unwrap()
                .port(),
            9000
        );
        for bad in ["mxp://", "nonsense", "mxp://host-without-port"] {
            assert!(
                matches!(
                    resolve_address(bad).await,
                    Err(ConnectError::InvalidAddress(_))
                ),
                "{bad}"
            );
        }
        let key = mxp_proto::Keypair::generate().public();
        let t = resolve_target("mxp://127.0.0.1:9000?quic=9443", key)
            .await
            .unwrap();
        assert_eq!(t.quic, vec!["127.0.0.1:9443".parse().unwrap()]);
        let t = resolve_target("mxp://127.0.0.1:9000", key).await.unwrap();
        assert_eq!(
            t.quic,
            vec![
                "127.0.0.1:9001".parse().unwrap(),
                "127.0.0.1:9000".parse().unwrap()
            ]
        );
        assert!(
            resolve_target("mxp://127.0.0.1:9000?quic=x", key)
                .await
                .is_err()
        );
    }
}
