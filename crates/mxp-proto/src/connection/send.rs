//! Packet assembly: one call builds one datagram, filling it with an ACK,
//! control frames and then scheduled stream and datagram frames until the
//! packet is full, within what congestion control, pacing and the
//! anti-amplification budget allow.

use std::time::Instant;

use tracing::debug;

use super::recovery::SentPacket;
use super::{Connection, State, Timer, Transmit};
use crate::crypto::TAG_LEN;
use crate::frame;
use crate::packet::{self, MIN_SHORT_LEN, number};
use crate::scheduler::Flow;
use crate::{Band, Side};

/// Room a frame needs at minimum to be worth starting.
const MIN_FRAME_ROOM: usize = 8;

impl Connection {
    /// Builds the next datagram to send, appending it to `buf`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let start = buf.len();
        let size = match self.state {
            State::Drained | State::Draining => return None,
            State::Closing => self.build_close(now, buf),
            State::Handshake => match self.poll_handshake_transmit(now, buf) {
                Some(size) => Some(size),
                // The server may send early data within its budget; the
                // client has no keys yet.
                None if self.side == Side::Node => self.build_short(now, buf),
                None => None,
            },
            State::Established => self.build_short(now, buf),
        }?;
        debug_assert_eq!(buf.len() - start, size);
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += size as u64;
        if !self.path.validated {
            self.path.sent += size as u64;
        }
        Some(Transmit {
            destination: self.path.remote,
            size,
        })
    }

    pub(super) fn scheduler_has_work(&self) -> bool {
        self.scheduler.peek().is_some()
    }

    fn has_data_to_send(&self) -> bool {
        self.pending.ping
            || self.pending.go_away
            || self.pending.path_challenge
            || !self.pending.path_responses.is_empty()
            || self.streams.has_pending_control()
            || self.scheduler_has_work()
            || !self.hostile.frames.is_empty()
    }

    /// Largest packet allowed now, or None if the anti-amplification budget
    /// leaves no room for one.
    fn packet_size_limit(&mut self) -> Option<usize> {
        let budget = self.path.budget();
        let size = (self.max_packet_size() as u64).min(budget) as usize;
        if size < MIN_SHORT_LEN + MIN_FRAME_ROOM {
            self.stats.amplification_blocked += 1;
            return None;
        }
        Some(size)
    }

    fn build_close(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<usize> {
        if !self.pending.close || self.keys.is_none() {
            return None;
        }
        // Within the anti-amplification budget, or not yet.
        let max = self.packet_size_limit()?;
        self.pending.close = false;
        if !self.close_sent {
            // The closing period runs from the first close frame: three
            // probe timeouts for stragglers to be answered.
            self.close_sent = true;
            let pto = self.recovery.pto(&self.config, self.peer_max_ack_delay());
            self.set_timer(Timer::Close, Some(now + 3 * pto));
        }
        let frame = self.close_frame.clone()?;
        let start = buf.len();
        let keys = self.keys.as_mut()?;
        let pn = self.recovery.next_pn;
        self.recovery.next_pn += 1;
        let pn_len = number::encoded_len(pn, self.recovery.largest_acked);
        packet::write_short_header(self.remote_cid, pn, pn_len, keys.phase(), buf);
        let mut close = frame;
        let room = max.saturating_sub(buf.len() - start + TAG_LEN + 16);
        close.reason.truncate(room.min(512));
        frame::Frame::Close(close).encode(buf);
        let (key, hp) = keys.seal_keys();
        packet::seal_short(buf, start, pn, key, hp);
        Some(buf.len() - start)
    }

    fn build_short(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<usize> {
        self.keys.as_ref()?;
        let ack_due = self.acks.is_due(now);
        // Path answers are tiny and capped: like ACKs, they do not wait for
        // congestion control or pacing.
        let respond = !self.pending.path_responses.is_empty();
        let mut send_data = self.has_data_to_send();
        if !ack_due && !send_data && !respond {
            return None;
        }
        let max = self.packet_size_limit()?;
        if send_data && !self.recovery.can_send(max as u64) {
            send_data = false;
        }
        if send_data && self.config.pacing && self.recovery.probes == 0 {
            let rtt = self.recovery.rtt.smoothed();
            let window = self.recovery.cc.window();
            let mtu = self.max_packet_size() as u64;
            if let Some(at) = self.recovery.pacer.delay(now, max as u64, mtu, window, rtt) {
                self.set_timer(Timer::Pacing, Some(at));
                send_data = false;
            }
        }
        if !ack_due && !send_data && !respond {
            return None;
        }

        let grace = 3 * self.recovery.pto(&self.config, self.peer_max_ack_delay());
        let keys = self.keys.as_mut()?;
        let storm = crate::packet::keys::KeyRotation {
            packets: 0,
            interval: std::time::Duration::ZERO,
        };
        let rotation = match self.hostile.key_update_storm {
            true => &storm,
            false => &self.config.key_rotation,
        };
        if keys.maybe_rotate(now, rotation, grace) {
            let span = &self.span;
            debug!(parent: span, generation = keys.generation(), "rotated keys");
        }
        let phase = keys.phase();

        let start = buf.len();
        let pn = self.recovery.next_pn;
        let pn_len = number::encoded_len(pn, self.recovery.largest_acked);
        packet::write_short_header(self.remote_cid, pn, pn_len, phase, buf);
        let frames_start = buf.len();
        // Frames must end here so the tag fits, with one byte kept back for
        // IMMEDIATE_ACK.
        let limit = start + max - TAG_LEN - 1;

        let mut ack_largest = None;
        if (ack_due || self.acks.has_news()) && buf.len() + self.acks.frame_len(now) <= limit {
            ack_largest = self.acks.write(now, buf);
            self.set_timer(Timer::Ack, None);
            self.stats.acks_sent += 1;
        }
        let after_ack = buf.len();
        self.write_path_responses(buf, limit);
        let mut records = self.recovery.take_records();
        let mut datagrams = 0u16;
        let mut go_away = false;
        let mut urgent = self.recovery.probes > 0;
        if send_data {
            if self.pending.go_away && buf.len() < limit {
                frame::Frame::GoAway.encode(buf);
                self.pending.go_away = false;
                go_away = true;
            }
            self.write_pending_frames(buf, limit);
            self.write_injected(buf, limit);
            let room = limit.saturating_sub(buf.len());
            self.streams.write_control_frames(room, buf, &mut records);
            while let Some((band, flow)) = self.scheduler.peek() {
                let room = limit.saturating_sub(buf.len());
                if room < MIN_FRAME_ROOM {
                    break;
                }
                let before = buf.len();
                let (wrote, more) = match flow {
                    Flow::Stream(id) => match self.streams.write_stream_frame(id, room, buf) {
                        (Some(record), more) => {
                            records.push(record);
                            (true, more)
                        }
                        (None, more) => (false, more),
                    },
                    Flow::Datagrams => {
                        let (n, more) = self.datagrams.write(band, room, buf);
                        datagrams += u16::from(n > 0);
                        (n > 0, more)
                    }
                };
                if wrote {
                    self.scheduler.sent(band, buf.len() - before, more);
                    urgent |= band == Band::Critical;
                } else if more {
                    break; // the packet is full
                } else {
                    self.scheduler.drop_front(band);
                }
            }
            if urgent && buf.len() > after_ack {
                // Critical traffic and probes: acknowledge at once, so a
                // loss is noticed one round trip later, not one ACK delay.
                frame::Frame::ImmediateAck.encode(buf);
            }
        }
        let ack_eliciting = buf.len() > after_ack;
        if buf.len() == frames_start {
            buf.truncate(start);
            self.recovery.recycle(records);
            return None;
        }
        let keys = self.keys.as_mut()?;
        let (key, hp) = keys.seal_keys();
        packet::seal_short(buf, start, pn, key, hp);
        let size = buf.len() - start;
        self.recovery.next_pn += 1;
        self.recovery.on_packet_sent(
            now,
            SentPacket {
                pn,
                time_sent: now,
                size: size as u16,
                ack_eliciting,
                in_flight: ack_eliciting,
                ack_largest,
                datagrams,
                go_away,
                records,
                app_limited: false,
            },
        );
        if ack_eliciting {
            self.last_ack_eliciting_sent = Some(now);
            if let Some(interval) = self.config.keep_alive_interval {
                self.set_timer(Timer::KeepAlive, Some(now + interval));
            }
            self.set_loss_timer();
        } else {
            self.stats.ack_only_packets += 1;
        }
        Some(size)
    }

    fn write_path_responses(&mut self, buf: &mut Vec<u8>, limit: usize) {
        while buf.len() + 9 <= limit {
            let Some(data) = self.pending.path_responses.pop_front() else {
                break;
            };
            frame::Frame::PathResponse(data).encode(buf);
        }
    }

    /// PING and our own path challenge.
    fn write_pending_frames(&mut self, buf: &mut Vec<u8>, limit: usize) {
        if self.pending.path_challenge && buf.len() + 9 <= limit {
            if let Some(data) = self.path.challenge {
                frame::Frame::PathChallenge(data).encode(buf);
            }
            self.pending.path_challenge = false;
        }
        if self.pending.ping && buf.len() < limit {
            frame::Frame::Ping.encode(buf);
            self.pending.ping = false;
        }
    }
}
