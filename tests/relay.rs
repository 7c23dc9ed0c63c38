//! The impairment relay over real loopback UDP, with a plain UDP echo
//! server behind it.
//!
//! No assertion depends on how fast the machine is: datagrams go out in
//! small bursts (so no socket buffer overflows), and the relay's own
//! counters say when a burst has settled — everything forwarded, lost or
//! duplicated in both directions — so the tests count, never time out
//! (beyond a generous guard against hangs). The only timing assertion is
//! a lower bound: a delayed echo takes at least twice the delay.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mxp::relay::{Relay, RelayConfig, RelayStats};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Guard against a hang; never a performance threshold.
const HANG: Duration = Duration::from_secs(30);

/// A UDP echo server that remembers every source address it has seen.
struct Echo {
    addr: SocketAddr,
    sources: Arc<Mutex<HashSet<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_server() -> Echo {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let sources = Arc::new(Mutex::new(HashSet::new()));
    let seen = sources.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            seen.lock().unwrap().insert(from);
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    Echo {
        addr,
        sources,
        task,
    }
}

/// A relay in front of `echo`, configured by `f`.
async fn relay_to(echo: &Echo, f: impl FnOnce(&mut RelayConfig)) -> Relay {
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), echo.addr);
    f(&mut config);
    Relay::bind(config).await.unwrap()
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// Waits until the relay has received `sent` datagrams from clients and
/// every one of them, and every echo they caused, is forwarded or lost.
async fn settle(relay: &Relay, sent: u64) -> RelayStats {
    let start = Instant::now();
    loop {
        let s = relay.stats();
        let (up, down) = (s.upstream, s.downstream);
        if up.received == sent
            && up.pending() == 0
            && down.received == up.forwarded + up.duplicated
            && down.pending() == 0
        {
            return s;
        }
        assert!(start.elapsed() < HANG, "relay never settled: {s}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Receives one datagram (with a hang guard) and checks it came from the
/// relay.
async fn recv(socket: &UdpSocket, relay: &Relay) -> Vec<u8> {
    let mut buf = vec![0u8; 65_535];
    let (n, from) = tokio::time::timeout(HANG, socket.recv_from(&mut buf))
        .await
        .expect("no datagram")
        .unwrap();
    assert_eq!(from, relay.local_addr());
    buf.truncate(n);
    buf
}

/// Nothing more is waiting on `socket`.
fn assert_drained(socket: &UdpSocket) {
    let mut buf = [0u8; 64];
    match socket.try_recv_from(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("unexpected extra datagram: {other:?}"),
    }
}

/// Sends `count` numbered datagrams through the relay in bursts and
/// returns the numbers of the echoes in arrival order.
async fn exchange(socket: &UdpSocket, relay: &Relay, count: u32, burst: u32) -> Vec<u32> {
    let mut got = Vec::new();
    let mut sent = 0u32;
    while sent < count {
        let end = (sent + burst).min(count);
        for seq in sent..end {
            socket
                .send_to(&seq.to_le_bytes(), relay.local_addr())
                .await
                .unwrap();
        }
        sent = end;
        let s = settle(relay, u64::from(sent)).await;
        let expected = s.downstream.forwarded + s.downstream.duplicated;
        while (got.len() as u64) < expected {
            let d = recv(socket, relay).await;
            got.push(u32::from_le_bytes(d.try_into().unwrap()));
        }
    }
    assert_drained(socket);
    got
}

fn in_order(seqs: &[u32]) -> bool {
    seqs.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test]
async fn without_impairment_everything_comes_back_in_order() {
    let echo = echo_server().await;
    let relay = relay_to(&echo, |_| {}).await;
    let c = client().await;
    let got = exchange(&c, &relay, 1000, 50).await;
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    let s = relay.stats();
    for d in [s.upstream, s.downstream] {
        assert_eq!(d.received, 1000);
        assert_eq!(d.forwarded, 1000);
        assert_eq!((d.lost, d.duplicated, d.reordered, d.dropped), (0, 0, 0, 0));
    }
    assert_eq!(s.clients, 1);
}

#[tokio::test]
async fn loss_on_both_links_compounds() {
    let echo = echo_server().await;
    let relay = relay_to(&echo, |c| c.loss = 0.05).await;
    let c = client().await;
    let n = 4000;
    let got = exchange(&c, &relay, n, 100).await;
    // Two independent 5% links deliver 0.95² = 90.25%: 9.75% lost. The
    // bounds are about ±4 standard deviations at this sample size.
    let lost = 1.0 - got.len() as f64 / f64::from(n);
    assert!((0.08..0.116).contains(&lost), "round-trip loss {lost}");
    assert!(in_order(&got), "loss alone must not reorder");
    let s = relay.stats();
    for d in [s.upstream, s.downstream] {
        let rate = d.lost as f64 / d.received as f64;
        assert!((0.035..0.065).contains(&rate), "one-way loss {rate}: {s}");
        assert_eq!(d.forwarded + d.lost, d.received);
    }
    assert_eq!(got.len() as u64, s.downstream.forwarded);
}

#[tokio::test]
async fn a_seed_reproduces_the_same_fates() {
    async fn survivors(seed: u64) -> Vec<u32> {
        let echo = echo_server().await;
        let relay = relay_to(&echo, |c| {
            c.loss = 0.1;
            c.seed = seed;
        })
        .await;
        exchange(&client().await, &relay, 500, 50).await
    }
    let first = survivors(7).await;
    assert_eq!(first, survivors(7).await);
    assert_ne!(first, survivors(8).await);
}

#[tokio::test]
async fn every_echo_takes_at_least_twice_the_delay() {
    let echo = echo_server().await;
    let delay = Duration::from_millis(2);
    let relay = relay_to(&echo, |c| {
        c.delay = delay;
        c.jitter = Duration::from_micros(500);
    })
    .await;
    let c = client().await;
    for seq in 0u32..20 {
        let start = Instant::now();
        c.send_to(&seq.to_le_bytes(), relay.local_addr())
            .await
            .unwrap();
        assert_eq!(recv(&c, &relay).await, seq.to_le_bytes());
        let rtt = start.elapsed();
        assert!(rtt >= 2 * delay, "echo {seq} took only {rtt:?}");
    }
}

#[tokio::test]
async fn jitter_alone_keeps_the_order() {
    let echo = echo_server().await;
    let relay = relay_to(&echo, |c| {
        c.delay = Duration::from_micros(50);
        c.jitter = Duration::from_micros(500);
    })
    .await;
    let c = client().await;
    let got = exchange(&c, &relay, 1000, 50).await;
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    assert_eq!(relay.stats().upstream.reordered, 0);
}

#[tokio::test]
async fn reordering_lets_later_datagrams_overtake() {
    let echo = echo_server().await;
    let relay = relay_to(&echo, |c| {
        c.delay = Duration::from_micros(50);
        c.jitter = Duration::from_micros(100);
        c.reorder = 0.1;
    })
    .await;
    let c = client().await;
    let got = exchange(&c, &relay, 1000, 50).await;
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..1000).collect::<Vec<_>>(),
        "nothing lost or doubled"
    );
    let inversions = got.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(inversions > 0, "no datagram arrived out of order");
    let s = relay.stats();
    assert!(
        s.upstream.reordered > 0 && s.downstream.reordered > 0,
        "{s}"
    );
}

#[tokio::test]
async fn duplicates_arrive() {
    let echo = echo_server().await;
    let relay = relay_to(&echo, |c| c.duplicate = 0.1).await;
    let c = client().await;
    let got = exchange(&c, &relay, 1000, 50).await;
    let mut copies: HashMap<u32, u32> = HashMap::new();
    for seq in &got {
        *copies.entry(*seq).or_default() += 1;
    }
    assert_eq!(copies.len(), 1000, "every datagram came back");
    assert!(copies.values().any(|&n| n > 1), "no duplicate arrived");
    let s = relay.stats();
    assert!(
        s.upstream.duplicated > 0 && s.downstream.duplicated > 0,
        "{s}"
    );
    // Upstream copies are echoed too: everything the client got is
    // accounted for by the relay.
    assert_eq!(s.downstream.received, 1000 + s.upstream.duplicated);
    assert_eq!(
        got.len() as u64,
        s.downstream.forwarded + s.downstream.duplicated
    );
}

#[tokio::test]
async fn each_client_gets_its_own_upstream_socket_and_its_own_replies() {
    let echo = echo_server().await;
    let relay = relay_to(&echo, |_| {}).await;
    let clients = [client().await, client().await];
    let mut got: [Vec<u32>; 2] = Default::default();
    let mut sent = 0u64;
    for round in 0u32..10 {
        for seq in round * 20..(round + 1) * 20 {
            for (tag, c) in clients.iter().enumerate() {
                let mut d = vec![tag as u8];
                d.extend_from_slice(&seq.to_le_bytes());
                c.send_to(&d, relay.local_addr()).await.unwrap();
                sent += 1;
            }
        }
        let s = settle(&relay, sent).await;
        assert_eq!(s.downstream.forwarded, sent);
        for (tag, c) in clients.iter().enumerate() {
            while got[tag].len() < (round as usize + 1) * 20 {
                let d = recv(c, &relay).await;
                assert_eq!(d[0], tag as u8, "client {tag} got another client's reply");
                got[tag].push(u32::from_le_bytes(d[1..].try_into().unwrap()));
            }
        }
    }
    for (tag, c) in clients.iter().enumerate() {
        assert_drained(c);
        assert_eq!(got[tag], (0..200).collect::<Vec<_>>());
    }
    assert_eq!(relay.stats().clients, 2);
    let sources = echo.sources.lock().unwrap().clone();
    assert_eq!(sources.len(), 2, "the server saw one source per client");
    for c in &clients {
        assert!(!sources.contains(&c.local_addr().unwrap()));
    }
}

#[tokio::test]
async fn an_idle_clients_slot_goes_to_a_new_client_and_a_busy_table_drops() {
    let echo = echo_server().await;
    let relay = relay_to(&echo, |c| {
        c.max_clients = 2;
        c.client_idle = Duration::from_millis(100);
    })
    .await;
    let (a, b, c) = (client().await, client().await, client().await);
    for s in [&a, &b, &c] {
        s.send_to(b"hi", relay.local_addr()).await.unwrap();
    }
    let stats = settle(&relay, 3).await;
    // Two slots, both just used: the third client is dropped.
    assert_eq!((stats.clients, stats.upstream.dropped), (2, 1));
    assert_eq!(recv(&a, &relay).await, b"hi");
    assert_eq!(recv(&b, &relay).await, b"hi");
    assert_drained(&c);
    // Once A and B have been silent long enough, C gets a slot and its
    // echo; A, coming back, takes B's.
    tokio::time::sleep(Duration::from_millis(150)).await;
    c.send_to(b"again", relay.local_addr()).await.unwrap();
    a.send_to(b"back", relay.local_addr()).await.unwrap();
    let stats = settle(&relay, 5).await;
    assert_eq!((stats.clients, stats.upstream.dropped), (4, 1));
    assert_eq!(recv(&c, &relay).await, b"again");
    assert_eq!(recv(&a, &relay).await, b"back");
}

#[tokio::test]
async fn empty_and_largest_datagrams_pass_intact() {
    let echo = echo_server().await;
    let relay = relay_to(&echo, |c| c.delay = Duration::from_micros(100)).await;
    let c = client().await;
    // Anything goes through, including what no protocol would accept.
    for len in [0usize, 1, 1200, 9000, 65_507] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        c.send_to(&data, relay.local_addr()).await.unwrap();
        assert_eq!(recv(&c, &relay).await, data, "{len}-byte datagram");
    }
}

#[tokio::test]
async fn closing_releases_the_address_and_bad_probabilities_are_refused() {
    let echo = echo_server().await;
    let relay = relay_to(&echo, |_| {}).await;
    let addr = relay.local_addr();
    relay.close().await;
    let again = Relay::bind(RelayConfig::new(addr, echo.addr))
        .await
        .unwrap();
    assert_eq!(again.local_addr(), addr);
    drop(again);

    for bad in [-0.1, 1.5, f64::NAN] {
        let config = RelayConfig {
            loss: bad,
            ..RelayConfig::new("127.0.0.1:0".parse().unwrap(), echo.addr)
        };
        let err = Relay::bind(config).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
}
