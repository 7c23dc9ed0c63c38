//! Packet capture, checked with the tool operators read it with: a node
//! records an exchange, and `tshark -r` must decode the file as UDP between
//! the right addresses and ports and count exactly the datagrams the node
//! and its client say went between them. Also the operator's side: the
//! admin routes, `mxp admin ADDR capture start|status|stop`, and
//! `node.capture` in the config file.
//!
//! Without tshark the file checks are skipped with a line on stderr (a
//! fresh machine with only the Rust toolchain still passes `cargo test`);
//! CI installs tshark and sets `MXP_REQUIRE_TSHARK`, so there a missing
//! tshark fails the run instead of skipping the check. Every
//! wait is bounded by [`PATIENCE`], a guard against hangs; no test measures
//! speed.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use mxp::admin;
use mxp::capture::{CaptureState, CaptureSummary, DEFAULT_MAX_BYTES};
use mxp::echo::{self, EchoStats};
use mxp::proto::message::{Message, MessageType};
use mxp::proto::{EndpointConfig, Keypair};
use mxp::{CarrierMode, Endpoint, Options};
use serde_json::Value;
use tokio::time::timeout;

use common::process::PATIENCE;
use common::tempdir::{TempDir, path_str};
use common::tshark::{Seen, tshark};

const CALLS: u64 = 50;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Checks that tshark sees exactly `summary`'s datagrams, all UDP between
/// `node` and `peer`, `sent` of them from the node; returns nothing but
/// fails with the counts.
fn assert_tshark_agrees(file: &Path, summary: &CaptureSummary, node: SocketAddr, peer: SocketAddr) {
    let Some(seen) = tshark(file) else { return };
    assert_eq!(
        seen.len() as u64,
        summary.packets,
        "tshark counts what the capture says it wrote: {summary:?}"
    );
    let from_node = seen
        .iter()
        .filter(|p| p.src == node && p.dst == peer)
        .count() as u64;
    let to_node = seen
        .iter()
        .filter(|p| p.src == peer && p.dst == node)
        .count() as u64;
    assert_eq!(
        (from_node, to_node),
        (summary.sent, summary.received),
        "every packet is UDP between {node} and {peer}: {seen:?}"
    );
    assert!(
        seen.iter().all(|p| p.checksums_good),
        "IP and UDP checksums verify: {seen:?}"
    );
    assert_eq!(fs::metadata(file).unwrap().len(), summary.bytes);
}

fn node() -> Endpoint {
    let node = Endpoint::bind(any_port(), EndpointConfig::server(Keypair::generate())).unwrap();
    tokio::spawn(echo::serve(node.clone(), Arc::new(EchoStats::default())));
    node
}

fn client() -> Endpoint {
    let options = {
        let mut options = Options::new(EndpointConfig::client(Keypair::generate()));
        options.carrier_mode = CarrierMode::Mxp;
        options
    };
    Endpoint::with_options(any_port(), options).unwrap()
}

/// Connects `client` to `node` over MXP and makes [`CALLS`] calls with
/// `payload(i)`, each answered with its own payload.
async fn calls(
    client: &Endpoint,
    node: &Endpoint,
    payload: impl Fn(u64) -> Vec<u8>,
) -> mxp::Connection {
    let conn = timeout(
        PATIENCE,
        client.connect_to(node.local_addr(), node.public_key()),
    )
    .await
    .expect("connect within the hang guard")
    .unwrap();
    for i in 0..CALLS {
        let call = Message::new(MessageType::Call, payload(i)).with_message_id(i);
        let answer = timeout(PATIENCE, conn.call(&call))
            .await
            .expect("answer within the hang guard")
            .unwrap();
        assert_eq!(answer.payload, call.payload);
    }
    conn
}

async fn stop(node: &Endpoint) -> CaptureSummary {
    let node = node.clone();
    timeout(
        PATIENCE,
        tokio::task::spawn_blocking(move || node.stop_capture()),
    )
    .await
    .expect("stop within the hang guard")
    .unwrap()
    .expect("a capture was running")
}

#[tokio::test]
async fn tshark_counts_exactly_the_datagrams_the_node_sent_and_received() {
    let dir = TempDir::new("exchange");
    let file = dir.path("exchange.pcap");
    let node = node();
    let client = client();
    node.start_capture(&file, DEFAULT_MAX_BYTES).unwrap();
    assert_eq!(node.capture_status().state, CaptureState::Recording);

    // The handshake, CALLS calls and the close: all of it on the wire.
    let conn = calls(&client, &node, |i| format!("call {i}").into_bytes()).await;
    conn.close(0, b"done");
    drop(conn);
    // Once both ends have forgotten the connection, nothing more is sent:
    // the counts below are final, not a snapshot of moving traffic.
    timeout(PATIENCE, async {
        client.wait_idle().await;
        node.wait_idle().await;
    })
    .await
    .expect("both ends idle within the hang guard");

    let summary = stop(&node).await;
    assert_eq!(summary.path, file);
    assert_eq!(summary.dropped, 0, "{summary:?}");
    assert!(!summary.truncated_by_limit, "{summary:?}");
    assert_eq!(summary.error, None);
    assert_eq!(summary.packets, summary.sent + summary.received);
    // The node's own counter of datagrams received, and the client's of
    // what reached it from the node (loopback loses nothing).
    assert_eq!(summary.received, node.stats().datagrams_received);
    assert_eq!(summary.sent, client.stats().datagrams_received);
    assert!(
        summary.received >= CALLS && summary.sent >= CALLS,
        "{summary:?}"
    );
    assert_eq!(node.capture_status().state, CaptureState::Stopped);

    assert_tshark_agrees(&file, &summary, node.local_addr(), client.local_addr());
}

