//! Streams, flow control, priorities and datagrams on the deterministic
//! network. Each test states one rule of the protocol and checks it
//! exactly, on the virtual clock.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{Digest, EchoServer, Receiver, Sender, Setup, content};
use mxp::proto::{
    Band, Connection, ConnectionHandle, DATAGRAM_ENTRY_COST, DatagramError, Dir, Event, OpenError,
    ReadError, ServerConfig, StreamEvent, StreamId, TransportConfig, WriteError,
};
use mxp::sim::{Datagram, LinkConfig, Network, NodeId, TapAction};

fn conn(net: &mut Network, node: NodeId, h: ConnectionHandle) -> &mut Connection {
    net.endpoint(node)
        .connection(h)
        .expect("connection is alive")
}

/// Queues `message` whole on a new Critical one-way stream and finishes it.
fn send_critical(net: &mut Network, node: NodeId, h: ConnectionHandle, message: &[u8]) -> StreamId {
    let critical = conn(net, node, h).open(Dir::Uni, Band::Critical).unwrap();
    assert_eq!(
        conn(net, node, h).write(critical, Bytes::copy_from_slice(message)),
        Ok(message.len())
    );
    conn(net, node, h).finish(critical).unwrap();
    critical
}

/// Every event the node has, in order.
fn events(net: &mut Network, node: NodeId) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some((_, e)) = net.endpoint(node).poll_event() {
        out.push(e);
    }
    out
}

fn setup(seed: u64, transport: TransportConfig) -> (Setup, ConnectionHandle, ConnectionHandle) {
    let mut s = Setup::with(
        seed,
        LinkConfig::default(),
        transport,
        ServerConfig::default(),
    );
    let (c, h) = s.connect();
    (s, c, h)
}

