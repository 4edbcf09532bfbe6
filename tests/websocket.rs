//! WebSocket tunnels through a real proxy to real backends.

mod common;

use std::collections::{HashMap, HashSet};

use common::backend::{RawEarlyBackend, TestBackend};
use common::proxy::{addr, addrs, echo, eventually, next, raw_exchange, start_proxy, ws as open_ws};
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};

async fn three_backends() -> Vec<TestBackend> {
    common::proxy::backends(&["a", "b", "c"]).await
}

#[tokio::test]
async fn text_binary_large_and_fragmented_messages_echo_intact() {
    let backends = three_backends().await;
    let proxy = start_proxy(&addrs(&backends), "").await;
    let (mut ws, _) = open_ws(addr(&proxy), "/echo?room=r1").await;

    assert_eq!(echo(&mut ws, Message::text("hello")).await, Message::text("hello"));
    let binary: Vec<u8> = (0..=255).collect();
    assert_eq!(echo(&mut ws, Message::binary(binary.clone())).await, Message::binary(binary));

    let big: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    match echo(&mut ws, Message::binary(big.clone())).await {
        Message::Binary(got) => assert!(got[..] == big[..], "16 MiB message changed in transit"),
        other => panic!("expected binary, got {other:?}"),
    }

    // One text message in three frames: the backend reassembles and echoes it whole.
    for (part, opcode, fin) in [
        ("frag", OpCode::Data(Data::Text), false),
        ("ment", OpCode::Data(Data::Continue), false),
        ("ed", OpCode::Data(Data::Continue), true),
    ] {
        ws.send(Message::Frame(Frame::message(part.as_bytes().to_vec(), opcode, fin))).await.unwrap();
    }
    assert_eq!(next(&mut ws).await, Message::text("fragmented"));
}

#[tokio::test]
async fn ping_pong_and_close_handshakes_pass_both_ways() {
    let backends = three_backends().await;
    let proxy = start_proxy(&addrs(&backends), "").await;

    let (mut ws, _) = open_ws(addr(&proxy), "/?room=p").await;
    ws.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
    let pong = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), futures_util::StreamExt::next(&mut ws)).await {
            Ok(Some(Ok(Message::Pong(p)))) => break p,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no pong: {other:?}"),
        }
    };
    assert_eq!(&pong[..], b"are you there");

    // Client-initiated close, 1000 with a reason: the backend's reply comes back.
    ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() }))).await.unwrap();
    match next(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!((f.code, f.reason.as_str()), (CloseCode::Normal, "bye")),
        other => panic!("expected close, got {other:?}"),
    }

    // Client-initiated 1001.
    let (mut ws, _) = open_ws(addr(&proxy), "/?room=p").await;
    ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Away, reason: "leaving".into() }))).await.unwrap();
    match next(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!((f.code, f.reason.as_str()), (CloseCode::Away, "leaving")),
        other => panic!("expected close, got {other:?}"),
    }

    // Backend-initiated 1001 with a reason reaches the client.
    let (mut ws, _) = open_ws(addr(&proxy), "/?room=p").await;
    ws.send(Message::text("close:1001:server going away")).await.unwrap();
    match next(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!((f.code, f.reason.as_str()), (CloseCode::Away, "server going away")),
        other => panic!("expected close, got {other:?}"),
    }
}

#[tokio::test]
async fn every_key_sticks_to_one_backend_and_keys_spread_over_all() {
    let backends = three_backends().await;
    let proxy = start_proxy(&addrs(&backends), "").await;
    let mut home: HashMap<String, String> = HashMap::new();
    for round in 0..2 {
        for k in 0..100 {
            let room = format!("room-{k}");
            let (mut ws, backend) = open_ws(addr(&proxy), &format!("/?room={room}")).await;
            assert_eq!(echo(&mut ws, Message::text("whoami")).await, Message::text(backend.clone()));
            match home.get(&room) {
                None => assert_eq!(round, 0),
                Some(first) => assert_eq!(first, &backend, "{room} moved from {first} to {backend}"),
            }
            home.insert(room, backend);
        }
    }
    let used: HashSet<&String> = home.values().collect();
    assert_eq!(used.len(), 3, "100 keys should use all three backends: {used:?}");
}

