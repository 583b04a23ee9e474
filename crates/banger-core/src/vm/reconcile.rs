//! Daemon start: adopt VMs whose VMM still runs, tear down the rest.

use banger_api::vm::{VmRecord, VmState};
use banger_store::Store;

use crate::core::Core;
use crate::error::CoreError;
use crate::handles::VmHandles;

impl Core {
    /// Daemon start: adopt VMs whose VMM runs, tear down the rest.
    pub async fn reconcile(&self) -> Result<(), CoreError> {
        let vms = self.db(Store::list_vms).await?;
        for mut vm in vms {
            if !matches!(
                vm.state,
                VmState::Starting | VmState::Running | VmState::Paused | VmState::Stopping
            ) {
                continue;
            }
            let recovered = self.recovered_handles(&vm).await;
            let sock = vm.runtime.api_socket.clone();
            let pid = match (self.vmm_for(vm.spec.vmm), sock.as_deref()) {
                (Ok(vmm), Some(s)) => recovered
                    .pid
                    .filter(|p| vmm.alive(*p, s))
                    .or_else(|| vmm.find(s)),
                _ => None,
            };
            // A restore cut short left a guest that is still a copy of
            // its snapshot (its address, its keys): never adopted. The VM
            // keeps its snapshot and restores again at its next start.
            let restoring = vm.state == VmState::Starting && vm.runtime.restore_from.is_some();
            match (pid, vm.state) {
                (Some(pid), VmState::Running | VmState::Starting | VmState::Paused)
                    if !restoring =>
                {
                    let h = VmHandles {
                        pid: Some(pid),
                        ..recovered
                    };
                    // Rewrites a lost or corrupt scratch file from what was
                    // recovered, so disk and memory agree again.
                    self.record_handles(&mut vm, h).await?;
                    // A paused VM stays paused: its VMM says so too.
                    // Its disks are its own from now on.
                    vm.runtime.warm_start = false;
                    if vm.state != VmState::Paused {
                        vm.state = VmState::Running;
                        self.resume_interrupted_snapshot(&vm).await;
                    }
                    self.save(&mut vm).await?;
                    tracing::info!(vm_id = %vm.id, name = %vm.name, pid, "adopted running vm");
                }
                (_, was) => {
                    self.handles().adopt(&vm.id, recovered);
                    let cleanup = self.cleanup(&mut vm, true).await;
                    vm.state = VmState::Stopped;
                    let mut msg = format!(
                        "vm was {was} when bangerd restarted and its vmm was gone; cleaned up"
                    );
                    if was == VmState::Stopping {
                        msg = "bangerd restarted during a stop; the stop was completed".into();
                    }
                    if let Err(e) = cleanup {
                        msg.push_str(&format!(" (cleanup errors: {e})"));
                    }
                    vm.runtime.last_error = Some(msg);
                    self.save(&mut vm).await?;
                    tracing::info!(vm_id = %vm.id, name = %vm.name, "reconciled dead vm");
                }
            }
        }
        if let Err(e) = self.sweep_snapshots().await {
            tracing::warn!(error = %e, "sweeping interrupted snapshots");
        }
        // A new agent, kernel or VMM since the last run: old templates go.
        if let Err(e) = self.sweep_templates().await {
            tracing::warn!(error = %e, "removing stale templates");
        }
        self.rebuild_dns().await;
        Ok(())
    }

    /// A VM recorded running whose VMM is paused was being snapshotted
    /// when the daemon died (a user's pause is recorded as paused): it
    /// runs on.
    async fn resume_interrupted_snapshot(&self, vm: &VmRecord) {
        let (Ok(vmm), Some(sock)) = (self.vmm_for(vm.spec.vmm), vm.runtime.api_socket.as_deref())
        else {
            return;
        };
        match vmm.is_paused(sock).await {
            Ok(true) => match vmm.resume(sock).await {
                Ok(()) => {
                    tracing::info!(vm_id = %vm.id, "resumed a vm paused by an interrupted snapshot")
                }
                Err(e) => {
                    tracing::warn!(vm_id = %vm.id, error = %e, "resuming after an interrupted snapshot")
                }
            },
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(vm_id = %vm.id, error = %e, "asking whether the vm is paused")
            }
        }
    }
}
