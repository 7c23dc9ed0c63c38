//! A peer that completed the handshake and then misbehaves, on the exact
//! in-process network: for each attack, the limit that holds and the
//! counter that shows it. What the node's allocator keeps is measured with
//! the allocation counter of tests/allocations.rs (one test at a time, so
//! the count is this test's alone).

mod common;

use std::alloc::System;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use common::{SERVER, Setup};
use mxp::proto::frame::{self, Frame};
use mxp::proto::{
    Band, Connection, ConnectionError, ConnectionHandle, DATAGRAM_ENTRY_COST, Dir, INJECT_MAX,
    ServerConfig, Side, StreamId, TransportConfig, TransportErrorCode, WriteError,
};
use mxp::sim::{LinkConfig, Network, NodeId, TapAction};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static HEAP: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocation counts are process-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn conn(net: &mut Network, node: NodeId, h: ConnectionHandle) -> &mut Connection {
    net.endpoint(node)
        .connection(h)
        .expect("connection is alive")
}

fn setup(transport: TransportConfig) -> (Setup, ConnectionHandle, ConnectionHandle) {
    let mut s = Setup::with(
        7,
        LinkConfig::ideal(Duration::from_micros(20)),
        transport,
        ServerConfig::default(),
    );
    let (c, h) = s.connect();
    (s, c, h)
}

/// Bytes allocated and not freed while `f` ran.
fn retained(f: impl FnOnce()) -> i64 {
    let region = Region::new(HEAP);
    f();
    let change = region.change();
    // Growth by reallocation is already in both byte counts.
    change.bytes_allocated as i64 - change.bytes_deallocated as i64
}

/// Injects `batches` packets' worth of frames from `make`, letting the
/// network run between them; stops early once the node closes.
fn flood(
    s: &mut Setup,
    c: ConnectionHandle,
    h: ConnectionHandle,
    batches: usize,
    mut make: impl FnMut(&mut Connection) -> Bytes,
) {
    let (client, server) = (s.client, s.server);
    for _ in 0..batches {
        let Some(cc) = s.net.endpoint(client).connection(c) else {
            return;
        };
        let batch = make(cc);
        assert!(cc.inject_frames(batch), "a batch fits a packet");
        s.net.run_for(Duration::from_micros(50));
        // The simulator's record of every delivery is the harness's, not
        // the node's.
        s.net.take_outcomes();
        let alive = s
            .net
            .endpoint(server)
            .connection(h)
            .is_some_and(|sc| sc.error().is_none());
        if !alive {
            return;
        }
    }
    s.net.run_for(Duration::from_millis(5));
    s.net.take_outcomes();
}

/// The error the node closed with, if it did.
fn node_error(s: &mut Setup, h: ConnectionHandle) -> Option<ConnectionError> {
    s.net
        .endpoint(s.server)
        .connection(h)
        .and_then(|c| c.error().cloned())
}

fn transport_code(e: Option<ConnectionError>) -> Option<TransportErrorCode> {
    match e? {
        ConnectionError::TransportError(t) => Some(t.code),
        _ => None,
    }
}

fn one_byte_frames(next: &mut u64) -> Bytes {
    let mut out = Vec::new();
    while out.len() + 16 <= INJECT_MAX {
        Frame::Stream(frame::Stream {
            id: StreamId::new(Side::Client, Dir::Bi, 0),
            offset: 1 + 2 * *next,
            fin: false,
            data: Bytes::from_static(b"x"),
        })
        .encode(&mut out);
        *next += 1;
    }
    Bytes::from(out)
}

#[test]
fn scattered_one_byte_segments_cost_their_span_and_too_many_close_the_connection() {
    let _serial = serial();
    let (mut s, c, h) = setup(TransportConfig::default());
    let mut next = 0u64;
    // 10,000 one-byte frames at odd offsets, offset 0 never sent: what the
    // node keeps is the span they cover (20 kB) and a range per piece.
    let kept = retained(|| flood(&mut s, c, h, 10_000 / 150, |_| one_byte_frames(&mut next)));
    assert!(node_error(&mut s, h).is_none(), "closed too early");
    assert!(
        kept < 10_000 * 100,
        "{kept} bytes kept for {next} one-byte segments"
    );
    // Past the connection's cap on pieces the node closes the connection.
    flood(&mut s, c, h, 200, |_| one_byte_frames(&mut next));
    assert_eq!(
        transport_code(node_error(&mut s, h)),
        Some(TransportErrorCode::PROTOCOL_VIOLATION),
        "after {next} segments"
    );
    let stats = s.net.endpoint(s.server).totals().0;
    assert_eq!(stats.peer_limits.fragmented, 1);
}

