//! HTTP routes: request → [`Command`] → response.
//!
//! Bodies are parsed here with serde directly (not axum's `Json`
//! extractor) so that every malformed request gets banger's
//! `{code, message}` body, naming the offending field.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use banger_api::asset::{
    ImageBuildRequest, ImageImportRequest, KernelAddRequest, KernelImportRequest,
};
use banger_api::event::StreamEvent;
use banger_api::name::validate_name;
use banger_api::vm::{ATTACH_UPGRADE, AttachRequest, CreateVmRequest, SetVmRequest};
use banger_api::{ApiError, ErrorCode, NDJSON};
use banger_core::lifecycle::LifecycleError;
use banger_core::{Command, Core, CoreError, ProgressSink, Reply};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// Builds the router over a shared core.
pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/v1/daemon/status", get(daemon_status))
        .route("/v1/daemon/shutdown", axum::routing::post(daemon_shutdown))
        .route("/v1/host/doctor", get(doctor))
        .route("/v1/vms", get(vm_list).post(vm_create))
        .route("/v1/vms/{vm}", get(vm_show).patch(vm_set).delete(vm_delete))
        .route("/v1/vms/{vm}/start", axum::routing::post(vm_start))
        .route("/v1/vms/{vm}/stop", axum::routing::post(vm_stop))
        .route("/v1/vms/{vm}/kill", axum::routing::post(vm_kill))
        .route("/v1/vms/{vm}/logs", get(vm_logs))
        .route("/v1/vms/{vm}/attach", axum::routing::post(vm_attach))
        .route("/v1/vms/{vm}/ssh", get(vm_ssh))
        .route("/v1/kernels", get(kernel_list))
        .route("/v1/kernels/import", axum::routing::post(kernel_import))
        .route("/v1/kernels/add", axum::routing::post(kernel_add))
        .route("/v1/kernels/{name}", get(kernel_show).delete(kernel_rm))
        .route("/v1/images", get(image_list))
        .route("/v1/images/build", axum::routing::post(image_build))
        .route("/v1/images/import", axum::routing::post(image_import))
        .route("/v1/images/{name}", get(image_show).delete(image_rm))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(only_our_user))
        .with_state(core)
}

/// Who is on the other end of a connection (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: Option<u32>,
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        Self {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
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
            return ErrorResponse(ApiError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "bangerd serves uid {ours} only; this request came from uid {}",
                    uid.map_or_else(|| "unknown".to_owned(), |u| u.to_string())
                ),
            ))
            .into_response();
        }
    }
    next.run(req).await
}

/// Maps a core error to its wire form.
pub fn to_api_error(e: &CoreError) -> ApiError {
    let code = match e {
        CoreError::VmNotFound(_) => ErrorCode::NotFound,
        CoreError::NameTaken(_) => ErrorCode::Conflict,
        CoreError::InvalidArgument(_) => ErrorCode::InvalidArgument,
        CoreError::Lifecycle(LifecycleError::ActionRefused { .. }) => ErrorCode::InvalidState,
        CoreError::Lifecycle(LifecycleError::IllegalTransition { .. }) => ErrorCode::Internal,
        CoreError::Unavailable(_) | CoreError::ShuttingDown | CoreError::Agent { .. } => {
            ErrorCode::Unavailable
        }
        CoreError::AssetNotFound { .. } => ErrorCode::NotFound,
        CoreError::AssetNameTaken { .. } => ErrorCode::Conflict,
        CoreError::AssetInUse { .. } => ErrorCode::InvalidState,
        CoreError::AssetBuild(_)
        | CoreError::AssetCorrupt(_)
        | CoreError::StartFailed { .. }
        | CoreError::Host(_)
        | CoreError::Cleanup(_) => ErrorCode::Failed,
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

type ApiResult = Result<Response, ErrorResponse>;

fn parse_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ErrorResponse> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ErrorResponse(ApiError::new(
            ErrorCode::MalformedRequest,
            format!("request body is not valid: {e}"),
        ))
    })
}

