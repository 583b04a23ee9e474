//! Core errors in their wire form.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use banger_api::{ApiError, ErrorCode};
use banger_core::CoreError;
use banger_core::lifecycle::LifecycleError;

/// Maps a core error to its wire form.
pub fn to_api_error(e: &CoreError) -> ApiError {
    let code = match e {
        CoreError::VmNotFound(_) | CoreError::SnapshotNotFound(_) => ErrorCode::NotFound,
        CoreError::NameTaken(_) | CoreError::SnapshotNameTaken(_) => ErrorCode::Conflict,
        CoreError::SnapshotInUse { .. } | CoreError::NotSnapshottable { .. } => {
            ErrorCode::InvalidState
        }
        CoreError::InvalidArgument(_) => ErrorCode::InvalidArgument,
        CoreError::Lifecycle(LifecycleError::ActionRefused { .. }) => ErrorCode::InvalidState,
        CoreError::Lifecycle(LifecycleError::IllegalTransition { .. }) => ErrorCode::Internal,
        CoreError::Unavailable(_) | CoreError::ShuttingDown | CoreError::Agent { .. } => {
            ErrorCode::Unavailable
        }
        CoreError::Cancelled { .. } => ErrorCode::Cancelled,
        CoreError::OperationNotFound(_) => ErrorCode::NotFound,
        CoreError::NotCancellable { .. } => ErrorCode::InvalidState,
        CoreError::AssetNotFound { .. } => ErrorCode::NotFound,
        CoreError::AssetNameTaken { .. } => ErrorCode::Conflict,
        CoreError::AssetInUse { .. } => ErrorCode::InvalidState,
        CoreError::AssetBuild(_)
        | CoreError::AssetCorrupt(_)
        | CoreError::StartFailed { .. }
        | CoreError::Host(_)
        | CoreError::Cleanup(_)
        | CoreError::Reconcile(_) => ErrorCode::Failed,
        CoreError::Handles(_) | CoreError::Store(_) | CoreError::Internal(_) => ErrorCode::Internal,
    };
    if code == ErrorCode::Internal {
        tracing::error!(error = %e, "request failed");
    }
    ApiError::new(code, e.to_string())
}

/// An error response: status from the code, JSON body.
#[derive(Debug)]
pub struct ErrorResponse(pub ApiError);

impl ErrorResponse {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(ApiError::new(code, message))
    }
}

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.0)).into_response()
    }
}

impl From<CoreError> for ErrorResponse {
    fn from(e: CoreError) -> Self {
        Self(to_api_error(&e))
    }
}

impl From<&CoreError> for ErrorResponse {
    fn from(e: &CoreError) -> Self {
        Self(to_api_error(e))
    }
}

pub(crate) type ApiResult = Result<Response, ErrorResponse>;
