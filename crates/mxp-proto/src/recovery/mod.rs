//! Loss recovery building blocks: RTT estimation, congestion control and pacing.

mod congestion;
mod pacing;
mod rtt;

pub(crate) use congestion::{Controller, NewReno};
pub(crate) use pacing::Pacer;
pub(crate) use rtt::RttEstimator;
