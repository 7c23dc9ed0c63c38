//! Fuzz target: see `mxp_proto::fuzzing::frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mxp_proto::fuzzing::frames(data));
