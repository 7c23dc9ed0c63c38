//! The performance baseline of the rollout checklist: MXP, QUIC (the
//! fallback carrier exactly as shipped, through the same public API) and
//! raw UDP (plain sockets, no protocol: the physical floor), measured side
//! by side in one run, so ratios hold on a noisy machine.
//!
//! ```text
//! cargo run --example perf_baseline --release
//! cargo run --example perf_baseline --release -- --json run.json
//! cargo run --example perf_baseline --release -- --compare docs/transport/benchmarks/latest.json
//! cargo run --example perf_baseline --release -- --quick      # a smoke run, seconds
//! ```
//!
//! Everything runs in this process on loopback: one node serving both
//! carriers with the echo application on a tokio runtime of its own (as a
//! node process would), the clients on another, the raw UDP echo on a
//! thread of its own; the node's admin endpoint (metrics are
//! counted, and scraped in the metrics-cost measures), logging at `info` into
//! `target/perf_baseline.log` — what operators run is what is measured.
//! The 1%-loss measure goes through the impairment relay, the same for
//! every carrier. The flood rows repeat request/response and connection
//! setup while a thread floods the node's carrier with copies of one valid
//! Initial (`mxp attack flood --kind replay`).

use std::alloc::System;
use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use mxp::attack::{Flood, FloodKind};
use mxp::bench::{self, Latencies};
use mxp::echo::{self, EchoStats};
use mxp::proto::message::{Message, MessageType};
use mxp::proto::{Band, ConnectionStats, EndpointConfig, Keypair, PublicKey, TransportConfig};
use mxp::relay::{Relay, RelayConfig};
use mxp::{Carrier, CarrierMode, Connection, Endpoint, Options};
use serde_json::{Value, json};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::runtime::Handle;

/// Flags.
#[derive(Debug, Parser)]
#[command(about = "MXP vs QUIC vs raw UDP, one run")]
struct Args {
    /// Also write the results as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Print each measure's change against an earlier run's JSON and flag
    /// regressions beyond --tolerance.
    #[arg(long, value_name = "OLD.json")]
    compare: Option<PathBuf>,
    /// Relative change counted as a regression.
    #[arg(long, default_value_t = 0.10)]
    tolerance: f64,
    /// Short phases (a smoke run: the numbers are not a baseline).
    #[arg(long)]
    quick: bool,
}

/// The three columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Mxp,
    Quic,
    Raw,
}

const COLUMNS: [Column; 3] = [Column::Mxp, Column::Quic, Column::Raw];

impl Column {
    fn key(self) -> &'static str {
        match self {
            Column::Mxp => "mxp",
            Column::Quic => "quic",
            Column::Raw => "raw_udp",
        }
    }
}

/// Whether a larger number is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// One measure, in every column that has it.
#[derive(Debug, Clone)]
struct Row {
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    better: Better,
    target: &'static str,
    /// Shown by `--compare`, never flagged: a measure the machine's drift
    /// swamps.
    information: bool,
    /// Changes by percentage points rather than by a ratio (a row that is
    /// itself a difference, and can be negative).
    points: bool,
    values: BTreeMap<&'static str, f64>,
}

impl Row {
    fn new(key: &'static str, label: &'static str, unit: &'static str, better: Better) -> Row {
        Row {
            key,
            label,
            unit,
            better,
            target: "",
            information: false,
            points: false,
            values: BTreeMap::new(),
        }
    }

    fn target(mut self, target: &'static str) -> Row {
        self.target = target;
        self
    }

    fn information(mut self) -> Row {
        self.information = true;
        self
    }

    fn in_points(mut self) -> Row {
        self.points = true;
        self
    }

    fn set(&mut self, column: Column, value: f64) {
        self.values.insert(column.key(), value);
    }

    fn get(&self, column: Column) -> Option<f64> {
        self.values.get(column.key()).copied()
    }
}

/// How long each phase runs.
struct Phases {
    setup: Duration,
    rr: Duration,
    loss: Duration,
    throughput: Duration,
    codec_iterations: u32,
    streams: usize,
    /// Writes timed against a full window.
    backpressure: usize,
    /// `/metrics` scrapes timed for their CPU.
    scrapes: u32,
}

fn phases(quick: bool) -> Phases {
    if quick {
        Phases {
            setup: Duration::from_millis(300),
            rr: Duration::from_millis(300),
            loss: Duration::from_millis(500),
            throughput: Duration::from_millis(300),
            codec_iterations: 20_000,
            streams: 1_000,
            backpressure: 1_000,
            scrapes: 50,
        }
    } else {
        Phases {
            setup: Duration::from_secs(3),
            rr: Duration::from_secs(5),
            loss: Duration::from_secs(8),
            throughput: Duration::from_secs(4),
            codec_iterations: 1_000_000,
            streams: 10_000,
            backpressure: 100_000,
            scrapes: 2_000,
        }
    }
}

