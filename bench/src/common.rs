//! Shared by the scenarios: options, target choice, connecting, phases.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::procstat::{ProcSet, Usage, Watch};

/// Bound on one TCP connect or one WebSocket handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one request/response or one echo round trip.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the tasks get to wind down after a measurement window.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(35);

pub type Ws = WebSocketStream<TcpStream>;

/// Options every load scenario takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Where to send load: the proxy's address, or for "direct" the backends'
    /// addresses (comma-separated; a hash of the room picks one).
    #[arg(long, value_delimiter = ',', required = true)]
    pub target: Vec<SocketAddr>,
    /// Label of what is measured (direct, tidegate, haproxy, nginx, ...).
    #[arg(long, default_value = "direct")]
    pub proxy: String,
    /// Round number, recorded as is.
    #[arg(long, default_value_t = 1)]
    pub round: u32,
    /// PID of the proxy (its children are included): CPU and RSS from /proc.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Length of the measurement window, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Load before the window starts (not counted), seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
}

impl Common {
    /// The address a room's connections go to.
    pub fn pick(&self, room: &str) -> SocketAddr {
        // FNV-1a: only "direct" has several targets, where any stable spread will do.
        let h = room.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        self.target[(h % self.target.len() as u64) as usize]
    }

    pub fn procs(&self) -> Option<ProcSet> {
        self.pid.map(ProcSet::of)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup)
    }
}

/// A TCP connection with TCP_NODELAY, bounded in time.
pub async fn tcp_connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("connect to {addr} timed out"))?
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Client config for connections that move data.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(4 << 20)).max_frame_size(Some(4 << 20))
}

/// Client config for connections that are mostly idle (small buffers).
pub fn ws_config_small() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0)
}

/// Opens a WebSocket to `/ws?room=ROOM`; returns it and the backend's
/// `x-backend` header (its port) when present.
pub async fn ws_connect(addr: SocketAddr, room: &str, config: WebSocketConfig) -> Result<(Ws, Option<u16>)> {
    let stream = tcp_connect(addr).await?;
    let url = format!("ws://{addr}/ws?room={room}");
    let (ws, resp) = timeout(CONNECT_TIMEOUT, client_async_with_config(url, stream, Some(config)))
        .await
        .context("WebSocket handshake timed out")?
        .context("WebSocket handshake")?;
    let backend = resp.headers().get("x-backend").and_then(|v| v.to_str().ok()?.parse().ok());
    Ok((ws, backend))
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Where a closed-loop scenario is: warming up, measuring, or stopping.
#[derive(Default)]
pub struct Phase(AtomicU8);

impl Phase {
    pub fn measuring(&self) -> bool {
        self.0.load(Ordering::Relaxed) == MEASURE
    }
    pub fn stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed) == STOP
    }
    fn set(&self, v: u8) {
        self.0.store(v, Ordering::Relaxed);
    }
}

/// Warm-up, then the measurement window, then tells the tasks to stop.
pub async fn run_phases(c: &Common, phase: &Arc<Phase>, procs: Option<&ProcSet>) -> Usage {
    phase.set(WARMUP);
    tokio::time::sleep(c.warmup()).await;
    let watch = Watch::start(procs);
    phase.set(MEASURE);
    tokio::time::sleep(c.duration()).await;
    phase.set(STOP);
    watch.finish()
}

/// Waits for spawned tasks, aborting those that outlive [`JOIN_TIMEOUT`].
pub async fn join_all<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let mut out = Vec::with_capacity(tasks.len());
    for mut task in tasks {
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(_)) => {}
            Err(_) => task.abort(),
        }
    }
    out
}
