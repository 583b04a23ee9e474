//! One call to the daemon: a JSON answer, a text answer, a progress
//! stream or an upgraded connection; error answers become [`ApiError`]s.

use banger_api::event::{Progress, StreamEvent};
use banger_api::operation::{OPERATION_HEADER, OperationId};
use banger_api::{ApiError, ErrorCode};
use banger_http::{Bytes, Method, Request, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Attached, Client, ClientError};

/// What the caller of a streamed call hears while it runs. A closure
/// over [`Progress`] is one that ignores the id.
pub trait StreamObserver {
    /// The daemon runs the call as operation `id` (which `banger
    /// operation cancel` takes).
    fn started(&mut self, id: &OperationId) {
        let _ = id;
    }
    fn progress(&mut self, p: &Progress);
}

impl<F: FnMut(&Progress)> StreamObserver for F {
    fn progress(&mut self, p: &Progress) {
        self(p)
    }
}

impl Client {
    pub(crate) fn request(&self, method: Method, path: &str) -> Request<'_> {
        self.http.request(method, path)
    }

    /// A request carrying `body` as JSON.
    pub(crate) fn with_json<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<Request<'_>, ClientError> {
        Ok(self.request(method, path).json(body)?)
    }

    /// A request whose JSON answer is decoded as `T`.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        req: Request<'_>,
    ) -> Result<T, ClientError> {
        let what = req.path().to_owned();
        let bytes = answer(req.send().await?).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            what,
            message: e.to_string(),
        })
    }

    /// A request whose answer is text (shown as it is, so bytes that are
    /// not UTF-8 are replaced rather than refused).
    pub(crate) async fn text(&self, req: Request<'_>) -> Result<String, ClientError> {
        let bytes = answer(req.send().await?).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Calls a streaming endpoint: `observer` hears the operation's id and
    /// each progress event, the result event's value is returned.
    pub(crate) async fn stream<T: DeserializeOwned>(
        &self,
        req: Request<'_>,
        mut observer: impl StreamObserver,
    ) -> Result<T, ClientError> {
        let what = req.path().to_owned();
        let resp = req.send().await?;
        if !resp.status().is_success() {
            return Err(refusal(resp).await);
        }
        if let Some(id) = resp
            .header(OPERATION_HEADER)
            .and_then(|h| h.parse::<OperationId>().ok())
        {
            observer.started(&id);
        }
        let mut lines = resp.lines();
        while let Some(line) = lines.next().await? {
            let ev: StreamEvent<T> =
                serde_json::from_slice(&line).map_err(|e| ClientError::Decode {
                    what: what.clone(),
                    message: format!("bad stream line: {e}"),
                })?;
            match ev {
                StreamEvent::Progress(p) => observer.progress(&p),
                StreamEvent::Result { value } => return Ok(value),
                StreamEvent::Error(e) => return Err(ClientError::Api(e)),
            }
        }
        Err(ClientError::StreamEnded { what })
    }

    /// Sends `req` asking to switch to `protocol` and returns the
    /// connection once the daemon did.
    pub(crate) async fn upgrade(
        &self,
        req: Request<'_>,
        protocol: &'static str,
    ) -> Result<Attached, ClientError> {
        let resp = req.upgrade(protocol).send().await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(refusal(resp).await);
        }
        Ok(resp.upgrade().await?)
    }
}

/// The body of a successful answer; an error answer as its [`ApiError`].
async fn answer(resp: Response) -> Result<Bytes, ClientError> {
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if !status.is_success() {
        return Err(ClientError::Api(error_from(status.as_u16(), &bytes)));
    }
    Ok(bytes)
}

/// An error answer on a stream or upgrade. A body that cannot be read
/// still leaves the status, whose code callers decide by; the message
/// says the daemon's own words were lost.
pub(crate) async fn refusal(resp: Response) -> ClientError {
    let status = resp.status().as_u16();
    match resp.bytes().await {
        Ok(bytes) => ClientError::Api(error_from(status, &bytes)),
        Err(e) => ClientError::Api(ApiError::new(
            ErrorCode::from_http_status(status),
            format!("HTTP {status} (its body could not be read: {e})"),
        )),
    }
}

/// The daemon's error body, or one made from the status when the body is
/// not an [`ApiError`] (a proxy's or a panic's answer).
fn error_from(status: u16, body: &[u8]) -> ApiError {
    serde_json::from_slice(body).unwrap_or_else(|_| {
        ApiError::new(
            ErrorCode::from_http_status(status),
            format!("HTTP {status}: {}", String::from_utf8_lossy(body).trim()),
        )
    })
}
