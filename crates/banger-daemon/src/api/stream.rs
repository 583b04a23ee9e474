//! Streamed answers: NDJSON progress events, then one result or error.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use banger_api::event::StreamEvent;
use banger_api::{ApiError, ErrorCode, NDJSON};
use banger_core::{Command, Core, CoreError, ProgressSink, Reply};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::error::to_api_error;
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
fn last_event(outcome: Result<Reply, CoreError>) -> Event {
    match outcome {
        Ok(reply) => match reply_value(reply) {
            Ok(value) => Event::Result { value },
            Err(e) => Event::Error(ApiError::new(
                ErrorCode::Internal,
                format!("the operation finished but its result could not be encoded: {e}"),
            )),
        },
        Err(e) => Event::Error(to_api_error(&e)),
    }
}

/// Runs `cmd` and answers with an NDJSON stream of progress events and a
/// final result or error. If the client disconnects, the command's future
/// is dropped: the operation is cancelled, and the core's own cleanup on
/// drop (locks, temp dirs) runs.
pub(crate) fn streamed(core: Arc<Core>, cmd: Command) -> Response {
    let (line_tx, line_rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let lines = Lines { tx: line_tx };
        let (sink, mut progress) = ProgressSink::channel();
        let fut = core.execute(cmd, &sink);
        tokio::pin!(fut);
        let outcome = loop {
            tokio::select! {
                res = &mut fut => break Some(res),
                Some(p) = progress.recv() => {
                    if lines.send(&Event::Progress(p)) == Sent::Closed {
                        break None;
                    }
                }
                () = lines.tx.closed() => break None,
            }
        };
        let Some(outcome) = outcome else {
            tracing::info!("client went away; operation cancelled");
            return;
        };
        while let Ok(p) = progress.try_recv() {
            if lines.send(&Event::Progress(p)) == Sent::Closed {
                return;
            }
        }
        lines.send(&last_event(outcome));
    });
    let body = Body::from_stream(UnboundedReceiverStream::new(line_rx).map(Ok::<_, Infallible>));
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    resp
}
