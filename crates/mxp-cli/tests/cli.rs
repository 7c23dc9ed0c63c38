//! The `mxp` command as an operator runs it: the real binary in child
//! processes over loopback UDP — keys, a node, ping, call, bench, bad input,
//! node restarts and garbage sprayed at a node.
//!
//! Every child runs under a guard that kills and reaps it when dropped, and
//! every wait has a generous deadline ([`PATIENCE`]) that fails the test
//! instead of hanging it. No test measures speed.

mod common;

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mxp::proto::message::{Message, MessageType};
use mxp::proto::{ConnectionError, EndpointConfig, Keypair, PublicKey};
use mxp::{CallError, Connection, Endpoint};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use common::node::{Keys, Node, mxp, ping, run};
use common::process::{Guarded, Outcome, PATIENCE, drain, read_lines, run_command};
use common::tempdir::{TempDir, path_str};

// ---------------------------------------------------------------------------
// Harness: the `mxp` binary under the guards of `common::process`.
// ---------------------------------------------------------------------------

/// Finds `NUMBER WORD` in a text (e.g. the `17` of "refused 17 datagrams").
fn number_before(text: &str, word: &str) -> Option<u64> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[1] == word)
        .and_then(|w| w[0].parse().ok())
}

fn json_object(out: &Outcome) -> serde_json::Map<String, Value> {
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{}: expected one line: {out:#?}", out.what);
    match serde_json::from_str(lines[0]) {
        Ok(Value::Object(map)) => map,
        other => panic!("{}: not a JSON object: {other:?}\n{}", out.what, lines[0]),
    }
}

fn positive_number(map: &serde_json::Map<String, Value>, key: &str) -> f64 {
    let v = map
        .get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number {key:?} in {map:?}"));
    assert!(v > 0.0, "{key} = {v} in {map:?}");
    v
}

fn call_message(id: u64, text: &str) -> Message {
    Message::new(MessageType::Call, text.to_owned()).with_message_id(id)
}

/// A client endpoint of the library, on loopback.
fn library_client() -> Endpoint {
    Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        EndpointConfig::client(Keypair::generate()),
    )
    .unwrap()
}

async fn call_ok(conn: &Connection, id: u64, text: &str) {
    let reply = tokio::time::timeout(PATIENCE, conn.call(&call_message(id, text)))
        .await
        .expect("call within the hang guard")
        .expect("call answered");
    assert_eq!(reply.kind, MessageType::Response);
    assert_eq!(reply.message_id, id);
    assert_eq!(&reply.payload[..], text.as_bytes());
}

