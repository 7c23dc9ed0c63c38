//! The QUIC carrier: the legacy path, on quinn, kept as the fallback. It
//! carries the same MXP messages through the same public API, and proves
//! node identity with the same Noise keys (see `auth` and `tls`).

mod auth;
mod book;
mod guard;
pub(crate) mod streams;
mod tap;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mxp_proto::{
    Band, ConnectionError, ConnectionStats, Keypair, PublicKey, ServerConfig, Side,
    TransportConfig, TransportError, TransportErrorCode,
};
use quinn::VarInt;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info};

use crate::carrier::Carrier;
use crate::carrier::contract::{CarrierConn, CarrierEndpoint};
use crate::error::ConnectError;
use crate::error::{ReadError, WriteError};
use crate::handshake_workers::HandshakeWorkers;
use crate::stats::{CarrierTotals, ConnectionInfo};
pub(crate) use book::OpenStream;
use book::{Book, handshake};
use streams::{QuicRecv, QuicSend};

/// The totals of an endpoint that has no QUIC socket: every counter at zero.
pub(crate) fn idle_totals() -> CarrierTotals {
    Book::default().totals()
}

/// Application close codes of the QUIC carrier.
mod code {
    /// The client's Noise message did not decrypt: wrong server key.
    pub(super) const KEY_MISMATCH: u32 = 0x4d01;
    /// The client's key is not on the node's allow-list.
    pub(super) const CLIENT_NOT_ALLOWED: u32 = 0x4d02;
    /// Closed by the application.
    pub(super) const CLOSED: u32 = 0;
}

/// Connections waiting in the accept queue.
const ACCEPT_BACKLOG: usize = 1024;

/// The max ACK delay the QUIC carrier asks its peer for (quinn's
/// ACK-frequency extension). quinn's default, 25 ms, enters its probe
/// timeout and so sets its tail latency under loss (P99 near 27 ms at 1%
/// loss); 1 ms is the least quinn honours, being its timer granularity and
/// the `min_ack_delay` it advertises.
const QUIC_MAX_ACK_DELAY: Duration = Duration::from_millis(1);

/// The QUIC transport settings: the fallback tuned like MXP for datacenter
/// agent traffic (same windows, stream limits, idle timeout, initial RTT)
/// and with ACKs as prompt as quinn allows.
fn transport_config(t: &TransportConfig) -> quinn::TransportConfig {
    let mut q = quinn::TransportConfig::default();
    let var = |v: u64| VarInt::from_u64(v.min(VarInt::MAX.into_inner())).unwrap_or(VarInt::MAX);
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.max_ack_delay(Some(QUIC_MAX_ACK_DELAY));
    q.max_concurrent_bidi_streams(var(t.max_concurrent_bidi_streams))
        .max_concurrent_uni_streams(var(t.max_concurrent_uni_streams))
        .stream_receive_window(var(t.stream_receive_window))
        .receive_window(var(t.receive_window))
        .send_window(t.receive_window)
        .initial_rtt(t.initial_rtt)
        .max_idle_timeout(quinn::IdleTimeout::try_from(t.idle_timeout).ok())
        .keep_alive_interval(t.keep_alive_interval)
        .datagram_receive_buffer_size(Some(t.datagram_receive_buffer))
        .datagram_send_buffer_size(t.datagram_send_buffer)
        .ack_frequency_config(Some(acks));
    q
}

/// What the QUIC carrier runs with beyond the settings it shares with MXP,
/// in one line: for logs and benchmark reports, so a comparison with MXP
/// says what it compared against.
pub fn quic_settings() -> String {
    format!(
        "quinn 0.11: max ACK delay {:?} (ACK-frequency extension, ack-eliciting threshold 1), \
         timer granularity 1 ms, CUBIC congestion control, GSO/GRO via quinn-udp; \
         windows, stream limits, initial RTT and idle timeout as MXP's",
        QUIC_MAX_ACK_DELAY
    )
}