const PATIENCE: Duration = Duration::from_secs(10);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A node on both carriers serving the echo application, on the node's own
/// runtime (as `mxp serve` is a process of its own): its driver, its
/// connections' tasks and the echo never share worker threads with the
/// clients measuring it.
fn start_node(runtime: &Handle, transport: Arc<TransportConfig>) -> Endpoint {
    let _on_node_runtime = runtime.enter();
    let options = {
        let mut options = Options::new({
            let mut endpoint_config = EndpointConfig::server(Keypair::generate());
            endpoint_config.transport = transport;
            endpoint_config
        });
        options.quic_listen = Some(any_port());
        options
    };
    let node = Endpoint::with_options(any_port(), options).expect("bind the node");
    runtime.spawn(echo::serve(node.clone(), Arc::new(EchoStats::default())));
    node
}

/// A client endpoint that uses only `mode`'s carrier.
fn client(mode: CarrierMode, transport: Arc<TransportConfig>) -> Endpoint {
    let options = {
        let mut options = Options::new({
            let mut endpoint_config = EndpointConfig::client(Keypair::generate());
            endpoint_config.transport = transport;
            endpoint_config
        });
        options.carrier_mode = mode;
        options
    };
    Endpoint::with_options(any_port(), options).expect("bind a client")
}

fn url(mxp: SocketAddr, quic: SocketAddr) -> String {
    format!("mxp://{mxp}?quic={}", quic.port())
}

fn mode(column: Column) -> CarrierMode {
    match column {
        Column::Mxp => CarrierMode::Mxp,
        _ => CarrierMode::Quic,
    }
}

async fn connect(endpoint: &Endpoint, url: &str, key: PublicKey) -> Connection {
    tokio::time::timeout(PATIENCE, endpoint.connect(url, key))
        .await
        .expect("connect in time")
        .expect("connected")
}

