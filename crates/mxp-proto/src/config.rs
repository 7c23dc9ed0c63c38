//! Configuration of endpoints and connections, with defaults chosen for
//! agent traffic inside a datacenter: RTTs of tens of microseconds, so no
//! millisecond floors anywhere.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::Band;
use crate::crypto::{Keypair, PublicKey};
use crate::packet::keys::KeyRotation;

/// Per-connection transport settings. Both ends may differ; limits that
/// bind the peer are exchanged in the handshake.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TransportConfig {
    /// Largest UDP payload this end sends or accepts. 1452 fits a 1500-byte
    /// Ethernet MTU under IPv6; loopback and jumbo-frame fabrics can go higher.
    pub max_udp_payload_size: u16,
    /// RTT assumed before the first sample; sets the handshake retransmission
    /// timer.
    pub initial_rtt: Duration,
    /// Longest this end delays an acknowledgement of non-urgent data. Urgent
    /// (Critical-band) packets are acknowledged at once.
    pub max_ack_delay: Duration,
    /// Acknowledge at once after this many ack-eliciting packets.
    pub ack_eliciting_threshold: u32,
    /// Floor for loss-detection and probe timers. Microseconds, not the
    /// 1 ms of RFC 9002, because datacenter RTTs are far below 1 ms.
    pub timer_granularity: Duration,
    /// Packets acknowledged after a packet before it is declared lost.
    pub packet_threshold: u64,
    /// Congestion window before any loss, in bytes.
    pub initial_window: u64,
    /// Spread packets over the RTT instead of bursting the whole window.
    pub pacing: bool,
    /// Close a connection on which nothing was received for this long.
    pub idle_timeout: Duration,
    /// Send a PING when nothing was sent for this long (keeps NAT bindings
    /// and the peer's idle timer alive). `None`: never.
    pub keep_alive_interval: Option<Duration>,
    /// Give up on a handshake that has not completed after this long.
    pub handshake_timeout: Duration,
    /// Bytes a peer may send on one stream beyond what the application read.
    pub stream_receive_window: u64,
    /// Bytes a peer may send on all streams beyond what the application read.
    pub receive_window: u64,
    /// Bidirectional streams the peer may have open at once.
    pub max_concurrent_bidi_streams: u64,
    /// Unidirectional streams the peer may have open at once.
    pub max_concurrent_uni_streams: u64,
    /// Bytes the application may have written that the peer has not yet
    /// acknowledged, over all streams; writes wait beyond it. Bounds what
    /// a peer that withholds ACKs makes this end keep, whatever credit it
    /// grants.
    pub send_window: u64,
    /// Largest datagram payload accepted; 0 disables datagrams.
    pub max_datagram_size: u16,
    /// Bytes of received datagrams buffered for the application; the oldest
    /// are dropped (and counted) beyond it.
    pub datagram_receive_buffer: usize,
    /// Bytes of outgoing datagrams buffered; the oldest are dropped (and
    /// counted) beyond it.
    pub datagram_send_buffer: usize,
    /// When packet keys rotate.
    pub key_rotation: KeyRotation,
    /// Weighted-fair-queuing weight of each band, indexed by [`Band::index`].
    pub band_weights: [u32; Band::COUNT],
    /// Key updates the peer may start per second (in bursts of up to 16);
    /// one more closes the connection with KEY_UPDATE_ERROR. Each costs a
    /// key derivation here (a few microseconds). A peer on the default
    /// rotation policy (every 10,000 packets) stays under the default up
    /// to a million packets a second on one connection.
    pub peer_key_update_rate: u32,
    /// Packets that may fail authentication over a connection's life before
    /// it closes with AEAD_LIMIT_REACHED (RFC 9001 §6.6). The default is the
    /// integrity limit of AES-256-GCM, 2^52.
    pub max_decrypt_failures: u64,
    /// Largest MXP message payload a stream accepts: a header announcing
    /// more is refused at once (`MessageError::PayloadTooLarge`). At most
    /// the format's own ceiling, [`MAX_PAYLOAD_LEN`](crate::message::MAX_PAYLOAD_LEN).
    pub max_message_size: usize,
    /// ACK frames applied per packet; further ones are ignored (and
    /// counted), so a packet costs one walk of the in-flight window, not
    /// hundreds. A well-behaved peer sends one.
    pub max_acks_per_packet: u32,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_udp_payload_size: 1452,
            initial_rtt: Duration::from_millis(10),
            max_ack_delay: Duration::from_micros(200),
            ack_eliciting_threshold: 2,
            timer_granularity: Duration::from_micros(10),
            packet_threshold: 3,
            initial_window: 32 * 1452,
            pacing: true,
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: None,
            handshake_timeout: Duration::from_secs(10),
            stream_receive_window: 1 << 20,
            receive_window: 16 << 20,
            max_concurrent_bidi_streams: 4096,
            max_concurrent_uni_streams: 4096,
            send_window: 16 << 20,
            max_datagram_size: 1200,
            datagram_receive_buffer: 1 << 20,
            datagram_send_buffer: 1 << 20,
            key_rotation: KeyRotation::default(),
            band_weights: [8, 4, 2, 1],
            peer_key_update_rate: 100,
            max_decrypt_failures: 1 << 52,
            max_acks_per_packet: 2,
            max_message_size: 1 << 20,
        }
    }
}

