//! What happens to a running proxy: reloading its config, draining and
//! undraining a backend, and shutting down, each moving live tunnels with
//! paced Close frames (`drain`) rather than cutting them.
//!
//! Reload is a validated diff: the new config is checked whole before
//! anything changes; listeners are rebound only where their address changed;
//! backends keep their state by identity; tunnels on backends that remain are
//! never touched.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tracing::{info, warn};

use crate::config::{self, ConfigErrors, DrainConfig};
use crate::drain;
use crate::server::{Shared, StartError};
use crate::snapshot::{Backend, Snapshot};
use crate::tunnels::TunnelInfo;

/// Why a lifecycle request was refused.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("there is no config file to reload (the config was not read from a file)")]
    NoConfigFile,
    #[error("the new config is invalid; the running one stays:\n{0}")]
    Invalid(ConfigErrors),
    #[error("the new config cannot be applied; the running one stays: {0}")]
    Bind(#[from] StartError),
    #[error("pool {0:?} has no backend {1:?}; GET /api/backends lists them")]
    NoSuchBackend(String, String),
}

/// What a reload changed.
#[derive(Debug, Default, Serialize)]
pub struct ReloadReport {
    /// Backends (`pool/addr`) that joined.
    pub added: Vec<String>,
    /// Backends that left and are draining.
    pub removed: Vec<String>,
    /// Listeners bound anew (new, or their address changed).
    pub rebound: Vec<String>,
    /// Tunnels asked to move to a backend that joined (`rehome`).
    pub rehomed: usize,
}

/// Drains `tunnels` of `backend` in a task of its own, remembered so that
/// `undrain` can stop the pacing.
fn spawn_drain(shared: &Arc<Shared>, backend: Arc<Backend>, tunnels: Vec<Arc<TunnelInfo>>, cfg: DrainConfig) {
    let key = (backend.pool.to_string(), backend.addr.to_string());
    let task_shared = shared.clone();
    let task = tokio::spawn(async move {
        drain::drain_backend(backend, tunnels, cfg, &task_shared.metrics).await;
    });
    let mut drains = shared.drains.lock().unwrap_or_else(|e| e.into_inner());
    drains.retain(|_, t| !t.is_finished());
    if let Some(previous) = drains.insert(key, task.abort_handle()) {
        previous.abort();
    }
}

/// Groups tunnels by their backend: a drain paces one backend's tunnels.
fn by_backend(tunnels: Vec<Arc<TunnelInfo>>) -> Vec<(Arc<Backend>, Vec<Arc<TunnelInfo>>)> {
    let mut groups: HashMap<*const Backend, (Arc<Backend>, Vec<Arc<TunnelInfo>>)> = HashMap::new();
    for t in tunnels {
        groups.entry(Arc::as_ptr(&t.backend)).or_insert_with(|| (t.backend.clone(), Vec::new())).1.push(t);
    }
    groups.into_values().collect()
}

fn tunnels_of(shared: &Shared, backend: &Arc<Backend>) -> Vec<Arc<TunnelInfo>> {
    shared.tunnels.select(|t| Arc::ptr_eq(&t.backend, backend))
}

/// Marks a backend draining (no new connections) and drains its tunnels;
/// returns how many tunnels the drain covers.
pub fn drain_backend(shared: &Arc<Shared>, pool: &str, addr: &str) -> Result<usize, LifecycleError> {
    let snapshot = shared.snapshot.load();
    let (p, backend) = find(&snapshot, pool, addr)?;
    backend.draining.store(true, Ordering::Relaxed);
    let tunnels = tunnels_of(shared, &backend);
    let n = tunnels.len();
    spawn_drain(shared, backend, tunnels, p.drain);
    Ok(n)
}

/// Lets a draining backend take new connections again; tunnels already asked
/// to close still close, the rest stay.
pub fn undrain_backend(shared: &Arc<Shared>, pool: &str, addr: &str) -> Result<(), LifecycleError> {
    let snapshot = shared.snapshot.load();
    let (_, backend) = find(&snapshot, pool, addr)?;
    backend.draining.store(false, Ordering::Relaxed);
    if let Some(task) = shared.drains.lock().unwrap_or_else(|e| e.into_inner()).remove(&(pool.into(), addr.into())) {
        task.abort();
    }
    // An aborted drain leaves its gauge behind: the tunnels are no longer waited for.
    shared.metrics.drain_tunnels_remaining.with_label_values(&[pool, addr]).set(0);
    Ok(())
}

fn find<'a>(
    snapshot: &'a Snapshot,
    pool: &str,
    addr: &str,
) -> Result<(&'a crate::snapshot::Pool, Arc<Backend>), LifecycleError> {
    let missing = || LifecycleError::NoSuchBackend(pool.into(), addr.into());
    let p = snapshot.pools.iter().find(|p| &*p.name == pool).ok_or_else(missing)?;
    let b = p.backends.iter().find(|b| &*b.addr == addr).ok_or_else(missing)?;
    Ok((p, b.clone()))
}

/// Reads the config file again and swaps it in (SIGHUP, `POST /api/reload`).
pub fn reload(shared: &Arc<Shared>) -> Result<ReloadReport, LifecycleError> {
    let path = shared.config_path.as_ref().ok_or(LifecycleError::NoConfigFile)?;
    let config = config::load(path).map_err(|errors| {
        warn!("reload refused, the running config stays:\n{errors}");
        LifecycleError::Invalid(errors)
    })?;
    apply(shared, &config)
}

