//! A client session's switch between carriers: the carrier connection new
//! work uses now, and the move to a new connection on the carrier the node
//! accepts when the node drains the current one (work in flight finishes
//! where it is; what the peer still sends on the drained connection is
//! still received). [`Connection`](crate::Connection) is the API over it; a
//! node's sessions never switch.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use mxp_proto::{Band, ConnectionError};
use tracing::{info, warn};

use crate::carrier::{CarrierMode, Target};
use crate::error::ConnectError;
use crate::link::Link;
use crate::lock;
use crate::stats::{CallDurations, MessageErrors};
use crate::streams::SendStream;

/// A carrier connection with its one-way message lanes.
#[derive(Debug)]
pub(crate) struct Current {
    pub(crate) link: Link,
    /// One long-lived unidirectional stream per band for one-way messages,
    /// serialised so concurrent senders never interleave two messages.
    pub(crate) lanes: [tokio::sync::Mutex<Option<SendStream>>; Band::COUNT],
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
pub(crate) struct Reconnect {
    pub(crate) dialer: Arc<dyn Dial>,
    pub(crate) target: Target,
}

/// One connection's carrier connections and its switch state.
#[derive(Debug)]
pub(crate) struct Session {
    current: Mutex<Arc<Current>>,
    reconnect: Option<Reconnect>,
    /// Serialises carrier switches.
    switching: tokio::sync::Mutex<()>,
    /// The connection the last switch replaced: it drains, and what the
    /// peer still sends on it is still received while something holds it
    /// (work in flight, a waiting receiver); weak, so it closes when that
    /// work is done, as before the switch.
    pub(crate) previous: Mutex<Weak<Current>>,
    /// Woken when a switch ends, so receivers listen on the new connection,
    /// or, when it found no carrier, wait out the retry pause and try again.
    switched: tokio::sync::Notify,
    /// A switch started from sync code (a datagram) is under way.
    switch_spawned: AtomicBool,
    /// When the last switch found no carrier: background switches wait a
    /// while before trying again.
    switch_failed_at: Mutex<Option<Instant>>,
    pub(crate) closed_by_app: AtomicBool,
    pub(crate) endpoint: FromEndpoint,
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

impl Session {
    pub(crate) fn new(
        link: Link,
        reconnect: Option<Reconnect>,
        endpoint: FromEndpoint,
    ) -> Arc<Session> {
        Arc::new(Session {
            current: Mutex::new(Current::new(link)),
            reconnect,
            switching: tokio::sync::Mutex::new(()),
            previous: Mutex::new(Weak::new()),
            switched: tokio::sync::Notify::new(),
            switch_spawned: AtomicBool::new(false),
            switch_failed_at: Mutex::new(None),
            closed_by_app: AtomicBool::new(false),
            endpoint,
        })
    }

    pub(crate) fn snapshot(&self) -> Arc<Current> {
        lock(&self.current).clone()
    }

    /// The carrier connection new work should use: the current one, or, if
    /// the node is draining it, a new one on the carrier the node accepts.
    pub(crate) async fn current(self: &Arc<Self>) -> Arc<Current> {
        let cur = self.snapshot();
        let Some(reconnect) = &self.reconnect else {
            return cur;
        };
        if !cur.link.peer_going_away() || self.closed_by_app.load(Ordering::Relaxed) {
            return cur;
        }
        let _switching = self.switching.lock().await;
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
            Ok(link) if self.closed_by_app.load(Ordering::Relaxed) => {
                // Closed while the new connection was being set up.
                link.close(0, b"closed");
                cur
            }
            Ok(link) => {
                info!(from = %from, to = %link.carrier(), peer = %link.remote_address(), "node is draining the connection: new work moves to a new connection");
                let next = Current::new(link);
                *lock(&self.current) = next.clone();
                *lock(&self.previous) = Arc::downgrade(&cur);
                *lock(&self.switch_failed_at) = None;
                // One-way messages continue on the new connection: the old
                // lanes end (a lane in use now ends when it is dropped).
                for lane in &cur.lanes {
                    if let Ok(mut lane) = lane.try_lock() {
                        if let Some(mut stream) = lane.take() {
                            let _ = stream.finish();
                        }
                    }
                }
                self.switched.notify_waiters();
                next
            }
            Err(e) => {
                // The old connection still works until the drain deadline.
                warn!(from = %from, error = %e, "node is draining the connection, and no other carrier answered");
                *lock(&self.switch_failed_at) = Some(Instant::now());
                self.switched.notify_waiters();
                cur
            }
        }
    }

    /// Starts the switch `current` makes, for callers that cannot wait
    /// (sending a datagram) or wait on something else (receiving): one at
    /// a time, in the background.
    pub(crate) fn switch_soon(self: &Arc<Self>) {
        let failed_recently =
            lock(&self.switch_failed_at).is_some_and(|at| at.elapsed() < SWITCH_RETRY);
        if self.reconnect.is_none()
            || failed_recently
            || self.closed_by_app.load(Ordering::Relaxed)
            || self.switch_spawned.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.switch_spawned.store(false, Ordering::Release);
            return;
        };
        let session = self.clone();
        runtime.spawn(async move {
            session.current().await;
            session.switch_spawned.store(false, Ordering::Release);
        });
    }

    /// Waits for what the peer sends (a stream, a datagram) on the current
    /// carrier connection and, after a switch, also on the draining one it
    /// replaced until that closes: nothing the node still sends there is
    /// missed, and nothing waits on a connection that is gone.
    pub(crate) async fn receive<T, F, Fut>(self: &Arc<Self>, op: F) -> Result<T, ConnectionError>
    where
        F: Fn(Link) -> Fut,
        Fut: Future<Output = Result<T, ConnectionError>>,
    {
        if self.reconnect.is_none() {
            return op(self.snapshot().link.clone()).await; // a node never switches
        }
        loop {
            let switched = self.switched.notified();
            tokio::pin!(switched);
            switched.as_mut().enable();
            let cur = self.snapshot();
            // While the node drains this connection and the last switch
            // found no carrier, try again when the retry pause is over:
            // a receiver may be all that is running (nothing sent, nothing
            // arriving), and nothing else would start the next switch.
            let mut retry = None;
            if cur.link.peer_going_away() {
                self.switch_soon();
                retry = lock(&self.switch_failed_at).map(|at| at + SWITCH_RETRY);
            }
            let retry_due = async {
                match retry {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let previous = lock(&self.previous).upgrade();
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
                        let mut slot = lock(&self.previous);
                        if previous.as_ref().is_some_and(|p| slot.as_ptr() == Arc::as_ptr(p)) {
                            *slot = Weak::new();
                        }
                    }
                },
                // The node starts draining while we wait: move now, not at
                // its deadline (the switch then wakes this loop).
                () = cur.link.going_away(), if !cur.link.peer_going_away() => {}
                () = &mut switched => {}
                () = retry_due => {}
            }
        }
    }
}
