//! The WebSocket hand-off: recognising an upgrade, refusing an invalid one
//! before it reaches a backend, forwarding the handshake on a connection of
//! its own, relaying the backend's answer exactly, and after a `101` starting
//! the tunnel.
//!
//! Only `Upgrade: websocket` becomes a tunnel: a request asking to upgrade to
//! anything else (h2c, ...) is forwarded as a plain request with its
//! hop-by-hop headers removed.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::header;
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::error::ProxyError;
use crate::metrics::{self, Handles};
use crate::proxy::{ConnCtx, Exchange, ProxyBody, Tracked};
use crate::snapshot::{Backend, Pool};
use crate::tunnel::{self, Counters};
use crate::upstream::{self, ForwardedFor, Forwarding, HopByHop};

mod backend;
use backend::Answer;

/// What kind of request this is, as far as upgrades go.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// No WebSocket upgrade asked for: forward as a plain request.
    Plain,
    /// A valid WebSocket opening handshake.
    WebSocket,
    /// A WebSocket upgrade that breaks RFC 6455: answer 400 with the reason.
    Invalid(&'static str),
}

/// Whether a header holds `token` in its comma-separated list, ignoring case.
fn has_token(parts: &Parts, name: header::HeaderName, token: &str) -> bool {
    parts
        .headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Classifies a request (RFC 6455 §4.2.1).
pub fn classify(parts: &Parts) -> Kind {
    if !has_token(parts, header::UPGRADE, "websocket") || !has_token(parts, header::CONNECTION, "upgrade") {
        return Kind::Plain;
    }
    if parts.method != Method::GET {
        return Kind::Invalid("the method must be GET");
    }
    if parts.version != Version::HTTP_11 {
        return Kind::Invalid("the request must be HTTP/1.1");
    }
    if parts.headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
        return Kind::Invalid("Sec-WebSocket-Version must be 13");
    }
    let key_ok = parts
        .headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k.as_bytes()).ok())
        .is_some_and(|k| k.len() == 16);
    if !key_ok {
        return Kind::Invalid("Sec-WebSocket-Key must be 16 bytes in base64");
    }
    Kind::WebSocket
}

/// Forwards a WebSocket handshake to a backend of `pool` and relays its
/// answer; after a `101` the tunnel runs in a task of its own.
pub async fn proxy(
    ctx: Arc<ConnCtx>,
    mut req: Request<Incoming>,
    pool: Arc<Pool>,
    ex: Exchange,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let on_client_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    let limits = &ctx.snapshot.limits;

    // Connect, walking the ring past backends that refuse: nothing was sent
    // yet, so trying the next one is safe.
    let mut tried: Vec<usize> = Vec::new();
    let (idx, mut stream) = loop {
        let Some(idx) = pool.pick(ex.key_hash, &tried) else {
            return ex.fail(&ctx, &pool, None, ProxyError::NoBackend(pool.name.to_string()));
        };
        let backend = &pool.backends[idx];
        match upstream::dial(&backend.addr, limits.connect_timeout).await {
            Ok(stream) => {
                backend.connect_succeeded();
                break (idx, stream);
            }
            Err(source) => {
                debug!(backend = %backend.addr, error = %source, "backend connect failed");
                backend.connect_failed();
                tried.push(idx);
                if tried.len() >= pool.backends.len().min(3) {
                    let err = ProxyError::Connect { backend: backend.addr.to_string(), source };
                    return ex.fail(&ctx, &pool, Some(idx), err);
                }
            }
        }
    };
    let backend = pool.backends[idx].clone();

    // The handshake as the backend sees it: end-to-end headers, the upgrade
    // pair, and who the client is, written straight into one buffer.
    let upgrade = parts.headers.get(header::UPGRADE).map_or(&b"websocket"[..], |v| v.as_bytes());
    let client = ForwardedFor { client: ctx.client, proto: ctx.proto, host: crate::route::request_host(&parts) };
    let forwarding = Forwarding::of(&parts.headers, &client);
    let path = match parts.uri.path_and_query() {
        Some(p) if p.as_str().starts_with('/') => p.as_str(),
        _ => "/",
    };
    let head = backend::request_head(path, &parts.headers, &HopByHop::of(&parts.headers), &forwarding, upgrade);

    let exchange = backend::exchange(&mut stream, &head, limits.max_header_bytes);
    let answer = match tokio::time::timeout(limits.response_timeout, exchange).await {
        Err(_) => return ex.fail(&ctx, &pool, Some(idx), ProxyError::Timeout(backend.addr.to_string())),
        Ok(Err(e)) => return ex.fail(&ctx, &pool, Some(idx), broke(&backend, e)),
        Ok(Ok(answer)) => answer,
    };
    let handles =
        backend.metrics.get(&ctx.shared.metrics, &ctx.listener, metrics::Kind::WebSocket, &pool.name, &backend.addr);
    handles.handshake.observe(started.elapsed().as_secs_f64());
    let (headers, backend_early) = match answer {
        Answer::Switching { headers, early } => (headers, early),
        Answer::Refused { read } => return relay_refusal(&ctx, &pool, idx, &ex, stream, read, path).await,
    };

    handles.ok.inc();
    handles.usual_status.inc();
    let mut to_client = Response::new(Either::Right(Default::default()));
    *to_client.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *to_client.headers_mut() = headers;

    let guard = ctx.shared.tunnels.open(ctx.clone(), backend, &ex.key, ex.key_hash);
    // No span of its own (nor the connection's, which would then live as its
    // parent): an idle tunnel's memory is what a WebSocket proxy is judged
    // by, and a span costs hundreds of bytes. Its events name it instead.
    tokio::spawn(run_tunnel(guard, handles, on_client_upgrade, stream, backend_early));
    to_client
}

