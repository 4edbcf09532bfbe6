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

use std::os::fd::{AsFd, OwnedFd};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::AbortHandle;
use tracing::info;

use crate::config::{Config, ListenerConfig};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::tunnels::Tunnels;
use crate::{admin, handover, listener};

/// State shared by every connection, the admin endpoint and the lifecycle.
pub struct Shared {
    /// The current snapshot; connections load it once, at accept.
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    pub tunnels: Arc<Tunnels>,
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
    /// Turns true at shutdown: client connections then finish (HTTP/2
    /// GOAWAY, HTTP/1 keep-alive off). Each connection holds a receiver, so
    /// the sender sees when the last one is gone. Tunnels are tracked in
    /// `tunnels`, not here.
    pub closing: watch::Sender<bool>,
    /// The admin endpoint's socket, kept for a binary upgrade to hand over.
    pub admin: Mutex<Option<ListenerHandle>>,
    /// Sockets inherited from the process this one replaces, taken by name
    /// as listeners start.
    pub inherited: Mutex<handover::Sockets>,
    /// The binary a `tidegate upgrade` starts: the path this one was started
    /// from, read at startup (the file there may since have been replaced).
    pub exe: Option<PathBuf>,
    /// Signalled once a binary upgrade has handed everything over: this
    /// process should now drain and exit.
    pub handed_over: tokio::sync::Notify,
}

/// How a proxy starts besides its config.
#[derive(Default)]
pub struct StartOptions {
    /// The file a reload reads again.
    pub config_path: Option<PathBuf>,
    /// Sockets handed over by the process being replaced.
    pub inherited: handover::Sockets,
    /// The binary a later upgrade starts.
    pub exe: Option<PathBuf>,
}

/// A listener accepting clients (or the admin endpoint's).
pub struct ListenerHandle {
    pub config: ListenerConfig,
    /// The bound address (differs from `config.bind` when it asked for port 0).
    pub addr: SocketAddr,
    /// A duplicate of the listening socket, for a binary upgrade to hand over.
    pub socket: OwnedFd,
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
    /// The socket for `config`: the one inherited under its name if it is
    /// bound to the same address, else a new one.
    fn socket(&self, config: &ListenerConfig, what: &str) -> Result<(TcpListener, OwnedFd, SocketAddr), StartError> {
        let err = |source| StartError::Bind { what: what.to_string(), addr: config.bind, source };
        let inherited = self.inherited.lock().unwrap_or_else(|e| e.into_inner()).remove(&config.name);
        let same = |l: &std::net::TcpListener| {
            l.local_addr().is_ok_and(|a| a == config.bind || (config.bind.port() == 0 && a.ip() == config.bind.ip()))
        };
        let bound = match inherited.filter(same) {
            Some(l) => {
                info!(%what, "serving on the socket handed over by the previous process");
                l.set_nonblocking(true).map_err(err)?;
                TcpListener::from_std(l).map_err(err)?
            }
            None => listener::bind(config.bind).map_err(err)?,
        };
        let socket = bound.as_fd().try_clone_to_owned().map_err(err)?;
        let addr = bound.local_addr().unwrap_or(config.bind);
        Ok((bound, socket, addr))
    }

    /// Binds `config` (or takes it over) and starts its accept loop.
    pub fn listen(self: &Arc<Self>, config: &ListenerConfig) -> Result<ListenerHandle, StartError> {
        let (bound, socket, addr) = self.socket(config, &format!("listener {}", config.name))?;
        info!(listener = %config.name, %addr, "listening");
        let (stop, stop_rx) = watch::channel(false);
        let name: Arc<str> = config.name.as_str().into();
        tokio::spawn(listener::accept_loop(bound, name, self.clone(), stop_rx));
        Ok(ListenerHandle { config: config.clone(), addr, socket, stop })
    }

    /// Starts the admin endpoint on `bind` (or the socket handed over for it).
    fn serve_admin(self: &Arc<Self>, bind: SocketAddr) -> Result<SocketAddr, StartError> {
        let config = ListenerConfig { name: handover::ADMIN.into(), bind };
        let (bound, socket, addr) = self.socket(&config, "the admin endpoint")?;
        info!(admin = %addr, "admin endpoint listening");
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(admin::serve(bound, self.clone(), stop_rx));
        *self.admin.lock().unwrap_or_else(|e| e.into_inner()) = Some(ListenerHandle { config, addr, socket, stop });
        Ok(addr)
    }

    /// Stops the admin endpoint.
    pub fn stop_admin(&self) {
        if let Some(admin) = self.admin.lock().unwrap_or_else(|e| e.into_inner()).take() {
            admin.stop();
        }
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
}

impl Running {
    /// The bound address of the listener `name` at start.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Binds everything `config` names (or takes over the sockets in `opts`) and
/// starts serving.
pub async fn start_with(config: Config, opts: StartOptions) -> Result<Running, StartError> {
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(Snapshot::build(&config, None)),
        metrics: Metrics::new(),
        tunnels: Arc::default(),
        ready: AtomicBool::new(true),
        config_path: opts.config_path,
        listeners: Mutex::default(),
        limit: Arc::new(Semaphore::new(config.limits.max_connections)),
        drains: Mutex::default(),
        closing: watch::Sender::new(false),
        admin: Mutex::default(),
        inherited: Mutex::new(opts.inherited),
        exe: opts.exe,
        handed_over: tokio::sync::Notify::new(),
    });
    let mut handles = Vec::new();
    for l in &config.listeners {
        handles.push(shared.listen(l)?);
    }
    let listeners = handles.iter().map(|h| (h.config.name.clone(), h.addr)).collect();
    *shared.listeners.lock().unwrap_or_else(|e| e.into_inner()) = handles;
    let admin = shared.serve_admin(config.admin.bind)?;
    // Inherited sockets no listener wanted (the new config dropped them) close here.
    shared.inherited.lock().unwrap_or_else(|e| e.into_inner()).clear();
    Ok(Running { listeners, admin, shared })
}

/// Binds everything `config` names and starts serving (no file to reload from).
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with(config, StartOptions::default()).await
}
