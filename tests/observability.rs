//! The metrics end to end: a node serves real agent traffic that crosses
//! the impairment relay at a known loss rate, and its `/metrics` (scraped
//! over HTTP, as Prometheus does) must move as that traffic demands —
//! connections, streams, scheduler bands, flow control, latency, and loss
//! counters near the rate the relay actually dropped.
//!
//! Every wait is bounded by [`PATIENCE`], a guard against hangs; no test
//! measures speed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mxp::admin::{self, AdminServer};
use mxp::echo::{self, EchoStats};
use mxp::proto::message::{Message, MessageType};
use mxp::proto::{Band, EndpointConfig, Keypair};
use mxp::relay::{Relay, RelayConfig};
use mxp::{Connection, Endpoint};
use tokio::time::timeout;

mod common;
use common::scrape::Scrape;

const PATIENCE: Duration = Duration::from_secs(60);
/// What the relay drops, each way.
const LOSS: f64 = 0.03;
const CALLERS: u64 = 4;
const CALLS_EACH: u64 = 250;
const BULK: usize = 2 << 20;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A series of the MXP carrier, or of one band.
fn mxp(name: &str) -> String {
    format!("{name}{{carrier=\"mxp\"}}")
}

fn band(name: &str, band: &str) -> String {
    format!("{name}{{band=\"{band}\"}}")
}

async fn calls(conn: Connection, caller: u64) {
    for i in 0..CALLS_EACH {
        let id = caller * CALLS_EACH + i;
        let call = Message::new(MessageType::Call, vec![b'c'; 64]).with_message_id(id);
        let answer = timeout(PATIENCE, conn.call(&call))
            .await
            .expect("answer within the hang guard")
            .expect("answered despite the loss");
        assert_eq!(answer.message_id, id);
    }
}

