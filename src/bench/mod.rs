//! Load scenarios over the public API, shared by `mxp bench` and
//! `examples/perf_baseline.rs`: the same code drives either carrier, so a
//! comparison between them measures the carriers and nothing else.
//!
//! Each scenario runs for a duration against a node serving
//! [`crate::echo`], and returns raw figures; presenting them is the
//! caller's business.

mod latency;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mxp_proto::message::{Message, MessageType};
use mxp_proto::{Band, PublicKey};
use thiserror::Error;

pub use latency::{Latencies, Summary};

use crate::{Connection, Endpoint};

/// A scenario stopped: what it was doing and why.
#[derive(Debug, Error)]
#[error("{what}: {why}")]
pub struct BenchError {
    /// The step that failed (`call`, `write`, ...).
    pub what: &'static str,
    /// The error.
    pub why: String,
}

fn failed(what: &'static str, why: impl std::fmt::Display) -> BenchError {
    BenchError {
        what,
        why: why.to_string(),
    }
}

/// One call at a time with a `size`-byte payload for `duration`; the
/// latency of each, request sent to response read. A call unanswered
/// after `patience` fails the run.
pub async fn call_latencies(
    conn: &Connection,
    size: usize,
    duration: Duration,
    patience: Duration,
) -> Result<Latencies, BenchError> {
    let payload = Bytes::from(vec![0x42; size]);
    let mut lat = Latencies::default();
    let start = Instant::now();
    let mut id = 0;
    while start.elapsed() < duration {
        let request = Message::new(MessageType::Call, payload.clone()).with_message_id(id);
        let t = Instant::now();
        tokio::time::timeout(patience, conn.call(&request))
            .await
            .map_err(|_| failed("call", "no response"))?
            .map_err(|e| failed("call", e))?;
        lat.push(t.elapsed());
        id += 1;
    }
    Ok(lat)
}

/// What a throughput run moved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// Writes (or datagrams) made.
    pub count: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// From the first write to the node acknowledging the last byte.
    pub elapsed: Duration,
}

impl Throughput {
    /// Writes per second.
    pub fn per_sec(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    /// Payload megabytes (10⁶ bytes) per second.
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// Writes `size`-byte chunks, one write call each, on one stream in `band`
/// for `duration`, then waits until the node has acknowledged all of it.
pub async fn stream_throughput(
    conn: &Connection,
    size: usize,
    band: Band,
    duration: Duration,
) -> Result<Throughput, BenchError> {
    let mut send = conn
        .open_uni(band)
        .await
        .map_err(|e| failed("open stream", e))?;
    let chunk = vec![0x17; size];
    let start = Instant::now();
    let mut writes = 0u64;
    while start.elapsed() < duration {
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
    Ok(Throughput {
        count: writes,
        bytes: writes * size as u64,
        elapsed: start.elapsed(),
    })
}

/// How long a writer takes to learn that the peer's flow-control window
/// is full (the backpressure signal): fills a stream whose echo is never
/// read, so the node stops reading and the windows stay full, then times
/// `samples` writes, each polled once and coming back "not now" — what a
/// caller's task sees before it is parked.
pub async fn backpressure_signal(
    conn: &Connection,
    samples: usize,
    patience: Duration,
) -> Result<Latencies, BenchError> {
    let (mut send, recv) = conn
        .open_bi(Band::Streaming)
        .await
        .map_err(|e| failed("open stream", e))?;
    let chunk = vec![0x33; 16 * 1024];
    let start = Instant::now();
    let mut lat = Latencies::default();
    let mut cx = Context::from_waker(Waker::noop());
    while lat.len() < samples {
        if start.elapsed() > patience {
            return Err(failed("fill", "the window never stayed full"));
        }
        // Full once a write has waited 50 ms: nothing reads, so nothing
        // frees it. A write that still goes through (a slow machine) means
        // it was not full yet: fill on.
        let wait = Duration::from_millis(50);
        if let Ok(written) = tokio::time::timeout(wait, send.write(&chunk)).await {
            written.map_err(|e| failed("write", e))?;
            continue;
        }
        while lat.len() < samples {
            let t = Instant::now();
            let pending = pin!(send.write(&chunk)).poll(&mut cx).is_pending();
            let took = t.elapsed();
            if !pending {
                break;
            }
            lat.push(took);
        }
    }
    let _ = send.reset(0);
    drop(recv);
    Ok(lat)
}

/// What a datagram run did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DatagramRun {
    /// Datagrams the application handed over.
    pub queued: u64,
    /// Of those, put on the wire (the rest were dropped at a full queue).
    pub sent: u64,
    /// Echoes received back from the node.
    pub echoed: u64,
    /// How long it sent.
    pub elapsed: Duration,
}

/// Sends `size`-byte datagrams as fast as they are accepted for
/// `duration`; the node echoes them. Closes `conn` at the end (the echo
/// reader stops with it).
pub async fn datagram_rate(
    conn: &Connection,
    size: usize,
    duration: Duration,
) -> Result<DatagramRun, BenchError> {
    let max = conn.max_datagram_size();
    if size > max {
        return Err(failed(
            "datagram size",
            format!("{size} bytes; the node accepts at most {max}"),
        ));
    }
    let reader = {
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while conn.read_datagram().await.is_ok() {
                n += 1;
            }
            n
        })
    };
    let payload = Bytes::from(vec![0x33; size]);
    let before = conn.stats().datagrams.sent;
    let start = Instant::now();
    let mut queued = 0u64;
    while start.elapsed() < duration {
        for _ in 0..64 {
            if conn
                .send_datagram(payload.clone(), Band::Background)
                .is_ok()
            {
                queued += 1;
            }
        }
        // Let the driver put them on the wire.
        tokio::task::yield_now().await;
    }
    let elapsed = start.elapsed();
    // Echoes still in flight get a moment to arrive.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = conn.stats().datagrams.sent - before;
    conn.close(0, b"done");
    let echoed = reader.await.unwrap_or(0);
    Ok(DatagramRun {
        queued,
        sent,
        echoed,
        elapsed,
    })
}

/// Connects to `url` and closes, one at a time, for `duration`; the time
/// of each connect (the handshake, authentication included).
pub async fn handshake_latencies(
    endpoint: &Endpoint,
    url: &str,
    key: PublicKey,
    duration: Duration,
) -> Result<Latencies, BenchError> {
    let mut lat = Latencies::default();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        let conn = endpoint
            .connect(url, key)
            .await
            .map_err(|e| failed("connect", e))?;
        lat.push(t.elapsed());
        conn.close(0, b"");
    }
    Ok(lat)
}
