//! Handshake floods on real sockets against `mxp serve` with the shipped
//! defaults, sent by `mxp attack flood` from 256 source ports of another
//! process, while an established client makes calls:
//!
//! - copies of one valid Initial, at 10,000/s and 50,000/s;
//! - the same with a corrupted handshake message;
//! - valid initiations from fresh client keys, and junk with a valid mac1;
//! - the same floods on the QUIC carrier.
//!
//! Each asserts outcomes and counts, never times: every established call
//! is answered, a newcomer connects during the flood, and the node's
//! handshake work (`mxp_handshake_jobs_total`) stays within its budget.
//! Also: fifty `mxp ping` processes sharing one client key, started
//! together, all connect; a replayed Initial from a fresh address gets at
//! most three times its bytes back and costs no handshake work.
//!
//! Every wait is bounded by [`PATIENCE`], a guard against hangs.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mxp::attack::mxp_initial;
use mxp::proto::message::{Message, MessageType};
use mxp::proto::{EndpointConfig, Keypair, ServerConfig};
use mxp::{CarrierMode, Connection, Endpoint, Options};
use tokio::time::timeout;

use common::node::{Keys, Node, mxp};
use common::process::{Guarded, PATIENCE, drain, run_command};
use common::scrape::Scrape;

/// Floods share two cores with the node and the client: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `mxp serve` with the shipped defaults (and an admin endpoint to read
/// its counters).
fn node() -> (Node, SocketAddr, SocketAddr) {
    let node = Node::start(&["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    let quic = node.printed_addr("quic carrier listening on ");
    let admin: SocketAddr = node.admin_addr().parse().expect("admin address");
    (node, quic, admin)
}

fn client(carrier: CarrierMode) -> Endpoint {
    let mut options = Options::new(EndpointConfig::client(Keypair::generate()));
    options.carrier_mode = carrier;
    Endpoint::with_options("127.0.0.1:0".parse().unwrap(), options).unwrap()
}

fn url(node: &Node, quic: SocketAddr) -> String {
    format!("mxp://{}?quic={}", node.addr, quic.port())
}

/// Calls on `conn` one at a time until `stop`; each must be answered.
fn caller(conn: Connection, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let (mut made, mut answered) = (0u64, 0u64);
        while !stop.load(Ordering::Relaxed) {
            let call = Message::new(MessageType::Call, vec![7u8; 64]).with_message_id(made);
            made += 1;
            match timeout(PATIENCE, conn.call(&call)).await {
                Ok(Ok(reply)) if reply.message_id == call.message_id => answered += 1,
                other => panic!("established call {made} not answered: {other:?}"),
            }
        }
        (made, answered)
    })
}

/// Sum of every sample of `family` whose labels contain `labels`.
fn sum(scrape: &Scrape, family: &str, labels: &str) -> f64 {
    scrape
        .0
        .iter()
        .filter(|(series, _)| series.starts_with(family) && series.contains(labels))
        .map(|(_, v)| v)
        .sum()
}

struct FloodOutcome {
    before: Scrape,
    after: Scrape,
    sent: u64,
    elapsed: Duration,
}

impl FloodOutcome {
    fn delta(&self, family: &str, labels: &str) -> f64 {
        sum(&self.after, family, labels) - sum(&self.before, family, labels)
    }

    /// The node counted the flood's datagrams under `result` (some, and no
    /// more than were sent: the kernel may drop some under a flood).
    fn assert_counted(&self, result: &str, what: &str) {
        let n = self.delta(RESULTS, result);
        assert!(
            n > 0.0 && n <= self.sent as f64,
            "{what}: {n} counted as {result}"
        );
    }

    /// The node's handshake budget over the flood (shipped defaults).
    fn budget(&self) -> f64 {
        let p = ServerConfig::default();
        f64::from(p.handshake_burst) + f64::from(p.handshake_rate) * self.elapsed.as_secs_f64()
    }
}

