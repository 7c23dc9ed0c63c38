//! The endpoint driver: one tokio task per endpoint owns the socket and
//! runs the protocol core for every connection on it.
//!
//! Application handles (connections, streams) share the core with the
//! driver through one mutex: they call into it directly (a write is a
//! function call, not a message to another task) and nudge the driver to
//! transmit. The driver receives in batches, runs timers with microsecond
//! precision, turns core events into task wake-ups, and sends in GSO
//! batches. A task that finishes writing and is about to wait for its peer
//! (a call sent, a response complete) transmits itself when the driver is
//! idle ([`Shared::transmit_now`]), saving a hop to the driver task.

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use mxp_proto::{
    ConnectionError, ConnectionHandle, Dir, Endpoint as ProtoEndpoint, Event, HandshakeJob,
    Incoming, StreamEvent, StreamId,
};
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::udp::{RecvBuffers, Socket, TxQueue};
use crate::capture::{Capture, CaptureBatch};
use crate::handshake_workers::HandshakeWorkers;
use crate::timer::Timer;

/// Bytes gathered for sending before the driver hands them to the kernel
/// (and takes another look at the socket and timers).
const TX_BUDGET: usize = 256 * 1024;
/// Receive batches processed before the driver also sends.
const RX_BATCHES: usize = 8;
/// Datagrams a task sends itself before it leaves the rest to the driver.
const INLINE_BUDGET: usize = 16;
/// How long the driver holds its transmissions after what arrived woke
/// tasks, so their answer (a response, the next request) shares a packet
/// with the ACK the arrival asked for: a separate ACK costs a send here and
/// a wake-up and receive at the peer, before the answer even starts.
const ACK_HOLD: Duration = Duration::from_micros(30);

/// What the driver and the application handles share.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    wake: Notify,
    socket: Socket,
    /// The driver is parked with nothing of its own left to send, so a
    /// task's datagrams cannot overtake any of its.
    driver_idle: AtomicBool,
    pub local_addr: SocketAddr,
    /// The endpoint's packet capture: the driver hands it datagrams only
    /// while it records.
    pub capture: Capture,
    /// Where handshake jobs run (a node's); never under the lock, never on
    /// the driver's thread.
    workers: Option<Arc<HandshakeWorkers>>,
}

impl Shared {
    pub(crate) fn new(
        proto: ProtoEndpoint,
        socket: Socket,
        local_addr: SocketAddr,
        workers: Option<Arc<HandshakeWorkers>>,
    ) -> Shared {
        Shared {
            state: Mutex::new(State {
                proto,
                conns: HashMap::new(),
                incoming: VecDeque::new(),
                accept_wakers: Vec::new(),
                endpoint_handles: 1,
                accepting: true,
                idle_wakers: Vec::new(),
                armed: None,
                inline_tx: TxQueue::default(),
            }),
            wake: Notify::new(),
            socket,
            driver_idle: AtomicBool::new(false),
            local_addr,
            capture: Capture::new(),
            workers,
        }
    }

    /// Locks the state. A panic elsewhere while holding it leaves the
    /// protocol state consistent (every operation on it is a plain function
    /// call), so a poisoned lock is taken over rather than propagated.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    /// Tells the driver there may be something to send.
    pub(crate) fn wake_driver(&self) {
        self.wake.notify_one();
    }

    /// Sends what connection `h` has ready from the calling task, for a
    /// task about to wait for its peer: on a multi-threaded runtime the
    /// driver often runs on the other thread, and waking it there costs more
    /// than the send. Only `h` is looked at, so the cost does not grow with
    /// the number of connections. Falls back to waking the driver while it
    /// is busy (its datagrams must not be overtaken) or a capture records,
    /// and wakes it too when the socket is full, more is left, the
    /// connection is closing, or its next timer is earlier than the one the
    /// driver armed.
    pub(crate) fn transmit_now(&self, h: ConnectionHandle) {
        if self.capture.is_recording() {
            return self.wake_driver();
        }
        let mut guard = self.lock();
        if !self.driver_idle.load(Ordering::Acquire) {
            drop(guard);
            return self.wake_driver();
        }
        let State {
            proto,
            inline_tx,
            armed,
            ..
        } = &mut *guard;
        let Some(conn) = proto.connection(h) else {
            drop(guard);
            return self.wake_driver();
        };
        let now = Instant::now();
        let mut produced = 0;
        while produced < INLINE_BUDGET {
            match conn.poll_transmit(now, &mut inline_tx.buf) {
                Some(t) => inline_tx.push(t.destination, t.size, 1),
                None => break,
            }
            produced += 1;
        }
        let blocked = inline_tx.send(&self.socket, None).is_err();
        let earlier = match (conn.poll_timeout(), *armed) {
            (Some(next), Some(armed)) => next < armed,
            (next, None) => next.is_some(),
            (None, Some(_)) => false,
        };
        let closing = conn.is_closed();
        drop(guard);
        if blocked || earlier || closing || produced == INLINE_BUDGET {
            self.wake_driver();
        }
    }
}