/// Swaps `config` in: rebinds changed listeners, swaps the snapshot, drains
/// backends that left, and re-homes tunnels where a pool asks for it.
pub fn apply(shared: &Arc<Shared>, config: &config::Config) -> Result<ReloadReport, LifecycleError> {
    let mut report = ReloadReport::default();
    let old = shared.snapshot.load_full();
    let new = Arc::new(Snapshot::build(config, Some(&old)));

    // Listeners first: binding is the one step that can still fail, and
    // nothing has changed yet if it does.
    {
        let mut current = shared.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let mut fresh = Vec::new();
        for l in config.listeners.iter().filter(|l| !current.iter().any(|h| h.config == **l)) {
            match shared.listen(l) {
                Ok(h) => fresh.push(h),
                Err(e) => {
                    fresh.iter().for_each(|h| h.stop());
                    return Err(e.into());
                }
            }
        }
        let (keep, gone): (Vec<_>, Vec<_>) = current.drain(..).partition(|h| config.listeners.contains(&h.config));
        gone.iter().for_each(|h| h.stop());
        report.rebound = fresh.iter().map(|h| h.config.name.clone()).collect();
        current.extend(keep.into_iter().chain(fresh));
    }
    shared.snapshot.store(new.clone());

    // Backends that left drain with their old pool's settings.
    for old_pool in &old.pools {
        let new_pool = new.pools.iter().find(|p| p.name == old_pool.name);
        for b in &old_pool.backends {
            let stays = new_pool.is_some_and(|p| p.backends.iter().any(|nb| Arc::ptr_eq(nb, b)));
            if !stays {
                b.draining.store(true, Ordering::Relaxed);
                report.removed.push(format!("{}/{}", b.pool, b.addr));
                spawn_drain(shared, b.clone(), tunnels_of(shared, b), old_pool.drain);
            }
        }
    }
    // Backends that joined; with `rehome`, the tunnels whose key now maps to
    // one of them are drained so their clients reconnect there.
    for pool in &new.pools {
        let old_pool = old.pools.iter().find(|p| p.name == pool.name);
        let joined: Vec<usize> = (0..pool.backends.len())
            .filter(|&i| !old_pool.is_some_and(|o| o.backends.iter().any(|b| Arc::ptr_eq(b, &pool.backends[i]))))
            .collect();
        report.added.extend(joined.iter().map(|&i| format!("{}/{}", pool.name, pool.backends[i].addr)));
        if !pool.rehome || joined.is_empty() || old_pool.is_none() {
            continue;
        }
        let moving = shared.tunnels.select(|t| {
            t.backend.pool == pool.name
                && t.drain_request().is_none()
                && pool.pick(t.key_hash, &[]).is_some_and(|i| joined.contains(&i))
        });
        report.rehomed += moving.len();
        for (backend, tunnels) in by_backend(moving) {
            spawn_drain(shared, backend, tunnels, pool.drain);
        }
    }
    info!(?report, "config reloaded");
    Ok(report)
}

/// Graceful shutdown: not ready at once, listeners closed, every tunnel
/// drained (paced, per its pool's settings), HTTP connections told to finish;
/// returns when nothing is left or the longest drain timeout has passed.
pub async fn shutdown(shared: &Arc<Shared>) {
    shared.ready.store(false, Ordering::Relaxed);
    for l in shared.listeners.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        l.stop();
    }
    let snapshot = shared.snapshot.load_full();
    let groups = by_backend(shared.tunnels.select(|_| true));
    let drain_of = |b: &Backend| snapshot.pools.iter().find(|p| p.name == b.pool).map(|p| p.drain).unwrap_or_default();
    let longest = groups.iter().map(|(b, _)| drain_of(b).timeout).max().unwrap_or(Duration::ZERO);
    info!(tunnels = shared.tunnels.len(), "shutting down: draining");
    let drains = groups.into_iter().map(|(b, tunnels)| {
        let cfg = drain_of(&b);
        let metrics = &shared.metrics;
        async move { drain::drain_backend(b, tunnels, cfg, metrics).await }
    });
    let _ = shared.closing.send(true);
    let http = async {
        // Client connections finish their requests; bounded like the drains.
        let _ = tokio::time::timeout(longest.max(Duration::from_secs(5)), shared.closing.closed()).await;
    };
    tokio::join!(futures_util::future::join_all(drains), http);
    info!("shutdown complete");
}

/// Binary upgrade (`tidegate upgrade`, `SIGUSR2`, `POST /api/upgrade`):
/// starts the binary this process came from, hands it every listening socket
/// and, once it serves, stops accepting here and signals `handed_over` so the
/// caller drains and exits. Returns the new process id. On failure nothing
/// changes here.
pub async fn upgrade(shared: &Arc<Shared>) -> Result<u32, crate::handover::HandoverError> {
    use crate::handover::{self, HandoverError};
    let config = shared.config_path.clone().ok_or(HandoverError::NoConfigFile)?;
    let exe = match &shared.exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe()?,
    };
    let mut sockets = Vec::new();
    for h in shared.listeners.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        sockets.push((h.config.name.clone(), h.socket.try_clone()?));
    }
    if let Some(admin) = shared.admin.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        sockets.push((handover::ADMIN.to_string(), admin.socket.try_clone()?));
    }
    let pid = tokio::task::spawn_blocking(move || handover::hand_over(&exe, &config, sockets))
        .await
        .map_err(|e| HandoverError::Io(std::io::Error::other(e)))??;
    info!(pid, "binary upgrade: the new process serves; this one stops accepting and drains");
    shared.stop_admin();
    shared.handed_over.notify_one();
    Ok(pid)
}
