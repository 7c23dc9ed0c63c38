//! The core's part of the carrier switch: a node stops accepting MXP (and
//! says so), and drains existing connections with GOAWAY while they finish
//! their work.

mod common;

use std::time::Duration;

use common::*;
use mxp::proto::{Band, ConnectionError, Event, Incoming, Refusal};
use mxp::sim::LinkConfig;

fn lossy() -> LinkConfig {
    LinkConfig::lossy(Duration::from_micros(30), 0.2)
}

#[test]
fn a_node_that_stops_accepting_refuses_new_clients_at_once_and_names_its_quic_port() {
    let mut s = Setup::new(1, LinkConfig::ideal(Duration::from_micros(30)));
    let (existing, _) = s.connect();
    let server = s.server;
    s.net.endpoint(server).set_accepting(false, Some(4434));
    assert!(!s.net.endpoint(server).is_accepting());

    let late = s.add_client(
        "10.0.0.3:5000",
        mxp::proto::Keypair::generate(),
        Default::default(),
    );
    let c = s.start_connect(late);
    let mut lost = None;
    s.net.run_until(Duration::from_secs(1), |net| {
        for (h, e) in events(net, late) {
            if let (true, Event::ConnectionLost { reason }) = (h == c, e) {
                lost = Some(reason);
            }
        }
        lost.is_some()
    });
    assert_eq!(
        lost,
        Some(ConnectionError::CarrierRefused {
            quic_port: Some(4434)
        })
    );
    // One round trip, no handshake timeout: the refusal is immediate.
    assert!(s.net.elapsed() < Duration::from_secs(1));
    let refused = s
        .net
        .take_outcomes()
        .into_iter()
        .any(|(_, o)| o == Incoming::Answered(Refusal::NotAccepting));
    assert!(refused);
    assert_eq!(s.net.endpoint(server).stats().carrier_refusals, 1);
    // The existing connection is untouched.
    assert!(
        s.net
            .endpoint(s.client)
            .connection(existing)
            .unwrap()
            .is_established()
    );
}

#[test]
fn goaway_reaches_the_client_through_loss_and_in_flight_work_still_finishes() {
    let mut s = Setup::new(7, lossy());
    let (c, sc) = s.connect();
    let (client, server) = (s.client, s.server);
    let mut tx = Sender::open(&mut s.net, client, c, 2, 300_000, Band::Streaming);
    let mut rx = Receiver::default();
    // Start the transfer, then drain the connection from the server side.
    s.net.run_until(Duration::from_millis(5), |net| {
        tx.pump(net, client, c);
        rx.pump(net, server);
        false
    });
    let conn = s.net.endpoint(server).connection(sc).unwrap();
    conn.go_away();
    assert!(conn.is_going_away());
    let mut told = false;
    let done = s.net.run_until(Duration::from_secs(60), |net| {
        tx.pump(net, client, c);
        // The receiver's pump drains server events; the client's are ours.
        while let Some((h, e)) = net.endpoint(client).poll_event() {
            told |= h == c && e == Event::GoAway;
        }
        rx.pump(net, server);
        rx.finished.len() == 2
    });
    assert!(told, "the client never heard GOAWAY");
    assert!(
        done,
        "in-flight streams did not finish on the draining connection"
    );
    for (id, d) in &tx.digests {
        assert_eq!(rx.digests.get(id), Some(d));
    }
    assert!(
        s.net
            .endpoint(client)
            .connection(c)
            .unwrap()
            .peer_going_away()
    );
}
