//! The two carriers behind one API: the QUIC fallback carries the same
//! calls, streams, messages and datagrams with the same node identity, and
//! clients fall back to it when a node refuses MXP or MXP does not answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use mxp::echo::{self, EchoStats};
use mxp::proto::message::{Message, MessageType};
use mxp::proto::{Band, ConnectionError, EndpointConfig, Keypair, ServerConfig};
use mxp::{Carrier, CarrierMode, Carriers, ConnectError, Endpoint, Options};
use tokio::time::timeout;

const PATIENCE: Duration = Duration::from_secs(30);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A node on both carriers, serving the echo application.
fn node_with(
    keys: Keypair,
    policy: ServerConfig,
    carriers: Carriers,
) -> (Endpoint, Arc<EchoStats>) {
    let options = {
        let mut options = Options::new({
            let mut endpoint_config = EndpointConfig::server(keys);
            endpoint_config.server = Some(Arc::new(policy));
            endpoint_config
        });
        options.quic_listen = Some(any_port());
        options.carriers = carriers;
        options
    };
    let node = Endpoint::with_options(any_port(), options).unwrap();
    let stats = Arc::new(EchoStats::default());
    tokio::spawn(echo::serve(node.clone(), stats.clone()));
    (node, stats)
}

fn node(carriers: Carriers) -> (Endpoint, Arc<EchoStats>) {
    node_with(Keypair::generate(), ServerConfig::default(), carriers)
}

fn client(mode: CarrierMode) -> Endpoint {
    let options = {
        let mut options = Options::new(EndpointConfig::client(Keypair::generate()));
        options.carrier_mode = mode;
        options.mxp_timeout = Duration::from_millis(300);
        options
    };
    Endpoint::with_options(any_port(), options).unwrap()
}

fn url(node: &Endpoint) -> String {
    format!(
        "mxp://{}?quic={}",
        node.local_addr(),
        node.quic_addr().unwrap().port()
    )
}

fn call(id: u64) -> Message {
    Message::new(MessageType::Call, format!("call {id}")).with_message_id(id)
}

