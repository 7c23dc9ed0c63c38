//! The `mxp` command's pieces: one module per subcommand, plus what they
//! share (argument parsers, the error type that decides the exit code).

pub(crate) mod admin;
pub(crate) mod attack;
pub(crate) mod bench;
pub(crate) mod call;
pub(crate) mod client;
pub(crate) mod config;
pub(crate) mod demo;
pub(crate) mod keygen;
pub(crate) mod logging;
pub(crate) mod ping;
pub(crate) mod relay;
pub(crate) mod serve;

use std::process::ExitCode;

/// Why a command failed; decides the exit code.
#[derive(Debug)]
pub(crate) enum CliError {
    /// Bad flags, config or key files: nothing was started (exit 2).
    Usage(String),
    /// Something failed while running (exit 1).
    Failed(String),
}

impl CliError {
    /// The process exit code for this error.
    pub(crate) fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Failed(_) => ExitCode::from(1),
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Failed(m) => f.write_str(m),
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

/// Parses durations like `50us`, `2ms`, `1s`, `5m` (the library's parser,
/// so the admin endpoint reads `?timeout=` exactly as the CLI and the config
/// file do).
pub(crate) use mxp::admin::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("50us"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_duration("1.5ms"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
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
