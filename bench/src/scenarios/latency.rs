//! `latency`: WebSocket echo round trips under an open-loop load.
//!
//! Sends are scheduled by the clock (`rate` messages/s in total, round-robin
//! over the connections) from a dedicated thread with a precise sleep, and
//! latency is measured from each message's *scheduled* send time, so a stalled
//! proxy is charged for the sends it delayed (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{Common, IO_TIMEOUT, Ws, join_all, ws_config, ws_connect};
use crate::procstat::Watch;
use crate::report::{Metric, Outcome};

/// Bytes at the start of each message: scheduled time (ns since base), sequence.
const HEADER: usize = 16;

struct SenderReport {
    /// Messages scheduled inside the measurement window, and sent.
    measured: u64,
    errors: u64,
    /// Largest delay between a scheduled time and the start of its send.
    max_lag: Duration,
}

pub async fn run(c: &Common, conns: usize, rate: f64, size: usize) -> Result<Outcome> {
    ensure!(size >= HEADER, "messages must be at least {HEADER} bytes");
    ensure!(conns > 0 && rate > 0.0, "need connections and a rate");
    let procs = c.procs();
    let mut sinks = Vec::with_capacity(conns);
    let mut streams = Vec::with_capacity(conns);
    for i in 0..conns {
        let room = format!("r{i}");
        let (ws, _) = ws_connect(c.pick(&room), &room, ws_config()).await?;
        let (sink, stream) = ws.split();
        sinks.push(sink);
        streams.push(stream);
    }

    let base = Instant::now() + Duration::from_millis(20);
    let warmup_ns = c.warmup().as_nanos() as u64;
    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let receivers: Vec<_> = streams
        .into_iter()
        .map(|s| tokio::spawn(receive(s, base, warmup_ns, stop_rx.clone(), received.clone())))
        .collect();

    let total = ((c.warmup + c.duration) * rate).round() as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let (report_tx, report_rx) = oneshot::channel();
    let handle = Handle::current();
    std::thread::Builder::new().name("latency-sender".into()).spawn(move || {
        let report = send_loop(&handle, sinks, base, period, total, warmup_ns, size);
        let _ = report_tx.send(report);
    })?;

    tokio::time::sleep_until((base + c.warmup()).into()).await;
    let watch_ = Watch::start(procs.as_ref());
    tokio::time::sleep_until((base + c.warmup() + c.duration()).into()).await;
    let usage = watch_.finish();

    let report = tokio::time::timeout(IO_TIMEOUT, report_rx).await.context("the sender thread did not finish")??;
    // Let the last replies arrive (bounded), then stop the receivers.
    let grace = tokio::time::Instant::now() + Duration::from_secs(3);
    while received.load(Relaxed) < report.measured && tokio::time::Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    let mut hist = new_histogram();
    for h in join_all(receivers).await {
        hist.add(h)?;
    }
    if hist.is_empty() {
        bail!("no echo received ({} send errors)", report.errors);
    }

    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let mut out = Outcome::default();
    out.metrics.push(Metric::lower("p50_us", us(0.5), "µs"));
    out.metrics.push(Metric::lower("p99_us", us(0.99), "µs"));
    out.metrics.push(Metric::lower("p999_us", us(0.999), "µs"));
    out.metrics.push(Metric::info("max_us", hist.max() as f64 / 1000.0, "µs"));
    let lost = report.measured.saturating_sub(hist.len());
    out.metrics.push(Metric::lower("lost", lost as f64, "msgs"));
    out.metrics.push(Metric::lower("send_errors", report.errors as f64, ""));
    out.info.insert("messages".into(), hist.len() as f64);
    out.info.insert("max_send_lag_us".into(), report.max_lag.as_secs_f64() * 1e6);
    out.add_usage(&usage, "");
    Ok(out)
}

fn new_histogram() -> Histogram<u64> {
    // Nanoseconds, 1 ns .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// The open-loop sender: runs on its own thread, sleeps precisely until each
/// scheduled time and writes the message through the runtime's handle.
fn send_loop(
    handle: &Handle,
    mut sinks: Vec<SplitSink<Ws, Message>>,
    base: Instant,
    period: Duration,
    total: u64,
    warmup_ns: u64,
    size: usize,
) -> SenderReport {
    set_precise_timer();
    let mut report = SenderReport { measured: 0, errors: 0, max_lag: Duration::ZERO };
    let n = sinks.len() as u64;
    for k in 0..total {
        let at = base + period.mul_f64(k as f64);
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        report.max_lag = report.max_lag.max(Instant::now().saturating_duration_since(at));
        let sched_ns = (at - base).as_nanos() as u64;
        let mut payload = vec![0u8; size];
        payload[..8].copy_from_slice(&sched_ns.to_le_bytes());
        payload[8..16].copy_from_slice(&k.to_le_bytes());
        let sink = &mut sinks[(k % n) as usize];
        let msg = Message::Binary(Bytes::from(payload));
        // The timer must be created inside the runtime's context: in the async block.
        match handle.block_on(async { tokio::time::timeout(IO_TIMEOUT, sink.send(msg)).await }) {
            Ok(Ok(())) => {
                if sched_ns >= warmup_ns {
                    report.measured += 1;
                }
            }
            _ => report.errors += 1,
        }
    }
    report
}

/// Timer slack of 1 ns for this thread (the default 50 µs would add jitter).
fn set_precise_timer() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and affects only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// Records each echo's latency from its scheduled send time until stopped.
async fn receive(
    mut stream: SplitStream<Ws>,
    base: Instant,
    warmup_ns: u64,
    mut stop: watch::Receiver<bool>,
    received: Arc<AtomicU64>,
) -> Histogram<u64> {
    let mut hist = new_histogram();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) if b.len() >= HEADER => {
                    let now_ns = base.elapsed().as_nanos() as u64;
                    let sched_ns = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
                    if sched_ns >= warmup_ns {
                        hist.saturating_record(now_ns.saturating_sub(sched_ns).max(1));
                        received.fetch_add(1, Relaxed);
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            },
        }
    }
    hist
}
