//! The packet engine under attack, on the deterministic network: packet and
//! header protection, tampering, replay, anti-amplification, coalescing and
//! key rotation. Each test states one rule of the protocol and checks it
//! exactly, on the virtual clock.

mod common;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{
    Digest, EchoServer, Receiver, Sender, Setup, client_initial, events, first_long, is_long,
    is_short, wiretap,
};
use mxp::proto::{
    Band, ConnectionHandle, ConnectionStats, Dir, EndpointStats, Event, Incoming, KeyRotation,
    Keypair, RetryPolicy, ServerConfig, StreamEvent, StreamId, TransportConfig,
    message::{Message, MessageType},
    packet::{self, MIN_INITIAL_SIZE, SHORT_PN_OFFSET},
};
use mxp::sim::{Datagram, LinkConfig, Network, NodeId, TapAction};

const SPOOFED: &str = "192.0.2.66:40000";

fn ideal() -> LinkConfig {
    LinkConfig::ideal(Duration::from_micros(25))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn stats(net: &mut Network, node: NodeId, h: ConnectionHandle) -> ConnectionStats {
    net.endpoint(node)
        .connection_ref(h)
        .expect("connection alive")
        .stats()
}

/// Every way a connection refuses a datagram it was handed.
fn conn_refusals(s: &ConnectionStats) -> u64 {
    s.decrypt_failures
        + s.malformed_packets
        + s.duplicate_packets
        + s.old_packets
        + s.dropped_packets
}

/// Every way an endpoint refuses a datagram before it reaches a connection.
fn endpoint_refusals(s: &EndpointStats) -> u64 {
    s.datagrams_refused() + s.retries_sent
}

/// Snapshot of one side's refusal counters and accepted packets.
#[derive(Debug, Clone, Copy)]
struct Counters {
    refused: u64,
    received: u64,
}

fn counters(net: &mut Network, node: NodeId, h: ConnectionHandle) -> Counters {
    let c = stats(net, node, h);
    let e = net.endpoint(node).stats();
    Counters {
        refused: conn_refusals(&c) + endpoint_refusals(&e),
        received: c.packets_received,
    }
}

/// Small deterministic generator for garbage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Sends `total` bytes from `from` to `to` on one stream and waits until
/// all arrived and the stream finished. Returns (sent, received) digests.
fn transfer(
    net: &mut Network,
    from: NodeId,
    conn: ConnectionHandle,
    to: NodeId,
    total: u64,
    limit: Duration,
) -> (Digest, Digest) {
    let mut sender = Sender::open(net, from, conn, 1, total, Band::Streaming);
    let mut receiver = Receiver::default();
    let done = net.run_until(limit, |net| {
        sender.pump(net, from, conn);
        receiver.pump(net, to);
        !receiver.finished.is_empty()
    });
    assert!(done, "transfer of {total} bytes did not finish");
    let id = sender.streams[0].0;
    (sender.digests[&id], receiver.digests[&id])
}

/// Client and server connected over an ideal link.
fn connected(seed: u64) -> (Setup, ConnectionHandle, ConnectionHandle) {
    let mut s = Setup::new(seed, ideal());
    let (c, srv) = s.connect();
    (s, c, srv)
}

type Shared<T> = Rc<RefCell<T>>;

/// Drops (and keeps) the first datagram `pick` selects once armed.
fn capture_and_drop(
    net: &mut Network,
    pick: impl Fn(&Datagram) -> bool + 'static,
) -> (Shared<bool>, Shared<Vec<Vec<u8>>>) {
    let armed = Rc::new(RefCell::new(false));
    let caught = Rc::new(RefCell::new(Vec::new()));
    let (a, k) = (armed.clone(), caught.clone());
    net.add_tap(move |d| {
        if *a.borrow() && pick(d) {
            *a.borrow_mut() = false;
            k.borrow_mut().push(d.data.clone());
            return TapAction::Drop;
        }
        TapAction::Pass
    });
    (armed, caught)
}

// ---- packet protection ---------------------------------------------------

#[test]
fn application_bytes_never_appear_on_the_wire() {
    const CANARY: &[u8; 32] = b"MXP-CANARY-PLAINTEXT-0123456789!";
    let (mut s, c, _) = connected(1);
    s.net.record();
    let (client, server) = (s.client, s.server);
    let payload: Vec<u8> = CANARY.iter().copied().cycle().take(64 * 1024).collect();
    let conn = s.net.endpoint(client).connection(c).unwrap();
    let id = conn.open(Dir::Bi, Band::Critical).unwrap();
    assert_eq!(conn.write(id, payload.clone()).unwrap(), payload.len());
    conn.finish(id).unwrap();
    conn.send_datagram(Bytes::from_static(CANARY), Band::Critical)
        .unwrap();

    let mut echo = EchoServer::default();
    let mut back = Vec::new();
    let mut got_datagram = false;
    let done = s.net.run_until(Duration::from_secs(5), |net| {
        echo.pump(net, server);
        for (h, e) in events(net, client) {
            if e == Event::DatagramReceived {
                got_datagram |= net
                    .endpoint(client)
                    .connection(h)
                    .unwrap()
                    .recv_datagram()
                    .as_deref()
                    == Some(&CANARY[..]);
            }
        }
        let conn = net.endpoint(client).connection(c).unwrap();
        while let Ok(Some(chunk)) = conn.read(id, usize::MAX) {
            back.extend_from_slice(&chunk);
        }
        back.len() == payload.len() && got_datagram
    });
    assert!(done, "the echo did not come back");
    assert_eq!(back, payload, "the canary really travelled, both ways");

    // Any 12 consecutive bytes of the repeating canary, at every phase.
    let needles: Vec<Vec<u8>> = (0..CANARY.len())
        .map(|i| CANARY.iter().cycle().skip(i).take(12).copied().collect())
        .collect();
    let log = s.net.log();
    assert!(log.len() > 90, "the transfer took {} datagrams", log.len());
    for (_, d, _) in log {
        for needle in &needles {
            assert!(
                !d.data.windows(needle.len()).any(|w| w == &needle[..]),
                "plaintext {:?} visible in a {}-byte datagram from {}",
                String::from_utf8_lossy(needle),
                d.data.len(),
                d.from
            );
        }
    }
}

#[test]
fn packet_numbers_and_flag_bits_are_masked_on_the_wire() {
    let (mut s, c, _) = connected(2);
    let tap = wiretap(&mut s.net);
    let (client, server) = (s.client, s.server);
    let (client_addr, server_addr) = (s.net.addr(client), s.net.addr(server));
    let id = s
        .net
        .endpoint(client)
        .connection(c)
        .unwrap()
        .open(Dir::Bi, Band::Critical)
        .unwrap();
    let mut echo = EchoServer::default();
    // One message per round trip: one packet each way per message, packet
    // numbers counting up by one.
    for i in 0..300u32 {
        let conn = s.net.endpoint(client).connection(c).unwrap();
        conn.write(id, Bytes::from(i.to_le_bytes().to_vec()))
            .unwrap();
        s.net.run_for(Duration::from_micros(300));
        echo.pump(&mut s.net, server);
        let conn = s.net.endpoint(client).connection(c).unwrap();
        while let Ok(Some(_)) = conn.read(id, usize::MAX) {}
    }
    for (from, to) in [(client_addr, server_addr), (server_addr, client_addr)] {
        let shorts: Vec<Vec<u8>> = tap
            .borrow()
            .iter()
            .filter(|d| d.from == from && d.to == to && is_short(&d.data))
            .map(|d| d.data.clone())
            .collect();
        assert!(
            shorts.len() >= 300,
            "{} short packets from {from}",
            shorts.len()
        );
        // The n-th short packet of a direction has packet number n (the
        // handshake packet numbers are in the long headers' Noise messages).
        // In the clear its low byte would be n itself.
        let visible = shorts
            .iter()
            .enumerate()
            .filter(|(n, p)| p[SHORT_PN_OFFSET] == *n as u8)
            .count();
        assert!(
            visible <= 8,
            "{visible} of {} packet-number bytes readable from {from}",
            shorts.len()
        );
        let steps = shorts
            .windows(2)
            .filter(|w| w[1][SHORT_PN_OFFSET] == w[0][SHORT_PN_OFFSET].wrapping_add(1))
            .count();
        assert!(
            steps <= 8,
            "{steps} consecutive +1 steps visible from {from}"
        );
        // Key phase, packet-number length and reserved bits: unmasked they
        // would take two or three values; masked, about all 32.
        let mut flags: Vec<u8> = shorts.iter().map(|p| p[0] & 0x1f).collect();
        flags.sort_unstable();
        flags.dedup();
        assert!(
            flags.len() >= 16,
            "only {} distinct flag patterns from {from}",
            flags.len()
        );
    }
}

// ---- tampering -------------------------------------------------------------

#[test]
fn every_corrupted_or_truncated_copy_of_a_short_packet_is_rejected() {
    let (mut s, c, srv) = connected(3);
    let (client, server) = (s.client, s.server);
    let (client_addr, server_addr) = (s.net.addr(client), s.net.addr(server));
    // Take one data-carrying client packet off the wire: the server never
    // sees the original, so its packet number is fresh there.
    let (armed, caught) = capture_and_drop(&mut s.net, move |d| {
        d.from == client_addr && is_short(&d.data) && d.data.len() > 600
    });
    *armed.borrow_mut() = true;
    let (sent, received) = transfer(&mut s.net, client, c, server, 1000, Duration::from_secs(2));
    assert_eq!(sent, received);
    let original = caught.borrow()[0].clone();
    s.net.run_for(Duration::from_millis(50)); // let the ACKs settle

    let before = counters(&mut s.net, server, srv);
    let mut copies = Vec::new();
    for i in 0..original.len() {
        for bit in 0..8 {
            let mut bad = original.clone();
            bad[i] ^= 1 << bit;
            copies.push(bad);
        }
    }
    for len in 0..original.len() {
        copies.push(original[..len].to_vec());
    }
    let n = copies.len() as u64;
    for copy in copies {
        s.net.inject(client_addr, server_addr, copy);
    }
    s.net.run_for(Duration::from_millis(5));
    let after = counters(&mut s.net, server, srv);
    assert_eq!(
        after.received, before.received,
        "a tampered copy was accepted"
    );
    assert_eq!(
        after.refused - before.refused,
        n,
        "every tampered copy is refused and counted"
    );
    let cs = stats(&mut s.net, server, srv);
    assert!(cs.decrypt_failures > 0 && s.net.endpoint(server).stats().malformed > 0);

    // The forgeries did not poison the replay window: the untouched packet,
    // arriving late, is still accepted (its data is a harmless duplicate).
    s.net.inject(client_addr, server_addr, original.clone());
    s.net.run_for(Duration::from_millis(5));
    assert_eq!(
        counters(&mut s.net, server, srv).received,
        after.received + 1
    );
    // And a second copy of it is a replay.
    s.net.inject(client_addr, server_addr, original);
    s.net.run_for(Duration::from_millis(5));
    assert_eq!(
        stats(&mut s.net, server, srv).duplicate_packets,
        cs.duplicate_packets + 1
    );

    assert!(
        s.net
            .endpoint(server)
            .connection_ref(srv)
            .unwrap()
            .is_established()
    );
    let (sent, received) = transfer(
        &mut s.net,
        client,
        c,
        server,
        200_000,
        Duration::from_secs(5),
    );
    assert_eq!(sent, received, "the connection still carries data");
}

#[test]
fn corrupted_and_truncated_long_header_packets_are_refused() {
    let server_config = {
        let mut server_config = ServerConfig::default();
        server_config.retry = RetryPolicy::Never;
        server_config.handshake_burst = 1_000_000;
        server_config.handshake_rate = 1_000_000;
        server_config
    };
    let mut s = Setup::with(4, ideal(), TransportConfig::default(), server_config);
    let tap = wiretap(&mut s.net);
    let (c, srv) = s.connect();
    let (client, server) = (s.client, s.server);
    let (client_addr, server_addr, spoofed) =
        (s.net.addr(client), s.net.addr(server), addr(SPOOFED));
    let initial = first_long(&tap, 0);
    let answer = first_long(&tap, 1);
    assert!(initial.len() >= MIN_INITIAL_SIZE);

    // The client's Initial, corrupted bit by bit (every bit of the header
    // and Noise message, one bit per padding byte) and cut at every length,
    // sent to the server from another address.
    let packet::Header::Initial { noise, .. } = packet::parse(&initial).unwrap() else {
        panic!("not an Initial")
    };
    let meaningful = packet::LONG_HEADER_LEN + 2 + noise.len() + mxp::proto::crypto::MAC1_LEN;
    let mut copies = Vec::new();
    for i in 0..initial.len() {
        for bit in 0..8 {
            if i < meaningful || bit == (i % 8) {
                let mut bad = initial.clone();
                bad[i] ^= 1 << bit;
                copies.push(bad);
            }
        }
    }
    for len in 0..initial.len() {
        copies.push(initial[..len].to_vec());
    }
    let n = copies.len() as u64;
    let before = counters(&mut s.net, server, srv);
    let accepted = s.net.endpoint(server).stats().handshakes_accepted;
    for copy in copies {
        s.net.inject(spoofed, server_addr, copy);
    }
    s.net.run_for(Duration::from_millis(5));
    let after = counters(&mut s.net, server, srv);
    assert_eq!(
        after.refused - before.refused,
        n,
        "every corrupted Initial is refused and counted"
    );
    assert_eq!(s.net.endpoint(server).stats().handshakes_accepted, accepted);
    assert_eq!(
        s.net.endpoint(server).connection_count(),
        1,
        "no connection for a corrupted Initial"
    );
    let e = s.net.endpoint(server).stats();
    assert!(e.mac_failures > 0 && e.replayed_initiations > 0 && e.initials_too_small > 0);
    let (asked, answered) = (
        s.net.traffic(spoofed, server_addr),
        s.net.traffic(server_addr, spoofed),
    );
    assert!(answered.sent_bytes <= 3 * asked.delivered_bytes);

    // The server's answer, corrupted and cut, sent to the established client.
    let mut copies = Vec::new();
    for i in 0..answer.len() {
        for bit in 0..8 {
            let mut bad = answer.clone();
            bad[i] ^= 1 << bit;
            copies.push(bad);
        }
    }
    for len in 0..answer.len() {
        copies.push(answer[..len].to_vec());
    }
    copies.push(answer.clone());
    let n = copies.len() as u64;
    let before = counters(&mut s.net, client, c);
    for copy in copies {
        s.net.inject(server_addr, client_addr, copy);
    }
    s.net.run_for(Duration::from_millis(5));
    let after = counters(&mut s.net, client, c);
    assert_eq!(after.received, before.received);
    assert_eq!(
        after.refused - before.refused,
        n,
        "every stray handshake answer is refused and counted"
    );

    assert!(
        s.net
            .endpoint(client)
            .connection_ref(c)
            .unwrap()
            .is_established()
    );
    let (sent, received) = transfer(
        &mut s.net,
        client,
        c,
        server,
        100_000,
        Duration::from_secs(5),
    );
    assert_eq!(sent, received, "the connection still carries data");
}

#[test]
fn random_garbage_is_refused_without_harm() {
    let (mut s, c, srv) = connected(5);
    let tap = wiretap(&mut s.net);
    let (client, server) = (s.client, s.server);
    let (client_addr, server_addr) = (s.net.addr(client), s.net.addr(server));
    let (sent, received) = transfer(
        &mut s.net,
        client,
        c,
        server,
        10_000,
        Duration::from_secs(2),
    );
    assert_eq!(sent, received);
    s.net.run_for(Duration::from_millis(50));
    // Connection ids, so some garbage reaches each connection's decryption.
    let server_cid = tap
        .borrow()
        .iter()
        .find(|d| d.to == server_addr && is_short(&d.data))
        .unwrap()
        .data[1..9]
        .to_vec();
    let client_cid = tap
        .borrow()
        .iter()
        .find(|d| d.to == client_addr && is_short(&d.data))
        .unwrap()
        .data[1..9]
        .to_vec();

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let before = [
        counters(&mut s.net, server, srv),
        counters(&mut s.net, client, c),
    ];
    s.net.record();
    for i in 0..3000 {
        let to_server = i % 3 != 2;
        let len = rng.below(1500) as usize;
        let mut data = rng.bytes(len);
        match (i / 3) % 4 {
            // A short header for the real connection: reaches decryption.
            0 if len > 9 => {
                data[0] = 0x40 | (data[0] & 0x1f);
                data[1..9].copy_from_slice(if to_server { &server_cid } else { &client_cid });
            }
            // A long header of our version: reaches the handshake code.
            1 if len > 5 => {
                data[0] = 0xc0 | (data[0] & 0x30);
                data[1..5].copy_from_slice(&packet::VERSION.to_be_bytes());
            }
            _ => {}
        }
        let from = if rng.below(2) == 0 {
            if to_server { client_addr } else { server_addr }
        } else {
            SocketAddr::from((
                [198, 51, 100, rng.below(250) as u8 + 1],
                1024 + rng.below(60000) as u16,
            ))
        };
        let to = if to_server { server_addr } else { client_addr };
        s.net.inject(from, to, data);
    }
    s.net.run_for(Duration::from_millis(5));
    let after = [
        counters(&mut s.net, server, srv),
        counters(&mut s.net, client, c),
    ];
    for (side, to) in [server_addr, client_addr].into_iter().enumerate() {
        // The garbage, and the stateless answers the server gave to garbage
        // that claimed to come from the client.
        let delivered = s
            .net
            .log()
            .iter()
            .filter(|(_, d, ok)| *ok && d.to == to)
            .count() as u64;
        assert!(delivered >= 1000);
        assert_eq!(
            after[side].received, before[side].received,
            "garbage accepted by {to}"
        );
        assert_eq!(
            after[side].refused - before[side].refused,
            delivered,
            "garbage not counted by {to}"
        );
    }
    assert_eq!(s.net.endpoint(server).connection_count(), 1);
    let (sent, received) = transfer(
        &mut s.net,
        client,
        c,
        server,
        100_000,
        Duration::from_secs(5),
    );
    assert_eq!(sent, received, "the connection still carries data");
}

// ---- replay ----------------------------------------------------------------

#[test]
fn replayed_packets_are_dropped_and_the_application_never_sees_data_twice() {
    // A long fat link and windows to fill it: the transfer takes a few
    // round trips, so replays overlap it, and thousands of packets are in
    // flight, so packet numbers travel with two bytes and old ones decode
    // unambiguously.
    let config = {
        let mut transport = TransportConfig::default();
        transport.initial_window = 4 << 20;
        transport.stream_receive_window = 8 << 20;
        transport
    };
    let link = LinkConfig::ideal(Duration::from_millis(2));
    let mut s = Setup::with(6, link, config, ServerConfig::default());
    let (c, srv) = s.connect();
    let tap = wiretap(&mut s.net);
    let (client, server) = (s.client, s.server);
    let (client_addr, server_addr) = (s.net.addr(client), s.net.addr(server));
    let total = 6 << 20;
    let mut sender = Sender::open(&mut s.net, client, c, 1, total, Band::Streaming);
    let mut receiver = Receiver::default();
    let mut replays = 0u64;
    let mut next_replay = s.net.now();
    let done = s.net.run_until(Duration::from_secs(10), |net| {
        sender.pump(net, client, c);
        receiver.pump(net, server);
        // Every 100 µs, replay the three newest client packets, which may
        // still be in flight: one of each pair (original, copy) is a
        // duplicate.
        if net.now() >= next_replay {
            next_replay = net.now() + Duration::from_micros(100);
            let recent: Vec<Vec<u8>> = tap
                .borrow()
                .iter()
                .rev()
                .filter(|d| d.from == client_addr && is_short(&d.data))
                .take(3)
                .map(|d| d.data.clone())
                .collect();
            for p in recent {
                net.inject(client_addr, server_addr, p);
                replays += 1;
            }
        }
        !receiver.finished.is_empty()
    });
    assert!(done);
    s.net.run_for(Duration::from_millis(20));
    receiver.pump(&mut s.net, server);
    let id = sender.streams[0].0;
    assert_eq!(
        receiver.digests[&id], sender.digests[&id],
        "every byte exactly once"
    );
    assert_eq!(receiver.digests[&id].1, total);
    let st = stats(&mut s.net, server, srv);
    assert!(replays > 100, "{replays} replays in {:?}", s.net.elapsed());
    assert_eq!(
        st.duplicate_packets, replays,
        "each replay (or its original) is a counted duplicate"
    );

    // Long after: the newest packets are duplicates, older ones (sent
    // mid-transfer, more than the window's 2048 packets ago) are too old to
    // judge. None is accepted, each is counted.
    let client_packets: Vec<Vec<u8>> = tap
        .borrow()
        .iter()
        .filter(|d| d.from == client_addr && is_short(&d.data))
        .map(|d| d.data.clone())
        .collect();
    assert!(
        client_packets.len() > 1100 + 2048,
        "{} client packets",
        client_packets.len()
    );
    let before = stats(&mut s.net, server, srv);
    for p in client_packets.iter().rev().take(100) {
        s.net.inject(client_addr, server_addr, p.clone());
    }
    s.net.run_for(Duration::from_millis(5));
    let mid = stats(&mut s.net, server, srv);
    assert_eq!(mid.duplicate_packets - before.duplicate_packets, 100);
    for p in client_packets.iter().skip(1000).take(100) {
        s.net.inject(client_addr, server_addr, p.clone());
    }
    s.net.run_for(Duration::from_millis(5));
    let after = stats(&mut s.net, server, srv);
    assert_eq!(
        after.packets_received, before.packets_received,
        "a replay was accepted"
    );
    assert_eq!(
        after.old_packets - mid.old_packets,
        100,
        "every old replay is refused as too old"
    );
    assert_eq!(conn_refusals(&after) - conn_refusals(&mid), 100);
    receiver.pump(&mut s.net, server);
    assert_eq!(
        receiver.digests[&id], sender.digests[&id],
        "replays delivered nothing"
    );
}

// ---- anti-amplification ----------------------------------------------------

/// A server application that starts writing a large greeting to every
/// connection as soon as it is accepted, before the client proved its
/// address: the worst case for amplification.
fn eager_server(net: &mut Network, server: NodeId, greeted: &mut Vec<ConnectionHandle>) {
    for (_, outcome) in net.take_outcomes() {
        if let Incoming::Accepted(h) = outcome {
            if greeted.contains(&h) {
                continue;
            }
            greeted.push(h);
            if let Some(conn) = net.endpoint(server).connection(h) {
                let id = conn.open(Dir::Uni, Band::Streaming).unwrap();
                let n = conn.write(id, vec![0x5a; 256 * 1024]).unwrap();
                assert!(n > 0);
            }
        }
    }
}

#[test]
fn a_spoofed_initial_gets_at_most_three_times_its_bytes_back() {
    let mut s = Setup::new(7, ideal());
    let server = s.server;
    let server_addr = s.net.addr(server);
    let spoofed = addr(SPOOFED);
    let mut greeted = Vec::new();
    // The victim never answers. The attacker sends one Initial, then the
    // same one again several times, then Initials of other clients.
    let initial = client_initial(&s.net, server_addr, s.server_key);
    let mut sends = vec![initial.clone(); 6];
    for _ in 0..4 {
        sends.push(client_initial(&s.net, server_addr, s.server_key));
    }
    for (k, datagram) in sends.into_iter().enumerate() {
        s.net.inject(spoofed, server_addr, datagram);
        let until = s.net.now() + Duration::from_millis(300);
        s.net.run_until(Duration::from_secs(1), |net| {
            eager_server(net, server, &mut greeted);
            let got = net.traffic(spoofed, server_addr).delivered_bytes;
            let sent = net.traffic(server_addr, spoofed).sent_bytes;
            assert!(
                sent <= 3 * got,
                "after Initial {k}: {sent} bytes sent for {got} received"
            );
            net.now() >= until
        });
        assert!(
            s.net.traffic(server_addr, spoofed).sent_bytes > 0,
            "the server did answer"
        );
    }
    assert_eq!(greeted.len(), 5, "one connection per distinct initiation");
    // Long after, nothing more went out (timeouts do not send either).
    s.net.run_for(Duration::from_secs(12));
    events(&mut s.net, server);
    let got = s.net.traffic(spoofed, server_addr).delivered_bytes;
    let sent = s.net.traffic(server_addr, spoofed).sent_bytes;
    assert!(sent <= 3 * got, "{sent} bytes sent for {got} received");
    // The budget was actually used, so the limit is what held the server back.
    assert!(
        sent > 2 * got,
        "the server sent only {sent} bytes of its {} budget",
        3 * got
    );
    assert_eq!(
        s.net.endpoint(server).connection_count(),
        0,
        "unconfirmed connections expire"
    );
}

/// Checks the recorded log: until the first client short-header packet
/// reaches the server, at every moment the server has sent the client at
/// most three times the bytes it received from it.
fn assert_amplification_bound(net: &Network, client: SocketAddr, server: SocketAddr, what: &str) {
    // (time, order, bytes received by the server, bytes sent by it);
    // deliveries come before sends at the same instant, as in the network.
    let mut events: Vec<(Instant, u8, u64, u64, bool)> = Vec::new();
    for (at, d, delivered) in net.log() {
        if d.from == client && d.to == server && *delivered {
            events.push((*at, 0, d.data.len() as u64, 0, is_short(&d.data)));
        } else if d.from == server && d.to == client {
            events.push((d.sent, 1, 0, d.data.len() as u64, false));
        }
    }
    events.sort_by_key(|e| (e.0, e.1));
    let (mut received, mut sent, mut answers) = (0u64, 0u64, 0);
    for (_, _, r, s, validates) in events {
        if validates {
            assert!(answers > 0, "{what}: the client proved its address");
            return;
        }
        received += r;
        sent += s;
        answers += usize::from(s > 0);
        assert!(
            sent <= 3 * received,
            "{what}: {sent} bytes sent for {received} received"
        );
    }
    panic!("{what}: no client short packet ever reached the server");
}

#[test]
fn handshakes_over_lossy_links_never_exceed_three_times_before_validation() {
    type Scenario = (&'static str, u32, u32, u32);
    // (name, client Initials lost, server answers lost, client short packets lost)
    let scenarios: [Scenario; 5] = [
        ("clean", 0, 0, 0),
        ("first two Initials lost", 2, 0, 0),
        ("first server answer lost", 0, 1, 0),
        ("first client short packets lost", 0, 0, 4),
        ("everything lost at first", 2, 2, 3),
    ];
    for (seed, &(name, initials, answers, shorts)) in scenarios.iter().enumerate() {
        let mut s = Setup::new(100 + seed as u64, ideal());
        s.net.record();
        let (client, server) = (s.client, s.server);
        let (client_addr, server_addr) = (s.net.addr(client), s.net.addr(server));
        let budget = Rc::new(RefCell::new((initials, answers, shorts)));
        let b = budget.clone();
        s.net.add_tap(move |d| {
            let mut b = b.borrow_mut();
            let counter = if d.from == client_addr && is_long(&d.data, 0) {
                &mut b.0
            } else if d.from == server_addr && is_long(&d.data, 1) {
                &mut b.1
            } else if d.from == client_addr && is_short(&d.data) {
                &mut b.2
            } else {
                return TapAction::Pass;
            };
            if *counter > 0 {
                *counter -= 1;
                TapAction::Drop
            } else {
                TapAction::Pass
            }
        });
        let c = s.start_connect(client);
        let mut greeted = Vec::new();
        let mut server_up = false;
        let mut client_up = false;
        let ok = s.net.run_until(Duration::from_secs(10), |net| {
            eager_server(net, server, &mut greeted);
            for (h, e) in events(net, client) {
                client_up |= h == c && e == Event::Connected;
            }
            for (_, e) in events(net, server) {
                server_up |= e == Event::Connected;
            }
            client_up && server_up
        });
        assert!(ok, "{name}: handshake did not complete");
        assert_eq!(
            *budget.borrow(),
            (0, 0, 0),
            "{name}: every planned loss happened"
        );
        assert_amplification_bound(&s.net, client_addr, server_addr, name);
        if shorts > 0 {
            let blocked = stats(&mut s.net, server, greeted[0]).amplification_blocked;
            assert!(blocked > 0, "{name}: the eager server was held back");
        }
    }
}

#[test]
fn retry_and_reject_answers_are_at_most_three_times_their_trigger() {
    let server_config = {
        let mut server_config = ServerConfig::default();
        server_config.retry = RetryPolicy::Always;
        server_config
    };
    let mut s = Setup::with(8, ideal(), TransportConfig::default(), server_config);
    s.net.record();
    let server_addr = s.net.addr(s.server);
    let wrong_key = Keypair::generate().public();
    let retry_trigger = client_initial(&s.net, server_addr, s.server_key);
    let key_trigger = client_initial(&s.net, server_addr, wrong_key);
    let mut version_trigger = client_initial(&s.net, server_addr, s.server_key);
    version_trigger[1..5].copy_from_slice(&0x0bad_0001u32.to_be_bytes());
    let mut undersized = client_initial(&s.net, server_addr, s.server_key);
    undersized.truncate(MIN_INITIAL_SIZE - 1);
    let triggers: [(&str, Vec<u8>, Option<u8>); 3] = [
        ("retry", retry_trigger, Some(2)),
        ("version reject", version_trigger, Some(3)),
        ("undersized Initial", undersized, None),
    ];
    for (k, (what, trigger, answer_type)) in triggers.into_iter().enumerate() {
        let from = SocketAddr::from(([203, 0, 113, k as u8 + 1], 7000));
        s.net.inject(from, server_addr, trigger.clone());
        s.net.run_for(Duration::from_millis(5));
        let answers: Vec<Vec<u8>> = s
            .net
            .log()
            .iter()
            .filter(|(_, d, _)| d.to == from)
            .map(|(_, d, _)| d.data.clone())
            .collect();
        match answer_type {
            Some(ty) => {
                assert_eq!(answers.len(), 1, "{what}: one answer");
                assert!(is_long(&answers[0], ty), "{what}: answer of type {ty}");
                assert!(
                    answers[0].len() <= 3 * trigger.len(),
                    "{what}: {} bytes for {}",
                    answers[0].len(),
                    trigger.len()
                );
            }
            None => assert!(answers.is_empty(), "{what}: must not be answered"),
        }
    }
    // The wrong-key Initial: its mac1 does not verify, so the node says so
    // at once, without a retry round trip and without any DH work.
    let from: SocketAddr = "203.0.113.9:7000".parse().unwrap();
    s.net.inject(from, server_addr, key_trigger.clone());
    s.net.run_for(Duration::from_millis(5));
    let reject = s
        .net
        .log()
        .iter()
        .rev()
        .find(|(_, d, _)| d.to == from)
        .unwrap()
        .1
        .data
        .clone();
    assert!(is_long(&reject, 3), "a key-mismatch Reject");
    assert!(reject.len() <= 3 * key_trigger.len());
    let e = s.net.endpoint(s.server).stats();
    assert_eq!((e.mac_failures, e.handshake_jobs), (1, 0));
    assert_eq!(
        (e.retries_sent, e.version_mismatches, e.initials_too_small),
        (1, 1, 1)
    );
    assert!(e.stateless_bytes_sent <= 3 * e.bytes_received);
}

// ---- coalescing ------------------------------------------------------------

#[test]
fn dozens_of_small_messages_share_packets() {
    let (mut s, c, _) = connected(9);
    let (client, server) = (s.client, s.server);
    s.net.run_for(Duration::from_millis(10));
    const MESSAGES: usize = 48;
    // Ways of writing 48 messages of 64 bytes back to back: on one stream,
    // one stream each, as datagrams.
    for how in ["one stream", "a stream each", "datagrams"] {
        let before = stats(&mut s.net, client, c);
        let conn = s.net.endpoint(client).connection(c).unwrap();
        let one = conn.open(Dir::Uni, Band::Critical).unwrap();
        for i in 0..MESSAGES {
            let msg = vec![i as u8; 64];
            match how {
                "one stream" => assert_eq!(conn.write(one, msg).unwrap(), 64),
                "a stream each" => {
                    let id = conn.open(Dir::Uni, Band::Critical).unwrap();
                    assert_eq!(conn.write(id, msg).unwrap(), 64);
                    conn.finish(id).unwrap();
                }
                _ => conn.send_datagram(msg, Band::Critical).unwrap(),
            }
        }
        conn.finish(one).unwrap();
        let mut bytes = 0usize;
        let mut datagrams = 0;
        let done = s.net.run_until(Duration::from_secs(1), |net| {
            let mut readable = Vec::new();
            for (h, e) in events(net, server) {
                match e {
                    Event::Stream(StreamEvent::Opened { dir }) => {
                        while let Some(id) = net.endpoint(server).connection(h).unwrap().accept(dir)
                        {
                            readable.push((h, id));
                        }
                    }
                    Event::Stream(StreamEvent::Readable { id }) => readable.push((h, id)),
                    Event::DatagramReceived => {
                        while net
                            .endpoint(server)
                            .connection(h)
                            .unwrap()
                            .recv_datagram()
                            .is_some()
                        {
                            datagrams += 1;
                        }
                    }
                    _ => {}
                }
            }
            for (h, id) in readable {
                let conn = net.endpoint(server).connection(h).unwrap();
                while let Ok(Some(chunk)) = conn.read(id, usize::MAX) {
                    bytes += chunk.len();
                }
            }
            bytes == MESSAGES * 64 || datagrams == MESSAGES
        });
        assert!(done, "{how}: not all messages arrived");
        s.net.run_for(Duration::from_millis(10));
        let after = stats(&mut s.net, client, c);
        let data_packets = (after.packets_sent - before.packets_sent)
            - (after.ack_only_packets - before.ack_only_packets);
        // 3 KiB of messages fit in three full packets; allow one more for
        // frame overhead.
        assert!(
            data_packets <= 4,
            "{how}: {MESSAGES} messages took {data_packets} packets"
        );
    }
}

// ---- key rotation ----------------------------------------------------------

fn rotating(packets: u64, interval: Duration) -> TransportConfig {
    {
        let mut transport = TransportConfig::default();
        transport.key_rotation = KeyRotation { packets, interval };
        // Rotating every hundred packets at the simulator's rates is far
        // faster than a peer may by default.
        transport.peer_key_update_rate = 1_000_000;
        transport
    }
}

#[test]
fn keys_rotate_every_hundred_packets_across_a_lossy_reordering_transfer() {
    let link = LinkConfig {
        jitter: Duration::from_micros(40),
        loss: 0.01,
        reorder: 0.05,
        duplicate: 0.01,
        ..LinkConfig::ideal(Duration::from_micros(100))
    };
    let config = rotating(100, Duration::from_secs(60));
    let mut s = Setup::with(10, link, config, ServerConfig::default());
    let tap = wiretap(&mut s.net);
    let (c, srv) = s.connect();
    let (client, server) = (s.client, s.server);
    let (client_addr, server_addr) = (s.net.addr(client), s.net.addr(server));
    // Both directions at once: 3 MiB up, 1 MiB down.
    let mut up = Sender::open(&mut s.net, client, c, 1, 3 << 20, Band::Streaming);
    let mut down = Sender::open(&mut s.net, server, srv, 1, 1 << 20, Band::Streaming);
    let (mut at_server, mut at_client) = (Receiver::default(), Receiver::default());
    let done = s.net.run_until(Duration::from_secs(20), |net| {
        up.pump(net, client, c);
        down.pump(net, server, srv);
        at_server.pump(net, server);
        at_client.pump(net, client);
        !at_server.finished.is_empty() && !at_client.finished.is_empty()
    });
    assert!(done, "transfer did not finish");
    let (up_id, down_id) = (up.streams[0].0, down.streams[0].0);
    assert_eq!(at_server.digests[&up_id], up.digests[&up_id]);
    assert_eq!(at_client.digests[&down_id], down.digests[&down_id]);
    let (cs, ss) = (stats(&mut s.net, client, c), stats(&mut s.net, server, srv));
    assert!(cs.packets_lost > 0, "the link did lose packets");
    // Rotating every 100 packets sent, each end rotating first or following.
    assert!(
        cs.key_updates >= cs.packets_sent / 200,
        "client rotated {} times in {} packets",
        cs.key_updates,
        cs.packets_sent
    );
    assert!(
        ss.key_updates >= ss.packets_sent / 200,
        "server rotated {} times",
        ss.key_updates
    );
    // No packet lost across a switch: everything authentic decrypted.
    assert_eq!((cs.decrypt_failures, ss.decrypt_failures), (0, 0));

    // The very first client data packet, replayed now, is refused.
    s.net.run_for(Duration::from_millis(50));
    let first = tap
        .borrow()
        .iter()
        .find(|d| d.from == client_addr && is_short(&d.data))
        .unwrap()
        .data
        .clone();
    let before = stats(&mut s.net, server, srv);
    s.net.inject(client_addr, server_addr, first);
    s.net.run_for(Duration::from_millis(5));
    let after = stats(&mut s.net, server, srv);
    assert_eq!(after.packets_received, before.packets_received);
    assert_eq!(conn_refusals(&after), conn_refusals(&before) + 1);
}

#[test]
fn a_packet_under_old_keys_is_refused_once_the_grace_period_is_over() {
    // Rotate by time, so few packets pass between capture and replay and
    // the packet number itself stays unambiguous.
    let config = rotating(u64::MAX, Duration::from_millis(20));
    let mut s = Setup::with(11, ideal(), config, ServerConfig::default());
    let (c, srv) = s.connect();
    let (client, server) = (s.client, s.server);
    let (client_addr, server_addr) = (s.net.addr(client), s.net.addr(server));
    let (armed, caught) = capture_and_drop(&mut s.net, move |d| {
        d.from == client_addr && is_short(&d.data) && d.data.len() > 100
    });
    let id = s
        .net
        .endpoint(client)
        .connection(c)
        .unwrap()
        .open(Dir::Uni, Band::Critical)
        .unwrap();
    let send = |s: &mut Setup, byte: u8| {
        s.net
            .endpoint(client)
            .connection(c)
            .unwrap()
            .write(id, vec![byte; 200])
            .unwrap();
        s.net.run_for(Duration::from_millis(2));
    };
    // Two generation-0 packets taken off the wire.
    for byte in [1, 2] {
        *armed.borrow_mut() = true;
        send(&mut s, byte);
    }
    assert_eq!(caught.borrow().len(), 2);
    assert_eq!(stats(&mut s.net, client, c).key_updates, 0);
    // Past the interval, the next packet rotates the client; the server
    // follows on receipt.
    s.net.run_for(Duration::from_millis(20));
    s.net
        .endpoint(client)
        .connection(c)
        .unwrap()
        .write(id, vec![3; 200])
        .unwrap();
    s.net.run_for(Duration::from_micros(40));
    assert_eq!(stats(&mut s.net, client, c).key_updates, 1);
    assert_eq!(stats(&mut s.net, server, srv).key_updates, 1);

    // Within the grace period a straggler of the old generation is fine...
    let before = stats(&mut s.net, server, srv);
    s.net
        .inject(client_addr, server_addr, caught.borrow()[1].clone());
    s.net.run_for(Duration::from_micros(40));
    let mid = stats(&mut s.net, server, srv);
    assert_eq!(
        mid.packets_received,
        before.packets_received + 1,
        "a straggler within the grace period is accepted"
    );
    // ...long after, the old keys are gone.
    s.net.run_for(Duration::from_millis(200));
    s.net
        .inject(client_addr, server_addr, caught.borrow()[0].clone());
    s.net.run_for(Duration::from_millis(1));
    let after = stats(&mut s.net, server, srv);
    assert_eq!(
        after.packets_received, mid.packets_received,
        "old keys still accepted"
    );
    assert_eq!(after.decrypt_failures, mid.decrypt_failures + 1);
    // The connection itself is unharmed.
    let (sent, received) = transfer(
        &mut s.net,
        client,
        c,
        server,
        50_000,
        Duration::from_secs(2),
    );
    assert_eq!(sent, received);
}

// ---- acknowledgements and tail loss ----------------------------------------

/// Hands the next datagram `from` sends at `now` straight to `to`,
/// bypassing the network (so no time passes). Returns whether there was one.
fn hand_carry(net: &mut Network, from: NodeId, to: NodeId, now: Instant) -> bool {
    let mut buf = Vec::new();
    let Some(t) = net.endpoint(from).poll_transmit(now, &mut buf) else {
        return false;
    };
    let from_addr = net.addr(from);
    net.endpoint(to)
        .handle(now, from_addr, BytesMut::from(&buf[buf.len() - t.size..]));
    true
}

/// Writes one MXP message of `kind` and `len` payload bytes on a fresh
/// stream in the message type's band, and finishes the stream.
fn send_message(
    net: &mut Network,
    node: NodeId,
    h: ConnectionHandle,
    kind: MessageType,
    len: usize,
) -> (StreamId, Vec<u8>) {
    let wire = Message::new(kind, vec![kind as u8; len])
        .to_bytes()
        .expect("encodes");
    let conn = net.endpoint(node).connection(h).unwrap();
    let id = conn.open(Dir::Uni, kind.band()).unwrap();
    assert_eq!(conn.write(id, wire.clone()), Ok(wire.len()));
    conn.finish(id).unwrap();
    (id, wire.to_vec())
}

/// ACK-only packets `node` has sent on `h` so far.
fn acks_only(net: &mut Network, node: NodeId, h: ConnectionHandle) -> u64 {
    stats(net, node, h).ack_only_packets
}

/// Client and server connected over an ideal link, with nothing left to
/// send or acknowledge on either side.
fn settled(seed: u64, link: LinkConfig) -> (Setup, ConnectionHandle, ConnectionHandle) {
    let mut s = Setup::new(seed, link);
    let (c, srv) = s.connect();
    s.net.run_for(Duration::from_millis(10));
    let (client, server, now) = (s.client, s.server, s.net.now());
    assert!(!hand_carry(&mut s.net, client, server, now), "client idle");
    assert!(!hand_carry(&mut s.net, server, client, now), "server idle");
    (s, c, srv)
}

#[test]
fn a_critical_packet_is_acknowledged_at_once_and_others_only_after_max_ack_delay() {
    let (mut s, c, srv) = settled(31, ideal());
    let (client, server) = (s.client, s.server);
    let max_ack_delay = TransportConfig::default().max_ack_delay;
    let one_ns = Duration::from_nanos(1);
    for kind in [
        MessageType::Call,
        MessageType::Response,
        MessageType::StreamChunk,
        MessageType::Event,
    ] {
        let net = &mut s.net;
        let now = net.now();
        let before = acks_only(net, server, srv);
        send_message(net, client, c, kind, 200);
        assert!(hand_carry(net, client, server, now), "{kind:?} leaves");
        assert!(!hand_carry(net, client, server, now), "in one packet");
        assert!(stats(net, client, c).bytes_in_flight > 0);

        if kind.band() == Band::Critical {
            // The receiver's very next poll, at the same instant, is the ACK.
            assert!(
                hand_carry(net, server, client, now),
                "{kind:?} is acknowledged without any time passing"
            );
        } else {
            assert!(
                !hand_carry(net, server, client, now),
                "{kind:?} ({:?}) is not acknowledged at once",
                kind.band()
            );
            assert_eq!(
                net.endpoint(server).poll_timeout(),
                Some(now + max_ack_delay),
                "the ACK timer is max_ack_delay after arrival"
            );
            net.run_for(max_ack_delay - one_ns);
            assert_eq!(
                acks_only(net, server, srv),
                before,
                "no ACK a nanosecond before max_ack_delay"
            );
            net.run_for(one_ns);
            assert_eq!(net.now(), now + max_ack_delay);
        }
        assert_eq!(
            acks_only(net, server, srv),
            before + 1,
            "{kind:?}: exactly one ACK-only packet"
        );
        net.run_for(Duration::from_millis(1));
        assert_eq!(
            stats(net, client, c).bytes_in_flight,
            0,
            "{kind:?}: the ACK covered the message"
        );
        assert_eq!(acks_only(net, server, srv), before + 1, "and no other");
        events(net, server);
    }
}

#[test]
fn a_burst_of_non_critical_packets_is_acknowledged_every_threshold_packets_without_waiting() {
    let (mut s, c, srv) = settled(32, ideal());
    let (client, server) = (s.client, s.server);
    let config = TransportConfig::default();
    let threshold = u64::from(config.ack_eliciting_threshold);
    assert_eq!(threshold, 2);
    let net = &mut s.net;
    let now = net.now();
    let before = acks_only(net, server, srv);
    // Nine packets' worth of bulk data in the Streaming band, all sent and
    // received at the same instant.
    let (_, wire) = send_message(net, client, c, MessageType::StreamChunk, 9 * 1400);
    let mut packets = 0;
    while hand_carry(net, client, server, now) {
        packets += 1;
        let acked = hand_carry(net, server, client, now);
        assert_eq!(
            acked,
            packets % threshold == 0,
            "data packet {packets}: an ACK at once exactly every {threshold} packets"
        );
    }
    assert!(
        packets as usize >= wire.len().div_ceil(1452) && packets % threshold == 1,
        "an odd burst of several packets ({packets}) went out at once"
    );
    assert_eq!(acks_only(net, server, srv), before + packets / threshold);
    // The odd one out is acknowledged within max_ack_delay, not later.
    assert_eq!(
        net.endpoint(server).poll_timeout(),
        Some(now + config.max_ack_delay)
    );
    net.run_for(config.max_ack_delay);
    assert_eq!(
        acks_only(net, server, srv),
        before + packets / threshold + 1
    );
    net.run_for(Duration::from_millis(1));
    assert_eq!(stats(net, client, c).bytes_in_flight, 0);
}

#[test]
fn a_lost_tail_packet_is_probed_and_delivered_within_a_millisecond_at_microsecond_rtts() {
    // 15 µs each way: a 30 µs round trip, as inside a datacenter.
    let one_way = Duration::from_micros(15);
    for kind in [MessageType::Call, MessageType::StreamChunk] {
        let (mut s, c, srv) = settled(33, LinkConfig::ideal(one_way));
        let (client, server) = (s.client, s.server);
        let (client_addr, server_addr) = (s.net.addr(client), s.net.addr(server));
        let net = &mut s.net;
        assert_eq!(
            net.endpoint(client).connection_ref(c).unwrap().rtt(),
            2 * one_way
        );
        events(net, server);
        let sent = net.now();
        let (id, wire) = send_message(net, client, c, kind, 4000);
        // Every packet of the message, as the client sends it now.
        let mut packets = Vec::new();
        loop {
            let mut buf = Vec::new();
            let Some(t) = net.endpoint(client).poll_transmit(sent, &mut buf) else {
                break;
            };
            packets.push(buf[buf.len() - t.size..].to_vec());
        }
        assert!(packets.len() >= 3, "{kind:?}: {} packets", packets.len());
        // All but the last reach the server; the last is lost.
        packets.pop();
        for p in packets {
            net.inject(client_addr, server_addr, p);
        }
        let before = stats(net, client, c);
        let mut got = Vec::new();
        let mut complete = false;
        let delivered = net.run_until(Duration::from_millis(5), |net| {
            let conn = net.endpoint(server).connection(srv).unwrap();
            while conn.accept(Dir::Uni).is_some() {}
            loop {
                match conn.read(id, usize::MAX) {
                    Ok(Some(chunk)) => got.extend_from_slice(&chunk),
                    Ok(None) => {
                        complete = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            complete
        });
        assert!(delivered, "{kind:?}: the tail never arrived");
        assert_eq!(got, wire, "{kind:?}: byte-exact");
        let took = net.now() - sent;
        assert!(
            took < Duration::from_millis(1),
            "{kind:?}: tail loss repaired after {took:?} of virtual time"
        );
        assert!(took > 4 * one_way, "{kind:?}: it took a probe: {took:?}");
        let after = stats(net, client, c);
        assert_eq!(
            after.probes - before.probes,
            1,
            "{kind:?}: one probe timeout"
        );
        assert!(after.retransmitted_frames > before.retransmitted_frames);
    }
}
