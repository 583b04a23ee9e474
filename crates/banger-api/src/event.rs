//! Events of a streamed (NDJSON) response.
//!
//! A long operation answers `200` with `Content-Type: application/x-ndjson`
//! and writes one event per line: any number of `progress` events, then
//! exactly one `result` or `error`. A stream that ends without one of those
//! two means the daemon died mid-operation.

use serde::{Deserialize, Serialize};

use crate::ApiError;

/// A step of a long operation, for progress bars and spinners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Stable identifier of the step (`"persist"`, `"download"`, ...).
    pub stage: String,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Completed fraction in `0.0..=1.0` where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// Bytes done / total where the step moves bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<(u64, u64)>,
}

impl Progress {
    pub fn stage(stage: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            stage: stage.into(),
            detail: detail.into(),
            fraction: None,
            bytes: None,
        }
    }
}

/// One line of an NDJSON response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StreamEvent<T> {
    Progress(Progress),
    Result { value: T },
    Error(ApiError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn events_are_internally_tagged() {
        let p: StreamEvent<u32> = StreamEvent::Progress(Progress::stage("persist", "saving"));
        assert_eq!(
            serde_json::to_string(&p).expect("ser"),
            r#"{"event":"progress","stage":"persist","detail":"saving"}"#
        );
        let r: StreamEvent<u32> = StreamEvent::Result { value: 7 };
        assert_eq!(
            serde_json::to_string(&r).expect("ser"),
            r#"{"event":"result","value":7}"#
        );
        let e: StreamEvent<u32> =
            serde_json::from_str(r#"{"event":"error","code":"not_found","message":"x"}"#)
                .expect("de");
        assert_eq!(
            e,
            StreamEvent::Error(ApiError::new(ErrorCode::NotFound, "x"))
        );
    }
}
