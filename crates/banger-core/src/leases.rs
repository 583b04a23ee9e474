//! Leases: VMs that live only as long as a client holds on to them.
//!
//! `vm run --rm` is carried out by the daemon, as docker's `--rm` is: the
//! CLI holds a lease (an open connection) and creates its VM under it;
//! when the lease ends, however it ends (the run is over, a closed
//! terminal, SIGHUP, `kill -9`), the daemon kills and deletes every VM
//! created under it, whatever stage its start or command was in. A VM
//! created under a lease is recorded so (`runtime.leased`): one the
//! daemon finds at its own start lost its lease with the last daemon's
//! connections, and goes too.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use banger_api::vm::VmId;

use crate::command::Command;
use crate::core::Core;
use crate::error::CoreError;

/// A lease's handle; ending it (dropping it) removes its VMs.
#[derive(Debug)]
pub struct Lease {
    id: String,
    core: Weak<Core>,
}

impl Lease {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Ends the lease and waits until its VMs are gone (dropping it ends
    /// it too, without waiting).
    pub async fn end(self) {
        let removals = match self.core.upgrade() {
            Some(core) => core.end_lease(&self.id),
            None => Vec::new(),
        };
        for r in removals {
            let _ = r.await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(core) = self.core.upgrade() {
            // A second end (after `end`) finds nothing left to do.
            drop(core.end_lease(&self.id));
        }
    }
}

impl Core {
    fn lease_table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<VmId>>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new lease, held until the returned handle is dropped.
    pub fn hold_lease(self: &Arc<Self>) -> Lease {
        let id = crate::ids::new_id();
        self.lease_table().insert(id.clone(), Vec::new());
        tracing::info!(lease = %id, "lease held");
        Lease {
            id,
            core: Arc::downgrade(self),
        }
    }

    /// A VM made under a lease that has ended since: it is on its way
    /// out, and no start may bring it up again.
    pub(crate) fn lease_ended(&self, vm: &banger_api::vm::VmRecord) -> bool {
        vm.runtime.leased && !self.lease_table().values().any(|vms| vms.contains(&vm.id))
    }

    /// Refuses a create under a lease that is not held.
    pub(crate) fn check_lease(&self, lease: &str) -> Result<(), CoreError> {
        if self.lease_table().contains_key(lease) {
            Ok(())
        } else {
            Err(CoreError::InvalidArgument(format!(
                "lease {lease:?} is not held (it ended, or was never given out): hold one with POST /v1/leases and create the vm while it is open"
            )))
        }
    }

    /// Puts the VM `id` (just created under `lease`) in its lease; if the
    /// lease ended meanwhile the VM goes at once.
    pub(crate) fn lease_vm(self: &Arc<Self>, lease: &str, id: VmId) {
        let mut held = self.lease_table();
        match held.get_mut(lease) {
            Some(vms) => vms.push(id),
            None => {
                drop(held);
                drop(self.remove_leased(id));
            }
        }
    }

    fn end_lease(self: &Arc<Self>, lease: &str) -> Vec<tokio::task::JoinHandle<()>> {
        let Some(vms) = self.lease_table().remove(lease) else {
            return Vec::new();
        };
        if *self.shutdown.borrow() {
            // Its connection closed because this daemon is stopping: the
            // VMs stay recorded `leased`, and the next daemon removes them.
            tracing::info!(
                lease,
                vms = vms.len(),
                "daemon stopping; the next daemon removes this lease's vms"
            );
            return Vec::new();
        }
        tracing::info!(lease, vms = vms.len(), "lease ended; removing its vms");
        vms.into_iter()
            .filter_map(|id| self.remove_leased(id))
            .collect()
    }

    /// Kills and deletes a leased VM, after whatever operation holds it
    /// (a start) is over. Needs a runtime: a lease ends in one.
    pub(crate) fn remove_leased(self: &Arc<Self>, id: VmId) -> Option<tokio::task::JoinHandle<()>> {
        let core = Arc::clone(self);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(vm_id = %id, "a lease ended outside the runtime; its vm stays");
            return None;
        };
        Some(rt.spawn(async move {
            let vm = id.to_string();
            let killed = core.launch(Command::VmKill { vm: vm.clone() }).await.outcome().await;
            if let Err(e) = &*killed {
                if !matches!(e, CoreError::VmNotFound(_)) && !refused(e) {
                    tracing::warn!(vm_id = %vm, error = %e, "killing a leased vm");
                }
            }
            let deleted = core.launch(Command::VmDelete { vm: vm.clone() }).await.outcome().await;
            match &*deleted {
                Ok(_) => tracing::info!(vm_id = %vm, "removed a vm whose lease ended"),
                Err(CoreError::VmNotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(vm_id = %vm, error = %e, "deleting a vm whose lease ended; `banger vm delete` retries")
                }
            }
        }))
    }
}

/// A refusal by the VM's state (a kill of a VM that is not running).
fn refused(e: &CoreError) -> bool {
    matches!(
        e,
        CoreError::Lifecycle(crate::lifecycle::LifecycleError::ActionRefused { .. })
    )
}
