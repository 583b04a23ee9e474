//! Long commands as daemon tasks: each runs to its end whatever the
//! client that asked for it does (a Ctrl-C, a closed terminal, a dropped
//! ssh session), and any number of clients may watch one.
//!
//! A watcher sees every stage from the operation's start, then its
//! outcome. A start of a VM whose start is in flight does not start
//! again: it watches the one in flight (`banger vm start NAME` run twice
//! shows the same stages and result twice).

use std::sync::Arc;

use banger_api::vm::{VmId, VmRecord};
use tokio::sync::watch;

use crate::command::{Command, Reply};
use crate::core::Core;
use crate::error::CoreError;
use crate::inflight::{Key, State};
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
}

/// An operation counted as running, and its key in the registry; both
/// undone when dropped.
struct Unjoin {
    core: Arc<Core>,
    key: Option<Key>,
}

impl Unjoin {
    fn new(core: &Arc<Core>, key: Option<Key>) -> Self {
        core.operations.running.send_modify(|n| *n += 1);
        Self {
            core: Arc::clone(core),
            key,
        }
    }
}

impl Drop for Unjoin {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.core.operations.lock().remove(&k);
        }
        self.core
            .operations
            .running
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Asset builds and imports are the client's own: its going away (a
/// Ctrl-C, as with `docker build`) cancels them, and their cleanup on
/// drop removes the half-made asset. Everything else runs to its end.
fn cancelled_with_client(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::KernelImport(_)
            | Command::KernelAdd(_)
            | Command::ImageBuild(_)
            | Command::ImageImport(_)
    )
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
        let cancellable = matches!(&job, Job::Command(cmd) if cancelled_with_client(cmd));
        let (tx, rx) = {
            let mut joinable = self.operations.lock();
            if let Some(rx) = key.as_ref().and_then(|k| joinable.get(k)) {
                return OperationWatch::new(rx.clone(), true, None);
            }
            let (tx, rx) = watch::channel(State::default());
            if let Some(k) = &key {
                joinable.insert(k.clone(), rx.clone());
            }
            (tx, rx)
        };
        let core = Arc::clone(self);
        // Leaves the registry with the task however it ends (a panic, an
        // abort): a dead start must not be joined for good.
        let unjoin = Unjoin::new(self, key.clone());
        let task = tokio::spawn(async move {
            let _unjoin = unjoin;
            let (sink, mut stages) = ProgressSink::channel();
            let run = job.run(&core, &sink);
            tokio::pin!(run);
            let outcome = loop {
                tokio::select! {
                    biased;
                    Some(p) = stages.recv() => tx.send_modify(|st| st.stages.push(p)),
                    res = &mut run => break res,
                }
            };
            while let Ok(p) = stages.try_recv() {
                tx.send_modify(|st| st.stages.push(p));
            }
            tx.send_modify(|st| st.outcome = Some(Arc::new(outcome)));
        });
        OperationWatch::new(rx, false, cancellable.then(|| task.abort_handle()))
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
