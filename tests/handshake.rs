//! The Noise IK handshake and the server's admission rules, on the
//! deterministic network: authentication both ways, the allow-list, replay
//! protection, retransmission, timeouts, stateless retry, flood resistance
//! and version negotiation. Everything runs on the virtual clock.

mod common;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{
    EchoServer, Receiver, Sender, Setup, client_initial, events, is_long, is_short, wiretap,
};
use mxp::proto::{
    Band, ConnectionError, ConnectionHandle, Dir, Endpoint, EndpointConfig, EndpointStats, Event,
    Incoming, Keypair, Refusal, RetryPolicy, ServerConfig, TransportConfig,
    crypto::HandshakeError,
    packet::{self, ConnectionId, MIN_INITIAL_SIZE},
};
use mxp::sim::{Datagram, LinkConfig, Network, NodeId, TapAction};

const DELAY: Duration = Duration::from_micros(25);

fn ideal() -> LinkConfig {
    LinkConfig::ideal(DELAY)
}

/// Runs until the connection `h` of `node` reports `Connected` or is lost;
/// returns the events it produced (other connections' events are dropped).
fn run_to_outcome(
    net: &mut Network,
    node: NodeId,
    h: ConnectionHandle,
    limit: Duration,
) -> Vec<Event> {
    let mut seen = Vec::new();
    net.run_until(limit, |net| {
        for (handle, e) in events(net, node) {
            if handle == h {
                seen.push(e);
            }
        }
        seen.iter()
            .any(|e| matches!(e, Event::Connected | Event::Drained))
    });
    seen
}

/// The reason of the first `ConnectionLost` among `events`.
fn lost_reason(events: &[Event]) -> Option<ConnectionError> {
    events.iter().find_map(|e| match e {
        Event::ConnectionLost { reason } => Some(reason.clone()),
        _ => None,
    })
}

/// Diffie-Hellman work the server did: every initiation it decrypted or
/// tried to.
/// What the endpoint at `addr` did with the datagrams it was handed.
fn outcomes_at(net: &mut Network, addr: SocketAddr) -> Vec<Incoming> {
    net.take_outcomes()
        .into_iter()
        .filter(|(to, _)| *to == addr)
        .map(|(_, o)| o)
        .collect()
}

fn dh_operations(s: &EndpointStats) -> u64 {
    s.handshakes_accepted
        + s.handshake_decrypt_failures
        + s.replayed_initiations
        + s.clients_refused
}

/// Drops datagrams matching `pick` while the shared budget lasts; returns
/// the budget to inspect afterwards.
fn drop_first(
    net: &mut Network,
    n: u32,
    pick: impl Fn(&Datagram) -> bool + 'static,
) -> Rc<RefCell<u32>> {
    let left = Rc::new(RefCell::new(n));
    let l = left.clone();
    net.add_tap(move |d| {
        if pick(d) && *l.borrow() > 0 {
            *l.borrow_mut() -= 1;
            return TapAction::Drop;
        }
        TapAction::Pass
    });
    left
}

/// Sends `total` bytes client → server and checks they arrive exactly.
fn assert_transfer(s: &mut Setup, c: ConnectionHandle, total: u64) {
    let (client, server) = (s.client, s.server);
    let mut sender = Sender::open(&mut s.net, client, c, 1, total, Band::Streaming);
    let mut receiver = Receiver::default();
    let done = s.net.run_until(Duration::from_secs(10), |net| {
        sender.pump(net, client, c);
        receiver.pump(net, server);
        !receiver.finished.is_empty()
    });
    assert!(done, "transfer did not finish");
    let id = sender.streams[0].0;
    assert_eq!(receiver.digests[&id], sender.digests[&id]);
}

