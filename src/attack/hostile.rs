//! A peer that completed the handshake and then misbehaves: what each
//! connection-level attack sends, on an MXP connection of the runtime whose
//! sans-IO core is told to misbehave (see the core's hidden hostile hooks).

use std::time::{Duration, Instant};

use bytes::Bytes;
use mxp_proto::frame::{self, Frame};
use mxp_proto::message::{MAX_PAYLOAD_LEN, Message, MessageType};
use mxp_proto::{Band, ConnectionError, Dir, INJECT_MAX, Side, StreamId};

use super::AttackKind;
use crate::Connection;

/// Batches of injected frames allowed to wait at once: the attacker's own
/// memory stays small when its sending is held back.
const MAX_QUEUED: usize = 64;
/// How often the attack tops up what it sends.
const TICK: Duration = Duration::from_millis(1);
/// Bytes written per stream per tick by the stream attacks.
const WRITE_STEP: usize = 16 * 1024;
/// The message size the decoder hold announces on all streams but the
/// first (the node's default limit; the first announces the format's
/// ceiling, which a node at the default refuses at once).
const HOLD_MESSAGE: usize = 1 << 20;

/// What one hostile connection did.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Frames (or streams, or stream bytes) sent, in the attack's unit.
    pub sent: u64,
    /// The node closed the connection, with this reason.
    pub closed: Option<ConnectionError>,
}

/// The per-connection state of an attack.
struct Attack {
    kind: AttackKind,
    /// Frames built so far (tiny segments: also the next offset's index).
    frames: u64,
    /// Streams opened, with the zero bytes each still has to write.
    streams: Vec<(StreamId, usize)>,
}

/// What the stream attacks write after a stream's first bytes.
static ZEROS: [u8; WRITE_STEP] = [0; WRITE_STEP];

/// Runs `f` on `conn`'s core connection (an MXP connection: the caller
/// checked), or says why it is gone.
fn on_core<R>(
    conn: &Connection,
    f: impl FnOnce(&mut mxp_proto::Connection) -> R,
) -> Result<R, ConnectionError> {
    conn.on_core(f)
        .unwrap_or(Err(ConnectionError::LocallyClosed))
}

/// Runs `kind` on `link` at `rate` packets a second until `until` or until
/// the node closes the connection.
pub(crate) async fn misbehave(
    kind: AttackKind,
    link: &Connection,
    rate: u64,
    until: Instant,
) -> Outcome {
    let mut attack = Attack {
        kind,
        frames: 0,
        streams: Vec::new(),
    };
    let mut outcome = Outcome::default();
    let started = Instant::now();
    let mut batches = 0u64;
    let setup = on_core(link, |c| attack.setup(c));
    if let Err(e) = setup {
        outcome.closed = Some(e);
        return outcome;
    }
    while Instant::now() < until {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        let step = on_core(link, |c| {
            if let Some(e) = c.error() {
                return Err(e.clone());
            }
            while batches < due && c.injected_pending() < MAX_QUEUED {
                let Some(batch) = attack.next_batch(c) else {
                    break;
                };
                c.inject_frames(batch);
                batches += 1;
            }
            Ok(attack.write_streams(c))
        });
        match step.and_then(|r| r) {
            Ok(written) => outcome.sent += written,
            Err(e) => {
                outcome.closed = Some(e);
                break;
            }
        }
        tokio::time::sleep(TICK).await;
    }
    if kind == AttackKind::StreamFlood && outcome.closed.is_none() {
        outcome.closed = attack.one_stream_too_many(link).await;
    }
    outcome.sent += match kind {
        AttackKind::StreamFlood => attack.streams.len() as u64,
        AttackKind::DecoderHold => 0,
        _ => attack.frames,
    };
    outcome
}

impl Attack {
    fn setup(&mut self, c: &mut mxp_proto::Connection) {
        match self.kind {
            AttackKind::PathChallengeFlood => c.withhold_acks(true),
            AttackKind::KeyUpdateStorm => c.storm_key_updates(true),
            AttackKind::StreamFlood => {
                for dir in [Dir::Bi, Dir::Uni] {
                    while let Ok(id) = c.open(dir, Band::Streaming) {
                        let _ = c.write_slice(id, b"x");
                        self.streams.push((id, 0));
                    }
                }
            }
            AttackKind::DecoderHold => {
                while let Ok(id) = c.open(Dir::Bi, Band::Streaming) {
                    let announce = match self.streams.is_empty() {
                        true => MAX_PAYLOAD_LEN,
                        false => HOLD_MESSAGE,
                    };
                    // A valid header, then all of the payload but its last
                    // byte (the header fits the window a new stream has).
                    let _ = c.write_slice(id, &header_announcing(announce));
                    self.streams.push((id, announce - 1));
                }
            }
            _ => {}
        }
    }