/// Runs `mxp attack flood` at the node's `carrier` while an established
/// client calls and, half a second in, a newcomer connects and calls.
async fn flood(carrier: &str, kind: &str, rate: u64) -> FloodOutcome {
    let (node, quic, admin) = node();
    let mode = if carrier == "quic" {
        CarrierMode::Quic
    } else {
        CarrierMode::Mxp
    };
    let key = node.public_key();
    let target = if carrier == "quic" { quic } else { node.addr };
    let established = client(mode);
    let conn = timeout(PATIENCE, established.connect(&url(&node, quic), key))
        .await
        .expect("connect within the hang guard")
        .expect("the established client connects");
    let stop = Arc::new(AtomicBool::new(false));
    let calls = caller(conn.clone(), stop.clone());
    let before = Scrape::at(admin).await;

    let what = format!("{kind} flood of {carrier} at {rate}/s");
    let mut cmd = mxp();
    cmd.args(["attack", "flood", &target.to_string(), "--server-key"])
        .arg(key.to_string())
        .args(["--carrier", carrier, "--kind", kind, "--json"])
        .args(["--rate", &rate.to_string(), "--duration", "2s"])
        .args(["--distinct", "2000"]);
    let start = Instant::now();
    let mut attacker = Guarded::spawn(cmd, what.clone());
    let out = drain(attacker.child.stdout.take());
    let err = drain(attacker.child.stderr.take());

    tokio::time::sleep(Duration::from_millis(500)).await;
    let newcomer = client(mode);
    let late = timeout(PATIENCE, newcomer.connect(&url(&node, quic), key))
        .await
        .expect("connect within the hang guard")
        .unwrap_or_else(|e| panic!("{what}: a newcomer could not connect: {e}"));
    let reply = timeout(PATIENCE, late.call(&Message::new(MessageType::Call, "hi")))
        .await
        .expect("call within the hang guard")
        .unwrap_or_else(|e| panic!("{what}: the newcomer's call failed: {e}"));
    assert_eq!(&reply.payload[..], b"hi");

    let status = tokio::task::spawn_blocking(move || attacker.wait(String::new))
        .await
        .unwrap();
    let elapsed = start.elapsed();
    let report = out.join().unwrap();
    assert!(status.success(), "{what}: {report}{}", err.join().unwrap());
    let report: serde_json::Value = serde_json::from_str(report.trim()).expect("JSON report");
    let sent = report["sent"].as_u64().expect("sent");
    assert!(sent > rate, "{what}: only {sent} sent");

    stop.store(true, Ordering::Relaxed);
    let (made, answered) = calls.await.unwrap();
    assert_eq!(made, answered, "{what}: every established call answered");
    assert!(answered > 0, "{what}");
    let after = Scrape::at(admin).await;
    drop(node);
    FloodOutcome {
        before,
        after,
        sent,
        elapsed,
    }
}

const JOBS: &str = "mxp_handshake_jobs_total";
const RESULTS: &str = "mxp_handshakes_total";

