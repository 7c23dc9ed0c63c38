//! Whether handshake work is arriving faster than it is done.

use std::time::{Duration, Instant};

/// Once work is seen to pile up, the node counts as loaded for this long:
/// long enough that a steady flood does not get a job through every time
/// the queue empties, short enough that a node back at rest stops costing
/// newcomers a retry's round trip soon after.
pub const LOAD_HOLD: Duration = Duration::from_secs(1);

/// Load, as seen at each initiation, held for [`LOAD_HOLD`].
#[derive(Debug, Default)]
pub struct LoadDetector {
    until: Option<Instant>,
}

impl LoadDetector {
    /// Notes whether work is piling up at `now`; whether the node counts
    /// as loaded.
    pub fn observe(&mut self, now: Instant, piling_up: bool) -> bool {
        if piling_up {
            self.until = Some(now + LOAD_HOLD);
        }
        self.until.is_some_and(|t| now < t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_is_held_for_a_while_after_it_was_seen() {
        let t0 = Instant::now();
        let mut load = LoadDetector::default();
        assert!(!load.observe(t0, false));
        assert!(load.observe(t0, true));
        assert!(load.observe(t0 + LOAD_HOLD / 2, false));
        assert!(!load.observe(t0 + LOAD_HOLD, false));
    }
}
