//! The node's admin endpoint: a small HTTP API through which an operator
//! (or `mxp admin`) flips the carrier switch and starts drains on a running
//! node, without a restart.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | `ok`: the process is up (never needs the token) |
//! | `GET /status` | the [`Status`] JSON |
//! | `GET /metrics` | every metric, Prometheus text format (`docs/transport/metrics.md`) |
//! | `GET /snapshot` | the [`Snapshot`](crate::metrics::Snapshot) JSON: every metric plus each connection's stats |
//! | `GET /carrier` | `{"accepting":"both"}` |
//! | `POST /carrier` | body `mxp`, `quic` or `both` (or `{"carrier":"quic"}`): flips the switch, answers the new status |
//! | `POST /drain?timeout=30s` | drains every carrier that is not accepting, with that deadline, answers the new status |
//! | `GET /capture` | the packet capture's [`CaptureStatus`](crate::capture::CaptureStatus) JSON |
//! | `POST /capture/start?out=FILE.pcap&max_bytes=N` | starts a packet capture into a new file in the capture directory ([`AdminOptions::capture_dir`]; a relative name is relative to it, and a path outside it or through `..` is refused with 400; `max_bytes` defaults to [`DEFAULT_MAX_BYTES`]), answers the status |
//! | `POST /capture/stop` | stops it once everything is written, answers the [`CaptureSummary`](crate::capture::CaptureSummary) |
//! | `GET /log` | `{"filter":"info"}`: the log filter in force (nodes started with [`serve_with_log`]) |
//! | `POST /log` | body: `tracing` filter directives, e.g. `info,mxp_proto::handshake=debug`; puts them in force at once, answers `{"filter":…,"previous":…}` |
//!
//! It listens on loopback unless told otherwise, and refuses to listen
//! anywhere else without a bearer token: whoever can reach it can stop a
//! node from taking new sessions. Every refusal is a 4xx status with one
//! line of text naming what was wrong, so `mxp admin` can print it as is.
//!
//! [`request`] is the matching client, small enough for the command line.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::capture::{CaptureError, DEFAULT_MAX_BYTES};
pub use crate::log_filter::LogFilter;
use crate::{Carrier, Carriers, Endpoint, Status};

/// Longest drain deadline a request may ask for, as for every duration in
/// the config file: far beyond any sensible drain, and it keeps deadline
/// arithmetic from overflowing.
pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Requests carry a carrier name at most; anything large is a mistake or
/// an attack.
const BODY_LIMIT: usize = 4096;

/// A running admin endpoint. It stops when this handle is dropped (or
/// [`close`](Self::close)d), so its lifetime can be tied to the node's.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

#[derive(Debug)]
struct Shared {
    endpoint: Endpoint,
    token: Option<String>,
    log: Option<LogFilter>,
    /// Where captures may be written (absolute, symlinks resolved).
    capture_dir: PathBuf,
}

/// How an admin endpoint is set up beyond its address and node.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct AdminOptions {
    /// Bearer token every request but `/healthz` must carry (see [`serve`]).
    pub token: Option<String>,
    /// Lets `GET|POST /log` read and change the process's log filter.
    pub log: Option<LogFilter>,
    /// The directory `POST /capture/start` writes into; a file anywhere
    /// else is refused, so a caller of the admin endpoint cannot make a
    /// node (perhaps running as root) create files where it likes.
    /// `None`: the working directory at start.
    pub capture_dir: Option<PathBuf>,
}

/// Starts the admin endpoint for `endpoint` on `addr` (port 0 picks one).
///
/// `token`, when set, must come with every request but `/healthz` as
/// `Authorization: Bearer TOKEN`. Without one the endpoint only listens on
/// a loopback address: an address reachable from other hosts without a
/// token is refused with [`io::ErrorKind::InvalidInput`], as is an empty
/// token, before anything is bound.
pub async fn serve(
    addr: SocketAddr,
    endpoint: Endpoint,
    token: Option<String>,
) -> io::Result<AdminServer> {
    let options = AdminOptions {
        token,
        ..AdminOptions::default()
    };
    serve_with(addr, endpoint, options).await
}

