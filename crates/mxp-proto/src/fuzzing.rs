//! Entry points for the fuzz targets in `fuzz/` and for replaying their
//! corpus as ordinary tests. Each takes arbitrary bytes and must never
//! panic; the interesting outcomes are typed errors and counters.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::config::{EndpointConfig, TransportConfig};
use crate::connection::{Accepted, Connection};
use crate::crypto::{Keypair, Mac1Key, Secret, SessionSecrets};
use crate::endpoint::Endpoint;
use crate::message::{Message, MessageDecoder};
use crate::packet::keys::KeyState;
use crate::packet::{self, ConnectionId, Header};
use crate::{frame, transport_params::TransportParams};

fn keys(now: Instant) -> KeyState {
    KeyState::new(
        SessionSecrets {
            local: Secret::new([1; 32]),
            remote: Secret::new([2; 32]),
        },
        now,
    )
}

/// Packet parsing: the header, header-protection removal and decryption
/// of a short packet with fixed keys.
pub fn packet(data: &[u8]) {
    let now = Instant::now();
    let _ = packet::peek_dcid(data);
    if let Ok(Header::Short { .. }) = packet::parse(data) {
        let mut k = keys(now);
        let mut buf = data.to_vec();
        if let Ok(opened) = packet::open_short(&mut buf, Some(1000), k.remote_header_key()) {
            let _ = k.open(
                now,
                Duration::from_millis(1),
                opened.pn,
                opened.key_phase,
                |key| packet::open_payload(&mut buf.clone(), &opened, key),
            );
        }
    }
}

/// Frame parsing, then the same bytes applied as the payload of an
/// authenticated packet to an established server connection: streams, flow
/// control, ACK processing and closing all see hostile frames.
pub fn frames(data: &[u8]) {
    let payload = Bytes::copy_from_slice(data);
    for f in frame::Iter::new(payload.clone()).flatten() {
        let mut out = Vec::new();
        f.encode(&mut out);
    }
    let now = Instant::now();
    let mut conn = server_connection(now);
    conn.process_payload(now, 1, payload);
    let mut buf = Vec::new();
    while conn.poll_transmit(now, &mut buf).is_some() {
        buf.clear();
    }
    conn.handle_timeout(now + Duration::from_secs(1));
    while conn.poll_event().is_some() {}
}

/// A server-side connection with fixed keys, built without a handshake
/// (no Diffie-Hellman per fuzz input).
fn server_connection(now: Instant) -> Connection {
    let config = Arc::new(TransportConfig::default());
    let params = TransportParams::from_config(&config);
    let remote: SocketAddr = "192.0.2.3:5000".parse().expect("literal");
    Connection::accepted(
        now,
        config,
        Accepted {
            keys: keys(now),
            client_key: Keypair::from_secret([8; 32]).public(),
            client_params: params,
            remote,
            local_cid: ConnectionId([1; 8]),
            remote_cid: ConnectionId([2; 8]),
            reply: Vec::new(),
            initial_len: 1200,
            initiation: 0,
            address_validated: true,
        },
    )
}

/// Handshake handling: arbitrary datagrams to a server and to a client
/// mid-handshake, and arbitrary bytes as the Noise message inside
/// well-formed Initial and Handshake packets (so the Noise layer itself is
/// reached, not just the header checks).
pub fn handshake(data: &[u8]) {
    let now = Instant::now();
    let server_keys = server_keypair();
    let mut server = Endpoint::new(
        EndpointConfig::server(server_keys.clone()),
        now,
        Duration::from_secs(1_700_000_000),
    );
    let from: SocketAddr = "192.0.2.1:1000".parse().expect("literal");
    let _ = server.handle(now, from, BytesMut::from(data));
    let mut initial = Vec::new();
    packet::write_initial(
        ConnectionId([1; 8]),
        ConnectionId([2; 8]),
        &[],
        data,
        &Mac1Key::for_node(&server_keys.public()),
        &mut initial,
    );
    let _ = server.handle(now, from, BytesMut::from(&initial[..]));
    // The Diffie-Hellman work, on this thread.
    let _ = server.run_handshakes(now);
    let mut buf = Vec::new();
    while server.poll_transmit(now, &mut buf).is_some() {}

    let mut client = Endpoint::new(
        EndpointConfig::client(Keypair::from_secret([9; 32])),
        now,
        Duration::from_secs(1_700_000_000),
    );
    let server_addr: SocketAddr = "192.0.2.2:443".parse().expect("literal");
    let Ok(h) = client.connect(now, server_addr, server_keys.public()) else {
        return;
    };
    let cid = client
        .connection_ref(h)
        .map(|c| c.local_cid())
        .unwrap_or_default();
    let _ = client.handle(now, server_addr, BytesMut::from(data));
    let mut reply = Vec::new();
    packet::write_handshake(cid, ConnectionId([3; 8]), data, &mut reply);
    let _ = client.handle(now, server_addr, BytesMut::from(&reply[..]));
    while client.poll_transmit(now, &mut buf).is_some() {}
    while client.poll_event().is_some() {}
}

/// The MXP message codec, whole and split across stream chunks.
pub fn message(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok((m, _)) = Message::decode(&bytes) {
        let _ = m.to_bytes();
    }
    let _ = crate::message::peek_len(data);
    let mut decoder = MessageDecoder::default();
    let split = data.first().map_or(1, |&b| usize::from(b).max(1));
    for chunk in bytes.chunks(split) {
        decoder.push(Bytes::copy_from_slice(chunk));
        while let Ok(Some(_)) = decoder.next_message() {}
    }
    let _ = TransportParams::decode(data);
}

fn server_keypair() -> Keypair {
    static KEYS: OnceLock<Keypair> = OnceLock::new();
    KEYS.get_or_init(|| Keypair::from_secret([7; 32])).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_accept_empty_and_junk_input() {
        for input in [&[][..], &[0u8; 1], &[0xff; 64], &[0x40; 1300]] {
            packet(input);
            frames(input);
            handshake(input);
            message(input);
        }
    }
}
