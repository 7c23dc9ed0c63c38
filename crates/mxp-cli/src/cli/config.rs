//! The `mxp serve` configuration file.
//!
//! Operators write TOML with three tables, `[node]`, `[server]` and
//! `[transport]` (documented key by key in `docs/transport/config.md`, with a
//! complete example in `docs/transport/mxp.example.toml`). Every key is
//! optional: the defaults are the protocol core's own `Default` impls, so a
//! default changed in the core changes here too and is never restated.
//!
//! The file is read into a generic TOML tree and walked by hand rather than
//! through `#[derive(Deserialize)]`: serde's errors do not say which key
//! they are about, and a node must refuse a bad file with one line naming the
//! key (`transport.idle_timeout: expected a duration like "30s", got "30x"`).
//! Unknown keys are rejected, as `deny_unknown_fields` would, so a misspelt
//! key cannot silently leave a default in place.

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mxp::Carriers;
use mxp::proto::{Band, PublicKey, RetryPolicy, ServerConfig, TransportConfig};
use thiserror::Error;
use toml::{Table, Value};

use super::{CliError, logging, parse_duration};

/// Everything `mxp serve` needs to start a node, after the file (if any)
/// has been applied over the defaults.
#[derive(Debug, Clone)]
pub(crate) struct NodeConfig {
    /// Where the node listens. Loopback by default, so a node started without
    /// thought is not reachable from the network.
    pub listen: SocketAddr,
    /// The node's secret key file (`mxp keygen` writes one). `None`: generate
    /// an ephemeral key at start-up, which clients cannot pin across restarts.
    /// A relative path in a config file is relative to that file's directory.
    pub key: Option<PathBuf>,
    /// `tracing` filter directives from the file. `None` when the file does
    /// not set one, so `RUST_LOG` (and then `info`) can apply; see
    /// [`logging::init`] for the precedence.
    pub log: Option<String>,
    /// Where the node listens for the QUIC carrier, the fallback clients
    /// use when MXP is refused or unreachable.
    pub quic_listen: QuicListen,
    /// Where the admin HTTP endpoint listens. `None`: no admin endpoint, so
    /// a node nobody asked to be controllable is not.
    pub admin: Option<SocketAddr>,
    /// Bearer token the admin endpoint demands. Required for an admin
    /// address off loopback, where anyone who reaches it could stop the node
    /// taking new sessions.
    pub admin_token: Option<String>,
    /// Which carriers accept new sessions at start (and after a reload
    /// that changes it).
    pub carriers: Carriers,
    /// How long connections on a carrier switched off may finish their
    /// work before they are closed.
    pub drain_timeout: Duration,
    /// A packet capture file to record into from start-up, for a node whose
    /// trouble shows before anyone could start one at runtime. A relative
    /// path in a config file is relative to that file's directory.
    pub capture: Option<PathBuf>,
    /// Size limit of that capture file, header included.
    pub capture_max_bytes: u64,
    /// Where the admin endpoint's `POST /capture/start` may write; `None`:
    /// the node's working directory. Relative to the config file's
    /// directory.
    pub capture_dir: Option<PathBuf>,
    /// Settings for every connection of the node.
    pub transport: TransportConfig,
    /// Admission policy: allow-list, retry, handshake rate limit.
    pub server: ServerConfig,
}

/// Where the QUIC carrier listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuicListen {
    /// The MXP address with the port one up (port 0 stays 0): where a
    /// client given only the MXP address looks first.
    NextPort,
    /// This address.
    At(SocketAddr),
    /// No QUIC carrier: the node cannot be rolled back to QUIC.
    Off,
}

impl QuicListen {
    /// The QUIC address for a node whose MXP address is `listen`; `Err`
    /// when the port one up does not exist.
    pub(crate) fn resolve(self, listen: SocketAddr) -> Result<Option<SocketAddr>, String> {
        match self {
            QuicListen::Off => Ok(None),
            QuicListen::At(addr) => Ok(Some(addr)),
            QuicListen::NextPort if listen.port() == 0 => Ok(Some(listen)),
            QuicListen::NextPort => match listen.port().checked_add(1) {
                Some(port) => Ok(Some(SocketAddr::new(listen.ip(), port))),
                None => Err(format!(
                    "the QUIC carrier goes on the port after {listen}, which does not exist: \
                     set --quic-listen ADDR|off (or node.quic_listen)"
                )),
            },
        }
    }
}

impl std::str::FromStr for QuicListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(QuicListen::Off),
            other => other.parse().map(QuicListen::At).map_err(|_| {
                format!("expected an address like \"127.0.0.1:9001\" or \"off\", got {other:?}")
            }),
        }
    }
}

/// The drain timeout when none is configured.
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = mxp::DEFAULT_DRAIN_TIMEOUT;

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9000)),
            key: None,
            log: None,
            quic_listen: QuicListen::NextPort,
            admin: None,
            admin_token: None,
            carriers: Carriers::BOTH,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            capture: None,
            capture_max_bytes: mxp::capture::DEFAULT_MAX_BYTES,
            capture_dir: None,
            transport: TransportConfig::default(),
            server: ServerConfig::default(),
        }
    }
}

