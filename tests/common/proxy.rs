//! Starting a real tidegate in process on 127.0.0.1:0, and small clients for it.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tidegate::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The config every test starts from: one listener, one pool "echo" sticky
/// by `?room=`, with `extra` TOML appended right after the pool's backends:
/// its first lines may set pool keys, then tables such as `[limits]` follow.
pub fn config_text(backends: &[SocketAddr], extra: &str) -> String {
    let list = backends.iter().map(|b| format!("\"{b}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n\
         [[routes]]\nlistener = \"public\"\npool = \"echo\"\n\n\
         [pools.echo]\nhash_key = \"query:room\"\nfallback_key = \"ip\"\nbackends = [{list}]\n\n{extra}\n"
    )
}

/// A proxy in front of `backends`.
pub async fn start_proxy(backends: &[SocketAddr], extra: &str) -> Running {
    let config = tidegate::config::parse(&config_text(backends, extra), "test.toml").expect("test config is valid");
    tidegate::start(config).await.expect("proxy starts")
}

/// The public listener's address.
pub fn addr(proxy: &Running) -> SocketAddr {
    proxy.listener("public").expect("public listener")
}

/// Opens a WebSocket through the proxy; returns it with the backend that
/// answered (its `x-backend` header).
pub async fn ws(proxy: SocketAddr, path: &str) -> (Ws, String) {
    let req = format!("ws://{proxy}{path}").into_client_request().expect("valid url");
    let (ws, resp) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake within 10s")
        .expect("handshake succeeds");
    let backend = resp.headers().get("x-backend").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (ws, backend)
}

/// Sends `msg` and returns the next data message, bounded in time.
pub async fn echo(ws: &mut Ws, msg: Message) -> Message {
    ws.send(msg).await.expect("send");
    next(ws).await
}

/// The next message other than a Pong, bounded in time (from a whole
/// WebSocket or the read half of a split one).
pub async fn next<S>(ws: &mut S) -> Message
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a message within 20s")
            .expect("stream open")
            .expect("valid message");
        if !matches!(msg, Message::Pong(_)) {
            return msg;
        }
    }
}

/// Sends raw bytes on a new connection and reads the whole answer until the
/// server closes (bounded), as text.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A plain HTTP/1.1 GET through the proxy: (status, headers, body).
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, Vec<u8>) {
    use http_body_util::BodyExt;
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("http1 handshake");
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", format!("{addr}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(http_body_util::Empty::<bytes::Bytes>::new()).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
        .await
        .expect("answer within 20s")
        .expect("answer");
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .expect("body within 20s")
        .expect("body")
        .to_bytes();
    (parts.status.as_u16(), parts.headers, body.to_vec())
}

/// The number of open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Polls `cond` every 20 ms for up to 10 s; true once it held.
pub async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A proxy started from a config file (so it can be reloaded); returns the
/// proxy and the file, which tests rewrite before a reload.
pub async fn start_proxy_from_file(text: &str) -> (Running, std::path::PathBuf) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("tidegate-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{}.toml", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    std::fs::write(&path, text).expect("write config");
    let config = tidegate::config::load(&path).expect("test config is valid");
    let opts = tidegate::server::StartOptions { config_path: Some(path.clone()), ..Default::default() };
    let running = tidegate::server::start_with(config, opts).await.expect("proxy starts");
    (running, path)
}

/// A POST to the admin endpoint: (status, JSON body).
pub async fn admin_post(admin: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt;
    let stream = TcpStream::connect(admin).await.expect("connect admin");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("http1 handshake");
    tokio::spawn(conn);
    let req = http::Request::post(path)
        .header("host", "admin")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("answer");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

/// A GET to the admin endpoint, parsed as JSON.
pub async fn admin_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let (_, _, body) = get(admin, path, &[]).await;
    serde_json::from_slice(&body).expect("admin answers JSON")
}

/// Reads a proxy binary's log lines until both its `public` listener's and
/// its admin endpoint's addresses appeared; panics after 30 s.
pub async fn logged_addresses(stderr: std::process::ChildStderr) -> (SocketAddr, SocketAddr) {
    use std::io::BufRead;
    let read = tokio::task::spawn_blocking(move || {
        let (mut public, mut admin) = (None, None);
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok).take(100) {
            let addr = |key: &str| line.split(key).nth(1).and_then(|rest| rest.split_whitespace().next()?.parse().ok());
            if line.contains("listening listener=public") {
                public = addr("addr=");
            } else if line.contains("admin endpoint listening") {
                admin = addr("admin=");
            }
            if let (Some(p), Some(a)) = (public, admin) {
                return Some((p, a));
            }
        }
        None
    });
    let found = tokio::time::timeout(Duration::from_secs(30), read).await;
    found.ok().and_then(|r| r.ok().flatten()).expect("the proxy logged its listener and admin addresses")
}

/// Kills a process (by pid) when dropped, however the test ends.
pub struct KillOnDrop(pub u32);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Reads an HTTP head (up to the blank line) byte by byte, leaving whatever
/// follows it unread.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.expect("a complete HTTP head");
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("an ASCII head")
}

/// Accepts one connection on `listener` and answers its WebSocket handshake
/// with a `101`: a raw backend, for tests that script the frames themselves.
pub async fn accept_websocket(listener: &tokio::net::TcpListener) -> TcpStream {
    let (mut s, _) = listener.accept().await.expect("accept");
    let head = read_head(&mut s).await;
    let key = head.lines().find_map(|l| l.strip_prefix("sec-websocket-key: ")).expect("a key").trim().to_string();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    s.write_all(answer.as_bytes()).await.expect("write the 101");
    s
}

/// Test backends named `names`, started on 127.0.0.1:0.
pub async fn backends(names: &[&str]) -> Vec<crate::common::backend::TestBackend> {
    let mut out = Vec::new();
    for n in names {
        out.push(crate::common::backend::TestBackend::start(n).await);
    }
    out
}

/// The addresses of `backends`.
pub fn addrs(backends: &[crate::common::backend::TestBackend]) -> Vec<SocketAddr> {
    backends.iter().map(|b| b.addr).collect()
}

/// The real `tidegate run` on a config file, killed when dropped.
pub struct Binary {
    pub child: std::process::Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    /// The config file, which tests may rewrite.
    pub path: std::path::PathBuf,
    _guard: KillOnDrop,
}

/// Starts the binary on `config` (written to a file named after `name`) and
/// waits until it logged its addresses.
pub async fn run_binary(name: &str, config: &str) -> Binary {
    let path = std::env::temp_dir().join(format!("tidegate-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, config).expect("write config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["run", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start tidegate");
    let guard = KillOnDrop(child.id());
    // Once the addresses are read the pipe closes: a proxy whose log is gone
    // must keep serving.
    let (public, admin) = logged_addresses(child.stderr.take().expect("piped stderr")).await;
    Binary { child, public, admin, path, _guard: guard }
}
