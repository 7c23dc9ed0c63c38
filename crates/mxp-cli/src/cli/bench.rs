//! `mxp bench`: load scenarios against a node, each reporting its figures
//! (a table, or one JSON object with units in the field names).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use mxp::proto::Band;
use serde_json::{Value, json};

use mxp::bench;

use super::client::{Client, ClientArgs};
use super::{CliError, parse_duration};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
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
pub(crate) struct BenchArgs {
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
pub(crate) async fn run(args: BenchArgs) -> Result<(), CliError> {
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
            figures.insert("fell_back", json!(client.fell_back));
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

fn failed(e: mxp::bench::BenchError) -> CliError {
    CliError::Failed(e.to_string())
}

/// One call at a time for the duration.
async fn rr(
    client: &Client,
    args: &BenchArgs,
    size: usize,
    figures: &mut BTreeMap<&'static str, Value>,
) -> Result<(), CliError> {
    let start = Instant::now();
    let mut lat = bench::call_latencies(&client.conn, size, args.duration, args.client.timeout)
        .await
        .map_err(failed)?;
    let elapsed = start.elapsed();
    let calls = lat.len();
    let s = lat.summary();
    figures.insert("calls", json!(calls));
    figures.insert("calls_per_sec", json!(calls as f64 / elapsed.as_secs_f64()));
    figures.insert("p50_us", json!(s.p50));
    figures.insert("p95_us", json!(s.p95));
    figures.insert("p99_us", json!(s.p99));
    figures.insert("max_us", json!(s.max));
    Ok(())
}

/// Small messages (Streaming band) or bulk writes (Background) on one
/// stream.
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
    let t = bench::stream_throughput(&client.conn, size, band, args.duration)
        .await
        .map_err(failed)?;
    figures.insert("messages", json!(t.count));
    figures.insert("msgs_per_sec", json!(t.per_sec()));
    figures.insert("mb_per_sec", json!(t.mb_per_sec()));
    Ok(())
}

/// Datagrams as fast as they are accepted; the node echoes them back.
async fn datagrams(
    client: &Client,
    args: &BenchArgs,
    size: usize,
    figures: &mut BTreeMap<&'static str, Value>,
) -> Result<(), CliError> {
    if size > client.conn.max_datagram_size() {
        return Err(CliError::Usage(format!(
            "--size {size}: the node accepts datagrams of at most {} bytes",
            client.conn.max_datagram_size()
        )));
    }
    let run = bench::datagram_rate(&client.conn, size, args.duration)
        .await
        .map_err(failed)?;
    let secs = run.elapsed.as_secs_f64();
    figures.insert("datagrams_sent", json!(run.sent));
    figures.insert("datagrams_queued", json!(run.queued));
    figures.insert("datagrams_echoed", json!(run.echoed));
    figures.insert("datagrams_per_sec", json!(run.sent as f64 / secs));
    figures.insert("echoes_per_sec", json!(run.echoed as f64 / secs));
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
    let start = Instant::now();
    let mut lat = bench::handshake_latencies(&endpoint, &args.client.url, key, args.duration)
        .await
        .map_err(|e| match e.what {
            "connect" => CliError::Failed(format!("{}: {}", args.client.url, e.why)),
            _ => failed(e),
        })?;
    let elapsed = start.elapsed().as_secs_f64();
    let n = lat.len();
    let s = lat.summary();
    figures.insert("handshakes", json!(n));
    figures.insert("handshakes_per_sec", json!(n as f64 / elapsed));
    figures.insert("p50_us", json!(s.p50));
    figures.insert("p99_us", json!(s.p99));
    Ok(carrier)
}
