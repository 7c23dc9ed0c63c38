//! Shared test support: a client and a server on the deterministic
//! network, an echo application and a byte-exact transfer checker; and, in
//! [`process`], real child processes for the tests that run programs.
#![allow(dead_code)]

pub(crate) mod process;
pub(crate) mod scrape;
pub(crate) mod tempdir;
pub(crate) mod tshark;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mxp::proto::{
    Band, ConnectionHandle, Dir, EndpointConfig, Event, Keypair, PublicKey, ServerConfig,
    StreamEvent, StreamId, TransportConfig, WriteError,
};
use mxp::sim::{Datagram, LinkConfig, Network, NodeId, TapAction};

pub(crate) const SERVER: &str = "10.0.0.1:4433";
pub(crate) const CLIENT: &str = "10.0.0.2:50000";

/// A client and a server attached to one network.
pub(crate) struct Setup {
    pub net: Network,
    pub server: NodeId,
    pub client: NodeId,
    pub server_key: PublicKey,
    pub client_key: PublicKey,
}

impl Setup {
    pub(crate) fn new(seed: u64, link: LinkConfig) -> Self {
        Self::with(
            seed,
            link,
            TransportConfig::default(),
            ServerConfig::default(),
        )
    }

    pub(crate) fn with(
        seed: u64,
        link: LinkConfig,
        transport: TransportConfig,
        server: ServerConfig,
    ) -> Self {
        let mut net = Network::new(seed);
        net.set_default_link(link);
        let transport = Arc::new(transport);
        let server_keys = Keypair::generate();
        let client_keys = Keypair::generate();
        let (server_key, client_key) = (server_keys.public(), client_keys.public());
        let server = net.add_endpoint(SERVER, {
            let mut config = EndpointConfig::client(server_keys);
            config.transport = transport.clone();
            config.server = Some(Arc::new(server));
            config
        });
        let client = net.add_endpoint(CLIENT, {
            let mut config = EndpointConfig::client(client_keys);
            config.transport = transport;
            config
        });
        Setup {
            net,
            server,
            client,
            server_key,
            client_key,
        }
    }

    /// Connects the client and waits until both ends report `Connected`.
    /// Returns (client handle, server handle).
    pub(crate) fn connect(&mut self) -> (ConnectionHandle, ConnectionHandle) {
        let now = self.net.now();
        let addr = self.net.addr(self.server);
        let key = self.server_key;
        let c = self
            .net
            .endpoint(self.client)
            .connect(now, addr, key)
            .expect("connect");
        let (client, server) = (self.client, self.server);
        let mut client_up = false;
        let mut server_conn = None;
        let ok = self.net.run_until(Duration::from_secs(30), |net| {
            while let Some((h, e)) = net.endpoint(client).poll_event() {
                if h == c && e == Event::Connected {
                    client_up = true;
                }
            }
            while let Some((h, e)) = net.endpoint(server).poll_event() {
                if e == Event::Connected {
                    server_conn = Some(h);
                }
            }
            client_up && server_conn.is_some()
        });
        assert!(ok, "handshake did not complete");
        (c, server_conn.unwrap())
    }
}

/// A simple 64-bit FNV-1a, to compare streams without keeping them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Digest(pub u64, pub u64);

impl Default for Digest {
    fn default() -> Self {
        Digest(0xcbf2_9ce4_8422_2325, 0)
    }
}

impl Digest {
    pub(crate) fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self.1 += data.len() as u64;
    }
}

/// Deterministic pseudo-random content for stream `i` at `offset`.
pub(crate) fn content(i: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|k| {
            let x = (offset + k).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ i.wrapping_mul(0xff51_afd7_ed55_8ccd);
            (x >> 29) as u8
        })
        .collect()
}

/// Sends `total` bytes on each of several streams, respecting flow
/// control, and finishes them.
pub(crate) struct Sender {
    pub streams: Vec<(StreamId, u64)>,
    pub total: u64,
    pub digests: HashMap<StreamId, Digest>,
    pub chunk: usize,
}

impl Sender {
    pub(crate) fn open(
        net: &mut Network,
        node: NodeId,
        conn: ConnectionHandle,
        n: usize,
        total: u64,
        band: Band,
    ) -> Self {
        let c = net.endpoint(node).connection(conn).unwrap();
        let streams = (0..n)
            .map(|_| (c.open(Dir::Uni, band).expect("open"), 0))
            .collect();
        Sender {
            streams,
            total,
            digests: HashMap::new(),
            chunk: 16 * 1024,
        }
    }

