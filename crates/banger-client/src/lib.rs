//! A typed client for `bangerd`'s API over its unix socket.
//!
//! HTTP/1.1 through [`banger_http`], one connection per request: requests
//! are rare and local, and a fresh connection per call means a restarted
//! daemon is picked up with no reconnect logic.

mod assets;
mod leases;
mod operations;
mod paths;
mod snapshots;
mod transport;
mod vms;

use std::path::{Path, PathBuf};

use banger_api::{ApiError, ErrorCode};
use banger_http::{HttpError, UdsHttp};

pub use leases::Lease;
pub use transport::StreamObserver;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (daemon not running).
    #[error("cannot reach bangerd at {socket}: {source}")]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to bangerd at {socket}: {source}")]
    Http {
        socket: PathBuf,
        #[source]
        source: hyper::Error,
    },
    /// The daemon answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("unexpected answer from bangerd for {what}: {message}")]
    Decode { what: String, message: String },
    #[error("encoding the request for {what}: {source}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("building the request for {what}: {source}")]
    Request {
        what: String,
        #[source]
        source: hyper::http::Error,
    },
    #[error(
        "bangerd closed the stream of {what} before the result (did the daemon die? `banger daemon logs` shows why)"
    )]
    StreamEnded { what: String },
}

impl From<HttpError> for ClientError {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::Connect { socket, source } => Self::Unreachable { socket, source },
            HttpError::Http { socket, source } => Self::Http { socket, source },
            HttpError::Encode { path, source } => Self::Encode { what: path, source },
            HttpError::Request { path, source } => Self::Request { what: path, source },
        }
    }
}

impl ClientError {
    /// True when the daemon is not there (so starting it may help): no
    /// socket, nobody listening, or a daemon that died with our connection
    /// still in its queue (reset or closed before any answer).
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Http { source, .. } => banger_http::peer_gone(source),
            _ => false,
        }
    }

    /// The API error code, when the daemon answered with one.
    pub fn api_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Api(e) => Some(e.code),
            _ => None,
        }
    }
}

/// A connection upgraded to the agent protocol.
pub type Attached = banger_http::Upgraded;

/// Client of one daemon socket.
#[derive(Debug, Clone)]
pub struct Client {
    http: UdsHttp,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            http: UdsHttp::new(socket, "bangerd"),
        }
    }

    pub fn socket(&self) -> &Path {
        self.http.socket()
    }
}

#[cfg(test)]
mod tests;
