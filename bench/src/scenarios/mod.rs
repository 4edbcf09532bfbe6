//! One module per scenario of PERF.md.

pub mod handshakes;
pub mod http;
pub mod idle;
pub mod latency;
pub mod sticky;
pub mod throughput;
