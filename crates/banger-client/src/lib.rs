//! A typed client for `bangerd`'s API over its unix socket.
//!
//! HTTP/1.1, one connection per request: requests are rare and local, and
//! a fresh connection per call means a restarted daemon is picked up with
//! no reconnect logic.

use std::path::{Path, PathBuf};

use banger_api::asset::{
    ImageBuildRequest, ImageImportRequest, ImageRecord, KernelAddRequest, KernelImportRequest,
    KernelRecord,
};
use banger_api::daemon::DaemonStatus;
use banger_api::doctor::DoctorReport;
use banger_api::event::{Progress, StreamEvent};
use banger_api::vm::{
    ATTACH_UPGRADE, AttachRequest, CreateVmRequest, SetVmRequest, SshInfo, VmRecord,
};
use banger_api::{ApiError, ErrorCode};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

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
    #[error(
        "bangerd closed the stream of {what} before the result (did the daemon die? `banger daemon logs` shows why)"
    )]
    StreamEnded { what: String },
}

impl ClientError {
    /// True when the daemon is not there (so starting it may help): no
    /// socket, nobody listening, or a daemon that died with our connection
    /// still in its queue (reset or closed before any answer).
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Http { source, .. } => {
                source.is_closed()
                    || source.is_incomplete_message()
                    || io_error_kind(source).is_some_and(|k| {
                        matches!(
                            k,
                            std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::ConnectionRefused
                                | std::io::ErrorKind::BrokenPipe
                        )
                    })
            }
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
pub type Attached = TokioIo<hyper::upgrade::Upgraded>;

/// Client of one daemon socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn http_err(&self, source: hyper::Error) -> ClientError {
        ClientError::Http {
            socket: self.socket.clone(),
            source,
        }
    }

    /// A fresh HTTP/1.1 connection; `upgrades` keeps it usable after a
    /// `101 Switching Protocols`.
    async fn connect(
        &self,
        upgrades: bool,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Unreachable {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.http_err(e))?;
        tokio::spawn(async move {
            // Errors surface on the request future; nothing to do here.
            if upgrades {
                let _ = conn.with_upgrades().await;
            } else {
                let _ = conn.await;
            }
        });
        Ok(sender)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let http = |source| self.http_err(source);
        let mut sender = self.connect(false).await?;
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://bangerd{path}"))
            .header(hyper::header::HOST, "bangerd");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Decode {
                what: path.to_owned(),
                message: e.to_string(),
            })?;
        sender.send_request(req).await.map_err(http)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|source| ClientError::Http {
                socket: self.socket.clone(),
                source,
            })?
            .to_bytes();
        if !status.is_success() {
            return Err(ClientError::Api(error_from(status.as_u16(), &bytes)));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            what: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Calls a streaming endpoint: `on_progress` sees each progress event,
    /// the result event's value is returned.
    pub async fn stream<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<T, ClientError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(ClientError::Api(error_from(status.as_u16(), &bytes)));
        }
        let mut buf = BytesMut::new();
        loop {
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(pos + 1);
                let line = &line[..pos];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let ev: StreamEvent<T> =
                    serde_json::from_slice(line).map_err(|e| ClientError::Decode {
                        what: path.to_owned(),
                        message: format!("bad stream line: {e}"),
                    })?;
                match ev {
                    StreamEvent::Progress(p) => on_progress(&p),
                    StreamEvent::Result { value } => return Ok(value),
                    StreamEvent::Error(e) => return Err(ClientError::Api(e)),
                }
            }
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
                Some(Err(source)) => {
                    return Err(ClientError::Http {
                        socket: self.socket.clone(),
                        source,
                    });
                }
                None => {
                    return Err(ClientError::StreamEnded {
                        what: path.to_owned(),
                    });
                }
            }
        }
    }

    fn json<B: Serialize>(body: &B) -> Option<Vec<u8>> {
        serde_json::to_vec(body).ok()
    }

    pub async fn status(&self) -> Result<DaemonStatus, ClientError> {
        self.call(Method::GET, "/v1/daemon/status", None).await
    }

    pub async fn shutdown(&self) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::POST, "/v1/daemon/shutdown", None)
            .await
            .map(drop)
    }

    pub async fn doctor(&self) -> Result<DoctorReport, ClientError> {
        self.call(Method::GET, "/v1/host/doctor", None).await
    }

    pub async fn list_vms(&self) -> Result<Vec<VmRecord>, ClientError> {
        self.call(Method::GET, "/v1/vms", None).await
    }

    pub async fn show_vm(&self, vm: &str) -> Result<VmRecord, ClientError> {
        self.call(Method::GET, &vm_path(vm), None).await
    }

    pub async fn create_vm(
        &self,
        req: &CreateVmRequest,
        on_progress: impl FnMut(&Progress),
    ) -> Result<VmRecord, ClientError> {
        self.stream(Method::POST, "/v1/vms", Self::json(req), on_progress)
            .await
    }

    pub async fn set_vm(&self, vm: &str, req: &SetVmRequest) -> Result<VmRecord, ClientError> {
        self.call(Method::PATCH, &vm_path(vm), Self::json(req))
            .await
    }

    pub async fn start_vm(
        &self,
        vm: &str,
        on_progress: impl FnMut(&Progress),
    ) -> Result<VmRecord, ClientError> {
        let path = format!("{}/start", vm_path(vm));
        self.stream(Method::POST, &path, None, on_progress).await
    }

    pub async fn stop_vm(&self, vm: &str) -> Result<VmRecord, ClientError> {
        self.call(Method::POST, &format!("{}/stop", vm_path(vm)), None)
            .await
    }

    pub async fn kill_vm(&self, vm: &str) -> Result<VmRecord, ClientError> {
        self.call(Method::POST, &format!("{}/kill", vm_path(vm)), None)
            .await
    }

    /// The serial console log.
    pub async fn vm_logs(&self, vm: &str) -> Result<String, ClientError> {
        let resp = self
            .send(Method::GET, &format!("{}/logs", vm_path(vm)), None)
            .await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|source| ClientError::Http {
                socket: self.socket.clone(),
                source,
            })?
            .to_bytes();
        if !status.is_success() {
            return Err(ClientError::Api(error_from(status.as_u16(), &bytes)));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `vm exec` / `vm cp`: upgrades a connection to the guest agent's
    /// protocol (`banger-agent-proto` frames) once the daemon sent `req`.
    pub async fn attach(&self, vm: &str, req: &AttachRequest) -> Result<Attached, ClientError> {
        let path = format!("{}/attach", vm_path(vm));
        let http = |source| self.http_err(source);
        let mut sender = self.connect(true).await?;
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode {
            what: path.clone(),
            message: e.to_string(),
        })?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://bangerd{path}"))
            .header(hyper::header::HOST, "bangerd")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::CONNECTION, "upgrade")
            .header(hyper::header::UPGRADE, ATTACH_UPGRADE)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Decode {
                what: path.clone(),
                message: e.to_string(),
            })?;
        let resp = sender.send_request(request).await.map_err(http)?;
        let status = resp.status();
        if status != hyper::StatusCode::SWITCHING_PROTOCOLS {
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(ClientError::Api(error_from(status.as_u16(), &bytes)));
        }
        let upgraded = hyper::upgrade::on(resp).await.map_err(http)?;
        Ok(TokioIo::new(upgraded))
    }

    /// How to reach a running VM with the system ssh.
    pub async fn vm_ssh(&self, vm: &str) -> Result<SshInfo, ClientError> {
        self.call(Method::GET, &format!("{}/ssh", vm_path(vm)), None)
            .await
    }

    pub async fn delete_vm(&self, vm: &str) -> Result<VmRecord, ClientError> {
        self.call(Method::DELETE, &vm_path(vm), None).await
    }
}

