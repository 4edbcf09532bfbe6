//! Prometheus metrics: one typed struct, every name, label set and help text
//! in one table below. Label values are bounded (listener, pool, backend,
//! kind, outcome, status, direction): never a client address or a key.
//!
//! Per-backend gauges (`backend_up`, `backend_draining`) are derived from the
//! current snapshot at scrape time rather than kept in sync by hand.

use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::snapshot::Snapshot;

/// All of tidegate's metrics, registered in their own registry.
pub struct Metrics {
    registry: Registry,
    /// Open proxied connections: tunnels (kind=websocket) and in-flight requests (kind=http).
    pub connections_active: IntGaugeVec,
    /// Proxied connections by how they ended their setup (outcome).
    pub connections_total: IntCounterVec,
    /// Bytes moved through tunnels and bodies, by direction (upstream = client to backend).
    pub bytes_total: IntCounterVec,
    /// Complete WebSocket data messages through tunnels, by direction.
    pub websocket_messages_total: IntCounterVec,
    pub connection_duration: HistogramVec,
    pub handshake_duration: HistogramVec,
    pub backend_up: IntGaugeVec,
    pub backend_draining: IntGaugeVec,
    pub requests_total: IntCounterVec,
    /// Tunnels a drain is still waiting for, per backend.
    pub drain_tunnels_remaining: IntGaugeVec,
    /// Close frames tidegate sent to say goodbye, by code.
    pub close_frames_sent: IntCounterVec,
    /// Client connections accepted and open, per listener.
    pub client_connections_active: IntGaugeVec,
    /// Client connections refused at the door, per listener and reason.
    pub client_connections_rejected: IntCounterVec,
}

const LISTENER_POOL_BACKEND_KIND: &[&str] = &["listener", "pool", "backend", "kind"];
const POOL_BACKEND: &[&str] = &["pool", "backend"];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge definition");
            registry.register(Box::new(g.clone())).expect("metric registered once");
            g
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter definition");
            registry.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid histogram definition");
            registry.register(Box::new(h.clone())).expect("metric registered once");
            h
        };
        let all_outcome = &["listener", "pool", "backend", "kind", "outcome"];
        Metrics {
            connections_active: gauge(
                "tidegate_connections_active",
                "Open proxied connections: WebSocket tunnels and in-flight HTTP requests.",
                LISTENER_POOL_BACKEND_KIND,
            ),
            connections_total: counter(
                "tidegate_connections_total",
                "Proxied connections and requests by outcome (ok, refused, connect_error, timeout, ...).",
                all_outcome,
            ),
            bytes_total: counter(
                "tidegate_bytes_total",
                "Bytes proxied; upstream is client to backend, downstream backend to client.",
                &["pool", "backend", "direction"],
            ),
            websocket_messages_total: counter(
                "tidegate_websocket_messages_total",
                "Complete WebSocket data messages through tunnels (fragments count once).",
                &["pool", "backend", "direction"],
            ),
            connection_duration: histogram(
                "tidegate_connection_duration_seconds",
                "Lifetime of WebSocket tunnels and HTTP exchanges.",
                &["pool", "kind"],
                vec![0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0],
            ),
            handshake_duration: histogram(
                "tidegate_handshake_duration_seconds",
                "Time from a WebSocket upgrade request to the backend's answer.",
                &["pool"],
                vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0],
            ),
            backend_up: gauge("tidegate_backend_up", "1 when the backend is taking connections.", POOL_BACKEND),
            backend_draining: gauge("tidegate_backend_draining", "1 while the backend is draining.", POOL_BACKEND),
            requests_total: counter(
                "tidegate_requests_total",
                "HTTP responses relayed or generated, by backend and status code.",
                &["pool", "backend", "status"],
            ),
            drain_tunnels_remaining: gauge(
                "tidegate_drain_tunnels_remaining",
                "Tunnels a drain in progress still waits for.",
                POOL_BACKEND,
            ),
            close_frames_sent: counter(
                "tidegate_close_frames_sent_total",
                "Close frames sent by tidegate to drain tunnels, by peer (client, backend) and code.",
                &["pool", "peer", "code"],
            ),
            client_connections_active: gauge(
                "tidegate_client_connections_active",
                "Client connections open on each listener.",
                &["listener"],
            ),
            client_connections_rejected: counter(
                "tidegate_client_connections_rejected_total",
                "Client connections refused at accept, by reason.",
                &["listener", "reason"],
            ),
            registry,
        }
    }

    /// The Prometheus text exposition, with per-backend gauges refreshed from `snapshot`.
    /// The handles of `kind` exchanges through `listener` to one backend.
    fn handles(&self, listener: &Arc<str>, kind: Kind, pool: &str, backend: &str) -> Handles {
        let k = kind.label();
        let usual = if kind == Kind::WebSocket { "101" } else { "200" };
        let direction = |d| self.bytes_total.with_label_values(&[pool, backend, d]);
        Handles {
            listener: listener.clone(),
            kind,
            active: self.connections_active.with_label_values(&[listener, pool, backend, k]),
            ok: self.connections_total.with_label_values(&[listener, pool, backend, k, "ok"]),
            usual_status: self.requests_total.with_label_values(&[pool, backend, usual]),
            bytes: [direction("upstream"), direction("downstream")],
            messages: ["upstream", "downstream"]
                .map(|d| self.websocket_messages_total.with_label_values(&[pool, backend, d])),
            duration: self.connection_duration.with_label_values(&[pool, k]),
            handshake: self.handshake_duration.with_label_values(&[pool]),
        }
    }

    pub fn render(&self, snapshot: &Snapshot) -> String {
        self.backend_up.reset();
        self.backend_draining.reset();
        for pool in &snapshot.pools {
            for b in &pool.backends {
                let labels = [&*pool.name, &*b.addr];
                self.backend_up.with_label_values(&labels).set(b.is_up() as i64);
                self.backend_draining
                    .with_label_values(&labels)
                    .set(b.draining.load(std::sync::atomic::Ordering::Relaxed) as i64);
            }
        }
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O; a metric family error would be a bug.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The two kinds of exchange, as the `kind` label names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    WebSocket,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::WebSocket => "websocket",
        }
    }
}

