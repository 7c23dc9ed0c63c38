#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub use mxp_proto as proto;
pub use mxp_sim as sim;

mod connection;
mod driver;
pub mod echo;
mod endpoint;
pub mod relay;
mod streams;
mod timer;
mod udp;

pub use connection::{CallError, Connection, SendDatagramError};
pub use endpoint::{ConnectError, Endpoint, resolve_address};
pub use streams::{ReadError, RecvStream, SendStream, WriteError};
