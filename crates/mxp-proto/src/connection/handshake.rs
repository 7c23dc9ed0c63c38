//! The connection's side of the handshake: the client's Initial and its
//! retransmission, retry and refusal handling, and the server's cached
//! answer. (Reading initiations and server policy live in the endpoint.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::HANDSHAKE;
use tracing::{debug, info};

use super::{Connection, Path, Timer};
use crate::Side;
use crate::coding::Reader;
use crate::config::TransportConfig;
use crate::crypto::handshake::Initiator;
use crate::crypto::{Keypair, Mac1Key, PublicKey, RESET_TOKEN_LEN};
use crate::error::ConnectionError;
use crate::packet::keys::KeyState;
use crate::packet::{self, BusyReason, CID_LEN, ConnectionId, Header, RejectReason};
use crate::transport_params::TransportParams;

/// Identifies an initiation, so a server recognises exact retransmissions.
pub(crate) fn initiation_digest(noise: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(noise)
}

/// Longest wait between two copies of the client's Initial.
const MAX_INITIAL_INTERVAL: Duration = Duration::from_secs(1);
/// A busy node's refusals answered with a fresh initiation at once; later
/// ones wait, doubling from [`BUSY_BACKOFF`] up to [`MAX_BUSY_BACKOFF`], so a
/// crowd of refused clients does not become a flood of its own.
const BUSY_AT_ONCE: u32 = 2;
const BUSY_BACKOFF: Duration = Duration::from_millis(1);
const MAX_BUSY_BACKOFF: Duration = Duration::from_millis(100);

/// What the client says inside Noise message 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientHello {
    /// Wall-clock time of the initiation (ns since the Unix epoch). The
    /// node refuses initiations outside its clock-skew window, so it only
    /// has to remember the initiations of that window to refuse replays.
    pub timestamp: u64,
    pub params: TransportParams,
}

impl ClientHello {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        self.params.encode(out);
    }

    pub(crate) fn decode(buf: &[u8]) -> Option<Self> {
        let mut r = Reader::new(buf);
        let timestamp = r.u64().ok()?;
        let params = TransportParams::decode(r.rest()).ok()?;
        Some(ClientHello { timestamp, params })
    }
}

/// What the server says inside Noise message 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerHello {
    /// Welcome: the server's connection id, the token that will prove a
    /// reset of it, and the server's limits.
    Accept {
        cid: ConnectionId,
        reset_token: [u8; RESET_TOKEN_LEN],
        params: TransportParams,
    },
    /// Authenticated, and not on the allow-list.
    ClientNotAllowed,
    /// The initiation's timestamp is outside the server's allowed clock
    /// skew; the server's clock reads this (ns since the Unix epoch).
    ClockSkew { server_time_ns: u64 },
}

impl ServerHello {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ServerHello::Accept {
                cid,
                reset_token,
                params,
            } => {
                out.push(0);
                out.extend_from_slice(&cid.0);
                out.extend_from_slice(reset_token);
                params.encode(out);
            }
            ServerHello::ClientNotAllowed => out.push(1),
            ServerHello::ClockSkew { server_time_ns } => {
                out.push(2);
                out.extend_from_slice(&server_time_ns.to_be_bytes());
            }
        }
    }

    pub(crate) fn decode(buf: &[u8]) -> Option<Self> {
        let mut r = Reader::new(buf);
        match r.u8().ok()? {
            0 => {
                let cid = ConnectionId(r.array::<CID_LEN>().ok()?);
                let reset_token = r.array::<RESET_TOKEN_LEN>().ok()?;
                let params = TransportParams::decode(r.rest()).ok()?;
                Some(ServerHello::Accept {
                    cid,
                    reset_token,
                    params,
                })
            }
            1 => Some(ServerHello::ClientNotAllowed),
            2 => Some(ServerHello::ClockSkew {
                server_time_ns: r.u64().ok()?,
            }),
            _ => None,
        }
    }
}