/// The connection error inside a call error, wherever the call noticed it
/// (opening the stream, writing the request or reading the response). A
/// reset that arrives while the call waits for its response comes as
/// `CallError::Read(ReadError::ConnectionLost(..))`.
fn connection_error(e: &CallError) -> Option<&ConnectionError> {
    match e {
        CallError::ConnectionLost(c) => Some(c),
        CallError::Write(mxp::WriteError::ConnectionLost(c)) => Some(c),
        CallError::Read(mxp::ReadError::ConnectionLost(c)) => Some(c),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// keygen, serve, ping, call, bench
// ---------------------------------------------------------------------------

#[test]
fn keygen_writes_a_private_key_and_its_public_half_and_keeps_an_existing_key() {
    let dir = TempDir::new("keygen");
    let out_dir = dir.path("keys");
    let out = run(&["keygen", "--out", path_str(&out_dir)]).success();
    let printed = out.stdout.trim().to_owned();
    assert_eq!(out.stdout, format!("{printed}\n"), "one line on stdout");
    printed
        .parse::<PublicKey>()
        .unwrap_or_else(|e| panic!("keygen printed {printed:?}: {e}"));

    let key_file = out_dir.join("node.key");
    let mode = fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "node.key mode {mode:o}");
    let secret = fs::read_to_string(&key_file).unwrap();
    assert_eq!(secret.len(), 65, "{secret:?}");
    assert!(secret.ends_with('\n'));
    assert!(secret[..64].bytes().all(|b| b.is_ascii_hexdigit()));

    let public = fs::read_to_string(out_dir.join("node.pub")).unwrap();
    assert_eq!(public, format!("{printed}\n"), "node.pub is one line");

    // A second keygen must not replace the node's identity.
    let again = run(&["keygen", "--out", path_str(&out_dir)]);
    assert_eq!(again.code(), Some(2), "{again:#?}");
    let line = again.one_error_line();
    assert!(line.contains("already exists"), "{line}");
    assert!(line.contains("--force"), "{line}");
    assert_eq!(fs::read_to_string(&key_file).unwrap(), secret);
    assert_eq!(
        fs::read_to_string(out_dir.join("node.pub")).unwrap(),
        public
    );

    // With --force it is replaced, still private.
    let forced = run(&["keygen", "--out", path_str(&out_dir), "--force"]).success();
    assert_ne!(forced.stdout.trim(), printed);
    assert_ne!(fs::read_to_string(&key_file).unwrap(), secret);
    let mode = fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn serve_publishes_its_key_and_answers_a_thousand_pings() {
    let keys = Keys::generate("serve");
    let node = Node::start(&[
        "--listen",
        "127.0.0.1:0",
        "--key",
        path_str(&keys.secret_file()),
    ]);
    assert_eq!(node.key, keys.public, "serve publishes the key file's key");

    // The judged command line: --server-key "$(cat DIR/node.pub)".
    let pub_line = fs::read_to_string(keys.dir.path("node.pub")).unwrap();
    let url = node.url();
    let out = run(&[
        "ping",
        &url,
        "--server-key",
        pub_line.trim_end(),
        "-c",
        "1000",
    ])
    .success();
    let first = out.stdout.lines().next().unwrap_or_default();
    assert_eq!(number_before(first, "replies,"), Some(1000), "{out:#?}");
    assert_eq!(number_before(first, "pings"), Some(1000), "{out:#?}");
    let rtt = out.stdout.lines().find(|l| l.starts_with("rtt")).unwrap();
    for column in ["min", "p50", "p99", "max"] {
        assert!(rtt.contains(column), "{rtt}");
    }

    let out = node.ping(&["-c", "50", "--json"]).success();
    let report = json_object(&out);
    assert_eq!(report["sent"], 50, "{report:?}");
    assert_eq!(report["received"], 50, "{report:?}");
    assert_eq!(report["carrier"], "mxp", "{report:?}");
    let rtt = report["rtt_us"].as_object().expect("rtt_us is an object");
    let figure = |k: &str| positive_number(rtt, k);
    let (min, p50, p99, max) = (figure("min"), figure("p50"), figure("p99"), figure("max"));
    assert!(min <= p50 && p50 <= p99 && p99 <= max, "{rtt:?}");

    let stopped = node.terminate();
    assert!(stopped.status.success(), "{stopped:#?}");
    assert!(
        stopped.stdout.contains("served 2 connections, 1050 calls"),
        "{stopped:#?}"
    );
}

#[test]
fn call_prints_the_response() {
    let node = Node::start(&["--listen", "127.0.0.1:0"]);
    let url = node.url();
    let out = run(&["call", &url, "--server-key", &node.key, "--data", "hello"]).success();
    assert_eq!(out.stdout, "hello\n");

    let out = run(&[
        "call",
        &url,
        "--server-key",
        &node.key,
        "--data",
        "hello again",
        "--json",
    ])
    .success();
    let report = json_object(&out);
    assert_eq!(report["response"], "hello again", "{report:?}");
}

/// Every scenario on each carrier the flag names: the same scenario code
/// runs above either carrier (and `auto` picks MXP from a node accepting it).
#[test]
fn bench_json_reports_every_scenario_on_every_carrier() {
    let node = Node::start(&["--listen", "127.0.0.1:0", "--quic-listen", "127.0.0.1:0"]);
    let quic = node.printed_addr("quic carrier listening on ");
    let url = format!("mxp://{}?quic={}", node.addr, quic.port());
    for (flag, used) in [("auto", "mxp"), ("mxp", "mxp"), ("quic", "quic")] {
        for (scenario, figure) in [
            ("rr", "p99_us"),
            ("msgs", "msgs_per_sec"),
            ("bulk", "mb_per_sec"),
            ("handshake", "handshakes_per_sec"),
            ("datagram", "datagrams_per_sec"),
        ] {
            let out = run(&[
                "bench",
                &url,
                "--server-key",
                &node.key,
                "--carrier",
                flag,
                "--scenario",
                scenario,
                "--duration",
                "200ms",
                "--json",
            ])
            .success();
            let report = json_object(&out);
            assert_eq!(report["scenario"], scenario, "{flag}: {report:?}");
            assert_eq!(report["carrier"], used, "{flag}: {report:?}");
            if scenario != "handshake" {
                assert_eq!(report["fell_back"], false, "{flag}: {report:?}");
            }
            positive_number(&report, figure);
            for (k, v) in &report {
                if let Some(n) = v.as_f64() {
                    assert!(n.is_finite() && n >= 0.0, "{flag} {scenario}: {k} = {n}");
                }
            }
        }
    }
}

/// A node whose MXP listener is gone entirely (nothing bound on the port,
/// not a refusal): `auto` gives MXP `--mxp-timeout` and then connects over
/// QUIC, and says which carrier it used.
#[test]
fn auto_reaches_a_node_over_quic_when_nothing_listens_for_mxp() {
    let node = Node::start(&["--listen", "127.0.0.1:0", "--quic-listen", "127.0.0.1:0"]);
    let quic = node.printed_addr("quic carrier listening on ");
    let closed = {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    let url = format!("mxp://{closed}?quic={}", quic.port());
    let started = Instant::now();
    let out = ping(
        &url,
        &node.key,
        &["-c", "20", "--mxp-timeout", "300ms", "--json"],
    )
    .success();
    let took = started.elapsed();
    let report = json_object(&out);
    assert_eq!(report["carrier"], "quic", "{report:?}");
    assert_eq!(report["fell_back"], true, "{report:?}");
    assert_eq!(report["received"], 20, "{report:?}");
    // It waited out the MXP timeout before falling back (a lower bound:
    // no claim about how fast the machine is).
    assert!(took >= Duration::from_millis(300), "{took:?}");
}

/// The README's first command: a bare `mxp` runs the demo on built-in
/// defaults and prints a summary in which every kind of traffic arrived.
#[test]
fn a_bare_mxp_runs_the_demo_and_everything_reliable_arrives() {
    let out = run(&[]).success();
    let text = &out.stdout;
    let figures = |label: &str| -> Vec<u64> {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} line in:\n{text}"));
        line[line.find(label).unwrap() + label.len()..]
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect()
    };
    assert_eq!(figures("calls answered")[0], 2000, "{text}");
    assert_eq!(
        figures("token-stream chunks received"),
        [20000, 20000],
        "{text}"
    );
    assert_eq!(figures("events received"), [2000, 2000], "{text}");
    // Datagrams are unreliable: the line is there and counts some.
    assert!(figures("heartbeat datagrams echoed")[0] > 0, "{text}");
}

/// `mxp relay` as the command line runs it, between a client and a
/// node: pings (calls, reliable) all come back although the relay drops
/// some of the datagrams it carries, and it reports its counters on Ctrl-C.
#[test]
fn pings_through_mxp_relay_at_five_percent_loss_all_come_back() {
    let node = Node::start(&["--listen", "127.0.0.1:0", "--quic-listen", "off"]);
    let mut cmd = mxp();
    let to = node.addr.to_string();
    cmd.args(["relay", "--listen", "127.0.0.1:0", "--to", &to])
        .args(["--loss", "0.05", "--delay", "1ms", "--jitter", "200us"])
        .args(["--reorder", "0.02", "--duplicate", "0.01", "--seed", "7"]);
    let mut relay = Guarded::spawn(cmd, "mxp relay");
    let lines = read_lines(relay.child.stdout.take().expect("piped stdout"));
    let stderr = drain(relay.child.stderr.take());
    let first = lines
        .recv_timeout(PATIENCE)
        .expect("the relay's first line");
    let listen: SocketAddr = first
        .strip_prefix("relaying ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{first:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{first:?}: {e}"));

    let out = ping(
        &format!("mxp://{listen}"),
        &node.key,
        &["-c", "300", "--carrier", "mxp", "--json"],
    )
    .success();
    let report = json_object(&out);
    assert_eq!(report["sent"], 300, "{report:?}");
    assert_eq!(report["received"], 300, "{report:?}");

    let sent = Command::new("kill")
        .args(["-INT", &relay.pid().to_string()])
        .status()
        .expect("the kill command");
    assert!(sent.success());
    let status = relay.wait(String::new);
    assert!(
        status.success(),
        "{status}: {}",
        stderr.join().unwrap_or_default()
    );
    let counters: Vec<String> = lines.iter().collect();
    let summary = counters
        .iter()
        .find_map(|l| l.strip_prefix("relayed: "))
        .unwrap_or_else(|| panic!("no counters in {counters:#?}"));
    // "... to target: received N, forwarded N, lost N, ..." each way.
    let lost: u64 = summary
        .match_indices("lost ")
        .map(|(i, _)| {
            summary[i + 5..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert!(lost > 0, "the relay lost nothing: {summary}");
}

// ---------------------------------------------------------------------------
// Bad input: one clear line, a non-zero exit, never a hang
// ---------------------------------------------------------------------------

#[test]
fn a_bad_config_value_is_named_and_nothing_starts() {
    let dir = TempDir::new("badconfig");
    let config = dir.path("node.toml");
    fs::write(&config, "[transport]\nidle_timeout = \"30x\"\n").unwrap();
    let out = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--config",
        path_str(&config),
    ]);
    assert_eq!(out.code(), Some(2), "{out:#?}");
    let line = out.one_error_line();
    assert!(line.contains("transport.idle_timeout"), "{line}");
    assert!(line.contains("30x"), "{line}");
    assert!(
        !out.stdout.contains("listening"),
        "the node started: {out:#?}"
    );
}

#[test]
fn an_unknown_config_key_is_refused() {
    let dir = TempDir::new("unknownkey");
    let config = dir.path("node.toml");
    fs::write(&config, "[transport]\nidle_timout = \"30s\"\n").unwrap();
    let out = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--config",
        path_str(&config),
    ]);
    assert_eq!(out.code(), Some(2), "{out:#?}");
    let line = out.one_error_line();
    assert!(line.contains("transport.idle_timout"), "{line}");
    assert!(
        !out.stdout.contains("listening"),
        "the node started: {out:#?}"
    );

    // A missing config file is bad input too.
    let out = run(&["serve", "--config", path_str(&dir.path("absent.toml"))]);
    assert_eq!(out.code(), Some(2), "{out:#?}");
    assert!(out.one_error_line().contains("absent.toml"), "{out:#?}");
}

