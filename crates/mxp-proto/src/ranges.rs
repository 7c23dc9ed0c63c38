//! Sets of `u64` stored as sorted, disjoint half-open ranges.
//!
//! Packet numbers, stream offsets and acknowledged byte ranges all arrive
//! mostly in order with occasional holes, so a handful of ranges describes
//! millions of elements. [`RangeSet`] is the one structure behind ACK
//! generation (received packet numbers), stream send buffers
//! (acknowledged/lost byte ranges) and stream reassembly (received offsets).
//!
//! Invariant: stored ranges are non-empty, and any two are separated by at
//! least one missing element (overlapping or adjacent inserts are merged), so
//! equal sets always have equal representations and `len()` counts the ACK
//! ranges a frame would need.
//!
//! Because ranges are half-open, `u64::MAX` itself can never be an element;
//! packet numbers and offsets are bounded by 2^62 so this never matters.

use std::collections::BTreeMap;
use std::ops::Range;

/// A set of `u64` kept as disjoint, non-adjacent half-open ranges.
///
/// Backed by a `BTreeMap` from range start to range end, so insertion,
/// removal and membership are `O(log n)` in the number of ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start → end (exclusive). Non-empty, disjoint, non-adjacent.
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every element of `range`, merging with overlapping or adjacent
    /// ranges. Returns `true` if at least one element was not already present
    /// (callers use this to detect genuinely new data or packets). Empty
    /// ranges are a no-op returning `false`.
    pub fn insert(&mut self, range: Range<u64>) -> bool {
        if range.is_empty() {
            return false;
        }
        let mut start = range.start;
        let mut end = range.end;

        // Packets and stream data mostly arrive in order: then the new
        // range touches or follows the last one and nothing else moves.
        match self.map.last_entry() {
            None => {
                self.map.insert(start, end);
                return true;
            }
            Some(mut last) if *last.get() == start => {
                *last.get_mut() = end;
                return true;
            }
            Some(last) if *last.get() < start => {
                self.map.insert(start, end);
                return true;
            }
            Some(_) => {}
        }

        // The range starting at or before `start` may contain, overlap or
        // touch the new one.
        if let Some((&s, &e)) = self.map.range(..=start).next_back()
            && e >= start
        {
            if e >= end {
                // Fully covered: since stored ranges are separated by gaps, a
                // covered range always lies within a single stored range.
                return false;
            }
            start = s;
            self.map.remove(&s);
        }

        // Absorb every range that starts inside or right at the end of the
        // new one.
        while let Some((&s, &e)) = self.map.range(start..=end).next() {
            end = end.max(e);
            self.map.remove(&s);
        }

        self.map.insert(start, end);
        true
    }

    /// Adds a single element. Returns `true` if it was new.
    pub fn insert_one(&mut self, x: u64) -> bool {
        match x.checked_add(1) {
            Some(end) => self.insert(x..end),
            // `u64::MAX` is not representable in a half-open range.
            None => false,
        }
    }

    /// Removes every element of `range`, splitting a stored range if needed.
    /// Empty ranges are a no-op.
    pub fn remove(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }

        // A range starting strictly before `range.start` may reach into it.
        if let Some((&s, &e)) = self.map.range(..range.start).next_back()
            && e > range.start
        {
            self.map.insert(s, range.start);
            if e > range.end {
                self.map.insert(range.end, e);
                return;
            }
        }

        // Ranges starting inside `range`: drop them, keeping any tail that
        // extends beyond it.
        while let Some((&s, &e)) = self.map.range(range.start..range.end).next() {
            self.map.remove(&s);
            if e > range.end {
                self.map.insert(range.end, e);
                break;
            }
        }
    }

    /// Whether `x` is in the set.
    pub fn contains(&self, x: u64) -> bool {
        self.map
            .range(..=x)
            .next_back()
            .is_some_and(|(_, &end)| end > x)
    }

    /// Whether every element of `range` is in the set (vacuously true for an
    /// empty range). Lets a stream check that a region is fully received or
    /// acknowledged without iterating.
    pub fn covers(&self, range: Range<u64>) -> bool {
        if range.is_empty() {
            return true;
        }
        self.map
            .range(..=range.start)
            .next_back()
            .is_some_and(|(_, &end)| end >= range.end)
    }

    /// Whether the set has no elements.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of disjoint ranges (not elements): the size of an ACK frame
    /// built from this set grows with it.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Smallest element.
    pub fn min(&self) -> Option<u64> {
        self.map.first_key_value().map(|(&s, _)| s)
    }

    /// Largest element (the "largest acknowledged" of an ACK frame).
    pub fn max(&self) -> Option<u64> {
        self.map.last_key_value().map(|(_, &e)| e - 1)
    }

    /// Ranges in ascending order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Range<u64>> + ExactSizeIterator + '_ {
        self.map.iter().map(|(&s, &e)| s..e)
    }

    /// Ranges in descending order: ACK frames list the newest range first.
    pub fn iter_rev(&self) -> impl ExactSizeIterator<Item = Range<u64>> + '_ {
        self.iter().rev()
    }

    /// The lowest range, without removing it: the next contiguous chunk a
    /// reassembler can deliver, or the oldest unacknowledged bytes.
    pub fn peek_min(&self) -> Option<Range<u64>> {
        self.map.first_key_value().map(|(&s, &e)| s..e)
    }

    /// Removes and returns the lowest range.
    pub fn pop_min(&mut self) -> Option<Range<u64>> {
        self.map.pop_first().map(|(s, e)| s..e)
    }

    /// Removes every element below `x`: forget packet numbers whose ACKs were
    /// themselves acknowledged, or stream bytes already delivered.
    pub fn remove_below(&mut self, x: u64) {
        self.remove(0..x);
    }

    /// Keeps only the `max_ranges` highest ranges, dropping the lowest ones.
    /// Bounds ACK-frame size and memory when a peer's packets arrive with
    /// many holes; the oldest information is the least useful.
    pub fn retain_newest(&mut self, max_ranges: usize) {
        while self.map.len() > max_ranges {
            self.map.pop_first();
        }
    }
}

