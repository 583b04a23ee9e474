//! A start the last daemon did not finish: its VMM runs, but the guest's
//! agent had not answered yet when that daemon died.

use banger_api::doctor::Accel;
use banger_api::vm::{VmId, VmRecord, VmState};

use crate::cancel::StartCancel;
use crate::core::Core;
use crate::error::CoreError;
use crate::progress::ProgressSink;

impl Core {
    async fn wait_adopted_agent(
        &self,
        vm: &VmRecord,
        (progress, cancel): (&ProgressSink, &StartCancel),
    ) -> Result<(), CoreError> {
        let vmm = self.vmm_for(vm.spec.vmm)?;
        let accel = self
            .host_report()
            .await?
            .default_vmm
            .map_or(Accel::Tcg, |c| c.accel);
        let pid = self.handles().get(vm.id.as_str()).and_then(|h| h.pid);
        self.await_agent(vm, vmm, pid, accel, None, (progress, cancel))
            .await
    }

    /// Waits for the agent as the start would have, then records the VM
    /// running; without an answer within the start's bound the VM is
    /// torn down and marked `error` with why.
    pub(crate) async fn finish_start(
        &self,
        id: &VmId,
        progress: &ProgressSink,
    ) -> Result<VmRecord, CoreError> {
        // A kill cuts the wait short; the VM then ends stopped.
        let cancel = self.operations.starts.register(id);
        let (mut vm, _lock) = self.lock_vm(id.as_str()).await?;
        if vm.state != VmState::Starting {
            // Stopped or killed meanwhile: nothing left to finish.
            return Ok(vm);
        }
        // Any failure here, this daemon's own included (no driver, no host
        // report), ends as a failed start: torn down, `error`, never stuck
        // `starting`.
        let waited = self.wait_adopted_agent(&vm, (progress, &cancel)).await;
        match waited {
            Ok(()) => {
                self.transition(&mut vm, VmState::Running).await?;
                tracing::info!(vm_id = %vm.id, name = %vm.name, "vm running (its start outlived a daemon restart)");
                self.rebuild_dns().await;
                Ok(vm)
            }
            Err(cause @ CoreError::Cancelled { .. }) => {
                let cleanup = self.cleanup(&mut vm, true).await;
                let to = if cleanup.is_ok() {
                    VmState::Stopped
                } else {
                    VmState::Error
                };
                vm.runtime.last_error = cleanup.err().map(|e| format!("{cause}; cleanup: {e}"));
                if let Err(e) = self.transition(&mut vm, to).await {
                    tracing::warn!(vm_id = %vm.id, error = %e, "recording the cancelled start");
                }
                Err(cause)
            }
            Err(cause) => {
                let cleanup = self.cleanup(&mut vm, true).await.err().map(Box::new);
                let mut msg = format!(
                    "the start was interrupted by a daemon restart, and the guest agent did not answer after it: {cause}"
                );
                if let Some(c) = &cleanup {
                    msg.push_str(&format!("; cleanup: {c}"));
                }
                vm.runtime.last_error = Some(msg);
                if let Err(e) = self.transition(&mut vm, VmState::Error).await {
                    tracing::warn!(vm_id = %vm.id, error = %e, "recording the failed start");
                }
                Err(CoreError::StartFailed {
                    vm: vm.name.clone(),
                    cause: Box::new(cause),
                    cleanup,
                    context: String::new(),
                })
            }
        }
    }
}