/// Why a config file was refused. Displays as one line naming the file and,
/// where there is one, the key and the problem, because that line is all an
/// operator sees when `mxp serve` exits with code 2.
#[derive(Debug, Error)]
pub(crate) enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("config {}: cannot read: {source}", path.display())]
    Read {
        /// The file named by the operator.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config {}: {}invalid TOML: {message}", path.display(), Position(*at))]
    Syntax {
        /// The file named by the operator.
        path: PathBuf,
        /// One-based line and column of the error, when the parser knows it.
        at: Option<(usize, usize)>,
        /// What the TOML parser said.
        message: String,
    },
    /// Valid TOML, but a key is unknown, has the wrong type or is out of range.
    #[error("config {}: {key}: {problem}", path.display())]
    Invalid {
        /// The file named by the operator.
        path: PathBuf,
        /// Dotted key path, e.g. `transport.idle_timeout` or
        /// `server.allowed_clients[2]`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// A bad config file is bad input: nothing was started, exit code 2.
impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::Usage(e.to_string())
    }
}

/// Renders an optional syntax-error position as a message prefix.
struct Position(Option<(usize, usize)>);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((line, column)) => write!(f, "line {line}, column {column}: "),
            None => Ok(()),
        }
    }
}

/// Reads the node configuration from `path`, or returns the defaults when
/// there is no file, so `mxp serve` with no arguments needs no config.
pub(crate) fn load(path: Option<&Path>) -> Result<NodeConfig, ConfigError> {
    let Some(path) = path else {
        return Ok(NodeConfig::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path).map(|(config, _keys)| config)
}

/// Longest duration any key accepts. Far beyond any sensible setting, and
/// it keeps `now + duration` from overflowing an `Instant`.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// Durations that must not be zero.
const POSITIVE: RangeInclusive<Duration> =
    RangeInclusive::new(Duration::from_nanos(1), MAX_DURATION);
/// A drain may be immediate (`"0s"`: close at once).
const DRAIN: RangeInclusive<Duration> = RangeInclusive::new(Duration::ZERO, MAX_DURATION);
/// The handshake announces `max_ack_delay` in microseconds below 2^24;
/// a peer refuses anything larger.
const ACK_DELAY: RangeInclusive<Duration> =
    RangeInclusive::new(Duration::ZERO, Duration::from_micros((1 << 24) - 1));
/// Flow-control credit is a 62-bit varint on the wire.
const WINDOW: RangeInclusive<u64> = RangeInclusive::new(1, (1 << 62) - 1);
/// A peer refuses stream limits above 2^60 (stream ids are 62-bit).
const STREAMS: RangeInclusive<u64> = RangeInclusive::new(1, 1 << 60);

/// Parses config text; `path` names the file in errors and anchors relative
/// key paths. Also returns every key path the schema knows (for the tests
/// that keep the documentation complete).
fn parse(text: &str, path: &Path) -> Result<(NodeConfig, Vec<String>), ConfigError> {
    let doc: Table = toml::from_str(text).map_err(|e| syntax_error(text, path, &e))?;
    let mut config = NodeConfig::default();
    let mut keys = Vec::new();
    let mut top = Section::new(path, String::new(), Some(&doc));

    let mut node = top.section("node")?;
    if let Some(listen) = node.string("listen")? {
        config.listen = listen.parse().map_err(|_| {
            node.error(
                "listen",
                format!("expected an address like \"127.0.0.1:9000\", got {listen:?}"),
            )
        })?;
    }
    if let Some(key) = node.string("key")? {
        if key.is_empty() {
            return Err(node.error(
                "key",
                "empty path (leave the key out to use an ephemeral key)",
            ));
        }
        let base = path.parent().unwrap_or(Path::new(""));
        config.key = Some(base.join(key));
    }
    if let Some(log) = node.string("log")? {
        logging::parse_filter(log).map_err(|problem| node.error("log", problem))?;
        config.log = Some(log.to_owned());
    }
    if let Some(quic) = node.string("quic_listen")? {
        config.quic_listen = quic
            .parse()
            .map_err(|problem| node.error("quic_listen", problem))?;
    }
    if let Some(admin) = node.string("admin")? {
        config.admin = Some(admin.parse().map_err(|_| {
            node.error(
                "admin",
                format!("expected an address like \"127.0.0.1:9100\", got {admin:?}"),
            )
        })?);
    }
    if let Some(token) = node.string("admin_token")? {
        if token.trim().is_empty() {
            return Err(node.error(
                "admin_token",
                "empty token (leave the key out for a loopback admin endpoint without one)",
            ));
        }
        config.admin_token = Some(token.to_owned());
    }
    if let Some(carriers) = node.string("carriers")? {
        config.carriers = carriers.parse().map_err(|_| {
            node.error(
                "carriers",
                format!("expected \"mxp\", \"quic\" or \"both\", got {carriers:?}"),
            )
        })?;
    }
    node.duration(&mut config.drain_timeout, "drain_timeout", DRAIN)?;
    if let Some(capture) = node.string("capture")? {
        if capture.is_empty() {
            return Err(node.error(
                "capture",
                "empty path (leave the key out to start without a packet capture)",
            ));
        }
        let base = path.parent().unwrap_or(Path::new(""));
        config.capture = Some(base.join(capture));
    }
    node.int(
        &mut config.capture_max_bytes,
        "capture_max_bytes",
        mxp::capture::MIN_MAX_BYTES..=u64::MAX,
    )?;
    if let Some(dir) = node.string("capture_dir")? {
        if dir.is_empty() {
            return Err(node.error(
                "capture_dir",
                "empty path (leave the key out for the node's working directory)",
            ));
        }
        let base = path.parent().unwrap_or(Path::new(""));
        config.capture_dir = Some(base.join(dir));
    }
    keys.extend(node.finish()?);

    let mut server = top.section("server")?;
    read_server(&mut server, &mut config.server)?;
    keys.extend(server.finish()?);

    let mut transport = top.section("transport")?;
    read_transport(&mut transport, &mut config.transport)?;
    keys.extend(transport.finish()?);

    top.finish_top(&keys)?;
    Ok((config, keys))
}

fn read_server(s: &mut Section<'_>, c: &mut ServerConfig) -> Result<(), ConfigError> {
    if let Some(value) = s.get("allowed_clients") {
        c.allowed_clients = Some(allowed_clients(s, value)?);
    }
    if let Some(retry) = s.string("retry")? {
        c.retry = match retry {
            "never" => RetryPolicy::Never,
            "under-load" => RetryPolicy::UnderLoad,
            "always" => RetryPolicy::Always,
            other => {
                return Err(s.error(
                    "retry",
                    format!("expected \"never\", \"under-load\" or \"always\", got {other:?}"),
                ));
            }
        };
    }
    s.int(&mut c.handshake_rate, "handshake_rate", 1..=u32::MAX)?;
    s.int(&mut c.handshake_burst, "handshake_burst", 1..=u32::MAX)?;
    s.int(&mut c.handshake_queue, "handshake_queue", 1..=65_536)?;
    s.int(&mut c.handshake_workers, "handshake_workers", 1..=256)?;
    s.int(
        &mut c.retry_pending_threshold,
        "retry_pending_threshold",
        0..=usize::MAX,
    )?;
    s.duration(&mut c.token_lifetime, "token_lifetime", POSITIVE)?;
    s.duration(&mut c.max_clock_skew, "max_clock_skew", POSITIVE)?;
    s.int(&mut c.max_connections, "max_connections", 1..=usize::MAX)?;
    s.int(
        &mut c.max_connections_per_address,
        "max_connections_per_address",
        1..=usize::MAX,
    )?;
    s.int(
        &mut c.max_connections_per_key,
        "max_connections_per_key",
        1..=usize::MAX,
    )?;
    Ok(())
}

fn allowed_clients(s: &Section<'_>, value: &Value) -> Result<HashSet<PublicKey>, ConfigError> {
    let Value::Array(entries) = value else {
        return Err(s.error(
            "allowed_clients",
            format!(
                "expected a list of public keys (64 hex digits each), got {}",
                describe(value)
            ),
        ));
    };
    if entries.is_empty() {
        return Err(s.error(
            "allowed_clients",
            "an empty list admits no client; leave the key out to admit any client",
        ));
    }
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let key = format!("allowed_clients[{i}]");
            match entry {
                Value::String(text) => text.parse().map_err(|e| s.error(&key, e)),
                other => Err(s.error(
                    &key,
                    format!(
                        "expected a public key (64 hex digits), got {}",
                        describe(other)
                    ),
                )),
            }
        })
        .collect()
}

