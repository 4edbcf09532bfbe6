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
                async move { Ok::<_, Infallible>(respond(&shared, req)) }
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

fn respond(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
                            weight: b.weight,
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
        (_, "/metrics" | "/healthz" | "/readyz" | "/api/backends" | "/api/connections" | "/") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".into())
        }
        _ => {
            reply(StatusCode::NOT_FOUND, "text/plain", "no such admin path; try /, /metrics or /api/backends\n".into())
        }
    }
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
