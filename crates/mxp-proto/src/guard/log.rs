//! A map with a memory bound and an age bound: what the node remembers
//! about recent initiations and tokens.
//!
//! Entries leave in the order they came, when they are older than the
//! retention or when the map is full, so inserting costs amortised O(1)
//! and the memory never exceeds `cap` entries, whatever arrives.

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};

/// Keys are 64-bit digests; times are nanoseconds on the endpoint's
/// monotonic clock.
#[derive(Debug)]
pub struct BoundedLog<V> {
    entries: HashMap<u64, (u64, V)>,
    /// (inserted at, key), oldest first. A key inserted again has a newer
    /// entry here; the old one is skipped when it comes up.
    order: VecDeque<(u64, u64)>,
    cap: usize,
    retention_ns: u64,
}

impl<V> BoundedLog<V> {
    /// Holds at most `cap` entries, each for at most `retention_ns`.
    pub fn new(cap: usize, retention_ns: u64) -> Self {
        BoundedLog {
            entries: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
            retention_ns,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of `key`.
    pub fn get(&self, key: u64) -> Option<&V> {
        self.entries.get(&key).map(|(_, v)| v)
    }

    /// The entry of `key`, to change.
    pub fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        self.entries.get_mut(&key).map(|(_, v)| v)
    }

    /// Forgets entries older than the retention; `evicted` sees each.
    pub fn expire(&mut self, now_ns: u64, mut evicted: impl FnMut(&V)) {
        let floor = now_ns.saturating_sub(self.retention_ns);
        while self.order.front().is_some_and(|&(at, _)| at < floor) {
            self.pop_front(&mut evicted);
        }
    }

    /// Inserts (or replaces) `key`, evicting the oldest entries if full.
    pub fn insert(&mut self, now_ns: u64, key: u64, value: V, mut evicted: impl FnMut(&V)) {
        self.expire(now_ns, &mut evicted);
        while self.entries.len() >= self.cap && !self.entries.contains_key(&key) {
            self.pop_front(&mut evicted);
        }
        self.entries.insert(key, (now_ns, value));
        self.order.push_back((now_ns, key));
        // Replaced keys leave stale entries in `order`; keep it bounded too.
        if self.order.len() > 2 * self.cap {
            let entries = &self.entries;
            self.order
                .retain(|(at, k)| entries.get(k).is_some_and(|(t, _)| t == at));
        }
    }

    fn pop_front(&mut self, evicted: &mut impl FnMut(&V)) {
        let Some((at, key)) = self.order.pop_front() else {
            return;
        };
        if self.entries.get(&key).is_some_and(|(t, _)| *t == at) {
            if let Some((_, v)) = self.entries.remove(&key) {
                evicted(&v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_leave_by_age_and_by_count_oldest_first() {
        let mut log = BoundedLog::new(3, 100);
        let mut gone = Vec::new();
        for k in 0..3 {
            log.insert(k * 10, k, k, |v| gone.push(*v));
        }
        log.insert(30, 3, 3, |v| gone.push(*v));
        assert_eq!(gone, vec![0], "full: the oldest leaves");
        assert_eq!(log.len(), 3);
        log.expire(125, |v| gone.push(*v));
        assert_eq!(gone, vec![0, 1, 2], "older than 100 ns at 125: 10 and 20");
        assert_eq!(log.get(3), Some(&3));
    }

    #[test]
    fn a_replaced_key_keeps_its_newer_age() {
        let mut log = BoundedLog::new(10, 100);
        log.insert(0, 7, "old", |_| {});
        log.insert(90, 7, "new", |_| {});
        log.expire(150, |_| panic!("the entry is 60 ns old"));
        assert_eq!(log.get(7), Some(&"new"));
        log.expire(191, |_| {});
        assert_eq!(log.get(7), None);
    }

    #[test]
    fn memory_stays_bounded_whatever_is_inserted() {
        let mut log = BoundedLog::new(64, u64::MAX);
        for i in 0..100_000u64 {
            log.insert(i, i % 100, (), |_| {});
            assert!(log.len() <= 64);
            assert!(log.order.len() <= 128);
        }
    }
}