fn read_transport(s: &mut Section<'_>, t: &mut TransportConfig) -> Result<(), ConfigError> {
    s.int(
        &mut t.max_udp_payload_size,
        "max_udp_payload_size",
        1200..=65527,
    )?;
    s.duration(&mut t.initial_rtt, "initial_rtt", POSITIVE)?;
    s.duration(&mut t.max_ack_delay, "max_ack_delay", ACK_DELAY)?;
    s.int(
        &mut t.ack_eliciting_threshold,
        "ack_eliciting_threshold",
        1..=u32::MAX,
    )?;
    s.duration(&mut t.timer_granularity, "timer_granularity", POSITIVE)?;
    s.int(&mut t.packet_threshold, "packet_threshold", 1..=u64::MAX)?;
    s.int(&mut t.initial_window, "initial_window", 1..=u64::MAX)?;
    s.bool(&mut t.pacing, "pacing")?;
    s.duration(&mut t.idle_timeout, "idle_timeout", POSITIVE)?;
    let mut keep_alive = Duration::ZERO;
    if s.duration(&mut keep_alive, "keep_alive_interval", POSITIVE)? {
        t.keep_alive_interval = Some(keep_alive);
    }
    s.duration(&mut t.handshake_timeout, "handshake_timeout", POSITIVE)?;
    s.int(
        &mut t.stream_receive_window,
        "stream_receive_window",
        WINDOW,
    )?;
    s.int(&mut t.receive_window, "receive_window", WINDOW)?;
    s.int(
        &mut t.max_concurrent_bidi_streams,
        "max_concurrent_bidi_streams",
        STREAMS,
    )?;
    s.int(
        &mut t.max_concurrent_uni_streams,
        "max_concurrent_uni_streams",
        STREAMS,
    )?;
    s.int(&mut t.max_datagram_size, "max_datagram_size", 0..=u16::MAX)?;
    s.int(
        &mut t.datagram_receive_buffer,
        "datagram_receive_buffer",
        1..=usize::MAX,
    )?;
    s.int(
        &mut t.datagram_send_buffer,
        "datagram_send_buffer",
        1..=usize::MAX,
    )?;
    s.int(
        &mut t.key_rotation.packets,
        "key_rotation_packets",
        1..=u64::MAX,
    )?;
    s.duration(
        &mut t.key_rotation.interval,
        "key_rotation_interval",
        POSITIVE,
    )?;
    s.int(&mut t.send_window, "send_window", WINDOW)?;
    s.int(
        &mut t.max_message_size,
        "max_message_size",
        1..=mxp::proto::message::MAX_PAYLOAD_LEN,
    )?;
    s.int(
        &mut t.peer_key_update_rate,
        "peer_key_update_rate",
        1..=u32::MAX,
    )?;
    s.int(
        &mut t.max_decrypt_failures,
        "max_decrypt_failures",
        1..=u64::MAX,
    )?;
    s.int(
        &mut t.max_acks_per_packet,
        "max_acks_per_packet",
        1..=u32::MAX,
    )?;
    let mut weights = s.section("band_weights")?;
    for band in Band::ALL {
        weights.int(
            &mut t.band_weights[band.index()],
            band.as_str(),
            1..=u32::MAX,
        )?;
    }
    let weight_keys = weights.finish()?;
    s.adopt(weight_keys);
    Ok(())
}

