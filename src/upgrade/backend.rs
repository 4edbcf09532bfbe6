//! The backend side of a WebSocket hand-off, written by hand: the handshake
//! request serialized into one buffer and sent in one write, the answer's
//! head read with `httparse` straight off the socket.
//!
//! A hyper client connection would cost a spawned task, a dispatcher and its
//! channels per handshake, only to send one GET and read one `101`. A refused
//! upgrade (any other answer, rare) is still relayed by hyper: the bytes
//! already read are replayed to a client connection of its own, which then
//! streams the body whatever its framing.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::upstream::{FORWARDING_NAMES, Forwarding, HopByHop};

/// Most headers accepted in a backend's answer (hyper's default too).
const MAX_HEADERS: usize = 100;
/// First read buffer: a `101` head is a few hundred bytes.
const FIRST_READ: usize = 1024;

/// The handshake request as the backend gets it, written straight from the
/// client's: request line; the client's end-to-end headers, less those
/// `forwarding` replaces; the `forwarding` headers; the upgrade pair with the
/// client's `upgrade` token; blank line.
pub fn request_head(
    path_and_query: &str,
    headers: &HeaderMap,
    hop: &HopByHop,
    forwarding: &Forwarding<'_>,
    upgrade: &[u8],
) -> Vec<u8> {
    let size = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>();
    let mut head = Vec::with_capacity(path_and_query.len() + size + 256);
    head.extend_from_slice(b"GET ");
    head.extend_from_slice(path_and_query.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let kept = headers.iter().filter(|(name, _)| !hop.contains(name) && !FORWARDING_NAMES.contains(name));
    let kept = kept.map(|(name, value)| (name, value.as_bytes()));
    let forwarded = forwarding.pairs().into_iter().filter_map(|(name, value)| Some((name, value?.as_bytes())));
    let pair = [(&header::CONNECTION, &b"Upgrade"[..]), (&header::UPGRADE, upgrade)];
    for (name, value) in kept.chain(forwarded).chain(pair) {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// What the backend answered.
pub enum Answer {
    /// `101`: its headers, and whatever it sent right after the head.
    Switching { headers: HeaderMap, early: Bytes },
    /// Anything else, to relay as a plain response: everything read so far,
    /// from its status line on.
    Refused { read: Vec<u8> },
}

/// Sends `head` on `stream` and reads the answer's head, at most `limit`
/// bytes of it. Informational answers other than `101` are skipped, as hyper
/// does. Unbounded in time: the caller bounds it.
pub async fn exchange(stream: &mut TcpStream, head: &[u8], limit: usize) -> io::Result<Answer> {
    stream.write_all(head).await?;
    let mut buf = Vec::with_capacity(FIRST_READ.min(limit));
    // Where the answer that counts starts (after skipped `1xx` heads).
    let mut start = 0;
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= limit {
                return Err(invalid(format!("answered with a head larger than {limit} bytes")));
            }
            buf.reserve_exact(buf.len().min(limit - buf.len()));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed the connection before answering"));
        }
        loop {
            match parse(&buf[start..])? {
                Parsed::Partial => break,
                Parsed::Informational(len) => start += len,
                Parsed::Switching { headers, len } => {
                    let rest = &buf[start + len..];
                    let early = if rest.is_empty() { Bytes::new() } else { Bytes::copy_from_slice(rest) };
                    return Ok(Answer::Switching { headers, early });
                }
                Parsed::Other => {
                    buf.drain(..start);
                    return Ok(Answer::Refused { read: buf });
                }
            }
        }
    }
}

/// One parse of the answer so far.
enum Parsed {
    Partial,
    /// A `1xx` other than `101`, `len` bytes long: skipped.
    Informational(usize),
    Switching {
        headers: HeaderMap,
        len: usize,
    },
    Other,
}

fn parse(buf: &[u8]) -> io::Result<Parsed> {
    // Uninitialized slots: initializing a hundred would cost more than the parse.
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(invalid(format!("answered with a malformed head: {e}"))),
    };
    match resp.code {
        Some(101) => {}
        Some(100..=199) => return Ok(Parsed::Informational(len)),
        _ => return Ok(Parsed::Other),
    }
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes());
        let value = HeaderValue::from_bytes(h.value);
        match (name, value) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => return Err(invalid(format!("answered with an invalid header {:?}", h.name))),
        }
    }
    Ok(Parsed::Switching { headers, len })
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Relays a refused upgrade: hyper parses the answer from the bytes already
/// read, then from the socket, and streams its body.
pub async fn relay(stream: TcpStream, read: Vec<u8>, path: &str) -> hyper::Result<Response<Incoming>> {
    let io = Replay { read: Bytes::from(read), stream: TokioIo::new(stream), sent: false, reader: None };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    // The request was sent already; hyper needs its method and path to read
    // the answer, and writes it to `Replay`, which discards it.
    let req = Request::get(path).body(Empty::<Bytes>::new()).unwrap_or_default();
    sender.send_request(req).await
}

/// A backend connection whose request was sent and whose first bytes were
/// read: reads give those bytes back first; writes are discarded.
struct Replay {
    read: Bytes,
    stream: TokioIo<TcpStream>,
    /// Whether hyper wrote its request: until then reads wait, as hyper
    /// takes bytes arriving before its request for a broken connection.
    sent: bool,
    reader: Option<Waker>,
}

impl Read for Replay {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, mut buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        if !self.sent {
            self.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if self.read.is_empty() {
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl Write for Replay {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.sent = true;
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::ForwardedFor;

    #[test]
    fn the_request_head_is_one_well_formed_block() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("chat.test"));
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        h.insert("connection", HeaderValue::from_static("Upgrade, X-Hop"));
        h.insert("x-hop", HeaderValue::from_static("gone"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("spoofed"));
        let client = ForwardedFor { client: "10.0.0.7:4000".parse().unwrap(), proto: "http", host: Some("chat.test") };
        let fw = Forwarding::of(&h, &client);
        let head = request_head("/ws?room=1", &h, &HopByHop::of(&h), &fw, b"WebSocket");
        let expected = "GET /ws?room=1 HTTP/1.1\r\nhost: chat.test\r\nx-multi: a\r\nx-multi: b\r\n\
            x-forwarded-for: 10.0.0.7\r\nforwarded: for=10.0.0.7;proto=http;host=\"chat.test\"\r\n\
            x-forwarded-proto: http\r\nx-forwarded-host: chat.test\r\nconnection: Upgrade\r\nupgrade: WebSocket\r\n\r\n";
        assert_eq!(String::from_utf8(head).unwrap(), expected);
    }

    #[test]
    fn a_101_head_is_split_from_what_follows() {
        let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x01x";
        match parse(answer).unwrap() {
            Parsed::Switching { headers, len } => {
                assert_eq!(headers["upgrade"], "websocket");
                assert_eq!(&answer[len..], b"\x81\x01x");
            }
            _ => panic!("expected a 101"),
        }
    }

    #[test]
    fn partial_informational_other_and_malformed_heads() {
        assert!(matches!(parse(b"HTTP/1.1 101 Switching Proto").unwrap(), Parsed::Partial));
        assert!(matches!(parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101").unwrap(), Parsed::Informational(25)));
        assert!(matches!(parse(b"HTTP/1.1 403 Forbidden\r\n\r\n").unwrap(), Parsed::Other));
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(parse(format!("HTTP/1.1 101 OK\r\n{many}\r\n").as_bytes()).is_err());
    }
}