#[tokio::test]
async fn a_refused_upgrade_is_relayed_as_is() {
    let backends = three_backends().await;
    let proxy = start_proxy(&addrs(&backends), "").await;
    let url = format!("ws://{}/refuse?room=x", addr(&proxy));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
            assert!(body.starts_with("refused by "), "{body}");
            assert!(resp.headers().contains_key("x-backend"));
        }
        other => panic!("expected a 403, got {other:?}"),
    }
}

#[tokio::test]
async fn subprotocol_answer_is_relayed() {
    let backends = three_backends().await;
    let proxy = start_proxy(&addrs(&backends), "").await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/?room=sp",
        addr(&proxy)
    ))
    .unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "chat.v2, chat.v1".parse().unwrap());
    let (_ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat.v2");
}

#[tokio::test]
async fn a_dead_backend_loses_its_keys_to_the_others_and_nothing_else_moves() {
    let backends = three_backends().await;
    let proxy = start_proxy(&addrs(&backends), "").await;
    let mut home = HashMap::new();
    for k in 0..60 {
        let (_ws, backend) = open_ws(addr(&proxy), &format!("/?room=k{k}")).await;
        home.insert(k, backend);
    }
    // A live tunnel on a surviving backend must not notice anything.
    let survivor_key = (0..60).find(|k| home[k] != "a").unwrap();
    let (mut live, _) = open_ws(addr(&proxy), &format!("/?room=k{survivor_key}")).await;

    backends[0].kill();
    for k in 0..60 {
        let (mut ws, backend) = open_ws(addr(&proxy), &format!("/?room=k{k}")).await;
        assert_ne!(backend, "a", "nothing reaches a dead backend");
        if home[&k] != "a" {
            assert_eq!(backend, home[&k], "key k{k} moved although its backend is alive");
        }
        assert_eq!(echo(&mut ws, Message::text("x")).await, Message::text("x"));
    }
    assert_eq!(echo(&mut live, Message::text("still here")).await, Message::text("still here"));
}

#[tokio::test]
async fn a_pool_with_no_reachable_backend_answers_502() {
    let backend = TestBackend::start("gone").await;
    let dead = backend.addr;
    backend.kill();
    drop(backend);
    let proxy = start_proxy(&[dead], "").await;
    let url = format!("ws://{}/?room=x", addr(&proxy));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 502),
        other => panic!("expected a 502, got {other:?}"),
    }
    // The failed handshake is counted as a WebSocket exchange.
    let (_, _, metrics) = common::proxy::get(proxy.admin, "/metrics", &[]).await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("tidegate_connections_total")
            && l.contains("kind=\"websocket\"")
            && l.contains("outcome=\"connect_error\"")),
        "{metrics}"
    );
    // Now the backend is known down: the next one is refused without dialing, 503.
    let (status, headers, _) = common::proxy::get(addr(&proxy), "/whoami?room=x", &[]).await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "1");
}