impl<'a> IntoIterator for &'a RangeSet {
    type Item = Range<u64>;
    type IntoIter = std::iter::Map<
        std::collections::btree_map::Iter<'a, u64, u64>,
        fn((&'a u64, &'a u64)) -> Range<u64>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        fn to_range((&s, &e): (&u64, &u64)) -> Range<u64> {
            s..e
        }
        self.map
            .iter()
            .map(to_range as fn((&'a u64, &'a u64)) -> Range<u64>)
    }
}

#[cfg(test)]
mod tests {
    // `[a..b]` below is a list of one range, as intended.
    #![allow(clippy::single_range_in_vec_init)]

    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn ranges(set: &RangeSet) -> Vec<Range<u64>> {
        set.iter().collect()
    }

    #[test]
    fn empty() {
        let set = RangeSet::new();
        assert!(set.is_empty());
        assert_eq!(set.len(), 0);
        assert_eq!(set.min(), None);
        assert_eq!(set.max(), None);
        assert_eq!(set.peek_min(), None);
        assert!(!set.contains(0));
        assert!(set.covers(5..5));
        assert!(!set.covers(0..1));
    }

    #[test]
    fn insert_merges_overlapping_and_adjacent() {
        let mut set = RangeSet::new();
        assert!(set.insert(10..20));
        assert!(set.insert(30..40));
        assert_eq!(ranges(&set), [10..20, 30..40]);
        // Adjacent on the right of the first range.
        assert!(set.insert(20..25));
        assert_eq!(ranges(&set), [10..25, 30..40]);
        // Adjacent on the left of the second range.
        assert!(set.insert(28..30));
        assert_eq!(ranges(&set), [10..25, 28..40]);
        // Bridging both.
        assert!(set.insert(25..28));
        assert_eq!(ranges(&set), [10..40]);
        // Covering more than everything.
        assert!(set.insert(0..100));
        assert_eq!(ranges(&set), [0..100]);
    }

    #[test]
    fn insert_spanning_many_ranges() {
        let mut set = RangeSet::new();
        for i in 0..10 {
            set.insert(i * 10..i * 10 + 5);
        }
        assert_eq!(set.len(), 10);
        assert!(set.insert(3..72));
        assert_eq!(ranges(&set), [0..75, 80..85, 90..95]);
    }

    #[test]
    fn insert_reports_newness() {
        let mut set = RangeSet::new();
        assert!(set.insert(10..20));
        assert!(!set.insert(10..20));
        assert!(!set.insert(12..15));
        assert!(!set.insert(19..20));
        assert!(set.insert(19..21));
        assert!(set.insert(5..10));
        assert!(!set.insert(5..21));
        assert_eq!(ranges(&set), [5..21]);
    }