/// Kernels and images share one set of routes under their collection.
impl Client {
    async fn show_asset<T: DeserializeOwned>(
        &self,
        collection: &str,
        name: &str,
        verify: bool,
    ) -> Result<T, ClientError> {
        let path = format!("{}?verify={verify}", asset_path(collection, name));
        self.call(Method::GET, &path, None).await
    }

    async fn delete_asset<T: DeserializeOwned>(
        &self,
        collection: &str,
        name: &str,
        force: bool,
    ) -> Result<T, ClientError> {
        let path = format!("{}?force={force}", asset_path(collection, name));
        self.call(Method::DELETE, &path, None).await
    }

    async fn post_streamed<T: DeserializeOwned, B: Serialize>(
        &self,
        path: &str,
        body: &B,
        on_progress: impl FnMut(&Progress),
    ) -> Result<T, ClientError> {
        self.stream(Method::POST, path, Self::json(body), on_progress)
            .await
    }

    pub async fn list_kernels(&self) -> Result<Vec<KernelRecord>, ClientError> {
        self.call(Method::GET, "/v1/kernels", None).await
    }

    pub async fn show_kernel(&self, name: &str, verify: bool) -> Result<KernelRecord, ClientError> {
        self.show_asset("kernels", name, verify).await
    }

    pub async fn delete_kernel(
        &self,
        name: &str,
        force: bool,
    ) -> Result<KernelRecord, ClientError> {
        self.delete_asset("kernels", name, force).await
    }

    pub async fn import_kernel(
        &self,
        req: &KernelImportRequest,
        on_progress: impl FnMut(&Progress),
    ) -> Result<KernelRecord, ClientError> {
        self.post_streamed("/v1/kernels/import", req, on_progress)
            .await
    }

    pub async fn add_kernel(
        &self,
        req: &KernelAddRequest,
        on_progress: impl FnMut(&Progress),
    ) -> Result<KernelRecord, ClientError> {
        self.post_streamed("/v1/kernels/add", req, on_progress)
            .await
    }

    pub async fn list_images(&self) -> Result<Vec<ImageRecord>, ClientError> {
        self.call(Method::GET, "/v1/images", None).await
    }

    pub async fn show_image(&self, name: &str, verify: bool) -> Result<ImageRecord, ClientError> {
        self.show_asset("images", name, verify).await
    }

