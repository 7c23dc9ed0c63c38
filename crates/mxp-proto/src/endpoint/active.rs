//! Which connections the endpoint's poll functions look at, so their cost
//! follows what happened rather than how many connections there are.
//!
//! A connection is *touched* whenever something may have changed it: a
//! datagram for it, an expired timer, its creation, or the application
//! borrowing it through [`Endpoint::connection`](super::Endpoint::connection).
//! At the next poll each touched connection gets its timer re-indexed and
//! joins the transmit and event queues; it leaves a queue when it has
//! nothing more for it.

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

#[derive(Debug, Default)]
pub(super) struct Active {
    pub touched: Vec<usize>,
    /// Connections whose timers may have moved (they just sent, or found
    /// nothing to send) but that need no other look.
    pub retimed: Vec<usize>,
    pub transmit: VecDeque<usize>,
    pub events: VecDeque<usize>,
    /// Per connection slot: which of the lists above hold it
    /// ([`TOUCHED`], [`RETIMED`], [`TRANSMIT`], [`EVENTS`]) — a plain
    /// array, since the application touches a connection on every write.
    queued: Vec<u8>,
    /// Every connection's next timer, earliest first.
    pub deadlines: BTreeSet<(Instant, usize)>,
    /// Per connection slot: its entry in `deadlines`.
    deadline_of: Vec<Option<Instant>>,
}

pub(super) const TOUCHED: u8 = 1;
pub(super) const RETIMED: u8 = 2;
pub(super) const TRANSMIT: u8 = 4;
pub(super) const EVENTS: u8 = 8;

impl Active {
    /// Sets `flag` for slot `k`; whether it was clear.
    pub(super) fn mark(&mut self, k: usize, flag: u8) -> bool {
        if k >= self.queued.len() {
            self.queued.resize(k + 1, 0);
            self.deadline_of.resize(k + 1, None);
        }
        let was_clear = self.queued[k] & flag == 0;
        self.queued[k] |= flag;
        was_clear
    }

    pub(super) fn clear(&mut self, k: usize, flag: u8) {
        if let Some(q) = self.queued.get_mut(k) {
            *q &= !flag;
        }
    }

    pub(super) fn touch(&mut self, k: usize) {
        if self.mark(k, TOUCHED) {
            self.touched.push(k);
        }
    }

    pub(super) fn retime(&mut self, k: usize) {
        if self.mark(k, RETIMED) {
            self.retimed.push(k);
        }
    }

    /// Re-indexes slot `k`'s timer at `at`.
    pub(super) fn set_deadline(&mut self, k: usize, at: Option<Instant>) {
        self.mark(k, 0);
        if self.deadline_of[k] == at {
            return;
        }
        if let Some(old) = std::mem::replace(&mut self.deadline_of[k], at) {
            self.deadlines.remove(&(old, k));
        }
        if let Some(at) = at {
            self.deadlines.insert((at, k));
        }
    }

    /// A removed connection's slot may be reused: nothing of it may stay.
    pub(super) fn forget(&mut self, k: usize) {
        if k < self.queued.len() {
            self.set_deadline(k, None);
            self.queued[k] = 0;
        }
        self.touched.retain(|&t| t != k);
        self.retimed.retain(|&t| t != k);
        self.transmit.retain(|&t| t != k);
        self.events.retain(|&t| t != k);
    }
}
