//! `POST /v1/leases`: a lease held for as long as the connection is open.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use banger_api::NDJSON;
use banger_api::vm::LeaseEvent;
use banger_core::Core;
use futures_util::StreamExt;

use super::error::{ApiResult, ErrorResponse};

/// The body says which lease, then never ends on its own; hyper drops it
/// when the client's connection closes, and the lease (held by the body)
/// ends with it.
pub(crate) async fn lease_hold(State(core): State<Arc<Core>>) -> ApiResult {
    let lease = core.hold_lease();
    let mut line = serde_json::to_vec(&LeaseEvent::Held {
        lease: lease.id().to_owned(),
    })
    .map_err(|e| {
        ErrorResponse::new(
            banger_api::ErrorCode::Internal,
            format!("encoding the lease: {e}"),
        )
    })?;
    line.push(b'\n');
    let body = futures_util::stream::once(async move { Ok::<_, Infallible>(Bytes::from(line)) })
        .chain(futures_util::stream::pending())
        .map(move |chunk| {
            let _held = &lease;
            chunk
        });
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    Ok(resp)
}
