//! One client connection: hyper serving HTTP/1.1 and cleartext HTTP/2 on it
//! (with upgrades), one `proxy::handle` call per request.
//!
//! Limits that belong to the connection live here: the time a client may take
//! to send its first request, the header size, keep-alive.

use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
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
pub async fn serve(stream: TcpStream, ctx: Arc<ConnCtx>, watcher: Option<Watcher>) {
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
    let snapshot = ctx.snapshot.clone();
    let service = service_fn(move |req| proxy::handle(ctx.clone(), req));
    let conn = snapshot.http_server.serve_connection_with_upgrades(TokioIo::new(stream), service);
    // Watched connections are told to finish at shutdown: GOAWAY, keep-alive off.
    let result = match watcher {
        Some(w) => w.watch(conn).await,
        None => conn.await,
    };
    if let Err(e) = result {
        debug!(error = %e, "client connection ended with an error");
    }
}
