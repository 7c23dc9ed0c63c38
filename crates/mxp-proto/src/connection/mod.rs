//! One MXP connection as a deterministic state machine.
//!
//! Shaped like quinn-proto's `Connection`: the owner feeds it datagrams
//! ([`handle`](Connection::handle)) and timeouts
//! ([`handle_timeout`](Connection::handle_timeout)), and drains what it
//! produces: datagrams to send ([`poll_transmit`](Connection::poll_transmit)),
//! the next deadline ([`poll_timeout`](Connection::poll_timeout)) and events
//! for the application ([`poll_event`](Connection::poll_event)). Each concern
//! lives in its own file: the handshake, receiving, packet assembly, loss
//! recovery and acknowledgement state.

mod ack;
mod handshake;
mod hostile;
pub(crate) mod recovery;
mod recv;
mod send;
mod stats;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::HANDSHAKE;
use bytes::Bytes;
use tracing::{debug, info};

use crate::config::TransportConfig;
use crate::crypto::{PublicKey, RESET_TOKEN_LEN};
use crate::datagrams::{DatagramError, Datagrams};
use crate::error::{ConnectionError, TransportError};
use crate::frame::{Close, CloseKind};
use crate::guard::RateLimiter;
use crate::packet::keys::KeyState;
use crate::packet::{ConnectionId, MIN_RESET_LEN, SHORT_OVERHEAD};
use crate::replay::ReplayWindow;
use crate::scheduler::{Flow, Scheduler};
use crate::streams::{Limits, OpenError, ReadError, StreamEvent, Streams, WriteError};
use crate::transport_params::TransportParams;
use crate::{Band, Dir, Side, StreamId};

use ack::AckState;
pub(crate) use handshake::{Accepted, ClientHello, Handshake, ServerHello, initiation_digest};
#[doc(hidden)]
pub use hostile::INJECT_MAX;
use recovery::Recovery;
pub use stats::{ConnectionStats, PeerLimitStats};

/// Something the application should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed: the client got the server's answer, or the
    /// server saw the client prove its address.
    Connected,
    /// The connection ended; no more data will flow.
    ConnectionLost {
        /// Why.
        reason: ConnectionError,
    },
    /// Something happened on a stream.
    Stream(StreamEvent),
    /// Datagrams are waiting in [`Connection::recv_datagram`] (sent when
    /// the queue stops being empty: read until it is).
    DatagramReceived,
    /// The peer is draining this connection (its carrier stopped accepting):
    /// finish what is in flight here and open new work elsewhere.
    GoAway,
    /// Everything is over, including the closing period; the owner may drop
    /// the connection.
    Drained,
}

/// A datagram for the owner to put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// Its length (the bytes were appended to the caller's buffer).
    pub size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshake,
    Established,
    /// We closed: answer anything that arrives with the close frame until
    /// the deadline, so the peer learns why.
    Closing,
    /// The peer closed: send nothing, wait out stragglers.
    Draining,
    Drained,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Idle,
    LossDetection,
    Ack,
    KeepAlive,
    Close,
    Pacing,
    Handshake,
}

const TIMER_COUNT: usize = 7;

/// PATH_CHALLENGE answers kept waiting; beyond it the oldest go. Only the
/// newest matter to a peer probing a path, and each is sent at once.
const MAX_PATH_RESPONSES: usize = 4;

/// Burst of peer-initiated key updates allowed above
/// [`TransportConfig::peer_key_update_rate`].
const KEY_UPDATE_BURST: u32 = 16;

/// Longest a closing connection waits for its close frame to be sent at
/// all (it normally goes out on the next transmit).
const CLOSE_FALLBACK: Duration = Duration::from_secs(1);

/// The network path to the peer and its address-validation budget.
#[derive(Debug)]
struct Path {
    remote: SocketAddr,
    /// The peer proved it receives at this address; until then a server
    /// sends at most three times what it received (anti-amplification).
    validated: bool,
    received: u64,
    sent: u64,
    challenge: Option<[u8; 8]>,
}

impl Path {
    fn new(remote: SocketAddr, validated: bool) -> Self {
        Path {
            remote,
            validated,
            received: 0,
            sent: 0,
            challenge: None,
        }
    }

    /// Bytes that may still be sent before the address is validated.
    fn budget(&self) -> u64 {
        if self.validated {
            u64::MAX
        } else {
            (3 * self.received).saturating_sub(self.sent)
        }
    }
}

/// Non-stream frames waiting to go out.
#[derive(Debug, Default)]
struct Pending {
    ping: bool,
    /// Send GOAWAY (again, if it was lost).
    go_away: bool,
    /// Send (again) the close frame while closing.
    close: bool,
    path_responses: VecDeque<[u8; 8]>,
    path_challenge: bool,
}