#[test]
fn handshake_authenticates_both_ends_in_one_round_trip() {
    let mut s = Setup::new(1, ideal());
    let (client, server) = (s.client, s.server);
    let start = s.net.now();
    let c = s.start_connect(client);
    let seen = run_to_outcome(&mut s.net, client, c, Duration::from_secs(1));
    assert_eq!(seen, vec![Event::Connected]);
    assert_eq!(
        s.net.now() - start,
        2 * DELAY,
        "the client is connected after one round trip"
    );
    // The server is connected once the client's first protected packet
    // proves its address: half a round trip later.
    let mut server_conn = None;
    s.net.run_until(Duration::from_secs(1), |net| {
        server_conn = events(net, server)
            .into_iter()
            .find(|(_, e)| *e == Event::Connected)
            .map(|(h, _)| h);
        server_conn.is_some()
    });
    let srv = server_conn.expect("server connected");
    assert_eq!(s.net.now() - start, 3 * DELAY);
    // Each end authenticated the other's static key.
    let client_conn = s.net.endpoint(client).connection_ref(c).unwrap();
    assert_eq!(client_conn.peer_key(), Some(s.server_key));
    let server_side = s.net.endpoint(server).connection_ref(srv).unwrap();
    assert_eq!(server_side.peer_key(), Some(s.client_key));
    let e = s.net.endpoint(server).stats();
    assert_eq!(
        (
            e.handshakes_accepted,
            e.retries_sent,
            e.handshake_decrypt_failures
        ),
        (1, 0, 0)
    );
    assert_eq!(
        s.net.endpoint(client).stats().handshakes_completed,
        1,
        "the client counts its completed handshake"
    );
    // And the session carries data both ways.
    let id = s
        .net
        .endpoint(client)
        .connection(c)
        .unwrap()
        .open(Dir::Bi, Band::Critical)
        .unwrap();
    s.net
        .endpoint(client)
        .connection(c)
        .unwrap()
        .write(id, &b"ping"[..])
        .unwrap();
    s.net
        .endpoint(client)
        .connection(c)
        .unwrap()
        .finish(id)
        .unwrap();
    let mut echo = EchoServer::default();
    let mut back = Vec::new();
    let done = s.net.run_until(Duration::from_secs(1), |net| {
        echo.pump(net, server);
        loop {
            match net
                .endpoint(client)
                .connection(c)
                .unwrap()
                .read(id, usize::MAX)
            {
                Ok(Some(chunk)) => back.extend_from_slice(&chunk),
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    });
    assert!(done);
    assert_eq!(back, b"ping");
}

#[test]
fn wrong_server_key_is_a_typed_error_on_both_sides_without_waiting_for_a_timeout() {
    let mut s = Setup::new(2, ideal());
    let (client, server) = (s.client, s.server);
    let server_addr = s.net.addr(server);
    let wrong = Keypair::generate().public();
    let start = s.net.now();
    let c = s
        .net
        .endpoint(client)
        .connect(start, server_addr, wrong)
        .unwrap();
    let seen = run_to_outcome(&mut s.net, client, c, Duration::from_secs(5));
    assert_eq!(lost_reason(&seen), Some(ConnectionError::ServerKeyMismatch));
    assert_eq!(seen.last(), Some(&Event::Drained));
    assert!(
        s.net.now() - start < Duration::from_millis(100),
        "typed at once, not after the 10 s handshake timeout"
    );
    assert_eq!(s.net.endpoint(client).connection_count(), 0);
    // The server could not decrypt either initiation (the first Reject is
    // only believed once a fresh copy is refused too) and kept no state.
    let e = s.net.endpoint(server).stats();
    assert_eq!(e.handshake_decrypt_failures, 2);
    assert_eq!(e.handshakes_accepted, 0);
    assert_eq!(s.net.endpoint(server).connection_count(), 0);
    let refusals = outcomes_at(&mut s.net, server_addr);
    assert_eq!(
        refusals,
        vec![Incoming::Answered(Refusal::HandshakeFailed(HandshakeError::Decrypt)); 2]
    );
}

#[test]
fn allow_list_refuses_unknown_clients_and_admits_listed_ones() {
    let allowed = Keypair::generate();
    let server_config = ServerConfig {
        allowed_clients: Some([allowed.public()].into_iter().collect()),
        ..ServerConfig::default()
    };
    let mut s = Setup::with(3, ideal(), TransportConfig::default(), server_config);
    let (client, server) = (s.client, s.server);
    let server_addr = s.net.addr(server);
    // The setup's own client is not on the list.
    let c = s.start_connect(client);
    let seen = run_to_outcome(&mut s.net, client, c, Duration::from_secs(5));
    assert_eq!(lost_reason(&seen), Some(ConnectionError::ClientNotAllowed));
    assert_eq!(seen.last(), Some(&Event::Drained));
    // The server answered the initiation with the typed refusal (and only
    // that), and its application never heard of the client.
    let refusals = outcomes_at(&mut s.net, server_addr);
    assert_eq!(
        refusals,
        vec![Incoming::Answered(Refusal::ClientNotAllowed)]
    );
    assert_eq!(events(&mut s.net, server), vec![]);
    assert_eq!(s.net.endpoint(client).connection_count(), 0);
    let e = s.net.endpoint(server).stats();
    assert_eq!((e.clients_refused, e.handshakes_accepted), (1, 0));
    assert_eq!(
        s.net.endpoint(server).connection_count(),
        0,
        "no state kept for a refused client"
    );

    // A listed client gets in, and the server knows who it is.
    let listed = s.add_client(
        "10.0.0.3:50000",
        allowed.clone(),
        TransportConfig::default(),
    );
    let (_, srv) = s.connect_from(listed);
    let conn = s.net.endpoint(server).connection_ref(srv).unwrap();
    assert_eq!(conn.peer_key(), Some(allowed.public()));
    assert_eq!(s.net.endpoint(server).stats().clients_refused, 1);
}

#[test]
fn a_replayed_initiation_is_refused_and_never_makes_a_second_connection() {
    let mut s = Setup::new(4, ideal());
    let tap = wiretap(&mut s.net);
    let (client, server) = (s.client, s.server);
    let (client_addr, server_addr) = (s.net.addr(client), s.net.addr(server));
    let attacker: SocketAddr = "192.0.2.7:9999".parse().unwrap();
    let (c, _) = s.connect();
    let initial = tap
        .borrow()
        .iter()
        .find(|d| is_long(&d.data, 0))
        .unwrap()
        .data
        .clone();
    s.net.run_for(Duration::from_millis(10));
    s.net.take_outcomes();

    // While the connection is up: replayed from the client's own address it
    // is a stale retransmission of a finished handshake (nothing answered),
    // from elsewhere a replay.
    let answers_before = s.net.traffic(server_addr, client_addr).sent_packets;
    s.net.inject(client_addr, server_addr, initial.clone());
    s.net.inject(attacker, server_addr, initial.clone());
    s.net.run_for(Duration::from_millis(10));
    assert_eq!(
        s.net.traffic(server_addr, client_addr).sent_packets,
        answers_before,
        "nothing answered"
    );
    assert_eq!(
        s.net.traffic(server_addr, attacker).sent_packets,
        0,
        "nothing sent to the attacker"
    );
    let outcomes = s.net.take_outcomes();
    assert!(outcomes.contains(&(server_addr, Incoming::Dropped(Refusal::ReplayedInitiation))));
    assert_eq!(s.net.endpoint(server).stats().replayed_initiations, 1);
    assert_eq!(s.net.endpoint(server).connection_count(), 1);

    // After the connection closed and both ends forgot it.
    let now = s.net.now();
    s.net
        .endpoint(client)
        .connection(c)
        .unwrap()
        .close(now, 0, &b"done"[..]);
    s.net.run_for(Duration::from_secs(1));
    events(&mut s.net, client);
    events(&mut s.net, server);
    assert_eq!(s.net.endpoint(server).connection_count(), 0);
    s.net.take_outcomes();
    for from in [client_addr, attacker] {
        s.net.inject(from, server_addr, initial.clone());
    }
    s.net.run_for(Duration::from_millis(10));
    let outcomes = s.net.take_outcomes();
    assert_eq!(
        outcomes,
        vec![(server_addr, Incoming::Dropped(Refusal::ReplayedInitiation)); 2]
    );
    let e = s.net.endpoint(server).stats();
    assert_eq!((e.replayed_initiations, e.handshakes_accepted), (3, 1));
    assert_eq!(
        s.net.endpoint(server).connection_count(),
        0,
        "no second connection"
    );
    assert_eq!(s.net.traffic(server_addr, attacker).sent_packets, 0);
}

#[test]
fn an_initiation_stamped_outside_the_clock_skew_window_is_refused() {
    let transport = TransportConfig {
        handshake_timeout: Duration::from_secs(1),
        ..TransportConfig::default()
    };
    let mut s = Setup::with(5, ideal(), transport.clone(), ServerConfig::default());
    let server = s.server;
    // A client whose wall clock is ten minutes behind the server's.
    let skewed_addr: SocketAddr = "10.0.0.9:5000".parse().unwrap();
    let config = EndpointConfig {
        keypair: Keypair::generate(),
        transport: transport.into(),
        server: None,
    };
    let endpoint = Endpoint::new(
        config,
        s.net.now(),
        s.net.unix_time() - Duration::from_secs(600),
    );
    let skewed = s.net.attach(skewed_addr, endpoint);
    let c = s.start_connect(skewed);
    let seen = run_to_outcome(&mut s.net, skewed, c, Duration::from_secs(5));
    let e = s.net.endpoint(server).stats();
    assert_eq!(e.stale_initiations, 1, "refused once, with a reason");
    assert_eq!(e.handshakes_accepted, 0);
    // The refusal is authenticated (inside Noise message 2), so the client
    // believes it at once and says what is wrong: its clock.
    match lost_reason(&seen) {
        Some(ConnectionError::ClockSkew { local_ahead_ms }) => {
            assert!(
                (-600_100..=-599_900).contains(&local_ahead_ms),
                "{local_ahead_ms}"
            );
        }
        other => panic!("expected a clock-skew error, got {other:?}"),
    }
}

#[test]
fn lost_handshake_packets_are_retransmitted_until_the_handshake_completes() {
    // (what, client Initials lost, server answers lost, client short packets lost)
    let cases = [
        ("three Initials lost", 3, 0, 0),
        ("two answers lost", 0, 2, 0),
        ("address proof lost", 0, 0, 2),
        ("all of it", 2, 2, 2),
    ];
    for (seed, (what, initials, answers, shorts)) in cases.into_iter().enumerate() {
        let mut s = Setup::new(10 + seed as u64, ideal());
        let tap = wiretap(&mut s.net);
        let (client, server) = (s.client, s.server);
        let (client_addr, server_addr) = (s.net.addr(client), s.net.addr(server));
        let lost = [
            drop_first(&mut s.net, initials, move |d| {
                d.from == client_addr && is_long(&d.data, 0)
            }),
            drop_first(&mut s.net, answers, move |d| {
                d.from == server_addr && is_long(&d.data, 1)
            }),
            drop_first(&mut s.net, shorts, move |d| {
                d.from == client_addr && is_short(&d.data)
            }),
        ];
        let (c, _) = s.connect();
        assert!(
            lost.iter().all(|l| *l.borrow() == 0),
            "{what}: the planned losses happened"
        );
        let sent = |ty: u8, from: SocketAddr| {
            tap.borrow()
                .iter()
                .filter(|d| d.from == from && is_long(&d.data, ty))
                .count() as u32
        };
        assert_eq!(
            sent(0, client_addr),
            initials + answers + 1,
            "{what}: one Initial per loss, plus the one that made it"
        );
        assert_eq!(
            sent(1, server_addr),
            answers + 1,
            "{what}: the answer is resent for each repeated Initial"
        );
        let e = s.net.endpoint(server).stats();
        assert_eq!(
            e.handshakes_accepted, 1,
            "{what}: retransmissions do not start new handshakes"
        );
        assert_eq!(s.net.endpoint(server).connection_count(), 1);
        assert_transfer(&mut s, c, 50_000);
    }
}

#[test]
fn a_corrupted_server_answer_makes_the_client_start_over_and_still_connect() {
    let mut s = Setup::new(20, ideal());
    let (client, server) = (s.client, s.server);
    let (client_addr, server_addr) = (s.net.addr(client), s.net.addr(server));
    let answers = Rc::new(RefCell::new(Vec::new()));
    let a = answers.clone();
    s.net.add_tap(move |d| {
        if d.from == server_addr && is_long(&d.data, 1) && a.borrow().is_empty() {
            a.borrow_mut().push(d.data.clone());
            return TapAction::Drop;
        }
        TapAction::Pass
    });
    let c = s.start_connect(client);
    s.net
        .run_until(Duration::from_secs(1), |_| !answers.borrow().is_empty());
    let mut bad = answers.borrow()[0].clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x01; // inside the Noise message's tag
    s.net.inject(server_addr, client_addr, bad);
    let seen = run_to_outcome(&mut s.net, client, c, Duration::from_secs(5));
    assert_eq!(seen, vec![Event::Connected]);
    assert_eq!(
        s.net
            .endpoint(client)
            .connection_ref(c)
            .unwrap()
            .stats()
            .decrypt_failures,
        1
    );
    // The server accepted the fresh initiation; the spoiled one's state
    // expires with the handshake timeout.
    assert_eq!(s.net.endpoint(server).stats().handshakes_accepted, 2);
    s.net.run_for(Duration::from_secs(11));
    events(&mut s.net, server);
    assert_eq!(s.net.endpoint(server).connection_count(), 1);
    assert_transfer(&mut s, c, 10_000);
}

#[test]
fn an_unreachable_server_gives_handshake_timed_out_after_the_handshake_timeout() {
    let transport = TransportConfig {
        handshake_timeout: Duration::from_secs(2),
        ..TransportConfig::default()
    };
    let mut s = Setup::with(30, ideal(), transport, ServerConfig::default());
    let tap = wiretap(&mut s.net);
    let client = s.client;
    let nowhere: SocketAddr = "10.0.0.99:4433".parse().unwrap();
    let start = s.net.now();
    let c = s
        .net
        .endpoint(client)
        .connect(start, nowhere, s.server_key)
        .unwrap();
    let mut lost_at = None;
    let mut seen = Vec::new();
    s.net.run_until(Duration::from_secs(10), |net| {
        for (_, e) in events(net, client) {
            if matches!(e, Event::ConnectionLost { .. }) {
                lost_at = Some(net.now());
            }
            seen.push(e);
        }
        seen.contains(&Event::Drained)
    });
    assert_eq!(lost_reason(&seen), Some(ConnectionError::HandshakeTimedOut));
    assert_eq!(
        lost_at,
        Some(start + Duration::from_secs(2)),
        "exactly at the handshake timeout"
    );
    assert!(s.net.endpoint(client).connection_ref(c).is_none());
    // The Initial was retransmitted with exponential backoff meanwhile.
    let times: Vec<Instant> = tap
        .borrow()
        .iter()
        .filter(|d| d.to == nowhere)
        .map(|d| d.sent)
        .collect();
    assert!(times.len() >= 4, "{} Initials sent", times.len());
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] >= g[0] * 2),
        "backoff doubles: {gaps:?}"
    );
}

