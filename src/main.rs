//! The `mxp` command.
//!
//! For now it has one job: `mxp demo` (also what a bare `mxp` runs) drives
//! a node and a client through the deterministic in-process network and
//! prints what happened. Real sockets, `serve`, `ping` and the rest arrive
//! with the runtime.

mod demo;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mxp",
    version,
    about = "MXP Transport: secure low-latency agent-to-agent transport"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a client and a node over the in-process network (lossy by
    /// default) and prints a summary. Deterministic for a given seed.
    Demo(demo::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let opts = match cli.command {
        Some(Command::Demo(opts)) => opts,
        None => demo::Options::default(),
    };
    match demo::run(&opts) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mxp demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses a probability in `[0, 1)`, such as a loss rate.
pub(crate) fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("not a number: {s:?}"))?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be at least 0 and below 1, got {v}"))
    }
}

/// Parses durations like `50us`, `2ms`, `1s`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("missing unit in {s:?} (use us, ms or s)"))?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("not a number: {num:?}"))?;
    let scale = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        _ => return Err(format!("unknown unit {unit:?} (use us, ms or s)")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("50us"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_duration("1.5ms"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn fractions_are_bounded() {
        assert_eq!(parse_fraction("0.05"), Ok(0.05));
        assert!(parse_fraction("1").is_err());
        assert!(parse_fraction("-0.1").is_err());
        assert!(parse_fraction("lots").is_err());
    }
}
