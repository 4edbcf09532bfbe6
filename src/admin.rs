//! The admin endpoint: `/metrics`, `/healthz`, `/readyz`, the JSON API and a
//! status page for people. It listens on loopback unless the config says
//! otherwise, and never shares a port with client traffic.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

use crate::lifecycle;
use crate::server::Shared;

/// The most tunnels `/api/connections` lists (newest first).
const CONNECTIONS_LIMIT: usize = 1000;

/// Serves the admin endpoint until `stop` turns true.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = crate::server::stopped(&mut stop) => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(&shared, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

#[derive(Serialize)]
struct PoolView {
    name: String,
    backends: Vec<BackendView>,
}

#[derive(Serialize)]
struct BackendView {
    addr: String,
    state: &'static str,
    weight: u32,
    open: u64,
}

async fn respond(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if (req.method(), req.uri().path()) == (&Method::POST, "/api/upgrade") {
        return match lifecycle::upgrade(shared).await {
            Ok(pid) => json(&serde_json::json!({ "upgraded": true, "new_pid": pid })),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
        };
    }
    let snapshot = shared.snapshot.load();
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            reply(StatusCode::OK, "text/plain; version=0.0.4", shared.metrics.render(&snapshot))
        }
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => match shared.ready.load(Ordering::Relaxed) {
            true => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            false => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "shutting down\n".into()),
        },
        (&Method::GET, "/api/backends") => {
            let pools: Vec<PoolView> = snapshot
                .pools
                .iter()
                .map(|p| PoolView {
                    name: p.name.to_string(),
                    backends: p
                        .backends
                        .iter()
                        .map(|b| BackendView {
                            addr: b.addr.to_string(),
                            state: b.state(),
                            weight: b.weight.load(Ordering::Relaxed),
                            open: b.open.load(Ordering::Relaxed),
                        })
                        .collect(),
                })
                .collect();
            json(&serde_json::json!({ "pools": pools }))
        }
        (&Method::GET, "/api/connections") => {
            let tunnels = shared.tunnels.list(CONNECTIONS_LIMIT);
            json(&serde_json::json!({ "open": shared.tunnels.len(), "tunnels": tunnels }))
        }
        (&Method::GET, "/") => reply(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE.into()),
        (&Method::GET, "/api/status") => json(&serde_json::json!({
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "ready": shared.ready.load(Ordering::Relaxed),
            "tunnels": shared.tunnels.len(),
            "pools": snapshot.pools.len(),
        })),
        (&Method::POST, "/api/reload") => match lifecycle::reload(shared) {
            Ok(report) => json(&serde_json::json!({ "reloaded": true, "changes": report })),
            Err(e) => error(StatusCode::BAD_REQUEST, &e),
        },
        (&Method::POST, path) if path.starts_with("/api/pools/") => backend_action(shared, path),
        (_, "/metrics" | "/healthz" | "/readyz" | "/api/backends" | "/api/connections" | "/api/status" | "/") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".into())
        }
        _ => {
            reply(StatusCode::NOT_FOUND, "text/plain", "no such admin path; try /, /metrics or /api/backends\n".into())
        }
    }
}

/// `POST /api/pools/{pool}/backends/{addr}/drain` and `.../undrain`.
fn backend_action(shared: &Arc<Shared>, path: &str) -> Response<Full<Bytes>> {
    let parts: Vec<String> = path.trim_start_matches("/api/pools/").split('/').map(percent_decode).collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let result = match parts[..] {
        [pool, "backends", addr, "drain"] => lifecycle::drain_backend(shared, pool, addr)
            .map(|n| serde_json::json!({ "pool": pool, "backend": addr, "draining": true, "tunnels": n })),
        [pool, "backends", addr, "undrain"] => lifecycle::undrain_backend(shared, pool, addr)
            .map(|()| serde_json::json!({ "pool": pool, "backend": addr, "draining": false })),
        _ => {
            return reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "use /api/pools/{pool}/backends/{addr}/drain or /undrain\n".into(),
            );
        }
    };
    match result {
        Ok(v) => json(&v),
        Err(e) => error(StatusCode::NOT_FOUND, &e),
    }
}

/// Decodes `%XX` escapes, so an IPv6 backend can be named as `%5B::1%5D:9001`.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An error as JSON: `{"error": "..."}`.
fn error(status: StatusCode, e: &dyn std::fmt::Display) -> Response<Full<Bytes>> {
    let mut resp = json(&serde_json::json!({ "error": e.to_string() }));
    *resp.status_mut() = status;
    resp
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    reply(StatusCode::OK, "application/json", value.to_string())
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp
}

/// The status page: static HTML that refreshes itself from the JSON API.
const STATUS_PAGE: &str = include_str!("admin_page.html");

#[cfg(test)]
mod tests {
    #[test]
    fn backend_addresses_in_paths_may_be_percent_encoded() {
        assert_eq!(super::percent_decode("%5B%3A%3A1%5D%3A9001"), "[::1]:9001");
        assert_eq!(super::percent_decode("127.0.0.1:9001"), "127.0.0.1:9001");
        assert_eq!(super::percent_decode("100%"), "100%");
        assert_eq!(super::percent_decode("%zz"), "%zz");
    }
}
