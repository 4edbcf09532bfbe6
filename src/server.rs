//! Starting and stopping a proxy: binding every listener and the admin
//! endpoint from a validated config, and the state all connections share.
//!
//! `start` takes a config whose addresses may use port 0 and reports the
//! bound ones, so tests run real servers on `127.0.0.1:0` in process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::info;

use crate::config::Config;
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
}

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} for {what}: {source} (is another process using it?)")]
    Bind { what: String, addr: SocketAddr, source: std::io::Error },
}

/// A started proxy.
pub struct Running {
    /// Each listener's name and bound address, in config order.
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin: SocketAddr,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// The bound address of the listener `name`.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Stops accepting on every listener and the admin endpoint.
    pub async fn stop_accepting(&mut self) {
        self.shared.ready.store(false, std::sync::atomic::Ordering::Relaxed);
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Binds everything `config` names and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let snapshot = Snapshot::build(&config, None);
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(snapshot),
        metrics: Metrics::new(),
        tunnels: Arc::default(),
        http: upstream::http_client(config.limits.connect_timeout),
        ready: AtomicBool::new(true),
    });
    let (stop, stop_rx) = watch::channel(false);
    let limit = Arc::new(Semaphore::new(config.limits.max_connections));
    let mut tasks = JoinSet::new();
    let mut listeners = Vec::new();
    for l in &config.listeners {
        let bound = listener::bind(l.bind).map_err(|source| StartError::Bind {
            what: format!("listener {}", l.name),
            addr: l.bind,
            source,
        })?;
        let addr = bound.local_addr().unwrap_or(l.bind);
        info!(listener = %l.name, %addr, "listening");
        listeners.push((l.name.clone(), addr));
        let name: Arc<str> = l.name.as_str().into();
        tasks.spawn(listener::accept_loop(bound, name, shared.clone(), limit.clone(), stop_rx.clone()));
    }
    let admin_listener = listener::bind(config.admin.bind).map_err(|source| StartError::Bind {
        what: "the admin endpoint".into(),
        addr: config.admin.bind,
        source,
    })?;
    let admin = admin_listener.local_addr().unwrap_or(config.admin.bind);
    info!(%admin, "admin endpoint listening");
    tasks.spawn(admin::serve(admin_listener, shared.clone(), stop_rx));
    Ok(Running { listeners, admin, shared, stop, tasks })
}
