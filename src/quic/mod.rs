//! The QUIC carrier: the legacy path, on quinn, kept as the fallback. It
//! carries the same MXP messages through the same public API, and proves
//! node identity with the same Noise keys (see `auth` and `tls`).

mod auth;
mod tls;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mxp_proto::{
    Band, ConnectionError, ConnectionStats, Keypair, PublicKey, ServerConfig, TransportConfig,
    TransportError, TransportErrorCode,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{SendStream, VarInt};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info};

use crate::ConnectError;
use crate::streams::{ReadError, WriteError};

/// Application close codes of the QUIC carrier.
mod code {
    /// The client's Noise message did not decrypt: wrong server key.
    pub const KEY_MISMATCH: u32 = 0x4d01;
    /// The client's key is not on the node's allow-list.
    pub const CLIENT_NOT_ALLOWED: u32 = 0x4d02;
    /// Closed by the application.
    pub const CLOSED: u32 = 0;
}

/// Connections waiting in the accept queue.
const ACCEPT_BACKLOG: usize = 1024;

/// The QUIC transport settings: the fallback tuned like MXP for datacenter
/// agent traffic (same windows, stream limits, idle timeout).
fn transport_config(t: &TransportConfig) -> quinn::TransportConfig {
    let mut q = quinn::TransportConfig::default();
    let var = |v: u64| VarInt::from_u64(v.min(VarInt::MAX.into_inner())).unwrap_or(VarInt::MAX);
    q.max_concurrent_bidi_streams(var(t.max_concurrent_bidi_streams))
        .max_concurrent_uni_streams(var(t.max_concurrent_uni_streams))
        .stream_receive_window(var(t.stream_receive_window))
        .receive_window(var(t.receive_window))
        .send_window(t.receive_window)
        .initial_rtt(t.initial_rtt)
        .max_idle_timeout(quinn::IdleTimeout::try_from(t.idle_timeout).ok())
        .keep_alive_interval(t.keep_alive_interval)
        .datagram_receive_buffer_size(Some(t.datagram_receive_buffer))
        .datagram_send_buffer_size(t.datagram_send_buffer);
    q
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
    control: Arc<Control>,
}

/// The control channel's state.
#[derive(Debug, Default)]
struct Control {
    /// The node asked us to take new work elsewhere (client side).
    going_away: AtomicBool,
    /// The node side: where GOAWAY is written.
    send: Mutex<Option<SendStream>>,
    changed: Notify,
}

impl QuicConn {
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    pub fn peer_key(&self) -> PublicKey {
        self.peer_key
    }

    pub fn inner(&self) -> &quinn::Connection {
        &self.conn
    }

    pub fn peer_going_away(&self) -> bool {
        self.control.going_away.load(Ordering::Relaxed)
    }