fn vm_ref(raw: &str) -> Result<String, ErrorResponse> {
    validate_name(raw).map_err(|e| {
        ErrorResponse(ApiError::new(
            ErrorCode::InvalidArgument,
            format!("vm reference: {e}"),
        ))
    })?;
    Ok(raw.to_owned())
}

async fn exec(core: &Core, cmd: Command) -> ApiResult {
    let reply = core.execute(cmd, &ProgressSink::discard()).await?;
    Ok(reply_response(reply))
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
        Reply::Attached(_) => ErrorResponse(ApiError::new(
            ErrorCode::Internal,
            "an agent connection can only be answered by an upgrade",
        ))
        .into_response(),
        Reply::Kernels(k) => axum::Json(k).into_response(),
        Reply::Kernel(k) => axum::Json(k).into_response(),
        Reply::Images(i) => axum::Json(i).into_response(),
        Reply::Image(i) => axum::Json(i).into_response(),
    }
}

fn reply_value(reply: Reply) -> serde_json::Value {
    let v = match reply {
        Reply::Status(s) => serde_json::to_value(s),
        Reply::ShuttingDown => Ok(serde_json::json!({"shutting_down": true})),
        Reply::Doctor(d) => serde_json::to_value(d),
        Reply::Vms(v) => serde_json::to_value(v),
        Reply::Vm(v) | Reply::Deleted(v) => serde_json::to_value(v),
        Reply::Logs(text) => Ok(serde_json::Value::String(text)),
        Reply::Ssh(info) => serde_json::to_value(info),
        Reply::Attached(_) => Ok(serde_json::Value::Null),
        Reply::Kernels(k) => serde_json::to_value(k),
        Reply::Kernel(k) => serde_json::to_value(k),
        Reply::Images(i) => serde_json::to_value(i),
        Reply::Image(i) => serde_json::to_value(i),
    };
    v.unwrap_or(serde_json::Value::Null)
}

/// Runs `cmd` and answers with an NDJSON stream of progress events and a
/// final result or error. If the client disconnects, the command's future
/// is dropped: the operation is cancelled, and the core's own cleanup on
/// drop (locks, temp dirs) runs.
fn streamed(core: Arc<Core>, cmd: Command) -> Response {
    let (line_tx, line_rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let (sink, mut progress) = ProgressSink::channel();
        let fut = core.execute(cmd, &sink);
        tokio::pin!(fut);
        let send = |ev: &StreamEvent<serde_json::Value>| {
            let mut line = serde_json::to_vec(ev).unwrap_or_default();
            line.push(b'\n');
            line_tx.send(Bytes::from(line)).is_ok()
        };
        let outcome = loop {
            tokio::select! {
                res = &mut fut => break Some(res),
                Some(p) = progress.recv() => {
                    if !send(&StreamEvent::Progress(p)) {
                        break None;
                    }
                }
                () = line_tx.closed() => break None,
            }
        };
        let Some(outcome) = outcome else {
            tracing::info!("client went away; operation cancelled");
            return;
        };
        while let Ok(p) = progress.try_recv() {
            send(&StreamEvent::Progress(p));
        }
        let last = match outcome {
            Ok(reply) => StreamEvent::Result {
                value: reply_value(reply),
            },
            Err(e) => StreamEvent::Error(to_api_error(&e)),
        };
        send(&last);
    });
    let body = Body::from_stream(UnboundedReceiverStream::new(line_rx).map(Ok::<_, Infallible>));
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    resp
}

async fn daemon_status(State(core): State<Arc<Core>>) -> ApiResult {
    exec(&core, Command::DaemonStatus).await
}

async fn daemon_shutdown(State(core): State<Arc<Core>>) -> ApiResult {
    exec(&core, Command::Shutdown).await
}

async fn doctor(State(core): State<Arc<Core>>) -> ApiResult {
    exec(&core, Command::Doctor).await
}

async fn vm_list(State(core): State<Arc<Core>>) -> ApiResult {
    exec(&core, Command::VmList).await
}

async fn vm_create(State(core): State<Arc<Core>>, body: Bytes) -> ApiResult {
    let req: CreateVmRequest = parse_body(&body)?;
    Ok(streamed(core, Command::VmCreate(req)))
}

