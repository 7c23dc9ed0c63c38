//! Every connection of a QUIC endpoint, live and gone: what drains and
//! closes act on, and what the metrics add up. quinn keeps no totals
//! across connections, so the book keeps the counters of closed ones.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mxp_proto::ConnectionStats;

use super::QuicConn;
use crate::carrier::contract::CarrierConn;
use crate::stats::CarrierTotals;

/// Handshake outcomes of the QUIC carrier, as `mxp_handshakes_total`
/// labels them.
pub(crate) mod handshake {
    /// A node accepted an authenticated client.
    pub(crate) const ACCEPTED: &str = "accepted";
    /// A client authenticated the node.
    pub(crate) const COMPLETED: &str = "completed";
    /// The client's Noise message did not decrypt: wrong server key.
    pub(crate) const SERVER_KEY_MISMATCH: &str = "server_key_mismatch";
    /// The client's key is not on the allow-list.
    pub(crate) const CLIENT_NOT_ALLOWED: &str = "client_not_allowed";
    /// The node does not accept QUIC now (the deployment switch).
    pub(crate) const CARRIER_REFUSED: &str = "carrier_refused";
    /// The TLS handshake or the identity exchange failed otherwise.
    pub(crate) const FAILED: &str = "failed";
    /// The identity exchange did not finish in time.
    pub(crate) const TIMED_OUT: &str = "timed_out";
    /// The attempt was asked to prove its address (quinn's Retry).
    pub(crate) const RETRY_SENT: &str = "retry_sent";
    /// A copy of another address's attempt (a captured Initial).
    pub(crate) const REPLAYED: &str = "replayed";
    /// Every outcome, so each is exposed (at zero) from the start.
    pub(crate) const ALL: [&str; 9] = [
        ACCEPTED,
        COMPLETED,
        SERVER_KEY_MISMATCH,
        CLIENT_NOT_ALLOWED,
        CARRIER_REFUSED,
        FAILED,
        TIMED_OUT,
        RETRY_SENT,
        REPLAYED,
    ];
}

#[derive(Debug, Default)]
pub(crate) struct Book {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    live: HashMap<usize, QuicConn>,
    established: u64,
    /// Counters of connections already closed.
    retired: ConnectionStats,
    ended: BTreeMap<&'static str, u64>,
    handshakes: BTreeMap<&'static str, u64>,
    limited: BTreeMap<&'static str, u64>,
}

impl Book {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    /// Counts a handshake outcome.
    pub(super) fn handshake(&self, result: &'static str) {
        *self.lock().handshakes.entry(result).or_default() += 1;
    }

    /// Counts an attempt set aside (see `guard::reason`).
    pub(super) fn limited(&self, reason: &'static str) {
        *self.lock().limited.entry(reason).or_default() += 1;
    }

    /// Adds an established connection; it leaves the book when it closes.
    pub(super) fn track(self: &Arc<Self>, conn: &QuicConn) {
        let id = conn.inner().stable_id();
        {
            let mut state = self.lock();
            state.established += 1;
            state.live.insert(id, conn.clone());
        }
        let (book, conn) = (self.clone(), conn.clone());
        tokio::spawn(async move {
            let reason = conn.closed().await;
            tracing::info!(parent: conn.span(), %reason, "connection closed");
            let mut state = book.lock();
            state.live.remove(&id);
            let stats = conn.stats();
            state.retired.accumulate(&stats);
            *state.ended.entry(reason.kind()).or_default() += 1;
        });
    }

    /// The live connections.
    pub(super) fn live(&self) -> Vec<QuicConn> {
        self.lock().live.values().cloned().collect()
    }

    pub(super) fn live_count(&self) -> usize {
        self.lock().live.len()
    }

    /// Totals over every connection so far, for the metrics.
    pub(super) fn totals(&self) -> CarrierTotals {
        let state = self.lock();
        let mut counters = state.retired;
        let mut streams_active = 0;
        for conn in state.live.values() {
            let stats = conn.stats();
            counters.accumulate(&stats);
            streams_active += stats.streams_active;
        }
        let mut handshakes: BTreeMap<_, _> = handshake::ALL.iter().map(|&r| (r, 0)).collect();
        handshakes.extend(state.handshakes.iter().map(|(&k, &v)| (k, v)));
        let mut limited: BTreeMap<_, _> =
            super::guard::reason::ALL.iter().map(|&r| (r, 0)).collect();
        limited.extend(state.limited.iter().map(|(&k, &v)| (k, v)));
        CarrierTotals {
            active: state.live.len() as u64,
            established: state.established,
            streams_active,
            counters,
            ended: state.ended.clone(),
            handshakes,
            limited,
            ..CarrierTotals::default()
        }
    }
}

/// One open QUIC stream, shared by its two halves: the stream counts as
/// open while the application holds either.
#[derive(Debug)]
pub(crate) struct OpenStream(Arc<AtomicU64>);

impl OpenStream {
    pub(crate) fn new(count: &Arc<AtomicU64>) -> Arc<OpenStream> {
        count.fetch_add(1, Ordering::Relaxed);
        Arc::new(OpenStream(count.clone()))
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
