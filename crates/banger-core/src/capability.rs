//! Capabilities: host features a VM opts into, each with the same hooks
//! called from the lifecycle: at start once the VM's tap exists, on a
//! spec change of a running VM, and in cleanup. NAT is the first.
//!
//! Hooks receive the tap cleanup resolved (memory, scratch file, runtime
//! mirror, name derived from the id), so a capability's teardown works
//! after a daemon restart or with a corrupt `handles.json`.

use async_trait::async_trait;
use banger_api::vm::{VmRecord, VmSpec};
use banger_host::firewall::{FirewallError, NatRule};

use crate::error::CoreError;
use crate::service::Core;

#[async_trait]
pub trait Capability: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    /// At every start, after the tap exists and before the VMM runs.
    async fn start(&self, core: &Core, vm: &VmRecord, tap: &str) -> Result<(), CoreError>;
    /// A spec change while the VM's VMM runs; must be a no-op when the
    /// capability's part of the spec did not change.
    async fn apply_change(
        &self,
        core: &Core,
        before: &VmSpec,
        vm: &VmRecord,
        tap: &str,
    ) -> Result<(), CoreError>;
    /// Teardown; idempotent, whatever the spec says now.
    async fn cleanup(&self, core: &Core, vm: &VmRecord, tap: &str) -> Result<(), String>;
}

/// Every capability, in the order they are applied (cleanup reverses it).
pub fn all() -> [&'static dyn Capability; 1] {
    [&Nat]
}

/// Outbound NAT through the host's uplink (nftables).
#[derive(Debug)]
pub struct Nat;

fn fw_err(vm: &VmRecord, e: FirewallError) -> CoreError {
    CoreError::Host(format!("nat for vm {:?}: {e}", vm.name))
}

impl Nat {
    async fn rule(core: &Core, vm: &VmRecord, tap: &str) -> Result<NatRule, CoreError> {
        let net = &core.config().network;
        let uplink = match &net.uplink {
            Some(u) => u.clone(),
            None => core
                .deps
                .firewall
                .default_uplink()
                .await
                .map_err(|e| fw_err(vm, e))?
                .ok_or_else(|| fw_err(vm, FirewallError::NoUplink))?,
        };
        let guest_ip = vm
            .runtime
            .guest_ip
            .as_deref()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                CoreError::Internal(format!("vm {:?} has no address for nat", vm.name))
            })?;
        Ok(NatRule {
            tap: tap.to_owned(),
            guest_ip,
            bridge: net.bridge.clone(),
            uplink,
        })
    }

    async fn add(core: &Core, vm: &VmRecord, tap: &str) -> Result<(), CoreError> {
        let rule = Self::rule(core, vm, tap).await?;
        core.deps
            .firewall
            .add_nat(&rule)
            .await
            .map_err(|e| fw_err(vm, e))?;
        tracing::info!(vm_id = %vm.id, tap, uplink = %rule.uplink, "nat on");
        Ok(())
    }
}

#[async_trait]
impl Capability for Nat {
    fn name(&self) -> &'static str {
        "nat"
    }

    async fn start(&self, core: &Core, vm: &VmRecord, tap: &str) -> Result<(), CoreError> {
        if vm.spec.nat {
            Self::add(core, vm, tap).await?;
        }
        Ok(())
    }

    async fn apply_change(
        &self,
        core: &Core,
        before: &VmSpec,
        vm: &VmRecord,
        tap: &str,
    ) -> Result<(), CoreError> {
        match (before.nat, vm.spec.nat) {
            (false, true) => Self::add(core, vm, tap).await,
            (true, false) => {
                core.deps
                    .firewall
                    .remove_nat(tap)
                    .await
                    .map_err(|e| fw_err(vm, e))?;
                tracing::info!(vm_id = %vm.id, tap, "nat off");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn cleanup(&self, core: &Core, vm: &VmRecord, tap: &str) -> Result<(), String> {
        core.deps
            .firewall
            .remove_nat(tap)
            .await
            .map_err(|e| fw_err(vm, e).to_string())
    }
}
