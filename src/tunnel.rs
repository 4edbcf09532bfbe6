//! The tunnel: after a `101`, moves bytes both ways between client and
//! backend until both sides are done, counting them.
//!
//! Written for memory: on raw TCP sockets (the common case) a direction waits
//! for readiness holding no buffer, and only then borrows one from a small
//! per-thread pool, so an idle tunnel costs its two sockets and one task.
//! Other transports (TLS, an HTTP/2 stream) take the generic path. A FIN from
//! one side is passed on as a half-close; the other direction keeps flowing.
//! This module does not decide when a tunnel should end early (drain, idle):
//! callers race it against those signals.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::net::TcpStream;

/// Size of a pooled read buffer. Large enough for 64 KiB messages in one read.
const BUF_SIZE: usize = 64 * 1024;
/// Buffers kept per thread; more are freed, so the pool is bounded.
const POOL_MAX: usize = 16;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer borrowed from this thread's pool, returned on drop.
struct PooledBuf(Option<Box<[u8]>>);

impl PooledBuf {
    fn take() -> PooledBuf {
        let buf = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice());
        PooledBuf(Some(buf))
    }
}

impl std::ops::Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl std::ops::DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            POOL.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL_MAX {
                    p.push(buf);
                }
            });
        }
    }
}

/// Where a direction's bytes are counted: the tunnel's own counter (for
/// `/api/connections`) and the aggregated Prometheus one.
pub struct Counter<'a> {
    pub tunnel: &'a AtomicU64,
    pub metric: IntCounter,
}

impl Counter<'_> {
    fn add(&self, n: usize) {
        self.tunnel.fetch_add(n as u64, Ordering::Relaxed);
        self.metric.inc_by(n as u64);
    }
}

/// Splices `client` and `backend` until both directions ended (or one failed).
pub async fn run(client: Upgraded, backend: Upgraded, up: Counter<'_>, down: Counter<'_>) -> io::Result<()> {
    let client = match hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<TcpStream>>(client) {
        Ok(parts) => Ok((parts.io.into_inner(), parts.read_buf)),
        Err(upgraded) => Err(upgraded),
    };
    let backend = match backend.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => Ok((parts.io.into_inner(), parts.read_buf)),
        Err(upgraded) => Err(upgraded),
    };
    match (client, backend) {
        (Ok((c, c_early)), Ok((b, b_early))) => {
            let upstream = pump(&c, &b, c_early, &up);
            let downstream = pump(&b, &c, b_early, &down);
            tokio::try_join!(upstream, downstream).map(|_| ())
        }
        (client, backend) => {
            let client = client.map_or_else(|u| Io::Upgraded(TokioIo::new(u)), |(s, early)| Io::Tcp(s, early));
            let backend = backend.map_or_else(|u| Io::Upgraded(TokioIo::new(u)), |(s, early)| Io::Tcp(s, early));
            generic(client, backend, up, down).await
        }
    }
}

/// Moves bytes from `src` to `dst` until `src` sends FIN, which is passed on.
async fn pump(src: &TcpStream, dst: &TcpStream, early: Bytes, counter: &Counter<'_>) -> io::Result<()> {
    if !early.is_empty() {
        write_all(dst, &early).await?;
        counter.add(early.len());
    }
    drop(early);
    loop {
        src.readable().await?;
        let mut buf = PooledBuf::take();
        // Read until the socket is empty, then give the buffer back before waiting.
        loop {
            match src.try_read(&mut buf) {
                Ok(0) => {
                    // Half-close: the other direction may still be sending.
                    let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Write);
                    return Ok(());
                }
                Ok(n) => {
                    write_all(dst, &buf[..n]).await?;
                    counter.add(n);
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match dst.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Either side of a tunnel that is not two raw TCP sockets.
enum Io {
    Tcp(TcpStream, Bytes),
    Upgraded(TokioIo<Upgraded>),
}

/// The generic path: `copy_bidirectional` over any transport, counted at the end.
async fn generic(client: Io, backend: Io, up: Counter<'_>, down: Counter<'_>) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    async fn prepare(io: Io, peer_early: &mut Vec<u8>) -> Box<dyn AsyncStream> {
        match io {
            Io::Tcp(s, early) => {
                peer_early.extend_from_slice(&early);
                Box::new(s)
            }
            Io::Upgraded(u) => Box::new(u),
        }
    }
    let (mut c_early, mut b_early) = (Vec::new(), Vec::new());
    let mut c = prepare(client, &mut c_early).await;
    let mut b = prepare(backend, &mut b_early).await;
    b.write_all(&c_early).await?;
    c.write_all(&b_early).await?;
    up.add(c_early.len());
    down.add(b_early.len());
    let (n_up, n_down) = tokio::io::copy_bidirectional(&mut c, &mut b).await?;
    up.add(n_up as usize);
    down.add(n_down as usize);
    Ok(())
}

trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncStream for T {}
