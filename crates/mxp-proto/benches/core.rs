//! Micro-benchmarks of the core's hot paths: the MXP message codec, packet
//! protection, ACK processing and the scheduler. `cargo bench -p mxp-proto`
//! runs them; `perf_baseline` measures the transport end to end.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mxp_proto::benching::{AckProcessing, SchedulerLoad};
use mxp_proto::crypto::Secret;
use mxp_proto::frame::{self, Ack, Frame};
use mxp_proto::message::{Message, MessageType};
use mxp_proto::packet::{self, ConnectionId};
use mxp_proto::ranges::RangeSet;
use mxp_proto::{Endpoint, EndpointConfig, Keypair, RetryPolicy, ServerConfig};

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for size in [64usize, 256, 4096] {
        let message = Message::new(MessageType::Call, vec![7u8; size])
            .with_message_id(42)
            .with_trace_id(7);
        let wire = message.to_bytes().expect("encodes");
        group.throughput(Throughput::Bytes(wire.len() as u64));
        let mut out = Vec::with_capacity(wire.len());
        group.bench_function(format!("encode/{size}B"), |b| {
            b.iter(|| {
                out.clear();
                black_box(&message).encode(&mut out).expect("encodes");
                black_box(out.len())
            })
        });
        group.bench_function(format!("decode/{size}B"), |b| {
            b.iter(|| Message::decode(black_box(&wire)).expect("decodes").1)
        });
    }
    group.finish();
}

fn protection(c: &mut Criterion) {
    let secret = Secret::new([9; 32]);
    let (key, hp) = (secret.packet_key(), secret.header_key());
    let dcid = ConnectionId([3; packet::CID_LEN]);
    let mut group = c.benchmark_group("packet_protection");
    for payload in [64usize, 1200] {
        group.throughput(Throughput::Bytes(payload as u64));
        let mut buf = Vec::with_capacity(payload + 64);
        let mut pn = 0u64;
        group.bench_function(format!("seal/{payload}B"), |b| {
            b.iter(|| {
                buf.clear();
                pn += 1;
                packet::write_short_header(dcid, pn, 4, false, &mut buf);
                buf.resize(buf.len() + payload, 0xab);
                packet::seal_short(&mut buf, 0, pn, &key, &hp);
                black_box(buf.len())
            })
        });
        let mut sealed = Vec::new();
        packet::write_short_header(dcid, 1000, 4, false, &mut sealed);
        sealed.resize(sealed.len() + payload, 0xab);
        packet::seal_short(&mut sealed, 0, 1000, &key, &hp);
        let mut scratch = sealed.clone();
        group.bench_function(format!("open/{payload}B"), |b| {
            b.iter(|| {
                scratch.copy_from_slice(&sealed);
                let opened = packet::open_short(&mut scratch, Some(999), &hp).expect("header");
                packet::open_payload(&mut scratch, &opened, &key).expect("authentic")
            })
        });
    }
    group.finish();
}

/// ACK frames as a receiver builds them (packet numbers in, frame out) and
/// as a sender applies them (frame in, packets settled).
fn ack_processing(c: &mut Criterion) {
    let mut group = c.benchmark_group("ack");
    // Receiver: record 64 packets with a hole every 8th, then write the frame.
    group.bench_function("receive_64_and_encode", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            let mut received = RangeSet::new();
            for pn in (0..64u64).filter(|pn| pn % 8 != 7) {
                received.insert_one(pn);
            }
            out.clear();
            Ack::encode_ranges(received.iter_rev(), 25, &mut out);
            black_box(out.len())
        })
    });
    // Sender: parse an ACK with 8 ranges and apply it to 64 packets in flight.
    let ranges: Vec<_> = (0..8u64).rev().map(|i| i * 8..=i * 8 + 6).collect();
    let ack = Ack {
        largest: 62,
        delay_us: 25,
        ranges,
    };
    let mut wire = Vec::new();
    Frame::Ack(ack.clone()).encode(&mut wire);
    let wire = Bytes::from(wire);
    group.bench_function("parse_frame_8_ranges", |b| {
        b.iter(|| frame::Iter::new(black_box(wire.clone())).count())
    });
    let now = Instant::now();
    group.bench_function("apply_8_ranges_to_64_in_flight", |b| {
        b.iter_batched(
            || AckProcessing::new(64, now),
            // The state is returned so that dropping it is not timed.
            |mut state| {
                let settled = state.apply(now + Duration::from_micros(50), &ack);
                (state, settled)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn scheduler(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler");
    for flows in [1u64, 100] {
        let mut load = SchedulerLoad::new(flows);
        group.bench_function(format!("next/{flows}_flows_per_band"), |b| {
            b.iter(|| load.next(black_box(1100)))
        });
    }
    group.finish();
}

/// Moves every datagram `from` wants to send into `to`; returns how many.
fn carry(from: &mut Endpoint, from_addr: SocketAddr, to: &mut Endpoint, now: Instant) -> usize {
    let mut n = 0;
    let mut buf = Vec::new();
    while let Some(t) = from.poll_transmit(now, &mut buf) {
        let datagram = BytesMut::from(&buf[buf.len() - t.size..]);
        to.handle(now, from_addr, datagram);
        // A node's handshake work, on this thread.
        to.run_handshakes(now);
        buf.clear();
        n += 1;
    }
    n
}

/// One round of what the runtime's driver asks an endpoint each time it
/// wakes (anything to send, any event, the next deadline) on a node with
/// many established, idle connections: its cost should not grow with them.
fn endpoint_polls(c: &mut Criterion) {
    let mut group = c.benchmark_group("endpoint");
    group.sample_size(20);
    for connections in [1usize, 1000] {
        let now = Instant::now();
        let unix = Duration::from_secs(1_767_225_600);
        let keys = Keypair::generate();
        let mut config = EndpointConfig::server(keys.clone());
        // Every connection is set up at one instant: beyond the default
        // handshake budget's burst, which this benchmark is not about.
        config.server = Some(Arc::new({
            let mut server_config = ServerConfig::default();
            server_config.retry = RetryPolicy::Never;
            server_config.handshake_rate = u32::MAX;
            server_config.handshake_burst = u32::MAX;
            server_config
        }));
        let mut node = Endpoint::new(config, now, unix);
        let node_addr: SocketAddr = "10.0.0.1:1".parse().expect("literal");
        for i in 0..connections {
            let mut client = Endpoint::new(EndpointConfig::client(Keypair::generate()), now, unix);
            let client_addr = SocketAddr::from(([10, 0, 1, 1], 1000 + i as u16));
            client
                .connect(now, node_addr, keys.public())
                .expect("connects");
            while carry(&mut client, client_addr, &mut node, now)
                + carry(&mut node, node_addr, &mut client, now)
                > 0
            {}
        }
        while node.poll_event().is_some() {}
        assert_eq!(node.connection_count(), connections, "{:?}", node.stats());
        let mut buf = Vec::new();
        group.bench_function(format!("idle_poll_round/{connections}_connections"), |b| {
            b.iter(|| {
                let sent = node.poll_transmit(now, &mut buf);
                let event = node.poll_event();
                (sent.is_some(), event.is_some(), node.poll_timeout())
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    codec,
    protection,
    ack_processing,
    scheduler,
    endpoint_polls
);
criterion_main!(benches);
