//! `mxp admin ADDR status|snapshot|metrics|carrier|drain|capture|log`: the operator's side of a
//! node's admin endpoint (`mxp serve --admin ADDR`).
//!
//! Results are the endpoint's JSON, one line on stdout. A refused request
//! (bad value, wrong token) exits 2 with the node's one-line reason; a node
//! that cannot be reached exits 1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use mxp::Carriers;
use mxp::admin;

use super::{CliError, parse_duration};

/// Environment variable holding the admin token, so it need not appear on
/// a command line (where `ps` shows it).
pub(crate) const TOKEN_ENV: &str = "MXP_ADMIN_TOKEN";

/// How long to wait for the node's answer: a guard, since no admin request
/// blocks on the node's traffic.
const PATIENCE: Duration = Duration::from_secs(10);

/// `mxp admin` flags.
#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    /// The node's admin address, as given to `mxp serve --admin`
    /// (host:port, optionally with http://).
    #[arg(value_name = "ADDR")]
    pub addr: String,
    /// Bearer token, if the node demands one (default: $MXP_ADMIN_TOKEN).
    #[arg(long, value_name = "TOKEN", global = true)]
    pub token: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub action: AdminAction,
}

/// What `mxp admin` asks the node.
#[derive(Debug, Subcommand)]
pub(crate) enum AdminAction {
    /// Which carriers accept new sessions, drains in progress, connections
    /// per carrier (JSON).
    Status,
    /// Every metric plus each open connection's stats (peer, carrier, RTT,
    /// congestion window, loss, bytes, open streams), as JSON: the
    /// "before" and "after" of an incident report.
    Snapshot,
    /// Every metric in the Prometheus text format (what `/metrics` serves).
    Metrics,
    /// Sets which carriers accept new sessions; connections on a carrier
    /// switched off are drained. Prints the new status.
    Carrier {
        /// mxp, quic or both.
        #[arg(value_name = "mxp|quic|both", value_parser = parse_carriers)]
        carriers: Carriers,
    },
    /// Restarts the drain deadline of every carrier switched off: its
    /// connections are closed when it passes. Prints the new status.
    Drain {
        /// Time left to the remaining connections, e.g. 30s or 0s (default:
        /// the node's drain_timeout, 5m unless configured).
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
    },
    /// Records what the node sends and receives on both carriers
    /// (encrypted, as on the wire) into a pcap file for Wireshark or
    /// tshark.
    Capture {
        /// start, stop or status.
        #[command(subcommand)]
        action: CaptureAction,
    },
    /// Prints the node's log filter or, given one, puts it in force at once
    /// (no restart): e.g. `info,mxp_proto::handshake=debug` while
    /// investigating, `info` after.
    Log {
        /// tracing filter directives (default: print the filter in force).
        #[arg(value_name = "FILTER")]
        filter: Option<String>,
    },
}

/// What `mxp admin ADDR capture` does.
#[derive(Debug, Subcommand)]
pub(crate) enum CaptureAction {
    /// Starts a capture into a new file, written by the node (a relative
    /// path is taken from this command's working directory). Prints the
    /// capture status.
    Start {
        /// The pcap file to create; an existing file is never overwritten.
        #[arg(long, value_name = "FILE.pcap")]
        out: PathBuf,
        /// Size limit of the file, header included; recording stops at it
        /// (default 104857600, 100 MiB).
        #[arg(long, value_name = "N")]
        max_bytes: Option<u64>,
    },
    /// Stops the capture once everything is written; prints what the file
    /// holds (packets, bytes, dropped, truncated_by_limit).
    Stop,
    /// Whether a capture runs, with its live counters (or the last one's).
    Status,
}

fn parse_carriers(s: &str) -> Result<Carriers, String> {
    s.parse()
}