    #[test]
    fn empty_and_reversed_ranges_are_noops() {
        let mut set = RangeSet::new();
        assert!(!set.insert(5..5));
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 9..3;
        assert!(!set.insert(reversed.clone()));
        assert!(set.is_empty());
        set.insert(0..10);
        set.remove(4..4);
        set.remove(reversed);
        assert_eq!(ranges(&set), [0..10]);
    }

    #[test]
    fn insert_one() {
        let mut set = RangeSet::new();
        assert!(set.insert_one(0));
        assert!(set.insert_one(2));
        assert!(!set.insert_one(2));
        assert_eq!(ranges(&set), [0..1, 2..3]);
        assert!(set.insert_one(1));
        assert_eq!(ranges(&set), [0..3]);
        assert!(!set.insert_one(u64::MAX));
        assert!(set.insert_one(u64::MAX - 1));
        assert_eq!(set.max(), Some(u64::MAX - 1));
    }

    #[test]
    fn remove_splits_and_trims() {
        let mut set = RangeSet::new();
        set.insert(0..100);
        set.remove(40..60);
        assert_eq!(ranges(&set), [0..40, 60..100]);
        set.remove(30..70);
        assert_eq!(ranges(&set), [0..30, 70..100]);
        set.remove(0..1);
        assert_eq!(ranges(&set), [1..30, 70..100]);
        set.remove(99..200);
        assert_eq!(ranges(&set), [1..30, 70..99]);
        set.remove(30..70);
        assert_eq!(ranges(&set), [1..30, 70..99]);
        set.remove(0..u64::MAX);
        assert!(set.is_empty());
    }

    #[test]
    fn remove_across_many_ranges() {
        let mut set = RangeSet::new();
        for i in 0..10 {
            set.insert(i * 10..i * 10 + 5);
        }
        set.remove(13..82);
        assert_eq!(ranges(&set), [0..5, 10..13, 82..85, 90..95]);
    }

    #[test]
    fn contains_and_covers() {
        let mut set = RangeSet::new();
        set.insert(10..20);
        set.insert(30..40);
        assert!(!set.contains(9));
        assert!(set.contains(10));
        assert!(set.contains(19));
        assert!(!set.contains(20));
        assert!(set.contains(39));
        assert!(!set.contains(40));
        assert!(set.covers(10..20));
        assert!(set.covers(12..13));
        assert!(!set.covers(9..12));
        assert!(!set.covers(15..21));
        assert!(!set.covers(15..35));
        assert!(!set.covers(20..30));
    }

    #[test]
    fn min_max_peek_pop() {
        let mut set = RangeSet::new();
        set.insert(30..40);
        set.insert(10..20);
        assert_eq!(set.min(), Some(10));
        assert_eq!(set.max(), Some(39));
        assert_eq!(set.peek_min(), Some(10..20));
        assert_eq!(set.pop_min(), Some(10..20));
        assert_eq!(set.pop_min(), Some(30..40));
        assert_eq!(set.pop_min(), None);
    }

    #[test]
    fn iteration_orders() {
        let mut set = RangeSet::new();
        set.insert(5..6);
        set.insert(1..3);
        set.insert(8..10);
        assert_eq!(set.iter().collect::<Vec<_>>(), [1..3, 5..6, 8..10]);
        assert_eq!(set.iter_rev().collect::<Vec<_>>(), [8..10, 5..6, 1..3]);
        assert_eq!(set.iter().len(), 3);
        assert_eq!((&set).into_iter().collect::<Vec<_>>(), [1..3, 5..6, 8..10]);
    }

    #[test]
    fn remove_below() {
        let mut set = RangeSet::new();
        set.insert(0..10);
        set.insert(20..30);
        set.remove_below(5);
        assert_eq!(ranges(&set), [5..10, 20..30]);
        set.remove_below(25);
        assert_eq!(ranges(&set), [25..30]);
        set.remove_below(0);
        assert_eq!(ranges(&set), [25..30]);
        set.remove_below(100);
        assert!(set.is_empty());
    }

    #[test]
    fn retain_newest() {
        let mut set = RangeSet::new();
        for i in 0..5 {
            set.insert(i * 10..i * 10 + 1);
        }
        set.retain_newest(10);
        assert_eq!(set.len(), 5);
        set.retain_newest(2);
        assert_eq!(ranges(&set), [30..31, 40..41]);
        set.retain_newest(0);
        assert!(set.is_empty());
    }

