//! `vm pause` and `vm resume`: the guest's vCPUs frozen and thawed, the
//! VMM process kept. The state is recorded, so a daemon restart keeps a
//! paused VM paused.

use banger_api::vm::{VmRecord, VmState};

use crate::agent::AgentChannel;
use crate::core::Core;
use crate::error::{CoreError, HostError};
use crate::lifecycle::{VmAction, check_action};

impl Core {
    /// Tells the agent connector that the VM's guest is frozen (or no
    /// longer): a frozen guest's silence is not a stalled channel.
    pub(crate) fn agent_paused(&self, vm: &VmRecord, paused: bool) {
        if let Some(AgentChannel::Serial(path)) = AgentChannel::of(&vm.runtime) {
            let agent = &self.deps().agent;
            if paused {
                agent.pause(path);
            } else {
                agent.unpause(path);
            }
        }
    }

    pub(crate) async fn pause_vm(&self, name: &str, pause: bool) -> Result<VmRecord, CoreError> {
        let (mut vm, _lock) = self.lock_vm(name).await?;
        check_action(
            &vm.name,
            vm.state,
            if pause {
                VmAction::Pause
            } else {
                VmAction::Resume
            },
        )?;
        let vmm = self.vmm_for(vm.spec.vmm)?;
        let socket = crate::snapshot::control_socket(&vm)?;
        if pause {
            self.agent_paused(&vm, true);
            if let Err(e) = vmm.pause(&socket).await {
                self.agent_paused(&vm, false);
                return Err(HostError::from(e).into());
            }
            self.transition(&mut vm, VmState::Paused).await?;
        } else {
            vmm.resume(&socket).await.map_err(HostError::from)?;
            self.agent_paused(&vm, false);
            self.transition(&mut vm, VmState::Running).await?;
        }
        tracing::info!(vm_id = %vm.id, name = %vm.name, state = %vm.state, "vm {}", if pause { "paused" } else { "resumed" });
        Ok(vm)
    }
}