    /// Writes as much as flow control allows. Returns true once all data
    /// is written and every stream finished.
    pub(crate) fn pump(&mut self, net: &mut Network, node: NodeId, conn: ConnectionHandle) -> bool {
        let Some(c) = net.endpoint(node).connection(conn) else {
            return false;
        };
        let mut done = true;
        for (i, (id, sent)) in self.streams.iter_mut().enumerate() {
            while *sent < self.total {
                let credit = c.write_credit(*id);
                if credit == 0 {
                    break;
                }
                let len = (self.total - *sent).min(self.chunk as u64).min(credit) as usize;
                let data = content(i as u64, *sent, len);
                match c.write(*id, Bytes::from(data.clone())) {
                    Ok(n) => {
                        self.digests.entry(*id).or_default().update(&data[..n]);
                        *sent += n as u64;
                        if n < len {
                            break;
                        }
                    }
                    Err(WriteError::Blocked) => break,
                    Err(e) => panic!("write failed: {e}"),
                }
            }
            if *sent < self.total {
                done = false;
            } else if *sent == self.total {
                c.finish(*id).expect("finish");
                *sent += 1; // marks finished
            }
        }
        done
    }
}

/// Reads every stream the peer opens and records what arrived.
#[derive(Default)]
pub(crate) struct Receiver {
    pub digests: HashMap<StreamId, Digest>,
    pub finished: Vec<StreamId>,
}