/// When a server makes clients prove their address before it spends a
/// Diffie-Hellman operation on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RetryPolicy {
    /// Never: every initiation is processed (subject to the rate limit).
    Never,
    /// While handshake work arrives faster than it is done (initiations
    /// wait in the handshake queue, or for the budget), and for a second
    /// after; or while more than `retry_pending_threshold` accepted
    /// handshakes wait for their client's confirmation.
    #[default]
    UnderLoad,
    /// Always: one extra round trip, maximal flood resistance.
    Always,
}

impl RetryPolicy {
    /// Whether an initiation must prove its address first, given whether
    /// the node counts as loaded.
    pub fn demands_retry(self, loaded: bool) -> bool {
        match self {
            RetryPolicy::Never => false,
            RetryPolicy::UnderLoad => loaded,
            RetryPolicy::Always => true,
        }
    }
}

/// Policy for accepting connections.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Client static keys allowed to connect; `None` admits any client that
    /// completes the handshake.
    pub allowed_clients: Option<HashSet<PublicKey>>,
    /// When to demand address validation first.
    pub retry: RetryPolicy,
    /// Handshake jobs (the Diffie-Hellman work of answering one
    /// initiation: about five X25519 operations, a third of a millisecond of
    /// one core here) the node does per second at most. Excess initiations
    /// wait in the handshake queue.
    pub handshake_rate: u32,
    /// Handshake jobs allowed in a burst above the rate.
    pub handshake_burst: u32,
    /// Initiations that may wait for a handshake job; beyond it the least
    /// deserving (by source: see the endpoint's admission) are told the
    /// node is busy.
    pub handshake_queue: usize,
    /// Handshake jobs handed out at once: the number of threads the runtime
    /// runs them on.
    pub handshake_workers: usize,
    /// Unconfirmed handshakes beyond which `UnderLoad` demands retry.
    pub retry_pending_threshold: usize,
    /// How long a retry token stays valid.
    pub token_lifetime: Duration,
    /// Initiations stamped further than this from the server's clock are
    /// refused (the client is told the server's time); the node remembers
    /// initiations for twice this long to refuse exact replays.
    pub max_clock_skew: Duration,
    /// Most connections served at once; further initiations are dropped.
    pub max_connections: usize,
    /// Most connections open at once from one IP address; further
    /// initiations from it are told the node is busy. High enough for a
    /// NAT gateway or a load generator on one host.
    pub max_connections_per_address: usize,
    /// Most connections open at once with one client key (replicas of a
    /// deployment may share one); further ones are told the node is busy.
    pub max_connections_per_key: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            allowed_clients: None,
            retry: RetryPolicy::default(),
            handshake_rate: 1_000,
            handshake_burst: 64,
            handshake_queue: 128,
            handshake_workers: 1,
            retry_pending_threshold: 256,
            token_lifetime: Duration::from_secs(10),
            max_clock_skew: Duration::from_secs(120),
            max_connections: 100_000,
            max_connections_per_address: 4096,
            max_connections_per_key: 1024,
        }
    }
}

/// Everything an [`Endpoint`](crate::Endpoint) needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// This node's static identity: its server key, and its client key when
    /// it connects out.
    pub keypair: Keypair,
    /// Settings for every connection of this endpoint.
    pub transport: Arc<TransportConfig>,
    /// Accept connections with this policy; `None` for a client-only node.
    pub server: Option<Arc<ServerConfig>>,
}

impl EndpointConfig {
    /// A client-only endpoint with default transport settings.
    pub fn client(keypair: Keypair) -> Self {
        EndpointConfig {
            keypair,
            transport: Arc::default(),
            server: None,
        }
    }

    /// An endpoint that also accepts connections, with default policy.
    pub fn server(keypair: Keypair) -> Self {
        EndpointConfig {
            server: Some(Arc::default()),
            ..Self::client(keypair)
        }
    }
}
