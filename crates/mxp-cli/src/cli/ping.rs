//! `mxp ping`: round trips (calls) to a node, with RTT percentiles.

use std::time::{Duration, Instant};

use clap::Args;
use mxp::proto::message::{Message, MessageType};
use serde::Serialize;

use super::client::ClientArgs;
use super::{CliError, parse_duration};
use mxp::bench::{Latencies, Summary};

/// `mxp ping` flags.
#[derive(Debug, Args)]
pub(crate) struct PingArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Number of round trips.
    #[arg(short = 'c', long, default_value_t = 10)]
    pub count: u64,
    /// Payload bytes per call.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Pause between round trips.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub interval: Duration,
}

#[derive(Serialize)]
struct Report {
    carrier: mxp::Carrier,
    fell_back: bool,
    target: String,
    sent: u64,
    received: u64,
    handshake_us: f64,
    rtt_us: Summary,
}

/// Runs the pings and prints the report.
pub(crate) async fn run(args: PingArgs) -> Result<(), CliError> {
    let client = args.client.connect().await?;
    let payload = vec![0x5a; args.size];
    let mut rtts = Latencies::default();
    let mut sent = 0;
    for i in 0..args.count {
        let request = Message::new(MessageType::Call, payload.clone())
            .with_message_id(i)
            .with_trace_id(i);
        sent += 1;
        let start = Instant::now();
        match tokio::time::timeout(args.client.timeout, client.conn.call(&request)).await {
            Ok(Ok(reply)) if reply.message_id == i => rtts.push(start.elapsed()),
            Ok(Ok(_)) => {
                return Err(CliError::Failed(format!(
                    "reply to ping {i} has the wrong id"
                )));
            }
            Ok(Err(e)) => return Err(CliError::Failed(format!("ping {i} failed: {e}"))),
            Err(_) => {} // lost: counted by received < sent
        }
        if !args.interval.is_zero() {
            tokio::time::sleep(args.interval).await;
        }
    }
    let report = Report {
        carrier: client.conn.carrier(),
        fell_back: client.fell_back,
        target: args.client.url.clone(),
        sent,
        received: rtts.len() as u64,
        handshake_us: client.handshake.as_secs_f64() * 1e6,
        rtt_us: rtts.summary(),
    };
    client.close().await;
    if args.client.json {
        println!("{}", serde_json::to_string(&report).expect("serialisable"));
    } else {
        let fallback = if report.fell_back {
            " (fallback: MXP refused or silent)"
        } else {
            ""
        };
        println!(
            "{} pings to {} over {}{fallback}: {} replies, handshake {:.1} µs",
            report.sent, report.target, report.carrier, report.received, report.handshake_us
        );
        println!("rtt {}", report.rtt_us);
    }
    if report.received < report.sent {
        return Err(CliError::Failed(format!(
            "{} of {} pings got no reply within {:?}",
            report.sent - report.received,
            report.sent,
            args.client.timeout
        )));
    }
    Ok(())
}