async fn vm_show(State(core): State<Arc<Core>>, Path(vm): Path<String>) -> ApiResult {
    exec(&core, Command::VmShow { vm: vm_ref(&vm)? }).await
}

async fn vm_set(State(core): State<Arc<Core>>, Path(vm): Path<String>, body: Bytes) -> ApiResult {
    let vm = vm_ref(&vm)?;
    let changes: SetVmRequest = parse_body(&body)?;
    exec(&core, Command::VmSet { vm, changes }).await
}

async fn vm_delete(State(core): State<Arc<Core>>, Path(vm): Path<String>) -> ApiResult {
    exec(&core, Command::VmDelete { vm: vm_ref(&vm)? }).await
}

async fn vm_start(State(core): State<Arc<Core>>, Path(vm): Path<String>) -> ApiResult {
    Ok(streamed(core, Command::VmStart { vm: vm_ref(&vm)? }))
}

async fn vm_stop(State(core): State<Arc<Core>>, Path(vm): Path<String>) -> ApiResult {
    exec(&core, Command::VmStop { vm: vm_ref(&vm)? }).await
}

async fn vm_kill(State(core): State<Arc<Core>>, Path(vm): Path<String>) -> ApiResult {
    exec(&core, Command::VmKill { vm: vm_ref(&vm)? }).await
}

async fn vm_logs(State(core): State<Arc<Core>>, Path(vm): Path<String>) -> ApiResult {
    exec(&core, Command::VmLogs { vm: vm_ref(&vm)? }).await
}

async fn vm_ssh(State(core): State<Arc<Core>>, Path(vm): Path<String>) -> ApiResult {
    exec(&core, Command::VmSsh { vm: vm_ref(&vm)? }).await
}

/// `vm exec` / `vm cp`: checks and sends the request to the guest agent,
/// then answers `101 Switching Protocols` and splices the client's
/// connection onto the agent's. Errors before that are ordinary JSON
/// answers, so a client always learns why an attach was refused.
async fn vm_attach(
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
        return Err(ErrorResponse(ApiError::new(
            ErrorCode::MalformedRequest,
            format!(
                "attach is a protocol upgrade: send `Connection: Upgrade` and `Upgrade: {ATTACH_UPGRADE}`"
            ),
        )));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .map_err(|e| {
            ErrorResponse(ApiError::new(
                ErrorCode::MalformedRequest,
                format!("reading the request body: {e}"),
            ))
        })?;
    let request: AttachRequest = serde_json::from_slice(&body).map_err(|e| {
        ErrorResponse(ApiError::new(
            ErrorCode::MalformedRequest,
            format!("request body is not valid: {e}"),
        ))
    })?;
    let reply = core
        .execute(Command::VmAttach { vm, request }, &ProgressSink::discard())
        .await?;
    let Some(mut agent) = (match reply {
        Reply::Attached(conn) => conn.take(),
        _ => None,
    }) else {
        return Err(ErrorResponse(ApiError::new(
            ErrorCode::Internal,
            "attach produced no agent connection",
        )));
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

/// A boolean query flag such as `?force=true`.
fn flag(query: Option<&str>, name: &str) -> Result<bool, ErrorResponse> {
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        if k == name {
            return match v {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(ErrorResponse(ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("query parameter {name}={v:?}: use true or false"),
                ))),
            };
        }
    }
    Ok(false)
}

fn asset_name(raw: &str) -> Result<String, ErrorResponse> {
    validate_name(raw).map_err(|e| {
        ErrorResponse(ApiError::new(
            ErrorCode::InvalidArgument,
            format!("asset name: {e}"),
        ))
    })?;
    Ok(raw.to_owned())
}

async fn kernel_list(State(core): State<Arc<Core>>) -> ApiResult {
    exec(&core, Command::KernelList).await
}

async fn kernel_show(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let cmd = Command::KernelShow {
        name: asset_name(&name)?,
        verify: flag(q.as_deref(), "verify")?,
    };
    exec(&core, cmd).await
}

async fn kernel_rm(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let cmd = Command::KernelRm {
        name: asset_name(&name)?,
        force: flag(q.as_deref(), "force")?,
    };
    exec(&core, cmd).await
}