#[test]
fn retry_always_proves_the_address_first_and_the_connection_works() {
    let server_config = ServerConfig {
        retry: RetryPolicy::Always,
        ..ServerConfig::default()
    };
    let mut s = Setup::with(40, ideal(), TransportConfig::default(), server_config);
    let tap = wiretap(&mut s.net);
    let (client, server) = (s.client, s.server);
    let start = s.net.now();
    let c = s.start_connect(client);
    let seen = run_to_outcome(&mut s.net, client, c, Duration::from_secs(1));
    assert_eq!(seen, vec![Event::Connected]);
    assert_eq!(
        s.net.now() - start,
        4 * DELAY,
        "one extra round trip for the retry"
    );
    let e = s.net.endpoint(server).stats();
    assert_eq!(
        (e.retries_sent, e.handshakes_accepted, e.invalid_tokens),
        (1, 1, 0)
    );
    let kinds: Vec<(bool, u8)> = tap
        .borrow()
        .iter()
        .filter(|d| !is_short(&d.data))
        .map(|d| (d.from == s.net.addr(client), (d.data[0] >> 4) & 3))
        .collect();
    assert_eq!(
        kinds,
        [(true, 0), (false, 2), (true, 0), (false, 1)],
        "Initial, Retry, Initial+token, answer"
    );
    assert_transfer(&mut s, c, 100_000);
}

