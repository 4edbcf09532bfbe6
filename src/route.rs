//! Routing: which route (and so which pool) a request belongs to, and which key
//! it carries for the ring.
//!
//! Pure code: no I/O, no tokio types. It does not pick a backend (that is
//! `balance`) nor know whether backends are up (that is `snapshot`).

use std::borrow::Cow;
use std::net::IpAddr;

use http::request::Parts;
use http::{HeaderMap, header};

use crate::config::KeySpec;

/// A route of the snapshot: its matching rule and the index of its pool.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name of the listener the route applies to.
    pub listener: String,
    /// Lowercased host to match; `None` matches any host.
    pub host: Option<String>,
    /// Path prefix to match; `None` matches any path.
    pub path_prefix: Option<String>,
    /// Index into `Snapshot::pools`.
    pub pool: usize,
}

/// The first route of `routes` that matches (first match wins, as in the file).
pub fn find<'a>(routes: &'a [Route], listener: &str, host: Option<&str>, path: &str) -> Option<&'a Route> {
    routes.iter().find(|r| {
        r.listener == listener
            && r.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
            && r.host.as_deref().is_none_or(|h| host.is_some_and(|got| host_matches(h, got)))
    })
}

/// Compares a configured host with the request's, ignoring case and, when the
/// route names no port, the request's port.
fn host_matches(route_host: &str, request_host: &str) -> bool {
    let (route_name, route_port) = split_port(route_host);
    let (name, port) = split_port(request_host);
    route_name.eq_ignore_ascii_case(name) && (route_port.is_none() || route_port == port)
}

/// Splits `host[:port]` (and `[v6][:port]`) into the name and the port.
fn split_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        return match host.rfind("]:") {
            Some(i) => (&host[..=i], Some(&host[i + 2..])),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    }
}

/// The request's host: the URI authority (HTTP/2, absolute-form) or the Host header.
pub fn request_host(parts: &Parts) -> Option<&str> {
    parts.uri.authority().map(|a| a.as_str()).or_else(|| parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()))
}

/// Takes the key named by `spec` from the request, or `None` when the request lacks it.
pub fn extract_key<'a>(spec: &KeySpec, parts: &'a Parts, client_ip: IpAddr) -> Option<Cow<'a, [u8]>> {
    match spec {
        KeySpec::Ip => Some(Cow::Owned(ip_bytes(client_ip))),
        KeySpec::Header(name) => {
            parts.headers.get(name).map(|v| v.as_bytes()).filter(|v| !v.is_empty()).map(Cow::Borrowed)
        }
        KeySpec::Cookie(name) => cookie(&parts.headers, name).map(|v| Cow::Borrowed(v.as_bytes())),
        KeySpec::Query(name) => query_param(parts.uri.query()?, name).map(|v| Cow::Borrowed(v.as_bytes())),
        KeySpec::Path(n) => path_segment(parts.uri.path(), *n).map(|v| Cow::Borrowed(v.as_bytes())),
    }
}

/// IPv4-mapped IPv6 clients hash like their IPv4 form, so a dual-stack
/// listener keeps one key per client.
fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets().to_vec(),
        },
    }
}

/// The value of cookie `name` in any `Cookie` header (RFC 6265 `a=b; c=d`).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.trim_matches('"'))
}

/// The raw (not percent-decoded) value of the first `name=` in a query string.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, v)| *k == name && !v.is_empty()).map(|(_, v)| v)
}

/// The `n`th (1-based) non-empty segment of a path.
fn path_segment(path: &str, n: usize) -> Option<&str> {
    path.split('/').filter(|s| !s.is_empty()).nth(n.checked_sub(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn key(spec: &str, p: &Parts) -> Option<String> {
        let spec = match spec.split_once(':') {
            None => KeySpec::Ip,
            Some(("header", n)) => KeySpec::Header(n.parse().unwrap()),
            Some(("cookie", n)) => KeySpec::Cookie(n.into()),
            Some(("query", n)) => KeySpec::Query(n.into()),
            Some(("path", n)) => KeySpec::Path(n.parse().unwrap()),
            _ => unreachable!(),
        };
        extract_key(&spec, p, "10.1.2.3".parse().unwrap()).map(|k| String::from_utf8_lossy(&k).into_owned())
    }

    #[test]
    fn keys_come_from_each_kind_of_source() {
        let p = parts(
            "/rooms/blue/ws?user=7&room=red&x",
            &[("x-tenant", "acme"), ("cookie", "a=1; sid=\"abc\""), ("cookie", "z=2")],
        );
        assert_eq!(key("query:room", &p).as_deref(), Some("red"));
        assert_eq!(key("query:nope", &p), None);
        assert_eq!(key("query:x", &p), None, "a bare name has no value");
        assert_eq!(key("header:x-tenant", &p).as_deref(), Some("acme"));
        assert_eq!(key("cookie:sid", &p).as_deref(), Some("abc"));
        assert_eq!(key("cookie:z", &p).as_deref(), Some("2"));
        assert_eq!(key("path:2", &p).as_deref(), Some("blue"));
        assert_eq!(key("path:4", &p), None);
        assert_eq!(extract_key(&KeySpec::Ip, &p, "10.1.2.3".parse().unwrap()).unwrap().as_ref(), &[10, 1, 2, 3]);
    }

    #[test]
    fn mapped_ipv6_hashes_like_ipv4() {
        let p = parts("/", &[]);
        let v4 = extract_key(&KeySpec::Ip, &p, "10.1.2.3".parse().unwrap()).unwrap().into_owned();
        let mapped = extract_key(&KeySpec::Ip, &p, "::ffff:10.1.2.3".parse().unwrap()).unwrap().into_owned();
        assert_eq!(v4, mapped);
    }

    #[test]
    fn first_matching_route_wins() {
        let r = |host: Option<&str>, prefix: Option<&str>, pool| Route {
            listener: "public".into(),
            host: host.map(Into::into),
            path_prefix: prefix.map(Into::into),
            pool,
        };
        let routes = vec![
            r(Some("chat.example.com"), Some("/ws"), 0),
            r(Some("chat.example.com"), None, 1),
            r(None, Some("/api"), 2),
            r(None, None, 3),
        ];
        let pick = |host, path| find(&routes, "public", host, path).map(|r| r.pool);
        assert_eq!(pick(Some("chat.example.com"), "/ws/x"), Some(0));
        assert_eq!(pick(Some("CHAT.example.com:8443"), "/ws"), Some(0));
        assert_eq!(pick(Some("chat.example.com"), "/other"), Some(1));
        assert_eq!(pick(Some("other"), "/api/v1"), Some(2));
        assert_eq!(pick(None, "/"), Some(3));
        assert_eq!(find(&routes, "private", None, "/").map(|r| r.pool), None);
    }

    #[test]
    fn host_with_port_in_route_matches_exactly() {
        assert!(host_matches("a.test:8080", "a.test:8080"));
        assert!(!host_matches("a.test:8080", "a.test:9090"));
        assert!(host_matches("[::1]", "[::1]:80"));
    }
}
