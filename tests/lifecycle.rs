//! How connections end, on the deterministic network: application close
//! with code and reason, draining, idle timeout, keep-alive, and protocol
//! violations by a hand-driven peer — each with its typed
//! [`ConnectionError`]. Everything runs on the virtual clock.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Setup, events, is_long, is_short, wiretap};
use mxp::proto::{
    Band, ConnectionError, ConnectionHandle, Dir, Event, Keypair, ServerConfig, StreamId,
    TransportConfig, TransportError, TransportErrorCode, WriteError,
    crypto::handshake::Initiator,
    crypto::{Mac1Key, SessionSecrets},
    frame::{self, Frame},
    packet::{self, ConnectionId, Header},
    transport_params::TransportParams,
};
use mxp::sim::{LinkConfig, Network, NodeId, TapAction};

const DELAY: Duration = Duration::from_micros(25);

fn ideal() -> LinkConfig {
    LinkConfig::ideal(DELAY)
}

/// Events of one node, with the virtual time each was seen at, collected
/// while the network runs.
#[derive(Default)]
struct Log(Vec<(Instant, ConnectionHandle, Event)>);

impl Log {
    fn pump(&mut self, net: &mut Network, node: NodeId) {
        let now = net.now();
        self.0
            .extend(events(net, node).into_iter().map(|(h, e)| (now, h, e)));
    }

    fn lost(&self) -> Option<(Instant, ConnectionError)> {
        self.0.iter().find_map(|(t, _, e)| match e {
            Event::ConnectionLost { reason } => Some((*t, reason.clone())),
            _ => None,
        })
    }

    fn drained(&self) -> bool {
        self.0.iter().any(|(_, _, e)| *e == Event::Drained)
    }
}

/// Runs until both nodes drained their connections (or `limit` passes).
fn run_until_drained(s: &mut Setup, limit: Duration) -> (Log, Log) {
    let (client, server) = (s.client, s.server);
    let (mut c, mut v) = (Log::default(), Log::default());
    s.net.run_until(limit, |net| {
        c.pump(net, client);
        v.pump(net, server);
        c.drained() && v.drained()
    });
    (c, v)
}

#[test]
fn application_close_reaches_the_peer_with_its_code_and_reason_and_both_ends_drain() {
    let mut s = Setup::new(1, ideal());
    let (c, srv) = s.connect();
    let (client, server) = (s.client, s.server);
    let id = s
        .net
        .endpoint(client)
        .connection(c)
        .unwrap()
        .open(Dir::Bi, Band::Critical)
        .unwrap();
    let now = s.net.now();
    let conn = s.net.endpoint(client).connection(c).unwrap();
    conn.close(now, 42, Bytes::from_static(b"shutting down"));
    assert!(conn.is_closed());
    assert_eq!(
        conn.write(id, Bytes::from_static(b"late")),
        Err(WriteError::ClosedStream)
    );

    let (at_client, at_server) = run_until_drained(&mut s, Duration::from_secs(5));
    let (_, reason) = at_server.lost().expect("the server learns of the close");
    assert_eq!(
        reason,
        ConnectionError::ApplicationClosed {
            code: 42,
            reason: Bytes::from_static(b"shutting down"),
        }
    );
    assert_eq!(
        reason.to_string(),
        "closed by peer: code 42 (shutting down)"
    );
    assert_eq!(
        at_client.lost().map(|(_, r)| r),
        Some(ConnectionError::LocallyClosed)
    );
    assert!(
        at_client.drained() && at_server.drained(),
        "both ends drain"
    );
    assert!(at_server.0.iter().all(|(_, h, _)| *h == srv));
    assert_eq!(
        s.net.endpoint(client).connection_count(),
        0,
        "the client dropped the connection"
    );
    assert_eq!(
        s.net.endpoint(server).connection_count(),
        0,
        "the server dropped the connection"
    );
    // The closing period was short: a few probe timeouts, not the idle timeout.
    assert!(
        s.net.elapsed() < Duration::from_millis(100),
        "drained after {:?}",
        s.net.elapsed()
    );
}

