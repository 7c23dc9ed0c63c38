//! Handles for the criterion benchmarks in `benches/` on pieces that stay
//! private to the crate (sent-packet bookkeeping, the scheduler), so their
//! hot-path cost can be measured without a whole connection around them.
//! Not part of the API: nothing here is stable.

use std::time::Instant;

use crate::config::TransportConfig;
use crate::connection::recovery::{Recovery, SentPacket};
use crate::frame::Ack;
use crate::scheduler::{Flow, Scheduler};
use crate::{Band, Dir, Side, StreamId};

/// A sender's loss-recovery state with packets in flight, to which ACK
/// frames are applied as a connection applies them.
#[derive(Debug)]
pub struct AckProcessing {
    recovery: Recovery,
    config: TransportConfig,
    acked: Vec<SentPacket>,
    lost: Vec<SentPacket>,
}

impl AckProcessing {
    /// `in_flight` ack-eliciting packets of 1200 bytes sent at `now`.
    pub fn new(in_flight: u64, now: Instant) -> Self {
        let config = TransportConfig::default();
        let mut recovery = Recovery::new(&config, now);
        for pn in 0..in_flight {
            recovery.on_packet_sent(now, SentPacket::data(pn, now, Vec::new()));
            recovery.next_pn = pn + 1;
        }
        AckProcessing {
            recovery,
            config,
            acked: Vec::new(),
            lost: Vec::new(),
        }
    }

    /// Applies `ack`; returns how many packets it newly acknowledged and
    /// how many it revealed as lost.
    pub fn apply(&mut self, now: Instant, ack: &Ack) -> (usize, usize) {
        self.acked.clear();
        self.lost.clear();
        let max_ack_delay = self.config.max_ack_delay;
        self.recovery
            .on_ack(
                now,
                ack,
                &self.config,
                max_ack_delay,
                &mut self.acked,
                &mut self.lost,
            )
            .expect("the ACK covers only packets that were sent");
        (self.acked.len(), self.lost.len())
    }
}

/// The weighted fair queue with flows in every band.
#[derive(Debug)]
pub struct SchedulerLoad {
    scheduler: Scheduler,
}

impl SchedulerLoad {
    /// `flows_per_band` streams queued in each of the four bands.
    pub fn new(flows_per_band: u64) -> Self {
        let mut scheduler = Scheduler::new(TransportConfig::default().band_weights);
        let mut index = 0;
        for band in Band::ALL {
            for _ in 0..flows_per_band {
                scheduler.push(
                    band,
                    Flow::Stream(StreamId::new(Side::Client, Dir::Bi, index)),
                );
                index += 1;
            }
        }
        SchedulerLoad { scheduler }
    }

    /// One scheduling decision: picks the next flow and records that it
    /// sent a frame of `frame_len` bytes and still has more. Returns the
    /// band served.
    pub fn next(&mut self, frame_len: usize) -> Option<Band> {
        let (band, _) = self.scheduler.peek()?;
        self.scheduler.sent(band, frame_len, true);
        Some(band)
    }
}