/// The handshake jobs the core has ready, taken while the state is locked
/// (they run once it is released: see [`hand_out`]).
fn take_jobs(state: &mut State, now: Instant) -> Vec<HandshakeJob> {
    std::iter::from_fn(|| state.proto.poll_handshake(now)).collect()
}

/// Runs handshake jobs on the node's workers. Each hands its result back
/// under the lock (cheap: no cryptography left), sends the answer (itself
/// when the driver is idle, as [`Shared::transmit_now`] does for tasks),
/// and passes on the jobs that became ready.
fn hand_out(shared: &Arc<Shared>, jobs: Vec<HandshakeJob>) {
    if jobs.is_empty() {
        return;
    }
    let Some(workers) = &shared.workers else {
        // Only a node has jobs, and a node has workers.
        return warn!("handshake jobs without handshake workers: dropped");
    };
    for job in jobs {
        let shared = shared.clone();
        workers.run(move || {
            let done = job.run();
            let (outcome, next) = {
                let mut state = shared.lock();
                let now = Instant::now();
                let outcome = state.proto.complete_handshake(now, done);
                (outcome, take_jobs(&mut state, now))
            };
            match outcome {
                // The answer goes out from here when the driver is idle (a
                // wake-up of the driver's thread is the slowest step left).
                Incoming::Accepted(h) => shared.transmit_now(h),
                _ => shared.wake_driver(),
            }
            hand_out(&shared, next);
        });
    }
}

/// Tasks waiting on one connection.
#[derive(Debug, Default)]
pub(crate) struct Wakers {
    pub connect: Option<Waker>,
    pub readers: HashMap<StreamId, Waker>,
    pub writers: HashMap<StreamId, Waker>,
    /// Waiting for the peer to acknowledge a stream's end.
    pub finishers: HashMap<StreamId, Waker>,
    pub accept: [Vec<Waker>; 2],
    pub open: [Vec<Waker>; 2],
    pub datagram: Vec<Waker>,
    pub closed: Vec<Waker>,
    /// Waiting for the node to ask this connection to go away.
    pub going_away: Vec<Waker>,
}

/// Adds `waker` to a list of waiters unless the same task is already in
/// it: a task that polls again (a receiver listening on two connections
/// re-polls the quiet one on every wake) must not grow the list.
pub(crate) fn add_waiter(list: &mut Vec<Waker>, waker: &Waker) {
    if !list.iter().any(|w| w.will_wake(waker)) {
        list.push(waker.clone());
    }
}

impl Wakers {
    fn wake_all(&mut self) {
        self.connect.take().into_iter().for_each(Waker::wake);
        self.readers.drain().for_each(|(_, w)| w.wake());
        self.writers.drain().for_each(|(_, w)| w.wake());
        self.finishers.drain().for_each(|(_, w)| w.wake());
        for list in self.accept.iter_mut().chain(self.open.iter_mut()).chain([
            &mut self.datagram,
            &mut self.closed,
            &mut self.going_away,
        ]) {
            list.drain(..).for_each(Waker::wake);
        }
    }
}

/// What the runtime tracks per connection beyond the core's state.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    pub connected: bool,
    pub error: Option<ConnectionError>,
    /// The core has forgotten the connection.
    pub drained: bool,
    /// No application handle refers to it any more.
    pub detached: bool,
    /// The peer is draining it: new work belongs elsewhere.
    pub going_away: bool,
    pub wakers: Wakers,
}

