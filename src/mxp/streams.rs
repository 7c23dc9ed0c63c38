//! Stream primitives of the MXP carrier; the public `SendStream` and
//! `RecvStream` wrap them.

use std::future::poll_fn;
use std::task::{Context, Poll};

use bytes::Bytes;
use mxp_proto::{Band, StreamId};

use super::conn::MxpConn;
use crate::carrier::contract::{CarrierRecv, CarrierSend};
use crate::error::{ReadError, WriteError};

/// The sending half of an MXP stream.
#[derive(Debug)]
pub(crate) struct MxpSend {
    conn: MxpConn,
    id: StreamId,
}

impl MxpSend {
    pub(crate) fn new(conn: MxpConn, id: StreamId) -> MxpSend {
        MxpSend { conn, id }
    }
}

impl CarrierSend for MxpSend {
    /// Writes as much of `data` as flow control takes now, or registers the
    /// task to be woken when credit arrives.
    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<Result<usize, WriteError>> {
        let id = self.id;
        let result = self.conn.with(|c, cs| match c.write_slice(id, data) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(mxp_proto::WriteError::Blocked) => {
                cs.wakers.writers.insert(id, cx.waker().clone());
                Poll::Pending
            }
            Err(mxp_proto::WriteError::Stopped(code)) => {
                Poll::Ready(Err(WriteError::Stopped(code)))
            }
            Err(mxp_proto::WriteError::ClosedStream) => Poll::Ready(Err(match c.error() {
                Some(e) => WriteError::ConnectionLost(e.clone()),
                None => WriteError::ClosedStream,
            })),
        });
        let poll = result.unwrap_or_else(|e| Poll::Ready(Err(e.into())));
        if matches!(poll, Poll::Ready(Ok(_))) {
            self.conn.wake_driver();
        }
        poll
    }

    fn finish(&mut self) -> Result<(), WriteError> {
        let id = self.id;
        let result = self.conn.with(|c, _| c.finish(id))?;
        result.map_err(|e| match e {
            mxp_proto::WriteError::Stopped(code) => WriteError::Stopped(code),
            _ => WriteError::ClosedStream,
        })?;
        // Nothing more comes on this stream: send now rather than hand the
        // packet to the driver (a call's request, a handler's response).
        self.conn.transmit_now();
        Ok(())
    }

    fn reset(&mut self, code: u64) -> Result<(), WriteError> {
        let id = self.id;
        let result = self.conn.with(|c, _| c.reset(id, code))?;
        result.map_err(|_| WriteError::ClosedStream)?;
        self.conn.wake_driver();
        Ok(())
    }

    fn set_band(&mut self, band: Band) {
        let id = self.id;
        let _ = self.conn.with(|c, _| c.set_band(id, band));
    }

    /// Waits until the peer has acknowledged everything and the end.
    async fn finished(&mut self) -> Result<(), WriteError> {
        let id = self.id;
        poll_fn(|cx| {
            let result = self.conn.with(|c, cs| {
                if c.is_send_done(id) {
                    return Poll::Ready(Ok(()));
                }
                if let Some(e) = c.error() {
                    return Poll::Ready(Err(WriteError::ConnectionLost(e.clone())));
                }
                cs.wakers.finishers.insert(id, cx.waker().clone());
                Poll::Pending
            });
            result.unwrap_or_else(|e| Poll::Ready(Err(e.into())))
        })
        .await
    }
}

/// The receiving half of an MXP stream.
#[derive(Debug)]
pub(crate) struct MxpRecv {
    conn: MxpConn,
    id: StreamId,
}

impl MxpRecv {
    pub(crate) fn new(conn: MxpConn, id: StreamId) -> MxpRecv {
        MxpRecv { conn, id }
    }
}

impl CarrierRecv for MxpRecv {
    /// The next in-order bytes (at most `max`), `None` at the end. What it
    /// returns stays charged to the connection window until handed back
    /// as `release` (with a later call) or by [`release`](Self::release).
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        release: u64,
    ) -> Poll<Result<Option<Bytes>, ReadError>> {
        let id = self.id;
        let result = self.conn.with(|c, cs| match c.read_held(id, max, release) {
            Ok(chunk) => Poll::Ready(Ok(chunk)),
            Err(mxp_proto::ReadError::Blocked) => match c.error() {
                Some(e) => Poll::Ready(Err(ReadError::ConnectionLost(e.clone()))),
                None => {
                    cs.wakers.readers.insert(id, cx.waker().clone());
                    Poll::Pending
                }
            },
            Err(mxp_proto::ReadError::Reset(code)) => Poll::Ready(Err(ReadError::Reset(code))),
            Err(mxp_proto::ReadError::ClosedStream) => Poll::Ready(Err(ReadError::ClosedStream)),
        });
        let poll = result.unwrap_or_else(|e| Poll::Ready(Err(e.into())));
        if let Poll::Ready(Ok(Some(_))) = poll {
            // Reading frees flow-control credit the driver may announce.
            self.conn.wake_driver();
        }
        poll
    }

    /// Hands back the window credit of `n` bytes taken with `poll_chunk`.
    fn release(&self, n: u64) {
        if n > 0 && self.conn.with(|c, _| c.release_held(n)).is_ok() {
            self.conn.wake_driver();
        }
    }

    fn stop(&mut self, code: u64) -> Result<(), ReadError> {
        let id = self.id;
        let result = self.conn.with(|c, _| c.stop(id, code))?;
        result.map_err(|_| ReadError::ClosedStream)?;
        self.conn.wake_driver();
        Ok(())
    }
}
