//! Capabilities: host features a VM opts into, each with the same hooks
//! called from the lifecycle: at start once the VM's tap exists, on a
//! spec change of a running VM, and in cleanup: the network guard (every
//! VM) and NAT.
//!
//! Hooks receive the tap cleanup resolved (memory, scratch file, runtime
//! mirror, name derived from the id), so a capability's teardown works
//! after a daemon restart or with a corrupt `handles.json`; and a
//! [`CapContext`] with just the host pieces capabilities may use.

mod guard;
mod nat;

use async_trait::async_trait;
use banger_api::vm::{VmRecord, VmSpec};
use banger_config::NetworkConfig;
use banger_host::firewall::Firewall;

use crate::error::CoreError;

pub use guard::NetGuard;
pub use nat::Nat;

/// What a capability hook may reach: the firewall and the network
/// configuration, never the whole core.
#[derive(Debug, Clone, Copy)]
pub struct CapContext<'a> {
    pub firewall: &'a dyn Firewall,
    pub network: &'a NetworkConfig,
}

#[async_trait]
pub trait Capability: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    /// At every start, after the tap exists and before the VMM runs.
    async fn start(&self, cx: CapContext<'_>, vm: &VmRecord, tap: &str) -> Result<(), CoreError>;
    /// A spec change while the VM's VMM runs; must be a no-op when the
    /// capability's part of the spec did not change.
    async fn apply_change(
        &self,
        cx: CapContext<'_>,
        before: &VmSpec,
        vm: &VmRecord,
        tap: &str,
    ) -> Result<(), CoreError>;
    /// Teardown; idempotent, whatever the spec says now.
    async fn cleanup(&self, cx: CapContext<'_>, vm: &VmRecord, tap: &str) -> Result<(), CoreError>;
}

/// Every capability, in the order they are applied (cleanup reverses
/// it): the guard first, so no frame of the guest passes unchecked.
pub fn all() -> [&'static dyn Capability; 2] {
    [&NetGuard, &Nat]
}
