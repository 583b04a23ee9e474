//! Outbound NAT through the host's uplink (nftables).

use async_trait::async_trait;
use banger_api::vm::{VmRecord, VmSpec};
use banger_host::firewall::{FirewallError, NatRule};

use super::{CapContext, Capability};
use crate::error::{CoreError, HostError, InternalError};

#[derive(Debug)]
pub struct Nat;

fn fw_err(vm: &VmRecord, source: FirewallError) -> CoreError {
    HostError::Nat {
        vm: vm.name.clone(),
        source,
    }
    .into()
}

impl Nat {
    async fn rule(cx: CapContext<'_>, vm: &VmRecord, tap: &str) -> Result<NatRule, CoreError> {
        let uplink = match &cx.network.uplink {
            Some(u) => u.clone(),
            None => cx
                .firewall
                .default_uplink()
                .await
                .map_err(|e| fw_err(vm, e))?
                .ok_or_else(|| fw_err(vm, FirewallError::NoUplink))?,
        };
        let guest_ip = vm
            .runtime
            .guest_ip
            .ok_or_else(|| InternalError::NoNatAddress(vm.name.clone()))?;
        Ok(NatRule {
            tap: tap.to_owned(),
            guest_ip,
            bridge: cx.network.bridge.clone(),
            uplink,
        })
    }

    async fn add(cx: CapContext<'_>, vm: &VmRecord, tap: &str) -> Result<(), CoreError> {
        let rule = Self::rule(cx, vm, tap).await?;
        cx.firewall
            .add_nat(&rule)
            .await
            .map_err(|e| fw_err(vm, e))?;
        tracing::info!(vm_id = %vm.id, tap, uplink = %rule.uplink, "nat on");
        Ok(())
    }

    async fn remove(cx: CapContext<'_>, vm: &VmRecord, tap: &str) -> Result<(), CoreError> {
        cx.firewall.remove_nat(tap).await.map_err(|e| fw_err(vm, e))
    }
}

#[async_trait]
impl Capability for Nat {
    fn name(&self) -> &'static str {
        "nat"
    }

    async fn start(&self, cx: CapContext<'_>, vm: &VmRecord, tap: &str) -> Result<(), CoreError> {
        if vm.spec.nat {
            Self::add(cx, vm, tap).await?;
        }
        Ok(())
    }

    async fn apply_change(
        &self,
        cx: CapContext<'_>,
        before: &VmSpec,
        vm: &VmRecord,
        tap: &str,
    ) -> Result<(), CoreError> {
        match (before.nat, vm.spec.nat) {
            (false, true) => Self::add(cx, vm, tap).await,
            (true, false) => {
                Self::remove(cx, vm, tap).await?;
                tracing::info!(vm_id = %vm.id, tap, "nat off");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn cleanup(&self, cx: CapContext<'_>, vm: &VmRecord, tap: &str) -> Result<(), CoreError> {
        Self::remove(cx, vm, tap).await
    }
}