#[tokio::test]
async fn invalid_handshakes_get_400_and_never_reach_a_backend() {
    let backends = three_backends().await;
    let proxy = start_proxy(&addrs(&backends), "").await;
    for (what, key, version) in [
        ("no key", None, Some("13")),
        ("short key", Some("c2hvcnQ="), Some("13")),
        ("old version", Some("dGhlIHNhbXBsZSBub25jZQ=="), Some("8")),
        ("no version", Some("dGhlIHNhbXBsZSBub25jZQ=="), None),
    ] {
        let mut req = String::from("GET /?room=x HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
        if let Some(k) = key {
            req.push_str(&format!("Sec-WebSocket-Key: {k}\r\n"));
        }
        if let Some(v) = version {
            req.push_str(&format!("Sec-WebSocket-Version: {v}\r\n"));
        }
        req.push_str("Connection: close\r\n\r\n");
        let answer = raw_exchange(addr(&proxy), req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
        assert!(answer.contains("Sec-WebSocket"), "{what}: the reason names the header: {answer}");
    }
    let reached: usize = backends.iter().map(|b| b.connections_accepted()).sum();
    assert_eq!(reached, 0, "an invalid handshake reached a backend");
}

#[tokio::test]
async fn bytes_sent_with_the_handshake_are_not_lost_either_way() {
    // Backend side: the backend writes its 101 and a frame in one write.
    let early = RawEarlyBackend::start().await;
    let proxy = start_proxy(&[early.addr], "").await;
    let (mut ws, _) = open_ws(addr(&proxy), "/?room=e").await;
    assert_eq!(next(&mut ws).await, Message::text("early"));

    // Client side: the handshake and a masked frame in one write.
    let backends = three_backends().await;
    let proxy = start_proxy(&addrs(&backends), "").await;
    let mut stream = TcpStream::connect(addr(&proxy)).await.unwrap();
    let mut bytes = b"GET /?room=e HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    let mask = [1u8, 2, 3, 4];
    bytes.extend_from_slice(&[0x81, 0x80 | 5]);
    bytes.extend_from_slice(&mask);
    bytes.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let expected_frame = [0x81u8, 5, b'h', b'e', b'l', b'l', b'o'];
    while !got.windows(expected_frame.len()).any(|w| w == expected_frame) {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before the echo: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"));
}

#[tokio::test]
async fn a_client_half_close_lets_the_backend_finish_sending() {
    // A backend that, after its 101, reads until the client's FIN and only then answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        common::proxy::read_head(&mut s).await;
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        )
        .await
        .unwrap();
        let mut from_client = Vec::new();
        s.read_to_end(&mut from_client).await.unwrap();
        s.write_all(format!("got {} bytes then FIN", from_client.len()).as_bytes()).await.unwrap();
    });
    let proxy = start_proxy(&[backend], "").await;
    let mut stream = TcpStream::connect(addr(&proxy)).await.unwrap();
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let head = common::proxy::read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"));
    stream.write_all(b"0123456789").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&rest), "got 10 bytes then FIN");
}