/// Reads everything currently readable on `id`; returns the bytes and
/// whether the end of the stream was reached.
fn read_available(c: &mut Connection, id: StreamId) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        match c.read(id, usize::MAX) {
            Ok(Some(chunk)) => out.extend_from_slice(&chunk),
            Ok(None) => return (out, true),
            Err(ReadError::Blocked) => return (out, false),
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

// ---- flow control ----------------------------------------------------------

/// A writer with a fixed payload, checking the backpressure rules on every
/// write: a write takes exactly `min(len, write_credit)` bytes, and is
/// `Blocked` only when the credit is zero.
struct Writer {
    id: StreamId,
    data: Vec<u8>,
    written: usize,
    finished: bool,
    blocked_writes: u32,
}

impl Writer {
    fn new(id: StreamId, seed: u64, len: usize) -> Self {
        Writer {
            id,
            data: content(seed, 0, len),
            written: 0,
            finished: false,
            blocked_writes: 0,
        }
    }

    /// Writes the next `chunk` bytes (or less at the end). Returns how much
    /// was accepted.
    fn write(&mut self, c: &mut Connection, chunk: usize) -> usize {
        let end = (self.written + chunk).min(self.data.len());
        let offered = end - self.written;
        if offered == 0 {
            return 0;
        }
        let credit = c.write_credit(self.id);
        let piece = Bytes::copy_from_slice(&self.data[self.written..end]);
        match c.write(self.id, piece) {
            Ok(n) => {
                assert!(n > 0, "a write with credit {credit} accepted nothing");
                assert_eq!(
                    n as u64,
                    credit.min(offered as u64),
                    "write took other than min(len, credit)"
                );
                self.written += n;
                n
            }
            Err(WriteError::Blocked) => {
                assert_eq!(
                    credit, 0,
                    "write refused although {credit} bytes of credit were left"
                );
                self.blocked_writes += 1;
                0
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }

    /// Writes until blocked or done; finishes the stream when all is written.
    fn pump(&mut self, c: &mut Connection) {
        while self.written < self.data.len() && self.write(c, 8 * 1024) > 0 {}
        if self.written == self.data.len() && !self.finished {
            c.finish(self.id).expect("finish");
            self.finished = true;
        }
    }
}

#[test]
fn stream_window_blocks_the_writer_exactly_at_the_limit_and_reopens_after_a_read() {
    const WINDOW: u64 = 32 * 1024;
    let transport = {
        let mut transport = TransportConfig::default();
        transport.stream_receive_window = WINDOW;
        transport.receive_window = 1 << 20;
        transport
    };
    let (mut s, ch, sh) = setup(11, transport);
    let (client, server) = (s.client, s.server);
    let net = &mut s.net;

    let id = conn(net, client, ch)
        .open(Dir::Uni, Band::Streaming)
        .unwrap();
    assert_eq!(
        conn(net, client, ch).write_credit(id),
        WINDOW,
        "the whole window is available"
    );
    let mut w = Writer::new(id, 1, 8 * WINDOW as usize);

    // Up to one byte short of the window: accepted in full.
    assert_eq!(
        w.write(conn(net, client, ch), WINDOW as usize - 1),
        WINDOW as usize - 1
    );
    assert_eq!(conn(net, client, ch).write_credit(id), 1);
    // The write that exceeds the window is cut short at once: nothing is
    // buffered beyond what the peer allowed.
    assert_eq!(w.write(conn(net, client, ch), 1000), 1);
    assert_eq!(conn(net, client, ch).write_credit(id), 0);
    assert_eq!(w.write(conn(net, client, ch), 1000), 0);
    assert_eq!(w.blocked_writes, 1);
    assert_eq!(conn(net, client, ch).stats().flow.blocked_events, 2);

    // The reader does not read: the writer stays blocked however long we wait.
    net.run_for(Duration::from_millis(50));
    for e in events(net, client) {
        assert!(
            !matches!(e, Event::Stream(StreamEvent::Writable { .. })),
            "credit appeared without a read: {e:?}"
        );
    }
    assert_eq!(conn(net, client, ch).write_credit(id), 0);
    assert_eq!(w.write(conn(net, client, ch), 1000), 0);
    let srv = conn(net, server, sh).stats();
    assert_eq!(
        srv.flow.recv_credit_consumed, WINDOW,
        "exactly the window arrived"
    );
    assert!(
        srv.peer_blocked_frames >= 1,
        "the writer announced it was blocked"
    );

    // The reader drains the window: new credit, announced by `Writable`.
    assert!(events(net, server).contains(&Event::Stream(StreamEvent::Opened { dir: Dir::Uni })));
    assert_eq!(conn(net, server, sh).accept(Dir::Uni), Some(id));
    let (got, end) = read_available(conn(net, server, sh), id);
    assert_eq!(got.len() as u64, WINDOW);
    assert!(!end);
    let mut received = got;
    let writable = net.run_until(Duration::from_secs(1), |net| {
        events(net, client).contains(&Event::Stream(StreamEvent::Writable { id }))
    });
    assert!(
        writable,
        "no Writable event after the reader freed the window"
    );
    assert_eq!(
        conn(net, client, ch).write_credit(id),
        WINDOW,
        "a full window was granted"
    );

    // The rest of the transfer completes byte-exact, and at no point does
    // the writer get ahead of the reader by more than the window.
    let mut done = false;
    let ok = net.run_until(Duration::from_secs(10), |net| {
        w.pump(conn(net, client, ch));
        assert!(
            w.written as u64 <= received.len() as u64 + WINDOW,
            "writer is {} bytes ahead of the reader, window is {WINDOW}",
            w.written - received.len()
        );
        if conn(net, server, sh).is_readable(id) {
            let (got, end) = read_available(conn(net, server, sh), id);
            received.extend_from_slice(&got);
            done |= end;
        }
        done
    });
    assert!(
        ok,
        "transfer did not complete: {} of {} bytes",
        received.len(),
        w.data.len()
    );
    assert_eq!(received, w.data);
    assert!(
        w.blocked_writes > 1,
        "the transfer was flow-controlled throughout"
    );
    assert!(conn(net, server, sh).stats().flow.window_updates_sent >= 7);
}

#[test]
fn connection_window_blocks_all_streams_and_one_read_wakes_them_all() {
    const WINDOW: u64 = 64 * 1024;
    let transport = {
        let mut transport = TransportConfig::default();
        transport.stream_receive_window = 1 << 20;
        transport.receive_window = WINDOW;
        transport
    };
    let (mut s, ch, sh) = setup(12, transport);
    let (client, server) = (s.client, s.server);
    let net = &mut s.net;

    let a = conn(net, client, ch)
        .open(Dir::Uni, Band::Streaming)
        .unwrap();
    let b = conn(net, client, ch)
        .open(Dir::Uni, Band::Streaming)
        .unwrap();
    let mut wa = Writer::new(a, 1, 512 * 1024);
    let mut wb = Writer::new(b, 2, 512 * 1024);
    assert_eq!(
        conn(net, client, ch).write_credit(a),
        WINDOW,
        "the connection window bounds one stream"
    );
    assert_eq!(wa.write(conn(net, client, ch), 40 * 1024), 40 * 1024);
    assert_eq!(
        conn(net, client, ch).write_credit(b),
        WINDOW - 40 * 1024,
        "streams share the connection window"
    );
    // The write on B that exceeds the connection window is cut short.
    assert_eq!(wb.write(conn(net, client, ch), 40 * 1024), 24 * 1024);
    assert_eq!(conn(net, client, ch).write_credit(a), 0);
    assert_eq!(conn(net, client, ch).write_credit(b), 0);
    assert_eq!(wa.write(conn(net, client, ch), 1), 0);
    assert_eq!(wb.write(conn(net, client, ch), 1), 0);

    net.run_for(Duration::from_millis(50));
    for e in events(net, client) {
        assert!(
            !matches!(e, Event::Stream(StreamEvent::Writable { .. })),
            "credit appeared without a read: {e:?}"
        );
    }
    assert_eq!(conn(net, client, ch).write_credit(a), 0);
    assert_eq!(conn(net, client, ch).write_credit(b), 0);
    let srv = conn(net, server, sh).stats();
    assert_eq!(srv.flow.recv_credit_consumed, WINDOW);
    assert!(srv.peer_blocked_frames >= 1, "DATA_BLOCKED was sent");

    // Reading stream A alone returns connection credit usable by both.
    events(net, server);
    let (got_a, _) = read_available(conn(net, server, sh), a);
    assert_eq!(got_a.len(), 40 * 1024);
    let mut woken = HashSet::new();
    let ok = net.run_until(Duration::from_secs(1), |net| {
        for e in events(net, client) {
            if let Event::Stream(StreamEvent::Writable { id }) = e {
                woken.insert(id);
            }
        }
        woken.len() == 2
    });
    assert!(ok, "only {woken:?} were woken");
    assert_eq!(woken, HashSet::from([a, b]));
    // The update is sent once half the window has been read, granting a
    // window beyond what was read at that moment.
    let credit = conn(net, client, ch).write_credit(a);
    assert!(
        credit > WINDOW / 2 && credit <= 40 * 1024,
        "credit {credit} after reading 40 KiB"
    );
    assert_eq!(
        conn(net, client, ch).write_credit(b),
        credit,
        "both streams share the new credit"
    );

    let mut received: HashMap<StreamId, Vec<u8>> = HashMap::from([(a, got_a), (b, Vec::new())]);
    let mut ended = HashSet::new();
    let ok = net.run_until(Duration::from_secs(10), |net| {
        wa.pump(conn(net, client, ch));
        wb.pump(conn(net, client, ch));
        let read: usize = received.values().map(Vec::len).sum();
        assert!(
            (wa.written + wb.written) as u64 <= read as u64 + WINDOW,
            "writers are ahead of the reader by more than the connection window"
        );
        for id in [a, b] {
            if conn(net, server, sh).is_readable(id) {
                let (got, end) = read_available(conn(net, server, sh), id);
                received.get_mut(&id).unwrap().extend_from_slice(&got);
                if end {
                    ended.insert(id);
                }
            }
        }
        ended.len() == 2
    });
    assert!(ok, "transfer did not complete");
    assert_eq!(received[&a], wa.data);
    assert_eq!(received[&b], wb.data);
}

// ---- priorities ------------------------------------------------------------

#[test]
fn critical_message_leaves_in_the_very_next_packet_behind_megabytes_of_streaming_data() {
    const BULK: usize = 4 << 20;
    let transport = {
        let mut transport = TransportConfig::default();
        transport.initial_window = 256 << 20;
        transport.pacing = false;
        transport.stream_receive_window = 16 << 20;
        transport.receive_window = 64 << 20;
        transport
    };
    let (mut s, ch, sh) = setup(13, transport);
    let (client, server) = (s.client, s.server);
    let client_addr = s.net.addr(client);
    let net = &mut s.net;
    events(net, server);

    let bulk = conn(net, client, ch)
        .open(Dir::Uni, Band::Streaming)
        .unwrap();
    let n = conn(net, client, ch)
        .write(bulk, Bytes::from(content(1, 0, BULK)))
        .unwrap();
    assert_eq!(n, BULK, "the windows admit all of the bulk data");

    // Hand-carry packets from client to server, bypassing the simulator.
    let now = net.now();
    let carry = |net: &mut Network| {
        let mut buf = Vec::new();
        let t = net
            .endpoint(client)
            .poll_transmit(now, &mut buf)
            .expect("client has a packet to send");
        net.endpoint(server)
            .handle(now, client_addr, BytesMut::from(&buf[..t.size]));
    };
    for _ in 0..50 {
        carry(net);
    }
    let bands = conn(net, client, ch).stats().bands;
    let sent = bands[Band::Streaming.index()].dequeued_bytes;
    assert!(
        sent > 50 * 1000 && sent < BULK as u64 / 10,
        "some bulk data is out, most still queued: {sent}"
    );

    let message = content(2, 0, 900);
    let critical = send_critical(net, client, ch, &message);
    carry(net);

    let srv = conn(net, server, sh);
    let mut accepted = Vec::new();
    while let Some(id) = srv.accept(Dir::Uni) {
        accepted.push(id);
    }
    assert_eq!(accepted, [bulk, critical]);
    let (got, end) = read_available(srv, critical);
    assert_eq!(
        got, message,
        "the whole Critical message arrived in one packet"
    );
    assert!(end, "including its end");
    let bands = conn(net, client, ch).stats().bands;
    assert_eq!(bands[Band::Critical.index()].dequeued_frames, 1);
    let critical_bytes = bands[Band::Critical.index()].dequeued_bytes;
    assert!(
        (900..920).contains(&critical_bytes),
        "one frame: header and message, {critical_bytes} bytes"
    );
}

/// The same promise with the shipped defaults: pacing on, the default
/// congestion window grown by slow start, flow control at its defaults.
/// Megabytes of Streaming data are queued on a busy connection; a Critical
/// message written then is in the very next packet the client sends,
/// whenever pacing and congestion control let that packet go: no packet
/// carrying only Streaming data leaves in between.
#[test]
fn critical_message_leaves_in_the_very_next_packet_with_default_pacing_and_window() {
    const BULK_STREAMS: usize = 4;
    const BULK_EACH: u64 = 4 << 20;
    let transport = TransportConfig::default();
    assert!(transport.pacing);
    let (mut s, ch, sh) = setup(17, transport);
    let (client, server) = (s.client, s.server);
    let (client_addr, server_addr) = (s.net.addr(client), s.net.addr(server));
    let net = &mut s.net;
    events(net, server);

    // Armed, this tap takes every client→server datagram off the wire (in
    // the order sent) so the test can look at the first one.
    let armed = Rc::new(Cell::new(false));
    let captured: Rc<RefCell<Vec<Datagram>>> = Rc::default();
    {
        let (armed, captured) = (armed.clone(), captured.clone());
        net.add_tap(move |d| {
            if armed.get() && d.from == client_addr && d.to == server_addr {
                captured.borrow_mut().push(d.clone());
                return TapAction::Drop;
            }
            TapAction::Pass
        });
    }

    // Bulk transfer until a megabyte has arrived: RTT measured, window
    // grown, pacing in its steady state, and megabytes still queued.
    let mut bulk = Sender::open(net, client, ch, BULK_STREAMS, BULK_EACH, Band::Streaming);
    let mut rx = Receiver::default();
    let delivered = |rx: &Receiver| rx.digests.values().map(|d| d.1).sum::<u64>();
    let ok = net.run_until(Duration::from_secs(5), |net| {
        bulk.pump(net, client, ch);
        rx.pump(net, server);
        delivered(&rx) >= 1 << 20
    });
    assert!(ok, "the bulk transfer got going");
    bulk.pump(net, client, ch);
    let written: u64 = bulk.streams.iter().map(|&(_, n)| n).sum();
    let stats = conn(net, client, ch).stats();
    let streaming_out = stats.bands[Band::Streaming.index()].dequeued_bytes;
    assert!(
        written - streaming_out > 2 << 20,
        "megabytes of Streaming data are queued: {written} written, {streaming_out} sent"
    );
    assert!(stats.bytes_in_flight > 0, "the connection is busy");
    assert_eq!(stats.packets_lost, 0);

    // Nothing more is sent at this instant: the client is held back by
    // pacing or by its window, and a timer or an ACK wakes it later.
    let t = net.now();
    assert!(
        net.endpoint(client)
            .poll_transmit(t, &mut Vec::new())
            .is_none(),
        "the network already took everything the client may send now"
    );

    let message = content(99, 0, 900);
    let critical = send_critical(net, client, ch, &message);
    armed.set(true);
    let ok = net.run_until(Duration::from_millis(10), |_| !captured.borrow().is_empty());
    assert!(ok, "the client sent again");
    armed.set(false);
    let first = captured.borrow()[0].clone();
    let sent_at = first.sent;
    assert!(
        sent_at - t < Duration::from_micros(200),
        "the next packet left {:?} after the write",
        sent_at - t
    );

    // Only that packet reaches the server: it holds the whole message.
    net.endpoint(server)
        .handle(sent_at, client_addr, BytesMut::from(&first.data[..]));
    let srv = conn(net, server, sh);
    let mut accepted = Vec::new();
    while let Some(id) = srv.accept(Dir::Uni) {
        accepted.push(id);
    }
    assert!(
        accepted.contains(&critical),
        "the Critical stream opened with the first packet after the write: {accepted:?}"
    );
    let (got, end) = read_available(srv, critical);
    assert_eq!(got, message, "the whole Critical message is in that packet");
    assert!(end, "including its end");
    let critical_band = conn(net, client, ch).stats().bands[Band::Critical.index()];
    assert_eq!(critical_band.dequeued_frames, 1);
}

#[test]
fn saturated_bands_share_the_link_by_weight_and_background_is_never_starved() {
    // A 40 MB/s bottleneck with a short queue: congestion control keeps the
    // sender link-bound, so the scheduler decides who goes next.
    let link = LinkConfig {
        bandwidth: Some(40_000_000),
        queue_bytes: 64 * 1024,
        ..LinkConfig::ideal(Duration::from_micros(50))
    };
    let mut s = Setup::new(14, link);
    let (ch, _sh) = s.connect();
    let (client, server) = (s.client, s.server);
    let net = &mut s.net;

    let bands = [Band::Critical, Band::Streaming, Band::Background];
    let ids: Vec<StreamId> = bands
        .iter()
        .map(|&b| conn(net, client, ch).open(Dir::Uni, b).unwrap())
        .collect();
    let mut written = [0u64; 3];
    let mut rx = Receiver::default();
    // Keep every stream saturated for 100 ms of virtual time.
    let deadline = net.now() + Duration::from_millis(100);
    let chunk = Bytes::from(content(0, 0, 64 * 1024));
    net.run_until(Duration::from_secs(1), |net| {
        let c = conn(net, client, ch);
        for (i, &id) in ids.iter().enumerate() {
            while let Ok(n) = c.write(id, chunk.clone()) {
                written[i] += n as u64;
            }
        }
        rx.pump(net, server);
        net.now() >= deadline
    });

    let got: Vec<u64> = ids
        .iter()
        .map(|id| rx.digests.get(id).map_or(0, |d| d.1))
        .collect();
    let total: u64 = got.iter().sum();
    assert!(
        total > 2_000_000,
        "the link was busy: {total} bytes delivered"
    );
    for i in 0..3 {
        assert!(
            written[i] > got[i] + 64 * 1024,
            "band {:?} stayed saturated",
            bands[i]
        );
    }
    // Weights 8 (Critical), 2 (Streaming), 1 (Background) of 11.
    let share = |i: usize| got[i] as f64 / total as f64;
    let expect = [8.0 / 11.0, 2.0 / 11.0, 1.0 / 11.0];
    for i in 0..3 {
        let ratio = share(i) / expect[i];
        assert!(
            (0.9..1.1).contains(&ratio),
            "{:?} got {:.3} of the link, weight says {:.3}",
            bands[i],
            share(i),
            expect[i]
        );
    }

    let stats = conn(net, client, ch).stats().bands;
    let sent: Vec<u64> = Band::ALL
        .iter()
        .map(|b| stats[b.index()].dequeued_bytes)
        .collect();
    assert_eq!(sent[Band::Control.index()], 0, "the idle band sent nothing");
    let sent_total: u64 = sent.iter().sum();
    for (i, &b) in bands.iter().enumerate() {
        let ratio = sent[b.index()] as f64 / sent_total as f64 / expect[i];
        assert!(
            (0.9..1.1).contains(&ratio),
            "{b:?} band counter off its weight: {sent:?}"
        );
        assert!(stats[b.index()].dequeued_frames > 0);
        assert!(stats[b.index()].enqueued > 0);
    }
}

// ---- pacing ----------------------------------------------------------------

/// Pacing with the shipped defaults, on a 100 µs round trip: a sender with
/// far more than a congestion window queued sends one bucket of packets at
/// once, then one packet at each instant the token bucket of
/// the core's pacer allows, never earlier, so the window is
/// spread over most of a round trip instead of leaving at one instant.
///
/// The rule, from `recovery/pacing.rs`: the bucket holds
/// `clamp(window / 4, 10·mtu, 64·mtu)` bytes and starts full; it earns
/// `5·window / (4·rtt)` bytes per unit time; a packet may leave when the
/// bucket holds a full-sized packet (`mtu` bytes), and spends its actual size.
/// Nothing is acknowledged here (the server never hears the client), so
/// window and RTT stay fixed and the whole run follows that rule exactly.
#[test]
fn pacing_spreads_a_congestion_window_over_the_round_trip() {
    const RTT: Duration = Duration::from_micros(100);
    let transport = TransportConfig::default();
    assert!(transport.pacing, "pacing is on by default");
    let mtu = u64::from(transport.max_udp_payload_size);
    let mut s = Setup::with(
        16,
        LinkConfig::ideal(RTT / 2),
        transport,
        ServerConfig::default(),
    );
    let (ch, _sh) = s.connect();
    let client = s.client;
    let net = &mut s.net;
    // Let the handshake's last ACKs settle: nothing is in flight after this.
    net.run_for(Duration::from_millis(5));

    let stats = conn(net, client, ch).stats();
    let (rtt, window) = (stats.rtt, stats.congestion_window);
    assert_eq!(rtt, RTT, "the handshake measured the link's round trip");
    // The default initial window: the handshake's few packets kept far
    // under half of it in flight, so they did not grow it.
    assert_eq!(window, 32 * mtu, "the default initial window");
    assert_eq!(stats.bytes_in_flight, 0);
    let capacity = (window / 4).clamp(10 * mtu, 64 * mtu);
    assert_eq!(capacity, 10 * mtu, "a quarter window is below the floor");

    // Megabytes queued: far more than one window, let alone one bucket.
    for i in 0..4 {
        let c = conn(net, client, ch);
        let id = c.open(Dir::Uni, Band::Streaming).unwrap();
        let data = Bytes::from(content(i, 0, 1 << 20));
        assert_eq!(c.write(id, data), Ok(1 << 20));
    }

    // Drive the client by hand on the virtual clock; what it sends goes
    // nowhere, so no ACK changes the window or the RTT.
    let t0 = net.now();
    let rate_num = 5 * u128::from(window); // bytes per (4·rtt) ns
    let rate_den = 4 * rtt.as_nanos();
    // Bytes the bucket has earned `d` after t0 (it was full at t0).
    let earned = |d: Duration| (d.as_nanos() * rate_num / rate_den) as u64;
    // The first instant a full-sized packet may leave after `spent` bytes.
    let allowed_at = |spent: u64| {
        let deficit = (spent + mtu).saturating_sub(capacity);
        let ns = (u128::from(deficit) * rate_den).div_ceil(rate_num);
        t0 + Duration::from_nanos(ns as u64)
    };

    let mut now = t0;
    let mut sent: Vec<(Duration, u64)> = Vec::new(); // (offset from t0, size)
    let mut spent = 0u64; // in-flight bytes, i.e. tokens spent
    let mut bursts = Vec::new(); // packets per instant
    loop {
        let mut buf = Vec::new();
        let mut here = 0;
        while let Some(t) = net.endpoint(client).poll_transmit(now, &mut buf) {
            let size = t.size as u64;
            assert!(size <= mtu);
            assert!(
                spent + mtu <= capacity + earned(now - t0),
                "packet {} left at +{:?} before the bucket held a full packet",
                sent.len(),
                now - t0
            );
            sent.push((now - t0, size));
            spent += size;
            here += 1;
            buf.clear();
        }
        bursts.push(here);
        let in_flight = conn(net, client, ch).stats().bytes_in_flight;
        assert_eq!(in_flight, spent, "every packet carried stream data");
        if in_flight + mtu > window {
            break; // the congestion window is full: pacing's job is done
        }
        // Held back by pacing alone: the timer is armed for exactly the
        // instant the bucket holds a full packet again, strictly later.
        let deadline = net.endpoint(client).poll_timeout().expect("a timer");
        assert!(deadline > now, "pacing deadline {deadline:?} not after now");
        assert_eq!(
            deadline,
            allowed_at(spent),
            "pacing deadline after {} bytes",
            spent
        );
        // One nanosecond early, nothing leaves and the deadline stands.
        let early = deadline - Duration::from_nanos(1);
        if early > now {
            net.endpoint(client).handle_timeout(early);
            assert!(
                net.endpoint(client)
                    .poll_transmit(early, &mut Vec::new())
                    .is_none(),
                "a packet left before the pacing deadline"
            );
            assert_eq!(net.endpoint(client).poll_timeout(), Some(deadline));
        }
        now = deadline;
        net.endpoint(client).handle_timeout(now);
    }

    // One bucket at t0: ten full-sized packets, not the whole window.
    let first_burst = bursts[0];
    assert_eq!(
        first_burst, 10,
        "the first burst is one bucket: {bursts:?} at {sent:?}"
    );
    assert!(sent[..first_burst].iter().all(|&(at, _)| at.is_zero()));
    // Then one packet per pacing deadline.
    assert!(
        bursts[1..].iter().all(|&n| n == 1),
        "after the first bucket packets leave one at a time: {bursts:?}"
    );
    // A window's worth: the packets the window admits at full size.
    let packets = sent.len();
    assert_eq!(packets as u64, window / mtu, "one window of packets");
    // The window is spread over most of the round trip: at 1.25 windows per
    // RTT, what is beyond the first bucket takes (window − bucket)/(1.25
    // window) of an RTT, about 55 µs here.
    let span = sent[packets - 1].0 - sent[0].0;
    assert_eq!(
        sent[packets - 1].0,
        allowed_at(spent - sent[packets - 1].1) - t0
    );
    assert!(
        span >= rtt / 2 && span < rtt,
        "the window left over {span:?} of a {rtt:?} round trip"
    );
    // Never more than a bucket in any interval of the RTT / 8 (12.5 µs)
    // beyond what the rate earns in it.
    for (i, &(at, _)) in sent.iter().enumerate() {
        let in_window: u64 = sent[i..]
            .iter()
            .take_while(|&&(t, _)| t - at < rtt / 8)
            .map(|&(_, size)| size)
            .sum();
        assert!(
            in_window <= capacity + earned(rtt / 8),
            "{in_window} bytes within {:?} from +{at:?}",
            rtt / 8
        );
    }
}

// ---- congestion window ----------------------------------------------------

/// The congestion window grows only while the sender uses it (RFC 9002
/// §7.8). A thousand calls, one at a time, keep a packet or two in flight:
/// they leave the window exactly where it started. Before, every ACK grew
/// it, and a connection that had served calls for an hour held a window of
/// gigabytes: its pacer would let the next bulk write out at once. A bulk
/// transfer that fills the window still grows it.
#[test]
fn calls_one_at_a_time_leave_the_congestion_window_alone_and_bulk_grows_it() {
    let (mut s, ch, _sh) = setup(23, TransportConfig::default());
    let (client, server) = (s.client, s.server);
    let net = &mut s.net;
    let initial = conn(net, client, ch).stats().congestion_window;
    let mtu = u64::from(TransportConfig::default().max_udp_payload_size);
    assert_eq!(
        initial,
        32 * mtu,
        "the default initial window, untouched by the handshake"
    );

    for i in 0..1000 {
        send_critical(net, client, ch, &content(i, 0, 200));
        net.run_for(Duration::from_micros(100));
        events(net, server);
    }
    let stats = conn(net, client, ch).stats();
    assert_eq!(stats.packets_lost, 0);
    assert!(
        stats.packets_sent >= 1000,
        "every call was sent: {}",
        stats.packets_sent
    );
    assert_eq!(stats.congestion_window, initial);

    let mut bulk = Sender::open(net, client, ch, 1, 4 << 20, Band::Streaming);
    let id = bulk.streams[0].0;
    let mut rx = Receiver::default();
    let ok = net.run_until(Duration::from_secs(5), |net| {
        let done = bulk.pump(net, client, ch);
        rx.pump(net, server);
        done && rx.digests.get(&id).map_or(0, |d| d.1) == 4 << 20
    });
    assert!(ok, "the bulk transfer arrived");
    let grown = conn(net, client, ch).stats().congestion_window;
    assert!(
        grown > 2 * initial,
        "a filled window grows: {initial} -> {grown}"
    );
}

// ---- many streams ----------------------------------------------------------

#[test]
fn five_thousand_streams_recycle_a_small_stream_limit_and_deliver_byte_exact() {
    const STREAMS: u64 = 5_000;
    const LIMIT: u64 = 64;
    const SIZE: usize = 2_000;
    let transport = {
        let mut transport = TransportConfig::default();
        transport.max_concurrent_uni_streams = LIMIT;
        transport
    };
    let (mut s, ch, sh) = setup(15, transport);
    let (client, server) = (s.client, s.server);
    let net = &mut s.net;

    let mut expected: HashMap<StreamId, Digest> = HashMap::new();
    let mut opened = 0u64;
    let (mut limit_hits, mut available, mut finished) = (0u32, 0u32, 0u64);
    let mut blocked = false;
    let mut peak_open = 0u64;
    let mut rx = Receiver::default();
    let ok = net.run_until(Duration::from_secs(20), |net| {
        for e in events(net, client) {
            match e {
                Event::Stream(StreamEvent::Available { dir: Dir::Uni }) => {
                    assert!(
                        std::mem::take(&mut blocked),
                        "Available without a refused open"
                    );
                    available += 1;
                }
                Event::Stream(StreamEvent::Finished { .. }) => finished += 1,
                _ => {}
            }
        }
        let c = conn(net, client, ch);
        while opened < STREAMS && !blocked {
            match c.open(Dir::Uni, Band::Streaming) {
                Ok(id) => {
                    let data = content(opened, 0, SIZE);
                    assert_eq!(c.write(id, Bytes::from(data.clone())), Ok(SIZE));
                    c.finish(id).unwrap();
                    expected.entry(id).or_default().update(&data);
                    opened += 1;
                }
                Err(OpenError::Limit) => {
                    limit_hits += 1;
                    blocked = true;
                }
            }
        }
        rx.pump(net, server);
        peak_open = peak_open.max(conn(net, server, sh).stats().streams_active);
        rx.finished.len() as u64 == STREAMS && conn(net, client, ch).stats().streams_active == 0
    });
    assert!(ok, "{} of {STREAMS} streams finished", rx.finished.len());
    assert!(
        limit_hits > 0 && available > 0,
        "the stream limit was hit ({limit_hits}) and lifted ({available})"
    );
    assert_eq!(finished, STREAMS, "every stream's end was acknowledged");
    assert!(
        peak_open <= LIMIT,
        "the server had {peak_open} streams open, limit {LIMIT}"
    );
    assert_eq!(rx.digests.len() as u64, STREAMS);
    for (id, d) in &expected {
        assert_eq!(
            rx.digests.get(id),
            Some(d),
            "stream {id:?} delivered other bytes"
        );
    }
    let (cs, ss) = (conn(net, client, ch).stats(), conn(net, server, sh).stats());
    assert_eq!(cs.streams_active, 0);
    assert_eq!(ss.streams_active, 0);
    assert_eq!(ss.flow.streams_opened, STREAMS);
    assert_eq!(ss.flow.streams_closed, STREAMS);
}

#[test]
fn a_thousand_concurrent_bidirectional_streams_echo_byte_exact() {
    const STREAMS: u64 = 1_000;
    let (mut s, ch, sh) = setup(16, TransportConfig::default());
    let (client, server) = (s.client, s.server);
    let net = &mut s.net;

    let mut sent: HashMap<StreamId, Vec<u8>> = HashMap::new();
    for i in 0..STREAMS {
        let c = conn(net, client, ch);
        let id = c.open(Dir::Bi, Band::Critical).unwrap();
        let data = content(i, 0, 500 + (i as usize * 37) % 2000);
        assert_eq!(c.write(id, Bytes::from(data.clone())), Ok(data.len()));
        c.finish(id).unwrap();
        sent.insert(id, data);
    }
    assert_eq!(conn(net, client, ch).stats().streams_active, STREAMS);

    let mut echo = EchoServer::default();
    let mut back: HashMap<StreamId, Vec<u8>> = HashMap::new();
    let mut ended = HashSet::new();
    let ok = net.run_until(Duration::from_secs(10), |net| {
        echo.pump(net, server);
        let mut readable = Vec::new();
        for e in events(net, client) {
            if let Event::Stream(StreamEvent::Readable { id }) = e {
                readable.push(id);
            }
        }
        for id in readable {
            let (got, end) = read_available(conn(net, client, ch), id);
            back.entry(id).or_default().extend_from_slice(&got);
            if end {
                assert!(ended.insert(id), "stream {id:?} ended twice");
            }
        }
        ended.len() as u64 == STREAMS
            && conn(net, client, ch).stats().streams_active == 0
            && conn(net, server, sh).stats().streams_active == 0
    });
    assert!(ok, "{} of {STREAMS} echoes completed", ended.len());
    assert_eq!(back, sent);
}

// ---- reset and stop_sending ------------------------------------------------

#[test]
fn reset_stream_reaches_the_reader_with_its_code_and_returns_the_credit() {
    const WINDOW: u64 = 64 * 1024;
    let transport = {
        let mut transport = TransportConfig::default();
        transport.receive_window = WINDOW;
        transport.max_concurrent_uni_streams = 1;
        transport
    };
    let (mut s, ch, sh) = setup(17, transport);
    let (client, server) = (s.client, s.server);
    let net = &mut s.net;

    // Fill the connection window on a stream the reader ignores, then
    // abandon it.
    let a = conn(net, client, ch)
        .open(Dir::Uni, Band::Streaming)
        .unwrap();
    let n = conn(net, client, ch)
        .write(a, Bytes::from(content(1, 0, 100_000)))
        .unwrap();
    assert_eq!(n as u64, WINDOW);
    assert_eq!(
        conn(net, client, ch).open(Dir::Uni, Band::Streaming),
        Err(OpenError::Limit)
    );
    net.run_for(Duration::from_millis(5));
    assert_eq!(conn(net, client, ch).write_credit(a), 0);
    conn(net, client, ch).reset(a, 7).unwrap();
    assert_eq!(
        conn(net, client, ch).write(a, Bytes::from_static(b"x")),
        Err(WriteError::ClosedStream)
    );

    // Many round trips later, without reading: the reset took effect and
    // the data received before it is discarded.
    net.run_for(Duration::from_millis(5));
    assert_eq!(conn(net, server, sh).accept(Dir::Uni), Some(a));
    assert_eq!(
        conn(net, server, sh).read(a, usize::MAX),
        Err(ReadError::Reset(7))
    );
    assert_eq!(
        conn(net, server, sh).read(a, usize::MAX),
        Err(ReadError::ClosedStream),
        "the reset was the end"
    );

    // The stream slot and all its connection credit came back, although the
    // reader never read a byte of it.
    let mut available = false;
    let ok = net.run_until(Duration::from_secs(1), |net| {
        available |=
            events(net, client).contains(&Event::Stream(StreamEvent::Available { dir: Dir::Uni }));
        available
    });
    assert!(ok, "the stream limit was not lifted after the reset");
    let b = conn(net, client, ch)
        .open(Dir::Uni, Band::Streaming)
        .unwrap();
    let net_ok = net.run_until(Duration::from_secs(1), |net| {
        conn(net, client, ch).write_credit(b) == WINDOW
    });
    assert!(
        net_ok,
        "connection credit of the reset stream was not returned"
    );

    let mut w = Writer::new(b, 2, 300_000);
    let mut received = Vec::new();
    let mut done = false;
    let ok = net.run_until(Duration::from_secs(5), |net| {
        w.pump(conn(net, client, ch));
        let c = conn(net, server, sh);
        c.accept(Dir::Uni);
        if c.is_readable(b) {
            let (got, end) = read_available(c, b);
            received.extend_from_slice(&got);
            done |= end;
        }
        done
    });
    assert!(ok, "the connection is wedged after a reset");
    assert_eq!(received, w.data);
    let settled = net.run_until(Duration::from_secs(1), |net| {
        conn(net, client, ch).stats().streams_active == 0
            && conn(net, server, sh).stats().streams_active == 0
    });
    assert!(settled, "reset streams were not forgotten");
}

#[test]
fn stop_sending_stops_the_writer_with_its_code_and_returns_the_credit() {
    const WINDOW: u64 = 64 * 1024;
    let transport = {
        let mut transport = TransportConfig::default();
        transport.receive_window = WINDOW;
        transport.max_concurrent_uni_streams = 1;
        transport
    };
    let (mut s, ch, sh) = setup(18, transport);
    let (client, server) = (s.client, s.server);
    let net = &mut s.net;

    let a = conn(net, client, ch)
        .open(Dir::Uni, Band::Streaming)
        .unwrap();
    let n = conn(net, client, ch)
        .write(a, Bytes::from(content(1, 0, 100_000)))
        .unwrap();
    assert_eq!(n as u64, WINDOW);
    net.run_for(Duration::from_millis(5));
    assert_eq!(conn(net, server, sh).accept(Dir::Uni), Some(a));
    assert_eq!(
        conn(net, server, sh).stats().flow.recv_credit_consumed,
        WINDOW
    );
    conn(net, server, sh).stop(a, 9).unwrap();
    assert_eq!(
        conn(net, server, sh).read(a, usize::MAX),
        Err(ReadError::ClosedStream)
    );

    let mut stopped = None;
    let ok = net.run_until(Duration::from_secs(1), |net| {
        for e in events(net, client) {
            if let Event::Stream(StreamEvent::Stopped { id, code }) = e {
                stopped = Some((id, code));
            }
        }
        stopped.is_some()
    });
    assert!(ok, "the writer was not told to stop");
    assert_eq!(stopped, Some((a, 9)));
    assert_eq!(
        conn(net, client, ch).write(a, Bytes::from_static(b"more")),
        Err(WriteError::Stopped(9))
    );
    assert_eq!(conn(net, client, ch).finish(a), Err(WriteError::Stopped(9)));

    // The unread data's credit and the stream slot come back.
    let ok = net.run_until(Duration::from_secs(1), |net| {
        conn(net, client, ch).stats().streams_active == 0
            && conn(net, server, sh).stats().streams_active == 0
    });
    assert!(ok, "the stopped stream was not closed on both ends");
    let mut b = None;
    let ok = net.run_until(Duration::from_secs(1), |net| {
        b = conn(net, client, ch).open(Dir::Uni, Band::Streaming).ok();
        b.is_some()
    });
    assert!(ok, "no stream slot after stop_sending");
    let b = b.unwrap();
    assert_eq!(
        conn(net, client, ch).write_credit(b),
        WINDOW,
        "all connection credit is back"
    );

    let mut w = Writer::new(b, 2, 300_000);
    let mut received = Vec::new();
    let mut done = false;
    let ok = net.run_until(Duration::from_secs(5), |net| {
        w.pump(conn(net, client, ch));
        let c = conn(net, server, sh);
        c.accept(Dir::Uni);
        if c.is_readable(b) {
            let (got, end) = read_available(c, b);
            received.extend_from_slice(&got);
            done |= end;
        }
        done
    });
    assert!(ok, "the connection is wedged after stop_sending");
    assert_eq!(received, w.data);
}

// ---- datagrams -------------------------------------------------------------

fn numbered(i: u32, len: usize) -> Bytes {
    let mut d = content(u64::from(i), 0, len);
    d[..4].copy_from_slice(&i.to_le_bytes());
    Bytes::from(d)
}

fn number(d: &[u8]) -> u32 {
    u32::from_le_bytes(d[..4].try_into().unwrap())
}

#[test]
fn datagram_larger_than_the_limit_is_refused_and_the_largest_allowed_arrives() {
    let (mut s, ch, sh) = setup(19, TransportConfig::default());
    let (client, server) = (s.client, s.server);
    let net = &mut s.net;

    let max = conn(net, client, ch).max_datagram_size();
    assert!(max > 1000 && max <= 1200, "max datagram size {max}");
    assert_eq!(
        conn(net, client, ch).send_datagram(vec![0u8; max + 1], Band::Streaming),
        Err(DatagramError::TooLarge { size: max + 1, max })
    );
    let big = numbered(1, max);
    conn(net, client, ch)
        .send_datagram(big.clone(), Band::Streaming)
        .unwrap();
    let mut got = None;
    let ok = net.run_until(Duration::from_secs(1), |net| {
        got = conn(net, server, sh).recv_datagram();
        got.is_some()
    });
    assert!(ok, "the largest allowed datagram did not arrive");
    assert_eq!(got.unwrap(), big);
    assert_eq!(conn(net, client, ch).stats().datagrams.sent, 1);
}

#[test]
fn datagram_burst_beyond_the_send_buffer_drops_the_oldest_and_counts_them() {
    // Room for eight: each queued datagram is charged for its slot too.
    let transport = {
        let mut transport = TransportConfig::default();
        transport.datagram_send_buffer = 8 * (1000 + DATAGRAM_ENTRY_COST);
        transport
    };
    let (mut s, ch, sh) = setup(20, transport);
    let (client, server) = (s.client, s.server);
    let net = &mut s.net;

    for i in 0..30 {
        conn(net, client, ch)
            .send_datagram(numbered(i, 1000), Band::Background)
            .unwrap();
    }
    assert_eq!(conn(net, client, ch).stats().datagrams.dropped_send, 22);

    let mut got = Vec::new();
    net.run_until(Duration::from_millis(100), |net| {
        while let Some(d) = conn(net, server, sh).recv_datagram() {
            got.push(number(&d));
        }
        false
    });
    assert_eq!(
        got,
        (22..30).collect::<Vec<_>>(),
        "the newest eight arrive, in order"
    );
    let cs = conn(net, client, ch).stats().datagrams;
    assert_eq!((cs.sent, cs.dropped_send, cs.lost), (8, 22, 0));
    assert_eq!(conn(net, server, sh).stats().datagrams.received, 8);
}

#[test]
fn datagrams_lost_on_the_wire_are_counted_and_never_retransmitted() {
    const COUNT: u32 = 3_000;
    let mut s = Setup::new(21, LinkConfig::default());
    let (ch, sh) = s.connect();
    let (client, server) = (s.client, s.server);
    let (ca, sa) = (s.net.addr(client), s.net.addr(server));
    s.net
        .set_link(ca, sa, LinkConfig::lossy(Duration::from_micros(25), 0.1));
    let net = &mut s.net;

    for i in 0..COUNT {
        conn(net, client, ch)
            .send_datagram(numbered(i, 300), Band::Streaming)
            .unwrap();
    }
    let mut seen = HashSet::new();
    let mut collect = |net: &mut Network| {
        while let Some(d) = conn(net, server, sh).recv_datagram() {
            assert!(
                seen.insert(number(&d)),
                "datagram {} delivered twice",
                number(&d)
            );
        }
    };
    // Long enough for every loss to be detected by ACKs or a probe.
    net.run_until(Duration::from_millis(200), |net| {
        collect(net);
        false
    });
    let cs = conn(net, client, ch).stats();
    assert_eq!(cs.datagrams.sent, u64::from(COUNT));
    assert_eq!(cs.datagrams.dropped_send, 0);
    let received = conn(net, server, sh).stats().datagrams.received;
    assert!(
        cs.datagrams.lost > 0 && received < u64::from(COUNT),
        "the link lost some"
    );
    assert_eq!(
        cs.datagrams.lost + received,
        u64::from(COUNT),
        "every datagram is either received or counted lost"
    );
    assert!(cs.packets_lost > 0);

    // Nothing is ever sent again: more time brings no more datagrams.
    net.run_for(Duration::from_secs(2));
    collect(net);
    assert_eq!(seen.len() as u64, received);
    assert_eq!(conn(net, server, sh).stats().datagrams.received, received);
    assert!(
        conn(net, client, ch).is_established(),
        "{:?}",
        conn(net, client, ch).error()
    );
}
