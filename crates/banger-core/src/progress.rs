//! Progress reporting from long commands to whoever streams them.

use banger_api::event::Progress;
use tokio::sync::mpsc;

/// Where a command reports its stages. Sending never blocks and never
/// fails the command: a client that went away just stops listening.
#[derive(Debug, Clone, Default)]
pub struct ProgressSink {
    tx: Option<mpsc::UnboundedSender<Progress>>,
}

impl ProgressSink {
    /// A sink that drops everything (non-streaming callers).
    pub fn discard() -> Self {
        Self { tx: None }
    }

    /// A sink and the receiver the API layer turns into NDJSON lines.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<Progress>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx: Some(tx) }, rx)
    }

    pub fn emit(&self, progress: Progress) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(progress);
        }
    }

    pub fn stage(&self, stage: &str, detail: impl Into<String>) {
        self.emit(Progress::stage(stage, detail));
    }
}
