//! One request through the proxy: find its route and key, then either hand a
//! WebSocket upgrade to `upgrade` or forward a plain request through the
//! pooled client, streaming both bodies.
//!
//! Plain requests and WebSockets share the same route, key and ring, so a
//! client's long-polling fallback lands on the same backend as its WebSocket.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::Either;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use prometheus::{IntCounter, IntGauge};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info};

use crate::balance::hash_key;
use crate::error::ProxyError;
use crate::metrics::{self, Handles};
use crate::route;
use crate::server::Shared;
use crate::snapshot::{Backend, Pool, Snapshot};
use crate::upgrade::{self, Kind};
use crate::upstream::keepalive::{self, SendError};
use crate::upstream::{self, ForwardedFor};

/// The body of every response tidegate sends to a client: a backend's
/// streamed body, or a small one of our own.
pub type ProxyBody = Either<Tracked, http_body_util::Full<Bytes>>;

/// What every request of one client connection shares.
pub struct ConnCtx {
    pub shared: Arc<Shared>,
    /// The snapshot current when the connection was accepted; kept for its life.
    pub snapshot: Arc<Snapshot>,
    pub listener: Arc<str>,
    pub client: SocketAddr,
    /// "http" or "https", for `X-Forwarded-Proto`.
    pub proto: &'static str,
    /// The connection's place under `limits.max_connections`, held by any
    /// tunnel it turns into, so tunnels count against the limit too.
    pub _permit: OwnedSemaphorePermit,
    /// Set once the connection has started a request: shutdown lets a fresh
    /// connection's first request start before it asks the connection to end.
    pub served: std::sync::atomic::AtomicBool,
    /// `tidegate_client_connections_active` of this listener, decremented on drop.
    pub open_gauge: IntGauge,
}

impl Drop for ConnCtx {
    fn drop(&mut self) {
        self.open_gauge.dec();
    }
}

/// One request's routing result, carried through its exchange.
pub struct Exchange {
    pub key: Vec<u8>,
    pub key_hash: u64,
    /// "websocket" or "http": the `kind` label of the exchange's metrics.
    pub kind: &'static str,
}

impl Exchange {
    /// Counts one exchange's outcome and the status the client gets.
    pub fn record(&self, ctx: &ConnCtx, pool: &Pool, backend: &str, kind: &str, outcome: &str, status: StatusCode) {
        let m = &ctx.shared.metrics;
        m.connections_total.with_label_values(&[&*ctx.listener, &*pool.name, backend, kind, outcome]).inc();
        m.requests_total.with_label_values(&[&*pool.name, backend, status.as_str()]).inc();
    }

    /// The client's answer when the exchange failed, counted and logged.
    pub fn fail(&self, ctx: &ConnCtx, pool: &Pool, backend: Option<usize>, err: ProxyError) -> Response<ProxyBody> {
        let addr = backend.map_or("", |i| &*pool.backends[i].addr);
        debug!(pool = %pool.name, backend = addr, error = %err, "exchange failed");
        let resp = err.to_response();
        self.record(ctx, pool, addr, self.kind, err.outcome(), resp.status());
        resp
    }
}

/// The service of every client connection.
pub async fn handle(ctx: Arc<ConnCtx>, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
    ctx.served.store(true, Ordering::Relaxed);
    // What the access line needs is copied only when the line is wanted.
    if !tracing::enabled!(target: "tidegate::access", tracing::Level::INFO) {
        return Ok(route_and_forward(&ctx, req).await);
    }
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let resp = route_and_forward(&ctx, req).await;
    info!(
        target: "tidegate::access",
        client = %ctx.client,
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
    );
    Ok(resp)
}

async fn route_and_forward(ctx: &Arc<ConnCtx>, req: Request<Incoming>) -> Response<ProxyBody> {
    let snapshot = &ctx.snapshot;
    let (parts, body) = req.into_parts();
    let Some(route) = route::find(&snapshot.routes, &ctx.listener, route::request_host(&parts), parts.uri.path())
    else {
        return ProxyError::NoRoute.to_response();
    };
    let pool = snapshot.pools[route.pool].clone();
    let ip = ctx.client.ip();
    let key = route::extract_key(&pool.hash_key, &parts, ip)
        .or_else(|| route::extract_key(&pool.fallback_key, &parts, ip))
        .map(|k| k.into_owned())
        .unwrap_or_default();
    let kind = upgrade::classify(&parts);
    let ex = Exchange { key_hash: hash_key(&key), key, kind: if kind == Kind::Plain { "http" } else { "websocket" } };

    match kind {
        Kind::WebSocket => upgrade::proxy(ctx.clone(), Request::from_parts(parts, body), pool, ex).await,
        Kind::Invalid(reason) => ex.fail(ctx, &pool, None, ProxyError::BadHandshake(reason)),
        Kind::Plain => forward(ctx, Request::from_parts(parts, body), &pool, ex).await,
    }
}

