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
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use mxp::admin;
use mxp::capture::{CaptureState, CaptureSummary, DEFAULT_MAX_BYTES};
use mxp::echo::{self, EchoStats};
use mxp::proto::message::{Message, MessageType};
use mxp::proto::{EndpointConfig, Keypair};
use mxp::{CarrierMode, Endpoint, Options};
use serde_json::Value;
use tokio::time::timeout;

use common::process::{Guarded, Outcome, PATIENCE, drain, read_lines, run_command};
use common::tempdir::{TempDir, path_str};

const CALLS: u64 = 50;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// One decoded packet, as tshark prints its fields.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    src: SocketAddr,
    dst: SocketAddr,
    /// IP header and UDP checksums both verified good.
    checksums_good: bool,
}

/// `tshark -r FILE` with checksum validation on, one line per packet:
/// source, destination and checksum verdicts. Fails the test if tshark
/// refuses the file; `None` (the check skipped, said on stderr) where
/// tshark is not installed, unless `MXP_REQUIRE_TSHARK` is set.
fn tshark(file: &Path) -> Option<Vec<Seen>> {
    let mut cmd = Command::new("tshark");
    cmd.args(["-n", "-r", path_str(file)])
        .args([
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
        ])
        .args(["-T", "fields", "-E", "separator=,"])
        .args(["-e", "ip.src", "-e", "udp.srcport", "-e", "ip.dst"])
        .args(["-e", "udp.dstport", "-e", "ip.checksum.status"])
        .args(["-e", "udp.checksum.status"]);
    let which = Command::new("tshark").arg("--version").output();
    if !which.is_ok_and(|o| o.status.success()) {
        let why = "tshark is not installed: install it with \
                   `DEBIAN_FRONTEND=noninteractive apt-get install -y tshark`";
        // CI installs it and sets this, so there the check cannot go missing.
        assert!(std::env::var_os("MXP_REQUIRE_TSHARK").is_none(), "{why}");
        let _ = writeln!(std::io::stderr(), "skipping the tshark check: {why}");
        return None;
    }
    let out = run_command(cmd, format!("tshark -r {}", file.display())).success();
    let seen = out
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 6, "tshark line {line:?}");
            let addr = |ip: &str, port: &str| {
                format!("{ip}:{port}")
                    .parse::<SocketAddr>()
                    .unwrap_or_else(|e| panic!("tshark line {line:?}: {e}"))
            };
            // Wireshark's checksum status: 1 is "Good".
            Seen {
                src: addr(f[0], f[1]),
                dst: addr(f[2], f[3]),
                checksums_good: f[4] == "1" && f[5] == "1",
            }
        })
        .collect();
    Some(seen)
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
    let options = Options {
        carrier: CarrierMode::Mxp,
        ..Options::new(EndpointConfig::client(Keypair::generate()))
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
    let options = Options {
        quic_listen: Some(any_port()),
        ..Options::new(EndpointConfig::server(Keypair::generate()))
    };
    let node = Endpoint::with_options(any_port(), options).unwrap();
    tokio::spawn(echo::serve(node.clone(), Arc::new(EchoStats::default())));
    let quic_addr = node.quic_addr().expect("a QUIC listener");
    let over_mxp = client();
    let over_quic = Endpoint::with_options(
        any_port(),
        Options {
            carrier: CarrierMode::Quic,
            ..Options::new(EndpointConfig::client(Keypair::generate()))
        },
    )
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
    let options = admin::AdminOptions {
        capture_dir: Some(dir.dir().to_path_buf()),
        ..Default::default()
    };
    let server = admin::serve_with(any_port(), node.clone(), options)
        .await
        .unwrap();
    let file = dir.path("admin capture.pcap");
    let encoded = admin::percent_encode(path_str(&file));

    let idle = ok_json(&server, "GET", "/capture").await;
    assert_eq!(idle["state"], "idle", "{idle}");

    refused(&server, "POST", "/capture/start", 400, "out: missing").await;
    refused(&server, "POST", "/capture/start?out=", 400, "out: missing").await;
    refused(
        &server,
        "POST",
        &format!("/capture/start?out={encoded}&max_bytes=lots"),
        400,
        "max_bytes: expected a number of bytes",
    )
    .await;
    refused(
        &server,
        "POST",
        &format!("/capture/start?out={encoded}&max_bytes=10"),
        400,
        "max_bytes must be at least 24",
    )
    .await;
    refused(
        &server,
        "POST",
        &format!("/capture/start?file={encoded}"),
        400,
        "unknown parameter \"file\"",
    )
    .await;
    let unwritable = dir.path("no-such-dir/x.pcap");
    refused(
        &server,
        "POST",
        &format!(
            "/capture/start?out={}",
            admin::percent_encode(path_str(&unwritable))
        ),
        400,
        path_str(&unwritable),
    )
    .await;
    // Files stay in the capture directory, whatever the caller names.
    for escape in ["../escape.pcap", "sub/../../escape.pcap"] {
        let path = format!("/capture/start?out={}", admin::percent_encode(escape));
        refused(&server, "POST", &path, 400, "contains \"..\"").await;
    }
    for elsewhere in ["/etc/cron.d/mxp", "/tmp/mxp-outside.pcap"] {
        let path = format!("/capture/start?out={}", admin::percent_encode(elsewhere));
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
        &format!("/capture/start?out={encoded}&max_bytes=1_000_000"),
    )
    .await;
    assert_eq!(started["state"], "recording", "{started}");
    assert_eq!(started["path"], path_str(&file));
    assert_eq!(started["max_bytes"], 1_000_000);
    let other = dir.path("other.pcap");
    refused(
        &server,
        "POST",
        &format!(
            "/capture/start?out={}",
            admin::percent_encode(path_str(&other))
        ),
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
        &format!("/capture/start?out={encoded}"),
        409,
        "already exists",
    )
    .await;
    server.close().await;
}

