//! tidegate: a reverse proxy and WebSocket-aware load balancer.
//!
//! # Vocabulary
//! - **client**: the peer that connected to one of our listeners.
//! - **backend**: a server we forward to, named by its address (`host:port`), its identity.
//! - **listener**: a bound socket accepting clients (`[[listeners]]`).
//! - **route**: a rule (listener, host, path prefix) choosing a pool; first match wins.
//! - **pool**: a set of backends sharing one ring and one key rule (`[pools.NAME]`).
//! - **ring**: the consistent-hash ring of a pool, built from backend identities.
//! - **key**: the bytes taken from a request (`hash_key`) that pick a backend on the ring.
//! - **tunnel**: a WebSocket after its `101`: two sockets spliced byte for byte.
//! - **snapshot**: the validated, immutable runtime view of a config, swapped atomically.
//! - **drain**: retiring connections from something that is leaving, paced and bounded.
//!
//! # The data path, in file order
//! `listener` accepts, `connection` runs hyper on the socket, `proxy` handles each
//! request: `route` finds the pool and key, `balance` picks a backend, then either
//! `upstream` forwards a plain request or `upgrade` performs the WebSocket hand-off
//! and `tunnel` moves the bytes. `snapshot`, `metrics` and `admin` sit beside it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod config;
pub mod connection;
pub mod ctl;
pub mod demo;
pub mod drain;
pub mod error;
pub mod frames;
pub mod handover;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod tunnel;
pub mod tunnels;
pub mod upgrade;
pub mod upstream;

pub use server::{Running, start};
