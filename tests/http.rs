//! Plain HTTP through a real proxy: same routing as WebSockets, streaming
//! bodies, header hygiene, HTTP/2, and what a client gets when a backend fails.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::backend::TestBackend;
use common::proxy::{addr, addrs, get, start_proxy, ws};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

async fn three_backends() -> Vec<TestBackend> {
    common::proxy::backends(&["a", "b", "c"]).await
}

#[tokio::test]
async fn a_long_polling_fallback_lands_on_the_websockets_backend() {
    let backends = three_backends().await;
    let proxy = start_proxy(&addrs(&backends), "").await;
    for k in 0..30 {
        let path = format!("/whoami?room=doc-{k}");
        let (_ws, ws_backend) = ws(addr(&proxy), &path).await;
        let (status, headers, body) = get(addr(&proxy), &path, &[]).await;
        assert_eq!(status, 200);
        assert_eq!(String::from_utf8(body).unwrap(), ws_backend);
        assert_eq!(headers["x-backend"], ws_backend.as_str());
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
    let backends = three_backends().await;
    let proxy = start_proxy(&addrs(&backends), "").await;
    let (status, _, body) = get(
        addr(&proxy),
        "/headers?room=h",
        &[
            ("connection", "x-private, keep-alive"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-end-to-end", "kept"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    for gone in ["x-private", "keep-alive", "te", "proxy-authorization", "upgrade"] {
        assert!(seen.get(gone).is_none(), "{gone} was forwarded: {seen}");
    }
    assert_eq!(seen["x-end-to-end"][0], "kept");
    assert_eq!(seen["x-forwarded-for"][0], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"][0], "http");
    assert_eq!(seen["x-forwarded-host"][0], addr(&proxy).to_string());
    assert!(seen["forwarded"][0].as_str().unwrap().starts_with("for=127.0.0.1;proto=http"), "{seen}");
}

#[tokio::test]
async fn an_sse_stream_arrives_event_by_event() {
    let backends = three_backends().await;
    let proxy = start_proxy(&addrs(&backends), "").await;
    let stream = TcpStream::connect(addr(&proxy)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/sse?room=s&n=4&gap_ms=200").header("host", "t").body(Empty::<Bytes>::new()).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut events = Vec::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.unwrap() {
        if let Ok(data) = frame.unwrap().into_data() {
            events.push(String::from_utf8(data.to_vec()).unwrap());
        }
    }
    // Each event is its own chunk: nothing waited for the stream's end.
    assert_eq!(events, ["data: 0\n\n", "data: 1\n\n", "data: 2\n\n", "data: 3\n\n"]);
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let backends = three_backends().await;
    let proxy = start_proxy(&addrs(&backends), "").await;
    let (status, _, body) = get(addr(&proxy), "/bytes?room=b&n=16777216", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 16 * 1024 * 1024);
    assert!(body.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));

    let upload: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 241) as u8).collect();
    let stream = TcpStream::connect(addr(&proxy)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req =
        http::Request::post("/echo?room=b").header("host", "t").body(Full::new(Bytes::from(upload.clone()))).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(echoed[..] == upload[..], "uploaded body changed in transit");
}

#[tokio::test]
async fn http2_cleartext_clients_are_served() {
    let backends = three_backends().await;
    let proxy = start_proxy(&addrs(&backends), "").await;
    let stream = TcpStream::connect(addr(&proxy)).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let (_ws, ws_backend) = ws(addr(&proxy), "/?room=h2").await;
    for _ in 0..3 {
        let req = http::Request::get(format!("http://{}/whoami?room=h2", addr(&proxy)))
            .version(http::Version::HTTP_2)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, ws_backend.as_bytes(), "HTTP/2 requests route like the rest");
    }
}

#[tokio::test]
async fn an_http1_request_starting_like_the_http2_preface_is_served() {
    // A first segment "P" could still be HTTP/2's preface; the proxy must wait
    // for more before it picks the protocol.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backends = three_backends().await;
    let proxy = start_proxy(&addrs(&backends), "").await;
    let mut stream = TcpStream::connect(addr(&proxy)).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    stream
        .write_all(b"UT /whoami?room=p HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("x-backend:"), "{answer}");
}

#[tokio::test]
async fn a_slow_backend_gets_the_client_504() {
    let backends = three_backends().await;
    let proxy = start_proxy(&addrs(&backends), "[limits]\nresponse_timeout = \"200ms\"\n").await;
    let (status, _, body) = get(addr(&proxy), "/slow?room=s&ms=5000", &[]).await;
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn an_unreachable_backend_gets_the_client_502_and_its_keys_move_on() {
    let backends = three_backends().await;
    let proxy = start_proxy(&addrs(&backends), "").await;
    // Find keys that live on "a" while all are up.
    let mut on_a = Vec::new();
    for k in 0..60 {
        let (_, headers, _) = get(addr(&proxy), &format!("/whoami?room=k{k}"), &[]).await;
        if headers["x-backend"] == "a" {
            on_a.push(k);
        }
    }
    assert!(!on_a.is_empty());
    backends[0].kill();
    let (status, _, _) = get(addr(&proxy), &format!("/whoami?room=k{}", on_a[0]), &[]).await;
    assert_eq!(status, 502, "the request that finds the backend dead gets 502");
    for k in &on_a {
        let (status, headers, _) = get(addr(&proxy), &format!("/whoami?room=k{k}"), &[]).await;
        assert_eq!(status, 200);
        assert_ne!(headers["x-backend"], "a");
    }
    // The admin API and the metrics say so.
    let (_, _, body) = get(proxy.admin, "/api/backends", &[]).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let states: Vec<&str> =
        v["pools"][0]["backends"].as_array().unwrap().iter().map(|b| b["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["down", "up", "up"]);
    let (_, _, metrics) = get(proxy.admin, "/metrics", &[]).await;
    let metrics = String::from_utf8(metrics).unwrap();
    let line = format!("tidegate_backend_up{{backend=\"{}\",pool=\"echo\"}} 0", backends[0].addr);
    assert!(metrics.contains(&line), "missing {line}");
}

#[tokio::test]
async fn plain_requests_reuse_keep_alive_connections_to_the_backend() {
    let backend = TestBackend::start("a").await;
    let proxy = start_proxy(&[backend.addr], "").await;
    // Each from a new client connection: only the backend side is kept alive.
    // Fixed-length, chunked, streamed and empty bodies all leave it reusable.
    for path in ["/whoami", "/bytes?n=200000", "/sse?n=3", "/missing", "/whoami", "/bytes?n=0"] {
        for _ in 0..5 {
            let (status, _, _) = get(addr(&proxy), path, &[]).await;
            assert!(status == 200 || status == 404, "{path}: {status}");
        }
    }
    assert_eq!(backend.connections_accepted(), 1, "30 sequential requests should share one backend connection");
}

#[tokio::test]
async fn a_backend_closing_its_keep_alive_connections_costs_no_request() {
    let backend = TestBackend::start("a").await;
    let proxy = start_proxy(&[backend.addr], "").await;
    for i in 0..20 {
        let path = if i % 2 == 0 { "/close" } else { "/whoami" };
        let (status, _, body) = get(addr(&proxy), path, &[]).await;
        assert_eq!((status, body.as_slice()), (200, &b"a"[..]), "request {i} ({path})");
    }
    // Every "/close" took its connection with it.
    assert!(backend.connections_accepted() >= 10, "{} connections", backend.connections_accepted());
}

#[tokio::test]
async fn a_response_abandoned_by_the_client_does_not_poison_the_next_request() {
    let backend = TestBackend::start("a").await;
    let proxy = start_proxy(&[backend.addr], "").await;
    // The client reads the head of a 64 MiB body and hangs up.
    let stream = TcpStream::connect(addr(&proxy)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    let driver = tokio::spawn(conn);
    let req = http::Request::get("/bytes?n=67108864").header("host", "t").body(Empty::<Bytes>::new()).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop((resp, sender));
    driver.abort();
    for _ in 0..5 {
        let (status, _, body) = get(addr(&proxy), "/whoami", &[]).await;
        assert_eq!((status, body.as_slice()), (200, &b"a"[..]));
    }
}