/// [`serve`], and `GET|POST /log` read and change the process's log filter
/// through `log`.
pub async fn serve_with_log(
    addr: SocketAddr,
    endpoint: Endpoint,
    token: Option<String>,
    log: LogFilter,
) -> io::Result<AdminServer> {
    let options = AdminOptions {
        token,
        log: Some(log),
        ..AdminOptions::default()
    };
    serve_with(addr, endpoint, options).await
}

/// [`serve`] with every option. A capture directory that does not exist
/// is refused with [`io::ErrorKind::NotFound`] before anything is bound.
pub async fn serve_with(
    addr: SocketAddr,
    endpoint: Endpoint,
    options: AdminOptions,
) -> io::Result<AdminServer> {
    let AdminOptions {
        token,
        log,
        capture_dir,
    } = options;
    check_exposure(addr, token.as_deref())?;
    let capture_dir = match capture_dir {
        Some(dir) => dir,
        None => std::env::current_dir()?,
    };
    let capture_dir = capture_dir.canonicalize().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("capture directory {}: {e}", capture_dir.display()),
        )
    })?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        endpoint,
        token,
        log,
        capture_dir,
    });
    let router = router(shared.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    info!(%local_addr, token = shared.token.is_some(), "admin endpoint started");
    Ok(AdminServer {
        local_addr,
        stop: Some(stop),
        task: Some(task),
    })
}

/// Whether the endpoint may listen on `addr` with `token`: an empty token
/// protects nothing, and no token is only safe on loopback.
fn check_exposure(addr: SocketAddr, token: Option<&str>) -> io::Result<()> {
    match token {
        Some(t) if t.trim().is_empty() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the admin token is empty",
        )),
        None if !addr.ip().is_loopback() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "admin endpoint {addr} is not a loopback address: \
                 it needs a token (--admin-token or node.admin_token) to listen there"
            ),
        )),
        _ => Ok(()),
    }
}

impl AdminServer {
    /// Where the endpoint listens (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops listening and waits for requests in progress to be answered.
    pub async fn close(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "admin endpoint failed"),
                Err(e) => warn!(error = %e, "admin endpoint task failed"),
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Refuses a switch that would leave a node accepting nothing: `quic` on
/// a node without a QUIC listener.
pub fn check_switch(endpoint: &Endpoint, carriers: Carriers) -> Result<(), String> {
    if !carriers.mxp && endpoint.quic_addr().is_none() {
        return Err(format!(
            "carrier: this node has no QUIC carrier (quic_listen is off), \
             so {carriers} would refuse every new session"
        ));
    }
    Ok(())
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/status", get(get_status))
        .route("/metrics", get(get_metrics))
        .route("/snapshot", get(get_snapshot))
        .route("/carrier", get(get_carrier).post(post_carrier))
        .route("/drain", post(post_drain))
        .route("/capture", get(get_capture))
        .route("/capture/start", post(post_capture_start))
        .route("/capture/stop", post(post_capture_stop))
        .route("/log", get(get_log).post(post_log))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(shared.clone(), authorize))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(shared)
}

/// A one-line plain-text refusal.
fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let mut text = message.into();
    text.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

fn json(value: &impl Serialize) -> Response {
    match serde_json::to_string(value) {
        // One line, ended, so that curl output and logs stay readable.
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text + "\n").into_response(),
        Err(e) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {e}"),
        ),
    }
}