fn empty_datagrams(_: &mut Connection) -> Bytes {
    let mut out = Vec::new();
    while out.len() + 2 <= INJECT_MAX {
        frame::encode_datagram_header(0, true, &mut out);
    }
    Bytes::from(out)
}

#[test]
fn empty_datagrams_fill_a_bounded_queue_and_are_refused_where_disabled() {
    let _serial = serial();
    let (mut s, c, h) = setup(TransportConfig::default());
    // 60,000 empty datagrams that the application never reads.
    let kept = retained(|| flood(&mut s, c, h, 100, empty_datagrams));
    let server = s.server;
    let mut queued = 0;
    while conn(&mut s.net, server, h).recv_datagram().is_some() {
        queued += 1;
    }
    let stats = conn(&mut s.net, server, h).stats().datagrams;
    assert_eq!(queued, 4096, "{} received", stats.received);
    assert_eq!(stats.dropped_recv, stats.received - 4096);
    assert!(
        kept < 4096 * (DATAGRAM_ENTRY_COST as i64 + 64),
        "{kept} bytes kept"
    );
    // Full, it stays full: more of the same costs nothing more.
    let more = retained(|| flood(&mut s, c, h, 100, empty_datagrams));
    assert!(more < 16 * 1024, "{more} more bytes kept");

    // Where datagrams are disabled, the first one closes the connection.
    let (mut s, c, h) = setup({
        let mut transport = TransportConfig::default();
        transport.max_datagram_size = 0;
        transport
    });
    flood(&mut s, c, h, 1, empty_datagrams);
    assert_eq!(
        transport_code(node_error(&mut s, h)),
        Some(TransportErrorCode::PROTOCOL_VIOLATION)
    );
    assert_eq!(
        s.net
            .endpoint(s.server)
            .totals()
            .0
            .peer_limits
            .datagrams_disabled,
        1
    );
}

fn path_challenges(_: &mut Connection) -> Bytes {
    let mut out = Vec::new();
    let mut i = 0u64;
    while out.len() + 9 <= INJECT_MAX {
        Frame::PathChallenge(i.to_le_bytes()).encode(&mut out);
        i += 1;
    }
    Bytes::from(out)
}

#[test]
fn path_challenges_get_a_few_answers_at_once_whatever_the_window() {
    let _serial = serial();
    let (mut s, c, h) = setup(TransportConfig::default());
    let client = s.client;
    conn(&mut s.net, client, c).withhold_acks(true);
    let before = conn(&mut s.net, s.server, h).stats().packets_sent;
    let kept = retained(|| flood(&mut s, c, h, 1000, path_challenges));
    let stats = conn(&mut s.net, s.server, h).stats();
    // Answered packet for packet, far past the congestion window (32
    // packets) that the withheld ACKs never reopen.
    assert!(
        stats.packets_sent - before >= 900,
        "{} packets answered",
        stats.packets_sent - before
    );
    assert!(stats.peer_limits.path_responses_dropped >= 1000 * 120);
    // What remains is the record of each unacknowledged answer, until
    // the node gives up on the peer (next test).
    assert!(kept < 1000 * 128, "{kept} bytes kept");
}

#[test]
fn a_peer_that_never_acknowledges_is_closed_before_its_packets_pile_up() {
    let _serial = serial();
    let (mut s, c, h) = setup(TransportConfig::default());
    let client = s.client;
    conn(&mut s.net, client, c).withhold_acks(true);
    // Each challenge packet is answered; none of the answers is ever
    // acknowledged.
    flood(&mut s, c, h, 70_000, path_challenges);
    assert_eq!(
        transport_code(node_error(&mut s, h)),
        Some(TransportErrorCode::PROTOCOL_VIOLATION)
    );
    let limits = s.net.endpoint(s.server).totals().0.peer_limits;
    assert_eq!(limits.unacknowledged, 1);
}

