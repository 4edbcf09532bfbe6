//! The registry of open tunnels: what `/api/connections` lists and what a
//! drain will walk. Entries are added when a tunnel opens and removed when
//! it closes (by the guard's `Drop`, so no path can leak one).
//!
//! The lock is held only to insert, remove or copy the list, never while
//! bytes move: the byte counters are atomics inside each entry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::snapshot::Backend;

/// One open tunnel.
pub struct TunnelInfo {
    pub id: u64,
    pub client: SocketAddr,
    pub listener: Arc<str>,
    /// The backend, whose `pool` and `addr` say where the tunnel goes and
    /// whose open count the tunnel holds up while it lives.
    pub backend: Arc<Backend>,
    /// The routing key, as text, for operators (never a metric label).
    pub key: Box<str>,
    pub opened: Instant,
    /// Client to backend.
    pub bytes_up: AtomicU64,
    /// Backend to client.
    pub bytes_down: AtomicU64,
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
    pub age_seconds: f64,
    pub opened_unix: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl Tunnels {
    /// Registers a new tunnel; it stays listed until the guard drops.
    pub fn open(
        self: &Arc<Self>,
        client: SocketAddr,
        listener: Arc<str>,
        backend: Arc<Backend>,
        key: &[u8],
    ) -> TunnelGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        backend.open.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(TunnelInfo {
            id,
            client,
            listener,
            backend,
            key: String::from_utf8_lossy(&key[..key.len().min(128)]).into(),
            opened: Instant::now(),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
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

    /// A copy of the list, newest first, at most `limit` entries.
    pub fn list(&self, limit: usize) -> Vec<TunnelView> {
        let mut infos: Vec<Arc<TunnelInfo>> = match self.open.lock() {
            Ok(open) => open.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        infos.sort_unstable_by_key(|t| std::cmp::Reverse(t.id));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        infos
            .iter()
            .take(limit)
            .map(|t| {
                let age = t.opened.elapsed();
                TunnelView {
                    id: t.id,
                    client: t.client.to_string(),
                    listener: t.listener.to_string(),
                    pool: t.backend.pool.to_string(),
                    backend: t.backend.addr.to_string(),
                    key: t.key.to_string(),
                    age_seconds: age.as_secs_f64(),
                    opened_unix: now.saturating_sub(age).as_secs(),
                    bytes_up: t.bytes_up.load(Ordering::Relaxed),
                    bytes_down: t.bytes_down.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}
