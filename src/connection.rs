//! An MXP connection as the application sees it.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use mxp_proto::message::Message;
use mxp_proto::{
    Band, ConnectionError, ConnectionHandle, ConnectionStats, DatagramError, Dir, OpenError,
    PublicKey, StreamId,
};
use thiserror::Error;

use crate::driver::{ConnState, Shared, dir_index};
use crate::streams::{ReadError, RecvStream, SendStream, WriteError};

/// An established MXP connection. Cheap to clone; the connection closes
/// when the last clone and every stream of it are dropped.
///
/// ```no_run
/// # async fn example(conn: mxp::Connection) -> Result<(), Box<dyn std::error::Error>> {
/// use mxp::proto::message::{Message, MessageType};
///
/// // A call: one request, one response, in the Critical band.
/// let response = conn.call(&Message::new(MessageType::Call, "hello")).await?;
/// assert_eq!(response.kind, MessageType::Response);
///
/// // A one-way message rides in its type's band (an event: Background).
/// conn.send_message(&Message::new(MessageType::Event, "happened")).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Connection(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    handle: ConnectionHandle,
    remote: SocketAddr,
    peer_key: PublicKey,
    /// One long-lived unidirectional stream per band for one-way messages,
    /// serialised so concurrent senders never interleave two messages.
    lanes: [tokio::sync::Mutex<Option<StreamId>>; Band::COUNT],
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        if let Some(cs) = state.conns.get_mut(&self.handle) {
            if cs.drained {
                state.conns.remove(&self.handle);
            } else {
                cs.detached = true;
                if let Some(c) = state.proto.connection(self.handle) {
                    c.close(Instant::now(), 0, Bytes::new());
                }
            }
        }
        drop(guard);
        self.shared.wake_driver();
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
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

impl Connection {
    pub(crate) fn new(shared: Arc<Shared>, handle: ConnectionHandle) -> Option<Connection> {
        let (remote, peer_key) = {
            let state = shared.lock();
            let c = state.proto.connection_ref(handle)?;
            (c.remote_address(), c.peer_key()?)
        };
        Some(Connection(Arc::new(Inner {
            shared,
            handle,
            remote,
            peer_key,
            lanes: Default::default(),
        })))
    }

    /// The peer's address when the connection was established.
    pub fn remote_address(&self) -> SocketAddr {
        self.0.remote
    }

    /// The peer's authenticated static public key.
    pub fn peer_key(&self) -> PublicKey {
        self.0.peer_key
    }

    /// Counters and current state: RTT, congestion window, loss, streams,
    /// flow control, per-band scheduler counts.
    pub fn stats(&self) -> ConnectionStats {
        self.with(|c, _| c.stats()).unwrap_or_default()
    }

    /// Runs `f` on the core connection and this connection's runtime
    /// state, or fails with why the connection is gone.
    pub(crate) fn with<R>(
        &self,
        f: impl FnOnce(&mut mxp_proto::Connection, &mut ConnState) -> R,
    ) -> Result<R, ConnectionError> {
        let mut guard = self.0.shared.lock();
        let state = &mut *guard;
        let error = state.error_of(self.0.handle);
        match (
            state.proto.connection(self.0.handle),
            state.conns.get_mut(&self.0.handle),
        ) {
            (Some(conn), Some(cs)) => Ok(f(conn, cs)),
            _ => Err(error),
        }
    }

    /// Tells the driver there is something to send.
    pub(crate) fn wake_driver(&self) {
        self.0.shared.wake_driver();
    }

    /// Closes the connection with an application code and reason. Data not
    /// yet acknowledged is abandoned; the peer gets
    /// [`ConnectionError::ApplicationClosed`].
    pub fn close(&self, code: u64, reason: &[u8]) {
        let _ = self.with(|c, _| c.close(Instant::now(), code, Bytes::copy_from_slice(reason)));
        self.wake_driver();
    }

    /// Waits until the connection ends and says why.
    pub async fn closed(&self) -> ConnectionError {
        poll_fn(|cx| {
            let result = self.with(|c, cs| match c.error() {
                Some(e) => Poll::Ready(e.clone()),
                None => {
                    cs.wakers.closed.push(cx.waker().clone());
                    Poll::Pending
                }
            });
            result.unwrap_or_else(Poll::Ready)
        })
        .await
    }

    fn poll_open(
        &self,
        cx: &mut Context<'_>,
        dir: Dir,
        band: Band,
    ) -> Poll<Result<StreamId, ConnectionError>> {
        let result = self.with(|c, cs| {
            if let Some(e) = c.error() {
                return Poll::Ready(Err(e.clone()));
            }
            match c.open(dir, band) {
                Ok(id) => Poll::Ready(Ok(id)),
                Err(OpenError::Limit) => {
                    cs.wakers.open[dir_index(dir)].push(cx.waker().clone());
                    Poll::Pending
                }
            }
        });
        result.unwrap_or_else(|e| Poll::Ready(Err(e)))
    }

