//! An MXP endpoint: the MXP carrier on one UDP socket, and (for a node that
//! keeps the legacy path, or a client that may fall back) the QUIC carrier
//! beside it.
//!
//! This file holds the endpoint and its public basics; connecting out is
//! [`dial`], the carrier switch and drains [`switch`], what it shows of
//! itself [`observe`], and address parsing [`address`].

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mxp_proto::{EndpointConfig, EndpointStats, PublicKey};
use tokio::sync::mpsc;

use crate::carrier::{Carrier, CarrierMode, Carriers};
use crate::connection::Connection;
use crate::handshake_workers::HandshakeWorkers;
use crate::link::{Link, LinkEndpoint};
use crate::mxp::endpoint::MxpEndpoint;
use crate::quic::QuicEndpoint;
use crate::stats::{CallDurations, MessageErrors};

mod address;
mod dial;
mod observe;
mod switch;

pub use address::resolve_address;
use switch::Drain;
pub use switch::{ConnectionsPerCarrier, DrainStatus, Status};

/// Everything an [`Endpoint`] can be configured with beyond the protocol
/// core's [`EndpointConfig`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Identity, transport settings and (for a node) admission policy.
    pub config: EndpointConfig,
    /// A node also listens for the QUIC carrier here.
    pub quic_listen: Option<SocketAddr>,
    /// Which carriers a node accepts new sessions on at start.
    pub carriers: Carriers,
    /// How a client picks the carrier of a new connection.
    pub carrier_mode: CarrierMode,
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
            carrier_mode: CarrierMode::Auto,
            mxp_timeout: Duration::from_secs(1),
            mxp_retry_after: Duration::from_secs(5),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// How long a drained carrier's connections may finish their work by
/// default: the rollout checklist's five minutes.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

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
        for e in self.carrier_endpoints() {
            e.forward_incoming(tx.clone());
        }
    }

    /// `carrier`'s endpoint, if this endpoint has one (QUIC starts on
    /// first use at a client): the one place here that names each carrier.
    pub(super) fn carrier_endpoint(&self, carrier: Carrier) -> Option<LinkEndpoint<'_>> {
        match carrier {
            Carrier::Mxp => Some(LinkEndpoint::Mxp(&self.0.mxp)),
            Carrier::Quic => self.0.quic.get().map(LinkEndpoint::Quic),
        }
    }

    /// Every carrier endpoint this endpoint has.
    pub(super) fn carrier_endpoints(&self) -> impl Iterator<Item = LinkEndpoint<'_>> {
        Carrier::ALL
            .into_iter()
            .filter_map(|c| self.carrier_endpoint(c))
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

    /// Stops accepting and closes every connection on both carriers.
    pub fn close(&self, code: u64, reason: &[u8]) {
        self.carrier_endpoints().for_each(|e| e.close(code, reason));
    }

    /// Waits until every connection has finished closing.
    pub async fn wait_idle(&self) {
        for e in self.carrier_endpoints() {
            e.wait_idle().await;
        }
    }
}