#[test]
fn a_lost_close_is_repeated_when_the_peer_keeps_sending() {
    let mut s = Setup::new(2, ideal());
    let (c, srv) = s.connect();
    let (client, server) = (s.client, s.server);
    let client_addr = s.net.addr(client);
    // The first packet the closing client sends (its close) is lost.
    let mut armed = true;
    s.net.add_tap(move |d| {
        if armed && d.from == client_addr {
            armed = false;
            return TapAction::Drop;
        }
        TapAction::Pass
    });
    let now = s.net.now();
    s.net
        .endpoint(client)
        .connection(c)
        .unwrap()
        .close(now, 7, Bytes::from_static(b"bye"));
    // The server, unaware, sends something; the client answers it with the
    // close again.
    let conn = s.net.endpoint(server).connection(srv).unwrap();
    let id = conn.open(Dir::Uni, Band::Critical).unwrap();
    conn.write(id, Bytes::from_static(b"are you there?"))
        .unwrap();
    let (_, at_server) = run_until_drained(&mut s, Duration::from_secs(5));
    let reason = at_server.lost().map(|(_, r)| r);
    assert_eq!(
        reason,
        Some(ConnectionError::ApplicationClosed {
            code: 7,
            reason: Bytes::from_static(b"bye")
        })
    );
}

#[test]
fn a_server_close_reaches_the_client_too() {
    let mut s = Setup::new(3, ideal());
    let (_, srv) = s.connect();
    let now = s.net.now();
    s.net
        .endpoint(s.server)
        .connection(srv)
        .unwrap()
        .close(now, 0, Bytes::new());
    let (at_client, at_server) = run_until_drained(&mut s, Duration::from_secs(5));
    let reason = at_client.lost().map(|(_, r)| r);
    assert_eq!(
        reason,
        Some(ConnectionError::ApplicationClosed {
            code: 0,
            reason: Bytes::new()
        })
    );
    assert_eq!(reason.unwrap().to_string(), "closed by peer: code 0");
    assert_eq!(
        at_server.lost().map(|(_, r)| r),
        Some(ConnectionError::LocallyClosed)
    );
}

/// A setup whose link can be cut; returns it connected.
fn with_idle(
    client: TransportConfig,
    server: TransportConfig,
    seed: u64,
) -> (Setup, ConnectionHandle, NodeId) {
    let mut s = Setup::with(seed, ideal(), server, ServerConfig::default());
    // A second client with its own settings (the setup's client shares the
    // server's).
    let node = s.add_client("10.0.0.3:50000", Keypair::generate(), client);
    let (c, _) = s.connect_from(node);
    (s, c, node)
}

#[test]
fn idle_timeout_ends_both_ends_with_timed_out_when_the_link_dies() {
    let idle = {
        let mut transport = TransportConfig::default();
        transport.idle_timeout = Duration::from_secs(1);
        transport
    };
    let (mut s, c, client) = with_idle(idle.clone(), idle, 4);
    s.net.run_for(Duration::from_millis(10));
    // Cut the link both ways.
    s.net.add_tap(|_| TapAction::Drop);
    let cut = s.net.now();
    let server = s.server;
    let (mut at_client, mut at_server) = (Log::default(), Log::default());
    s.net.run_until(Duration::from_secs(5), |net| {
        at_client.pump(net, client);
        at_server.pump(net, server);
        at_client.drained() && at_server.drained()
    });
    for (side, log) in [("client", &at_client), ("server", &at_server)] {
        let (at, reason) = log
            .lost()
            .unwrap_or_else(|| panic!("{side}: no ConnectionLost"));
        assert_eq!(reason, ConnectionError::TimedOut, "{side}");
        // Nothing was heard after the cut, and nothing for the 10 ms the
        // connection sat idle before it.
        let waited = at - cut;
        assert!(
            waited >= Duration::from_millis(990) && waited <= Duration::from_secs(1),
            "{side}: timed out {waited:?} after the cut"
        );
        assert!(log.drained(), "{side} drained");
    }
    assert!(s.net.endpoint(client).connection_ref(c).is_none());
    assert_eq!(s.net.endpoint(server).connection_count(), 0);
}