/// The client's side of a handshake in progress.
#[derive(Debug)]
pub(crate) struct ClientHandshake {
    /// What a restarted handshake needs: a corrupted or forged answer
    /// consumes the Noise state, so the client starts over.
    keypair: Keypair,
    server_key: PublicKey,
    /// Keyed by the server's public key: proves to the server we know it.
    mac1: Mac1Key,
    /// Wall clock (ns since the Unix epoch) at `started`.
    unix_time_ns: u64,
    started: Instant,
    initiator: Option<Initiator>,
    /// Random id of the server side, chosen by us until the server names
    /// its own.
    initial_dcid: ConnectionId,
    noise: Vec<u8>,
    /// The Initial datagram, rebuilt only when a retry adds a token.
    packet: Vec<u8>,
    /// Times the Initial went out, and when it last did.
    sends: u32,
    last_sent: Option<Instant>,
    need_send: bool,
    retried: bool,
    /// Reject packets received (of either reason).
    key_rejects: u32,
    /// Busy refusals received, and the last one's reason: named in the
    /// error if the handshake times out.
    busy: u32,
    last_busy: Option<BusyReason>,
}

/// What the endpoint learned from an initiation it accepted, to start the
/// server side of the connection with.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub keys: KeyState,
    pub client_key: PublicKey,
    pub client_params: TransportParams,
    pub remote: SocketAddr,
    pub local_cid: ConnectionId,
    pub remote_cid: ConnectionId,
    /// The Handshake packet answering it.
    pub reply: Vec<u8>,
    /// Size of the Initial datagram (the first anti-amplification credit).
    pub initial_len: usize,
    /// Digest of the initiation, to recognise the client's retransmissions.
    pub initiation: u64,
    /// The client proved its address with a retry token.
    pub address_validated: bool,
}

/// Handshake progress.
#[derive(Debug)]
pub(crate) enum Handshake {
    /// Boxed: it is large and short-lived, and connections outlive it.
    Client(Box<ClientHandshake>),
    Server {
        /// The answer (a Handshake packet), resent when a retransmitted
        /// Initial shows the client did not get it.
        reply: Vec<u8>,
        need_send: bool,
        sent_at: Option<Instant>,
        /// Digest of the client's Noise message 1: only exact copies of it
        /// count as retransmissions.
        initiation: u64,
    },
    Done,
}

/// Builds Noise message 1 and the Initial carrying it.
fn start_initiation(
    config: &TransportConfig,
    keypair: &Keypair,
    (server_key, mac1): (&PublicKey, &Mac1Key),
    initial_dcid: ConnectionId,
    local_cid: ConnectionId,
    timestamp: u64,
) -> Result<(Initiator, Vec<u8>, Vec<u8>), crate::crypto::HandshakeError> {
    let hello = ClientHello {
        timestamp,
        params: TransportParams::from_config(config),
    };
    let mut payload = Vec::new();
    hello.encode(&mut payload);
    let prologue = packet::handshake_prologue(initial_dcid, local_cid);
    let (initiator, noise) = Initiator::start(keypair, server_key, &prologue, &payload)?;
    let mut initial = Vec::new();
    packet::write_initial(initial_dcid, local_cid, &[], &noise, mac1, &mut initial);
    Ok((initiator, noise, initial))
}

