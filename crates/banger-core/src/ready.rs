//! The agent's ready call: a unix socket the VMM's vsock hands the
//! guest's connection to host port [`READY_PORT`] to.
//!
//! Waiting for the guest to call is an event, not a poll, and it keeps the
//! daemon from connecting into a guest that is still booting: QEMU's
//! userspace vsock backend (`vhost-device-vsock` 0.3) can stop serving
//! for good when host connections arrive before the guest's driver is up
//! (its worker ends on the first error), which is how a VM that reached
//! its login prompt still "did not answer within 180s".

use std::path::{Path, PathBuf};

use banger_agent_proto::{MAX_READY_LINE, READY_GREETING, READY_PORT};
use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;

/// Where a VM's ready call arrives, beside its vsock socket.
pub fn ready_socket_path(vsock: &Path) -> PathBuf {
    let mut p = vsock.as_os_str().to_owned();
    p.push(format!("_{READY_PORT}"));
    PathBuf::from(p)
}

#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    #[error("listening for the agent's ready call on {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("accepting the agent's ready call on {path}: {source}")]
    Accept {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A bound ready socket; the file goes with it.
#[derive(Debug)]
pub struct ReadyListener {
    path: PathBuf,
    listener: UnixListener,
}

/// What one ready call said.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadyCall {
    /// The agent's greeting, with its software string.
    Agent(String),
    /// Anything else (a guest may write what it likes): not trusted.
    Garbled(String),
}

impl ReadyListener {
    /// Binds `path`, replacing a socket left by an interrupted start.
    pub fn bind(path: PathBuf) -> Result<Self, ReadyError> {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ReadyError::Bind { path, source }),
        }
        match UnixListener::bind(&path) {
            Ok(listener) => Ok(Self { path, listener }),
            Err(source) => Err(ReadyError::Bind { path, source }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next call: its line, read with a bound on length and time.
    pub async fn next(&self, within: std::time::Duration) -> Result<ReadyCall, ReadyError> {
        let (mut s, _) = self
            .listener
            .accept()
            .await
            .map_err(|source| ReadyError::Accept {
                path: self.path.clone(),
                source,
            })?;
        let mut buf = Vec::with_capacity(64);
        let read = tokio::time::timeout(within, async {
            let mut chunk = [0u8; 64];
            while buf.len() < MAX_READY_LINE && !buf.contains(&b'\n') {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&buf[..buf.len().min(MAX_READY_LINE)]).into_owned();
        let line = text.lines().next().unwrap_or("").to_owned();
        Ok(match line.strip_prefix(READY_GREETING) {
            Some(rest) if read.is_ok() && rest.starts_with(' ') => {
                ReadyCall::Agent(rest.trim().to_owned())
            }
            _ => ReadyCall::Garbled(line.escape_debug().to_string()),
        })
    }
}

impl Drop for ReadyListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;

    #[test]
    fn the_path_follows_the_vsock_convention() {
        assert_eq!(
            ready_socket_path(Path::new("/run/banger/vms/ab.vsock")),
            PathBuf::from(format!("/run/banger/vms/ab.vsock_{READY_PORT}"))
        );
    }

    #[tokio::test]
    async fn reads_the_greeting_rejects_garbage_and_removes_its_socket() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("v.vsock_1052");
        std::fs::write(&path, b"stale").expect("stale file");
        let l = ReadyListener::bind(path.clone()).expect("bind over a stale file");
        let call = |bytes: &'static [u8]| {
            let path = path.clone();
            tokio::spawn(async move {
                let mut s = tokio::net::UnixStream::connect(&path)
                    .await
                    .expect("connect");
                s.write_all(bytes).await.expect("write");
            })
        };
        call(b"banger-agent-ready banger-agent 0.1.0\n");
        assert_eq!(
            l.next(Duration::from_secs(5)).await.expect("call"),
            ReadyCall::Agent("banger-agent 0.1.0".into())
        );
        call(b"\x1b[2Jhello\n");
        assert!(matches!(
            l.next(Duration::from_secs(5)).await.expect("call"),
            ReadyCall::Garbled(g) if g.contains("\\u{1b}")
        ));
        // An endless line is cut at the bound, not read forever.
        call(&[b'a'; 4096]);
        assert!(matches!(
            l.next(Duration::from_secs(5)).await.expect("call"),
            ReadyCall::Garbled(g) if g.len() <= MAX_READY_LINE
        ));
        drop(l);
        assert!(!path.exists(), "the socket goes with the listener");
    }
}