fn check<T>(what: &str, r: Result<T, bench::BenchError>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

// ---- raw UDP: the floor ----------------------------------------------------

/// A plain UDP echo (or, with `count`, a sink counting what arrives) on a
/// thread of its own.
struct RawServer {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RawServer {
    fn start(echo: bool) -> RawServer {
        let socket = UdpSocket::bind(any_port()).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, b, s) = (received.clone(), bytes.clone(), stop.clone());
        thread::spawn(move || {
            let mut buf = vec![0u8; 65_535];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                r.fetch_add(1, Ordering::Relaxed);
                b.fetch_add(n as u64, Ordering::Relaxed);
                if echo {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        RawServer {
            addr,
            received,
            bytes,
            stop,
        }
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Ping-pong of `size` bytes for `duration`, one at a time.
fn raw_rr(size: usize, duration: Duration) -> Latencies {
    let server = RawServer::start(true);
    let socket = UdpSocket::bind(any_port()).unwrap();
    socket.connect(server.addr).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let payload = vec![0x42u8; size];
    let mut buf = vec![0u8; 65_535];
    let mut lat = Latencies::default();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        socket.send(&payload).unwrap();
        socket.recv(&mut buf).expect("raw echo on loopback");
        lat.push(t.elapsed());
    }
    lat
}

/// `size`-byte datagrams, one send call each, for `duration`: what the
/// receiver got, per second (datagrams, MB).
fn raw_blast(size: usize, duration: Duration) -> (f64, f64) {
    let server = RawServer::start(false);
    let socket = UdpSocket::bind(any_port()).unwrap();
    socket.connect(server.addr).unwrap();
    let payload = vec![0x17u8; size];
    let start = Instant::now();
    while start.elapsed() < duration {
        for _ in 0..1000 {
            let _ = socket.send(&payload);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(100));
    let n = server.received.load(Ordering::Relaxed) as f64;
    let bytes = server.bytes.load(Ordering::Relaxed) as f64;
    (n / elapsed, bytes / elapsed / 1e6)
}

// ---- the measures ----------------------------------------------------------

/// Counts live heap bytes, for the memory measure (a relaxed atomic add
/// per allocation: a cost every measure pays alike).
#[global_allocator]
static HEAP: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Waits until the heap stops changing (closed connections let go).
async fn quiesce() {
    for _ in 0..50 {
        let region = Region::new(HEAP);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let c = region.change();
        if c.bytes_allocated == c.bytes_deallocated && c.bytes_reallocated == 0 {
            return;
        }
    }
}

/// Opens `n` unidirectional streams with one byte each (the node accepts
/// and holds them) and returns the heap they hold, both ends counted, per
/// 10,000 streams.
async fn stream_memory(conn: &Connection, n: usize) -> f64 {
    quiesce().await;
    let region = Region::new(HEAP);
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = conn.open_uni(Band::Streaming).await.expect("open a stream");
        s.write_all(b"x").await.expect("write a byte");
        streams.push(s);
    }
    // Let the node take them all in.
    let rtt = conn.stats().rtt.max(Duration::from_millis(1));
    tokio::time::sleep(rtt * 50).await;
    let change = region.change();
    let live = change.bytes_allocated as f64 - change.bytes_deallocated as f64
        + change.bytes_reallocated as f64;
    drop(streams);
    live / n as f64 * 10_000.0 / 1e6
}

/// Operations timed together: one call takes tens of nanoseconds, too
/// close to the clock's own cost to time alone.
const CODEC_BATCH: u32 = 32;

/// Nanoseconds per message to encode, then to decode, one message of
/// `size` bytes: (P50, P99) over batches of [`CODEC_BATCH`] calls, so the
/// tail shows (a cache miss, an allocation, an interrupt) where a mean
/// would hide it.
fn codec_ns(size: usize, iterations: u32) -> ((f64, f64), (f64, f64)) {
    let message = Message::new(MessageType::Call, vec![7u8; size]).with_message_id(9);
    let mut buf = Vec::with_capacity(size + 64);
    let per_op = |mut batches: Latencies| {
        let s = batches.summary();
        let ns = |us: f64| us * 1000.0 / f64::from(CODEC_BATCH);
        (ns(s.p50), ns(s.p99))
    };
    let mut batches = Latencies::default();
    for _ in 0..iterations / CODEC_BATCH {
        let start = Instant::now();
        for _ in 0..CODEC_BATCH {
            buf.clear();
            message.encode(&mut buf).expect("encodes");
            std::hint::black_box(&buf);
        }
        batches.push(start.elapsed());
    }
    let encode = per_op(batches);
    let wire = Bytes::from(buf);
    let mut batches = Latencies::default();
    for _ in 0..iterations / CODEC_BATCH {
        let start = Instant::now();
        for _ in 0..CODEC_BATCH {
            let decoded = Message::decode(std::hint::black_box(&wire)).expect("decodes");
            std::hint::black_box(decoded);
        }
        batches.push(start.elapsed());
    }
    (encode, per_op(batches))
}

/// UDP payload bytes both ways (headers, AEAD tags, frame headers, ACKs,
/// flow-control updates) per application byte a run moved, from the
/// client's connection counters before and after it.
fn wire_per_payload(before: &ConnectionStats, after: &ConnectionStats, payload: u64) -> f64 {
    let wire =
        (after.bytes_sent - before.bytes_sent) + (after.bytes_received - before.bytes_received);
    wire as f64 / payload.max(1) as f64
}

/// Turns each column takes in the request/response measures.
const RR_SLICES: u32 = 10;

/// Alternations of the scrape-cost measure: each arm runs this many
/// phases of `d / SCRAPE_ROUNDS`.
const SCRAPE_ROUNDS: u32 = 8;

/// The cost of being scraped: 64 B message throughput with `/metrics`
/// scraped ten times a second (Prometheus' default is once per 15 s) and
/// without, in short phases alternated ABBA. The machine's rate drifts
/// between slow and fast stretches that last seconds (one connection's
/// 2–4 s phases here range 1.8–4.2 M/s); short, interleaved phases put
/// both arms in the same stretches, so what differs is the scraping.
/// Returns (without, with): messages per second over each arm's phases.
async fn scrape_cost(conn: &Connection, admin: SocketAddr, d: Duration) -> (f64, f64) {
    let phase = d / SCRAPE_ROUNDS;
    let mut arms = [(0u64, Duration::ZERO); 2]; // [without, with]: (messages, time)
    for round in 0..SCRAPE_ROUNDS {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for scraped in order {
            let scraping = Arc::new(AtomicBool::new(true));
            let flag = scraping.clone();
            let scraper = scraped.then(|| {
                tokio::spawn(async move {
                    let mut scrapes = 0u64;
                    while flag.load(Ordering::Relaxed) {
                        let _ = mxp::admin::request(admin, "GET", "/metrics", None, None).await;
                        scrapes += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    scrapes
                })
            });
            let t = check(
                "scrape-cost msgs",
                bench::stream_throughput(conn, 64, Band::Streaming, phase).await,
            );
            scraping.store(false, Ordering::Relaxed);
            if let Some(scraper) = scraper {
                assert!(scraper.await.unwrap_or(0) > 0, "the scraper ran");
            }
            let arm = &mut arms[usize::from(scraped)];
            arm.0 += t.count;
            arm.1 += t.elapsed;
        }
    }
    let rate = |(count, time): (u64, Duration)| count as f64 / time.as_secs_f64();
    (rate(arms[0]), rate(arms[1]))
}

/// Process CPU time per `/metrics` scrape, in µs, both ends included (the
/// scraping client and the node's handler run in this process), over
/// `n` scrapes back to back with the connections idle. Unlike throughput
/// with and without scraping, it does not drown in the machine's drift.
async fn scrape_cpu_us(admin: SocketAddr, n: u32) -> f64 {
    let cpu = || {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    };
    let before = cpu();
    for _ in 0..n {
        let (status, _) = mxp::admin::request(admin, "GET", "/metrics", None, None)
            .await
            .expect("a scrape");
        assert_eq!(status, 200, "a scrape");
    }
    (cpu() - before).as_secs_f64() * 1e6 / f64::from(n)
}

/// Initials per second of the flood rows: the rate that took a node down
/// before mac1, the replay log and the handshake workers.
const FLOOD_RATE: u64 = 10_000;

/// Request/response P99 and connection setup P50 of each carrier while
/// copies of one valid Initial arrive at [`FLOOD_RATE`] from 256 ports (a
/// thread of this process, never reading the answers), beside the same
/// run's unflooded figures in `earlier`.
async fn flooded(
    p: &Phases,
    conns: &[(Column, Connection, Endpoint)],
    node: &Endpoint,
    url: &str,
    transport: Arc<TransportConfig>,
    earlier: &[Row],
) -> Vec<Row> {
    let mut rr = Row::new(
        "flood_rr64_p99_us",
        "req/resp 64 B P99, Initial flood",
        "µs",
        Better::Lower,
    );
    let mut ratio = Row::new(
        "flood_rr64_p99_ratio",
        "req/resp P99 flooded / not",
        "×",
        Better::Lower,
    )
    .target("≤ 2× unflooded");
    let mut setup = Row::new(
        "flood_setup_p50_us",
        "setup P50, Initial flood",
        "µs",
        Better::Lower,
    );
    let key = node.public_key();
    let unflooded = |k: &str, c: Column| earlier.iter().find(|r| r.key == k).and_then(|r| r.get(c));
    for (column, conn, _) in conns {
        let (carrier, target) = match column {
            Column::Mxp => (Carrier::Mxp, node.local_addr()),
            _ => (Carrier::Quic, node.quic_addr().expect("a QUIC listener")),
        };
        let lead = Duration::from_millis(200);
        let flood = Flood::prepare(carrier, FloodKind::Replay, target, key, 1)
            .await
            .expect("a flood")
            .rate(FLOOD_RATE)
            .duration(lead + p.rr + p.setup + Duration::from_millis(500));
        let sender = thread::spawn(move || flood.run());
        tokio::time::sleep(lead).await;
        let mut lat = check(
            "flooded rr",
            bench::call_latencies(conn, 64, p.rr, PATIENCE).await,
        );
        let p99 = lat.summary().p99;
        rr.set(*column, p99);
        if let Some(before) = unflooded("rr64_p99_us", *column) {
            ratio.set(*column, p99 / before);
        }
        let endpoint = client(mode(*column), transport.clone());
        let mut lat = check(
            "flooded setup",
            bench::handshake_latencies(&endpoint, url, key, p.setup).await,
        );
        setup.set(*column, lat.summary().p50);
        let sent = sender.join().expect("the flood thread").expect("the flood");
        eprintln!(
            "  {}: {} Initials at {:.0}/s",
            column.key(),
            sent.sent,
            sent.rate
        );
    }
    vec![rr, ratio, setup]
}

async fn measure(p: &Phases, node_runtime: &Handle) -> (Vec<Row>, Value) {
    let transport = Arc::new(TransportConfig::default());
    let node = start_node(node_runtime, transport.clone());
    let key = node.public_key();
    let direct = url(node.local_addr(), node.quic_addr().unwrap());
    // Serving /metrics is the node's work: on the node's runtime.
    let admin = node_runtime
        .spawn(mxp::admin::serve(any_port(), node.clone(), None))
        .await
        .expect("the admin task")
        .expect("admin endpoint");
    let mut rows = Vec::new();

    // First, while the heap holds nothing else in flux.
    eprintln!("memory per {} streams...", p.streams);
    let mut memory = Row::new(
        "mem_10k_streams_mb",
        "memory per 10,000 open streams",
        "MB",
        Better::Lower,
    )
    .target("≤ 128 MB; ≤ 32 MB");
    let many = Arc::new({
        let mut transport = TransportConfig::default();
        transport.max_concurrent_uni_streams = p.streams as u64 + 100;
        transport
    });
    let wide = start_node(node_runtime, many.clone());
    let wide_url = url(wide.local_addr(), wide.quic_addr().unwrap());
    for column in [Column::Mxp, Column::Quic] {
        let endpoint = client(mode(column), many.clone());
        let conn = connect(&endpoint, &wide_url, wide.public_key()).await;
        memory.set(column, stream_memory(&conn, p.streams).await);
        // Both ends let go of it before the next carrier is measured.
        conn.close(0, b"");
        drop(conn);
        let idle = async { tokio::join!(endpoint.wait_idle(), wide.wait_idle()) };
        tokio::time::timeout(PATIENCE, idle)
            .await
            .expect("closed in time");
    }

    eprintln!("connection setup...");
    let mut setup_p50 = Row::new("setup_p50_us", "connection setup P50", "µs", Better::Lower)
        .target("≤ 2 ms; ≤ 0.5× QUIC");
    let mut setup_p99 = Row::new("setup_p99_us", "connection setup P99", "µs", Better::Lower);
    for column in [Column::Mxp, Column::Quic] {
        let endpoint = client(mode(column), transport.clone());
        let mut lat = check(
            "setup",
            bench::handshake_latencies(&endpoint, &direct, key, p.setup).await,
        );
        let s = lat.summary();
        setup_p50.set(column, s.p50);
        setup_p99.set(column, s.p99);
    }
    rows.extend([setup_p50, setup_p99]);

    // One connection per carrier for the steady-state measures.
    let mut conns = Vec::new();
    for column in [Column::Mxp, Column::Quic] {
        let endpoint = client(mode(column), transport.clone());
        conns.push((column, connect(&endpoint, &direct, key).await, endpoint));
    }

    for (size, name) in [(64usize, "64 B"), (1024, "1 KiB")] {
        eprintln!("request/response {name}...");
        let keys: [&'static str; 3] = if size == 64 {
            ["rr64_p50_us", "rr64_p95_us", "rr64_p99_us"]
        } else {
            ["rr1k_p50_us", "rr1k_p95_us", "rr1k_p99_us"]
        };
        let labels: [&'static str; 3] = if size == 64 {
            [
                "req/resp 64 B P50",
                "req/resp 64 B P95",
                "req/resp 64 B P99",
            ]
        } else {
            [
                "req/resp 1 KiB P50",
                "req/resp 1 KiB P95",
                "req/resp 1 KiB P99",
            ]
        };
        let mut r: Vec<Row> = keys
            .iter()
            .zip(labels)
            .map(|(&k, l)| Row::new(k, l, "µs", Better::Lower))
            .collect();
        if size == 64 {
            let r99 = r.pop().expect("three rows");
            r.push(r99.target("≤ 300 µs; ≤ 1.5× raw UDP, < QUIC"));
        }
        // In slices, the carriers and raw UDP taking turns, so that a slow
        // stretch of the machine (they last seconds here) falls on every
        // column alike rather than on whichever was measuring.
        let slice = p.rr / RR_SLICES;
        let mut lat: [Latencies; 3] = Default::default();
        for _ in 0..RR_SLICES {
            for (column, conn, _) in &conns {
                lat[*column as usize].append(check(
                    "rr",
                    bench::call_latencies(conn, size, slice, PATIENCE).await,
                ));
            }
            lat[Column::Raw as usize].append(raw_rr(size, slice));
        }
        for (column, lat) in COLUMNS.into_iter().zip(&mut lat) {
            let s = lat.summary();
            for (row, v) in r.iter_mut().zip([s.p50, s.p95, s.p99]) {
                row.set(column, v);
            }
        }
        rows.extend(r);
    }

    eprintln!("under a {FLOOD_RATE}/s flood of one replayed Initial...");
    rows.extend(flooded(p, &conns, &node, &direct, transport.clone(), &rows).await);

    eprintln!("request/response at 1% loss...");
    let mut loss = Row::new(
        "rr64_loss1_p99_us",
        "req/resp P99 at 1% loss",
        "µs",
        Better::Lower,
    )
    .target("≤ 800 µs, far below QUIC");
    let relay = |to| {
        Relay::bind(RelayConfig {
            loss: 0.01,
            seed: 1,
            ..RelayConfig::new(any_port(), to)
        })
    };
    let mxp_relay = relay(node.local_addr()).await.expect("relay");
    let quic_relay = relay(node.quic_addr().unwrap()).await.expect("relay");
    let lossy = url(mxp_relay.local_addr(), quic_relay.local_addr());
    for column in [Column::Mxp, Column::Quic] {
        let endpoint = client(mode(column), transport.clone());
        let conn = connect(&endpoint, &lossy, key).await;
        let mut lat = check(
            "lossy rr",
            bench::call_latencies(&conn, 64, p.loss, PATIENCE).await,
        );
        loss.set(column, lat.summary().p99);
        conn.close(0, b"");
    }
    rows.push(loss);

    eprintln!("64-byte messages, bulk, datagrams...");
    let mut msgs = Row::new(
        "msgs64_per_s",
        "64 B messages, one connection",
        "msg/s",
        Better::Higher,
    )
    .target("≥ 1 M; ≥ 3 M and ≥ 3× QUIC");
    let mut bulk =
        Row::new("bulk_mb_s", "bulk, one stream", "MB/s", Better::Higher).target("≥ QUIC");
    let mut dgrams = Row::new(
        "datagrams64_per_s",
        "64 B datagrams",
        "dgram/s",
        Better::Higher,
    )
    .target("≥ QUIC");
    let mut msgs_overhead = Row::new(
        "msgs64_wire_per_payload",
        "wire bytes per payload byte, 64 B msgs",
        "×",
        Better::Lower,
    );
    let mut bulk_overhead = Row::new(
        "bulk_wire_per_payload",
        "wire bytes per payload byte, bulk",
        "×",
        Better::Lower,
    )
    .target("≤ 1.1×; ≤ 1.05×");
    for (column, conn, _) in &conns {
        let before = conn.stats();
        let t = check(
            "msgs",
            bench::stream_throughput(conn, 64, Band::Streaming, p.throughput).await,
        );
        msgs.set(*column, t.per_sec());
        msgs_overhead.set(*column, wire_per_payload(&before, &conn.stats(), t.bytes));
        let before = conn.stats();
        let t = check(
            "bulk",
            bench::stream_throughput(conn, 64 * 1024, Band::Background, p.throughput).await,
        );
        bulk.set(*column, t.mb_per_sec());
        bulk_overhead.set(*column, wire_per_payload(&before, &conn.stats(), t.bytes));
    }
    let (raw_msgs, _) = raw_blast(64, p.throughput);
    msgs.set(Column::Raw, raw_msgs);
    dgrams.set(Column::Raw, raw_msgs);
    let (_, raw_bulk) = raw_blast(1452, p.throughput);
    bulk.set(Column::Raw, raw_bulk);

    eprintln!("metrics cost...");
    let mut scraped = Row::new(
        "msgs64_scraped_per_s",
        "64 B messages, /metrics scraped 10/s",
        "msg/s",
        Better::Higher,
    )
    .information();
    let mut cost = Row::new(
        "metrics_cost_pct",
        "throughput lost to scraping",
        "%",
        Better::Lower,
    )
    .in_points()
    .information();
    let mut scrape_cpu = Row::new(
        "scrape_cpu_us",
        "CPU per /metrics scrape, both ends",
        "µs",
        Better::Lower,
    );
    let mut scrape_share = Row::new(
        "scrape_10hz_core_pct",
        "CPU of scraping 10/s, of one core",
        "%",
        Better::Lower,
    )
    .target("< 5 %");
    let (_, mxp_conn, _) = &conns[0];
    let (without, with) = scrape_cost(mxp_conn, admin.local_addr(), p.throughput).await;
    scraped.set(Column::Mxp, with);
    cost.set(Column::Mxp, (1.0 - with / without) * 100.0);
    // Let the node finish with the messages first: its CPU is counted too.
    quiesce().await;
    let per_scrape = scrape_cpu_us(admin.local_addr(), p.scrapes).await;
    scrape_cpu.set(Column::Mxp, per_scrape);
    // 10 scrapes a second: 10 × µs per s, as a percentage of 10⁶ µs.
    scrape_share.set(Column::Mxp, per_scrape * 10.0 / 1e4);

    // Datagram runs close their connection: last.
    for (column, conn, _) in &conns {
        let run = check(
            "datagrams",
            bench::datagram_rate(conn, 64, p.throughput).await,
        );
        dgrams.set(*column, run.sent as f64 / run.elapsed.as_secs_f64());
    }
    rows.extend([
        msgs,
        scraped,
        cost,
        scrape_cpu,
        scrape_share,
        bulk,
        dgrams,
        msgs_overhead,
        bulk_overhead,
    ]);

    rows.push(memory);

    eprintln!("backpressure signal...");
    let mut signal = Row::new(
        "backpressure_p99_us",
        "backpressure signal P99",
        "µs",
        Better::Lower,
    )
    .target("≤ 50 µs; ≤ 10 µs");
    for column in [Column::Mxp, Column::Quic] {
        let endpoint = client(mode(column), transport.clone());
        let conn = connect(&endpoint, &direct, key).await;
        let mut lat = check(
            "backpressure",
            bench::backpressure_signal(&conn, p.backpressure, PATIENCE).await,
        );
        signal.set(column, lat.summary().p99);
        conn.close(0, b"");
    }
    rows.push(signal);

    let (encode, decode) = codec_ns(256, p.codec_iterations);
    for (keys, labels, (p50, p99)) in [
        (
            ["encode256_p50_ns", "encode256_p99_ns"],
            [
                "encode one 256 B message, P50",
                "encode one 256 B message, P99",
            ],
            encode,
        ),
        (
            ["decode256_p50_ns", "decode256_p99_ns"],
            [
                "decode one 256 B message, P50",
                "decode one 256 B message, P99",
            ],
            decode,
        ),
    ] {
        let mut median = Row::new(keys[0], labels[0], "ns", Better::Lower);
        median.set(Column::Mxp, p50);
        let mut tail =
            Row::new(keys[1], labels[1], "ns", Better::Lower).target("≤ 500 ns; ≤ 100 ns");
        tail.set(Column::Mxp, p99);
        rows.extend([median, tail]);
    }

    let settings = json!({
        "shared": format!(
            "stream window {} B, connection window {} B, {} bidi / {} uni streams, initial RTT {:?}, idle timeout {:?}",
            transport.stream_receive_window,
            transport.receive_window,
            transport.max_concurrent_bidi_streams,
            transport.max_concurrent_uni_streams,
            transport.initial_rtt,
            transport.idle_timeout,
        ),
        "mxp": format!(
            "max ACK delay {:?} (Critical acknowledged at once), timer granularity {:?}, pacing {}",
            transport.max_ack_delay, transport.timer_granularity, transport.pacing
        ),
        "quic": mxp::quic_settings(),
    });
    (rows, settings)
}

// ---- presentation ----------------------------------------------------------

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn cell(v: Option<f64>) -> String {
    match v {
        None => "n/a".to_owned(),
        Some(v) if v >= 100_000.0 => format!("{:.2} M", v / 1e6),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.1}"),
    }
}

fn ratio_cell(v: Option<f64>) -> String {
    v.map_or("n/a".to_owned(), |r| format!("{r:.2}×"))
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<38} {:>7} {:>10} {:>10} {:>10} {:>9} {:>9}  target",
        "measure", "unit", "MXP", "QUIC", "raw UDP", "MXP/QUIC", "MXP/raw"
    );
    for r in rows {
        let [m, q, u] = COLUMNS.map(|c| r.get(c));
        println!(
            "{:<38} {:>7} {:>10} {:>10} {:>10} {:>9} {:>9}  {}",
            r.label,
            r.unit,
            cell(m),
            cell(q),
            cell(u),
            ratio_cell(ratio(m, q)),
            ratio_cell(ratio(m, u)),
            r.target
        );
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": thread::available_parallelism().map_or(0, |n| n.get()),
        "kernel": kernel.trim(),
    })
}

fn to_json(rows: &[Row], settings: Value, quick: bool) -> Value {
    let measures: serde_json::Map<String, Value> = rows
        .iter()
        .map(|r| {
            let [m, q, u] = COLUMNS.map(|c| r.get(c));
            (
                r.key.to_owned(),
                json!({
                    "label": r.label,
                    "unit": r.unit,
                    "better": if r.better == Better::Higher { "higher" } else { "lower" },
                    "target": r.target,
                    "mxp": m, "quic": q, "raw_udp": u,
                    "mxp_over_quic": ratio(m, q),
                    "mxp_over_raw_udp": ratio(m, u),
                }),
            )
        })
        .collect();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "command": "cargo run --example perf_baseline --release",
        "quick": quick,
        "unix_time": unix,
        "machine": machine(),
        "quic_settings": settings,
        "measures": measures,
    })
}