/// A megabyte-scale raw stream, echoed back whole.
async fn bulk(conn: Connection) {
    let (mut send, mut recv) = conn.open_bi(Band::Streaming).await.unwrap();
    let data = vec![0x5a; BULK];
    let writer = async move {
        send.write_all(&data).await.unwrap();
        send.finish().unwrap();
    };
    let reader = async move {
        let mut got = 0;
        while let Some(chunk) = recv.read_chunk(usize::MAX).await.unwrap() {
            got += chunk.len();
        }
        got
    };
    let ((), got) = timeout(PATIENCE, async { tokio::join!(writer, reader) })
        .await
        .expect("bulk echo within the hang guard");
    assert_eq!(got, BULK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_real_traffic_through_a_lossy_relay() {
    let node = Endpoint::bind(any_port(), EndpointConfig::server(Keypair::generate())).unwrap();
    let served = Arc::new(EchoStats::default());
    tokio::spawn(echo::serve(node.clone(), served.clone()));
    let admin = admin::serve(any_port(), node.clone(), None).await.unwrap();
    let relay = Relay::bind(RelayConfig {
        loss: LOSS,
        seed: 7,
        ..RelayConfig::new(any_port(), node.local_addr())
    })
    .await
    .unwrap();
    let before = Scrape::at(admin.local_addr()).await;
    assert_eq!(before.get(&mxp("mxp_connections_active")), 0.0);

    let client = Endpoint::bind(any_port(), EndpointConfig::client(Keypair::generate())).unwrap();
    let conn = timeout(
        PATIENCE,
        client.connect_to(relay.local_addr(), node.public_key()),
    )
    .await
    .expect("connect within the hang guard")
    .expect("connected through the relay");

    // A token stream held open across the mid-traffic scrape.
    let mut tokens = conn.open_uni(Band::Streaming).await.unwrap();
    for i in 0..200u32 {
        let chunk = Message::new(MessageType::StreamChunk, format!("token {i}"));
        tokens.write_message(&chunk).await.unwrap();
    }
    for i in 0..100u32 {
        let event = Message::new(MessageType::Event, format!("event {i}"));
        conn.send_message(&event).await.unwrap();
    }
    for i in 0..200u32 {
        let _ = conn.send_datagram(Bytes::from(i.to_le_bytes().to_vec()), Band::Background);
    }
    let mut work: Vec<_> = (0..CALLERS)
        .map(|c| tokio::spawn(calls(conn.clone(), c)))
        .collect();
    work.push(tokio::spawn(bulk(conn.clone())));
    for w in work {
        w.await.unwrap();
    }

    let during = Scrape::at(admin.local_addr()).await;
    assert_eq!(during.get(&mxp("mxp_connections_active")), 1.0);
    assert!(
        during.get(&mxp("mxp_streams_active")) >= 1.0,
        "the token stream is open"
    );
    tokens.finish().unwrap();
    drop(tokens);

    // Let the last acknowledgements cross, then compare.
    conn.close(0, b"done");
    timeout(PATIENCE, node.wait_idle())
        .await
        .expect("closed within the hang guard");
    let after = Scrape::at(admin.local_addr()).await;
    let relayed = relay.close().await;
    let moved = |series: &str| after.get(series) - before.get(series);

    // Connections and handshakes.
    assert_eq!(after.get(&mxp("mxp_connections_active")), 0.0);
    assert_eq!(moved(&mxp("mxp_connections_total")), 1.0);
    assert_eq!(
        moved(r#"mxp_handshakes_total{carrier="mxp",result="accepted"}"#),
        1.0
    );
    assert_eq!(after.get(&mxp("mxp_streams_active")), 0.0);

    // Calls: every one served is timed at the node.
    let total_calls = (CALLERS * CALLS_EACH) as f64;
    let served_calls = r#"mxp_call_duration_seconds_count{carrier="mxp",side="node"}"#;
    assert_eq!(moved(served_calls), total_calls);
    assert!(moved("mxp_rtt_seconds_count") > 0.0);

    // The scheduler sent responses (Critical) and the bulk echo
    // (Streaming); flow control carried megabytes and moved its windows.
    for b in ["critical", "streaming"] {
        assert!(moved(&band("mxp_scheduler_enqueued_total", b)) > 0.0, "{b}");
        assert!(
            moved(&band("mxp_scheduler_dequeued_frames_total", b)) > 0.0,
            "{b}"
        );
    }
    assert!(moved(&band("mxp_scheduler_dequeued_bytes_total", "streaming")) >= BULK as f64);
    let recv_credit = r#"mxp_flow_credit_consumed_bytes_total{direction="recv"}"#;
    assert!(moved(recv_credit) >= BULK as f64);
    assert!(moved("mxp_flow_window_updates_total") > 0.0);
    assert!(moved(r#"mxp_datagrams_total{event="received"}"#) > 0.0);

    // Loss: the node declares lost about what the relay dropped of its
    // packets. It cannot declare more than were dropped (no reordering
    // here, so no spurious losses); it declares fewer, since a dropped
    // ACK-only packet is never retransmitted or counted.
    let sent = moved(&mxp("mxp_packets_sent_total"));
    let lost = moved(&mxp("mxp_packets_lost_total"));
    let dropped = relayed.downstream.lost as f64;
    assert!(sent > 1000.0, "enough packets to estimate a rate: {sent}");
    let rate = lost / sent;
    println!(
        "node sent {sent} packets, declared {lost} lost ({:.2}%); the relay dropped {dropped} \
         of {} ({:.2}%), injected {:.1}%",
        rate * 100.0,
        relayed.downstream.received,
        dropped / relayed.downstream.received as f64 * 100.0,
        LOSS * 100.0
    );
    assert!(lost <= dropped, "{lost} declared lost, {dropped} dropped");
    assert!(
        rate > LOSS / 3.0 && rate < LOSS * 2.0,
        "loss rate {rate} far from the injected {LOSS}"
    );
    assert!(moved("mxp_frames_retransmitted_total") > 0.0);
    assert_eq!(
        moved(r#"mxp_connection_errors_total{carrier="mxp",kind="timed_out"}"#),
        0.0
    );
    assert_eq!(
        served.calls.load(std::sync::atomic::Ordering::Relaxed) as f64,
        total_calls
    );
}

/// Polls the node's `/metrics` until `series` reaches `value`.
async fn until_served(admin: &AdminServer, series: &str, value: f64) -> Scrape {
    timeout(PATIENCE, async {
        loop {
            let scrape = Scrape::at(admin.local_addr()).await;
            if scrape.get(series) == value {
                return scrape;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{series} never reached {value}"))
}

/// A peer that speaks MXP badly: each bad message ends its own stream
/// with a typed error and is counted by kind; the connection carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_messages_end_their_stream_and_are_counted_by_kind() {
    let node = Endpoint::bind(any_port(), EndpointConfig::server(Keypair::generate())).unwrap();
    tokio::spawn(echo::serve(node.clone(), Arc::new(EchoStats::default())));
    let admin = admin::serve(any_port(), node.clone(), None).await.unwrap();
    let client = Endpoint::bind(any_port(), EndpointConfig::client(Keypair::generate())).unwrap();
    let conn = client
        .connect_to(node.local_addr(), node.public_key())
        .await
        .unwrap();
    let kind = |k: &str| format!("mxp_message_errors_total{{kind=\"{k}\"}}");
    for k in mxp::proto::message::MessageError::KINDS {
        assert_eq!(
            Scrape::at(admin.local_addr()).await.get(&kind(k)),
            0.0,
            "{k}"
        );
    }

    // A good call, then a message whose payload was altered in flight
    // above the transport: the call is answered, the second one refused.
    let good = Message::new(MessageType::Call, "fine").with_message_id(1);
    let mut bad = Message::new(MessageType::Call, "tampered")
        .to_bytes()
        .unwrap()
        .to_vec();
    bad[40] ^= 0x20;
    let (mut send, mut recv) = conn.open_bi(Band::Critical).await.unwrap();
    send.write_message(&good).await.unwrap();
    send.write_all(&bad).await.unwrap();
    // The node may refuse (and stop) the stream before this finish.
    let _ = send.finish();
    let answer = recv
        .read_message()
        .await
        .unwrap()
        .expect("the good call's answer");
    assert_eq!(answer.message_id, 1);
    until_served(&admin, &kind("checksum_mismatch"), 1.0).await;

    // An unknown message type on a one-way stream.
    let mut unknown = Message::new(MessageType::Event, "e")
        .to_bytes()
        .unwrap()
        .to_vec();
    unknown[4] = 0x77;
    let mut lane = conn.open_uni(Band::Background).await.unwrap();
    lane.write_all(&unknown).await.unwrap();
    let _ = lane.finish();
    until_served(&admin, &kind("unknown_type"), 1.0).await;

    // A stream that ends inside a message.
    let whole = Message::new(MessageType::Call, "cut short")
        .to_bytes()
        .unwrap();
    let (mut send, _recv) = conn.open_bi(Band::Critical).await.unwrap();
    send.write_all(&whole[..whole.len() - 3]).await.unwrap();
    send.finish().unwrap();
    let scrape = until_served(&admin, &kind("truncated"), 1.0).await;
    for k in [
        "bad_magic",
        "reserved_nonzero",
        "unknown_flags",
        "payload_too_large",
    ] {
        assert_eq!(scrape.get(&kind(k)), 0.0, "{k}");
    }

    // The connection still serves calls.
    let reply = conn
        .call(&Message::new(MessageType::Call, "still here").with_message_id(2))
        .await
        .unwrap();
    assert_eq!(reply.message_id, 2);
}