    /// Opens a bidirectional stream whose data is sent in `band`, waiting
    /// if the peer's stream limit is reached.
    pub async fn open_bi(&self, band: Band) -> Result<(SendStream, RecvStream), ConnectionError> {
        let id = poll_fn(|cx| self.poll_open(cx, Dir::Bi, band)).await?;
        Ok((
            SendStream::new(self.clone(), id),
            RecvStream::new(self.clone(), id),
        ))
    }

    /// Opens a unidirectional stream whose data is sent in `band`.
    pub async fn open_uni(&self, band: Band) -> Result<SendStream, ConnectionError> {
        let id = poll_fn(|cx| self.poll_open(cx, Dir::Uni, band)).await?;
        Ok(SendStream::new(self.clone(), id))
    }

    fn poll_accept(
        &self,
        cx: &mut Context<'_>,
        dir: Dir,
    ) -> Poll<Result<StreamId, ConnectionError>> {
        let result = self.with(|c, cs| {
            if let Some(id) = c.accept(dir) {
                return Poll::Ready(Ok(id));
            }
            if let Some(e) = c.error() {
                return Poll::Ready(Err(e.clone()));
            }
            cs.wakers.accept[dir_index(dir)].push(cx.waker().clone());
            Poll::Pending
        });
        result.unwrap_or_else(|e| Poll::Ready(Err(e)))
    }

    /// Waits for the peer to open a bidirectional stream.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        let id = poll_fn(|cx| self.poll_accept(cx, Dir::Bi)).await?;
        Ok((
            SendStream::new(self.clone(), id),
            RecvStream::new(self.clone(), id),
        ))
    }

    /// Waits for the peer to open a unidirectional stream.
    pub async fn accept_uni(&self) -> Result<RecvStream, ConnectionError> {
        let id = poll_fn(|cx| self.poll_accept(cx, Dir::Uni)).await?;
        Ok(RecvStream::new(self.clone(), id))
    }

    /// Sends `request` on a new stream in its band (Critical for a call)
    /// and waits for the one message that answers it.
    pub async fn call(&self, request: &Message) -> Result<Message, CallError> {
        let exchange = async {
            let (mut send, mut recv) = self.open_bi(request.band()).await?;
            send.write_message(request).await?;
            send.finish()?;
            recv.read_message().await?.ok_or(CallError::NoResponse)
        };
        // However the loss of the connection surfaced (opening, writing or
        // reading), report it the same way.
        exchange.await.map_err(|e| match e {
            CallError::Write(WriteError::ConnectionLost(e))
            | CallError::Read(ReadError::ConnectionLost(e)) => CallError::ConnectionLost(e),
            other => other,
        })
    }

    /// Sends a one-way message (an event, a heartbeat, an acknowledgement)
    /// reliably, in the band of its type. Messages of one band arrive in
    /// the order they were sent, on one long-lived stream the peer accepts
    /// with [`accept_uni`](Self::accept_uni).
    pub async fn send_message(&self, message: &Message) -> Result<(), WriteError> {
        let band = message.band();
        let mut lane = self.0.lanes[band.index()].lock().await;
        let id = match *lane {
            Some(id) => id,
            None => {
                let id = poll_fn(|cx| self.poll_open(cx, Dir::Uni, band))
                    .await
                    .map_err(WriteError::ConnectionLost)?;
                *lane = Some(id);
                id
            }
        };
        let mut encoded = Vec::with_capacity(message.encoded_len());
        message
            .encode(&mut encoded)
            .map_err(|_| WriteError::TooLarge)?;
        crate::streams::write_all(self, id, &encoded).await
    }

    /// Sends an unreliable datagram in `band`: never retransmitted, dropped
    /// (and counted) if the send queue is full.
    pub fn send_datagram(&self, data: Bytes, band: Band) -> Result<(), SendDatagramError> {
        let result = self.with(|c, _| c.send_datagram(data, band))?;
        result?;
        self.wake_driver();
        Ok(())
    }

    /// Largest datagram payload the peer accepts.
    pub fn max_datagram_size(&self) -> usize {
        self.with(|c, _| c.max_datagram_size()).unwrap_or(0)
    }

    /// Waits for the next datagram.
    pub async fn read_datagram(&self) -> Result<Bytes, ConnectionError> {
        poll_fn(|cx| {
            let result = self.with(|c, cs| {
                if let Some(d) = c.recv_datagram() {
                    return Poll::Ready(Ok(d));
                }
                if let Some(e) = c.error() {
                    return Poll::Ready(Err(e.clone()));
                }
                cs.wakers.datagram.push(cx.waker().clone());
                Poll::Pending
            });
            result.unwrap_or_else(|e| Poll::Ready(Err(e)))
        })
        .await
    }
}

/// Why a datagram was not sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SendDatagramError {
    /// Too large, or the peer does not take datagrams.
    #[error(transparent)]
    Refused(#[from] DatagramError),
    /// The connection ended.
    #[error(transparent)]
    ConnectionLost(#[from] ConnectionError),
}