async fn kernel_import(State(core): State<Arc<Core>>, body: Bytes) -> ApiResult {
    let req: KernelImportRequest = parse_body(&body)?;
    Ok(streamed(core, Command::KernelImport(req)))
}

async fn kernel_add(State(core): State<Arc<Core>>, body: Bytes) -> ApiResult {
    let req: KernelAddRequest = parse_body(&body)?;
    Ok(streamed(core, Command::KernelAdd(req)))
}

async fn image_list(State(core): State<Arc<Core>>) -> ApiResult {
    exec(&core, Command::ImageList).await
}

async fn image_show(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let cmd = Command::ImageShow {
        name: asset_name(&name)?,
        verify: flag(q.as_deref(), "verify")?,
    };
    exec(&core, cmd).await
}

async fn image_rm(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let cmd = Command::ImageRm {
        name: asset_name(&name)?,
        force: flag(q.as_deref(), "force")?,
    };
    exec(&core, cmd).await
}

async fn image_build(State(core): State<Arc<Core>>, body: Bytes) -> ApiResult {
    let req: ImageBuildRequest = parse_body(&body)?;
    Ok(streamed(core, Command::ImageBuild(req)))
}

async fn image_import(State(core): State<Arc<Core>>, body: Bytes) -> ApiResult {
    let req: ImageImportRequest = parse_body(&body)?;
    Ok(streamed(core, Command::ImageImport(req)))
}

async fn no_route(method: Method, uri: Uri) -> ErrorResponse {
    ErrorResponse(ApiError::new(
        ErrorCode::NotFound,
        format!(
            "no route {method} {}; this daemon serves {}/... (is the client newer than the daemon?)",
            uri.path(),
            banger_api::API_PREFIX
        ),
    ))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ErrorResponse {
    ErrorResponse(ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    ))
}

#[cfg(test)]
mod tests {
    use banger_config::Config;
    use banger_host::FakeProbe;
    use banger_store::Store;
    use http_body_util::BodyExt;
    use tower_service_shim::call;

    use super::*;

    /// Drives the router in-process, as hyper would.
    mod tower_service_shim {
        use axum::Router;
        use axum::body::Body;
        use axum::http::Request;
        use axum::response::Response;
        use tower::ServiceExt;

        pub async fn call(app: &Router, req: Request<Body>) -> Response {
            app.clone().oneshot(req).await.expect("infallible")
        }
    }

    fn app(dir: &std::path::Path) -> Router {
        let cfg = Config::load_with(|k| match k {
            "BANGER_CONFIG" => Some("/dev/null".into()),
            "BANGER_STATE_DIR" => Some(dir.display().to_string()),
            "BANGER_AUTO_PROVISION" => Some("false".into()),
            _ => None,
        })
        .expect("config");
        let store = Arc::new(Store::open_in_memory().expect("store"));
        banger_core::testing::seed_default_assets(&store);
        let probe = FakeProbe::new()
            .with_tool("qemu-system-x86_64", "/usr/bin/qemu", "", "")
            .with_tool(
                "/usr/bin/qemu",
                "/usr/bin/qemu",
                "--version",
                "QEMU emulator version 7.2.0",
            )
            .with_tool(
                "/usr/bin/qemu",
                "/usr/bin/qemu",
                "-accel help",
                "Accelerators:\ntcg\n",
            )
            .with_reflink("ext4", false);
        router(Arc::new(Core::new(
            cfg,
            store,
            banger_core::testing::fake_deps_with(probe).deps,
        )))
    }