impl Receiver {
    pub(crate) fn pump(&mut self, net: &mut Network, node: NodeId) {
        let mut readable = Vec::new();
        while let Some((h, e)) = net.endpoint(node).poll_event() {
            match e {
                Event::Stream(StreamEvent::Opened { dir }) => {
                    let c = net.endpoint(node).connection(h).unwrap();
                    while let Some(id) = c.accept(dir) {
                        readable.push((h, id));
                    }
                }
                Event::Stream(StreamEvent::Readable { id }) => readable.push((h, id)),
                _ => {}
            }
        }
        for (h, id) in readable {
            let Some(c) = net.endpoint(node).connection(h) else {
                continue;
            };
            loop {
                match c.read(id, usize::MAX) {
                    Ok(Some(chunk)) => self.digests.entry(id).or_default().update(&chunk),
                    Ok(None) => {
                        self.finished.push(id);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
    }
}

/// Echoes every stream and datagram back to the client.
#[derive(Default)]
pub(crate) struct EchoServer {
    pending: HashMap<(ConnectionHandle, StreamId), VecDeque<Bytes>>,
    fin: Vec<(ConnectionHandle, StreamId)>,
    pub datagrams: u64,
}

impl EchoServer {
    pub(crate) fn pump(&mut self, net: &mut Network, node: NodeId) {
        let mut readable = Vec::new();
        while let Some((h, e)) = net.endpoint(node).poll_event() {
            match e {
                Event::Stream(StreamEvent::Opened { .. }) => {
                    let c = net.endpoint(node).connection(h).unwrap();
                    while let Some(id) = c.accept(Dir::Bi) {
                        readable.push((h, id));
                    }
                }
                Event::Stream(StreamEvent::Readable { id }) => readable.push((h, id)),
                Event::DatagramReceived => {
                    let c = net.endpoint(node).connection(h).unwrap();
                    while let Some(d) = c.recv_datagram() {
                        self.datagrams += 1;
                        let _ = c.send_datagram(d, Band::Background);
                    }
                }
                _ => {}
            }
        }
        for (h, id) in readable {
            let Some(c) = net.endpoint(node).connection(h) else {
                continue;
            };
            loop {
                match c.read(id, usize::MAX) {
                    Ok(Some(chunk)) => self.pending.entry((h, id)).or_default().push_back(chunk),
                    Ok(None) => {
                        self.fin.push((h, id));
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        for ((h, id), q) in self.pending.iter_mut() {
            let Some(c) = net.endpoint(node).connection(*h) else {
                continue;
            };
            while let Some(mut chunk) = q.pop_front() {
                match c.write(*id, chunk.clone()) {
                    Ok(n) if n == chunk.len() => {}
                    Ok(n) => {
                        q.push_front(chunk.split_off(n));
                        break;
                    }
                    Err(_) => {
                        q.push_front(chunk);
                        break;
                    }
                }
            }
        }
        self.fin.retain(|(h, id)| {
            let empty = self.pending.get(&(*h, *id)).is_none_or(|q| q.is_empty());
            if empty {
                if let Some(c) = net.endpoint(node).connection(*h) {
                    let _ = c.finish(*id);
                }
            }
            !empty
        });
    }
}

// ---- helpers for the packet-engine, handshake and lifecycle tests ---------

impl Setup {
    /// Attaches another client endpoint with its own key and settings.
    pub(crate) fn add_client(
        &mut self,
        addr: &str,
        keypair: Keypair,
        transport: TransportConfig,
    ) -> NodeId {
        self.net.add_endpoint(addr, {
            let mut config = EndpointConfig::client(keypair);
            config.transport = Arc::new(transport);
            config
        })
    }

    /// Starts connecting `node` to the server (with the right server key)
    /// and returns the client's handle; nothing is run.
    pub(crate) fn start_connect(&mut self, node: NodeId) -> ConnectionHandle {
        let now = self.net.now();
        let addr = self.net.addr(self.server);
        let key = self.server_key;
        self.net
            .endpoint(node)
            .connect(now, addr, key)
            .expect("connect")
    }

    /// Like [`connect`](Self::connect), from any client node. Returns
    /// (client handle, server handle).
    pub(crate) fn connect_from(&mut self, node: NodeId) -> (ConnectionHandle, ConnectionHandle) {
        let c = self.start_connect(node);
        let server = self.server;
        let mut client_up = false;
        let mut server_conn = None;
        let ok = self.net.run_until(Duration::from_secs(30), |net| {
            for (h, e) in events(net, node) {
                client_up |= h == c && e == Event::Connected;
            }
            for (h, e) in events(net, server) {
                if e == Event::Connected {
                    server_conn = Some(h);
                }
            }
            client_up && server_conn.is_some()
        });
        assert!(ok, "handshake did not complete");
        (c, server_conn.unwrap())
    }
}

/// Every event an endpoint has queued, in order.
pub(crate) fn events(net: &mut Network, node: NodeId) -> Vec<(ConnectionHandle, Event)> {
    let mut out = Vec::new();
    while let Some(e) = net.endpoint(node).poll_event() {
        out.push(e);
    }
    out
}

/// Records every datagram as it is put on the wire (before the link or
/// a tap added later can drop it), in the order sent, with its true send
/// time. Taps run in the order added and stop at the first that drops, so
/// add this one first.
pub(crate) fn wiretap(net: &mut Network) -> Rc<RefCell<Vec<Datagram>>> {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let log = seen.clone();
    net.add_tap(move |d| {
        log.borrow_mut().push(d.clone());
        TapAction::Pass
    });
    seen
}

/// The first datagram the tap saw with a long header of type `ty` (see
/// [`is_long`]).
pub(crate) fn first_long(tap: &Rc<RefCell<Vec<Datagram>>>, ty: u8) -> Vec<u8> {
    tap.borrow()
        .iter()
        .find(|d| is_long(&d.data, ty))
        .unwrap_or_else(|| panic!("no long-header packet of type {ty} on the wire"))
        .data
        .clone()
}

impl Setup {
    /// Closes the client's connection `c` and runs until both ends have
    /// forgotten it.
    pub(crate) fn close_and_forget(&mut self, c: ConnectionHandle) {
        let now = self.net.now();
        self.net
            .endpoint(self.client)
            .connection(c)
            .expect("the connection")
            .close(now, 0, &b"done"[..]);
        self.net.run_for(Duration::from_secs(1));
        events(&mut self.net, self.client);
        events(&mut self.net, self.server);
        assert_eq!(self.net.endpoint(self.server).connection_count(), 0);
    }
}

/// Whether a datagram has a short (protected, post-handshake) header.
pub(crate) fn is_short(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & 0x80 == 0)
}

/// Whether a datagram has a long header of the given type (0 Initial,
/// 1 Handshake, 2 Retry, 3 Reject).
pub(crate) fn is_long(datagram: &[u8], ty: u8) -> bool {
    datagram
        .first()
        .is_some_and(|b| b & 0x80 != 0 && (b >> 4) & 0x03 == ty)
}

/// A genuine client's first datagram (a padded Initial) for `server`,
/// made by a throwaway client endpoint with a fresh key that is not on the
/// network: what an attacker replays or sprays from spoofed addresses.
pub(crate) fn client_initial(net: &Network, server: SocketAddr, server_key: PublicKey) -> Vec<u8> {
    mxp::attack::mxp_initial_at(server, server_key, net.now(), net.unix_time())
}
