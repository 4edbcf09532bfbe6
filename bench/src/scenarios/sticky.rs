//! `sticky`: K keys × M WebSockets each; every backend names itself in
//! `x-backend` on the `101`. Counts keys per backend and keys split over two.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};
use futures_util::{StreamExt, stream};
use tokio::time::timeout;

use crate::common::{CONNECT_TIMEOUT, Common, ws_config_small, ws_connect};
use crate::report::{Metric, Outcome};

pub async fn run(c: &Common, keys: usize, per_key: usize, concurrency: usize) -> Result<Outcome> {
    let jobs = (0..keys).flat_map(|k| (0..per_key).map(move |_| k));
    let seen: Vec<(usize, Option<u16>)> = stream::iter(jobs)
        .map(|k| async move {
            let room = format!("key-{k}");
            let backend = match ws_connect(c.pick(&room), &room, ws_config_small()).await {
                Ok((mut ws, backend)) => {
                    let _ = timeout(CONNECT_TIMEOUT, ws.close(None)).await;
                    let _ = timeout(CONNECT_TIMEOUT, async { while ws.next().await.is_some() {} }).await;
                    backend
                }
                Err(_) => None,
            };
            (k, backend)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;

    let mut by_key: BTreeMap<usize, BTreeSet<u16>> = BTreeMap::new();
    let mut failed = 0;
    for (k, backend) in seen {
        match backend {
            Some(port) => {
                by_key.entry(k).or_default().insert(port);
            }
            None => failed += 1,
        }
    }
    if by_key.is_empty() {
        bail!("no handshake succeeded (or no x-backend header came back)");
    }
    let split = by_key.values().filter(|b| b.len() > 1).count();
    let mut per_backend: BTreeMap<u16, usize> = BTreeMap::new();
    for backends in by_key.values() {
        for &port in backends {
            *per_backend.entry(port).or_default() += 1;
        }
    }

    let mut out = Outcome::default();
    out.metrics.push(Metric::lower("split_keys", split as f64, "keys"));
    out.metrics.push(Metric::lower("failed", failed as f64, "conns"));
    for (port, n) in per_backend {
        out.metrics.push(Metric::info(format!("keys_on_{port}"), n as f64, "keys"));
    }
    Ok(out)
}