async fn authorize(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let Some(token) = shared.token.as_deref() else {
        return next.run(request).await;
    };
    // Health checks come from probes that hold no secrets, and say nothing.
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let problem = match given {
        None => "missing bearer token: send Authorization: Bearer TOKEN (mxp admin --token)",
        Some(given) if bool::from(given.as_bytes().ct_eq(token.as_bytes())) => {
            return next.run(request).await;
        }
        Some(_) => "wrong bearer token",
    };
    warn!(
        path = request.uri().path(),
        problem, "admin request refused"
    );
    let mut response = refuse(StatusCode::UNAUTHORIZED, problem);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn not_found(uri: Uri) -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        format!(
            "no such path {}: use /healthz, /status, /metrics, /snapshot, /carrier, /drain, \
             /capture, /capture/start, /capture/stop or /log",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let allowed = match uri.path() {
        "/carrier" | "/log" => "GET or POST",
        "/drain" | "/capture/start" | "/capture/stop" => "POST",
        _ => "GET",
    };
    let mut response = refuse(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {method} not allowed on {}: use {allowed}",
            uri.path()
        ),
    );
    let allow = allowed.replace(" or ", ", ");
    if let Ok(v) = HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, v);
    }
    response
}

async fn get_metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::render(&shared.endpoint),
    )
        .into_response()
}

async fn get_snapshot(State(shared): State<Arc<Shared>>) -> Response {
    json(&shared.endpoint.snapshot())
}

async fn get_status(State(shared): State<Arc<Shared>>) -> Response {
    json(&shared.endpoint.status())
}

async fn get_carrier(State(shared): State<Arc<Shared>>) -> Response {
    #[derive(Serialize)]
    struct Accepting {
        accepting: &'static str,
    }
    json(&Accepting {
        accepting: shared.endpoint.carriers().as_str(),
    })
}

/// The answer to a switch: the new status, and what was accepted before.
#[derive(Serialize)]
struct Switched {
    previous: &'static str,
    #[serde(flatten)]
    status: Status,
}

async fn post_carrier(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(problem) = query_params(query.as_deref(), &[]) {
        return refuse(StatusCode::BAD_REQUEST, problem);
    }
    let carriers = match parse_carrier_body(&headers, &body) {
        Ok(c) => c,
        Err(problem) => return refuse(StatusCode::BAD_REQUEST, problem),
    };
    if let Err(problem) = check_switch(&shared.endpoint, carriers) {
        return refuse(StatusCode::CONFLICT, problem);
    }
    let before = shared.endpoint.carriers();
    shared.endpoint.set_carriers(carriers);
    info!(from = %before, to = %carriers, "carrier switch by the admin endpoint");
    json(&Switched {
        previous: before.as_str(),
        status: shared.endpoint.status(),
    })
}

/// The log filter in force, and the one it replaced.
#[derive(Serialize)]
struct Filter {
    filter: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous: Option<String>,
}

/// The answer of `/log` on an endpoint started without a [`LogFilter`].
fn fixed_log_filter() -> Response {
    refuse(
        StatusCode::NOT_IMPLEMENTED,
        "this process's log filter cannot be changed at runtime (the admin endpoint was started without one)",
    )
}

async fn get_log(State(shared): State<Arc<Shared>>) -> Response {
    match &shared.log {
        Some(log) => json(&Filter {
            filter: log.current(),
            previous: None,
        }),
        None => fixed_log_filter(),
    }
}

async fn post_log(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    if let Err(problem) = query_params(query.as_deref(), &[]) {
        return refuse(StatusCode::BAD_REQUEST, problem);
    }
    let Some(log) = &shared.log else {
        return fixed_log_filter();
    };
    let Ok(filter) = std::str::from_utf8(&body).map(str::trim) else {
        return refuse(StatusCode::BAD_REQUEST, "log filter: not valid UTF-8");
    };
    match log.set(filter) {
        Ok(previous) => {
            // At warn, so the change is on record under any filter but
            // error or off.
            warn!(%previous, %filter, "log filter changed by the admin endpoint");
            json(&Filter {
                filter: filter.to_owned(),
                previous: Some(previous),
            })
        }
        Err(problem) => refuse(StatusCode::BAD_REQUEST, problem),
    }
}

