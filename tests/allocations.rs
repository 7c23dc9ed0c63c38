//! The packet path does not allocate per packet: a bulk transfer over real
//! loopback UDP, with every heap allocation in the process counted (by the
//! `stats_alloc` allocator), divided by the packets both ends sent and
//! received. What the application itself allocates (one copy per write
//! into the stream's send buffer) is counted too, so the bound is loose;
//! a per-packet allocation anywhere on the path would break it.

use std::alloc::System;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mxp::Endpoint;
use mxp::echo::{self, EchoStats};
use mxp::proto::{Band, EndpointConfig, Keypair};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::time::timeout;

#[global_allocator]
static HEAP: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const PATIENCE: Duration = Duration::from_secs(60);
const WRITE: usize = 64 * 1024;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_transfer_allocates_far_less_than_once_per_packet() {
    let node = Endpoint::bind(any_port(), EndpointConfig::server(Keypair::generate())).unwrap();
    let stats = Arc::new(EchoStats::default());
    tokio::spawn(echo::serve(node.clone(), stats.clone()));
    let client = Endpoint::bind(any_port(), EndpointConfig::client(Keypair::generate())).unwrap();
    let conn = client
        .connect_to(node.local_addr(), node.public_key())
        .await
        .unwrap();
    let chunk = vec![0x5a; WRITE];
    let mut send = conn.open_uni(Band::Streaming).await.unwrap();
    // Warm up: windows open, buffers and tables at their working size.
    for _ in 0..64 {
        send.write_all(&chunk).await.unwrap();
    }
    send.finished().await.unwrap();

    // Every packet the client sends the node receives and the other way
    // round (loopback, no loss): each is handled twice.
    let packets = || {
        let s = conn.stats();
        2 * (s.packets_sent + s.packets_received)
    };
    let before = packets();
    let region = Region::new(HEAP);
    let mut send = conn.open_uni(Band::Streaming).await.unwrap();
    timeout(PATIENCE, async {
        for _ in 0..512 {
            send.write_all(&chunk).await.unwrap();
        }
        send.finished().await.unwrap();
    })
    .await
    .expect("32 MiB moved within the hang guard");
    let allocations = region.change().allocations as f64;
    let moved = (packets() - before) as f64;
    let per_packet = allocations / moved;
    eprintln!("{allocations} allocations over {moved} packets: {per_packet:.3} per packet");
    assert!(moved > 20_000.0, "{moved} packets");
    assert!(per_packet < 0.25, "{per_packet:.3} allocations per packet");
}
