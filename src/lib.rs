#![doc = include_str!("../README.md")]

pub use mxp_proto as proto;
pub use mxp_sim as sim;

pub mod relay;
mod timer;
