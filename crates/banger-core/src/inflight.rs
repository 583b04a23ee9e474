//! Operations in flight: what a watcher of one sees (every stage from
//! its start, then its outcome), and the ones a later request may join.
//! `operations` runs them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use banger_api::event::Progress;
use banger_api::vm::VmId;
use tokio::sync::watch;

use crate::command::Reply;
use crate::error::CoreError;

/// What an operation ended with; shared by all its watchers.
pub type Outcome = Arc<Result<Reply, CoreError>>;

/// An operation that at most one of may run at a time: a second request
/// for it watches the first.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Start(VmId),
}

#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    pub(crate) stages: Vec<Progress>,
    pub(crate) outcome: Option<Outcome>,
}

/// The operations in flight: how many, and those a later request may
/// join.
#[derive(Debug)]
pub(crate) struct Operations {
    joinable: Mutex<HashMap<Key, watch::Receiver<State>>>,
    pub(crate) running: watch::Sender<usize>,
}

impl Default for Operations {
    fn default() -> Self {
        Self {
            joinable: Mutex::default(),
            running: watch::channel(0).0,
        }
    }
}

impl Operations {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, watch::Receiver<State>>> {
        self.joinable.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One event of an operation, in order: its stages, then its outcome.
#[derive(Debug, Clone)]
pub enum OperationEvent {
    Progress(Progress),
    Done(Outcome),
}

/// A view of one operation from its first stage on.
#[derive(Debug)]
pub struct OperationWatch {
    rx: watch::Receiver<State>,
    seen: usize,
    done: bool,
    /// This watcher joined an operation another request started.
    pub joined: bool,
    /// Set for an operation its client cancels by going away.
    cancel: Option<tokio::task::AbortHandle>,
}

impl OperationWatch {
    /// A watch from the first stage on; `cancel` aborts the operation if
    /// this is dropped before its outcome.
    pub(crate) fn new(
        rx: watch::Receiver<State>,
        joined: bool,
        cancel: Option<tokio::task::AbortHandle>,
    ) -> Self {
        Self {
            rx,
            seen: 0,
            done: false,
            joined,
            cancel,
        }
    }
}

impl Drop for OperationWatch {
    fn drop(&mut self) {
        if let Some(task) = self.cancel.take() {
            if !self.done {
                task.abort();
            }
        }
    }
}

impl OperationWatch {
    /// The next event; `None` after the outcome.
    pub async fn next(&mut self) -> Option<OperationEvent> {
        loop {
            {
                let st = self.rx.borrow_and_update();
                if let Some(p) = st.stages.get(self.seen) {
                    self.seen += 1;
                    return Some(OperationEvent::Progress(p.clone()));
                }
                if self.done {
                    return None;
                }
                if let Some(o) = &st.outcome {
                    self.done = true;
                    return Some(OperationEvent::Done(Arc::clone(o)));
                }
            }
            if self.rx.changed().await.is_err() {
                // The task ended without an outcome: it panicked.
                let st = self.rx.borrow();
                if st.stages.len() > self.seen || st.outcome.is_some() {
                    continue;
                }
                self.done = true;
                return Some(OperationEvent::Done(Arc::new(Err(CoreError::Unavailable(
                    "the operation ended without a result (the daemon's log says why)".into(),
                )))));
            }
        }
    }

    /// Waits for the outcome, dropping the stages.
    pub async fn outcome(mut self) -> Outcome {
        loop {
            match self.next().await {
                Some(OperationEvent::Done(o)) => return o,
                Some(OperationEvent::Progress(_)) => {}
                None => unreachable!("next yields Done before None"),
            }
        }
    }
}