#[test]
fn a_missing_key_file_or_busy_address_stops_serve_before_it_starts() {
    let dir = TempDir::new("nokey");
    let out = run(&["serve", "--key", path_str(&dir.path("node.key"))]);
    assert_eq!(out.code(), Some(2), "{out:#?}");
    assert!(out.one_error_line().contains("node.key"), "{out:#?}");
    assert!(!out.stdout.contains("listening"), "{out:#?}");

    let busy = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = run(&["serve", "--listen", &addr]);
    assert_ne!(out.code(), Some(0), "{out:#?}");
    assert!(out.one_error_line().contains(&addr), "{out:#?}");
    assert!(!out.stdout.contains("listening"), "{out:#?}");
}

#[test]
fn a_wrong_server_key_is_a_clear_error() {
    let node = Node::start(&["--listen", "127.0.0.1:0"]);
    let url = node.url();
    let wrong = Keypair::generate().public().to_string();
    assert_ne!(wrong, node.key);
    for command in [
        vec!["ping", &url, "--server-key", &wrong, "-c", "3"],
        vec!["call", &url, "--server-key", &wrong, "--data", "x"],
    ] {
        let out = run(&command);
        assert_ne!(out.code(), Some(0), "{out:#?}");
        let line = out.one_error_line();
        assert!(line.contains("server public key"), "{line}");
        assert!(line.contains("--server-key"), "{line}");
    }
    // The node is unharmed.
    node.ping(&["-c", "3"]).success();
}