#[test]
fn the_shorter_idle_timeout_of_the_two_ends_applies_to_both() {
    let short = {
        let mut transport = TransportConfig::default();
        transport.idle_timeout = Duration::from_millis(500);
        transport
    };
    let long = {
        let mut transport = TransportConfig::default();
        transport.idle_timeout = Duration::from_secs(20);
        transport
    };
    let (mut s, _, client) = with_idle(long, short, 5);
    let server = s.server;
    let start = s.net.now();
    let (mut at_client, mut at_server) = (Log::default(), Log::default());
    s.net.run_until(Duration::from_secs(30), |net| {
        at_client.pump(net, client);
        at_server.pump(net, server);
        at_client.drained() && at_server.drained()
    });
    for log in [&at_client, &at_server] {
        let (at, reason) = log.lost().expect("timed out");
        assert_eq!(reason, ConnectionError::TimedOut);
        let after = at - start;
        assert!(
            after >= Duration::from_millis(499) && after <= Duration::from_millis(501),
            "timed out after {after:?}"
        );
    }
}

#[test]
fn keep_alive_keeps_an_idle_connection_open_past_the_idle_timeout() {
    let idle = {
        let mut transport = TransportConfig::default();
        transport.idle_timeout = Duration::from_secs(1);
        transport
    };
    let keep_alive = {
        let mut transport = idle.clone();
        transport.keep_alive_interval = Some(Duration::from_millis(300));
        transport
    };
    // Keep-alive on both ends, on the client only, on the server only.
    let cases = [
        ("both ends", keep_alive.clone(), keep_alive.clone()),
        ("client only", keep_alive.clone(), idle.clone()),
        ("server only", idle.clone(), keep_alive.clone()),
    ];
    for (seed, (what, client_config, server_config)) in cases.into_iter().enumerate() {
        let (mut s, c, client) = with_idle(client_config, server_config, 10 + seed as u64);
        let server = s.server;
        let sent_before = s
            .net
            .endpoint(client)
            .connection_ref(c)
            .unwrap()
            .stats()
            .packets_sent;
        let (mut at_client, mut at_server) = (Log::default(), Log::default());
        // Ten idle timeouts of silence from the application.
        s.net.run_until(Duration::from_secs(10), |net| {
            at_client.pump(net, client);
            at_server.pump(net, server);
            false
        });
        assert_eq!(at_client.lost(), None, "{what}: client lost the connection");
        assert_eq!(at_server.lost(), None, "{what}: server lost the connection");
        let conn = s.net.endpoint(client).connection_ref(c).unwrap();
        assert!(conn.is_established(), "{what}");
        // A PING every 300 ms, and little else.
        let sent = conn.stats().packets_sent - sent_before;
        assert!(
            sent <= 2 * 34 + 4,
            "{what}: {sent} keep-alive packets in 10 s"
        );
    }
}

#[test]
fn without_keep_alive_the_same_idle_connection_times_out() {
    let idle = {
        let mut transport = TransportConfig::default();
        transport.idle_timeout = Duration::from_secs(1);
        transport
    };
    let (mut s, _, client) = with_idle(idle.clone(), idle, 20);
    let mut at_client = Log::default();
    s.net.run_until(Duration::from_secs(10), |net| {
        at_client.pump(net, client);
        at_client.drained()
    });
    assert_eq!(
        at_client.lost().map(|(_, r)| r),
        Some(ConnectionError::TimedOut)
    );
}

// ---- protocol violations, from a hand-driven peer ----------------------------

/// A client driven by hand: it runs the real Noise handshake against the
/// server, then sends whatever frames a test wants, even illegal ones.
struct RawClient {
    addr: SocketAddr,
    server: SocketAddr,
    server_cid: ConnectionId,
    secrets: SessionSecrets,
    next_pn: u64,
    largest_received: Option<u64>,
}

