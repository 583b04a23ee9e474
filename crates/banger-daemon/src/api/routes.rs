//! The route table, who may call it, and what unknown routes get.

use std::sync::Arc;

use axum::Router;
use axum::http::{Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use banger_api::ErrorCode;
use banger_core::Core;

use super::assets::{
    image_build, image_import, image_list, image_rm, image_show, image_warm, kernel_add,
    kernel_import, kernel_list, kernel_rm, kernel_show,
};
use super::daemon::{daemon_shutdown, daemon_status, doctor};
use super::error::ErrorResponse;
use super::lease::lease_hold;
use super::operations::{operation_cancel, operation_list, operation_watch};
use super::snapshot::{
    snapshot_list, snapshot_rm, snapshot_show, vm_fork, vm_pause, vm_resume, vm_snapshot,
};
use super::vm::{
    vm_attach, vm_create, vm_delete, vm_kill, vm_list, vm_logs, vm_set, vm_show, vm_ssh, vm_start,
    vm_stop,
};

/// Builds the router over a shared core.
pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/v1/daemon/status", get(daemon_status))
        .route("/v1/daemon/shutdown", post(daemon_shutdown))
        .route("/v1/host/doctor", get(doctor))
        .route("/v1/leases", post(lease_hold))
        .route("/v1/operations", get(operation_list))
        .route("/v1/operations/{id}", get(operation_watch))
        .route("/v1/operations/{id}/cancel", post(operation_cancel))
        .route("/v1/vms", get(vm_list).post(vm_create))
        .route("/v1/vms/{vm}", get(vm_show).patch(vm_set).delete(vm_delete))
        .route("/v1/vms/{vm}/start", post(vm_start))
        .route("/v1/vms/{vm}/stop", post(vm_stop))
        .route("/v1/vms/{vm}/kill", post(vm_kill))
        .route("/v1/vms/{vm}/logs", get(vm_logs))
        .route("/v1/vms/{vm}/attach", post(vm_attach))
        .route("/v1/vms/{vm}/ssh", get(vm_ssh))
        .route("/v1/vms/{vm}/pause", post(vm_pause))
        .route("/v1/vms/{vm}/resume", post(vm_resume))
        .route("/v1/vms/{vm}/snapshot", post(vm_snapshot))
        .route("/v1/vms/{vm}/fork", post(vm_fork))
        .route("/v1/snapshots", get(snapshot_list))
        .route(
            "/v1/snapshots/{name}",
            get(snapshot_show).delete(snapshot_rm),
        )
        .route("/v1/kernels", get(kernel_list))
        .route("/v1/kernels/import", post(kernel_import))
        .route("/v1/kernels/add", post(kernel_add))
        .route("/v1/kernels/{name}", get(kernel_show).delete(kernel_rm))
        .route("/v1/images", get(image_list))
        .route("/v1/images/build", post(image_build))
        .route("/v1/images/import", post(image_import))
        .route("/v1/images/{name}", get(image_show).delete(image_rm))
        .route("/v1/images/{name}/warm", post(image_warm))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(only_our_user))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(core)
}

/// Who is on the other end of a connection (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: Option<u32>,
}

/// The socket is 0600, and on top of that every request is checked: only
/// the daemon's own user and root may drive it. (Requests that did not
/// come through a socket, as in in-process tests, carry no peer.)
async fn only_our_user(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<Peer>>()
        .map(|c| c.0);
    if let Some(Peer { uid }) = peer {
        let ours = nix::unistd::geteuid().as_raw();
        if uid != Some(ours) && uid != Some(0) {
            tracing::warn!(?uid, "refused a request from another user");
            return ErrorResponse::new(
                ErrorCode::PermissionDenied,
                format!(
                    "bangerd serves uid {ours} only; this request came from uid {}",
                    uid.map_or_else(|| "unknown".to_owned(), |u| u.to_string())
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// The largest request body: far over any real request (a create is a
/// few hundred bytes); one over it is answered 413.
pub const MAX_BODY: usize = 1 << 20;

/// Every error answer carries banger's `{code, message}`, including the
/// ones axum's extractors make in plain text (a body over [`MAX_BODY`]).
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let text = axum::body::to_bytes(resp.into_body(), 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let code = ErrorCode::from_http_status(status.as_u16());
    let message = match code {
        ErrorCode::TooLarge => format!("request body over {MAX_BODY} bytes: {text}"),
        _ => text,
    };
    let mut fixed = ErrorResponse::new(code, message).into_response();
    *fixed.status_mut() = status;
    fixed
}

async fn no_route(method: Method, uri: Uri) -> ErrorResponse {
    ErrorResponse::new(
        ErrorCode::NotFound,
        format!(
            "no route {method} {}; this daemon serves {}/... (is the client newer than the daemon?)",
            uri.path(),
            banger_api::API_PREFIX
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ErrorResponse {
    ErrorResponse::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