/// One TOML table being read: records every key the schema asks about, so
/// whatever is left over is an unknown key.
struct Section<'a> {
    file: &'a Path,
    /// Dotted path of this table; empty for the document itself.
    name: String,
    /// `None` when the table is absent from the file.
    table: Option<&'a Table>,
    /// Keys the schema asked about, as paths relative to this table.
    known: Vec<String>,
    /// Full paths of the keys of finished nested tables (schema listing only).
    nested: Vec<String>,
}

impl<'a> Section<'a> {
    fn new(file: &'a Path, name: String, table: Option<&'a Table>) -> Self {
        Section {
            file,
            name,
            table,
            known: Vec::new(),
            nested: Vec::new(),
        }
    }

    fn path(&self, key: &str) -> String {
        if self.name.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.name)
        }
    }

    fn error(&self, key: &str, problem: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            path: self.file.to_owned(),
            key: self.path(key),
            problem: problem.to_string(),
        }
    }

    /// The value of `key`, if the file sets it; marks the key as known.
    fn get(&mut self, key: &str) -> Option<&'a Value> {
        self.known.push(key.to_owned());
        self.table.and_then(|t| t.get(key))
    }

    /// A nested table (`[transport.band_weights]` or an inline table).
    fn section(&mut self, key: &str) -> Result<Section<'a>, ConfigError> {
        let table = match self.get(key) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(other) => {
                return Err(self.error(key, format!("expected a table, got {}", describe(other))));
            }
        };
        Ok(Section::new(self.file, self.path(key), table))
    }

    /// Keeps the key paths of a finished nested table, so the full schema
    /// can be listed.
    fn adopt(&mut self, nested: Vec<String>) {
        self.nested.extend(nested);
    }

    fn string(&mut self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => {
                Err(self.error(key, format!("expected a string, got {}", describe(other))))
            }
        }
    }

    fn bool(&mut self, target: &mut bool, key: &str) -> Result<(), ConfigError> {
        match self.get(key) {
            None => {}
            Some(Value::Boolean(b)) => *target = *b,
            Some(other) => {
                return Err(self.error(
                    key,
                    format!("expected true or false, got {}", describe(other)),
                ));
            }
        }
        Ok(())
    }

    /// Overwrites `target` with an integer in `range`, if the file sets one.
    fn int<T>(
        &mut self,
        target: &mut T,
        key: &str,
        range: RangeInclusive<T>,
    ) -> Result<(), ConfigError>
    where
        T: TryFrom<i64> + PartialOrd + Copy + fmt::Display,
    {
        let value = match self.get(key) {
            None => return Ok(()),
            Some(Value::Integer(i)) => *i,
            Some(other) => {
                return Err(
                    self.error(key, format!("expected an integer, got {}", describe(other)))
                );
            }
        };
        let (min, max) = (*range.start(), *range.end());
        match T::try_from(value) {
            Ok(v) if range.contains(&v) => {
                *target = v;
                Ok(())
            }
            // Out of range, or does not even fit the type: it is below the
            // minimum exactly when it is negative or less than it.
            Ok(v) if v < min => {
                Err(self.error(key, format!("must be at least {min}, got {value}")))
            }
            Err(_) if value < 0 => {
                Err(self.error(key, format!("must be at least {min}, got {value}")))
            }
            _ => Err(self.error(key, format!("must be at most {max}, got {value}"))),
        }
    }

    /// Overwrites `target` with a duration in `range`, if the file sets one;
    /// returns whether it did.
    fn duration(
        &mut self,
        target: &mut Duration,
        key: &str,
        range: RangeInclusive<Duration>,
    ) -> Result<bool, ConfigError> {
        let text = match self.get(key) {
            None => return Ok(false),
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                return Err(self.error(
                    key,
                    format!("expected a duration like \"30s\", got {}", describe(other)),
                ));
            }
        };
        let d = parse_duration(text).map_err(|_| {
            self.error(
                key,
                format!("expected a duration like \"30s\", got {text:?}"),
            )
        })?;
        if d < *range.start() {
            // Every minimum in the schema is zero or "just above zero".
            return Err(self.error(key, format!("must be greater than zero, got {text:?}")));
        }
        if d > *range.end() {
            return Err(self.error(
                key,
                format!("must be at most {:?}, got {text:?}", range.end()),
            ));
        }
        *target = d;
        Ok(true)
    }

    /// Rejects keys the schema never asked about; returns the known keys as
    /// full paths.
    fn finish(self) -> Result<Vec<String>, ConfigError> {
        if let Some(table) = self.table {
            for key in table.keys() {
                if !self.known.iter().any(|k| k == key) {
                    let hint = match closest(key, &self.known) {
                        Some(near) => format!("unknown key (did you mean {near:?}?)"),
                        None => format!("unknown key; expected one of: {}", self.known.join(", ")),
                    };
                    return Err(self.error(key, hint));
                }
            }
        }
        let mut paths: Vec<String> = self.known.iter().map(|k| self.path(k)).collect();
        paths.extend(self.nested);
        Ok(paths)
    }

    /// `finish` for the document itself, which may only hold the three
    /// tables. A key that belongs in one of them gets pointed there.
    fn finish_top(self, schema: &[String]) -> Result<(), ConfigError> {
        let Some(table) = self.table else {
            return Ok(());
        };
        for (key, value) in table {
            if self.known.iter().any(|k| k == key) {
                continue;
            }
            let home = schema
                .iter()
                .find(|path| path.rsplit_once('.').is_some_and(|(_, leaf)| leaf == key));
            let problem = match home {
                Some(path) => {
                    let (table, _) = path.rsplit_once('.').unwrap_or_default();
                    format!("unknown top-level key; it belongs in the [{table}] table")
                }
                None => match (closest(key, &self.known), value.is_table()) {
                    (Some(near), true) => format!("unknown table (did you mean [{near}]?)"),
                    (None, true) => {
                        "unknown table; expected [node], [server] or [transport]".to_owned()
                    }
                    (_, false) => "unknown top-level key; keys go in the tables [node], \
                                   [server] and [transport]"
                        .to_owned(),
                },
            };
            return Err(self.error(key, problem));
        }
        Ok(())
    }
}