#[test]
fn an_unreachable_address_is_a_clear_error_not_a_hang() {
    // Bound, so nothing sends back "port unreachable"; never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let url = format!("mxp://{}", silent.local_addr().unwrap());
    let key = Keypair::generate().public().to_string();
    for command in [
        vec![
            "ping",
            &url,
            "--server-key",
            &key,
            "-c",
            "3",
            "--timeout",
            "1s",
        ],
        vec![
            "call",
            &url,
            "--server-key",
            &key,
            "--data",
            "x",
            "--timeout",
            "1s",
        ],
        vec![
            "bench",
            &url,
            "--server-key",
            &key,
            "--scenario",
            "rr",
            "--duration",
            "300ms",
            "--timeout",
            "1s",
        ],
    ] {
        let out = run(&command);
        assert_ne!(out.code(), Some(0), "{out:#?}");
        let line = out.one_error_line();
        assert!(line.contains("no answer"), "{line}");
        assert!(line.contains(&url), "{line}");
    }
    drop(silent);
}

#[test]
fn a_malformed_server_key_or_address_is_a_usage_error() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let url = format!("mxp://{}", silent.local_addr().unwrap());
    let short = "ab".repeat(31);
    for bad in ["abc", short.as_str(), "", "zz not a key"] {
        let out = run(&["ping", &url, "--server-key", bad, "-c", "1"]);
        assert_eq!(out.code(), Some(2), "{bad:?}: {out:#?}");
        assert!(
            out.one_error_line().contains("--server-key"),
            "{bad:?}: {out:#?}"
        );
    }
    let key = Keypair::generate().public().to_string();
    let out = run(&["call", "mxp://nowhere", "--server-key", &key, "--data", "x"]);
    assert_eq!(out.code(), Some(2), "{out:#?}");
    assert!(out.one_error_line().contains("nowhere"), "{out:#?}");
}

// ---------------------------------------------------------------------------
// Node restarts
// ---------------------------------------------------------------------------

