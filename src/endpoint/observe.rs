//! What an endpoint shows of itself: totals, connection stats, captures,
//! and what each of its connections takes from it.

use std::sync::Arc;

use mxp_proto::EndpointStats;

use super::Endpoint;
use crate::capture::{CaptureError, CaptureStatus, CaptureSummary};
use crate::quic::{self, QuicEndpoint};
use crate::session::FromEndpoint;
use crate::stats::{CallDurations, CarrierTotals, ConnectionInfo, MessageErrors};

impl Endpoint {
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
        self.carrier_endpoints()
            .flat_map(|e| e.connection_infos())
            .collect()
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
}
