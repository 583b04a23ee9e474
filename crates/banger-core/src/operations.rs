//! Long commands as daemon tasks: each runs to its end whatever the
//! client that asked for it does (a Ctrl-C, a closed terminal, a dropped
//! ssh session), and any number of clients may watch one.
//!
//! A watcher sees every stage from the operation's start, then its
//! outcome. A start of a VM whose start is in flight does not start
//! again: it watches the one in flight (`banger vm start NAME` run twice
//! shows the same stages and result twice).

use std::sync::Arc;

use banger_api::operation::{OperationId, OperationInfo, OperationKind};
use banger_api::vm::{VmId, VmRecord};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cancel::CancelCause;
use crate::command::{Command, Reply};
use crate::core::Core;
use crate::error::CoreError;
use crate::inflight::{Cancel, Entry, Key, State};
pub use crate::inflight::{OperationEvent, OperationWatch, Outcome};
use crate::progress::ProgressSink;

/// What an operation task runs.
enum Job {
    Command(Command),
    FinishStart(VmId),
}

impl Job {
    async fn run(self, core: &Arc<Core>, sink: &ProgressSink) -> Result<Reply, CoreError> {
        match self {
            // The VM goes into its lease as soon as it exists.
            Job::Command(Command::VmCreate(req)) if req.lease.is_some() => {
                let lease = req.lease.clone();
                let made = core.execute(Command::VmCreate(req), sink).await;
                if let (Some(lease), Ok(Reply::Vm(vm))) = (lease, &made) {
                    core.lease_vm(&lease, vm.id.clone());
                }
                made
            }
            Job::Command(cmd) => core.execute(cmd, sink).await,
            Job::FinishStart(id) => core.finish_start(&id, sink).await.map(Reply::Vm),
        }
    }

    /// Its entry in the operations list, and how it is cancelled.
    fn describe(&self, key: Option<&Key>) -> Option<(OperationKind, String, Option<Cancel>)> {
        let start = |k: Option<&Key>| k.map(|Key::Start(id)| Cancel::Start(id.clone()));
        match self {
            Job::Command(cmd) => {
                let (kind, target) = cmd.operation()?;
                let cancel = if cmd.dropped_on_cancel() {
                    Some(Cancel::Drop(CancellationToken::new()))
                } else if kind == OperationKind::VmStart {
                    start(key)
                } else {
                    None
                };
                Some((kind, target, cancel))
            }
            Job::FinishStart(id) => Some((OperationKind::VmStart, id.to_string(), start(key))),
        }
    }
}

/// An operation counted as running, and its entry in the registry; both
/// undone when dropped.
struct Unjoin {
    core: Arc<Core>,
    entry: Option<(OperationId, Option<Key>)>,
}

impl Unjoin {
    fn new(core: &Arc<Core>, entry: Option<(OperationId, Option<Key>)>) -> Self {
        core.operations.running.send_modify(|n| *n += 1);
        Self {
            core: Arc::clone(core),
            entry,
        }
    }
}

