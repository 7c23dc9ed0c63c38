//! `mxp serve`: a node answering calls (echo), echoing or sinking streams
//! and echoing datagrams, on the MXP carrier and the QUIC fallback beside
//! it, with an optional admin endpoint, until Ctrl-C or SIGTERM. SIGHUP
//! re-reads the config file and applies what can change at runtime.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use mxp::admin::{self, AdminOptions, AdminServer, LogFilter};
use mxp::capture::{CaptureState, CaptureSummary};
use mxp::echo::{self, EchoStats};
use mxp::proto::{EndpointConfig, Keypair};
use mxp::{Carriers, Endpoint, Options};
use tracing::{info, warn};

use super::config::{NodeConfig, QuicListen};
use super::{CliError, config, keygen, logging, parse_duration};

/// `mxp serve` flags; they override the config file.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:9000).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address of the QUIC carrier, or `off` (default: the listen address
    /// with the port one up; port 0 when listening on port 0).
    #[arg(long, value_name = "ADDR|off", value_parser = parse_quic_listen)]
    pub quic_listen: Option<QuicListen>,
    /// Serve the admin HTTP endpoint here (default: none). Off loopback it
    /// needs --admin-token.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Bearer token the admin endpoint demands (prefer node.admin_token in
    /// a mode-0600 config file: a flag shows in `ps`).
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
    /// Carriers accepting new sessions at start: mxp, quic or both
    /// (default both).
    #[arg(long, value_name = "mxp|quic|both", value_parser = parse_carriers)]
    pub carriers: Option<Carriers>,
    /// How long connections on a carrier switched off may finish their work
    /// (default 5m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// The node's secret key file (from `mxp keygen`); default: a fresh key
    /// for this run.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// TOML configuration (see docs/transport/config.md); SIGHUP re-reads it.
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

fn parse_quic_listen(s: &str) -> Result<QuicListen, String> {
    s.parse()
}

fn parse_carriers(s: &str) -> Result<Carriers, String> {
    s.parse()
}

/// How long a stopping node waits for its connections to close.
const DRAIN_ON_EXIT: Duration = Duration::from_secs(2);

