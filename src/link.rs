//! The one place that knows there are two carriers: the enums that
//! dispatch between them (statically: a `match`, no `dyn`), for a
//! connection ([`Link`]) and for each half of a stream ([`LinkSend`],
//! [`LinkRecv`]), and for a carrier's endpoint ([`LinkEndpoint`]). Both carriers implement the contract of
//! [`crate::carrier::contract`], so every arm is the same call; the facade
//! above (streams, connections, the endpoint) holds these enums. A third
//! carrier is a third variant here and a folder beside src/mxp/ and
//! src/quic/.

use std::net::SocketAddr;
use std::task::{Context, Poll};

use bytes::Bytes;
use mxp_proto::{Band, ConnectionError, ConnectionStats, PublicKey};

use crate::carrier::Carrier;
use crate::carrier::contract::{CarrierConn, CarrierEndpoint, CarrierRecv, CarrierSend};
use crate::error::{ReadError, SendDatagramError, WriteError};
use crate::mxp::conn::MxpConn;
use crate::mxp::endpoint::MxpEndpoint;
use crate::mxp::streams::{MxpRecv, MxpSend};
use crate::quic::streams::{QuicRecv, QuicSend};
use crate::quic::{QuicConn, QuicEndpoint};
use crate::stats::ConnectionInfo;

/// `$body` on whichever carrier `$value` (an `$enum`) holds, bound as `$c`.
/// The body is written once and compiled once per carrier.
macro_rules! on_carrier {
    ($value:expr, $enum:ident, |$c:ident| $body:expr) => {
        match $value {
            $enum::Mxp($c) => $body,
            $enum::Quic($c) => $body,
        }
    };
}

/// One carrier's endpoint (its socket and connections), borrowed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LinkEndpoint<'a> {
    Mxp(&'a MxpEndpoint),
    Quic(&'a QuicEndpoint),
}

impl LinkEndpoint<'_> {
    pub(crate) fn connection_count(self) -> usize {
        on_carrier!(self, LinkEndpoint, |e| e.connection_count())
    }

    pub(crate) fn connection_infos(self) -> Vec<ConnectionInfo> {
        on_carrier!(self, LinkEndpoint, |e| e.connection_infos())
    }

    pub(crate) fn go_away_all(self) {
        on_carrier!(self, LinkEndpoint, |e| e.go_away_all())
    }

    pub(crate) fn close_all(self, code: u64, reason: &[u8]) {
        on_carrier!(self, LinkEndpoint, |e| e.close_all(code, reason))
    }

    pub(crate) fn close(self, code: u64, reason: &[u8]) {
        on_carrier!(self, LinkEndpoint, |e| e.close(code, reason))
    }

    pub(crate) async fn wait_idle(self) {
        on_carrier!(self, LinkEndpoint, |e| e.wait_idle().await)
    }

    /// Feeds the connections clients open on this carrier into `tx`, from a
    /// task of its own, until the endpoint or the receiver closes.
    pub(crate) fn forward_incoming(self, tx: tokio::sync::mpsc::Sender<Link>) {
        on_carrier!(self, LinkEndpoint, |e| {
            let e = e.clone();
            tokio::spawn(async move {
                while let Some(c) = e.accept().await {
                    if tx.send(c.into()).await.is_err() {
                        break;
                    }
                }
            });
        })
    }
}

/// One carrier connection.
#[derive(Debug, Clone)]
pub(crate) enum Link {
    Mxp(MxpConn),
    Quic(QuicConn),
}

impl From<MxpConn> for Link {
    fn from(c: MxpConn) -> Link {
        Link::Mxp(c)
    }
}

