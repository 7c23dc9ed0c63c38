//! What an endpoint decided about each datagram, and its counters.

use thiserror::Error;

use crate::crypto::HandshakeError;
use crate::packet::{BusyReason, MIN_INITIAL_SIZE, PacketError};

use super::ConnectionHandle;

/// What became of a received datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Handed to an existing connection.
    Routed(ConnectionHandle),
    /// An initiation that passed the cheap checks and waits for its
    /// handshake job ([`Endpoint::poll_handshake`](super::Endpoint::poll_handshake)).
    Queued,
    /// Started a new server-side connection (a completed handshake job).
    Accepted(ConnectionHandle),
    /// Answered without keeping state (retry, or a refusal).
    Answered(Refusal),
    /// Dropped.
    Dropped(Refusal),
}

/// Why a datagram did not reach or create a connection. Each has an
/// [`EndpointStats`] counter.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Could not be parsed.
    #[error("malformed datagram: {0}")]
    Malformed(PacketError),
    /// Addressed to no connection this endpoint has.
    #[error("unknown connection id")]
    UnknownConnection,
    /// An initiation for a node that does not accept connections.
    #[error("this endpoint does not accept connections")]
    NotAServer,
    /// An initiation in a protocol version we do not speak.
    #[error("unsupported version {0:#010x}")]
    VersionMismatch(u32),
    /// An Initial smaller than the anti-amplification padding demands.
    #[error("initial datagram of {0} bytes is below the {MIN_INITIAL_SIZE}-byte minimum")]
    InitialTooSmall(usize),
    /// An Initial whose mac1 does not verify: its sender does not know this
    /// node's public key, or the Initial was corrupted.
    #[error("initial mac1 does not verify (wrong node key, or corrupted)")]
    BadMac,
    /// An exact copy of an initiation this node already has: from its
    /// first sender, a retransmission (answered by the handshake already
    /// under way); from anywhere else, a replay.
    #[error("copy of a recent initiation")]
    DuplicateInitiation,
    /// A copy of an initiation from another address than its first
    /// sender's, or older than what the node still remembers: a replay.
    #[error("replayed handshake initiation")]
    ReplayedInitiation,
    /// The client was sent a retry token to prove its address.
    #[error("address validation requested (retry)")]
    RetryRequested,
    /// A retry token that this server did not issue for this address, or
    /// that expired.
    #[error("invalid or expired retry token")]
    InvalidToken,
    /// A retry token that already bought one handshake.
    #[error("retry token already used")]
    TokenReused,
    /// Set aside without handshake work (the client is told, and starts
    /// over with a fresh initiation).
    #[error("initiation set aside: {0}")]
    Busy(BusyReason),
    /// The initiation did not decrypt with our key (wrong server key, or
    /// corruption).
    #[error("handshake failed: {0}")]
    HandshakeFailed(HandshakeError),
    /// An initiation stamped further from our clock than the allowed skew:
    /// an old replay, or a client with a wrong clock (it is told so).
    #[error("handshake initiation outside the allowed clock skew")]
    StaleInitiation,
    /// The client key is not on the allow-list.
    #[error("client key not allowed")]
    ClientNotAllowed,
    /// The node does not accept MXP connections now (carrier switch).
    #[error("not accepting MXP connections")]
    NotAccepting,
}

/// Endpoint-wide counters: everything refused before reaching a
/// connection, and handshake outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams handed to [`Endpoint::handle`](super::Endpoint::handle).
    pub datagrams_received: u64,
    /// Connections that completed their handshake (either side).
    pub connections_established: u64,
    /// Initiations refused because the node does not accept MXP now.
    pub carrier_refusals: u64,
    /// Their bytes.
    pub bytes_received: u64,
    /// Datagrams that could not be parsed.
    pub malformed: u64,
    /// Datagrams for unknown connection ids.
    pub unknown_connection: u64,
    /// Initials below the minimum size.
    pub initials_too_small: u64,
    /// Initials of another version (answered with a refusal).
    pub version_mismatches: u64,
    /// Initials whose mac1 did not verify (dropped before any
    /// Diffie-Hellman work).
    pub mac_failures: u64,
    /// Exact copies of an initiation, from its first sender, dropped
    /// before any Diffie-Hellman work (retransmissions: harmless).
    pub duplicate_initiations: u64,
    /// Retry packets sent.
    pub retries_sent: u64,
    /// Invalid or expired retry tokens.
    pub invalid_tokens: u64,
    /// Retry tokens presented a second time.
    pub tokens_reused: u64,
    /// Initiations set aside because the handshake queue was full of
    /// sources with an equal or better claim.
    pub queue_full: u64,
    /// Queued initiations given up for a newcomer with a better claim.
    pub displaced: u64,
    /// Initiations set aside at the connection limit.
    pub connection_limit: u64,
    /// Initiations set aside at the limit of connections from one address.
    pub address_limit: u64,
    /// Handshakes set aside at the limit of connections with one client key.
    pub key_limit: u64,
    /// Handshake jobs handed out: the Diffie-Hellman work this node did
    /// (about five X25519 operations each).
    pub handshake_jobs: u64,
    /// Handshakes accepted (node side).
    pub handshakes_accepted: u64,
    /// Handshakes completed (client side).
    pub handshakes_completed: u64,
    /// Initiations that did not decrypt (wrong server key or corruption).
    pub server_key_mismatches: u64,
    /// Replayed initiations refused: copies from another address than the
    /// first sender's (before any Diffie-Hellman work), and initiations
    /// older than the replay log remembers.
    pub replayed_initiations: u64,
    /// Initiations refused for a timestamp outside the allowed clock skew.
    pub stale_initiations: u64,
    /// Initiations sent to a client-only endpoint.
    pub not_a_server: u64,
    /// Stateless resets sent for connections this node no longer has.
    pub stateless_resets_sent: u64,
    /// Stateless resets received: a server lost one of our connections.
    pub stateless_resets_received: u64,
    /// Stateless answers withheld because they would exceed three times the
    /// bytes of the datagram that caused them.
    pub amplification_blocked: u64,
    /// Refusals not sent because refusals were going out faster than
    /// their rate limit (a flood would otherwise make the node a reflector).
    pub refusals_suppressed: u64,
    /// Clients refused by the allow-list.
    pub clients_not_allowed: u64,
    /// Bytes of stateless answers (retries, refusals) sent.
    pub stateless_bytes_sent: u64,
    /// Busy answers received (client side): a node set our initiation
    /// aside and we started over.
    pub busy_received: u64,
}

impl EndpointStats {
    /// Every datagram refused before it reached a connection, whatever the
    /// reason: the one number for "garbage at the door".
    pub fn datagrams_refused(&self) -> u64 {
        self.malformed
            + self.unknown_connection
            + self.not_a_server
            + self.initials_too_small
            + self.version_mismatches
            + self.mac_failures
            + self.duplicate_initiations
            + self.invalid_tokens
            + self.tokens_reused
            + self.queue_full
            + self.displaced
            + self.connection_limit
            + self.address_limit
            + self.key_limit
            + self.server_key_mismatches
            + self.replayed_initiations
            + self.stale_initiations
            + self.clients_not_allowed
            + self.carrier_refusals
    }
}
