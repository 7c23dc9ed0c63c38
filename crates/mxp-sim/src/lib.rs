//! Deterministic network harness.