/// The known key nearest to a misspelt one, if it is near enough to be a
/// plausible typo.
fn closest<'k>(key: &str, known: &'k [String]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), k))
        .filter(|&(d, k)| d <= 2.max(k.len() / 4))
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k.as_str())
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// A value as an error message shows it: its TOML type and, for scalars,
/// the value itself.
fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {s:?}"),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Float(x) => format!("the number {x}"),
        Value::Boolean(b) => format!("{b}"),
        Value::Datetime(d) => format!("the date {d}"),
        Value::Array(_) => "a list".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

fn syntax_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map(|span| line_column(text, span.start));
    let mut message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(hint) = at.and_then(|(line, _)| quoting_hint(text, line)) {
        message.push_str(&hint);
    }
    ConfigError::Syntax {
        path: path.to_owned(),
        at,
        message,
    }
}

/// The commonest TOML mistake is an unquoted duration or address
/// (`idle_timeout = 30s`), which the parser reports as a bad number. If the
/// failing line has an unquoted value that is no number or boolean, suggest
/// the quoted form.
fn quoting_hint(text: &str, line: usize) -> Option<String> {
    let (key, value) = text.lines().nth(line - 1)?.split_once('=')?;
    let key = key.trim();
    let value = value.split('#').next()?.trim();
    let plain = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    };
    let unquoted = !value.is_empty()
        && !value.starts_with(['"', '\'', '[', '{'])
        && value.bytes().all(|b| b.is_ascii_graphic() && b != b'"')
        && !matches!(value, "true" | "false")
        && value.replace('_', "").parse::<f64>().is_err();
    (plain(key) && !key.is_empty() && unquoted)
        .then(|| format!(" (did you mean {key} = \"{value}\"?)"))
}

