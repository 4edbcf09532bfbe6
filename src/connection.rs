//! One client connection: hyper serving HTTP/1.1 and cleartext HTTP/2 on it
//! (with upgrades), one `proxy::handle` call per request.
//!
//! Limits that belong to the connection live here: the time a client may take
//! to send its first request, the header size, keep-alive.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
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

/// Serves one client connection until it closes or becomes a tunnel.
pub async fn serve(stream: TcpStream, ctx: Arc<ConnCtx>) {
    let mut closing = ctx.shared.closing.subscribe();
    let _ = stream.set_nodelay(true);
    let limits = &ctx.snapshot.limits;
    // hyper's header timeout starts with the first request line; a client that
    // connects and sends nothing is cut here.
    // (`readable()` may wake spuriously; `peek` waits for a real byte.)
    match tokio::time::timeout(limits.handshake_timeout, stream.peek(&mut [0u8; 1])).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(_) => return,
        Err(_) => {
            debug!("client sent nothing before the handshake timeout");
            return;
        }
    }
    let handshake_timeout = limits.handshake_timeout;
    let this = ctx.clone();
    let service = service_fn(move |req| proxy::handle(ctx.clone(), req));
    let conn = this.snapshot.http_server.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = crate::server::stopped(&mut closing) => {
            // At shutdown the connection finishes: GOAWAY, keep-alive off. But
            // hyper closes a connection that has not started a request yet, and
            // this one was accepted, so its first request may be on the way:
            // give it until the handshake timeout to start, so it is answered.
            let started = async {
                while !this.served.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::select! {
                result = conn.as_mut() => result,
                _ = tokio::time::timeout(handshake_timeout, started) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "client connection ended with an error");
    }
}