/// Relays a backend's refusal of the upgrade as a plain response; `read` is
/// what was read of it so far.
async fn relay_refusal(
    ctx: &ConnCtx,
    pool: &Pool,
    idx: usize,
    ex: &Exchange,
    stream: TcpStream,
    read: Vec<u8>,
    path: &str,
) -> Response<ProxyBody> {
    let backend = &pool.backends[idx];
    let relayed = tokio::time::timeout(ctx.snapshot.limits.response_timeout, backend::relay(stream, read, path));
    let mut resp = match relayed.await {
        Err(_) => return ex.fail(ctx, pool, Some(idx), ProxyError::Timeout(backend.addr.to_string())),
        Ok(Err(e)) => return ex.fail(ctx, pool, Some(idx), broke(backend, e)),
        Ok(Ok(resp)) => resp,
    };
    ex.record(ctx, pool, &backend.addr, ex.kind, "refused", resp.status());
    upstream::strip_hop_by_hop(resp.headers_mut());
    let bytes = ctx.shared.metrics.bytes_total.with_label_values(&[&*pool.name, &*backend.addr, "downstream"]);
    resp.map(|body| Either::Left(Tracked::counted(body, bytes)))
}

/// The error of a backend that broke the handshake exchange.
fn broke(backend: &Backend, e: impl std::error::Error + Send + Sync + 'static) -> ProxyError {
    ProxyError::Backend { backend: backend.addr.to_string(), source: Box::new(e) }
}

