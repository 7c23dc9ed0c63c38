//! Resilience checks against one's own node (`mxp attack`), in the spirit
//! of msquic's quicattack and s2n-quic's quic-attack: floods of handshake
//! initiations ([`flood`]), and peers that complete the handshake and then
//! misbehave. Each runs beside a witness, an established client whose calls
//! must all be answered. Point them only at nodes you run.

mod flood;
mod hostile;
mod witness;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use mxp_proto::PublicKey;
use serde::Serialize;

pub use flood::{
    Flood, FloodKind, FloodReport, corrupt_mxp_initial, mxp_initial, mxp_initial_at, quic_initials,
};
pub use witness::WitnessReport;

use crate::Carrier;

/// What `mxp attack --kind` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AttackKind {
    /// Copies of one valid initiation from many source ports.
    HandshakeFlood,
    /// Initiations with a valid mac1 around a random handshake message:
    /// the cheapest garbage that reaches the node's handshake work.
    GarbageInitiation,
    /// One-byte STREAM frames at scattered offsets, offset 0 never sent.
    TinySegments,
    /// Packets full of empty datagrams.
    ZeroDatagrams,
    /// Packets full of PATH_CHALLENGE frames, while withholding ACKs.
    PathChallengeFlood,
    /// Opens every stream the node allows and holds them.
    StreamFlood,
    /// Announces large messages on every stream and never completes them.
    DecoderHold,
    /// A key update on every packet.
    KeyUpdateStorm,
    /// Packets full of ACK frames with the most ranges each.
    AckStorm,
}

impl AttackKind {
    /// Every kind, as named on the command line.
    pub const ALL: [AttackKind; 9] = [
        AttackKind::HandshakeFlood,
        AttackKind::GarbageInitiation,
        AttackKind::TinySegments,
        AttackKind::ZeroDatagrams,
        AttackKind::PathChallengeFlood,
        AttackKind::StreamFlood,
        AttackKind::DecoderHold,
        AttackKind::KeyUpdateStorm,
        AttackKind::AckStorm,
    ];

    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            AttackKind::HandshakeFlood => "handshake-flood",
            AttackKind::GarbageInitiation => "garbage-initiation",
            AttackKind::TinySegments => "tiny-segments",
            AttackKind::ZeroDatagrams => "zero-datagrams",
            AttackKind::PathChallengeFlood => "path-challenge-flood",
            AttackKind::StreamFlood => "stream-flood",
            AttackKind::DecoderHold => "decoder-hold",
            AttackKind::KeyUpdateStorm => "key-update-storm",
            AttackKind::AckStorm => "ack-storm",
        }
    }

    /// The handshake flood this kind sends, if it is one.
    fn flood(self) -> Option<FloodKind> {
        match self {
            AttackKind::HandshakeFlood => Some(FloodKind::Replay),
            AttackKind::GarbageInitiation => Some(FloodKind::Junk),
            _ => None,
        }
    }

    /// What the report's `sent` counts.
    fn unit(self) -> &'static str {
        match self {
            AttackKind::HandshakeFlood | AttackKind::GarbageInitiation => "datagrams",
            AttackKind::TinySegments => "one-byte stream frames",
            AttackKind::ZeroDatagrams => "empty datagrams",
            AttackKind::PathChallengeFlood => "path challenges",
            AttackKind::StreamFlood => "streams opened",
            AttackKind::DecoderHold => "message bytes",
            AttackKind::KeyUpdateStorm => "pings (each packet a key update)",
            AttackKind::AckStorm => "ACK frames",
        }
    }
}

