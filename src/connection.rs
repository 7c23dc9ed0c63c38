//! A connection as the application sees it: the same API whichever
//! carrier (MXP or QUIC) is underneath. The client's move to another
//! carrier when the node drains the current one is the session's
//! (src/session.rs); this is the API over it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mxp_proto::message::Message;
use mxp_proto::{Band, ConnectionError, ConnectionStats, PublicKey};

use crate::carrier::{Carrier, Target};
use crate::error::{CallError, ReadError, SendDatagramError, WriteError};
use crate::link::{Link, LinkRecv};
use crate::lock;
use crate::session::{Dial, FromEndpoint, Reconnect, Session};
use crate::stats::CallSide;
use crate::streams::{RecvStream, SendStream};

/// A connection to an MXP node (or, on a node, from a client). Cheap to
/// clone; it closes when the last clone and every stream of it are
/// dropped.
///
/// The API is the same on both carriers. On the client side, when the node
/// drains the current carrier (a rollback to QUIC, or back to MXP), work
/// already in flight finishes where it is and new work (calls, streams,
/// messages, datagrams) goes over a new connection on the carrier the node
/// accepts — without the application doing anything.
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
pub struct Connection(Arc<Session>);

impl Connection {
    pub(crate) fn node_side(link: Link, endpoint: FromEndpoint) -> Connection {
        Connection(Session::new(link, None, endpoint))
    }

    pub(crate) fn client_side(
        link: Link,
        dialer: Arc<dyn Dial>,
        target: Target,
        from: FromEndpoint,
    ) -> Connection {
        Connection(Session::new(link, Some(Reconnect { dialer, target }), from))
    }

    /// Runs `f` on the protocol core's connection under this one, then
    /// wakes its driver; `None` unless the carrier is MXP. Hidden: how
    /// `mxp attack` makes an authenticated connection misbehave (through
    /// the core's hidden hooks), not part of the library's API.
    #[doc(hidden)]
    pub fn on_core<R>(
        &self,
        f: impl FnOnce(&mut mxp_proto::Connection) -> R,
    ) -> Option<Result<R, ConnectionError>> {
        let cur = self.0.snapshot();
        let mxp = cur.link.as_mxp()?;
        let result = mxp.with(|c, _| f(c));
        mxp.wake_driver();
        Some(result)
    }

    /// A receiving half that keeps to the endpoint's message size limit
    /// and counts the messages it refuses.
    fn counted(&self, recv: LinkRecv) -> RecvStream {
        let from = &self.0.endpoint;
        RecvStream::new(recv).with_message_rules(from.message_errors.clone(), from.max_message_size)
    }

    /// The carrier new work goes over now.
    pub fn carrier(&self) -> Carrier {
        self.0.snapshot().link.carrier()
    }

    /// The peer's address (of the current carrier connection).
    pub fn remote_address(&self) -> SocketAddr {
        self.0.snapshot().link.remote_address()
    }

    /// The peer's authenticated static public key.
    pub fn peer_key(&self) -> PublicKey {
        self.0.snapshot().link.peer_key()
    }

    /// Counters and current state of the current carrier connection: RTT,
    /// congestion window, loss, streams, flow control, per-band scheduler
    /// counts (QUIC reports what quinn counts).
    pub fn stats(&self) -> ConnectionStats {
        self.0.snapshot().link.stats()
    }

    /// Whether the node asked this connection to move new work elsewhere.
    pub fn is_draining(&self) -> bool {
        self.0.snapshot().link.peer_going_away()
    }

    /// Sends `request` on a new stream in its band (Critical for a call)
    /// and waits for the one message that answers it. Answered calls are
    /// timed into `mxp_call_duration_seconds{side="client"}`.
    pub async fn call(&self, request: &Message) -> Result<Message, CallError> {
        let started = Instant::now();
        let current = self.0.current().await;
        let exchange = async {
            let band = request.band();
            let (send, recv) = current.link.open_bi(band).await?;
            let (mut send, mut recv) = (SendStream::new(send, band), self.counted(recv));
            send.write_message(request).await?;
            send.finish()?;
            recv.read_message().await?.ok_or(CallError::NoResponse)
        };
        // However the loss of the connection surfaced (opening, writing or
        // reading), report it the same way.
        let answer = exchange.await.map_err(|e| match e {
            CallError::Write(WriteError::ConnectionLost(e))
            | CallError::Read(ReadError::ConnectionLost(e)) => CallError::ConnectionLost(e),
            other => other,
        })?;
        let carrier = current.link.carrier();
        (self.0.endpoint.calls).record(carrier, CallSide::Client, started.elapsed());
        Ok(answer)
    }

