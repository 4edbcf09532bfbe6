//! Configuration: the TOML file's shape, loading it, and validating it into a
//! [`Config`] where every value is checked and every default applied.
//!
//! Reading goes in three steps, all pure except [`load`]'s one file read (and,
//! for now, [`parse`] passing `limits.splice` on to the tunnel module):
//! 1. the TOML syntax is parsed (every syntax error is reported, one per line);
//! 2. serde fills the raw structs below (`deny_unknown_fields`, values wrapped in
//!    [`toml::Spanned`] so that validation can point at them); an unknown key or
//!    a wrong type is reported, that key is set aside and decoding is retried, so
//!    one typo does not hide the other problems;
//! 3. validation checks every rule and collects every problem as a
//!    [`ConfigError`] with `file:line:col`, the key path, a message and a fix.
//!
//! This module does not build rings, resolve names, bind sockets or hold the
//! running snapshot: it only says what the file asks for, or why it cannot be.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

mod decode;
#[cfg(test)]
mod tests;
mod validate;

/// Where the admin endpoint listens when `[admin] bind` is not set: loopback only.
pub const DEFAULT_ADMIN_BIND: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9901));
/// Default `limits.max_connections`: open client connections per process.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default `limits.handshake_timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `limits.max_header_bytes`.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// Smallest accepted `limits.max_header_bytes`.
pub const MIN_HEADER_BYTES: usize = 1024;
/// Largest accepted `limits.max_header_bytes` (1 MiB).
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;
/// Default `limits.connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `limits.response_timeout`.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default pool `max_fails`: failed connects before a backend counts as down.
pub const DEFAULT_MAX_FAILS: u32 = 1;
/// Default pool `fail_timeout`: how long a failed backend stays down.
pub const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `drain.timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `drain.spread`.
pub const DEFAULT_DRAIN_SPREAD: Duration = Duration::from_secs(10);
/// Default `drain.close_code`: 1012 Service Restart, "reconnect, you will be served".
pub const DEFAULT_CLOSE_CODE: u16 = 1012;
/// Largest backend weight: the ring holds virtual nodes in proportion to weight,
/// so a typo such as `weight = 100000` must not cost gigabytes.
pub const MAX_WEIGHT: u32 = 100;

const DURATION_FORMS: &str = r#"durations look like "250ms", "10s", "5m", "1h" or "1m30s""#;
const KEY_FORMS: &str = "keys are ip, header:NAME, cookie:NAME, query:NAME or path:N";

// ---------------------------------------------------------------------------
// The validated configuration.

/// Validated configuration: everything checked, every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Runtime worker threads; `None` means one per core.
    pub workers: Option<usize>,
    /// The admin endpoint (metrics, health, API).
    pub admin: AdminConfig,
    /// Where clients connect; names are unique. Never empty.
    pub listeners: Vec<ListenerConfig>,
    /// In file order: the first route that matches a request wins. Never empty.
    pub routes: Vec<RouteConfig>,
    /// In file order; names are unique. A pool no route uses is allowed.
    pub pools: Vec<PoolConfig>,
    /// Process-wide limits and timeouts.
    pub limits: Limits,
}

/// The admin endpoint. Non-loopback addresses were accepted only with
/// `allow_remote = true`, so exposing it is always a deliberate choice.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Default 127.0.0.1:9901.
    pub bind: SocketAddr,
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Unique, non-empty; routes and metric labels refer to it.
    pub name: String,
    /// An IP address and port (port 0 picks a free one, for tests).
    pub bind: SocketAddr,
}

/// One route: requests on `listener` matching `host` and `path_prefix` go to `pool`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Name of an existing listener.
    pub listener: String,
    /// Lowercased; may carry `:port`; never a scheme or path. `None` matches any host.
    pub host: Option<String>,
    /// Starts with `/`. `None` matches any path.
    pub path_prefix: Option<String>,
    /// Name of an existing pool.
    pub pool: String,
}

/// A pool of backends sharing one ring.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// The `NAME` of `[pools.NAME]`.
    pub name: String,
    /// What a request is hashed on to pick its backend (sticky routing).
    pub hash_key: KeySpec,
    /// Used when the request lacks `hash_key`; default `ip`.
    pub fallback_key: KeySpec,
    /// Never empty; addresses unique within the pool.
    pub backends: Vec<BackendConfig>,
    /// `Some(c)` with c > 1: consistent hashing with bounded loads. `None`: strict affinity.
    pub bounded_load: Option<f64>,
    /// Failed connects in a row before the backend counts as down; ≥ 1.
    pub max_fails: u32,
    /// How long a backend stays down after `max_fails`; > 0.
    pub fail_timeout: Duration,
    /// When a backend joins, drain (paced) the tunnels whose key now maps to
    /// it, so each room converges on one backend again. Default false.
    pub rehome: bool,
    /// How this pool's tunnels are drained.
    pub drain: DrainConfig,
}

/// How tunnels are drained: Close frames spread over `spread`, whatever is
/// left closed at `timeout`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrainConfig {
    /// Hard deadline from the start of a drain; default 30s.
    pub timeout: Duration,
    /// Close frames are spread evenly over this window; default 10s, ≤ timeout.
    pub spread: Duration,
    /// The Close code sent: 1001 (Going Away) or 1012 (Service Restart, default).
    pub close_code: u16,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig { timeout: DEFAULT_DRAIN_TIMEOUT, spread: DEFAULT_DRAIN_SPREAD, close_code: DEFAULT_CLOSE_CODE }
    }
}

/// One backend of a pool. Its address is its identity on the ring.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// Exactly `host:port` as written (trimmed): IP literal, `[v6]:port` or DNS name.
    pub addr: String,
    /// Relative share of the ring, 1..=[`MAX_WEIGHT`]; default 1.
    pub weight: u32,
}

/// What part of a request the ring hashes on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySpec {
    /// The client's IP address.
    Ip,
    /// A request header's value (name lowercased).
    Header(http::HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// A query parameter's value.
    Query(String),
    /// The Nth path segment, 1-based: `path:2` of `/rooms/42/ws` is `42`.
    Path(usize),
}

/// Process-wide limits; the defaults are safe for a public listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Open client connections before new ones are refused; default 10000.
    pub max_connections: usize,
    /// Time a client has to send its request head (and TLS handshake); default 10s.
    pub handshake_timeout: Duration,
    /// Close a tunnel with no traffic either way for this long; default off.
    pub idle_timeout: Option<Duration>,
    /// Largest request head accepted; default 32 KiB, between 1 KiB and 1 MiB.
    pub max_header_bytes: usize,
    /// Time to connect to a backend; default 5s.
    pub connect_timeout: Duration,
    /// Time for a backend to start its response; default 60s.
    pub response_timeout: Duration,
    /// Move the payload of large WebSocket frames (16 KiB or more still to come)
    /// between two plain TCP sockets with splice(2) through a pipe, instead of
    /// copying it through a buffer; default off. Frame headers are still read,
    /// so drains close at frame boundaries as before. A direction holds a pipe
    /// (2 file descriptors) only while bytes wait in it for a slow peer: at worst
    /// 4 more descriptors per busy tunnel, plus a pool of at most 16 per worker
    /// thread. Tunnels over TLS or HTTP/2 never splice.
    pub splice: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { bind: DEFAULT_ADMIN_BIND }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: None,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            splice: false,
        }
    }
}

impl FromStr for KeySpec {
    type Err = String;

    /// `ip`, `header:NAME`, `cookie:NAME`, `query:NAME` or `path:N` (N ≥ 1).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{s:?} is not a valid key: {why}; {KEY_FORMS}");
        let name = |n: &str, what: &str| {
            if n.is_empty() {
                Err(bad(&format!("the {what} name is empty")))
            } else if n.chars().any(|c| c.is_whitespace() || c.is_control()) {
                Err(bad(&format!("the {what} name contains a space or control character")))
            } else {
                Ok(n.to_string())
            }
        };
        match s.split_once(':') {
            None if s == "ip" => Ok(KeySpec::Ip),
            Some(("header", n)) => {
                name(n, "header")?;
                http::HeaderName::from_bytes(n.as_bytes())
                    .map(KeySpec::Header)
                    .map_err(|_| bad(&format!("{n:?} is not a valid header name")))
            }
            Some(("cookie", n)) => {
                if n.contains([';', ',', '=']) {
                    return Err(bad("a cookie name cannot contain ';', ',' or '='"));
                }
                name(n, "cookie").map(KeySpec::Cookie)
            }
            Some(("query", n)) => name(n, "query parameter").map(KeySpec::Query),
            Some(("path", n)) => match n.parse::<usize>() {
                Ok(0) => Err(bad("path segments count from 1")),
                Ok(i) => Ok(KeySpec::Path(i)),
                Err(_) => Err(bad("N must be a segment number such as 1 or 2")),
            },
            _ => Err(bad("unknown kind")),
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySpec::Ip => f.write_str("ip"),
            KeySpec::Header(h) => write!(f, "header:{}", h.as_str()),
            KeySpec::Cookie(c) => write!(f, "cookie:{c}"),
            KeySpec::Query(q) => write!(f, "query:{q}"),
            KeySpec::Path(n) => write!(f, "path:{n}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Errors.

/// One problem in a config file, with where it is and what would fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name as given to [`load`] or [`parse`].
    pub file: String,
    /// 1-based; 0 when the problem is the file as a whole (e.g. it cannot be read).
    pub line: usize,
    /// 1-based, in characters; 0 with `line` 0.
    pub col: usize,
    /// Key path such as `routes[1].pool` (0-based indexes); empty when unknown.
    pub path: String,
    /// What is wrong, naming the thing.
    pub message: String,
    /// What would make it right.
    pub fix: String,
}

/// Every problem found in one config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigError {
    /// `file:line:col: key.path: message (fix: ...)`; empty parts are left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: ", self.file)?;
        } else {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.col)?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if !self.fix.is_empty() {
            write!(f, " (fix: {})", self.fix)?;
        }
        Ok(())
    }
}

impl fmt::Display for ConfigErrors {
    /// One error per line, each line ending in a newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|e| writeln!(f, "{e}"))
    }
}

impl std::error::Error for ConfigError {}
impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------
// Entry points.

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &file),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file,
            line: 0,
            col: 0,
            path: String::new(),
            message: format!("cannot read the config file: {e}"),
            fix: "check the path and that the file is readable UTF-8 text".into(),
        }])),
    }
}

/// Parses and validates config text; `file` is the name shown in messages.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    let mut report = Report { file, text, errors: Vec::new(), set_aside: Vec::new() };
    let config = decode::decode(&mut report).map(|raw| report.config(raw));
    match config {
        Some(config) if report.errors.is_empty() => Ok(config),
        _ => {
            // File order reads best; the sort is stable, so one place keeps check order.
            report.errors.sort_by_key(|e| (e.line, e.col));
            Err(ConfigErrors(report.errors))
        }
    }
}

/// Parses `"250ms"`, `"10s"`, `"5m"`, `"1h"` and sums like `"1m30s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err(format!("the duration is empty; {DURATION_FORMS}"));
    }
    if s.contains('.') {
        let msg = "fractions are not accepted, use a smaller unit (\"1500ms\")";
        return Err(format!("{s:?}: {msg}; {DURATION_FORMS}"));
    }
    let too_long = || format!("{s:?} is too long a duration");
    let mut total_ms: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit());
        let digits = digits.unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{s:?} is not a duration; {DURATION_FORMS}"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| too_long())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit_ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" => return Err(format!("{s:?} has no unit; {DURATION_FORMS}")),
            u => return Err(format!("{s:?} has an unknown unit {u:?}; {DURATION_FORMS}")),
        };
        rest = &rest[unit_len..];
        let ms = n.checked_mul(unit_ms).and_then(|ms| total_ms.checked_add(ms));
        total_ms = ms.ok_or_else(too_long)?;
    }
    Ok(Duration::from_millis(total_ms))
}