/// The change from `then` to `now` as a fraction: by percentage points for
/// a row in points, else by ratio (none from zero).
fn change_of(r: &Row, then: f64, now: f64) -> Option<f64> {
    if r.points {
        Some((now - then) / 100.0)
    } else {
        (then != 0.0).then(|| now / then - 1.0)
    }
}

/// How much worse a `change` is for this row (negative is better).
fn worsening(r: &Row, change: f64) -> f64 {
    match r.better {
        Better::Higher => -change,
        Better::Lower => change,
    }
}

/// Prints each measure's change against an earlier run and returns the MXP
/// rows that regressed beyond `tolerance`.
///
/// Absolute numbers on a shared machine drift by ±20 % between runs (the
/// whole machine, raw UDP and the pure-CPU codec rows included), so an MXP
/// row with a reference column (raw UDP, the floor, else QUIC) in both
/// runs counts as a regression only if its ratio to that reference also
/// worsened beyond `tolerance`: MXP lost ground, not the machine.
fn compare(rows: &[Row], old: &Value, quick: bool, tolerance: f64) -> Vec<String> {
    println!(
        "\nchange against the earlier run (MXP regressions beyond {:.0}% flagged; \
         \"vs ref\" is the change of MXP's ratio to raw UDP, else QUIC, in each run):",
        tolerance * 100.0
    );
    if old["quick"].as_bool() != Some(quick) {
        println!("  note: one of the two runs is a --quick smoke run: not a baseline");
    }
    let then_of = |r: &Row, column: Column| old["measures"][r.key][column.key()].as_f64();
    let mut regressions = Vec::new();
    for r in rows {
        for column in COLUMNS {
            let (Some(now), Some(then)) = (r.get(column), then_of(r, column)) else {
                continue;
            };
            let Some(change) = change_of(r, then, now) else {
                continue;
            };
            let worse = worsening(r, change);
            let mut relative = None;
            if column == Column::Mxp && !r.points {
                relative = [Column::Raw, Column::Quic]
                    .into_iter()
                    .find_map(|reference| {
                        let (now_ref, then_ref) = (r.get(reference)?, then_of(r, reference)?);
                        (now_ref > 0.0 && then_ref > 0.0)
                            .then(|| change_of(r, then / then_ref, now / now_ref))
                            .flatten()
                            .map(|c| worsening(r, c))
                    });
            }
            let regressed = column == Column::Mxp
                && !r.information
                && worse > tolerance
                && relative.is_none_or(|rel| rel > tolerance);
            let versus = relative.map_or(String::new(), |rel| {
                // Shown as a change of the ratio: + is worse for MXP.
                format!("  vs ref {:+6.1}%", rel * 100.0)
            });
            let flag = if regressed { "  REGRESSION" } else { "" };
            println!(
                "  {:<38} {:<8} {:>10} -> {:>10} {:+6.1}%{versus}{flag}",
                r.label,
                column.key(),
                cell(Some(then)),
                cell(Some(now)),
                change * 100.0
            );
            if regressed {
                regressions.push(format!("{} ({})", r.label, column.key()));
            }
        }
    }
    regressions
}

