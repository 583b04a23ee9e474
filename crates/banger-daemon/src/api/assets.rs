//! Kernel and image routes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use banger_api::asset::{
    ImageBuildRequest, ImageImportRequest, KernelAddRequest, KernelImportRequest,
};
use banger_core::{Command, Core};

use super::error::ApiResult;
use super::reply::exec;
use super::request::{ForceQuery, VerifyQuery, asset_name, bad_query, parse_body};
use super::stream::streamed;

pub(crate) async fn kernel_list(State(core): State<Arc<Core>>) -> ApiResult {
    exec(&core, Command::KernelList).await
}

pub(crate) async fn kernel_show(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
    query: Result<Query<VerifyQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = query.map_err(bad_query)?;
    let cmd = Command::KernelShow {
        name: asset_name(&name)?,
        verify: q.verify.0,
    };
    exec(&core, cmd).await
}

pub(crate) async fn kernel_rm(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
    query: Result<Query<ForceQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = query.map_err(bad_query)?;
    let cmd = Command::KernelRm {
        name: asset_name(&name)?,
        force: q.force.0,
    };
    exec(&core, cmd).await
}

pub(crate) async fn kernel_import(State(core): State<Arc<Core>>, body: Bytes) -> ApiResult {
    let req: KernelImportRequest = parse_body(&body)?;
    streamed(core, Command::KernelImport(req)).await
}

pub(crate) async fn kernel_add(State(core): State<Arc<Core>>, body: Bytes) -> ApiResult {
    let req: KernelAddRequest = parse_body(&body)?;
    streamed(core, Command::KernelAdd(req)).await
}

pub(crate) async fn image_list(State(core): State<Arc<Core>>) -> ApiResult {
    exec(&core, Command::ImageList).await
}

pub(crate) async fn image_show(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
    query: Result<Query<VerifyQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = query.map_err(bad_query)?;
    let cmd = Command::ImageShow {
        name: asset_name(&name)?,
        verify: q.verify.0,
    };
    exec(&core, cmd).await
}

pub(crate) async fn image_rm(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
    query: Result<Query<ForceQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = query.map_err(bad_query)?;
    let cmd = Command::ImageRm {
        name: asset_name(&name)?,
        force: q.force.0,
    };
    exec(&core, cmd).await
}

/// Streamed: making a template boots a VM.
pub(crate) async fn image_warm(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let name = asset_name(&name)?;
    let request: banger_api::snapshot::WarmImageRequest = parse_body(&body)?;
    streamed(core, Command::ImageWarm { name, request }).await
}

pub(crate) async fn image_build(State(core): State<Arc<Core>>, body: Bytes) -> ApiResult {
    let req: ImageBuildRequest = parse_body(&body)?;
    streamed(core, Command::ImageBuild(req)).await
}

pub(crate) async fn image_import(State(core): State<Arc<Core>>, body: Bytes) -> ApiResult {
    let req: ImageImportRequest = parse_body(&body)?;
    streamed(core, Command::ImageImport(req)).await
}
