//! Streams: opening and accepting them, ordered reliable delivery, and the
//! two levels of flow control (per stream and per connection).
//!
//! The application never buffers more than the peer allowed: a write takes
//! at most the credit left, and returns [`WriteError::Blocked`] the moment
//! there is none. That is the backpressure signal; a `Writable` event follows
//! when the peer grants more.

mod recv;
mod send;

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};

use bytes::Bytes;
use thiserror::Error;

use crate::error::{TransportError, TransportErrorCode};
use crate::frame::{self, Frame, types};
use crate::{Band, Dir, Side, StreamId};

pub(crate) use recv::RecvBuffer;
pub(crate) use send::SendBuffer;

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WriteError {
    /// Flow-control credit is exhausted; wait for a `Writable` event.
    #[error("stream is blocked by flow control")]
    Blocked,
    /// The peer asked us to stop sending, with this code.
    #[error("peer stopped the stream with code {0}")]
    Stopped(u64),
    /// The stream does not exist, was finished or was reset.
    #[error("stream is closed for writing")]
    ClosedStream,
}

/// Why a read returned no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ReadError {
    /// Nothing to read yet; wait for a `Readable` event.
    #[error("no data available yet")]
    Blocked,
    /// The peer abandoned the stream with this code.
    #[error("peer reset the stream with code {0}")]
    Reset(u64),
    /// The stream does not exist or was stopped.
    #[error("stream is closed for reading")]
    ClosedStream,
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum OpenError {
    /// The peer's stream limit is reached; wait for an `Available` event.
    #[error("the peer's limit on open streams is reached")]
    Limit,
}

/// Something that happened to a stream, for the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEvent {
    /// The peer opened a stream; accept it.
    Opened {
        /// Its direction.
        dir: Dir,
    },
    /// Data (or the end of the stream, or a reset) can be read.
    Readable {
        /// The stream.
        id: StreamId,
    },
    /// A write that was blocked may now proceed.
    Writable {
        /// The stream.
        id: StreamId,
    },
    /// The peer acknowledged everything written and the end of the stream.
    Finished {
        /// The stream.
        id: StreamId,
    },
    /// The peer asked us to stop sending.
    Stopped {
        /// The stream.
        id: StreamId,
        /// Application code.
        code: u64,
    },
    /// More streams of this direction may be opened.
    Available {
        /// Direction.
        dir: Dir,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fin {
    Open,
    Pending,
    Sent,
    Acked,
}

#[derive(Debug)]
struct ResetState {
    code: u64,
    final_size: u64,
    acked: bool,
}

#[derive(Debug)]
struct SendHalf {
    buf: SendBuffer,
    /// Highest offset the peer lets us send.
    max_data: u64,
    fin: Fin,
    reset: Option<ResetState>,
    stopped: Option<u64>,
    /// Limit at which STREAM_DATA_BLOCKED was last announced.
    blocked_at: Option<u64>,
    /// A write came back short: tell the application when credit arrives.
    wants_writable: bool,
}

impl SendHalf {
    fn has_pending(&self) -> bool {
        self.reset.is_none() && (self.buf.has_pending() || self.fin == Fin::Pending)
    }

    fn is_done(&self) -> bool {
        match &self.reset {
            Some(r) => r.acked,
            None => self.fin == Fin::Acked && self.buf.all_acked(),
        }
    }
}

#[derive(Debug)]
struct RecvHalf {
    buf: RecvBuffer,
    /// Highest offset we allow the peer to send.
    max_data: u64,
    reset: Option<u64>,
    /// The application has seen the end (FIN or reset).
    observed_end: bool,
    stopped: bool,
    update_queued: bool,
}

impl RecvHalf {
    fn is_done(&self) -> bool {
        self.observed_end || (self.stopped && self.buf.final_size().is_some())
    }
}

#[derive(Debug)]
struct Stream {
    send: Option<SendHalf>,
    recv: Option<RecvHalf>,
    band: Band,
    /// In the scheduler's queue.
    scheduled: bool,
}

/// A stream frame that went out, so its fate can be applied later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Record {
    Data {
        id: StreamId,
        offset: u64,
        len: u64,
        fin: bool,
    },
    Reset(StreamId),
    StopSending(StreamId, u64),
    MaxData,
    MaxStreamData(StreamId),
    MaxStreams(Dir),
    DataBlocked(u64),
    StreamDataBlocked(StreamId, u64),
    StreamsBlocked(Dir, u64),
}

/// Control frames waiting to be sent.
#[derive(Debug, Default)]
struct Pending {
    max_data: bool,
    max_stream_data: VecDeque<StreamId>,
    max_streams: [bool; 2],
    data_blocked: Option<u64>,
    stream_data_blocked: VecDeque<(StreamId, u64)>,
    streams_blocked: [Option<u64>; 2],
    resets: VecDeque<StreamId>,
    stop_sending: VecDeque<(StreamId, u64)>,
}

