//! The daemon's own routes: status, shutdown, host doctor.

use std::sync::Arc;

use axum::extract::State;
use banger_core::{Command, Core};

use super::error::ApiResult;
use super::reply::exec;

pub(crate) async fn daemon_status(State(core): State<Arc<Core>>) -> ApiResult {
    exec(&core, Command::DaemonStatus).await
}

pub(crate) async fn daemon_shutdown(State(core): State<Arc<Core>>) -> ApiResult {
    exec(&core, Command::Shutdown).await
}

pub(crate) async fn doctor(State(core): State<Arc<Core>>) -> ApiResult {
    exec(&core, Command::Doctor).await
}
