//! The rollout's proof: clients keep calling (thousands per second) and
//! keep an open token stream while the node flips MXP → QUIC → MXP. Every
//! call gets exactly one response, no stream byte is lost or duplicated,
//! and after each flip every new call runs on the new carrier. The time
//! from each flip to 100% of new calls on the new carrier is reported.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mxp::echo::{self, EchoStats};
use mxp::proto::message::{Message, MessageType};
use mxp::proto::{Band, EndpointConfig, Keypair};
use mxp::{Carrier, CarrierMode, Carriers, Connection, Endpoint, Options};

/// A guard against hangs, far above anything expected: not a performance
/// bound.
const PATIENCE: Duration = Duration::from_secs(60);
const CALLERS: u64 = 4;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// One call: when it started, on which carrier, whether it was answered.
#[derive(Debug, Clone, Copy)]
struct Record {
    start: Instant,
    carrier: Carrier,
}

async fn one_call(conn: &Connection, id: u64) -> Record {
    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi(Band::Critical).await.expect("open");
    let carrier = send.carrier();
    let request = Message::new(MessageType::Call, id.to_be_bytes().to_vec()).with_message_id(id);
    send.write_message(&request).await.expect("write");
    send.finish().expect("finish");
    let reply = recv
        .read_message()
        .await
        .expect("read")
        .expect("a response");
    assert_eq!(reply.message_id, id, "call {id} got another call's answer");
    assert_eq!(
        recv.read_message().await.expect("end"),
        None,
        "call {id} answered twice"
    );
    Record { start, carrier }
}

/// From the flip, when did calls start on the new carrier for good (until
/// `until`, the next flip)?
fn switch_time(records: &[Record], flip: Instant, until: Instant, to: Carrier) -> Duration {
    let mut after: Vec<&Record> = records
        .iter()
        .filter(|r| r.start >= flip && r.start < until)
        .collect();
    after.sort_by_key(|r| r.start);
    let last_old = after.iter().rposition(|r| r.carrier != to);
    let first_new_for_good = match last_old {
        Some(i) => after
            .get(i + 1)
            .expect("calls continued on the new carrier"),
        None => after.first().expect("calls after the flip"),
    };
    first_new_for_good.start - flip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_a_token_stream_survive_flipping_mxp_to_quic_and_back() {
    let options = {
        let mut options = Options::new(EndpointConfig::server(Keypair::generate()));
        options.quic_listen = Some(any_port());
        options.drain_timeout = Duration::from_secs(30);
        options
    };
    let node = Endpoint::with_options(any_port(), options).unwrap();
    let stats = Arc::new(EchoStats::default());
    tokio::spawn(echo::serve(node.clone(), stats.clone()));
    let client = Endpoint::with_options(any_port(), {
        let mut options = Options::new(EndpointConfig::client(Keypair::generate()));
        options.carrier_mode = CarrierMode::Auto;
        options
    })
    .unwrap();
    let url = format!(
        "mxp://{}?quic={}",
        node.local_addr(),
        node.quic_addr().unwrap().port()
    );
    let conn = client.connect(&url, node.public_key()).await.unwrap();
    assert_eq!(conn.carrier(), Carrier::Mxp);

    // The token stream: opened on MXP before any flip, written throughout.
    let (mut tokens_out, mut tokens_in) = conn.open_bi(Band::Streaming).await.unwrap();
    assert_eq!(tokens_out.carrier(), Carrier::Mxp);
    let running = Arc::new(AtomicBool::new(true));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (running, written) = (running.clone(), written.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while running.load(Ordering::Relaxed) {
                let token = format!("token-{n:010};");
                tokens_out
                    .write_all(token.as_bytes())
                    .await
                    .expect("token stream write");
                n += 1;
                written.store(n, Ordering::Relaxed);
                if n % 64 == 0 {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
            tokens_out.finish().expect("finish tokens");
            n
        })
    };
    let reader = tokio::spawn(async move {
        tokens_in
            .read_to_end(64 << 20)
            .await
            .expect("token stream read")
    });

    // Callers: sequential calls each, all ids unique.
    let records = Arc::new(Mutex::new(Vec::new()));
    let next_id = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (conn, running, records, next_id) = (
                conn.clone(),
                running.clone(),
                records.clone(),
                next_id.clone(),
            );
            tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let record = one_call(&conn, id).await;
                    records.lock().unwrap().push(record);
                }
            })
        })
        .collect();

    let wait_for = |carrier: Carrier| {
        let records = records.clone();
        async move {
            let start = Instant::now();
            loop {
                let n = records
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .take(200)
                    .filter(|r| r.carrier == carrier)
                    .count();
                if n == 200 {
                    return;
                }
                assert!(
                    start.elapsed() < PATIENCE,
                    "calls never settled on {carrier}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let to_quic = Instant::now();
    node.set_carriers(Carriers::QUIC);
    wait_for(Carrier::Quic).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let to_mxp = Instant::now();
    node.set_carriers(Carriers::MXP);
    wait_for(Carrier::Mxp).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    running.store(false, Ordering::Relaxed);
    for c in callers {
        c.await.expect("a caller failed");
    }
    let tokens = writer.await.expect("token writer failed");
    let echoed = tokio::time::timeout(PATIENCE, reader)
        .await
        .unwrap()
        .unwrap();

    // Exactly the tokens written, in order, once each.
    let expected: String = (0..tokens).map(|n| format!("token-{n:010};")).collect();
    assert!(
        echoed == expected.as_bytes(),
        "the token stream lost or duplicated bytes"
    );

    let records = records.lock().unwrap().clone();
    let calls = records.len() as u64;
    assert_eq!(
        stats.calls.load(Ordering::Relaxed),
        calls,
        "the node answered a different number of calls"
    );
    let end = Instant::now();
    let quic_switch = switch_time(&records, to_quic, to_mxp, Carrier::Quic);
    let mxp_switch = switch_time(&records, to_mxp, end, Carrier::Mxp);
    // Calls between the flips that started after the switch ran on QUIC.
    assert!(records.iter().any(|r| r.carrier == Carrier::Quic));
    let elapsed = records.iter().map(|r| r.start).max().unwrap()
        - records.iter().map(|r| r.start).min().unwrap();
    // Past the harness's capture, so CI's log carries the report.
    let _ = writeln!(
        std::io::stderr(),
        "flip report: {calls} calls in {elapsed:.2?} ({:.0}/s), {tokens} tokens; MXP→QUIC: all new calls on QUIC {quic_switch:.2?} after the flip; QUIC→MXP: {mxp_switch:.2?}",
        calls as f64 / elapsed.as_secs_f64()
    );
    assert!(quic_switch < PATIENCE && mxp_switch < PATIENCE);
}
