//! Daemon start: adopt VMs whose VMM still runs, tear down the rest.

use banger_api::vm::VmState;
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
                VmState::Starting | VmState::Running | VmState::Stopping
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
            match (pid, vm.state) {
                (Some(pid), VmState::Running | VmState::Starting) => {
                    let h = VmHandles {
                        pid: Some(pid),
                        ..recovered
                    };
                    // Rewrites a lost or corrupt scratch file from what was
                    // recovered, so disk and memory agree again.
                    self.record_handles(&mut vm, h).await?;
                    vm.state = VmState::Running;
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
        self.rebuild_dns().await;
        Ok(())
    }
}
