//! The tunnel: after a `101`, moves bytes both ways between client and
//! backend until both sides are done, counting bytes and frames, and says
//! goodbye properly when a drain asks it to.
//!
//! Written for memory: on raw TCP sockets (the common case) a direction waits
//! for readiness holding no buffer, and only then borrows one from a small
//! per-thread pool, so an idle tunnel costs its two sockets and one task.
//! A FIN from one side is passed on as a half-close; the other direction
//! keeps flowing. Each direction feeds a [`FrameTracker`], so a drain can
//! inject a Close frame at a frame boundary and never inside a frame.
//!
//! Other transports (an HTTP/2 stream, TLS) take the generic path, which
//! copies without framing: a drain can only close it at its deadline.
//! When to drain is `drain`'s business; this module only carries it out.
//!
//! With `limits.splice`, a raw TCP direction moves the payload of large
//! frames with splice(2) through a pipe ([`pipe`]) instead of through a
//! buffer. The tracker still sees every frame header: headers (and small
//! frames) are read and copied as before, and only the payload bytes the
//! tracker says are still to come in the current frame are spliced, then
//! skipped in the tracker ([`FrameTracker::skip_payload`]). So frame and
//! message counts stay exact and a drain finds its boundary the same way,
//! copying the draining tail. The price is an extra small read per large
//! frame: after a spliced frame, the next header is read alone (at most
//! `HEAD` bytes) so that the next payload can be spliced from its start.
//! Splicing starts only for a payload of `MIN_SPLICE` bytes or more; below
//! that the copy is cheaper than the extra calls.
//!
//! Measured (bench throughput scenario, 8 WebSockets, 3 interleaved rounds;
//! README): proxy MB per CPU-second went from 1,036 to 1,649 for 64 KiB
//! messages (x1.6) and from 1,385 to 3,296 for 1 MiB messages (x2.4). Off by
//! default: it costs file descriptors (see [`pipe`]) and gains nothing for
//! small messages.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use prometheus::{IntCounter, IntCounterVec};
use tokio::net::TcpStream;
use tracing::debug;

use crate::frames::FrameTracker;
use crate::tunnels::{Direction, DrainRequest, TunnelInfo};

mod pipe;

use pipe::Pipe;
pub use pipe::spliced_bytes;

/// Size of a pooled read buffer. Large enough for 64 KiB messages in one read.
const BUF_SIZE: usize = 64 * 1024;
/// Buffers kept per thread; more are freed, so the pool is bounded.
const POOL_MAX: usize = 16;
/// How long a direction waits, after its Close, for the peer's Close and FIN.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// The reason carried by the Close frames tidegate sends.
const CLOSE_REASON: &[u8] = b"tidegate: please reconnect";
/// With splice on, a payload with at least this many bytes still to come is
/// spliced rather than copied.
const MIN_SPLICE: u64 = 16 * 1024;
/// With splice on, after a spliced frame the next read takes at most this
/// much, the longest frame header, so the next payload can be spliced whole.
const HEAD: usize = 14;
/// The most one splice into a pipe asks for (the pipe may take less).
const SPLICE_MAX: u64 = 1 << 20;

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

/// Where one direction's traffic is counted: the tunnel's own counter (for
/// `/api/connections`) and the aggregated Prometheus ones.
pub struct Counters<'a> {
    pub tunnel: &'a AtomicU64,
    pub bytes: &'a IntCounter,
    pub messages: &'a IntCounter,
    /// Where Close frames tidegate sends in this direction are counted (by
    /// the tunnel's pool, the peer that gets them and their code).
    pub closes: &'a IntCounterVec,
}