/// Starts `mxp serve` on a port a previous node just left; retries briefly
/// in case the port is not free yet.
fn restart_on(addr: SocketAddr, key_file: &Path) -> Node {
    let listen = addr.to_string();
    let args = ["--listen", listen.as_str(), "--key", path_str(key_file)];
    let deadline = Instant::now() + PATIENCE;
    loop {
        // Probe the port first so a busy port is a retry, not a panic.
        match UdpSocket::bind(addr) {
            Ok(probe) => {
                drop(probe);
                return Node::start(&args);
            }
            Err(e) if Instant::now() > deadline => panic!("port {addr} stays busy: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_restarted_with_its_key_resets_the_client_which_reconnects() {
    let keys = Keys::generate("crash");
    let first = Node::start(&[
        "--listen",
        "127.0.0.1:0",
        "--key",
        path_str(&keys.secret_file()),
    ]);
    let (addr, key) = (first.addr, first.public_key());
    let client = library_client();
    let conn = tokio::time::timeout(PATIENCE, client.connect_to(addr, key))
        .await
        .expect("connect within the hang guard")
        .expect("connected");
    call_ok(&conn, 1, "before the crash").await;

    // kill -9: the node cannot tell anyone.
    first.kill();
    let second = restart_on(addr, &keys.secret_file());
    assert_eq!(second.key, keys.public);

    // The next call reaches the new node, which does not know the
    // connection and proves with a stateless reset that it is gone.
    let result = tokio::time::timeout(PATIENCE, conn.call(&call_message(2, "after the crash")))
        .await
        .expect("the call fails within the hang guard instead of hanging");
    let error = result.expect_err("a call on a connection the node lost cannot succeed");
    assert_eq!(
        connection_error(&error),
        Some(&ConnectionError::Reset),
        "expected the connection reset, got {error:?}"
    );
    assert_eq!(
        tokio::time::timeout(PATIENCE, conn.closed()).await.unwrap(),
        ConnectionError::Reset
    );
    assert!(client.stats().stateless_resets_received >= 1);

    // A fresh connection to the restarted node works.
    let conn = tokio::time::timeout(PATIENCE, client.connect_to(addr, key))
        .await
        .expect("reconnect within the hang guard")
        .expect("reconnected");
    for id in 3..13 {
        call_ok(&conn, id, "after reconnecting").await;
    }
    conn.close(0, b"done");
    drop(conn);

    let stopped = second.terminate();
    assert!(stopped.status.success(), "{stopped:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_by_sigterm_closes_its_connections_with_a_reason() {
    let node = Node::start(&["--listen", "127.0.0.1:0"]);
    let client = library_client();
    let conn = tokio::time::timeout(PATIENCE, client.connect_to(node.addr, node.public_key()))
        .await
        .expect("connect within the hang guard")
        .expect("connected");
    call_ok(&conn, 1, "hello").await;

    let closed = tokio::spawn({
        let conn = conn.clone();
        async move { conn.closed().await }
    });
    let stopped = tokio::task::spawn_blocking(move || node.terminate())
        .await
        .unwrap();
    assert!(stopped.status.success(), "{stopped:#?}");
    assert!(
        stopped.stdout.contains("served 1 connections, 1 calls"),
        "{stopped:#?}"
    );

    let reason = tokio::time::timeout(PATIENCE, closed)
        .await
        .expect("the client hears the close")
        .unwrap();
    match &reason {
        ConnectionError::ApplicationClosed { code: 0, reason } => {
            assert!(!reason.is_empty(), "the node gives a reason");
            let text = String::from_utf8_lossy(reason);
            assert!(text.contains("shutting down"), "{text}");
        }
        other => panic!("expected the node's application close, got {other:?}"),
    }
    let error = conn.call(&call_message(2, "too late")).await.unwrap_err();
    assert_eq!(connection_error(&error), Some(&reason), "{error:?}");
}

// ---------------------------------------------------------------------------
// Garbage
// ---------------------------------------------------------------------------

const GARBAGE: u64 = 100_000;

/// Clears a flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_sprayed_at_a_node_is_counted_while_pings_succeed() {
    let node = Node::start(&["--listen", "127.0.0.1:0"]);
    let client = library_client();
    let conn = tokio::time::timeout(PATIENCE, client.connect_to(node.addr, node.public_key()))
        .await
        .expect("connect within the hang guard")
        .expect("connected");
    call_ok(&conn, 0, "before").await;

    let spraying = Arc::new(AtomicBool::new(true));
    // Stops the pingers however this test ends.
    let _stop = StopOnDrop(spraying.clone());

    // A library client pinging on one connection from before the spray
    // starts until after it ends.
    let pinger = tokio::spawn({
        let (conn, spraying) = (conn.clone(), spraying.clone());
        async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            let mut id = 1;
            while spraying.load(Ordering::Relaxed) {
                let payload = Bytes::from(format!("ping {id}"));
                let request = Message::new(MessageType::Call, payload.clone()).with_message_id(id);
                match tokio::time::timeout(PATIENCE, conn.call(&request)).await {
                    Ok(Ok(reply)) if reply.payload == payload && reply.message_id == id => ok += 1,
                    other => failed.push(format!("ping {id}: {other:?}")),
                }
                id += 1;
            }
            (ok, failed)
        }
    });

    // `mxp ping` processes, each with its own handshake, meanwhile.
    let cli_pings = thread::spawn({
        let (url, key, spraying) = (node.url(), node.key.clone(), spraying.clone());
        move || {
            let mut runs = 0;
            loop {
                let out = ping(&url, &key, &["-c", "200"]);
                assert!(out.status.success(), "mxp ping during the spray: {out:#?}");
                let first = out.stdout.lines().next().unwrap_or_default();
                assert_eq!(number_before(first, "replies,"), Some(200), "{out:#?}");
                runs += 1;
                if !spraying.load(Ordering::Relaxed) {
                    return runs;
                }
            }
        }
    });

    // Random lengths, random bytes, from a plain socket.
    let seed: u64 = rand::rng().random();
    let sprayer = thread::spawn({
        let target = node.addr;
        move || {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.connect(target).unwrap();
            let mut buf = [0u8; 1400];
            let mut errors = Vec::new();
            for _ in 0..GARBAGE {
                let len = rng.random_range(1..=buf.len());
                rng.fill_bytes(&mut buf[..len]);
                if let Err(e) = socket.send(&buf[..len]) {
                    // ECONNREFUSED here would mean the node's port closed.
                    errors.push(e.to_string());
                }
            }
            errors
        }
    });
    let send_errors = tokio::task::spawn_blocking(move || sprayer.join().unwrap())
        .await
        .unwrap();
    spraying.store(false, Ordering::Relaxed);
    assert!(
        send_errors.is_empty(),
        "seed {seed}: sending garbage failed {} times (did the node die?): {:?}",
        send_errors.len(),
        &send_errors[..send_errors.len().min(5)]
    );

    let (ok, failed) = pinger.await.unwrap();
    assert!(failed.is_empty(), "seed {seed}: failed pings: {failed:#?}");
    assert!(ok > 0);
    let cli_runs = tokio::task::spawn_blocking(move || cli_pings.join())
        .await
        .unwrap()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    assert!(cli_runs >= 1);

    // Still serving, on the old connection and a new one.
    call_ok(&conn, u64::MAX, "after").await;
    let out = node.ping(&["-c", "100", "--json"]).success();
    assert_eq!(json_object(&out)["received"], 100, "{out:#?}");
    conn.close(0, b"done");
    drop(conn);

    // The node counted the garbage.
    let stopped = tokio::task::spawn_blocking(move || node.terminate())
        .await
        .unwrap();
    assert!(stopped.status.success(), "{stopped:#?}");
    let line = stopped
        .stdout
        .lines()
        .find(|l| l.contains("refused"))
        .unwrap_or_else(|| panic!("no counters printed: {stopped:#?}"));
    let refused = number_before(line, "datagrams").expect("refused count");
    assert!(refused > 0, "seed {seed}: no garbage counted: {line}");
    eprintln!("seed {seed}: {ok} library pings, {cli_runs} mxp ping runs; node: {line}");
}

// ---------------------------------------------------------------------------
// The carrier switch: QUIC beside MXP, the admin endpoint, config reload
// ---------------------------------------------------------------------------

/// `mxp admin ADDR ARGS...`, with no token from the environment.
fn admin(addr: &str, args: &[&str]) -> Outcome {
    let mut cmd = mxp();
    cmd.arg("admin")
        .arg(addr)
        .args(args)
        .env_remove("MXP_ADMIN_TOKEN");
    run_command(cmd, format!("mxp admin {addr} {}", args.join(" ")))
}

/// `mxp admin ADDR status`, parsed.
fn admin_status(addr: &str) -> serde_json::Map<String, Value> {
    json_object(&admin(addr, &["status"]).success())
}

#[test]
fn serve_prints_every_address_and_the_admin_command_flips_the_carrier() {
    let node = Node::start(&[
        "--listen",
        "127.0.0.1:0",
        "--quic-listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    let quic = node.printed_addr("quic carrier listening on ");
    assert_eq!(quic.ip(), node.addr.ip());
    assert_ne!(quic.port(), 0);
    let admin_addr = node.admin_addr();
    let tries = node.lines_until("try: mxp admin");
    let plain = format!(
        "try: mxp ping mxp://{} --server-key {}",
        node.addr, node.key
    );
    assert!(tries.contains(&plain), "{tries:#?}");
    if Some(quic.port()) != node.addr.port().checked_add(1) {
        let with_quic = format!(
            "try: mxp ping 'mxp://{}?quic={}' --server-key {}",
            node.addr,
            quic.port(),
            node.key
        );
        assert!(tries.contains(&with_quic), "{tries:#?}");
    }
    assert!(
        tries.contains(&format!("try: mxp admin {admin_addr} status")),
        "{tries:#?}"
    );

    let status = admin_status(&admin_addr);
    assert_eq!(
        status["accepting"],
        serde_json::json!({"mxp": true, "quic": true})
    );
    assert_eq!(status["draining"], serde_json::json!([]));
    assert!(status["connections"]["mxp"].is_u64(), "{status:?}");
    assert!(status["connections"]["quic"].is_u64(), "{status:?}");

    let switched = json_object(&admin(&admin_addr, &["carrier", "quic"]).success());
    assert_eq!(switched["previous"], "both");
    let status = admin_status(&admin_addr);
    assert_eq!(
        status["accepting"],
        serde_json::json!({"mxp": false, "quic": true})
    );
    assert_eq!(status["draining"][0]["carrier"], "mxp", "{status:?}");

    let drained = json_object(&admin(&admin_addr, &["drain", "--timeout", "30s"]).success());
    assert_eq!(drained["drained"], serde_json::json!(["mxp"]));
    assert_eq!(drained["timeout_s"], 30.0);

    // Bad input is refused before anything is sent, with exit code 2...
    for args in [&["carrier", "tcp"][..], &["drain", "--timeout", "soon"]] {
        let out = admin(&admin_addr, args);
        assert_eq!(out.code(), Some(2), "{out:#?}");
        assert!(!out.stderr.contains("panicked"), "{out:#?}");
    }
    let out = admin(&admin_addr, &["drain", "--timeout", "soon"]);
    assert!(out.one_error_line().contains("--timeout"), "{out:#?}");

    let back = json_object(&admin(&admin_addr, &["carrier", "both"]).success());
    assert_eq!(
        back["accepting"],
        serde_json::json!({"mxp": true, "quic": true})
    );
    assert_eq!(back["draining"], serde_json::json!([]));

    let stopped = node.terminate();
    assert!(stopped.status.success(), "{stopped:#?}");
}

#[test]
fn admin_errors_are_one_line_with_the_right_exit_code() {
    let node = Node::start(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--admin-token",
        "s3cret",
    ]);
    let admin_addr = node.admin_addr();
    // The node refuses (HTTP 401): exit 2 with its reason.
    let out = admin(&admin_addr, &["status"]);
    assert_eq!(out.code(), Some(2), "{out:#?}");
    let line = out.one_error_line();
    assert!(
        line.contains("401") && line.contains("bearer token"),
        "{line}"
    );
    let out = admin(&admin_addr, &["carrier", "quic", "--token", "guess"]);
    assert_eq!(out.code(), Some(2), "{out:#?}");
    assert!(
        out.one_error_line().contains("wrong bearer token"),
        "{out:#?}"
    );

    // The right token, by flag or from the environment.
    let status = json_object(&admin(&admin_addr, &["status", "--token", "s3cret"]).success());
    assert_eq!(status["accepting"]["mxp"], true);
    let mut cmd = mxp();
    cmd.args(["admin", &admin_addr, "carrier", "mxp"])
        .env("MXP_ADMIN_TOKEN", "s3cret");
    let switched = json_object(&run_command(cmd, "mxp admin (token from env)".into()).success());
    assert_eq!(
        switched["accepting"],
        serde_json::json!({"mxp": true, "quic": false})
    );

    // Nobody listening: exit 1, one line.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = free.local_addr().unwrap().to_string();
    drop(free);
    let out = admin(&nobody, &["status"]);
    assert_eq!(out.code(), Some(1), "{out:#?}");
    assert!(out.one_error_line().contains("cannot connect"), "{out:#?}");

    let out = admin("no-port-here", &["status"]);
    assert_eq!(out.code(), Some(2), "{out:#?}");
    assert!(out.one_error_line().contains("no-port-here"), "{out:#?}");
}

#[test]
fn bad_values_for_the_switch_keys_are_named_and_nothing_starts() {
    let dir = TempDir::new("switchkeys");
    let config = dir.path("node.toml");
    let cases = [
        ("carriers = \"tcp\"", "node.carriers"),
        ("quic_listen = \"9001\"", "node.quic_listen"),
        ("admin = \"everywhere\"", "node.admin"),
        ("drain_timeout = \"soon\"", "node.drain_timeout"),
        ("admin_token = \"\"", "node.admin_token"),
        ("carrier = \"quic\"", "node.carrier"),
        // Off loopback without a token.
        ("admin = \"0.0.0.0:0\"", "admin_token"),
    ];
    for (line, names) in cases {
        fs::write(&config, format!("[node]\n{line}\n")).unwrap();
        let out = run(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            path_str(&config),
        ]);
        assert_eq!(out.code(), Some(2), "{line}: {out:#?}");
        assert!(out.one_error_line().contains(names), "{line}: {out:#?}");
        assert!(!out.stdout.contains("listening"), "{line}: {out:#?}");
    }
    let out = run(&["serve", "--listen", "127.0.0.1:0", "--carriers", "tcp"]);
    assert_eq!(out.code(), Some(2), "{out:#?}");
    let line = out.one_error_line();
    assert!(
        line.contains("'tcp'") && line.contains("--carriers"),
        "{out:#?}"
    );
    let out = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--quic-listen",
        "off",
        "--carriers",
        "quic",
    ]);
    assert_eq!(out.code(), Some(2), "{out:#?}");
    assert!(
        out.one_error_line().contains("QUIC carrier off"),
        "{out:#?}"
    );
}