/// A garbage Initial: well-formed header, random Noise message, padded.
fn junk_initial(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let noise: Vec<u8> = (0..96).map(|_| next() as u8).collect();
    let mut out = Vec::new();
    let (d, s) = (next().to_be_bytes(), next().to_be_bytes());
    packet::write_initial(ConnectionId(d), ConnectionId(s), &[], &noise, &mut out);
    out
}

fn spoofed(i: u64) -> SocketAddr {
    SocketAddr::from(([10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8], 40000))
}

/// Floods the server with Initials from thousands of spoofed addresses
/// (mostly junk, every tenth a genuine initiation of some client) while the
/// established client sends 1 MiB. Returns the setup, the number of spoofed
/// Initials, the flood's duration, the DH operations the server spent
/// during it, and the events of a newcomer that tried to connect meanwhile.
fn flood(policy: RetryPolicy, newcomer: bool) -> (Setup, u64, Duration, u64, Option<Vec<Event>>) {
    let server_config = ServerConfig {
        retry: policy,
        handshake_rate: 1000,
        handshake_burst: 50,
        ..ServerConfig::default()
    };
    // 25 MB/s: the transfer takes about 40 ms, all of it under the flood.
    let link = LinkConfig {
        bandwidth: Some(25_000_000),
        ..ideal()
    };
    let mut s = Setup::with(50, link, TransportConfig::default(), server_config);
    let (client, server) = (s.client, s.server);
    let server_addr = s.net.addr(server);
    let (c, _) = s.connect();
    let genuine: Vec<Vec<u8>> = (0..320)
        .map(|_| client_initial(&s.net, server_addr, s.server_key))
        .collect();
    let before = s.net.endpoint(server).stats();

    let total = 1 << 20;
    let mut sender = Sender::open(&mut s.net, client, c, 1, total, Band::Streaming);
    let mut receiver = Receiver::default();
    let newcomer_node = newcomer.then(|| {
        s.add_client(
            "10.0.0.3:50000",
            Keypair::generate(),
            TransportConfig::default(),
        )
    });
    let newcomer_initials = Rc::new(RefCell::new(0u64));
    let count = newcomer_initials.clone();
    let newcomer_addr: SocketAddr = "10.0.0.3:50000".parse().unwrap();
    s.net.add_tap(move |d| {
        *count.borrow_mut() += u64::from(d.from == newcomer_addr && is_long(&d.data, 0));
        TapAction::Pass
    });
    let mut newcomer_conn = None;
    let mut newcomer_events = Vec::new();
    let start = s.net.now();
    let mut n = 0u64;
    let mut next = start;
    let mut flood_end = start;
    let done = s.net.run_until(Duration::from_secs(5), |net| {
        // 8 Initials every 100 µs (80,000 a second) for 40 ms.
        while net.now() >= next && n < 3200 {
            flood_end = net.now();
            for _ in 0..8 {
                let datagram = if n % 10 == 0 {
                    genuine[(n / 10) as usize].clone()
                } else {
                    junk_initial(n)
                };
                net.inject(spoofed(n), server_addr, datagram);
                n += 1;
            }
            next += Duration::from_micros(100);
        }
        if let Some(node) = newcomer_node {
            if newcomer_conn.is_none() && net.now() >= start + Duration::from_millis(5) {
                let now = net.now();
                newcomer_conn = Some(
                    net.endpoint(node)
                        .connect(now, server_addr, s.server_key)
                        .unwrap(),
                );
            }
            for (_, e) in events(net, node) {
                newcomer_events.push(e);
            }
        }
        sender.pump(net, client, c);
        receiver.pump(net, server);
        !receiver.finished.is_empty() && n == 3200
    });
    let elapsed = flood_end - start;
    assert!(done, "the established connection stalled under the flood");
    let id = sender.streams[0].0;
    assert_eq!(
        receiver.digests[&id], sender.digests[&id],
        "established connection served exactly"
    );
    assert_eq!(receiver.digests[&id].1, total);
    // Every spoofed address got at most three times what it sent.
    s.net.run_for(Duration::from_millis(50));
    for i in 0..n {
        let a = spoofed(i);
        let (got, sent) = (
            s.net.traffic(a, server_addr).delivered_bytes,
            s.net.traffic(server_addr, a).sent_bytes,
        );
        assert!(
            got >= MIN_INITIAL_SIZE as u64 && sent <= 3 * got,
            "{a}: {sent} bytes sent for {got}"
        );
    }
    // Each Initial was either worked on, answered with a retry, or dropped
    // by the rate limit, and counted.
    let after = s.net.endpoint(server).stats();
    let outcomes = |e: &EndpointStats| dh_operations(e) + e.retries_sent + e.rate_limited;
    let initials = n + *newcomer_initials.borrow();
    assert_eq!(
        outcomes(&after) - outcomes(&before),
        initials,
        "every Initial is accounted for"
    );
    let dh = dh_operations(&after) - dh_operations(&before);
    (s, n, elapsed, dh, newcomer.then_some(newcomer_events))
}