/// Maps quinn's view of a connection's end onto MXP's error type, so the
/// application sees one set of errors whatever the carrier.
pub(crate) fn connection_error(e: quinn::ConnectionError) -> ConnectionError {
    use quinn::ConnectionError as Q;
    match e {
        Q::VersionMismatch => ConnectionError::VersionMismatch,
        Q::ApplicationClosed(c) if c.error_code == VarInt::from_u32(code::KEY_MISMATCH) => {
            ConnectionError::ServerKeyMismatch
        }
        Q::ApplicationClosed(c) if c.error_code == VarInt::from_u32(code::CLIENT_NOT_ALLOWED) => {
            ConnectionError::ClientNotAllowed
        }
        Q::ApplicationClosed(c) => ConnectionError::ApplicationClosed {
            code: c.error_code.into_inner(),
            reason: c.reason,
        },
        Q::ConnectionClosed(c) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {
            ConnectionError::TransportError(TransportError {
                code: TransportErrorCode::CONNECTION_REFUSED,
                frame_type: None,
                reason: "the node does not accept QUIC connections now".into(),
            })
        }
        Q::ConnectionClosed(c) => ConnectionError::TransportError(TransportError {
            code: TransportErrorCode(u64::from(c.error_code)),
            frame_type: None,
            reason: String::from_utf8_lossy(&c.reason).into_owned(),
        }),
        Q::TransportError(t) => ConnectionError::TransportError(TransportError {
            code: TransportErrorCode(u64::from(t.code)),
            frame_type: None,
            reason: t.reason,
        }),
        Q::Reset => ConnectionError::Reset,
        Q::TimedOut => ConnectionError::TimedOut,
        Q::LocallyClosed => ConnectionError::LocallyClosed,
        Q::CidsExhausted => ConnectionError::TransportError(TransportError {
            code: TransportErrorCode::INTERNAL_ERROR,
            frame_type: None,
            reason: "connection ids exhausted".into(),
        }),
    }
}

pub(crate) fn write_error(e: quinn::WriteError) -> WriteError {
    match e {
        quinn::WriteError::Stopped(code) => WriteError::Stopped(code.into_inner()),
        quinn::WriteError::ConnectionLost(e) => WriteError::ConnectionLost(connection_error(e)),
        quinn::WriteError::ClosedStream | quinn::WriteError::ZeroRttRejected => {
            WriteError::ClosedStream
        }
    }
}

pub(crate) fn read_error(e: quinn::ReadError) -> ReadError {
    match e {
        quinn::ReadError::Reset(code) => ReadError::Reset(code.into_inner()),
        quinn::ReadError::ConnectionLost(e) => ReadError::ConnectionLost(connection_error(e)),
        quinn::ReadError::ClosedStream
        | quinn::ReadError::IllegalOrderedRead
        | quinn::ReadError::ZeroRttRejected => ReadError::ClosedStream,
    }
}

impl WriteError {
    fn into_connection_error(self) -> ConnectionError {
        match self {
            WriteError::ConnectionLost(e) => e,
            other => ConnectionError::TransportError(TransportError {
                code: TransportErrorCode::PROTOCOL_VIOLATION,
                frame_type: None,
                reason: other.to_string(),
            }),
        }
    }
}

/// QUIC has strict stream priorities, not weighted bands: the closest map
/// keeps the bands' order.
pub(crate) fn priority(band: Band) -> i32 {
    3 - band.index() as i32
}

/// One QUIC-carrier connection with an authenticated MXP peer.
#[derive(Debug, Clone)]
pub(crate) struct QuicConn {
    conn: quinn::Connection,
    peer_key: PublicKey,
    side: Side,
    /// Parent of what this connection logs: `conn`, `peer`, `carrier`,
    /// `side`, as on the MXP carrier.
    span: tracing::Span,
    control: Arc<Control>,
    /// Streams the application holds (quinn does not count them).
    streams: Arc<AtomicU64>,
}

/// The control channel's state.
#[derive(Debug, Default)]
struct Control {
    /// The node asked us to take new work elsewhere (client side).
    going_away: AtomicBool,
    /// The node side: where GOAWAY is written.
    send: Mutex<Option<quinn::SendStream>>,
    changed: Notify,
}

