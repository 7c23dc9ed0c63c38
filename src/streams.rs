//! Streams as the application sees them: [`SendStream`] implements
//! `AsyncWrite`, [`RecvStream`] implements `AsyncRead`, and both speak MXP
//! messages directly.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use mxp_proto::message::{Message, MessageDecoder, MessageError};
use mxp_proto::{Band, ConnectionError, StreamId};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::connection::Connection;

/// Why a write failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
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
pub enum ReadError {
    /// The peer abandoned the stream with this application code.
    #[error("the peer reset the stream (code {0})")]
    Reset(u64),
    /// The stream was stopped or already read to its end.
    #[error("the stream is closed for reading")]
    ClosedStream,
    /// The bytes are not a valid MXP message (or the stream ended in the
    /// middle of one).
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

/// Writes as much of `data` as flow control takes now, or registers the
/// task to be woken when credit arrives.
fn poll_write(
    conn: &Connection,
    cx: &mut Context<'_>,
    id: StreamId,
    data: &[u8],
) -> Poll<Result<usize, WriteError>> {
    let result = conn.with(|c, cs| match c.write_slice(id, data) {
        Ok(n) => Poll::Ready(Ok(n)),
        Err(mxp_proto::WriteError::Blocked) => {
            cs.wakers.writers.insert(id, cx.waker().clone());
            Poll::Pending
        }
        Err(mxp_proto::WriteError::Stopped(code)) => Poll::Ready(Err(WriteError::Stopped(code))),
        Err(mxp_proto::WriteError::ClosedStream) => Poll::Ready(Err(match c.error() {
            Some(e) => WriteError::ConnectionLost(e.clone()),
            None => WriteError::ClosedStream,
        })),
    });
    let poll = result.unwrap_or_else(|e| Poll::Ready(Err(e.into())));
    if matches!(poll, Poll::Ready(Ok(_))) {
        conn.wake_driver();
    }
    poll
}

/// Writes all of `data`, waiting for flow-control credit as needed.
pub(crate) async fn write_all(
    conn: &Connection,
    id: StreamId,
    mut data: &[u8],
) -> Result<(), WriteError> {
    while !data.is_empty() {
        let n = poll_fn(|cx| poll_write(conn, cx, id, data)).await?;
        data = &data[n..];
    }
    Ok(())
}

/// The sending half of a stream.
///
/// Dropping it without [`finish`](Self::finish) or [`reset`](Self::reset)
/// finishes it: everything written is still delivered.
#[derive(Debug)]
pub struct SendStream {
    conn: Connection,
    id: StreamId,
    done: bool,
    /// Reused encoding buffer for [`write_message`](Self::write_message).
    scratch: Vec<u8>,
}

impl SendStream {
    pub(crate) fn new(conn: Connection, id: StreamId) -> SendStream {
        SendStream {
            conn,
            id,
            done: false,
            scratch: Vec::new(),
        }
    }

    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Writes all of `data`, waiting for flow-control credit as needed.
    pub async fn write_all(&mut self, data: &[u8]) -> Result<(), WriteError> {
        write_all(&self.conn, self.id, data).await
    }

    /// Writes what flow control accepts now (at least one byte), waiting
    /// only if it accepts nothing. Returns how much was written.
    pub async fn write(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        poll_fn(|cx| poll_write(&self.conn, cx, self.id, data)).await
    }

    /// Encodes and writes one MXP message.
    pub async fn write_message(&mut self, message: &Message) -> Result<(), WriteError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let encoded = message.encode(&mut scratch);
        let result = match encoded {
            Ok(()) => write_all(&self.conn, self.id, &scratch).await,
            Err(_) => Err(WriteError::TooLarge),
        };
        self.scratch = scratch;
        result
    }

    /// Ends the stream: the peer reads everything written, then the end.
    pub fn finish(&mut self) -> Result<(), WriteError> {
        self.done = true;
        let id = self.id;
        let result = self.conn.with(|c, _| c.finish(id))?;
        result.map_err(|e| match e {
            mxp_proto::WriteError::Stopped(code) => WriteError::Stopped(code),
            _ => WriteError::ClosedStream,
        })?;
        self.conn.wake_driver();
        Ok(())
    }

