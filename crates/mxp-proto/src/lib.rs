//! The sans-IO protocol core of MXP Transport.
//!
//! Nothing in this crate touches a socket, spawns a thread or reads a clock:
//! callers pass time in (`now: Instant`) and move datagrams in and out as
//! bytes. That keeps every behaviour — loss, reordering, key rotation,
//! handshake floods — testable exactly and quickly in-process.

#![warn(missing_docs)]

/// Entry points for the micro-benchmarks (`--features test-support`).
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub mod benching;
pub mod coding;
pub mod config;
mod connection;
pub mod crypto;
mod datagrams;
mod endpoint;
pub mod error;
pub mod frame;
/// Entry points for the fuzz targets and the corpus replay
/// (`--features test-support`).
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod histogram;
pub mod message;
pub mod packet;
mod priority;
/// ACK range sets: public for the micro-benchmarks only.
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub mod ranges;
#[cfg(not(feature = "test-support"))]
#[allow(unreachable_pub)]
mod ranges;
mod recovery;
mod replay;
mod scheduler;
mod stream_id;
mod streams;
#[cfg(test)]
mod test_support;
pub mod transport_params;

/// Tracing target of every handshake event (initiations, refusals,
/// retries, completion), so one filter directive
/// (`mxp_proto::handshake=debug`) turns them all up.
pub const HANDSHAKE: &str = "mxp_proto::handshake";

pub use config::{EndpointConfig, RetryPolicy, ServerConfig, TransportConfig};
#[doc(hidden)]
pub use connection::INJECT_MAX;
pub use connection::{Connection, ConnectionStats, Event, PeerLimitStats, Transmit};
pub use crypto::{HandshakeError, Keypair, PublicKey};
pub use datagrams::{DATAGRAM_ENTRY_COST, DatagramError, DatagramStats};
pub use endpoint::{
    ConnectionHandle, Endpoint, EndpointStats, HandshakeDone, HandshakeJob, Incoming, Refusal,
};
pub use error::{ConnectionError, TransportError, TransportErrorCode};
pub use histogram::LatencyHistogram;
pub use packet::BusyReason;
pub use packet::keys::KeyRotation;
pub use priority::Band;
pub use scheduler::BandStats;
pub use stream_id::{Dir, Side, StreamId};
pub use streams::{FlowStats, OpenError, ReadError, StreamEvent, WriteError};
