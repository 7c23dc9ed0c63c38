#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub use mxp_proto as proto;
#[cfg(feature = "sim")]
pub use mxp_sim as sim;

#[cfg(feature = "admin")]
pub mod admin;
pub mod attack;
pub mod bench;
pub mod capture;
mod carrier;
mod connection;
pub mod echo;
mod endpoint;
mod error;
mod handshake_workers;
mod link;
#[cfg(feature = "admin")]
mod log_filter;
pub mod metrics;
mod mxp;
mod quic;
pub mod relay;
mod session;
mod stats;
mod streams;
mod timer;

pub use carrier::{Carrier, CarrierMode, Carriers};
pub use connection::Connection;
pub use endpoint::{
    ConnectionsPerCarrier, DEFAULT_DRAIN_TIMEOUT, DrainStatus, Endpoint, Options, Status,
    resolve_address,
};
pub use quic::quic_settings;

/// The driver's microsecond timer, for `examples/timer_precision.rs`; not
/// a stable API.
#[doc(hidden)]
pub mod benching {
    pub use crate::timer::Timer;
}
pub use error::{CallError, ConnectError, ReadError, SendDatagramError, WriteError};
pub use streams::{RecvStream, SendStream};

/// Locks `m` even if a panic poisoned it: what the runtime's mutexes guard
/// stays consistent through a panic (plain values, replaced whole).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Application close code of connections closed at a drain deadline.
pub const DRAINED: u64 = 0x4d52;
