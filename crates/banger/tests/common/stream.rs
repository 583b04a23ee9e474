//! A streamed daemon call read event by event, so a test can act at a
//! named stage of an operation (the CLI draws those stages only on a
//! terminal). HTTP/1.0 on the daemon's socket: the body is then the bare
//! NDJSON stream, closed by the daemon at its end.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use banger_api::event::{Progress, StreamEvent};

/// How a streamed call ended.
#[derive(Debug)]
pub enum Outcome {
    Result(serde_json::Value),
    /// The `error` event, or the body of a refused request.
    Error(String),
    /// The stream closed with neither: the daemon died mid-operation.
    Ended,
}

#[derive(Debug)]
pub struct Stream {
    what: String,
    reader: BufReader<UnixStream>,
    /// The body of a non-200 answer, which carries no events.
    refused: Option<String>,
    /// Progress events seen so far, for failure messages.
    pub stages: Vec<Progress>,
    /// The operation the stream watches (its `banger-operation` header).
    pub operation: Option<String>,
}

impl Stream {
    /// `POST path` with an optional JSON body.
    pub fn post(socket: &Path, path: &str, body: Option<&serde_json::Value>) -> Self {
        Self::call(socket, "POST", path, body)
    }

    /// `GET path`: the stream of an operation in flight.
    pub fn get(socket: &Path, path: &str) -> Self {
        Self::call(socket, "GET", path, None)
    }

    fn call(socket: &Path, method: &str, path: &str, body: Option<&serde_json::Value>) -> Self {
        let what = format!("{method} {path}");
        let mut s = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("{what}: connecting to {}: {e}", socket.display()));
        let mut req = format!("{method} {path} HTTP/1.0\r\nHost: bangerd\r\n");
        let body = body.map(serde_json::Value::to_string);
        if let Some(b) = &body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body.as_deref().unwrap_or(""));
        s.write_all(req.as_bytes())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader
            .read_line(&mut status)
            .unwrap_or_else(|e| panic!("{what}: reading the status line: {e}"));
        let mut operation = None;
        loop {
            let mut header = String::new();
            let n = reader
                .read_line(&mut header)
                .unwrap_or_else(|e| panic!("{what}: reading headers: {e}"));
            if n == 0 || header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case(banger_api::operation::OPERATION_HEADER)
            {
                operation = Some(value.trim().to_owned());
            }
        }
        let refused = if status.split_whitespace().nth(1) == Some("200") {
            None
        } else {
            let mut rest = String::new();
            std::io::Read::read_to_string(&mut reader, &mut rest)
                .unwrap_or_else(|e| panic!("{what}: reading the refusal: {e}"));
            Some(format!("{} {rest}", status.trim()))
        };
        Self {
            what,
            reader,
            refused,
            stages: Vec::new(),
            operation,
        }
    }

    /// The next event, waiting at most until `deadline`; `None` at the end
    /// of the stream.
    fn next(&mut self, deadline: Instant) -> Option<StreamEvent<serde_json::Value>> {
        if self.refused.is_some() {
            return None;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: nothing within the deadline; stages so far: {:?}",
                self.what,
                self.stages
            );
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .expect("read timeout");
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) if line.trim().is_empty() => continue,
                Ok(_) => {
                    let ev: StreamEvent<serde_json::Value> = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("{}: bad event {line:?}: {e}", self.what));
                    if let StreamEvent::Progress(p) = &ev {
                        self.stages.push(p.clone());
                    }
                    return Some(ev);
                }
                Err(e) => panic!(
                    "{}: reading events: {e}; stages so far: {:?}",
                    self.what, self.stages
                ),
            }
        }
    }

    /// Waits for a progress event that `matches` accepts and returns it;
    /// panics if the operation ends first or `within` passes.
    pub fn wait_progress(
        &mut self,
        within: Duration,
        mut matches: impl FnMut(&Progress) -> bool,
    ) -> Progress {
        let deadline = Instant::now() + within;
        loop {
            match self.next(deadline) {
                Some(StreamEvent::Progress(p)) if matches(&p) => return p,
                Some(StreamEvent::Progress(_)) => {}
                other => panic!(
                    "{}: ended before the awaited stage ({other:?}, refused: {:?}); stages: {:?}",
                    self.what, self.refused, self.stages
                ),
            }
        }
    }

    /// Reads on to the end of the operation, at most `within`.
    pub fn outcome(mut self, within: Duration) -> Outcome {
        if let Some(r) = self.refused.take() {
            return Outcome::Error(r);
        }
        let deadline = Instant::now() + within;
        loop {
            match self.next(deadline) {
                Some(StreamEvent::Progress(_)) => {}
                Some(StreamEvent::Result { value }) => return Outcome::Result(value),
                Some(StreamEvent::Error(e)) => return Outcome::Error(format!("{e:?}")),
                None => return Outcome::Ended,
            }
        }
    }
}
