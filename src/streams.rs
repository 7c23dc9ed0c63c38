//! Streams as the application sees them, on either carrier:
//! [`SendStream`] implements `AsyncWrite`, [`RecvStream`] implements
//! `AsyncRead`, and both speak MXP messages directly.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use mxp_proto::Band;
use mxp_proto::message::{Message, MessageDecoder, MessageError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{ReadError, WriteError};
use crate::link::{LinkRecv, LinkSend};
use crate::stats::MessageErrors;

/// The sending half of a stream.
///
/// Dropping it without [`finish`](Self::finish) or [`reset`](Self::reset)
/// finishes it: everything written is still delivered. It implements
/// tokio's `AsyncWrite` too. A write waits while the peer's flow-control
/// window is full: that wait is the backpressure.
///
/// A token stream, one MXP message per token, in the Streaming band:
///
/// ```no_run
/// # async fn example(conn: mxp::Connection) -> Result<(), Box<dyn std::error::Error>> {
/// use mxp::proto::Band;
/// use mxp::proto::message::{Message, MessageType};
///
/// let mut tokens = conn.open_uni(Band::Streaming).await?;
/// for token in ["Hello", ",", " world"] {
///     tokens.write_message(&Message::new(MessageType::StreamChunk, token)).await?;
/// }
/// tokens.write_message(&Message::new(MessageType::StreamClose, "")).await?;
/// tokens.finish()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SendStream {
    inner: LinkSend,
    /// The band its data is sent in now.
    band: Band,
    done: bool,
    /// Reused encoding buffer for [`write_message`](Self::write_message).
    scratch: Vec<u8>,
}

impl SendStream {
    /// An MXP stream the core already sends in `band`.
    pub(crate) fn new(inner: LinkSend, band: Band) -> SendStream {
        SendStream {
            inner,
            band,
            done: false,
            scratch: Vec::new(),
        }
    }

    /// The carrier this stream rides on.
    pub fn carrier(&self) -> crate::Carrier {
        self.inner.carrier()
    }

    fn poll_write_inner(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<Result<usize, WriteError>> {
        self.inner.poll_write(cx, data)
    }

    /// Writes what flow control accepts now (at least one byte), waiting
    /// only if it accepts nothing. Returns how much was written.
    pub async fn write(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        poll_fn(|cx| self.poll_write_inner(cx, data)).await
    }

    /// Writes all of `data`, waiting for flow-control credit as needed.
    pub async fn write_all(&mut self, mut data: &[u8]) -> Result<(), WriteError> {
        while !data.is_empty() {
            let n = self.write(data).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Encodes and writes one MXP message, in its type's band: a node's
    /// `Response` on a stream the client opened leaves as Critical, an
    /// `Event` as Background, whatever band the stream had before.
    pub async fn write_message(&mut self, message: &Message) -> Result<(), WriteError> {
        if message.band() != self.band {
            self.set_band(message.band());
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let result = match message.encode(&mut scratch) {
            Ok(()) => self.write_all(&scratch).await,
            Err(_) => Err(WriteError::TooLarge),
        };
        self.scratch = scratch;
        result
    }

    /// Ends the stream: the peer reads everything written, then the end.
    pub fn finish(&mut self) -> Result<(), WriteError> {
        self.done = true;
        self.inner.finish()
    }

    /// Finishes the stream (if not yet) and waits until the peer has
    /// acknowledged everything written and the end.
    pub async fn finished(&mut self) -> Result<(), WriteError> {
        if !self.done {
            self.finish()?;
        }
        self.inner.finished().await
    }

    /// Abandons the stream: unsent data is dropped and the peer's reads
    /// fail with `code`.
    pub fn reset(&mut self, code: u64) -> Result<(), WriteError> {
        self.done = true;
        self.inner.reset(code)
    }

    /// Moves the stream's outgoing data to another priority band.
    pub fn set_band(&mut self, band: Band) {
        self.band = band;
        self.inner.set_band(band);
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
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_inner(cx, buf).map_err(io::Error::from)
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
/// It implements tokio's `AsyncRead` too.
///
/// Reading the messages of every one-way stream a peer opens:
///
/// ```no_run
/// # async fn example(conn: mxp::Connection) -> Result<(), Box<dyn std::error::Error>> {
/// while let Ok(mut stream) = conn.accept_uni().await {
///     while let Some(message) = stream.read_message().await? {
///         println!("{:?}: {} bytes", message.kind, message.payload.len());
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RecvStream {
    inner: LinkRecv,
    done: bool,
    decoder: MessageDecoder,
    /// Bytes taken from an MXP stream that still count against the
    /// connection's receive window: the decoder's, or the last chunk this
    /// stream handed out. So what a reader holds stays within what the
    /// node advertised (the QUIC carrier credits bytes as they are read).
    held: u64,
    /// Where a message the codec refuses is counted.
    message_errors: Option<Arc<MessageErrors>>,
}

impl RecvStream {
    pub(crate) fn new(inner: LinkRecv) -> RecvStream {
        RecvStream {
            inner,
            done: false,
            decoder: MessageDecoder::default(),
            held: 0,
            message_errors: None,
        }
    }

    /// Refuses messages with a payload over `max_payload` and counts
    /// every message refused in `errors`.
    pub(crate) fn with_message_rules(
        mut self,
        errors: Arc<MessageErrors>,
        max_payload: usize,
    ) -> RecvStream {
        self.message_errors = Some(errors);
        self.decoder = MessageDecoder::with_limit(max_payload);
        self
    }

    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, ReadError>> {
        if self.done {
            return Poll::Ready(Ok(None));
        }
        // Whatever the decoder no longer buffers was let go of.
        let keep = (self.decoder.buffered() as u64).min(self.held);
        let poll = self.inner.poll_chunk(cx, max, self.held - keep);
        self.held = keep;
        if let Poll::Ready(Ok(Some(chunk))) = &poll {
            self.held += chunk.len() as u64;
        }
        if let Poll::Ready(Ok(None) | Err(_)) = poll {
            self.done = true;
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
    /// Bad input is refused with a typed error and counted in
    /// `mxp_message_errors_total`.
    pub async fn read_message(&mut self) -> Result<Option<Message>, ReadError> {
        let result = self.next_message().await;
        if let Err(e) = &result {
            // Once per stream: the decoder repeats its error if asked again.
            if let Some(errors) = self.message_errors.take() {
                match e {
                    ReadError::Message(e) => errors.count(e.kind()),
                    // The stream ended inside a message: the codec's truncation.
                    ReadError::Truncated => errors.count("truncated"),
                    _ => {}
                }
            }
        }
        result
    }

    async fn next_message(&mut self) -> Result<Option<Message>, ReadError> {
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
        self.inner.stop(code)
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        self.inner.release(std::mem::take(&mut self.held));
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
