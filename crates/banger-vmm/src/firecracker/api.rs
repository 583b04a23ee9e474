//! A client of one Firecracker API socket.

use std::path::PathBuf;

use banger_http::header::{ACCEPT, CONTENT_TYPE};
use banger_http::{HttpError, Method, Request, StatusCode, UdsHttp};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::VmmError;

/// What went wrong talking to Firecracker's API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Connect(#[source] std::io::Error),
    #[error("{0}")]
    Http(#[source] hyper::Error),
    #[error("{0}")]
    Encode(#[source] serde_json::Error),
    /// A 2xx answer that is not what the API documents.
    #[error("{path}: unexpected answer: {source}")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Request(#[source] hyper::http::Error),
    /// A non-2xx answer; `fault` is Firecracker's `fault_message` (or the
    /// whole answer when it has none).
    #[error("{method} {path}: {status}: {fault}")]
    Refused {
        method: Method,
        path: String,
        status: StatusCode,
        fault: Value,
    },
}

impl From<HttpError> for ApiError {
    /// The socket is named by the [`VmmError`] this ends up in.
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::Connect { source, .. } => Self::Connect(source),
            HttpError::Http { source, .. } => Self::Http(source),
            HttpError::Encode { source, .. } => Self::Encode(source),
            HttpError::Request { source, .. } => Self::Request(source),
        }
    }
}

/// A client of one Firecracker API socket.
#[derive(Debug, Clone)]
pub struct FcApi {
    http: UdsHttp,
}

impl FcApi {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            http: UdsHttp::new(socket, "localhost"),
        }
    }

    fn err(&self, source: ApiError) -> VmmError {
        VmmError::Api {
            path: self.http.socket().to_owned(),
            source,
        }
    }

    fn request(&self, method: Method, path: &str) -> Request<'_> {
        self.http
            .request(method, path)
            .header(ACCEPT, "application/json")
    }

    /// Sends `req`; a non-2xx answer is an error carrying Firecracker's
    /// `fault_message`.
    async fn send(&self, method: Method, req: Request<'_>) -> Result<Value, ApiError> {
        let path = req.path().to_owned();
        let resp = req.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        // Firecracker answers JSON; anything else is kept as its text so
        // an error still says what came back.
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if !status.is_success() {
            let fault = value.get("fault_message").cloned().unwrap_or(value);
            return Err(ApiError::Refused {
                method,
                path,
                status,
                fault,
            });
        }
        Ok(value)
    }

    /// `PUT path` with `body` (one of [`models`](super::models), or any
    /// JSON).
    pub async fn put(&self, path: &str, body: impl Serialize) -> Result<(), VmmError> {
        self.send_json(Method::PUT, path, body).await
    }

    /// `PATCH path` with `body`.
    pub async fn patch(&self, path: &str, body: impl Serialize) -> Result<(), VmmError> {
        self.send_json(Method::PATCH, path, body).await
    }

    async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: impl Serialize,
    ) -> Result<(), VmmError> {
        let send = || async {
            let req = self.request(method.clone(), path).json(&body)?;
            self.send(method.clone(), req).await
        };
        send().await.map(drop).map_err(|e| self.err(e))
    }

    /// `GET path`, its answer as JSON.
    async fn get_value(&self, path: &str) -> Result<Value, ApiError> {
        // Firecracker has always been sent a JSON content type, body or not.
        let req = self
            .request(Method::GET, path)
            .header(CONTENT_TYPE, "application/json");
        self.send(Method::GET, req).await
    }

    /// `GET path`, its answer read as `T` (one of
    /// [`models`](super::models)).
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, VmmError> {
        let get = || async {
            let value = self.get_value(path).await?;
            serde_json::from_value(value).map_err(|source| ApiError::Decode {
                path: path.to_owned(),
                source,
            })
        };
        get().await.map_err(|e| self.err(e))
    }

    /// `GET /`: instance info (`state`: `Not started`, `Running`, ...).
    pub async fn instance_info(&self) -> Result<Value, VmmError> {
        self.get_value("/").await.map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    use super::*;
    use crate::firecracker::models::{ActionType, InstanceAction, InstanceInfo, Vm, VmState};

    /// Answers one request with `response`; hands back what it was sent.
    fn serve_once(
        sock: &std::path::Path,
        response: &'static str,
    ) -> tokio::task::JoinHandle<String> {
        let listener = UnixListener::bind(sock).expect("bind");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.expect("read");
            s.write_all(response.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
    }

    #[tokio::test]
    async fn put_sends_the_typed_body_and_reports_the_fault_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("api.sock");
        let server = serve_once(
            &sock,
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 29\r\n\r\n{\"fault_message\":\"no kernel\"}",
        );
        let action = InstanceAction {
            action_type: ActionType::InstanceStart,
        };
        let err = FcApi::new(&sock)
            .put("/actions", action)
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, VmmError::Api { source: ApiError::Refused { status, .. }, .. } if *status == StatusCode::BAD_REQUEST),
            "{err}"
        );
        assert!(
            err.to_string()
                .ends_with("PUT /actions: 400 Bad Request: \"no kernel\""),
            "{err}"
        );
        let sent = server.await.expect("server").to_ascii_lowercase();
        assert!(
            sent.starts_with("put http://localhost/actions http/1.1\r\n"),
            "{sent}"
        );
        assert!(sent.contains("accept: application/json\r\n"), "{sent}");
        assert!(
            sent.contains("content-type: application/json\r\n"),
            "{sent}"
        );
        assert!(
            sent.ends_with("{\"action_type\":\"instancestart\"}"),
            "{sent}"
        );
    }

    #[tokio::test]
    async fn instance_info_is_the_answers_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("api.sock");
        let _server = serve_once(
            &sock,
            "HTTP/1.1 200 OK\r\ncontent-length: 19\r\n\r\n{\"state\":\"Running\"}",
        );
        let info = FcApi::new(&sock).instance_info().await.expect("info");
        assert_eq!(info["state"], "Running");
    }

    #[tokio::test]
    async fn patch_sends_its_method_and_body() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("api.sock");
        let server = serve_once(&sock, "HTTP/1.1 204 No Content\r\n\r\n");
        let paused = Vm {
            state: VmState::Paused,
        };
        FcApi::new(&sock)
            .patch("/vm", paused)
            .await
            .expect("accepted");
        let sent = server.await.expect("server").to_ascii_lowercase();
        assert!(
            sent.starts_with("patch http://localhost/vm http/1.1\r\n"),
            "{sent}"
        );
        assert!(sent.ends_with("{\"state\":\"paused\"}"), "{sent}");
    }

    #[tokio::test]
    async fn a_typed_get_reports_an_answer_it_cannot_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("api.sock");
        let _server = serve_once(
            &sock,
            "HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n{\"state\":\"Sleeping\"}",
        );
        let err = FcApi::new(&sock)
            .get::<InstanceInfo>("/")
            .await
            .expect_err("an unknown state");
        assert!(
            matches!(&err, VmmError::Api { source: ApiError::Decode { path, .. }, .. } if path == "/"),
            "{err}"
        );
    }
}
