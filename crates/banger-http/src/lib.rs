//! HTTP/1.1 over a unix socket, for both ends banger talks to that way:
//! `bangerd`'s API (from banger-client) and Firecracker's API socket.
//!
//! One connection per request: requests are rare and local, and a fresh
//! connection per call means a restarted server is picked up with no
//! reconnect logic.

mod lines;

use std::path::{Path, PathBuf};

pub use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, HeaderValue, UPGRADE};
use hyper::http::request::Builder;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::UnixStream;

pub use hyper::header::{self, HeaderName};
pub use hyper::{Method, StatusCode};
pub use lines::Lines;

/// A connection upgraded to another protocol after `101 Switching
/// Protocols`.
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// Why a request failed, before or after the server answered.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Nothing listens on the socket (or it does not exist).
    #[error("connecting to {socket}: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange broke: handshake, sending, reading the answer or
    /// the upgrade.
    #[error("talking to {socket}: {source}")]
    Http {
        socket: PathBuf,
        #[source]
        source: hyper::Error,
    },
    #[error("encoding the body of {path}: {source}")]
    Encode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// The request itself could not be built (a path or header that is
    /// not valid HTTP).
    #[error("building the request for {path}: {source}")]
    Request {
        path: String,
        #[source]
        source: hyper::http::Error,
    },
}

impl HttpError {
    /// True when the server is not there: see [`peer_gone`].
    pub fn peer_gone(&self) -> bool {
        match self {
            Self::Connect { .. } => true,
            Self::Http { source, .. } => peer_gone(source),
            Self::Encode { .. } | Self::Request { .. } => false,
        }
    }
}

/// Whether an HTTP failure means the server is not there (so starting it
/// may help): a server that died with our connection still in its queue
/// resets or closes it before any answer.
pub fn peer_gone(e: &hyper::Error) -> bool {
    e.is_closed()
        || e.is_incomplete_message()
        || io_error_kind(e).is_some_and(|k| {
            matches!(
                k,
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::BrokenPipe
            )
        })
}

/// The kind of the first I/O error in `e`'s source chain.
fn io_error_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = err.source();
    }
    None
}

/// A server on one unix socket. `authority` is what goes in the `Host`
/// header and the request URI (the socket has no name of its own).
#[derive(Debug, Clone)]
pub struct UdsHttp {
    socket: PathBuf,
    authority: String,
}

impl UdsHttp {
    pub fn new(socket: impl Into<PathBuf>, authority: impl Into<String>) -> Self {
        Self {
            socket: socket.into(),
            authority: authority.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A request to `path` (with its query), sent by [`Request::send`].
    pub fn request(&self, method: Method, path: &str) -> Request<'_> {
        let builder = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.authority))
            .header(HOST, self.authority.as_str());
        Request {
            http: self,
            path: path.to_owned(),
            builder,
            body: Bytes::new(),
            upgrade: false,
        }
    }

    fn http_err(&self, source: hyper::Error) -> HttpError {
        HttpError::Http {
            socket: self.socket.clone(),
            source,
        }
    }
}

/// One request being built.
#[derive(Debug)]
pub struct Request<'a> {
    http: &'a UdsHttp,
    path: String,
    builder: Builder,
    body: Bytes,
    upgrade: bool,
}

impl Request<'_> {
    /// The path (and query) the request goes to.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn header(mut self, name: HeaderName, value: &'static str) -> Self {
        self.builder = self.builder.header(name, HeaderValue::from_static(value));
        self
    }

    /// `body` as JSON, with its content type.
    pub fn json<B: Serialize + ?Sized>(mut self, body: &B) -> Result<Self, HttpError> {
        let bytes = serde_json::to_vec(body).map_err(|source| HttpError::Encode {
            path: self.path.clone(),
            source,
        })?;
        self.body = Bytes::from(bytes);
        Ok(self.header(CONTENT_TYPE, "application/json"))
    }

    /// Asks to switch the connection to `protocol`; the answer's
    /// [`Response::upgrade`] then yields the connection.
    pub fn upgrade(mut self, protocol: &'static str) -> Self {
        self.upgrade = true;
        self.header(CONNECTION, "upgrade").header(UPGRADE, protocol)
    }

    /// Connects and sends; the answer's head is in, its body is not read.
    pub async fn send(self) -> Result<Response, HttpError> {
        let http = self.http;
        let req = self
            .builder
            .body(Full::new(self.body))
            .map_err(|source| HttpError::Request {
                path: self.path.clone(),
                source,
            })?;
        let stream =
            UnixStream::connect(&http.socket)
                .await
                .map_err(|source| HttpError::Connect {
                    socket: http.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http.http_err(e))?;
        let upgrade = self.upgrade;
        tokio::spawn(async move {
            // Errors surface on the request future; nothing to do here.
            if upgrade {
                let _ = conn.with_upgrades().await;
            } else {
                let _ = conn.await;
            }
        });
        let inner = sender
            .send_request(req)
            .await
            .map_err(|e| http.http_err(e))?;
        Ok(Response {
            http: http.clone(),
            inner,
        })
    }
}

/// An answer whose body has not been read yet.
#[derive(Debug)]
pub struct Response {
    http: UdsHttp,
    inner: hyper::Response<Incoming>,
}

impl Response {
    pub fn status(&self) -> StatusCode {
        self.inner.status()
    }

    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner.headers().get(name)?.to_str().ok()
    }

    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes, HttpError> {
        let http = self.http;
        Ok(self
            .inner
            .into_body()
            .collect()
            .await
            .map_err(|e| http.http_err(e))?
            .to_bytes())
    }

    /// The body as newline-delimited lines, read as they arrive.
    pub fn lines(self) -> Lines {
        Lines::new(self.http, self.inner.into_body())
    }

    /// The connection, once the server switched protocols.
    pub async fn upgrade(self) -> Result<Upgraded, HttpError> {
        let http = self.http;
        let upgraded = hyper::upgrade::on(self.inner)
            .await
            .map_err(|e| http.http_err(e))?;
        Ok(TokioIo::new(upgraded))
    }
}

#[cfg(test)]
mod tests;
