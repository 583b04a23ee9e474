//! Streamed answers: NDJSON progress events, then one result or error.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use banger_api::event::StreamEvent;
use banger_api::operation::OPERATION_HEADER;
use banger_api::{ApiError, ErrorCode, NDJSON};
use banger_core::operations::{OperationEvent, OperationWatch};
use banger_core::{Command, Core, CoreError, Reply};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::error::{ApiResult, to_api_error};
use super::reply::reply_value;

type Event = StreamEvent<serde_json::Value>;

/// Whether the stream can take more lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Open,
    /// The client went away, or an event could not be encoded and the
    /// stream was ended with an error event in its place.
    Closed,
}

/// The stream's lines, one encoded event each.
struct Lines {
    tx: mpsc::UnboundedSender<Bytes>,
}

impl Lines {
    fn send(&self, ev: &Event) -> Sent {
        match encode(ev) {
            Ok(line) => self.push(line),
            Err(e) => {
                // Never an empty or partial line: the client would read it
                // as a broken stream. Say why, then end the stream.
                tracing::error!(error = %e, "cannot encode a stream event; ending the stream");
                let failure = Event::Error(ApiError::new(
                    ErrorCode::Internal,
                    format!("the daemon could not encode a stream event: {e}"),
                ));
                if let Ok(line) = encode(&failure) {
                    self.push(line);
                }
                Sent::Closed
            }
        }
    }

    fn push(&self, line: Bytes) -> Sent {
        if self.tx.send(line).is_ok() {
            Sent::Open
        } else {
            Sent::Closed
        }
    }
}

fn encode(ev: &Event) -> Result<Bytes, serde_json::Error> {
    let mut line = serde_json::to_vec(ev)?;
    line.push(b'\n');
    Ok(Bytes::from(line))
}

/// The event that ends a stream.
fn last_event(outcome: &Result<Reply, CoreError>) -> Event {
    match outcome {
        Ok(reply) => match reply_value(reply.clone()) {
            Ok(value) => Event::Result { value },
            Err(e) => Event::Error(ApiError::new(
                ErrorCode::Internal,
                format!("the operation finished but its result could not be encoded: {e}"),
            )),
        },
        Err(e) => Event::Error(to_api_error(e)),
    }
}

/// Runs `cmd` as a daemon task and answers with an NDJSON stream of its
/// progress events and a final result or error. The stream only watches:
/// a client that goes away leaves the operation running to its end (and
/// a later `vm start` of the same VM watches it too). What is wrong on
/// the request's face is answered before, as a 400.
pub(crate) async fn streamed(core: Arc<Core>, cmd: Command) -> ApiResult {
    core.check(&cmd)?;
    let op = core.launch(cmd).await;
    Ok(watched(op))
}

/// The stream of `op` from its first stage on, with its id in the
/// [`OPERATION_HEADER`] (by which the client can cancel it).
pub(crate) fn watched(mut op: OperationWatch) -> Response {
    let id = op.id.clone();
    let (line_tx, line_rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let lines = Lines { tx: line_tx };
        loop {
            // A client that goes away is noticed at once, not at the next
            // line; the operation goes on.
            let ev = tokio::select! {
                ev = op.next() => ev,
                () = lines.tx.closed() => None,
            };
            let Some(ev) = ev else {
                return;
            };
            let ev = match ev {
                OperationEvent::Progress(p) => Event::Progress(p),
                OperationEvent::Done(outcome) => last_event(&outcome),
            };
            if lines.send(&ev) == Sent::Closed {
                return;
            }
        }
    });
    let body = Body::from_stream(UnboundedReceiverStream::new(line_rx).map(Ok::<_, Infallible>));
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    if let Some(id) = id.and_then(|id| HeaderValue::from_str(id.as_str()).ok()) {
        resp.headers_mut().insert(OPERATION_HEADER, id);
    }
    resp
}
