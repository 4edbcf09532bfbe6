//! Real backends for the integration tests, on 127.0.0.1 with an ephemeral port.
//!
//! [`TestBackend`] is a hyper server (HTTP/1.1 and HTTP/2, with upgrades):
//!
//! | request | answer |
//! | --- | --- |
//! | `/whoami` | the backend's name |
//! | `/healthz` | `ok` |
//! | `/headers` | JSON object: lowercased header name → array of values |
//! | `/sse?n=N&gap_ms=G` | `text/event-stream`, N events `data: i\n\n`, G ms apart, each flushed on its own |
//! | `/bytes?n=N` | N bytes, byte i = `i % 251`, streamed in 64 KiB chunks |
//! | `/slow?ms=M` | waits M ms, then `slow` |
//! | `/echo` (POST) | streams the request body back |
//! | WebSocket upgrade on `/refuse` | 403 `refused by NAME` |
//! | WebSocket upgrade on any other path | 101, then echo (text `whoami` gets NAME) |
//! | anything else | 404 |
//!
//! Every response, the 101 included, carries `x-backend: NAME`.
//! [`TestBackend::kill`] (and `Drop`) simulates a crash: the listener is closed
//! at once (new connections are refused) and every accepted connection is cut.
//!
//! [`RawEarlyBackend`] speaks raw TCP and sends a text frame `early` in the same
//! write as its `101`, then echoes.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Sleep;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

type RespBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Largest WebSocket message and frame the echo accepts (16 MiB messages pass).
const WS_MAX: usize = 64 << 20;
const CHUNK: u64 = 64 * 1024;
const MAX_SSE_EVENTS: u64 = 1_000_000;
const MAX_WAIT_MS: u64 = 600_000;
const MAX_BYTES: u64 = 8 << 30;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(WS_MAX)).max_frame_size(Some(WS_MAX))
}

struct Tasks {
    killed: bool,
    set: JoinSet<()>,
}

struct Shared {
    name: String,
    name_header: HeaderValue,
    accepted: AtomicUsize,
    last_headers: Mutex<Option<HeaderMap>>,
    listener: Mutex<Option<TcpListener>>,
    tasks: Mutex<Tasks>,
}

impl Shared {
    /// Spawns a task that `kill` aborts; after `kill`, spawns nothing.
    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = lock(&self.tasks);
        if tasks.killed {
            return;
        }
        while tasks.set.try_join_next().is_some() {}
        tasks.set.spawn(fut);
    }
}

/// A real HTTP + WebSocket backend on 127.0.0.1 (see the module docs).
pub struct TestBackend {
    pub addr: SocketAddr,
    pub name: String,
    shared: Arc<Shared>,
}

impl TestBackend {
    /// Binds 127.0.0.1:0 and starts serving. Panics if `name` is not a valid header value.
    pub async fn start(name: &str) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            name: name.to_string(),
            name_header: HeaderValue::from_str(name).expect("backend name must be a header value"),
            accepted: AtomicUsize::new(0),
            last_headers: Mutex::new(None),
            listener: Mutex::new(Some(listener)),
            tasks: Mutex::new(Tasks { killed: false, set: JoinSet::new() }),
        });
        shared.spawn(accept_loop(shared.clone()));
        TestBackend { addr, name: name.to_string(), shared }
    }

    /// Simulates a crash: closes the listener now (connects are refused from here
    /// on) and aborts every connection it accepted, WebSockets included. Idempotent.
    pub fn kill(&self) {
        drop(lock(&self.shared.listener).take());
        let mut tasks = lock(&self.shared.tasks);
        tasks.killed = true;
        tasks.set.abort_all();
    }

    /// TCP connections accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Headers of the most recent request of any kind (WebSocket handshakes included).
    pub fn last_request_headers(&self) -> Option<HeaderMap> {
        lock(&self.shared.last_headers).clone()
    }

    /// `ws://ADDR{path}`, handy for connecting straight to the backend.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn accept_loop(shared: Arc<Shared>) {
    loop {
        // The listener lives in `shared` so that `kill` can close it synchronously;
        // the lock is held only while polling, never across an await.
        let accepted = poll_fn(|cx| match lock(&shared.listener).as_ref() {
            Some(listener) => listener.poll_accept(cx).map(Some),
            None => Poll::Ready(None),
        })
        .await;
        match accepted {
            None => return,
            Some(Ok((stream, _))) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                shared.spawn(serve_conn(shared.clone(), stream));
            }
            Some(Err(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn serve_conn(shared: Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let svc = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .await;
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<RespBody> {
    *lock(&shared.last_headers) = Some(req.headers().clone());
    let mut resp = if wants_websocket(&req) { websocket(&shared, req) } else { route(&shared, req).await };
    resp.headers_mut().insert("x-backend", shared.name_header.clone());
    resp
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut resp = Response::new(Full::new(body.into()).map_err(|never: Infallible| match never {}).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<RespBody> {
    full(status, "text/plain; charset=utf-8", body)
}

fn query_u64(req: &Request<Incoming>, key: &str, default: u64, max: u64) -> u64 {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .unwrap_or(default)
        .min(max)
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Response<RespBody> {
    match req.uri().path() {
        "/whoami" => text(StatusCode::OK, shared.name.clone()),
        "/healthz" => text(StatusCode::OK, "ok"),
        "/close" => {
            // Answers, then closes the connection (keep-alive refused).
            let mut resp = text(StatusCode::OK, shared.name.clone());
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
        "/headers" => {
            let mut map = serde_json::Map::new();
            for name in req.headers().keys() {
                let values = req
                    .headers()
                    .get_all(name)
                    .iter()
                    .map(|v| serde_json::Value::from(String::from_utf8_lossy(v.as_bytes())))
                    .collect();
                map.insert(name.as_str().to_string(), serde_json::Value::Array(values));
            }
            let body = serde_json::Value::Object(map).to_string();
            full(StatusCode::OK, "application/json", body)
        }
        "/sse" => {
            let body = SseBody {
                next: 0,
                n: query_u64(&req, "n", 3, MAX_SSE_EVENTS),
                gap: Duration::from_millis(query_u64(&req, "gap_ms", 0, MAX_WAIT_MS)),
                sleep: None,
            };
            let mut resp = Response::new(body.map_err(|never| match never {}).boxed_unsync());
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            resp
        }
        "/bytes" => {
            let body = PatternBody { pos: 0, total: query_u64(&req, "n", 0, MAX_BYTES) };
            let mut resp = Response::new(body.map_err(|never| match never {}).boxed_unsync());
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            resp
        }
        "/slow" => {
            let ms = query_u64(&req, "ms", 1000, MAX_WAIT_MS);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, "slow")
        }
        "/echo" if req.method() == Method::POST => {
            let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
            let mut resp = Response::new(req.into_body().boxed_unsync());
            if let Some(ct) = content_type {
                resp.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `data: i\n\n` for i in 0..n, the first at once, then one every `gap`.
struct SseBody {
    next: u64,
    n: u64,
    gap: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.next >= this.n {
            return Poll::Ready(None);
        }
        if let Some(sleep) = this.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
        }
        let i = this.next;
        this.next += 1;
        this.sleep = Some(Box::pin(tokio::time::sleep(this.gap)));
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!("data: {i}\n\n"))))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.n
    }
}

/// `total` bytes, byte i = `i % 251`, in 64 KiB frames.
struct PatternBody {
    pos: u64,
    total: u64,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.pos >= self.total {
            return Poll::Ready(None);
        }
        let end = (self.pos + CHUNK).min(self.total);
        let chunk: Vec<u8> = (self.pos..end).map(|i| (i % 251) as u8).collect();
        self.pos = end;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.total
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.total - self.pos)
    }
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| v.to_str().map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))).unwrap_or(false))
}