/// Loads everything, starts the node and serves until told to stop.
/// Nothing is started if the flags, config or key are bad.
pub(crate) async fn run(args: ServeArgs) -> Result<(), CliError> {
    let file = config::load(args.config.as_deref())?;
    let signals = Signals::install();
    let flag_filter = match args.debug_handshake {
        true => Some(logging::HANDSHAKE_DEBUG.to_owned()),
        false => args.log.clone(),
    };
    let log = logging::init(flag_filter.as_deref().or(file.log.as_deref()))?;
    let mut cfg = file.clone();
    if let Some(listen) = args.listen {
        cfg.listen = listen;
    }
    if let Some(quic) = args.quic_listen {
        cfg.quic_listen = quic;
    }
    if let Some(admin) = args.admin {
        cfg.admin = Some(admin);
    }
    if let Some(token) = args.admin_token {
        if token.trim().is_empty() {
            return Err(CliError::Usage("--admin-token: empty token".to_owned()));
        }
        cfg.admin_token = Some(token);
    }
    if let Some(carriers) = args.carriers {
        cfg.carriers = carriers;
    }
    if let Some(timeout) = args.drain_timeout {
        cfg.drain_timeout = timeout;
    }
    if let Some(key) = args.key {
        cfg.key = Some(key);
    }
    let quic_listen = cfg
        .quic_listen
        .resolve(cfg.listen)
        .map_err(CliError::Usage)?;
    if !cfg.carriers.mxp && quic_listen.is_none() {
        return Err(CliError::Usage(format!(
            "carriers {} with the QUIC carrier off would refuse every new session: \
             set --quic-listen (or node.quic_listen)",
            cfg.carriers
        )));
    }
    if let Some(admin) = cfg.admin.filter(|a| !a.ip().is_loopback()) {
        if cfg.admin_token.is_none() {
            return Err(CliError::Usage(format!(
                "admin endpoint {admin} is not a loopback address: \
                 set --admin-token (or node.admin_token) to serve it there"
            )));
        }
    }
    let (keypair, ephemeral) = match &cfg.key {
        Some(path) => (keygen::load_keypair(path)?, false),
        None => (Keypair::generate(), true),
    };
    let mut config = EndpointConfig::client(keypair);
    config.transport = Arc::new(cfg.transport.clone());
    config.server = Some(Arc::new(cfg.server.clone()));
    let mut options = Options::new(config);
    options.quic_listen = quic_listen;
    options.carriers = cfg.carriers;
    options.drain_timeout = cfg.drain_timeout;
    let node = Endpoint::with_options(cfg.listen, options)
        .map_err(|e| CliError::Usage(bind_error(cfg.listen, quic_listen, &e)))?;
    if let Some(path) = &cfg.capture {
        start_capture(&node, path, cfg.capture_max_bytes)?;
    }
    let admin = match cfg.admin {
        Some(addr) => {
            let mut options = AdminOptions::default();
            options.token = cfg.admin_token.clone();
            options.log = Some(log.clone());
            options.capture_dir = cfg.capture_dir.clone();
            let server = admin::serve_with(addr, node.clone(), options)
                .await
                .map_err(|e| CliError::Usage(format!("cannot serve admin on {addr}: {e}")))?;
            Some(server)
        }
        None => None,
    };
    print_banner(&node, admin.as_ref(), ephemeral, cfg.drain_timeout);

    let stats = Arc::new(EchoStats::default());
    let serving = tokio::spawn(echo::serve(node.clone(), stats.clone()));
    let mut reload = Reload {
        path: args.config,
        file,
        drain_timeout: cfg.drain_timeout,
        log,
        flag_filter,
    };
    signals.wait_for_stop(|| reload.apply(&node)).await;
    info!("stopping: closing connections");
    if let Some(admin) = admin {
        // A client stalled mid-request must not hold the node up.
        let _ = tokio::time::timeout(DRAIN_ON_EXIT, admin.close()).await;
    }
    node.close(0, b"node shutting down");
    let _ = tokio::time::timeout(DRAIN_ON_EXIT, node.wait_idle()).await;
    serving.abort();
    // A capture still running (from the config or the admin endpoint) is
    // finished, so its file is complete.
    let capturing = node.clone();
    if let Ok(Some(summary)) = tokio::task::spawn_blocking(move || capturing.stop_capture()).await {
        println!("{}", capture_line(&summary));
    }
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

/// Starts the capture `node.capture` asks for. A file left there by an
/// earlier run (the evidence of a crash, perhaps) is moved aside to
/// `FILE.prev` rather than refused, which would stop every restart, or
/// overwritten.
fn start_capture(node: &Endpoint, path: &Path, max_bytes: u64) -> Result<(), CliError> {
    let refuse = |e: &dyn std::fmt::Display| CliError::Usage(format!("node.capture: {e}"));
    if path.exists() {
        let mut aside = path.as_os_str().to_owned();
        aside.push(".prev");
        std::fs::rename(path, &aside).map_err(|e| {
            refuse(&format!(
                "{} exists and cannot be moved aside to {}: {e}",
                path.display(),
                Path::new(&aside).display()
            ))
        })?;
        info!(from = %path.display(), to = %Path::new(&aside).display(), "moved the previous capture file aside");
    }
    node.start_capture(path, max_bytes).map_err(|e| refuse(&e))
}

/// One line on what a capture file holds.
fn capture_line(s: &CaptureSummary) -> String {
    let mut line = format!(
        "capture {}: {} packets ({} sent, {} received), {} bytes",
        s.path.display(),
        s.packets,
        s.sent,
        s.received,
        s.bytes
    );
    if s.dropped > 0 {
        line.push_str(&format!(", {} dropped (the disk was too slow)", s.dropped));
    }
    if s.truncated_by_limit {
        line.push_str(&format!(
            "; stopped at its size limit ({} bytes)",
            s.max_bytes
        ));
    }
    if let Some(e) = &s.error {
        line.push_str(&format!("; writing failed: {e}"));
    }
    line
}

/// Says which of the two sockets could not be bound: the endpoint binds
/// both and reports only the error.
fn bind_error(listen: SocketAddr, quic: Option<SocketAddr>, e: &std::io::Error) -> String {
    let mxp_free = listen.port() == 0 || std::net::UdpSocket::bind(listen).is_ok();
    match quic {
        Some(quic) if mxp_free => format!("cannot listen on {quic} (QUIC carrier): {e}"),
        _ => format!("cannot listen on {listen}: {e}"),
    }
}

/// What a client (and an operator) needs, on stdout: the addresses, the
/// key, and commands that work as printed.
fn print_banner(node: &Endpoint, admin: Option<&AdminServer>, ephemeral: bool, drain: Duration) {
    let addr = node.local_addr();
    let key = node.public_key();
    println!("mxp node listening on {addr}");
    match node.quic_addr() {
        Some(quic) => println!("quic carrier listening on {quic}"),
        None => println!("quic carrier: off"),
    }
    if let Some(admin) = admin {
        println!("admin endpoint on http://{}", admin.local_addr());
    }
    println!(
        "public key: {key}{}",
        if ephemeral {
            " (ephemeral: pass --key to keep it across restarts)"
        } else {
            ""
        }
    );
    println!(
        "accepting new sessions on: {} (drain timeout {})",
        node.carriers(),
        show_duration(drain)
    );
    let capture = node.capture_status();
    if let (CaptureState::Recording, Some(c)) = (capture.state, &capture.capture) {
        let stop = match admin {
            Some(admin) => format!("mxp admin {} capture stop", admin.local_addr()),
            None => "stopping the node".to_owned(),
        };
        println!(
            "capturing packets to {} (up to {} bytes); finish it with: {stop}",
            c.path.display(),
            c.max_bytes
        );
    }
    println!("try: mxp ping mxp://{addr} --server-key {key}");
    // Clients look for QUIC on the next port up unless told.
    let next_port = addr.port().checked_add(1);
    if let Some(quic) = node.quic_addr().filter(|q| Some(q.port()) != next_port) {
        println!(
            "try: mxp ping 'mxp://{addr}?quic={}' --server-key {key}",
            quic.port()
        );
    }
    if let Some(admin) = admin {
        println!("try: mxp admin {} status", admin.local_addr());
    }

    info!(%addr, quic = ?node.quic_addr(), admin = ?admin.map(AdminServer::local_addr), %key, "node started");
}

/// A duration in the syntax the config file takes.
fn show_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if d.subsec_nanos() == 0 && d.as_secs() % 60 == 0 && d.as_secs() > 0 {
        format!("{}m", d.as_secs() / 60)
    } else {
        format!("{secs}s")
    }
}