// ---------------------------------------------------------------------------
// The operator's commands: `mxp serve`, `mxp admin ... capture`, `mxp ping`.
// ---------------------------------------------------------------------------

fn mxp(args: &[&str]) -> Outcome {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxp"));
    cmd.args(args).env_remove("MXP_ADMIN_TOKEN");
    run_command(cmd, format!("mxp {}", args.join(" ")))
}

fn json(out: &Outcome) -> Value {
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {out:#?}", out.what))
}

/// A running `mxp serve`, with what it printed at start.
struct Node {
    process: Guarded,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    addr: SocketAddr,
    key: String,
    admin: Option<String>,
    banner: Vec<String>,
}

impl Node {
    fn start(args: &[&str], cwd: &Path) -> Node {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxp"));
        cmd.arg("serve").args(args).current_dir(cwd);
        let mut process = Guarded::spawn(cmd, format!("mxp serve {}", args.join(" ")));
        let lines = read_lines(process.child.stdout.take().expect("piped stdout"));
        let stderr = Some(drain(process.child.stderr.take()));
        let mut banner = Vec::new();
        loop {
            let line = lines
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|e| panic!("node banner incomplete ({e:?}): {banner:#?}"));
            let done = line.starts_with("try: mxp ping");
            banner.push(line);
            if done {
                break;
            }
        }
        let after = |prefix: &str| {
            banner
                .iter()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|rest| {
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                })
        };
        Node {
            addr: after("mxp node listening on ").unwrap().parse().unwrap(),
            key: after("public key: ").unwrap(),
            admin: after("admin endpoint on http://"),
            process,
            lines,
            stderr,
            banner,
        }
    }

    fn ping(&self, count: &str) {
        mxp(&[
            "ping",
            &format!("mxp://{}", self.addr),
            "--server-key",
            &self.key,
            "--carrier",
            "mxp",
            "-c",
            count,
        ])
        .success();
    }

    /// SIGTERM, then everything it printed after its banner.
    fn terminate(mut self) -> String {
        let pid = self.process.pid().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let status = self.process.wait(String::new);
        let out: Vec<String> = self.lines.iter().collect();
        let err = self.stderr.take().unwrap().join().unwrap_or_default();
        assert!(status.success(), "node exited {status}: {out:#?}\n{err}");
        out.join("\n")
    }
}

