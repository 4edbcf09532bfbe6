//! Talking to backends: the pooled client for plain requests, the dialer for
//! WebSocket hand-offs, and the header hygiene both share (hop-by-hop headers
//! out, `Forwarded` / `X-Forwarded-*` in).
//!
//! It does not choose the backend (`proxy` with `balance` does) nor splice
//! tunnels (`tunnel`).

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpStream;

/// The pooled HTTP/1.1 client used for plain requests to every backend.
pub type HttpClient = Client<HttpConnector, Incoming>;

/// Builds the client: keep-alive pools per backend, Nagle off, connect timeout.
pub fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

/// Opens a TCP connection to a backend (`host:port`; names are resolved
/// here), bounded by `timeout`.
pub async fn dial(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the
/// legacy ones proxies agree to drop.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
];

/// Removes hop-by-hop headers, including every header `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::PROXY_AUTHENTICATE);
}

/// What a backend is told about the client, per hop.
pub struct ForwardedFor<'a> {
    pub client: SocketAddr,
    /// "http" or "https": the scheme the client used to reach us.
    pub proto: &'static str,
    pub host: Option<&'a str>,
}

/// Appends the client to `X-Forwarded-For` and `Forwarded`, and sets
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (a client cannot spoof those two).
pub fn add_forwarded(headers: &mut HeaderMap, f: &ForwardedFor<'_>) {
    let ip = f.client.ip().to_canonical();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip.to_string(),
    };
    let node = if ip.is_ipv6() { format!("\"[{ip}]\"") } else { ip.to_string() };
    let mut fwd = format!("for={node};proto={}", f.proto);
    if let Some(host) = f.host.filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"')) {
        fwd.push_str(";host=\"");
        fwd.push_str(host);
        fwd.push('"');
    }
    if let Some(prev) = headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        fwd = format!("{prev}, {fwd}");
    }
    set(headers, "x-forwarded-for", &xff);
    set(headers, "forwarded", &fwd);
    set(headers, "x-forwarded-proto", f.proto);
    match f.host {
        Some(host) => set(headers, "x-forwarded-host", host),
        None => {
            headers.remove("x-forwarded-host");
        }
    }
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_go() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "close"),
            ("x-kept", "yes"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn forwarded_headers_append_the_client() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.insert("x-forwarded-host", HeaderValue::from_static("spoofed"));
        let f =
            ForwardedFor { client: "[::ffff:10.0.0.7]:4000".parse().unwrap(), proto: "http", host: Some("chat.test") };
        add_forwarded(&mut h, &f);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "chat.test");
        assert_eq!(h["forwarded"], "for=10.0.0.7;proto=http;host=\"chat.test\"");

        let mut h = HeaderMap::new();
        let f = ForwardedFor { client: "[2001:db8::1]:4000".parse().unwrap(), proto: "https", host: None };
        add_forwarded(&mut h, &f);
        assert_eq!(h["forwarded"], "for=\"[2001:db8::1]\";proto=https");
        assert!(h.get("x-forwarded-host").is_none());
    }
}