/// What SIGHUP needs: the file, and what it said when last read.
struct Reload {
    path: Option<PathBuf>,
    /// The file as last read (the defaults when there is no file).
    file: NodeConfig,
    /// The drain timeout in force for switches made from now on.
    drain_timeout: Duration,
    /// The process's log filter.
    log: LogFilter,
    /// `--log` or `--debug-handshake`: what a file without `log` falls
    /// back to, as at start-up.
    flag_filter: Option<String>,
}

impl Reload {
    /// Re-reads the file and applies what changed in it since it was last
    /// read: `carriers`, `drain_timeout` and `log`. Only changes are applied, so a
    /// reload does not undo a switch made through the admin endpoint or a
    /// start-up flag unless the file itself now says otherwise. A bad file
    /// is logged and ignored.
    fn apply(&mut self, node: &Endpoint) {
        let Some(path) = self.path.clone() else {
            info!("SIGHUP: no config file to reload (start with --config FILE)");
            return;
        };
        let new = match config::load(Some(&path)) {
            Ok(c) => c,
            Err(e) => {
                warn!("config reload failed, keeping the running settings: {e}");
                return;
            }
        };
        let mut applied = Vec::new();
        if new.drain_timeout != self.file.drain_timeout {
            applied.push(format!(
                "node.drain_timeout {} -> {}",
                show_duration(self.drain_timeout),
                show_duration(new.drain_timeout)
            ));
            self.drain_timeout = new.drain_timeout;
            node.set_drain_timeout(new.drain_timeout);
        }
        if new.carriers != self.file.carriers {
            match admin::check_switch(node, new.carriers) {
                Ok(()) => {
                    let before = node.carriers();
                    node.set_carriers(new.carriers);
                    applied.push(format!("node.carriers {before} -> {}", new.carriers));
                }
                Err(e) => warn!("config reload: node.carriers not applied: {e}"),
            }
        }
        if new.log != self.file.log {
            // A changed `log` applies even over a start-up flag (as for
            // `carriers`); a file that drops it falls back as at start-up.
            let explicit = new.log.as_deref().or(self.flag_filter.as_deref());
            let filter = logging::resolve(explicit).map_err(|e| e.to_string());
            match filter.and_then(|f| self.log.set(&f).map(|before| (before, f))) {
                Ok((before, f)) => applied.push(format!("node.log {before} -> {f}")),
                Err(e) => warn!("config reload: node.log not applied: {e}"),
            }
        }
        let restart = needs_restart(&self.file, &new);
        if !restart.is_empty() {
            warn!(
                keys = %restart.join(", "),
                "config reload: these changed but take effect only after a restart"
            );
        }
        if applied.is_empty() {
            info!(
                file = %path.display(),
                accepting = %node.carriers(),
                "config reloaded: nothing to apply at runtime"
            );
        } else {
            info!(file = %path.display(), changes = %applied.join("; "), "config reloaded");
        }
        self.file = new;
    }
}

