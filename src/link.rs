//! The one place that knows there are two carriers: the enums that
//! dispatch between them (statically: a `match`, no `dyn`), for a
//! connection ([`Link`]) and for each half of a stream ([`LinkSend`],
//! [`LinkRecv`]). The facade above (streams, connections, the endpoint)
//! holds these; a third carrier is a third arm here and a folder beside
//! src/mxp/ and src/quic/.

use std::net::SocketAddr;
use std::task::{Context, Poll};

use bytes::Bytes;
use mxp_proto::{Band, ConnectionError, ConnectionStats, Dir, PublicKey};

use crate::carrier::Carrier;
use crate::error::{ReadError, SendDatagramError, WriteError};
use crate::mxp::conn::MxpConn;
use crate::mxp::streams::{MxpRecv, MxpSend};
use crate::quic::QuicConn;
use crate::quic::streams::{QuicRecv, QuicSend};

/// One carrier connection.
#[derive(Debug, Clone)]
pub(crate) enum Link {
    Mxp(MxpConn),
    Quic(QuicConn),
}

impl Link {
    pub(crate) fn carrier(&self) -> Carrier {
        match self {
            Link::Mxp(_) => Carrier::Mxp,
            Link::Quic(_) => Carrier::Quic,
        }
    }

    /// The MXP connection, if that is the carrier.
    pub(crate) fn as_mxp(&self) -> Option<&MxpConn> {
        match self {
            Link::Mxp(c) => Some(c),
            Link::Quic(_) => None,
        }
    }

    pub(crate) fn remote_address(&self) -> SocketAddr {
        match self {
            Link::Mxp(c) => c.remote_address(),
            Link::Quic(c) => c.remote_address(),
        }
    }

    pub(crate) fn peer_key(&self) -> PublicKey {
        match self {
            Link::Mxp(c) => c.peer_key(),
            Link::Quic(c) => c.peer_key(),
        }
    }

    pub(crate) fn peer_going_away(&self) -> bool {
        match self {
            Link::Mxp(c) => c.peer_going_away(),
            Link::Quic(c) => c.peer_going_away(),
        }
    }

    /// Waits until the peer asks this connection to go away.
    pub(crate) async fn going_away(&self) {
        match self {
            Link::Mxp(c) => c.going_away().await,
            Link::Quic(c) => c.going_away().await,
        }
    }

    /// Opens a bidirectional stream sending in `band`.
    pub(crate) async fn open_bi(
        &self,
        band: Band,
    ) -> Result<(LinkSend, LinkRecv), ConnectionError> {
        match self {
            Link::Mxp(c) => {
                let id = c.open(Dir::Bi, band).await?;
                Ok((
                    LinkSend::Mxp(MxpSend::new(c.clone(), id)),
                    LinkRecv::Mxp(MxpRecv::new(c.clone(), id)),
                ))
            }
            Link::Quic(c) => {
                let (send, recv) = c.open_bi(band).await?;
                Ok((LinkSend::Quic(send), LinkRecv::Quic(recv)))
            }
        }
    }

    /// Opens a unidirectional stream sending in `band`.
    pub(crate) async fn open_uni(&self, band: Band) -> Result<LinkSend, ConnectionError> {
        match self {
            Link::Mxp(c) => {
                let id = c.open(Dir::Uni, band).await?;
                Ok(LinkSend::Mxp(MxpSend::new(c.clone(), id)))
            }
            Link::Quic(c) => Ok(LinkSend::Quic(c.open_uni(band).await?)),
        }
    }

    /// The next bidirectional stream the peer opened (sending in the
    /// default band until told otherwise).
    pub(crate) async fn accept_bi(&self) -> Result<(LinkSend, LinkRecv), ConnectionError> {
        match self {
            Link::Mxp(c) => {
                let id = c.accept(Dir::Bi).await?;
                Ok((
                    LinkSend::Mxp(MxpSend::new(c.clone(), id)),
                    LinkRecv::Mxp(MxpRecv::new(c.clone(), id)),
                ))
            }
            Link::Quic(c) => {
                let (send, recv) = c.accept_bi().await?;
                Ok((LinkSend::Quic(send), LinkRecv::Quic(recv)))
            }
        }
    }