/// One backend's metric handles for one kind of exchange through one
/// listener: what a request or a tunnel counts in the common case, without a
/// label lookup each time (a lookup hashes the labels and takes a lock, and a
/// request or handshake would do several).
pub struct Handles {
    listener: Arc<str>,
    kind: Kind,
    /// `tidegate_connections_active`.
    pub active: IntGauge,
    /// `tidegate_connections_total{outcome="ok"}`.
    pub ok: IntCounter,
    /// `tidegate_requests_total` of the usual answer: 200, or 101 for a WebSocket.
    pub usual_status: IntCounter,
    /// `tidegate_bytes_total`, upstream and downstream.
    pub bytes: [IntCounter; 2],
    /// `tidegate_websocket_messages_total`, upstream and downstream.
    pub messages: [IntCounter; 2],
    /// `tidegate_connection_duration_seconds`.
    pub duration: Histogram,
    /// `tidegate_handshake_duration_seconds` of the backend's pool.
    pub handshake: Histogram,
}

/// A backend's [`Handles`], one per listener and kind that used it.
#[derive(Default)]
pub struct HandleCache(Mutex<Vec<Arc<Handles>>>);

impl std::fmt::Debug for HandleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandleCache")
    }
}

impl HandleCache {
    /// The handles for `listener` and `kind`, looked up on first use.
    pub fn get(&self, metrics: &Metrics, listener: &Arc<str>, kind: Kind, pool: &str, backend: &str) -> Arc<Handles> {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mine =
            |h: &&Arc<Handles>| h.kind == kind && (Arc::ptr_eq(&h.listener, listener) || h.listener == *listener);
        if let Some(h) = cache.iter().find(mine) {
            return h.clone();
        }
        let h = Arc::new(metrics.handles(listener, kind, pool, backend));
        cache.push(h.clone());
        h
    }
}
