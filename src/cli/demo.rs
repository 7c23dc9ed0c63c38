//! `mxp demo`: a node and a client exchanging a mix of agent traffic —
//! calls and responses, a token stream, events and heartbeat datagrams —
//! over the deterministic in-process network with loss, delay and jitter.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use mxp::proto::message::{Message, MessageDecoder, MessageType};
use mxp::proto::{
    Band, ConnectionHandle, Dir, EndpointConfig, Event, Keypair, StreamEvent, StreamId,
};
use mxp::sim::{LinkConfig, Network, NodeId};

/// What the demo exchanges and over what kind of link.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Seed of the simulated network's randomness.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fraction of datagrams lost on each direction, in [0, 1).
    #[arg(long, default_value_t = 0.01, value_parser = crate::cli::parse_fraction)]
    pub loss: f64,
    /// One-way delay.
    #[arg(long, default_value = "50us", value_parser = crate::cli::parse_duration)]
    pub delay: Duration,
    /// Extra random delay per datagram, up to this much.
    #[arg(long, default_value = "10us", value_parser = crate::cli::parse_duration)]
    pub jitter: Duration,
    /// Calls to make (each on its own stream, Critical band).
    #[arg(long, default_value_t = 2000)]
    pub calls: u64,
    /// Token-stream chunks to send (one stream, Streaming band).
    #[arg(long, default_value_t = 20_000)]
    pub chunks: u64,
    /// Events to send (one stream, Background band).
    #[arg(long, default_value_t = 2000)]
    pub events: u64,
    /// Heartbeat datagrams to send (Control band).
    #[arg(long, default_value_t = 2000)]
    pub datagrams: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: 1,
            loss: 0.01,
            delay: Duration::from_micros(50),
            jitter: Duration::from_micros(10),
            calls: 2000,
            chunks: 20_000,
            events: 2000,
            datagrams: 2000,
        }
    }
}

const CALLS_IN_FLIGHT: usize = 32;

/// The node's side: answers calls, counts everything else.
#[derive(Default)]
struct Node {
    decoders: HashMap<(ConnectionHandle, StreamId), MessageDecoder>,
    chunks: u64,
    events: u64,
    heartbeats: u64,
    streams_closed: u64,
}

