use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use super::*;

/// A server that answers one connection with `response` in small pieces
/// (so line framing is exercised) and hands back what it was sent.
fn serve_once(dir: &Path, response: &'static str) -> (PathBuf, tokio::task::JoinHandle<String>) {
    let sock = dir.join("s.sock");
    let listener = UnixListener::bind(&sock).expect("bind");
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).await.expect("read");
        for chunk in response.as_bytes().chunks(7) {
            let _ = s.write_all(chunk).await;
            let _ = s.flush().await;
        }
        let _ = s.shutdown().await;
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    (sock, server)
}

#[tokio::test]
async fn sends_json_with_host_and_content_type_and_reads_the_body() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sock, server) = serve_once(
        dir.path(),
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
    );
    let http = UdsHttp::new(sock, "svc");
    let resp = http
        .request(Method::PUT, "/x?y=1")
        .json(&serde_json::json!({"a": 1}))
        .expect("encode")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(&resp.bytes().await.expect("body")[..], b"ok");
    let sent = server.await.expect("server").to_ascii_lowercase();
    // Absolute-form, as both servers have always been sent.
    assert!(
        sent.starts_with("put http://svc/x?y=1 http/1.1\r\n"),
        "{sent}"
    );
    assert!(sent.contains("host: svc\r\n"), "{sent}");
    assert!(
        sent.contains("content-type: application/json\r\n"),
        "{sent}"
    );
    assert!(sent.ends_with("\r\n\r\n{\"a\":1}"), "{sent}");
}

#[tokio::test]
async fn lines_skip_blanks_and_join_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sock, _server) = serve_once(
        dir.path(),
        "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{\"n\":1}\n\n  \n{\"n\":2}\nunterminated",
    );
    let resp = UdsHttp::new(sock, "svc")
        .request(Method::GET, "/")
        .send()
        .await
        .expect("send");
    let mut lines = resp.lines();
    assert_eq!(
        &lines.next().await.expect("1").expect("line")[..],
        b"{\"n\":1}"
    );
    assert_eq!(
        &lines.next().await.expect("2").expect("line")[..],
        b"{\"n\":2}"
    );
    assert!(lines.next().await.expect("end").is_none());
}

#[tokio::test]
async fn a_missing_socket_or_a_peer_closing_at_once_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = UdsHttp::new(dir.path().join("none.sock"), "svc")
        .request(Method::GET, "/")
        .send()
        .await
        .expect_err("no server");
    assert!(
        matches!(err, HttpError::Connect { .. }) && err.peer_gone(),
        "{err}"
    );

    let sock = dir.path().join("s.sock");
    let listener = UnixListener::bind(&sock).expect("bind");
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.expect("accept");
        drop(s);
    });
    let err = UdsHttp::new(sock, "svc")
        .request(Method::GET, "/")
        .send()
        .await
        .expect_err("closed");
    assert!(err.peer_gone(), "{err}");
}

#[test]
fn a_bad_path_is_a_request_error() {
    let http = UdsHttp::new("/nonexistent", "svc");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let err = rt
        .block_on(http.request(Method::GET, "/a b").send())
        .expect_err("bad uri");
    assert!(matches!(err, HttpError::Request { .. }), "{err}");
}
