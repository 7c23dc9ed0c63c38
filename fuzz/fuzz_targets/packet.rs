//! Fuzz target: see `mxp_proto::fuzzing::packet`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mxp_proto::fuzzing::packet(data));
