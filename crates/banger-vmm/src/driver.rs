//! The one VMM interface. Its implementations: [`QemuVmm`](crate::QemuVmm),
//! [`FirecrackerVmm`](crate::firecracker::FirecrackerVmm) and, with the
//! `testing` feature, a recording fake.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use banger_api::vm::VmmKind;

use crate::{LaunchSpec, VmmError, process};

/// What the lifecycle needs from a VMM.
#[async_trait]
pub trait Vmm: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> VmmKind;
    /// Starts the VM; returns the VMM's pid once the process runs on its
    /// own (it must survive the daemon).
    async fn launch(&self, spec: &LaunchSpec) -> Result<u32, VmmError>;
    /// Asks the guest to shut down (ACPI power button / Ctrl-Alt-Del).
    async fn request_shutdown(&self, socket: &Path) -> Result<(), VmmError>;
    /// Whether `pid` is this VM's VMM.
    fn alive(&self, pid: u32, socket: &Path) -> bool {
        process::vmm_alive(pid, socket)
    }
    /// Finds the VMM by its socket when the pid was lost.
    fn find(&self, socket: &Path) -> Option<u32> {
        process::find_by_socket(socket)
    }
    /// Kills it, and any other process naming its socket (a launch cut
    /// short can leave two), and waits (bounded) until all are gone.
    async fn kill(&self, pid: u32, socket: &Path) -> Result<(), VmmError> {
        process::kill_vmm(pid, &socket.to_string_lossy(), Duration::from_secs(10)).await
    }
    /// Whether a guest's connection to a host vsock port P reaches a unix
    /// socket `<vsock uds>_P` that the daemon can bind before launch, so
    /// the agent can report ready instead of being polled.
    fn ready_call(&self) -> bool {
        false
    }
    /// Who must own the VM's tap: the jail's uid/gid, `None` for root.
    fn tap_owner(&self) -> Option<(u32, u32)> {
        None
    }
    /// Where this VMM would jail `vm_id`, recorded before launch.
    fn jail_root(&self, _vm_id: &str) -> Option<PathBuf> {
        None
    }
    /// Host state the VMM kept beyond its process (a jail), removed after
    /// the process is gone. `jail_root` is the recorded one.
    async fn release(&self, _vm_id: &str, jail_root: Option<&Path>) -> Result<(), VmmError> {
        match jail_root {
            Some(root) => Ok(crate::jail::remove_tree(root)?),
            None => Ok(()),
        }
    }
}
