//! splice(2) for raw TCP tunnels: the payload of a large frame goes from the
//! source socket into a pipe and from the pipe into the destination socket,
//! as page references, without being copied through a user-space buffer.
//!
//! Owns the pipes: a direction takes one from a small per-thread pool when it
//! is about to splice and gives it back as soon as the pipe is empty again,
//! so an idle tunnel holds none. A pipe that still holds bytes (its
//! destination could not take them yet) stays with its direction until
//! they are written; if the tunnel ends first it is closed, never pooled.
//! It does not own framing (which bytes may be spliced is the tracker's
//! answer, asked by `tunnel`) nor readiness (the caller waits; the calls here
//! go through tokio's `try_io`, so an `EAGAIN` clears the socket's readiness).
//!
//! File descriptors: 2 per pipe. A pipe is held only between a splice in and
//! the splice out that empties it, so the cost is at most 2 per direction
//! whose destination is slow (4 per tunnel at worst), plus the pool
//! (`POOL_MAX` pipes, 16 fds, per thread that ran a tunnel). When no pipe can
//! be made (descriptor limit), the direction copies instead.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Pipe capacity asked for (the kernel default is 64 KiB). One splice moves at
/// most this much; larger pipes mean fewer calls for 1 MiB messages. The
/// request may be refused (a user over `/proc/sys/fs/pipe-user-pages-soft`):
/// the pipe then keeps its default size, which only means more calls.
const PIPE_SIZE: usize = 256 * 1024;
/// Empty pipes kept per thread; more are closed, so the pool is bounded.
const POOL_MAX: usize = 8;

/// Bytes moved by splice since the process started.
static SPLICED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static POOL: RefCell<Vec<Fds>> = const { RefCell::new(Vec::new()) };
}

/// Bytes moved by splice(2) since the process started (all tunnels, both
/// directions): the proof, in tests and when profiling, that splicing happens.
pub fn spliced_bytes() -> u64 {
    SPLICED.load(Ordering::Relaxed)
}

/// The two ends of a pipe.
struct Fds {
    read: OwnedFd,
    write: OwnedFd,
}

impl Fds {
    fn new() -> io::Result<Fds> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // Best effort: a refused size leaves the default, which still works.
        let _ = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE);
        Ok(Fds { read, write })
    }
}

/// A pipe borrowed from this thread's pool, and how many bytes it holds.
/// Back to the pool on drop if empty; closed if it still holds bytes.
pub(super) struct Pipe {
    /// Always `Some` until dropped (an `Option` so that `Drop` can pool it).
    fds: Option<Fds>,
    held: usize,
}

impl Pipe {
    /// An empty pipe, from the pool or new.
    pub(super) fn take() -> io::Result<Pipe> {
        let fds = match POOL.with(|p| p.borrow_mut().pop()) {
            Some(fds) => fds,
            None => Fds::new()?,
        };
        Ok(Pipe { fds: Some(fds), held: 0 })
    }

    /// Bytes in the pipe, still to be written out.
    pub(super) fn held(&self) -> usize {
        self.held
    }

    fn fds(&self) -> io::Result<&Fds> {
        self.fds.as_ref().ok_or_else(|| io::Error::other("pipe already returned"))
    }

    /// Moves up to `max` bytes from `src` into the (empty) pipe: `Ok(0)` is
    /// the source's FIN, `WouldBlock` means nothing to read (readiness cleared).
    pub(super) fn fill(&mut self, src: &TcpStream, max: usize) -> io::Result<usize> {
        debug_assert_eq!(self.held, 0, "a pipe is filled only when empty");
        let fds = self.fds()?;
        let n = src.try_io(Interest::READABLE, || {
            Ok(rustix::pipe::splice(src, None, &fds.write, None, max, SpliceFlags::MOVE | SpliceFlags::NONBLOCK)?)
        })?;
        self.held += n;
        Ok(n)
    }

    /// Moves what the pipe holds into `dst`, as much as it takes now;
    /// `WouldBlock` means it takes nothing (readiness cleared).
    pub(super) fn flush(&mut self, dst: &TcpStream) -> io::Result<usize> {
        let fds = self.fds()?;
        let n = dst.try_io(Interest::WRITABLE, || {
            Ok(rustix::pipe::splice(&fds.read, None, dst, None, self.held, SpliceFlags::MOVE | SpliceFlags::NONBLOCK)?)
        })?;
        self.held -= n;
        SPLICED.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // A pipe still holding bytes belongs to a tunnel that ended: it closes here.
        if let Some(fds) = self.fds.take().filter(|_| self.held == 0) {
            POOL.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL_MAX {
                    p.push(fds);
                }
            });
        }
    }
}
