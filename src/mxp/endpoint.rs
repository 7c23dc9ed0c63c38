//! The MXP carrier's endpoint: a UDP socket, its driver task, and the
//! connections on it.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mxp_proto::{ConnectionError, ConnectionHandle, EndpointConfig, EndpointStats, PublicKey};

use super::conn::{MxpConn, release};
use super::driver::{self, ConnState, Shared};
use super::udp::Socket;
use crate::capture::Capture;
use crate::carrier::Carrier;
use crate::carrier::contract::CarrierEndpoint;
use crate::error::ConnectError;
use crate::handshake_workers::HandshakeWorkers;
use crate::stats::{CarrierTotals, ConnectionInfo};

/// An MXP endpoint. Clones share it; the driver stops once every clone is
/// dropped and every connection has closed.
#[derive(Debug)]
pub(crate) struct MxpEndpoint {
    shared: Arc<Shared>,
}

impl Clone for MxpEndpoint {
    fn clone(&self) -> Self {
        self.shared.lock().endpoint_handles += 1;
        MxpEndpoint {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for MxpEndpoint {
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

/// The wall clock, as the core wants it: time since the Unix epoch.
pub(crate) fn unix_time() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl MxpEndpoint {
    /// Binds a UDP socket to `addr` and starts the driver on the current
    /// tokio runtime.
    pub(crate) fn bind(
        addr: SocketAddr,
        config: EndpointConfig,
        workers: Option<Arc<HandshakeWorkers>>,
    ) -> io::Result<MxpEndpoint> {
        let socket = Socket::bind(addr)?;
        let local_addr = socket.local_addr()?;
        let proto = mxp_proto::Endpoint::new(config, Instant::now(), unix_time());
        let shared = Arc::new(Shared::new(proto, socket, local_addr, workers));
        tokio::spawn(driver::run(shared.clone()));
        Ok(MxpEndpoint { shared })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    pub(crate) fn stats(&self) -> EndpointStats {
        self.shared.lock().proto.stats()
    }

    /// The packet capture of this endpoint's socket.
    pub(crate) fn capture(&self) -> &Capture {
        &self.shared.capture
    }

    /// Counters over every connection so far, for the metrics, and the
    /// endpoint's own (handshakes, refusals), read under one lock.
    pub(crate) fn totals(&self) -> (CarrierTotals, EndpointStats) {
        let state = self.shared.lock();
        let door = state.proto.stats();
        let (counters, streams_active) = state.proto.totals();
        let totals = CarrierTotals {
            active: state.proto.connection_count() as u64,
            established: door.handshakes_accepted + door.handshakes_completed,
            streams_active,
            counters,
            ended: state.proto.ended_by_kind().collect(),
            handshakes: mxp_handshakes(&door),
            limited: mxp_limited(&door),
            handshake_jobs: door.handshake_jobs,
            handshake_queue: state.proto.handshake_queue_depth() as u64,
        };
        (totals, door)
    }

    /// Whether new connections are accepted; refused initiations are told
    /// where the QUIC listener is.
    pub(crate) fn set_accepting(&self, accepting: bool, quic_port: Option<u16>) {
        self.shared.lock().proto.set_accepting(accepting, quic_port);
    }

    /// Applies `f` to every live connection.
    fn for_each_connection(&self, mut f: impl FnMut(&mut mxp_proto::Connection, Instant)) {
        let mut state = self.shared.lock();
        let handles: Vec<_> = state.proto.connection_handles().collect();
        let now = Instant::now();
        for h in handles {
            if let Some(c) = state.proto.connection(h) {
                f(c, now);
            }
        }
        drop(state);
        self.shared.wake_driver();
    }
}

impl CarrierEndpoint for MxpEndpoint {
    type Conn = MxpConn;

    /// Each connection's stats, for a snapshot.
    fn connection_infos(&self) -> Vec<ConnectionInfo> {
        let state = self.shared.lock();
        state
            .proto
            .connection_handles()
            .filter_map(|h| {
                let c = state.proto.connection_ref(h)?;
                Some(ConnectionInfo::new(
                    Carrier::Mxp,
                    c.side(),
                    c.local_cid().to_string(),
                    c.remote_address(),
                    c.peer_key(),
                    c.is_established(),
                    &c.stats(),
                ))
            })
            .collect()
    }

    /// Connections on this endpoint (in any state).
    fn connection_count(&self) -> usize {
        self.shared.lock().proto.connection_count()
    }

    async fn connect(
        &self,
        remote: SocketAddr,
        server_key: PublicKey,
    ) -> Result<MxpConn, ConnectError> {
        let handle = {
            let mut state = self.shared.lock();
            let h = state.proto.connect(Instant::now(), remote, server_key)?;
            state.conns.insert(h, ConnState::default());
            h
        };
        self.shared.wake_driver();
        // Given up before the handshake ends (auto's MXP timeout): close
        // it, so it stops sending to an address that does not answer.
        let mut abandon = Abandon {
            shared: &self.shared,
            handle: Some(handle),
        };
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
        let conn = MxpConn::new(self.shared.clone(), handle)
            .ok_or(ConnectError::Handshake(ConnectionError::LocallyClosed))?;
        abandon.handle = None; // the connection's handle owns it now
        Ok(conn)
    }

    /// The next connection a client opened; `None` once the endpoint is
    /// closed.
    async fn accept(&self) -> Option<MxpConn> {
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
            if let Some(conn) = MxpConn::new(self.shared.clone(), handle) {
                return Some(conn);
            }
        }
    }

    /// Tells every connection to take new work elsewhere (a drain).
    fn go_away_all(&self) {
        self.for_each_connection(|c, _| c.go_away());
    }

    /// Closes every connection with `code` and `reason`.
    fn close_all(&self, code: u64, reason: &[u8]) {
        self.for_each_connection(|c, now| c.close(now, code, Bytes::copy_from_slice(reason)));
    }

    /// Stops accepting for good and closes every connection.
    fn close(&self, code: u64, reason: &[u8]) {
        {
            let mut state = self.shared.lock();
            state.accepting = false;
            state.accept_wakers.drain(..).for_each(|w| w.wake());
        }
        self.close_all(code, reason);
    }

    /// Waits until every connection has finished closing.
    async fn wait_idle(&self) {
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

/// Releases a connection whose handshake was abandoned (its `connect_to`
/// future dropped, or failed) unless disarmed.
struct Abandon<'a> {
    shared: &'a Shared,
    handle: Option<ConnectionHandle>,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            release(self.shared, handle);
        }
    }
}

/// The handshake outcomes of the MXP carrier, from its endpoint's counters.
fn mxp_handshakes(s: &EndpointStats) -> BTreeMap<&'static str, u64> {
    [
        ("accepted", s.handshakes_accepted),
        ("completed", s.handshakes_completed),
        ("mac_failed", s.mac_failures),
        ("server_key_mismatch", s.server_key_mismatches),
        ("client_not_allowed", s.clients_not_allowed),
        ("replayed", s.replayed_initiations),
        ("duplicate", s.duplicate_initiations),
        ("stale", s.stale_initiations),
        ("retry_sent", s.retries_sent),
        ("invalid_token", s.invalid_tokens),
        ("token_reused", s.tokens_reused),
        ("version_mismatch", s.version_mismatches),
        ("carrier_refused", s.carrier_refusals),
        ("too_small", s.initials_too_small),
        ("busy_received", s.busy_received),
    ]
    .into_iter()
    .collect()
}

/// Why the MXP carrier set initiations aside, from its endpoint's counters.
fn mxp_limited(s: &EndpointStats) -> BTreeMap<&'static str, u64> {
    [
        ("queue_full", s.queue_full),
        ("displaced", s.displaced),
        ("connection_limit", s.connection_limit),
        ("address_limit", s.address_limit),
        ("key_limit", s.key_limit),
    ]
    .into_iter()
    .collect()
}