impl fmt::Display for AttackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AttackKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        AttackKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = AttackKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown attack {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// What an attack sent and how the node reacted, as the attacker saw it.
/// What the node refused is on its `/metrics` (`mxp_peer_limits_total`,
/// `mxp_handshakes_limited_total`, `mxp_message_errors_total`, …).
#[derive(Debug, Clone, Serialize)]
pub struct AttackReport {
    /// The attack.
    pub kind: AttackKind,
    /// The node's MXP address.
    pub target: SocketAddr,
    /// How long it ran.
    pub seconds: f64,
    /// What was sent, in `unit`s.
    pub sent: u64,
    /// What `sent` counts.
    pub unit: &'static str,
    /// Hostile connections made (0 for the floods).
    pub connections: u64,
    /// Connections the node closed, by the reason it gave.
    pub closed_by_node: BTreeMap<String, u64>,
    /// Connection attempts the node refused or did not answer, by reason.
    pub connect_failures: BTreeMap<String, u64>,
    /// The established client's calls meanwhile.
    pub witness: WitnessReport,
}

/// An attack, ready to run.
#[derive(Debug, Clone)]
pub struct Attack {
    /// What to do.
    pub kind: AttackKind,
    /// The node: `mxp://host:port` or `host:port`.
    pub url: String,
    /// The node's public key.
    pub node: PublicKey,
    /// How long to keep at it.
    pub duration: Duration,
    /// Datagrams (floods) or packets (the others) per second.
    pub rate: u64,
}

/// Why an attack could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttackError {
    /// The target does not resolve, or the witness cannot connect.
    #[error("{0}")]
    Target(String),
    /// Sending failed.
    #[error("cannot send: {0}")]
    Send(String),
}

impl Attack {
    /// Runs the attack and its witness to the end.
    pub async fn run(&self) -> Result<AttackReport, AttackError> {
        let target = crate::resolve_address(&self.url)
            .await
            .map_err(|e| AttackError::Target(e.to_string()))?;
        let witness = witness::Witness::connect(&self.url, self.node)
            .await
            .map_err(AttackError::Target)?;
        let started = Instant::now();
        let until = started + self.duration;
        let watching = tokio::spawn(witness.run(until));
        let mut report = AttackReport {
            kind: self.kind,
            target,
            seconds: 0.0,
            sent: 0,
            unit: self.kind.unit(),
            connections: 0,
            closed_by_node: BTreeMap::new(),
            connect_failures: BTreeMap::new(),
            witness: WitnessReport::default(),
        };
        if let Some(kind) = self.kind.flood() {
            let flood = Flood::prepare(Carrier::Mxp, kind, target, self.node, 1)
                .await
                .map_err(|e| AttackError::Send(e.to_string()))?
                .rate(self.rate)
                .duration(self.duration);
            let sent = tokio::task::spawn_blocking(move || flood.run())
                .await
                .map_err(|e| AttackError::Send(e.to_string()))?
                .map_err(|e| AttackError::Send(e.to_string()))?;
            report.sent = sent.sent;
        } else {
            self.misbehave(until, &mut report).await?;
        }
        report.seconds = started.elapsed().as_secs_f64();
        report.witness = watching.await.unwrap_or_default();
        Ok(report)
    }

    /// Connects, misbehaves until the node closes the connection, and
    /// again, until `until`.
    async fn misbehave(
        &self,
        until: Instant,
        report: &mut AttackReport,
    ) -> Result<(), AttackError> {
        let endpoint =
            witness::client_endpoint().map_err(|e| AttackError::Target(e.to_string()))?;
        while Instant::now() < until {
            let connecting = endpoint.connect(&self.url, self.node);
            let conn = match tokio::time::timeout(Duration::from_secs(2), connecting).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    *report.connect_failures.entry(e.to_string()).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => {
                    *report
                        .connect_failures
                        .entry("no answer within 2 s".into())
                        .or_default() += 1;
                    continue;
                }
            };
            report.connections += 1;
            if conn.carrier() != Carrier::Mxp {
                return Err(AttackError::Target("the node answered over QUIC".into()));
            }
            let outcome = hostile::misbehave(self.kind, &conn, self.rate, until).await;
            report.sent += outcome.sent;
            if let Some(reason) = outcome.closed {
                *report.closed_by_node.entry(reason.to_string()).or_default() += 1;
            }
            conn.close(0, b"attack over");
        }
        Ok(())
    }
}