    pub async fn delete_image(&self, name: &str, force: bool) -> Result<ImageRecord, ClientError> {
        self.delete_asset("images", name, force).await
    }

    pub async fn build_image(
        &self,
        req: &ImageBuildRequest,
        on_progress: impl FnMut(&Progress),
    ) -> Result<ImageRecord, ClientError> {
        self.post_streamed("/v1/images/build", req, on_progress)
            .await
    }

    pub async fn import_image(
        &self,
        req: &ImageImportRequest,
        on_progress: impl FnMut(&Progress),
    ) -> Result<ImageRecord, ClientError> {
        self.post_streamed("/v1/images/import", req, on_progress)
            .await
    }
}

fn asset_path(collection: &str, name: &str) -> String {
    format!("/v1/{collection}/{}", escape(name))
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

/// Path segment for a VM reference. References are validated DNS labels
/// on the daemon side; anything else is percent-encoded here so a bad
/// reference reaches the daemon intact and gets its clear refusal.
fn vm_path(vm: &str) -> String {
    format!("/v1/vms/{}", escape(vm))
}

fn escape(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn error_from(status: u16, body: &[u8]) -> ApiError {
    serde_json::from_slice(body).unwrap_or_else(|_| {
        ApiError::new(
            ErrorCode::from_http_status(status),
            format!("HTTP {status}: {}", String::from_utf8_lossy(body).trim()),
        )
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    use super::*;

    /// A one-shot server that answers every connection with `response`.
    fn serve(dir: &Path, response: &'static str) -> PathBuf {
        let sock = dir.join("s.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                // Write in small pieces so line framing is exercised.
                for chunk in response.as_bytes().chunks(7) {
                    let _ = s.write_all(chunk).await;
                    let _ = s.flush().await;
                }
                let _ = s.shutdown().await;
            }
        });
        sock
    }

    /// A daemon that dies with our connection in its queue: accepted, then
    /// closed without an answer. That is "not running", not an error.
    #[tokio::test]
    async fn a_daemon_dying_mid_request_counts_as_unreachable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("s.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            drop(s);
        });
        let err = Client::new(sock).status().await.expect_err("closed");
        assert!(err.is_unreachable(), "{err}");
    }

    #[tokio::test]
    async fn missing_socket_is_unreachable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Client::new(dir.path().join("none.sock"))
            .list_vms()
            .await
            .expect_err("no daemon");
        assert!(err.is_unreachable(), "{err}");
    }

    #[tokio::test]
    async fn error_bodies_become_api_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = serve(
            dir.path(),
            "HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: 45\r\nconnection: close\r\n\r\n{\"code\":\"invalid_state\",\"message\":\"vm is up\"}",
        );
        let err = Client::new(sock).show_vm("x").await.expect_err("409");
        assert_eq!(err.api_code(), Some(ErrorCode::InvalidState));
        assert_eq!(err.to_string(), "vm is up");
    }

    #[tokio::test]
    async fn non_json_error_falls_back_to_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = serve(
            dir.path(),
            "HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope",
        );
        let err = Client::new(sock).show_vm("x").await.expect_err("404");
        assert_eq!(err.api_code(), Some(ErrorCode::NotFound));
        assert!(err.to_string().contains("nope"));
    }

    #[tokio::test]
    async fn stream_reads_progress_split_across_frames_then_result() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = serve(
            dir.path(),
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n{\"event\":\"progress\",\"stage\":\"a\"}\n\n{\"event\":\"progress\",\"stage\":\"b\",\"fraction\":0.5}\n{\"event\":\"result\",\"value\":42}\n",
        );
        let mut stages = Vec::new();
        let v: u32 = Client::new(sock)
            .stream(Method::POST, "/v1/x", None, |p| {
                stages.push(p.stage.clone())
            })
            .await
            .expect("stream");
        assert_eq!(v, 42);
        assert_eq!(stages, ["a", "b"]);
    }

    #[tokio::test]
    async fn stream_without_result_is_reported_as_ended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = serve(
            dir.path(),
            "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{\"event\":\"progress\",\"stage\":\"a\"}\n",
        );
        let err = Client::new(sock)
            .stream::<u32>(Method::POST, "/v1/x", None, |_| {})
            .await
            .expect_err("ended");
        assert!(matches!(err, ClientError::StreamEnded { .. }), "{err}");
    }

    #[tokio::test]
    async fn stream_error_event_is_returned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = serve(
            dir.path(),
            "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{\"event\":\"error\",\"code\":\"conflict\",\"message\":\"taken\"}\n",
        );
        let err = Client::new(sock)
            .stream::<u32>(Method::POST, "/v1/x", None, |_| {})
            .await
            .expect_err("error event");
        assert_eq!(err.api_code(), Some(ErrorCode::Conflict));
    }

    #[test]
    fn vm_paths_are_escaped() {
        assert_eq!(vm_path("web-1"), "/v1/vms/web-1");
        assert_eq!(vm_path("../x"), "/v1/vms/%2E%2E%2Fx");
    }
}