#[test]
fn a_handshake_flood_with_retry_under_load_spends_no_dh_on_spoofed_addresses() {
    let (mut s, n, elapsed, dh, newcomer) = flood(RetryPolicy::UnderLoad, true);
    let e = s.net.endpoint(s.server).stats();
    // DH is spent until half the burst (50) is used up, then only at the
    // refill rate (1000/s), plus the newcomer's: never on the bulk.
    let budget = 50 / 2 + 1 + (1000 * elapsed.as_micros() as u64).div_ceil(1_000_000) + 1;
    assert!(
        dh <= budget,
        "{dh} DH operations for {n} spoofed Initials in {elapsed:?} (budget {budget})"
    );
    assert!(
        e.retries_sent >= n - dh,
        "the rest were answered with a stateless retry ({})",
        e.retries_sent
    );
    assert_eq!(
        e.rate_limited, 0,
        "spoofed clients never come back with a token"
    );
    // A genuine newcomer proves its address with the retry and gets in.
    let newcomer = newcomer.unwrap();
    assert!(
        newcomer.contains(&Event::Connected),
        "newcomer: {newcomer:?}"
    );
    events(&mut s.net, s.server);
}

#[test]
fn a_handshake_flood_without_retry_is_held_to_the_rate_limit() {
    let (mut s, n, elapsed, dh, _) = flood(RetryPolicy::Never, false);
    let e = s.net.endpoint(s.server).stats();
    // The whole burst, then the refill rate.
    let budget = 50 + (1000 * elapsed.as_micros() as u64).div_ceil(1_000_000);
    assert!(
        dh <= budget,
        "{dh} DH operations for {n} spoofed Initials in {elapsed:?} (budget {budget})"
    );
    assert!(
        e.rate_limited >= n - dh,
        "the rest were dropped by the rate limit ({})",
        e.rate_limited
    );
    assert_eq!(e.retries_sent, 0);
}

