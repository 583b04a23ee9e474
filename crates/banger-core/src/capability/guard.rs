//! The network guard every VM gets: its tap sends only with the VM's own
//! MAC and address, reaches only banger's DNS on the host, and (unless
//! the config says `network.vm_to_vm`) no other VM. Not an opt-in: a
//! guest is untrusted whatever its spec says.

use async_trait::async_trait;
use banger_api::vm::{VmRecord, VmSpec};
use banger_host::firewall::{FirewallError, Guard};
use banger_vmm::mac_for;

use super::{CapContext, Capability};
use crate::error::{CoreError, HostError, InternalError};

#[derive(Debug)]
pub struct NetGuard;

fn fw_err(vm: &VmRecord, source: FirewallError) -> CoreError {
    HostError::Guard {
        vm: vm.name.clone(),
        source,
    }
    .into()
}

#[async_trait]
impl Capability for NetGuard {
    fn name(&self) -> &'static str {
        "guard"
    }

    async fn start(&self, cx: CapContext<'_>, vm: &VmRecord, tap: &str) -> Result<(), CoreError> {
        let guest_ip = vm
            .runtime
            .guest_ip
            .ok_or_else(|| InternalError::NoAddress(vm.name.clone()))?;
        let guard = Guard {
            tap: tap.to_owned(),
            mac: mac_for(&vm.id),
            guest_ip,
            bridge: cx.network.bridge.clone(),
            bridge_ip: cx.network.bridge_ip,
        };
        cx.firewall
            .add_guard(&guard)
            .await
            .map_err(|e| fw_err(vm, e))?;
        tracing::debug!(vm_id = %vm.id, tap, mac = %guard.mac, ip = %guest_ip, "guard on");
        Ok(())
    }

    async fn apply_change(
        &self,
        _cx: CapContext<'_>,
        _before: &VmSpec,
        _vm: &VmRecord,
        _tap: &str,
    ) -> Result<(), CoreError> {
        // No part of a VM's spec changes its guard.
        Ok(())
    }

    async fn cleanup(&self, cx: CapContext<'_>, vm: &VmRecord, tap: &str) -> Result<(), CoreError> {
        cx.firewall
            .remove_guard(tap)
            .await
            .map_err(|e| fw_err(vm, e))
    }
}