fn assert_within_budget(o: &FloodOutcome, what: &str) {
    let jobs = o.delta(JOBS, "");
    assert!(
        jobs <= o.budget(),
        "{what}: {jobs} handshake jobs, budget {}",
        o.budget()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_valid_initial_cost_the_node_no_handshake_work() {
    let _one = ONE_AT_A_TIME.lock().await;
    for rate in [10_000, 50_000] {
        let o = flood("mxp", "replay", rate).await;
        let what = format!("MXP replay at {rate}/s");
        assert_within_budget(&o, &what);
        // The first copy is worked on (the Initial was never seen before),
        // and the newcomer's initiation: nothing else.
        assert!(o.delta(JOBS, "carrier=\"mxp\"") <= 2.0, "{what}");
        o.assert_counted("result=\"replayed\"", &what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_corrupted_initial_are_dropped_by_mac1() {
    let _one = ONE_AT_A_TIME.lock().await;
    for rate in [10_000, 50_000] {
        let o = flood("mxp", "corrupt", rate).await;
        let what = format!("MXP corrupt at {rate}/s");
        assert_within_budget(&o, &what);
        assert!(
            o.delta(JOBS, "carrier=\"mxp\"") <= 1.0,
            "{what}: the newcomer's only"
        );
        o.assert_counted("result=\"mac_failed\"", &what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_initiations_from_blind_senders_are_asked_to_prove_their_address() {
    let _one = ONE_AT_A_TIME.lock().await;
    for (kind, rate) in [("fresh", 10_000), ("junk", 10_000), ("junk", 50_000)] {
        let o = flood("mxp", kind, rate).await;
        let what = format!("MXP {kind} at {rate}/s");
        assert_within_budget(&o, &what);
        let retries = o.delta(RESULTS, "carrier=\"mxp\",result=\"retry_sent\"");
        assert!(retries > 0.0, "{what}: no retry sent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quic_carrier_holds_the_same_floods() {
    let _one = ONE_AT_A_TIME.lock().await;
    for (kind, rate) in [
        ("replay", 10_000),
        ("replay", 50_000),
        ("corrupt", 10_000),
        ("corrupt", 50_000),
        ("fresh", 10_000),
    ] {
        let o = flood("quic", kind, rate).await;
        let what = format!("QUIC {kind} at {rate}/s");
        assert_within_budget(&o, &what);
        if kind == "fresh" {
            let retries = o.delta(RESULTS, "carrier=\"quic\",result=\"retry_sent\"");
            assert!(retries > 0.0, "{what}: retries under load");
        } else {
            // quinn routes copies of an Initial to the attempt its first
            // copy started (or the guard ignores them as replays), and a
            // corrupted one never decrypts: no identity exchange but the
            // newcomer's.
            assert!(o.delta(JOBS, "carrier=\"quic\"") <= 1.0, "{what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_initial_from_a_fresh_address_gets_at_most_three_times_its_bytes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (node, _, admin) = node();
    let initial = mxp_initial(node.addr, node.public_key());
    // Its sender: answered (the handshake answer), and a job spent.
    let first = UdpSocket::bind("127.0.0.1:0").unwrap();
    first.send_to(&initial, node.addr).unwrap();
    assert!(received(&first) > 0, "the first sender is answered");
    let before = Scrape::at(admin).await;
    // A copy from a fresh address: nothing worth more than 3x comes back,
    // and no handshake work is done.
    let replayer = UdpSocket::bind("127.0.0.1:0").unwrap();
    replayer.send_to(&initial, node.addr).unwrap();
    let got = received(&replayer);
    assert!(
        got <= 3 * initial.len(),
        "{got} bytes for {}",
        initial.len()
    );
    let after = Scrape::at(admin).await;
    assert_eq!(sum(&after, JOBS, "mxp"), sum(&before, JOBS, "mxp"));
    assert_eq!(
        sum(&after, RESULTS, "result=\"replayed\"") - sum(&before, RESULTS, "result=\"replayed\""),
        1.0
    );
}

/// Bytes `socket` receives within half a second.
fn received(socket: &UdpSocket) -> usize {
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut total = 0;
    let mut buf = [0u8; 65_536];
    while let Ok((n, _)) = socket.recv_from(&mut buf) {
        total += n;
    }
    total
}

#[test]
fn fifty_pings_sharing_one_client_key_started_together_all_connect() {
    let _one = ONE_AT_A_TIME.blocking_lock();
    let (node, _, _) = node();
    let shared = Keys::generate("shared-key");
    let key_file = shared.secret_file();
    let url = format!("mxp://{}", node.addr);
    let pings: Vec<_> = (0..50)
        .map(|i| {
            let mut cmd = mxp();
            cmd.args(["ping", &url, "--server-key", &node.key, "--carrier", "mxp"])
                .args(["-c", "1", "--json", "--key"])
                .arg(&key_file);
            std::thread::spawn(move || run_command(cmd, format!("ping {i}")))
        })
        .collect();
    let connected = AtomicU64::new(0);
    for ping in pings {
        let out = ping.join().unwrap();
        assert!(out.status.success(), "{out:#?}");
        assert!(out.stdout.contains("\"received\":1"), "{out:#?}");
        connected.fetch_add(1, Ordering::Relaxed);
    }
    assert_eq!(connected.load(Ordering::Relaxed), 50);
}
