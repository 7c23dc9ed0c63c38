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
    EchoServer, Receiver, Sender, Setup, client_initial, events, first_long, is_long, is_short,
    wiretap,
};
use mxp::attack::corrupt_mxp_initial;
use mxp::proto::{
    Band, BusyReason, ConnectionError, ConnectionHandle, Dir, Endpoint, EndpointConfig,
    EndpointStats, Event, Incoming, Keypair, Refusal, RetryPolicy, ServerConfig, TransportConfig,
    crypto::Mac1Key,
    packet::{self, Header},
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

/// What the endpoint at `addr` did with the datagrams it was handed.
fn outcomes_at(net: &mut Network, addr: SocketAddr) -> Vec<Incoming> {
    net.take_outcomes()
        .into_iter()
        .filter(|(to, _)| *to == addr)
        .map(|(_, o)| o)
        .collect()
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
            e.server_key_mismatches
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
    // Neither initiation's mac1 verified (the first Reject is only
    // believed once a fresh copy is refused too): the server told the
    // client without any Diffie-Hellman work, and kept no state.
    let e = s.net.endpoint(server).stats();
    assert_eq!((e.mac_failures, e.handshake_jobs), (2, 0));
    assert_eq!(e.handshakes_accepted, 0);
    assert_eq!(s.net.endpoint(server).connection_count(), 0);
    let refusals = outcomes_at(&mut s.net, server_addr);
    assert_eq!(refusals, vec![Incoming::Answered(Refusal::BadMac); 2]);
}

#[test]
fn allow_list_refuses_unknown_clients_and_admits_listed_ones() {
    let allowed = Keypair::generate();
    let server_config = {
        let mut server_config = ServerConfig::default();
        server_config.allowed_clients = Some([allowed.public()].into_iter().collect());
        server_config
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
        vec![
            Incoming::Queued,
            Incoming::Answered(Refusal::ClientNotAllowed)
        ]
    );
    assert_eq!(events(&mut s.net, server), vec![]);
    assert_eq!(s.net.endpoint(client).connection_count(), 0);
    let e = s.net.endpoint(server).stats();
    assert_eq!((e.clients_not_allowed, e.handshakes_accepted), (1, 0));
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
    assert_eq!(s.net.endpoint(server).stats().clients_not_allowed, 1);
}

#[test]
fn a_replayed_initiation_is_refused_and_never_makes_a_second_connection() {
    let mut s = Setup::new(4, ideal());
    let tap = wiretap(&mut s.net);
    let (client, server) = (s.client, s.server);
    let (client_addr, server_addr) = (s.net.addr(client), s.net.addr(server));
    let attacker: SocketAddr = "192.0.2.7:9999".parse().unwrap();
    let (c, _) = s.connect();
    let initial = first_long(&tap, 0);
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
    s.close_and_forget(c);
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
    let transport = {
        let mut transport = TransportConfig::default();
        transport.handshake_timeout = Duration::from_secs(1);
        transport
    };
    let mut s = Setup::with(5, ideal(), transport.clone(), ServerConfig::default());
    let server = s.server;
    // A client whose wall clock is ten minutes behind the server's.
    let skewed_addr: SocketAddr = "10.0.0.9:5000".parse().unwrap();
    let mut config = EndpointConfig::client(Keypair::generate());
    config.transport = transport.into();
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
fn a_replay_after_the_clock_skew_window_is_refused_by_its_timestamp() {
    // A one-second window keeps the test short; the node remembers
    // initiations for twice it (plus a second), then only timestamps count.
    let policy = {
        let mut server_config = ServerConfig::default();
        server_config.max_clock_skew = Duration::from_secs(1);
        server_config
    };
    let mut s = Setup::with(6, ideal(), TransportConfig::default(), policy);
    let tap = wiretap(&mut s.net);
    let server = s.server;
    let server_addr = s.net.addr(server);
    let (c, _) = s.connect();
    let initial = first_long(&tap, 0);
    s.close_and_forget(c);
    let attacker: SocketAddr = "192.0.2.7:9999".parse().unwrap();
    let replay = |s: &mut Setup| {
        s.net.take_outcomes();
        s.net.inject(attacker, server_addr, initial.clone());
        s.net.run_for(Duration::from_millis(5));
        outcomes_at(&mut s.net, server_addr)
    };
    // Within the window: dropped as a copy, before any handshake work.
    let jobs = s.net.endpoint(server).stats().handshake_jobs;
    assert_eq!(
        replay(&mut s),
        vec![Incoming::Dropped(Refusal::ReplayedInitiation)]
    );
    assert_eq!(s.net.endpoint(server).stats().handshake_jobs, jobs);
    // Long after it, the log has forgotten the initiation: its timestamp
    // is what refuses it, and still no connection comes of it.
    s.net.run_for(Duration::from_secs(5));
    assert_eq!(
        replay(&mut s),
        vec![
            Incoming::Queued,
            Incoming::Answered(Refusal::StaleInitiation)
        ]
    );
    let e = s.net.endpoint(server).stats();
    assert_eq!((e.stale_initiations, e.handshakes_accepted), (1, 1));
    assert_eq!(s.net.endpoint(server).connection_count(), 0);
    // The answer was small: at most three times the replayed bytes.
    let answered = s.net.traffic(server_addr, attacker).sent_bytes;
    assert!(answered <= 3 * initial.len() as u64, "{answered}");
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
    let transport = {
        let mut transport = TransportConfig::default();
        transport.handshake_timeout = Duration::from_secs(2);
        transport
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
    let server_config = {
        let mut server_config = ServerConfig::default();
        server_config.retry = RetryPolicy::Always;
        server_config
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

// ---- floods: the simulator charges each handshake job its real cost ------

/// One handshake job's Diffie-Hellman work on the machines these tests run
/// on (release build: responder read 154 µs, answer 162 µs). The simulator
/// charges it on the node's worker, so a flood meets the real capacity.
const DH_COST: Duration = Duration::from_micros(320);

/// Calls on an established connection, one at a time: open a Critical
/// stream, send 64 bytes, finish, read the echo back.
struct Caller {
    conn: ConnectionHandle,
    current: Option<(mxp::proto::StreamId, usize)>,
    started: u64,
    answered: u64,
}

impl Caller {
    fn new(conn: ConnectionHandle) -> Self {
        Caller {
            conn,
            current: None,
            started: 0,
            answered: 0,
        }
    }

    fn pump(&mut self, net: &mut Network, node: NodeId, more: bool) {
        let Some(c) = net.endpoint(node).connection(self.conn) else {
            return;
        };
        if let Some((id, got)) = &mut self.current {
            loop {
                match c.read(*id, usize::MAX) {
                    Ok(Some(chunk)) => *got += chunk.len(),
                    Ok(None) => {
                        assert_eq!(*got, 64, "the whole echo");
                        self.answered += 1;
                        self.current = None;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        if self.current.is_none() && more {
            if let Ok(id) = c.open(Dir::Bi, Band::Critical) {
                c.write(id, vec![7u8; 64]).unwrap();
                c.finish(id).unwrap();
                self.current = Some((id, 0));
                self.started += 1;
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attack {
    /// Copies of the established client's own (accepted) Initial.
    Replay,
    /// Copies of a valid Initial with one byte flipped inside its Noise
    /// message (so its mac1 no longer verifies).
    CorruptNoise,
    /// The same, with mac1 recomputed: a sender who knows the node's key.
    CorruptNoiseValidMac,
    /// A different valid initiation every time, each from a fresh client key.
    FreshKeys,
}

/// The attacker: 256 ports of one host that never reads its answers.
fn attacker_port(i: u64) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 66], 10_000 + (i % 256) as u16))
}

struct FloodRun {
    initials: u64,
    caller: Caller,
    /// Calls answered in the same virtual time without a flood.
    unflooded_calls: u64,
    before: EndpointStats,
    after: EndpointStats,
    newcomer: Vec<Event>,
}

const FLOOD_TIME: Duration = Duration::from_millis(100);

/// `per_second` Initials of `attack` for [`FLOOD_TIME`] while the
/// established client makes calls and, 20 ms in, a newcomer connects; the
/// node runs with the shipped defaults and pays [`DH_COST`] per job.
fn flood(attack: Attack, per_second: u64) -> FloodRun {
    let mut s = Setup::new(50 + per_second, ideal());
    s.net.set_handshake_cost(DH_COST);
    let tap = wiretap(&mut s.net);
    let (client, server) = (s.client, s.server);
    let server_addr = s.net.addr(server);
    let (c, _) = s.connect();
    let own_initial = first_long(&tap, 0);
    tap.borrow_mut().clear();
    let mac1 = Mac1Key::for_node(&s.server_key);
    let captured = client_initial(&s.net, server_addr, s.server_key);
    let total = per_second * FLOOD_TIME.as_millis() as u64 / 1000;
    let datagrams: Vec<Vec<u8>> = match attack {
        Attack::Replay => vec![own_initial],
        Attack::CorruptNoise => vec![corrupt_mxp_initial(&captured, None)],
        Attack::CorruptNoiseValidMac => vec![corrupt_mxp_initial(&captured, Some(&mac1))],
        Attack::FreshKeys => (0..total)
            .map(|_| client_initial(&s.net, server_addr, s.server_key))
            .collect(),
    };
    let mut echo = EchoServer::default();

    // The same virtual time without the flood: the call rate to keep.
    let mut caller = Caller::new(c);
    let start = s.net.now();
    s.net.run_until(FLOOD_TIME, |net| {
        caller.pump(net, client, true);
        echo.pump(net, server);
        false
    });
    let unflooded_calls = caller.answered;

    let newcomer = s.add_client(
        "10.0.0.3:50000",
        Keypair::generate(),
        TransportConfig::default(),
    );
    let mut newcomer_conn = None;
    let mut newcomer_events = Vec::new();
    let before = s.net.endpoint(server).stats();
    let mut caller = Caller::new(c);
    let start_flood = s.net.now();
    let gap = Duration::from_nanos(1_000_000_000 / per_second);
    let mut sent = 0u64;
    let mut next = start_flood;
    let _ = start;
    s.net
        .run_until(FLOOD_TIME + Duration::from_millis(50), |net| {
            let now = net.now();
            while sent < total && now >= next {
                let d = datagrams[(sent as usize) % datagrams.len()].clone();
                net.inject(attacker_port(sent), server_addr, d);
                sent += 1;
                next += gap;
            }
            if newcomer_conn.is_none() && now >= start_flood + Duration::from_millis(20) {
                newcomer_conn = Some(
                    net.endpoint(newcomer)
                        .connect(now, server_addr, s.server_key)
                        .unwrap(),
                );
            }
            for (_, e) in events_of(net, newcomer) {
                newcomer_events.push(e);
            }
            caller.pump(net, client, now < start_flood + FLOOD_TIME);
            echo.pump(net, server);
            false
        });
    assert_eq!(sent, total);
    let after = s.net.endpoint(server).stats();
    // Nothing the attacker's ports sent was answered with more than three
    // times its bytes.
    for i in 0..256 {
        let a = attacker_port(i);
        let (got, answered) = (
            s.net.traffic(a, server_addr).delivered_bytes,
            s.net.traffic(server_addr, a).sent_bytes,
        );
        assert!(answered <= 3 * got, "{a}: {answered} bytes sent for {got}");
    }
    FloodRun {
        initials: total,
        caller,
        unflooded_calls,
        before,
        after,
        newcomer: newcomer_events,
    }
}

/// Events of `node`, without the server's (which the echo consumes).
fn events_of(net: &mut Network, node: NodeId) -> Vec<(ConnectionHandle, Event)> {
    events(net, node)
}

/// What every flood must leave intact: each call on the established
/// connection answered, at no less than half the unflooded rate, a
/// newcomer connected, and the node's handshake work within its budget.
fn assert_served(run: &FloodRun, what: &str) {
    let c = &run.caller;
    assert_eq!(
        c.started, c.answered,
        "{what}: every established call answered"
    );
    assert!(
        2 * c.answered >= run.unflooded_calls,
        "{what}: {} calls under the flood, {} without",
        c.answered,
        run.unflooded_calls
    );
    assert!(
        run.newcomer.contains(&Event::Connected),
        "{what}: the newcomer connected: {:?}",
        run.newcomer
    );
    let policy = ServerConfig::default();
    let jobs = run.after.handshake_jobs - run.before.handshake_jobs;
    let budget = u64::from(policy.handshake_burst)
        + u64::from(policy.handshake_rate)
            * (FLOOD_TIME + Duration::from_millis(50)).as_millis() as u64
            / 1000;
    assert!(
        jobs <= budget,
        "{what}: {jobs} handshake jobs, budget {budget}"
    );
}

fn delta(run: &FloodRun, field: impl Fn(&EndpointStats) -> u64) -> u64 {
    field(&run.after) - field(&run.before)
}

#[test]
fn copies_of_an_accepted_initial_cost_no_handshake_work() {
    for rate in [10_000, 50_000] {
        let run = flood(Attack::Replay, rate);
        let what = format!("replayed Initial at {rate}/s");
        assert_served(&run, &what);
        assert_eq!(
            delta(&run, |e| e.replayed_initiations),
            run.initials,
            "{what}"
        );
        assert_eq!(
            delta(&run, |e| e.handshake_jobs),
            1,
            "{what}: the newcomer's only"
        );
    }
}

#[test]
fn copies_of_a_corrupted_initial_cost_one_mac_each() {
    for rate in [10_000, 50_000] {
        let run = flood(Attack::CorruptNoise, rate);
        let what = format!("corrupted Initial at {rate}/s");
        assert_served(&run, &what);
        assert_eq!(delta(&run, |e| e.mac_failures), run.initials, "{what}");
        assert_eq!(
            delta(&run, |e| e.handshake_jobs),
            1,
            "{what}: the newcomer's only"
        );
        // The refusal that tells a wrong-key client at once is rate
        // limited, so the node is no reflector.
        let answered = delta(&run, |e| e.mac_failures) - delta(&run, |e| e.refusals_suppressed);
        let limit =
            1000 + 1000 * (FLOOD_TIME + Duration::from_millis(50)).as_millis() as u64 / 1000;
        assert!(answered <= limit, "{what}: {answered} refusals sent");
    }
}

#[test]
fn copies_of_a_corrupted_initial_with_a_valid_mac_cost_one_handshake_job() {
    let run = flood(Attack::CorruptNoiseValidMac, 50_000);
    assert_served(&run, "corrupted, valid mac1");
    assert_eq!(
        delta(&run, |e| e.server_key_mismatches),
        1,
        "the first copy"
    );
    // The others: replays, or retransmissions when they came from the
    // first copy's port.
    let copies = delta(&run, |e| e.replayed_initiations + e.duplicate_initiations);
    assert_eq!(copies, run.initials - 1, "the others");
    assert_eq!(
        delta(&run, |e| e.handshake_jobs),
        2,
        "the first copy and the newcomer"
    );
}

#[test]
fn a_flood_of_fresh_initiations_from_blind_senders_is_asked_to_retry() {
    let run = flood(Attack::FreshKeys, 10_000);
    assert_served(&run, "fresh keys");
    let jobs = delta(&run, |e| e.handshake_jobs);
    let retries = delta(&run, |e| e.retries_sent);
    // The first initiations found the node idle and got work; from then on
    // work was waiting, so every other one was asked to prove its address
    // (one HMAC), which a blind sender cannot.
    assert!(jobs <= 4, "{jobs} handshake jobs");
    assert_eq!(
        retries + jobs,
        run.initials + 2,
        "every flood Initial was worked on or retried (and the newcomer's first, plus its job)"
    );
    assert_eq!(delta(&run, |e| e.invalid_tokens + e.queue_full), 0);
}

#[test]
fn a_flood_that_proves_its_address_cannot_crowd_out_a_newcomer() {
    // 48 real clients in one /24 reconnect as fast as the node lets them:
    // they answer retries, so only the queue's fair share stands between
    // them and the whole handshake budget. The queue is shorter than the
    // crowd, so it is always full.
    let policy = {
        let mut server_config = ServerConfig::default();
        server_config.handshake_queue = 16;
        server_config
    };
    let mut s = Setup::with(70, ideal(), TransportConfig::default(), policy);
    s.net.set_handshake_cost(DH_COST);
    let server = s.server;
    let server_addr = s.net.addr(server);
    let crowd: Vec<NodeId> = (0..48)
        .map(|i| {
            s.add_client(
                &format!("10.66.0.{}:4000", i + 1),
                Keypair::generate(),
                TransportConfig::default(),
            )
        })
        .collect();
    let mut conns: Vec<Option<ConnectionHandle>> = vec![None; crowd.len()];
    let newcomers = [
        s.add_client(
            "10.0.0.3:50000",
            Keypair::generate(),
            TransportConfig::default(),
        ),
        s.add_client(
            "10.66.0.200:50000",
            Keypair::generate(),
            TransportConfig::default(),
        ),
    ];
    let mut newcomer_conns = [None, None];
    let mut asked = [None, None];
    let mut connected = [None, None];
    let start = s.net.now();
    let key = s.server_key;
    let mut crowd_connects = 0u64;
    s.net.run_until(Duration::from_millis(300), |net| {
        let now = net.now();
        for (i, &node) in crowd.iter().enumerate() {
            for (h, e) in events(net, node) {
                if Some(h) == conns[i] && matches!(e, Event::Connected | Event::Drained) {
                    if e == Event::Connected {
                        crowd_connects += 1;
                        net.endpoint(node)
                            .connection(h)
                            .unwrap()
                            .close(now, 0, &b""[..]);
                    }
                    conns[i] = None;
                }
            }
            if conns[i].is_none() && net.endpoint(node).connection_count() == 0 {
                conns[i] = Some(net.endpoint(node).connect(now, server_addr, key).unwrap());
            }
        }
        for k in 0..2 {
            if newcomer_conns[k].is_none() && now >= start + Duration::from_millis(100) {
                asked[k] = Some(now);
                newcomer_conns[k] = Some(
                    net.endpoint(newcomers[k])
                        .connect(now, server_addr, key)
                        .unwrap(),
                );
            }
            for (_, e) in events(net, newcomers[k]) {
                if e == Event::Connected && connected[k].is_none() {
                    connected[k] = Some(now);
                }
            }
        }
        events(net, server);
        false
    });
    let e = s.net.endpoint(server).stats();
    assert!(
        crowd_connects > 100,
        "the crowd kept the node busy ({crowd_connects} handshakes)"
    );
    assert!(
        e.queue_full + e.displaced > 0,
        "the queue was contended: {e:?}"
    );
    let budget = 64 + 1000 * 300 / 1000;
    assert!(
        e.handshake_jobs <= budget,
        "{} jobs, budget {budget}",
        e.handshake_jobs
    );
    for k in 0..2 {
        let at = connected[k].unwrap_or_else(|| panic!("newcomer {k} never connected"));
        let waited = at - asked[k].expect("asked");
        // Served next: within a few handshake jobs of asking, however busy.
        assert!(waited <= 10 * DH_COST, "newcomer {k} waited {waited:?}");
    }
}

#[test]
fn fifty_clients_sharing_one_key_connect_at_the_same_moment_whatever_the_arrival_order() {
    let mut s = Setup::new(80, ideal());
    s.net.set_handshake_cost(DH_COST);
    let (server, server_addr) = (s.server, s.net.addr(s.server));
    let shared = Keypair::generate();
    let n = 50;
    let nodes: Vec<NodeId> = (0..n)
        .map(|i| {
            let node = s.add_client(
                &format!("10.1.{}.{}:7000", i / 200, i % 200 + 1),
                shared.clone(),
                TransportConfig::default(),
            );
            // Later clients are nearer: their (newer) Initials arrive first.
            let addr = s.net.addr(node);
            let link = LinkConfig::ideal(DELAY + Duration::from_micros(10 * (n - i) as u64));
            s.net.set_link(addr, server_addr, link);
            node
        })
        .collect();
    let handles: Vec<ConnectionHandle> = nodes
        .iter()
        .map(|&node| {
            // One microsecond apart: distinct timestamps, same moment.
            s.net.run_for(Duration::from_micros(1));
            s.start_connect(node)
        })
        .collect();
    let mut up = vec![false; n];
    let ok = s.net.run_until(Duration::from_secs(5), |net| {
        for (i, &node) in nodes.iter().enumerate() {
            for (h, e) in events(net, node) {
                assert!(
                    !matches!(e, Event::ConnectionLost { .. }),
                    "client {i}: {e:?}"
                );
                up[i] |= h == handles[i] && e == Event::Connected;
            }
        }
        events(net, server);
        up.iter().all(|&u| u)
    });
    assert!(ok, "connected: {}/{n}", up.iter().filter(|&&u| u).count());
    let e = s.net.endpoint(server).stats();
    assert_eq!(e.handshakes_accepted, n as u64);
    assert_eq!(e.replayed_initiations + e.stale_initiations, 0);
}

#[test]
fn a_client_set_aside_starts_over_at_once_and_connects() {
    // One worker, room for one waiting initiation, slow jobs: of three
    // clients arriving together, the third finds the queue full.
    let policy = {
        let mut server_config = ServerConfig::default();
        server_config.handshake_queue = 1;
        server_config.retry = RetryPolicy::Never;
        server_config
    };
    let mut s = Setup::with(90, ideal(), TransportConfig::default(), policy);
    s.net.set_handshake_cost(Duration::from_millis(2));
    let server = s.server;
    let nodes = [
        s.add_client(
            "10.2.0.1:1",
            Keypair::generate(),
            TransportConfig::default(),
        ),
        s.add_client(
            "10.3.0.1:1",
            Keypair::generate(),
            TransportConfig::default(),
        ),
        s.add_client(
            "10.4.0.1:1",
            Keypair::generate(),
            TransportConfig::default(),
        ),
    ];
    let handles: Vec<_> = nodes.iter().map(|&n| s.start_connect(n)).collect();
    let mut up = [false; 3];
    let start = s.net.now();
    let ok = s.net.run_until(Duration::from_secs(2), |net| {
        for (i, &node) in nodes.iter().enumerate() {
            for (h, e) in events(net, node) {
                up[i] |= h == handles[i] && e == Event::Connected;
            }
        }
        events(net, server);
        up.iter().all(|&u| u)
    });
    assert!(ok, "{up:?}");
    let busy: u64 = nodes
        .iter()
        .map(|&n| s.net.endpoint(n).stats().busy_received)
        .sum();
    assert!(busy >= 1, "someone was set aside");
    assert!(s.net.endpoint(server).stats().queue_full >= 1);
    // Not a timeout: the refused client started over as soon as it heard.
    assert!(
        s.net.now() - start < Duration::from_millis(50),
        "{:?}",
        s.net.now() - start
    );
}

#[test]
fn a_node_that_keeps_refusing_gives_a_client_the_reason_not_a_timeout() {
    let policy = {
        let mut server_config = ServerConfig::default();
        server_config.max_connections = 1;
        server_config
    };
    let transport = {
        let mut transport = TransportConfig::default();
        transport.handshake_timeout = Duration::from_millis(500);
        transport
    };
    let mut s = Setup::with(91, ideal(), transport.clone(), policy);
    s.connect();
    let late = s.add_client("10.0.0.3:1", Keypair::generate(), transport);
    let c = s.start_connect(late);
    let seen = run_to_outcome(&mut s.net, late, c, Duration::from_secs(2));
    assert_eq!(
        lost_reason(&seen),
        Some(ConnectionError::NodeBusy {
            reason: BusyReason::ConnectionLimit
        })
    );
    let refused = s.net.endpoint(s.server).stats().connection_limit;
    // It kept trying, backing off: neither once nor a flood.
    assert!((3..=20).contains(&refused), "{refused} attempts");
}

#[test]
fn one_address_and_one_client_key_get_at_most_their_limit_of_connections() {
    let policy = {
        let mut server_config = ServerConfig::default();
        server_config.max_connections_per_address = 2;
        server_config.max_connections_per_key = 2;
        server_config
    };
    let transport = {
        let mut transport = TransportConfig::default();
        transport.handshake_timeout = Duration::from_millis(300);
        transport
    };
    let busy = Some(ConnectionError::NodeBusy {
        reason: BusyReason::ConnectionLimit,
    });
    let mut s = Setup::with(92, ideal(), transport.clone(), policy);
    // Two connections from 10.0.0.3, each with a key of its own: a third
    // from that address is set aside before any handshake work.
    let mut from_one_host = Vec::new();
    for port in 1..=3 {
        let node = s.add_client(
            &format!("10.0.0.3:{port}"),
            Keypair::generate(),
            transport.clone(),
        );
        let c = s.start_connect(node);
        from_one_host.push((
            node,
            c,
            run_to_outcome(&mut s.net, node, c, Duration::from_secs(1)),
        ));
    }
    let reasons: Vec<_> = from_one_host
        .iter()
        .map(|(_, _, seen)| lost_reason(seen))
        .collect();
    assert_eq!(reasons, [None, None, busy.clone()]);
    let stats = s.net.endpoint(s.server).stats();
    assert!(stats.address_limit >= 1);
    let jobs = stats.handshake_jobs;

    // One key shared by hosts 10.0.0.4-6: the third is set aside once the
    // handshake has shown its key.
    let shared = Keypair::generate();
    let mut outcomes = Vec::new();
    for host in 4..=6 {
        let node = s.add_client(
            &format!("10.0.0.{host}:1"),
            shared.clone(),
            transport.clone(),
        );
        let c = s.start_connect(node);
        outcomes.push(lost_reason(&run_to_outcome(
            &mut s.net,
            node,
            c,
            Duration::from_secs(1),
        )));
    }
    assert_eq!(outcomes, [None, None, busy]);
    let stats = s.net.endpoint(s.server).stats();
    assert!(stats.key_limit >= 1);
    assert!(
        stats.handshake_jobs > jobs + 2,
        "the key is known only after the work"
    );

    // A connection that ends frees its place.
    let (node, c, _) = from_one_host[0];
    let now = s.net.now();
    s.net
        .endpoint(node)
        .connection(c)
        .unwrap()
        .close(now, 0, &b"done"[..]);
    s.net.run_for(Duration::from_secs(1));
    // The node forgets a connection once its events are taken.
    events(&mut s.net, s.server);
    let again = s.add_client("10.0.0.3:9", Keypair::generate(), transport);
    let c = s.start_connect(again);
    let seen = run_to_outcome(&mut s.net, again, c, Duration::from_secs(1));
    assert_eq!(lost_reason(&seen), None);
}

#[test]
fn a_retry_token_buys_one_handshake() {
    let policy = {
        let mut server_config = ServerConfig::default();
        server_config.retry = RetryPolicy::Always;
        server_config
    };
    let mut s = Setup::with(92, ideal(), TransportConfig::default(), policy);
    let tap = wiretap(&mut s.net);
    let (client, server) = (s.client, s.server);
    let (client_addr, server_addr) = (s.net.addr(client), s.net.addr(server));
    let (c, _) = s.connect();
    // The client's second Initial carries the token.
    let with_token = tap
        .borrow()
        .iter()
        .filter(|d| d.from == client_addr && is_long(&d.data, 0))
        .nth(1)
        .unwrap()
        .data
        .clone();
    let Ok(Header::Initial {
        dcid, scid, token, ..
    }) = packet::parse(&with_token)
    else {
        panic!("an Initial");
    };
    let token = token.to_vec();
    s.close_and_forget(c);
    // A new initiation (fresh key) for the same ids, with the used token.
    let keys = Keypair::generate();
    let mut hello = (s.net.unix_time().as_nanos() as u64).to_be_bytes().to_vec();
    mxp::proto::transport_params::TransportParams::from_config(&TransportConfig::default())
        .encode(&mut hello);
    let prologue = packet::handshake_prologue(dcid, scid);
    let (_, msg1) =
        mxp::proto::crypto::handshake::Initiator::start(&keys, &s.server_key, &prologue, &hello)
            .unwrap();
    let mut again = Vec::new();
    packet::write_initial(
        dcid,
        scid,
        &token,
        &msg1,
        &Mac1Key::for_node(&s.server_key),
        &mut again,
    );
    let jobs = s.net.endpoint(server).stats().handshake_jobs;
    s.net.take_outcomes();
    s.net.inject(client_addr, server_addr, again);
    s.net.run_for(Duration::from_millis(1));
    assert_eq!(
        outcomes_at(&mut s.net, server_addr),
        vec![Incoming::Dropped(Refusal::TokenReused)]
    );
    let e = s.net.endpoint(server).stats();
    assert_eq!((e.tokens_reused, e.handshake_jobs), (1, jobs));
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
            initial[1..5].copy_from_slice(&0x4d58_00ffu32.to_be_bytes());
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
