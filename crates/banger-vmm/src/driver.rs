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
    /// Waits up to `within` for the VM's VMM (`pid`) to exit; `true` once
    /// it is gone. The pidfd is opened before the identity check, so a pid
    /// recycled after the check is never waited on.
    async fn wait_gone(&self, pid: u32, socket: &Path, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let exit = match crate::wait::PidExit::open(pid) {
            Ok(Some(exit)) => exit,
            Ok(None) => return true,
            Err(e) => {
                tracing::debug!(pid, error = %e, "no pidfd; looking at /proc instead");
                return poll_gone(self, pid, socket, deadline, PROC_POLL).await;
            }
        };
        if !self.alive(pid, socket) {
            return true;
        }
        match tokio::time::timeout(within, exit.exited()).await {
            Ok(Ok(())) => true,
            Err(_) => false,
            Ok(Err(e)) => {
                tracing::debug!(pid, error = %e, "pidfd wait failed; looking at /proc instead");
                poll_gone(self, pid, socket, deadline, PROC_POLL).await
            }
        }
    }
    /// Kills it, and any other process naming its socket (a launch cut
    /// short can leave two), and waits (bounded) until all are gone.
    async fn kill(&self, pid: u32, socket: &Path) -> Result<(), VmmError> {
        process::kill_vmm(pid, &socket.to_string_lossy(), Duration::from_secs(10)).await
    }
    /// The channel its guests' agent is reached over.
    fn agent_transport(&self) -> crate::AgentTransport {
        crate::AgentTransport::Vsock
    }
    /// Whether a guest's connection to a host vsock port P reaches a unix
    /// socket `<vsock uds>_P` that the daemon can bind before launch, so
    /// the agent can report ready instead of being polled.
    fn ready_call(&self) -> bool {
        false
    }
    /// Why this VM could not be snapshotted, naming the device that
    /// cannot be saved; `None` when `save` can work.
    fn snapshot_blocker(&self, _spec: &LaunchSpec) -> Option<String> {
        Some(format!(
            "the {} driver has no snapshot support",
            self.kind()
        ))
    }
    /// Freezes the guest's vCPUs (the VMM process stays).
    async fn pause(&self, _socket: &Path) -> Result<(), VmmError> {
        Err(VmmError::Unsupported {
            vmm: self.kind(),
            what: "pause",
        })
    }
    /// Lets a paused guest run again.
    async fn resume(&self, _socket: &Path) -> Result<(), VmmError> {
        Err(VmmError::Unsupported {
            vmm: self.kind(),
            what: "resume",
        })
    }
    /// Whether the guest is paused now (a daemon restart asks).
    async fn is_paused(&self, _socket: &Path) -> Result<bool, VmmError> {
        Ok(false)
    }
    /// Writes a paused VM's memory and device state into `dir` (an
    /// existing, empty directory; the file names are the driver's). The VM
    /// stays paused. Its disks are the caller's to freeze.
    async fn save(&self, _socket: &Path, _dir: &Path) -> Result<(), VmmError> {
        Err(VmmError::Unsupported {
            vmm: self.kind(),
            what: "snapshots",
        })
    }
    /// Starts the VM of `spec` from the state `save` wrote into `dir`
    /// instead of booting it, and lets it run. `spec` must describe the
    /// same machine (vCPUs, memory, device set) with this VM's own paths.
    /// Returns the VMM's pid, like `launch`.
    async fn restore(&self, _spec: &LaunchSpec, _dir: &Path) -> Result<u32, VmmError> {
        Err(VmmError::Unsupported {
            vmm: self.kind(),
            what: "snapshots",
        })
    }
    /// Who must own the VM's tap: the jail's uid/gid, `None` for root.
    fn tap_owner(&self) -> Option<(u32, u32)> {
        None
    }
    /// Where this VMM would jail `vm_id`, recorded before launch.
    fn jail_root(&self, _vm_id: &str) -> Option<PathBuf> {
        None
    }
    /// The VM ids this VMM keeps a jail for now (the start-up sweep
    /// releases those of ids no record has).
    fn jailed_ids(&self) -> Vec<String> {
        Vec::new()
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

/// Between looks at `/proc` when no pidfd serves.
const PROC_POLL: Duration = Duration::from_millis(100);

/// Where nothing signals the exit (no pidfd to be had or waited on, or a
/// fake whose "processes" are table entries): `alive` is looked at every
/// `every` until `deadline`.
pub(crate) async fn poll_gone<V: Vmm + ?Sized>(
    vmm: &V,
    pid: u32,
    socket: &Path,
    deadline: tokio::time::Instant,
    every: Duration,
) -> bool {
    while vmm.alive(pid, socket) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(every).await;
    }
    !vmm.alive(pid, socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the trait's defaults: the real /proc identity and pidfd wait.
    #[derive(Debug)]
    struct Defaults;

    #[async_trait]
    impl Vmm for Defaults {
        fn kind(&self) -> VmmKind {
            VmmKind::Qemu
        }
        async fn launch(&self, _spec: &LaunchSpec) -> Result<u32, VmmError> {
            unreachable!("not launched in this test")
        }
        async fn request_shutdown(&self, _socket: &Path) -> Result<(), VmmError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn wait_gone_ends_on_the_exit_and_times_out_while_it_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("vm.sock");
        // The socket path as $0, so it is in the command line like a VMM's.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "echo up; sleep 30; :"])
            .arg(&socket)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let pid = child.id();
        // Its first line: the shell runs (and names the socket) by now.
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().expect("stdout")),
            &mut line,
        )
        .expect("read");
        assert_eq!(line, "up\n");
        assert!(Defaults.alive(pid, &socket));
        assert!(
            !Defaults
                .wait_gone(pid, &socket, Duration::from_millis(100))
                .await,
            "still running"
        );
        child.kill().expect("kill");
        assert!(
            Defaults
                .wait_gone(pid, &socket, Duration::from_secs(10))
                .await
        );
        child.wait().expect("reap");
        assert!(
            Defaults.wait_gone(pid, &socket, Duration::ZERO).await,
            "a reaped pid is gone"
        );
    }
}
