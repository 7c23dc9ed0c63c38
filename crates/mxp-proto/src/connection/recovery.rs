//! Loss recovery for the packets this end sends (RFC 9002 in shape, with
//! microsecond timer granularity): which packets are in flight, which an
//! ACK covers, which are lost by packet or time threshold, when the probe
//! timer fires, and the congestion window and pacer they feed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::TransportConfig;
use crate::error::{TransportError, TransportErrorCode};
use crate::frame::{Ack, types};
use crate::histogram::LatencyHistogram;
use crate::recovery::{Controller, NewReno, Pacer, RttEstimator};
use crate::streams::Record;

/// Most record vectors kept for reuse: a window of 1.2 MB in 1200-byte
/// packets. A connection keeps only as many as it once had in flight.
const SPARE_RECORDS: usize = 1024;
/// Largest record list kept for reuse (a packet carries a few frames).
const SPARE_CAPACITY: usize = 8;

/// A packet this end sent and has not yet seen acknowledged or lost.
#[derive(Debug)]
pub(crate) struct SentPacket {
    pub pn: u64,
    pub time_sent: Instant,
    pub size: u16,
    pub ack_eliciting: bool,
    /// Counts toward bytes in flight (everything but ACK-only packets).
    pub in_flight: bool,
    /// Largest packet number of the ACK frame it carried.
    pub ack_largest: Option<u64>,
    /// Datagram frames it carried (counted if lost; never resent).
    pub datagrams: u16,
    /// It carried GOAWAY (resent if lost).
    pub go_away: bool,
    /// Stream and flow-control frames it carried, resent if it is lost.
    pub records: Vec<Record>,
    /// Sent while the congestion window was under-used; set by
    /// [`Recovery::on_packet_sent`].
    pub app_limited: bool,
}