impl From<QuicConn> for Link {
    fn from(c: QuicConn) -> Link {
        Link::Quic(c)
    }
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
        on_carrier!(self, Link, |c| c.remote_address())
    }

    pub(crate) fn peer_key(&self) -> PublicKey {
        on_carrier!(self, Link, |c| c.peer_key())
    }

    pub(crate) fn peer_going_away(&self) -> bool {
        on_carrier!(self, Link, |c| c.peer_going_away())
    }

    /// Waits until the peer asks this connection to go away.
    pub(crate) async fn going_away(&self) {
        on_carrier!(self, Link, |c| c.going_away().await)
    }

    /// Opens a bidirectional stream sending in `band`.
    pub(crate) async fn open_bi(
        &self,
        band: Band,
    ) -> Result<(LinkSend, LinkRecv), ConnectionError> {
        on_carrier!(self, Link, |c| c
            .open_bi(band)
            .await
            .map(|(s, r)| (s.into(), r.into())))
    }

    /// Opens a unidirectional stream sending in `band`.
    pub(crate) async fn open_uni(&self, band: Band) -> Result<LinkSend, ConnectionError> {
        on_carrier!(self, Link, |c| c.open_uni(band).await.map(Into::into))
    }

    /// The next bidirectional stream the peer opened (sending in the
    /// default band until told otherwise).
    pub(crate) async fn accept_bi(&self) -> Result<(LinkSend, LinkRecv), ConnectionError> {
        on_carrier!(self, Link, |c| c
            .accept_bi()
            .await
            .map(|(s, r)| (s.into(), r.into())))
    }

    /// The next unidirectional stream the peer opened.
    pub(crate) async fn accept_uni(&self) -> Result<LinkRecv, ConnectionError> {
        on_carrier!(self, Link, |c| c.accept_uni().await.map(Into::into))
    }

    pub(crate) fn send_datagram(&self, data: Bytes, band: Band) -> Result<(), SendDatagramError> {
        on_carrier!(self, Link, |c| c.send_datagram(data, band))
    }

    pub(crate) fn max_datagram_size(&self) -> usize {
        on_carrier!(self, Link, |c| c.max_datagram_size())
    }

    pub(crate) async fn read_datagram(&self) -> Result<Bytes, ConnectionError> {
        on_carrier!(self, Link, |c| c.read_datagram().await)
    }

    pub(crate) fn stats(&self) -> ConnectionStats {
        on_carrier!(self, Link, |c| c.stats())
    }

    pub(crate) fn close(&self, code: u64, reason: &[u8]) {
        on_carrier!(self, Link, |c| c.close(code, reason))
    }

    pub(crate) async fn closed(&self) -> ConnectionError {
        on_carrier!(self, Link, |c| c.closed().await)
    }
}

/// The sending half of a stream, on its carrier.
#[derive(Debug)]
pub(crate) enum LinkSend {
    Mxp(MxpSend),
    Quic(QuicSend),
}

impl From<MxpSend> for LinkSend {
    fn from(s: MxpSend) -> LinkSend {
        LinkSend::Mxp(s)
    }
}

impl From<QuicSend> for LinkSend {
    fn from(s: QuicSend) -> LinkSend {
        LinkSend::Quic(s)
    }
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
        on_carrier!(self, LinkSend, |s| s.poll_write(cx, data))
    }

    pub(crate) fn finish(&mut self) -> Result<(), WriteError> {
        on_carrier!(self, LinkSend, |s| s.finish())
    }

    pub(crate) async fn finished(&mut self) -> Result<(), WriteError> {
        on_carrier!(self, LinkSend, |s| s.finished().await)
    }

    pub(crate) fn reset(&mut self, code: u64) -> Result<(), WriteError> {
        on_carrier!(self, LinkSend, |s| s.reset(code))
    }

    pub(crate) fn set_band(&mut self, band: Band) {
        on_carrier!(self, LinkSend, |s| s.set_band(band))
    }
}

/// The receiving half of a stream, on its carrier.
#[derive(Debug)]
pub(crate) enum LinkRecv {
    Mxp(MxpRecv),
    Quic(QuicRecv),
}

impl From<MxpRecv> for LinkRecv {
    fn from(r: MxpRecv) -> LinkRecv {
        LinkRecv::Mxp(r)
    }
}

impl From<QuicRecv> for LinkRecv {
    fn from(r: QuicRecv) -> LinkRecv {
        LinkRecv::Quic(r)
    }
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
        on_carrier!(self, LinkRecv, |r| r.poll_chunk(cx, max, release))
    }

    /// Gives back the window credit of `n` bytes taken with `poll_chunk`.
    pub(crate) fn release(&self, n: u64) {
        on_carrier!(self, LinkRecv, |r| r.release(n))
    }

    pub(crate) fn stop(&mut self, code: u64) -> Result<(), ReadError> {
        on_carrier!(self, LinkRecv, |r| r.stop(code))
    }
}