/// Forwards a plain request to the key's backend and streams the answer back.
async fn forward(ctx: &Arc<ConnCtx>, req: Request<Incoming>, pool: &Arc<Pool>, ex: Exchange) -> Response<ProxyBody> {
    let Some(idx) = pool.pick(ex.key_hash, &[]) else {
        return ex.fail(ctx, pool, None, ProxyError::NoBackend(pool.name.to_string()));
    };
    let backend = pool.backends[idx].clone();
    let (mut parts, body) = req.into_parts();

    let host = route::request_host(&parts).map(str::to_owned);
    upstream::strip_hop_by_hop(&mut parts.headers);
    upstream::add_forwarded(
        &mut parts.headers,
        &ForwardedFor { client: ctx.client, proto: ctx.proto, host: host.as_deref() },
    );
    if let (None, Some(h)) = (parts.headers.get(header::HOST), host.as_deref()) {
        // An HTTP/2 client names the host in the URI only; HTTP/1.1 needs the header.
        if let Ok(v) = HeaderValue::from_str(h) {
            parts.headers.insert(header::HOST, v);
        }
    }
    if parts.uri.authority().is_some() {
        // An HTTP/2 client's absolute URI; HTTP/1.1 to the backend wants origin-form.
        let origin = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(origin);
    }
    parts.version = Version::HTTP_11;

    let handles =
        backend.metrics.get(&ctx.shared.metrics, &ctx.listener, metrics::Kind::Http, &pool.name, &backend.addr);
    handles.active.inc();
    backend.open.fetch_add(1, Ordering::Relaxed);
    let mut in_flight = InFlight { backend: backend.clone(), handles, started: Instant::now(), conn: None };

    let limits = &ctx.snapshot.limits;
    let sent = backend.idle.send(&backend.addr, Request::from_parts(parts, body), limits.connect_timeout);
    let mut resp = match tokio::time::timeout(limits.response_timeout, sent).await {
        Err(_) => return ex.fail(ctx, pool, Some(idx), ProxyError::Timeout(backend.addr.to_string())),
        Ok(Err(SendError::Connect(source))) => {
            backend.connect_failed();
            return ex.fail(ctx, pool, Some(idx), ProxyError::Connect { backend: backend.addr.to_string(), source });
        }
        Ok(Err(SendError::Backend(e))) => {
            let err = ProxyError::Backend { backend: backend.addr.to_string(), source: Box::new(e) };
            return ex.fail(ctx, pool, Some(idx), err);
        }
        Ok(Ok((resp, conn))) => {
            in_flight.conn = Some(conn);
            resp
        }
    };
    backend.connect_succeeded();
    if resp.status() == StatusCode::OK {
        in_flight.handles.ok.inc();
        in_flight.handles.usual_status.inc();
    } else {
        ex.record(ctx, pool, &backend.addr, ex.kind, "ok", resp.status());
    }
    upstream::strip_hop_by_hop(resp.headers_mut());
    let bytes = in_flight.handles.bytes[1].clone();
    resp.map(|body| Either::Left(Tracked { inner: body, bytes, ended: false, in_flight: Some(in_flight) }))
}

/// Holds a plain exchange open in the metrics until its response body is done.
pub struct InFlight {
    backend: Arc<Backend>,
    handles: Arc<Handles>,
    started: Instant,
    /// The backend connection, given back for reuse if the body is read to its end.
    conn: Option<keepalive::Conn>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.handles.active.dec();
        self.backend.open.fetch_sub(1, Ordering::Relaxed);
        self.handles.duration.observe(self.started.elapsed().as_secs_f64());
    }
}

/// A backend's response body on its way to the client, counted as it streams.
pub struct Tracked {
    inner: Incoming,
    bytes: IntCounter,
    /// Whether the body was read to its end.
    ended: bool,
    /// Present for plain exchanges, which stay active until the body is done.
    in_flight: Option<InFlight>,
}

impl Tracked {
    /// A body counted in `bytes` and tracked by nothing else.
    pub fn counted(inner: Incoming, bytes: IntCounter) -> Tracked {
        Tracked { inner, bytes, ended: false, in_flight: None }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // A body read to its end leaves its connection ready for the next
        // request; one abandoned halfway is closed by hyper, so not kept.
        if let Some(f) = &mut self.in_flight
            && (self.ended || self.inner.is_end_stream())
            && let Some(conn) = f.conn.take()
        {
            f.backend.idle.put(conn);
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.inc_by(data.len() as u64);
                }
            }
            Poll::Ready(None) => self.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
