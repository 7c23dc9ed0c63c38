//! `mxp bench`: load scenarios against a node, each reporting its figures
//! (a table, or one JSON object with units in the field names).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use mxp::proto::Band;
use mxp::proto::message::{Message, MessageType};
use serde_json::{Value, json};

use super::client::{Client, ClientArgs, connect_failure};
use super::measure::Latencies;
use super::{CliError, parse_duration};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Request/response latency: one call at a time.
    Rr,
    /// Small-message throughput: one write per message on one stream.
    Msgs,
    /// Bulk throughput on one stream.
    Bulk,
    /// Handshake rate: connect and close, one at a time.
    Handshake,
    /// Datagram rate: datagrams echoed by the node.
    Datagram,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Rr => "rr",
            Scenario::Msgs => "msgs",
            Scenario::Bulk => "bulk",
            Scenario::Handshake => "handshake",
            Scenario::Datagram => "datagram",
        }
    }

    fn default_size(self) -> usize {
        match self {
            Scenario::Bulk => 64 * 1024,
            _ => 64,
        }
    }
}

/// `mxp bench` flags.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Which scenario.
    #[arg(long, value_enum, default_value = "rr")]
    pub scenario: Scenario,
    /// How long to run it.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Message, write or datagram size in bytes (default: 64; bulk 65536).
    #[arg(long)]
    pub size: Option<usize>,
}

