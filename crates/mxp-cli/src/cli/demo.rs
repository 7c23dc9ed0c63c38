//! `mxp demo` (what a bare `mxp` runs): starts a node and a client on
//! loopback UDP — through the impairment relay if `--loss`, `--delay` or
//! `--jitter` ask for it — exchanges a mix of agent traffic (calls, a token
//! stream, events, heartbeat datagrams) and prints what happened.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use mxp::echo::{self, EchoStats};
use mxp::proto::message::{Message, MessageType};
use mxp::proto::{Band, EndpointConfig, Keypair};
use mxp::relay::{Relay, RelayConfig};
use mxp::{Connection, Endpoint};

use super::{CliError, parse_duration, parse_fraction};
use mxp::bench::Latencies;

/// What the demo exchanges, and how impaired the path is.
#[derive(Debug, Clone, Args)]
pub(crate) struct DemoArgs {
    /// Calls to make (Critical band), 32 in flight at a time.
    #[arg(long, default_value_t = 2000)]
    pub calls: u64,
    /// Token-stream chunks (one stream, Streaming band).
    #[arg(long, default_value_t = 20_000)]
    pub chunks: u64,
    /// Events (one-way messages, Background band).
    #[arg(long, default_value_t = 2000)]
    pub events: u64,
    /// Heartbeat datagrams (unreliable, Control band).
    #[arg(long, default_value_t = 2000)]
    pub datagrams: u64,
    /// Fraction of datagrams the relay drops each way, in [0, 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub loss: f64,
    /// One-way delay the relay adds.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub delay: Duration,
    /// Extra random delay per datagram, up to this much.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub jitter: Duration,
    /// Seed of the relay's randomness.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            calls: 2000,
            chunks: 20_000,
            events: 2000,
            datagrams: 2000,
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            seed: 1,
        }
    }
}

const CALLS_IN_FLIGHT: u64 = 32;

fn failed(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!("demo: {what}: {e}"))
}

/// Runs the demo and returns the report.
pub(crate) async fn run(args: &DemoArgs) -> Result<String, CliError> {
    let loopback = "127.0.0.1:0".parse().expect("literal");
    let node = Endpoint::bind(loopback, EndpointConfig::server(Keypair::generate()))
        .map_err(|e| failed("starting the node", e))?;
    let stats = Arc::new(EchoStats::default());
    tokio::spawn(echo::serve(node.clone(), stats.clone()));

    let impaired = args.loss > 0.0 || !args.delay.is_zero() || !args.jitter.is_zero();
    let relay = if impaired {
        let mut config = RelayConfig::new(loopback, node.local_addr());
        config.loss = args.loss;
        config.delay = args.delay;
        config.jitter = args.jitter;
        config.seed = args.seed;
        Some(
            Relay::bind(config)
                .await
                .map_err(|e| failed("starting the relay", e))?,
        )
    } else {
        None
    };
    let target = relay.as_ref().map_or(node.local_addr(), Relay::local_addr);

    let client = Endpoint::bind(loopback, EndpointConfig::client(Keypair::generate()))
        .map_err(|e| failed("starting the client", e))?;
    let started = Instant::now();
    let conn = client
        .connect_to(target, node.public_key())
        .await
        .map_err(|e| failed("connecting", e))?;
    let handshake = started.elapsed();

    let exchange = Instant::now();
    let (latencies, ()) = tokio::try_join!(calls(&conn, args.calls), one_way(&conn, args),)?;
    let heartbeats = heartbeats(&conn, args.datagrams).await;
    let elapsed = exchange.elapsed();
    // The node counts what it sank once it has read it: give the last bytes
    // a moment, bounded.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (stats.stream_chunks.load(Ordering::Relaxed) < args.chunks
        || stats.events.load(Ordering::Relaxed) < args.events)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let conn_stats = conn.stats();
    conn.close(0, b"demo done");
    let mut lat = latencies;
    let s = lat.summary();

    let mut out = String::new();
    use std::fmt::Write as _;
    let path = match &relay {
        Some(_) => format!(
            "loopback UDP through the impairment relay ({:.1}% loss each way, {:?} delay, {:?} jitter, seed {})",
            args.loss * 100.0,
            args.delay,
            args.jitter,
            args.seed
        ),
        None => "loopback UDP".to_owned(),
    };
    let _ = writeln!(out, "MXP demo: a node and a client over {path}");
    let _ = writeln!(
        out,
        "  node {} key {}",
        node.local_addr(),
        node.public_key()
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  handshake (Noise IK)         {:>10.1} µs",
        handshake.as_secs_f64() * 1e6
    );
    let _ = writeln!(
        out,
        "  exchange took                {:>10.1} ms",
        elapsed.as_secs_f64() * 1e3
    );
    let _ = writeln!(
        out,
        "  calls answered               {:>10}   rtt p50 {:.1} µs  p99 {:.1} µs  max {:.1} µs",
        stats.calls.load(Ordering::Relaxed),
        s.p50,
        s.p99,
        s.max
    );
    let _ = writeln!(
        out,
        "  token-stream chunks received {:>10} of {}",
        stats.stream_chunks.load(Ordering::Relaxed),
        args.chunks
    );
    let _ = writeln!(
        out,
        "  events received              {:>10} of {}",
        stats.events.load(Ordering::Relaxed),
        args.events
    );
    let _ = writeln!(
        out,
        "  heartbeat datagrams echoed   {:>10} of {} (unreliable by design)",
        heartbeats, args.datagrams
    );
    let _ = writeln!(
        out,
        "  client packets sent / lost   {:>10} / {}   frames retransmitted {}",
        conn_stats.packets_sent, conn_stats.packets_lost, conn_stats.retransmitted_frames
    );
    let _ = writeln!(
        out,
        "  smoothed RTT                 {:>10.1} µs",
        conn_stats.rtt.as_secs_f64() * 1e6
    );
    if let Some(r) = relay {
        let _ = writeln!(out, "  relay                        {}", r.stats());
    }
    Ok(out)
}

