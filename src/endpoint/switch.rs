//! The deployment switch: which carriers take new sessions, and the
//! drains of those that stop.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{Instrument, info, info_span, warn};

use super::Endpoint;
use crate::carrier::{Carrier, Carriers};
use crate::link::LinkEndpoint;
use crate::lock;

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
pub(super) struct Drain {
    carrier: Carrier,
    deadline: Instant,
    /// Cancels the scheduled close when the carrier is accepted again.
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
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
        for carrier in Carrier::ALL {
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

    pub(super) fn apply_carriers(&self, carriers: Carriers) {
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
        if let Some(e) = self.carrier_endpoint(carrier) {
            e.go_away_all();
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
        Carrier::ALL
            .into_iter()
            .filter(|&c| !carriers.accepts(c))
            .inspect(|&c| self.drain(c, timeout))
            .collect()
    }

    pub(super) fn close_carrier(&self, carrier: Carrier, code: u64, reason: &[u8]) {
        if let Some(e) = self.carrier_endpoint(carrier) {
            e.close_all(code, reason);
        }
    }

    pub(super) fn connections(&self, carrier: Carrier) -> usize {
        self.carrier_endpoint(carrier)
            .map_or(0, LinkEndpoint::connection_count)
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
}
