//! Daemon start: adopt VMs whose VMM still runs, tear down the rest.

use std::sync::Arc;

use banger_api::vm::{VmId, VmRecord, VmState};
use banger_store::Store;

use crate::capability;
use crate::core::Core;
use crate::error::CoreError;
use crate::handles::VmHandles;

impl Core {
    /// Daemon start: adopt VMs whose VMM runs, tear down the rest. A VM
    /// whose recovery fails is marked `error` with the reason and the
    /// others are recovered all the same; the failures are returned
    /// together.
    pub async fn reconcile(self: &Arc<Self>) -> Result<(), CoreError> {
        let vms = self.db(Store::list_vms).await?;
        let mut failed = Vec::new();
        for vm in vms {
            if !matches!(
                vm.state,
                VmState::Starting | VmState::Running | VmState::Paused | VmState::Stopping
            ) {
                continue;
            }
            let (id, name) = (vm.id.clone(), vm.name.clone());
            if let Err(e) = self.reconcile_vm(vm).await {
                tracing::error!(vm_id = %id, name = %name, error = %e, "recovering a vm after a restart failed; it is marked error");
                self.mark_error(
                    &id,
                    format!("bangerd could not recover this vm after a restart: {e}"),
                )
                .await;
                failed.push(format!("vm {name}: {e}"));
            }
        }
        // What no record claims (a crash between making an object and
        // recording it); never fails the start-up.
        if let Err(e) = self.sweep_orphans().await {
            tracing::warn!(error = %e, "start-up sweep");
        }
        // Their leases ended with the last daemon's connections. Waited
        // for, so a client that reconnects finds them gone.
        let mut removals = Vec::new();
        for vm in self.db(Store::list_vms).await? {
            if vm.runtime.leased {
                tracing::info!(vm_id = %vm.id, name = %vm.name, "its lease ended with the last daemon; removing it");
                removals.extend(self.remove_leased(vm.id));
            }
        }
        for r in removals {
            let _ = r.await;
        }
        if let Err(e) = self.sweep_snapshots().await {
            tracing::warn!(error = %e, "sweeping interrupted snapshots");
        }
        // A new agent, kernel or VMM since the last run: old templates go.
        if let Err(e) = self.sweep_templates().await {
            tracing::warn!(error = %e, "removing stale templates");
        }
        self.rebuild_dns().await;
        if failed.is_empty() {
            Ok(())
        } else {
            Err(CoreError::Reconcile(failed))
        }
    }

    async fn reconcile_vm(self: &Arc<Self>, mut vm: VmRecord) -> Result<(), CoreError> {
        let recovered = self.recovered_handles(&vm).await;
        let sock = vm.runtime.api_socket.clone();
        let pid = match (self.vmm_for(vm.spec.vmm), sock.as_deref()) {
            (Ok(vmm), Some(s)) => recovered
                .pid
                .filter(|p| vmm.alive(*p, s))
                .or_else(|| vmm.find(s)),
            _ => None,
        };
        // A restore cut short left a guest that is still a copy of its
        // snapshot (its address, its keys): never adopted. The VM keeps
        // its snapshot and restores again at its next start.
        let restoring = vm.state == VmState::Starting && vm.runtime.restore_from.is_some();
        match (pid, vm.state) {
            (Some(pid), VmState::Running | VmState::Starting | VmState::Paused) if !restoring => {
                let h = VmHandles {
                    pid: Some(pid),
                    ..recovered
                };
                // Rewrites a lost or corrupt scratch file from what was
                // recovered, so disk and memory agree again.
                self.record_handles(&mut vm, h).await?;
                // The host's side made to match the record (a change the
                // last daemon applied but never recorded, say).
                if let Err(e) = self.resync_capabilities(&vm).await {
                    // It runs on: a live VM is not made `error` for its
                    // NAT, and the next change or start sets it again.
                    tracing::warn!(vm_id = %vm.id, error = %e, "resyncing the capabilities of an adopted vm");
                    vm.runtime.last_error = Some(format!(
                        "bangerd restarted and could not set this vm's capabilities (nat) again: {e}; `banger vm set --nat` retries"
                    ));
                }
                // Its disks are its own from now on.
                vm.runtime.warm_start = false;
                match vm.state {
                    // A paused VM stays paused: its VMM says so too.
                    VmState::Paused => self.agent_paused(&vm, true),
                    // Running means its agent answered: the start the
                    // last daemon did not finish waits for that again.
                    // A leased one is removed below instead.
                    VmState::Starting if vm.runtime.leased => {
                        self.save(&mut vm).await?;
                        return Ok(());
                    }
                    VmState::Starting => {
                        self.save(&mut vm).await?;
                        tracing::info!(vm_id = %vm.id, name = %vm.name, pid, "adopted a starting vm; waiting for its agent");
                        drop(self.finish_interrupted_start(vm));
                        return Ok(());
                    }
                    _ => {
                        vm.state = VmState::Running;
                        self.resume_interrupted_snapshot(&vm).await;
                    }
                }
                self.save(&mut vm).await?;
                tracing::info!(vm_id = %vm.id, name = %vm.name, pid, "adopted running vm");
            }
            (_, was) => {
                self.handles().adopt(&vm.id, recovered);
                let cleanup = self.cleanup(&mut vm, true).await;
                let mut msg =
                    format!("vm was {was} when bangerd restarted and its vmm was gone; cleaned up");
                if was == VmState::Stopping {
                    msg = "bangerd restarted during a stop; the stop was completed".into();
                }
                // What could not be cleaned up stays recorded: a later
                // delete (or start) retries it.
                vm.state = match &cleanup {
                    Ok(()) => VmState::Stopped,
                    Err(e) => {
                        msg.push_str(&format!(" (cleanup errors: {e})"));
                        VmState::Error
                    }
                };
                vm.runtime.last_error = Some(msg);
                self.save(&mut vm).await?;
                tracing::info!(vm_id = %vm.id, name = %vm.name, state = %vm.state, "reconciled dead vm");
            }
        }
        Ok(())
    }

    /// Each capability torn down and set up again from the record: the
    /// rules on the host are then what the record says, whatever an
    /// interrupted change left.
    async fn resync_capabilities(&self, vm: &VmRecord) -> Result<(), CoreError> {
        let tap = self.vm_tap(vm).await;
        for cap in capability::all() {
            cap.cleanup(self.cap_context(), vm, &tap).await?;
            cap.start(self.cap_context(), vm, &tap).await?;
        }
        Ok(())
    }

    /// Records `msg` as why the VM `id` is in `error` (best effort: the
    /// store failing here is logged).
    async fn mark_error(&self, id: &VmId, msg: String) {
        let found = match self.find_vm(id.as_str()).await {
            Ok(vm) => vm,
            Err(e) => {
                tracing::warn!(vm_id = %id, error = %e, "marking a vm error");
                return;
            }
        };
        let mut vm = found;
        vm.state = VmState::Error;
        vm.runtime.last_error = Some(msg);
        if let Err(e) = self.save(&mut vm).await {
            tracing::warn!(vm_id = %id, error = %e, "marking a vm error");
        }
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
