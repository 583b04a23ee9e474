//! Daemon-level status.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `GET /v1/daemon/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    pub state_dir: String,
    pub runtime_dir: String,
    pub socket: String,
    pub log_file: String,
    pub vm_count: u64,
}