/// An MXP connection.
#[derive(Debug)]
pub struct Connection {
    side: Side,
    config: Arc<TransportConfig>,
    state: State,
    local_cid: ConnectionId,
    remote_cid: ConnectionId,
    path: Path,
    handshake: Handshake,
    keys: Option<KeyState>,
    peer_params: Option<TransportParams>,
    peer_key: Option<PublicKey>,
    /// The server's proof that it lost this connection (client side).
    reset_token: Option<[u8; RESET_TOKEN_LEN]>,
    recovery: Recovery,
    /// Scratch lists for ACK processing, kept to avoid allocating per ACK.
    settled: Vec<recovery::SentPacket>,
    lost: Vec<recovery::SentPacket>,
    replay: ReplayWindow,
    /// Key updates the peer may still start (see
    /// [`TransportConfig::peer_key_update_rate`]).
    peer_key_updates: RateLimiter,
    acks: AckState,
    streams: Streams,
    datagrams: Datagrams,
    scheduler: Scheduler,
    pending: Pending,
    hostile: hostile::Hostile,
    close_frame: Option<Close>,
    /// The close frame went out at least once.
    close_sent: bool,
    /// This end told the peer it is draining the connection.
    going_away: bool,
    /// The peer told us it is draining the connection.
    peer_going_away: bool,
    /// Packets received while closing, and the count at which to answer
    /// with the close frame again (doubles, so a flood gets few answers).
    closing_received: u64,
    closing_answer_at: u64,
    timers: [Option<Instant>; TIMER_COUNT],
    last_ack_eliciting_sent: Option<Instant>,
    events: VecDeque<Event>,
    error: Option<ConnectionError>,
    stats: ConnectionStats,
    /// The parent of every event this connection logs: its id, peer,
    /// carrier and side appear on each line without being repeated.
    span: tracing::Span,
}

impl Connection {
    fn new(
        side: Side,
        config: Arc<TransportConfig>,
        local_cid: ConnectionId,
        remote_cid: ConnectionId,
        path: Path,
        handshake: Handshake,
        now: Instant,
    ) -> Self {
        let span = tracing::info_span!(
            "conn",
            conn = %local_cid,
            peer = %path.remote,
            carrier = "mxp",
            side = side.as_str()
        );
        let local = TransportParams::from_config(&config);
        // Until the peer's limits are known, assume none: the client learns
        // them from the server's answer before it can send anything.
        let limits = Limits {
            local_max_streams: [
                local.initial_max_streams_bidi,
                local.initial_max_streams_uni,
            ],
            local_stream_window: local.initial_max_stream_data,
            local_window: local.initial_max_data,
            peer_max_streams: [0; 2],
            peer_stream_window: 0,
            peer_window: 0,
            send_window: config.send_window,
        };
        let mut conn = Connection {
            side,
            recovery: Recovery::new(&config, now),
            settled: Vec::new(),
            lost: Vec::new(),
            replay: ReplayWindow::new(),
            peer_key_updates: RateLimiter::new(config.peer_key_update_rate, KEY_UPDATE_BURST, now),
            acks: AckState::default(),
            streams: Streams::new(side, limits),
            datagrams: Datagrams::new(config.datagram_send_buffer, config.datagram_receive_buffer),
            scheduler: Scheduler::new(config.band_weights),
            config,
            state: State::Handshake,
            local_cid,
            remote_cid,
            path,
            handshake,
            keys: None,
            peer_params: None,
            peer_key: None,
            reset_token: None,
            pending: Pending::default(),
            hostile: hostile::Hostile::default(),
            close_frame: None,
            close_sent: false,
            going_away: false,
            peer_going_away: false,
            closing_received: 0,
            closing_answer_at: 1,
            timers: [None; TIMER_COUNT],
            last_ack_eliciting_sent: None,
            events: VecDeque::new(),
            error: None,
            stats: ConnectionStats::default(),
            span,
        };
        conn.set_timer(Timer::Handshake, Some(now + conn.config.handshake_timeout));
        conn.reset_idle_timer(now);
        conn
    }

    /// The tracing span of this connection (fields `conn`, `peer`,
    /// `carrier`, `side`), the parent of everything it logs.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The id peers use to reach this end of the connection.
    pub fn local_cid(&self) -> ConnectionId {
        self.local_cid
    }

    /// The peer's current address.
    pub fn remote_address(&self) -> SocketAddr {
        self.path.remote
    }

    /// The peer's static public key, once the handshake authenticated it.
    pub fn peer_key(&self) -> Option<PublicKey> {
        self.peer_key
    }