/// Splices `client` and `backend` until both directions ended, one failed,
/// or a drain finished with them. `backend_early` is what the backend sent
/// right after its handshake.
///
/// Not an `async fn`: the transports are sorted out here, so that the future
/// every tunnel keeps for its whole life holds the two sockets and little else.
pub fn run<'a>(
    client: Upgraded,
    backend: TcpStream,
    backend_early: Bytes,
    splice: bool,
    info: &'a TunnelInfo,
    up: Counters<'a>,
    down: Counters<'a>,
) -> impl Future<Output = io::Result<()>> + Send + 'a {
    // Served by hyper's HTTP/1 server directly, or by `auto` (which wraps the socket).
    let client = client.downcast::<TokioIo<TcpStream>>().map(|parts| (parts.io.into_inner(), parts.read_buf)).or_else(
        |client| {
            hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<TcpStream>>(client)
                .map(|parts| (parts.io.into_inner(), parts.read_buf))
        },
    );
    match client {
        Ok((c, c_early)) => {
            futures_util::future::Either::Left(tcp(c, backend, [c_early, backend_early], splice, info, up, down))
        }
        Err(client) => {
            let client = Io::Upgraded(TokioIo::new(client));
            let backend = Io::Tcp(backend, backend_early);
            // Boxed: rare (TLS, HTTP/2), and large, which would grow every tunnel's task.
            futures_util::future::Either::Right(Box::pin(async move {
                tokio::select! {
                    r = generic(client, backend, up, down) => r,
                    () = forced(info, Direction::Up) => Err(io::Error::other("drain deadline reached")),
                }
            }))
        }
    }
}

/// The tunnel between two TCP sockets; `early` holds what hyper had already
/// read from each (client, backend).
///
/// An `async move` block rather than an `async fn`, whose arguments would be
/// stored twice in the future; the sockets and each direction's state are
/// kept once, and only borrowed.
fn tcp<'a>(
    c: TcpStream,
    b: TcpStream,
    early: [Bytes; 2],
    splice: bool,
    info: &'a TunnelInfo,
    up: Counters<'a>,
    down: Counters<'a>,
) -> impl Future<Output = io::Result<()>> + Send + 'a {
    let early = early.iter().any(|e| !e.is_empty()).then(|| Box::new(early));
    let mut halves = [Half::new(Direction::Up, up, splice), Half::new(Direction::Down, down, splice)];
    async move {
        let [up, down] = &mut halves;
        let mut upstream = Flow { src: &c, dst: &b, info, half: up };
        let mut downstream = Flow { src: &b, dst: &c, info, half: down };
        if let Some(early) = early {
            // A few bytes at most, into empty socket buffers.
            Box::pin(async {
                upstream.forward(&early[0]).await?;
                downstream.forward(&early[1]).await
            })
            .await?;
        }
        // Both directions in one hand-written poll: while idle the state is
        // the two flows and nothing else (no future per direction).
        let mut dirs = [Dir::Forward(upstream, None), Dir::Forward(downstream, None)];
        std::future::poll_fn(|cx| {
            let mut done = true;
            for i in 0..2 {
                let other_done = matches!(dirs[1 - i], Dir::Done);
                match dirs[i].poll(cx, other_done) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                    Poll::Pending => done = false,
                }
            }
            if done { Poll::Ready(Ok(())) } else { Poll::Pending }
        })
        .await
    }
}

