//! The process's log filter, changeable on a running node: the checklist's
//! "`debug` for the handshake when investigating anomalies" must not cost
//! a restart (and with it every connection of the node).
//!
//! The library never installs a logger; whoever does (the `mxp` command)
//! wraps its filter in a [`LogFilter`] and hands it to
//! [`admin::serve_with_log`](crate::admin::serve_with_log) for
//! `GET|POST /log`.

use std::fmt;
use std::sync::{Arc, Mutex};

/// Applies a filter text to the logger, or says what is wrong with it.
type Apply = dyn Fn(&str) -> Result<(), String> + Send + Sync;

/// The running logger's filter (`tracing` `EnvFilter` directives such as
/// `info,mxp_proto::handshake=debug`) and how to change it.
#[derive(Clone)]
pub struct LogFilter {
    current: Arc<Mutex<String>>,
    apply: Arc<Apply>,
}

impl LogFilter {
    /// `current` is the filter the logger was installed with; `apply`
    /// replaces it, refusing a bad filter with a one-line reason and
    /// leaving the logger as it was.
    pub fn new(
        current: impl Into<String>,
        apply: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static,
    ) -> LogFilter {
        LogFilter {
            current: Arc::new(Mutex::new(current.into())),
            apply: Arc::new(apply),
        }
    }

    /// The filter in force.
    pub fn current(&self) -> String {
        crate::lock(&self.current).clone()
    }

    /// Puts `filter` in force and returns the one it replaced.
    pub fn set(&self, filter: &str) -> Result<String, String> {
        let mut current = crate::lock(&self.current);
        (self.apply)(filter)?;
        Ok(std::mem::replace(&mut *current, filter.to_owned()))
    }
}

impl fmt::Debug for LogFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogFilter")
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_filter_changes_nothing() {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let seen = applied.clone();
        let log = LogFilter::new("info", move |f| {
            if f.contains("bogus") {
                return Err(format!("bad directive {f:?}"));
            }
            seen.lock().unwrap().push(f.to_owned());
            Ok(())
        });
        assert_eq!(log.set("info,mxp=debug"), Ok("info".to_owned()));
        assert_eq!(
            log.set("mxp=bogus"),
            Err("bad directive \"mxp=bogus\"".to_owned())
        );
        assert_eq!(log.current(), "info,mxp=debug");
        assert_eq!(*applied.lock().unwrap(), ["info,mxp=debug"]);
    }
}
