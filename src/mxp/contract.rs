//! The MXP carrier's side of the connection contract
//! ([`CarrierConn`]): each call on a connection, mapped onto the core
//! connection the driver runs. Apart from src/mxp/conn.rs so that the
//! connection and its stream halves (src/mxp/streams.rs) do not import
//! each other.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use mxp_proto::{Band, ConnectionError, ConnectionStats, DatagramError, Dir, PublicKey};

use super::conn::MxpConn;
use super::driver::add_waiter;
use super::streams::{MxpRecv, MxpSend};
use crate::carrier::contract::CarrierConn;
use crate::error::SendDatagramError;

impl CarrierConn for MxpConn {
    type Send = MxpSend;
    type Recv = MxpRecv;

    fn remote_address(&self) -> SocketAddr {
        self.0.remote
    }

    fn peer_key(&self) -> PublicKey {
        self.0.peer_key
    }

    /// Whether the node asked us to take new work elsewhere (remembered
    /// after the connection closes, so a session still moves on).
    fn peer_going_away(&self) -> bool {
        let state = self.0.shared.lock();
        state
            .conns
            .get(&self.0.handle)
            .is_some_and(|cs| cs.going_away)
    }

    /// Waits until the node asks this connection to go away (never, once
    /// the connection has ended: its other waits report that).
    async fn going_away(&self) {
        poll_fn(|cx| {
            let result = self.with(|_, cs| {
                if cs.going_away {
                    return Poll::Ready(());
                }
                add_waiter(&mut cs.wakers.going_away, cx.waker());
                Poll::Pending
            });
            result.unwrap_or(Poll::Pending)
        })
        .await
    }

    async fn open_bi(&self, band: Band) -> Result<(MxpSend, MxpRecv), ConnectionError> {
        let id = self.open_stream(Dir::Bi, band).await?;
        Ok((
            MxpSend::new(self.clone(), id),
            MxpRecv::new(self.clone(), id),
        ))
    }

    async fn open_uni(&self, band: Band) -> Result<MxpSend, ConnectionError> {
        let id = self.open_stream(Dir::Uni, band).await?;
        Ok(MxpSend::new(self.clone(), id))
    }

    async fn accept_bi(&self) -> Result<(MxpSend, MxpRecv), ConnectionError> {
        let id = self.accept_stream(Dir::Bi).await?;
        Ok((
            MxpSend::new(self.clone(), id),
            MxpRecv::new(self.clone(), id),
        ))
    }

    async fn accept_uni(&self) -> Result<MxpRecv, ConnectionError> {
        let id = self.accept_stream(Dir::Uni).await?;
        Ok(MxpRecv::new(self.clone(), id))
    }

    fn send_datagram(&self, data: Bytes, band: Band) -> Result<(), SendDatagramError> {
        let result: Result<(), DatagramError> = self.with(|c, _| c.send_datagram(data, band))?;
        result?;
        self.wake_driver();
        Ok(())
    }

    fn max_datagram_size(&self) -> usize {
        self.with(|c, _| c.max_datagram_size()).unwrap_or(0)
    }

    async fn read_datagram(&self) -> Result<Bytes, ConnectionError> {
        poll_fn(|cx| {
            let result = self.with(|c, cs| {
                if let Some(d) = c.recv_datagram() {
                    return Poll::Ready(Ok(d));
                }
                if let Some(e) = c.error() {
                    return Poll::Ready(Err(e.clone()));
                }
                add_waiter(&mut cs.wakers.datagram, cx.waker());
                Poll::Pending
            });
            result.unwrap_or_else(|e| Poll::Ready(Err(e)))
        })
        .await
    }

    fn stats(&self) -> ConnectionStats {
        self.with(|c, _| c.stats()).unwrap_or_default()
    }

    fn close(&self, code: u64, reason: &[u8]) {
        let _ = self.with(|c, _| c.close(Instant::now(), code, Bytes::copy_from_slice(reason)));
        self.wake_driver();
    }

    async fn closed(&self) -> ConnectionError {
        poll_fn(|cx| {
            let result = self.with(|c, cs| match c.error() {
                Some(e) => Poll::Ready(e.clone()),
                None => {
                    add_waiter(&mut cs.wakers.closed, cx.waker());
                    Poll::Pending
                }
            });
            result.unwrap_or_else(Poll::Ready)
        })
        .await
    }
}