    /// Node side: tells the client to take new work elsewhere.
    pub fn go_away(&self) {
        let send = self
            .control
            .send
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut send) = send {
            tokio::spawn(async move {
                let _ = send.write_all(&[auth::GOAWAY]).await;
                let _ = send.finish();
            });
        }
    }

    pub fn close(&self, code: u64, reason: &[u8]) {
        let code = VarInt::from_u64(code).unwrap_or(VarInt::from_u32(code::CLOSED));
        self.conn.close(code, reason);
    }

    pub async fn closed(&self) -> ConnectionError {
        connection_error(self.conn.closed().await)
    }

    pub fn send_datagram(&self, data: Bytes) -> Result<(), crate::SendDatagramError> {
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

    pub fn max_datagram_size(&self) -> usize {
        self.conn.max_datagram_size().unwrap_or(0)
    }

    pub async fn read_datagram(&self) -> Result<Bytes, ConnectionError> {
        self.conn.read_datagram().await.map_err(connection_error)
    }

    /// quinn's counters, in MXP's shape (what QUIC does not count stays 0).
    pub fn stats(&self) -> ConnectionStats {
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
            ..ConnectionStats::default()
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

/// A quinn endpoint speaking MXP: a node listening for QUIC, or a client.
#[derive(Debug, Clone)]
pub(crate) struct QuicEndpoint {
    endpoint: quinn::Endpoint,
    keypair: Keypair,
    client_config: quinn::ClientConfig,
    node: Option<Arc<Node>>,
}

/// Node-side state.
#[derive(Debug)]
struct Node {
    accepting: AtomicBool,
    incoming: tokio::sync::Mutex<mpsc::Receiver<QuicConn>>,
    live: Mutex<HashMap<usize, QuicConn>>,
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
    pub fn client(
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
        })
    }

    /// A node listening on `addr`; authenticated connections come out of
    /// [`accept`](Self::accept).
    pub fn node(
        addr: SocketAddr,
        keypair: Keypair,
        transport: &TransportConfig,
        policy: Arc<ServerConfig>,
    ) -> io::Result<QuicEndpoint> {
        let crypto = QuicServerConfig::try_from(tls::server_config().map_err(io_error)?)
            .map_err(io_error)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport_config(transport)));
        let endpoint = quinn::Endpoint::server(server, addr)?;
        let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
        let node = Arc::new(Node {
            accepting: AtomicBool::new(true),
            incoming: tokio::sync::Mutex::new(rx),
            live: Mutex::new(HashMap::new()),
        });
        let this = QuicEndpoint {
            endpoint: endpoint.clone(),
            keypair: keypair.clone(),
            client_config: Self::client_config(transport)?,
            node: Some(node.clone()),
        };
        let handshake_timeout = transport.handshake_timeout;
        tokio::spawn(accept_loop(
            endpoint,
            keypair,
            policy,
            node,
            tx,
            handshake_timeout,
        ));
        Ok(this)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Connects to the node at `addr` and proves it holds `server_key`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_key: PublicKey,
    ) -> Result<QuicConn, ConnectError> {
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), addr, "mxp-node")
            .map_err(|e| ConnectError::Quic(e.to_string()))?;
        let conn = connecting
            .await
            .map_err(|e| ConnectError::Handshake(connection_error(e)))?;
        let control = match auth::client(&conn, &self.keypair, &server_key).await {
            Ok(recv) => recv,
            Err(e) => {
                // The node may have explained why it hung up.
                let reason = conn.close_reason().map(connection_error).unwrap_or(e);
                conn.close(VarInt::from_u32(code::CLOSED), b"");
                return Err(ConnectError::Handshake(reason));
            }
        };
        let conn = QuicConn {
            conn,
            peer_key: server_key,
            control: Arc::default(),
        };
        conn.watch_control(control);
        Ok(conn)
    }

    /// The next authenticated connection (node side); `None` when closed.
    pub async fn accept(&self) -> Option<QuicConn> {
        self.node.as_ref()?.incoming.lock().await.recv().await
    }

    /// Whether new QUIC sessions are accepted (node side).
    pub fn set_accepting(&self, accepting: bool) {
        if let Some(node) = &self.node {
            node.accepting.store(accepting, Ordering::Relaxed);
        }
    }

    fn live(&self) -> Vec<QuicConn> {
        self.node
            .as_ref()
            .map(|n| {
                n.live
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Live connections (node side).
    pub fn connection_count(&self) -> usize {
        self.node.as_ref().map_or(0, |n| {
            n.live.lock().unwrap_or_else(|e| e.into_inner()).len()
        })
    }

    /// Tells every live connection to take new work elsewhere.
    pub fn go_away_all(&self) {
        self.live().iter().for_each(QuicConn::go_away);
    }

    /// Closes every live connection.
    pub fn close_all(&self, code: u64, reason: &[u8]) {
        self.live().iter().for_each(|c| c.close(code, reason));
    }

    /// Stops the endpoint.
    pub fn close(&self, code: u64, reason: &[u8]) {
        self.set_accepting(false);
        let code = VarInt::from_u64(code).unwrap_or(VarInt::from_u32(code::CLOSED));
        self.endpoint.close(code, reason);
    }

    /// Waits until every connection has closed.
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    keypair: Keypair,
    policy: Arc<ServerConfig>,
    node: Arc<Node>,
    tx: mpsc::Sender<QuicConn>,
    handshake_timeout: Duration,
) {
    while let Some(incoming) = endpoint.accept().await {
        if !node.accepting.load(Ordering::Relaxed) {
            // An explicit refusal: the client falls back at once.
            incoming.refuse();
            continue;
        }
        let (keypair, policy, node, tx) =
            (keypair.clone(), policy.clone(), node.clone(), tx.clone());
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => return debug!(error = %e, "QUIC handshake failed"),
            };
            let auth =
                tokio::time::timeout(handshake_timeout, auth::server(&conn, &keypair, &policy))
                    .await;
            let auth = match auth {
                Ok(Ok(a)) => a,
                Ok(Err(ConnectionError::ServerKeyMismatch)) => {
                    debug!(target: mxp_proto::HANDSHAKE, peer = %conn.remote_address(), "QUIC client used the wrong server key");
                    return conn
                        .close(VarInt::from_u32(code::KEY_MISMATCH), b"server key mismatch");
                }
                Ok(Err(ConnectionError::ClientNotAllowed)) => {
                    debug!(target: mxp_proto::HANDSHAKE, peer = %conn.remote_address(), "QUIC client key not on the allow-list");
                    return conn.close(
                        VarInt::from_u32(code::CLIENT_NOT_ALLOWED),
                        b"client key not allowed",
                    );
                }
                Ok(Err(e)) => {
                    debug!(target: mxp_proto::HANDSHAKE, peer = %conn.remote_address(), error = %e, "QUIC client refused");
                    return;
                }
                Err(_) => {
                    return conn.close(VarInt::from_u32(code::CLOSED), b"handshake timed out");
                }
            };
            info!(peer = %conn.remote_address(), client = %auth.client_key, carrier = "quic", "connected");
            let id = conn.stable_id();
            let quic = QuicConn {
                conn: conn.clone(),
                peer_key: auth.client_key,
                control: Arc::new(Control {
                    send: Mutex::new(Some(auth.control)),
                    ..Control::default()
                }),
            };
            node.live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, quic.clone());
            if tx.send(quic).await.is_err() {
                return;
            }
            conn.closed().await;
            node.live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
    }
}
