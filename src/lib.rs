//! MXP Transport.
