//! `tidegate demo`: three chat backends on loopback and the proxy in front of
//! them, sticky by room, from an embedded config. Nothing to install or write.
//!
//! The backends (`backend`) serve the chat page and the chat itself; the page
//! is fetched through the proxy, like everything else.

pub mod backend;

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::server::{self, Running, StartError};

/// A running demo.
pub struct Demo {
    pub proxy: Running,
    pub backends: Vec<SocketAddr>,
}

impl Demo {
    /// Where a browser reaches the demo.
    pub fn url_host(&self) -> SocketAddr {
        self.proxy.listeners[0].1
    }
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot bind a demo backend on loopback: {0}")]
    Backend(std::io::Error),
    #[error("the demo's embedded config is invalid (a bug): {0}")]
    Config(crate::config::ConfigErrors),
    #[error(transparent)]
    Start(#[from] StartError),
}

/// The demo's config: the proxy on `port`, the three backends, sticky by `?room=`.
fn config_text(port: u16, backends: &[SocketAddr]) -> String {
    let list = backends.iter().map(|b| format!("\"{b}\"")).collect::<Vec<_>>().join(", ");
    format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[[listeners]]
name = "demo"
bind = "127.0.0.1:{port}"

[[routes]]
listener = "demo"
pool = "chat"

[pools.chat]
hash_key = "query:room"
fallback_key = "ip"
backends = [{list}]
"#
    )
}

/// Starts three backends and the proxy; the page is on `port` (any free port
/// if that one is taken).
pub async fn start(port: u16) -> Result<Demo, DemoError> {
    let mut backends = Vec::new();
    for name in ["backend-a", "backend-b", "backend-c"] {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(DemoError::Backend)?;
        backends.push(listener.local_addr().map_err(DemoError::Backend)?);
        tokio::spawn(backend::serve(listener, name.to_string()));
    }
    let config = |port| crate::config::parse(&config_text(port, &backends), "<demo>").map_err(DemoError::Config);
    let proxy = match server::start(config(port)?).await {
        Ok(proxy) => proxy,
        Err(StartError::Bind { .. }) if port != 0 => server::start(config(0)?).await?,
        Err(e) => return Err(e.into()),
    };
    Ok(Demo { proxy, backends })
}
