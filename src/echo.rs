//! The reference node application: what `mxp serve` runs, and what tests
//! and benchmarks talk to.
//!
//! * a bidirectional stream carrying MXP messages gets every `Call`
//!   answered by a `Response` with the same payload, ids and trace id, and
//!   any other message echoed back;
//! * a bidirectional stream of raw bytes is echoed byte for byte;
//! * unidirectional streams are read and discarded (counted);
//! * datagrams are echoed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use mxp_proto::Band;
use mxp_proto::message::{MAGIC, Message, MessageType};
use tracing::debug;

use crate::{Connection, Endpoint, RecvStream, SendStream};

/// What the echo node has served.
#[derive(Debug, Default)]
pub struct EchoStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Calls answered.
    pub calls: AtomicU64,
    /// Bytes echoed on raw streams.
    pub echoed_bytes: AtomicU64,
    /// Bytes read and discarded from unidirectional streams.
    pub sunk_bytes: AtomicU64,
    /// Messages read from unidirectional streams.
    pub sunk_messages: AtomicU64,
    /// Of those, events.
    pub events: AtomicU64,
    /// Of those, token-stream chunks.
    pub stream_chunks: AtomicU64,
    /// Datagrams echoed.
    pub datagrams: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Serves every connection `endpoint` accepts until it stops accepting.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use mxp::echo::{self, EchoStats};
/// use mxp::proto::{EndpointConfig, Keypair};
///
/// let node = mxp::Endpoint::bind("127.0.0.1:0".parse()?, EndpointConfig::server(Keypair::generate()))?;
/// let stats = Arc::new(EchoStats::default());
/// tokio::spawn(echo::serve(node.clone(), stats.clone()));
/// # Ok(()) }
/// ```
pub async fn serve(endpoint: Endpoint, stats: Arc<EchoStats>) {
    while let Some(conn) = endpoint.accept().await {
        add(&stats.connections, 1);
        tokio::spawn(serve_connection(conn, stats.clone()));
    }
}

/// Serves one connection until it closes.
pub async fn serve_connection(conn: Connection, stats: Arc<EchoStats>) {
    let bi = {
        let (conn, stats) = (conn.clone(), stats.clone());
        async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(echo_stream(conn.clone(), send, recv, stats.clone()));
            }
        }
    };
    let uni = {
        let (conn, stats) = (conn.clone(), stats.clone());
        async move {
            while let Ok(recv) = conn.accept_uni().await {
                tokio::spawn(sink_stream(recv, stats.clone()));
            }
        }
    };
    let datagrams = {
        let (conn, stats) = (conn.clone(), stats.clone());
        async move {
            while let Ok(d) = conn.read_datagram().await {
                if conn.send_datagram(d, Band::Background).is_ok() {
                    add(&stats.datagrams, 1);
                }
            }
        }
    };
    tokio::join!(bi, uni, datagrams);
    let reason = conn.closed().await;
    debug!(peer = %conn.remote_address(), %reason, "connection served");
}

async fn echo_stream(
    conn: Connection,
    mut send: SendStream,
    mut recv: RecvStream,
    stats: Arc<EchoStats>,
) {
    let result: Result<(), Box<dyn std::error::Error + Send + Sync>> = async {
        let Some(first) = recv.read_chunk(usize::MAX).await? else {
            send.finish()?;
            return Ok(());
        };
        if is_message(&first) {
            recv.unread(first);
            while let Some(m) = recv.read_message().await? {
                let received = Instant::now();
                let is_call = m.kind == MessageType::Call;
                let reply = if is_call {
                    Message::new(MessageType::Response, m.payload.clone())
                        .with_message_id(m.message_id)
                        .with_trace_id(m.trace_id)
                } else {
                    m
                };
                // Recorded as the response is handed over, so a caller that
                // has its response finds the call counted.
                if is_call {
                    add(&stats.calls, 1);
                    conn.record_served_call(received.elapsed());
                }
                send.write_message(&reply).await?;
            }
        } else {
            let mut chunk = Some(first);
            while let Some(data) = chunk {
                send.write_all(&data).await?;
                add(&stats.echoed_bytes, data.len() as u64);
                chunk = recv.read_chunk(usize::MAX).await?;
            }
        }
        send.finish()?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        debug!(error = %e, "echo stream ended early");
    }
}

async fn sink_stream(mut recv: RecvStream, stats: Arc<EchoStats>) {
    let Ok(Some(first)) = recv.read_chunk(usize::MAX).await else {
        return;
    };
    if !is_message(&first) {
        let mut chunk = Some(first);
        while let Some(data) = chunk {
            add(&stats.sunk_bytes, data.len() as u64);
            chunk = recv.read_chunk(usize::MAX).await.ok().flatten();
        }
        return;
    }
    recv.unread(first);
    // A message the codec refuses ends the stream (and is counted there).
    while let Ok(Some(m)) = recv.read_message().await {
        add(&stats.sunk_bytes, m.encoded_len() as u64);
        add(&stats.sunk_messages, 1);
        match m.kind {
            MessageType::Event => add(&stats.events, 1),
            MessageType::StreamChunk => add(&stats.stream_chunks, 1),
            _ => {}
        }
    }
}

/// Whether a stream's first bytes are an MXP message header.
fn is_message(first: &[u8]) -> bool {
    first.len() >= 4 && first[..4] == MAGIC.to_le_bytes()
}
