//! Connecting out: over MXP, over QUIC, or `Auto` (MXP first, QUIC when
//! the node refuses MXP or MXP stays silent), and the `Dial` a client
//! connection switches carriers with.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use mxp_proto::{ConnectionError, PublicKey};
use tracing::info;

use super::Endpoint;
use super::address::{default_quic_addrs, resolve_target};
use crate::carrier::contract::CarrierEndpoint;
use crate::carrier::{CarrierMode, Target};
use crate::connection::Connection;
use crate::error::ConnectError;
use crate::link::Link;
use crate::lock;
use crate::quic::QuicEndpoint;
use crate::session::Dial;

/// Whether a failed QUIC attempt was answered by the node itself (a
/// refusal, or an identity problem), rather than lost in the network.
pub(super) fn is_the_nodes_answer(e: &ConnectError) -> bool {
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

impl Dial for Endpoint {
    fn dial<'a>(
        &'a self,
        target: &'a Target,
        mode: CarrierMode,
    ) -> Pin<Box<dyn Future<Output = Result<Link, ConnectError>> + Send + 'a>> {
        Box::pin(self.establish(target, mode))
    }
}

impl Endpoint {
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

    pub(super) async fn connect_target(&self, target: Target) -> Result<Connection, ConnectError> {
        let link = self.establish(&target, self.0.options.carrier_mode).await?;
        let dialer = Arc::new(self.clone());
        Ok(Connection::client_side(
            link,
            dialer,
            target,
            self.for_connections(),
        ))
    }

    /// Opens a carrier connection to `target` following `mode`.
    pub(super) async fn establish(
        &self,
        target: &Target,
        mode: CarrierMode,
    ) -> Result<Link, ConnectError> {
        match mode {
            CarrierMode::Mxp => Ok(Link::Mxp(self.0.mxp.connect(target.mxp, target.key).await?)),
            CarrierMode::Quic => self.connect_quic(&target.quic, target.key).await,
            CarrierMode::Auto => self.connect_auto(target).await,
        }
    }

    pub(super) async fn connect_auto(&self, target: &Target) -> Result<Link, ConnectError> {
        let silent = lock(&self.0.mxp_silent_until).is_some_and(|until| Instant::now() < until);
        let mut quic_addrs = target.quic.clone();
        let why = if silent {
            "MXP did not answer recently"
        } else {
            let attempt = self.0.mxp.connect(target.mxp, target.key);
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

    pub(super) async fn quic(&self) -> Result<&QuicEndpoint, ConnectError> {
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
    pub(super) async fn connect_quic(
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

    pub(super) async fn race_quic(
        &self,
        addrs: &[SocketAddr],
        key: PublicKey,
    ) -> Result<Link, ConnectError> {
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
}
