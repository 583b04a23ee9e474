//! The error body every failing request returns.

use serde::{Deserialize, Serialize};

/// Machine-readable error class. Clients branch on this, humans read
/// [`ApiError::message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was well-formed but a value in it is not acceptable.
    InvalidArgument,
    /// The request body or path could not be parsed at all.
    MalformedRequest,
    /// The named object does not exist.
    NotFound,
    /// The object already exists (name clash).
    Conflict,
    /// The object's current state does not allow the operation.
    InvalidState,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// The daemon is shutting down or a dependency is missing on the host.
    Unavailable,
    /// The operation ran and failed (a build step, a corrupt asset); the
    /// message says which step and why.
    Failed,
    /// A bug or an unexpected host failure; the daemon log has details.
    Internal,
    /// The caller is not the daemon's user (nor root).
    PermissionDenied,
    /// The request body is over the daemon's limit.
    TooLarge,
    /// The operation was cancelled (`banger operation cancel`, a Ctrl-C,
    /// or a `vm kill` of a VM being started).
    Cancelled,
}

impl ErrorCode {
    /// The HTTP status the daemon answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidArgument | Self::MalformedRequest => 400,
            Self::PermissionDenied => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict | Self::InvalidState | Self::Cancelled => 409,
            Self::TooLarge => 413,
            Self::Unavailable => 503,
            Self::Failed | Self::Internal => 500,
        }
    }

    /// Best-effort inverse of [`Self::http_status`], used when a response
    /// carries no parseable body (a proxy, a crash mid-response).
    pub fn from_http_status(status: u16) -> Self {
        match status {
            400 => Self::InvalidArgument,
            403 => Self::PermissionDenied,
            404 => Self::NotFound,
            405 => Self::MethodNotAllowed,
            409 => Self::Conflict,
            413 => Self::TooLarge,
            503 => Self::Unavailable,
            _ => Self::Internal,
        }
    }
}

/// `{ "code": "...", "message": "..." }`, the body of every non-2xx answer
/// and the payload of a streamed `error` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping_round_trips_for_distinct_statuses() {
        for code in [
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
            ErrorCode::TooLarge,
        ] {
            assert_eq!(ErrorCode::from_http_status(code.http_status()), code);
        }
        assert_eq!(ErrorCode::Conflict.http_status(), 409);
        assert_eq!(ErrorCode::InvalidState.http_status(), 409);
        assert_eq!(ErrorCode::MalformedRequest.http_status(), 400);
    }

    #[test]
    fn error_body_shape_is_code_and_message() {
        let e = ApiError::new(ErrorCode::InvalidState, "vm is running");
        let v = serde_json::to_value(&e).expect("serialize");
        assert_eq!(
            v,
            serde_json::json!({"code": "invalid_state", "message": "vm is running"})
        );
    }
}
