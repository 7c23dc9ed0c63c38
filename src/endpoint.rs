//! An MXP endpoint on a real UDP socket.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mxp_proto::{ConnectionError, EndpointConfig, EndpointStats, PublicKey};
use thiserror::Error;

use crate::connection::Connection;
use crate::driver::{self, ConnState, Shared};
use crate::udp::Socket;

/// Why a connection could not be made.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The address is not `mxp://host:port` (or `host:port`).
    #[error("invalid address {0:?}: expected mxp://host:port")]
    InvalidAddress(String),
    /// The host name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host that did not resolve.
        host: String,
        /// Why.
        source: io::Error,
    },
    /// The handshake failed: wrong server key, refused, timed out...
    #[error(transparent)]
    Handshake(#[from] ConnectionError),
    /// The first handshake message could not be built.
    #[error(transparent)]
    Start(#[from] mxp_proto::ConnectError),
}

/// A UDP socket with the MXP protocol on it: connects out, and accepts
/// connections if its configuration has a server policy.
///
/// A driver task (spawned on the current tokio runtime by
/// [`bind`](Self::bind)) runs the protocol for every connection of the
/// endpoint. Clones share it; it stops once every clone is dropped and every
/// connection has closed.
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
#[derive(Debug)]
pub struct Endpoint {
    shared: Arc<Shared>,
    public_key: PublicKey,
}

impl Clone for Endpoint {
    fn clone(&self) -> Self {
        self.shared.lock().endpoint_handles += 1;
        Endpoint {
            shared: self.shared.clone(),
            public_key: self.public_key,
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.endpoint_handles -= 1;
        if state.endpoint_handles == 0 {
            state.accepting = false;
            state.accept_wakers.drain(..).for_each(|w| w.wake());
        }
        drop(state);
        self.shared.wake_driver();
    }
}

fn unix_time() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl Endpoint {
    /// Binds a UDP socket to `addr` and starts the endpoint's driver on the
    /// current tokio runtime.
    pub fn bind(addr: SocketAddr, config: EndpointConfig) -> io::Result<Endpoint> {
        let socket = Socket::bind(addr)?;
        let local_addr = socket.local_addr()?;
        let public_key = config.keypair.public();
        let proto = mxp_proto::Endpoint::new(config, Instant::now(), unix_time());
        let shared = Arc::new(Shared::new(proto, local_addr));
        tokio::spawn(driver::run(shared.clone(), socket));
        Ok(Endpoint { shared, public_key })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// This node's public key: what a client passes to
    /// [`connect`](Self::connect).
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// Endpoint-wide counters: handshakes, refusals, garbage.
    pub fn stats(&self) -> EndpointStats {
        self.shared.lock().proto.stats()
    }

    /// Connects to `address` (`mxp://host:port` or `host:port`), which must
    /// hold the secret key for `server_key`.
    pub async fn connect(
        &self,
        address: &str,
        server_key: PublicKey,
    ) -> Result<Connection, ConnectError> {
        let remote = resolve(address, self.local_addr()).await?;
        self.connect_to(remote, server_key).await
    }

    /// Connects to a socket address.
    pub async fn connect_to(
        &self,
        remote: SocketAddr,
        server_key: PublicKey,
    ) -> Result<Connection, ConnectError> {
        let handle = {
            let mut state = self.shared.lock();
            let h = state.proto.connect(Instant::now(), remote, server_key)?;
            state.conns.insert(h, ConnState::default());
            h
        };
        self.shared.wake_driver();
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            let error = state.error_of(handle);
            let Some(cs) = state.conns.get_mut(&handle) else {
                return Poll::Ready(Err(error));
            };
            if cs.connected {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = &cs.error {
                return Poll::Ready(Err(e.clone()));
            }
            cs.wakers.connect = Some(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        Connection::new(self.shared.clone(), handle)
            .ok_or(ConnectError::Handshake(ConnectionError::LocallyClosed))
    }

    /// The next connection a client opened to this node; `None` once the
    /// endpoint no longer accepts.
    pub async fn accept(&self) -> Option<Connection> {
        loop {
            let handle = poll_fn(|cx| {
                let mut state = self.shared.lock();
                if let Some(h) = state.incoming.pop_front() {
                    return Poll::Ready(Some(h));
                }
                if !state.accepting {
                    return Poll::Ready(None);
                }
                state.accept_wakers.push(cx.waker().clone());
                Poll::Pending
            })
            .await?;
            // It may have closed in between; then take the next one.
            if let Some(conn) = Connection::new(self.shared.clone(), handle) {
                return Some(conn);
            }
        }
    }

    /// Stops accepting and closes every connection with `code` and `reason`.
    pub fn close(&self, code: u64, reason: &[u8]) {
        let mut state = self.shared.lock();
        state.accepting = false;
        state.accept_wakers.drain(..).for_each(|w| w.wake());
        let handles: Vec<_> = state.proto.connection_handles().collect();
        let now = Instant::now();
        for h in handles {
            if let Some(c) = state.proto.connection(h) {
                c.close(now, code, Bytes::copy_from_slice(reason));
            }
        }
        drop(state);
        self.shared.wake_driver();
    }

    /// Waits until every connection has finished closing.
    pub async fn wait_idle(&self) {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if state.proto.connection_count() == 0 {
                return Poll::Ready(());
            }
            state.idle_wakers.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// Resolves `mxp://host:port` (or `host:port`) to a socket address,
/// preferring IPv4 when a name has both.
pub async fn resolve_address(address: &str) -> Result<SocketAddr, ConnectError> {
    resolve(address, SocketAddr::from(([0, 0, 0, 0], 0))).await
}

/// Resolves `mxp://host:port` (or `host:port`) to an address of the same
/// family as the local socket.
async fn resolve(address: &str, local: SocketAddr) -> Result<SocketAddr, ConnectError> {
    let rest = address.strip_prefix("mxp://").unwrap_or(address);
    let host_port = rest.split('/').next().unwrap_or_default();
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
        if a.is_ipv4() == local.is_ipv4() {
            return Ok(a);
        }
        first.get_or_insert(a);
    }
    first.ok_or_else(|| ConnectError::Resolve {
        host: host_port.to_owned(),
        source: io::Error::new(io::ErrorKind::NotFound, "no address"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn addresses_parse_with_or_without_scheme() {
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        for a in [
            "mxp://127.0.0.1:9000",
            "127.0.0.1:9000",
            "mxp://127.0.0.1:9000/agent-1",
        ] {
            assert_eq!(
                resolve(a, local).await.unwrap(),
                "127.0.0.1:9000".parse().unwrap()
            );
        }
        assert_eq!(
            resolve("mxp://localhost:9000", local).await.unwrap().port(),
            9000
        );
        for bad in ["mxp://", "nonsense", "mxp://host-without-port"] {
            assert!(
                matches!(
                    resolve(bad, local).await,
                    Err(ConnectError::InvalidAddress(_))
                ),
                "{bad}"
            );
        }
    }
}
