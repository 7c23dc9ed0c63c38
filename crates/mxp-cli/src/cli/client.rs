//! What every client command (`ping`, `call`, `bench`) shares: the target,
//! the server key, the client's own identity, and turning connection
//! failures into one clear line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use mxp::proto::{ConnectionError, EndpointConfig, Keypair, PublicKey, TransportConfig};
use mxp::{CarrierMode, ConnectError, Connection, Endpoint, Options};

use super::{CliError, keygen, parse_duration};

/// Flags of every client command.
#[derive(Debug, Clone, Args)]
pub(crate) struct ClientArgs {
    /// The node: mxp://host:port (add ?quic=PORT if its QUIC port is not
    /// the MXP port + 1).
    pub url: String,
    /// The node's public key (the line in its node.pub).
    #[arg(long, value_name = "KEY")]
    pub server_key: String,
    /// This client's secret key file (default: a fresh key per run; a node
    /// with an allow-list needs a stable one).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// How long to wait for the node to answer (handshake and each call).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Carrier: mxp, quic, or auto (MXP, falling back to QUIC when the node
    /// refuses MXP or it does not answer within --mxp-timeout).
    #[arg(long, default_value = "auto", value_parser = parse_carrier)]
    pub carrier: CarrierMode,
    /// With `--carrier auto`: how long MXP may stay silent before the
    /// client tries QUIC (a node that refuses MXP says so at once).
    #[arg(long, default_value = "1s", value_parser = parse_positive_duration)]
    pub mxp_timeout: Duration,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Log filter (tracing directives), e.g. `debug` or
    /// `info,mxp_proto::handshake=debug`. Logs go to stderr.
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be more than 0 (use --carrier quic to skip MXP)".to_owned()),
        d => Ok(d),
    }
}

fn parse_carrier(s: &str) -> Result<CarrierMode, String> {
    s.parse()
}

/// A connected client.
pub(crate) struct Client {
    pub endpoint: Endpoint,
    pub conn: Connection,
    /// Time from sending the first handshake packet to being connected.
    pub handshake: Duration,
    /// `auto` fell back to QUIC (the reason is in the `info` log).
    pub fell_back: bool,
    pub server_key: PublicKey,
}

impl ClientArgs {
    /// Checks the flags, binds a socket and connects.
    pub(crate) async fn connect(&self) -> Result<Client, CliError> {
        let server_key = keygen::parse_public_key(&self.server_key)?;
        let remote = mxp::resolve_address(&self.url)
            .await
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let keypair = match &self.key {
            Some(path) => keygen::load_keypair(path)?,
            None => Keypair::generate(),
        };
        let transport = {
            let mut transport = TransportConfig::default();
            transport.handshake_timeout = self.timeout;
            transport
        };
        let options = {
            let mut options = Options::new({
                let mut endpoint_config = EndpointConfig::client(keypair);
                endpoint_config.transport = Arc::new(transport);
                endpoint_config
            });
            options.carrier_mode = self.carrier;
            options.mxp_timeout = self.mxp_timeout;
            options
        };
        let local = if remote.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let endpoint = Endpoint::with_options(local.parse().expect("literal"), options)
            .map_err(|e| CliError::Failed(format!("cannot open a UDP socket: {e}")))?;
        let start = Instant::now();
        let conn = endpoint
            .connect(&self.url, server_key)
            .await
            .map_err(|e| connect_failure(&self.url, self.patience(), e))?;
        Ok(Client {
            handshake: start.elapsed(),
            fell_back: endpoint.status().fallbacks > 0,
            endpoint,
            conn,
            server_key,
        })
    }

    /// How long a connection attempt may take: auto waits for MXP first.
    fn patience(&self) -> Duration {
        match self.carrier {
            // The MXP attempt also ends at the handshake timeout.
            CarrierMode::Auto => self.mxp_timeout.min(self.timeout) + self.timeout,
            _ => self.timeout,
        }
    }
}

/// One line saying why a connection failed, and what to check.
pub(crate) fn connect_failure(url: &str, timeout: Duration, e: ConnectError) -> CliError {
    match e {
        ConnectError::Handshake(ConnectionError::HandshakeTimedOut) => CliError::Failed(format!(
            "no answer from {url} within {timeout:?}: is a node listening there?"
        )),
        ConnectError::InvalidAddress(_) | ConnectError::Resolve { .. } => {
            CliError::Usage(e.to_string())
        }
        other => CliError::Failed(format!("cannot connect to {url}: {other}")),
    }
}

impl Client {
    /// Closes the connection and waits (briefly) for the node to hear it.
    pub(crate) async fn close(self) {
        self.conn.close(0, b"done");
        drop(self.conn);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}
