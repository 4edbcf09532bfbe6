//! The snapshot: the validated runtime view of one config (routes, pools with
//! their rings, limits), immutable once built and swapped whole.
//!
//! A connection takes the snapshot current at accept time and keeps it. What
//! must change under live traffic (a backend going down or draining, its open
//! connection count) lives in [`Backend`], shared by identity between
//! snapshots, so a reload carries it over. Building a snapshot (rings included)
//! happens off the request path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;

use crate::balance::Ring;
use crate::config::{Config, DrainConfig, KeySpec, Limits, ListenerConfig};
use crate::metrics::HandleCache;
use crate::route::Route;
use crate::upstream::keepalive::IdleConns;

/// The runtime view of one config.
pub struct Snapshot {
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<Route>,
    pub pools: Vec<Arc<Pool>>,
    pub limits: Limits,
    /// hyper's server settings derived from `limits`, built once here rather
    /// than per connection.
    pub http_server: auto::Builder<TokioExecutor>,
}

/// A pool: its key rule, its backends and the ring over them.
pub struct Pool {
    pub name: Arc<str>,
    pub hash_key: KeySpec,
    pub fallback_key: KeySpec,
    /// Backends in config order; the ring holds indices into this.
    pub backends: Vec<Arc<Backend>>,
    pub ring: Ring,
    pub bounded_load: Option<f64>,
    /// How this pool's tunnels are drained.
    pub drain: DrainConfig,
    /// Re-home tunnels onto a backend that joins (see `lifecycle::reload`).
    pub rehome: bool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("name", &self.name).field("backends", &self.backends).finish()
    }
}

/// One backend of one pool, with the state that outlives a reload.
#[derive(Debug)]
pub struct Backend {
    /// The backend's identity: its address as written in the config.
    pub addr: Arc<str>,
    pub pool: Arc<str>,
    /// The backend's share of the ring, as the current config says.
    pub weight: AtomicU32,
    /// Open connections (tunnels and in-flight requests): bounded-load input
    /// and what `/api/backends` shows.
    pub open: AtomicU64,
    /// Set by an operator or a reload that removed the backend: no new connections.
    pub draining: AtomicBool,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the backend counts as down.
    down_until_ms: AtomicU64,
    max_fails: u32,
    fail_timeout: Duration,
    epoch: Instant,
    /// Idle keep-alive connections for plain requests to this backend.
    pub idle: IdleConns,
    /// Metric handles for requests and tunnels to this backend.
    pub metrics: HandleCache,
}

impl Backend {
    fn new(pool: &Arc<str>, addr: &str, weight: u32, max_fails: u32, fail_timeout: Duration) -> Backend {
        Backend {
            addr: addr.into(),
            pool: pool.clone(),
            weight: AtomicU32::new(weight),
            open: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            max_fails: max_fails.max(1),
            fail_timeout,
            epoch: Instant::now(),
            idle: IdleConns::default(),
            metrics: HandleCache::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Down after `max_fails` consecutive connect failures, for `fail_timeout`;
    /// then it gets traffic again and the next failure puts it back down.
    pub fn is_up(&self) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    /// Whether new connections may go here.
    pub fn is_usable(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.is_up()
    }

    /// Records a failed connect; returns true when this failure took it down.
    pub fn connect_failed(&self) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.max_fails {
            let until = self.now_ms() + self.fail_timeout.as_millis() as u64;
            self.down_until_ms.store(until, Ordering::Relaxed);
            self.failures.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Records a successful connect.
    pub fn connect_succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.down_until_ms.load(Ordering::Relaxed) != 0 {
            self.down_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// "up", "down" or "draining", as shown by the admin API.
    pub fn state(&self) -> &'static str {
        if self.draining.load(Ordering::Relaxed) {
            "draining"
        } else if self.is_up() {
            "up"
        } else {
            "down"
        }
    }
}

impl Pool {
    /// Picks a usable backend for `key_hash`, skipping `exclude` (backends that
    /// already failed for this request).
    pub fn pick(&self, key_hash: u64, exclude: &[usize]) -> Option<usize> {
        let usable = |i: usize| self.backends[i].is_usable() && !exclude.contains(&i);
        match self.bounded_load {
            None => self.ring.pick(key_hash, usable),
            Some(c) => {
                let load = |i: usize| self.backends[i].open.load(Ordering::Relaxed);
                self.ring.pick_bounded(key_hash, usable, load, c)
            }
        }
    }
}

impl Snapshot {
    /// Builds the runtime view of `config`, reusing the backends of `previous`
    /// that keep their identity (pool name and address), so their state carries over.
    pub fn build(config: &Config, previous: Option<&Snapshot>) -> Snapshot {
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|p| {
                let name: Arc<str> = p.name.as_str().into();
                let old = previous.and_then(|s| s.pools.iter().find(|o| o.name == name));
                let backends: Vec<Arc<Backend>> = p
                    .backends
                    .iter()
                    .map(|b| {
                        let kept = old.and_then(|o| o.backends.iter().find(|ob| *ob.addr == b.addr)).cloned();
                        match kept {
                            Some(backend) => {
                                backend.weight.store(b.weight, Ordering::Relaxed);
                                backend
                            }
                            None => Arc::new(Backend::new(&name, &b.addr, b.weight, p.max_fails, p.fail_timeout)),
                        }
                    })
                    .collect();
                let ids: Vec<(&str, u32)> = p.backends.iter().map(|b| (b.addr.as_str(), b.weight)).collect();
                Arc::new(Pool {
                    ring: Ring::new(&ids),
                    name,
                    hash_key: p.hash_key.clone(),
                    fallback_key: p.fallback_key.clone(),
                    backends,
                    bounded_load: p.bounded_load,
                    drain: p.drain,
                    rehome: p.rehome,
                })
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|r| Route {
                listener: r.listener.clone(),
                host: r.host.clone(),
                path_prefix: r.path_prefix.clone(),
                // Validation guarantees the pool exists.
                pool: config.pools.iter().position(|p| p.name == r.pool).unwrap_or_default(),
            })
            .collect();
        Snapshot {
            listeners: config.listeners.clone(),
            routes,
            pools,
            limits: config.limits.clone(),
            http_server: crate::connection::server_builder(&config.limits),
        }
    }
}