#[test]
fn a_version_mismatch_gets_a_reject_and_a_typed_error() {
    let mut s = Setup::new(60, ideal());
    let (client, server) = (s.client, s.server);
    let (client_addr, server_addr) = (s.net.addr(client), s.net.addr(server));
    // The client's Initials, rewritten on the way to claim another version.
    let held = Rc::new(RefCell::new(Vec::new()));
    let h = held.clone();
    s.net.add_tap(move |d| {
        if d.from == client_addr && is_long(&d.data, 0) {
            h.borrow_mut().push(d.data.clone());
            return TapAction::Drop;
        }
        TapAction::Pass
    });
    let c = s.start_connect(client);
    let start = s.net.now();
    let mut seen = Vec::new();
    while !seen.contains(&Event::Drained) && s.net.now() - start < Duration::from_secs(5) {
        s.net.run_for(Duration::from_micros(5));
        for mut initial in held.borrow_mut().drain(..) {
            initial[1..5].copy_from_slice(&0x4d58_0002u32.to_be_bytes());
            s.net.inject(client_addr, server_addr, initial);
        }
        seen.extend(
            events(&mut s.net, client)
                .into_iter()
                .filter(|(h, _)| *h == c)
                .map(|(_, e)| e),
        );
    }
    assert_eq!(lost_reason(&seen), Some(ConnectionError::VersionMismatch));
    // A refusal is unauthenticated (a corrupted Initial looks the same), so
    // the client believes it once a fresh copy is refused too: two round
    // trips, not a timeout.
    let elapsed = s.net.now() - start;
    assert!(elapsed <= 5 * DELAY, "typed at once, not after {elapsed:?}");
    let e = s.net.endpoint(server).stats();
    assert_eq!((e.version_mismatches, e.handshakes_accepted), (2, 0));
    assert_eq!(s.net.endpoint(server).connection_count(), 0);
}
