//! The backend side of the WebSocket hand-off, against backends that answer
//! with scripted bytes: a head split over many writes, bytes right after a
//! `101`, informational answers, refusals with every body framing, and
//! answers that are malformed, too large or missing.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::proxy::{addr, read_head, start_proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const HANDSHAKE: &[u8] = b"GET /chat?room=s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

const SWITCHING: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";

/// A backend that, on each connection, reads the request head, writes
/// `chunks` one write at a time, then echoes raw bytes until the peer closes
/// (or closes at once if `close` is set).
struct Scripted {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Scripted {
    async fn start(chunks: Vec<Vec<u8>>, close: bool) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let chunks = chunks.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    read_head(&mut stream).await;
                    for chunk in chunks {
                        if stream.write_all(&chunk).await.is_err() {
                            return;
                        }
                        // Separate segments, so the proxy sees the answer in pieces.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    if close {
                        return;
                    }
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Scripted { addr, task }
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn bytes(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// A server-to-client text frame (unmasked).
fn text_frame(s: &str) -> Vec<u8> {
    [&[0x81, s.len() as u8][..], s.as_bytes()].concat()
}

/// A client-to-server text frame, masked as RFC 6455 requires.
fn masked_text_frame(s: &str) -> Vec<u8> {
    let mask = [7u8, 1, 9, 3];
    let mut f = vec![0x81, 0x80 | s.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(s.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Decodes a chunked body (the proxy may re-chunk what it streams).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size, 16).expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// Sends the handshake (asking to close after an answer that is not a `101`)
/// through a proxy in front of `backend` and reads the whole answer.
async fn refused_answer(backend: &Scripted, extra: &str) -> String {
    let proxy = start_proxy(&[backend.addr], extra).await;
    let handshake = String::from_utf8_lossy(HANDSHAKE).replace("Connection: Upgrade", "Connection: Upgrade, close");
    common::proxy::raw_exchange(addr(&proxy), handshake.as_bytes()).await
}

/// Reads from `stream` until `want` arrived (bounded), returning all read.
async fn read_until(stream: &mut TcpStream, want: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(want.len()).any(|w| w == want) {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(
            n > 0,
            "closed before {:?} arrived: {:?}",
            String::from_utf8_lossy(want),
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[tokio::test]
async fn a_101_in_pieces_with_bytes_right_after_its_head_starts_a_tunnel() {
    // The head arrives in three writes; the last one carries a frame after the blank line.
    let (a, b) = SWITCHING.split_at(20);
    let chunks = vec![bytes(a), bytes(b), [bytes("X-Extra: 1\r\n\r\n"), text_frame("early")].concat()];
    let backend = Scripted::start(chunks, false).await;
    let proxy = start_proxy(&[backend.addr], "").await;
    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    client.write_all(HANDSHAKE).await.unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-extra: 1"), "{head}");
    // The frame sent right after the head arrives after the client's head, intact.
    let early = read_until(&mut client, &text_frame("early")).await;
    assert!(early.starts_with(&text_frame("early")), "{early:?}");
    // And the tunnel works both ways (the backend echoes raw bytes).
    client.write_all(&masked_text_frame("ping")).await.unwrap();
    read_until(&mut client, &masked_text_frame("ping")).await;
}

#[tokio::test]
async fn informational_answers_before_the_101_are_skipped() {
    let chunks = vec![bytes("HTTP/1.1 100 Continue\r\n\r\n"), bytes(&format!("{SWITCHING}\r\n"))];
    let backend = Scripted::start(chunks, false).await;
    let proxy = start_proxy(&[backend.addr], "").await;
    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    client.write_all(HANDSHAKE).await.unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    client.write_all(&masked_text_frame("after")).await.unwrap();
    read_until(&mut client, &masked_text_frame("after")).await;
}

#[tokio::test]
async fn a_refusal_with_a_chunked_body_is_relayed_intact() {
    let chunks = vec![
        bytes("HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\nX-Why: policy\r\n\r\n7\r\nno, "),
        bytes("you\r\n"),
        bytes("10\r\ncannot come in.\n\r\n0\r\n\r\n"),
    ];
    let backend = Scripted::start(chunks, false).await;
    let answer = refused_answer(&backend, "").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("x-why: policy"), "{answer}");
    // Re-framed by the proxy, the body is the same bytes.
    assert!(answer.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(dechunk(body), "no, youcannot come in.\n", "{body:?}");
}

#[tokio::test]
async fn a_refusal_with_a_body_until_close_is_relayed_intact() {
    let chunks = vec![bytes("HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\nback "), bytes("soon\n")];
    let backend = Scripted::start(chunks, true).await;
    let answer = refused_answer(&backend, "").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(dechunk(body), "back soon\n", "{body:?}");
}

#[tokio::test]
async fn a_malformed_answer_is_a_502_naming_the_backend() {
    let backend = Scripted::start(vec![bytes("SSH-2.0-OpenSSH_9.2\r\n\r\n")], false).await;
    let answer = refused_answer(&backend, "").await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains(&backend.addr.to_string()), "{answer}");
    assert!(answer.contains("malformed"), "{answer}");
}

#[tokio::test]
async fn an_answer_head_over_the_limit_is_a_502() {
    let big = format!("{SWITCHING}X-Padding: {}\r\n\r\n", "p".repeat(4096));
    let backend = Scripted::start(vec![bytes(&big)], false).await;
    let answer = refused_answer(&backend, "[limits]\nmax_header_bytes = 2048\n").await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("larger than 2048 bytes"), "{answer}");
}

#[tokio::test]
async fn a_backend_that_closes_without_answering_is_a_502() {
    let backend = Scripted::start(vec![bytes("HTTP/1.1 101 Swi")], true).await;
    let answer = refused_answer(&backend, "").await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains(&backend.addr.to_string()), "{answer}");
}

#[tokio::test]
async fn a_backend_that_never_answers_is_a_504() {
    let backend = Scripted::start(vec![], false).await;
    let answer = refused_answer(&backend, "[limits]\nresponse_timeout = \"200ms\"\n").await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
}