    /// The next unidirectional stream the peer opened.
    pub(crate) async fn accept_uni(&self) -> Result<LinkRecv, ConnectionError> {
        match self {
            Link::Mxp(c) => {
                let id = c.accept(Dir::Uni).await?;
                Ok(LinkRecv::Mxp(MxpRecv::new(c.clone(), id)))
            }
            Link::Quic(c) => Ok(LinkRecv::Quic(c.accept_uni().await?)),
        }
    }

    pub(crate) fn send_datagram(&self, data: Bytes, band: Band) -> Result<(), SendDatagramError> {
        match self {
            Link::Mxp(c) => c.send_datagram(data, band),
            Link::Quic(c) => c.send_datagram(data),
        }
    }

    pub(crate) fn max_datagram_size(&self) -> usize {
        match self {
            Link::Mxp(c) => c.max_datagram_size(),
            Link::Quic(c) => c.max_datagram_size(),
        }
    }

    pub(crate) async fn read_datagram(&self) -> Result<Bytes, ConnectionError> {
        match self {
            Link::Mxp(c) => c.read_datagram().await,
            Link::Quic(c) => c.read_datagram().await,
        }
    }

    pub(crate) fn stats(&self) -> ConnectionStats {
        match self {
            Link::Mxp(c) => c.stats(),
            Link::Quic(c) => c.stats(),
        }
    }

    pub(crate) fn close(&self, code: u64, reason: &[u8]) {
        match self {
            Link::Mxp(c) => c.close(code, reason),
            Link::Quic(c) => c.close(code, reason),
        }
    }

    pub(crate) async fn closed(&self) -> ConnectionError {
        match self {
            Link::Mxp(c) => c.closed().await,
            Link::Quic(c) => c.closed().await,
        }
    }
}

/// The sending half of a stream, on its carrier.
#[derive(Debug)]
pub(crate) enum LinkSend {
    Mxp(MxpSend),
    Quic(QuicSend),
}

impl LinkSend {
    pub(crate) fn carrier(&self) -> Carrier {
        match self {
            LinkSend::Mxp(_) => Carrier::Mxp,
            LinkSend::Quic(_) => Carrier::Quic,
        }
    }

    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<Result<usize, WriteError>> {
        match self {
            LinkSend::Mxp(s) => s.poll_write(cx, data),
            LinkSend::Quic(s) => s.poll_write(cx, data),
        }
    }

    pub(crate) fn finish(&mut self) -> Result<(), WriteError> {
        match self {
            LinkSend::Mxp(s) => s.finish(),
            LinkSend::Quic(s) => s.finish(),
        }
    }

    pub(crate) async fn finished(&mut self) -> Result<(), WriteError> {
        match self {
            LinkSend::Mxp(s) => s.finished().await,
            LinkSend::Quic(s) => s.finished().await,
        }
    }

    pub(crate) fn reset(&mut self, code: u64) -> Result<(), WriteError> {
        match self {
            LinkSend::Mxp(s) => s.reset(code),
            LinkSend::Quic(s) => s.reset(code),
        }
    }

    pub(crate) fn set_band(&mut self, band: Band) {
        match self {
            LinkSend::Mxp(s) => s.set_band(band),
            LinkSend::Quic(s) => s.set_band(band),
        }
    }
}

/// The receiving half of a stream, on its carrier.
#[derive(Debug)]
pub(crate) enum LinkRecv {
    Mxp(MxpRecv),
    Quic(QuicRecv),
}

impl LinkRecv {
    /// The next in-order bytes (at most `max`), `None` at the end. On MXP
    /// what it returns stays charged to the connection window until given
    /// back as `release` (here or by [`release`](Self::release)); quinn
    /// credits bytes as they are read, so QUIC ignores it.
    pub(crate) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        release: u64,
    ) -> Poll<Result<Option<Bytes>, ReadError>> {
        match self {
            LinkRecv::Mxp(r) => r.poll_chunk(cx, max, release),
            LinkRecv::Quic(r) => r.poll_chunk(cx, max),
        }
    }

    /// Gives back the window credit of `n` bytes taken with `poll_chunk`.
    pub(crate) fn release(&self, n: u64) {
        match self {
            LinkRecv::Mxp(r) => r.release(n),
            LinkRecv::Quic(_) => {}
        }
    }

    pub(crate) fn stop(&mut self, code: u64) -> Result<(), ReadError> {
        match self {
            LinkRecv::Mxp(r) => r.stop(code),
            LinkRecv::Quic(r) => r.stop(code),
        }
    }
}
