//! The admin endpoint of a library node, over real loopback HTTP: health,
//! status, the carrier switch, drains, bad requests and the bearer token.
//!
//! Every wait is bounded by [`PATIENCE`], a guard against hangs; no test
//! measures speed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mxp::admin::{self, AdminServer};
use mxp::echo::{self, EchoStats};
use mxp::proto::message::{Message, MessageType};
use mxp::proto::{ConnectionError, EndpointConfig, Keypair};
use mxp::{Carrier, CarrierMode, Carriers, Connection, Endpoint, Options};
use serde_json::{Value, json};
use tokio::time::timeout;

const PATIENCE: Duration = Duration::from_secs(30);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A node on both carriers serving the echo application.
fn node() -> Endpoint {
    let options = {
        let mut options = Options::new(EndpointConfig::server(Keypair::generate()));
        options.quic_listen = Some(any_port());
        options
    };
    let node = Endpoint::with_options(any_port(), options).unwrap();
    tokio::spawn(echo::serve(node.clone(), Arc::new(EchoStats::default())));
    node
}

async fn admin_for(node: &Endpoint, token: Option<&str>) -> AdminServer {
    admin::serve(any_port(), node.clone(), token.map(str::to_owned))
        .await
        .expect("admin endpoint on loopback")
}

/// One request, within the hang guard; the transport must work.
async fn send(
    admin: &AdminServer,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, String) {
    timeout(
        PATIENCE,
        admin::request(admin.local_addr(), method, path, body, token),
    )
    .await
    .expect("answer within the hang guard")
    .expect("the admin endpoint answers")
}

