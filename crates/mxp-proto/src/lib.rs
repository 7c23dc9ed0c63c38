//! The sans-IO protocol core of MXP Transport.
//!
//! Nothing in this crate touches a socket, spawns a thread or reads a clock:
//! callers pass time in (`now: Instant`) and move datagrams in and out as
//! bytes. That keeps every behaviour — loss, reordering, key rotation,
//! handshake floods — testable exactly and quickly in-process.

pub mod coding;
pub mod crypto;
pub mod frame;
pub mod message;
pub mod packet;
mod priority;
pub mod ranges;
pub mod recovery;
pub mod replay;
mod stream_id;

pub use priority::Band;
pub use stream_id::{Dir, Side, StreamId};