impl SentPacket {
    /// A 1200-byte ack-eliciting data packet: what the tests and
    /// micro-benchmarks of recovery send.
    #[cfg(any(test, feature = "test-support"))]
    pub(crate) fn data(pn: u64, time_sent: Instant, records: Vec<Record>) -> SentPacket {
        SentPacket {
            pn,
            time_sent,
            size: 1200,
            ack_eliciting: true,
            in_flight: true,
            ack_largest: None,
            datagrams: 0,
            go_away: false,
            records,
            app_limited: false,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Recovery {
    /// Packets from `base` on, by packet number; `None` once settled.
    sent: VecDeque<Option<SentPacket>>,
    base: u64,
    pub next_pn: u64,
    pub largest_acked: Option<u64>,
    pub rtt: RttEstimator,
    pub cc: Box<dyn Controller>,
    pub pacer: Pacer,
    pub bytes_in_flight: u64,
    ack_eliciting_in_flight: u64,
    pub pto_count: u32,
    /// Probe packets the probe timer asked for; they ignore the congestion
    /// window.
    pub probes: u32,
    loss_time: Option<Instant>,
    last_ack_eliciting_sent: Option<Instant>,
    /// Emptied record vectors, reused so sending a packet does not allocate.
    spare: Vec<Vec<Record>>,
    /// Every RTT sample, for the latency histogram operators watch.
    pub rtt_histogram: LatencyHistogram,
}

impl Recovery {
    pub(crate) fn new(config: &TransportConfig, now: Instant) -> Self {
        let mtu = u64::from(config.max_udp_payload_size);
        let cc = NewReno::new(mtu, config.initial_window);
        let window = cc.window();
        Recovery {
            sent: VecDeque::new(),
            base: 0,
            next_pn: 0,
            largest_acked: None,
            rtt: RttEstimator::new(config.initial_rtt),
            pacer: Pacer::new(now, mtu, window, config.initial_rtt),
            cc: Box::new(cc),
            bytes_in_flight: 0,
            ack_eliciting_in_flight: 0,
            pto_count: 0,
            probes: 0,
            loss_time: None,
            last_ack_eliciting_sent: None,
            spare: Vec::new(),
            rtt_histogram: LatencyHistogram::default(),
        }
    }

    /// Takes an RTT sample into the estimator and the histogram.
    pub(crate) fn rtt_sample(
        &mut self,
        latest: Duration,
        ack_delay: Duration,
        max_ack_delay: Duration,
    ) {
        self.rtt.update(latest, ack_delay, max_ack_delay);
        self.rtt_histogram.record(latest);
    }

    /// A record vector for the next packet.
    pub(crate) fn take_records(&mut self) -> Vec<Record> {
        self.spare.pop().unwrap_or_default()
    }

    /// Returns a settled packet's record vector for reuse. The pool holds
    /// as many as were in flight at once (up to [`SPARE_RECORDS`]), so a
    /// connection sending a full window reuses them instead of allocating
    /// one per packet.
    pub(crate) fn recycle(&mut self, mut records: Vec<Record>) {
        records.clear();
        // A list grown by an unusual packet is not kept at that size.
        if records.capacity() <= SPARE_CAPACITY && self.spare.len() < SPARE_RECORDS {
            self.spare.push(records);
        }
    }

    /// Probe timeout without backoff.
    pub(crate) fn pto(&self, config: &TransportConfig, max_ack_delay: Duration) -> Duration {
        self.rtt.pto_base(config.timer_granularity) + max_ack_delay
    }

    /// Whether the congestion window has room for a packet of `size`.
    pub(crate) fn can_send(&self, size: u64) -> bool {
        self.probes > 0 || self.bytes_in_flight + size <= self.cc.window()
    }

    pub(crate) fn on_packet_sent(&mut self, now: Instant, mut packet: SentPacket) {
        debug_assert_eq!(packet.pn, self.base + self.sent.len() as u64);
        if packet.in_flight {
            self.bytes_in_flight += u64::from(packet.size);
            // Under half the window in flight, the application (or the
            // CPU), not the network, set the pace: its ACK must not grow
            // the window (RFC 9002 §7.8). Half, not all, so that slow
            // start can still double a window it fills.
            packet.app_limited = self.bytes_in_flight.saturating_mul(2) < self.cc.window();
            self.cc.on_sent(now, u64::from(packet.size));
            self.pacer.on_sent(u64::from(packet.size));
        }
        if packet.ack_eliciting {
            self.ack_eliciting_in_flight += 1;
            self.last_ack_eliciting_sent = Some(now);
            self.probes = self.probes.saturating_sub(1);
        }
        self.sent.push_back(Some(packet));
    }

    /// Packets sent and not yet settled (acknowledged or lost), from the
    /// oldest unsettled one on.
    pub(crate) fn tracked_packets(&self) -> usize {
        self.sent.len()
    }

    fn take(&mut self, pn: u64) -> Option<SentPacket> {
        let index = usize::try_from(pn.checked_sub(self.base)?).ok()?;
        let p = self.sent.get_mut(index)?.take()?;
        if p.in_flight {
            self.bytes_in_flight -= u64::from(p.size);
        }
        if p.ack_eliciting {
            self.ack_eliciting_in_flight -= 1;
        }
        Some(p)
    }

    fn trim(&mut self) {
        while let Some(None) = self.sent.front() {
            self.sent.pop_front();
            self.base += 1;
        }
    }

    /// Applies an ACK frame: newly acknowledged packets go to `acked`,
    /// packets it reveals as lost to `lost`.
    pub(crate) fn on_ack(
        &mut self,
        now: Instant,
        ack: &Ack,
        config: &TransportConfig,
        max_ack_delay: Duration,
        acked: &mut Vec<SentPacket>,
        lost: &mut Vec<SentPacket>,
    ) -> Result<(), TransportError> {
        if ack.largest >= self.next_pn {
            return Err(TransportError::new(
                TransportErrorCode::PROTOCOL_VIOLATION,
                "ACK of a packet never sent",
            )
            .in_frame(types::ACK));
        }
        let first_new = acked.len();
        for range in ack.iter() {
            let lo = (*range.start()).max(self.base);
            for pn in lo..=*range.end() {
                if let Some(p) = self.take(pn) {
                    acked.push(p);
                }
            }
        }
        if acked.len() == first_new {
            return Ok(());
        }
        self.largest_acked = Some(
            self.largest_acked
                .map_or(ack.largest, |l| l.max(ack.largest)),
        );
        let new = &acked[first_new..];
        if let Some(largest) = new.iter().find(|p| p.pn == ack.largest) {
            if new.iter().any(|p| p.ack_eliciting) {
                let sample = now.saturating_duration_since(largest.time_sent);
                let delay = Duration::from_micros(ack.delay_us);
                self.rtt_sample(sample, delay, max_ack_delay);
            }
        }
        for p in &acked[first_new..] {
            if p.in_flight {
                self.cc.on_ack(
                    now,
                    p.time_sent,
                    u64::from(p.size),
                    p.app_limited,
                    &self.rtt,
                );
            }
        }
        self.detect_lost(now, config, max_ack_delay, lost);
        self.pto_count = 0;
        self.trim();
        Ok(())
    }

    /// Declares lost every unacknowledged packet sent well before the
    /// largest acknowledged one (by count or by time).
    fn detect_lost(
        &mut self,
        now: Instant,
        config: &TransportConfig,
        max_ack_delay: Duration,
        lost: &mut Vec<SentPacket>,
    ) {
        let Some(largest) = self.largest_acked else {
            return;
        };
        self.loss_time = None;
        let loss_delay = self.rtt.loss_delay(config.timer_granularity);
        let first_lost = lost.len();
        let mut index = 0;
        while index < self.sent.len() {
            let pn = self.base + index as u64;
            if pn >= largest {
                break;
            }
            let Some(p) = &self.sent[index] else {
                index += 1;
                continue;
            };
            let by_time = now.saturating_duration_since(p.time_sent) >= loss_delay;
            let by_count = largest >= pn + config.packet_threshold;
            if by_time || by_count {
                let p = self.take(pn).expect("present");
                lost.push(p);
            } else {
                let at = p.time_sent + loss_delay;
                self.loss_time = Some(self.loss_time.map_or(at, |t| t.min(at)));
            }
            index += 1;
        }
        let newly_lost = &lost[first_lost..];
        let Some(last) = newly_lost
            .iter()
            .filter(|p| p.in_flight)
            .max_by_key(|p| p.pn)
        else {
            return;
        };
        let lost_bytes = newly_lost.iter().map(|p| u64::from(p.size)).sum();
        // Persistent congestion: an unbroken run of losses spanning more
        // than three probe timeouts (RFC 9002 §7.6, simplified to runs).
        let first = newly_lost
            .iter()
            .filter(|p| p.ack_eliciting)
            .min_by_key(|p| p.pn);
        let persistent = self.rtt.has_sample()
            && first.is_some_and(|f| {
                let run = newly_lost
                    .iter()
                    .filter(|p| p.pn >= f.pn && p.pn <= last.pn)
                    .count();
                run as u64 == last.pn - f.pn + 1
                    && last.time_sent.saturating_duration_since(f.time_sent)
                        > 3 * self.pto(config, max_ack_delay)
            });
        let last_sent = last.time_sent;
        self.cc
            .on_congestion_event(now, last_sent, persistent, lost_bytes);
    }

    /// When the loss-detection timer must fire: the time threshold of a
    /// packet not yet lost, or else the probe timeout.
    pub(crate) fn loss_detection_deadline(
        &self,
        config: &TransportConfig,
        max_ack_delay: Duration,
    ) -> Option<Instant> {
        if self.loss_time.is_some() {
            return self.loss_time;
        }
        if self.ack_eliciting_in_flight == 0 {
            return None;
        }
        let backoff = 1u32 << self.pto_count.min(16);
        Some(self.last_ack_eliciting_sent? + self.pto(config, max_ack_delay) * backoff)
    }

    /// The loss-detection timer fired. Either declares time-threshold
    /// losses, or (probe timeout) asks for probe packets and returns the
    /// records of the oldest packet in flight to send again in them.
    pub(crate) fn on_timeout(
        &mut self,
        now: Instant,
        config: &TransportConfig,
        max_ack_delay: Duration,
        lost: &mut Vec<SentPacket>,
    ) -> Option<Vec<Record>> {
        if self.loss_time.is_some() {
            self.detect_lost(now, config, max_ack_delay, lost);
            self.trim();
            return None;
        }
        self.pto_count = self.pto_count.saturating_add(1);
        self.probes = 2;
        self.sent
            .iter()
            .flatten()
            .find(|p| p.ack_eliciting)
            .map(|p| p.records.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::ops::RangeInclusive;

    use super::*;

    const fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// The peer's max_ack_delay the tests assume: the default, 200 µs.
    fn peer_max_ack_delay() -> Duration {
        TransportConfig::default().max_ack_delay
    }

    fn recovery(now: Instant) -> (Recovery, TransportConfig) {
        let config = TransportConfig::default();
        (Recovery::new(&config, now), config)
    }

    /// Sends an ack-eliciting packet carrying one record that names it
    /// (`DataBlocked(pn)`), so a probe can be told apart.
    fn send(r: &mut Recovery, now: Instant) -> u64 {
        let pn = r.next_pn;
        r.next_pn += 1;
        r.on_packet_sent(
            now,
            SentPacket::data(pn, now, vec![Record::DataBlocked(pn)]),
        );
        pn
    }

    /// Applies an ACK of `ranges` (highest first) and returns the packet
    /// numbers it acknowledged and declared lost.
    fn ack(
        r: &mut Recovery,
        config: &TransportConfig,
        now: Instant,
        ranges: &[RangeInclusive<u64>],
    ) -> (Vec<u64>, Vec<u64>) {
        let frame = Ack {
            largest: *ranges[0].end(),
            delay_us: 0,
            ranges: ranges.to_vec(),
        };
        let (mut acked, mut lost) = (Vec::new(), Vec::new());
        r.on_ack(
            now,
            &frame,
            config,
            peer_max_ack_delay(),
            &mut acked,
            &mut lost,
        )
        .expect("a valid ACK");
        (pns(&acked), pns(&lost))
    }

    fn pns(packets: &[SentPacket]) -> Vec<u64> {
        packets.iter().map(|p| p.pn).collect()
    }

    fn deadline(r: &Recovery, config: &TransportConfig) -> Option<Instant> {
        r.loss_detection_deadline(config, peer_max_ack_delay())
    }

    #[test]
    fn a_packet_is_lost_once_the_packet_threshold_of_later_packets_is_acknowledged() {
        let t0 = Instant::now();
        let (mut r, config) = recovery(t0);
        assert_eq!(config.packet_threshold, 3);
        for _ in 0..6 {
            send(&mut r, t0);
        }
        // Every ACK arrives one 30 µs round trip after the burst: packet 0
        // is 30 µs old, under the 33.75 µs time threshold, so only the
        // packet count can declare it lost.
        let at = t0 + us(30);
        for later in 1..config.packet_threshold {
            let (acked, lost) = ack(&mut r, &config, at, &[1..=later]);
            assert_eq!(acked, [later]);
            assert!(
                lost.is_empty(),
                "{later} later packet(s) acknowledged is not enough: {lost:?}"
            );
            assert_eq!(
                deadline(&r, &config),
                Some(t0 + us(33) + Duration::from_nanos(750)),
                "meanwhile the time threshold is armed for packet 0"
            );
        }
        let (acked, lost) = ack(&mut r, &config, at, &[1..=config.packet_threshold]);
        assert_eq!(acked, [config.packet_threshold]);
        assert_eq!(lost, [0], "the third later packet acknowledged loses it");
        assert_eq!(r.bytes_in_flight, 2 * 1200, "packets 4 and 5 remain");
    }

    #[test]
    fn the_packet_threshold_counts_packet_numbers_not_acknowledged_packets() {
        let t0 = Instant::now();
        let (mut r, config) = recovery(t0);
        for _ in 0..5 {
            send(&mut r, t0);
        }
        // Packet 3 alone is acknowledged: 0 is three numbers below it and
        // lost; 1 and 2 are not (yet).
        let (acked, lost) = ack(&mut r, &config, t0 + us(30), &[3..=3]);
        assert_eq!(acked, [3]);
        assert_eq!(lost, [0]);
        // Packet 4 makes 1 lost too, and 2 still waits for its time.
        let (_, lost) = ack(&mut r, &config, t0 + us(30), &[3..=4]);
        assert_eq!(lost, [1]);
        assert!(deadline(&r, &config).is_some());
    }

    #[test]
    fn a_packet_is_lost_by_time_threshold_nine_eighths_of_the_rtt_after_it_was_sent() {
        let t0 = Instant::now();
        let (mut r, config) = recovery(t0);
        let first = send(&mut r, t0);
        send(&mut r, t0 + us(2));
        // Packet 1 is acknowledged one 32 µs round trip after it left:
        // loss delay = 9/8 · max(smoothed 32, latest 32) = 36 µs. Packet 0 is
        // 34 µs old, and only one later packet is acknowledged.
        let (acked, lost) = ack(&mut r, &config, t0 + us(34), &[1..=1]);
        assert_eq!((acked, lost), (vec![1], vec![]));
        assert_eq!(r.rtt.smoothed(), us(32));
        assert_eq!(r.rtt.loss_delay(config.timer_granularity), us(36));
        let at = t0 + us(36);
        assert_eq!(
            deadline(&r, &config),
            Some(at),
            "the loss timer, not the probe timer, is armed for packet 0"
        );

        let mut lost = Vec::new();
        let before = at - Duration::from_nanos(1);
        let probe = r.on_timeout(before, &config, peer_max_ack_delay(), &mut lost);
        assert!(
            probe.is_none() && lost.is_empty(),
            "not lost a nanosecond early"
        );
        assert_eq!(deadline(&r, &config), Some(at), "still armed");

        let probe = r.on_timeout(at, &config, peer_max_ack_delay(), &mut lost);
        assert!(probe.is_none(), "a time-threshold loss is no probe");
        assert_eq!(pns(&lost), [first]);
        assert_eq!(r.pto_count, 0);
        assert_eq!(r.bytes_in_flight, 0);
        assert_eq!(deadline(&r, &config), None, "nothing left in flight");
    }

    #[test]
    fn probe_timeout_is_microseconds_for_a_microsecond_rtt_and_doubles_per_probe_until_an_ack() {
        let t0 = Instant::now();
        let (mut r, config) = recovery(t0);
        send(&mut r, t0);
        ack(&mut r, &config, t0 + us(30), &[0..=0]);
        // First sample 30 µs: smoothed 30, rttvar 15. PTO = 30 + max(4·15,
        // granularity 10) + the peer's max_ack_delay 200 = 290 µs.
        let pto = us(30 + 60 + 200);
        assert_eq!(r.pto(&config, peer_max_ack_delay()), pto);

        let t1 = t0 + us(30);
        send(&mut r, t1);
        assert_eq!(deadline(&r, &config), Some(t1 + pto));
        assert!(pto < Duration::from_millis(1), "no 1 ms floor");

        // Each probe timeout asks for two probes carrying the oldest
        // packet's frames, and doubles the next timeout.
        let mut sent_at = t1;
        for (count, backoff) in [(1, 2), (2, 4), (3, 8)] {
            let fire = deadline(&r, &config).expect("probe timer armed");
            let mut lost = Vec::new();
            let records = r.on_timeout(fire, &config, peer_max_ack_delay(), &mut lost);
            assert!(lost.is_empty());
            assert_eq!(records, Some(vec![Record::DataBlocked(1)]));
            assert_eq!((r.pto_count, r.probes), (count, 2));
            assert!(r.can_send(u64::MAX / 2), "probes ignore the window");
            sent_at = fire;
            send(&mut r, sent_at);
            assert_eq!(deadline(&r, &config), Some(sent_at + pto * backoff));
        }
        // The three probes went out at 290, 290 + 580, 290 + 580 + 1160 µs
        // after packet 1.
        assert_eq!(sent_at, t1 + us(290 + 580 + 1160));

        // An ACK of the last probe (packet 4), 30 µs after it left, resets
        // the backoff: packets 1 to 3 are lost (by count and time), and the
        // next packet's probe timeout is one PTO again, with the new
        // estimate: rttvar (3·15 + 0) / 4 = 11.25 µs, so
        // 30 + 45 + 200 = 275 µs.
        let now = sent_at + us(30);
        let (acked, lost) = ack(&mut r, &config, now, &[4..=4]);
        assert_eq!((acked, lost), (vec![4], vec![1, 2, 3]));
        assert_eq!(r.pto_count, 0);
        assert_eq!(deadline(&r, &config), None, "nothing in flight");
        send(&mut r, now);
        assert_eq!(deadline(&r, &config), Some(now + us(275)));
    }

    #[test]
    fn one_packet_at_a_time_never_grows_the_window() {
        // Request/response: one packet in flight, acknowledged, the next
        // sent. The window measures the application here, not the path; a
        // window grown this way would let a later burst out all at once.
        let t0 = Instant::now();
        let (mut r, config) = recovery(t0);
        let initial = r.cc.window();
        for i in 0..10_000 {
            let at = t0 + us(30 * i);
            let pn = send(&mut r, at);
            ack(&mut r, &config, at + us(30), &[pn..=pn]);
        }
        assert_eq!(r.cc.window(), initial);
    }

    #[test]
    fn a_window_filled_to_half_or_more_grows_in_slow_start() {
        let t0 = Instant::now();
        let (mut r, config) = recovery(t0);
        let initial = r.cc.window();
        let sent = initial / 1200;
        for _ in 0..sent {
            send(&mut r, t0);
        }
        ack(&mut r, &config, t0 + us(30), &[0..=sent - 1]);
        // Packets sent before in-flight reached half the window were
        // app-limited (the 1st to the 19th of 38 here); each byte of the
        // others grows the window.
        let growing = (1..=sent).filter(|k| 2 * k * 1200 >= initial).count() as u64;
        assert_eq!(growing, 19);
        assert_eq!(r.cc.window(), initial + growing * 1200);
    }
}
