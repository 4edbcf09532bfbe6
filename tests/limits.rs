//! Limits and bad input: oversized headers, slow clients, the connection
//! limit, idle tunnels, and no file descriptor left behind.

mod common;

use std::time::Duration;

use common::backend::TestBackend;
use common::proxy::{addr, echo, eventually, open_fds, raw_exchange, start_proxy, ws};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn an_oversized_header_gets_431_and_never_reaches_a_backend() {
    let backend = TestBackend::start("a").await;
    let proxy = start_proxy(&[backend.addr], "[limits]\nmax_header_bytes = 16384\n").await;
    let big = "x".repeat(20_000);
    let answer =
        raw_exchange(addr(&proxy), format!("GET /whoami HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(backend.connections_accepted(), 0);

    // Just under the limit passes.
    let fits = "x".repeat(12_000);
    let answer = raw_exchange(
        addr(&proxy),
        format!("GET /whoami HTTP/1.1\r\nHost: t\r\nX-Big: {fits}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Reads until the server closes; true when it closed (EOF or reset) within 10 s.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn a_slow_header_sender_is_cut_at_the_handshake_timeout() {
    let backend = TestBackend::start("a").await;
    let proxy = start_proxy(&[backend.addr], "[limits]\nhandshake_timeout = \"300ms\"\n").await;

    // Half a request line, then silence.
    let mut slow = TcpStream::connect(addr(&proxy)).await.unwrap();
    slow.write_all(b"GET /whoami HTTP/1.1\r\nHost: t\r\n").await.unwrap();
    assert!(closed_by_server(&mut slow).await, "a client stalling in its headers was not cut");

    // Nothing at all.
    let mut silent = TcpStream::connect(addr(&proxy)).await.unwrap();
    assert!(closed_by_server(&mut silent).await, "a silent client was not cut");
    assert_eq!(backend.connections_accepted(), 0);
}

#[tokio::test]
async fn over_the_connection_limit_clients_get_503_with_retry_after() {
    let backend = TestBackend::start("a").await;
    let proxy = start_proxy(&[backend.addr], "[limits]\nmax_connections = 2\n").await;
    let (mut first, _) = ws(addr(&proxy), "/?room=1").await;
    let (_second, _) = ws(addr(&proxy), "/?room=2").await;
    let answer = raw_exchange(addr(&proxy), b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    // The tunnels that hold the slots are unaffected, and a closed one frees its slot.
    assert_eq!(echo(&mut first, Message::text("ok")).await, Message::text("ok"));
    drop(first);
    let mut got_in = false;
    for _ in 0..100 {
        let answer = raw_exchange(addr(&proxy), b"GET /whoami HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
        if answer.starts_with("HTTP/1.1 200") {
            got_in = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(got_in, "a closed tunnel never gave its slot back");
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_when_an_idle_timeout_is_set() {
    let backend = TestBackend::start("a").await;
    let proxy = start_proxy(&[backend.addr], "[limits]\nidle_timeout = \"200ms\"\n").await;
    let (mut ws, _) = ws(addr(&proxy), "/?room=idle").await;
    let ended = tokio::time::timeout(Duration::from_secs(10), futures_util::StreamExt::next(&mut ws)).await;
    match ended {
        Ok(None) | Ok(Some(Err(_))) => {}
        other => panic!("the idle tunnel was not closed: {other:?}"),
    }
    assert!(eventually(|| proxy.shared.tunnels.is_empty()).await);
}

#[tokio::test]
async fn a_thousand_handshakes_leave_no_file_descriptor_behind() {
    let backend = TestBackend::start("a").await;
    let proxy = start_proxy(&[backend.addr], "").await;
    // Warm up: the runtime, the pools and the first connections allocate fds once.
    for _ in 0..10 {
        let (mut ws, _) = ws(addr(&proxy), "/?room=fd").await;
        ws.close(None).await.unwrap();
    }
    assert!(eventually(|| proxy.shared.tunnels.is_empty()).await);
    let before = open_fds();
    for i in 0..1000 {
        let (mut ws, _) = ws(addr(&proxy), &format!("/?room=fd{i}")).await;
        assert_eq!(echo(&mut ws, Message::text("x")).await, Message::text("x"));
        ws.close(None).await.unwrap();
        // Wait for the close reply so both ends really finish.
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut ws)).await
        {}
    }
    assert!(eventually(|| proxy.shared.tunnels.is_empty()).await, "tunnels still open");
    let settled = eventually(|| open_fds() <= before).await;
    assert!(settled, "fds before: {before}, after: {}", open_fds());
}