impl QuicConn {
    pub(crate) fn inner(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Which end of the connection this is.
    pub(crate) fn side(&self) -> Side {
        self.side
    }

    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    fn new(conn: quinn::Connection, peer_key: PublicKey, side: Side, control: Control) -> QuicConn {
        let span = tracing::info_span!(
            "conn",
            conn = conn.stable_id(),
            peer = %conn.remote_address(),
            carrier = "quic",
            side = side.as_str()
        );
        info!(parent: &span, peer_key = %peer_key, "connected");
        QuicConn {
            span,
            conn,
            peer_key,
            side,
            control: Arc::new(control),
            streams: Arc::default(),
        }
    }

    fn bi(
        &self,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        band: Band,
    ) -> (QuicSend, QuicRecv) {
        let open = OpenStream::new(&self.streams);
        (
            QuicSend::new(send, open.clone(), band),
            QuicRecv::new(recv, open),
        )
    }

    /// Node side: tells the client to take new work elsewhere.
    pub(crate) fn go_away(&self) {
        let send = crate::lock(&self.control.send).take();
        if let Some(mut send) = send {
            tokio::spawn(async move {
                let _ = send.write_all(&[auth::GOAWAY]).await;
                let _ = send.finish();
            });
        }
    }

    /// Client side: watches the control stream for GOAWAY.
    fn watch_control(&self, mut recv: quinn::RecvStream) {
        let control = self.control.clone();
        tokio::spawn(async move {
            let mut byte = [0u8; 1];
            if let Ok(()) = recv.read_exact(&mut byte).await {
                if byte[0] == auth::GOAWAY {
                    control.going_away.store(true, Ordering::Relaxed);
                    control.changed.notify_waiters();
                }
            }
        });
    }
}

impl CarrierConn for QuicConn {
    type Send = QuicSend;
    type Recv = QuicRecv;

    fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    fn peer_key(&self) -> PublicKey {
        self.peer_key
    }

    /// Opens a bidirectional stream: one `open_bi` on quinn's connection.
    async fn open_bi(&self, band: Band) -> Result<(QuicSend, QuicRecv), ConnectionError> {
        let (send, recv) = self.conn.open_bi().await.map_err(connection_error)?;
        Ok(self.bi(send, recv, band))
    }

    async fn open_uni(&self, band: Band) -> Result<QuicSend, ConnectionError> {
        let send = self.conn.open_uni().await.map_err(connection_error)?;
        Ok(QuicSend::new(send, OpenStream::new(&self.streams), band))
    }

    async fn accept_bi(&self) -> Result<(QuicSend, QuicRecv), ConnectionError> {
        let (send, recv) = self.conn.accept_bi().await.map_err(connection_error)?;
        Ok(self.bi(send, recv, Band::default()))
    }

    async fn accept_uni(&self) -> Result<QuicRecv, ConnectionError> {
        let recv = self.conn.accept_uni().await.map_err(connection_error)?;
        Ok(QuicRecv::new(recv, OpenStream::new(&self.streams)))
    }

    /// Waits until the node asks this connection to go away.
    async fn going_away(&self) {
        loop {
            let changed = self.control.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.peer_going_away() {
                return;
            }
            changed.await;
        }
    }

    fn peer_going_away(&self) -> bool {
        self.control.going_away.load(Ordering::Relaxed)
    }

    fn close(&self, code: u64, reason: &[u8]) {
        let code = VarInt::from_u64(code).unwrap_or(VarInt::from_u32(code::CLOSED));
        self.conn.close(code, reason);
    }

    async fn closed(&self) -> ConnectionError {
        connection_error(self.conn.closed().await)
    }

    /// QUIC datagrams have one band: `band` is ignored.
    fn send_datagram(
        &self,
        data: Bytes,
        _band: Band,
    ) -> Result<(), crate::error::SendDatagramError> {
        use mxp_proto::DatagramError;
        self.conn.send_datagram(data.clone()).map_err(|e| match e {
            quinn::SendDatagramError::ConnectionLost(e) => connection_error(e).into(),
            quinn::SendDatagramError::TooLarge => DatagramError::TooLarge {
                size: data.len(),
                max: self.max_datagram_size(),
            }
            .into(),
            _ => DatagramError::Disabled.into(),
        })
    }

