//! Floods of handshake initiations on real sockets, as an attacker would
//! send them.
//!
//! A flood is a list of datagrams (or a recipe for fresh ones) sent at a
//! fixed rate from many source ports of this host, never reading what
//! comes back: a blind sender, which is what a spoofing attacker is. The
//! node's side of the story (what it refused, how much handshake work it
//! did) is on its `/metrics`.

use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;
use std::time::{Duration, Instant};

use mxp_proto::crypto::Mac1Key;
use mxp_proto::packet::{self, ConnectionId, Header};
use mxp_proto::{Endpoint as ProtoEndpoint, EndpointConfig, Keypair, PublicKey};
use serde::Serialize;

use crate::Carrier;

/// What a flood sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum FloodKind {
    /// Copies of one valid Initial (as captured from a real client).
    Replay,
    /// Copies of one valid Initial with a byte of its handshake message
    /// flipped (on MXP its mac1 no longer verifies; on QUIC it no longer
    /// decrypts).
    Corrupt,
    /// MXP: the corrupted copy with its mac1 recomputed, as a sender who
    /// knows the node's public key would.
    CorruptMac,
    /// MXP: a different random handshake message in every Initial, each
    /// with a valid mac1: the cheapest flood that reaches the node's
    /// handshake work.
    Junk,
    /// Valid initiations, each from a fresh client key (generated before
    /// the flood starts; they cost the sender a handshake each).
    Fresh,
}

impl FloodKind {
    /// Every kind, as named on the command line.
    pub const ALL: [FloodKind; 5] = [
        FloodKind::Replay,
        FloodKind::Corrupt,
        FloodKind::CorruptMac,
        FloodKind::Junk,
        FloodKind::Fresh,
    ];

    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            FloodKind::Replay => "replay",
            FloodKind::Corrupt => "corrupt",
            FloodKind::CorruptMac => "corrupt-mac",
            FloodKind::Junk => "junk",
            FloodKind::Fresh => "fresh",
        }
    }
}

impl fmt::Display for FloodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FloodKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FloodKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = FloodKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown flood {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// What a flood did, as the sender saw it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FloodReport {
    /// Datagrams handed to the kernel.
    pub sent: u64,
    /// Datagrams the kernel refused (its send buffer was full).
    pub send_errors: u64,
    /// How long the flood ran.
    pub elapsed: Duration,
    /// Datagrams per second achieved.
    pub rate: f64,
}

/// A flood: what to send, where, how fast, for how long, from how many
/// source ports.
#[derive(Debug)]
pub struct Flood {
    source: Source,
    target: SocketAddr,
    rate: u64,
    duration: Duration,
    ports: usize,
}

#[derive(Debug)]
enum Source {
    /// Sent in turn.
    Datagrams(Vec<Vec<u8>>),
    /// A fresh junk Initial per datagram, valid under this mac1 key.
    Junk(Mac1Key),
}

/// A valid MXP Initial for the node at `target` with key `node`, from a
/// fresh client key (a throwaway sans-IO client: nothing is sent).
pub fn mxp_initial(target: SocketAddr, node: PublicKey) -> Vec<u8> {
    mxp_initial_at(
        target,
        node,
        Instant::now(),
        crate::mxp::endpoint::unix_time(),
    )
}

/// [`mxp_initial`] stamped by a given clock: `unix` is the wall-clock time
/// at `now` (a simulated network's, say).
pub fn mxp_initial_at(
    target: SocketAddr,
    node: PublicKey,
    now: Instant,
    unix: Duration,
) -> Vec<u8> {
    let mut client = ProtoEndpoint::new(EndpointConfig::client(Keypair::generate()), now, unix);
    client
        .connect(now, target, node)
        .expect("a handshake can start");
    let mut buf = Vec::new();
    let t = client
        .poll_transmit(now, &mut buf)
        .expect("a new connection sends its Initial");
    buf.truncate(t.size);
    buf
}

/// `initial` with one byte of its Noise message flipped; its mac1 is
/// recomputed under `mac1` if given.
pub fn corrupt_mxp_initial(initial: &[u8], mac1: Option<&Mac1Key>) -> Vec<u8> {
    let Ok(Header::Initial {
        dcid,
        scid,
        token,
        noise,
        covered,
        ..
    }) = packet::parse(initial)
    else {
        return initial.to_vec();
    };
    let at = noise.len() / 2;
    match mac1 {
        Some(key) => {
            let mut spoiled = noise.to_vec();
            spoiled[at] ^= 0x01;
            let mut out = Vec::new();
            packet::write_initial(dcid, scid, token, &spoiled, key, &mut out);
            out
        }
        None => {
            // The Noise message ends where mac1 begins; the old mac1 stays.
            let mut out = initial.to_vec();
            out[covered.len() - noise.len() + at] ^= 0x01;
            out
        }
    }
}

