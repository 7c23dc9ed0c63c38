//! Anti-replay window over received packet numbers.
//!
//! An attacker on the path can capture an authenticated datagram and send it
//! again; AEAD alone accepts the copy. [`ReplayWindow`] remembers which of the
//! last [`WINDOW`] packet numbers (counting back from the largest accepted)
//! have been seen, in a fixed bitmap as in RFC 6479 and WireGuard: no
//! allocation, `O(1)` per packet.
//!
//! The check is split in two so that forged packets cannot poison the window:
//! [`ReplayWindow::check`] is a pure query done before decryption, and
//! [`ReplayWindow::mark`] records a packet number only after it has
//! authenticated.
//!
//! A packet number `pn` is accepted iff it was not accepted before and
//! `pn > largest - WINDOW` (where `largest` is the largest marked so far), so
//! exactly `WINDOW` packet numbers — `largest - WINDOW + 1 ..= largest` — are
//! tracked individually, and every bit of the bitmap is used.

use thiserror::Error;

/// Number of packet numbers tracked below (and including) the largest seen.
///
/// 2048 packets is ~2.4 MB of 1200-byte datagrams: far more reordering than a
/// datacenter fabric produces, for 256 bytes of state per connection.
pub(crate) const WINDOW: u64 = 2048;

const WORD_BITS: u64 = u64::BITS as u64;
const WORDS: usize = (WINDOW / WORD_BITS) as usize;

/// Why [`ReplayWindow::check`] refused a packet number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub(crate) enum Rejection {
    /// This packet number was already accepted: a replay or a duplicate.
    #[error("duplicate packet number")]
    Duplicate,
    /// This packet number is too far below the largest accepted to tell
    /// whether it was seen, so it must be dropped.
    #[error("packet number older than the replay window")]
    TooOld,
}

