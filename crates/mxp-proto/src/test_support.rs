//! Unit-test support: a client and a server endpoint in memory, connected
//! by hand, for tests that need to look at single datagrams.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::{ConnectionHandle, Endpoint, EndpointConfig, Incoming, Keypair};

/// A server and a client endpoint; the client has started connecting.
pub(crate) struct Pair {
    pub now: Instant,
    server_keys: Keypair,
    pub server: Endpoint,
    pub client: Endpoint,
    pub server_addr: SocketAddr,
    pub client_addr: SocketAddr,
    /// The client's connection.
    pub conn: ConnectionHandle,
}

impl Pair {
    pub(crate) fn new() -> Pair {
        let now = Instant::now();
        let unix = Duration::from_secs(1_767_225_600);
        let server_keys = Keypair::generate();
        let server_key = server_keys.public();
        let server = Endpoint::new(EndpointConfig::server(server_keys.clone()), now, unix);
        let mut client = Endpoint::new(EndpointConfig::client(Keypair::generate()), now, unix);
        let server_addr: SocketAddr = "10.0.0.1:1".parse().expect("literal");
        let client_addr: SocketAddr = "10.0.0.2:2".parse().expect("literal");
        let conn = client
            .connect(now, server_addr, server_key)
            .expect("handshake starts");
        Pair {
            now,
            server_keys,
            server,
            client,
            server_addr,
            client_addr,
            conn,
        }
    }

    /// Replaces the server with a fresh endpoint holding the same key, as a
    /// restarted node would be: no connections, same identity.
    pub(crate) fn restart_server(&mut self) {
        let config = EndpointConfig::server(self.server_keys.clone());
        self.server = Endpoint::new(config, self.now, Duration::from_secs(1_767_225_600));
    }

    /// The next datagram the client sends.
    pub(crate) fn client_datagram(&mut self) -> Vec<u8> {
        next_datagram(&mut self.client, self.now)
    }

    /// The next datagram the server sends.
    pub(crate) fn server_datagram(&mut self) -> Vec<u8> {
        next_datagram(&mut self.server, self.now)
    }

    /// Hands `datagram` to the server as from the client, and runs the
    /// handshake job it queued if any: what became of it.
    pub(crate) fn deliver_to_server(&mut self, datagram: &[u8]) -> Incoming {
        let outcome = self
            .server
            .handle(self.now, self.client_addr, BytesMut::from(datagram));
        match self.server.run_handshakes(self.now).pop() {
            Some(done) if outcome == Incoming::Queued => done,
            _ => outcome,
        }
    }

    /// Delivers everything the client wants to send; returns how many.
    pub(crate) fn client_to_server(&mut self) -> usize {
        carry(
            &mut self.client,
            self.client_addr,
            &mut self.server,
            self.now,
        )
    }

    /// Delivers everything the server wants to send; returns how many.
    pub(crate) fn server_to_client(&mut self) -> usize {
        carry(
            &mut self.server,
            self.server_addr,
            &mut self.client,
            self.now,
        )
    }
}

fn next_datagram(from: &mut Endpoint, now: Instant) -> Vec<u8> {
    let mut buf = Vec::new();
    let t = from
        .poll_transmit(now, &mut buf)
        .expect("a datagram to send");
    buf.truncate(t.size);
    buf
}

fn carry(from: &mut Endpoint, from_addr: SocketAddr, to: &mut Endpoint, now: Instant) -> usize {
    let mut n = 0;
    let mut buf = Vec::new();
    while let Some(t) = from.poll_transmit(now, &mut buf) {
        to.handle(now, from_addr, BytesMut::from(&buf[buf.len() - t.size..]));
        to.run_handshakes(now);
        buf.clear();
        n += 1;
    }
    n
}
