//! Bounded bookkeeping for admitting new sessions, with a fixed memory
//! bound and amortised O(1) cost whatever arrives: a token bucket, a log
//! of recent digests, who asked for handshake work lately, and whether it
//! piles up.
//!
//! The MXP endpoint runs its admission on them before any Diffie-Hellman
//! work; the runtime's QUIC carrier uses the same ones in front of quinn.

mod limiter;
mod load;
mod log;
mod sources;

pub use limiter::RateLimiter;
pub use load::{LOAD_HOLD, LoadDetector};
pub use log::BoundedLog;
pub use sources::{Share, SourceShares};