/// Sliding bitmap of recently accepted packet numbers.
///
/// Bit `pn % WINDOW` records whether `pn` was accepted, for `pn` in
/// `largest - WINDOW + 1 ..= largest`; advancing `largest` clears the bits of
/// the packet numbers it skips over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplayWindow {
    largest: Option<u64>,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window: every packet number is acceptable.
    pub(crate) fn new() -> Self {
        Self {
            largest: None,
            bits: [0; WORDS],
        }
    }

    /// Largest packet number marked so far, if any.
    pub(crate) fn largest(&self) -> Option<u64> {
        self.largest
    }

    /// Whether `pn` may be accepted. Does not change the window: call it
    /// before decrypting, and [`mark`](Self::mark) only once the packet has
    /// authenticated.
    pub(crate) fn check(&self, pn: u64) -> Result<(), Rejection> {
        let Some(largest) = self.largest else {
            return Ok(());
        };
        if pn > largest {
            return Ok(());
        }
        if largest - pn >= WINDOW {
            return Err(Rejection::TooOld);
        }
        if self.get(pn) {
            return Err(Rejection::Duplicate);
        }
        Ok(())
    }

    /// Records `pn` as accepted, sliding the window forward if `pn` is the
    /// new largest. Call only after [`check`](Self::check) succeeded and the
    /// packet authenticated; marking a packet number that `check` would
    /// reject is a no-op.
    pub(crate) fn mark(&mut self, pn: u64) {
        match self.largest {
            None => {
                self.largest = Some(pn);
            }
            Some(largest) if pn > largest => {
                let advance = pn - largest;
                if advance >= WINDOW {
                    self.bits = [0; WORDS];
                } else {
                    // Forget whatever the bits of largest+1 ..= pn held from
                    // one window ago.
                    self.clear(largest + 1, advance);
                }
                self.largest = Some(pn);
            }
            Some(largest) if largest - pn >= WINDOW => return,
            Some(_) => {}
        }
        let (word, mask) = Self::position(pn);
        self.bits[word] |= mask;
    }

    fn position(pn: u64) -> (usize, u64) {
        let idx = pn % WINDOW;
        ((idx / WORD_BITS) as usize, 1 << (idx % WORD_BITS))
    }

    fn get(&self, pn: u64) -> bool {
        let (word, mask) = Self::position(pn);
        self.bits[word] & mask != 0
    }

    /// Clears the bits of `count` (< WINDOW) consecutive packet numbers
    /// starting at `first`, a word at a time.
    fn clear(&mut self, first: u64, count: u64) {
        debug_assert!(count < WINDOW);
        let mut idx = first % WINDOW;
        let mut remaining = count;
        while remaining > 0 {
            let word = (idx / WORD_BITS) as usize;
            let bit = idx % WORD_BITS;
            let n = remaining.min(WORD_BITS - bit);
            let mask = if n == WORD_BITS {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            self.bits[word] &= !mask;
            remaining -= n;
            idx = (idx + n) % WINDOW;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// What a receiver does: check, (authenticate), mark.
    fn accept(w: &mut ReplayWindow, pn: u64) -> Result<(), Rejection> {
        w.check(pn)?;
        w.mark(pn);
        Ok(())
    }

    #[test]
    fn fresh_window_accepts_anything() {
        let w = ReplayWindow::new();
        assert_eq!(w.largest(), None);
        assert_eq!(w.check(0), Ok(()));
        assert_eq!(w.check(1 << 62), Ok(()));
        assert_eq!(w, ReplayWindow::default());
    }

    #[test]
    fn pn_zero() {
        let mut w = ReplayWindow::new();
        assert_eq!(accept(&mut w, 0), Ok(()));
        assert_eq!(w.largest(), Some(0));
        assert_eq!(accept(&mut w, 0), Err(Rejection::Duplicate));
        assert_eq!(accept(&mut w, 1), Ok(()));
        assert_eq!(accept(&mut w, 0), Err(Rejection::Duplicate));
    }

    #[test]
    fn duplicates_rejected() {
        let mut w = ReplayWindow::new();
        for pn in 0..5000 {
            assert_eq!(accept(&mut w, pn), Ok(()));
            assert_eq!(accept(&mut w, pn), Err(Rejection::Duplicate));
        }
        // Every packet number still inside the window is a duplicate.
        for pn in 5000 - WINDOW..5000 {
            assert_eq!(w.check(pn), Err(Rejection::Duplicate), "pn {pn}");
        }
    }

    #[test]
    fn reordered_inside_window_accepted_once() {
        let mut w = ReplayWindow::new();
        assert_eq!(accept(&mut w, 3000), Ok(()));
        // The oldest packet number still inside the window.
        let oldest = 3000 - WINDOW + 1;
        for pn in [2999, oldest, 2500, oldest + 1, 1500] {
            assert_eq!(accept(&mut w, pn), Ok(()), "pn {pn}");
            assert_eq!(accept(&mut w, pn), Err(Rejection::Duplicate), "pn {pn}");
        }
        assert_eq!(w.largest(), Some(3000));
        assert_eq!(w.check(2998), Ok(()));
    }

    #[test]
    fn older_than_window_rejected() {
        let mut w = ReplayWindow::new();
        accept(&mut w, 5000).unwrap();
        assert_eq!(w.check(5000 - WINDOW), Err(Rejection::TooOld));
        assert_eq!(w.check(0), Err(Rejection::TooOld));
        assert_eq!(w.check(5000 - WINDOW + 1), Ok(()));
        // mark() of a too-old packet is a no-op.
        let before = w.clone();
        w.mark(10);
        assert_eq!(w, before);
    }

    #[test]
    fn small_largest_does_not_underflow() {
        let mut w = ReplayWindow::new();
        accept(&mut w, 5).unwrap();
        for pn in 0..5 {
            assert_eq!(w.check(pn), Ok(()));
        }
        assert_eq!(w.check(5), Err(Rejection::Duplicate));
    }

    #[test]
    fn advancing_clears_stale_bits() {
        let mut w = ReplayWindow::new();
        // Mark every packet in one window, then advance by less than a
        // window: the packet numbers that alias the old bits must be fresh.
        for pn in 0..WINDOW {
            accept(&mut w, pn).unwrap();
        }
        accept(&mut w, WINDOW + 100).unwrap();
        for pn in WINDOW..WINDOW + 100 {
            assert_eq!(w.check(pn), Ok(()), "pn {pn}");
        }
        for pn in 101..WINDOW {
            assert_eq!(w.check(pn), Err(Rejection::Duplicate), "pn {pn}");
        }
        for pn in 0..=100 {
            assert_eq!(w.check(pn), Err(Rejection::TooOld), "pn {pn}");
        }
    }

    #[test]
    fn jump_forward_by_more_than_window() {
        let mut w = ReplayWindow::new();
        for pn in 0..100 {
            accept(&mut w, pn).unwrap();
        }
        let far = 100 + 3 * WINDOW + 17;
        accept(&mut w, far).unwrap();
        assert_eq!(w.largest(), Some(far));
        for pn in far - WINDOW + 1..far {
            assert_eq!(w.check(pn), Ok(()), "pn {pn}");
        }
        assert_eq!(w.check(far), Err(Rejection::Duplicate));
        assert_eq!(w.check(far - WINDOW), Err(Rejection::TooOld));
        // Exactly one window forward also clears everything.
        let mut w = ReplayWindow::new();
        for pn in 0..WINDOW {
            accept(&mut w, pn).unwrap();
        }
        accept(&mut w, 2 * WINDOW - 1).unwrap();
        assert_eq!(w.bits.iter().map(|b| b.count_ones()).sum::<u32>(), 1);
    }

    #[test]
    fn near_top_of_packet_number_space() {
        let top = (1u64 << 62) - 1;
        let mut w = ReplayWindow::new();
        accept(&mut w, top - 10).unwrap();
        accept(&mut w, top).unwrap();
        assert_eq!(accept(&mut w, top), Err(Rejection::Duplicate));
        assert_eq!(accept(&mut w, top - 10), Err(Rejection::Duplicate));
        assert_eq!(accept(&mut w, top - 5), Ok(()));
        assert_eq!(w.check(top - WINDOW), Err(Rejection::TooOld));
        // Even u64::MAX does not overflow anything.
        accept(&mut w, u64::MAX).unwrap();
        assert_eq!(w.check(u64::MAX), Err(Rejection::Duplicate));
        assert_eq!(w.check(u64::MAX - 1), Ok(()));
        assert_eq!(w.check(0), Err(Rejection::TooOld));
    }

    #[test]
    fn check_does_not_mutate() {
        let mut w = ReplayWindow::new();
        accept(&mut w, 10).unwrap();
        let before = w.clone();
        // A forged packet far ahead is checked but never marked.
        assert_eq!(w.check(1 << 40), Ok(()));
        assert_eq!(w, before);
        assert_eq!(w.check(9), Ok(()));
    }

    #[test]
    fn rejection_messages() {
        assert_eq!(Rejection::Duplicate.to_string(), "duplicate packet number");
        assert_eq!(
            Rejection::TooOld.to_string(),
            "packet number older than the replay window"
        );
    }

    /// Reference model: the set of accepted packet numbers and the largest.
    #[derive(Default)]
    struct Model {
        seen: HashSet<u64>,
        largest: Option<u64>,
    }

    impl Model {
        fn check(&self, pn: u64) -> Result<(), Rejection> {
            match self.largest {
                Some(l) if pn <= l && l - pn >= WINDOW => Err(Rejection::TooOld),
                _ if self.seen.contains(&pn) => Err(Rejection::Duplicate),
                _ => Ok(()),
            }
        }

        fn mark(&mut self, pn: u64) {
            self.seen.insert(pn);
            self.largest = Some(self.largest.map_or(pn, |l| l.max(pn)));
        }
    }

    /// A mostly-increasing stream with reordering, duplicates and jumps.
    fn sequence() -> impl Strategy<Value = Vec<u64>> {
        let base = prop_oneof![
            Just(0u64),
            Just((1u64 << 62) - 20_000),
            any::<u32>().prop_map(u64::from)
        ];
        let step = prop_oneof![
            8 => (0u64..4, 0u64..64).prop_map(|(fwd, back)| (fwd, back)),
            2 => (0u64..4, 0u64..2 * WINDOW + 64),
            1 => (0u64..3 * WINDOW, Just(0u64)),
        ];
        (base, proptest::collection::vec(step, 1..600)).prop_map(|(base, steps)| {
            let mut cursor = base;
            let mut out = Vec::with_capacity(steps.len() * 2);
            for (i, (fwd, back)) in steps.into_iter().enumerate() {
                cursor += fwd;
                let pn = cursor.saturating_sub(back).max(base);
                out.push(pn);
                if i % 7 == 3 {
                    out.push(pn); // exact duplicate
                }
            }
            out
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn matches_model(seq in sequence()) {
            let mut w = ReplayWindow::new();
            let mut model = Model::default();
            let mut accepted = HashSet::new();
            for pn in seq {
                let got = w.check(pn);
                prop_assert_eq!(got, model.check(pn), "pn {}", pn);
                if got.is_ok() {
                    prop_assert!(accepted.insert(pn), "pn {} accepted twice", pn);
                    w.mark(pn);
                    model.mark(pn);
                }
                prop_assert_eq!(w.largest(), model.largest);
            }
        }

        #[test]
        fn unmarked_checks_never_change_state(seq in sequence(), forged in proptest::collection::vec(any::<u64>(), 1..50)) {
            let mut w = ReplayWindow::new();
            for pn in seq {
                if w.check(pn).is_ok() {
                    w.mark(pn);
                }
                let before = w.clone();
                for &f in &forged {
                    let _ = w.check(f);
                }
                prop_assert_eq!(&w, &before);
            }
        }
    }
}
