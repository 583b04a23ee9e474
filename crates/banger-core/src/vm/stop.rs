//! `vm stop` and `vm kill`: the agent's clean power off first, then the
//! VMM's power button, then a kill; cleanup keeps the disks.

use std::path::Path;
use std::time::Duration;

use banger_api::vm::{VmRecord, VmState, VmmKind};

use crate::agent::Session;
use crate::core::Core;
use crate::error::CoreError;
use crate::lifecycle::{VmAction, check_action};

impl Core {
    pub(crate) async fn stop_vm(&self, name: &str, graceful: bool) -> Result<VmRecord, CoreError> {
        let (mut vm, _lock) = self.lock_vm(name).await?;
        check_action(
            &vm.name,
            vm.state,
            if graceful {
                VmAction::Stop
            } else {
                VmAction::Kill
            },
        )?;
        if vm.state == VmState::Running {
            self.transition(&mut vm, VmState::Stopping).await?;
        }
        if graceful {
            let vmm = self.vmm_for(vm.spec.vmm)?;
            let deadline = tokio::time::Instant::now() + self.stop_timeout();
            // The agent first: a clean shutdown from inside the guest, no
            // matter whether it listens to ACPI. Firecracker has no power
            // off; a guest reboot ends its process.
            let reboot = vm.spec.vmm == VmmKind::Firecracker;
            let session =
                Session::new(self.deps().agent.as_ref(), vm.runtime.vsock_path.as_deref());
            match session.power_off(reboot).await {
                Ok(()) => {
                    while self.vm_alive(&vm) && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Err(e) => {
                    tracing::info!(vm_id = %vm.id, error = %e, "agent power off failed; asking the vmm");
                }
            }
            if let Some(sock) = vm.runtime.api_socket.clone() {
                // A power-button press before the guest's logind listens is
                // lost: press again every couple of seconds until it goes.
                let mut next_press = tokio::time::Instant::now();
                while self.vm_alive(&vm) && tokio::time::Instant::now() < deadline {
                    if tokio::time::Instant::now() >= next_press {
                        if let Err(e) = vmm.request_shutdown(Path::new(&sock)).await {
                            tracing::warn!(vm_id = %vm.id, error = %e, "graceful shutdown request failed; killing");
                            break;
                        }
                        next_press = tokio::time::Instant::now() + Duration::from_secs(2);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let result = self.cleanup(&mut vm, true).await;
        vm.state = VmState::Stopped;
        vm.runtime.last_error = result.as_ref().err().map(ToString::to_string);
        self.save(&mut vm).await?;
        self.rebuild_dns().await;
        result.map(|()| vm)
    }
}