    fn max_datagram_size(&self) -> usize {
        self.conn.max_datagram_size().unwrap_or(0)
    }

    async fn read_datagram(&self) -> Result<Bytes, ConnectionError> {
        self.conn.read_datagram().await.map_err(connection_error)
    }

    /// quinn's counters, in MXP's shape (what QUIC does not count stays 0).
    fn stats(&self) -> ConnectionStats {
        let s = self.conn.stats();
        ConnectionStats {
            packets_sent: s.path.sent_packets,
            packets_received: s.udp_rx.datagrams,
            bytes_sent: s.udp_tx.bytes,
            bytes_received: s.udp_rx.bytes,
            packets_lost: s.path.lost_packets,
            bytes_lost: s.path.lost_bytes,
            acks_sent: s.frame_tx.acks,
            rtt: s.path.rtt,
            min_rtt: s.path.min_rtt,
            congestion_window: s.path.cwnd,
            streams_active: self.streams.load(Ordering::Relaxed),
            datagrams: mxp_proto::DatagramStats {
                sent: s.frame_tx.datagram,
                received: s.frame_rx.datagram,
                ..Default::default()
            },
            ..ConnectionStats::default()
        }
    }
}

/// A quinn client endpoint set up as the QUIC carrier's clients are, for
/// capturing the Initials they send ([`crate::attack`]).
pub(crate) fn capture_client() -> io::Result<quinn::Endpoint> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("literal"))?;
    endpoint.set_default_client_config(QuicEndpoint::client_config(&TransportConfig::default())?);
    Ok(endpoint)
}

/// A quinn endpoint speaking MXP: a node listening for QUIC, or a client.
#[derive(Debug, Clone)]
pub(crate) struct QuicEndpoint {
    endpoint: quinn::Endpoint,
    keypair: Keypair,
    client_config: quinn::ClientConfig,
    node: Option<Arc<Node>>,
    book: Arc<Book>,
}

/// Node-side state.
#[derive(Debug)]
struct Node {
    accepting: AtomicBool,
    incoming: tokio::sync::Mutex<mpsc::Receiver<QuicConn>>,
    guard: Arc<guard::Guard>,
}

fn io_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl QuicEndpoint {
    fn client_config(transport: &TransportConfig) -> io::Result<quinn::ClientConfig> {
        let crypto = QuicClientConfig::try_from(tls::client_config().map_err(io_error)?)
            .map_err(io_error)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config(transport)));
        Ok(config)
    }

    /// A client-only endpoint on an ephemeral port of `bind`'s family.
    pub(crate) fn client(
        bind: SocketAddr,
        keypair: Keypair,
        transport: &TransportConfig,
    ) -> io::Result<QuicEndpoint> {
        let endpoint = quinn::Endpoint::client(bind)?;
        Ok(QuicEndpoint {
            endpoint,
            keypair,
            client_config: Self::client_config(transport)?,
            node: None,
            book: Arc::default(),
        })
    }

    /// A node listening on `addr`; authenticated connections come out of
    /// [`accept`](Self::accept). `capture` sees its datagrams while it
    /// records.
    pub(crate) fn node(
        addr: SocketAddr,
        keypair: Keypair,
        transport: &TransportConfig,
        policy: Arc<ServerConfig>,
        capture: crate::capture::Capture,
        workers: Arc<HandshakeWorkers>,
    ) -> io::Result<QuicEndpoint> {
        let crypto = QuicServerConfig::try_from(tls::server_config().map_err(io_error)?)
            .map_err(io_error)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport_config(transport)));
        server.retry_token_lifetime(policy.token_lifetime);
        let endpoint = tap::server(server, addr, capture)?;
        let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
        let node = Arc::new(Node {
            accepting: AtomicBool::new(true),
            incoming: tokio::sync::Mutex::new(rx),
            guard: guard::Guard::new(policy.clone()),
        });
        let book = Arc::<Book>::default();
        let this = QuicEndpoint {
            endpoint: endpoint.clone(),
            keypair: keypair.clone(),
            client_config: Self::client_config(transport)?,
            node: Some(node.clone()),
            book: book.clone(),
        };
        tokio::spawn(accept_loop(
            endpoint,
            keypair,
            policy,
            (node, book),
            tx,
            workers,
        ));
        Ok(this)
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Whether new QUIC sessions are accepted (node side).
    pub(crate) fn set_accepting(&self, accepting: bool) {
        if let Some(node) = &self.node {
            node.accepting.store(accepting, Ordering::Relaxed);
        }
    }

    /// Live connections, either side.
    pub(crate) fn connections(&self) -> Vec<QuicConn> {
        self.book.live()
    }

    /// Counters over every connection so far.
    pub(crate) fn totals(&self) -> CarrierTotals {
        let mut totals = self.book.totals();
        if let Some(node) = &self.node {
            totals.handshake_jobs = node.guard.jobs.load(Ordering::Relaxed);
            totals.handshake_queue = node.guard.unconfirmed() as u64;
        }
        totals
    }
}