/// Polls `file` until it contains `text`, within the hang guard.
fn wait_for_text(file: &Path, text: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let content = fs::read_to_string(file).unwrap_or_default();
        if content.contains(text) {
            return content;
        }
        assert!(
            Instant::now() < deadline,
            "{} never said {text:?}:\n{content}",
            file.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_reloads_the_carrier_switch_from_the_config_file() {
    let dir = TempDir::new("reload");
    let config = dir.path("node.toml");
    let log = dir.path("node.log");
    // Whole files only: the node must never read a half-written one.
    let write = |text: String| {
        let tmp = dir.path("node.toml.tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &config).unwrap();
    };
    let node_file = |carriers: &str| {
        format!(
            "[node]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ncarriers = \"{carriers}\"\n"
        )
    };
    write(node_file("both"));
    // The node's log goes to a file the test can watch while it runs
    // (`exec` keeps the pid, so signals reach the node itself).
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "exec '{}' serve --config '{}' 2>'{}'",
        env!("CARGO_BIN_EXE_mxp"),
        path_str(&config),
        path_str(&log)
    ));
    let node = Node::start_command(cmd, "mxp serve --config (reload)".into());
    let admin_addr = node.admin_addr();
    assert_eq!(admin_status(&admin_addr)["accepting"]["mxp"], true);

    // A broken file is logged and ignored; the node keeps running.
    write("[node]\ncarriers = \"qiuc\"\n".to_owned());
    node.signal("HUP");
    let text = wait_for_text(&log, "config reload failed");
    assert!(
        text.contains("node.carriers") && text.contains("qiuc"),
        "{text}"
    );
    assert_eq!(
        admin_status(&admin_addr)["accepting"],
        serde_json::json!({"mxp": true, "quic": true})
    );

    write(node_file("quic"));
    node.signal("HUP");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = admin_status(&admin_addr);
        if status["accepting"] == serde_json::json!({"mxp": false, "quic": true}) {
            assert_eq!(status["draining"][0]["carrier"], "mxp", "{status:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload never switched to quic: {status:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    wait_for_text(&log, "node.carriers both -> quic");
    let stopped = node.terminate();
    assert!(stopped.status.success(), "{stopped:#?}");
}

/// The checklist's "`debug` for the handshake when investigating
/// anomalies", on a running node: `mxp admin ADDR log FILTER` puts a filter
/// in force at once, a bad one is refused with its reason and changes
/// nothing, and a config reload applies a changed `node.log` — no restart,
/// so no connection is lost to turning logging up.
#[test]
fn the_log_filter_changes_on_a_running_node() {
    let dir = TempDir::new("log-filter");
    let config = dir.path("node.toml");
    let log = dir.path("node.log");
    let node_file =
        |log: &str| format!("[node]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{log}");
    fs::write(&config, node_file("")).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "exec '{}' serve --config '{}' 2>'{}'",
            env!("CARGO_BIN_EXE_mxp"),
            path_str(&config),
            path_str(&log)
        ))
        .env_remove("RUST_LOG");
    let node = Node::start_command(cmd, "mxp serve --config (log filter)".into());
    let admin_addr = node.admin_addr();
    let filter_of = |out: Outcome| json_object(&out.success())["filter"].clone();
    assert_eq!(filter_of(admin(&admin_addr, &["log"])), "info");

    node.ping(&["--count", "1"]).success();
    wait_for_text(&log, "connected");
    assert!(
        !fs::read_to_string(&log)
            .unwrap()
            .contains("handshake accepted"),
        "no handshake debug at info"
    );

    let set = admin(&admin_addr, &["log", "info,mxp_proto::handshake=debug"]).success();
    let answer = json_object(&set);
    assert_eq!(answer["filter"], "info,mxp_proto::handshake=debug");
    assert_eq!(answer["previous"], "info");
    node.ping(&["--count", "1"]).success();
    wait_for_text(&log, "handshake accepted");

    let refused = admin(&admin_addr, &["log", "info,mxp_proto=bogus"]);
    assert_eq!(refused.code(), Some(2), "{refused:#?}");
    assert!(refused.one_error_line().contains("bogus"), "{refused:#?}");
    assert_eq!(
        filter_of(admin(&admin_addr, &["log"])),
        "info,mxp_proto::handshake=debug"
    );

    fs::write(&config, node_file("log = \"info,mxp=debug\"\n")).unwrap();
    node.signal("HUP");
    wait_for_text(
        &log,
        "node.log info,mxp_proto::handshake=debug -> info,mxp=debug",
    );
    assert_eq!(filter_of(admin(&admin_addr, &["log"])), "info,mxp=debug");
    let stopped = node.terminate();
    assert!(stopped.status.success(), "{stopped:#?}");
}
