//! Loss recovery building blocks: RTT estimation, congestion control and pacing.

mod congestion;
mod pacing;
mod rtt;

pub use congestion::{Controller, NewReno};
pub use pacing::Pacer;
pub use rtt::RttEstimator;
