use banger_config::Config;
use banger_host::FakeProbe;
use banger_store::Store;
use http_body_util::BodyExt;
use tower_service_shim::call;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use banger_api::event::StreamEvent;
use banger_api::{ApiError, ErrorCode};
use banger_core::{Core, CoreError};

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

#[tokio::test]
async fn query_flags_are_typed_and_a_bad_one_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(dir.path());
    // The seeded assets' files do not exist, so a verified show fails:
    // that tells a flag read as true from one read as false.
    for uri in [
        "/v1/kernels/default?verify=true",
        "/v1/kernels/default?verify",
        "/v1/kernels/default?verify=1",
    ] {
        let (_, body) = request(&app, "GET", uri, "").await;
        assert_eq!(error_of(&body).code, ErrorCode::Failed, "{uri}: {body}");
    }
    for uri in [
        "/v1/kernels/default?verify=0&other=x",
        "/v1/kernels/default?verify=false",
        "/v1/kernels/default",
    ] {
        let (st, body) = request(&app, "GET", uri, "").await;
        assert_eq!(st, StatusCode::OK, "{uri}: {body}");
    }
    let (st, body) = request(&app, "GET", "/v1/images/default?verify=yes", "").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    let err = error_of(&body);
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("verify"), "{body}");
    assert!(err.message.contains("use true or false"), "{body}");
}

#[tokio::test]
async fn a_create_wrong_on_its_face_is_a_400_before_any_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(dir.path());
    for (body, code) in [
        (r#"{"memory_mib": 1}"#, ErrorCode::InvalidArgument),
        (r#"{"name": "Not_A_Name"}"#, ErrorCode::InvalidArgument),
        (r#"{"vcpus": 100000}"#, ErrorCode::InvalidArgument),
        (r#"{"image": "../x"}"#, ErrorCode::InvalidArgument),
        // serde would take an array for a struct, positionally.
        (r#"[1, 1024]"#, ErrorCode::MalformedRequest),
        ("  []", ErrorCode::MalformedRequest),
        ("17", ErrorCode::MalformedRequest),
    ] {
        let (st, answer) = request(&app, "POST", "/v1/vms", body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(error_of(&answer).code, code, "{body}: {answer}");
    }
    let (st, answer) = request(&app, "POST", "/v1/vms/ghost/fork", r#"{"count": 0}"#).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{answer}");
    let (st, answer) = request(&app, "POST", "/v1/vms/ghost/snapshot", r#"{"name": "A B"}"#).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{answer}");
    let (_, body) = request(&app, "GET", "/v1/vms", "").await;
    assert_eq!(body.trim(), "[]", "nothing was created");
}

#[tokio::test]
async fn a_stream_names_its_operation_which_is_listed_watched_and_refused_by_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(dir.path());
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/vms")
        .body(Body::from(r#"{"name":"web"}"#))
        .expect("request");
    let resp = call(&app, req).await;
    let id: banger_api::operation::OperationId = resp
        .headers()
        .get(banger_api::operation::OPERATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .expect("the stream names its operation")
        .parse()
        .expect("an operation id");
    let _ = resp.into_body().collect().await.expect("body");

    // Over once its stream ended: no longer listed, watched or cancelled.
    let (st, body) = request(&app, "GET", "/v1/operations", "").await;
    assert_eq!(st, StatusCode::OK);
    let ops: Vec<banger_api::operation::OperationInfo> = serde_json::from_str(&body).expect("json");
    assert!(ops.iter().all(|o| o.id != id), "{ops:?}");
    for (method, path) in [
        ("GET", format!("/v1/operations/{id}")),
        ("POST", format!("/v1/operations/{id}/cancel")),
    ] {
        let (st, body) = request(&app, method, &path, "").await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert!(
            error_of(&body).message.contains("banger operation list"),
            "{body}"
        );
    }
    // An id that is not one is the caller's mistake, said as such.
    let (st, body) = request(&app, "POST", "/v1/operations/..%2Fx/cancel", "").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_of(&body).code, ErrorCode::InvalidArgument);
}