/// The state behind the mutex.
#[derive(Debug)]
pub(crate) struct State {
    pub proto: ProtoEndpoint,
    pub conns: HashMap<ConnectionHandle, ConnState>,
    /// Accepted connections not yet handed to `Endpoint::accept`.
    pub incoming: VecDeque<ConnectionHandle>,
    pub accept_wakers: Vec<Waker>,
    /// Live `Endpoint` handles; the driver stops when none are left and
    /// every connection has drained.
    pub endpoint_handles: usize,
    /// Whether new connections are accepted.
    pub accepting: bool,
    pub idle_wakers: Vec<Waker>,
    /// When the driver's timer fires next.
    armed: Option<Instant>,
    /// Datagrams tasks produced in [`Shared::transmit_now`] that the socket
    /// did not take yet (it was full); the driver sends them.
    inline_tx: TxQueue,
}

impl State {
    /// Turns the core's events into wake-ups; says whether there were any.
    pub(crate) fn dispatch(&mut self) -> bool {
        let mut any = false;
        while let Some((h, event)) = self.proto.poll_event() {
            any = true;
            if event == Event::Connected && !self.conns.contains_key(&h) {
                // A new server-side connection.
                if self.accepting {
                    self.conns.insert(h, ConnState::default());
                    self.incoming.push_back(h);
                    self.accept_wakers.drain(..).for_each(Waker::wake);
                } else if let Some(c) = self.proto.connection(h) {
                    c.close(Instant::now(), 0, &b"not accepting connections"[..]);
                    continue;
                }
            }
            let Some(cs) = self.conns.get_mut(&h) else {
                continue;
            };
            let w = &mut cs.wakers;
            match event {
                Event::Connected => {
                    cs.connected = true;
                    w.connect.take().into_iter().for_each(Waker::wake);
                }
                Event::ConnectionLost { reason } => {
                    if let Some(c) = self.proto.connection_ref(h) {
                        debug!(parent: c.span(), %reason, "connection lost");
                    }
                    cs.error.get_or_insert(reason);
                    w.wake_all();
                }
                Event::Stream(StreamEvent::Opened { dir }) => {
                    w.accept[dir_index(dir)].drain(..).for_each(Waker::wake)
                }
                Event::Stream(StreamEvent::Readable { id }) => {
                    w.readers.remove(&id).into_iter().for_each(Waker::wake)
                }
                Event::Stream(StreamEvent::Writable { id } | StreamEvent::Stopped { id, .. }) => {
                    w.writers.remove(&id).into_iter().for_each(Waker::wake)
                }
                Event::Stream(StreamEvent::Finished { id }) => {
                    w.finishers.remove(&id).into_iter().for_each(Waker::wake)
                }
                Event::Stream(StreamEvent::Available { dir }) => {
                    w.open[dir_index(dir)].drain(..).for_each(Waker::wake)
                }
                Event::DatagramReceived => w.datagram.drain(..).for_each(Waker::wake),
                Event::GoAway => {
                    cs.going_away = true;
                    w.going_away.drain(..).for_each(Waker::wake);
                }
                Event::Drained => {
                    cs.drained = true;
                    cs.error.get_or_insert(ConnectionError::LocallyClosed);
                    w.wake_all();
                    if cs.detached {
                        self.conns.remove(&h);
                    }
                    if self.proto.connection_count() == 0 {
                        self.idle_wakers.drain(..).for_each(Waker::wake);
                    }
                }
            }
        }
        any
    }

    /// The error a connection ended with (or a generic one if the core
    /// forgot it).
    pub(crate) fn error_of(&self, h: ConnectionHandle) -> ConnectionError {
        self.conns
            .get(&h)
            .and_then(|c| c.error.clone())
            .or_else(|| {
                self.proto
                    .connection_ref(h)
                    .and_then(|c| c.error().cloned())
            })
            .unwrap_or(ConnectionError::LocallyClosed)
    }

    fn finished(&self) -> bool {
        self.endpoint_handles == 0 && self.conns.is_empty() && self.proto.connection_count() == 0
    }
}

pub(crate) fn dir_index(dir: Dir) -> usize {
    match dir {
        Dir::Bi => 0,
        Dir::Uni => 1,
    }
}