fn junk_initial(mac1: &Mac1Key) -> Vec<u8> {
    let mut noise = [0u8; 96];
    mxp_proto::crypto::fill_random(&mut noise);
    let mut out = Vec::new();
    packet::write_initial(
        ConnectionId::random(),
        ConnectionId::random(),
        &[],
        &noise,
        mac1,
        &mut out,
    );
    out
}

/// Valid QUIC Initials from quinn clients (each a new connection: new
/// connection ids and TLS key share), captured on a local socket; nothing
/// reaches any node.
pub async fn quic_initials(count: usize) -> io::Result<Vec<Vec<u8>>> {
    let capture = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let to = capture.local_addr()?;
    let client = crate::quic::capture_client()?;
    let mut out = Vec::with_capacity(count);
    let mut buf = vec![0u8; 65_536];
    for _ in 0..count {
        let connecting = client
            .connect(to, "mxp-node")
            .map_err(|e| io::Error::other(e.to_string()))?;
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), capture.recv_from(&mut buf))
            .await
            .map_err(|_| io::Error::other("quinn sent no Initial"))??;
        out.push(buf[..n].to_vec());
        drop(connecting);
    }
    client.close(quinn::VarInt::from_u32(0), b"");
    Ok(out)
}

impl Flood {
    /// A flood of `kind` at the node at `target`. `node` is the node's key
    /// (MXP); `distinct` bounds how many fresh Initials are made up front
    /// for [`FloodKind::Fresh`] (beyond it they repeat).
    pub async fn prepare(
        carrier: Carrier,
        kind: FloodKind,
        target: SocketAddr,
        node: PublicKey,
        distinct: usize,
    ) -> io::Result<Flood> {
        let source = match (carrier, kind) {
            (Carrier::Mxp, FloodKind::Replay) => Source::Datagrams(vec![mxp_initial(target, node)]),
            (Carrier::Mxp, FloodKind::Corrupt) => {
                Source::Datagrams(vec![corrupt_mxp_initial(&mxp_initial(target, node), None)])
            }
            (Carrier::Mxp, FloodKind::CorruptMac) => {
                let key = Mac1Key::for_node(&node);
                let initial = mxp_initial(target, node);
                Source::Datagrams(vec![corrupt_mxp_initial(&initial, Some(&key))])
            }
            (Carrier::Mxp, FloodKind::Junk) => Source::Junk(Mac1Key::for_node(&node)),
            (Carrier::Mxp, FloodKind::Fresh) => Source::Datagrams(
                (0..distinct.max(1))
                    .map(|_| mxp_initial(target, node))
                    .collect(),
            ),
            (Carrier::Quic, FloodKind::Replay) => Source::Datagrams(quic_initials(1).await?),
            (Carrier::Quic, FloodKind::Corrupt) => {
                let mut initial = quic_initials(1).await?.remove(0);
                let at = initial.len() / 2;
                initial[at] ^= 0x01;
                Source::Datagrams(vec![initial])
            }
            (Carrier::Quic, FloodKind::Fresh) => {
                Source::Datagrams(quic_initials(distinct.max(1)).await?)
            }
            (Carrier::Quic, FloodKind::CorruptMac | FloodKind::Junk) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the {kind} flood is MXP's (QUIC has no mac1)"),
                ));
            }
        };
        Ok(Flood {
            source,
            target,
            rate: 10_000,
            duration: Duration::from_secs(5),
            ports: 256,
        })
    }

    /// Datagrams per second (default 10,000).
    pub fn rate(mut self, per_second: u64) -> Self {
        self.rate = per_second.max(1);
        self
    }

    /// How long to send (default 5 s).
    pub fn duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    /// Source ports to send from (default 256).
    pub fn ports(mut self, ports: usize) -> Self {
        self.ports = ports.max(1);
        self
    }

    /// Sends the flood; blocks until it is over (run it on its own thread).
    pub fn run(&self) -> io::Result<FloodReport> {
        let any: SocketAddr = if self.target.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let sockets = (0..self.ports)
            .map(|_| {
                let s = UdpSocket::bind(any)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let start = Instant::now();
        let (mut sent, mut send_errors, mut n) = (0u64, 0u64, 0u64);
        let total = (self.rate as f64 * self.duration.as_secs_f64()) as u64;
        let mut junk: Vec<u8>;
        while n < total {
            // Whatever is due by now, then a short sleep: the rate holds on
            // average whatever the sleep's precision.
            let due = ((start.elapsed().as_secs_f64() * self.rate as f64) as u64).min(total);
            while n < due {
                let datagram: &[u8] = match &self.source {
                    Source::Datagrams(d) => &d[(n as usize) % d.len()],
                    Source::Junk(key) => {
                        junk = junk_initial(key);
                        &junk
                    }
                };
                match sockets[(n as usize) % sockets.len()].send_to(datagram, self.target) {
                    Ok(_) => sent += 1,
                    Err(_) => send_errors += 1,
                }
                n += 1;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let elapsed = start.elapsed();
        Ok(FloodReport {
            sent,
            send_errors,
            elapsed,
            rate: sent as f64 / elapsed.as_secs_f64().max(1e-9),
        })
    }
}