// ---------------------------------------------------------------------------
// Collecting errors.

/// Collects the problems of one file while it is decoded and validated; every
/// check goes on after a failure (with a default) so that all are found.
struct Report<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<ConfigError>,
    /// Key paths set aside after a decoding error, and whether the key was
    /// unknown (else its value had the wrong type). An error about what is
    /// under them, or a "missing" error beside an unknown key, would only
    /// repeat that error.
    set_aside: Vec<(String, bool)>,
}

impl Report<'_> {
    /// 1-based line and column (in characters) of byte `pos`.
    fn line_col(&self, pos: usize) -> (usize, usize) {
        let before = self.text.get(..pos).unwrap_or(self.text);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        (line, before[line_start..].chars().count() + 1)
    }

    fn error(&mut self, span: Range<usize>, path: &str, msg: impl Into<String>, fix: impl Into<String>) {
        let under = |(p, _): &(String, bool)| {
            let rest = path.strip_prefix(p.as_str());
            rest.is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        };
        if self.set_aside.iter().any(under) {
            return;
        }
        let (line, col) = self.line_col(span.start);
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            col,
            path: path.to_string(),
            message: msg.into(),
            fix: fix.into(),
        });
    }

    /// A required key is absent. Not reported when a key beside it was set
    /// aside: `bnd = ...` makes `bind` missing, and one error says it all.
    fn missing(&mut self, span: Range<usize>, path: &str, msg: impl Into<String>, fix: impl Into<String>) {
        let parent = |p: &str| p.rfind('.').map_or("", |i| &p[..i]).to_string();
        let beside = |(p, unknown): &(String, bool)| *unknown && parent(p) == parent(path);
        if self.set_aside.iter().any(beside) {
            return;
        }
        self.error(span, path, msg, fix);
    }
}
