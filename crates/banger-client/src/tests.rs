use banger_api::event::Progress;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use std::path::{Path, PathBuf};

use banger_api::ErrorCode;
use banger_http::Method;

use crate::paths::vm_path;
use crate::{Client, ClientError};

/// A one-shot server that answers every connection with `response`.
fn serve(dir: &Path, response: &'static str) -> PathBuf {
    let sock = dir.join("s.sock");
    let listener = UnixListener::bind(&sock).expect("bind");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            // Write in small pieces so line framing is exercised.
            for chunk in response.as_bytes().chunks(7) {
                let _ = s.write_all(chunk).await;
                let _ = s.flush().await;
            }
            let _ = s.shutdown().await;
        }
    });
    sock
}

/// A daemon that dies with our connection in its queue: accepted, then
/// closed without an answer. That is "not running", not an error.
#[tokio::test]
async fn a_daemon_dying_mid_request_counts_as_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("s.sock");
    let listener = UnixListener::bind(&sock).expect("bind");
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.expect("accept");
        drop(s);
    });
    let err = Client::new(sock).status().await.expect_err("closed");
    assert!(err.is_unreachable(), "{err}");
}

#[tokio::test]
async fn missing_socket_is_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Client::new(dir.path().join("none.sock"))
        .list_vms()
        .await
        .expect_err("no daemon");
    assert!(err.is_unreachable(), "{err}");
}

#[tokio::test]
async fn error_bodies_become_api_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = serve(
        dir.path(),
        "HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: 45\r\nconnection: close\r\n\r\n{\"code\":\"invalid_state\",\"message\":\"vm is up\"}",
    );
    let err = Client::new(sock).show_vm("x").await.expect_err("409");
    assert_eq!(err.api_code(), Some(ErrorCode::InvalidState));
    assert_eq!(err.to_string(), "vm is up");
}

#[tokio::test]
async fn non_json_error_falls_back_to_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = serve(
        dir.path(),
        "HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope",
    );
    let err = Client::new(sock).show_vm("x").await.expect_err("404");
    assert_eq!(err.api_code(), Some(ErrorCode::NotFound));
    assert!(err.to_string().contains("nope"));
}

#[tokio::test]
async fn stream_reads_progress_split_across_frames_then_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = serve(
        dir.path(),
        "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n{\"event\":\"progress\",\"stage\":\"a\"}\n\n{\"event\":\"progress\",\"stage\":\"b\",\"fraction\":0.5}\n{\"event\":\"result\",\"value\":42}\n",
    );
    let mut stages = Vec::new();
    let c = Client::new(sock);
    let v: u32 = c
        .stream(c.request(Method::POST, "/v1/x"), |p: &Progress| {
            stages.push(p.stage.clone())
        })
        .await
        .expect("stream");
    assert_eq!(v, 42);
    assert_eq!(stages, ["a", "b"]);
}

#[tokio::test]
async fn stream_without_result_is_reported_as_ended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = serve(
        dir.path(),
        "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{\"event\":\"progress\",\"stage\":\"a\"}\n",
    );
    let c = Client::new(sock);
    let err = c
        .stream::<u32>(c.request(Method::POST, "/v1/x"), |_: &Progress| {})
        .await
        .expect_err("ended");
    assert!(matches!(err, ClientError::StreamEnded { .. }), "{err}");
}

#[tokio::test]
async fn stream_error_event_is_returned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = serve(
        dir.path(),
        "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{\"event\":\"error\",\"code\":\"conflict\",\"message\":\"taken\"}\n",
    );
    let c = Client::new(sock);
    let err = c
        .stream::<u32>(c.request(Method::POST, "/v1/x"), |_: &Progress| {})
        .await
        .expect_err("error event");
    assert_eq!(err.api_code(), Some(ErrorCode::Conflict));
}

#[tokio::test]
async fn the_operation_id_of_a_stream_reaches_its_observer_before_the_stages() {
    struct Seen<'a>(&'a mut Vec<String>);
    impl crate::StreamObserver for Seen<'_> {
        fn started(&mut self, id: &banger_api::operation::OperationId) {
            self.0.push(id.to_string());
        }
        fn progress(&mut self, p: &Progress) {
            self.0.push(p.stage.clone());
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = serve(
        dir.path(),
        "HTTP/1.1 200 OK\r\nbanger-operation: op-00000000000000ab\r\nconnection: close\r\n\r\n{\"event\":\"progress\",\"stage\":\"a\"}\n{\"event\":\"result\",\"value\":1}\n",
    );
    let c = Client::new(sock);
    let mut seen = Vec::new();
    let v: u32 = c
        .stream(c.request(Method::POST, "/v1/x"), Seen(&mut seen))
        .await
        .expect("stream");
    assert_eq!(v, 1);
    assert_eq!(seen, ["op-00000000000000ab", "a"]);
}

#[test]
fn vm_paths_are_escaped() {
    assert_eq!(vm_path("web-1"), "/v1/vms/web-1");
    assert_eq!(vm_path("../x"), "/v1/vms/%2E%2E%2Fx");
}

#[tokio::test]
async fn a_refused_stream_is_the_daemons_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = serve(
        dir.path(),
        "HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: 45\r\nconnection: close\r\n\r\n{\"code\":\"invalid_state\",\"message\":\"vm is up\"}",
    );
    let err = Client::new(sock)
        .start_vm("x", |_| {})
        .await
        .expect_err("409");
    assert_eq!(err.api_code(), Some(ErrorCode::InvalidState));
    assert_eq!(err.to_string(), "vm is up");
}