impl RawClient {
    /// Completes the handshake with the server of `s`.
    fn connect(s: &mut Setup, addr: &str) -> RawClient {
        let addr: SocketAddr = addr.parse().unwrap();
        let server = s.net.addr(s.server);
        let tap = wiretap(&mut s.net);
        let keys = Keypair::generate();
        let (dcid, scid) = (ConnectionId::random(), ConnectionId::random());
        // ClientHello: timestamp (ns since the Unix epoch, big-endian), then
        // our transport parameters.
        let mut hello = (s.net.unix_time().as_nanos() as u64).to_be_bytes().to_vec();
        TransportParams::from_config(&TransportConfig::default()).encode(&mut hello);
        let prologue = packet::handshake_prologue(dcid, scid);
        let (initiator, msg1) = Initiator::start(&keys, &s.server_key, &prologue, &hello).unwrap();
        let mut initial = Vec::new();
        let mac1 = Mac1Key::for_node(&s.server_key);
        packet::write_initial(dcid, scid, &[], &msg1, &mac1, &mut initial);
        s.net.inject(addr, server, initial);
        s.net.run_for(Duration::from_millis(1));
        let answer = tap
            .borrow()
            .iter()
            .find(|d| d.to == addr && is_long(&d.data, 1))
            .expect("an answer")
            .data
            .clone();
        let Ok(Header::Handshake {
            scid: server_cid,
            noise,
            ..
        }) = packet::parse(&answer)
        else {
            panic!("not a handshake answer")
        };
        let (secrets, payload) = initiator
            .finish(noise)
            .expect("the server's answer decrypts");
        assert_eq!(payload[0], 0, "accepted");
        assert_eq!(&payload[1..9], &server_cid.0[..]);
        RawClient {
            addr,
            server,
            server_cid,
            secrets,
            next_pn: 0,
            largest_received: None,
        }
    }

    /// Protects `frames` in one short packet and sends it.
    fn send(&mut self, net: &mut Network, frames: &[Frame]) {
        let mut buf = Vec::new();
        let pn = self.next_pn;
        self.next_pn += 1;
        packet::write_short_header(self.server_cid, pn, 4, false, &mut buf);
        for f in frames {
            f.encode(&mut buf);
        }
        self.send_raw(net, buf, pn);
    }

    /// Like `send`, with already encoded frame bytes.
    fn send_bytes(&mut self, net: &mut Network, payload: &[u8]) {
        let mut buf = Vec::new();
        let pn = self.next_pn;
        self.next_pn += 1;
        packet::write_short_header(self.server_cid, pn, 4, false, &mut buf);
        buf.extend_from_slice(payload);
        self.send_raw(net, buf, pn);
    }

    fn send_raw(&mut self, net: &mut Network, mut buf: Vec<u8>, pn: u64) {
        let (key, hp) = (
            self.secrets.local.packet_key(),
            self.secrets.local.header_key(),
        );
        packet::seal_short(&mut buf, 0, pn, &key, &hp);
        net.inject(self.addr, self.server, buf);
    }

    /// Opens a datagram the server sent us; returns its frames.
    fn open(&mut self, datagram: &[u8]) -> Vec<Frame> {
        let mut data = datagram.to_vec();
        let (key, hp) = (
            self.secrets.remote.packet_key(),
            self.secrets.remote.header_key(),
        );
        let opened = packet::open_short(&mut data, self.largest_received, &hp).expect("header");
        let range = packet::open_payload(&mut data, &opened, &key).expect("authentic");
        self.largest_received = Some(opened.pn.max(self.largest_received.unwrap_or(0)));
        frame::Iter::new(Bytes::copy_from_slice(&data[range]))
            .collect::<Result<_, _>>()
            .expect("frames parse")
    }
}

/// Connects a raw client, proves its address, then sends `violation`.
/// Returns the server's typed error and the close frame it sent us.
fn violate(
    seed: u64,
    violation: impl FnOnce(&mut RawClient, &mut Network),
) -> (ConnectionError, frame::Close, u64) {
    let mut s = Setup::new(seed, ideal());
    let server = s.server;
    let tap = wiretap(&mut s.net);
    let mut raw = RawClient::connect(&mut s, "10.0.0.7:7777");
    raw.send(&mut s.net, &[Frame::Ping]);
    s.net.run_for(Duration::from_millis(1));
    let connected = events(&mut s.net, server);
    let h = connected
        .iter()
        .find(|(_, e)| *e == Event::Connected)
        .expect("the raw client is connected")
        .0;
    let seen = tap.borrow().len();

    violation(&mut raw, &mut s.net);
    let mut log = Log::default();
    s.net.run_until(Duration::from_secs(1), |net| {
        log.pump(net, server);
        log.lost().is_some()
    });
    let (_, reason) = log.lost().expect("the server closed the connection");
    assert!(log.0.iter().all(|(_, handle, _)| *handle == h));
    let protocol_errors = s
        .net
        .endpoint(server)
        .connection_ref(h)
        .map_or(0, |c| c.stats().protocol_errors);
    s.net.run_for(Duration::from_millis(1));
    let to_us: Vec<Vec<u8>> = tap.borrow()[seen..]
        .iter()
        .filter(|d| d.to == raw.addr && is_short(&d.data))
        .map(|d| d.data.clone())
        .collect();
    let close = to_us
        .iter()
        .flat_map(|d| raw.open(d))
        .find_map(|f| match f {
            Frame::Close(c) => Some(c),
            _ => None,
        })
        .expect("the server told us why");
    (reason, close, protocol_errors)
}

