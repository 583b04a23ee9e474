//! Snapshot routes, and the VM routes that make or use snapshots (pause,
//! resume, snapshot, fork).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use banger_api::snapshot::{ForkVmRequest, SnapshotVmRequest};
use banger_core::{Command, Core};

use super::error::ApiResult;
use super::reply::exec;
use super::request::{parse_body, snapshot_ref, vm_ref};
use super::stream::streamed;

pub(crate) async fn vm_pause(State(core): State<Arc<Core>>, Path(vm): Path<String>) -> ApiResult {
    exec(&core, Command::VmPause { vm: vm_ref(&vm)? }).await
}

pub(crate) async fn vm_resume(State(core): State<Arc<Core>>, Path(vm): Path<String>) -> ApiResult {
    exec(&core, Command::VmResume { vm: vm_ref(&vm)? }).await
}

/// Streamed: saving memory and disks takes seconds.
pub(crate) async fn vm_snapshot(
    State(core): State<Arc<Core>>,
    Path(vm): Path<String>,
    body: Bytes,
) -> ApiResult {
    let vm = vm_ref(&vm)?;
    let request: SnapshotVmRequest = parse_body(&body)?;
    streamed(core, Command::VmSnapshot { vm, request }).await
}

pub(crate) async fn vm_fork(
    State(core): State<Arc<Core>>,
    Path(vm): Path<String>,
    body: Bytes,
) -> ApiResult {
    let vm = vm_ref(&vm)?;
    let request: ForkVmRequest = parse_body(&body)?;
    streamed(core, Command::VmFork { vm, request }).await
}

pub(crate) async fn snapshot_list(State(core): State<Arc<Core>>) -> ApiResult {
    exec(&core, Command::SnapshotList).await
}

pub(crate) async fn snapshot_show(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
) -> ApiResult {
    exec(
        &core,
        Command::SnapshotShow {
            name: snapshot_ref(&name)?,
        },
    )
    .await
}

pub(crate) async fn snapshot_rm(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
) -> ApiResult {
    exec(
        &core,
        Command::SnapshotRm {
            name: snapshot_ref(&name)?,
        },
    )
    .await
}
