//! Keep-alive HTTP/1.1 connections to one backend, for plain requests.
//!
//! Each backend keeps its own idle list (it lives in `snapshot::Backend`, so
//! it survives a reload with the backend), most recently used last: a request
//! takes the warmest connection, or dials a new one. The response body gives
//! its connection back when it has been read to the end; a connection whose
//! exchange ended any other way is closed by hyper and simply dropped.
//!
//! Hand-written rather than hyper-util's pooled client: that one keys a shared
//! map by authority and hashes, locks and allocates for it on every request,
//! which was a fifth of tidegate's CPU per plain request; a backend here is
//! already known, so its list is one uncontended lock away.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

/// Idle connections kept per backend; more are closed.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than reused (backends
/// commonly close theirs after 60-75 s; ours must give up first).
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// A connection to a backend that can carry one request at a time.
pub type Conn = SendRequest<Incoming>;

/// One backend's idle keep-alive connections.
#[derive(Debug, Default)]
pub struct IdleConns(Mutex<Vec<(Conn, Instant)>>);

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened: nothing reached the backend.
    Connect(io::Error),
    /// The backend broke the exchange after the request went out.
    Backend(hyper::Error),
}

impl IdleConns {
    /// Sends `req` to the backend at `addr` on an idle connection, or on a new
    /// one (connected within `connect_timeout`). Returns the response and the
    /// connection, to be given back with [`IdleConns::put`] once the response
    /// body has been read to its end.
    pub async fn send(
        &self,
        addr: &str,
        mut req: Request<Incoming>,
        connect_timeout: Duration,
    ) -> Result<(Response<Incoming>, Conn), SendError> {
        while let Some(mut conn) = self.take() {
            if conn.ready().await.is_err() {
                continue; // closed while idle
            }
            match conn.try_send_request(req).await {
                Ok(resp) => return Ok((resp, conn)),
                // The backend closed it before the request went out: the
                // request is intact, try the next one.
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::Backend(e.into_error())),
                },
            }
        }
        let stream = super::dial(addr, connect_timeout).await.map_err(SendError::Connect)?;
        let (mut conn, driver) = http1::handshake(TokioIo::new(stream)).await.map_err(SendError::Backend)?;
        tokio::spawn(driver);
        let resp = conn.send_request(req).await.map_err(SendError::Backend)?;
        Ok((resp, conn))
    }

    /// Gives back a connection whose last response was read to its end.
    pub fn put(&self, conn: Conn) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Oldest first: drop the expired ones, and the oldest past the cap.
        let expired = idle.iter().take_while(|(_, since)| now - *since > IDLE_TIMEOUT).count();
        let over = (idle.len() - expired + 1).saturating_sub(MAX_IDLE);
        idle.drain(..expired + over);
        idle.push((conn, now));
    }

    /// The most recently used idle connection that is still open and fresh.
    fn take(&self) -> Option<Conn> {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() > IDLE_TIMEOUT {
                // Everything below is older still.
                idle.clear();
                return None;
            }
            if !conn.is_closed() {
                return Some(conn);
            }
        }
        None
    }
}