/// Keeps 32 calls in flight until `total` were answered.
async fn calls(conn: &Connection, total: u64) -> Result<Latencies, CliError> {
    let mut lat = Latencies::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0;
    loop {
        while next < total && (tasks.len() as u64) < CALLS_IN_FLIGHT {
            let conn = conn.clone();
            let id = next;
            tasks.spawn(async move {
                let request = Message::new(MessageType::Call, vec![0x5a; 64]).with_message_id(id);
                let t = Instant::now();
                let reply = conn.call(&request).await?;
                Ok::<_, mxp::CallError>((reply.message_id == id, t.elapsed()))
            });
            next += 1;
        }
        let Some(done) = tasks.join_next().await else {
            return Ok(lat);
        };
        let (right_id, rtt) = done
            .map_err(|e| failed("call task", e))?
            .map_err(|e| failed("call", e))?;
        if !right_id {
            return Err(failed("call", "answered with the wrong id"));
        }
        lat.push(rtt);
    }
}

/// A token stream and events, concurrently with the calls.
async fn one_way(conn: &Connection, args: &DemoArgs) -> Result<(), CliError> {
    let tokens = async {
        let mut s = conn
            .open_uni(Band::Streaming)
            .await
            .map_err(|e| failed("opening the token stream", e))?;
        s.write_message(&Message::new(MessageType::StreamOpen, "tokens"))
            .await
            .map_err(|e| failed("token stream", e))?;
        for i in 0..args.chunks {
            let chunk =
                Message::new(MessageType::StreamChunk, format!("token-{i:08} ")).with_message_id(i);
            s.write_message(&chunk)
                .await
                .map_err(|e| failed("token stream", e))?;
        }
        s.write_message(&Message::new(MessageType::StreamClose, ""))
            .await
            .map_err(|e| failed("token stream", e))?;
        s.finished().await.map_err(|e| failed("token stream", e))
    };
    let events = async {
        for i in 0..args.events {
            let event = Message::new(MessageType::Event, vec![1; 100]).with_message_id(i);
            conn.send_message(&event)
                .await
                .map_err(|e| failed("event", e))?;
        }
        Ok(())
    };
    tokio::try_join!(tokens, events).map(|_| ())
}

/// Sends heartbeats as datagrams and counts the echoes that come back.
async fn heartbeats(conn: &Connection, total: u64) -> u64 {
    let reader = {
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(200), conn.read_datagram()).await
            {
                n += 1;
                if n == total {
                    break;
                }
            }
            n
        })
    };
    for i in 0..total {
        let hb = Message::new(MessageType::AgentHeartbeat, Bytes::new()).with_message_id(i);
        let encoded = hb.to_bytes().expect("tiny message");
        let _ = conn.send_datagram(encoded, Band::Control);
        if i % 64 == 63 {
            tokio::task::yield_now().await;
        }
    }
    reader.await.unwrap_or(0)
}
