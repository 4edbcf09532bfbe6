//! tidegate-bench: the load harness of `bench/run.sh`.
//!
//! `backend` runs the echo backends; each scenario subcommand runs one scenario
//! of PERF.md against one target and prints one JSON line (a `Record`);
//! `table` prints the results table from such lines. See bench/README.md.

mod backend;
mod common;
mod procstat;
mod report;
mod scenarios;
mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use crate::common::Common;
use crate::report::{Outcome, Record};
use crate::scenarios::{handshakes, http, idle, latency, sticky, throughput};

#[derive(Parser)]
#[command(name = "tidegate-bench", about = "Load harness for tidegate and its peers (bench/README.md)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run HTTP + WebSocket echo backends on 127.0.0.1 (one per port).
    Backend {
        #[arg(long, value_delimiter = ',', default_value = "19001,19002,19003")]
        ports: Vec<u16>,
    },
    /// Keep-alive GETs of a 13-byte body: req/s, proxy CPU µs per request.
    Http {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 50)]
        conns: usize,
    },
    /// GETs of a 1 MiB body: MB/s.
    #[command(name = "http_big")]
    HttpBig {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10)]
        conns: usize,
    },
    /// WebSocket echo, open loop at a fixed total rate: p50/p99/p99.9 µs.
    Latency {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        conns: usize,
        /// Messages per second, all connections together.
        #[arg(long, default_value_t = 5000.0)]
        rate: f64,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// WebSocket ping-pong of large messages: MB/s one way, per size.
    Throughput {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 8)]
        conns: usize,
        #[arg(long, value_delimiter = ',', default_value = "65536,1048576")]
        sizes: Vec<usize>,
    },
    /// WebSocket open + 101 + close, K at a time: handshakes/s, CPU µs each.
    Handshakes {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 1000)]
        rooms: usize,
    },
    /// Hold N idle WebSockets, read the proxy's RSS, ping each: bytes per tunnel.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 9900)]
        count: usize,
        #[arg(long, default_value_t = 1000)]
        rooms: usize,
        /// Handshakes in flight while opening.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// K keys × M WebSockets: keys per backend, keys seen on two backends.
    Sticky {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        keys: usize,
        #[arg(long, default_value_t = 3)]
        per_key: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Print the results table from JSON-lines files.
    Table { files: Vec<PathBuf> },
    /// Wait until ADDR accepts connections (or, with --closed, until it refuses).
    WaitPort {
        addr: SocketAddr,
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
        #[arg(long)]
        closed: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tidegate-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidegate-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Cmd) -> Result<()> {
    let (name, common, outcome) = match cmd {
        Cmd::Backend { ports } => return backend::run(&ports).await,
        Cmd::Table { files } => return table::print(&files),
        Cmd::WaitPort { addr, timeout, closed } => return wait_port(addr, timeout, closed).await,
        Cmd::Http { common, conns } => {
            let o = http::run(&common, conns, "/", false).await;
            ("http", common, o)
        }
        Cmd::HttpBig { common, conns } => {
            let o = http::run(&common, conns, "/big", true).await;
            ("http_big", common, o)
        }
        Cmd::Latency { common, conns, rate, size } => {
            let o = latency::run(&common, conns, rate, size).await;
            ("latency", common, o)
        }
        Cmd::Throughput { common, conns, sizes } => {
            let o = throughput::run(&common, conns, &sizes).await;
            ("throughput", common, o)
        }
        Cmd::Handshakes { common, concurrency, rooms } => {
            let o = handshakes::run(&common, concurrency, rooms).await;
            ("handshakes", common, o)
        }
        Cmd::Idle { common, count, rooms, concurrency } => {
            let o = idle::run(&common, count, rooms, concurrency).await;
            ("idle", common, o)
        }
        Cmd::Sticky { common, keys, per_key, concurrency } => {
            let o = sticky::run(&common, keys, per_key, concurrency).await;
            ("sticky", common, o)
        }
    };
    emit(name, &common, outcome)
}

/// Prints the record on stdout (and a one-line summary on stderr).
fn emit(scenario: &str, c: &Common, outcome: Result<Outcome>) -> Result<()> {
    let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut rec = Record {
        ts,
        round: c.round,
        proxy: c.proxy.clone(),
        scenario: scenario.to_owned(),
        metrics: Vec::new(),
        info: Default::default(),
        error: None,
    };
    let failed = match outcome {
        Ok(o) => {
            rec.metrics = o.metrics;
            rec.info = o.info;
            None
        }
        Err(e) => {
            rec.error = Some(format!("{e:#}"));
            Some(e)
        }
    };
    println!("{}", serde_json::to_string(&rec)?);
    let summary: Vec<String> = rec.metrics.iter().map(|m| format!("{}={}", m.name, table::fmt(m.value))).collect();
    eprintln!("  round {} {scenario} {}: {}", c.round, c.proxy, summary.join(" "));
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn wait_port(addr: SocketAddr, timeout_s: f64, closed: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(timeout_s);
    loop {
        let open = matches!(
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
            Ok(Ok(_))
        );
        if open != closed {
            return Ok(());
        }
        if Instant::now() > deadline {
            let want = if closed { "stop accepting" } else { "accept" };
            bail!("{addr} did not {want} connections within {timeout_s} s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
