//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz
//! targets as an ordinary test, so every input that ever mattered keeps
//! being checked even where cargo-fuzz (nightly) is not installed.
//!
//! `cargo test --test fuzz_corpus -- --ignored regenerate` rewrites the
//! seed inputs (valid packets, frames, handshakes and messages that give
//! the fuzzer a head start past the first parsing checks).

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use mxp::proto::crypto::handshake::Initiator;
use mxp::proto::crypto::{Mac1Key, Secret};
use mxp::proto::frame::{Ack, Close, CloseKind, Frame, ResetStream, StopSending, Stream};
use mxp::proto::message::{Flags, Message, MessageType};
use mxp::proto::packet::{self, ConnectionId};
use mxp::proto::{Dir, Keypair, Side, StreamId, fuzzing};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 4] = [
    ("packet", fuzzing::packet),
    ("frames", fuzzing::frames),
    ("handshake", fuzzing::handshake),
    ("message", fuzzing::message),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

#[test]
fn every_corpus_input_is_handled_without_panicking() {
    let mut total = 0;
    for (name, target) in TARGETS {
        let dir = corpus_dir(name);
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut count = 0;
        for entry in entries {
            let data = fs::read(entry.expect("dir entry").path()).expect("corpus file");
            target(&data);
            count += 1;
        }
        assert!(count > 0, "the {name} corpus is empty");
        total += count;
    }
    assert!(total >= 4);
}

fn sample_frames() -> Vec<Frame> {
    let id = StreamId::new(Side::Client, Dir::Bi, 3);
    vec![
        Frame::Ping,
        Frame::Padding(3),
        Frame::Ack(Ack {
            largest: 10,
            delay_us: 25,
            ranges: vec![8..=10, 2..=5],
        }),
        Frame::ResetStream(ResetStream {
            id,
            error_code: 7,
            final_size: 100,
        }),
        Frame::StopSending(StopSending { id, error_code: 9 }),
        Frame::Stream(Stream {
            id,
            offset: 0,
            fin: false,
            data: Bytes::from_static(b"hello"),
        }),
        Frame::Stream(Stream {
            id,
            offset: 5,
            fin: true,
            data: Bytes::from_static(b" world"),
        }),
        Frame::MaxData(1 << 20),
        Frame::MaxStreamData { id, max: 1 << 16 },
        Frame::MaxStreams {
            dir: Dir::Uni,
            count: 10,
        },
        Frame::DataBlocked(5),
        Frame::StreamDataBlocked { id, limit: 5 },
        Frame::StreamsBlocked {
            dir: Dir::Bi,
            limit: 1,
        },
        Frame::PathChallenge([1; 8]),
        Frame::PathResponse([2; 8]),
        Frame::ImmediateAck,
        Frame::GoAway,
        Frame::Datagram(Bytes::from_static(b"datagram")),
        Frame::Close(Close {
            kind: CloseKind::Application,
            error_code: 3,
            reason: Bytes::from_static(b"bye"),
        }),
    ]
}

#[test]
#[ignore = "rewrites fuzz/corpus seeds; run by hand"]
fn regenerate() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join(name), data).expect("write seed");
    };
    // frames: each frame alone, and all of them in one payload.
    let mut all = Vec::new();
    for (i, f) in sample_frames().iter().enumerate() {
        let mut one = Vec::new();
        f.encode(&mut one);
        write("frames", &format!("seed-{i:02}"), &one);
        all.extend_from_slice(&one);
    }
    write("frames", "seed-all", &all);

    // packet: a short packet sealed with the keys the packet target uses
    // (it decrypts with the "remote" secret [2; 32]).
    let secret = Secret::new([2; 32]);
    let mut pkt = Vec::new();
    packet::write_short_header(ConnectionId([5; 8]), 1001, 2, false, &mut pkt);
    pkt.extend_from_slice(&all);
    packet::seal_short(
        &mut pkt,
        0,
        1001,
        &secret.packet_key(),
        &secret.header_key(),
    );
    write("packet", "seed-short", &pkt);
    // The handshake target's server key: its Initials carry a mac1 that
    // verifies, so the fuzzer gets past the first check.
    let server = Keypair::from_secret([7; 32]);
    let mut initial = Vec::new();
    packet::write_initial(
        ConnectionId([1; 8]),
        ConnectionId([2; 8]),
        b"token",
        b"noise",
        &Mac1Key::for_node(&server.public()),
        &mut initial,
    );
    write("packet", "seed-initial", &initial);

    // handshake: a real Noise IK first message to the target's server key,
    // with the prologue of the Initial the target wraps it in.
    let client = Keypair::from_secret([8; 32]);
    let prologue = packet::handshake_prologue(ConnectionId([1; 8]), ConnectionId([2; 8]));
    let (_, msg1) = Initiator::start(&client, &server.public(), &prologue, &[0; 8]).expect("noise");
    write("handshake", "seed-noise1", &msg1);
    write("handshake", "seed-initial", &initial);

    // message: one of each type.
    for (i, ty) in MessageType::ALL.iter().enumerate() {
        let m = Message::new(*ty, Bytes::from(vec![i as u8; i * 7]))
            .with_message_id(i as u64)
            .with_trace_id(42)
            .with_flags(Flags::REQUIRES_ACK);
        write(
            "message",
            &format!("seed-{:02}", i),
            &m.to_bytes().expect("encode"),
        );
    }
}
