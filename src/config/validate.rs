//! Validation: the raw structs into a [`Config`], checking every rule and
//! applying every default. Each problem is reported with its place and a fix,
//! and checking goes on, so that one run shows them all.
//!
//! A listener or pool with a problem is still known by its name, so that the
//! routes naming it are not reported too.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::decode::{
    RawAdmin, RawBackend, RawConfig, RawDrain, RawLimits, RawListener, RawPool, RawRoute, key_segment,
};
use super::{
    AdminConfig, BackendConfig, Config, DEFAULT_CLOSE_CODE, DEFAULT_DRAIN_SPREAD, DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_FAIL_TIMEOUT, DEFAULT_MAX_FAILS, DrainConfig, KeySpec, Limits, ListenerConfig, MAX_HEADER_BYTES,
    MAX_WEIGHT, MIN_HEADER_BYTES, PoolConfig, Report, RouteConfig, parse_duration,
};

const KEY_EXAMPLES: &str = r#"use e.g. "ip", "header:x-user-id", "cookie:session", "query:room" or "path:2""#;
const ADDR_FORMS: &str = r#"write host:port: "10.0.0.5:9000", "[fd00::5]:9000" or "chat.svc:9000""#;

type Listed<T> = Option<Spanned<Vec<Spanned<T>>>>;