impl Connection {
    /// Starts a client connection; the first `poll_transmit` yields the
    /// Initial.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn connect(
        now: Instant,
        config: Arc<TransportConfig>,
        keypair: &Keypair,
        server_key: &PublicKey,
        remote: SocketAddr,
        local_cid: ConnectionId,
        initial_dcid: ConnectionId,
        unix_time_ns: u64,
    ) -> Result<Connection, crate::crypto::HandshakeError> {
        let mac1 = Mac1Key::for_node(server_key);
        let (initiator, noise, initial) = start_initiation(
            &config,
            keypair,
            (server_key, &mac1),
            initial_dcid,
            local_cid,
            unix_time_ns,
        )?;
        let handshake = Handshake::Client(Box::new(ClientHandshake {
            keypair: keypair.clone(),
            server_key: *server_key,
            mac1,
            unix_time_ns,
            started: now,
            initiator: Some(initiator),
            initial_dcid,
            noise,
            packet: initial,
            sends: 0,
            last_sent: None,
            need_send: true,
            retried: false,
            key_rejects: 0,
            busy: 0,
            last_busy: None,
        }));
        let mut conn = Connection::new(
            Side::Client,
            config,
            local_cid,
            initial_dcid,
            Path::new(remote, true),
            handshake,
            now,
        );
        conn.peer_key = Some(*server_key);
        Ok(conn)
    }

    /// Creates the server side of a connection whose initiation the
    /// endpoint accepted.
    pub(crate) fn accepted(now: Instant, config: Arc<TransportConfig>, a: Accepted) -> Connection {
        let handshake = Handshake::Server {
            reply: a.reply,
            need_send: true,
            sent_at: None,
            initiation: a.initiation,
        };
        let mut path = Path::new(a.remote, a.address_validated);
        path.received = a.initial_len as u64;
        let mut conn = Connection::new(
            Side::Node,
            config,
            a.local_cid,
            a.remote_cid,
            path,
            handshake,
            now,
        );
        conn.keys = Some(a.keys);
        conn.peer_key = Some(a.client_key);
        conn.apply_peer_params(a.client_params);
        conn
    }

    fn apply_peer_params(&mut self, params: TransportParams) {
        self.streams.set_peer_limits(
            [
                params.initial_max_streams_bidi,
                params.initial_max_streams_uni,
            ],
            params.initial_max_stream_data,
            params.initial_max_data,
        );
        self.peer_params = Some(params);
    }

    /// An Initial with this connection's ids reached the server side: if it
    /// is the client's retransmission, it did not get our answer, so resend
    /// it (within the amplification budget). Anything else with these ids
    /// is dropped and counted, and earns no amplification credit.
    pub(crate) fn on_repeated_initial(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        len: usize,
        noise: &[u8],
    ) {
        let Handshake::Server {
            need_send,
            initiation,
            ..
        } = &mut self.handshake
        else {
            // The handshake is over: a late copy or a replay.
            self.stats.dropped_packets += 1;
            return;
        };
        if remote != self.path.remote || initiation_digest(noise) != *initiation {
            // Another address, or not the same initiation: not the client.
            self.stats.dropped_packets += 1;
            return;
        }
        *need_send = true;
        self.path.received += len as u64;
        self.stats.packets_received += 1;
        self.stats.bytes_received += len as u64;
        self.reset_idle_timer(now);
    }

    /// The Initial (client) or answer (server) to send now, if any.
    pub(super) fn poll_handshake_transmit(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
    ) -> Option<usize> {
        match &mut self.handshake {
            Handshake::Client(hs) if hs.need_send => {
                hs.need_send = false;
                hs.sends += 1;
                hs.last_sent = Some(now);
                buf.extend_from_slice(&hs.packet);
                let len = hs.packet.len();
                let pto = self.recovery.rtt.pto_base(self.config.timer_granularity);
                let backoff = 1u32 << (hs.sends - 1).min(16);
                // Back off, but keep trying at least once a second so a lossy
                // path gets many attempts within the handshake timeout.
                let wait = (pto * backoff).min(MAX_INITIAL_INTERVAL.max(pto));
                self.set_timer(Timer::LossDetection, Some(now + wait));
                Some(len)
            }
            Handshake::Server {
                reply,
                need_send,
                sent_at,
                ..
            } if *need_send => {
                if (reply.len() as u64) > self.path.budget() {
                    // Anti-amplification: wait for more bytes from the client.
                    self.stats.amplification_blocked += 1;
                    *need_send = false;
                    return None;
                }
                *need_send = false;
                sent_at.get_or_insert(now);
                buf.extend_from_slice(reply);
                Some(reply.len())
            }
            _ => None,
        }
    }

    /// Why the handshake failed when its timeout fired: the node's last
    /// busy answer if it gave one, else silence.
    pub(super) fn handshake_timeout_error(&self) -> ConnectionError {
        match &self.handshake {
            Handshake::Client(hs) => hs
                .last_busy
                .map_or(ConnectionError::HandshakeTimedOut, |reason| {
                    ConnectionError::NodeBusy { reason }
                }),
            _ => ConnectionError::HandshakeTimedOut,
        }
    }

    /// The client's handshake retransmission timer fired.
    pub(super) fn on_handshake_timeout(&mut self) {
        if let Handshake::Client(hs) = &mut self.handshake {
            let span = &self.span;
            debug!(target: HANDSHAKE, parent: span, "retransmitting Initial");
            hs.need_send = true;
        }
    }

    /// A long-header packet for a client connection.
    pub(super) fn handle_long(&mut self, now: Instant, header: Header<'_>, len: usize) {
        let Handshake::Client(hs) = &mut self.handshake else {
            self.stats.dropped_packets += 1;
            return;
        };
        let ClientHandshake {
            initiator,
            initial_dcid,
            noise,
            packet,
            sends,
            last_sent,
            need_send,
            retried,
            key_rejects,
            unix_time_ns,
            started,
            mac1,
            busy,
            last_busy,
            ..
        } = &mut **hs;
        let local_clock_ns =
            *unix_time_ns + now.saturating_duration_since(*started).as_nanos() as u64;
        match header {
            // The header's copy of the server's id is not authenticated (a
            // flipped bit there must not kill the handshake): the one inside
            // Noise message 2 is what counts.
            Header::Handshake { noise: msg2, .. } => {
                let Some(init) = initiator.take() else {
                    return;
                };
                // Karn: only an Initial sent once gives an unambiguous sample.
                let sample = (*sends == 1)
                    .then(|| last_sent.map(|t| now.saturating_duration_since(t)))
                    .flatten();
                let (secrets, payload) = match init.finish(msg2) {
                    Ok(done) => done,
                    Err(e) => {
                        // Corrupted or forged: keep waiting for the real one.
                        debug!(target: HANDSHAKE, parent: &self.span, error = %e, "bad handshake answer");
                        self.stats.decrypt_failures += 1;
                        self.restart_handshake(now);
                        return;
                    }
                };
                self.stats.packets_received += 1;
                self.stats.bytes_received += len as u64;
                match ServerHello::decode(&payload) {
                    Some(ServerHello::Accept {
                        cid,
                        reset_token,
                        params,
                    }) => {
                        self.remote_cid = cid;
                        self.reset_token = Some(reset_token);
                        self.keys = Some(KeyState::new(secrets, now));
                        self.apply_peer_params(params);
                        if let Some(rtt) = sample {
                            self.recovery
                                .rtt_sample(rtt, Duration::ZERO, Duration::ZERO);
                        }
                        self.set_timer(Timer::LossDetection, None);
                        // Prove our address to the server at once.
                        self.pending.ping = true;
                        self.on_established(now);
                    }
                    Some(ServerHello::ClientNotAllowed) => {
                        info!(target: HANDSHAKE, parent: &self.span, "server refused our client key");
                        self.lost(ConnectionError::ClientNotAllowed);
                        self.set_drained();
                    }
                    Some(ServerHello::ClockSkew { server_time_ns }) => {
                        let local_ahead_ms =
                            ((local_clock_ns as i128 - server_time_ns as i128) / 1_000_000) as i64;
                        info!(target: HANDSHAKE, parent: &self.span, local_ahead_ms, "server refused our handshake timestamp");
                        self.lost(ConnectionError::ClockSkew { local_ahead_ms });
                        self.set_drained();
                    }
                    _ => {
                        self.lost(ConnectionError::TransportError(
                            crate::error::TransportError::new(
                                crate::error::TransportErrorCode::TRANSPORT_PARAMETER_ERROR,
                                "malformed server handshake payload",
                            ),
                        ));
                        self.set_drained();
                    }
                }
            }
            Header::Retry { scid, token, .. } => {
                if *retried || scid != *initial_dcid {
                    self.stats.dropped_packets += 1;
                    return;
                }
                let span = &self.span;
                debug!(target: HANDSHAKE, parent: span, "server asked for address validation");
                *retried = true;
                packet.clear();
                packet::write_initial(*initial_dcid, self.local_cid, token, noise, mac1, packet);
                *need_send = true;
                *sends = 0;
            }
            Header::Reject { scid, reason, .. } => {
                if scid != *initial_dcid {
                    self.stats.dropped_packets += 1;
                    return;
                }
                if let RejectReason::CarrierRefused { quic_port } = reason {
                    info!(target: HANDSHAKE, parent: &self.span, quic_port, "node does not accept MXP now");
                    let quic_port = (quic_port != 0).then_some(quic_port);
                    self.lost(ConnectionError::CarrierRefused { quic_port });
                    self.set_drained();
                    return;
                }
                if let RejectReason::Busy(why) = reason {
                    *busy += 1;
                    *last_busy = Some(why);
                    let backoff = match busy.checked_sub(BUSY_AT_ONCE + 1) {
                        None => Duration::ZERO,
                        Some(n) => (BUSY_BACKOFF * (1 << n.min(16))).min(MAX_BUSY_BACKOFF),
                    };
                    debug!(target: HANDSHAKE, parent: &self.span, reason = why.as_str(), ?backoff, "node set our initiation aside; starting over");
                    self.restart_handshake(now);
                    if !backoff.is_zero() {
                        if let Handshake::Client(hs) = &mut self.handshake {
                            hs.need_send = false;
                        }
                        self.set_timer(Timer::LossDetection, Some(now + backoff));
                    }
                    return;
                }
                // Unauthenticated, and a corrupted Initial (a flipped
                // version bit, a spoiled ciphertext) looks the same to the
                // server: believe a refusal only when a fresh Initial is
                // refused too. Fresh means a new server-side id, so a
                // duplicate of this refusal cannot count as the second.
                *key_rejects += 1;
                if *key_rejects < 2 {
                    self.restart_handshake(now);
                    return;
                }
                match reason {
                    RejectReason::VersionMismatch => {
                        info!(target: HANDSHAKE, parent: &self.span, "server does not speak our version");
                        self.lost(ConnectionError::VersionMismatch);
                        self.set_drained();
                    }
                    RejectReason::ServerKeyMismatch => {
                        info!(target: HANDSHAKE, parent: &self.span, "server could not decrypt our handshake: wrong server key");
                        self.lost(ConnectionError::ServerKeyMismatch);
                        self.set_drained();
                    }
                    RejectReason::CarrierRefused { .. } | RejectReason::Busy(_) => {
                        unreachable!("handled above")
                    }
                }
            }
            _ => self.stats.dropped_packets += 1,
        }
    }

    /// Starts the handshake over with fresh ephemeral keys, a fresh
    /// timestamp and a fresh server-side id (so the server treats it as a
    /// new attempt rather than a repeat of the spoiled one).
    fn restart_handshake(&mut self, now: Instant) {
        let Handshake::Client(hs) = &mut self.handshake else {
            return;
        };
        let ClientHandshake {
            keypair,
            server_key,
            mac1,
            unix_time_ns,
            started,
            initiator,
            initial_dcid,
            noise,
            packet,
            sends,
            need_send,
            retried,
            ..
        } = &mut **hs;
        let elapsed = now.saturating_duration_since(*started).as_nanos() as u64;
        let dcid = ConnectionId::random();
        match start_initiation(
            &self.config,
            keypair,
            (server_key, mac1),
            dcid,
            self.local_cid,
            *unix_time_ns + elapsed,
        ) {
            Ok((init, msg1, initial)) => {
                *initiator = Some(init);
                *initial_dcid = dcid;
                *noise = msg1;
                *packet = initial;
                *sends = 0;
                *need_send = true;
                *retried = false;
                self.remote_cid = dcid;
            }
            Err(e) => {
                debug!(target: HANDSHAKE, parent: &self.span, error = %e, "cannot restart handshake");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use crate::packet::{self, Header};
    use crate::test_support::Pair;
    use crate::{ConnectionError, Event, Incoming};

    /// The server's id in a Handshake packet's header is outside Noise's
    /// authentication; a bit flipped there must not fail the handshake.
    #[test]
    fn corrupted_server_id_in_the_handshake_header_does_not_fail_the_handshake() {
        let mut p = Pair::new();
        let initial = p.client_datagram();
        let accepted = p.deliver_to_server(&initial);
        assert!(matches!(accepted, Incoming::Accepted(_)));
        let answer = p.server_datagram();
        let Ok(Header::Handshake { scid, .. }) = packet::parse(&answer) else {
            panic!("expected a Handshake packet");
        };
        let at = answer
            .windows(scid.0.len())
            .position(|w| w == scid.0)
            .unwrap();
        let mut corrupted = answer.clone();
        corrupted[at] ^= 0x10;

        let routed = p
            .client
            .handle(p.now, p.server_addr, BytesMut::from(&corrupted[..]));
        assert!(matches!(routed, Incoming::Routed(_)));
        assert_eq!(p.client.poll_event(), Some((p.conn, Event::Connected)));
        let conn = p.client.connection(p.conn).unwrap();
        assert_eq!(conn.remote_cid, scid, "the authenticated id is used");

        // The server recognises the client's packets.
        let proof = p.client_datagram();
        let routed = p
            .server
            .handle(p.now, p.client_addr, BytesMut::from(&proof[..]));
        assert!(matches!(routed, Incoming::Routed(_)), "{routed:?}");
        assert!(
            p.server
                .poll_event()
                .is_some_and(|(_, e)| e == Event::Connected)
        );
    }

    /// Carries the client's next Initial to the server, spoiling its version
    /// if asked, and the server's answer back twice, as a duplicating
    /// network would.
    fn exchange(p: &mut Pair, spoil: bool) -> Incoming {
        let mut initial = p.client_datagram();
        if spoil {
            let version = packet::VERSION.to_be_bytes();
            let at = initial.windows(4).position(|w| w == version).unwrap();
            initial[at + 3] ^= 0x01;
        }
        let outcome = p.deliver_to_server(&initial);
        let answer = p.server_datagram();
        for _ in 0..2 {
            p.client
                .handle(p.now, p.server_addr, BytesMut::from(&answer[..]));
        }
        outcome
    }

    /// A bit flipped in the Initial's version field makes the server answer
    /// with an (unauthenticated) version-mismatch refusal; the client tries
    /// once more instead of giving up, even if the refusal arrives twice,
    /// and still gives up on a real mismatch (two Initials refused).
    #[test]
    fn one_version_refusal_is_retried_and_a_second_is_believed() {
        let mut p = Pair::new();
        assert!(matches!(exchange(&mut p, true), Incoming::Answered(_)));
        assert_eq!(p.client.poll_event(), None, "one refusal is not believed");
        assert!(matches!(exchange(&mut p, false), Incoming::Accepted(_)));
        assert_eq!(p.client.poll_event(), Some((p.conn, Event::Connected)));

        let mut p = Pair::new();
        exchange(&mut p, true);
        exchange(&mut p, true);
        let lost = Event::ConnectionLost {
            reason: ConnectionError::VersionMismatch,
        };
        assert_eq!(p.client.poll_event(), Some((p.conn, lost)));
    }

    /// Only an exact copy of the client's initiation, from the client's
    /// address, while the handshake is still open, makes the server resend
    /// its answer and grants amplification credit.
    #[test]
    fn only_exact_repeats_of_the_initiation_count_as_retransmissions() {
        let mut p = Pair::new();
        let initial = p.client_datagram();
        let Incoming::Accepted(h) = p.deliver_to_server(&initial) else {
            panic!("initiation not accepted");
        };
        p.server_datagram(); // the answer, lost
        let received = |p: &mut Pair| p.server.connection(h).unwrap().stats();

        // A corrupted copy with the same ids: dropped, no credit, no answer.
        let Ok(Header::Initial { noise, .. }) = packet::parse(&initial) else {
            panic!("an Initial");
        };
        let at = initial
            .windows(noise.len())
            .position(|w| w == noise)
            .unwrap();
        let mut corrupted = initial.clone();
        corrupted[at + 5] ^= 1;
        let before = received(&mut p);
        p.server
            .handle(p.now, p.client_addr, BytesMut::from(&corrupted[..]));
        let after = received(&mut p);
        assert_eq!(after.packets_received, before.packets_received);
        assert_eq!(after.dropped_packets, before.dropped_packets + 1);
        assert_eq!(p.server_to_client(), 0, "no answer to a forgery");

        // The exact copy: the client lost our answer, so it goes again.
        p.server
            .handle(p.now, p.client_addr, BytesMut::from(&initial[..]));
        assert_eq!(
            received(&mut p).packets_received,
            after.packets_received + 1
        );
        assert_eq!(p.server_to_client(), 1, "answer resent");
    }
}
