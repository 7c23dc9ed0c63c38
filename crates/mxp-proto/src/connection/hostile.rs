//! Misbehaviour on demand, for `mxp attack` and for the tests that prove a
//! node survives it: a connection can be told to send raw frames, to
//! withhold its ACKs, or to update its keys as fast as the peer follows.
//! A well-behaved endpoint never calls these; they are hidden from the
//! documented API.

use std::collections::VecDeque;

use bytes::Bytes;

use super::Connection;
use crate::frame::{Ack, MAX_ACK_RANGES};

/// Largest batch of injected frames: fits any packet of the default size
/// beside an ACK.
#[doc(hidden)]
pub const INJECT_MAX: usize = 1200;

#[derive(Debug, Default)]
pub(super) struct Hostile {
    /// Raw frames for the next packets, sent as they are (never resent).
    pub frames: VecDeque<Bytes>,
    /// Never acknowledge anything.
    pub withhold_acks: bool,
    /// Update keys whenever the peer has followed the last update.
    pub key_update_storm: bool,
}

impl Connection {
    /// Queues `frames` (encoded frames, at most [`INJECT_MAX`] bytes) to go
    /// out as they are in the next packet that has room. Returns false, and
    /// queues nothing, for a larger batch.
    #[doc(hidden)]
    pub fn inject_frames(&mut self, frames: Bytes) -> bool {
        if frames.len() > INJECT_MAX {
            return false;
        }
        self.hostile.frames.push_back(frames);
        true
    }

    /// Batches of injected frames not yet sent.
    #[doc(hidden)]
    pub fn injected_pending(&self) -> usize {
        self.hostile.frames.len()
    }

    /// Stops (or resumes) acknowledging what arrives.
    #[doc(hidden)]
    pub fn withhold_acks(&mut self, on: bool) {
        self.hostile.withhold_acks = on;
    }

    /// Updates packet keys on every packet the peer's answer allows.
    #[doc(hidden)]
    pub fn storm_key_updates(&mut self, on: bool) {
        self.hostile.key_update_storm = on;
    }

    /// `count` ACK frames, each with the most ranges a frame may carry,
    /// covering every other packet number the peer has sent us (so each
    /// one is valid and makes the peer walk its in-flight window). Empty
    /// until a packet has arrived.
    #[doc(hidden)]
    pub fn ack_storm_frames(&self, count: usize) -> Bytes {
        let Some(largest) = self.replay.largest() else {
            return Bytes::new();
        };
        let ranges = move || {
            (0..MAX_ACK_RANGES as u64)
                .map(move |i| largest.checked_sub(2 * i))
                .map_while(|pn| pn.map(|pn| pn..pn + 1))
        };
        let mut out = Vec::new();
        for _ in 0..count {
            Ack::encode_ranges(ranges(), 0, &mut out);
        }
        Bytes::from(out)
    }

    /// Writes the injected frames that fit before `limit`.
    pub(super) fn write_injected(&mut self, buf: &mut Vec<u8>, limit: usize) {
        while let Some(front) = self.hostile.frames.front() {
            if buf.len() + front.len() > limit {
                break;
            }
            buf.extend_from_slice(front);
            self.hostile.frames.pop_front();
        }
    }
}