/// A 200 with a JSON body.
async fn ok_json(admin: &AdminServer, method: &str, path: &str, body: Option<&str>) -> Value {
    let (status, text) = send(admin, method, path, body, None).await;
    assert_eq!(status, 200, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
}

/// A 4xx with one line of text that mentions `names`.
async fn refused(
    admin: &AdminServer,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
    code: u16,
    names: &str,
) {
    let (status, text) = send(admin, method, path, body, token).await;
    assert_eq!(status, code, "{method} {path} {body:?}: {text}");
    assert_eq!(text.trim_end().lines().count(), 1, "one line: {text:?}");
    assert!(
        text.contains(names),
        "{method} {path}: {text:?} should name {names:?}"
    );
}

async fn connect(node: &Endpoint, mode: CarrierMode) -> Connection {
    let options = {
        let mut options = Options::new(EndpointConfig::client(Keypair::generate()));
        options.carrier_mode = mode;
        options
    };
    let client = Endpoint::with_options(any_port(), options).unwrap();
    let quic = node.quic_addr().expect("node has QUIC").port();
    let url = format!("mxp://{}?quic={quic}", node.local_addr());
    let conn = timeout(PATIENCE, client.connect(&url, node.public_key()))
        .await
        .expect("connect within the hang guard")
        .expect("connected");
    let reply = timeout(
        PATIENCE,
        conn.call(&Message::new(MessageType::Call, "hi").with_message_id(1)),
    )
    .await
    .expect("call within the hang guard")
    .expect("answered");
    assert_eq!(&reply.payload[..], b"hi");
    conn
}

fn drains(status: &Value) -> &Vec<Value> {
    status["draining"].as_array().expect("draining is a list")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_status_describe_the_node() {
    let node = node();
    let admin = admin_for(&node, None).await;
    assert_eq!(
        send(&admin, "GET", "/healthz", None, None).await,
        (200, "ok".to_owned())
    );

    let _conn = connect(&node, CarrierMode::Mxp).await;
    let status = ok_json(&admin, "GET", "/status", None).await;
    assert_eq!(
        status,
        json!({
            "accepting": {"mxp": true, "quic": true},
            "draining": [],
            "connections": {"mxp": 1, "quic": 0},
            "fallbacks": 0,
        })
    );
    assert_eq!(
        ok_json(&admin, "GET", "/carrier", None).await,
        json!({"accepting": "both"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_quic_drains_mxp_and_a_drain_request_moves_the_deadline() {
    let node = node();
    let admin = admin_for(&node, None).await;
    let on_mxp = connect(&node, CarrierMode::Mxp).await;
    assert_eq!(on_mxp.carrier(), Carrier::Mxp);

    let switched = ok_json(&admin, "POST", "/carrier", Some("quic")).await;
    assert_eq!(switched["previous"], "both");
    assert_eq!(switched["accepting"], json!({"mxp": false, "quic": true}));
    let draining = drains(&switched);
    assert_eq!(draining.len(), 1, "{switched}");
    assert_eq!(draining[0]["carrier"], "mxp");
    assert_eq!(draining[0]["connections"], 1);
    let deadline = draining[0]["deadline_in_s"].as_f64().unwrap();
    assert!(deadline > 1.0 && deadline <= 300.0, "{switched}");
    assert_eq!(node.carriers(), Carriers::QUIC);
    assert_eq!(
        ok_json(&admin, "GET", "/carrier", None).await,
        json!({"accepting": "quic"})
    );

    // A client that lets the library choose now lands on QUIC.
    let auto = connect(&node, CarrierMode::Auto).await;
    assert_eq!(auto.carrier(), Carrier::Quic);
    let status = ok_json(&admin, "GET", "/status", None).await;
    assert_eq!(status["connections"], json!({"mxp": 1, "quic": 1}));

    // The deadline moves to one second away; when it passes the MXP
    // connection is closed with the drain code, the QUIC one is untouched.
    let drained = ok_json(&admin, "POST", "/drain?timeout=1s", None).await;
    assert_eq!(drained["drained"], json!(["mxp"]));
    assert_eq!(drained["timeout_s"], 1.0);
    let deadline = drains(&drained)[0]["deadline_in_s"].as_f64().unwrap();
    assert!(deadline <= 1.0, "{drained}");
    let reason = timeout(PATIENCE, on_mxp.closed())
        .await
        .expect("closed at the deadline (within the hang guard)");
    assert!(
        matches!(reason, ConnectionError::ApplicationClosed { code, .. } if code == mxp::DRAINED),
        "{reason:?}"
    );
    let reply = timeout(
        PATIENCE,
        auto.call(&Message::new(MessageType::Call, "still").with_message_id(2)),
    )
    .await
    .unwrap()
    .expect("the QUIC connection still works");
    assert_eq!(&reply.payload[..], b"still");

    // Back to both, as JSON this time: the drain ends.
    let back = ok_json(&admin, "POST", "/carrier", Some(r#"{"carrier":"both"}"#)).await;
    assert_eq!(back["previous"], "quic");
    assert_eq!(back["accepting"], json!({"mxp": true, "quic": true}));
    assert!(drains(&back).is_empty(), "{back}");

    // With every carrier accepting there is nothing to drain: still 200,
    // and the answer says so.
    let nothing = ok_json(&admin, "POST", "/drain?timeout=30s", None).await;
    assert_eq!(nothing["drained"], json!([]));
    assert!(
        nothing["note"]
            .as_str()
            .unwrap()
            .contains("nothing to drain"),
        "{nothing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_drain_timeout_applies_to_switches_and_bare_drains() {
    let node = node();
    let admin = admin_for(&node, None).await;
    node.set_drain_timeout(Duration::from_secs(7));
    let switched = ok_json(&admin, "POST", "/carrier", Some("mxp")).await;
    let d = &drains(&switched)[0];
    assert_eq!(d["carrier"], "quic");
    assert!(d["deadline_in_s"].as_f64().unwrap() <= 7.0, "{switched}");
    let drained = ok_json(&admin, "POST", "/drain", None).await;
    assert_eq!(drained["timeout_s"], 7.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_4xx_naming_what_was_wrong() {
    let node = node();
    let admin = admin_for(&node, None).await;
    let cases: &[(&str, &str, Option<&str>, u16, &str)] = &[
        ("POST", "/carrier", Some("tcp"), 400, "\"tcp\""),
        ("POST", "/carrier", Some(""), 400, "body: empty"),
        (
            "POST",
            "/carrier",
            Some(r#"{"carrier":7}"#),
            400,
            "carrier must be a string",
        ),
        (
            "POST",
            "/carrier",
            Some(r#"{"mode":"quic"}"#),
            400,
            "\"mode\"",
        ),
        ("POST", "/carrier", Some("{quic"), 400, "invalid JSON"),
        ("POST", "/carrier?now=1", Some("quic"), 400, "\"now\""),
        ("POST", "/drain?timeout=soon", None, 400, "\"soon\""),
        ("POST", "/drain?timeout=5", None, 400, "missing unit"),
        ("POST", "/drain?timeout=2000m", None, 400, "at most 24h"),
        ("POST", "/drain?deadline=1s", None, 400, "\"deadline\""),
        ("GET", "/drain", None, 405, "use POST"),
        ("DELETE", "/carrier", None, 405, "use GET or POST"),
        ("POST", "/status", None, 405, "use GET"),
        ("GET", "/metrics/../etc", None, 404, "no such path"),
        (
            "GET",
            "/",
            None,
            404,
            "no such path /: use /healthz, /status",
        ),
    ];
    for &(method, path, body, code, names) in cases {
        refused(&admin, method, path, body, None, code, names).await;
    }
    let big = "x".repeat(100_000);
    let (status, _) = send(&admin, "POST", "/carrier", Some(&big), None).await;
    assert_eq!(status, 413);
    // None of it changed anything.
    assert_eq!(node.carriers(), Carriers::BOTH);
    assert!(node.status().draining.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_quic_cannot_be_switched_to_quic_only() {
    let node = Endpoint::bind(any_port(), EndpointConfig::server(Keypair::generate())).unwrap();
    let admin = admin_for(&node, None).await;
    refused(
        &admin,
        "POST",
        "/carrier",
        Some("quic"),
        None,
        409,
        "no QUIC carrier",
    )
    .await;
    assert_eq!(node.carriers(), Carriers::BOTH);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_is_required_except_for_health_checks() {
    let node = node();
    let admin = admin_for(&node, Some("s3cret")).await;
    refused(
        &admin,
        "GET",
        "/status",
        None,
        None,
        401,
        "missing bearer token",
    )
    .await;
    refused(
        &admin,
        "POST",
        "/carrier",
        Some("quic"),
        Some("guess"),
        401,
        "wrong bearer token",
    )
    .await;
    refused(&admin, "GET", "/nowhere", None, None, 401, "bearer token").await;
    assert_eq!(
        node.carriers(),
        Carriers::BOTH,
        "a refused request changed the switch"
    );
    assert_eq!(send(&admin, "GET", "/healthz", None, None).await.0, 200);

    let (status, text) = send(&admin, "POST", "/carrier", Some("quic"), Some("s3cret")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(node.carriers(), Carriers::QUIC);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_needs_a_token() {
    let node = node();
    let anywhere: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let e = admin::serve(anywhere, node.clone(), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("token"), "{e}");
    let e = admin::serve(any_port(), node.clone(), Some(String::new()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");

    // With a token it serves there (reached here over loopback).
    let admin = admin::serve(anywhere, node.clone(), Some("s3cret".into()))
        .await
        .unwrap();
    let local = SocketAddr::from(([127, 0, 0, 1], admin.local_addr().port()));
    let (status, text) = timeout(
        PATIENCE,
        admin::request(local, "GET", "/status", None, Some("s3cret")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status, 200, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_endpoint_stops_answering() {
    let node = node();
    let admin = admin_for(&node, None).await;
    let addr = admin.local_addr();
    admin.close().await;
    let e = timeout(
        PATIENCE,
        admin::request(addr, "GET", "/healthz", None, None),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(e.contains("cannot connect"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_switch_and_the_drain() {
    let node = node();
    let admin = admin_for(&node, None).await;
    let (status, text) = send(&admin, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    assert!(
        text.contains(r#"mxp_carrier_accepting{carrier="quic"} 1"#),
        "{text}"
    );
    ok_json(&admin, "POST", "/carrier", Some("quic")).await;
    let (_, text) = send(&admin, "GET", "/metrics", None, None).await;
    assert!(
        text.contains(r#"mxp_carrier_accepting{carrier="mxp"} 0"#),
        "{text}"
    );
    assert!(
        text.contains(r#"mxp_drain_active{carrier="mxp"} 1"#),
        "{text}"
    );
}

/// The samples of one family in a snapshot, by their labels.
fn samples<'a>(snapshot: &'a Value, name: &str) -> &'a Vec<Value> {
    let family = snapshot["metrics"]
        .as_array()
        .expect("metrics is a list")
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in the snapshot"));
    family["samples"].as_array().expect("samples is a list")
}

fn sample<'a>(snapshot: &'a Value, name: &str, labels: Value) -> &'a Value {
    let found = samples(snapshot, name)
        .iter()
        .find(|s| s["labels"] == labels);
    &found.unwrap_or_else(|| panic!("no {name} {labels}"))["value"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_holds_every_metric_and_each_connections_stats() {
    let node = node();
    let admin = admin_for(&node, None).await;
    let on_mxp = connect(&node, CarrierMode::Mxp).await;
    let on_quic = connect(&node, CarrierMode::Quic).await;
    // `connect` made one call on each; the node times each it served.
    let snapshot = ok_json(&admin, "GET", "/snapshot", None).await;

    assert_eq!(
        snapshot["node"]["public_key"],
        node.public_key().to_string()
    );
    assert_eq!(
        snapshot["status"]["connections"],
        json!({"mxp": 1, "quic": 1})
    );
    let connections = snapshot["connections"].as_array().expect("a list");
    assert_eq!(connections.len(), 2, "{snapshot}");
    for (carrier, client) in [("mxp", &on_mxp), ("quic", &on_quic)] {
        let c = connections
            .iter()
            .find(|c| c["carrier"] == carrier)
            .unwrap_or_else(|| panic!("no {carrier} connection in {snapshot}"));
        assert_eq!(c["side"], "node");
        assert_eq!(c["established"], true);
        let key = c["peer_key"].as_str().expect("the client's key");
        assert_eq!(key.len(), 64, "32 bytes in hex: {key}");
        assert_ne!(key, node.public_key().to_string(), "the client's, not ours");
        assert!(c["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{c}");
        assert_eq!(client.carrier().as_str(), carrier);
        assert!(c["rtt_us"].as_u64().unwrap() > 0, "{c}");
        assert!(c["packets_sent"].as_u64().unwrap() > 0, "{c}");
        assert!(c["bytes_received"].as_u64().unwrap() > 0, "{c}");
        assert!(c["congestion_window"].as_u64().unwrap() > 0, "{c}");
        assert!(c["loss_ratio"].as_f64().is_some(), "{c}");
        assert!(c["streams_active"].as_u64().is_some(), "{c}");
        let served = sample(
            &snapshot,
            "mxp_call_duration_seconds",
            json!({"carrier": carrier, "side": "node"}),
        );
        assert_eq!(served["count"], 1, "{served}");
        assert!(served["p99_s"].as_f64().is_some(), "{served}");
        assert_eq!(
            sample(
                &snapshot,
                "mxp_connections_active",
                json!({"carrier": carrier})
            ),
            1.0
        );
    }
    assert_eq!(
        sample(&snapshot, "mxp_amplification_blocked_total", json!({})),
        0
    );
}

/// `/log` reads and changes the log filter through the [`admin::LogFilter`]
/// the process installed; a refused filter is a 400 with the logger's
/// reason and changes nothing; without a `LogFilter` the route says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_route_reads_and_changes_the_filter_it_was_given() {
    let node = node();
    let applied = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = applied.clone();
    let log = admin::LogFilter::new("info", move |f| {
        if f.contains('!') {
            return Err(format!("bad log filter {f:?}"));
        }
        seen.lock().unwrap().push(f.to_owned());
        Ok(())
    });
    let admin = admin::serve_with_log(any_port(), node.clone(), None, log.clone())
        .await
        .unwrap();
    assert_eq!(
        ok_json(&admin, "GET", "/log", None).await,
        json!({"filter": "info"})
    );
    let changed = ok_json(&admin, "POST", "/log", Some(" info,mxp=debug\n")).await;
    assert_eq!(
        changed,
        json!({"filter": "info,mxp=debug", "previous": "info"})
    );
    refused(&admin, "POST", "/log", Some("info!"), None, 400, "info!").await;
    refused(
        &admin,
        "PUT",
        "/log",
        Some("info"),
        None,
        405,
        "GET or POST",
    )
    .await;
    assert_eq!(log.current(), "info,mxp=debug");
    assert_eq!(*applied.lock().unwrap(), ["info,mxp=debug"]);

    let fixed = admin_for(&node, None).await;
    refused(&fixed, "GET", "/log", None, None, 501, "cannot be changed").await;
}
