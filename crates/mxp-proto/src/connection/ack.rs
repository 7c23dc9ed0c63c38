//! What to acknowledge and when.
//!
//! Latency-critical packets (those carrying IMMEDIATE_ACK), packets that
//! arrive out of order, and every `ack_eliciting_threshold`-th packet are
//! acknowledged at once; anything else within `max_ack_delay`, so bulk
//! transfers do not pay one ACK per packet.

use std::time::{Duration, Instant};

use crate::frame::Ack;
use crate::ranges::RangeSet;

/// Ranges kept for ACK frames; older holes are forgotten (the sender
/// declared those packets lost long ago).
const MAX_RANGES: usize = 32;

#[derive(Debug, Default)]
pub(super) struct AckState {
    received: RangeSet,
    largest: Option<(u64, Instant)>,
    eliciting_since_ack: u32,
    /// Something arrived that the peer has not seen acknowledged yet.
    unacked: bool,
    immediate: bool,
    deadline: Option<Instant>,
}

impl AckState {
    /// Records an authenticated packet.
    pub(super) fn on_packet(
        &mut self,
        now: Instant,
        pn: u64,
        ack_eliciting: bool,
        immediate_requested: bool,
        threshold: u32,
        max_delay: Duration,
    ) {
        let in_order = match self.largest {
            None => true,
            Some((largest, _)) => pn == largest + 1,
        };
        self.received.insert_one(pn);
        self.received.retain_newest(MAX_RANGES);
        if self.largest.is_none_or(|(l, _)| pn > l) {
            self.largest = Some((pn, now));
        }
        self.unacked = true;
        if !ack_eliciting {
            return;
        }
        self.eliciting_since_ack += 1;
        if immediate_requested || !in_order || self.eliciting_since_ack >= threshold {
            self.immediate = true;
        } else if self.deadline.is_none() {
            self.deadline = Some(now + max_delay);
        }
    }

    /// Whether an ACK must go out now, even in a packet of its own.
    pub(super) fn is_due(&self, now: Instant) -> bool {
        self.immediate || self.deadline.is_some_and(|d| d <= now)
    }

    /// Whether an ACK is worth piggybacking on a packet that goes anyway.
    pub(super) fn has_news(&self) -> bool {
        self.unacked && !self.received.is_empty()
    }

    /// When a delayed ACK falls due.
    pub(super) fn deadline(&self) -> Option<Instant> {
        if self.immediate { None } else { self.deadline }
    }

    /// Bytes the ACK frame needs.
    pub(super) fn frame_len(&self, now: Instant) -> usize {
        Ack::ranges_encoded_len(self.received.iter_rev(), self.delay_us(now))
    }

    fn delay_us(&self, now: Instant) -> u64 {
        self.largest.map_or(0, |(_, t)| {
            now.saturating_duration_since(t).as_micros() as u64
        })
    }

    /// Writes the ACK frame and resets the delay state. Returns the largest
    /// packet number acknowledged, to remember in the sent packet.
    pub(super) fn write(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<u64> {
        let largest = self.received.max()?;
        Ack::encode_ranges(self.received.iter_rev(), self.delay_us(now), out);
        self.unacked = false;
        self.immediate = false;
        self.deadline = None;
        self.eliciting_since_ack = 0;
        Some(largest)
    }

    /// The peer received an ACK of ours covering up to `largest`: it knows
    /// about those packets, so stop repeating them.
    pub(super) fn on_ack_acked(&mut self, largest: u64) {
        // Keep the largest itself so later ACKs stay anchored to it.
        self.received.remove_below(largest);
    }

    /// Whether a packet number was received already (a duplicate that slipped
    /// past the replay window cannot, but keep the check cheap and explicit).
    #[cfg(test)]
    pub(super) fn contains(&self, pn: u64) -> bool {
        self.received.contains(pn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_micros(200);

    #[test]
    fn in_order_packets_are_acked_every_second_packet_or_after_the_delay() {
        let now = Instant::now();
        let mut a = AckState::default();
        a.on_packet(now, 0, true, false, 2, DELAY);
        assert!(!a.is_due(now));
        assert_eq!(a.deadline(), Some(now + DELAY));
        assert!(a.is_due(now + DELAY));
        a.on_packet(now, 1, true, false, 2, DELAY);
        assert!(a.is_due(now));
    }

    #[test]
    fn immediate_ack_and_reordering_skip_the_delay() {
        let now = Instant::now();
        let mut a = AckState::default();
        a.on_packet(now, 0, true, true, 10, DELAY);
        assert!(a.is_due(now));
        a.write(now, &mut Vec::new());
        a.on_packet(now, 5, true, false, 10, DELAY);
        assert!(a.is_due(now), "a gap means loss; tell the sender at once");
    }

    #[test]
    fn non_eliciting_packets_are_never_acked_on_their_own() {
        let now = Instant::now();
        let mut a = AckState::default();
        a.on_packet(now, 0, false, false, 1, DELAY);
        assert!(!a.is_due(now + DELAY * 10));
        assert!(a.has_news());
    }

    #[test]
    fn acknowledged_acks_shrink_the_ranges() {
        let now = Instant::now();
        let mut a = AckState::default();
        for pn in [0, 1, 2, 5, 6, 9] {
            a.on_packet(now, pn, true, false, 100, DELAY);
        }
        let mut buf = Vec::new();
        assert_eq!(a.write(now, &mut buf), Some(9));
        a.on_ack_acked(6);
        assert!(!a.contains(2) && a.contains(6) && a.contains(9));
    }
}
