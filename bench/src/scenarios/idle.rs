//! `idle`: hold N idle WebSockets spread over rooms, read the proxy's RSS,
//! then ping each one and count those that answer.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, stream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{CONNECT_TIMEOUT, Common, Ws, ws_config_small, ws_connect};
use crate::report::{Metric, Outcome};

/// Bound on opening all the connections, and on pinging them all.
const PHASE_LIMIT: Duration = Duration::from_secs(180);
/// Time given to the proxy to settle before its RSS is read.
const SETTLE: Duration = Duration::from_secs(1);

pub async fn run(c: &Common, count: usize, rooms: usize, concurrency: usize) -> Result<Outcome> {
    let procs = c.procs();
    let rss_before = procs.as_ref().map(|p| p.rss_bytes()).transpose()?;

    let t0 = Instant::now();
    let deadline = t0 + PHASE_LIMIT;
    let opened: Vec<Option<Ws>> = stream::iter(0..count)
        .map(|i| {
            let room = format!("r{}", i % rooms.max(1));
            let addr = c.pick(&room);
            async move {
                if Instant::now() > deadline {
                    return None;
                }
                ws_connect(addr, &room, ws_config_small()).await.ok().map(|(ws, _)| ws)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let open_s = t0.elapsed().as_secs_f64();
    let sockets: Vec<Ws> = opened.into_iter().flatten().collect();
    let held = sockets.len();
    if held == 0 {
        bail!("no WebSocket could be opened");
    }

    tokio::time::sleep(SETTLE).await;
    let rss_after = procs.as_ref().map(|p| p.rss_bytes()).transpose()?;

    let deadline = Instant::now() + PHASE_LIMIT;
    let alive = stream::iter(sockets)
        .map(|mut ws| async move {
            if Instant::now() > deadline {
                return false;
            }
            let ok = matches!(timeout(CONNECT_TIMEOUT, ping(&mut ws)).await, Ok(Ok(())));
            drop(ws);
            ok
        })
        .buffer_unordered(256)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;

    let mut out = Outcome::default();
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let per = (after as f64 - before as f64) / held as f64;
        out.metrics.push(Metric::lower("rss_bytes_per_tunnel", per, "B"));
        out.metrics.push(Metric::lower("proxy_rss_mb", after as f64 / 1e6, "MB"));
    }
    out.metrics.push(Metric::higher("held", held as f64, ""));
    out.metrics.push(Metric::higher("alive", alive as f64, ""));
    out.info.insert("requested".into(), count as f64);
    out.info.insert("open_s".into(), open_s);
    Ok(out)
}

/// Sends a ping and waits for its pong.
async fn ping(ws: &mut Ws) -> Result<()> {
    ws.send(Message::Ping(Bytes::from_static(b"alive?"))).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Pong(_))) => return Ok(()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed"),
        }
    }
}