    /// The next packet's worth of frames, if this attack sends frames.
    fn next_batch(&mut self, c: &mut mxp_proto::Connection) -> Option<Bytes> {
        let mut out = Vec::with_capacity(INJECT_MAX);
        match self.kind {
            AttackKind::TinySegments => {
                // Odd offsets within the first MiB of each stream (the
                // default stream window), offset 0 never sent.
                const PER_STREAM: u64 = 1 << 19;
                while out.len() + 16 <= INJECT_MAX {
                    let (stream, k) = (self.frames / PER_STREAM, self.frames % PER_STREAM);
                    let id = StreamId::new(Side::Client, Dir::Bi, stream);
                    Frame::Stream(frame::Stream {
                        id,
                        offset: 1 + 2 * k,
                        fin: false,
                        data: Bytes::from_static(b"x"),
                    })
                    .encode(&mut out);
                    self.frames += 1;
                }
            }
            AttackKind::ZeroDatagrams => {
                while out.len() + 2 <= INJECT_MAX {
                    frame::encode_datagram_header(0, true, &mut out);
                    self.frames += 1;
                }
            }
            AttackKind::PathChallengeFlood => {
                while out.len() + 9 <= INJECT_MAX {
                    let mut data = [0u8; 8];
                    mxp_proto::crypto::fill_random(&mut data);
                    Frame::PathChallenge(data).encode(&mut out);
                    self.frames += 1;
                }
            }
            AttackKind::KeyUpdateStorm => {
                // Padded to a packet of its own: each is a key update,
                // and asks for the ACK (in the new keys) that lets the
                // next packet update again.
                Frame::ImmediateAck.encode(&mut out);
                Frame::Padding(INJECT_MAX - out.len()).encode(&mut out);
                self.frames += 1;
            }
            AttackKind::AckStorm => {
                let frames = c.ack_storm_frames(2);
                if frames.is_empty() {
                    return None;
                }
                self.frames += 2;
                return Some(frames);
            }
            // The stream attacks write instead; the floods are not here.
            _ => return None,
        }
        Some(Bytes::from(out))
    }

    /// Sends data on the first bidirectional stream beyond the node's
    /// limit, and waits briefly for the node to close the connection.
    async fn one_stream_too_many(&self, link: &Connection) -> Option<ConnectionError> {
        let beyond = self
            .streams
            .iter()
            .filter(|(id, _)| id.dir() == Dir::Bi)
            .count();
        let mut out = Vec::new();
        Frame::Stream(frame::Stream {
            id: StreamId::new(Side::Client, Dir::Bi, beyond as u64),
            offset: 0,
            fin: false,
            data: Bytes::from_static(b"x"),
        })
        .encode(&mut out);
        let _ = on_core(link, |c| c.inject_frames(Bytes::from(out)));
        for _ in 0..200 {
            tokio::time::sleep(TICK).await;
            match on_core(link, |c| c.error().cloned()) {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return Some(e),
            }
        }
        None
    }

    /// Writes what the stream attacks still have to write, as flow control
    /// allows; returns the bytes written.
    fn write_streams(&mut self, c: &mut mxp_proto::Connection) -> u64 {
        let mut written = 0;
        for (id, rest) in &mut self.streams {
            if *rest == 0 {
                continue;
            }
            let step = (*rest).min(WRITE_STEP);
            if let Ok(n) = c.write_slice(*id, &ZEROS[..step]) {
                *rest -= n;
                written += n as u64;
            }
        }
        written
    }
}

/// A valid MXP message header (a call) announcing a payload of `len` bytes.
fn header_announcing(len: usize) -> Vec<u8> {
    let empty = Message::new(MessageType::Call, Bytes::new())
        .to_bytes()
        .expect("an empty message encodes");
    let mut header = empty[..32].to_vec();
    header[24..32].copy_from_slice(&(len as u64).to_le_bytes());
    header
}
