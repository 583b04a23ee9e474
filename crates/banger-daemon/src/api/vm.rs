//! VM routes; `attach` upgrades the connection to the guest agent's.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use banger_api::ErrorCode;
use banger_api::vm::{ATTACH_UPGRADE, AttachRequest, CreateVmRequest, SetVmRequest};
use banger_core::{Command, Core, ProgressSink, Reply};

use super::error::{ApiResult, ErrorResponse};
use super::reply::exec;
use super::request::{LinesQuery, bad_query, parse_body, parse_json, vm_ref};
use super::stream::streamed;

pub(crate) async fn vm_list(State(core): State<Arc<Core>>) -> ApiResult {
    exec(&core, Command::VmList).await
}

pub(crate) async fn vm_create(State(core): State<Arc<Core>>, body: Bytes) -> ApiResult {
    let req: CreateVmRequest = parse_body(&body)?;
    streamed(core, Command::VmCreate(req)).await
}

pub(crate) async fn vm_show(State(core): State<Arc<Core>>, Path(vm): Path<String>) -> ApiResult {
    exec(&core, Command::VmShow { vm: vm_ref(&vm)? }).await
}

pub(crate) async fn vm_set(
    State(core): State<Arc<Core>>,
    Path(vm): Path<String>,
    body: Bytes,
) -> ApiResult {
    let vm = vm_ref(&vm)?;
    let changes: SetVmRequest = parse_body(&body)?;
    exec(&core, Command::VmSet { vm, changes }).await
}

pub(crate) async fn vm_delete(State(core): State<Arc<Core>>, Path(vm): Path<String>) -> ApiResult {
    exec(&core, Command::VmDelete { vm: vm_ref(&vm)? }).await
}

pub(crate) async fn vm_start(State(core): State<Arc<Core>>, Path(vm): Path<String>) -> ApiResult {
    streamed(core, Command::VmStart { vm: vm_ref(&vm)? }).await
}

pub(crate) async fn vm_stop(State(core): State<Arc<Core>>, Path(vm): Path<String>) -> ApiResult {
    exec(&core, Command::VmStop { vm: vm_ref(&vm)? }).await
}

pub(crate) async fn vm_kill(State(core): State<Arc<Core>>, Path(vm): Path<String>) -> ApiResult {
    exec(&core, Command::VmKill { vm: vm_ref(&vm)? }).await
}

pub(crate) async fn vm_logs(
    State(core): State<Arc<Core>>,
    Path(vm): Path<String>,
    query: Result<Query<LinesQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = query.map_err(bad_query)?;
    let lines = q.checked()?;
    exec(
        &core,
        Command::VmLogs {
            vm: vm_ref(&vm)?,
            lines,
        },
    )
    .await
}

pub(crate) async fn vm_ssh(State(core): State<Arc<Core>>, Path(vm): Path<String>) -> ApiResult {
    exec(&core, Command::VmSsh { vm: vm_ref(&vm)? }).await
}

/// `vm exec` / `vm cp`: checks and sends the request to the guest agent,
/// then answers `101 Switching Protocols` and splices the client's
/// connection onto the agent's. Errors before that are ordinary JSON
/// answers, so a client always learns why an attach was refused.
pub(crate) async fn vm_attach(
    State(core): State<Arc<Core>>,
    Path(vm): Path<String>,
    mut req: axum::extract::Request,
) -> ApiResult {
    let vm = vm_ref(&vm)?;
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(ATTACH_UPGRADE));
    if !upgrade {
        return Err(ErrorResponse::new(
            ErrorCode::MalformedRequest,
            format!(
                "attach is a protocol upgrade: send `Connection: Upgrade` and `Upgrade: {ATTACH_UPGRADE}`"
            ),
        ));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .map_err(|e| {
            ErrorResponse::new(
                ErrorCode::MalformedRequest,
                format!("reading the request body: {e}"),
            )
        })?;
    let request: AttachRequest = parse_json(&body)?;
    let reply = core
        .execute(Command::VmAttach { vm, request }, &ProgressSink::discard())
        .await?;
    let Some(mut agent) = (match reply {
        Reply::Attached(conn) => conn.take(),
        _ => None,
    }) else {
        return Err(ErrorResponse::new(
            ErrorCode::Internal,
            "attach produced no agent connection",
        ));
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut client = hyper_util::rt::TokioIo::new(upgraded);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut agent).await {
                    tracing::debug!(error = %e, "attach connection ended");
                }
            }
            Err(e) => tracing::warn!(error = %e, "attach upgrade failed"),
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(ATTACH_UPGRADE));
    Ok(resp)
}