#[test]
fn mxp_admin_capture_start_and_stop_around_pings() {
    let dir = TempDir::new("cli");
    let node = Node::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--quic-listen",
            "off",
            "--admin",
            "127.0.0.1:0",
        ],
        dir.dir(),
    );
    let admin = node.admin.clone().expect("admin address printed");

    // A relative --out is taken from the command's directory.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxp"));
    cmd.args(["admin", &admin, "capture", "start", "--out", "pings.pcap"])
        .args(["--max-bytes", "10000000"])
        .current_dir(dir.dir());
    let started = json(&run_command(cmd, "mxp admin capture start".into()).success());
    let file = dir.path("pings.pcap");
    assert_eq!(started["state"], "recording", "{started}");
    assert_eq!(started["path"], path_str(&file));
    assert_eq!(started["max_bytes"], 10_000_000);

    node.ping("20");
    let status = json(&mxp(&["admin", &admin, "capture", "status"]).success());
    assert_eq!(status["state"], "recording", "{status}");

    let stopped = json(&mxp(&["admin", &admin, "capture", "stop"]).success());
    let summary: CaptureSummary = CaptureSummary {
        path: file.clone(),
        max_bytes: 10_000_000,
        packets: stopped["packets"].as_u64().unwrap(),
        sent: stopped["sent"].as_u64().unwrap(),
        received: stopped["received"].as_u64().unwrap(),
        bytes: stopped["bytes"].as_u64().unwrap(),
        dropped: stopped["dropped"].as_u64().unwrap(),
        truncated_by_limit: stopped["truncated_by_limit"].as_bool().unwrap(),
        error: None,
        duration_s: 0.0,
    };
    assert!(summary.received >= 20 && summary.sent >= 20, "{stopped}");
    assert_eq!(summary.dropped, 0, "{stopped}");
    if let Some(seen) = tshark(&file) {
        assert_eq!(seen.len() as u64, summary.packets, "{stopped}");
        let from_node = seen.iter().filter(|p| p.src == node.addr).count() as u64;
        let to_node = seen.iter().filter(|p| p.dst == node.addr).count() as u64;
        assert_eq!((from_node, to_node), (summary.sent, summary.received));
        assert!(seen.iter().all(|p| p.checksums_good), "{seen:?}");
    }

    // Refusals: one line, exit code 2.
    let again = mxp(&["admin", &admin, "capture", "stop"]);
    assert_eq!(again.code(), Some(2), "{again:#?}");
    assert!(
        again
            .one_error_line()
            .contains("no packet capture is running"),
        "{again:#?}"
    );
    let exists = mxp(&[
        "admin",
        &admin,
        "capture",
        "start",
        "--out",
        path_str(&file),
    ]);
    assert_eq!(exists.code(), Some(2), "{exists:#?}");
    let line = exists.one_error_line();
    assert!(
        line.contains("409") && line.contains(path_str(&file)),
        "{line}"
    );
    let missing = mxp(&["admin", &admin, "capture", "start"]);
    assert_eq!(missing.code(), Some(2), "{missing:#?}");
    assert!(missing.stderr.contains("--out"), "{missing:#?}");
    // Outside the node's capture directory (its working directory here).
    let outside = mxp(&[
        "admin",
        &admin,
        "capture",
        "start",
        "--out",
        "/etc/cron.d/mxp",
    ]);
    assert_eq!(outside.code(), Some(2), "{outside:#?}");
    let line = outside.one_error_line();
    assert!(
        line.contains("400") && line.contains("outside the capture directory"),
        "{line}"
    );
    assert!(!Path::new("/etc/cron.d/mxp").exists());

    node.terminate();
}

#[test]
fn node_capture_in_the_config_records_from_start_up_to_shutdown() {
    let dir = TempDir::new("config");
    // A file from an earlier run is moved aside, not overwritten.
    fs::write(dir.path("boot.pcap"), b"an earlier run").unwrap();
    fs::write(
        dir.path("mxp.toml"),
        "[node]\nlisten = \"127.0.0.1:0\"\nquic_listen = \"off\"\n\
         capture = \"boot.pcap\"\ncapture_max_bytes = 5_000_000\n",
    )
    .unwrap();
    let config = dir.path("mxp.toml");
    let node = Node::start(&["--config", path_str(&config)], dir.dir());
    let file = dir.path("boot.pcap");
    let announced = format!(
        "capturing packets to {} (up to 5000000 bytes)",
        file.display()
    );
    assert!(
        node.banner.iter().any(|l| l.starts_with(&announced)),
        "{:#?}",
        node.banner
    );
    assert_eq!(
        fs::read(dir.path("boot.pcap.prev")).unwrap(),
        b"an earlier run"
    );

    node.ping("5");
    let addr = node.addr;
    let printed = node.terminate();
    let line = printed
        .lines()
        .find(|l| l.starts_with(&format!("capture {}: ", file.display())))
        .unwrap_or_else(|| panic!("no capture line in {printed}"));
    let number_before = |word: &str| -> u64 {
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || "(),".contains(c))
            .filter(|w| !w.is_empty())
            .collect();
        let i = words.iter().position(|w| *w == word).unwrap();
        words[i - 1].parse().unwrap()
    };
    let packets = number_before("packets");
    assert!(packets >= 10, "{line}");
    let Some(seen) = tshark(&file) else { return };
    assert_eq!(seen.len() as u64, packets, "{line}");
    assert_eq!(
        seen.iter().filter(|p| p.src == addr).count() as u64,
        number_before("sent"),
        "{line}"
    );
    assert_eq!(
        seen.iter().filter(|p| p.dst == addr).count() as u64,
        number_before("received"),
        "{line}"
    );
}
