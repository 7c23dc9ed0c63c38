//! The Grafana dashboard and the Prometheus alert rules in `deploy/` query
//! only metrics that exist: every `mxp_*` name in the dashboard's queries
//! and in the rules' expressions is in the catalogue
//! (`docs/transport/metrics.md`) and is served by a live node's
//! `GET /metrics` after a little traffic on both carriers.
//!
//! The rules' behaviour (each alert fires above its threshold, stays quiet
//! below) is tested by `promtool test rules deploy/prometheus/*_test.yml`.
//!
//! Every wait is bounded by [`PATIENCE`], a guard against hangs; no test
//! measures speed.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mxp::admin;
use mxp::echo::{self, EchoStats};
use mxp::proto::message::{Message, MessageType};
use mxp::proto::{Band, EndpointConfig, Keypair};
use mxp::{CarrierMode, Connection, Endpoint, Options};
use serde_json::Value;
use tokio::time::timeout;

const PATIENCE: Duration = Duration::from_secs(30);

const DASHBOARD: &str = "deploy/grafana/mxp-dashboard.json";
const RULES: &str = "deploy/prometheus/mxp-alerts.yml";
const CATALOGUE: &str = "docs/transport/metrics.md";

/// The beta checklist's canary alerts (section 2).
const ALERTS: [&str; 4] = [
    "MxpCallLatencyP99High",
    "MxpPacketLossHigh",
    "MxpConnectionErrorRateHigh",
    "MxpReplayOrAmplificationViolation",
];

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every `mxp_[a-z0-9_]+` identifier in `text`, with the series suffixes of
/// a histogram (`_bucket`, `_sum`, `_count`) stripped to its family name.
fn metric_names(text: &str, into: &mut BTreeSet<String>) {
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    let mut i = 0;
    while let Some(at) = text[i..].find("mxp_") {
        let start = i + at;
        let mut end = start + "mxp_".len();
        while end < bytes.len() && ident(bytes[end]) {
            end += 1;
        }
        // Part of a longer identifier (`foo_mxp_bar`) is not a metric name.
        let inside =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !inside && end > start + "mxp_".len() {
            let name = &text[start..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            into.insert(family.to_owned());
        }
        i = end;
    }
}

/// The PromQL of a dashboard: panel targets' `expr`, annotation queries and
/// template-variable queries (`query` as text or as `{ "query": … }`,
/// `definition`), wherever they are nested.
fn dashboard_queries(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

/// The `expr:` values of a Prometheus rules file: plain or quoted on the
/// line, or a block scalar (`expr: |`) on the more-indented lines below.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let mut block = String::new();
            while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > indent(line))
            {
                block.push_str(lines[i].trim());
                block.push('\n');
                i += 1;
            }
            exprs.push(block);
        } else {
            exprs.push(rest.trim_matches(['"', '\'']).to_owned());
        }
    }
    exprs
}