/// `mxp`, `quic` or `both`, as plain text or `{"carrier": "..."}`.
fn parse_carrier_body(headers: &HeaderMap, body: &[u8]) -> Result<Carriers, String> {
    const EXPECTED: &str = r#"expected mxp, quic or both (plain text, or JSON {"carrier":"quic"})"#;
    let text = std::str::from_utf8(body)
        .map_err(|_| format!("body: not UTF-8; {EXPECTED}"))?
        .trim();
    let is_json = text.starts_with('{')
        || headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
    let name = if is_json {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("body: invalid JSON ({e}); {EXPECTED}"))?;
        let object = value
            .as_object()
            .ok_or_else(|| format!("body: {EXPECTED}, got {text}"))?;
        if let Some(other) = object.keys().find(|k| *k != "carrier") {
            return Err(format!("body: unknown field {other:?}; {EXPECTED}"));
        }
        match object.get("carrier") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => return Err(format!("body: carrier must be a string, got {other}")),
            None => return Err(format!("body: no \"carrier\" field; {EXPECTED}")),
        }
    } else if text.is_empty() {
        return Err(format!("body: empty; {EXPECTED}"));
    } else {
        text.to_owned()
    };
    name.parse::<Carriers>()
        .map_err(|e| format!("carrier: {e}"))
}

/// The answer to a drain request: the new status, and which carriers the
/// new deadline applies to.
#[derive(Serialize)]
struct Drained {
    drained: Vec<Carrier>,
    timeout_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'static str>,
    #[serde(flatten)]
    status: Status,
}

async fn post_drain(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let params = match query_params(query.as_deref(), &["timeout"]) {
        Ok(p) => p,
        Err(problem) => return refuse(StatusCode::BAD_REQUEST, problem),
    };
    let timeout = match params.iter().find(|(k, _)| k == "timeout") {
        Some((_, text)) => match parse_duration(text) {
            Ok(d) if d > MAX_DRAIN_TIMEOUT => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("timeout: must be at most 24h, got {text:?}"),
                );
            }
            Ok(d) => d,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("timeout: expected a duration like \"30s\", got {text:?} ({e})"),
                );
            }
        },
        None => shared.endpoint.drain_timeout(),
    };
    let drained = shared.endpoint.drain_all(timeout);
    let note = if drained.is_empty() {
        Some("nothing to drain: every carrier accepts new sessions (switch one off first)")
    } else {
        let carriers: Vec<&str> = drained.iter().map(|c| c.as_str()).collect();
        info!(carriers = %carriers.join(", "), ?timeout, "drain by the admin endpoint");
        None
    };
    json(&Drained {
        drained,
        timeout_s: timeout.as_secs_f64(),
        note,
        status: shared.endpoint.status(),
    })
}

async fn get_capture(State(shared): State<Arc<Shared>>) -> Response {
    json(&shared.endpoint.capture_status())
}

const CAPTURE_USAGE: &str = "POST /capture/start?out=FILE.pcap[&max_bytes=N]";

