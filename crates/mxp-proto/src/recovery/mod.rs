//! Loss recovery building blocks: RTT estimation, congestion control and pacing.