/// The rules file split into one text per `- alert:` rule, with its name.
fn alert_rules(yaml: &str) -> Vec<(String, String)> {
    let mut rules: Vec<(String, String)> = Vec::new();
    for line in yaml.lines() {
        if let Some(name) = line.trim_start().strip_prefix("- alert:") {
            rules.push((name.trim().to_owned(), String::new()));
        } else if let Some((_, text)) = rules.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    rules
}

/// Every metric name the dashboard and the alert rules query.
fn queried_names() -> BTreeSet<String> {
    let mut queries = Vec::new();
    dashboard_queries(&dashboard(), &mut queries);
    queries.extend(rule_exprs(&read(RULES)));
    let mut names = BTreeSet::new();
    for q in &queries {
        metric_names(q, &mut names);
    }
    names
}

/// The metric names of the catalogue's table.
fn catalogue() -> BTreeSet<String> {
    read(CATALOGUE)
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .filter(|name| name.starts_with("mxp_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_rules_are_the_checklist_alerts_with_runbook_severity_and_team() {
    let yaml = read(RULES);
    let rules = alert_rules(&yaml);
    let names: Vec<&str> = rules.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ALERTS, "{RULES}");
    for (name, text) in &rules {
        for needle in [
            "expr:",
            "severity:",
            "team: transport",
            "summary:",
            "description:",
            "runbook_url: \"docs/transport/runbook.md#",
        ] {
            assert!(text.contains(needle), "{name} lacks {needle:?}:\n{text}");
        }
    }
    let replay = &rules[3].1;
    assert!(replay.contains("severity: critical"), "{replay}");
    assert!(!replay.contains("for:"), "fires at once: {replay}");
    assert!(
        replay.contains(r#"kind=~"initiation_.*""#),
        "packet duplicates are not violations: {replay}"
    );
    let exprs = rule_exprs(&yaml);
    assert_eq!(exprs.len(), ALERTS.len(), "{exprs:#?}");
    assert!(exprs.iter().all(|e| e.contains("mxp_")), "{exprs:#?}");
}

#[test]
fn the_dashboard_is_templated_and_shows_every_checklist_signal() {
    let dash = dashboard();
    assert!(
        dash["schemaVersion"].as_u64().unwrap() >= 36,
        "recent schema"
    );
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    assert_eq!(var("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(var("DS_PROMETHEUS")["query"], "prometheus");
    assert_eq!(var("carrier")["type"], "query");

    let panels = dash["panels"].as_array().expect("panels");
    let mut signals = Vec::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().expect("a title");
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(expr.contains("mxp_"), "{title}: {expr:?}");
            signals.push(expr.to_owned());
        }
    }
    let shown = |what: &str| signals.iter().any(|e| e.contains(what));
    // Section 1's dashboard signals, and the alerts' subjects.
    for metric in [
        "mxp_connections_active",
        "mxp_streams_active",
        "mxp_flow_credit_consumed_bytes_total",
        "mxp_flow_window_updates_total",
        "mxp_flow_blocked_total",
        "mxp_scheduler_enqueued_total",
        "mxp_scheduler_dequeued_frames_total",
        "mxp_packets_lost_total",
        "mxp_frames_retransmitted_total",
        "mxp_connection_errors_total",
        "mxp_handshakes_total",
        "mxp_replay_rejections_total",
        "mxp_amplification_blocked_total",
        "mxp_carrier_accepting",
        "mxp_drain_active",
        "mxp_datagrams_total",
    ] {
        assert!(shown(metric), "no panel shows {metric}");
    }
    for histogram in ["mxp_call_duration_seconds_bucket", "mxp_rtt_seconds_bucket"] {
        for q in ["0.5", "0.95", "0.99"] {
            let quantile = format!("histogram_quantile({q}, sum by (le");
            assert!(
                signals
                    .iter()
                    .any(|e| e.contains(&quantile) && e.contains(histogram)),
                "no P{q} of {histogram}"
            );
        }
    }
    // The 400 µs line on the latency panels.
    let latency_lines = panels
        .iter()
        .filter(|p| p["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off")
        .filter(|p| p["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["value"] == 0.0004)
        .count();
    assert!(latency_lines >= 2, "call duration and RTT show 400µs");
}

#[test]
fn the_dashboard_and_rules_name_only_catalogued_metrics() {
    let catalogue = catalogue();
    assert!(catalogue.len() > 20, "{CATALOGUE} table: {catalogue:?}");
    let queried = queried_names();
    let unknown: Vec<_> = queried.difference(&catalogue).collect();
    assert!(
        unknown.is_empty(),
        "not in {CATALOGUE}: {unknown:?} (the dashboard and rules name {queried:?})"
    );
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
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
    timeout(PATIENCE, client.connect(&url, node.public_key()))
        .await
        .expect("connect within the hang guard")
        .expect("connected")
}

/// Calls, a stream and datagrams on `conn`, all answered by the echo node.
async fn traffic(conn: &Connection) {
    for id in 1..=20 {
        let call = Message::new(MessageType::Call, "ping").with_message_id(id);
        let reply = timeout(PATIENCE, conn.call(&call))
            .await
            .expect("call within the hang guard")
            .expect("answered");
        assert_eq!(&reply.payload[..], b"ping");
    }
    let (mut send, mut recv) = conn.open_bi(Band::Streaming).await.expect("a stream");
    let data = vec![7u8; 64 * 1024];
    send.write_all(&data).await.expect("written");
    send.finish().expect("finished");
    let back = timeout(PATIENCE, recv.read_to_end(1 << 20))
        .await
        .expect("echo within the hang guard")
        .expect("echoed");
    assert_eq!(back.len(), data.len());
    for i in 0..10u32 {
        conn.send_datagram(Bytes::copy_from_slice(&i.to_be_bytes()), Band::Control)
            .expect("datagram sent");
        // Loopback rarely drops one; the metrics need not every echo.
        let _ = timeout(Duration::from_secs(1), conn.read_datagram()).await;
    }
}

/// The `/metrics` text of a node on both carriers serving the echo
/// application, after calls, streams and datagrams on each carrier (the
/// connections stay open while it is scraped).
async fn live_metrics() -> String {
    let options = {
        let mut options = Options::new(EndpointConfig::server(Keypair::generate()));
        options.quic_listen = Some(any_port());
        options
    };
    let node = Endpoint::with_options(any_port(), options).unwrap();
    tokio::spawn(echo::serve(node.clone(), Arc::new(EchoStats::default())));
    let admin = admin::serve(any_port(), node.clone(), None)
        .await
        .expect("admin endpoint on loopback");
    let on_mxp = connect(&node, CarrierMode::Mxp).await;
    let on_quic = connect(&node, CarrierMode::Quic).await;
    traffic(&on_mxp).await;
    traffic(&on_quic).await;
    let (status, text) = timeout(
        PATIENCE,
        admin::request(admin.local_addr(), "GET", "/metrics", None, None),
    )
    .await
    .expect("scrape within the hang guard")
    .expect("the admin endpoint answers");
    assert_eq!(status, 200, "{text}");
    drop((on_mxp, on_quic));
    admin.close().await;
    text
}

/// Whether `text` (Prometheus or OpenMetrics text format) exposes the family
/// `name`: a `# TYPE` line for it (OpenMetrics names a counter's family
/// without `_total`), or a sample line of it (a histogram's by its
/// `_bucket`, `_sum` or `_count` series).
fn exposes(text: &str, name: &str) -> bool {
    text.lines().any(|line| {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let family = declared.split_whitespace().next().unwrap_or_default();
            return family == name || Some(family) == name.strip_suffix("_total");
        }
        let sample = line.split(['{', ' ']).next().unwrap_or_default();
        ["", "_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| sample.strip_suffix(suffix) == Some(name))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_rules_name_is_served_by_a_live_node() {
    let queried = queried_names();
    assert!(queried.len() > 20, "{queried:?}");
    let text = live_metrics().await;
    let missing: Vec<&String> = queried.iter().filter(|n| !exposes(&text, n)).collect();
    assert!(
        missing.is_empty(),
        "{} of the {} metrics the dashboard and alert rules query are not on the node's /metrics: \
         {missing:#?}\n--- /metrics ---\n{text}",
        missing.len(),
        queried.len()
    );
}

/// The value of the sample line `line`.
fn value(line: &str) -> Option<f64> {
    line.rsplit(' ').next()?.parse().ok()
}

/// `MxpReplayOrAmplificationViolation` fires on `increase()`, which cannot
/// see a series that appears for the first time already above 0: the
/// counters it watches must be exposed from the start, at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counters_the_violation_alert_watches_are_exposed_at_zero_from_the_start() {
    let text = live_metrics().await;
    for kind in ["initiation_replayed", "initiation_stale"] {
        let label = format!(r#"kind="{kind}""#);
        let sample = text
            .lines()
            .find(|line| line.starts_with("mxp_replay_rejections_total{") && line.contains(&label));
        assert_eq!(
            sample.and_then(value),
            Some(0.0),
            "mxp_replay_rejections_total{{{label}}}: {sample:?}\n--- /metrics ---\n{text}"
        );
    }
    let sample = text
        .lines()
        .find(|line| line.starts_with("mxp_amplification_blocked_total"));
    assert_eq!(
        sample.and_then(value),
        Some(0.0),
        "mxp_amplification_blocked_total: {sample:?}\n--- /metrics ---\n{text}"
    );
}

/// The catalogue is the truth about `/metrics`: every metric it lists is
/// served, and nothing is served that it does not list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_lists_exactly_what_a_live_node_serves() {
    let text = live_metrics().await;
    let served: BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|declared| {
            let mut parts = declared.split_whitespace();
            let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            }
        })
        .collect();
    let catalogue = catalogue();
    let uncatalogued: Vec<_> = served.difference(&catalogue).collect();
    let unserved: Vec<_> = catalogue.difference(&served).collect();
    assert!(
        uncatalogued.is_empty() && unserved.is_empty(),
        "served but not in {CATALOGUE}: {uncatalogued:?}; in {CATALOGUE} but not served: {unserved:?}"
    );
}