async fn post_capture_start(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
) -> Response {
    let params = match query_params(query.as_deref(), &["out", "max_bytes"]) {
        Ok(p) => p,
        Err(problem) => return refuse(StatusCode::BAD_REQUEST, problem),
    };
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let out = match param("out").map(|o| o.trim()) {
        Some(out) if !out.is_empty() => out,
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("out: missing: name the file to write, {CAPTURE_USAGE}"),
            );
        }
    };
    let max_bytes = match param("max_bytes") {
        None => DEFAULT_MAX_BYTES,
        Some(text) => match parse_bytes(text) {
            Some(n) => n,
            None => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("max_bytes: expected a number of bytes, got {text:?}"),
                );
            }
        },
    };
    let path = match within(&shared.capture_dir, Path::new(out)) {
        Ok(path) => path,
        Err(problem) => return refuse(StatusCode::BAD_REQUEST, format!("out: {problem}")),
    };
    match shared.endpoint.start_capture(&path, max_bytes) {
        Ok(()) => {
            info!(path = %path.display(), max_bytes, "packet capture started by the admin endpoint");
            json(&shared.endpoint.capture_status())
        }
        Err(e) => {
            let (status, what) = match e {
                CaptureError::AlreadyRunning { .. } => (StatusCode::CONFLICT, "capture"),
                CaptureError::Exists { .. } => (StatusCode::CONFLICT, "out"),
                CaptureError::Create { .. } => (StatusCode::BAD_REQUEST, "out"),
                CaptureError::LimitTooSmall(_) => (StatusCode::BAD_REQUEST, "max_bytes"),
                CaptureError::Writer(_) => (StatusCode::INTERNAL_SERVER_ERROR, "capture"),
                CaptureError::Unsupported => (StatusCode::NOT_IMPLEMENTED, "capture"),
            };
            refuse(status, format!("{what}: {e}"))
        }
    }
}

/// Where `out` names a file inside `dir` (absolute, symlinks resolved):
/// relative to `dir`, or absolute within it, never through `..`, and its
/// directory must exist.
fn within(dir: &Path, out: &Path) -> Result<PathBuf, String> {
    let outside = || {
        format!(
            "{} is outside the capture directory {} (captures stay in node.capture_dir)",
            out.display(),
            dir.display()
        )
    };
    if out
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("{} contains \"..\"; {}", out.display(), outside()));
    }
    let path = dir.join(out);
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(format!("{}: not a file name", out.display()));
    };
    let parent = parent
        .canonicalize()
        .map_err(|e| format!("{}: its directory: {e}", path.display()))?;
    if !parent.starts_with(dir) {
        return Err(outside());
    }
    Ok(parent.join(name))
}

/// A byte count: digits, with `_` allowed between them as in the config
/// file.
fn parse_bytes(text: &str) -> Option<u64> {
    let digits: String = text.trim().chars().filter(|&c| c != '_').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

async fn post_capture_stop(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(problem) = query_params(query.as_deref(), &[]) {
        return refuse(StatusCode::BAD_REQUEST, problem);
    }
    // Stopping waits for the writer to finish the file: not on a worker
    // the node's drivers may need.
    let endpoint = shared.endpoint.clone();
    match tokio::task::spawn_blocking(move || endpoint.stop_capture()).await {
        Ok(Some(summary)) => json(&summary),
        Ok(None) => refuse(
            StatusCode::CONFLICT,
            format!("no packet capture is running (start one: {CAPTURE_USAGE})"),
        ),
        Err(e) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stopping the capture failed: {e}"),
        ),
    }
}

/// Splits a query string into decoded pairs, refusing unknown, repeated or
/// undecodable parameters by name.
fn query_params(query: Option<&str>, known: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut seen = HashSet::new();
    let mut pairs = Vec::new();
    for part in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        let key = percent_decode(key).ok_or_else(|| format!("query: bad encoding in {part:?}"))?;
        let value =
            percent_decode(value).ok_or_else(|| format!("query: bad encoding in {part:?}"))?;
        if !known.contains(&key.as_str()) {
            return Err(match known {
                [] => format!("query: unknown parameter {key:?} (this path takes none)"),
                _ => format!(
                    "query: unknown parameter {key:?} (expected {})",
                    known.join(", ")
                ),
            });
        }
        if !seen.insert(key.clone()) {
            return Err(format!("query: {key} given twice"));
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// `path?key=value&…` for [`request`], with every key and value
/// percent-encoded.
pub fn with_query(path: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = path.to_owned();
    for (i, (key, value)) in pairs.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(&percent_encode(key));
        out.push('=');
        out.push_str(&percent_encode(value));
    }
    out
}

/// Escapes everything but unreserved characters, for query values.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Parses durations like `50us`, `2ms`, `1s`, `5m`: the one syntax of the
/// command line, the config file and the admin endpoint. Hidden: shared
/// with the `mxp` command's crate so the syntax cannot drift, not part of
/// the library's API.
#[doc(hidden)]
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("missing unit in {s:?} (use us, ms, s or m)"))?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("not a number: {num:?}"))?;
    let scale = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?} (use us, ms, s or m)"
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| e.to_string())
}

