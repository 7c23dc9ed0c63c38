//! The runtime over real loopback UDP: handshakes, calls, streams,
//! datagrams, restarts, wrong keys, garbage and closing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use mxp::echo::{self, EchoStats};
use mxp::proto::message::{Message, MessageType};
use mxp::proto::{Band, ConnectionError, EndpointConfig, Keypair};
use mxp::{ConnectError, Endpoint};
use tokio::time::timeout;

/// Upper bound for anything to happen: a guard against hangs, not a
/// performance expectation.
const PATIENCE: Duration = Duration::from_secs(30);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A node serving the echo application, and its stats.
fn node() -> (Endpoint, Arc<EchoStats>) {
    let node = Endpoint::bind(any_port(), EndpointConfig::server(Keypair::generate())).unwrap();
    let stats = Arc::new(EchoStats::default());
    tokio::spawn(echo::serve(node.clone(), stats.clone()));
    (node, stats)
}

fn client() -> Endpoint {
    Endpoint::bind(any_port(), EndpointConfig::client(Keypair::generate())).unwrap()
}

fn call(id: u64, payload: &str) -> Message {
    Message::new(MessageType::Call, payload.to_owned())
        .with_message_id(id)
        .with_trace_id(id * 7)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_then_calls_are_answered() {
    let (node, stats) = node();
    let client = client();
    let url = format!("mxp://{}", node.local_addr());
    let conn = timeout(PATIENCE, client.connect(&url, node.public_key()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.peer_key(), node.public_key());
    for i in 0..100 {
        let reply = timeout(PATIENCE, conn.call(&call(i, "hello")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.kind, MessageType::Response);
        assert_eq!((reply.message_id, reply.trace_id), (i, i * 7));
        assert_eq!(&reply.payload[..], b"hello");
    }
    assert_eq!(stats.calls.load(Ordering::Relaxed), 100);
    assert_eq!(node.stats().handshakes_accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams_echo_their_bytes() {
    let (node, _) = node();
    let client = client();
    let conn = client
        .connect_to(node.local_addr(), node.public_key())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..1000u32 {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let (mut send, mut recv) = conn.open_bi(Band::Streaming).await?;
            let data: Vec<u8> = (0..2000u32).map(|k| (k * 31 + i) as u8).collect();
            send.write_all(&data).await?;
            send.finish()?;
            let back = recv.read_to_end(1 << 20).await?;
            Ok::<bool, Box<dyn std::error::Error + Send + Sync>>(back == data)
        }));
    }
    for t in tasks {
        assert!(
            timeout(PATIENCE, t).await.unwrap().unwrap().unwrap(),
            "a stream came back different"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_are_echoed() {
    let (node, stats) = node();
    let client = client();
    let conn = client
        .connect_to(node.local_addr(), node.public_key())
        .await
        .unwrap();
    let mut echoed = 0;
    for i in 0..200u32 {
        conn.send_datagram(Bytes::copy_from_slice(&i.to_be_bytes()), Band::Control)
            .unwrap();
        // Loopback rarely drops; wait for each echo (bounded) to stay under
        // the send buffer.
        if let Ok(Ok(d)) = timeout(Duration::from_secs(1), conn.read_datagram()).await {
            assert_eq!(d.len(), 4);
            echoed += 1;
        }
    }
    assert!(echoed > 150, "only {echoed} datagrams came back");
    assert!(stats.datagrams.load(Ordering::Relaxed) >= echoed);
    let too_big = Bytes::from(vec![0; conn.max_datagram_size() + 1]);
    assert!(conn.send_datagram(too_big, Band::Control).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_server_key_fails_clearly_and_quickly() {
    let (node, _) = node();
    let client = client();
    let wrong = Keypair::generate().public();
    let result = timeout(PATIENCE, client.connect_to(node.local_addr(), wrong))
        .await
        .unwrap();
    match result {
        Err(ConnectError::Handshake(ConnectionError::ServerKeyMismatch)) => {}
        other => panic!("expected a server key mismatch, got {other:?}"),
    }
    // Found by mac1, before any Diffie-Hellman work.
    let stats = node.stats();
    assert!(stats.mac_failures >= 1);
    assert_eq!(stats.handshake_jobs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_close_reaches_the_peer_with_code_and_reason() {
    let (node, _) = node();
    let server = Endpoint::bind(any_port(), EndpointConfig::server(Keypair::generate())).unwrap();
    drop(node);
    let client = client();
    let (addr, key) = (server.local_addr(), server.public_key());
    let accept = tokio::spawn(async move { server.accept().await });
    let conn = client.connect_to(addr, key).await.unwrap();
    let server_side = timeout(PATIENCE, accept).await.unwrap().unwrap().unwrap();
    conn.close(7, b"bye");
    let reason = timeout(PATIENCE, server_side.closed()).await.unwrap();
    assert_eq!(
        reason,
        ConnectionError::ApplicationClosed {
            code: 7,
            reason: Bytes::from_static(b"bye")
        }
    );
    timeout(PATIENCE, client.wait_idle()).await.unwrap();
}

/// A node restarted gracefully (closing its connections) on the same port
/// with the same key: the client learns why its connection ended and a new
/// connection works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sees_a_node_restart_and_reconnects() {
    let keys = Keypair::generate();
    let first = Endpoint::bind(any_port(), EndpointConfig::server(keys.clone())).unwrap();
    let addr = first.local_addr();
    let stats = Arc::new(EchoStats::default());
    let serving = tokio::spawn(echo::serve(first.clone(), stats.clone()));
    let client = client();
    let conn = client.connect_to(addr, keys.public()).await.unwrap();
    conn.call(&call(1, "before")).await.unwrap();

    first.close(0, b"restarting");
    timeout(PATIENCE, first.wait_idle()).await.unwrap();
    serving.abort();
    drop(first);
    let reason = timeout(PATIENCE, conn.closed()).await.unwrap();
    assert_eq!(
        reason,
        ConnectionError::ApplicationClosed {
            code: 0,
            reason: Bytes::from_static(b"restarting")
        }
    );
    assert!(conn.call(&call(2, "lost")).await.is_err());

    // The same node comes back on the same address.
    let second = bind_retrying(addr, keys).await;
    tokio::spawn(echo::serve(second.clone(), stats));
    let conn = timeout(PATIENCE, client.connect_to(addr, second.public_key()))
        .await
        .unwrap()
        .unwrap();
    let reply = conn.call(&call(3, "after")).await.unwrap();
    assert_eq!(&reply.payload[..], b"after");
}

/// The port of a closed endpoint is free once its driver has stopped.
async fn bind_retrying(addr: SocketAddr, keys: Keypair) -> Endpoint {
    for _ in 0..200 {
        if let Ok(e) = Endpoint::bind(addr, EndpointConfig::server(keys.clone())) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} never became free");
}

/// Garbage sprayed at a node is counted and refused while a client keeps
/// calling without a single failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_sprayed_with_garbage_keeps_serving_and_counts_it() {
    let (node, stats) = node();
    let client = client();
    let conn = client
        .connect_to(node.local_addr(), node.public_key())
        .await
        .unwrap();
    let target = node.local_addr();
    let spray = tokio::task::spawn_blocking(move || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut buf = [0u8; 1400];
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 1 + (x % 1400) as usize;
            for (i, b) in buf[..len].iter_mut().enumerate() {
                *b = (x >> (i % 56)) as u8 ^ i as u8;
            }
            let _ = socket.send_to(&buf[..len], target);
        }
    });
    let mut calls = 0;
    while !spray.is_finished() || calls < 200 {
        let reply = timeout(PATIENCE, conn.call(&call(calls, "still there?")))
            .await
            .unwrap();
        assert!(
            reply.is_ok(),
            "call {calls} failed during the spray: {reply:?}"
        );
        calls += 1;
    }
    spray.await.unwrap();
    let e = node.stats();
    let refused = e.malformed + e.unknown_connection + e.initials_too_small + e.version_mismatches;
    assert!(refused > 1000, "garbage not counted: {e:?}");
    assert_eq!(e.handshakes_accepted, 1);
    assert!(stats.calls.load(Ordering::Relaxed) >= 200);
}

/// Data crosses the impairment relay at 5% loss each way with nothing lost:
/// every byte of a stream and every call arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_loss_through_the_relay_loses_nothing() {
    use mxp::relay::{Relay, RelayConfig};
    let (node, stats) = node();
    let relay = Relay::bind(RelayConfig {
        loss: 0.05,
        seed: 5,
        ..RelayConfig::new(any_port(), node.local_addr())
    })
    .await
    .unwrap();
    let client = client();
    let conn = timeout(
        PATIENCE,
        client.connect_to(relay.local_addr(), node.public_key()),
    )
    .await
    .unwrap()
    .unwrap();
    let (mut send, mut recv) = conn.open_bi(Band::Streaming).await.unwrap();
    let data: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            send.write_all(&data).await.unwrap();
            send.finish().unwrap();
        })
    };
    let echoed = timeout(PATIENCE, recv.read_to_end(4_000_000))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert!(echoed == data, "the echoed stream differs");
    for i in 0..100 {
        let reply = timeout(PATIENCE, conn.call(&call(i, "through the relay")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.message_id, i);
    }
    let r = relay.stats();
    assert!(
        r.upstream.lost > 0 && r.downstream.lost > 0,
        "the relay should have dropped datagrams: {r}"
    );
    assert!(conn.stats().packets_lost > 0);
    assert_eq!(stats.calls.load(Ordering::Relaxed), 100);
}
