//! Fuzz target: see `mxp_proto::fuzzing::message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mxp_proto::fuzzing::message(data));
