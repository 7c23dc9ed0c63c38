//! A connection as the application sees it: the same API whichever
//! carrier (MXP or QUIC) is underneath, and, on the client side, a session
//! that moves new work to the other carrier when the node drains the
//! current one.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mxp_proto::message::Message;
use mxp_proto::{Band, ConnectionError, ConnectionStats, PublicKey};
use tracing::{info, warn};

use crate::carrier::Target;
use crate::carrier::{Carrier, CarrierMode};
use crate::error::{CallError, ConnectError, ReadError, SendDatagramError, WriteError};
use crate::link::{Link, LinkRecv};
use crate::lock;
use crate::stats::{CallDurations, CallSide, MessageErrors};
use crate::streams::{RecvStream, SendStream};

/// A carrier connection with its one-way message lanes.
#[derive(Debug)]
struct Current {
    link: Link,
    /// One long-lived unidirectional stream per band for one-way messages,
    /// serialised so concurrent senders never interleave two messages.
    lanes: [tokio::sync::Mutex<Option<SendStream>>; Band::COUNT],
}

impl Current {
    fn new(link: Link) -> Arc<Current> {
        Arc::new(Current {
            link,
            lanes: Default::default(),
        })
    }
}

/// How long background switches wait after one found no carrier.
const SWITCH_RETRY: Duration = Duration::from_secs(1);

/// Opens carrier connections to a node: what a client session needs of its
/// endpoint to reopen itself on another carrier (the endpoint, which sits
/// above connections, implements it). Used only to switch, never on the
/// write path.
pub(crate) trait Dial: Send + Sync + std::fmt::Debug {
    fn dial<'a>(
        &'a self,
        target: &'a Target,
        mode: CarrierMode,
    ) -> Pin<Box<dyn Future<Output = Result<Link, ConnectError>> + Send + 'a>>;
}

/// How a client session reopens itself on another carrier.
#[derive(Debug)]
struct Reconnect {
    dialer: Arc<dyn Dial>,
    target: Target,
}

#[derive(Debug)]
struct Session {
    current: Mutex<Arc<Current>>,
    reconnect: Option<Reconnect>,
    /// Serialises carrier switches.
    switching: tokio::sync::Mutex<()>,
    /// The connection the last switch replaced: it drains, and what the
    /// peer still sends on it is still received while something holds it
    /// (work in flight, a waiting receiver); weak, so it closes when that
    /// work is done, as before the switch.
    previous: Mutex<Weak<Current>>,
    /// Woken by every switch, so receivers start listening on the new one.
    switched: tokio::sync::Notify,
    /// A switch started from sync code (a datagram) is under way.
    switch_spawned: AtomicBool,
    /// When the last switch found no carrier: background switches wait a
    /// while before trying again.
    switch_failed_at: Mutex<Option<Instant>>,
    closed_by_app: AtomicBool,
    endpoint: FromEndpoint,
}