/// Waits for the client's upgrade, then splices until the tunnel ends (or
/// idles out). `backend_early` is what the backend sent right after its `101`.
///
/// Every open tunnel keeps this future, so it is kept small: an `async move`
/// block (an `async fn` stores its arguments twice), the handshake's leftovers
/// scoped so that they are gone before the long wait, the idle timer boxed.
fn run_tunnel(
    guard: crate::tunnels::TunnelGuard,
    handles: Arc<Handles>,
    on_client: OnUpgrade,
    backend: TcpStream,
    backend_early: Bytes,
) -> impl Future<Output = ()> + Send {
    let idle_timeout = guard.info.conn.snapshot.limits.idle_timeout;
    async move {
        let info = &guard.info;
        let ctx = &info.conn;
        let (pool, addr) = (&*info.backend.pool, &*info.backend.addr);
        let active = &handles.active;
        active.inc();
        let splice = {
            let client = match on_client.await {
                Ok(client) => client,
                Err(e) => {
                    debug!(tunnel = info.id, error = %e, "client upgrade did not complete");
                    active.dec();
                    return;
                }
            };
            let counters = |tunnel, d: usize| Counters {
                tunnel,
                bytes: &handles.bytes[d],
                messages: &handles.messages[d],
                closes: &ctx.shared.metrics.close_frames_sent,
            };
            tunnel::run(
                client,
                backend,
                backend_early,
                ctx.snapshot.limits.splice,
                info,
                counters(&info.bytes_up, 0),
                counters(&info.bytes_down, 1),
            )
        };
        let mut splice = std::pin::pin!(splice);
        let mut idle = idle_timeout.map(|idle| Box::pin(idle_watch(info, idle)));
        let result = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = splice.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            match idle.as_mut().map(|w| w.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
                _ => Poll::Pending,
            }
        })
        .await;
        drop(idle);
        active.dec();
        let age = info.opened.elapsed();
        handles.duration.observe(age.as_secs_f64());
        info!(
            target: "tidegate::access",
            tunnel = info.id,
            listener = %ctx.listener,
            pool,
            backend = addr,
            client = %ctx.client,
            key = %info.key,
            bytes_up = info.bytes_up.load(std::sync::atomic::Ordering::Relaxed),
            bytes_down = info.bytes_down.load(std::sync::atomic::Ordering::Relaxed),
            seconds = age.as_secs_f64(),
            result = %result.as_ref().map_or_else(|e| e.to_string(), |_| "closed".into()),
            "tunnel closed"
        );
    }
}

/// Resolves once a whole `idle` period passes with no byte moving either way.
/// Checked once per period (so the cut comes between one and two periods of
/// silence) instead of touching a clock on every read.
async fn idle_watch(info: &crate::tunnels::TunnelInfo, idle: Duration) {
    use std::sync::atomic::Ordering::Relaxed;
    let moved = || info.bytes_up.load(Relaxed) + info.bytes_down.load(Relaxed);
    let mut last = moved();
    loop {
        tokio::time::sleep(idle).await;
        let now = moved();
        if now == last {
            return;
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().method(method).uri("/ws");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const KEY: (&str, &str) = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    const VERSION: (&str, &str) = ("sec-websocket-version", "13");

    #[test]
    fn recognises_a_valid_handshake_in_any_case() {
        let p = parts("GET", &[("upgrade", "WebSocket"), ("connection", "keep-alive, Upgrade"), KEY, VERSION]);
        assert_eq!(classify(&p), Kind::WebSocket);
    }

    #[test]
    fn other_upgrades_and_half_asks_are_plain() {
        assert_eq!(
            classify(&parts("GET", &[("upgrade", "h2c"), ("connection", "upgrade"), KEY, VERSION])),
            Kind::Plain
        );
        assert_eq!(classify(&parts("GET", &[("upgrade", "websocket"), KEY, VERSION])), Kind::Plain);
        assert_eq!(classify(&parts("GET", &[])), Kind::Plain);
    }

    #[test]
    fn invalid_handshakes_say_why() {
        let up = [("upgrade", "websocket"), ("connection", "upgrade")];
        let with = |extra: &[(&'static str, &'static str)]| [&up[..], extra].concat();
        assert!(matches!(classify(&parts("POST", &with(&[KEY, VERSION]))), Kind::Invalid(m) if m.contains("GET")));
        assert!(matches!(classify(&parts("GET", &with(&[KEY]))), Kind::Invalid(m) if m.contains("Version")));
        assert!(matches!(classify(&parts("GET", &with(&[KEY, ("sec-websocket-version", "8")]))), Kind::Invalid(_)));
        assert!(matches!(classify(&parts("GET", &with(&[VERSION]))), Kind::Invalid(m) if m.contains("Key")));
        let short = ("sec-websocket-key", "c2hvcnQ=");
        assert!(matches!(classify(&parts("GET", &with(&[short, VERSION]))), Kind::Invalid(m) if m.contains("Key")));
    }
}
