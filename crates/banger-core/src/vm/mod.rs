//! The VM room: one file per action (create, set, delete, start, stop,
//! cleanup, reconcile, logs, attach/ssh), and here what they share: the
//! per-VM lock, persistence, the VMM for a record, and one way to recover
//! a VM's handles.

mod attach;
mod cleanup;
mod console;
mod create;
mod delete;
mod disks;
mod dns;
mod guest_setup;
mod interrupted;
mod logs;
mod pause;
mod reconcile;
mod restore;
mod set;
mod start;
mod stop;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use banger_api::vm::{VmRecord, VmState, VmmKind};
use banger_host::layout::{TapName, VmFiles};
use banger_vmm::Vmm;
use chrono::Utc;

use crate::core::Core;
use crate::error::CoreError;
use crate::error::InternalError;
use crate::handles::{HandlesError, TeardownMirror, VmHandles, read_scratch, write_scratch};
use crate::lifecycle::check_transition;
use crate::locks::KeyGuard;

pub use create::{MAX_DISK_BYTES, MAX_MEMORY_MIB, MAX_VCPUS, MIN_DISK_BYTES, MIN_MEMORY_MIB};
pub use dns::DNS_PORT;

impl Core {
    /// Finds `name` (a name or an id), takes its lock, and reads it again
    /// under the lock: it may have changed while we waited.
    pub(crate) async fn lock_vm(&self, name: &str) -> Result<(VmRecord, KeyGuard<'_>), CoreError> {
        let found = self.find_vm(name).await?;
        let guard = self.vm_locks().lock(&found.id).await;
        let vm = self.find_vm(&found.id).await?;
        Ok((vm, guard))
    }

    /// The files of VM `vm_id`.
    pub fn vm_files(&self, vm_id: &str) -> VmFiles {
        self.layout().files(vm_id)
    }

    pub(crate) fn vmm_for(&self, kind: VmmKind) -> Result<&dyn Vmm, CoreError> {
        match kind {
            VmmKind::Qemu => Ok(self.deps().qemu.as_ref()),
            VmmKind::Firecracker => self
                .deps()
                .firecracker
                .as_deref()
                .ok_or_else(no_firecracker),
        }
    }

    /// The driver as a shared handle, for work moved off the async workers.
    fn vmm_arc(&self, kind: VmmKind) -> Result<Arc<dyn Vmm>, CoreError> {
        match kind {
            VmmKind::Qemu => Ok(Arc::clone(&self.deps().qemu)),
            VmmKind::Firecracker => self.deps().firecracker.clone().ok_or_else(no_firecracker),
        }
    }

    pub(crate) async fn save(&self, vm: &mut VmRecord) -> Result<(), CoreError> {
        vm.updated_at = Utc::now();
        let rec = vm.clone();
        self.db(move |s| s.update_vm(&rec)).await
    }

    pub(crate) async fn transition(&self, vm: &mut VmRecord, to: VmState) -> Result<(), CoreError> {
        check_transition(vm.state, to)?;
        vm.state = to;
        self.save(vm).await
    }

    /// Records handles before the objects they name are created: the
    /// scratch file (fsynced, off the async workers), then the mirror in
    /// the VM's row, then memory.
    async fn record_handles(&self, vm: &mut VmRecord, h: VmHandles) -> Result<(), CoreError> {
        let dir = vm
            .runtime
            .vm_dir
            .clone()
            .ok_or_else(|| HandlesError::NoVmDir {
                vm_id: vm.id.to_string(),
            })?;
        let staged = h.clone();
        tokio::task::spawn_blocking(move || write_scratch(&dir, &staged))
            .await
            .map_err(|source| InternalError::Task {
                what: "writing handles",
                source,
            })??;
        self.write_mirror(&vm.id, h.mirror()).await?;
        self.handles().adopt(&vm.id, h);
        self.save(vm).await
    }

    /// The durable mirror of a VM's teardown-critical names.
    pub(crate) async fn write_mirror(
        &self,
        vm_id: &str,
        mirror: TeardownMirror,
    ) -> Result<(), CoreError> {
        let id = vm_id.to_owned();
        self.db(move |s| s.set_vm_teardown(&id, &mirror)).await
    }

    pub(crate) async fn read_mirror(&self, vm_id: &str) -> Result<TeardownMirror, CoreError> {
        let id = vm_id.to_owned();
        self.db(move |s| s.vm_teardown(&id)).await
    }

    /// Whether the VM's VMM runs right now: pid from the cache, verified
    /// against the control socket in its command line.
    pub fn vm_alive(&self, vm: &VmRecord) -> bool {
        self.liveness(vm).is_some_and(|l| l.check())
    }

    /// What checking the VM's liveness takes, owned, so the check (a
    /// `/proc` read) can also run off the async workers. `None`: no pid
    /// known, no socket, or no driver: not alive.
    pub(crate) fn liveness(&self, vm: &VmRecord) -> Option<Liveness> {
        Some(Liveness {
            pid: self.handles().get(&vm.id)?.pid?,
            socket: vm.runtime.api_socket.clone()?,
            vmm: self.vmm_arc(vm.spec.vmm).ok()?,
        })
    }

    /// The VM's handles from the best source left: memory first; the
    /// scratch file when memory was lost; the mirror in the VM's row for
    /// whatever both miss. A corrupt scratch file or an unreadable mirror
    /// is not a failure: the other sources and the derivable names cover
    /// it (and the log says so).
    async fn recovered_handles(&self, vm: &VmRecord) -> VmHandles {
        let base = match self.handles().get(&vm.id) {
            Some(h) => h,
            None => match vm.runtime.vm_dir.as_deref().map(read_scratch) {
                Some(Ok(Some(h))) => h,
                Some(Err(e)) => {
                    tracing::warn!(vm_id = %vm.id, error = %e, "unreadable handles; using the mirror");
                    VmHandles::default()
                }
                Some(Ok(None)) | None => VmHandles::default(),
            },
        };
        match self.read_mirror(&vm.id).await {
            Ok(mirror) => base.or_mirror(&mirror),
            Err(e) => {
                tracing::warn!(vm_id = %vm.id, error = %e, "unreadable teardown mirror");
                base
            }
        }
    }

    /// The VM's tap as cleanup finds it: recovered handles, else the name
    /// derived from the id.
    pub(crate) async fn vm_tap(&self, vm: &VmRecord) -> String {
        tap_of(&self.recovered_handles(vm).await, vm)
    }
}

/// One VM's liveness check, ready to run anywhere.
pub(crate) struct Liveness {
    pid: u32,
    socket: PathBuf,
    vmm: Arc<dyn Vmm>,
}

impl Liveness {
    pub(crate) fn check(&self) -> bool {
        self.vmm.alive(self.pid, &self.socket)
    }
}

/// The tap recovered handles name, else the one derived from the id.
fn tap_of(handles: &VmHandles, vm: &VmRecord) -> String {
    handles
        .tap
        .clone()
        .unwrap_or_else(|| TapName::for_vm(&vm.id).to_string())
}

fn no_firecracker() -> CoreError {
    CoreError::Unavailable(
        "this daemon has no Firecracker driver configured; recreate the vm with --vmm qemu".into(),
    )
}