/// Flow-control and stream counters, for stats and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Bytes of credit the peer consumed on our receive window.
    pub recv_credit_consumed: u64,
    /// Bytes of the peer's credit we consumed.
    pub send_credit_consumed: u64,
    /// MAX_DATA and MAX_STREAM_DATA frames sent.
    pub window_updates_sent: u64,
    /// Writes refused or cut short because a window was full.
    pub blocked_events: u64,
    /// Streams opened by either end.
    pub streams_opened: u64,
    /// Streams fully closed and forgotten.
    pub streams_closed: u64,
}

impl FlowStats {
    /// Adds `other`'s counters.
    pub fn accumulate(&mut self, other: &FlowStats) {
        self.recv_credit_consumed += other.recv_credit_consumed;
        self.send_credit_consumed += other.send_credit_consumed;
        self.window_updates_sent += other.window_updates_sent;
        self.blocked_events += other.blocked_events;
        self.streams_opened += other.streams_opened;
        self.streams_closed += other.streams_closed;
    }
}

/// All streams of a connection.
#[derive(Debug)]
pub(crate) struct Streams {
    side: Side,
    map: HashMap<StreamId, Stream>,
    next_local: [u64; 2],
    max_local: [u64; 2],
    next_remote: [u64; 2],
    max_remote: [u64; 2],
    accept: [VecDeque<StreamId>; 2],
    open_blocked: [bool; 2],
    /// Peer's connection-wide limit, and what the application wrote.
    send_max: u64,
    send_written: u64,
    conn_blocked_at: Option<u64>,
    waiting_for_conn_credit: Vec<StreamId>,
    /// Our connection-wide limit, what the peer used of it, what was read.
    recv_max: u64,
    recv_high: u64,
    recv_read: u64,
    recv_window: u64,
    stream_recv_window: u64,
    peer_stream_window: u64,
    pending: Pending,
    events: VecDeque<StreamEvent>,
    stats: FlowStats,
    /// Ranges received past a hole, over all streams (see [`MAX_FRAGMENTS`]).
    fragments: usize,
    /// Bytes written and not yet acknowledged, over all streams, and the
    /// most there may be: a peer that withholds ACKs cannot make this end
    /// keep more, whatever credit it grants.
    unacked: u64,
    send_window: u64,
    /// Bytes read but still held by the application (see
    /// [`Connection::read_held`](crate::Connection::read_held)): they are
    /// not credited back to the connection window yet.
    held: u64,
}

/// Most ranges a connection holds past holes in its streams' data. Each
/// costs a few dozen bytes beyond the data, so without a cap one-byte frames
/// with gaps between them would cost far more than the window they fit in.
/// Loss alone never comes close: a full 16 MiB window with every other
/// packet lost is about 5,800.
pub(crate) const MAX_FRAGMENTS: usize = 16_384;

fn dir_index(dir: Dir) -> usize {
    dir as usize
}

fn stream_state_error(msg: &str) -> TransportError {
    TransportError::new(TransportErrorCode::STREAM_STATE_ERROR, msg)
}

fn flow_control_error(msg: &str) -> TransportError {
    TransportError::new(TransportErrorCode::FLOW_CONTROL_ERROR, msg)
}

/// Limits agreed in the handshake.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub local_max_streams: [u64; 2],
    pub local_stream_window: u64,
    pub local_window: u64,
    pub peer_max_streams: [u64; 2],
    pub peer_stream_window: u64,
    pub peer_window: u64,
    /// Most bytes written and not yet acknowledged, over all streams.
    pub send_window: u64,
}

impl Streams {
    pub(crate) fn new(side: Side, limits: Limits) -> Self {
        Streams {
            side,
            map: HashMap::new(),
            next_local: [0; 2],
            max_local: limits.peer_max_streams,
            next_remote: [0; 2],
            max_remote: limits.local_max_streams,
            accept: Default::default(),
            open_blocked: [false; 2],
            send_max: limits.peer_window,
            send_written: 0,
            conn_blocked_at: None,
            waiting_for_conn_credit: Vec::new(),
            recv_max: limits.local_window,
            recv_high: 0,
            recv_read: 0,
            recv_window: limits.local_window,
            stream_recv_window: limits.local_stream_window,
            peer_stream_window: limits.peer_stream_window,
            pending: Pending::default(),
            events: VecDeque::new(),
            stats: FlowStats::default(),
            fragments: 0,
            unacked: 0,
            send_window: limits.send_window,
            held: 0,
        }
    }