/// What every connection of an endpoint takes from it.
#[derive(Debug, Clone)]
pub(crate) struct FromEndpoint {
    /// The endpoint's call-latency histograms.
    pub calls: Arc<CallDurations>,
    /// The endpoint's count of messages its streams refused.
    pub message_errors: Arc<MessageErrors>,
    /// Largest message payload a stream accepts.
    pub max_message_size: usize,
}

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
        Self::with(link, None, endpoint)
    }

    pub(crate) fn client_side(
        link: Link,
        dialer: Arc<dyn Dial>,
        target: Target,
        from: FromEndpoint,
    ) -> Connection {
        Self::with(link, Some(Reconnect { dialer, target }), from)
    }

    fn with(link: Link, reconnect: Option<Reconnect>, endpoint: FromEndpoint) -> Connection {
        Connection(Arc::new(Session {
            current: Mutex::new(Current::new(link)),
            reconnect,
            switching: tokio::sync::Mutex::new(()),
            previous: Mutex::new(Weak::new()),
            switched: tokio::sync::Notify::new(),
            switch_spawned: AtomicBool::new(false),
            switch_failed_at: Mutex::new(None),
            closed_by_app: AtomicBool::new(false),
            endpoint,
        }))
    }

    fn snapshot(&self) -> Arc<Current> {
        lock(&self.0.current).clone()
    }

    /// The carrier connection new work should use: the current one, or, if
    /// the node is draining it, a new one on the carrier the node accepts.
    async fn current(&self) -> Arc<Current> {
        let cur = self.snapshot();
        let Some(reconnect) = &self.0.reconnect else {
            return cur;
        };
        if !cur.link.peer_going_away() || self.0.closed_by_app.load(Ordering::Relaxed) {
            return cur;
        }
        let _switching = self.0.switching.lock().await;
        let latest = self.snapshot();
        if !Arc::ptr_eq(&latest, &cur) {
            return latest; // someone else switched meanwhile
        }
        let from = cur.link.carrier();
        match reconnect
            .dialer
            .dial(&reconnect.target, CarrierMode::Auto)
            .await
        {
            Ok(link) if self.0.closed_by_app.load(Ordering::Relaxed) => {
                // Closed while the new connection was being set up.
                link.close(0, b"closed");
                cur
            }
            Ok(link) => {
                info!(from = %from, to = %link.carrier(), peer = %link.remote_address(), "node is draining the connection: new work moves to a new connection");
                let next = Current::new(link);
                *lock(&self.0.current) = next.clone();
                *lock(&self.0.previous) = Arc::downgrade(&cur);
                *lock(&self.0.switch_failed_at) = None;
                // One-way messages continue on the new connection: the old
                // lanes end (a lane in use now ends when it is dropped).
                for lane in &cur.lanes {
                    if let Ok(mut lane) = lane.try_lock() {
                        if let Some(mut stream) = lane.take() {
                            let _ = stream.finish();
                        }
                    }
                }
                self.0.switched.notify_waiters();
                next
            }
            Err(e) => {
                // The old connection still works until the drain deadline.
                warn!(from = %from, error = %e, "node is draining the connection, and no other carrier answered");
                *lock(&self.0.switch_failed_at) = Some(Instant::now());
                cur
            }
        }
    }

    /// Starts the switch `current` makes, for callers that cannot wait
    /// (sending a datagram) or wait on something else (receiving): one at
    /// a time, in the background.
    fn switch_soon(&self) {
        let failed_recently =
            lock(&self.0.switch_failed_at).is_some_and(|at| at.elapsed() < SWITCH_RETRY);
        if self.0.reconnect.is_none()
            || failed_recently
            || self.0.closed_by_app.load(Ordering::Relaxed)
            || self.0.switch_spawned.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.0.switch_spawned.store(false, Ordering::Release);
            return;
        };
        let conn = self.clone();
        runtime.spawn(async move {
            conn.current().await;
            conn.0.switch_spawned.store(false, Ordering::Release);
        });
    }

    /// Waits for what the peer sends (a stream, a datagram) on the current
    /// carrier connection and, after a switch, also on the draining one it
    /// replaced until that closes: nothing the node still sends there is
    /// missed, and nothing waits on a connection that is gone.
    async fn receive<T, F, Fut>(&self, op: F) -> Result<T, ConnectionError>
    where
        F: Fn(Link) -> Fut,
        Fut: Future<Output = Result<T, ConnectionError>>,
    {
        if self.0.reconnect.is_none() {
            return op(self.snapshot().link.clone()).await; // a node never switches
        }
        loop {
            let switched = self.0.switched.notified();
            tokio::pin!(switched);
            switched.as_mut().enable();
            let cur = self.snapshot();
            if cur.link.peer_going_away() {
                self.switch_soon();
            }
            let previous = lock(&self.0.previous).upgrade();
            let on_previous = async {
                match &previous {
                    Some(p) => op(p.link.clone()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = op(cur.link.clone()) => {
                    if r.is_err() && !Arc::ptr_eq(&cur, &self.snapshot()) {
                        continue; // replaced while we waited: listen on the new one
                    }
                    if r.is_err() && cur.link.peer_going_away() {
                        // Closed at the drain deadline before a switch
                        // happened (nothing was sent meanwhile): move now.
                        if !Arc::ptr_eq(&cur, &self.current().await) {
                            continue;
                        }
                    }
                    return r;
                }
                r = on_previous => match r {
                    Ok(v) => return Ok(v),
                    Err(_) => {
                        // The drained connection closed: stop listening there.
                        let mut slot = lock(&self.0.previous);
                        if previous.as_ref().is_some_and(|p| slot.as_ptr() == Arc::as_ptr(p)) {
                            *slot = Weak::new();
                        }
                    }
                },
                // The node starts draining while we wait: move now, not at
                // its deadline (the switch then wakes this loop).
                () = cur.link.going_away(), if !cur.link.peer_going_away() => {}
                () = &mut switched => {}
            }
        }
    }

    /// The MXP carrier connection under this one, while that is the
    /// carrier (for `mxp attack`'s hostile peer).
    pub(crate) fn mxp_link(&self) -> Option<crate::mxp::conn::MxpConn> {
        self.snapshot().link.as_mxp().cloned()
    }

    /// A receiving half that keeps to the endpoint's message size limit
    /// and counts the messages it refuses.
    fn counted(&self, recv: LinkRecv) -> RecvStream {
        let from = &self.0.endpoint;
        RecvStream::new(recv).with_message_rules(from.message_errors.clone(), from.max_message_size)
    }

    /// The carrier new work goes over now.
    pub fn carrier(&self) -> Carrier {
        self.snapshot().link.carrier()
    }

    /// The peer's address (of the current carrier connection).
    pub fn remote_address(&self) -> SocketAddr {
        self.snapshot().link.remote_address()
    }

    /// The peer's authenticated static public key.
    pub fn peer_key(&self) -> PublicKey {
        self.snapshot().link.peer_key()
    }

    /// Counters and current state of the current carrier connection: RTT,
    /// congestion window, loss, streams, flow control, per-band scheduler
    /// counts (QUIC reports what quinn counts).
    pub fn stats(&self) -> ConnectionStats {
        self.snapshot().link.stats()
    }

    /// Whether the node asked this connection to move new work elsewhere.
    pub fn is_draining(&self) -> bool {
        self.snapshot().link.peer_going_away()
    }

    /// Sends `request` on a new stream in its band (Critical for a call)
    /// and waits for the one message that answers it. Answered calls are
    /// timed into `mxp_call_duration_seconds{side="client"}`.
    pub async fn call(&self, request: &Message) -> Result<Message, CallError> {
        let started = Instant::now();
        let current = self.current().await;
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
        let (send, recv) = self.current().await.link.open_bi(band).await?;
        Ok((SendStream::new(send, band), self.counted(recv)))
    }

    /// Opens a unidirectional stream whose data is sent in `band`.
    pub async fn open_uni(&self, band: Band) -> Result<SendStream, ConnectionError> {
        let send = self.current().await.link.open_uni(band).await?;
        Ok(SendStream::new(send, band))
    }

    /// Waits for the peer to open a bidirectional stream.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        let (send, recv) = self
            .receive(|link| async move { link.accept_bi().await })
            .await?;
        Ok((SendStream::new(send, Band::default()), self.counted(recv)))
    }

    /// Waits for the peer to open a unidirectional stream.
    pub async fn accept_uni(&self) -> Result<RecvStream, ConnectionError> {
        let recv = self
            .receive(|link| async move { link.accept_uni().await })
            .await?;
        Ok(self.counted(recv))
    }

    /// Sends a one-way message (an event, a heartbeat, an acknowledgement)
    /// reliably, in the band of its type. Messages of one band arrive in
    /// the order they were sent, on one long-lived stream the peer accepts
    /// with [`accept_uni`](Self::accept_uni).
    pub async fn send_message(&self, message: &Message) -> Result<(), WriteError> {
        let current = self.current().await;
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
        let cur = self.snapshot();
        if cur.link.peer_going_away() {
            // The draining connection still carries this one; later ones
            // go over the new connection once it is up.
            self.switch_soon();
        }
        cur.link.send_datagram(data, band)
    }

    /// Largest datagram payload the peer accepts.
    pub fn max_datagram_size(&self) -> usize {
        self.snapshot().link.max_datagram_size()
    }

    /// Waits for the next datagram.
    pub async fn read_datagram(&self) -> Result<Bytes, ConnectionError> {
        self.receive(|link| async move { link.read_datagram().await })
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
        self.snapshot().link.close(code, reason);
    }

    /// Waits until the connection ends (its current carrier connection
    /// closes and is not replaced) and says why.
    pub async fn closed(&self) -> ConnectionError {
        loop {
            let cur = self.snapshot();
            let error = cur.link.closed().await;
            if Arc::ptr_eq(&cur, &self.snapshot()) {
                return error;
            }
        }
    }
}