/// Sends the request and prints the answer.
pub(crate) async fn run(args: AdminArgs) -> Result<(), CliError> {
    let addr = resolve(&args.addr).await?;
    let token = args
        .token
        .or_else(|| std::env::var(TOKEN_ENV).ok())
        .filter(|t| !t.is_empty());
    let (method, path, body) = match &args.action {
        AdminAction::Status => ("GET", "/status".to_owned(), None),
        AdminAction::Snapshot => ("GET", "/snapshot".to_owned(), None),
        AdminAction::Metrics => ("GET", "/metrics".to_owned(), None),
        AdminAction::Carrier { carriers } => {
            ("POST", "/carrier".to_owned(), Some(carriers.as_str()))
        }
        AdminAction::Drain { timeout } => {
            let path = match timeout {
                Some(t) => {
                    parse_duration(t).map_err(|e| CliError::Usage(format!("--timeout: {e}")))?;
                    admin::with_query("/drain", &[("timeout", t.trim())])
                }
                None => "/drain".to_owned(),
            };
            ("POST", path, Some(""))
        }
        AdminAction::Capture { action } => match action {
            CaptureAction::Start { out, max_bytes } => {
                // The node writes the file; on the usual loopback endpoint
                // it shares this machine, so anchor a relative path here.
                let out = std::path::absolute(out)
                    .map_err(|e| CliError::Usage(format!("--out {}: {e}", out.display())))?;
                let out = out.to_str().ok_or_else(|| {
                    CliError::Usage(format!("--out {}: not valid UTF-8", out.display()))
                })?;
                let max_bytes = max_bytes.map(|n| n.to_string());
                let mut query = vec![("out", out)];
                if let Some(n) = &max_bytes {
                    query.push(("max_bytes", n));
                }
                (
                    "POST",
                    admin::with_query("/capture/start", &query),
                    Some(""),
                )
            }
            CaptureAction::Stop => ("POST", "/capture/stop".to_owned(), Some("")),
            CaptureAction::Status => ("GET", "/capture".to_owned(), None),
        },
        AdminAction::Log { filter: None } => ("GET", "/log".to_owned(), None),
        AdminAction::Log {
            filter: Some(filter),
        } => ("POST", "/log".to_owned(), Some(filter.as_str())),
    };
    let answer = tokio::time::timeout(
        PATIENCE,
        admin::request(addr, method, &path, body, token.as_deref()),
    )
    .await
    .map_err(|_| {
        CliError::Failed(format!(
            "admin {addr}: no answer within {PATIENCE:?} (is it an mxp admin endpoint?)"
        ))
    })?;
    let (status, text) = answer.map_err(|e| {
        CliError::Failed(format!(
            "admin: {e}; is `mxp serve --admin {addr}` running?"
        ))
    })?;
    let text = text.trim_end();
    match status {
        200..=299 => {
            println!("{text}");
            Ok(())
        }
        400..=499 => Err(CliError::Usage(format!(
            "admin {addr} refused the request (HTTP {status}): {}",
            one_line(text)
        ))),
        _ => Err(CliError::Failed(format!(
            "admin {addr} failed (HTTP {status}): {}",
            one_line(text)
        ))),
    }
}

/// The node answers in one line; keep an unexpected answer to one too.
fn one_line(text: &str) -> String {
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if line.is_empty() {
        "(no message)".to_owned()
    } else {
        line.to_owned()
    }
}

/// `host:port` or `http://host:port[/]` to one socket address.
async fn resolve(addr: &str) -> Result<SocketAddr, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "invalid admin address {addr:?}: expected host:port, e.g. 127.0.0.1:9100"
        ))
    };
    let host_port = addr
        .strip_prefix("http://")
        .unwrap_or(addr)
        .trim_end_matches('/');
    if host_port.is_empty() || host_port.contains('/') || !host_port.contains(':') {
        return Err(bad());
    }
    if let Ok(a) = host_port.parse() {
        return Ok(a);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host_port)
        .await
        .map_err(|e| CliError::Usage(format!("cannot resolve admin address {addr:?}: {e}")))?
        .collect();
    // A node's admin endpoint is on 127.0.0.1 by default; prefer IPv4 as
    // the client commands do.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(bad)
}
