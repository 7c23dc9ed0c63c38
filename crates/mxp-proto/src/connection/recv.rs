//! Receiving: authenticate a packet, check it against the replay window,
//! then apply its frames.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use tracing::{debug, info, trace};

use super::{Connection, Event, Handshake, MAX_PATH_RESPONSES, State, Timer};
use crate::error::{ConnectionError, TransportError, TransportErrorCode};
use crate::frame::{self, CloseKind, Frame};
use crate::packet::keys::Opened;
use crate::packet::{self, Header, PacketError};
use crate::replay::Rejection;
use crate::scheduler::Flow;

/// Our packets a peer may leave unsettled while it keeps sending: each is
/// remembered until acknowledged. Far above what the windows let a peer
/// have in flight honestly (16 MiB is about 11,600 full packets).
const MAX_UNACKNOWLEDGED: usize = 1 << 16;

impl Connection {
    /// Takes in a datagram the endpoint routed to this connection.
    pub fn handle(&mut self, now: Instant, remote: SocketAddr, mut datagram: BytesMut) {
        if self.state == State::Drained {
            return;
        }
        let len = datagram.len();
        match packet::parse(&datagram) {
            Ok(Header::Short { .. }) => {}
            Ok(Header::Initial { noise, .. }) => {
                self.on_repeated_initial(now, remote, len, noise);
                return;
            }
            Ok(header) => {
                self.handle_long(now, header, len);
                return;
            }
            Err(_) => {
                self.stats.malformed_packets += 1;
                return;
            }
        }
        if let Err(e) = self.handle_short(now, remote, &mut datagram) {
            trace!(parent: &self.span, error = %e, "packet dropped");
            match e {
                PacketError::Decrypt => self.on_decrypt_failure(now),
                _ => self.stats.malformed_packets += 1,
            }
        }
    }

    fn on_decrypt_failure(&mut self, now: Instant) {
        self.stats.decrypt_failures += 1;
        if self.stats.decrypt_failures > self.config.max_decrypt_failures {
            self.stats.peer_limits.decrypt_budget += 1;
            let err = TransportError::new(
                TransportErrorCode::AEAD_LIMIT_REACHED,
                "too many packets failed authentication",
            );
            self.close_with_error(now, err);
        }
    }

    fn handle_short(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        datagram: &mut BytesMut,
    ) -> Result<(), PacketError> {
        let len = datagram.len();
        let grace = 3 * self.recovery.pto(&self.config, self.peer_max_ack_delay());
        let Some(keys) = self.keys.as_mut() else {
            // Data before our handshake finished (reordered ahead of the
            // server's answer): nothing to decrypt it with.
            self.stats.dropped_packets += 1;
            return Ok(());
        };
        let opened = packet::open_short(datagram, self.replay.largest(), keys.remote_header_key())?;
        match self.replay.check(opened.pn) {
            Ok(()) => {}
            Err(Rejection::Duplicate) => {
                self.stats.duplicate_packets += 1;
                return Ok(());
            }
            Err(Rejection::TooOld) => {
                self.stats.old_packets += 1;
                return Ok(());
            }
        }
        // A phase bit other than ours may take two attempts (previous, then
        // next generation); each needs the original ciphertext.
        let backup = (!keys.is_current_phase(opened.key_phase))
            .then(|| datagram[opened.header_len..].to_vec());
        let buf: &mut [u8] = datagram;
        let (range, how) = keys.open(now, grace, opened.pn, opened.key_phase, |key| {
            if let Some(original) = &backup {
                buf[opened.header_len..].copy_from_slice(original);
            }
            packet::open_payload(buf, &opened, key)
        })?;
        if how == Opened::Rotated {
            let span = &self.span;
            debug!(parent: span, generation = keys.generation(), "peer rotated keys");
            if !self.peer_key_updates.try_take(now) {
                self.stats.peer_limits.key_updates += 1;
                let err = TransportError::new(
                    TransportErrorCode::KEY_UPDATE_ERROR,
                    "key updates faster than allowed",
                );
                self.close_with_error(now, err);
                return Ok(());
            }
        }
        self.replay.mark(opened.pn);
        self.stats.packets_received += 1;
        self.stats.bytes_received += len as u64;

        if self.state == State::Closing {
            self.answer_while_closing();
            return Ok(());
        }
        if self.state == State::Draining {
            return Ok(());
        }
        self.on_authenticated(now, remote, opened.pn, len);

        let payload = datagram.split_to(range.end).split_off(range.start).freeze();
        self.process_payload(now, opened.pn, payload);
        Ok(())
    }

