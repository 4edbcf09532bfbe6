//! Accepting clients: binding, the accept loop with its connection limit and
//! its backoff on accept errors, and one tracing span per connection.
//!
//! What happens on the connection afterwards is `connection`'s business.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::level_filters::LevelFilter;
use tracing::{Instrument, Level, Span, debug, info_span, warn};

use crate::connection;
use crate::proxy::ConnCtx;
use crate::server::Shared;

/// Backlog of every listening socket: a burst of reconnecting clients should
/// queue, not be refused.
const BACKLOG: i32 = 4096;

/// Binds a listening socket with `SO_REUSEADDR` and a deep backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Accepts clients on `listener` until `stop` turns true.
pub async fn accept_loop(listener: TcpListener, name: Arc<str>, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::ZERO;
    // Rejections get a small task each to say 503 politely; bounded so an
    // overload cannot turn into unbounded tasks.
    let rejecting = Arc::new(Semaphore::new(256));
    let open_gauge = shared.metrics.client_connections_active.with_label_values(&[&*name]);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = crate::server::stopped(&mut stop) => return,
        };
        let (stream, client) = match accepted {
            Ok(accepted) => {
                backoff = Duration::ZERO;
                accepted
            }
            Err(e) => {
                // EMFILE and friends: wait, as the error will not clear by
                // itself within microseconds, but never stop accepting.
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                warn!(listener = %name, error = %e, ?backoff, "accept failed; retrying");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let Ok(permit) = shared.limit.clone().try_acquire_owned() else {
            shared.metrics.client_connections_rejected.with_label_values(&[&*name, "max_connections"]).inc();
            if let Ok(permit) = rejecting.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    reject_busy(stream).await;
                    drop(permit);
                });
            }
            continue;
        };
        let ctx = Arc::new(ConnCtx {
            shared: shared.clone(),
            snapshot: shared.snapshot.load_full(),
            listener: name.clone(),
            client,
            proto: "http",
            _permit: permit,
            served: Default::default(),
            open_gauge: open_gauge.clone(),
        });
        open_gauge.inc();
        // The span only gives the connection's events their context: when none
        // of them can be emitted (no debug anywhere, access log off) it is
        // skipped, as it cost ~6k instructions, 8% of a WebSocket handshake.
        let span = if LevelFilter::current() >= LevelFilter::DEBUG
            || tracing::enabled!(target: "tidegate::access", Level::INFO)
        {
            info_span!("conn", client.addr = %client, listener = %name)
        } else {
            Span::none()
        };
        tokio::spawn(connection::serve(stream, ctx).instrument(span));
    }
}

/// Answers a client over the connection limit with 503 and `Retry-After`,
/// then closes gently (reading what it sent, so the close is not a reset).
async fn reject_busy(mut stream: TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: text/plain\r\n\
content-length: 44\r\nconnection: close\r\n\r\ntidegate is at its connection limit; retry.\n";
    let result = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(BUSY).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        // Drain what the client sent until it closes, bounded by the timeout.
        while stream.readable().await.is_ok() {
            match stream.try_read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    debug!(?result, "rejected a client over the connection limit");
}
