//! One MXP-carrier connection: the application side of a core connection
//! driven by the endpoint's driver task.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use mxp_proto::{Band, ConnectionError, ConnectionHandle, Dir, OpenError, PublicKey, StreamId};

use super::driver::{ConnState, Shared, add_waiter, dir_index};

/// A handle to one MXP connection. Clones share it; the connection closes
/// when the last clone (every stream holds one) is dropped.
#[derive(Debug, Clone)]
pub(crate) struct MxpConn(pub(super) Arc<Inner>);

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) shared: Arc<Shared>,
    pub(super) handle: ConnectionHandle,
    pub(super) remote: SocketAddr,
    pub(super) peer_key: PublicKey,
}

impl Drop for Inner {
    fn drop(&mut self) {
        release(&self.shared, self.handle);
    }
}

/// The application lets go of a connection: it closes (if it has not
/// already) and the driver forgets it once the core is done with it.
pub(crate) fn release(shared: &Shared, handle: ConnectionHandle) {
    let mut guard = shared.lock();
    let state = &mut *guard;
    if let Some(cs) = state.conns.get_mut(&handle) {
        if cs.drained {
            state.conns.remove(&handle);
        } else {
            cs.detached = true;
            if let Some(c) = state.proto.connection(handle) {
                c.close(Instant::now(), 0, Bytes::new());
            }
        }
    }
    drop(guard);
    shared.wake_driver();
}

impl MxpConn {
    pub(crate) fn new(shared: Arc<Shared>, handle: ConnectionHandle) -> Option<MxpConn> {
        let (remote, peer_key) = {
            let state = shared.lock();
            let c = state.proto.connection_ref(handle)?;
            (c.remote_address(), c.peer_key()?)
        };
        Some(MxpConn(Arc::new(Inner {
            shared,
            handle,
            remote,
            peer_key,
        })))
    }

    /// Runs `f` on the core connection and this connection's runtime
    /// state, or fails with why the connection is gone.
    pub(crate) fn with<R>(
        &self,
        f: impl FnOnce(&mut mxp_proto::Connection, &mut ConnState) -> R,
    ) -> Result<R, ConnectionError> {
        let mut guard = self.0.shared.lock();
        let state = &mut *guard;
        if let (Some(conn), Some(cs)) = (
            state.proto.connection(self.0.handle),
            state.conns.get_mut(&self.0.handle),
        ) {
            return Ok(f(conn, cs));
        }
        Err(state.error_of(self.0.handle))
    }

    /// Tells the driver there is something to send.
    pub(crate) fn wake_driver(&self) {
        self.0.shared.wake_driver();
    }

    /// Sends what is ready from this task if the driver is idle.
    pub(crate) fn transmit_now(&self) {
        self.0.shared.transmit_now(self.0.handle);
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
                    add_waiter(&mut cs.wakers.open[dir_index(dir)], cx.waker());
                    Poll::Pending
                }
            }
        });
        result.unwrap_or_else(|e| Poll::Ready(Err(e)))
    }

    /// Opens a stream whose data is sent in `band`, waiting if the peer's
    /// stream limit is reached.
    pub(crate) async fn open_stream(
        &self,
        dir: Dir,
        band: Band,
    ) -> Result<StreamId, ConnectionError> {
        poll_fn(|cx| self.poll_open(cx, dir, band)).await
    }

    /// Waits for the peer to open a stream.
    pub(super) async fn accept_stream(&self, dir: Dir) -> Result<StreamId, ConnectionError> {
        poll_fn(|cx| {
            let result = self.with(|c, cs| {
                if let Some(id) = c.accept(dir) {
                    return Poll::Ready(Ok(id));
                }
                if let Some(e) = c.error() {
                    return Poll::Ready(Err(e.clone()));
                }
                add_waiter(&mut cs.wakers.accept[dir_index(dir)], cx.waker());
                Poll::Pending
            });
            result.unwrap_or_else(|e| Poll::Ready(Err(e)))
        })
        .await
    }
}
