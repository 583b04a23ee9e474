//! `/v1/operations`: the long commands in flight, watched or cancelled by
//! id from any client.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use banger_api::ErrorCode;
use banger_api::operation::OperationId;
use banger_core::Core;

use super::error::{ApiResult, ErrorResponse};
use super::stream::watched;

fn operation_id(raw: &str) -> Result<OperationId, ErrorResponse> {
    raw.parse()
        .map_err(|e: banger_api::operation::BadOperationId| {
            ErrorResponse::new(ErrorCode::InvalidArgument, e.to_string())
        })
}

pub(crate) async fn operation_list(State(core): State<Arc<Core>>) -> ApiResult {
    Ok(axum::Json(core.operations_list()).into_response())
}

/// The operation's stream from its first stage on, as its own client
/// sees it.
pub(crate) async fn operation_watch(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> ApiResult {
    let op = core.operation_watch(&operation_id(&id)?)?;
    Ok(watched(op))
}

pub(crate) async fn operation_cancel(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> ApiResult {
    let info = core.operation_cancel(&operation_id(&id)?)?;
    Ok(axum::Json(info).into_response())
}
