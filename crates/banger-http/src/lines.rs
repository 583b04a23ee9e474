//! A body read line by line as its frames arrive (NDJSON streams).

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::{HttpError, UdsHttp};

/// The lines of a body, blank ones skipped, newlines stripped.
#[derive(Debug)]
pub struct Lines {
    http: UdsHttp,
    body: Incoming,
    buf: BytesMut,
}

impl Lines {
    pub(crate) fn new(http: UdsHttp, body: Incoming) -> Self {
        Self {
            http,
            body,
            buf: BytesMut::new(),
        }
    }

    /// The next non-blank line, or `None` once the body ended. A last
    /// line without its newline is not a line: a stream's writer ends
    /// every line, so an unterminated one is a writer cut short.
    pub async fn next(&mut self) -> Result<Option<Bytes>, HttpError> {
        loop {
            while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line = self.buf.split_to(pos + 1).freeze();
                line.truncate(pos);
                if !line.iter().all(u8::is_ascii_whitespace) {
                    return Ok(Some(line));
                }
            }
            match self.body.frame().await {
                // Trailers carry no lines.
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(self.http.http_err(e)),
                None => return Ok(None),
            }
        }
    }
}
