//! Initiations waiting for handshake work, and those being worked on.
//!
//! The queue is small and bounded. When it is full, a newcomer whose
//! source asked for less work lately takes the place of the queued
//! initiation whose source asked for most; otherwise the newcomer is
//! refused. The next job goes to the source that asked least. So a
//! flooding sender fills only its own share, and a client arriving in the
//! middle of a flood is served next.

use std::net::SocketAddr;

use foldhash::{HashMap, HashMapExt};

use crate::guard::Share;
use crate::packet::ConnectionId;

/// An initiation that passed the cheap checks: where it came from and what
/// it proved.
#[derive(Debug, Clone)]
pub(super) struct Initiation {
    pub remote: SocketAddr,
    pub dcid: ConnectionId,
    pub scid: ConnectionId,
    pub len: usize,
    pub digest: u64,
    /// The client echoed a valid retry token.
    pub validated: bool,
}

#[derive(Debug)]
struct Waiting {
    seq: u64,
    share: Share,
    initiation: Initiation,
    noise: Vec<u8>,
}

/// What became of an initiation offered to the queue.
#[derive(Debug)]
pub(super) enum Admit {
    Queued,
    /// Queued in the place of this one, which is refused.
    Displaced(Initiation),
    /// Not queued: every queued initiation has as good a claim.
    Full,
}

#[derive(Debug)]
pub(super) struct HandshakeQueue {
    waiting: Vec<Waiting>,
    cap: usize,
    running: HashMap<u64, Initiation>,
    next_seq: u64,
}

impl HandshakeQueue {
    pub(super) fn new(cap: usize) -> Self {
        HandshakeQueue {
            waiting: Vec::new(),
            cap: cap.max(1),
            running: HashMap::new(),
            next_seq: 0,
        }
    }

    /// Initiations waiting for a worker.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Jobs handed out and not yet completed.
    pub(super) fn running(&self) -> usize {
        self.running.len()
    }

    /// Initiations waiting or running.
    pub(super) fn len(&self) -> usize {
        self.waiting() + self.running()
    }

    pub(super) fn admit(&mut self, initiation: Initiation, noise: Vec<u8>, share: Share) -> Admit {
        self.next_seq += 1;
        let entry = Waiting {
            seq: self.next_seq,
            share,
            initiation,
            noise,
        };
        if self.waiting.len() < self.cap {
            self.waiting.push(entry);
            return Admit::Queued;
        }
        // The queued initiation with the worst claim, the newest among equals.
        let worst = (0..self.waiting.len())
            .max_by_key(|&i| (self.waiting[i].share, self.waiting[i].seq))
            .expect("the queue is full, so not empty");
        if self.waiting[worst].share <= share {
            return Admit::Full;
        }
        let old = std::mem::replace(&mut self.waiting[worst], entry);
        Admit::Displaced(old.initiation)
    }

    /// The waiting initiation with the best claim (the oldest among
    /// equals), now running under the returned id.
    pub(super) fn start(&mut self) -> Option<(u64, Initiation, Vec<u8>)> {
        let best = (0..self.waiting.len())
            .min_by_key(|&i| (self.waiting[i].share, self.waiting[i].seq))?;
        let w = self.waiting.swap_remove(best);
        self.running.insert(w.seq, w.initiation.clone());
        Some((w.seq, w.initiation, w.noise))
    }

    /// The running initiation of job `id`, which is done.
    pub(super) fn finish(&mut self, id: u64) -> Option<Initiation> {
        self.running.remove(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initiation(port: u16) -> Initiation {
        Initiation {
            remote: SocketAddr::from(([10, 0, 0, 1], port)),
            dcid: ConnectionId([1; 8]),
            scid: ConnectionId([2; 8]),
            len: 1200,
            digest: u64::from(port),
            validated: false,
        }
    }

    #[test]
    fn the_least_demanding_source_goes_first_and_takes_the_place_of_the_most() {
        let mut q = HandshakeQueue::new(2);
        assert!(matches!(
            q.admit(initiation(1), vec![], (5, 5)),
            Admit::Queued
        ));
        assert!(matches!(
            q.admit(initiation(2), vec![], (5, 6)),
            Admit::Queued
        ));
        assert!(matches!(
            q.admit(initiation(3), vec![], (5, 6)),
            Admit::Full
        ));
        match q.admit(initiation(4), vec![], (0, 0)) {
            Admit::Displaced(old) => assert_eq!(old.remote.port(), 2),
            other => panic!("{other:?}"),
        }
        let (id, first, _) = q.start().unwrap();
        assert_eq!(first.remote.port(), 4, "the newcomer is served next");
        assert_eq!(q.start().unwrap().1.remote.port(), 1);
        assert!(q.start().is_none());
        assert_eq!(q.running(), 2);
        assert_eq!(q.finish(id).unwrap().remote.port(), 4);
        assert!(q.finish(id).is_none(), "finished once");
        assert_eq!((q.waiting(), q.running()), (0, 1));
    }

    #[test]
    fn equal_claims_are_served_in_arrival_order() {
        let mut q = HandshakeQueue::new(8);
        for port in 1..=5 {
            q.admit(initiation(port), vec![], (1, 1));
        }
        let order: Vec<u16> =
            std::iter::from_fn(|| q.start().map(|(_, i, _)| i.remote.port())).collect();
        assert_eq!(order, vec![1, 2, 3, 4, 5]);
    }
}
