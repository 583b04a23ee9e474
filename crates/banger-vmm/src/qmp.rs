//! A minimal QMP client: capabilities negotiation, then commands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::VmmError;

const TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong on a QMP session.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("{0}")]
    Io(#[source] std::io::Error),
    #[error("no answer within 5s")]
    NoAnswer,
    /// QEMU closed the connection (as it may on `quit`).
    #[error("connection closed")]
    Closed,
    #[error("bad message {line:?}: {source}")]
    BadMessage {
        line: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("unexpected greeting {0}")]
    Greeting(Value),
    /// QEMU refused the command; `error` is its `{class, desc}`.
    #[error("{command}: {error}")]
    Command { command: String, error: Value },
    #[error("no {0} event in time")]
    NoEvent(String),
    #[error("{command}: unexpected answer {answer}")]
    Answer { command: String, answer: Value },
}

/// A negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    reader: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    fn err(path: &Path, source: QmpError) -> VmmError {
        VmmError::Qmp {
            path: path.to_owned(),
            source,
        }
    }

    /// Connects, reads the greeting and enters command mode.
    pub async fn connect(path: &Path) -> Result<Self, VmmError> {
        let stream = tokio::time::timeout(TIMEOUT, UnixStream::connect(path))
            .await
            .map_err(|_| Self::err(path, QmpError::ConnectTimeout))?
            .map_err(|e| Self::err(path, QmpError::Io(e)))?;
        let (r, w) = stream.into_split();
        let mut q = Self {
            path: path.to_owned(),
            reader: BufReader::new(r).lines(),
            writer: w,
        };
        let greeting = q.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(Self::err(path, QmpError::Greeting(greeting)));
        }
        q.execute("qmp_capabilities", None).await?;
        Ok(q)
    }

    async fn read_message(&mut self) -> Result<Value, VmmError> {
        self.read_message_within(TIMEOUT).await
    }

    async fn read_message_within(&mut self, within: Duration) -> Result<Value, VmmError> {
        let line = tokio::time::timeout(within, self.reader.next_line())
            .await
            .map_err(|_| Self::err(&self.path, QmpError::NoAnswer))?
            .map_err(|e| Self::err(&self.path, QmpError::Io(e)))?
            .ok_or_else(|| Self::err(&self.path, QmpError::Closed))?;
        serde_json::from_str(&line)
            .map_err(|source| Self::err(&self.path, QmpError::BadMessage { line, source }))
    }

    /// Runs a command and returns its `return` value. Asynchronous events
    /// arriving in between are skipped.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, VmmError> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|e| Self::err(&self.path, QmpError::Io(e)))?;
        loop {
            let reply = self.read_message().await?;
            if reply.get("event").is_some() {
                continue;
            }
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                let source = QmpError::Command {
                    command: command.to_owned(),
                    error: e.clone(),
                };
                return Err(Self::err(&self.path, source));
            }
        }
    }

    /// Waits up to `within` for the event `name` whose data `done` accepts
    /// (returning what it says); commands must not be in flight.
    pub async fn wait_event<T>(
        &mut self,
        name: &str,
        within: Duration,
        mut done: impl FnMut(&Value) -> Option<T>,
    ) -> Result<T, VmmError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(Self::err(&self.path, QmpError::NoEvent(name.to_owned())));
            }
            let msg = match self.read_message_within(left).await {
                Err(VmmError::Qmp {
                    source: QmpError::NoAnswer,
                    ..
                }) => return Err(Self::err(&self.path, QmpError::NoEvent(name.to_owned()))),
                other => other?,
            };
            if msg.get("event").and_then(Value::as_str) == Some(name) {
                if let Some(t) = done(msg.get("data").unwrap_or(&Value::Null)) {
                    return Ok(t);
                }
            }
        }
    }

    /// ACPI power button: the guest shuts down cleanly if it listens.
    pub async fn powerdown(&mut self) -> Result<(), VmmError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// Stops QEMU at once (the guest gets no say).
    pub async fn quit(&mut self) -> Result<(), VmmError> {
        // QEMU may close the socket before answering; that is success.
        match self.execute("quit", None).await {
            Ok(_) => Ok(()),
            Err(VmmError::Qmp {
                source: QmpError::Closed,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `query-status`: `running`, `paused`, `shutdown`, ...
    pub async fn status(&mut self) -> Result<String, VmmError> {
        let r = self.execute("query-status", None).await?;
        match r.get("status").and_then(Value::as_str) {
            Some(status) => Ok(status.to_owned()),
            None => Err(Self::err(
                &self.path,
                QmpError::Answer {
                    command: "query-status".into(),
                    answer: r,
                },
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixListener;

    use super::*;

    /// A scripted QMP server: greeting, then one answer per command.
    async fn fake_qmp(path: &Path) -> tokio::task::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(path).expect("bind");
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .expect("greet");
            let mut seen = Vec::new();
            while let Ok(Some(l)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&l).expect("json");
                let cmd = v["execute"].as_str().unwrap_or("").to_owned();
                let reply = match cmd.as_str() {
                    "query-status" => "{\"event\": \"RTC_CHANGE\"}\n{\"return\": {\"status\": \"running\", \"running\": true}}\n".to_owned(),
                    "bogus" => "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"nope\"}}\n".to_owned(),
                    _ => "{\"return\": {}}\n".to_owned(),
                };
                seen.push(cmd);
                w.write_all(reply.as_bytes()).await.expect("reply");
            }
            seen
        })
    }

    #[tokio::test]
    async fn negotiates_skips_events_and_reports_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("q.sock");
        let server = fake_qmp(&sock).await;
        let mut q = Qmp::connect(&sock).await.expect("connect");
        assert_eq!(q.status().await.expect("status"), "running");
        q.powerdown().await.expect("powerdown");
        let err = q.execute("bogus", None).await.expect_err("error reply");
        assert!(err.to_string().contains("CommandNotFound"), "{err}");
        drop(q);
        let seen = server.await.expect("server");
        assert_eq!(
            seen,
            [
                "qmp_capabilities",
                "query-status",
                "system_powerdown",
                "bogus"
            ]
        );
    }

    /// QEMU may close the socket on `quit` before answering: that is the
    /// typed `Closed`, and success for `quit`.
    #[tokio::test]
    async fn quit_answered_by_a_closed_socket_is_success() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("q.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\": {}}\n").await.expect("greet");
            lines
                .next_line()
                .await
                .expect("read")
                .expect("capabilities");
            w.write_all(b"{\"return\": {}}\n").await.expect("reply");
            lines.next_line().await.expect("read").expect("quit");
        });
        let mut q = Qmp::connect(&sock).await.expect("connect");
        q.quit().await.expect("closed counts as quit");
    }

    #[tokio::test]
    async fn missing_socket_is_a_control_error() {
        let err = Qmp::connect(Path::new("/nonexistent/q.sock"))
            .await
            .expect_err("no socket");
        assert!(matches!(err, VmmError::Qmp { .. }));
    }
}