/// A new auto session to `node`, on the carrier it is expected to land on.
async fn auto_session(node: &Endpoint, expected: Carrier) -> mxp::Connection {
    let conn = client(CarrierMode::Auto)
        .connect(&url(node), node.public_key())
        .await
        .unwrap();
    assert_eq!(conn.carrier(), expected);
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quic_carrier_carries_calls_streams_messages_and_datagrams() {
    let (node, stats) = node(Carriers::BOTH);
    let conn = timeout(
        PATIENCE,
        client(CarrierMode::Quic).connect(&url(&node), node.public_key()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(conn.carrier(), Carrier::Quic);
    assert_eq!(conn.peer_key(), node.public_key());
    for i in 0..50 {
        let reply = conn.call(&call(i)).await.unwrap();
        assert_eq!((reply.kind, reply.message_id), (MessageType::Response, i));
    }
    let (mut send, mut recv) = conn.open_bi(Band::Streaming).await.unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            send.write_all(&data).await.unwrap();
            send.finish().unwrap();
        })
    };
    assert!(recv.read_to_end(1 << 20).await.unwrap() == data);
    writer.await.unwrap();
    for i in 0..20 {
        conn.send_message(&Message::new(MessageType::Event, vec![i; 10]))
            .await
            .unwrap();
    }
    conn.send_datagram(Bytes::from_static(b"beat"), Band::Control)
        .unwrap();
    let echoed = timeout(PATIENCE, conn.read_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed[..], b"beat");
    // The node sinks the events; give the last ones a moment.
    for _ in 0..500 {
        if stats.events.load(Ordering::Relaxed) == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(stats.events.load(Ordering::Relaxed), 20);
    assert_eq!(stats.calls.load(Ordering::Relaxed), 50);
    assert_eq!(node.status().connections.quic, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_server_key_is_refused_on_quic_too() {
    let (node, _) = node(Carriers::BOTH);
    let wrong = Keypair::generate().public();
    let result = timeout(
        PATIENCE,
        client(CarrierMode::Quic).connect(&url(&node), wrong),
    )
    .await
    .unwrap();
    match result {
        Err(ConnectError::Handshake(ConnectionError::ServerKeyMismatch)) => {}
        other => panic!("expected a server key mismatch, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_applies_on_quic_too() {
    let allowed = Keypair::generate();
    let policy = {
        let mut server_config = ServerConfig::default();
        server_config.allowed_clients = Some([allowed.public()].into_iter().collect());
        server_config
    };
    let (node, _) = node_with(Keypair::generate(), policy, Carriers::BOTH);
    let stranger = client(CarrierMode::Quic);
    let result = timeout(PATIENCE, stranger.connect(&url(&node), node.public_key()))
        .await
        .unwrap();
    assert!(
        matches!(
            result,
            Err(ConnectError::Handshake(ConnectionError::ClientNotAllowed))
        ),
        "{result:?}"
    );
    let options = {
        let mut options = Options::new(EndpointConfig::client(allowed));
        options.carrier_mode = CarrierMode::Quic;
        options
    };
    let friend = Endpoint::with_options(any_port(), options).unwrap();
    let conn = timeout(PATIENCE, friend.connect(&url(&node), node.public_key()))
        .await
        .unwrap()
        .unwrap();
    conn.call(&call(1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_quic_when_the_node_refuses_mxp() {
    let (node, _) = node(Carriers::QUIC);
    let auto = client(CarrierMode::Auto);
    // No ?quic=: the node's refusal names its QUIC port.
    let url = format!("mxp://{}", node.local_addr());
    let conn = timeout(PATIENCE, auto.connect(&url, node.public_key()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.carrier(), Carrier::Quic);
    assert_eq!(auto.status().fallbacks, 1);
    assert_eq!(node.stats().carrier_refusals, 1);
    conn.call(&call(1)).await.unwrap();
    // A forced-MXP client gets the refusal as a typed error.
    let mxp_only = timeout(
        PATIENCE,
        client(CarrierMode::Mxp).connect(&url, node.public_key()),
    )
    .await
    .unwrap();
    assert!(
        matches!(
            mxp_only,
            Err(ConnectError::Handshake(ConnectionError::CarrierRefused {
                quic_port: Some(_)
            }))
        ),
        "{mxp_only:?}"
    );
}

/// An auto client told MXP is at `mxp` (where nothing answers) reaches
/// `node` over QUIC, and counts one fallback.
async fn falls_back_to_quic(node: &Endpoint, mxp: SocketAddr) {
    let url = format!("mxp://{mxp}?quic={}", node.quic_addr().unwrap().port());
    let client = client(CarrierMode::Auto);
    let conn = timeout(PATIENCE, client.connect(&url, node.public_key()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.carrier(), Carrier::Quic);
    conn.call(&call(1)).await.unwrap();
    assert_eq!(client.status().fallbacks, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_quic_when_mxp_does_not_answer_at_all() {
    let (node, _) = node(Carriers::BOTH);
    // Nothing answers MXP at this address: a bound, silent socket.
    let silent = std::net::UdpSocket::bind(any_port()).unwrap();
    falls_back_to_quic(&node, silent.local_addr().unwrap()).await;
}

/// The MXP listener gone entirely (a closed port, nothing bound): auto
/// gives MXP its timeout and connects over QUIC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_quic_when_nothing_listens_on_the_mxp_port() {
    let (node, _) = node(Carriers::BOTH);
    let closed = std::net::UdpSocket::bind(any_port())
        .unwrap()
        .local_addr()
        .unwrap();
    falls_back_to_quic(&node, closed).await;
}

/// `node`, on which new auto sessions land on `from`, is flipped to accept
/// only `to` while an auto client has a stream open: calls keep succeeding
/// and move to `to`, the node drains `from`, and the open stream finishes
/// there. Returns the session (on `to` by then).
async fn flip_while_a_stream_is_open(
    node: &Endpoint,
    stats: &EchoStats,
    from: Carrier,
    to: Carrier,
) -> mxp::Connection {
    let conn = auto_session(node, from).await;
    conn.call(&call(0)).await.unwrap();
    // A stream opened before the flip.
    let (mut send, mut recv) = conn.open_bi(Band::Streaming).await.unwrap();
    send.write_all(b"before the flip, ").await.unwrap();

    node.set_carriers(Carriers::only(to));
    // The client learns it within a round trip; calls keep succeeding
    // throughout, and soon run on the new carrier.
    let mut calls = 1;
    while conn.carrier() != to {
        conn.call(&call(calls)).await.unwrap();
        calls += 1;
        assert!(calls < 10_000, "new work never moved to {to}");
    }
    let reply = conn.call(&call(calls)).await.unwrap();
    assert_eq!(reply.message_id, calls);
    let status = node.status();
    assert_eq!(status.accepting, Carriers::only(to));
    assert_eq!(status.draining.len(), 1, "{status:?}");
    assert_eq!(status.draining[0].carrier, from);

    // The old stream still works on the draining connection.
    send.write_all(b"after the flip").await.unwrap();
    send.finish().unwrap();
    let echoed = recv.read_to_end(1024).await.unwrap();
    assert_eq!(&echoed[..], b"before the flip, after the flip");
    assert_eq!(stats.calls.load(Ordering::Relaxed), calls + 1);
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_moves_new_work_to_quic_while_an_open_stream_finishes_on_mxp() {
    let (node, stats) = node(Carriers::BOTH);
    flip_while_a_stream_is_open(&node, &stats, Carrier::Mxp, Carrier::Quic).await;
}

/// Sends one datagram and waits briefly for its echo (datagrams may be
/// dropped; the caller retries).
async fn datagram_round_trip(conn: &mxp::Connection, n: u64) -> bool {
    let payload = Bytes::from(format!("datagram {n}"));
    if conn
        .send_datagram(payload.clone(), Band::Background)
        .is_err()
    {
        return false;
    }
    loop {
        match timeout(Duration::from_millis(100), conn.read_datagram()).await {
            Ok(Ok(d)) if d == payload => return true,
            Ok(Ok(_)) => continue, // an echo of an earlier try
            Ok(Err(_)) | Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_only_exchanges_datagrams_follows_a_flip_to_quic() {
    let (node, stats) = node(Carriers::BOTH);
    let conn = auto_session(&node, Carrier::Mxp).await;
    assert!(datagram_round_trip(&conn, 0).await);

    node.set_carriers(Carriers::QUIC);
    // No call, no stream: datagrams alone move the session, and they keep
    // being answered while it moves.
    let mut n = 1;
    timeout(PATIENCE, async {
        while conn.carrier() != Carrier::Quic {
            datagram_round_trip(&conn, n).await;
            n += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("datagrams never moved to QUIC");
    let mut answered = false;
    for _ in 0..50 {
        n += 1;
        if datagram_round_trip(&conn, n).await {
            answered = true;
            break;
        }
    }
    assert!(answered, "no datagram answered over QUIC");
    assert_eq!(conn.carrier(), Carrier::Quic);
    assert_eq!(stats.calls.load(Ordering::Relaxed), 0);
    assert_eq!(node.status().connections.quic, 1, "{:?}", node.status());
}

/// How many datagrams `socket` has received since the last look.
fn drain_count(socket: &std::net::UdpSocket) -> usize {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while socket.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_mxp_stays_silent_auto_goes_straight_to_quic_until_the_retry_time_passes() {
    let (node, _) = node(Carriers::BOTH);
    let silent = std::net::UdpSocket::bind(any_port()).unwrap();
    silent.set_nonblocking(true).unwrap();
    let url = format!(
        "mxp://{}?quic={}",
        silent.local_addr().unwrap(),
        node.quic_addr().unwrap().port()
    );
    let with_retry = |after: Duration| {
        let options = {
            let mut options = Options::new(EndpointConfig::client(Keypair::generate()));
            options.carrier_mode = CarrierMode::Auto;
            options.mxp_timeout = Duration::from_millis(200);
            options.mxp_retry_after = after;
            options
        };
        Endpoint::with_options(any_port(), options).unwrap()
    };

    // Within the retry time, a second connection does not knock on MXP.
    let patient = with_retry(Duration::from_secs(600));
    for expected_fallbacks in 1..=2 {
        let conn = timeout(PATIENCE, patient.connect(&url, node.public_key()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(conn.carrier(), Carrier::Quic);
        conn.call(&call(expected_fallbacks)).await.unwrap();
        assert_eq!(patient.status().fallbacks, expected_fallbacks);
        let knocks = drain_count(&silent);
        if expected_fallbacks == 1 {
            assert!(knocks > 0, "the first connection tried MXP");
        } else {
            assert_eq!(knocks, 0, "the second connection tried MXP again");
        }
    }

    // Once the retry time has passed, MXP is tried again.
    let eager = with_retry(Duration::from_millis(1));
    for attempt in 1..=2 {
        let conn = timeout(PATIENCE, eager.connect(&url, node.public_key()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(conn.carrier(), Carrier::Quic);
        assert!(drain_count(&silent) > 0, "attempt {attempt} skipped MXP");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The rollback undone: a node flipped back to MXP drains its QUIC
/// connections exactly as it drained MXP — new work moves to MXP, an open
/// QUIC stream finishes, and at the deadline what is left on QUIC closes
/// with the drain code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_back_to_mxp_drains_quic_the_same_way() {
    let (node, stats) = node(Carriers::QUIC);
    // A session on QUIC that does nothing more: the deadline closes it.
    let idle = auto_session(&node, Carrier::Quic).await;
    let conn = flip_while_a_stream_is_open(&node, &stats, Carrier::Quic, Carrier::Mxp).await;

    node.drain(Carrier::Quic, Duration::from_millis(200));
    let reason = timeout(PATIENCE, idle.closed())
        .await
        .expect("closed at the deadline (within the hang guard)");
    assert!(
        matches!(reason, ConnectionError::ApplicationClosed { code, .. } if code == mxp::DRAINED),
        "{reason:?}"
    );
    conn.call(&call(10_001)).await.unwrap();
    assert_eq!(conn.carrier(), Carrier::Mxp);
}

/// A receiver already waiting when the node starts draining (nothing sent,
/// nothing arriving) moves to QUIC at once, long before the drain's
/// 5-minute deadline, and the same wait goes on there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_waiting_when_the_node_drains_moves_at_once() {
    let (node, _) = node(Carriers::BOTH);
    let conn = auto_session(&node, Carrier::Mxp).await;
    let reader = tokio::spawn({
        let conn = conn.clone();
        async move { conn.read_datagram().await }
    });

    node.set_carriers(Carriers::QUIC);
    assert!(node.drain_timeout() > PATIENCE);
    timeout(PATIENCE, async {
        while conn.carrier() != Carrier::Quic {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("moved to QUIC before the drain's deadline");
    assert!(!reader.is_finished(), "{:?}", reader.await);

    let payload = Bytes::from_static(b"after the drain");
    timeout(PATIENCE, async {
        while !reader.is_finished() {
            let _ = conn.send_datagram(payload.clone(), Band::Background);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the waiting reader got the echo");
    assert_eq!(reader.await.unwrap().unwrap(), payload);
}
