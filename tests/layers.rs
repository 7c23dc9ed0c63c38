//! The runtime's layers, checked from its sources: a module under a
//! carrier (src/mxp/, src/quic/) names nothing above the carriers (the
//! facade's connections, streams and endpoint, metrics, admin, the
//! applications), nor the other carrier. What they share lives below them:
//! errors (src/error.rs), plain data (src/stats/, src/carrier/) and the
//! carrier contract they implement (src/carrier/contract.rs),
//! capture, timers and the handshake workers.

use std::fs;
use std::path::Path;

/// Paths a carrier module may not name: the layers above it.
const ABOVE: [&str; 10] = [
    "crate::link",
    "crate::connection",
    "crate::endpoint",
    "crate::streams",
    "crate::metrics",
    "crate::admin",
    "crate::echo",
    "crate::bench",
    "crate::attack",
    "crate::relay",
];

/// The facade's types, as the crate root re-exports them.
const FACADE: [&str; 5] = [
    "crate::Connection",
    "crate::Endpoint",
    "crate::RecvStream",
    "crate::SendStream",
    "crate::{",
];

/// Every non-comment line of the Rust files in `dir`, with where it is.
fn code_lines(dir: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out = Vec::new();
    for entry in fs::read_dir(&root).expect("the carrier's directory") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path).expect("a readable source file");
            for (i, line) in text.lines().enumerate() {
                if !line.trim_start().starts_with("//") {
                    out.push((format!("{}:{}", path.display(), i + 1), line.to_owned()));
                }
            }
        }
    }
    out
}

fn offenders(dir: &str, other_carrier: &str) -> Vec<String> {
    code_lines(dir)
        .into_iter()
        .filter(|(_, line)| {
            ABOVE.iter().chain(&FACADE).any(|p| line.contains(p)) || line.contains(other_carrier)
        })
        .map(|(at, line)| format!("{at}: {}", line.trim()))
        .collect()
}

#[test]
fn the_mxp_carrier_names_nothing_above_it_nor_the_quic_carrier() {
    let found = offenders("src/mxp", "crate::quic");
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_quic_carrier_names_nothing_above_it_nor_the_mxp_carrier() {
    let found = offenders("src/quic", "crate::mxp");
    assert!(found.is_empty(), "{found:#?}");
}
