//! `mxp relay`: a UDP forwarder that impairs traffic in both directions
//! (loss, delay, jitter, reordering, duplication) with seeded randomness,
//! for testing and measuring over real sockets where `netem` is missing.
//! The work is done by [`mxp::relay::Relay`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use mxp::relay::{Relay, RelayConfig};

use crate::cli::{CliError, parse_duration, parse_fraction};

/// Where to relay and how to impair. Probabilities and delays apply to
/// each direction separately.
#[derive(Debug, Clone, Args)]
pub(crate) struct RelayArgs {
    /// Address to receive client datagrams on.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Address to forward them to (replies go back to each client).
    #[arg(long, value_name = "ADDR")]
    pub to: SocketAddr,
    /// Fraction of datagrams lost, in [0, 1).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_fraction)]
    pub loss: f64,
    /// Fixed one-way delay (e.g. 1ms, 200us).
    #[arg(long, value_name = "D", default_value = "0us", value_parser = parse_duration)]
    pub delay: Duration,
    /// Extra uniform random delay, up to this much; never reorders.
    #[arg(long, value_name = "J", default_value = "0us", value_parser = parse_duration)]
    pub jitter: Duration,
    /// Fraction of datagrams held back so later ones overtake them, in
    /// [0, 1). The hold is 2 x delay + jitter, at least 200us.
    #[arg(long, value_name = "R", default_value_t = 0.0, value_parser = parse_fraction)]
    pub reorder: f64,
    /// Fraction of datagrams sent twice, in [0, 1).
    #[arg(long, value_name = "U", default_value_t = 0.0, value_parser = parse_fraction)]
    pub duplicate: f64,
    /// Seed of the randomness; a run is reproducible given the same
    /// packet order.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// A client silent both ways this long gives its upstream socket to
    /// the next new client once all 1024 are taken.
    #[arg(long, value_name = "D", default_value = "30s", value_parser = parse_duration)]
    pub client_idle: Duration,
}

impl RelayArgs {
    /// The library configuration these flags describe.
    pub(crate) fn config(&self) -> RelayConfig {
        RelayConfig {
            loss: self.loss,
            delay: self.delay,
            jitter: self.jitter,
            reorder: self.reorder,
            duplicate: self.duplicate,
            seed: self.seed,
            client_idle: self.client_idle,
            ..RelayConfig::new(self.listen, self.to)
        }
    }
}

/// A probability as a percentage, without float noise (`5%`, not
/// `5.000000000000001%`).
fn percent(p: f64) -> String {
    format!("{}%", (p * 1e6).round() / 1e4)
}

/// One line naming the impairments of `config`.
fn describe(config: &RelayConfig) -> String {
    if config.is_transparent() {
        return "no impairment".to_string();
    }
    let mut parts = Vec::new();
    if config.loss > 0.0 {
        parts.push(format!("loss {}", percent(config.loss)));
    }
    if !config.delay.is_zero() {
        parts.push(format!("delay {:?}", config.delay));
    }
    if !config.jitter.is_zero() {
        parts.push(format!("jitter {:?}", config.jitter));
    }
    if config.reorder > 0.0 {
        parts.push(format!(
            "reorder {} (held {:?})",
            percent(config.reorder),
            config.effective_reorder_delay()
        ));
    }
    if config.duplicate > 0.0 {
        parts.push(format!("duplicate {}", percent(config.duplicate)));
    }
    format!("{} each way, seed {}", parts.join(", "), config.seed)
}

/// Runs the relay until Ctrl-C, then prints its counters.
pub(crate) async fn run(args: RelayArgs) -> Result<(), CliError> {
    let config = args.config();
    let summary = describe(&config);
    let relay = Relay::bind(config)
        .await
        .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", args.listen)))?;
    println!(
        "relaying {} -> {}: {summary} (Ctrl-C to stop)",
        relay.local_addr(),
        args.to
    );
    let waited = tokio::signal::ctrl_c().await;
    let stats = relay.close().await;
    println!("relayed: {stats}");
    waited.map_err(|e| CliError::Failed(format!("cannot wait for Ctrl-C: {e}")))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: RelayArgs,
    }

    fn parse(line: &str) -> Result<RelayArgs, clap::Error> {
        Cmd::try_parse_from(std::iter::once("relay").chain(line.split_whitespace())).map(|c| c.args)
    }

    #[test]
    fn the_issue_command_line_parses() {
        let a = parse(
            "--listen 127.0.0.1:9000 --to 127.0.0.1:9001 --loss 0.05 --delay 1ms \
             --jitter 200us --reorder 0.02 --duplicate 0.01 --seed 7",
        )
        .unwrap();
        let c = a.config();
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.to, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(c.loss, 0.05);
        assert_eq!(c.delay, Duration::from_millis(1));
        assert_eq!(c.jitter, Duration::from_micros(200));
        assert_eq!(c.reorder, 0.02);
        assert_eq!(c.duplicate, 0.01);
        assert_eq!(c.seed, 7);
        assert_eq!(
            describe(&c),
            "loss 5%, delay 1ms, jitter 200µs, reorder 2% (held 2.2ms), duplicate 1% each way, seed 7"
        );
    }

    #[test]
    fn defaults_are_no_impairment_and_seed_1() {
        let c = parse("--listen 127.0.0.1:0 --to 127.0.0.1:9001")
            .unwrap()
            .config();
        assert!(c.is_transparent());
        assert_eq!(c.seed, 1);
        assert_eq!(describe(&c), "no impairment");
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(parse("--to 127.0.0.1:9001").is_err());
        assert!(parse("--listen 127.0.0.1:0").is_err());
        assert!(parse("--listen nowhere --to 127.0.0.1:9001").is_err());
        assert!(parse("--listen 127.0.0.1:0 --to 127.0.0.1:1 --loss 1.5").is_err());
        assert!(parse("--listen 127.0.0.1:0 --to 127.0.0.1:1 --delay 5").is_err());
        assert!(parse("--listen 127.0.0.1:0 --to 127.0.0.1:1 --reorder x").is_err());
    }

    #[tokio::test]
    async fn an_address_in_use_is_a_usage_error_naming_it() {
        let taken = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let args = parse(&format!("--listen {addr} --to 127.0.0.1:9")).unwrap();
        match run(args).await {
            Err(CliError::Usage(m)) => assert!(m.contains(&addr.to_string()), "{m}"),
            other => panic!("expected a usage error, got {other:?}"),
        }
    }
}
