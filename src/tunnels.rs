//! The registry of open tunnels: what `/api/connections` lists and what a
//! drain will walk. Entries are added when a tunnel opens and removed when
//! it closes (by the guard's `Drop`, so no path can leak one).
//!
//! The lock is held only to insert, remove or copy the list, never while
//! bytes move: the byte counters are atomics inside each entry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::proxy::ConnCtx;
use crate::snapshot::Backend;

/// One open tunnel.
pub struct TunnelInfo {
    pub id: u64,
    /// The client connection the tunnel came from (its address, listener and
    /// snapshot), held for the tunnel's life.
    pub conn: Arc<ConnCtx>,
    /// The backend, whose `pool` and `addr` say where the tunnel goes and
    /// whose open count the tunnel holds up while it lives.
    pub backend: Arc<Backend>,
    /// The routing key, as text, for operators (never a metric label).
    pub key: Box<str>,
    /// The key's position on the ring, to find the tunnels a joining backend
    /// would now own (re-home).
    pub key_hash: u64,
    pub opened: Instant,
    /// Client to backend.
    pub bytes_up: AtomicU64,
    /// Backend to client.
    pub bytes_down: AtomicU64,
    /// What a drain asks of the tunnel: 0 nothing, else `CLOSE | code` or `FORCE`.
    drain: AtomicU32,
    /// Wakes each direction of the tunnel when `drain` changes (one per direction,
    /// lock-free, so the hot path only pays for registering a waker).
    wakers: [AtomicWaker; 2],
    /// Set when the tunnel has ended, for drains waiting on it.
    closed: AtomicBool,
}

/// A direction of a tunnel, for [`TunnelInfo::poll_drain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to backend.
    Up = 0,
    /// Backend to client.
    Down = 1,
}

/// What a drain asks of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainRequest {
    /// Say goodbye with a Close frame carrying this code, at a frame boundary.
    Close(u16),
    /// Close the sockets now.
    Force,
}

const CLOSE: u32 = 1 << 16;
const FORCE: u32 = 1 << 17;

impl TunnelInfo {
    /// Asks the tunnel to close politely with `code` (no effect if already asked).
    pub fn request_close(&self, code: u16) {
        if self.drain.compare_exchange(0, CLOSE | u32::from(code), Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.wake();
        }
    }

    /// Asks the tunnel to close its sockets now.
    pub fn force_close(&self) {
        self.drain.fetch_or(FORCE, Ordering::AcqRel);
        self.wake();
    }

    fn wake(&self) {
        self.wakers.iter().for_each(AtomicWaker::wake);
    }

    /// The current drain request, if any.
    pub fn drain_request(&self) -> Option<DrainRequest> {
        let d = self.drain.load(Ordering::Acquire);
        match d {
            0 => None,
            _ if d & FORCE != 0 => Some(DrainRequest::Force),
            _ => Some(DrainRequest::Close(d as u16)),
        }
    }

    /// Ready with the drain request once there is one; registers `dir`'s waker.
    pub fn poll_drain(&self, dir: Direction, cx: &mut Context<'_>) -> Poll<DrainRequest> {
        if let Some(r) = self.drain_request() {
            return Poll::Ready(r);
        }
        self.wakers[dir as usize].register(cx.waker());
        match self.drain_request() {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }

    /// Resolves once a drain request arrives.
    pub async fn drain_requested(&self, dir: Direction) -> DrainRequest {
        std::future::poll_fn(|cx| self.poll_drain(dir, cx)).await
    }

    /// Whether the tunnel has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// The open tunnels, by id.
#[derive(Default)]
pub struct Tunnels {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<TunnelInfo>>>,
}

/// Removes its tunnel from the registry when dropped.
pub struct TunnelGuard {
    registry: Arc<Tunnels>,
    pub info: Arc<TunnelInfo>,
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.info.closed.store(true, Ordering::Release);
        self.info.backend.open.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut open) = self.registry.open.lock() {
            open.remove(&self.info.id);
        }
    }
}

/// A tunnel as `/api/connections` shows it.
#[derive(Serialize)]
pub struct TunnelView {
    pub id: u64,
    pub client: String,
    pub listener: String,
    pub pool: String,
    pub backend: String,
    pub key: String,
    /// A drain has asked this tunnel to close.
    pub draining: bool,
    pub age_seconds: f64,
    pub opened_unix: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl Tunnels {
    /// Registers a new tunnel; it stays listed until the guard drops.
    pub fn open(self: &Arc<Self>, conn: Arc<ConnCtx>, backend: Arc<Backend>, key: &[u8], key_hash: u64) -> TunnelGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        backend.open.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(TunnelInfo {
            id,
            conn,
            backend,
            key: String::from_utf8_lossy(&key[..key.len().min(128)]).into(),
            key_hash,
            opened: Instant::now(),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            drain: AtomicU32::new(0),
            wakers: Default::default(),
            closed: AtomicBool::new(false),
        });
        if let Ok(mut open) = self.open.lock() {
            open.insert(id, info.clone());
        }
        TunnelGuard { registry: self.clone(), info }
    }

    pub fn len(&self) -> usize {
        self.open.lock().map(|o| o.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The open tunnels that `keep` selects, oldest first.
    pub fn select(&self, mut keep: impl FnMut(&TunnelInfo) -> bool) -> Vec<Arc<TunnelInfo>> {
        let mut out: Vec<Arc<TunnelInfo>> = match self.open.lock() {
            Ok(open) => open.values().filter(|t| keep(t)).cloned().collect(),
            Err(_) => Vec::new(),
        };
        out.sort_unstable_by_key(|t| t.id);
        out
    }

    /// A copy of the list, newest first, at most `limit` entries.
    pub fn list(&self, limit: usize) -> Vec<TunnelView> {
        let mut infos = self.select(|_| true);
        infos.reverse();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        infos
            .iter()
            .take(limit)
            .map(|t| {
                let age = t.opened.elapsed();
                TunnelView {
                    id: t.id,
                    client: t.conn.client.to_string(),
                    listener: t.conn.listener.to_string(),
                    pool: t.backend.pool.to_string(),
                    backend: t.backend.addr.to_string(),
                    key: t.key.to_string(),
                    draining: t.drain_request().is_some(),
                    age_seconds: age.as_secs_f64(),
                    opened_unix: now.saturating_sub(age).as_secs(),
                    bytes_up: t.bytes_up.load(Ordering::Relaxed),
                    bytes_down: t.bytes_down.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}