    /// Records how long this node took to serve one call (from reading the
    /// request to handing the response to the transport) into
    /// `mxp_call_duration_seconds{side="node"}`. Call handlers report it;
    /// [`crate::echo`] shows how.
    pub fn record_served_call(&self, took: Duration) {
        (self.0.endpoint.calls).record(self.carrier(), CallSide::Node, took);
    }

    /// Opens a bidirectional stream whose data is sent in `band`, waiting
    /// if the peer's stream limit is reached.
    pub async fn open_bi(&self, band: Band) -> Result<(SendStream, RecvStream), ConnectionError> {
        let (send, recv) = self.0.current().await.link.open_bi(band).await?;
        Ok((SendStream::new(send, band), self.counted(recv)))
    }

    /// Opens a unidirectional stream whose data is sent in `band`.
    pub async fn open_uni(&self, band: Band) -> Result<SendStream, ConnectionError> {
        let send = self.0.current().await.link.open_uni(band).await?;
        Ok(SendStream::new(send, band))
    }

    /// Waits for the peer to open a bidirectional stream.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        let (send, recv) = self
            .0
            .receive(|link| async move { link.accept_bi().await })
            .await?;
        Ok((SendStream::new(send, Band::default()), self.counted(recv)))
    }

    /// Waits for the peer to open a unidirectional stream.
    pub async fn accept_uni(&self) -> Result<RecvStream, ConnectionError> {
        let recv = self
            .0
            .receive(|link| async move { link.accept_uni().await })
            .await?;
        Ok(self.counted(recv))
    }

    /// Sends a one-way message (an event, a heartbeat, an acknowledgement)
    /// reliably, in the band of its type. Messages of one band arrive in
    /// the order they were sent, on one long-lived stream the peer accepts
    /// with [`accept_uni`](Self::accept_uni).
    pub async fn send_message(&self, message: &Message) -> Result<(), WriteError> {
        let current = self.0.current().await;
        let band = message.band();
        let mut lane = current.lanes[band.index()].lock().await;
        if lane.is_none() {
            let send = current.link.open_uni(band).await?;
            *lane = Some(SendStream::new(send, band));
        }
        let stream = lane.as_mut().expect("just opened");
        stream.write_message(message).await
    }

    /// Sends an unreliable datagram in `band`: never retransmitted, dropped
    /// (and counted) if the send queue is full.
    pub fn send_datagram(&self, data: Bytes, band: Band) -> Result<(), SendDatagramError> {
        let cur = self.0.snapshot();
        if cur.link.peer_going_away() {
            // The draining connection still carries this one; later ones
            // go over the new connection once it is up.
            self.0.switch_soon();
        }
        cur.link.send_datagram(data, band)
    }

    /// Largest datagram payload the peer accepts.
    pub fn max_datagram_size(&self) -> usize {
        self.0.snapshot().link.max_datagram_size()
    }

    /// Waits for the next datagram.
    pub async fn read_datagram(&self) -> Result<Bytes, ConnectionError> {
        self.0
            .receive(|link| async move { link.read_datagram().await })
            .await
    }

    /// Closes the connection with an application code and reason. Data not
    /// yet acknowledged is abandoned; the peer gets
    /// [`ConnectionError::ApplicationClosed`].
    pub fn close(&self, code: u64, reason: &[u8]) {
        self.0.closed_by_app.store(true, Ordering::Relaxed);
        let previous = lock(&self.0.previous).upgrade();
        if let Some(previous) = previous {
            previous.link.close(code, reason);
        }
        self.0.snapshot().link.close(code, reason);
    }

    /// Waits until the connection ends (its current carrier connection
    /// closes and is not replaced) and says why.
    pub async fn closed(&self) -> ConnectionError {
        loop {
            let cur = self.0.snapshot();
            let error = cur.link.closed().await;
            if Arc::ptr_eq(&cur, &self.0.snapshot()) {
                return error;
            }
        }
    }
}