impl Node {
    fn pump(&mut self, net: &mut Network, id: NodeId) -> Result<(), String> {
        let mut readable = Vec::new();
        while let Some((h, e)) = net.endpoint(id).poll_event() {
            match e {
                Event::Stream(StreamEvent::Opened { .. }) => {
                    let c = net.endpoint(id).connection(h).ok_or("connection gone")?;
                    for dir in Dir::ALL {
                        while let Some(s) = c.accept(dir) {
                            readable.push((h, s));
                        }
                    }
                }
                Event::Stream(StreamEvent::Readable { id: s }) => readable.push((h, s)),
                Event::DatagramReceived => {
                    let c = net.endpoint(id).connection(h).ok_or("connection gone")?;
                    while let Some(d) = c.recv_datagram() {
                        let (m, _) = Message::decode(&d).map_err(|e| e.to_string())?;
                        if m.kind == MessageType::AgentHeartbeat {
                            self.heartbeats += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        for (h, s) in readable {
            let c = net.endpoint(id).connection(h).ok_or("connection gone")?;
            let decoder = self.decoders.entry((h, s)).or_default();
            let mut finished = false;
            loop {
                match c.read(s, usize::MAX) {
                    Ok(Some(chunk)) => decoder.push(chunk),
                    Ok(None) => {
                        finished = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            while let Some(m) = decoder.next_message().map_err(|e| e.to_string())? {
                match m.kind {
                    MessageType::Call => {
                        let response = Message::new(MessageType::Response, m.payload.clone())
                            .with_message_id(m.message_id)
                            .with_trace_id(m.trace_id);
                        let bytes = response.to_bytes().map_err(|e| e.to_string())?;
                        c.write(s, bytes).map_err(|e| e.to_string())?;
                        c.finish(s).map_err(|e| e.to_string())?;
                    }
                    MessageType::StreamChunk => self.chunks += 1,
                    MessageType::Event => self.events += 1,
                    _ => {}
                }
            }
            if finished {
                self.decoders.remove(&(h, s));
                self.streams_closed += 1;
            }
        }
        Ok(())
    }
}

/// The client's side: keeps calls in flight and measures them.
struct Client {
    conn: ConnectionHandle,
    next_call: u64,
    started: HashMap<StreamId, (u64, std::time::Instant)>,
    responses: HashMap<StreamId, MessageDecoder>,
    latencies: Vec<Duration>,
    bulk: Vec<(StreamId, Vec<Bytes>)>,
}

impl Client {
    fn pump(&mut self, net: &mut Network, id: NodeId, opts: &Options) -> Result<(), String> {
        let now = net.now();
        let mut readable = Vec::new();
        while let Some((h, e)) = net.endpoint(id).poll_event() {
            match e {
                Event::Stream(StreamEvent::Readable { id: s }) if h == self.conn => {
                    readable.push(s)
                }
                Event::ConnectionLost { reason } => return Err(reason.to_string()),
                _ => {}
            }
        }
        let c = net
            .endpoint(id)
            .connection(self.conn)
            .ok_or("connection gone")?;
        for s in readable {
            let decoder = self.responses.entry(s).or_default();
            while let Ok(Some(chunk)) = c.read(s, usize::MAX) {
                decoder.push(chunk);
            }
            if let Some(m) = decoder.next_message().map_err(|e| e.to_string())? {
                let (call_id, start) = self
                    .started
                    .remove(&s)
                    .ok_or("response to an unknown call")?;
                if m.kind != MessageType::Response || m.message_id != call_id {
                    return Err(format!("call {call_id} got a wrong answer"));
                }
                self.latencies.push(now - start);
                self.responses.remove(&s);
            }
        }
        while self.started.len() < CALLS_IN_FLIGHT && self.next_call < opts.calls {
            let Ok(s) = c.open(Dir::Bi, Band::Critical) else {
                break;
            };
            let call = Message::new(MessageType::Call, vec![0x5a; 64])
                .with_message_id(self.next_call)
                .with_trace_id(self.next_call ^ 0xfeed);
            c.write(s, call.to_bytes().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            c.finish(s).map_err(|e| e.to_string())?;
            self.started.insert(s, (self.next_call, now));
            self.next_call += 1;
        }
        // Bulk streams: write what flow control accepts.
        for (s, queue) in &mut self.bulk {
            while let Some(front) = queue.first_mut() {
                match c.write(*s, front.clone()) {
                    Ok(n) if n == front.len() => {
                        queue.remove(0);
                    }
                    Ok(n) => {
                        let _ = front.split_to(n);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if queue.is_empty() {
                let _ = c.finish(*s);
            }
        }
        Ok(())
    }

    fn done(&self, opts: &Options) -> bool {
        self.latencies.len() as u64 == opts.calls
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn encode_all(messages: impl Iterator<Item = Message>) -> Result<Vec<Bytes>, String> {
    messages
        .map(|m| m.to_bytes().map_err(|e| e.to_string()))
        .collect()
}

/// Runs the demo and returns the report.
pub fn run(opts: &Options) -> Result<String, String> {
    if !(0.0..1.0).contains(&opts.loss) {
        return Err(format!("--loss must be in [0, 1), got {}", opts.loss));
    }
    let mut net = Network::new(opts.seed);
    net.set_default_link(LinkConfig {
        jitter: opts.jitter,
        ..LinkConfig::lossy(opts.delay, opts.loss)
    });
    let node_keys = Keypair::generate();
    let node_key = node_keys.public();
    let node_id = net.add_endpoint("10.0.0.1:9000", EndpointConfig::server(node_keys));
    let client_id = net.add_endpoint(
        "10.0.0.2:40000",
        EndpointConfig::client(Keypair::generate()),
    );
    let node_addr = net.addr(node_id);
    let start = net.now();
    let conn = net
        .endpoint(client_id)
        .connect(start, node_addr, node_key)
        .map_err(|e| e.to_string())?;

    let mut connected_at = None;
    let connected = net.run_until(Duration::from_secs(10), |net| {
        while let Some((h, e)) = net.endpoint(client_id).poll_event() {
            if h == conn && e == Event::Connected {
                connected_at = Some(net.now());
            }
        }
        connected_at.is_some()
    });
    if !connected {
        return Err("handshake did not complete".into());
    }
    let handshake = connected_at.expect("connected") - start;

    let mut node = Node::default();
    let mut client = Client {
        conn,
        next_call: 0,
        started: HashMap::new(),
        responses: HashMap::new(),
        latencies: Vec::new(),
        bulk: Vec::new(),
    };
    {
        let c = net
            .endpoint(client_id)
            .connection(conn)
            .ok_or("connection gone")?;
        let tokens = c
            .open(Dir::Uni, Band::Streaming)
            .map_err(|e| e.to_string())?;
        let chunks = (0..opts.chunks).map(|i| {
            Message::new(MessageType::StreamChunk, format!("token-{i:08} ")).with_message_id(i)
        });
        client.bulk.push((tokens, encode_all(chunks)?));
        let events = c
            .open(Dir::Uni, Band::Background)
            .map_err(|e| e.to_string())?;
        let evs = (0..opts.events)
            .map(|i| Message::new(MessageType::Event, vec![1; 100]).with_message_id(i));
        client.bulk.push((events, encode_all(evs)?));
        for i in 0..opts.datagrams {
            let hb = Message::new(MessageType::AgentHeartbeat, Bytes::new()).with_message_id(i);
            let _ = c.send_datagram(hb.to_bytes().map_err(|e| e.to_string())?, Band::Control);
        }
    }

    let exchange_start = net.now();
    let mut failure = None;
    let finished = net.run_until(Duration::from_secs(120), |net| {
        if let Err(e) = client
            .pump(net, client_id, opts)
            .and_then(|_| node.pump(net, node_id))
        {
            failure = Some(e);
            return true;
        }
        client.done(opts) && node.chunks == opts.chunks && node.events == opts.events
    });
    if let Some(e) = failure {
        return Err(e);
    }
    if !finished {
        return Err("the exchange did not finish within 120 s of network time".into());
    }
    // Let stragglers (last datagrams, ACKs) settle.
    net.run_for(Duration::from_millis(5));
    let elapsed = net.now() - exchange_start;
    let stats = net
        .endpoint(client_id)
        .connection(conn)
        .ok_or("connection gone")?
        .stats();
    let mut lat = client.latencies.clone();
    lat.sort();

    let mut out = String::new();
    let _ = writeln!(out, "MXP demo: node and client over the in-process network");
    let _ = writeln!(
        out,
        "  link: {:?} one-way delay, {:?} jitter, {:.1}% loss each way, seed {}",
        opts.delay,
        opts.jitter,
        opts.loss * 100.0,
        opts.seed
    );
    let _ = writeln!(out, "  node key: {node_key}");
    let _ = writeln!(out);
    let _ = writeln!(out, "  handshake (Noise IK)        {handshake:>12.1?}");
    let _ = writeln!(
        out,
        "  exchange finished in       {elapsed:>12.1?} of network time"
    );
    let _ = writeln!(
        out,
        "  calls answered              {:>12}   latency p50 {:.1?}  p99 {:.1?}  max {:.1?}",
        lat.len(),
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or_default()
    );
    let _ = writeln!(out, "  token-stream chunks         {:>12}", node.chunks);
    let _ = writeln!(out, "  events                      {:>12}", node.events);
    let _ = writeln!(
        out,
        "  heartbeat datagrams         {:>12} of {} (unreliable: {} lost with their packets)",
        node.heartbeats, opts.datagrams, stats.datagrams.lost
    );
    let _ = writeln!(
        out,
        "  client packets sent / lost  {:>12} / {}   frames retransmitted {}",
        stats.packets_sent, stats.packets_lost, stats.retransmitted_frames
    );
    let _ = writeln!(
        out,
        "  smoothed RTT                {:>12.1?}   congestion window {} B",
        stats.rtt, stats.congestion_window
    );
    let _ = writeln!(
        out,
        "  key rotations               {:>12}",
        stats.key_updates
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_completes_on_a_lossy_link() {
        let opts = Options {
            calls: 200,
            chunks: 2000,
            events: 200,
            datagrams: 200,
            loss: 0.05,
            ..Options::default()
        };
        let report = run(&opts).expect("demo runs");
        assert!(report.contains("calls answered"));
        assert!(report.contains(" 200 "));
    }

    #[test]
    fn bad_loss_is_refused() {
        let opts = Options {
            loss: 1.5,
            ..Options::default()
        };
        assert!(run(&opts).is_err());
    }
}
