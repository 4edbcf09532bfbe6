//! One client connection: hyper serving HTTP/1.1 and cleartext HTTP/2 on it
//! (with upgrades), one `proxy::handle` call per request.
//!
//! Limits that belong to the connection live here: the time a client may take
//! to send its first request, the header size, keep-alive.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::debug;

use crate::config::Limits;
use crate::proxy::{self, ConnCtx};

/// hyper refuses header buffers smaller than this.
const MIN_HEADER_BUF: usize = 8192;

/// Builds the hyper server settings for `limits`.
pub fn server_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BUF))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    builder
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's HTTP/1.1 server with the same settings as `server_builder`'s.
fn http1_builder(limits: &Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BUF))
        .keep_alive(true);
    builder
}

/// Serves one client connection until it closes or becomes a tunnel.
pub async fn serve(stream: TcpStream, ctx: Arc<ConnCtx>) {
    let closing = ctx.shared.closing.subscribe();
    let _ = stream.set_nodelay(true);
    let handshake_timeout = ctx.snapshot.limits.handshake_timeout;
    // hyper's header timeout starts with the first request line; a client that
    // connects and sends nothing is cut here.
    // (`readable()` may wake spuriously; `peek` waits for a real byte.)
    let mut first = [0u8; H2_PREFACE.len()];
    let peeked = match tokio::time::timeout(handshake_timeout, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => n,
        Ok(_) => return,
        Err(_) => {
            debug!("client sent nothing before the handshake timeout");
            return;
        }
    };
    let this = ctx.clone();
    let service = service_fn(move |req| proxy::handle(ctx.clone(), req));
    let io = TokioIo::new(stream);
    // What the client sent first tells HTTP/1 from HTTP/2 (prior knowledge),
    // so HTTP/1, by far the most common, is served by hyper's HTTP/1 server
    // directly: `auto` would read the first 24 bytes again on their own and
    // replay them, one more read and one more buffer copy per connection.
    let result = if H2_PREFACE.starts_with(&first[..peeked]) {
        let conn = this.snapshot.http_server.serve_connection_with_upgrades(io, service);
        // Boxed: the rarer path, which would otherwise grow every connection's task.
        Box::pin(run(conn, |c| c.graceful_shutdown(), &this, closing)).await
    } else {
        let conn = http1_builder(&this.snapshot.limits).serve_connection(io, service).with_upgrades();
        run(conn, |c| c.graceful_shutdown(), &this, closing).await.map_err(Into::into)
    };
    if let Err(e) = result {
        debug!(error = %e, "client connection ended with an error");
    }
}

/// Drives a connection to its end; at shutdown, ends it gracefully with
/// `graceful_shutdown`.
async fn run<C, T>(conn: C, graceful_shutdown: fn(Pin<&mut C>), ctx: &ConnCtx, mut closing: watch::Receiver<bool>) -> T
where
    C: Future<Output = T>,
{
    let handshake_timeout = ctx.snapshot.limits.handshake_timeout;
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        () = crate::server::stopped(&mut closing) => {
            // At shutdown the connection finishes: GOAWAY, keep-alive off. But
            // hyper closes a connection that has not started a request yet, and
            // this one was accepted, so its first request may be on the way:
            // give it until the handshake timeout to start, so it is answered.
            let started = async {
                while !ctx.served.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::select! {
                result = conn.as_mut() => result,
                _ = tokio::time::timeout(handshake_timeout, started) => {
                    graceful_shutdown(conn.as_mut());
                    conn.await
                }
            }
        }
    }
}
