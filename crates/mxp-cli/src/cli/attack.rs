//! `mxp attack`: resilience checks against one's own node.
//!
//! `mxp attack URL --server-key KEY --kind KIND` runs one attack beside a
//! witness client and reports both; `mxp attack flood TARGET ...` is the
//! handshake flood with every knob.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Subcommand};
use mxp::Carrier;
use mxp::attack::{Attack, AttackKind, AttackReport, Flood, FloodKind};
use mxp::proto::PublicKey;
use serde::Serialize;

use super::{CliError, parse_duration};

/// `mxp attack` flags, or the `flood` subcommand.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct AttackArgs {
    #[command(subcommand)]
    pub what: Option<AttackCommand>,
    /// The node: mxp://host:port (or host:port). Only loopback unless
    /// --allow-remote.
    pub url: Option<String>,
    /// The node's public key (64 hex digits).
    #[arg(long)]
    pub server_key: Option<PublicKey>,
    /// handshake-flood, garbage-initiation, tiny-segments, zero-datagrams,
    /// path-challenge-flood, stream-flood, decoder-hold, key-update-storm
    /// or ack-storm.
    #[arg(long)]
    pub kind: Option<AttackKind>,
    /// How long to attack.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Datagrams (floods) or packets (the others) per second.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Attack a node that is not on this host's loopback.
    #[arg(long)]
    pub allow_remote: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One resilience check.
#[derive(Debug, Subcommand)]
pub(crate) enum AttackCommand {
    /// Floods a node with handshake initiations from many source ports,
    /// never reading the answers (a blind, spoofing sender). Watch the
    /// node's mxp_handshakes_total, mxp_handshakes_limited_total and
    /// mxp_handshake_jobs_total meanwhile.
    Flood(FloodArgs),
}

/// `mxp attack flood` flags.
#[derive(Debug, Args)]
pub(crate) struct FloodArgs {
    /// The node's MXP address (host:port), or its QUIC address with
    /// `--carrier quic`.
    pub target: SocketAddr,
    /// The node's public key (64 hex digits).
    #[arg(long)]
    pub server_key: PublicKey,
    /// replay (copies of one valid Initial), corrupt (the same with a
    /// flipped byte), corrupt-mac (MXP: corrupted, mac1 recomputed), junk
    /// (MXP: random handshake messages with a valid mac1), fresh (valid
    /// initiations from fresh client keys, made before the flood).
    #[arg(long, default_value = "replay")]
    pub kind: FloodKind,
    /// mxp or quic.
    #[arg(long, default_value = "mxp")]
    pub carrier: Carrier,
    /// Initials per second.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// How long to send.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Source ports to send from.
    #[arg(long, default_value_t = 256)]
    pub ports: usize,
    /// With --kind fresh: distinct initiations to make (beyond it they
    /// repeat, and the node drops the repeats as copies).
    #[arg(long, default_value_t = 5_000)]
    pub distinct: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    target: SocketAddr,
    carrier: Carrier,
    kind: FloodKind,
    ports: usize,
    sent: u64,
    send_errors: u64,
    seconds: f64,
    rate: f64,
}

/// Runs the check and prints what was sent.
pub(crate) async fn run(args: AttackArgs) -> Result<(), CliError> {
    match args.what {
        Some(AttackCommand::Flood(f)) => flood(f).await,
        None => attack(args).await,
    }
}

async fn attack(args: AttackArgs) -> Result<(), CliError> {
    let usage = |what: &str| {
        CliError::Usage(format!(
            "{what} (mxp attack URL --server-key KEY --kind KIND)"
        ))
    };
    let url = args.url.ok_or_else(|| usage("missing the node's URL"))?;
    let node = args
        .server_key
        .ok_or_else(|| usage("missing --server-key"))?;
    let kind = args.kind.ok_or_else(|| usage("missing --kind"))?;
    if args.rate == 0 || args.duration.is_zero() {
        return Err(CliError::Usage(
            "--rate and --duration must be more than 0".into(),
        ));
    }
    let target = mxp::resolve_address(&url)
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    if !target.ip().is_loopback() && !args.allow_remote {
        return Err(CliError::Usage(format!(
            "{target} is not on this host's loopback: attack only nodes you run, and say so with --allow-remote"
        )));
    }
    let attack = Attack {
        kind,
        url,
        node,
        duration: args.duration,
        rate: args.rate,
    };
    let report = attack
        .run()
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("serialisable"));
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &AttackReport) {
    println!(
        "{} against {} for {:.1} s: {} {} over {} connection(s)",
        r.kind, r.target, r.seconds, r.sent, r.unit, r.connections
    );
    for (reason, n) in &r.closed_by_node {
        println!("  the node closed {n} connection(s): {reason}");
    }
    for (reason, n) in &r.connect_failures {
        println!("  {n} connection attempt(s) failed: {reason}");
    }
    if r.closed_by_node.is_empty() && r.connections > 0 {
        println!("  the node kept the connection open");
    }
    let w = &r.witness;
    println!(
        "  witness: {}/{} calls answered (P50 {} us, P99 {} us){}",
        w.answered,
        w.calls,
        w.p50_us,
        w.p99_us,
        match &w.first_failure {
            Some(why) => format!("; first failure: {why}"),
            None => String::new(),
        }
    );
    println!(
        "  what the node refused: its /metrics (mxp_peer_limits_total, mxp_handshakes_limited_total, mxp_message_errors_total)"
    );
}

async fn flood(f: FloodArgs) -> Result<(), CliError> {
    if f.rate == 0 || f.ports == 0 || f.duration.is_zero() {
        return Err(CliError::Usage(
            "--rate, --ports and --duration must be more than 0".into(),
        ));
    }
    let flood = Flood::prepare(f.carrier, f.kind, f.target, f.server_key, f.distinct)
        .await
        .map_err(|e| CliError::Usage(format!("cannot prepare the flood: {e}")))?
        .rate(f.rate)
        .duration(f.duration)
        .ports(f.ports);
    let sent = tokio::task::spawn_blocking(move || flood.run())
        .await
        .map_err(|e| CliError::Failed(format!("the flood stopped: {e}")))?
        .map_err(|e| CliError::Failed(format!("cannot send: {e}")))?;
    let report = Report {
        target: f.target,
        carrier: f.carrier,
        kind: f.kind,
        ports: f.ports,
        sent: sent.sent,
        send_errors: sent.send_errors,
        seconds: sent.elapsed.as_secs_f64(),
        rate: sent.rate,
    };
    if f.json {
        println!("{}", serde_json::to_string(&report).expect("serialisable"));
    } else {
        println!(
            "{} flood ({}) to {}: {} Initials in {:.2} s from {} ports ({:.0}/s), {} refused by the kernel",
            report.kind,
            report.carrier,
            report.target,
            report.sent,
            report.seconds,
            report.ports,
            report.rate,
            report.send_errors
        );
    }
    Ok(())
}
