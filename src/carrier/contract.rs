//! What a carrier is, to the rest of the runtime: four crate-private traits
//! (an endpoint, a connection, and the two halves of a stream) that both
//! carriers implement, with the crate's own error types. The layers above
//! see a carrier only through them: src/link.rs dispatches to the two
//! implementations statically (an enum and a `match`, no `dyn` on the
//! write path), and a third carrier is a third set of implementations.
//!
//! Each trait is quinn's shape where quinn has one (`open_bi`,
//! `accept_uni`, `poll_write`, `finish`, `stop`...), so a reader who knows
//! quinn knows what to expect of src/quic/, which is those calls, and of
//! src/mxp/, which makes them on the sans-IO core.

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use bytes::Bytes;
use mxp_proto::{Band, ConnectionError, ConnectionStats, PublicKey};

use crate::error::{ConnectError, ReadError, SendDatagramError, WriteError};
use crate::stats::ConnectionInfo;

/// One carrier's socket: the connections it accepted and dialled.
pub(crate) trait CarrierEndpoint: Clone + Debug + Send + Sync + 'static {
    /// Its connections.
    type Conn: CarrierConn;

    /// Dials the node at `addr` whose public key is `key`.
    fn connect(
        &self,
        addr: SocketAddr,
        key: PublicKey,
    ) -> impl Future<Output = Result<Self::Conn, ConnectError>> + Send;

    /// The next connection a client opened; `None` once closed.
    fn accept(&self) -> impl Future<Output = Option<Self::Conn>> + Send;

    /// Open connections, in any state.
    fn connection_count(&self) -> usize;

    /// What a snapshot shows of each open connection.
    fn connection_infos(&self) -> Vec<ConnectionInfo>;

    /// Tells every connection to take new work elsewhere (a drain).
    fn go_away_all(&self);

    /// Closes every connection, and keeps accepting.
    fn close_all(&self, code: u64, reason: &[u8]);

    /// Stops accepting and closes every connection.
    fn close(&self, code: u64, reason: &[u8]);

    /// Waits until every connection has finished closing.
    fn wait_idle(&self) -> impl Future<Output = ()> + Send;
}

/// One connection on a carrier. Clones are handles to the same connection.
pub(crate) trait CarrierConn: Clone + Debug + Send + Sync + 'static {
    /// The sending half of its streams.
    type Send: CarrierSend;
    /// The receiving half of its streams.
    type Recv: CarrierRecv;

    /// The peer's address.
    fn remote_address(&self) -> SocketAddr;

    /// The peer's authenticated static key.
    fn peer_key(&self) -> PublicKey;

    /// Whether the peer asked this connection to go away (a drain).
    fn peer_going_away(&self) -> bool;

    /// Waits until the peer asks this connection to go away.
    fn going_away(&self) -> impl Future<Output = ()> + Send;

    /// Opens a bidirectional stream sending in `band`, waiting while the
    /// peer's stream limit is reached.
    fn open_bi(
        &self,
        band: Band,
    ) -> impl Future<Output = Result<(Self::Send, Self::Recv), ConnectionError>> + Send;

    /// Opens a unidirectional stream sending in `band`.
    fn open_uni(
        &self,
        band: Band,
    ) -> impl Future<Output = Result<Self::Send, ConnectionError>> + Send;

    /// The next bidirectional stream the peer opened.
    fn accept_bi(
        &self,
    ) -> impl Future<Output = Result<(Self::Send, Self::Recv), ConnectionError>> + Send;

    /// The next unidirectional stream the peer opened.
    fn accept_uni(&self) -> impl Future<Output = Result<Self::Recv, ConnectionError>> + Send;

    /// Queues an unreliable datagram in `band` (QUIC has one band).
    fn send_datagram(&self, data: Bytes, band: Band) -> Result<(), SendDatagramError>;

    /// The largest datagram the peer accepts now.
    fn max_datagram_size(&self) -> usize;

    /// The next datagram the peer sent.
    fn read_datagram(&self) -> impl Future<Output = Result<Bytes, ConnectionError>> + Send;

    /// Its counters now.
    fn stats(&self) -> ConnectionStats;

    /// Closes it with an application code.
    fn close(&self, code: u64, reason: &[u8]);

    /// Waits until it is closed, and says why.
    fn closed(&self) -> impl Future<Output = ConnectionError> + Send;
}

/// The sending half of a stream.
pub(crate) trait CarrierSend: Debug + Send + Sync + 'static {
    /// Writes what fits of `data` now.
    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<Result<usize, WriteError>>;

    /// Ends the stream after what was written.
    fn finish(&mut self) -> Result<(), WriteError>;

    /// Waits until the peer has everything written, or the stream failed.
    fn finished(&mut self) -> impl Future<Output = Result<(), WriteError>> + Send;

    /// Abandons the stream with an application code.
    fn reset(&mut self, code: u64) -> Result<(), WriteError>;

    /// Moves the stream's data to `band`.
    fn set_band(&mut self, band: Band);
}

/// The receiving half of a stream.
pub(crate) trait CarrierRecv: Debug + Send + Sync + 'static {
    /// The next in-order bytes (at most `max`), `None` at the end; first
    /// gives back the window credit of `release` bytes taken before. A
    /// carrier that credits bytes as they are read (quinn) ignores it.
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        release: u64,
    ) -> Poll<Result<Option<Bytes>, ReadError>>;

    /// Gives back the window credit of `n` bytes taken with `poll_chunk`.
    fn release(&self, n: u64) {
        let _ = n;
    }

    /// Tells the peer to stop sending, with an application code.
    fn stop(&mut self, code: u64) -> Result<(), ReadError>;
}