    #[test]
    fn equality_is_canonical() {
        let mut a = RangeSet::new();
        a.insert(0..5);
        a.insert(5..10);
        let mut b = RangeSet::new();
        for x in (0..10).rev() {
            b.insert_one(x);
        }
        assert_eq!(a, b);
    }

    // ---- model-based property test ----------------------------------------

    #[derive(Debug, Clone)]
    enum Op {
        Insert(Range<u64>),
        InsertOne(u64),
        Remove(Range<u64>),
        RemoveBelow(u64),
        PopMin,
        RetainNewest(usize),
    }

    const SPAN: u64 = 96;

    fn range_strategy() -> impl Strategy<Value = Range<u64>> {
        // Mostly short ranges, occasionally reversed/empty ones.
        (0..SPAN, 0..24u64, 0..8u8).prop_map(|(s, len, kind)| match kind {
            0 => s..s,
            #[allow(clippy::reversed_empty_ranges)]
            1 => s + len..s,
            _ => s..s + len,
        })
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => range_strategy().prop_map(Op::Insert),
            3 => (0..SPAN).prop_map(Op::InsertOne),
            3 => range_strategy().prop_map(Op::Remove),
            1 => (0..SPAN).prop_map(Op::RemoveBelow),
            1 => Just(Op::PopMin),
            1 => (0..6usize).prop_map(Op::RetainNewest),
        ]
    }

    /// Maximal runs of consecutive elements of the model.
    fn model_runs(model: &BTreeSet<u64>) -> Vec<Range<u64>> {
        let mut runs: Vec<Range<u64>> = Vec::new();
        for &x in model {
            match runs.last_mut() {
                Some(r) if r.end == x => r.end = x + 1,
                _ => runs.push(x..x + 1),
            }
        }
        runs
    }

    fn check_invariants(set: &RangeSet, model: &BTreeSet<u64>) -> Result<(), TestCaseError> {
        let got = ranges(set);
        for r in &got {
            prop_assert!(r.start < r.end, "empty range stored: {got:?}");
        }
        for w in got.windows(2) {
            prop_assert!(w[0].end < w[1].start, "overlap/adjacent: {got:?}");
        }
        let runs = model_runs(model);
        prop_assert_eq!(&got, &runs);
        prop_assert_eq!(set.len(), runs.len());
        prop_assert_eq!(set.is_empty(), model.is_empty());
        prop_assert_eq!(set.min(), model.first().copied());
        prop_assert_eq!(set.max(), model.last().copied());
        prop_assert_eq!(set.peek_min(), runs.first().cloned());
        let rev: Vec<_> = set.iter_rev().collect();
        let mut runs_rev = runs.clone();
        runs_rev.reverse();
        prop_assert_eq!(rev, runs_rev);
        for x in 0..SPAN + 32 {
            prop_assert_eq!(set.contains(x), model.contains(&x), "contains({})", x);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matches_btreeset_model(ops in proptest::collection::vec(op_strategy(), 0..64)) {
            let mut set = RangeSet::new();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(r) => {
                        let expect_new = r.clone().any(|x| !model.contains(&x));
                        prop_assert_eq!(set.covers(r.clone()), r.clone().all(|x| model.contains(&x)));
                        model.extend(r.clone());
                        prop_assert_eq!(set.insert(r), expect_new);
                    }
                    Op::InsertOne(x) => {
                        prop_assert_eq!(set.insert_one(x), model.insert(x));
                    }
                    Op::Remove(r) => {
                        prop_assert_eq!(set.covers(r.clone()), r.clone().all(|x| model.contains(&x)));
                        for x in r.clone() {
                            model.remove(&x);
                        }
                        set.remove(r);
                    }
                    Op::RemoveBelow(x) => {
                        model.retain(|&y| y >= x);
                        set.remove_below(x);
                    }
                    Op::PopMin => {
                        let expect = model_runs(&model).first().cloned();
                        if let Some(r) = &expect {
                            for x in r.clone() {
                                model.remove(&x);
                            }
                        }
                        prop_assert_eq!(set.pop_min(), expect);
                    }
                    Op::RetainNewest(n) => {
                        let runs = model_runs(&model);
                        let drop = runs.len().saturating_sub(n);
                        for r in &runs[..drop] {
                            for x in r.clone() {
                                model.remove(&x);
                            }
                        }
                        set.retain_newest(n);
                    }
                }
                check_invariants(&set, &model)?;
            }
        }
    }
}