impl Drop for Unjoin {
    fn drop(&mut self) {
        if let Some((id, key)) = self.entry.take() {
            self.core.operations.lock().remove(&id, key.as_ref());
        }
        self.core
            .operations
            .running
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Core {
    /// Runs `cmd` as a task of the daemon's and returns a watch on it.
    /// Dropping the watch does not stop the task. A start of a VM whose
    /// start is in flight returns a watch on that one instead.
    pub async fn launch(self: &Arc<Self>, cmd: Command) -> OperationWatch {
        let key = self.joinable_key(&cmd).await;
        self.spawn_job(key, Job::Command(cmd))
    }

    /// The rest of a start an earlier daemon left `starting`, as the start
    /// in flight that a `vm start` of the VM watches.
    pub(crate) fn finish_interrupted_start(self: &Arc<Self>, vm: VmRecord) -> OperationWatch {
        self.spawn_job(Some(Key::Start(vm.id.clone())), Job::FinishStart(vm.id))
    }

    fn spawn_job(self: &Arc<Self>, key: Option<Key>, job: Job) -> OperationWatch {
        let described = job.describe(key.as_ref());
        let what = described.as_ref().map_or_else(
            || "the operation".to_owned(),
            |(k, t, _)| format!("{k} {t:?}"),
        );
        let dropped = match &described {
            Some((_, _, Some(Cancel::Drop(token)))) => Some(token.clone()),
            _ => None,
        };
        let (tx, rx, id) = {
            let mut reg = self.operations.lock();
            if let Some((id, e)) = key.as_ref().and_then(|k| reg.joined(k)) {
                return OperationWatch::new(e.rx.clone(), Some(id.clone()), true);
            }
            let (tx, rx) = watch::channel(State::default());
            let id = described.map(|(kind, target, cancel)| {
                let id = OperationId::from_number(rand::random());
                let entry = Entry {
                    kind,
                    target,
                    started_at: chrono::Utc::now(),
                    rx: rx.clone(),
                    cancel,
                };
                reg.by_id.insert(id.clone(), entry);
                if let Some(k) = &key {
                    reg.joinable.insert(k.clone(), id.clone());
                }
                id
            });
            (tx, rx, id)
        };
        let core = Arc::clone(self);
        // Leaves the registry with the task however it ends (a panic, an
        // abort): a dead start must not be joined for good.
        let unjoin = Unjoin::new(self, id.clone().map(|id| (id, key)));
        tokio::spawn(async move {
            let unjoin = unjoin;
            let (sink, mut stages) = ProgressSink::channel();
            let mut run = Box::pin(job.run(&core, &sink));
            let dropped = async {
                match &dropped {
                    Some(t) => t.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(dropped);
            let outcome = loop {
                tokio::select! {
                    biased;
                    Some(p) = stages.recv() => tx.send_modify(|st| st.stages.push(p)),
                    res = &mut run => break res,
                    // Its drop (when `run` goes) is the cleanup.
                    () = &mut dropped => break Err(CoreError::Cancelled {
                        what,
                        by: CancelCause::Request,
                    }),
                }
            };
            // A cancelled job's cleanup (its drop) is over before anyone
            // hears the outcome, and so is its entry in the list.
            drop(run);
            while let Ok(p) = stages.try_recv() {
                tx.send_modify(|st| st.stages.push(p));
            }
            drop(unjoin);
            tx.send_modify(|st| st.outcome = Some(Arc::new(outcome)));
        });
        OperationWatch::new(rx, id, false)
    }

    /// The operations in flight, oldest first.
    pub fn operations_list(&self) -> Vec<OperationInfo> {
        let reg = self.operations.lock();
        let mut ops: Vec<_> = reg.by_id.iter().map(|(id, e)| e.info(id)).collect();
        ops.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        ops
    }

    /// A watch on operation `id` from its first stage on.
    pub fn operation_watch(&self, id: &OperationId) -> Result<OperationWatch, CoreError> {
        let reg = self.operations.lock();
        let e = reg
            .by_id
            .get(id)
            .ok_or_else(|| CoreError::OperationNotFound(id.clone()))?;
        Ok(OperationWatch::new(e.rx.clone(), Some(id.clone()), true))
    }

    /// Cancels operation `id`: an asset build or import stops where it
    /// is and removes what it made; a VM start is cut short at its next
    /// wait and cleaned up. Returns the operation as it was; its watchers
    /// see it end with a `cancelled` error.
    pub fn operation_cancel(&self, id: &OperationId) -> Result<OperationInfo, CoreError> {
        let (info, cancel) = {
            let reg = self.operations.lock();
            let e = reg
                .by_id
                .get(id)
                .ok_or_else(|| CoreError::OperationNotFound(id.clone()))?;
            (e.info(id), e.cancel.clone())
        };
        match cancel {
            Some(Cancel::Drop(token)) => token.cancel(),
            Some(Cancel::Start(vm)) => {
                self.cancel_start(&vm, CancelCause::Request);
            }
            None => {
                return Err(CoreError::NotCancellable {
                    id: id.clone(),
                    kind: info.kind,
                });
            }
        }
        tracing::info!(operation = %id, kind = %info.kind, target = %info.target, "operation cancelled");
        Ok(info)
    }

    /// Cuts the start of `vm` in flight short; `false` if none runs.
    pub(crate) fn cancel_start(&self, vm: &VmId, cause: CancelCause) -> bool {
        self.operations.starts.cancel(vm, cause)
    }

    /// The daemon is stopping: no new command is taken, and leases that
    /// end now leave their VMs to the next daemon (which removes them).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Waits, at most `within`, for the operations in flight to end;
    /// `false` if some still run.
    pub async fn operations_done(&self, within: std::time::Duration) -> bool {
        let mut running = self.operations.running.subscribe();
        tokio::time::timeout(within, running.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The key under which `cmd` may be joined; `None` for commands that
    /// each run on their own (or whose VM does not resolve: the command
    /// itself then says so).
    async fn joinable_key(&self, cmd: &Command) -> Option<Key> {
        match cmd {
            Command::VmStart { vm } => self.find_vm(vm).await.ok().map(|v| Key::Start(v.id)),
            _ => None,
        }
    }
}
