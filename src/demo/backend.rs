//! The built-in chat backend of `tidegate demo`.
//!
//! Each backend keeps its own rooms in memory: clients of a room only see one
//! another when they land on the same backend, which is what tidegate's sticky
//! routing (`hash_key = "query:room"`) guarantees.
//!
//! - `GET /` → the demo page, `GET /whoami` → the name, `GET /healthz` → `ok`;
//! - `GET /ws?room=R&user=U` (WebSocket) → joins room R on this backend. The
//!   client first gets `{"type":"hello","backend","room","members"}`, then
//!   `{"type":"presence","event":"join"|"leave","user","members",...}` and
//!   `{"type":"msg","backend","room","user","text"}` for every text message sent
//!   in the room (its own included).
//!
//! Every response, the `101` included, carries `x-backend: NAME`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

const PAGE: &str = include_str!("page.html");
/// Longest chat message, in bytes; longer ones are cut at a character boundary.
const MAX_TEXT: usize = 4096;
const MAX_ROOM: usize = 64;
const MAX_USER: usize = 32;
/// Messages a room buffers for a slow member before it lags (and skips).
const ROOM_CAPACITY: usize = 256;

struct Room {
    tx: broadcast::Sender<String>,
    members: usize,
}

struct State {
    name: String,
    name_header: HeaderValue,
    rooms: Mutex<HashMap<String, Room>>,
}

impl State {
    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves the demo chat backend on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, name: String) {
    let name_header = HeaderValue::from_str(&name).unwrap_or_else(|_| HeaderValue::from_static("demo"));
    let state = Arc::new(State { name, name_header, rooms: Mutex::new(HashMap::new()) });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(backend = %state.name, %err, "demo backend accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut resp = route(&state, req);
    resp.headers_mut().insert("x-backend", state.name_header.clone());
    resp
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn route(state: &Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed");
    }
    match req.uri().path() {
        "/" | "/index.html" => {
            let mut resp = reply(StatusCode::OK, "text/html; charset=utf-8", PAGE);
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            resp
        }
        "/whoami" => reply(StatusCode::OK, TEXT, state.name.clone()),
        "/healthz" => reply(StatusCode::OK, TEXT, "ok"),
        "/ws" => websocket(state, req),
        _ => reply(StatusCode::NOT_FOUND, TEXT, "not found"),
    }
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| v.to_str().map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))).unwrap_or(false))
}

fn websocket(state: &Arc<State>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let headers = req.headers();
    let upgrade = req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && has_token(headers, header::CONNECTION, "upgrade")
        && has_token(headers, header::UPGRADE, "websocket");
    if !upgrade {
        let mut resp = reply(StatusCode::UPGRADE_REQUIRED, TEXT, "a WebSocket upgrade is required");
        resp.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return resp;
    }
    let version_ok = headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v.as_bytes() == b"13");
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| version_ok) else {
        return reply(StatusCode::BAD_REQUEST, TEXT, "bad WebSocket handshake");
    };
    let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
        return reply(StatusCode::BAD_REQUEST, TEXT, "bad WebSocket handshake");
    };

    let query = req.uri().query().unwrap_or("");
    let room = clean(query_param(query, "room"), MAX_ROOM, "lobby");
    let user = clean(query_param(query, "user"), MAX_USER, "anonymous");

    let on_upgrade = hyper::upgrade::on(&mut req);
    let state = state.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let config = WebSocketConfig::default().max_message_size(Some(64 * 1024)).max_frame_size(Some(64 * 1024));
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        chat(ws, &state, room, user).await;
    });

    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

/// One member's life in a room: join, relay both ways, leave.
async fn chat<S>(ws: WebSocketStream<S>, state: &State, room: String, user: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (tx, mut rx, members) = {
        let mut rooms = state.rooms();
        let entry =
            rooms.entry(room.clone()).or_insert_with(|| Room { tx: broadcast::channel(ROOM_CAPACITY).0, members: 0 });
        entry.members += 1;
        (entry.tx.clone(), entry.tx.subscribe(), entry.members)
    };
    let name = state.name.as_str();
    let (mut sink, mut stream) = ws.split();

    let hello = json!({"type": "hello", "backend": name, "room": room, "members": members});
    if sink.send(Message::text(hello.to_string())).await.is_ok() {
        let joined = json!({"type": "presence", "event": "join", "backend": name,
            "room": room, "user": user, "members": members});
        let _ = tx.send(joined.to_string());
        loop {
            tokio::select! {
                incoming = stream.next() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        let text = truncate(text.as_str(), MAX_TEXT);
                        let msg = json!({"type": "msg", "backend": name, "room": room,
                            "user": user, "text": text});
                        let _ = tx.send(msg.to_string());
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    // Pings are answered by tungstenite; binary is not part of the chat.
                    Some(Ok(_)) => {}
                },
                outgoing = rx.recv() => match outgoing {
                    Ok(text) => {
                        if sink.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        let note = json!({"type": "lagged", "backend": name, "room": room,
                            "skipped": skipped});
                        if sink.send(Message::text(note.to_string())).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    }
    // Flush a pending close reply, without waiting on a peer that is gone.
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
    drop(rx);

    let left = {
        let mut rooms = state.rooms();
        match rooms.get_mut(&room) {
            Some(entry) if entry.members > 1 => {
                entry.members -= 1;
                Some(entry.members)
            }
            Some(_) => {
                rooms.remove(&room);
                None
            }
            None => None,
        }
    };
    if let Some(members) = left {
        let msg = json!({"type": "presence", "event": "leave", "backend": name,
            "room": room, "user": user, "members": members});
        let _ = tx.send(msg.to_string());
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Trims, drops control characters, caps the length; `default` when empty.
fn clean(value: Option<String>, max_chars: usize, default: &str) -> String {
    let cleaned: String =
        value.unwrap_or_default().trim().chars().filter(|c| !c.is_control()).take(max_chars).collect();
    if cleaned.is_empty() { default.to_string() } else { cleaned }
}

/// The percent-decoded value of `key` in a query string (`+` is a space).
fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_values() {
        assert_eq!(query_param("room=a%20b&user=J%C3%B6+x", "room").as_deref(), Some("a b"));
        assert_eq!(query_param("room=a%20b&user=J%C3%B6+x", "user").as_deref(), Some("Jö x"));
        assert_eq!(query_param("room=%zz%4", "room").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("room", "room").as_deref(), Some(""));
        assert_eq!(query_param("x=1", "room"), None);
    }

    #[test]
    fn truncates_at_char_boundary() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(clean(Some("  \u{7}ab ".into()), 1, "d"), "a");
        assert_eq!(clean(None, 5, "d"), "d");
    }
}
