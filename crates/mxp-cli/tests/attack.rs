//! `mxp attack` against `mxp serve` with the shipped defaults, on real
//! sockets: for every kind, the attack's own witness (an established
//! client calling every 10 ms) has every call answered, the node's resident
//! memory grows by at most 64 MB, and the node's counters (or the close
//! reasons the attacker saw) show what it refused.
//!
//! Each attack runs for 2 s here; the judged 10 s runs are
//! `mxp attack ... --duration 10s` (docs/transport/security.md).

mod common;

use std::net::SocketAddr;
use std::sync::Mutex;

use serde_json::Value;

use common::node::{Node, mxp};
use common::process::run_command;
use common::scrape::Scrape;

/// Attacks share two cores with the node: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The most a node's resident memory may grow under one attack.
const MAX_GROWTH_KB: u64 = 64 * 1024;

fn resident_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("a live node");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Runs `kind` for 2 s against a fresh default node; returns the attack's
/// report and the node's counters afterwards.
fn attack(kind: &str) -> (Value, Scrape) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let node = Node::start(&["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    let admin: SocketAddr = node.admin_addr().parse().expect("admin address");
    let pid = node.process.child.id();
    let before = resident_kb(pid);
    let mut cmd = mxp();
    cmd.args(["attack", &node.url(), "--server-key", &node.key]);
    cmd.args(["--kind", kind, "--duration", "2s", "--json"]);
    let out = run_command(cmd, format!("mxp attack --kind {kind}"));
    assert_eq!(out.code(), Some(0), "{out:?}");
    let report: Value = serde_json::from_str(out.stdout.trim()).expect("a JSON report");
    let grew = resident_kb(pid).saturating_sub(before);
    assert!(
        grew <= MAX_GROWTH_KB,
        "{kind}: the node grew by {grew} kB: {report}"
    );
    let w = &report["witness"];
    assert!(w["calls"].as_u64().unwrap() >= 100, "{kind}: {report}");
    assert_eq!(w["answered"], w["calls"], "{kind}: {report}");
    assert_eq!(w["failed"], 0, "{kind}: {report}");
    let scrape = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(Scrape::at(admin));
    (report, scrape)
}

fn limit(scrape: &Scrape, name: &str) -> f64 {
    scrape.get(&format!("mxp_peer_limits_total{{limit=\"{name}\"}}"))
}

/// The reasons the node gave for the connections it closed.
fn closes(report: &Value) -> String {
    report["closed_by_node"].to_string()
}

#[test]
fn handshake_flood() {
    let (report, scrape) = attack("handshake-flood");
    assert!(report["sent"].as_u64().unwrap() > 10_000, "{report}");
    // Copies from other addresses than the first sender's: no DH.
    assert!(scrape.get("mxp_handshakes_total{carrier=\"mxp\",result=\"replayed\"}") > 10_000.0);
    // The witness's handshake, the flood's first copy, and the attacker's
    // own witness: nothing else.
    assert!(scrape.get("mxp_handshake_jobs_total{carrier=\"mxp\"}") <= 3.0);
}

#[test]
fn garbage_initiation() {
    let (report, scrape) = attack("garbage-initiation");
    assert!(report["sent"].as_u64().unwrap() > 10_000, "{report}");
    // Blind senders are asked to prove their address; the handshake work
    // stays within its budget (1000/s, a burst of 64).
    assert!(scrape.get("mxp_handshakes_total{carrier=\"mxp\",result=\"retry_sent\"}") > 1_000.0);
    assert!(scrape.get("mxp_handshake_jobs_total{carrier=\"mxp\"}") <= 2.0 * 1000.0 + 64.0 + 1.0);
}

#[test]
fn tiny_segments() {
    let (report, scrape) = attack("tiny-segments");
    assert!(
        closes(&report).contains("stream data too fragmented"),
        "{report}"
    );
    assert!(limit(&scrape, "fragmented") >= 1.0);
}

#[test]
fn zero_datagrams() {
    let (report, scrape) = attack("zero-datagrams");
    assert!(report["sent"].as_u64().unwrap() > 100_000, "{report}");
    // The node echoes what its bounded queues hold; the rest is dropped.
    let dropped = scrape.get("mxp_datagrams_total{event=\"dropped_send\"}")
        + scrape.get("mxp_datagrams_total{event=\"dropped_recv\"}");
    assert!(dropped > 0.0, "{report}");
}

#[test]
fn path_challenge_flood() {
    let (report, scrape) = attack("path-challenge-flood");
    assert!(report["sent"].as_u64().unwrap() > 100_000, "{report}");
    assert!(limit(&scrape, "path_responses_dropped") > 100_000.0);
}

#[test]
fn stream_flood() {
    let (report, _) = attack("stream-flood");
    assert_eq!(report["sent"], 8192, "{report}");
    // One stream beyond the limit, at the end, closes the connection.
    assert!(closes(&report).contains("STREAM_LIMIT_ERROR"), "{report}");
}

#[test]
fn decoder_hold() {
    let (report, scrape) = attack("decoder-hold");
    // The first stream announced 16 MiB: refused at once (the limit is
    // 1 MiB); the others hold no more than the connection window.
    assert!(scrape.get("mxp_message_errors_total{kind=\"payload_too_large\"}") >= 1.0);
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent <= 17 << 20, "{sent} bytes got through: {report}");
}

#[test]
fn key_update_storm() {
    let (report, scrape) = attack("key-update-storm");
    assert!(closes(&report).contains("KEY_UPDATE_ERROR"), "{report}");
    assert!(limit(&scrape, "key_updates") >= 1.0);
}

#[test]
fn ack_storm() {
    let (report, scrape) = attack("ack-storm");
    assert!(report["sent"].as_u64().unwrap() > 1_000, "{report}");
    assert!(limit(&scrape, "acks_ignored") > 1_000.0);
}

#[test]
fn a_remote_target_needs_allow_remote() {
    let out = common::node::run(&[
        "attack",
        "mxp://192.0.2.1:9000",
        "--server-key",
        &"ab".repeat(32),
        "--kind",
        "ack-storm",
    ]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("--allow-remote"), "{out:?}");
}