#[tokio::test]
async fn one_capture_holds_both_carriers_of_a_node() {
    let dir = TempDir::new("carriers");
    let file = dir.path("both.pcap");
    let options = {
        let mut options = Options::new(EndpointConfig::server(Keypair::generate()));
        options.quic_listen = Some(any_port());
        options
    };
    let node = Endpoint::with_options(any_port(), options).unwrap();
    tokio::spawn(echo::serve(node.clone(), Arc::new(EchoStats::default())));
    let quic_addr = node.quic_addr().expect("a QUIC listener");
    let over_mxp = client();
    let over_quic = Endpoint::with_options(any_port(), {
        let mut options = Options::new(EndpointConfig::client(Keypair::generate()));
        options.carrier_mode = CarrierMode::Quic;
        options
    })
    .unwrap();
    node.start_capture(&file, DEFAULT_MAX_BYTES).unwrap();

    for client in [&over_mxp, &over_quic] {
        let conn = timeout(
            PATIENCE,
            client.connect(
                &format!("mxp://{}?quic={}", node.local_addr(), quic_addr.port()),
                node.public_key(),
            ),
        )
        .await
        .expect("connect within the hang guard")
        .unwrap();
        for i in 0..CALLS {
            let call = Message::new(MessageType::Call, format!("call {i}")).with_message_id(i);
            timeout(PATIENCE, conn.call(&call))
                .await
                .expect("answer within the hang guard")
                .unwrap();
        }
        conn.close(0, b"done");
    }
    timeout(PATIENCE, async {
        over_mxp.wait_idle().await;
        over_quic.wait_idle().await;
        node.wait_idle().await;
    })
    .await
    .expect("all idle within the hang guard");
    let summary = stop(&node).await;
    assert_eq!(summary.dropped, 0, "{summary:?}");

    let Some(seen) = tshark(&file) else { return };
    assert_eq!(seen.len() as u64, summary.packets, "{summary:?}");
    assert!(seen.iter().all(|p| p.checksums_good), "{seen:?}");
    // MXP: exactly what the node's MXP counters say, with the MXP client.
    let mxp: Vec<&Seen> = seen
        .iter()
        .filter(|p| p.src == node.local_addr() || p.dst == node.local_addr())
        .collect();
    let mxp_in = mxp.iter().filter(|p| p.dst == node.local_addr()).count() as u64;
    assert_eq!(mxp_in, node.stats().datagrams_received);
    assert_eq!(
        (mxp.len() as u64 - mxp_in),
        over_mxp.stats().datagrams_received
    );
    assert!(
        mxp.iter()
            .all(|p| p.src == over_mxp.local_addr() || p.dst == over_mxp.local_addr()),
        "{mxp:?}"
    );
    // QUIC: the rest, all between the node's QUIC port and one client port.
    let quic: Vec<&Seen> = seen
        .iter()
        .filter(|p| p.src == quic_addr || p.dst == quic_addr)
        .collect();
    assert_eq!(mxp.len() + quic.len(), seen.len(), "{seen:?}");
    let peers: std::collections::HashSet<SocketAddr> = quic
        .iter()
        .map(|p| if p.src == quic_addr { p.dst } else { p.src })
        .collect();
    assert_eq!(peers.len(), 1, "{peers:?}");
    let quic_in = quic.iter().filter(|p| p.dst == quic_addr).count();
    assert!(quic_in > 0 && quic.len() > quic_in, "{quic:?}");
}

#[tokio::test]
async fn a_capture_at_its_size_limit_is_still_a_file_tshark_reads() {
    let dir = TempDir::new("limit");
    let file = dir.path("small.pcap");
    let node = node();
    let client = client();
    // Room for a few packets of the exchange, not all of them.
    let limit = 4000;
    node.start_capture(&file, limit).unwrap();
    let _conn = calls(&client, &node, |_| vec![7u8; 500]).await;
    let summary = stop(&node).await;
    assert!(summary.truncated_by_limit, "{summary:?}");
    assert!(summary.bytes <= limit, "{summary:?}");
    assert!(summary.packets > 0, "{summary:?}");
    let Some(seen) = tshark(&file) else { return };
    assert_eq!(seen.len() as u64, summary.packets);
}