    async fn request(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_owned()))
            .expect("request");
        let resp = call(app, req).await;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn error_of(body: &str) -> ApiError {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not an error body ({e}): {body}"))
    }

    #[tokio::test]
    async fn malformed_and_unknown_requests_get_json_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = app(dir.path());

        let (st, body) = request(&app, "POST", "/v1/vms", "{not json").await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert_eq!(error_of(&body).code, ErrorCode::MalformedRequest);

        let (st, body) = request(&app, "POST", "/v1/vms", r#"{"vcpu": 2}"#).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert!(error_of(&body).message.contains("vcpu"), "{body}");

        let (st, body) = request(&app, "GET", "/v2/vms", "").await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert!(error_of(&body).message.contains("/v1"), "{body}");

        let (st, body) = request(&app, "PUT", "/v1/vms", "").await;
        assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(error_of(&body).code, ErrorCode::MethodNotAllowed);

        let (st, body) = request(&app, "GET", "/v1/vms/Not_A_Name", "").await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert_eq!(error_of(&body).code, ErrorCode::InvalidArgument);

        let (st, body) = request(&app, "GET", "/v1/vms/ghost", "").await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert!(error_of(&body).message.contains("ghost"), "{body}");
    }

    #[tokio::test]
    async fn asset_routes_map_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = app(dir.path());
        let (st, body) = request(&app, "GET", "/v1/kernels", "").await;
        assert_eq!(st, StatusCode::OK);
        let list: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(list[0]["name"], "default");
        let (st, body) = request(&app, "GET", "/v1/images/nope", "").await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
        assert!(
            error_of(&body).message.contains("banger image build nope"),
            "{body}"
        );
        let (st, body) = request(&app, "DELETE", "/v1/kernels/x?force=maybe", "").await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        let (st, body) = request(&app, "POST", "/v1/images/import", r#"{"name":"i"}"#).await;
        assert_eq!(st, StatusCode::OK);
        let last: StreamEvent<serde_json::Value> =
            serde_json::from_str(body.lines().last().expect("line")).expect("json");
        assert!(
            matches!(&last, StreamEvent::Error(e) if e.code == ErrorCode::InvalidArgument),
            "{last:?}"
        );
        let (st, _) = request(&app, "POST", "/v1/kernels/add", r#"{"nam":"x"}"#).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn create_streams_progress_then_result_and_conflict_is_409_in_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = app(dir.path());
        let (st, body) = request(&app, "POST", "/v1/vms", r#"{"name":"web"}"#).await;
        assert_eq!(st, StatusCode::OK);
        let events: Vec<StreamEvent<serde_json::Value>> = body
            .lines()
            .map(|l| serde_json::from_str(l).expect("ndjson line"))
            .collect();
        assert!(matches!(events.first(), Some(StreamEvent::Progress(_))));
        match events.last() {
            Some(StreamEvent::Result { value }) => assert_eq!(value["name"], "web"),
            other => panic!("last event {other:?}"),
        }

        let (_, body) = request(&app, "POST", "/v1/vms", r#"{"name":"web"}"#).await;
        let last: StreamEvent<serde_json::Value> =
            serde_json::from_str(body.lines().last().expect("a line")).expect("json");
        match last {
            StreamEvent::Error(e) => {
                assert_eq!(e.code, ErrorCode::Conflict);
                assert_eq!(e.code.http_status(), 409);
            }
            other => panic!("expected error, got {other:?}"),
        }

        let (st, body) = request(&app, "GET", "/v1/vms", "").await;
        assert_eq!(st, StatusCode::OK);
        let list: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(list.as_array().map(Vec::len), Some(1));
    }

    #[tokio::test]
    async fn state_refusals_are_409_invalid_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = app(dir.path());
        request(&app, "POST", "/v1/vms", r#"{"name":"busy"}"#).await;
        // No running VMs exist without the lifecycle; exercise the mapping.
        let err = to_api_error(&CoreError::Lifecycle(
            banger_core::lifecycle::check_action(
                "busy",
                banger_api::vm::VmState::Running,
                banger_core::lifecycle::VmAction::Delete,
            )
            .expect_err("refused"),
        ));
        assert_eq!(err.code, ErrorCode::InvalidState);
        let (st, body) = request(&app, "PATCH", "/v1/vms/busy", "{}").await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        let (st, _) = request(&app, "DELETE", "/v1/vms/busy", "").await;
        assert_eq!(st, StatusCode::OK);
        let (st, _) = request(&app, "DELETE", "/v1/vms/busy", "").await;
        assert_eq!(st, StatusCode::NOT_FOUND);
    }
}