/// What one direction of a TCP tunnel is doing.
enum Dir<'f, 'h, 'a> {
    /// Forwarding, with the part of a burst the destination could not take yet.
    Forward(Flow<'f, 'h, 'a>, Option<Pending>),
    /// Saying goodbye for a drain (rare: boxed).
    Goodbye(BoxedIo<'f>),
    Done,
}

/// What the destination could not take at once.
enum Pending {
    /// A copied burst: `buf[sent..len]` is still to be written, then
    /// `buf[..len]` counted.
    Buf { buf: PooledBuf, sent: usize, len: usize },
    /// Spliced payload (already counted) still in the pipe.
    Pipe(Pipe),
}

/// A boxed future of the tunnel's rare paths.
type BoxedIo<'f> = std::pin::Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'f>>;

impl<'f, 'h: 'f, 'a: 'h> Dir<'f, 'h, 'a> {
    /// Moves bytes until this direction is done (FIN passed on, goodbye said)
    /// or fails; a forced drain is a failure, which ends the tunnel.
    /// `last`: the other direction is done, so the sockets close next and
    /// their close sends the FIN (a half-close first would be a wasted call).
    fn poll(&mut self, cx: &mut Context<'_>, last: bool) -> Poll<io::Result<()>> {
        loop {
            match self {
                Dir::Forward(flow, pending) => match std::task::ready!(flow.poll_forward(pending, cx))? {
                    None => {
                        if !last {
                            let _ = socket2::SockRef::from(flow.dst).shutdown(Shutdown::Write);
                        }
                        *self = Dir::Done;
                    }
                    Some(DrainRequest::Force) => return Poll::Ready(Err(io::Error::other("drain deadline reached"))),
                    Some(DrainRequest::Close(code)) => {
                        if let Dir::Forward(mut flow, _) = std::mem::replace(self, Dir::Done) {
                            *self = Dir::Goodbye(Box::pin(async move { flow.goodbye(code).await }));
                        }
                    }
                },
                Dir::Goodbye(f) => {
                    let r = std::task::ready!(f.as_mut().poll(cx));
                    *self = Dir::Done;
                    return Poll::Ready(r);
                }
                Dir::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Resolves when a drain forces the tunnel closed.
async fn forced(info: &TunnelInfo, dir: Direction) {
    std::future::poll_fn(|cx| match info.poll_drain(dir, cx) {
        Poll::Ready(DrainRequest::Force) => Poll::Ready(()),
        _ => Poll::Pending,
    })
    .await
}

/// What one direction of a TCP tunnel owns.
struct Half<'a> {
    dir: Direction,
    /// Splice large payloads (`limits.splice` when the tunnel opened).
    splice: bool,
    /// With `splice`: frames here are large. While set, a payload is spliced
    /// to its end and the header after it is read alone. Starts set, so that
    /// the first large payload is spliced from its start; a header read alone
    /// that opens a small frame clears it, and small frames are then copied in
    /// full-buffer reads until a payload of `MIN_SPLICE` or more sets it again.
    large: bool,
    counters: Counters<'a>,
    frames: FrameTracker,
}

impl<'a> Half<'a> {
    fn new(dir: Direction, counters: Counters<'a>, splice: bool) -> Self {
        Half { dir, splice, large: splice, counters, frames: FrameTracker::new() }
    }
}

/// One direction of a TCP tunnel: its state and the sockets it moves between.
struct Flow<'s, 'h, 'a> {
    src: &'s TcpStream,
    dst: &'s TcpStream,
    info: &'a TunnelInfo,
    half: &'h mut Half<'a>,
}

impl Flow<'_, '_, '_> {
    /// Forwards until FIN (`None`) or a drain request, checked first, between
    /// bursts (never while a burst is half written). Holds a buffer or a pipe
    /// only while there is something to move.
    fn poll_forward(
        &mut self,
        pending: &mut Option<Pending>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Option<DrainRequest>>> {
        loop {
            match pending {
                Some(Pending::Buf { buf, sent, len }) => {
                    std::task::ready!(self.dst.poll_write_ready(cx))?;
                    match self.dst.try_write(&buf[*sent..*len]) {
                        Ok(n) => *sent += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    if sent < len {
                        continue;
                    }
                    if let Some(Pending::Buf { buf, len, .. }) = pending.take() {
                        self.count(&buf[..len]);
                    }
                }
                Some(Pending::Pipe(pipe)) => {
                    std::task::ready!(self.dst.poll_write_ready(cx))?;
                    match pipe.flush(self.dst) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    if pipe.held() > 0 {
                        continue;
                    }
                    *pending = None; // the empty pipe goes back to the pool
                }
                None => {}
            }
            if let Poll::Ready(request) = self.info.poll_drain(self.half.dir, cx) {
                return Poll::Ready(Ok(Some(request)));
            }
            std::task::ready!(self.src.poll_read_ready(cx))?;
            if self.wants_splice() {
                match self.splice_payload(pending) {
                    Ok(Some(())) => continue,
                    Ok(None) => return Poll::Ready(Ok(None)),
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            let mut buf = PooledBuf::take();
            loop {
                let head = self.half.large && self.half.frames.at_boundary();
                let want = if head { HEAD } else { buf.len() };
                let len = match self.src.try_read(&mut buf[..want]) {
                    Ok(0) => return Poll::Ready(Ok(None)),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                let mut sent = 0;
                while sent < len {
                    match self.dst.try_write(&buf[sent..len]) {
                        Ok(n) => sent += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                if sent < len {
                    *pending = Some(Pending::Buf { buf, sent, len });
                    break;
                }
                self.count(&buf[..len]);
                if head {
                    self.half.large = self.half.frames.payload_remaining() >= MIN_SPLICE;
                    break; // splice what follows, if the frame is large
                }
                if len < want {
                    break;
                }
            }
        }
    }

    /// True when the next bytes from the source should be spliced: payload
    /// of the current frame, which is large.
    fn wants_splice(&self) -> bool {
        let remaining = self.half.frames.payload_remaining();
        self.half.splice && remaining > 0 && (self.half.large || remaining >= MIN_SPLICE)
    }

    /// Splices the current frame's payload from the source to the destination
    /// while the source has some; `None` on the source's FIN. Leaves a pipe
    /// that still holds bytes in `pending`. Copies instead (`Some` at once)
    /// if no pipe can be had, so that a descriptor shortage only slows down.
    fn splice_payload(&mut self, pending: &mut Option<Pending>) -> io::Result<Option<()>> {
        let mut pipe = match Pipe::take() {
            Ok(pipe) => pipe,
            Err(e) => {
                debug!(tunnel = self.info.id, error = %e, "no pipe for splice: copying");
                self.half.splice = false;
                return Ok(Some(()));
            }
        };
        self.half.large = true;
        loop {
            let remaining = self.half.frames.payload_remaining();
            if remaining == 0 {
                return Ok(Some(()));
            }
            let n = match pipe.fill(self.src, remaining.min(SPLICE_MAX) as usize) {
                Ok(0) => return Ok(None),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(())),
                Err(e) => return Err(e),
            };
            self.count_skipped(n);
            match pipe.flush(self.dst) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if pipe.held() > 0 {
                *pending = Some(Pending::Pipe(pipe));
                return Ok(Some(()));
            }
        }
    }

    /// Counts `n` payload bytes that were spliced, not read: bytes, and the
    /// frame (and message) they may complete.
    fn count_skipped(&mut self, n: usize) {
        self.half.counters.tunnel.fetch_add(n as u64, Ordering::Relaxed);
        self.half.counters.bytes.inc_by(n as u64);
        let messages = self.half.frames.messages();
        self.half.frames.skip_payload(n as u64);
        if self.half.frames.messages() != messages {
            self.half.counters.messages.inc_by(self.half.frames.messages() - messages);
        }
    }

    /// Writes `data` on and counts it, bytes and frames.
    async fn forward(&mut self, data: &[u8]) -> io::Result<()> {
        write_all(self.dst, data).await?;
        self.count(data);
        Ok(())
    }

    /// Counts `data`, forwarded: bytes and frames.
    fn count(&mut self, data: &[u8]) {
        self.half.counters.tunnel.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.half.counters.bytes.inc_by(data.len() as u64);
        let messages = self.half.frames.messages();
        self.half.frames.feed(data);
        if self.half.frames.messages() != messages {
            self.half.counters.messages.inc_by(self.half.frames.messages() - messages);
        }
    }

    /// The drain of one direction: forward up to the next frame boundary, send
    /// a Close there, then discard what the source sends until its FIN (its
    /// Close reply comes on the way), bounded by `CLOSE_WAIT` and the drain's
    /// hard deadline.
    async fn goodbye(&mut self, code: u16) -> io::Result<()> {
        let leftover = tokio::select! {
            biased;
            () = forced(self.info, self.half.dir) => return Err(io::Error::other("drain deadline reached")),
            leftover = self.reach_boundary() => leftover?,
        };
        let Some(leftover) = leftover else {
            return Ok(()); // the source ended first
        };
        write_all(self.dst, &close_frame(code, self.half.dir, self.info.id)).await?;
        let peer = match self.half.dir {
            Direction::Up => "backend",
            Direction::Down => "client",
        };
        let pool = &*self.info.backend.pool;
        self.half.counters.closes.with_label_values(&[pool, peer, &code.to_string()]).inc();
        let _ = socket2::SockRef::from(self.dst).shutdown(Shutdown::Write);
        self.half.frames.feed(&leftover);
        debug!(tunnel = self.info.id, dir = ?self.half.dir, code, "sent Close");
        tokio::select! {
            biased;
            () = forced(self.info, self.half.dir) => {}
            () = tokio::time::sleep(CLOSE_WAIT) => {}
            r = self.discard_until_eof() => r?,
        }
        Ok(())
    }

    /// Forwards whole frames until the stream is at a boundary; returns the
    /// bytes read past it (not forwarded), or `None` if the source ended.
    /// A stream that is not valid WebSocket framing never reaches a boundary:
    /// it is forwarded as is until the drain's deadline.
    async fn reach_boundary(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if self.half.frames.at_boundary() {
                return Ok(Some(Vec::new()));
            }
            read_ready(self.src).await?;
            let mut buf = PooledBuf::take();
            let n = match self.src.try_read(&mut buf) {
                Ok(0) => return Ok(None),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            match self.half.frames.next_boundary(&buf[..n]) {
                Some(k) => {
                    self.forward(&buf[..k]).await?;
                    return Ok(Some(buf[k..n].to_vec()));
                }
                None => self.forward(&buf[..n]).await?,
            }
        }
    }

    /// Reads and drops what the source sends (after our Close it may only
    /// be its own Close), until its FIN.
    async fn discard_until_eof(&mut self) -> io::Result<()> {
        loop {
            read_ready(self.src).await?;
            let mut buf = PooledBuf::take();
            match self.src.try_read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => self.half.frames.feed(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A Close frame carrying `code`: unmasked towards the client, as a server
/// sends it; masked towards the backend, as a client must (RFC 6455 §5.3).
fn close_frame(code: u16, dir: Direction, seed: u64) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(CLOSE_REASON);
    let mut frame = vec![0x88]; // FIN + Close
    match dir {
        Direction::Down => {
            frame.push(payload.len() as u8);
            frame.extend_from_slice(&payload);
        }
        Direction::Up => {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let key =
                (xxhash_rust::xxh3::xxh3_64(&[seed.to_le_bytes(), (nanos.as_nanos() as u64).to_le_bytes()].concat())
                    as u32)
                    .to_be_bytes();
            frame.push(0x80 | payload.len() as u8);
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
    }
    frame
}

/// Waits until `src` is readable. Through `poll_read_ready`, whose single
/// waker slot per socket is where hyper left the waker of the connection task
/// that served the handshake: taking the slot over releases that finished
/// task's memory (about 2 KiB per tunnel), which `readable()` would not.
async fn read_ready(src: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| src.poll_read_ready(cx)).await
}

async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match dst.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::future::poll_fn(|cx| dst.poll_write_ready(cx)).await?;
            }
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
async fn generic(client: Io, backend: Io, up: Counters<'_>, down: Counters<'_>) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    fn prepare(io: Io, early: &mut Vec<u8>) -> Box<dyn AsyncStream> {
        match io {
            Io::Tcp(s, pending) => {
                early.extend_from_slice(&pending);
                Box::new(s)
            }
            Io::Upgraded(u) => Box::new(u),
        }
    }
    let (mut c_early, mut b_early) = (Vec::new(), Vec::new());
    let mut c = prepare(client, &mut c_early);
    let mut b = prepare(backend, &mut b_early);
    b.write_all(&c_early).await?;
    c.write_all(&b_early).await?;
    let (n_up, n_down) = tokio::io::copy_bidirectional(&mut c, &mut b).await?;
    for (counters, n) in [(&up, n_up + c_early.len() as u64), (&down, n_down + b_early.len() as u64)] {
        counters.tunnel.fetch_add(n, Ordering::Relaxed);
        counters.bytes.inc_by(n);
    }
    Ok(())
}

trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncStream for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_frames_are_well_formed_both_ways() {
        let to_client = close_frame(1012, Direction::Down, 7);
        assert_eq!(&to_client[..4], &[0x88, 2 + CLOSE_REASON.len() as u8, 0x03, 0xF4]);
        assert_eq!(&to_client[4..], CLOSE_REASON);

        let to_backend = close_frame(1001, Direction::Up, 7);
        assert_eq!(to_backend[0], 0x88);
        assert_eq!(to_backend[1], 0x80 | (2 + CLOSE_REASON.len() as u8));
        let key = &to_backend[2..6];
        let payload: Vec<u8> = to_backend[6..].iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
        assert_eq!(&payload[..2], &1001u16.to_be_bytes());
        assert_eq!(&payload[2..], CLOSE_REASON);

        let mut t = FrameTracker::new();
        t.feed(&to_client);
        t.feed(&to_backend);
        assert!(t.at_boundary() && t.saw_close() && t.close_code() == Some(1012));
    }
}