    /// Peer's limits became known (the client learns them from the
    /// server's handshake answer, after streams may already exist).
    pub(crate) fn set_peer_limits(
        &mut self,
        max_streams: [u64; 2],
        stream_window: u64,
        window: u64,
    ) {
        self.max_local = max_streams;
        self.peer_stream_window = stream_window;
        self.send_max = window;
        for (id, s) in &mut self.map {
            if id.initiator() == self.side {
                if let Some(send) = &mut s.send {
                    send.max_data = stream_window;
                }
            }
        }
    }

    pub(crate) fn stats(&self) -> FlowStats {
        self.stats
    }

    /// Whether the peer's data lies in more pieces than the connection keeps
    /// (the connection is being closed for it).
    pub(crate) fn is_too_fragmented(&self) -> bool {
        self.fragments > MAX_FRAGMENTS
    }

    pub(crate) fn open_count(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn poll_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    fn new_stream(&self, id: StreamId, band: Band) -> Stream {
        let local = id.initiator() == self.side;
        let sends = id.dir() == Dir::Bi || local;
        let recvs = id.dir() == Dir::Bi || !local;
        Stream {
            send: sends.then(|| SendHalf {
                buf: SendBuffer::default(),
                max_data: self.peer_stream_window,
                fin: Fin::Open,
                reset: None,
                stopped: None,
                blocked_at: None,
                wants_writable: false,
            }),
            recv: recvs.then(|| RecvHalf {
                buf: RecvBuffer::default(),
                max_data: self.stream_recv_window,
                reset: None,
                observed_end: false,
                stopped: false,
                update_queued: false,
            }),
            band,
            scheduled: false,
        }
    }

    /// Opens a stream of our own.
    pub(crate) fn open(&mut self, dir: Dir, band: Band) -> Result<StreamId, OpenError> {
        let d = dir_index(dir);
        if self.next_local[d] >= self.max_local[d] {
            self.open_blocked[d] = true;
            if self.pending.streams_blocked[d].is_none() {
                self.pending.streams_blocked[d] = Some(self.max_local[d]);
            }
            return Err(OpenError::Limit);
        }
        let id = StreamId::new(self.side, dir, self.next_local[d]);
        self.next_local[d] += 1;
        let stream = self.new_stream(id, band);
        self.map.insert(id, stream);
        self.stats.streams_opened += 1;
        Ok(id)
    }

    /// Next stream the peer opened, if any.
    pub(crate) fn accept(&mut self, dir: Dir) -> Option<StreamId> {
        self.accept[dir_index(dir)].pop_front()
    }

    /// Changes the band a stream's data is sent in.
    pub(crate) fn set_band(&mut self, id: StreamId, band: Band) -> bool {
        match self.map.get_mut(&id) {
            Some(s) => {
                s.band = band;
                true
            }
            None => false,
        }
    }

    /// Band of a stream and whether it should be put in the scheduler's
    /// queue now (it has data and is not already queued).
    pub(crate) fn wants_schedule(&mut self, id: StreamId) -> Option<Band> {
        let s = self.map.get_mut(&id)?;
        let pending = s.send.as_ref().is_some_and(SendHalf::has_pending);
        if pending && !s.scheduled {
            s.scheduled = true;
            Some(s.band)
        } else {
            None
        }
    }

    /// Accepts as much of `data` as flow control allows, keeping the bytes
    /// it accepts (split off the front of `data`) without copying them.
    pub(crate) fn write(&mut self, id: StreamId, data: &mut Bytes) -> Result<usize, WriteError> {
        let n = self.accept_bytes(id, data.len())?;
        if n > 0 {
            self.send_half(id)?.buf.write(data.split_to(n));
        }
        Ok(n)
    }

    /// Like [`write`](Self::write), copying from a slice: small writes go
    /// straight into the stream's coalescing buffer, with no allocation.
    pub(crate) fn write_slice(&mut self, id: StreamId, data: &[u8]) -> Result<usize, WriteError> {
        let n = self.accept_bytes(id, data.len())?;
        if n > 0 {
            self.send_half(id)?.buf.write_slice(&data[..n]);
        }
        Ok(n)
    }

    fn send_half(&mut self, id: StreamId) -> Result<&mut SendHalf, WriteError> {
        self.map
            .get_mut(&id)
            .and_then(|s| s.send.as_mut())
            .ok_or(WriteError::ClosedStream)
    }

    /// How many of `len` bytes flow control lets the application write on
    /// `id` now; charges them to both windows and, when the answer falls
    /// short, records who is blocked so a `Writable` event follows.
    fn accept_bytes(&mut self, id: StreamId, len: usize) -> Result<usize, WriteError> {
        let peer_credit = self.send_max - self.send_written;
        let conn_credit = peer_credit.min(self.send_window.saturating_sub(self.unacked));
        let s = self.map.get_mut(&id).ok_or(WriteError::ClosedStream)?;
        let send = s.send.as_mut().ok_or(WriteError::ClosedStream)?;
        if let Some(code) = send.stopped {
            return Err(WriteError::Stopped(code));
        }
        if send.fin != Fin::Open || send.reset.is_some() {
            return Err(WriteError::ClosedStream);
        }
        let stream_credit = send.max_data - send.buf.end();
        let n = (len as u64).min(stream_credit).min(conn_credit) as usize;
        if n < len {
            self.stats.blocked_events += 1;
            if stream_credit <= conn_credit {
                send.wants_writable = true;
                if send.blocked_at != Some(send.max_data) {
                    send.blocked_at = Some(send.max_data);
                    self.pending
                        .stream_data_blocked
                        .push_back((id, send.max_data));
                }
            } else {
                if !self.waiting_for_conn_credit.contains(&id) {
                    self.waiting_for_conn_credit.push(id);
                }
                // Tell the peer only when its limit is what binds.
                if conn_credit == peer_credit && self.conn_blocked_at != Some(self.send_max) {
                    self.conn_blocked_at = Some(self.send_max);
                    self.pending.data_blocked = Some(self.send_max);
                }
            }
        }
        if n == 0 && len > 0 {
            return Err(WriteError::Blocked);
        }
        self.send_written += n as u64;
        self.unacked += n as u64;
        self.stats.send_credit_consumed += n as u64;
        Ok(n)
    }

    /// Marks the end of the stream after what was written.
    pub(crate) fn finish(&mut self, id: StreamId) -> Result<(), WriteError> {
        let send = self
            .map
            .get_mut(&id)
            .and_then(|s| s.send.as_mut())
            .ok_or(WriteError::ClosedStream)?;
        if let Some(code) = send.stopped {
            return Err(WriteError::Stopped(code));
        }
        if send.fin != Fin::Open || send.reset.is_some() {
            return Err(WriteError::ClosedStream);
        }
        send.fin = Fin::Pending;
        Ok(())
    }

    /// Abandons sending: unsent and lost data is never (re)sent.
    pub(crate) fn reset(&mut self, id: StreamId, code: u64) -> Result<(), WriteError> {
        let send = self
            .map
            .get_mut(&id)
            .and_then(|s| s.send.as_mut())
            .ok_or(WriteError::ClosedStream)?;
        if send.reset.is_some() || send.fin == Fin::Acked {
            return Err(WriteError::ClosedStream);
        }
        send.reset = Some(ResetState {
            code,
            final_size: send.buf.end(),
            acked: false,
        });
        self.pending.resets.push_back(id);
        Ok(())
    }

    /// Reads the next in-order bytes; `Ok(None)` at the end of the stream.
    pub(crate) fn read(&mut self, id: StreamId, max: usize) -> Result<Option<Bytes>, ReadError> {
        self.read_into(id, max, false)
    }

    /// Like [`read`](Self::read), keeping the bytes charged to the
    /// connection window until [`release`](Self::release).
    pub(crate) fn read_held(
        &mut self,
        id: StreamId,
        max: usize,
    ) -> Result<Option<Bytes>, ReadError> {
        self.read_into(id, max, true)
    }

    fn read_into(
        &mut self,
        id: StreamId,
        max: usize,
        hold: bool,
    ) -> Result<Option<Bytes>, ReadError> {
        let s = self.map.get_mut(&id).ok_or(ReadError::ClosedStream)?;
        let recv = s.recv.as_mut().ok_or(ReadError::ClosedStream)?;
        if recv.stopped {
            return Err(ReadError::ClosedStream);
        }
        if let Some(code) = recv.reset {
            recv.observed_end = true;
            self.maybe_forget(id);
            return Err(ReadError::Reset(code));
        }
        match recv.buf.read(max) {
            Some(chunk) => {
                let n = chunk.len() as u64;
                self.recv_read += n;
                if hold {
                    self.held += n;
                }
                self.after_read(id);
                Ok(Some(chunk))
            }
            None if recv.buf.is_finished() => {
                recv.observed_end = true;
                self.maybe_forget(id);
                Ok(None)
            }
            None => Err(ReadError::Blocked),
        }
    }

    /// Whether `read` would return something other than `Blocked`.
    pub(crate) fn is_readable(&self, id: StreamId) -> bool {
        self.map
            .get(&id)
            .and_then(|s| s.recv.as_ref())
            .is_some_and(|r| r.reset.is_some() || r.buf.is_readable())
    }

    /// Tells the peer to stop sending; anything it still sends is discarded.
    pub(crate) fn stop(&mut self, id: StreamId, code: u64) -> Result<(), ReadError> {
        let recv = self
            .map
            .get_mut(&id)
            .and_then(|s| s.recv.as_mut())
            .ok_or(ReadError::ClosedStream)?;
        if recv.stopped || recv.observed_end {
            return Err(ReadError::ClosedStream);
        }
        recv.stopped = true;
        // Credit the unread bytes back to the connection window.
        let unread = recv.buf.high() - recv.buf.bytes_read();
        self.fragments -= recv.buf.fragments();
        recv.buf.discard();
        self.recv_read += unread;
        if recv.buf.final_size().is_none() {
            self.pending.stop_sending.push_back((id, code));
        }
        self.grant_conn_credit();
        self.maybe_forget(id);
        Ok(())
    }

    fn after_read(&mut self, id: StreamId) {
        if let Some(recv) = self.map.get_mut(&id).and_then(|s| s.recv.as_mut()) {
            let read = recv.buf.bytes_read();
            if recv.buf.final_size().is_none()
                && recv.max_data - read < self.stream_recv_window / 2
                && !recv.update_queued
            {
                recv.update_queued = true;
                self.pending.max_stream_data.push_back(id);
            }
        }
        self.grant_conn_credit();
    }

    fn grant_conn_credit(&mut self) {
        let consumed = self.recv_read - self.held;
        if self.recv_max - consumed < self.recv_window / 2 {
            self.recv_max = consumed + self.recv_window;
            self.pending.max_data = true;
        }
    }

    /// The application let go of `n` held bytes.
    pub(crate) fn release(&mut self, n: u64) {
        if n > 0 {
            self.held -= n.min(self.held);
            self.grant_conn_credit();
        }
    }

    /// Forgets a stream both of whose halves are done, returning a stream
    /// credit to the peer if it opened it.
    fn maybe_forget(&mut self, id: StreamId) {
        let Some(s) = self.map.get(&id) else { return };
        let send_done = s.send.as_ref().is_none_or(SendHalf::is_done);
        let recv_done = s.recv.as_ref().is_none_or(RecvHalf::is_done);
        if !(send_done && recv_done) {
            return;
        }
        self.fragments -= s.recv.as_ref().map_or(0, |r| r.buf.fragments());
        self.unacked -= s.send.as_ref().map_or(0, |h| h.buf.unacked());
        self.map.remove(&id);
        self.stats.streams_closed += 1;
        if id.initiator() != self.side {
            let d = dir_index(id.dir());
            self.max_remote[d] += 1;
            self.pending.max_streams[d] = true;
        }
    }

    /// Finds (or implicitly opens) the stream a peer frame refers to.
    /// `Ok(None)`: a stream already closed and forgotten; ignore the frame.
    fn get_for_frame(
        &mut self,
        id: StreamId,
        peer_sends: bool,
    ) -> Result<Option<&mut Stream>, TransportError> {
        let local = id.initiator() == self.side;
        if id.dir() == Dir::Uni && local == peer_sends {
            return Err(stream_state_error(if peer_sends {
                "data on our own unidirectional stream"
            } else {
                "flow control for the peer's unidirectional stream"
            }));
        }
        let d = dir_index(id.dir());
        if local {
            if id.index() >= self.next_local[d] {
                return Err(stream_state_error("frame for a stream we never opened"));
            }
        } else if id.index() >= self.next_remote[d] {
            if id.index() >= self.max_remote[d] {
                return Err(TransportError::new(
                    TransportErrorCode::STREAM_LIMIT_ERROR,
                    "peer exceeded the stream limit",
                ));
            }
            for index in self.next_remote[d]..=id.index() {
                let new_id = StreamId::new(self.side.peer(), id.dir(), index);
                let stream = self.new_stream(new_id, Band::default());
                self.map.insert(new_id, stream);
                self.accept[d].push_back(new_id);
                self.events.push_back(StreamEvent::Opened { dir: id.dir() });
                self.stats.streams_opened += 1;
            }
            self.next_remote[d] = id.index() + 1;
        }
        Ok(self.map.get_mut(&id))
    }

    /// A STREAM frame arrived.
    pub(crate) fn on_stream_frame(&mut self, f: frame::Stream) -> Result<(), TransportError> {
        let frame_type = types::STREAM;
        let stream_window_error = || flow_control_error("stream data beyond the stream's limit");
        let Some(s) = self
            .get_for_frame(f.id, true)
            .map_err(|e| e.in_frame(frame_type))?
        else {
            return Ok(());
        };
        let Some(recv) = s.recv.as_mut() else {
            return Err(stream_state_error("data on a send-only stream").in_frame(frame_type));
        };
        let end = f.offset + f.data.len() as u64;
        if end > recv.max_data {
            return Err(stream_window_error().in_frame(frame_type));
        }
        if recv.reset.is_some() {
            return Ok(());
        }
        let was_readable = recv.buf.is_readable();
        let fragments = recv.buf.fragments();
        let grew = recv
            .buf
            .insert(f.offset, &f.data, f.fin)
            .map_err(|e| e.in_frame(frame_type))?;
        let stopped = recv.stopped;
        if stopped {
            recv.buf.discard();
        }
        let readable = !was_readable && recv.buf.is_readable();
        let fragments_now = recv.buf.fragments();
        self.fragments = self.fragments + fragments_now - fragments;
        self.recv_high += grew;
        self.stats.recv_credit_consumed += grew;
        if self.recv_high > self.recv_max {
            return Err(
                flow_control_error("data beyond the connection's limit").in_frame(frame_type)
            );
        }
        if self.fragments > MAX_FRAGMENTS {
            return Err(TransportError::new(
                TransportErrorCode::PROTOCOL_VIOLATION,
                "stream data too fragmented",
            )
            .in_frame(frame_type));
        }
        if stopped {
            // Discarded, but the credit it used goes back at once.
            self.recv_read += grew;
            self.grant_conn_credit();
            self.maybe_forget(f.id);
        } else if readable {
            self.events.push_back(StreamEvent::Readable { id: f.id });
        }
        Ok(())
    }

    /// A RESET_STREAM frame arrived.
    pub(crate) fn on_reset(&mut self, f: frame::ResetStream) -> Result<(), TransportError> {
        let ty = types::RESET_STREAM;
        let Some(s) = self.get_for_frame(f.id, true).map_err(|e| e.in_frame(ty))? else {
            return Ok(());
        };
        let Some(recv) = s.recv.as_mut() else {
            return Err(stream_state_error("reset of a send-only stream").in_frame(ty));
        };
        if recv.reset.is_some() || recv.observed_end {
            return Ok(());
        }
        if f.final_size > recv.max_data {
            return Err(
                flow_control_error("reset final size beyond the stream's limit").in_frame(ty),
            );
        }
        let unread = recv.buf.high() - recv.buf.bytes_read();
        let fragments = recv.buf.fragments();
        let grew = recv.buf.reset(f.final_size).map_err(|e| e.in_frame(ty))?;
        recv.reset = Some(f.error_code);
        let stopped = recv.stopped;
        self.fragments -= fragments;
        self.recv_high += grew;
        self.stats.recv_credit_consumed += grew;
        if self.recv_high > self.recv_max {
            return Err(flow_control_error("reset beyond the connection's limit").in_frame(ty));
        }
        // Nothing more will be read: return all of it to the window.
        self.recv_read += grew + if stopped { 0 } else { unread };
        self.grant_conn_credit();
        if stopped {
            self.maybe_forget(f.id);
        } else {
            self.events.push_back(StreamEvent::Readable { id: f.id });
        }
        Ok(())
    }

    /// A STOP_SENDING frame arrived: reset the stream as asked.
    pub(crate) fn on_stop_sending(&mut self, f: frame::StopSending) -> Result<(), TransportError> {
        let ty = types::STOP_SENDING;
        let Some(s) = self
            .get_for_frame(f.id, false)
            .map_err(|e| e.in_frame(ty))?
        else {
            return Ok(());
        };
        let Some(send) = s.send.as_mut() else {
            return Err(stream_state_error("stop sending on a receive-only stream").in_frame(ty));
        };
        if send.stopped.is_some() {
            return Ok(());
        }
        send.stopped = Some(f.error_code);
        self.events.push_back(StreamEvent::Stopped {
            id: f.id,
            code: f.error_code,
        });
        // Already reset, or everything acknowledged: nothing to abandon.
        let _ = self.reset(f.id, f.error_code);
        Ok(())
    }

    /// MAX_DATA arrived.
    pub(crate) fn on_max_data(&mut self, max: u64) {
        if max <= self.send_max {
            return;
        }
        self.send_max = max;
        self.wake_conn_waiters();
    }

    /// Connection-wide room to write grew: tell every stream that waited.
    fn wake_conn_waiters(&mut self) {
        for id in self.waiting_for_conn_credit.drain(..) {
            self.events.push_back(StreamEvent::Writable { id });
        }
    }

    /// MAX_STREAM_DATA arrived.
    pub(crate) fn on_max_stream_data(
        &mut self,
        id: StreamId,
        max: u64,
    ) -> Result<(), TransportError> {
        let ty = types::MAX_STREAM_DATA;
        let Some(s) = self.get_for_frame(id, false).map_err(|e| e.in_frame(ty))? else {
            return Ok(());
        };
        let Some(send) = s.send.as_mut() else {
            return Err(stream_state_error("credit for a receive-only stream").in_frame(ty));
        };
        if max > send.max_data {
            send.max_data = max;
            if std::mem::take(&mut send.wants_writable) {
                self.events.push_back(StreamEvent::Writable { id });
            }
        }
        Ok(())
    }

    /// MAX_STREAMS arrived.
    pub(crate) fn on_max_streams(&mut self, dir: Dir, count: u64) {
        let d = dir_index(dir);
        if count > self.max_local[d] {
            self.max_local[d] = count;
            if std::mem::take(&mut self.open_blocked[d]) {
                self.events.push_back(StreamEvent::Available { dir });
            }
        }
    }

    /// Writes the next frame of stream `id` into `out` if at least a byte
    /// (or a bare FIN) fits in `space`. Returns its record and whether the
    /// stream has more to send.
    pub(crate) fn write_stream_frame(
        &mut self,
        id: StreamId,
        space: usize,
        out: &mut Vec<u8>,
    ) -> (Option<Record>, bool) {
        let Some(s) = self.map.get_mut(&id) else {
            return (None, false);
        };
        let Some(send) = s.send.as_mut().filter(|send| send.has_pending()) else {
            s.scheduled = false;
            return (None, false);
        };
        let next = send.buf.next_range(space as u64);
        let offset = next.as_ref().map_or(send.buf.end(), |r| r.start);
        let header = frame::stream_header_len(id, offset, space, true);
        if space <= header {
            return (None, true);
        }
        let range = send
            .buf
            .next_range((space - header) as u64)
            .unwrap_or(offset..offset);
        let is_end = range.end == send.buf.end();
        let fin = is_end && matches!(send.fin, Fin::Pending | Fin::Sent) && send.fin != Fin::Acked;
        let len = (range.end - range.start) as usize;
        frame::encode_stream_header(id, range.start, len, fin, true, out);
        send.buf.copy_range(range.clone(), out);
        send.buf.mark_sent(range.clone());
        if fin {
            send.fin = Fin::Sent;
        }
        let more = send.has_pending();
        s.scheduled = more;
        (
            Some(Record::Data {
                id,
                offset: range.start,
                len: len as u64,
                fin,
            }),
            more,
        )
    }

    /// Writes pending control frames that fit in `space`.
    pub(crate) fn write_control_frames(
        &mut self,
        space: usize,
        out: &mut Vec<u8>,
        sent: &mut Vec<Record>,
    ) {
        let end = out.len() + space;
        let mut put = |out: &mut Vec<u8>, frame: Frame, record: Record| -> bool {
            if out.len() + frame.encoded_len() > end {
                return false;
            }
            frame.encode(out);
            sent.push(record);
            true
        };
        if self.pending.max_data && put(out, Frame::MaxData(self.recv_max), Record::MaxData) {
            self.pending.max_data = false;
            self.stats.window_updates_sent += 1;
        }
        while let Some(&id) = self.pending.max_stream_data.front() {
            let stream_window = self.stream_recv_window;
            let Some(recv) = self.map.get_mut(&id).and_then(|s| s.recv.as_mut()) else {
                self.pending.max_stream_data.pop_front();
                continue;
            };
            if recv.buf.final_size().is_some() || recv.stopped {
                recv.update_queued = false;
                self.pending.max_stream_data.pop_front();
                continue;
            }
            let max = recv.max_data.max(recv.buf.bytes_read() + stream_window);
            if !put(
                out,
                Frame::MaxStreamData { id, max },
                Record::MaxStreamData(id),
            ) {
                break;
            }
            recv.max_data = max;
            recv.update_queued = false;
            self.pending.max_stream_data.pop_front();
            self.stats.window_updates_sent += 1;
        }
        for dir in Dir::ALL {
            let d = dir_index(dir);
            let count = self.max_remote[d];
            if self.pending.max_streams[d]
                && put(
                    out,
                    Frame::MaxStreams { dir, count },
                    Record::MaxStreams(dir),
                )
            {
                self.pending.max_streams[d] = false;
            }
            if let Some(limit) = self.pending.streams_blocked[d] {
                if put(
                    out,
                    Frame::StreamsBlocked { dir, limit },
                    Record::StreamsBlocked(dir, limit),
                ) {
                    self.pending.streams_blocked[d] = None;
                }
            }
        }
        if let Some(limit) = self.pending.data_blocked {
            if put(out, Frame::DataBlocked(limit), Record::DataBlocked(limit)) {
                self.pending.data_blocked = None;
            }
        }
        while let Some(&(id, limit)) = self.pending.stream_data_blocked.front() {
            if !put(
                out,
                Frame::StreamDataBlocked { id, limit },
                Record::StreamDataBlocked(id, limit),
            ) {
                break;
            }
            self.pending.stream_data_blocked.pop_front();
        }
        while let Some(&id) = self.pending.resets.front() {
            let reset = self
                .map
                .get(&id)
                .and_then(|s| s.send.as_ref())
                .and_then(|s| s.reset.as_ref());
            if let Some(r) = reset {
                let frame = Frame::ResetStream(frame::ResetStream {
                    id,
                    error_code: r.code,
                    final_size: r.final_size,
                });
                if !put(out, frame, Record::Reset(id)) {
                    break;
                }
            }
            self.pending.resets.pop_front();
        }
        while let Some(&(id, code)) = self.pending.stop_sending.front() {
            let frame = Frame::StopSending(frame::StopSending {
                id,
                error_code: code,
            });
            if !put(out, frame, Record::StopSending(id, code)) {
                break;
            }
            self.pending.stop_sending.pop_front();
        }
    }

    /// Whether control frames are waiting.
    pub(crate) fn has_pending_control(&self) -> bool {
        let p = &self.pending;
        p.max_data
            || !p.max_stream_data.is_empty()
            || p.max_streams.iter().any(|&b| b)
            || p.data_blocked.is_some()
            || !p.stream_data_blocked.is_empty()
            || p.streams_blocked.iter().any(Option::is_some)
            || !p.resets.is_empty()
            || !p.stop_sending.is_empty()
    }

    /// The peer acknowledged a frame.
    pub(crate) fn on_acked(&mut self, record: Record) {
        match record {
            Record::Data {
                id,
                offset,
                len,
                fin,
            } => {
                let Some(send) = self.map.get_mut(&id).and_then(|s| s.send.as_mut()) else {
                    return;
                };
                let before = send.buf.unacked();
                send.buf.on_ack(offset..offset + len);
                let freed = before - send.buf.unacked();
                if fin {
                    send.fin = Fin::Acked;
                }
                if send.reset.is_none() && send.fin == Fin::Acked && send.buf.all_acked() {
                    self.events.push_back(StreamEvent::Finished { id });
                }
                if freed > 0 {
                    // Writers waited on our own send window (not the
                    // peer's credit) only if it was the tighter bound.
                    let local_bound = self.send_window.saturating_sub(self.unacked)
                        < self.send_max - self.send_written;
                    self.unacked -= freed;
                    if local_bound {
                        self.wake_conn_waiters();
                    }
                }
                self.maybe_forget(id);
            }
            Record::Reset(id) => {
                if let Some(reset) = self
                    .map
                    .get_mut(&id)
                    .and_then(|s| s.send.as_mut())
                    .and_then(|s| s.reset.as_mut())
                {
                    reset.acked = true;
                }
                self.maybe_forget(id);
            }
            _ => {}
        }
    }

    /// A frame was lost: queue again whatever is still needed. Returns the
    /// stream to reschedule, if any.
    pub(crate) fn on_lost(&mut self, record: Record) -> Option<StreamId> {
        match record {
            Record::Data {
                id,
                offset,
                len,
                fin,
            } => {
                let send = self.map.get_mut(&id)?.send.as_mut()?;
                if send.reset.is_some() {
                    return None;
                }
                send.buf.on_lost(offset..offset + len);
                if fin && send.fin == Fin::Sent {
                    send.fin = Fin::Pending;
                }
                Some(id)
            }
            Record::Reset(id) => {
                self.pending.resets.push_back(id);
                None
            }
            Record::StopSending(id, code) => {
                let still_wanted = self
                    .map
                    .get(&id)
                    .and_then(|s| s.recv.as_ref())
                    .is_some_and(|r| r.buf.final_size().is_none());
                if still_wanted {
                    self.pending.stop_sending.push_back((id, code));
                }
                None
            }
            Record::MaxData => {
                self.pending.max_data = true;
                None
            }
            Record::MaxStreamData(id) => {
                if let Some(recv) = self.map.get_mut(&id).and_then(|s| s.recv.as_mut()) {
                    if !recv.update_queued && recv.buf.final_size().is_none() {
                        recv.update_queued = true;
                        self.pending.max_stream_data.push_back(id);
                    }
                }
                None
            }
            Record::MaxStreams(dir) => {
                self.pending.max_streams[dir_index(dir)] = true;
                None
            }
            // Blocked frames are hints; a lost one is not worth resending.
            Record::DataBlocked(_) | Record::StreamDataBlocked(..) | Record::StreamsBlocked(..) => {
                None
            }
        }
    }

    /// Whether everything sent on `id` is settled: acknowledged through the
    /// end of the stream, reset, or the stream is already forgotten.
    pub(crate) fn is_send_done(&self, id: StreamId) -> bool {
        self.map
            .get(&id)
            .and_then(|s| s.send.as_ref())
            .is_none_or(SendHalf::is_done)
    }

    /// Bytes the application may still write on `id` right now.
    pub(crate) fn write_credit(&self, id: StreamId) -> u64 {
        let conn = self.send_max - self.send_written;
        self.map
            .get(&id)
            .and_then(|s| s.send.as_ref())
            .map_or(0, |s| (s.max_data - s.buf.end()).min(conn))
    }
}
