//! Logging for the `mxp` command: `tracing` events to stderr, filtered by
//! `EnvFilter` directives.
//!
//! Which filter applies, first match wins:
//!
//! 1. an explicit filter: `--log`, else `log` in the `[node]` table of the
//!    config file;
//! 2. the `RUST_LOG` environment variable, when set and not empty;
//! 3. `info`.
//!
//! Events are laid out by target so one filter string picks them out (see
//! the "Logging" section of `docs/transport/config.md`): `mxp` for the
//! runtime, `mxp_proto::handshake` for every handshake event,
//! `mxp_proto::connection` per connection, `mxp_proto::endpoint` for
//! admission. The checklist's "`info` for all transport modules, `debug` for
//! the handshake" is [`HANDSHAKE_DEBUG`].

use std::env::VarError;
use std::io::IsTerminal;

use mxp::admin::LogFilter;
use tracing_subscriber::filter::Directive;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, reload};

use super::CliError;

/// The filter used when nothing else is set: lifecycle events and problems,
/// quiet enough for a node that runs for weeks.
pub(crate) const DEFAULT_FILTER: &str = "info";

/// `info` everywhere, `debug` for the handshake: the rollout checklist's
/// filter, for watching admissions, refusals and retries on a new node.
pub(crate) const HANDSHAKE_DEBUG: &str = "info,mxp_proto::handshake=debug";

/// Installs the process-wide logger, writing to stderr (stdout is kept for
/// results, such as `--json` output).
///
/// `filter` is the explicit filter (from `--log` or the config file), or
/// `None` to fall back to `RUST_LOG` and then [`DEFAULT_FILTER`]. A bad
/// filter is a usage error naming the offending directive and where it came
/// from; a second call fails, because the logger can only be installed once.
/// The returned [`LogFilter`] changes the filter while the process runs
/// (the admin endpoint's `/log`, a config reload).
pub(crate) fn init<'a>(filter: impl Into<Option<&'a str>>) -> Result<LogFilter, CliError> {
    let (source, text) = choose(filter.into(), rust_log()?);
    let filter = parse_filter(&text).map_err(|e| CliError::Usage(format!("{source}: {e}")))?;
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .try_init()
        .map_err(|e| CliError::Failed(format!("cannot install the logger: {e}")))?;
    Ok(LogFilter::new(text, move |text| {
        handle
            .reload(parse_filter(text)?)
            .map_err(|e| format!("cannot change the log filter: {e}"))
    }))
}

/// The filter [`init`] would choose for `explicit`: it, else `RUST_LOG`,
/// else [`DEFAULT_FILTER`] (what a config reload puts in force).
pub(crate) fn resolve(explicit: Option<&str>) -> Result<String, CliError> {
    Ok(choose(explicit, rust_log()?).1)
}

fn rust_log() -> Result<Option<String>, CliError> {
    match std::env::var("RUST_LOG") {
        Ok(value) => Ok(Some(value)),
        Err(VarError::NotPresent) => Ok(None),
        Err(VarError::NotUnicode(_)) => {
            Err(CliError::Usage("RUST_LOG: not valid UTF-8".to_owned()))
        }
    }
}

/// Applies the precedence; returns where the filter came from (for error
/// messages) and the filter text.
fn choose(explicit: Option<&str>, env: Option<String>) -> (&'static str, String) {
    match (explicit, env) {
        (Some(f), _) => ("log filter", f.to_owned()),
        (None, Some(v)) if !v.trim().is_empty() => ("RUST_LOG", v),
        (None, _) => ("default log filter", DEFAULT_FILTER.to_owned()),
    }
}

/// Checks and builds a filter, so a config file's `node.log` can be refused
/// at load time, before anything starts.
///
/// Spaces around directives are ignored (`"info, mxp=debug"` works, where
/// `EnvFilter` alone would look for a target named `" mxp"`). `EnvFilter`
/// only says that *some* directive is bad, so each is checked on its own
/// and the error quotes the first bad one.
pub(crate) fn parse_filter(filter: &str) -> Result<EnvFilter, String> {
    let directives: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Err(format!(
            "empty log filter {filter:?} (use \"off\" to silence logging)"
        ));
    }
    for d in &directives {
        d.parse::<Directive>()
            .map_err(|e| format!("bad log filter directive {d:?} in {filter:?}: {e}"))?;
    }
    EnvFilter::builder()
        .parse(directives.join(","))
        .map_err(|e| format!("bad log filter {filter:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::Subscriber;
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

    use super::*;

    /// Records `LEVEL target` of every event that passes the filter.
    struct Record(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Record {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let m = event.metadata();
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {}", m.level(), m.target()));
        }
    }

    fn passed(filter: &str) -> Vec<String> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry()
            .with(parse_filter(filter).unwrap())
            .with(Record(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: mxp::proto::HANDSHAKE, "initiation");
            tracing::trace!(target: mxp::proto::HANDSHAKE, "noise detail");
            tracing::debug!(target: "mxp_proto::connection::recv", "frame");
            tracing::info!(target: "mxp_proto::connection", "connected");
            tracing::debug!(target: "mxp_proto::endpoint", "routed");
            tracing::info!(target: "mxp::driver", "bound");
            tracing::debug!(target: "mxp::driver", "batch");
        });
        Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
    }

    #[test]
    fn the_checklist_filter_is_info_everywhere_and_debug_for_the_handshake() {
        let expected = [
            "DEBUG mxp_proto::handshake",
            "INFO mxp_proto::connection",
            "INFO mxp::driver",
        ];
        assert_eq!(passed(HANDSHAKE_DEBUG), expected);
        assert_eq!(passed("info, mxp_proto::handshake=debug"), expected);
        assert_eq!(
            passed(DEFAULT_FILTER),
            ["INFO mxp_proto::connection", "INFO mxp::driver"]
        );
        assert_eq!(
            passed("warn,mxp=debug").len(),
            6,
            "a target filter matches by prefix: `mxp` covers mxp_proto too"
        );
    }

    #[test]
    fn a_bad_directive_is_quoted() {
        let e = parse_filter("info,mxp=loud").unwrap_err();
        assert!(
            e.starts_with("bad log filter directive \"mxp=loud\""),
            "{e}"
        );
        assert!(
            parse_filter(" , ")
                .unwrap_err()
                .contains("empty log filter")
        );
        assert!(parse_filter("off").is_ok());
        assert!(parse_filter("mxp_proto::connection[conn]=trace").is_ok());
    }

    #[test]
    fn explicit_filter_beats_rust_log_which_beats_the_default() {
        let env = || Some("warn".to_owned());
        assert_eq!(choose(Some("debug"), env()), ("log filter", "debug".into()));
        assert_eq!(choose(None, env()), ("RUST_LOG", "warn".into()));
        assert_eq!(
            choose(None, Some("  ".into())),
            ("default log filter", "info".into())
        );
        assert_eq!(choose(None, None), ("default log filter", "info".into()));
    }
}