fn main() {
    let args = Args::parse();
    let old = args.compare.as_ref().map(|path| {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("--compare {}: {e}", path.display()));
        serde_json::from_str::<Value>(&text)
            .unwrap_or_else(|e| panic!("--compare {}: not a baseline JSON: {e}", path.display()))
    });
    let log_path = PathBuf::from("target/perf_baseline.log");
    let _ = std::fs::create_dir_all("target");
    let log = std::fs::File::create(&log_path).expect("create the log file");
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_ansi(false)
        .with_writer(Arc::new(log))
        .init();

    // Two runtimes of two workers each, as a node process and a client
    // process would have on this machine.
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    };
    let (clients, node) = (runtime(), runtime());
    let started = Instant::now();
    let p = phases(args.quick);
    let (rows, settings) = clients.block_on(measure(&p, node.handle()));
    eprintln!(
        "measured in {:.0} s (log: {})\n",
        started.elapsed().as_secs_f64(),
        log_path.display()
    );

    print_table(&rows);
    println!(
        "\nQUIC settings: {}",
        settings["quic"].as_str().unwrap_or("")
    );
    println!("shared: {}", settings["shared"].as_str().unwrap_or(""));
    println!("MXP: {}", settings["mxp"].as_str().unwrap_or(""));
    println!(
        "memory: live heap held by 10,000 open streams with one byte each, client and node together"
    );
    let report = to_json(&rows, settings, args.quick);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap() + "\n")
            .unwrap_or_else(|e| panic!("--json {}: {e}", path.display()));
        println!("wrote {}", path.display());
    }
    if let Some(old) = &old {
        let regressions = compare(&rows, old, args.quick, args.tolerance);
        if !regressions.is_empty() {
            println!(
                "{} regression(s): {}",
                regressions.len(),
                regressions.join(", ")
            );
        }
    }
    // Measurements are over; do not wait for lingering connections.
    clients.shutdown_timeout(Duration::from_millis(100));
    node.shutdown_timeout(Duration::from_millis(100));
}