fn transport_error(reason: &ConnectionError) -> &TransportError {
    match reason {
        ConnectionError::TransportError(e) => e,
        other => panic!("expected a transport error, got {other:?}"),
    }
}

#[test]
fn acknowledging_a_packet_never_sent_is_a_protocol_violation() {
    let (reason, close, errors) = violate(30, |raw, net| {
        let ack = frame::Ack {
            largest: 1000,
            delay_us: 0,
            ranges: vec![1000..=1000],
        };
        raw.send(net, &[Frame::Ack(ack)]);
    });
    let e = transport_error(&reason);
    assert_eq!(e.code, TransportErrorCode::PROTOCOL_VIOLATION);
    assert_eq!(e.frame_type, Some(frame::types::ACK));
    assert_eq!(close.error_code, TransportErrorCode::PROTOCOL_VIOLATION.0);
    assert_eq!(errors, 1);
}

#[test]
fn sending_beyond_the_flow_control_window_is_a_flow_control_error() {
    let window = TransportConfig::default().stream_receive_window;
    let (reason, close, _) = violate(31, |raw, net| {
        let id = StreamId::new(mxp::proto::Side::Client, Dir::Uni, 0);
        let data = Frame::Stream(frame::Stream {
            id,
            offset: window,
            fin: false,
            data: Bytes::from_static(b"one byte too far"),
        });
        raw.send(net, &[data]);
    });
    assert_eq!(
        transport_error(&reason).code,
        TransportErrorCode::FLOW_CONTROL_ERROR
    );
    assert_eq!(close.error_code, TransportErrorCode::FLOW_CONTROL_ERROR.0);
}

#[test]
fn an_undecodable_frame_is_a_frame_encoding_error() {
    // 0x3e: a frame type nobody defined.
    let (reason, close, _) = violate(32, |raw, net| {
        raw.send_bytes(net, &[0x3e, 0x00, 0x00, 0x00])
    });
    assert_eq!(
        transport_error(&reason).code,
        TransportErrorCode::FRAME_ENCODING_ERROR
    );
    assert_eq!(close.error_code, TransportErrorCode::FRAME_ENCODING_ERROR.0);
}

#[test]
fn a_transport_close_from_the_peer_is_typed_with_its_code_frame_and_reason() {
    let mut s = Setup::new(33, ideal());
    let server = s.server;
    let mut raw = RawClient::connect(&mut s, "10.0.0.8:8888");
    raw.send(&mut s.net, &[Frame::Ping]);
    s.net.run_for(Duration::from_millis(1));
    let h = events(&mut s.net, server)
        .into_iter()
        .find(|(_, e)| *e == Event::Connected)
        .expect("connected")
        .0;
    let close = frame::Close {
        kind: frame::CloseKind::Transport {
            frame_type: frame::types::STREAM,
        },
        error_code: TransportErrorCode::FLOW_CONTROL_ERROR.0,
        reason: Bytes::from_static(b"you sent too much"),
    };
    raw.send(&mut s.net, &[Frame::Close(close)]);
    let mut log = Log::default();
    s.net.run_until(Duration::from_secs(1), |net| {
        log.pump(net, server);
        log.drained()
    });
    let (_, reason) = log.lost().expect("the server learns why");
    assert_eq!(
        reason,
        ConnectionError::TransportError(TransportError {
            code: TransportErrorCode::FLOW_CONTROL_ERROR,
            frame_type: Some(frame::types::STREAM),
            reason: "you sent too much".into(),
        })
    );
    assert_eq!(reason.kind(), "transport_error");
    assert!(
        reason.to_string().contains("FLOW_CONTROL_ERROR"),
        "{reason}"
    );
    assert!(log.drained());
    assert!(s.net.endpoint(server).connection_ref(h).is_none());
    // A peer's report is not our protocol error.
    assert_eq!(s.net.endpoint(server).stats().handshakes_accepted, 1);
}
