//! `http` and `http_big`: keep-alive GETs over N connections for a fixed time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HOST, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::time::timeout;

use crate::common::{Common, IO_TIMEOUT, Phase, join_all, run_phases, tcp_connect};
use crate::report::{Metric, Outcome};

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

/// Runs `conns` connections, each GETting `path?room=rI` back to back.
/// `big` selects the figures: MB/s (1 MiB bodies) instead of req/s.
pub async fn run(c: &Common, conns: usize, path: &'static str, big: bool) -> Result<Outcome> {
    let procs = c.procs();
    let phase = Arc::new(Phase::default());
    let counters = Arc::new(Counters::default());
    let tasks = (0..conns)
        .map(|i| {
            let room = format!("r{i}");
            let addr = c.pick(&room);
            let uri = format!("{path}?room={room}");
            tokio::spawn(conn_loop(addr, uri, phase.clone(), counters.clone()))
        })
        .collect();
    let usage = run_phases(c, &phase, procs.as_ref()).await;
    join_all(tasks).await;

    let requests = counters.requests.load(Relaxed) as f64;
    let bytes = counters.bytes.load(Relaxed) as f64;
    let mut out = Outcome::default();
    if big {
        out.metrics.push(Metric::higher("mb_s", bytes / 1e6 / usage.wall_s, "MB/s"));
        if let Some(cpu) = usage.proxy_cpu_s.filter(|&s| s > 0.0) {
            out.metrics.push(Metric::higher("mb_per_proxy_cpu_s", bytes / 1e6 / cpu, "MB/cpu-s"));
        }
    } else {
        out.metrics.push(Metric::higher("req_s", requests / usage.wall_s, "req/s"));
        if let Some(cpu) = usage.proxy_cpu_s.filter(|_| requests > 0.0) {
            out.metrics.push(Metric::lower("proxy_cpu_us_per_req", cpu * 1e6 / requests, "µs"));
        }
    }
    out.metrics.push(Metric::lower("errors", counters.errors.load(Relaxed) as f64, ""));
    out.add_usage(&usage, "");
    if requests == 0.0 {
        bail!("no request completed in the window ({} errors)", counters.errors.load(Relaxed));
    }
    Ok(out)
}

/// One connection's request loop; reconnects after an error until stopped.
async fn conn_loop(addr: SocketAddr, uri: String, phase: Arc<Phase>, counters: Arc<Counters>) {
    let host = HeaderValue::from_str(&addr.to_string()).expect("an address is a valid header");
    while !phase.stopped() {
        let mut sender = match connect(addr).await {
            Ok(s) => s,
            Err(_) => {
                counters.errors.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while !phase.stopped() {
            // A server may close a keep-alive connection after N requests
            // (nginx: keepalive_requests 1000): reconnect, it is no error.
            if !matches!(timeout(IO_TIMEOUT, sender.ready()).await, Ok(Ok(()))) {
                break;
            }
            match timeout(IO_TIMEOUT, get(&mut sender, &uri, &host)).await {
                Ok(Ok(n)) => {
                    if phase.measuring() {
                        counters.requests.fetch_add(1, Relaxed);
                        counters.bytes.fetch_add(n, Relaxed);
                    }
                }
                _ => {
                    counters.errors.fetch_add(1, Relaxed);
                    break;
                }
            }
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>> {
    let stream = tcp_connect(addr).await?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One GET; returns the body's length.
async fn get(sender: &mut SendRequest<Empty<Bytes>>, uri: &str, host: &HeaderValue) -> Result<u64> {
    let req = Request::get(uri).header(HOST, host).body(Empty::new())?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        bail!("status {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}
