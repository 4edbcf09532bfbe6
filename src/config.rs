//! TEMPORARY stub: replaced by the real config module.
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config { pub workers: Option<usize>, pub admin: AdminConfig, pub listeners: Vec<ListenerConfig>, pub routes: Vec<RouteConfig>, pub pools: Vec<PoolConfig>, pub limits: Limits }
#[derive(Debug, Clone)]
pub struct AdminConfig { pub bind: SocketAddr }
#[derive(Debug, Clone)]
pub struct ListenerConfig { pub name: String, pub bind: SocketAddr }
#[derive(Debug, Clone)]
pub struct RouteConfig { pub listener: String, pub host: Option<String>, pub path_prefix: Option<String>, pub pool: String }
#[derive(Debug, Clone)]
pub struct PoolConfig { pub name: String, pub hash_key: KeySpec, pub fallback_key: KeySpec, pub backends: Vec<BackendConfig>, pub bounded_load: Option<f64>, pub max_fails: u32, pub fail_timeout: Duration }
#[derive(Debug, Clone)]
pub struct BackendConfig { pub addr: String, pub weight: u32 }
#[derive(Debug, Clone, PartialEq)]
pub enum KeySpec { Ip, Header(http::HeaderName), Cookie(String), Query(String), Path(usize) }
#[derive(Debug, Clone)]
pub struct Limits { pub max_connections: usize, pub handshake_timeout: Duration, pub idle_timeout: Option<Duration>, pub max_header_bytes: usize, pub connect_timeout: Duration, pub response_timeout: Duration }
#[derive(Debug, Clone)]
pub struct ConfigError { pub file: String, pub line: usize, pub col: usize, pub path: String, pub message: String, pub fix: String }
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);
impl std::fmt::Display for ConfigErrors { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { for e in &self.0 { writeln!(f, "{}:{}:{}: {}: {} (fix: {})", e.file, e.line, e.col, e.path, e.message, e.fix)?; } Ok(()) } }
impl std::error::Error for ConfigErrors {}
impl std::fmt::Display for KeySpec { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { match self { KeySpec::Ip => write!(f, "ip"), KeySpec::Header(h) => write!(f, "header:{h}"), KeySpec::Cookie(c) => write!(f, "cookie:{c}"), KeySpec::Query(q) => write!(f, "query:{q}"), KeySpec::Path(n) => write!(f, "path:{n}") } } }
pub fn load(_path: &std::path::Path) -> Result<Config, ConfigErrors> { unimplemented!() }
pub fn parse(_text: &str, _file: &str) -> Result<Config, ConfigErrors> { unimplemented!() }
impl Default for Limits { fn default() -> Self { Limits { max_connections: 10000, handshake_timeout: Duration::from_secs(10), idle_timeout: None, max_header_bytes: 32768, connect_timeout: Duration::from_secs(5), response_timeout: Duration::from_secs(60) } } }