// ---------------------------------------------------------------------------
// The admin routes.
// ---------------------------------------------------------------------------

async fn send(admin: &admin::AdminServer, method: &str, path: &str) -> (u16, String) {
    timeout(
        PATIENCE,
        admin::request(admin.local_addr(), method, path, Some(""), None),
    )
    .await
    .expect("answer within the hang guard")
    .expect("the admin endpoint answers")
}

/// A 4xx answer of one line that mentions `names`.
async fn refused(admin: &admin::AdminServer, method: &str, path: &str, code: u16, names: &str) {
    let (status, text) = send(admin, method, path).await;
    assert_eq!(status, code, "{method} {path}: {text}");
    assert_eq!(text.trim_end().lines().count(), 1, "one line: {text:?}");
    assert!(
        text.contains(names),
        "{method} {path}: {text:?} lacks {names:?}"
    );
}

async fn ok_json(admin: &admin::AdminServer, method: &str, path: &str) -> Value {
    let (status, text) = send(admin, method, path).await;
    assert_eq!(status, 200, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
}

#[tokio::test]
async fn admin_routes_start_stop_and_refuse_bad_requests_in_one_line() {
    let dir = TempDir::new("admin");
    let node = node();
    let options = {
        let mut admin_options = admin::AdminOptions::default();
        admin_options.capture_dir = Some(dir.dir().to_path_buf());
        admin_options
    };
    let server = admin::serve_with(any_port(), node.clone(), options)
        .await
        .unwrap();
    let file = dir.path("admin capture.pcap");
    let out = path_str(&file);

    let idle = ok_json(&server, "GET", "/capture").await;
    assert_eq!(idle["state"], "idle", "{idle}");

    refused(&server, "POST", "/capture/start", 400, "out: missing").await;
    refused(&server, "POST", "/capture/start?out=", 400, "out: missing").await;
    refused(
        &server,
        "POST",
        &admin::with_query("/capture/start", &[("out", out), ("max_bytes", "lots")]),
        400,
        "max_bytes: expected a number of bytes",
    )
    .await;
    refused(
        &server,
        "POST",
        &admin::with_query("/capture/start", &[("out", out), ("max_bytes", "10")]),
        400,
        "max_bytes must be at least 24",
    )
    .await;
    refused(
        &server,
        "POST",
        &admin::with_query("/capture/start", &[("file", out)]),
        400,
        "unknown parameter \"file\"",
    )
    .await;
    let unwritable = dir.path("no-such-dir/x.pcap");
    refused(
        &server,
        "POST",
        &admin::with_query("/capture/start", &[("out", path_str(&unwritable))]),
        400,
        path_str(&unwritable),
    )
    .await;
    // Files stay in the capture directory, whatever the caller names.
    for escape in ["../escape.pcap", "sub/../../escape.pcap"] {
        let path = admin::with_query("/capture/start", &[("out", escape)]);
        refused(&server, "POST", &path, 400, "contains \"..\"").await;
    }
    for elsewhere in ["/etc/cron.d/mxp", "/tmp/mxp-outside.pcap"] {
        let path = admin::with_query("/capture/start", &[("out", elsewhere)]);
        refused(&server, "POST", &path, 400, "outside the capture directory").await;
    }
    refused(
        &server,
        "POST",
        "/capture/stop",
        409,
        "no packet capture is running",
    )
    .await;
    refused(&server, "GET", "/capture/start", 405, "use POST").await;

    let started = ok_json(
        &server,
        "POST",
        &admin::with_query(
            "/capture/start",
            &[("out", out), ("max_bytes", "1_000_000")],
        ),
    )
    .await;
    assert_eq!(started["state"], "recording", "{started}");
    assert_eq!(started["path"], path_str(&file));
    assert_eq!(started["max_bytes"], 1_000_000);
    let other = dir.path("other.pcap");
    refused(
        &server,
        "POST",
        &admin::with_query("/capture/start", &[("out", path_str(&other))]),
        409,
        "already running",
    )
    .await;
    let status = ok_json(&server, "GET", "/capture").await;
    assert_eq!(status["state"], "recording", "{status}");

    let stopped = ok_json(&server, "POST", "/capture/stop").await;
    assert_eq!(stopped["path"], path_str(&file));
    for key in ["packets", "sent", "received", "bytes", "dropped"] {
        assert!(stopped[key].is_u64(), "{key} in {stopped}");
    }
    assert_eq!(stopped["truncated_by_limit"], false);
    let status = ok_json(&server, "GET", "/capture").await;
    assert_eq!(status["state"], "stopped", "{status}");

    // A capture never overwrites a file.
    refused(
        &server,
        "POST",
        &admin::with_query("/capture/start", &[("out", out)]),
        409,
        "already exists",
    )
    .await;
    server.close().await;
}
