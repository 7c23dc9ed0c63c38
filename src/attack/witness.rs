//! The established client an attack must not hurt: it connects before the
//! attack starts and makes a call every few milliseconds until it ends.

use std::time::{Duration, Instant};

use mxp_proto::message::{Message, MessageType};
use mxp_proto::{EndpointConfig, Keypair, PublicKey};
use serde::Serialize;

use crate::{CarrierMode, Connection, Endpoint, Options};

/// Time between the witness's calls.
const INTERVAL: Duration = Duration::from_millis(10);
/// How long one call may take before it counts as failed.
const PATIENCE: Duration = Duration::from_secs(2);

/// How the witness's calls went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WitnessReport {
    /// Calls made.
    pub calls: u64,
    /// Calls answered.
    pub answered: u64,
    /// Calls that failed or took longer than 2 s.
    pub failed: u64,
    /// The first failure, if any.
    pub first_failure: Option<String>,
    /// Median call time of the answered calls, µs.
    pub p50_us: u64,
    /// 99th-percentile call time of the answered calls, µs.
    pub p99_us: u64,
}

/// A connected witness, ready to call.
pub(crate) struct Witness {
    _endpoint: Endpoint,
    conn: Connection,
}

/// An MXP client endpoint with a fresh key (the attack's peers use them too).
pub(crate) fn client_endpoint() -> std::io::Result<Endpoint> {
    let options = Options {
        carrier_mode: CarrierMode::Mxp,
        ..Options::new(EndpointConfig::client(Keypair::generate()))
    };
    let any = "0.0.0.0:0".parse().expect("literal address");
    Endpoint::with_options(any, options)
}

impl Witness {
    pub(super) async fn connect(url: &str, node: PublicKey) -> Result<Witness, String> {
        let endpoint = client_endpoint().map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(PATIENCE, endpoint.connect(url, node))
            .await
            .map_err(|_| "the witness could not connect within 2 s".to_owned())?
            .map_err(|e| format!("the witness could not connect: {e}"))?;
        Ok(Witness {
            _endpoint: endpoint,
            conn,
        })
    }

    /// Calls until `until`.
    pub(super) async fn run(self, until: Instant) -> WitnessReport {
        let mut report = WitnessReport::default();
        let mut took = Vec::new();
        let request = Message::new(MessageType::Call, &b"witness"[..]);
        let mut next = Instant::now();
        while next < until {
            tokio::time::sleep_until(next.into()).await;
            next += INTERVAL;
            report.calls += 1;
            let started = Instant::now();
            let failure = match tokio::time::timeout(PATIENCE, self.conn.call(&request)).await {
                Ok(Ok(response)) if response.payload == request.payload => None,
                Ok(Ok(response)) => Some(format!("wrong answer: {:?}", response.kind)),
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("no answer within 2 s".to_owned()),
            };
            match failure {
                None => {
                    report.answered += 1;
                    took.push(started.elapsed().as_micros() as u64);
                }
                Some(why) => {
                    report.failed += 1;
                    report.first_failure.get_or_insert(why);
                }
            }
        }
        took.sort_unstable();
        let at = |q: f64| {
            let i = ((took.len() as f64 * q).ceil() as usize).saturating_sub(1);
            took.get(i).copied().unwrap_or(0)
        };
        report.p50_us = at(0.50);
        report.p99_us = at(0.99);
        report
    }
}
