//! Test support for the tests that run the `mxp` binary: the binary as a
//! child process ([`node`]); the guarded processes, scrapes, temporary
//! directories and tshark reading are the repository root's own test
//! support (tests/common), shared rather than copied.
#![allow(dead_code)]

pub(crate) mod node;
#[path = "../../../../tests/common/process.rs"]
pub(crate) mod process;
#[path = "../../../../tests/common/scrape.rs"]
pub(crate) mod scrape;
#[path = "../../../../tests/common/tempdir.rs"]
pub(crate) mod tempdir;
#[path = "../../../../tests/common/tshark.rs"]
pub(crate) mod tshark;
