//! Talking to backends: keep-alive connections for plain requests
//! (`keepalive`), the dialer, and the header hygiene plain requests and
//! WebSocket hand-offs share (hop-by-hop headers out, `Forwarded` /
//! `X-Forwarded-*` in).
//!
//! It does not choose the backend (`proxy` with `balance` does) nor splice
//! tunnels (`tunnel`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use tokio::net::TcpStream;

pub mod keepalive;

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
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
];

/// The headers of a message that describe its hop: the fixed list, and every
/// header its `Connection` names.
pub struct HopByHop {
    listed: Vec<HeaderName>,
}

impl HopByHop {
    pub fn of(headers: &HeaderMap) -> HopByHop {
        let listed = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        HopByHop { listed }
    }

    pub fn contains(&self, name: &HeaderName) -> bool {
        HOP_BY_HOP.contains(name) || name == header::PROXY_AUTHENTICATE || self.listed.contains(name)
    }
}

/// Removes hop-by-hop headers, including every header `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let hop = HopByHop::of(headers);
    // Most messages carry none: one pass over the few names present is
    // cheaper than hashing nine absent ones.
    if !headers.keys().any(|name| hop.contains(name)) {
        return;
    }
    for name in hop.listed.iter().chain(HOP_BY_HOP.iter()) {
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

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The names [`Forwarding`] sets: a request's own headers of these names are
/// replaced.
pub static FORWARDING_NAMES: [HeaderName; 4] =
    [X_FORWARDED_FOR, header::FORWARDED, X_FORWARDED_PROTO, X_FORWARDED_HOST];

/// The headers tidegate sets on a request to tell the backend about the
/// client: `X-Forwarded-For` and `Forwarded` extend the client's own,
/// `X-Forwarded-Proto` and `X-Forwarded-Host` replace them (a client cannot
/// spoof those two).
pub struct Forwarding<'a> {
    pub x_forwarded_for: String,
    pub forwarded: String,
    pub proto: &'static str,
    /// `None`: no host known, the client's `X-Forwarded-Host` is dropped.
    pub host: Option<&'a str>,
}

impl<'a> Forwarding<'a> {
    /// Computes the values for a request with `headers` from the client `f`.
    /// The address is formatted once, the values built with `push_str`.
    pub fn of(headers: &HeaderMap, f: &ForwardedFor<'a>) -> Forwarding<'a> {
        let ip = f.client.ip().to_canonical();
        let ip_text = ip_text(ip);

        let prev_xff = headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok());
        let mut xff = String::with_capacity(prev_xff.map_or(0, |p| p.len() + 2) + ip_text.len());
        if let Some(prev) = prev_xff {
            xff.push_str(prev);
            xff.push_str(", ");
        }
        xff.push_str(&ip_text);

        let prev_fwd = headers.get(header::FORWARDED).and_then(|v| v.to_str().ok());
        let mut fwd = String::with_capacity(prev_fwd.map_or(0, |p| p.len() + 2) + 64);
        if let Some(prev) = prev_fwd {
            fwd.push_str(prev);
            fwd.push_str(", ");
        }
        fwd.push_str("for=");
        if ip.is_ipv6() {
            fwd.push_str("\"[");
            fwd.push_str(&ip_text);
            fwd.push_str("]\"");
        } else {
            fwd.push_str(&ip_text);
        }
        fwd.push_str(";proto=");
        fwd.push_str(f.proto);
        let host = f.host.filter(|h| h.bytes().all(|b| b.is_ascii_graphic()));
        if let Some(host) = host.filter(|h| !h.contains('"')) {
            fwd.push_str(";host=\"");
            fwd.push_str(host);
            fwd.push('"');
        }
        Forwarding { x_forwarded_for: xff, forwarded: fwd, proto: f.proto, host }
    }

    /// The headers to send (`None`: none of that name), in the order of
    /// [`FORWARDING_NAMES`].
    pub fn pairs(&self) -> [(&'static HeaderName, Option<&str>); 4] {
        let [xff, fwd, proto, host] = &FORWARDING_NAMES;
        [(xff, Some(&self.x_forwarded_for)), (fwd, Some(&self.forwarded)), (proto, Some(self.proto)), (host, self.host)]
    }
}

/// Sets the [`Forwarding`] headers on a request about to be forwarded.
pub fn add_forwarded(headers: &mut HeaderMap, f: &ForwardedFor<'_>) {
    let fw = Forwarding::of(headers, f);
    // Up to four new entries: grow the map once, not once per insert.
    headers.reserve(4);
    for (name, value) in fw.pairs() {
        match value.and_then(|v| HeaderValue::from_str(v).ok()) {
            Some(value) => {
                headers.insert(name, value);
            }
            None => {
                headers.remove(name);
            }
        }
    }
}

/// The address as text: IPv4 by hand, as `Display` costs a formatter per
/// request on the hot path.
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
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
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert!(h.get("x-forwarded-host").is_none());
    }

    #[test]
    fn ipv4_text_matches_display() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.99.100", "255.255.255.255", "1.10.100.199"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }
}