/// Sends one request to an admin endpoint and returns the HTTP status and
/// body. `Err` means no answer came (nothing listens, the connection
/// broke, the answer was not HTTP): a different failure, for the caller,
/// from an answer that refuses the request. The caller bounds the wait.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("invalid HTTP method {method:?}"))?;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let driver = tokio::spawn(connection);
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(header::HOST, addr.to_string());
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if body.is_some() {
        builder = builder.header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
    }
    let request = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
        .map_err(|e| format!("invalid request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{addr}: reading the answer: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_needs_a_token_off_loopback() {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let lo6: SocketAddr = "[::1]:0".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9100".parse().unwrap();
        assert!(check_exposure(lo, None).is_ok());
        assert!(check_exposure(lo6, None).is_ok());
        assert!(check_exposure(any, Some("s3cret")).is_ok());
        let e = check_exposure(any, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("0.0.0.0:9100"), "{e}");
        assert!(check_exposure(lo, Some(" ")).is_err());
    }

    #[test]
    fn carrier_bodies_as_text_or_json() {
        let h = HeaderMap::new();
        assert_eq!(parse_carrier_body(&h, b"quic\n"), Ok(Carriers::QUIC));
        assert_eq!(parse_carrier_body(&h, b"both"), Ok(Carriers::BOTH));
        assert_eq!(
            parse_carrier_body(&h, br#"{"carrier":"mxp"}"#),
            Ok(Carriers::MXP)
        );
        for (bad, names) in [
            (&b""[..], "body: empty"),
            (b"tcp", "carrier: unknown carrier setting \"tcp\""),
            (b"{\"carrier\":1}", "carrier must be a string"),
            (b"{\"mode\":\"quic\"}", "unknown field \"mode\""),
            (b"{oops", "invalid JSON"),
            (b"\xff", "not UTF-8"),
        ] {
            let e = parse_carrier_body(&h, bad).unwrap_err();
            assert!(e.contains(names), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn byte_counts_take_digits_and_underscores_only() {
        assert_eq!(parse_bytes("1_000_000"), Some(1_000_000));
        assert_eq!(parse_bytes(" 24 "), Some(24));
        for bad in ["", "_", "10MB", "-1", "1e6", "99999999999999999999999"] {
            assert_eq!(parse_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn queries_decode_and_refuse_unknown_parameters() {
        assert_eq!(
            query_params(Some("timeout=1.5%C2%B5s"), &["timeout"]),
            Ok(vec![("timeout".into(), "1.5µs".into())])
        );
        assert_eq!(query_params(None, &["timeout"]), Ok(vec![]));
        assert!(
            query_params(Some("timeout=1s&timeout=2s"), &["timeout"])
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            query_params(Some("deadline=1s"), &["timeout"])
                .unwrap_err()
                .contains("unknown parameter \"deadline\"")
        );
        assert!(query_params(Some("timeout=%zz"), &["timeout"]).is_err());
        assert_eq!(
            percent_decode(&percent_encode("30s µs &=")),
            Some("30s µs &=".into())
        );
        let target = with_query(
            "/capture/start",
            &[("out", "/tmp/a b&c"), ("max_bytes", "9")],
        );
        assert_eq!(target, "/capture/start?out=%2Ftmp%2Fa%20b%26c&max_bytes=9");
        let (_, query) = target.split_once('?').unwrap();
        let params = query_params(Some(query), &["out", "max_bytes"]).unwrap();
        assert_eq!(params[0], ("out".to_owned(), "/tmp/a b&c".to_owned()));
        assert_eq!(with_query("/drain", &[]), "/drain");
    }
}
