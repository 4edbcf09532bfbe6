//! Errors of the request path, classified by side (client, backend, internal),
//! each mapped to the HTTP status the client gets, in one place.
//!
//! Startup and config errors are not here: `config::ConfigErrors` and
//! `server::StartError` carry those.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};

use crate::proxy::ProxyBody;

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    // Client side.
    #[error("no route matches this host and path")]
    NoRoute,
    #[error("invalid WebSocket handshake: {0}")]
    BadHandshake(&'static str),

    // Backend side.
    #[error("no backend of pool {0} is available")]
    NoBackend(String),
    #[error("backend {backend} could not be reached: {source}")]
    Connect { backend: String, source: std::io::Error },
    #[error("backend {0} did not answer in time")]
    Timeout(String),
    #[error("backend {backend} broke the exchange: {source}")]
    Backend { backend: String, source: Box<dyn std::error::Error + Send + Sync> },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadHandshake(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoBackend(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::Backend { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The outcome label of `tidegate_connections_total` for this failure.
    pub fn outcome(&self) -> &'static str {
        match self {
            ProxyError::NoRoute | ProxyError::BadHandshake(_) => "client_error",
            ProxyError::NoBackend(_) => "no_backend",
            ProxyError::Connect { .. } => "connect_error",
            ProxyError::Timeout(_) => "timeout",
            ProxyError::Backend { .. } => "backend_error",
        }
    }

    /// The response the client gets: the status and one sentence saying why.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let mut resp = text_response(self.status(), format!("{self}\n"));
        if matches!(self, ProxyError::NoBackend(_)) {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, ProxyError::BadHandshake(_)) {
            resp.headers_mut().insert("sec-websocket-version", HeaderValue::from_static("13"));
        }
        resp
    }
}

/// A small `text/plain` response of our own.
pub fn text_response(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// The innermost cause of an error, which names what actually went wrong
/// ("Connection refused") where the outer ones only say where ("client error").
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string()
}
