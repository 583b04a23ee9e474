//! QEMU `microvm`, daemonized, controlled over QMP.

mod command;
mod snapshot;
pub use command::{QemuCommand, host_tsc_khz};
pub use snapshot::STATE_FILE;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use banger_api::vm::VmmKind;
use banger_host::tools::ToolRun;

use crate::driver::Vmm;
use crate::qmp::Qmp;
use crate::{LaunchError, LaunchSpec, NotUp, VmmError, process};

/// QEMU `microvm`, daemonized, controlled over QMP. A VM with vsock also
/// gets its own `vhost-device-vsock` process (this host has no kernel
/// vhost-vsock); it lives and dies with the VM.
#[derive(Debug, Clone)]
pub struct QemuVmm {
    pub command: QemuCommand,
    pub vsock_backend: PathBuf,
}

/// How long the vsock backend may take to open its vhost-user socket.
const BACKEND_WAIT: Duration = Duration::from_secs(5);

impl QemuVmm {
    /// Starts the VM's vsock backend and waits for its vhost-user socket.
    async fn start_vsock_backend(&self, spec: &LaunchSpec, uds: &Path) -> Result<(), VmmError> {
        let vhu = crate::vhost_user_socket(&spec.control_socket);
        let err = |source: LaunchError| VmmError::Launch {
            bin: self.vsock_backend.clone(),
            source,
        };
        // A backend left over from an interrupted start holds the paths.
        process::kill_all(&vhu, Duration::from_secs(5)).await?;
        for p in [&vhu, uds] {
            let _ = std::fs::remove_file(p);
        }
        let log_path = spec
            .console_log
            .parent()
            .unwrap_or(Path::new("/"))
            .join("vsock-backend.log");
        let file_err = |source| {
            err(LaunchError::File {
                what: format!("creating {}", log_path.display()),
                source,
            })
        };
        let log = std::fs::File::create(&log_path).map_err(file_err)?;
        let log2 = log.try_clone().map_err(file_err)?;
        let mut child = tokio::process::Command::new(&self.vsock_backend)
            .arg("--guest-cid")
            .arg(crate::GUEST_CID.to_string())
            .arg("--socket")
            .arg(&vhu)
            .arg("--uds-path")
            .arg(uds)
            // Its errors (a worker that stopped serving) land in the log
            // a failed start quotes.
            .env("RUST_LOG", "error")
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Like the VMM it serves, it must outlive the daemon.
            .process_group(0)
            .spawn()
            .map_err(|e| err(LaunchError::SpawnBackend(e)))?;
        let up = tokio::select! {
            () = crate::wait::path_exists(&vhu) => Ok(()),
            status = child.wait() => Err(NotUp::Exited(Some(
                status.map_err(|e| err(LaunchError::Wait(e)))?,
            ))),
            () = tokio::time::sleep(BACKEND_WAIT) => Err(NotUp::TimedOut),
        };
        if let Err(why) = up {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let log = match tokio::fs::read_to_string(&log_path).await {
                Ok(log) => log.trim().to_owned(),
                Err(e) => format!("(its log {} could not be read: {e})", log_path.display()),
            };
            return Err(err(LaunchError::VhostSocket {
                socket: vhu.clone(),
                why,
                log,
            }));
        }
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }
}

#[async_trait]
impl Vmm for QemuVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    /// `vhost-device-vsock` connects guest-initiated streams to
    /// `<uds-path>_<port>`; polling it while the guest boots can wedge it.
    fn ready_call(&self) -> bool {
        true
    }

    fn agent_transport(&self) -> crate::AgentTransport {
        crate::AgentTransport::Serial
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<u32, VmmError> {
        self.spawn(spec, &[]).await
    }

    fn snapshot_blocker(&self, spec: &LaunchSpec) -> Option<String> {
        snapshot::blocker(spec)
    }

    async fn pause(&self, socket: &Path) -> Result<(), VmmError> {
        snapshot::pause(socket).await
    }

    async fn resume(&self, socket: &Path) -> Result<(), VmmError> {
        snapshot::resume(socket).await
    }

    async fn is_paused(&self, socket: &Path) -> Result<bool, VmmError> {
        snapshot::is_paused(socket).await
    }

    async fn save(&self, socket: &Path, dir: &Path) -> Result<(), VmmError> {
        snapshot::save(socket, dir).await
    }

    /// Started like a boot, but waiting for the state (`-incoming defer`);
    /// a load that fails leaves no QEMU behind.
    async fn restore(&self, spec: &LaunchSpec, dir: &Path) -> Result<u32, VmmError> {
        let pid = self.spawn(spec, &["-incoming", "defer"]).await?;
        match snapshot::load(&spec.control_socket, dir).await {
            Ok(()) => Ok(pid),
            Err(e) => {
                if let Err(k) = self.kill(pid, &spec.control_socket).await {
                    tracing::warn!(pid, error = %k, "killing the QEMU of a failed restore");
                }
                Err(e)
            }
        }
    }

    async fn request_shutdown(&self, socket: &Path) -> Result<(), VmmError> {
        Qmp::connect(socket).await?.powerdown().await
    }

    /// QEMU first (it holds the backend's socket), then the vsock backend.
    async fn kill(&self, pid: u32, socket: &Path) -> Result<(), VmmError> {
        let vmm = process::kill_vmm(pid, &socket.to_string_lossy(), Duration::from_secs(10)).await;
        let backend =
            process::kill_all(&crate::vhost_user_socket(socket), Duration::from_secs(10)).await;
        vmm.and(backend)
    }
}

impl QemuVmm {
    /// Runs QEMU for `spec` (with `extra` arguments) until it daemonizes;
    /// returns the daemon's pid.
    async fn spawn(&self, spec: &LaunchSpec, extra: &[&str]) -> Result<u32, VmmError> {
        let _ = std::fs::remove_file(&spec.control_socket);
        let _ = std::fs::remove_file(&spec.pid_file);
        if let Some(serial) = &spec.agent_serial {
            // QEMU binds it afresh; one left by an earlier run is stale.
            let _ = std::fs::remove_file(serial);
        }
        if let Some(uds) = &spec.vsock {
            self.start_vsock_backend(spec, uds).await?;
        }
        let err = |source: LaunchError| VmmError::Launch {
            bin: self.command.bin.clone(),
            source,
        };
        // With -daemonize, QEMU exits 0 once the VM is set up and running
        // in the background, or non-zero with the reason on stderr.
        let mut run = ToolRun::new(&self.command.bin)
            .args(self.command.args(spec))
            .args(extra.iter().copied());
        if let Some(fd) = spec.net.as_ref().and_then(|n| n.fd) {
            run = run.pass_fd(fd, crate::TAP_FD);
        }
        run.run(|_| {})
            .await
            .map_err(|e| err(LaunchError::Tool(e)))?;
        let pid = std::fs::read_to_string(&spec.pid_file).map_err(|source| {
            err(LaunchError::File {
                what: format!("reading {}", spec.pid_file.display()),
                source,
            })
        })?;
        pid.trim().parse().map_err(|_| {
            err(LaunchError::BadPidFile {
                path: spec.pid_file.clone(),
                content: pid,
            })
        })
    }
}
