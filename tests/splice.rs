//! Tunnels with `[limits] splice = true`, through a real proxy on real sockets:
//! large messages intact, mixed sizes both ways at once, a drain in the middle
//! of a spliced frame closing only at its end, half-close, and no file
//! descriptor left behind.
//!
//! The tests share process-wide figures (open fds, spliced bytes), so they run
//! one at a time (`SERIAL`).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::backend::TestBackend;
use common::proxy::{Ws, addr, admin_post, config_text, echo, eventually, open_fds, start_proxy, ws};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const SPLICE: &str = "[limits]\nsplice = true\n";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `len` bytes that differ with `seed`, so that a misplaced chunk shows.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A WebSocket upgrade request with a fixed key; its answer's accept key is known.
const UPGRADE: &[u8] = b"GET /?room=s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const ANSWER_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// The header of a binary frame with FIN and a 64-bit length, masked with `key` if given.
fn header(len: u64, key: Option<[u8; 4]>) -> Vec<u8> {
    let mut h = vec![0x82, if key.is_some() { 0x80 | 127 } else { 127 }];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend(key.iter().flatten());
    h
}

#[tokio::test]
async fn a_16_mib_message_echoes_intact_and_is_spliced() {
    let _serial = SERIAL.lock().await;
    let backend = TestBackend::start("a").await;
    let proxy = start_proxy(&[backend.addr], SPLICE).await;
    let (mut ws, _) = ws(addr(&proxy), "/?room=big").await;
    let before = tidegate::tunnel::spliced_bytes();
    let big = pattern(16 << 20, 1);
    match echo(&mut ws, Message::binary(big.clone())).await {
        Message::Binary(got) => assert!(got[..] == big[..], "16 MiB message changed in transit"),
        other => panic!("expected binary, got {other:?}"),
    }
    // Both ways, all but each header read and the first bytes after it.
    let spliced = tidegate::tunnel::spliced_bytes() - before;
    assert!(spliced >= 2 * ((16 << 20) - 64 * 1024), "only {spliced} bytes spliced");
    // Frames and messages are still counted exactly.
    assert_eq!(echo(&mut ws, Message::text("after")).await, Message::text("after"));
    let metrics = common::proxy::get(proxy.admin, "/metrics", &[]).await.2;
    let metrics = String::from_utf8_lossy(&metrics);
    let messages: Vec<&str> = metrics.lines().filter(|l| l.starts_with("tidegate_websocket_messages_total")).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages.iter().all(|l| l.ends_with(" 2")), "two messages each way: {messages:?}");
}

#[tokio::test]
async fn mixed_sizes_and_fragments_flow_both_ways_at_once() {
    let _serial = SERIAL.lock().await;
    let backend = TestBackend::start("a").await;
    let proxy = start_proxy(&[backend.addr], SPLICE).await;
    let (ws, _) = ws(addr(&proxy), "/?room=mixed").await;
    let (mut tx, mut rx) = ws.split();
    // Around every threshold: header forms, MIN_SPLICE, the 64 KiB buffer, pipe sizes.
    let mut sizes = vec![0, 1, 13, 14, 15, 125, 126, 127, 16_383, 16_384, 16_385, 65_535, 65_536, 65_537];
    sizes.extend([100_000, 262_143, 262_144, 262_145, 1 << 20, (3 << 20) + 7, 2, 70_000, 40, 1 << 20, 5]);
    let mut seed = 7u32;
    for _ in 0..60 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        sizes.push([3, 200, 20_000, 64 << 10, 300_000, 1_500_000][(seed >> 16) as usize % 6]);
    }
    let expected: Vec<Message> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| if i % 5 == 4 { Message::text("t".repeat(n)) } else { Message::binary(pattern(n, i as u32)) })
        .collect();
    let to_send = expected.clone();
    // Sent while the echoes come back, so both directions are busy together.
    let sender = tokio::spawn(async move {
        for (i, msg) in to_send.into_iter().enumerate() {
            if i % 7 == 3 {
                // The same message in three fragments, a Ping between two of them.
                let (data, opcode) = match msg {
                    Message::Binary(data) => (data.to_vec(), Data::Binary),
                    Message::Text(text) => (text.as_bytes().to_vec(), Data::Text), // ASCII: any split is fine
                    other => unreachable!("{other:?}"),
                };
                let (a, rest) = data.split_at(data.len() / 3);
                let (b, c) = rest.split_at(rest.len() / 2);
                tx.send(Message::Frame(Frame::message(a.to_vec(), OpCode::Data(opcode), false))).await?;
                tx.send(Message::Ping(b"p".to_vec().into())).await?;
                tx.send(Message::Frame(Frame::message(b.to_vec(), OpCode::Data(Data::Continue), false))).await?;
                tx.send(Message::Frame(Frame::message(c.to_vec(), OpCode::Data(Data::Continue), true))).await?;
            } else {
                tx.send(msg).await?;
            }
        }
        tx.close().await
    });
    for (i, want) in expected.iter().enumerate() {
        let got = common::proxy::next(&mut rx).await;
        assert!(got == *want, "message {i} ({} bytes) changed in transit", sizes[i]);
    }
    sender.await.unwrap().expect("all sent, then a Close");
}