    /// Whether the handshake completed and the connection is not closing.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Whether the connection is closing, draining or drained.
    pub fn is_closed(&self) -> bool {
        matches!(
            self.state,
            State::Closing | State::Draining | State::Drained
        )
    }

    /// Whether the connection is completely finished.
    pub fn is_drained(&self) -> bool {
        self.state == State::Drained
    }

    /// Why the connection ended, once it has.
    pub fn error(&self) -> Option<&ConnectionError> {
        self.error.as_ref()
    }

    /// Smoothed round-trip time.
    pub fn rtt(&self) -> Duration {
        self.recovery.rtt.smoothed()
    }

    /// Counters and current state, for monitoring.
    pub fn stats(&self) -> ConnectionStats {
        let mut s = self.stats;
        s.rtt = self.recovery.rtt.smoothed();
        s.min_rtt = self.recovery.rtt.min();
        s.congestion_window = self.recovery.cc.window();
        s.bytes_in_flight = self.recovery.bytes_in_flight;
        s.streams_active = self.streams.open_count() as u64;
        s.flow = self.streams.stats();
        s.bands = self.scheduler.stats();
        s.datagrams = self.datagrams.stats;
        s.key_updates = self.keys.as_ref().map_or(0, KeyState::generation);
        s.rtt_samples = self.recovery.rtt_histogram;
        s
    }

