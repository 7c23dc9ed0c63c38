//! Weighted fair queuing across the four priority bands.
//!
//! Start-time fair queuing over bytes: each band carries a virtual start
//! tag; the busy band with the smallest tag sends next, and sending `n`
//! bytes advances its tag by `n / weight`. A band that wakes up starts at
//! the current virtual time, never behind it, so it cannot claim credit for
//! the time it was idle — and never ahead of it, so it is served before any
//! band that has been sending. That gives both promises: a Critical message
//! queued behind megabytes of Streaming data leaves in the next packet, and
//! a Background flow gets `weight / total weight` of a saturated link, so it
//! is never starved.
//!
//! Within a band, flows (streams, and the band's datagram queue) take turns
//! frame by frame.

use std::collections::VecDeque;

use crate::{Band, StreamId};

/// Something with data to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Flow {
    /// A stream's pending bytes.
    Stream(StreamId),
    /// The band's queued datagrams.
    Datagrams,
}

/// Fixed-point scale of virtual time, so integer division by weights keeps
/// precision.
const SCALE: u64 = 1 << 20;

#[derive(Debug, Default)]
struct BandQueue {
    flows: VecDeque<Flow>,
    start_tag: u64,
}

/// Per-band counters, for stats and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BandStats {
    /// Times a flow of this band became ready to send.
    pub enqueued: u64,
    /// Frames this band sent.
    pub dequeued_frames: u64,
    /// Bytes this band sent.
    pub dequeued_bytes: u64,
}

impl BandStats {
    /// Adds `other`'s counters.
    pub fn accumulate(&mut self, other: &BandStats) {
        self.enqueued += other.enqueued;
        self.dequeued_frames += other.dequeued_frames;
        self.dequeued_bytes += other.dequeued_bytes;
    }
}

/// The scheduler.
#[derive(Debug)]
pub(crate) struct Scheduler {
    bands: [BandQueue; Band::COUNT],
    weights: [u64; Band::COUNT],
    virtual_time: u64,
    stats: [BandStats; Band::COUNT],
}

impl Scheduler {
    pub(crate) fn new(weights: [u32; Band::COUNT]) -> Self {
        Scheduler {
            bands: Default::default(),
            weights: weights.map(|w| u64::from(w.max(1))),
            virtual_time: 0,
            stats: Default::default(),
        }
    }

    /// A flow has data; it must not be queued already (callers track that).
    pub(crate) fn push(&mut self, band: Band, flow: Flow) {
        let q = &mut self.bands[band.index()];
        if q.flows.is_empty() {
            q.start_tag = q.start_tag.max(self.virtual_time);
        }
        q.flows.push_back(flow);
        self.stats[band.index()].enqueued += 1;
    }

    /// The band to serve next and its flow at the front of the line.
    pub(crate) fn peek(&self) -> Option<(Band, Flow)> {
        Band::ALL
            .into_iter()
            .filter_map(|b| {
                let q = &self.bands[b.index()];
                q.flows.front().map(|&f| (q.start_tag, b, f))
            })
            // Ties go to the higher-priority band (it comes first in ALL).
            .min_by_key(|&(tag, b, _)| (tag, b))
            .map(|(_, b, f)| (b, f))
    }

    /// The front flow of `band` sent a frame of `bytes`; `more` says whether
    /// it still has data (then it goes to the back of its band's line).
    pub(crate) fn sent(&mut self, band: Band, bytes: usize, more: bool) {
        let i = band.index();
        let q = &mut self.bands[i];
        self.virtual_time = self.virtual_time.max(q.start_tag);
        q.start_tag += bytes as u64 * SCALE / self.weights[i];
        let Some(flow) = q.flows.pop_front() else {
            return;
        };
        if more {
            q.flows.push_back(flow);
        }
        let s = &mut self.stats[i];
        s.dequeued_frames += 1;
        s.dequeued_bytes += bytes as u64;
    }

    /// The front flow of `band` turned out to have nothing to send.
    pub(crate) fn drop_front(&mut self, band: Band) {
        self.bands[band.index()].flows.pop_front();
    }

    /// Whether nothing is queued.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.bands.iter().all(|q| q.flows.is_empty())
    }

    /// Per-band counters.
    pub(crate) fn stats(&self) -> [BandStats; Band::COUNT] {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dir, Side};

    fn stream(i: u64) -> Flow {
        Flow::Stream(StreamId::new(Side::Client, Dir::Bi, i))
    }

    /// Serves `rounds` frames of `size` bytes, keeping every flow busy.
    fn serve(s: &mut Scheduler, rounds: usize, size: usize) -> [usize; Band::COUNT] {
        let mut served = [0; Band::COUNT];
        for _ in 0..rounds {
            let (band, _) = s.peek().unwrap();
            served[band.index()] += 1;
            s.sent(band, size, true);
        }
        served
    }

    #[test]
    fn newly_busy_critical_band_goes_before_a_long_running_bulk_band() {
        let mut s = Scheduler::new([8, 4, 2, 1]);
        s.push(Band::Streaming, stream(0));
        serve(&mut s, 10_000, 1200); // megabytes of streaming data already sent
        s.push(Band::Critical, stream(1));
        assert_eq!(s.peek(), Some((Band::Critical, stream(1))));
    }

    #[test]
    fn saturated_bands_share_by_weight_and_background_is_never_starved() {
        let mut s = Scheduler::new([8, 4, 2, 1]);
        for (i, b) in Band::ALL.into_iter().enumerate() {
            s.push(b, stream(i as u64));
        }
        let served = serve(&mut s, 15_000, 1000);
        assert_eq!(served, [8_000, 4_000, 2_000, 1_000]);
    }

    #[test]
    fn flows_within_a_band_take_turns() {
        let mut s = Scheduler::new([1; 4]);
        s.push(Band::Streaming, stream(0));
        s.push(Band::Streaming, stream(1));
        let mut order = Vec::new();
        for _ in 0..4 {
            let (b, f) = s.peek().unwrap();
            order.push(f);
            s.sent(b, 100, true);
        }
        assert_eq!(order, [stream(0), stream(1), stream(0), stream(1)]);
    }

    #[test]
    fn an_idle_band_does_not_bank_credit() {
        let mut s = Scheduler::new([1, 1, 1, 1]);
        s.push(Band::Streaming, stream(0));
        serve(&mut s, 100, 1000);
        // Background wakes after a long idle period: it shares equally from
        // now on instead of monopolising the link to catch up.
        s.push(Band::Background, stream(1));
        let served = serve(&mut s, 100, 1000);
        assert_eq!(served[Band::Streaming.index()], 50);
        assert_eq!(served[Band::Background.index()], 50);
    }

    #[test]
    fn finished_flows_leave_the_queue() {
        let mut s = Scheduler::new([1; 4]);
        s.push(Band::Control, stream(0));
        s.sent(Band::Control, 10, false);
        assert!(s.is_empty());
        assert_eq!(s.peek(), None);
    }
}
