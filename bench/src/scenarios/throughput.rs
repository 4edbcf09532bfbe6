//! `throughput`: WebSocket ping-pong of large messages (closed loop): each
//! connection sends one message, waits for its echo, and sends the next.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use anyhow::{Result, bail, ensure};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{Common, IO_TIMEOUT, Phase, Ws, join_all, run_phases, ws_config, ws_connect};
use crate::report::{Metric, Outcome};

/// `65536` -> `64k`, `1048576` -> `1m`: the suffix of each size's metrics.
fn size_label(size: usize) -> String {
    if size >= 1 << 20 && size.is_multiple_of(1 << 20) {
        format!("{}m", size >> 20)
    } else if size >= 1 << 10 && size.is_multiple_of(1 << 10) {
        format!("{}k", size >> 10)
    } else {
        format!("{size}b")
    }
}

pub async fn run(c: &Common, conns: usize, sizes: &[usize]) -> Result<Outcome> {
    ensure!(conns > 0 && !sizes.is_empty(), "need connections and sizes");
    let mut out = Outcome::default();
    for &size in sizes {
        run_size(c, conns, size, &mut out).await?;
    }
    Ok(out)
}

async fn run_size(c: &Common, conns: usize, size: usize, out: &mut Outcome) -> Result<()> {
    let label = size_label(size);
    let procs = c.procs();
    let payload = Bytes::from(vec![0x5a_u8; size]);
    let mut sockets = Vec::with_capacity(conns);
    for i in 0..conns {
        let room = format!("r{i}");
        sockets.push(ws_connect(c.pick(&room), &room, ws_config()).await?.0);
    }
    let phase = Arc::new(Phase::default());
    let bytes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks = sockets
        .into_iter()
        .map(|ws| {
            let (phase, bytes, errors, payload) = (phase.clone(), bytes.clone(), errors.clone(), payload.clone());
            tokio::spawn(async move {
                if ping_pong(ws, &payload, &phase, &bytes).await.is_err() {
                    errors.fetch_add(1, Relaxed);
                }
            })
        })
        .collect();
    let usage = run_phases(c, &phase, procs.as_ref()).await;
    join_all(tasks).await;

    let bytes = bytes.load(Relaxed) as f64;
    if bytes == 0.0 {
        bail!("no {label} message echoed in the window");
    }
    out.metrics.push(Metric::higher(format!("mb_s_{label}"), bytes / 1e6 / usage.wall_s, "MB/s"));
    if let Some(cpu) = usage.proxy_cpu_s.filter(|&s| s > 0.0) {
        out.metrics.push(Metric::higher(format!("mb_per_proxy_cpu_s_{label}"), bytes / 1e6 / cpu, "MB/cpu-s"));
    }
    out.metrics.push(Metric::lower(format!("errors_{label}"), errors.load(Relaxed) as f64, ""));
    out.add_usage(&usage, &format!("_{label}"));
    Ok(())
}

/// Sends, awaits the echo, repeats until stopped; counts bytes one way.
async fn ping_pong(mut ws: Ws, payload: &Bytes, phase: &Phase, bytes: &AtomicU64) -> Result<()> {
    while !phase.stopped() {
        timeout(IO_TIMEOUT, async {
            ws.send(Message::Binary(payload.clone())).await?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) if b.len() == payload.len() => return Ok(()),
                    Some(Ok(Message::Binary(b))) => bail!("echo of {} bytes, sent {}", b.len(), payload.len()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                    None => bail!("connection closed"),
                }
            }
        })
        .await??;
        if phase.measuring() {
            bytes.fetch_add(payload.len() as u64, Relaxed);
        }
    }
    let _ = timeout(IO_TIMEOUT, ws.close(None)).await;
    Ok(())
}
