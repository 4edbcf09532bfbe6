//! Operator commands against a running instance's admin endpoint:
//! `tidegate reload | upgrade | status | drain | undrain`. Plain HTTP/1.1 to
//! the admin address; human output by default, the JSON as is with `--json`.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach the admin endpoint at {0}: {1} (is tidegate running? pass --admin ADDR)")]
    Connect(SocketAddr, std::io::Error),
    #[error("the admin endpoint at {0} did not answer: {1}")]
    Http(SocketAddr, String),
    #[error("{0}")]
    Refused(String),
}

/// Sends one request to the admin endpoint; returns the JSON answer of a 2xx.
pub async fn call(admin: SocketAddr, method: http::Method, path: &str) -> Result<serde_json::Value, CtlError> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(admin))
        .await
        .map_err(|_| CtlError::Connect(admin, std::io::ErrorKind::TimedOut.into()))?
        .map_err(|e| CtlError::Connect(admin, e))?;
    let http = |e: &dyn std::fmt::Display| CtlError::Http(admin, e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| http(&e))?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, admin.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(&e))?;
    // An upgrade waits for the new binary to be ready: allow for it.
    let resp = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
        .await
        .map_err(|_| http(&"timed out"))?
        .map_err(|e| http(&e))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| http(&e))?.to_bytes();
    let value: serde_json::Value =
        serde_json::from_slice(&body).unwrap_or_else(|_| String::from_utf8_lossy(&body).into());
    if !status.is_success() {
        let message = value.get("error").and_then(|e| e.as_str()).map_or_else(|| value.to_string(), str::to_owned);
        return Err(CtlError::Refused(message));
    }
    Ok(value)
}

/// `tidegate status`: pools, backends and their state, open tunnels.
pub async fn status(admin: SocketAddr, json: bool) -> Result<(), CtlError> {
    let status = call(admin, http::Method::GET, "/api/status").await?;
    let backends = call(admin, http::Method::GET, "/api/backends").await?;
    if json {
        println!("{}", serde_json::json!({ "status": status, "backends": backends["pools"] }));
        return Ok(());
    }
    println!(
        "tidegate {} (pid {}): {}, {} open tunnel(s)",
        status["version"].as_str().unwrap_or("?"),
        status["pid"],
        if status["ready"].as_bool() == Some(true) { "ready" } else { "not ready (shutting down)" },
        status["tunnels"],
    );
    for pool in backends["pools"].as_array().into_iter().flatten() {
        println!("pool {}", pool["name"].as_str().unwrap_or("?"));
        for b in pool["backends"].as_array().into_iter().flatten() {
            println!(
                "  {:<28} {:<9} weight {:<3} open {}",
                b["addr"].as_str().unwrap_or("?"),
                b["state"].as_str().unwrap_or("?"),
                b["weight"],
                b["open"]
            );
        }
    }
    Ok(())
}

/// `tidegate drain POOL BACKEND [--wait]`: with `--wait`, follows the drain
/// until the backend has no open connection (a progress line on a terminal).
pub async fn drain(admin: SocketAddr, pool: &str, backend: &str, wait: bool, json: bool) -> Result<(), CtlError> {
    let answer = call(admin, http::Method::POST, &format!("/api/pools/{pool}/backends/{backend}/drain")).await?;
    let total = answer["tunnels"].as_u64().unwrap_or(0);
    if json {
        println!("{answer}");
    } else {
        println!("draining {backend} in pool {pool}: {total} tunnel(s) will be asked to reconnect");
    }
    if !wait {
        return Ok(());
    }
    let terminal = std::io::stdout().is_terminal() && !json;
    loop {
        let pools = call(admin, http::Method::GET, "/api/backends").await?;
        let open = pools["pools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"] == pool)
            .flat_map(|p| p["backends"].as_array().into_iter().flatten())
            .find(|b| b["addr"] == backend)
            .and_then(|b| b["open"].as_u64())
            .unwrap_or(0);
        if terminal {
            let done = total.saturating_sub(open);
            let width = 30;
            let filled = (done * width).checked_div(total).unwrap_or(width) as usize;
            print!(
                "\r[{}{}] {done}/{total} moved, {open} open ",
                "#".repeat(filled),
                "-".repeat(width as usize - filled)
            );
            let _ = std::io::stdout().flush();
        }
        if open == 0 {
            if terminal {
                println!();
            }
            if !json {
                println!("{backend} is drained");
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `tidegate undrain POOL BACKEND`.
pub async fn undrain(admin: SocketAddr, pool: &str, backend: &str, json: bool) -> Result<(), CtlError> {
    let answer = call(admin, http::Method::POST, &format!("/api/pools/{pool}/backends/{backend}/undrain")).await?;
    if json {
        println!("{answer}");
    } else {
        println!("{backend} in pool {pool} takes new connections again");
    }
    Ok(())
}

/// `tidegate reload`.
pub async fn reload(admin: SocketAddr, json: bool) -> Result<(), CtlError> {
    let answer = call(admin, http::Method::POST, "/api/reload").await?;
    if json {
        println!("{answer}");
    } else {
        let c = &answer["changes"];
        println!(
            "reloaded: {} backend(s) added, {} removed (draining), {} listener(s) rebound, {} tunnel(s) re-homed",
            c["added"].as_array().map_or(0, Vec::len),
            c["removed"].as_array().map_or(0, Vec::len),
            c["rebound"].as_array().map_or(0, Vec::len),
            c["rehomed"]
        );
    }
    Ok(())
}

/// `tidegate upgrade`.
pub async fn upgrade(admin: SocketAddr, json: bool) -> Result<(), CtlError> {
    let answer = call(admin, http::Method::POST, "/api/upgrade").await?;
    if json {
        println!("{answer}");
    } else {
        println!("upgraded: the new process (pid {}) serves; the old one drains and exits", answer["new_pid"]);
    }
    Ok(())
}
