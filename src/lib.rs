//! MXP Transport: a secure, low-latency UDP transport for agent-to-agent
//! traffic.
//!
//! This crate is what applications depend on. Today it re-exports the
//! sans-IO protocol core ([`proto`]) and the deterministic test network
//! ([`sim`]); the tokio runtime, the QUIC fallback carrier and the operator
//! tooling are built on top of them.

pub use mxp_proto as proto;
pub use mxp_sim as sim;