impl CarrierEndpoint for QuicEndpoint {
    type Conn = QuicConn;

    /// Connects to the node at `addr` and proves it holds `server_key`.
    async fn connect(
        &self,
        addr: SocketAddr,
        server_key: PublicKey,
    ) -> Result<QuicConn, ConnectError> {
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), addr, "mxp-node")
            .map_err(|e| ConnectError::Quic(e.to_string()))?;
        let conn = connecting.await.map_err(|e| {
            let e = connection_error(e);
            self.book.handshake(client_outcome(&e));
            ConnectError::Handshake(e)
        })?;
        let control = match auth::client(&conn, &self.keypair, &server_key).await {
            Ok(recv) => recv,
            Err(e) => {
                // The node may have explained why it hung up.
                let reason = conn.close_reason().map(connection_error).unwrap_or(e);
                conn.close(VarInt::from_u32(code::CLOSED), b"");
                self.book.handshake(client_outcome(&reason));
                return Err(ConnectError::Handshake(reason));
            }
        };
        self.book.handshake(handshake::COMPLETED);
        let conn = QuicConn::new(conn, server_key, Side::Client, Control::default());
        conn.watch_control(control);
        self.book.track(&conn);
        Ok(conn)
    }

    /// The next authenticated connection (node side); `None` when closed.
    async fn accept(&self) -> Option<QuicConn> {
        self.node.as_ref()?.incoming.lock().await.recv().await
    }

    /// Live connections, either side.
    fn connection_count(&self) -> usize {
        self.book.live_count()
    }

    /// Each connection's stats, for a snapshot.
    fn connection_infos(&self) -> Vec<ConnectionInfo> {
        self.book
            .live()
            .iter()
            .map(|c| {
                ConnectionInfo::new(
                    Carrier::Quic,
                    c.side(),
                    c.inner().stable_id().to_string(),
                    c.remote_address(),
                    Some(c.peer_key()),
                    true,
                    &c.stats(),
                )
            })
            .collect()
    }

    /// Tells every live connection to take new work elsewhere.
    fn go_away_all(&self) {
        self.connections().iter().for_each(QuicConn::go_away);
    }

    /// Closes every live connection.
    fn close_all(&self, code: u64, reason: &[u8]) {
        self.connections()
            .iter()
            .for_each(|c| c.close(code, reason));
    }

    /// Stops the endpoint.
    fn close(&self, code: u64, reason: &[u8]) {
        self.set_accepting(false);
        let code = VarInt::from_u64(code).unwrap_or(VarInt::from_u32(code::CLOSED));
        self.endpoint.close(code, reason);
    }

    /// Waits until every connection has closed.
    async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    keypair: Keypair,
    policy: Arc<ServerConfig>,
    (node, book): (Arc<Node>, Arc<Book>),
    tx: mpsc::Sender<QuicConn>,
    workers: Arc<HandshakeWorkers>,
) {
    while let Some(incoming) = endpoint.accept().await {
        if !node.accepting.load(Ordering::Relaxed) {
            // An explicit refusal: the client falls back at once.
            book.handshake(handshake::CARRIER_REFUSED);
            incoming.refuse();
            continue;
        }
        let remote = incoming.remote_address();
        let verdict = node.guard.admit(
            remote,
            &incoming.orig_dst_cid(),
            incoming.remote_address_validated(),
        );
        match verdict {
            guard::Verdict::Accept => {}
            guard::Verdict::Retry => {
                if incoming.retry().is_ok() {
                    book.handshake(handshake::RETRY_SENT);
                }
                continue;
            }
            guard::Verdict::Replayed => {
                book.handshake(handshake::REPLAYED);
                incoming.ignore();
                continue;
            }
            guard::Verdict::Limited(reason) => {
                debug!(target: mxp_proto::HANDSHAKE, carrier = "quic", peer = %remote, reason, "QUIC attempt set aside");
                book.limited(reason);
                incoming.ignore();
                continue;
            }
        }
        let claim = node.guard.claim();
        let (keypair, policy, book, tx, node, workers) = (
            keypair.clone(),
            policy.clone(),
            book.clone(),
            tx.clone(),
            node.clone(),
            workers.clone(),
        );
        tokio::spawn(async move {
            let _claim = claim;
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    book.handshake(handshake::FAILED);
                    return debug!(target: mxp_proto::HANDSHAKE, carrier = "quic", error = %e, "QUIC handshake failed");
                }
            };
            let jobs = node.guard.jobs.clone();
            let auth = tokio::time::timeout(
                guard::IDENTITY_DEADLINE,
                auth::server(&conn, &keypair, &policy, (&workers, jobs)),
            )
            .await;
            let auth = match auth {
                Ok(Ok(a)) => a,
                Ok(Err(ConnectionError::ServerKeyMismatch)) => {
                    book.handshake(handshake::SERVER_KEY_MISMATCH);
                    debug!(target: mxp_proto::HANDSHAKE, carrier = "quic", peer = %conn.remote_address(), "QUIC client used the wrong server key");
                    return conn
                        .close(VarInt::from_u32(code::KEY_MISMATCH), b"server key mismatch");
                }
                Ok(Err(ConnectionError::ClientNotAllowed)) => {
                    book.handshake(handshake::CLIENT_NOT_ALLOWED);
                    debug!(target: mxp_proto::HANDSHAKE, carrier = "quic", peer = %conn.remote_address(), "QUIC client key not on the allow-list");
                    return conn.close(
                        VarInt::from_u32(code::CLIENT_NOT_ALLOWED),
                        b"client key not allowed",
                    );
                }
                Ok(Err(e)) => {
                    book.handshake(handshake::FAILED);
                    debug!(target: mxp_proto::HANDSHAKE, carrier = "quic", peer = %conn.remote_address(), error = %e, "QUIC client refused");
                    return;
                }
                Err(_) => {
                    book.handshake(handshake::TIMED_OUT);
                    debug!(target: mxp_proto::HANDSHAKE, carrier = "quic", peer = %conn.remote_address(), "QUIC client did not prove its identity in time");
                    return conn.close(VarInt::from_u32(code::CLOSED), b"handshake timed out");
                }
            };
            book.handshake(handshake::ACCEPTED);
            let control = Control {
                send: Mutex::new(Some(auth.control)),
                ..Control::default()
            };
            let quic = QuicConn::new(conn, auth.client_key, Side::Node, control);
            book.track(&quic);
            let _ = tx.send(quic).await;
        });
    }
}

/// How a client's failed attempt counts in `mxp_handshakes_total`.
fn client_outcome(e: &ConnectionError) -> &'static str {
    match e {
        ConnectionError::ServerKeyMismatch => handshake::SERVER_KEY_MISMATCH,
        ConnectionError::ClientNotAllowed => handshake::CLIENT_NOT_ALLOWED,
        ConnectionError::TransportError(t) if t.code == TransportErrorCode::CONNECTION_REFUSED => {
            handshake::CARRIER_REFUSED
        }
        ConnectionError::HandshakeTimedOut | ConnectionError::TimedOut => handshake::TIMED_OUT,
        _ => handshake::FAILED,
    }
}
