//! Starting a proxy: binding every listener and the admin endpoint from a
//! validated config, and the state all connections share.
//!
//! `start` takes a config whose addresses may use port 0 and reports the
//! bound ones, so tests run real servers on `127.0.0.1:0` in process. What
//! happens to a running proxy later (reload, drains, shutdown) is `lifecycle`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::{Semaphore, watch};
use tokio::task::AbortHandle;
use tracing::info;

use crate::config::{Config, ListenerConfig};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::tunnels::Tunnels;
use crate::upstream::{self, HttpClient};
use crate::{admin, listener};

/// State shared by every connection, the admin endpoint and the lifecycle.
pub struct Shared {
    /// The current snapshot; connections load it once, at accept.
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    pub tunnels: Arc<Tunnels>,
    /// Pooled keep-alive connections to backends for plain requests.
    pub http: HttpClient,
    /// What `/readyz` answers: false once shutdown begins.
    pub ready: AtomicBool,
    /// The file a reload reads again; `None` when the config came from elsewhere.
    pub config_path: Option<PathBuf>,
    /// The listeners accepting now, so a reload can rebind only what changed.
    pub listeners: Mutex<Vec<ListenerHandle>>,
    /// `limits.max_connections`, shared by every listener.
    pub limit: Arc<Semaphore>,
    /// Drains in progress per backend (pool, address), so `undrain` can stop one.
    pub drains: Mutex<HashMap<(String, String), AbortHandle>>,
    /// Tells client connections to finish (HTTP/2 GOAWAY, HTTP/1 keep-alive
    /// off) at shutdown. Tunnels are tracked in `tunnels`, not here.
    pub graceful: Mutex<Option<GracefulShutdown>>,
}

/// A listener accepting clients.
pub struct ListenerHandle {
    pub config: ListenerConfig,
    /// The bound address (differs from `config.bind` when it asked for port 0).
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl ListenerHandle {
    /// Stops accepting; connections already accepted carry on.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// Why a proxy could not start, or a reload could not bind.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} for {what}: {source} (is another process using it?)")]
    Bind { what: String, addr: SocketAddr, source: std::io::Error },
}

impl Shared {
    /// Binds `config` and starts its accept loop.
    pub fn listen(self: &Arc<Self>, config: &ListenerConfig) -> Result<ListenerHandle, StartError> {
        let bound = listener::bind(config.bind).map_err(|source| StartError::Bind {
            what: format!("listener {}", config.name),
            addr: config.bind,
            source,
        })?;
        let addr = bound.local_addr().unwrap_or(config.bind);
        info!(listener = %config.name, %addr, "listening");
        let (stop, stop_rx) = watch::channel(false);
        let name: Arc<str> = config.name.as_str().into();
        tokio::spawn(listener::accept_loop(bound, name, self.clone(), stop_rx));
        Ok(ListenerHandle { config: config.clone(), addr, stop })
    }

    /// The bound address of the listener `name`, now.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners.iter().find(|l| l.config.name == name).map(|l| l.addr)
    }
}

/// A started proxy.
pub struct Running {
    /// Each listener's name and bound address at start, in config order.
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin: SocketAddr,
    pub shared: Arc<Shared>,
    stop_admin: watch::Sender<bool>,
}

impl Running {
    /// The bound address of the listener `name` at start.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Stops the admin endpoint (the listeners stop with `lifecycle::shutdown`).
    pub fn stop_admin(&self) {
        let _ = self.stop_admin.send(true);
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Binds everything `config` names and starts serving. `config_path` is the
/// file a reload reads again.
pub async fn start_with(config: Config, config_path: Option<PathBuf>) -> Result<Running, StartError> {
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(Snapshot::build(&config, None)),
        metrics: Metrics::new(),
        tunnels: Arc::default(),
        http: upstream::http_client(config.limits.connect_timeout),
        ready: AtomicBool::new(true),
        config_path,
        listeners: Mutex::default(),
        limit: Arc::new(Semaphore::new(config.limits.max_connections)),
        drains: Mutex::default(),
        graceful: Mutex::new(Some(GracefulShutdown::new())),
    });
    let mut handles = Vec::new();
    for l in &config.listeners {
        handles.push(shared.listen(l)?);
    }
    let listeners = handles.iter().map(|h| (h.config.name.clone(), h.addr)).collect();
    *shared.listeners.lock().unwrap_or_else(|e| e.into_inner()) = handles;

    let admin_listener = listener::bind(config.admin.bind).map_err(|source| StartError::Bind {
        what: "the admin endpoint".into(),
        addr: config.admin.bind,
        source,
    })?;
    let admin = admin_listener.local_addr().unwrap_or(config.admin.bind);
    info!(%admin, "admin endpoint listening");
    let (stop_admin, stop_rx) = watch::channel(false);
    tokio::spawn(admin::serve(admin_listener, shared.clone(), stop_rx));
    Ok(Running { listeners, admin, shared, stop_admin })
}

/// Binds everything `config` names and starts serving (no file to reload from).
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with(config, None).await
}
