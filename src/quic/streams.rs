//! Stream primitives of the QUIC carrier: quinn's streams, with their
//! errors turned into the runtime's and their band into a quinn priority.
//! The public `SendStream` and `RecvStream` wrap them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use mxp_proto::Band;

use super::{OpenStream, connection_error, priority, read_error, write_error};
use crate::carrier::contract::{CarrierRecv, CarrierSend};
use crate::error::{ReadError, WriteError};

/// A stream code as quinn takes it (codes beyond its range saturate).
fn var(code: u64) -> quinn::VarInt {
    quinn::VarInt::from_u64(code).unwrap_or(quinn::VarInt::MAX)
}

/// The sending half of a QUIC stream; counts the stream as open while held.
#[derive(Debug)]
pub(crate) struct QuicSend {
    stream: quinn::SendStream,
    _open: Arc<OpenStream>,
}

impl QuicSend {
    /// `stream`, sending in `band`.
    pub(crate) fn new(stream: quinn::SendStream, open: Arc<OpenStream>, band: Band) -> QuicSend {
        let _ = stream.set_priority(priority(band));
        QuicSend {
            stream,
            _open: open,
        }
    }
}

impl CarrierSend for QuicSend {
    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<Result<usize, WriteError>> {
        Pin::new(&mut self.stream)
            .poll_write(cx, data)
            .map_err(write_error)
    }

    fn finish(&mut self) -> Result<(), WriteError> {
        self.stream.finish().map_err(|_| WriteError::ClosedStream)
    }

    /// Waits until the peer has acknowledged everything and the end.
    async fn finished(&mut self) -> Result<(), WriteError> {
        match self.stream.stopped().await {
            Ok(None) => Ok(()),
            Ok(Some(code)) => Err(WriteError::Stopped(code.into_inner())),
            Err(quinn::StoppedError::ConnectionLost(e)) => {
                Err(WriteError::ConnectionLost(connection_error(e)))
            }
            Err(_) => Err(WriteError::ClosedStream),
        }
    }

    fn reset(&mut self, code: u64) -> Result<(), WriteError> {
        self.stream
            .reset(var(code))
            .map_err(|_| WriteError::ClosedStream)
    }

    fn set_band(&mut self, band: Band) {
        let _ = self.stream.set_priority(priority(band));
    }
}

/// The receiving half of a QUIC stream; counts the stream as open while held.
#[derive(Debug)]
pub(crate) struct QuicRecv {
    stream: quinn::RecvStream,
    _open: Arc<OpenStream>,
}

impl QuicRecv {
    pub(crate) fn new(stream: quinn::RecvStream, open: Arc<OpenStream>) -> QuicRecv {
        QuicRecv {
            stream,
            _open: open,
        }
    }
}

impl CarrierRecv for QuicRecv {
    /// The next in-order bytes (at most `max`), `None` at the end. quinn
    /// credits them to the peer as they are read: nothing to release.
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        _release: u64,
    ) -> Poll<Result<Option<Bytes>, ReadError>> {
        let chunk = std::pin::pin!(self.stream.read_chunk(max, true));
        chunk.poll(cx).map(|r| match r {
            Ok(c) => Ok(c.map(|c| c.bytes)),
            Err(e) => Err(read_error(e)),
        })
    }

    fn stop(&mut self, code: u64) -> Result<(), ReadError> {
        self.stream
            .stop(var(code))
            .map_err(|_| ReadError::ClosedStream)
    }
}
