//! The host side of a vsock connection, for both VMMs.
//!
//! Firecracker's hybrid vsock and `vhost-device-vsock` (used with QEMU)
//! both expose the guest's vsock as a host unix socket: connect, write
//! `CONNECT <port>\n`, read `OK <host port>\n`, and the stream is then the
//! guest listener's connection. A guest with nothing listening yet makes
//! the backend close the connection instead.

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::ProtoError;

/// Longest acknowledgement line accepted (`OK 4294967295\n` is 14 bytes).
const MAX_ACK: usize = 64;

/// Connects to `port` in the guest behind the vsock unix socket `uds`.
pub async fn connect(uds: &Path, port: u32) -> Result<UnixStream, ProtoError> {
    let mut s = UnixStream::connect(uds).await?;
    // A backend that refuses closes at once; with our CONNECT line unread
    // that arrives as a reset rather than an end of stream.
    let refused = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => Ok(0),
        _ => Err(ProtoError::Io(e)),
    };
    if let Err(e) = s.write_all(format!("CONNECT {port}\n").as_bytes()).await {
        refused(e)?;
    }
    let mut line = Vec::with_capacity(16);
    // Byte by byte: whatever follows the newline is the guest's.
    loop {
        let mut b = [0u8; 1];
        let n = match s.read(&mut b).await {
            Ok(n) => n,
            Err(e) => refused(e)?,
        };
        if n == 0 {
            return Err(if line.is_empty() {
                ProtoError::NothingListening { port }
            } else {
                ProtoError::Unexpected {
                    expected: "an OK from the vsock backend",
                    got: format!("{:?} then a close", String::from_utf8_lossy(&line)),
                }
            });
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > MAX_ACK {
            return Err(ProtoError::Unexpected {
                expected: "an OK line from the vsock backend",
                got: format!("{:?}…", String::from_utf8_lossy(&line)),
            });
        }
    }
    if line.starts_with(b"OK ") {
        Ok(s)
    } else {
        Err(ProtoError::Unexpected {
            expected: "an OK from the vsock backend",
            got: String::from_utf8_lossy(&line).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;

    use super::*;

    /// A stand-in backend: answers `reply` to the CONNECT line, then says
    /// "guest" on the same stream.
    async fn backend(reply: &'static [u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("v.sock");
        let l = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).await.expect("line");
            assert_eq!(line, "CONNECT 52\n");
            let mut s = r.into_inner();
            s.write_all(reply).await.expect("reply");
            s.write_all(b"guest").await.expect("payload");
        });
        (dir, path)
    }

    #[tokio::test]
    async fn ok_hands_over_the_stream_with_nothing_swallowed() {
        let (_d, path) = backend(b"OK 1073741824\n").await;
        let mut s = connect(&path, 52).await.expect("connect");
        let mut rest = String::new();
        s.read_to_string(&mut rest).await.expect("read");
        assert_eq!(rest, "guest");
    }

    #[tokio::test]
    async fn anything_but_ok_is_an_error() {
        let (_d, path) = backend(b"NOPE\n").await;
        let err = connect(&path, 52).await.expect_err("refused");
        assert!(err.to_string().contains("NOPE"), "{err}");
    }

    #[tokio::test]
    async fn a_close_means_nothing_listens_yet() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("v.sock");
        let l = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            drop(s);
        });
        let err = connect(&path, 52).await.expect_err("closed");
        assert!(
            matches!(err, ProtoError::NothingListening { port: 52 }),
            "{err}"
        );
    }
}