    /// Applies the frames of an authenticated packet, then records it for
    /// acknowledgement. A malformed or illegal frame closes the connection.
    pub(crate) fn process_payload(&mut self, now: Instant, pn: u64, payload: bytes::Bytes) {
        let mut ack_eliciting = false;
        let mut immediate = false;
        let mut acks = 0;
        for frame in frame::Iter::new(payload) {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    let err = TransportError::new(
                        TransportErrorCode::FRAME_ENCODING_ERROR,
                        e.to_string(),
                    )
                    .in_frame(e.frame_type());
                    self.close_with_error(now, err);
                    return;
                }
            };
            ack_eliciting |= frame.is_ack_eliciting();
            immediate |= frame == Frame::ImmediateAck;
            if let Frame::Ack(_) = frame {
                acks += 1;
                if acks > self.config.max_acks_per_packet {
                    self.stats.peer_limits.acks_ignored += 1;
                    continue;
                }
            }
            if let Err(err) = self.on_frame(now, frame) {
                self.close_with_error(now, err);
                return;
            }
            if self.is_closed() {
                return;
            }
        }
        if self.recovery.tracked_packets() > MAX_UNACKNOWLEDGED {
            self.stats.peer_limits.unacknowledged += 1;
            let err = TransportError::new(
                TransportErrorCode::PROTOCOL_VIOLATION,
                "peer leaves our packets unacknowledged",
            );
            self.close_with_error(now, err);
            return;
        }
        if self.hostile.withhold_acks {
            return;
        }
        self.acks.on_packet(
            now,
            pn,
            ack_eliciting,
            immediate,
            self.config.ack_eliciting_threshold,
            self.config.max_ack_delay,
        );
        self.set_timer(Timer::Ack, self.acks.deadline());
    }

    /// Bookkeeping for any authenticated packet: address validation,
    /// migration, the idle timer.
    fn on_authenticated(&mut self, now: Instant, remote: SocketAddr, pn: u64, len: usize) {
        if let Handshake::Server { sent_at, .. } = &self.handshake {
            // Only someone who received our answer can protect a packet:
            // the client's address is proven and the handshake confirmed.
            if let Some(sent) = *sent_at {
                self.recovery.rtt_sample(
                    now.saturating_duration_since(sent),
                    std::time::Duration::ZERO,
                    std::time::Duration::ZERO,
                );
            }
            self.path.validated = true;
            self.on_established(now);
        }
        if remote != self.path.remote && self.side == crate::Side::Node {
            if self.replay.largest() == Some(pn) {
                self.migrate(remote, len);
            }
        } else if !self.path.validated {
            self.path.received += len as u64;
        }
        self.reset_idle_timer(now);
    }

    /// The client's newest packet came from a new address (NAT rebinding or
    /// a real move): follow it, but treat the new address as unproven until
    /// it answers a PATH_CHALLENGE.
    fn migrate(&mut self, remote: SocketAddr, len: usize) {
        debug!(parent: &self.span, from = %self.path.remote, to = %remote, "peer address changed");
        self.stats.migrations += 1;
        self.path = super::Path::new(remote, false);
        self.path.received = len as u64;
        let mut challenge = [0u8; 8];
        crate::crypto::fill_random(&mut challenge);
        self.path.challenge = Some(challenge);
        self.pending.path_challenge = true;
    }

    fn answer_while_closing(&mut self) {
        self.closing_received += 1;
        if self.closing_received >= self.closing_answer_at {
            self.closing_answer_at *= 2;
            self.pending.close = true;
        }
    }

    fn on_frame(&mut self, now: Instant, frame: Frame) -> Result<(), TransportError> {
        match frame {
            Frame::Padding(_) | Frame::Ping | Frame::ImmediateAck => {}
            Frame::GoAway => {
                if !self.peer_going_away {
                    self.peer_going_away = true;
                    info!(parent: &self.span, "peer is draining this connection");
                    self.events.push_back(Event::GoAway);
                }
            }
            Frame::Ack(ack) => self.on_ack_frame(now, &ack)?,
            Frame::Stream(f) => self.streams.on_stream_frame(f).inspect_err(|_| {
                if self.streams.is_too_fragmented() {
                    self.stats.peer_limits.fragmented += 1;
                }
            })?,
            Frame::ResetStream(f) => self.streams.on_reset(f)?,
            Frame::StopSending(f) => self.streams.on_stop_sending(f)?,
            Frame::MaxData(max) => self.streams.on_max_data(max),
            Frame::MaxStreamData { id, max } => self.streams.on_max_stream_data(id, max)?,
            Frame::MaxStreams { dir, count } => self.streams.on_max_streams(dir, count),
            Frame::DataBlocked(_)
            | Frame::StreamDataBlocked { .. }
            | Frame::StreamsBlocked { .. } => {
                self.stats.peer_blocked_frames += 1;
            }
            Frame::PathChallenge(data) => {
                let responses = &mut self.pending.path_responses;
                if responses.len() == MAX_PATH_RESPONSES {
                    responses.pop_front();
                    self.stats.peer_limits.path_responses_dropped += 1;
                }
                responses.push_back(data);
            }
            Frame::PathResponse(data) => {
                if self.path.challenge == Some(data) {
                    self.path.challenge = None;
                    self.path.validated = true;
                    debug!(parent: &self.span, "new path validated");
                }
            }
            Frame::Close(close) => {
                let reason = match close.kind {
                    CloseKind::Application => ConnectionError::ApplicationClosed {
                        code: close.error_code,
                        reason: close.reason,
                    },
                    CloseKind::Transport { frame_type } => {
                        ConnectionError::TransportError(TransportError {
                            code: crate::error::TransportErrorCode(close.error_code),
                            frame_type: (frame_type != 0).then_some(frame_type),
                            reason: String::from_utf8_lossy(&close.reason).into_owned(),
                        })
                    }
                };
                self.enter_draining(now, reason);
            }
            Frame::Datagram(data) => {
                let max = usize::from(self.config.max_datagram_size);
                if max == 0 {
                    self.stats.peer_limits.datagrams_disabled += 1;
                    return Err(TransportError::new(
                        TransportErrorCode::PROTOCOL_VIOLATION,
                        "datagram received where datagrams are disabled",
                    )
                    .in_frame(frame::types::DATAGRAM));
                }
                if data.len() > max {
                    return Err(TransportError::new(
                        TransportErrorCode::PROTOCOL_VIOLATION,
                        "datagram larger than allowed",
                    )
                    .in_frame(frame::types::DATAGRAM));
                }
                if self.datagrams.receive(&data) {
                    self.events.push_back(Event::DatagramReceived);
                }
            }
        }
        Ok(())
    }

    fn on_ack_frame(&mut self, now: Instant, ack: &frame::Ack) -> Result<(), TransportError> {
        // Reused across ACKs: no allocation per acknowledgement.
        let mut acked = std::mem::take(&mut self.settled);
        let mut lost = std::mem::take(&mut self.lost);
        let max_ack_delay = self.peer_max_ack_delay();
        let result =
            self.recovery
                .on_ack(now, ack, &self.config, max_ack_delay, &mut acked, &mut lost);
        for p in acked.drain(..) {
            if let Some(largest) = p.ack_largest {
                self.acks.on_ack_acked(largest);
            }
            for record in &p.records {
                self.streams.on_acked(*record);
            }
            self.recovery.recycle(p.records);
        }
        self.on_packets_lost(&mut lost);
        self.settled = acked;
        self.lost = lost;
        self.set_loss_timer();
        result
    }

    pub(super) fn on_packets_lost(&mut self, lost: &mut Vec<super::recovery::SentPacket>) {
        if lost.is_empty() {
            return;
        }
        let (packets, frames) = (lost.len(), self.stats.retransmitted_frames);
        for p in lost.drain(..) {
            if p.go_away {
                self.pending.go_away = true;
            }
            self.stats.packets_lost += 1;
            self.stats.bytes_lost += u64::from(p.size);
            self.datagrams.stats.lost += u64::from(p.datagrams);
            self.requeue(&p.records);
            self.recovery.recycle(p.records);
        }
        let frames = self.stats.retransmitted_frames - frames;
        debug!(parent: &self.span, packets, frames, "packets lost: their frames are queued again");
    }

    /// Queues the frames of a lost (or probed) packet to be sent again.
    pub(super) fn requeue(&mut self, records: &[crate::streams::Record]) {
        for record in records {
            if let Some(id) = self.streams.on_lost(*record) {
                self.stats.retransmitted_frames += 1;
                if let Some(band) = self.streams.wants_schedule(id) {
                    self.scheduler.push(band, Flow::Stream(id));
                }
            }
        }
    }

    pub(super) fn set_loss_timer(&mut self) {
        let at = match self.handshake {
            Handshake::Client(_) => return,
            _ => self
                .recovery
                .loss_detection_deadline(&self.config, self.peer_max_ack_delay()),
        };
        self.set_timer(Timer::LossDetection, at);
    }

    pub(super) fn on_loss_detection_timeout(&mut self, now: Instant) {
        if matches!(self.handshake, Handshake::Client(_)) {
            self.on_handshake_timeout();
            return;
        }
        let mut lost = std::mem::take(&mut self.lost);
        let probe =
            self.recovery
                .on_timeout(now, &self.config, self.peer_max_ack_delay(), &mut lost);
        self.on_packets_lost(&mut lost);
        self.lost = lost;
        if let Some(records) = probe {
            self.stats.probes += 1;
            debug!(parent: &self.span, pto_count = self.recovery.pto_count, "probe timeout: sending a probe");
            self.requeue(&records);
            // An unanswered path challenge may be what was lost.
            self.pending.path_challenge |= self.path.challenge.is_some();
            if !self.scheduler_has_work() && !self.pending.path_challenge {
                self.pending.ping = true;
            }
        }
        self.set_loss_timer();
    }
}
