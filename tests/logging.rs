//! What the transport logs, read as an operator (or an attacker with the
//! logs) would: at `trace`, the most verbose level, a handshake on each
//! carrier, calls across key rotations and a carrier switch with a drain
//! leave no key material in the output, and the lifecycle lines carry the
//! fields the runbook greps for (`conn`, `peer`, `carrier`).
//!
//! This file holds one test: it installs the process-wide subscriber.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mxp::echo::{self, EchoStats};
use mxp::proto::message::{Message, MessageType};
use mxp::proto::{EndpointConfig, KeyRotation, Keypair, TransportConfig};
use mxp::{CarrierMode, Carriers, Connection, Endpoint, Options};
use tokio::time::timeout;

const PATIENCE: Duration = Duration::from_secs(30);

/// Everything logged, in memory.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// The ways 32 secret bytes could be printed: hex (either case), Rust's
/// `Debug` of a byte array, and base64.
fn renderings(secret: &[u8; 32]) -> Vec<String> {
    use base64::Engine as _;
    let debug = format!("{secret:?}");
    vec![
        hex(secret),
        hex(secret).to_uppercase(),
        debug[1..debug.len() - 1].to_owned(),
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(secret),
        // Any 8 bytes of it in hex: a truncated or partial print.
        hex(&secret[..8]),
        hex(&secret[24..]),
    ]
}

async fn calls(conn: &Connection, n: u64) {
    for i in 0..n {
        let call = Message::new(MessageType::Call, format!("call {i}")).with_message_id(i);
        let answer = timeout(PATIENCE, conn.call(&call))
            .await
            .expect("answer within the hang guard")
            .expect("answered");
        assert_eq!(answer.payload, call.payload);
    }
}

#[test]
fn a_trace_level_log_of_handshakes_rotations_and_a_switch_holds_no_key_material() {
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let node_keys = Keypair::generate();
    let client_keys = Keypair::generate();
    let secrets = [*node_keys.secret_bytes(), *client_keys.secret_bytes()];
    let publics = [
        node_keys.public().to_string(),
        client_keys.public().to_string(),
    ];

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // Rotate packet keys every few packets, so rotations are logged.
        let transport = Arc::new({
            let mut transport = TransportConfig::default();
            transport.key_rotation = KeyRotation {
                packets: 16,
                ..KeyRotation::default()
            };
            transport.peer_key_update_rate = 1_000_000;
            transport
        });
        let node = Endpoint::with_options("127.0.0.1:0".parse().unwrap(), {
            let mut options = Options::new({
                let mut endpoint_config = EndpointConfig::server(node_keys);
                endpoint_config.transport = transport.clone();
                endpoint_config
            });
            options.quic_listen = Some("127.0.0.1:0".parse().unwrap());
            options
        })
        .unwrap();
        tokio::spawn(echo::serve(node.clone(), Arc::new(EchoStats::default())));
        let url = format!(
            "mxp://{}?quic={}",
            node.local_addr(),
            node.quic_addr().unwrap().port()
        );
        let client = |mode| {
            Endpoint::with_options("127.0.0.1:0".parse().unwrap(), {
                let mut options = Options::new({
                    let mut endpoint_config = EndpointConfig::client(client_keys.clone());
                    endpoint_config.transport = transport.clone();
                    endpoint_config
                });
                options.carrier_mode = mode;
                options
            })
            .unwrap()
        };
        let on_mxp = timeout(
            PATIENCE,
            client(CarrierMode::Mxp).connect(&url, node.public_key()),
        )
        .await
        .unwrap()
        .unwrap();
        calls(&on_mxp, 100).await;
        assert!(on_mxp.stats().key_updates > 0, "keys rotated");
        let on_quic = timeout(
            PATIENCE,
            client(CarrierMode::Quic).connect(&url, node.public_key()),
        )
        .await
        .unwrap()
        .unwrap();
        calls(&on_quic, 10).await;
        // A snapshot's `conn` is what the log's lines for that connection
        // carry, so an operator can go from one to the other.
        let snapshot = node.snapshot();
        assert_eq!(snapshot.connections.len(), 2);
        for c in &snapshot.connections {
            let carrier = c.carrier.as_str();
            let span = format!(
                "conn{{conn={} peer={} carrier=\"{carrier}\" side=\"node\"}}",
                c.conn, c.peer
            );
            assert!(log.text().contains(&span), "no {span:?} in the log");
        }
        node.set_carriers(Carriers::QUIC);
        node.drain_all(Duration::ZERO);
        timeout(PATIENCE, on_mxp.closed()).await.unwrap();
        on_quic.close(0, b"done");
    });
    drop(runtime);

    let text = log.text();
    for secret in &secrets {
        for form in renderings(secret) {
            assert!(
                !text.contains(&form),
                "a static secret key appears in the trace log as {form}"
            );
        }
    }
    // Every hex string of 24 bytes or more in the log is a public key: no
    // session, packet or header-protection key (32 bytes) is printed
    // either. Shorter ones are connection ids (QUIC's are up to 20 bytes),
    // which are on the wire in the clear anyway.
    let mut run = String::new();
    for c in text.chars().chain([' ']) {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        if run.len() >= 48 {
            assert!(
                publics.iter().any(|p| p.contains(&run.to_lowercase())),
                "a {}-digit hex string that is no public key is in the log: {run}",
                run.len()
            );
        }
        run.clear();
    }
    // The lifecycle is there, with the fields an operator filters on.
    for line in [
        "conn{conn=",
        "carrier=\"mxp\"",
        "carrier=\"quic\"",
        "connected",
        "rotated keys",
        "carrier_switch{from=both to=quic}",
        "drain{carrier=mxp",
    ] {
        assert!(text.contains(line), "no {line:?} in the log");
    }
    assert!(text.contains("mxp_proto::handshake"), "handshake target");
}
