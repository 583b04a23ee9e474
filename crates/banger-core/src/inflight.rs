//! Operations in flight: what a watcher of one sees (every stage from
//! its start, then its outcome), and the ones a later request may join.
//! `operations` runs them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use banger_api::event::Progress;
use banger_api::operation::{OperationId, OperationInfo, OperationKind};
use banger_api::vm::VmId;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cancel::StartCancels;
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

/// How an operation is cancelled.
#[derive(Debug, Clone)]
pub(crate) enum Cancel {
    /// Its work is dropped where it waits: asset builds and imports,
    /// whose drop kills their tools and removes the half-made asset.
    Drop(CancellationToken),
    /// A VM start, cut short at its next wait (`cancel.rs`) and cleaned
    /// up as a failed start.
    Start(VmId),
}

/// One operation in flight.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) kind: OperationKind,
    pub(crate) target: String,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) rx: watch::Receiver<State>,
    pub(crate) cancel: Option<Cancel>,
}

impl Entry {
    pub(crate) fn info(&self, id: &OperationId) -> OperationInfo {
        OperationInfo {
            id: id.clone(),
            kind: self.kind,
            target: self.target.clone(),
            started_at: self.started_at,
            stage: self.rx.borrow().stages.last().cloned(),
            cancellable: self.cancel.is_some(),
        }
    }
}

/// The operations in flight by id, and those a later request may join.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) by_id: HashMap<OperationId, Entry>,
    pub(crate) joinable: HashMap<Key, OperationId>,
}

impl Registry {
    /// The operation a request for `key` joins, if one is in flight.
    pub(crate) fn joined(&self, key: &Key) -> Option<(&OperationId, &Entry)> {
        let id = self.joinable.get(key)?;
        self.by_id.get(id).map(|e| (id, e))
    }

    /// Forgets `id` (and its key) once its task is over.
    pub(crate) fn remove(&mut self, id: &OperationId, key: Option<&Key>) {
        self.by_id.remove(id);
        if let Some(k) = key
            && self.joinable.get(k) == Some(id)
        {
            self.joinable.remove(k);
        }
    }
}

/// The operations in flight, how many run, and the starts that may be
/// cut short.
#[derive(Debug)]
pub(crate) struct Operations {
    registry: Mutex<Registry>,
    pub(crate) running: watch::Sender<usize>,
    pub(crate) starts: StartCancels,
}

impl Default for Operations {
    fn default() -> Self {
        Self {
            registry: Mutex::default(),
            running: watch::channel(0).0,
            starts: StartCancels::default(),
        }
    }
}

impl Operations {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
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
    /// The operation's id; `None` for the short commands (list, show)
    /// that are not registered.
    pub id: Option<OperationId>,
    /// This watcher joined an operation another request started.
    pub joined: bool,
}

impl OperationWatch {
    /// A watch from the first stage on.
    pub(crate) fn new(rx: watch::Receiver<State>, id: Option<OperationId>, joined: bool) -> Self {
        Self {
            rx,
            seen: 0,
            done: false,
            id,
            joined,
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