/// Runs the endpoint until every handle is gone and every connection has
/// drained.
pub(crate) async fn run(shared: Arc<Shared>) {
    if let Err(e) = drive(&shared, &shared.socket).await {
        warn!(error = %e, local = %shared.local_addr, "endpoint driver stopped");
        let mut state = shared.lock();
        for cs in state.conns.values_mut() {
            cs.error.get_or_insert(ConnectionError::LocallyClosed);
            cs.wakers.wake_all();
        }
    }
}

async fn drive(shared: &Arc<Shared>, socket: &Socket) -> io::Result<()> {
    let mut timer = Timer::new()?;
    let mut rx = RecvBuffers::new(socket);
    let mut tx = TxQueue::default();
    let max_segments = socket.max_gso_segments();
    let mut send_blocked = false;
    // Datagrams on their way to a running packet capture.
    let mut taps = CaptureBatch::default();
    // Since when transmissions wait for woken tasks to answer (see ACK_HOLD).
    let mut holding: Option<Instant> = None;
    loop {
        // Receive what is waiting (a bounded amount, so sending is not
        // starved by a flood).
        let mut received = false;
        for _ in 0..RX_BATCHES {
            match rx.recv(socket) {
                Ok(_) => {
                    received = true;
                    let recording = shared.capture.is_recording();
                    let mut state = shared.lock();
                    let now = Instant::now();
                    let tap = recording.then_some((&mut taps, shared.local_addr));
                    rx.drain(tap, |from, datagram| {
                        state.proto.handle(now, from, datagram);
                    });
                    let jobs = take_jobs(&mut state, now);
                    drop(state);
                    hand_out(shared, jobs);
                    if recording {
                        shared.capture.submit(&mut taps);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // E.g. ICMP port unreachable surfacing on Linux: not
                    // fatal for an unconnected UDP socket.
                    debug!(error = %e, "receive error");
                    break;
                }
            }
        }

        let (deadline, more, finished, jobs) = {
            let mut state = shared.lock();
            let now = Instant::now();
            if state.proto.poll_timeout().is_some_and(|t| t <= now) {
                state.proto.handle_timeout(now);
            }
            // Jobs that waited for the handshake budget.
            let jobs = take_jobs(&mut state, now);
            let woke = state.dispatch();
            // Hold at most ACK_HOLD in a row, so a stream of arrivals that
            // keeps waking tasks cannot hold the ACKs back for longer.
            let hold = match holding {
                _ if !(received && woke) => None,
                None => Some(now),
                Some(since) => (now < since + ACK_HOLD).then_some(since),
            };
            holding = hold;
            if !state.inline_tx.is_empty() {
                // Left by a task when the socket was full; they go first.
                send_blocked = state.inline_tx.send(socket, None).is_err();
            }
            if !send_blocked && hold.is_none() {
                while tx.len() < TX_BUDGET {
                    match state.proto.poll_transmit(now, &mut tx.buf) {
                        Some(t) => tx.push(t.destination, t.size, max_segments),
                        None => break,
                    }
                }
            }
            // Handing off may have drained connections.
            state.dispatch();
            let more = tx.len() >= TX_BUDGET;
            state.armed = match (state.proto.poll_timeout(), hold) {
                (next, Some(since)) => {
                    Some(next.map_or(since + ACK_HOLD, |t| t.min(since + ACK_HOLD)))
                }
                (next, None) => next,
            };
            (state.armed, more, state.finished(), jobs)
        };
        hand_out(shared, jobs);

        let recording = shared.capture.is_recording();
        let tap = recording.then_some((&mut taps, shared.local_addr));
        let sent = tx.send(socket, tap);
        if recording {
            shared.capture.submit(&mut taps);
        }
        match sent {
            Ok(()) => send_blocked = false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => send_blocked = true,
            Err(e) => return Err(e),
        }
        if finished && tx.is_empty() {
            return Ok(());
        }
        timer.set(deadline)?;
        if more && !send_blocked {
            // More to send: let other tasks run, then carry on.
            tokio::task::yield_now().await;
            continue;
        }
        shared.driver_idle.store(tx.is_empty(), Ordering::Release);
        tokio::select! {
            r = socket.readable() => r?,
            r = timer.expired() => r?,
            _ = shared.wake.notified() => {}
            r = socket.writable(), if send_blocked => r?,
        }
        shared.driver_idle.store(false, Ordering::Release);
    }
}