#[tokio::test]
async fn an_upgrade_to_anything_but_websocket_is_forwarded_as_plain_http() {
    let backends = three_backends().await;
    let proxy = start_proxy(&addrs(&backends), "").await;
    let answer = raw_exchange(
        addr(&proxy),
        b"GET /headers?room=h HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n\
HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    assert!(!body.contains("upgrade"), "the backend saw an upgrade header: {body}");
    assert!(!body.contains("http2-settings"), "the backend saw HTTP2-Settings: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_stream_ends_only_its_own_tunnels() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let backends = three_backends().await;
    let proxy = start_proxy(&addrs(&backends), "").await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    for k in 0..45 {
        let (mut ws, backend) = open_ws(addr(&proxy), &format!("/?room=m{k}")).await;
        let stop = stop.clone();
        // Each client streams numbered messages and checks every echo, until
        // told to stop or its tunnel ends; returns (sent, echoed, ended early).
        streams.push((
            backend,
            tokio::spawn(async move {
                let (mut sent, mut echoed) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) && sent < 5_000 {
                    let text = format!("m{sent}");
                    if ws.send(Message::text(text.clone())).await.is_err() {
                        return (sent, echoed, true);
                    }
                    sent += 1;
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        futures_util::StreamExt::next(&mut ws),
                    )
                    .await
                    {
                        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => echoed += 1,
                        Ok(Some(Ok(other))) => panic!("wrong echo for {text}: {other:?}"),
                        Ok(_) => return (sent, echoed, true),
                        Err(_) => panic!("no echo and no end within 10 s: the tunnel hangs"),
                    }
                }
                (sent, echoed, false)
            }),
        ));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    backends[0].kill();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ended = 0;
    for (backend, task) in streams {
        let (sent, echoed, ended_early) = task.await.unwrap();
        if backend == "a" {
            assert!(ended_early, "a tunnel to the killed backend did not end");
            ended += 1;
        } else {
            assert!(!ended_early, "a tunnel on {backend} ended");
            assert_eq!(sent, echoed, "a tunnel on {backend} lost messages");
        }
    }
    assert!(ended > 0);
    // Every client has gone: no tunnel is left behind, dead backend or not.
    assert!(eventually(|| proxy.shared.tunnels.is_empty()).await, "tunnels left: {}", proxy.shared.tunnels.len());
}

/// The value of the metric line named `name` with every label of `labels`, if any.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn tunnels_and_requests_are_counted_by_kind() {
    let backend = TestBackend::start("a").await;
    let proxy = start_proxy(&[backend.addr], "").await;
    let scrape = || async { String::from_utf8(common::proxy::get(proxy.admin, "/metrics", &[]).await.2).unwrap() };

    let (mut ws, _) = open_ws(addr(&proxy), "/?room=m").await;
    for _ in 0..3 {
        assert_eq!(echo(&mut ws, Message::text("hi")).await, Message::text("hi"));
    }
    let (status, _, _) = common::proxy::get(addr(&proxy), "/whoami?room=m", &[]).await;
    assert_eq!(status, 200);
    let text = scrape().await;
    let ws_kind = "kind=\"websocket\"";
    assert_eq!(metric(&text, "tidegate_connections_active", &[ws_kind]), Some(1.0), "{text}");
    assert_eq!(metric(&text, "tidegate_connections_total", &[ws_kind, "outcome=\"ok\""]), Some(1.0), "{text}");
    assert_eq!(metric(&text, "tidegate_connections_total", &["kind=\"http\"", "outcome=\"ok\""]), Some(1.0));
    assert_eq!(metric(&text, "tidegate_requests_total", &["status=\"101\""]), Some(1.0), "{text}");
    assert_eq!(metric(&text, "tidegate_requests_total", &["status=\"200\""]), Some(1.0), "{text}");
    assert_eq!(metric(&text, "tidegate_websocket_messages_total", &["direction=\"upstream\""]), Some(3.0));
    assert_eq!(metric(&text, "tidegate_websocket_messages_total", &["direction=\"downstream\""]), Some(3.0));

    // The tunnel is listed with where it came from and where it goes.
    let listed = common::proxy::admin_json(proxy.admin, "/api/connections").await;
    let tunnel = &listed.as_array().or_else(|| listed["tunnels"].as_array()).expect("a list")[0];
    assert_eq!(tunnel["listener"], "public", "{listed}");
    assert!(tunnel["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{listed}");
    assert_eq!(tunnel["backend"], backend.addr.to_string(), "{listed}");
    assert_eq!(tunnel["key"], "m", "{listed}");

    ws.close(None).await.unwrap();
    drop(ws);
    let mut text = String::new();
    for _ in 0..500 {
        text = scrape().await;
        if metric(&text, "tidegate_connections_active", &[ws_kind]) == Some(0.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&text, "tidegate_connections_active", &[ws_kind]), Some(0.0), "{text}");
    assert_eq!(metric(&text, "tidegate_connection_duration_seconds_count", &[ws_kind]), Some(1.0), "{text}");
}

#[tokio::test]
async fn the_backend_sees_end_to_end_headers_and_who_the_client_is() {
    let backend = TestBackend::start("a").await;
    let proxy = start_proxy(&[backend.addr], "").await;
    let mut stream = TcpStream::connect(addr(&proxy)).await.unwrap();
    let request = "GET /?room=h HTTP/1.1\r\nHost: chat.test\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade, X-Private\r\nX-Private: secret\r\nKeep-Alive: timeout=5\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
        X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Host: spoofed\r\nX-End-To-End: kept\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 101");

    let seen = backend.last_request_headers().unwrap();
    for gone in ["x-private", "keep-alive"] {
        assert!(seen.get(gone).is_none(), "{gone} was forwarded: {seen:?}");
    }
    assert_eq!(seen["x-end-to-end"], "kept");
    assert_eq!(seen["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(seen["connection"], "Upgrade");
    assert_eq!(seen["upgrade"], "websocket");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen["x-forwarded-host"], "chat.test");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["forwarded"], "for=127.0.0.1;proto=http;host=\"chat.test\"");
    assert_eq!(seen.get_all("x-forwarded-host").iter().count(), 1);
}