    /// Finishes the stream (if not yet) and waits until the peer has
    /// acknowledged everything written and the end.
    pub async fn finished(&mut self) -> Result<(), WriteError> {
        if !self.done {
            self.finish()?;
        }
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

    /// Abandons the stream: unsent data is dropped and the peer's reads
    /// fail with `code`.
    pub fn reset(&mut self, code: u64) -> Result<(), WriteError> {
        self.done = true;
        let id = self.id;
        let result = self.conn.with(|c, _| c.reset(id, code))?;
        result.map_err(|_| WriteError::ClosedStream)?;
        self.conn.wake_driver();
        Ok(())
    }

    /// Moves the stream's outgoing data to another priority band.
    pub fn set_band(&mut self, band: Band) {
        let id = self.id;
        let _ = self.conn.with(|c, _| c.set_band(id, band));
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.finish();
        }
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write(&self.conn, cx, self.id, buf).map_err(io::Error::from)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written data is already the transport's; it sends without a flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(self.finish().map_err(io::Error::from))
    }
}

/// The receiving half of a stream.
///
/// Dropping it before reading to the end tells the peer to stop sending.
#[derive(Debug)]
pub struct RecvStream {
    conn: Connection,
    id: StreamId,
    done: bool,
    decoder: MessageDecoder,
}

impl RecvStream {
    pub(crate) fn new(conn: Connection, id: StreamId) -> RecvStream {
        RecvStream {
            conn,
            id,
            done: false,
            decoder: MessageDecoder::default(),
        }
    }

    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, ReadError>> {
        if self.done {
            return Poll::Ready(Ok(None));
        }
        let id = self.id;
        let result = self.conn.with(|c, cs| match c.read(id, max) {
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
        match &poll {
            // Reading frees flow-control credit the driver may announce.
            Poll::Ready(Ok(Some(_))) => self.conn.wake_driver(),
            Poll::Ready(Ok(None)) | Poll::Ready(Err(_)) => self.done = true,
            Poll::Pending => {}
        }
        poll
    }

    /// The next chunk of data, up to `max` bytes, without copying; `None`
    /// at the end of the stream.
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, ReadError> {
        poll_fn(|cx| self.poll_chunk(cx, max)).await
    }

    /// Reads to the end of the stream, failing beyond `limit` bytes.
    pub async fn read_to_end(&mut self, limit: usize) -> Result<Vec<u8>, ReadError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.read_chunk(usize::MAX).await? {
            if out.len() + chunk.len() > limit {
                return Err(ReadError::Message(MessageError::PayloadTooLarge(
                    (out.len() + chunk.len()) as u64,
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// The next MXP message; `None` at a clean end of the stream.
    pub async fn read_message(&mut self) -> Result<Option<Message>, ReadError> {
        loop {
            if let Some(m) = self.decoder.next_message()? {
                return Ok(Some(m));
            }
            match self.read_chunk(usize::MAX).await? {
                Some(chunk) => self.decoder.push(chunk),
                None if self.decoder.buffered() == 0 => return Ok(None),
                None => return Err(ReadError::Truncated),
            }
        }
    }

    /// Puts bytes already taken from the stream back in front of what
    /// [`read_message`](Self::read_message) reads next (after peeking at a
    /// stream to decide how to treat it).
    pub(crate) fn unread(&mut self, chunk: Bytes) {
        self.decoder.push(chunk);
    }

    /// Tells the peer to stop sending; unread data is discarded.
    pub fn stop(&mut self, code: u64) -> Result<(), ReadError> {
        self.done = true;
        let id = self.id;
        let result = self.conn.with(|c, _| c.stop(id, code))?;
        result.map_err(|_| ReadError::ClosedStream)?;
        self.conn.wake_driver();
        Ok(())
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.stop(0);
        }
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let max = buf.remaining();
        match self.poll_chunk(cx, max) {
            Poll::Ready(Ok(Some(chunk))) => {
                buf.put_slice(&chunk);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}
