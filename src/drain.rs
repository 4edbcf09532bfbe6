//! Draining: retiring the tunnels of a backend that is leaving (reload,
//! the drain API, shutdown, re-home) without a reconnect storm.
//!
//! Each tunnel of a drain gets its own moment, spread evenly with jitter over
//! `spread`, at which it is asked to close politely (the tunnel itself sends
//! the Close frames at frame boundaries); whatever is still open at `timeout`
//! is forced closed. This module only paces and enforces deadlines: how a
//! tunnel says goodbye is `tunnel`'s business.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use crate::config::DrainConfig;
use crate::metrics::Metrics;
use crate::snapshot::Backend;
use crate::tunnels::TunnelInfo;

/// How often a drain looks at whether its tunnels have gone, to finish early.
const POLL: Duration = Duration::from_millis(50);

/// The moment (as a fraction of the spread window) at which the `i`th of `n`
/// tunnels is asked to close: evenly spaced slots, a random point in each, so
/// the closes neither bunch up nor fall in lockstep across proxies.
pub fn slot(i: usize, n: usize, seed: u64) -> f64 {
    let jitter = (xxhash_rust::xxh3::xxh3_64(&seed.to_le_bytes()) >> 11) as f64 / (1u64 << 53) as f64;
    (i as f64 + jitter) / n.max(1) as f64
}

/// Drains `tunnels` (all on `backend`) as `cfg` says; returns once they are
/// all closed or the timeout has forced the rest.
pub async fn drain_backend(backend: Arc<Backend>, tunnels: Vec<Arc<TunnelInfo>>, cfg: DrainConfig, metrics: &Metrics) {
    let start = Instant::now();
    let n = tunnels.len();
    let remaining = metrics.drain_tunnels_remaining.with_label_values(&[&*backend.pool, &*backend.addr]);
    remaining.add(n as i64);
    info!(pool = %backend.pool, backend = %backend.addr, tunnels = n, spread = ?cfg.spread, "drain started");
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    // Slots grow with i, so the plan is in time order.
    let mut plan: VecDeque<(Instant, Arc<TunnelInfo>)> = tunnels
        .into_iter()
        .enumerate()
        .map(|(i, t)| (start + cfg.spread.mul_f64(slot(i, n, seed ^ t.id)), t))
        .collect();
    let mut asked: Vec<Arc<TunnelInfo>> = Vec::new();
    let deadline = start + cfg.timeout;
    let mut forced = 0;
    loop {
        let now = Instant::now();
        while plan.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, t)) = plan.pop_front() {
                t.request_close(cfg.close_code);
                asked.push(t);
            }
        }
        let before = plan.len() + asked.len();
        plan.retain(|(_, t)| !t.is_closed());
        asked.retain(|t| !t.is_closed());
        remaining.sub((before - plan.len() - asked.len()) as i64);
        if plan.is_empty() && asked.is_empty() {
            break;
        }
        if now >= deadline {
            forced = plan.len() + asked.len();
            plan.iter().map(|(_, t)| t).chain(&asked).for_each(|t| t.force_close());
            remaining.sub(forced as i64);
            break;
        }
        let next_slot = plan.front().map_or(deadline, |(at, _)| *at);
        tokio::time::sleep_until(next_slot.min(deadline).min(now + POLL)).await;
    }
    info!(pool = %backend.pool, backend = %backend.addr, tunnels = n, forced, "drain finished");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_spread_over_the_whole_window_in_order() {
        let n = 300;
        let slots: Vec<f64> = (0..n).map(|i| slot(i, n, 42 ^ i as u64)).collect();
        assert!(slots.windows(2).all(|w| w[0] <= w[1]), "slots go forward in time");
        assert!(slots.iter().all(|s| (0.0..1.0).contains(s)));
        // Each tenth of the window holds a tenth of the closes.
        for decile in 0..10 {
            let lo = decile as f64 / 10.0;
            let count = slots.iter().filter(|s| (lo..lo + 0.1).contains(*s)).count();
            assert!((29..=31).contains(&count), "decile {decile} has {count}");
        }
    }
}
