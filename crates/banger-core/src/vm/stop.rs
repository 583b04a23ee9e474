//! `vm stop` and `vm kill`: the agent's clean power off first, then the
//! VMM's power button, then a kill; cleanup keeps the disks.

use std::time::Duration;

use banger_api::vm::{VmRecord, VmState, VmmKind};
use banger_vmm::Vmm;

use crate::agent::Session;
use crate::cancel::CancelCause;
use crate::core::Core;
use crate::error::CoreError;
use crate::lifecycle::{VmAction, check_action};

/// Between presses of the power button.
const PRESS_EVERY: Duration = Duration::from_secs(2);

impl Core {
    /// Waits until the VM's VMM exits (its pidfd) or `until`; `true` once
    /// it is gone.
    async fn wait_vmm_gone(
        &self,
        vm: &VmRecord,
        vmm: &dyn Vmm,
        until: tokio::time::Instant,
    ) -> bool {
        let pid = self.handles().get(&vm.id).and_then(|h| h.pid);
        match (pid, vm.runtime.api_socket.as_deref()) {
            (Some(pid), Some(sock)) => {
                let within = until.saturating_duration_since(tokio::time::Instant::now());
                vmm.wait_gone(pid, sock, within).await
            }
            _ => !self.vm_alive(vm),
        }
    }

    pub(crate) async fn stop_vm(&self, name: &str, graceful: bool) -> Result<VmRecord, CoreError> {
        // A kill does not wait for a start in flight: it cuts it short,
        // and the start's own cleanup leaves the VM stopped.
        let cut_start = !graceful && {
            let found = self.find_vm(name).await?;
            self.cancel_start(&found.id, CancelCause::Kill)
        };
        let (mut vm, _lock) = self.lock_vm(name).await?;
        if cut_start && vm.state == VmState::Stopped {
            return Ok(vm);
        }
        check_action(
            &vm.name,
            vm.state,
            if graceful {
                VmAction::Stop
            } else {
                VmAction::Kill
            },
        )?;
        if graceful && vm.state == VmState::Paused {
            // Only a running guest can shut itself down.
            if let Some(sock) = vm.runtime.api_socket.clone() {
                match self.vmm_for(vm.spec.vmm)?.resume(&sock).await {
                    Ok(()) => self.transition(&mut vm, VmState::Running).await?,
                    Err(e) => {
                        tracing::warn!(vm_id = %vm.id, error = %e, "resuming to stop it");
                    }
                }
            }
        }
        if matches!(vm.state, VmState::Running | VmState::Paused) {
            self.transition(&mut vm, VmState::Stopping).await?;
        }
        failpoint!("stop.recorded_stopping");
        if graceful {
            let vmm = self.vmm_for(vm.spec.vmm)?;
            let deadline = tokio::time::Instant::now() + self.stop_timeout();
            // The agent first: a clean shutdown from inside the guest, no
            // matter whether it listens to ACPI. Firecracker has no power
            // off; a guest reboot ends its process.
            let reboot = vm.spec.vmm == VmmKind::Firecracker;
            let session = Session::new(self.deps().agent.as_ref(), &vm);
            match session.power_off(reboot).await {
                Ok(()) => {
                    failpoint!("stop.guest_asked");
                    self.wait_vmm_gone(&vm, vmm, deadline).await;
                }
                Err(e) => {
                    tracing::info!(vm_id = %vm.id, error = %e, "agent power off failed; asking the vmm");
                }
            }
            if let Some(sock) = vm.runtime.api_socket.clone() {
                // A power-button press before the guest's logind listens is
                // lost: press again every couple of seconds until it goes.
                while self.vm_alive(&vm) && tokio::time::Instant::now() < deadline {
                    if let Err(e) = vmm.request_shutdown(&sock).await {
                        tracing::warn!(vm_id = %vm.id, error = %e, "graceful shutdown request failed; killing");
                        break;
                    }
                    let next_press = deadline.min(tokio::time::Instant::now() + PRESS_EVERY);
                    if self.wait_vmm_gone(&vm, vmm, next_press).await {
                        break;
                    }
                }
            }
        }
        failpoint!("stop.vmm_gone");
        let result = self.cleanup(&mut vm, true).await;
        failpoint!("stop.cleaned_up");
        vm.state = VmState::Stopped;
        vm.runtime.last_error = result.as_ref().err().map(ToString::to_string);
        self.save(&mut vm).await?;
        self.rebuild_dns().await;
        result.map(|()| vm)
    }
}
