//! Three (or more) HTTP + WebSocket echo backends in one process.
//!
//! - `GET /big` returns 1 MiB; any other GET returns `hello, world\n`.
//! - A WebSocket upgrade on any path is answered `101` and its data messages
//!   are echoed back (pings are answered by tungstenite).
//! - Every response carries `x-backend: PORT`, which `sticky` counts.

use std::convert::Infallible;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

const HELLO: &[u8] = b"hello, world\n";
const BIG_LEN: usize = 1 << 20;

pub async fn run(ports: &[u16]) -> Result<()> {
    let big = Bytes::from(vec![b'x'; BIG_LEN]);
    let mut tasks = Vec::new();
    for &port in ports {
        let listener = listen(port).with_context(|| format!("listening on 127.0.0.1:{port}"))?;
        tasks.push(tokio::spawn(accept_loop(listener, port, big.clone())));
    }
    eprintln!("backends listening on 127.0.0.1, ports {ports:?}");
    for task in tasks {
        task.await?;
    }
    Ok(())
}

fn listen(port: u16) -> Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(([127, 0, 0, 1], port).into())?;
    Ok(socket.listen(4096)?)
}

async fn accept_loop(listener: TcpListener, port: u16, big: Bytes) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: back off, keep serving.
                eprintln!("backend {port}: accept: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let big = big.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let big = big.clone();
                async move { Ok::<_, Infallible>(handle(req, port, big)) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades().await;
        });
    }
}

fn handle(req: Request<Incoming>, port: u16, big: Bytes) -> Response<Full<Bytes>> {
    let mut resp = if is_websocket(&req) {
        upgrade(req)
    } else if req.uri().path() == "/big" {
        Response::new(Full::new(big))
    } else {
        Response::new(Full::new(Bytes::from_static(HELLO)))
    };
    resp.headers_mut().insert("x-backend", HeaderValue::from(port));
    resp
}

fn is_websocket(req: &Request<Incoming>) -> bool {
    req.headers().get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Answers the handshake and spawns the echo loop on the upgraded connection.
fn upgrade(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"missing key\n")));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return resp;
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let config = WebSocketConfig::default().max_message_size(Some(4 << 20)).max_frame_size(Some(4 << 20));
            let io = TokioIo::new(upgraded);
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            echo(ws).await;
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// Echoes data messages until the peer closes (control frames are handled by
/// tungstenite while reading: pongs for pings, the reply to a close).
async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_binary() || msg.is_text()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}
