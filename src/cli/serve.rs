//! `mxp serve`: a node answering calls (echo), echoing or sinking streams
//! and echoing datagrams, until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use mxp::Endpoint;
use mxp::echo::{self, EchoStats};
use mxp::proto::{EndpointConfig, Keypair};
use tracing::info;

use super::{CliError, config, keygen, logging};

/// `mxp serve` flags; they override the config file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:9000).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// The node's secret key file (from `mxp keygen`); default: a fresh key
    /// for this run.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// TOML configuration (see docs/transport/config.md).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter, e.g. `info,mxp_proto::handshake=debug`.
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// Shorthand for the checklist's investigation filter: `info` for the
    /// transport, `debug` for the handshake.
    #[arg(long, conflicts_with = "log")]
    pub debug_handshake: bool,
}

/// How long a stopping node waits for its connections to close.
const DRAIN_ON_EXIT: Duration = Duration::from_secs(2);

/// Loads everything, starts the node and serves until told to stop.
/// Nothing is started if the flags, config or key are bad.
pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let mut cfg = config::load(args.config.as_deref())?;
    let filter = match args.debug_handshake {
        true => Some(logging::HANDSHAKE_DEBUG),
        false => args.log.as_deref().or(cfg.log.as_deref()),
    };
    logging::init(filter)?;
    if let Some(listen) = args.listen {
        cfg.listen = listen;
    }
    if let Some(key) = args.key {
        cfg.key = Some(key);
    }
    let (keypair, ephemeral) = match &cfg.key {
        Some(path) => (keygen::load_keypair(path)?, false),
        None => (Keypair::generate(), true),
    };
    let config = EndpointConfig {
        keypair,
        transport: Arc::new(cfg.transport),
        server: Some(Arc::new(cfg.server)),
    };
    let node = Endpoint::bind(cfg.listen, config)
        .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let addr = node.local_addr();
    let key = node.public_key();
    println!("mxp node listening on {addr}");
    println!(
        "public key: {key}{}",
        if ephemeral {
            " (ephemeral: pass --key to keep it across restarts)"
        } else {
            ""
        }
    );
    println!("try: mxp ping mxp://{addr} --server-key {key}");
    info!(%addr, %key, "node started");

    let stats = Arc::new(EchoStats::default());
    let serving = tokio::spawn(echo::serve(node.clone(), stats.clone()));
    shutdown_signal().await;
    info!("stopping: closing connections");
    node.close(0, b"node shutting down");
    let _ = tokio::time::timeout(DRAIN_ON_EXIT, node.wait_idle()).await;
    serving.abort();
    let e = node.stats();
    println!(
        "served {} connections, {} calls; refused {} datagrams ({} malformed, {} for unknown connections)",
        stats.connections.load(Ordering::Relaxed),
        stats.calls.load(Ordering::Relaxed),
        e.datagrams_refused(),
        e.malformed,
        e.unknown_connection
    );
    Ok(())
}

/// Ctrl-C, or SIGTERM (what service managers send).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
