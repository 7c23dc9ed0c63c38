//! Whole-connection scenarios on the deterministic network: bulk transfer
//! and datagram bursts through loss, reordering, duplication and
//! corruption, and a client that changes address mid-transfer.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use mxp::proto::Band;
use mxp::sim::LinkConfig;

fn impaired(loss: f64, reorder: f64, duplicate: f64) -> LinkConfig {
    LinkConfig {
        loss,
        reorder,
        duplicate,
        jitter: Duration::from_micros(10),
        reorder_delay: Duration::from_micros(60),
        ..LinkConfig::ideal(Duration::from_micros(25))
    }
}

/// The acceptance scenario: 100 streams of 1 MB (100 MB) plus 10,000
/// datagrams through 5% loss, 10% reordering and 1% duplication. Every
/// stream's bytes arrive intact and in order (compared by digest), and no
/// datagram is delivered twice.
#[test]
fn hundred_megabytes_over_a_hundred_streams_and_ten_thousand_datagrams_survive_a_bad_network() {
    let mut s = Setup::new(2024, impaired(0.05, 0.10, 0.01));
    let (c, _) = s.connect();
    let (client, server) = (s.client, s.server);
    let mut tx = Sender::open(&mut s.net, client, c, 100, 1_000_000, Band::Streaming);
    let mut rx = Receiver::default();
    let mut datagrams_queued = 0u32;
    let mut datagrams_seen = HashSet::new();
    let mut duplicates = 0;
    let done = s.net.run_until(Duration::from_secs(600), |net| {
        tx.pump(net, client, c);
        let conn = net
            .endpoint(client)
            .connection(c)
            .expect("client connection");
        // Trickle the datagrams in alongside the bulk data.
        while datagrams_queued < 10_000
            && datagrams_queued as u64 * 10_000 <= conn.stats().bytes_sent
        {
            let d = Bytes::copy_from_slice(&datagrams_queued.to_be_bytes());
            conn.send_datagram(d, Band::Control).expect("datagram fits");
            datagrams_queued += 1;
        }
        // The receiver drains datagrams before stream events.
        let server_conns: Vec<_> = net.endpoint(server).connection_handles().collect();
        for h in server_conns {
            let conn = net
                .endpoint(server)
                .connection(h)
                .expect("server connection");
            while let Some(d) = conn.recv_datagram() {
                if !datagrams_seen.insert(d) {
                    duplicates += 1;
                }
            }
        }
        rx.pump(net, server);
        rx.finished.len() == 100 && datagrams_queued == 10_000
    });
    assert!(done, "transfer did not finish");
    s.net.run_for(Duration::from_millis(50));

    assert_eq!(tx.digests.len(), 100);
    for (id, sent) in &tx.digests {
        assert_eq!(sent.1, 1_000_000);
        assert_eq!(rx.digests.get(id), Some(sent), "stream {id} differs");
    }
    assert_eq!(duplicates, 0, "a datagram was delivered twice");
    let stats = s.net.endpoint(client).connection(c).unwrap().stats();
    // Unreliable means some were lost with their packets; most arrive.
    assert!(stats.datagrams.lost > 0);
    assert!(
        datagrams_seen.len() as u64 + stats.datagrams.lost + stats.datagrams.dropped_send >= 10_000
    );
    assert!(
        datagrams_seen.len() > 9_000,
        "only {} datagrams arrived",
        datagrams_seen.len()
    );
    assert!(
        stats.packets_lost > 1000,
        "the link should have lost packets"
    );
    assert!(stats.retransmitted_frames > 0);
}

/// Bit flips on the wire are caught by the AEAD and recovered from like
/// loss; nothing corrupted reaches the application.
#[test]
fn corruption_is_detected_and_repaired() {
    let link = LinkConfig {
        corrupt: 0.02,
        ..impaired(0.01, 0.0, 0.0)
    };
    let mut s = Setup::new(5, link);
    let (c, sc) = s.connect();
    let (client, server) = (s.client, s.server);
    let mut tx = Sender::open(&mut s.net, client, c, 8, 500_000, Band::Streaming);
    let mut rx = Receiver::default();
    let done = s.net.run_until(Duration::from_secs(120), |net| {
        tx.pump(net, client, c);
        rx.pump(net, server);
        rx.finished.len() == 8
    });
    assert!(done);
    for (id, sent) in &tx.digests {
        assert_eq!(rx.digests.get(id), Some(sent));
    }
    let server_stats = s.net.endpoint(server).connection(sc).unwrap().stats();
    assert!(
        server_stats.decrypt_failures + server_stats.malformed_packets > 0,
        "corrupted packets must be counted as rejected"
    );
}

/// The client's address changes mid-transfer (a NAT rebinding): the server
/// follows the authenticated packets to the new address, validates it, and
/// the transfer completes.
#[test]
fn transfer_survives_a_client_address_change() {
    let mut s = Setup::new(9, LinkConfig::ideal(Duration::from_micros(25)));
    let (c, sc) = s.connect();
    let (client, server) = (s.client, s.server);
    let mut tx = Sender::open(&mut s.net, client, c, 4, 2_000_000, Band::Streaming);
    let mut rx = Receiver::default();
    let mut moved = false;
    let done = s.net.run_until(Duration::from_secs(60), |net| {
        tx.pump(net, client, c);
        rx.pump(net, server);
        let received: u64 = rx.digests.values().map(|d| d.1).sum();
        if !moved && received > 2_000_000 {
            net.rebind(client, "10.0.0.2:60001".parse().unwrap());
            moved = true;
        }
        rx.finished.len() == 4
    });
    assert!(moved && done);
    for (id, sent) in &tx.digests {
        assert_eq!(rx.digests.get(id), Some(sent));
    }
    let conn = s.net.endpoint(server).connection(sc).unwrap();
    assert_eq!(conn.remote_address(), "10.0.0.2:60001".parse().unwrap());
    assert_eq!(conn.stats().migrations, 1);
}

/// Same seed, same run: the harness is deterministic.
#[test]
fn the_same_seed_replays_the_same_run() {
    let run = || {
        let mut s = Setup::new(77, impaired(0.05, 0.05, 0.01));
        let (c, _) = s.connect();
        let (client, server) = (s.client, s.server);
        let mut tx = Sender::open(&mut s.net, client, c, 3, 200_000, Band::Streaming);
        let mut rx = Receiver::default();
        s.net.run_until(Duration::from_secs(60), |net| {
            tx.pump(net, client, c);
            rx.pump(net, server);
            rx.finished.len() == 3
        });
        let st = s.net.endpoint(client).connection(c).unwrap().stats();
        (s.net.elapsed(), st.packets_sent, st.packets_lost)
    };
    assert_eq!(run(), run());
}

#[test]
fn connected_event_reaches_both_ends_through_loss() {
    let mut s = Setup::new(3, impaired(0.2, 0.0, 0.0));
    let (c, sc) = s.connect();
    assert!(
        s.net
            .endpoint(s.client)
            .connection(c)
            .unwrap()
            .is_established()
    );
    assert!(
        s.net
            .endpoint(s.server)
            .connection(sc)
            .unwrap()
            .is_established()
    );
}