/// One-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../../docs/transport/mxp.example.toml");
    const DOCS: &str = include_str!("../../../../docs/transport/config.md");

    fn parse_at(text: &str) -> Result<NodeConfig, ConfigError> {
        parse(text, Path::new("/etc/mxp.toml")).map(|(c, _)| c)
    }

    fn error_of(text: &str) -> String {
        let e = parse_at(text).expect_err("config should be refused");
        let line = e.to_string();
        assert!(!line.contains('\n'), "error spans several lines: {line}");
        line
    }

    /// `TransportConfig` and `ServerConfig` have no `PartialEq`; their
    /// `Debug` output covers every field.
    fn same<T: fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    fn assert_defaults(c: &NodeConfig) {
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.key, None);
        assert_eq!(c.log, None);
        assert_node_defaults(c);
        assert!(same(&c.transport, &TransportConfig::default()));
        assert!(same(&c.server, &ServerConfig::default()));
    }

    /// The `[node]` keys beyond listen, key and log.
    fn assert_node_defaults(c: &NodeConfig) {
        assert_eq!(c.quic_listen, QuicListen::NextPort);
        assert_eq!(c.admin, None);
        assert_eq!(c.admin_token, None);
        assert_eq!(c.carriers, Carriers::BOTH);
        assert_eq!(c.drain_timeout, Duration::from_secs(300));
        assert_eq!(c.capture, None);
        assert_eq!(c.capture_max_bytes, 100 * 1024 * 1024);
    }

    #[test]
    fn no_file_and_empty_file_give_the_core_defaults() {
        assert_defaults(&load(None).unwrap());
        assert_defaults(&parse_at("").unwrap());
        assert_defaults(&parse_at("[node]\n[server]\n[transport]\n").unwrap());
    }

    #[test]
    fn a_full_file_sets_every_key() {
        let client = "11".repeat(32);
        let other = "ab".repeat(32);
        let text = format!(
            r#"
            [node]
            listen = "0.0.0.0:4433"
            key = "keys/node.key"
            log = "info,mxp_proto::handshake=debug"
            quic_listen = "0.0.0.0:4443"
            admin = "127.0.0.1:9100"
            admin_token = "s3cret"
            carriers = "quic"
            drain_timeout = "30s"

            [server]
            allowed_clients = ["{client}", "{other}"]
            retry = "always"
            handshake_rate = 500
            handshake_burst = 50
            retry_pending_threshold = 0
            token_lifetime = "5s"
            max_clock_skew = "30s"
            max_connections = 1_000

            [transport]
            max_udp_payload_size = 9000
            initial_rtt = "1ms"
            max_ack_delay = "50us"
            ack_eliciting_threshold = 4
            timer_granularity = "5us"
            packet_threshold = 5
            initial_window = 100_000
            pacing = false
            idle_timeout = "2m"
            keep_alive_interval = "5s"
            handshake_timeout = "3s"
            stream_receive_window = 65536
            receive_window = 1048576
            max_concurrent_bidi_streams = 10
            max_concurrent_uni_streams = 20
            max_datagram_size = 0
            datagram_receive_buffer = 4096
            datagram_send_buffer = 8192
            key_rotation_packets = 500
            key_rotation_interval = "10s"
            band_weights = {{ critical = 16, control = 3, streaming = 2, background = 1 }}
            "#
        );
        let c = parse_at(&text).unwrap();
        assert_eq!(c.listen, "0.0.0.0:4433".parse().unwrap());
        assert_eq!(c.key, Some(PathBuf::from("/etc/keys/node.key")));
        assert_eq!(c.log.as_deref(), Some("info,mxp_proto::handshake=debug"));
        assert_eq!(
            c.quic_listen,
            QuicListen::At("0.0.0.0:4443".parse().unwrap())
        );
        assert_eq!(c.admin, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.admin_token.as_deref(), Some("s3cret"));
        assert_eq!(c.carriers, Carriers::QUIC);
        assert_eq!(c.drain_timeout, Duration::from_secs(30));

        let s = &c.server;
        let allowed = s.allowed_clients.as_ref().unwrap();
        assert_eq!(allowed.len(), 2);
        assert!(allowed.contains(&PublicKey([0x11; 32])));
        assert!(allowed.contains(&PublicKey([0xab; 32])));
        assert_eq!(s.retry, RetryPolicy::Always);
        assert_eq!(s.handshake_rate, 500);
        assert_eq!(s.handshake_burst, 50);
        assert_eq!(s.retry_pending_threshold, 0);
        assert_eq!(s.token_lifetime, Duration::from_secs(5));
        assert_eq!(s.max_clock_skew, Duration::from_secs(30));
        assert_eq!(s.max_connections, 1000);

        let t = &c.transport;
        assert_eq!(t.max_udp_payload_size, 9000);
        assert_eq!(t.initial_rtt, Duration::from_millis(1));
        assert_eq!(t.max_ack_delay, Duration::from_micros(50));
        assert_eq!(t.ack_eliciting_threshold, 4);
        assert_eq!(t.timer_granularity, Duration::from_micros(5));
        assert_eq!(t.packet_threshold, 5);
        assert_eq!(t.initial_window, 100_000);
        assert!(!t.pacing);
        assert_eq!(t.idle_timeout, Duration::from_secs(120));
        assert_eq!(t.keep_alive_interval, Some(Duration::from_secs(5)));
        assert_eq!(t.handshake_timeout, Duration::from_secs(3));
        assert_eq!(t.stream_receive_window, 65536);
        assert_eq!(t.receive_window, 1 << 20);
        assert_eq!(t.max_concurrent_bidi_streams, 10);
        assert_eq!(t.max_concurrent_uni_streams, 20);
        assert_eq!(t.max_datagram_size, 0);
        assert_eq!(t.datagram_receive_buffer, 4096);
        assert_eq!(t.datagram_send_buffer, 8192);
        assert_eq!(t.key_rotation.packets, 500);
        assert_eq!(t.key_rotation.interval, Duration::from_secs(10));
        assert_eq!(t.band_weights, [16, 3, 2, 1]);
    }

    #[test]
    fn unset_keys_keep_their_defaults() {
        let c = parse_at("[transport]\nidle_timeout = \"1s\"\nband_weights = { control = 7 }\n")
            .unwrap();
        let mut expected = {
            let mut transport = TransportConfig::default();
            transport.idle_timeout = Duration::from_secs(1);
            transport
        };
        expected.band_weights[Band::Control.index()] = 7;
        assert!(same(&c.transport, &expected));
        assert!(same(&c.server, &ServerConfig::default()));
    }

    #[test]
    fn a_bad_duration_names_its_key() {
        assert_eq!(
            error_of("[transport]\nidle_timeout = \"30x\"\n"),
            r#"config /etc/mxp.toml: transport.idle_timeout: expected a duration like "30s", got "30x""#
        );
        assert_eq!(
            error_of("[transport]\nidle_timeout = 30\n"),
            r#"config /etc/mxp.toml: transport.idle_timeout: expected a duration like "30s", got the integer 30"#
        );
        let zero = error_of("[server]\ntoken_lifetime = \"0s\"\n");
        assert!(
            zero.ends_with("server.token_lifetime: must be greater than zero, got \"0s\""),
            "{zero}"
        );
        let keep_alive = error_of("[transport]\nkeep_alive_interval = \"0ms\"\n");
        assert!(
            keep_alive.contains("transport.keep_alive_interval: must be greater than zero"),
            "{keep_alive}"
        );
        let ack = error_of("[transport]\nmax_ack_delay = \"20s\"\n");
        assert!(
            ack.contains("transport.max_ack_delay: must be at most 16.777215s"),
            "{ack}"
        );
        let huge = error_of("[transport]\nidle_timeout = \"999999m\"\n");
        assert!(
            huge.contains("transport.idle_timeout: must be at most 86400s"),
            "{huge}"
        );
    }

    #[test]
    fn out_of_range_and_mistyped_integers_name_their_key() {
        let cases = [
            (
                "[transport]\nmax_udp_payload_size = 1000",
                "transport.max_udp_payload_size: must be at least 1200, got 1000",
            ),
            (
                "[transport]\nmax_udp_payload_size = 70000",
                "transport.max_udp_payload_size: must be at most 65527, got 70000",
            ),
            (
                "[transport]\nreceive_window = 0",
                "transport.receive_window: must be at least 1, got 0",
            ),
            (
                "[transport]\nstream_receive_window = -5",
                "transport.stream_receive_window: must be at least 1, got -5",
            ),
            (
                "[transport]\nmax_concurrent_uni_streams = 0",
                "transport.max_concurrent_uni_streams: must be at least 1, got 0",
            ),
            (
                "[transport]\nack_eliciting_threshold = 0",
                "transport.ack_eliciting_threshold: must be at least 1, got 0",
            ),
            (
                "[transport]\nmax_datagram_size = 65536",
                "transport.max_datagram_size: must be at most 65535, got 65536",
            ),
            (
                "[transport]\nband_weights = { background = 0 }",
                "transport.band_weights.background: must be at least 1, got 0",
            ),
            (
                "[transport]\nmax_udp_payload_size = \"big\"",
                "transport.max_udp_payload_size: expected an integer, got the string \"big\"",
            ),
            (
                "[transport]\npacing = \"yes\"",
                "transport.pacing: expected true or false, got the string \"yes\"",
            ),
            (
                "[transport]\nband_weights = 3",
                "transport.band_weights: expected a table, got the integer 3",
            ),
            (
                "[server]\nhandshake_rate = 0",
                "server.handshake_rate: must be at least 1, got 0",
            ),
            (
                "[server]\nmax_connections = 0",
                "server.max_connections: must be at least 1, got 0",
            ),
        ];
        for (text, expected) in cases {
            let e = error_of(text);
            assert_eq!(e, format!("config /etc/mxp.toml: {expected}"));
        }
    }

    #[test]
    fn bad_node_and_server_values_name_their_key() {
        let listen = error_of("[node]\nlisten = \"localhost\"\n");
        assert!(
            listen.contains(
                "node.listen: expected an address like \"127.0.0.1:9000\", got \"localhost\""
            ),
            "{listen}"
        );
        let log = error_of("[node]\nlog = \"info,mxp=loud\"\n");
        assert!(
            log.contains("node.log: ") && log.contains("\"mxp=loud\""),
            "{log}"
        );
        let key = error_of("[node]\nkey = \"\"\n");
        assert!(key.contains("node.key: empty path"), "{key}");
        let cases = [
            (
                "quic_listen = \"9001\"",
                r#"node.quic_listen: expected an address like "127.0.0.1:9001" or "off", got "9001""#,
            ),
            (
                "admin = \"localhost:9100\"",
                r#"node.admin: expected an address like "127.0.0.1:9100", got "localhost:9100""#,
            ),
            ("admin_token = \" \"", "node.admin_token: empty token"),
            (
                "carriers = \"tcp\"",
                r#"node.carriers: expected "mxp", "quic" or "both", got "tcp""#,
            ),
            (
                "drain_timeout = \"5\"",
                r#"node.drain_timeout: expected a duration like "30s", got "5""#,
            ),
            (
                "drain_timeout = 300",
                r#"node.drain_timeout: expected a duration like "30s", got the integer 300"#,
            ),
            ("capture = \"\"", "node.capture: empty path"),
            (
                "capture = true",
                "node.capture: expected a string, got true",
            ),
            (
                "capture_max_bytes = 10",
                "node.capture_max_bytes: must be at least 24, got 10",
            ),
            (
                "capture_max_bytes = \"1MB\"",
                r#"node.capture_max_bytes: expected an integer, got the string "1MB""#,
            ),
        ];
        for (line, expected) in cases {
            let e = error_of(&format!("[node]\n{line}\n"));
            assert!(e.contains(expected), "{e}");
        }
        let e = error_of("[node]\ncarrier = \"quic\"\n");
        assert!(
            e.contains(r#"node.carrier: unknown key (did you mean "carriers"?)"#),
            "{e}"
        );
        let retry = error_of("[server]\nretry = \"sometimes\"\n");
        assert!(
            retry.contains(
                r#"server.retry: expected "never", "under-load" or "always", got "sometimes""#
            ),
            "{retry}"
        );
    }

    #[test]
    fn a_bad_allowed_clients_entry_names_its_index() {
        let good = "11".repeat(32);
        let e = error_of(&format!(
            "[server]\nallowed_clients = [\"{good}\", \"{good}\", \"abc\"]\n"
        ));
        assert!(
            e.starts_with("config /etc/mxp.toml: server.allowed_clients[2]: "),
            "{e}"
        );
        assert!(e.contains("64 hexadecimal digits"), "{e}");
        let e = error_of(&format!("[server]\nallowed_clients = [\"{good}\", 7]\n"));
        assert!(
            e.contains("server.allowed_clients[1]: expected a public key"),
            "{e}"
        );
        let e = error_of("[server]\nallowed_clients = []\n");
        assert!(
            e.contains("server.allowed_clients: an empty list admits no client"),
            "{e}"
        );
        let e = error_of(&format!("[server]\nallowed_clients = \"{good}\"\n"));
        assert!(e.contains("server.allowed_clients: expected a list"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert_eq!(
            error_of("[transport]\nidle_timout = \"1s\"\n"),
            r#"config /etc/mxp.toml: transport.idle_timout: unknown key (did you mean "idle_timeout"?)"#
        );
        let e = error_of("[node]\ncolour = \"blue\"\n");
        assert!(
            e.contains("node.colour: unknown key; expected one of: listen, key, log"),
            "{e}"
        );
        let e = error_of("[transport]\nband_weights = { urgent = 2 }\n");
        assert!(
            e.contains("transport.band_weights.urgent: unknown key"),
            "{e}"
        );
        let e = error_of("x = 1\n");
        assert!(
            e.ends_with(
                "x: unknown top-level key; keys go in the tables [node], [server] and [transport]"
            ),
            "{e}"
        );
        let e = error_of("[transprot]\n");
        assert!(
            e.contains("transprot: unknown table (did you mean [transport]?)"),
            "{e}"
        );
        let e = error_of("listen = \"127.0.0.1:1\"\n");
        assert!(
            e.contains("listen: unknown top-level key; it belongs in the [node] table"),
            "{e}"
        );
        let e = error_of("[node]\n[node.extra]\n");
        assert!(e.contains("node.extra: unknown key"), "{e}");
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let e = error_of("[node]\nlisten = \"127.0.0.1:1\"\nlog = info\n");
        assert!(
            e.starts_with("config /etc/mxp.toml: line 3, column 7: invalid TOML: "),
            "{e}"
        );
        let e = error_of("[transport]\nidle_timeout = 30s # half a minute\n");
        assert!(
            e.starts_with("config /etc/mxp.toml: line 2, column ")
                && e.ends_with("(did you mean idle_timeout = \"30s\"?)"),
            "{e}"
        );
        let e = error_of("[node]\nlisten = 127.0.0.1:9000\n");
        assert!(
            e.ends_with("(did you mean listen = \"127.0.0.1:9000\"?)"),
            "{e}"
        );
        let e = error_of("[node]\nlog = \"a\"\nlog = \"b\"\n");
        assert!(
            e.starts_with("config /etc/mxp.toml: line 3, column 1: invalid TOML: "),
            "{e}"
        );
    }

    #[test]
    fn a_missing_file_is_named_and_is_a_usage_error() {
        let path =
            std::env::temp_dir().join(format!("mxp-no-such-config-{}.toml", std::process::id()));
        let e = load(Some(&path)).unwrap_err();
        let line = e.to_string();
        assert!(
            line.starts_with(&format!("config {}: cannot read: ", path.display())),
            "{line}"
        );
        let cli = CliError::from(e);
        assert!(matches!(cli, CliError::Usage(_)));
        assert_eq!(cli.exit_code(), std::process::ExitCode::from(2));
    }

    #[test]
    fn load_reads_a_file_and_anchors_the_key_path_to_it() {
        let dir = std::env::temp_dir().join(format!("mxp-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mxp.toml");
        std::fs::write(
            &path,
            "[node]\nkey = \"node.key\"\n[transport]\npacing = false\n",
        )
        .unwrap();
        let c = load(Some(&path)).unwrap();
        assert_eq!(c.key, Some(dir.join("node.key")));
        assert!(!c.transport.pacing);
        let abs = parse("[node]\nkey = \"/var/lib/mxp/node.key\"\n", &path)
            .unwrap()
            .0;
        assert_eq!(abs.key, Some(PathBuf::from("/var/lib/mxp/node.key")));
        let capture = parse(
            "[node]\ncapture = \"before.pcap\"\ncapture_max_bytes = 1_000_000\n",
            &path,
        )
        .unwrap()
        .0;
        assert_eq!(capture.capture, Some(dir.join("before.pcap")));
        assert_eq!(capture.capture_max_bytes, 1_000_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_example_file_loads_and_states_the_true_defaults() {
        let (c, _) = parse(EXAMPLE, Path::new("docs/transport/mxp.example.toml")).unwrap();
        // The example spells out every default; the keys whose default is
        // "absent" (key, log, allowed_clients, keep_alive_interval) are there
        // only as comments.
        assert_eq!(c.listen, NodeConfig::default().listen);
        assert_eq!(c.key, None);
        assert_eq!(c.log, None);
        assert_node_defaults(&c);
        assert!(same(&c.transport, &TransportConfig::default()));
        assert!(same(&c.server, &ServerConfig::default()));
    }

    #[test]
    fn every_key_is_in_the_example_and_the_reference() {
        let (_, keys) = parse("", Path::new("empty.toml")).unwrap();
        assert!(keys.len() > 30, "schema lists {} keys", keys.len());
        for key in &keys {
            let leaf = key.rsplit('.').next().unwrap();
            assert!(
                EXAMPLE.contains(&format!("{leaf} = ")),
                "{key} missing from mxp.example.toml"
            );
            assert!(
                DOCS.contains(&format!("`{key}`")),
                "{key} missing from config.md"
            );
        }
    }

    #[test]
    fn the_documented_log_filter_is_valid() {
        assert!(DOCS.contains("info,mxp_proto::handshake=debug"));
        parse_at("[node]\nlog = \"info,mxp_proto::handshake=debug\"\n").unwrap();
    }

    #[test]
    fn quic_listen_defaults_to_the_next_port_and_can_be_off() {
        let c = parse_at("[node]\nquic_listen = \"off\"\n").unwrap();
        assert_eq!(c.quic_listen, QuicListen::Off);
        assert_eq!(c.quic_listen.resolve(c.listen), Ok(None));
        let next = QuicListen::NextPort;
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            next.resolve(at("127.0.0.1:9000")),
            Ok(Some(at("127.0.0.1:9001")))
        );
        assert_eq!(next.resolve(at("127.0.0.1:0")), Ok(Some(at("127.0.0.1:0"))));
        let e = next.resolve(at("127.0.0.1:65535")).unwrap_err();
        assert!(e.contains("--quic-listen"), "{e}");
        let zero = parse_at("[node]\ndrain_timeout = \"0s\"\n").unwrap();
        assert_eq!(zero.drain_timeout, Duration::ZERO);
    }

    #[test]
    fn typo_hints_only_for_near_misses() {
        let known: Vec<String> = ["listen", "key", "log"].map(String::from).to_vec();
        assert_eq!(closest("lisen", &known), Some("listen"));
        assert_eq!(closest("colour", &known), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(line_column("a\nbc", 3), (2, 2));
    }
}