/// A backend that sends one large binary frame in two halves, waiting between
/// them for `go`, then a frame that must never reach the client.
async fn halving_backend(
    payload: Vec<u8>,
    halfway: tokio::sync::oneshot::Sender<()>,
    go: tokio::sync::oneshot::Receiver<()>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut s = common::proxy::accept_websocket(&listener).await;
        let half = payload.len() / 2;
        s.write_all(&header(payload.len() as u64, None)).await.unwrap();
        s.write_all(&payload[..half]).await.unwrap();
        let _ = halfway.send(());
        let _ = go.await;
        s.write_all(&payload[half..]).await.unwrap();
        // After the proxy's Close: must never reach the client.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = s.write_all(&[0x82, 5, b'l', b'a', b't', b'e', b'r']).await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    });
    addr
}

#[tokio::test]
async fn a_drain_in_the_middle_of_a_spliced_frame_closes_after_it() {
    let _serial = SERIAL.lock().await;
    let payload = pattern(4 << 20, 3);
    let (halfway_tx, halfway) = tokio::sync::oneshot::channel();
    let (go, go_rx) = tokio::sync::oneshot::channel();
    let backend = halving_backend(payload.clone(), halfway_tx, go_rx).await;
    let extra = format!("[pools.echo.drain]\ntimeout = \"10s\"\nspread = \"1ms\"\n\n{SPLICE}");
    let (proxy, _path) = common::proxy::start_proxy_from_file(&config_text(&[backend], &extra)).await;
    let before = tidegate::tunnel::spliced_bytes();
    let (mut client, _) = ws(proxy.listener("public").unwrap(), "/?room=d").await;
    halfway.await.unwrap();
    // The first half is being spliced (the client reads nothing yet, so most
    // of it may wait in the pipe or the socket buffers).
    assert!(eventually(|| tidegate::tunnel::spliced_bytes() > before).await, "nothing spliced");

    let (status, _) = admin_post(proxy.admin, &format!("/api/pools/echo/backends/{backend}/drain")).await;
    assert_eq!(status, 200);
    assert!(eventually(|| proxy.shared.tunnels.select(|t| t.drain_request().is_some()).len() == 1).await);
    go.send(()).unwrap();

    // A strict client: a Close inside the frame would be a protocol error here.
    match common::proxy::next(&mut client).await {
        Message::Binary(got) => assert!(got[..] == payload[..], "the 4 MiB frame changed in transit"),
        other => panic!("expected the whole frame first, got {other:?}"),
    }
    match common::proxy::next(&mut client).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1012),
        other => panic!("expected the Close after the complete frame, got {other:?}"),
    }
    assert!(eventually(|| proxy.shared.tunnels.is_empty()).await);
}

