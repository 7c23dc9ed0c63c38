//! The errors of the public API, at the bottom of the runtime: the carriers
//! turn their own failures into these, and every layer above passes them
//! on.

use std::io;

use mxp_proto::message::MessageError;
use mxp_proto::{ConnectionError, DatagramError};
use thiserror::Error;

/// Why a write failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The peer asked us to stop sending, with this application code.
    #[error("the peer stopped the stream (code {0})")]
    Stopped(u64),
    /// The stream was already finished or reset.
    #[error("the stream is closed for writing")]
    ClosedStream,
    /// A message larger than MXP's 16 MiB payload limit.
    #[error("message too large to encode")]
    TooLarge,
    /// The connection ended.
    #[error(transparent)]
    ConnectionLost(#[from] ConnectionError),
}

/// Why a read failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The peer abandoned the stream with this application code.
    #[error("the peer reset the stream (code {0})")]
    Reset(u64),
    /// The stream was stopped or already read to its end.
    #[error("the stream is closed for reading")]
    ClosedStream,
    /// The bytes are not a valid MXP message.
    #[error("invalid message: {0}")]
    Message(#[from] MessageError),
    /// The stream ended in the middle of a message.
    #[error("the stream ended inside a message")]
    Truncated,
    /// The connection ended.
    #[error(transparent)]
    ConnectionLost(#[from] ConnectionError),
}

impl From<WriteError> for io::Error {
    fn from(e: WriteError) -> io::Error {
        let kind = match e {
            WriteError::ConnectionLost(_) => io::ErrorKind::ConnectionAborted,
            _ => io::ErrorKind::BrokenPipe,
        };
        io::Error::new(kind, e)
    }
}

impl From<ReadError> for io::Error {
    fn from(e: ReadError) -> io::Error {
        let kind = match e {
            ReadError::Reset(_) => io::ErrorKind::ConnectionReset,
            ReadError::ConnectionLost(_) => io::ErrorKind::ConnectionAborted,
            ReadError::Message(_) | ReadError::Truncated => io::ErrorKind::InvalidData,
            ReadError::ClosedStream => io::ErrorKind::NotConnected,
        };
        io::Error::new(kind, e)
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CallError {
    /// The connection ended.
    #[error(transparent)]
    ConnectionLost(#[from] ConnectionError),
    /// Sending the request failed.
    #[error("sending the request: {0}")]
    Write(#[from] WriteError),
    /// Receiving the response failed.
    #[error("receiving the response: {0}")]
    Read(#[from] ReadError),
    /// The peer finished the stream without a response.
    #[error("the peer closed the call without responding")]
    NoResponse,
}

/// Why a datagram was not sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SendDatagramError {
    /// Too large, or the peer does not take datagrams.
    #[error(transparent)]
    Refused(#[from] DatagramError),
    /// The connection ended.
    #[error(transparent)]
    ConnectionLost(#[from] ConnectionError),
}

/// Why a connection could not be made.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The address is not `mxp://host:port` (or `host:port`).
    #[error("invalid address {0:?}: expected mxp://host:port[?quic=PORT]")]
    InvalidAddress(String),
    /// The host name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host that did not resolve.
        host: String,
        /// Why.
        source: io::Error,
    },
    /// The handshake failed: wrong server key, refused, timed out...
    #[error(transparent)]
    Handshake(#[from] ConnectionError),
    /// The first handshake message could not be built.
    #[error(transparent)]
    Start(#[from] mxp_proto::HandshakeError),
    /// The QUIC carrier could not be set up.
    #[error("QUIC: {0}")]
    Quic(String),
}