/// Runs the scenario and prints its figures.
pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    let size = args.size.unwrap_or(args.scenario.default_size());
    let mut figures = BTreeMap::new();
    let carrier = match args.scenario {
        Scenario::Handshake => handshakes(&args, &mut figures).await?,
        scenario => {
            let client = args.client.connect().await?;
            let carrier = client.conn.carrier();
            match scenario {
                Scenario::Rr => rr(&client, &args, size, &mut figures).await?,
                Scenario::Msgs | Scenario::Bulk => {
                    stream(&client, &args, size, &mut figures).await?
                }
                _ => datagrams(&client, &args, size, &mut figures).await?,
            }
            let stats = client.conn.stats();
            figures.insert("rtt_us", json!(stats.rtt.as_secs_f64() * 1e6));
            figures.insert("packets_sent", json!(stats.packets_sent));
            figures.insert("packets_lost", json!(stats.packets_lost));
            client.close().await;
            carrier
        }
    };
    let mut report = json!({
        "scenario": args.scenario.name(),
        "carrier": carrier.as_str(),
        "target": args.client.url,
        "duration_s": args.duration.as_secs_f64(),
        "size_bytes": size,
    });
    for (k, v) in figures {
        report[k] = v;
    }
    if args.client.json {
        println!("{report}");
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(report: &Value) {
    println!(
        "mxp bench {} against {}",
        report["scenario"].as_str().unwrap_or("?"),
        report["target"].as_str().unwrap_or("?")
    );
    if let Some(map) = report.as_object() {
        for (k, v) in map {
            if matches!(k.as_str(), "scenario" | "target") {
                continue;
            }
            let shown = match v {
                Value::Number(n) if n.is_f64() => format!("{:.1}", n.as_f64().unwrap_or_default()),
                other => other.to_string().trim_matches('"').to_owned(),
            };
            println!("  {k:<24} {shown:>16}");
        }
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!("{what}: {e}"))
}

/// One call at a time for the duration.
async fn rr(
    client: &Client,
    args: &BenchArgs,
    size: usize,
    figures: &mut BTreeMap<&'static str, Value>,
) -> Result<(), CliError> {
    let payload = Bytes::from(vec![0x42; size]);
    let mut lat = Latencies::default();
    let start = Instant::now();
    let mut id = 0;
    while start.elapsed() < args.duration {
        let request = Message::new(MessageType::Call, payload.clone()).with_message_id(id);
        let t = Instant::now();
        tokio::time::timeout(args.client.timeout, client.conn.call(&request))
            .await
            .map_err(|_| failed("call", "no response"))?
            .map_err(|e| failed("call", e))?;
        lat.push(t.elapsed());
        id += 1;
    }
    let elapsed = start.elapsed();
    let s = lat.summary();
    figures.insert("calls", json!(id));
    figures.insert("calls_per_sec", json!(id as f64 / elapsed.as_secs_f64()));
    figures.insert("p50_us", json!(s.p50));
    figures.insert("p95_us", json!(s.p95));
    figures.insert("p99_us", json!(s.p99));
    figures.insert("max_us", json!(s.max));
    Ok(())
}

/// Writes `size`-byte chunks on one stream for the duration, then waits
/// until the node has acknowledged all of it.
async fn stream(
    client: &Client,
    args: &BenchArgs,
    size: usize,
    figures: &mut BTreeMap<&'static str, Value>,
) -> Result<(), CliError> {
    let band = if args.scenario == Scenario::Bulk {
        Band::Background
    } else {
        Band::Streaming
    };
    let mut send = client
        .conn
        .open_uni(band)
        .await
        .map_err(|e| failed("open stream", e))?;
    let chunk = vec![0x17; size];
    let start = Instant::now();
    let mut writes = 0u64;
    while start.elapsed() < args.duration {
        // Check the clock every 1,000 writes: reading it costs more than a
        // small write.
        for _ in 0..1000 {
            send.write_all(&chunk)
                .await
                .map_err(|e| failed("write", e))?;
            writes += 1;
        }
    }
    send.finished().await.map_err(|e| failed("finish", e))?;
    let elapsed = start.elapsed().as_secs_f64();
    let bytes = writes * size as u64;
    figures.insert("messages", json!(writes));
    figures.insert("msgs_per_sec", json!(writes as f64 / elapsed));
    figures.insert("mb_per_sec", json!(bytes as f64 / elapsed / 1e6));
    Ok(())
}

/// Datagrams as fast as they are accepted; the node echoes them back.
async fn datagrams(
    client: &Client,
    args: &BenchArgs,
    size: usize,
    figures: &mut BTreeMap<&'static str, Value>,
) -> Result<(), CliError> {
    let conn = client.conn.clone();
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        while conn.read_datagram().await.is_ok() {
            n += 1;
        }
        n
    });
    let max = client.conn.max_datagram_size();
    if size > max {
        return Err(CliError::Usage(format!(
            "--size {size}: the node accepts datagrams of at most {max} bytes"
        )));
    }
    let payload = Bytes::from(vec![0x33; size]);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < args.duration {
        for _ in 0..64 {
            if client
                .conn
                .send_datagram(payload.clone(), Band::Background)
                .is_ok()
            {
                sent += 1;
            }
        }
        // Let the driver put them on the wire.
        tokio::task::yield_now().await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Echoes still in flight get a moment to arrive.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = client.conn.stats();
    client.conn.close(0, b"done");
    let echoed = reader.await.unwrap_or(0);
    figures.insert("datagrams_sent", json!(stats.datagrams.sent));
    figures.insert("datagrams_queued", json!(sent));
    figures.insert("datagrams_echoed", json!(echoed));
    figures.insert(
        "datagrams_per_sec",
        json!(stats.datagrams.sent as f64 / elapsed),
    );
    figures.insert("echoes_per_sec", json!(echoed as f64 / elapsed));
    Ok(())
}

/// Connect and close, one at a time, for the duration. Returns the
/// carrier the handshakes used.
async fn handshakes(
    args: &BenchArgs,
    figures: &mut BTreeMap<&'static str, Value>,
) -> Result<mxp::Carrier, CliError> {
    let first = args.client.connect().await?;
    let (endpoint, key) = (first.endpoint.clone(), first.server_key);
    let carrier = first.conn.carrier();
    first.conn.close(0, b"");
    let mut lat = Latencies::default();
    let start = Instant::now();
    while start.elapsed() < args.duration {
        let t = Instant::now();
        let conn = endpoint
            .connect(&args.client.url, key)
            .await
            .map_err(|e| connect_failure(&args.client.url, args.client.timeout, e))?;
        lat.push(t.elapsed());
        conn.close(0, b"");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = lat.len();
    let s = lat.summary();
    figures.insert("handshakes", json!(n));
    figures.insert("handshakes_per_sec", json!(n as f64 / elapsed));
    figures.insert("p50_us", json!(s.p50));
    figures.insert("p99_us", json!(s.p99));
    Ok(carrier)
}