impl Report<'_> {
    pub(super) fn config(&mut self, raw: RawConfig) -> Config {
        let workers = raw.workers.and_then(|w| {
            let fix = "use 1 or more, or remove it for one per core";
            self.int(&w, "workers", 1, i64::MAX, fix).map(|n| n as usize)
        });
        let admin = self.admin(raw.admin);
        let (listeners, listener_names) = self.listeners(raw.listeners, &admin);
        let pool_names: Vec<String> = raw.pools.iter().flatten().map(|(k, _)| k.clone()).collect();
        let pools = self.pools(raw.pools);
        let routes = self.routes(raw.routes, &listener_names, &pool_names);
        let limits = self.limits(raw.limits);
        Config { workers, admin, listeners, routes, pools, limits }
    }

    /// An integer within `min..=max`, or an error at its place.
    fn int(&mut self, v: &Spanned<i64>, path: &str, min: i64, max: i64, fix: &str) -> Option<i64> {
        let n = *v.get_ref();
        let bound = match n {
            _ if n < min => format!("at least {min}"),
            _ if n > max => format!("at most {max}"),
            _ => return Some(n),
        };
        let key = path.rsplit('.').next().unwrap_or(path);
        self.error(v.span(), path, format!("{key} is {n}, it must be {bound}"), fix);
        None
    }

    /// A duration above zero; `default` when absent or wrong (after an error).
    fn duration(&mut self, v: Option<Spanned<String>>, path: &str, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        let example = format!("e.g. {:?} (the default)", fmt_duration(default));
        match parse_duration(v.get_ref()) {
            Ok(d) if !d.is_zero() => return d,
            Ok(_) => {
                let msg = format!("{} is zero, it must be longer", path.rsplit('.').next().unwrap_or(path));
                self.error(v.span(), path, msg, format!("use {example}"));
            }
            Err(msg) => self.error(v.span(), path, msg, format!("write it with a unit, {example}")),
        }
        default
    }

    fn admin(&mut self, raw: Option<RawAdmin>) -> AdminConfig {
        let mut admin = AdminConfig::default();
        let Some(RawAdmin { bind: Some(b), allow_remote }) = raw else {
            return admin;
        };
        match parse_bind(b.get_ref(), "127.0.0.1:9901") {
            Err((msg, fix)) => self.error(b.span(), "admin.bind", msg, fix),
            Ok(addr) if !addr.ip().is_loopback() && allow_remote != Some(true) => {
                let msg = format!("the admin endpoint would listen on {addr}, beyond loopback");
                let fix = "set admin.allow_remote = true to expose it on purpose, or bind 127.0.0.1";
                self.error(b.span(), "admin.bind", msg, fix);
            }
            Ok(addr) => admin.bind = addr,
        }
        admin
    }

    /// The valid listeners, and the names of all (valid or not).
    fn listeners(&mut self, raw: Listed<RawListener>, admin: &AdminConfig) -> (Vec<ListenerConfig>, Vec<String>) {
        let span = raw.as_ref().map_or(0..0, |r| r.span());
        let raw = raw.map(Spanned::into_inner).unwrap_or_default();
        if raw.is_empty() {
            let fix = r#"add [[listeners]] with name = "public" and bind = "127.0.0.1:8080""#;
            self.missing(span, "listeners", "no listener is defined", fix);
        }
        let (mut out, mut names) = (Vec::new(), Vec::new());
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut binds: HashMap<SocketAddr, String> = HashMap::new();
        for (i, l) in raw.into_iter().enumerate() {
            let (l_span, l) = (l.span(), l.into_inner());
            let (name_path, bind_path) = (format!("listeners[{i}].name"), format!("listeners[{i}].bind"));
            let name = match l.name {
                None => {
                    self.missing(l_span.clone(), &name_path, "this listener has no name", r#"add name = "public""#);
                    None
                }
                Some(n) if n.get_ref().trim().is_empty() => {
                    let fix = r#"give it a name such as "public""#;
                    self.error(n.span(), &name_path, "the listener name is empty", fix);
                    None
                }
                Some(n) => {
                    let (line, _) = self.line_col(n.span().start);
                    if let Some(first) = first_line.get(n.get_ref()) {
                        let msg = format!("listener name {:?} is already used at line {first}", n.get_ref());
                        self.error(n.span(), &name_path, msg, "give each listener its own name");
                    } else {
                        first_line.insert(n.get_ref().clone(), line);
                    }
                    names.push(n.get_ref().clone());
                    Some(n.into_inner())
                }
            };
            let shown = name.clone().unwrap_or_else(|| format!("#{i}"));
            let bind = match l.bind {
                None => {
                    let msg = format!("listener {shown:?} has no bind address");
                    self.missing(l_span, &bind_path, msg, r#"add bind = "127.0.0.1:8080""#);
                    None
                }
                Some(b) => match parse_bind(b.get_ref(), "127.0.0.1:8080") {
                    Err((msg, fix)) => {
                        self.error(b.span(), &bind_path, format!("listener {shown:?}: {msg}"), fix);
                        None
                    }
                    Ok(addr) => {
                        let clash = match () {
                            _ if addr.port() == 0 => None,
                            _ if addr == admin.bind => Some("the admin endpoint".to_string()),
                            _ => binds.get(&addr).map(|other| format!("listener {other:?}")),
                        };
                        if let Some(other) = clash {
                            let msg = format!("listener {shown:?} binds {addr}, already used by {other}");
                            self.error(b.span(), &bind_path, msg, "use another port");
                        }
                        binds.insert(addr, shown);
                        Some(addr)
                    }
                },
            };
            if let (Some(name), Some(bind)) = (name, bind) {
                out.push(ListenerConfig { name, bind });
            }
        }
        (out, names)
    }

    fn routes(&mut self, raw: Listed<RawRoute>, listeners: &[String], pools: &[String]) -> Vec<RouteConfig> {
        let span = raw.as_ref().map_or(0..0, |r| r.span());
        let raw = raw.map(Spanned::into_inner).unwrap_or_default();
        if raw.is_empty() {
            let msg = "no route is defined, so no request could go anywhere";
            let fix = r#"add [[routes]] with listener = "public" and pool = "NAME""#;
            self.missing(span, "routes", msg, fix);
        }
        let mut out = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let p = format!("routes[{i}]");
            let (r_span, r) = (r.span(), r.into_inner());
            let listener = self.reference(r.listener, &r_span, &format!("{p}.listener"), "listener", listeners);
            let pool = self.reference(r.pool, &r_span, &format!("{p}.pool"), "pool", pools);
            let host = r.host.and_then(|h| {
                let s = h.get_ref().trim();
                let name_only = r#"write only the name, e.g. "chat.example.com""#;
                let (msg, fix) = match () {
                    _ if s.is_empty() => ("host is empty", "remove host to match any host"),
                    _ if s.contains("://") => ("host must not include a scheme", name_only),
                    _ if s.contains('/') => ("host must not include a path", "move the path to path_prefix"),
                    _ if s.contains(char::is_whitespace) => ("host must not contain spaces", name_only),
                    _ => return Some(s.to_ascii_lowercase()),
                };
                self.error(h.span(), &format!("{p}.host"), format!("{msg}: {:?}", h.get_ref()), fix);
                None
            });
            let path_prefix = r.path_prefix.and_then(|pp| {
                let s = pp.get_ref();
                if s.starts_with('/') {
                    return Some(s.clone());
                }
                let msg = format!("path_prefix {s:?} must start with \"/\"");
                self.error(pp.span(), &format!("{p}.path_prefix"), msg, format!("write \"/{s}\""));
                None
            });
            if let (Some(listener), Some(pool)) = (listener, pool) {
                out.push(RouteConfig { listener, host, path_prefix, pool });
            }
        }
        out
    }

    /// A route's reference to a listener or pool: present and defined.
    fn reference(
        &mut self,
        v: Option<Spanned<String>>,
        table: &Range<usize>,
        path: &str,
        what: &str,
        known: &[String],
    ) -> Option<String> {
        let choices = match known {
            [] => format!("define a {what} first"),
            _ => format!("use one of: {}", known.join(", ")),
        };
        match v {
            None => {
                let fix = format!("add {what} = \"NAME\"; {choices}");
                self.missing(table.clone(), path, format!("this route has no {what}"), fix);
                None
            }
            Some(v) if !known.contains(v.get_ref()) => {
                let msg = format!("{what} {:?} is not defined", v.get_ref());
                self.error(v.span(), path, msg, choices);
                None
            }
            Some(v) => Some(v.into_inner()),
        }
    }

    fn pools(&mut self, raw: Option<BTreeMap<String, Spanned<RawPool>>>) -> Vec<PoolConfig> {
        let mut raw: Vec<_> = raw.unwrap_or_default().into_iter().collect();
        raw.sort_by_key(|(_, p)| p.span().start); // file order
        let mut out = Vec::new();
        for (name, pool) in raw {
            let p = format!("pools.{}", key_segment(&name));
            let (p_span, pool) = (pool.span(), pool.into_inner());
            if name.trim().is_empty() {
                self.error(p_span.clone(), &p, "the pool name is empty", "name it, e.g. [pools.chat]");
            }
            let hash_key = match pool.hash_key {
                None => {
                    let fix = format!("add hash_key = \"ip\"; {KEY_EXAMPLES}");
                    self.missing(
                        p_span.clone(),
                        &format!("{p}.hash_key"),
                        format!("pool {name:?} has no hash_key"),
                        fix,
                    );
                    None
                }
                Some(k) => self.key_spec(k, &format!("{p}.hash_key")),
            };
            let fallback_key = match pool.fallback_key {
                None => Some(KeySpec::Ip),
                Some(k) => self.key_spec(k, &format!("{p}.fallback_key")),
            };
            let backends = self.backends(pool.backends, &p_span, &p, &name);
            let bounded_load = pool.bounded_load.and_then(|b| {
                let c = *b.get_ref();
                if c.is_finite() && c > 1.0 {
                    return Some(c);
                }
                let msg = format!("bounded_load is {c}, it must be more than 1.0");
                let fix = "use e.g. 1.25, or remove it for strict affinity";
                self.error(b.span(), &format!("{p}.bounded_load"), msg, fix);
                None
            });
            let max_fails = pool.max_fails.map_or(Some(DEFAULT_MAX_FAILS), |m| {
                let n = self.int(&m, &format!("{p}.max_fails"), 1, u32::MAX.into(), "use 1 or more");
                n.map(|n| n as u32)
            });
            let fail_timeout = self.duration(pool.fail_timeout, &format!("{p}.fail_timeout"), DEFAULT_FAIL_TIMEOUT);
            let rehome = pool.rehome.is_some_and(|r| *r.get_ref());
            let drain = self.drain(pool.drain, &format!("{p}.drain"));
            if let (Some(hash_key), Some(fallback_key), Some(max_fails)) = (hash_key, fallback_key, max_fails) {
                out.push(PoolConfig {
                    name,
                    hash_key,
                    fallback_key,
                    backends,
                    bounded_load,
                    max_fails,
                    fail_timeout,
                    rehome,
                    drain,
                });
            }
        }
        out
    }

    /// `[pools.NAME.drain]`: the spread must fit in the timeout, and the code
    /// must be one a client reads as "reconnect".
    fn drain(&mut self, raw: Option<Spanned<RawDrain>>, p: &str) -> DrainConfig {
        let Some(raw) = raw else { return DrainConfig::default() };
        let (span, raw) = (raw.span(), raw.into_inner());
        let timeout = self.duration(raw.timeout, &format!("{p}.timeout"), DEFAULT_DRAIN_TIMEOUT);
        let spread = self.duration(raw.spread, &format!("{p}.spread"), DEFAULT_DRAIN_SPREAD);
        let close_code = match raw.close_code {
            None => DEFAULT_CLOSE_CODE,
            Some(c) if matches!(*c.get_ref(), 1001 | 1012) => *c.get_ref() as u16,
            Some(c) => {
                let msg =
                    format!("close_code is {}, it must be 1001 (Going Away) or 1012 (Service Restart)", c.get_ref());
                self.error(c.span(), &format!("{p}.close_code"), msg, "use 1012, the default");
                DEFAULT_CLOSE_CODE
            }
        };
        if spread > timeout {
            let msg = format!("spread ({}) is longer than timeout ({})", fmt_duration(spread), fmt_duration(timeout));
            let fix = "make spread shorter than timeout, so every tunnel gets its Close before the hard deadline";
            self.error(span, p, msg, fix);
        }
        DrainConfig { timeout, spread, close_code }
    }

    fn key_spec(&mut self, v: Spanned<String>, path: &str) -> Option<KeySpec> {
        let parsed = v.get_ref().parse::<KeySpec>();
        parsed.map_err(|msg| self.error(v.span(), path, msg, KEY_EXAMPLES)).ok()
    }

    fn backends(
        &mut self,
        raw: Listed<RawBackend>,
        pool_span: &Range<usize>,
        p: &str,
        name: &str,
    ) -> Vec<BackendConfig> {
        let path = format!("{p}.backends");
        let (msg, fix) = (format!("pool {name:?} has no backends"), r#"add backends = ["127.0.0.1:9001"]"#);
        let Some(raw) = raw else {
            self.missing(pool_span.clone(), &path, msg, fix);
            return Vec::new();
        };
        if raw.get_ref().is_empty() {
            self.error(raw.span(), &path, msg, fix);
        }
        let mut out = Vec::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for (i, b) in raw.into_inner().into_iter().enumerate() {
            let bp = format!("{path}[{i}]");
            let (b_span, b) = (b.span(), b.into_inner());
            let (addr, addr_span, addr_path, weight) = match b {
                RawBackend::Plain(a) => (a, b_span, bp.clone(), None),
                RawBackend::Table { addr: Some(a), weight } => {
                    (a.get_ref().clone(), a.span(), format!("{bp}.addr"), weight)
                }
                RawBackend::Table { addr: None, .. } => {
                    let fix = r#"add addr = "host:port""#;
                    self.missing(b_span, &format!("{bp}.addr"), "this backend has no addr", fix);
                    continue;
                }
            };
            let addr = addr.trim().to_string();
            if let Err(why) = check_backend_addr(&addr) {
                self.error(addr_span, &addr_path, format!("backend {addr:?}: {why}"), ADDR_FORMS);
                continue;
            }
            // DNS names are case-insensitive: "Chat:80" and "chat:80" are one backend.
            let identity = addr.to_ascii_lowercase();
            if let Some(first) = first_line.get(&identity) {
                let msg = format!("backend {addr:?} is listed twice in pool {name:?} (first at line {first})");
                let fix = "remove one of them; use weight to give a backend a larger share";
                self.error(addr_span, &addr_path, msg, fix);
                continue;
            }
            first_line.insert(identity, self.line_col(addr_span.start).0);
            let weight = match weight {
                None => 1,
                Some(w) if *w.get_ref() == 0 => {
                    let msg = format!("backend {addr:?} has weight 0");
                    let fix = "remove the backend, or drain it to take it out of service";
                    self.error(w.span(), &format!("{bp}.weight"), msg, fix);
                    continue;
                }
                Some(w) => {
                    let fix = "weights are relative: use small numbers such as 1, 2, 3";
                    match self.int(&w, &format!("{bp}.weight"), 1, MAX_WEIGHT.into(), fix) {
                        Some(n) => n as u32,
                        None => continue,
                    }
                }
            };
            out.push(BackendConfig { addr, weight });
        }
        out
    }

    fn limits(&mut self, raw: Option<RawLimits>) -> Limits {
        let mut limits = Limits::default();
        let Some(raw) = raw else { return limits };
        if let Some(m) = raw.max_connections {
            let fix = "use 1 or more (the default is 10000)";
            if let Some(n) = self.int(&m, "limits.max_connections", 1, i64::MAX, fix) {
                limits.max_connections = n as usize;
            }
        }
        if let Some(m) = raw.max_header_bytes {
            let (min, max) = (MIN_HEADER_BYTES as i64, MAX_HEADER_BYTES as i64);
            let fix = "use a size from 1024 to 1048576 (the default is 32768)";
            if let Some(n) = self.int(&m, "limits.max_header_bytes", min, max, fix) {
                limits.max_header_bytes = n as usize;
            }
        }
        let defaults = Limits::default();
        limits.handshake_timeout =
            self.duration(raw.handshake_timeout, "limits.handshake_timeout", defaults.handshake_timeout);
        limits.connect_timeout = self.duration(raw.connect_timeout, "limits.connect_timeout", defaults.connect_timeout);
        limits.response_timeout =
            self.duration(raw.response_timeout, "limits.response_timeout", defaults.response_timeout);
        // A bool: serde has already located a wrong type; nothing else can be wrong with it.
        limits.splice = raw.splice.is_some_and(|s| *s.get_ref());
        limits.idle_timeout = raw.idle_timeout.filter(|v| v.get_ref() != "off").and_then(|v| {
            let path = "limits.idle_timeout";
            match parse_duration(v.get_ref()) {
                Ok(d) if !d.is_zero() => return Some(d),
                Ok(_) => {
                    let fix = r#"use "off" to disable it, or e.g. "5m""#;
                    self.error(v.span(), path, "idle_timeout is zero", fix);
                }
                Err(msg) => {
                    let fix = r#"write e.g. "5m", or "off" (the default)"#;
                    self.error(v.span(), path, format!("{msg}, or \"off\""), fix);
                }
            }
            None
        });
        limits
    }
}

// ---------------------------------------------------------------------------
// What an address may look like. Pure string checks: nothing is resolved or bound.

/// A listening address: an IP literal and a port. Returns (message, fix).
fn parse_bind(s: &str, example: &str) -> Result<SocketAddr, (String, String)> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if s.parse::<IpAddr>().is_ok() {
        return Err((format!("{s:?} has no port"), format!("add one, e.g. {example}")));
    }
    if let Some((host, port)) = s.rsplit_once(':') {
        let ip = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        if ip.unwrap_or(host).parse::<IpAddr>().is_ok() {
            let msg = format!("{s:?}: port {port:?} is not a number from 0 to 65535");
            return Err((msg, format!("use a port, e.g. {example}")));
        }
    }
    Err((
        format!("{s:?} is not an IP address and port"),
        format!("use an IP address such as {example} (or [::1]:8080 for IPv6)"),
    ))
}