    /// Next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        self.streams.poll_event().map(Event::Stream)
    }

    // ---- streams and datagrams -------------------------------------------

    /// Opens a stream whose data is scheduled in `band`.
    pub fn open(&mut self, dir: Dir, band: Band) -> Result<StreamId, OpenError> {
        self.streams.open(dir, band)
    }

    /// The next stream the peer opened.
    pub fn accept(&mut self, dir: Dir) -> Option<StreamId> {
        self.streams.accept(dir)
    }

    /// Moves a stream's outgoing data to another band.
    pub fn set_band(&mut self, id: StreamId, band: Band) -> bool {
        self.streams.set_band(id, band)
    }

    /// Writes as much of `data` as flow control allows and returns how much
    /// that was; [`WriteError::Blocked`] if nothing fit.
    pub fn write(&mut self, id: StreamId, data: impl Into<Bytes>) -> Result<usize, WriteError> {
        if self.is_closed() {
            return Err(WriteError::ClosedStream);
        }
        let mut data = data.into();
        let n = self.streams.write(id, &mut data)?;
        self.schedule_stream(id);
        Ok(n)
    }

    /// Like [`write`](Self::write), copying from a slice (small writes are
    /// coalesced without allocating).
    pub fn write_slice(&mut self, id: StreamId, data: &[u8]) -> Result<usize, WriteError> {
        if self.is_closed() {
            return Err(WriteError::ClosedStream);
        }
        let n = self.streams.write_slice(id, data)?;
        self.schedule_stream(id);
        Ok(n)
    }

    /// Whether the peer has acknowledged everything written on `id` and its
    /// end (or the stream was reset); a `Finished` event marks the moment.
    pub fn is_send_done(&self, id: StreamId) -> bool {
        self.streams.is_send_done(id)
    }

    /// Bytes that [`write`](Self::write) would accept on `id` right now.
    pub fn write_credit(&self, id: StreamId) -> u64 {
        self.streams.write_credit(id)
    }

    /// Ends the stream after the data written so far.
    pub fn finish(&mut self, id: StreamId) -> Result<(), WriteError> {
        self.streams.finish(id)?;
        self.schedule_stream(id);
        Ok(())
    }

    /// Abandons the stream's sending side with an application error code.
    pub fn reset(&mut self, id: StreamId, code: u64) -> Result<(), WriteError> {
        self.streams.reset(id, code)
    }

    /// Reads up to `max` in-order bytes; `Ok(None)` at the end of the stream.
    pub fn read(&mut self, id: StreamId, max: usize) -> Result<Option<Bytes>, ReadError> {
        self.streams.read(id, max)
    }

    /// Like [`read`](Self::read), but the bytes returned keep counting
    /// against the connection's receive window until the caller gives
    /// them back with `release` (here, on its next read) or
    /// [`release_held`](Self::release_held). For a reader that buffers
    /// what it read (a message decoder, an echo waiting to write): what
    /// it holds stays within what this end advertised.
    pub fn read_held(
        &mut self,
        id: StreamId,
        max: usize,
        release: u64,
    ) -> Result<Option<Bytes>, ReadError> {
        self.streams.release(release);
        self.streams.read_held(id, max)
    }

    /// Gives back credit for `n` bytes taken with [`read_held`](Self::read_held).
    pub fn release_held(&mut self, n: u64) {
        self.streams.release(n);
    }

    /// Whether [`read`](Self::read) has something (data, end or reset).
    pub fn is_readable(&self, id: StreamId) -> bool {
        self.streams.is_readable(id)
    }

    /// Asks the peer to stop sending on `id`; unread data is discarded.
    pub fn stop(&mut self, id: StreamId, code: u64) -> Result<(), ReadError> {
        self.streams.stop(id, code)
    }

    /// Largest datagram payload the peer accepts and a packet can carry; 0
    /// if datagrams are off (or the handshake has not told us yet).
    pub fn max_datagram_size(&self) -> usize {
        let Some(p) = &self.peer_params else { return 0 };
        let room = self
            .max_packet_size()
            .saturating_sub(SHORT_OVERHEAD + 1 + 2);
        (p.max_datagram_size as usize).min(room)
    }

    /// Queues an unreliable datagram in `band`.
    pub fn send_datagram(
        &mut self,
        data: impl Into<Bytes>,
        band: Band,
    ) -> Result<(), DatagramError> {
        if self.is_closed() {
            return Err(DatagramError::Disabled);
        }
        let max = self.max_datagram_size();
        if self.datagrams.send(data.into(), band, max)? {
            self.scheduler.push(band, Flow::Datagrams);
        }
        Ok(())
    }

    /// The next received datagram.
    pub fn recv_datagram(&mut self) -> Option<Bytes> {
        self.datagrams.recv()
    }

    fn schedule_stream(&mut self, id: StreamId) {
        if let Some(band) = self.streams.wants_schedule(id) {
            self.scheduler.push(band, Flow::Stream(id));
        }
    }

    // ---- draining ----------------------------------------------------------

    /// Tells the peer this connection is being drained: it should finish
    /// what is in flight and open new work elsewhere. The connection keeps
    /// working meanwhile; close it when the drain deadline passes.
    pub fn go_away(&mut self) {
        if !self.going_away && !self.is_closed() {
            self.going_away = true;
            self.pending.go_away = true;
        }
    }

    /// Whether this end asked the peer to go away.
    pub fn is_going_away(&self) -> bool {
        self.going_away
    }

    /// Whether the peer asked us to go away.
    pub fn peer_going_away(&self) -> bool {
        self.peer_going_away
    }

    // ---- closing -----------------------------------------------------------

    /// Closes the connection with an application error code and reason. The
    /// peer is told; unacknowledged data is abandoned.
    pub fn close(&mut self, now: Instant, code: u64, reason: impl Into<Bytes>) {
        let frame = Close {
            kind: CloseKind::Application,
            error_code: code,
            reason: reason.into(),
        };
        self.enter_closing(now, frame, ConnectionError::LocallyClosed);
    }

    /// Closes because the peer broke the protocol.
    fn close_with_error(&mut self, now: Instant, err: TransportError) {
        debug!(parent: &self.span, error = %err, "closing on protocol error");
        self.stats.protocol_errors += 1;
        let frame = Close {
            kind: CloseKind::Transport {
                frame_type: err.frame_type.unwrap_or(0),
            },
            error_code: err.code.0,
            reason: Bytes::from(err.reason.clone()),
        };
        self.enter_closing(now, frame, ConnectionError::TransportError(err));
    }

    fn enter_closing(&mut self, now: Instant, frame: Close, reason: ConnectionError) {
        if self.is_closed() {
            return;
        }
        info!(parent: &self.span, reason = %reason, "connection closing");
        let had_keys = self.keys.is_some();
        self.lost(reason);
        if !had_keys {
            // Nothing to protect a close frame with: the peer will time out.
            self.set_drained();
            return;
        }
        self.state = State::Closing;
        self.close_frame = Some(frame);
        self.pending.close = true;
        self.closing_received = 0;
        self.closing_answer_at = 1;
        // The closing period starts when the close frame first goes out
        // (see `build_close`); until then only a fallback bounds it, so a
        // busy owner that polls late cannot drain the connection before the
        // peer was ever told.
        self.clear_timers();
        self.set_timer(Timer::Close, Some(now + CLOSE_FALLBACK));
    }

    /// The handshake is complete on this side (client: the server's answer
    /// authenticated; server: the client proved its address).
    fn on_established(&mut self, now: Instant) {
        self.handshake = Handshake::Done;
        self.state = State::Established;
        self.set_timer(Timer::Handshake, None);
        self.reset_idle_timer(now);
        if let Some(interval) = self.config.keep_alive_interval {
            self.set_timer(Timer::KeepAlive, Some(now + interval));
        }
        info!(parent: &self.span, "connected");
        self.events.push_back(Event::Connected);
    }

    /// The stateless-reset token the server gave this (client) connection.
    pub(crate) fn reset_token(&self) -> Option<[u8; RESET_TOKEN_LEN]> {
        self.reset_token
    }

    /// Whether `datagram` ends with the server's stateless-reset token for
    /// this connection (compared in constant time).
    pub(crate) fn is_stateless_reset(&self, datagram: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let Some(token) = &self.reset_token else {
            return false;
        };
        datagram.len() >= MIN_RESET_LEN
            && bool::from(datagram[datagram.len() - RESET_TOKEN_LEN..].ct_eq(token))
    }

    /// The server proved it no longer has this connection (it restarted):
    /// end at once, sending nothing.
    pub(crate) fn stateless_reset(&mut self) {
        info!(parent: &self.span, "connection reset by the peer (it lost its state)");
        self.lost(ConnectionError::Reset);
        self.set_drained();
    }

    /// The peer closed (or the connection failed): report it once.
    fn lost(&mut self, reason: ConnectionError) {
        if self.error.is_none() {
            let announce = self.state == State::Established
                || !matches!(reason, ConnectionError::LocallyClosed);
            self.error = Some(reason.clone());
            if announce && !(self.side == Side::Node && self.state == State::Handshake) {
                self.events.push_back(Event::ConnectionLost { reason });
            }
        }
    }

    fn enter_draining(&mut self, now: Instant, reason: ConnectionError) {
        if matches!(self.state, State::Draining | State::Drained) {
            return;
        }
        info!(parent: &self.span, reason = %reason, "peer closed the connection");
        self.lost(reason);
        self.state = State::Draining;
        let until = now + 3 * self.recovery.pto(&self.config, self.peer_max_ack_delay());
        self.clear_timers();
        self.set_timer(Timer::Close, Some(until));
    }

    fn set_drained(&mut self) {
        if self.state != State::Drained {
            self.state = State::Drained;
            self.clear_timers();
            self.events.push_back(Event::Drained);
        }
    }

    // ---- timers ------------------------------------------------------------

    fn set_timer(&mut self, timer: Timer, at: Option<Instant>) {
        self.timers[timer as usize] = at;
    }

    fn timer(&self, timer: Timer) -> Option<Instant> {
        self.timers[timer as usize]
    }

    fn clear_timers(&mut self) {
        self.timers = [None; TIMER_COUNT];
    }

    fn idle_timeout(&self) -> Duration {
        let local = self.config.idle_timeout;
        match self.peer_params.map(|p| p.idle_timeout) {
            Some(peer) if !peer.is_zero() && peer < local => peer,
            _ => local,
        }
    }

    fn reset_idle_timer(&mut self, now: Instant) {
        if !self.is_closed() {
            let at = now + self.idle_timeout();
            self.set_timer(Timer::Idle, Some(at));
        }
    }

    fn peer_max_ack_delay(&self) -> Duration {
        self.peer_params
            .map_or(self.config.max_ack_delay, |p| p.max_ack_delay)
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().flatten().min().copied()
    }

    /// Runs whatever timers expired at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in [
            Timer::Close,
            Timer::Handshake,
            Timer::Idle,
            Timer::LossDetection,
            Timer::Ack,
            Timer::KeepAlive,
            Timer::Pacing,
        ] {
            let Some(at) = self.timer(timer) else {
                continue;
            };
            if at > now {
                continue;
            }
            self.set_timer(timer, None);
            match timer {
                Timer::Close => self.set_drained(),
                Timer::Handshake => {
                    if self.state == State::Handshake {
                        let error = self.handshake_timeout_error();
                        info!(target: HANDSHAKE, parent: &self.span, %error, "handshake timed out");
                        self.lost(error);
                        self.set_drained();
                    }
                }
                Timer::Idle => {
                    info!(parent: &self.span, "idle timeout");
                    self.lost(ConnectionError::TimedOut);
                    self.set_drained();
                }
                Timer::LossDetection => self.on_loss_detection_timeout(now),
                // The ACK is sent by the next poll_transmit.
                Timer::Ack => {}
                Timer::KeepAlive => self.pending.ping = true,
                Timer::Pacing => {}
            }
            if self.state == State::Drained {
                return;
            }
        }
    }

    /// Biggest datagram this connection sends.
    fn max_packet_size(&self) -> usize {
        let local = usize::from(self.config.max_udp_payload_size);
        match &self.peer_params {
            Some(p) => local.min(p.max_udp_payload_size as usize),
            None => local,
        }
    }
}