#[tokio::test]
async fn a_fin_in_the_middle_of_a_spliced_payload_is_passed_on() {
    let _serial = SERIAL.lock().await;
    const SENT: usize = 600 * 1024;
    // A backend that reads until the client's FIN, then answers with a large
    // frame and its own FIN.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let answer = pattern(2 << 20, 9);
    let reply = [header(answer.len() as u64, None), answer].concat();
    let from_backend = reply.clone();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        common::proxy::read_head(&mut s).await;
        s.write_all(ANSWER_101).await.unwrap();
        let mut from_client = Vec::new();
        s.read_to_end(&mut from_client).await.unwrap();
        // How much came, in a small frame, then the large one.
        let mut count = vec![0x82, 8];
        count.extend_from_slice(&(from_client.len() as u64).to_be_bytes());
        s.write_all(&count).await.unwrap();
        s.write_all(&from_backend).await.unwrap();
    });
    let proxy = start_proxy(&[backend], SPLICE).await;
    let mut stream = TcpStream::connect(addr(&proxy)).await.unwrap();
    stream.write_all(UPGRADE).await.unwrap();
    assert!(common::proxy::read_head(&mut stream).await.starts_with("HTTP/1.1 101"));
    // A frame announcing 1 MiB, cut short by the FIN: the proxy is splicing its payload.
    let mut sent = header(1 << 20, Some([1, 2, 3, 4]));
    sent.extend(pattern(SENT, 5));
    stream.write_all(&sent).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert_eq!(rest.len(), 10 + reply.len());
    assert_eq!(rest[..2], [0x82, 8]);
    assert_eq!(u64::from_be_bytes(rest[2..10].try_into().unwrap()), sent.len() as u64, "the backend got all, then FIN");
    assert!(rest[10..] == reply[..], "the backend's answer changed in transit");
}

/// Echoes a 256 KiB message on a new tunnel and closes it cleanly.
async fn one_tunnel(proxy: SocketAddr, i: usize, msg: &Message) {
    let (mut ws, _): (Ws, _) = ws(proxy, &format!("/?room=fd{i}")).await;
    assert!(echo(&mut ws, msg.clone()).await == *msg);
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
}

#[tokio::test]
async fn two_hundred_spliced_tunnels_leave_no_file_descriptor_behind() {
    let _serial = SERIAL.lock().await;
    let backend = TestBackend::start("a").await;
    let proxy = start_proxy(&[backend.addr], SPLICE).await;
    let msg = Message::binary(pattern(256 * 1024, 11));
    // Warm up: the runtime, the pools and the first connections allocate fds once.
    for i in 0..10 {
        one_tunnel(addr(&proxy), i, &msg).await;
    }
    assert!(eventually(|| proxy.shared.tunnels.is_empty()).await);
    let before = open_fds();
    let spliced = tidegate::tunnel::spliced_bytes();
    for round in 0..20 {
        let tunnels = (0..10).map(|i| one_tunnel(addr(&proxy), round * 10 + i, &msg));
        futures_util::future::join_all(tunnels).await;
    }
    assert!(tidegate::tunnel::spliced_bytes() - spliced >= 200 * 256 * 1024, "the tunnels did not splice");
    assert!(eventually(|| proxy.shared.tunnels.is_empty()).await, "tunnels still open");
    // The per-thread pool may keep up to 8 empty pipes (16 fds) more than after the
    // warm-up; a pipe kept per tunnel would be hundreds.
    let settled = eventually(|| open_fds() <= before + 16).await;
    assert!(settled, "fds before: {before}, after: {}", open_fds());
}

#[tokio::test]
async fn without_the_option_nothing_is_spliced() {
    let _serial = SERIAL.lock().await;
    let backend = TestBackend::start("a").await;
    // Another proxy in this process splices: the setting is per config, not global.
    let _splicing = start_proxy(&[backend.addr], SPLICE).await;
    let proxy = start_proxy(&[backend.addr], "").await;
    let (mut ws, _) = ws(addr(&proxy), "/?room=copy").await;
    let before = tidegate::tunnel::spliced_bytes();
    let big = pattern(4 << 20, 3);
    match echo(&mut ws, Message::binary(big.clone())).await {
        Message::Binary(got) => assert!(got[..] == big[..], "4 MiB message changed in transit"),
        other => panic!("expected binary, got {other:?}"),
    }
    assert_eq!(tidegate::tunnel::spliced_bytes(), before, "the copy path spliced");
}