/// A backend address: `host:port`, the host an IP literal, `[IPv6]` or a DNS
/// name of letters, digits, '.' and '-'. Returns why not.
fn check_backend_addr(addr: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (v6, port) = rest.split_once("]:").ok_or("is not [IPv6]:port")?;
        v6.parse::<Ipv6Addr>().map_err(|_| "the part in brackets is not an IPv6 address")?;
        ("", port)
    } else {
        let (host, port) = addr.rsplit_once(':').ok_or("has no port")?;
        if host.contains(':') {
            return Err("an IPv6 address needs brackets: [ADDR]:PORT".into());
        }
        if host.is_empty() {
            return Err("the host is empty".into());
        }
        (host, port)
    };
    if !matches!(port.parse::<u32>(), Ok(1..=65535)) {
        return Err(format!("port {port:?} is not a number from 1 to 65535"));
    }
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        // Empty (bracketed IPv6, already checked) or meant as IPv4.
        if host.is_empty() || host.parse::<Ipv4Addr>().is_ok() {
            return Ok(());
        }
        return Err(format!("{host:?} is not a valid IPv4 address"));
    }
    if let Some(c) = host.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '-')) {
        return Err(format!("the host contains {c:?}; names use only letters, digits, '.' and '-'"));
    }
    let label_ok = |l: &str| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-');
    if host.len() > 253 || !host.trim_end_matches('.').split('.').all(label_ok) {
        return Err(format!("{host:?} is not a valid DNS name"));
    }
    Ok(())
}

/// `10s` for a default shown in a fix.
fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        _ if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        _ if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        _ if ms % 1000 == 0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}
