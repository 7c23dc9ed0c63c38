//! The MXP carrier: the protocol core on a UDP socket, run by one driver
//! task per endpoint.

pub(crate) mod conn;
mod contract;
pub(crate) mod driver;
pub(crate) mod endpoint;
pub(crate) mod streams;
mod udp;
