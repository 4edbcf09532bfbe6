//! `handshakes`: WebSocket open + `101` + close, back to back, K at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{Result, bail};
use futures_util::StreamExt;
use tokio::time::timeout;

use crate::common::{Common, Phase, join_all, run_phases, ws_config_small, ws_connect};
use crate::report::{Metric, Outcome};

/// Bound on one whole open + close cycle.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(c: &Common, concurrency: usize, rooms: usize) -> Result<Outcome> {
    let procs = c.procs();
    let phase = Arc::new(Phase::default());
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks = (0..concurrency)
        .map(|t| {
            let (c, phase, done, errors) = (c.clone(), phase.clone(), done.clone(), errors.clone());
            tokio::spawn(async move {
                let mut i = t;
                while !phase.stopped() {
                    let room = format!("r{}", i % rooms.max(1));
                    i += concurrency;
                    match timeout(CYCLE_TIMEOUT, cycle(&c, &room)).await {
                        Ok(Ok(())) if phase.measuring() => {
                            done.fetch_add(1, Relaxed);
                        }
                        Ok(Ok(())) => {}
                        _ => {
                            errors.fetch_add(1, Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        })
        .collect();
    let usage = run_phases(c, &phase, procs.as_ref()).await;
    join_all(tasks).await;

    let n = done.load(Relaxed) as f64;
    if n == 0.0 {
        bail!("no handshake completed ({} errors)", errors.load(Relaxed));
    }
    let mut out = Outcome::default();
    out.metrics.push(Metric::higher("handshakes_s", n / usage.wall_s, "/s"));
    if let Some(cpu) = usage.proxy_cpu_s {
        out.metrics.push(Metric::lower("proxy_cpu_us_per_handshake", cpu * 1e6 / n, "µs"));
    }
    out.metrics.push(Metric::lower("errors", errors.load(Relaxed) as f64, ""));
    out.add_usage(&usage, "");
    Ok(out)
}

/// Opens a WebSocket, closes it, and reads until the server's close.
async fn cycle(c: &Common, room: &str) -> Result<()> {
    let (mut ws, _) = ws_connect(c.pick(room), room, ws_config_small()).await?;
    ws.close(None).await?;
    while let Some(msg) = ws.next().await {
        msg?;
    }
    Ok(())
}