#[test]
fn a_key_update_on_every_packet_is_closed_at_the_rate_limit() {
    let _serial = serial();
    let (mut s, c, h) = setup(TransportConfig::default());
    let client = s.client;
    conn(&mut s.net, client, c).storm_key_updates(true);
    let storm = |_: &mut Connection| {
        let mut out = Vec::new();
        Frame::ImmediateAck.encode(&mut out);
        Frame::Padding(INJECT_MAX - out.len()).encode(&mut out);
        Bytes::from(out)
    };
    flood(&mut s, c, h, 2000, storm);
    assert_eq!(
        transport_code(node_error(&mut s, h)),
        Some(TransportErrorCode::KEY_UPDATE_ERROR)
    );
    let totals = s.net.endpoint(s.server).totals().0;
    assert_eq!(totals.peer_limits.key_updates, 1);
    // The burst (16) and the rate (100/s) over the few ms it took.
    assert!(
        totals.key_updates <= 16 + 2,
        "{} updates",
        totals.key_updates
    );
}

#[test]
fn only_the_first_ack_frames_of_a_packet_are_applied() {
    let _serial = serial();
    let (mut s, c, h) = setup(TransportConfig::default());
    // Give the node packets to be acknowledged.
    let server = s.server;
    let id = conn(&mut s.net, server, h)
        .open(Dir::Uni, Band::Streaming)
        .unwrap();
    conn(&mut s.net, server, h)
        .write(id, Bytes::from(vec![1; 100_000]))
        .unwrap();
    s.net.run_for(Duration::from_millis(5));
    let storm = |cc: &mut Connection| {
        let mut frames = cc.ack_storm_frames(1).to_vec();
        let one = frames.len();
        while frames.len() + one <= INJECT_MAX {
            frames.extend_from_slice(&cc.ack_storm_frames(1));
        }
        Bytes::from(frames)
    };
    flood(&mut s, c, h, 500, storm);
    assert!(node_error(&mut s, h).is_none());
    let sc = conn(&mut s.net, server, h).stats();
    // Two storm frames fit a packet (beside the client's own ACK): all
    // but `max_acks_per_packet` (2) of the frames of a packet are ignored.
    assert!(
        sc.peer_limits.acks_ignored >= 400,
        "{} ignored",
        sc.peer_limits.acks_ignored
    );
}

#[test]
fn streams_opened_to_the_limit_cost_a_bounded_amount_each() {
    let _serial = serial();
    let (mut s, c, h) = setup(TransportConfig::default());
    let client = s.client;
    let kept = retained(|| {
        for dir in [Dir::Bi, Dir::Uni] {
            while let Ok(id) = conn(&mut s.net, client, c).open(dir, Band::Streaming) {
                conn(&mut s.net, client, c).write_slice(id, b"x").unwrap();
            }
        }
        s.net.run_for(Duration::from_millis(20));
    });
    let open = conn(&mut s.net, s.server, h).stats().streams_active;
    assert_eq!(open, 8192);
    // Both ends' streams, and the packets in between.
    assert!(kept < 8192 * 2 * 1024, "{kept} bytes for {open} streams");
}

#[test]
fn what_a_reader_holds_stays_under_the_connection_window() {
    let _serial = serial();
    const WINDOW: u64 = 256 * 1024;
    let (mut s, c, h) = setup({
        let mut transport = TransportConfig::default();
        transport.receive_window = WINDOW;
        transport
    });
    let (client, server) = (s.client, s.server);
    // Many streams, each a message the node's decoder must hold whole.
    let ids: Vec<_> = (0..16)
        .map(|_| {
            conn(&mut s.net, client, c)
                .open(Dir::Uni, Band::Streaming)
                .unwrap()
        })
        .collect();
    let chunk = vec![0u8; 64 * 1024];
    let mut held = 0u64;
    for _ in 0..50 {
        for &id in &ids {
            let _ = conn(&mut s.net, client, c).write_slice(id, &chunk);
        }
        s.net.run_for(Duration::from_millis(1));
        // The node reads everything and lets go of nothing.
        let sc = conn(&mut s.net, server, h);
        while let Some(id) = sc.accept(Dir::Uni) {
            let _ = id;
        }
        for i in 0..16 {
            let id = StreamId::new(Side::Client, Dir::Uni, i);
            while let Ok(Some(b)) = sc.read_held(id, usize::MAX, 0) {
                held += b.len() as u64;
            }
        }
    }
    assert_eq!(held, WINDOW, "the node holds exactly its window");
    for &id in &ids {
        assert_eq!(
            conn(&mut s.net, client, c).write_slice(id, b"x"),
            Err(WriteError::Blocked)
        );
    }
    // Letting go of it reopens the window.
    conn(&mut s.net, server, h).release_held(held);
    s.net.run_for(Duration::from_millis(2));
    assert!(
        conn(&mut s.net, client, c)
            .write_slice(ids[0], b"x")
            .is_ok()
    );
}