/// Keys that differ between two reads of the file and cannot change on a
/// running node.
fn needs_restart(old: &NodeConfig, new: &NodeConfig) -> Vec<&'static str> {
    // TransportConfig and ServerConfig have no PartialEq; their Debug
    // output covers every field.
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mut keys = Vec::new();
    let checks: [(&'static str, bool); 9] = [
        ("node.listen", old.listen != new.listen),
        ("node.capture", old.capture != new.capture),
        (
            "node.capture_max_bytes",
            old.capture_max_bytes != new.capture_max_bytes,
        ),
        ("node.quic_listen", old.quic_listen != new.quic_listen),
        ("node.key", old.key != new.key),
        ("node.admin", old.admin != new.admin),
        ("node.admin_token", old.admin_token != new.admin_token),
        ("[server]", differs(&old.server, &new.server)),
        ("[transport]", differs(&old.transport, &new.transport)),
    ];
    for (key, changed) in checks {
        if changed {
            keys.push(key);
        }
    }
    keys
}

/// The signals a node acts on, installed before the node announces itself:
/// a SIGHUP sent as soon as the address is printed must reload, not kill
/// the process (the default action of an unhandled SIGHUP).
struct Signals {
    #[cfg(unix)]
    streams: Option<[tokio::signal::unix::Signal; 3]>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) {
                (Ok(int), Ok(term), Ok(hup)) => Some([int, term, hup]),
                _ => None,
            };
            Signals { streams }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Serves SIGHUP with `on_reload` until Ctrl-C or SIGTERM (what service
    /// managers send).
    async fn wait_for_stop(self, mut on_reload: impl FnMut()) {
        #[cfg(unix)]
        if let Some([mut int, mut term, mut hup]) = self.streams {
            loop {
                tokio::select! {
                    _ = int.recv() => return,
                    _ = term.recv() => return,
                    _ = hup.recv() => on_reload(),
                }
            }
        }
        let _ = &mut on_reload;
        let _ = tokio::signal::ctrl_c().await;
    }
}
