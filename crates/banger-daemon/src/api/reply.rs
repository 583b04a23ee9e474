//! Plain (non-streamed) answers: a command's reply as one JSON response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use banger_api::ErrorCode;
use std::sync::Arc;

use banger_core::{Command, Core, Reply};

use super::error::{ApiResult, ErrorResponse};

/// Runs `cmd` as a daemon task and answers with its outcome. A client
/// that goes away does not stop it (a `vm stop` or `vm delete` half
/// done would leave the VM in between).
pub(crate) async fn exec(core: &Arc<Core>, cmd: Command) -> ApiResult {
    core.check(&cmd)?;
    let outcome = core.launch(cmd).await.outcome().await;
    match &*outcome {
        Ok(reply) => Ok(reply_response(reply.clone())),
        Err(e) => Err(e.into()),
    }
}

fn reply_response(reply: Reply) -> Response {
    match reply {
        Reply::Status(s) => axum::Json(s).into_response(),
        Reply::ShuttingDown => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({"shutting_down": true})),
        )
            .into_response(),
        Reply::Doctor(d) => axum::Json(d).into_response(),
        Reply::Vms(v) => axum::Json(v).into_response(),
        Reply::Vm(v) | Reply::Deleted(v) => axum::Json(v).into_response(),
        Reply::Logs(text) => text.into_response(),
        Reply::Ssh(info) => axum::Json(info).into_response(),
        Reply::Attached(_) => ErrorResponse::new(
            ErrorCode::Internal,
            "an agent connection can only be answered by an upgrade",
        )
        .into_response(),
        Reply::Snapshots(s) => axum::Json(s).into_response(),
        Reply::Snapshot(s) => axum::Json(s).into_response(),
        Reply::Kernels(k) => axum::Json(k).into_response(),
        Reply::Kernel(k) => axum::Json(k).into_response(),
        Reply::Images(i) => axum::Json(i).into_response(),
        Reply::Image(i) => axum::Json(i).into_response(),
        Reply::Warmed(w) => axum::Json(w).into_response(),
    }
}

/// A reply as the `value` of a stream's final `result` event.
pub(crate) fn reply_value(reply: Reply) -> Result<serde_json::Value, serde_json::Error> {
    match reply {
        Reply::Status(s) => serde_json::to_value(s),
        Reply::ShuttingDown => Ok(serde_json::json!({"shutting_down": true})),
        Reply::Doctor(d) => serde_json::to_value(d),
        Reply::Vms(v) => serde_json::to_value(v),
        Reply::Vm(v) | Reply::Deleted(v) => serde_json::to_value(v),
        Reply::Logs(text) => Ok(serde_json::Value::String(text)),
        Reply::Ssh(info) => serde_json::to_value(info),
        Reply::Attached(_) => Ok(serde_json::Value::Null),
        Reply::Snapshots(s) => serde_json::to_value(s),
        Reply::Snapshot(s) => serde_json::to_value(s),
        Reply::Kernels(k) => serde_json::to_value(k),
        Reply::Kernel(k) => serde_json::to_value(k),
        Reply::Images(i) => serde_json::to_value(i),
        Reply::Image(i) => serde_json::to_value(i),
        Reply::Warmed(w) => serde_json::to_value(w),
    }
}