#[test]
fn writes_wait_for_acknowledgements_beyond_the_send_window() {
    let _serial = serial();
    const SEND_WINDOW: u64 = 64 * 1024;
    let (mut s, c, h) = setup({
        let mut transport = TransportConfig::default();
        transport.send_window = SEND_WINDOW;
        transport
    });
    let (client, server) = (s.client, s.server);
    conn(&mut s.net, server, h).withhold_acks(true);
    let id = conn(&mut s.net, client, c)
        .open(Dir::Uni, Band::Streaming)
        .unwrap();
    let mut written = 0;
    while let Ok(n) = conn(&mut s.net, client, c).write_slice(id, &[7; 4096]) {
        written += n as u64;
        s.net.run_for(Duration::from_micros(100));
    }
    // The peer granted 16 MiB, but never acknowledged: 64 KiB is all the
    // client keeps.
    assert_eq!(written, SEND_WINDOW);
    conn(&mut s.net, server, h).withhold_acks(false);
    conn(&mut s.net, server, h).inject_frames(Bytes::from_static(&[0x01]));
    s.net.run_for(Duration::from_millis(20));
    assert!(
        conn(&mut s.net, client, c)
            .write_slice(id, &[7; 4096])
            .is_ok()
    );
}

#[test]
fn forged_packets_close_the_connection_at_the_decryption_budget() {
    let _serial = serial();
    let (mut s, c, h) = setup({
        let mut transport = TransportConfig::default();
        transport.max_decrypt_failures = 100;
        transport
    });
    let client = s.client;
    // Capture one short packet of the client and keep it from the node.
    let captured = std::rc::Rc::new(std::cell::RefCell::new(None));
    let keep = captured.clone();
    s.net.add_tap(move |d| {
        if d.to.to_string() == SERVER && common::is_short(&d.data) && keep.borrow().is_none() {
            *keep.borrow_mut() = Some(d.data.clone());
            return TapAction::Drop;
        }
        TapAction::Pass
    });
    // A large packet: its last byte (the tag) is past the header
    // protection's sample, so a copy with it flipped keeps its packet
    // number and fails only its authentication.
    let mut ping = vec![0x01];
    Frame::Padding(1000).encode(&mut ping);
    conn(&mut s.net, client, c).inject_frames(Bytes::from(ping));
    s.net.run_for(Duration::from_millis(1));
    let mut forged = captured.borrow().clone().expect("a packet was captured");
    let last = forged.len() - 1;
    forged[last] ^= 0xff;
    let (from, to) = (s.net.addr(client), s.net.addr(s.server));
    for _ in 0..100 {
        s.net.inject(from, to, forged.clone());
        s.net.run_for(Duration::from_micros(10));
    }
    s.net.run_for(Duration::from_millis(1));
    // At the budget: still open. One more closes it.
    assert!(node_error(&mut s, h).is_none());
    s.net.inject(from, to, forged.clone());
    s.net.run_for(Duration::from_millis(1));
    assert_eq!(
        transport_code(node_error(&mut s, h)),
        Some(TransportErrorCode::AEAD_LIMIT_REACHED)
    );
    let totals = s.net.endpoint(s.server).totals().0;
    assert_eq!(totals.decrypt_failures, 101);
    assert_eq!(totals.peer_limits.decrypt_budget, 1);
}
