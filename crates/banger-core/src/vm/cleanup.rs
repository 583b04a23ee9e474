//! Teardown of everything a VM holds on the host, in an order that works
//! from whatever handles survived (memory, scratch file, runtime mirror,
//! names derived from the id).

use std::path::PathBuf;

use banger_api::vm::VmRecord;

use crate::capability;
use crate::core::Core;
use crate::error::{CleanupError, CleanupErrors, CoreError, InternalError};
use crate::handles::TeardownMirror;
use crate::ready::ready_socket_path;

impl Core {
    /// Tears down everything a VM holds on the host. Every step runs; the
    /// errors of all of them are returned together. Idempotent.
    pub(crate) async fn cleanup(
        &self,
        vm: &mut VmRecord,
        keep_disks: bool,
    ) -> Result<(), CoreError> {
        let mut errors: Vec<CleanupError> = Vec::new();
        let handles = self.recovered_handles(vm).await;
        let socket = vm.runtime.api_socket.clone();

        // 1. The VMM process.
        if let (Ok(vmm), Some(sock)) = (self.vmm_for(vm.spec.vmm), socket.as_deref()) {
            let pid = handles
                .pid
                .filter(|p| vmm.alive(*p, sock))
                .or_else(|| vmm.find(sock));
            // Even with no pid known, kill() sweeps every process naming the
            // VM's socket: nothing of this VM may outlive its cleanup.
            if let Err(source) = vmm.kill(pid.unwrap_or(0), sock).await {
                errors.push(CleanupError::KillVmm {
                    pid: pid.unwrap_or(0),
                    source,
                });
            }
            // What the VMM kept beyond its process: the jail's chroot and
            // cgroups, at the recorded root.
            if let Err(e) = vmm.release(&vm.id, handles.jail_root.as_deref()).await {
                errors.push(CleanupError::Release(e));
            }
        }
        failpoint!("cleanup.vmm_killed");
        // 2. Capabilities (NAT rules), keyed by the tap, then the tap
        // itself (named by id, so also derivable when all else is lost).
        let tap = super::tap_of(&handles, vm);
        for cap in capability::all().iter().rev() {
            if let Err(e) = cap.cleanup(self.cap_context(), vm, &tap).await {
                errors.push(CleanupError::Capability {
                    capability: cap.name(),
                    source: Box::new(e),
                });
            }
        }
        failpoint!("cleanup.nat_removed");
        if let Err(e) = self.deps().net.delete_link(&tap).await {
            errors.push(CleanupError::Tap(e));
        }
        failpoint!("cleanup.tap_deleted");
        // 3. Sockets: control, vsock, QEMU's vhost-user one and the
        // agent's serial one, whose carrier the connector lets go of.
        if let Some(serial) = &vm.runtime.agent_socket {
            self.deps().agent.forget(serial);
        }
        let sockets = socket
            .iter()
            .flat_map(|s| [s.clone(), banger_vmm::vhost_user_socket(s)])
            .chain(
                vm.runtime
                    .vsock_path
                    .as_deref()
                    .map(PathBuf::from)
                    .into_iter()
                    .flat_map(|v| [ready_socket_path(&v), v]),
            )
            .chain(vm.runtime.agent_socket.clone());
        for sock in sockets {
            if let Err(source) = tokio::fs::remove_file(&sock).await {
                if source.kind() != std::io::ErrorKind::NotFound {
                    errors.push(CleanupError::Socket { path: sock, source });
                }
            }
        }
        // 4. Handles: memory, scratch file, mirror.
        if let Err(e) = self.handles().clear(&vm.id, vm.runtime.vm_dir.as_deref()) {
            errors.push(CleanupError::Core(Box::new(e.into())));
        }
        if let Err(e) = self.write_mirror(&vm.id, TeardownMirror::default()).await {
            errors.push(CleanupError::Core(Box::new(e)));
        }
        // 5. Disks and address, when the VM goes for good.
        if !keep_disks {
            if let Some(dir) = vm.runtime.vm_dir.clone() {
                if let Err(e) = self.remove_vm_dir(dir).await {
                    errors.push(CleanupError::Core(Box::new(e)));
                }
            }
            vm.runtime.guest_ip = None;
        }
        if let Err(e) = self.save(vm).await {
            errors.push(CleanupError::Core(Box::new(e)));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CoreError::Cleanup(CleanupErrors(errors)))
        }
    }

    /// Removes a VM directory, refusing any path outside `<state>/vms`: a
    /// corrupted record must never make the daemon delete arbitrary trees.
    pub(crate) async fn remove_vm_dir(&self, dir: PathBuf) -> Result<(), CoreError> {
        if !self.layout().is_vm_dir(&dir) {
            return Err(InternalError::NotAVmDir {
                dir,
                root: self.layout().vms_dir(),
            }
            .into());
        }
        crate::trees::remove_tree(dir, "removing a vm directory").await
    }
}