fn wants_websocket(req: &Request<Incoming>) -> bool {
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && header_has_token(req.headers(), header::CONNECTION, "upgrade")
        && header_has_token(req.headers(), header::UPGRADE, "websocket")
}

fn websocket(shared: &Arc<Shared>, mut req: Request<Incoming>) -> Response<RespBody> {
    if req.uri().path() == "/refuse" {
        return text(StatusCode::FORBIDDEN, format!("refused by {}", shared.name));
    }
    let headers = req.headers();
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| base64::engine::general_purpose::STANDARD.decode(k.as_bytes()).is_ok_and(|raw| raw.len() == 16))
        .cloned();
    let version_ok = headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v.as_bytes() == b"13");
    let Some(key) = key.filter(|_| version_ok) else {
        return text(StatusCode::BAD_REQUEST, "bad websocket handshake");
    };
    let protocol = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| !p.is_empty())
        .and_then(|p| HeaderValue::from_str(p).ok());

    let on_upgrade = hyper::upgrade::on(&mut req);
    let name = shared.name.clone();
    shared.spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config())).await;
            echo(ws, &name).await;
        }
    });

    let mut resp = Response::new(Full::new(Bytes::new()).map_err(|n| match n {}).boxed_unsync());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    resp
}

/// Echoes text and binary messages (text `whoami` gets `name`; text
/// `close:CODE:REASON` makes the backend start a close handshake) until the
/// peer closes; a Close is answered with the same code and reason (tungstenite
/// does that) and flushed before returning.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>, name: &str) {
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(t) if t.as_str() == "whoami" => Message::text(name),
            Message::Text(t) if t.starts_with("close:") => {
                let mut parts = t.splitn(3, ':').skip(1);
                let code = parts.next().and_then(|c| c.parse::<u16>().ok()).unwrap_or(1000);
                let reason = parts.next().unwrap_or_default().to_string();
                Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: code.into(),
                    reason: reason.into(),
                }))
            }
            Message::Text(_) | Message::Binary(_) => msg,
            // Pings are answered by tungstenite; the close reply is queued by
            // tungstenite and flushed by the next read, which then ends the loop.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {
                continue;
            }
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}

/// Raw-TCP WebSocket backend that writes its `101` and a text frame `early` in
/// one `write_all`, then echoes text and binary messages.
pub struct RawEarlyBackend {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RawEarlyBackend {
    pub async fn start() -> RawEarlyBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let task = tokio::spawn(async move {
            // Dropping this task (kill/Drop) drops the JoinSet and so every connection.
            let mut conns = JoinSet::new();
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        while conns.try_join_next().is_some() {}
                        conns.spawn(async move {
                            let _ = raw_early_conn(stream).await;
                        });
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
        RawEarlyBackend { addr, task }
    }

    /// Stops listening and drops every connection.
    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for RawEarlyBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_early_conn(mut stream: TcpStream) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 16 * 1024 {
            return Ok(());
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let key = head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| v.trim().to_string())
    });
    let Some(key) = key else {
        stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await?;
        return Ok(());
    };
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nx-backend: early\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes();
    out.extend_from_slice(&[0x81, 0x05]);
    out.extend_from_slice(b"early");
    stream.write_all(&out).await?;
    let rest = buf.split_off(head_end);
    let ws = WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(ws_config())).await;
    echo(ws, "early").await;
    Ok(())
}
