//! The one VMM interface, its QEMU implementation and a recording fake.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use banger_api::vm::VmmKind;
use banger_host::tools::ToolRun;
use nix::sys::signal::Signal;

use crate::qemu::QemuCommand;
use crate::qmp::Qmp;
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
        process::signal(pid, socket, Signal::SIGKILL);
        process::kill_all(socket, Duration::from_secs(10)).await
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
        let err = |message: String| VmmError::Launch {
            bin: self.vsock_backend.clone(),
            message,
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
        let log = std::fs::File::create(&log_path)
            .map_err(|e| err(format!("creating {}: {e}", log_path.display())))?;
        let log2 = log.try_clone().map_err(|e| err(e.to_string()))?;
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
            .map_err(|e| {
                err(format!(
                    "{e} (install it with scripts/setup.sh, or set vmm.vsock_backend)"
                ))
            })?;
        let deadline = std::time::Instant::now() + BACKEND_WAIT;
        while !vhu.exists() {
            let exited = child.try_wait().map_err(|e| err(e.to_string()))?;
            if exited.is_some() || std::time::Instant::now() > deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(err(format!(
                    "vhost-user socket {} did not come up ({}): {}",
                    vhu.display(),
                    exited.map_or_else(|| "timed out".to_owned(), |s| s.to_string()),
                    log.trim()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
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

    async fn launch(&self, spec: &LaunchSpec) -> Result<u32, VmmError> {
        let _ = std::fs::remove_file(&spec.control_socket);
        let _ = std::fs::remove_file(&spec.pid_file);
        if let Some(uds) = &spec.vsock {
            self.start_vsock_backend(spec, uds).await?;
        }
        let err = |message: String| VmmError::Launch {
            bin: self.command.bin.clone(),
            message,
        };
        // With -daemonize, QEMU exits 0 once the VM is set up and running
        // in the background, or non-zero with the reason on stderr.
        let mut run = ToolRun::new(&self.command.bin).args(self.command.args(spec));
        if let Some(fd) = spec.net.as_ref().and_then(|n| n.fd) {
            run = run.pass_fd(fd, crate::TAP_FD);
        }
        run.run(|_| {}).await.map_err(|e| err(e.to_string()))?;
        let pid = std::fs::read_to_string(&spec.pid_file)
            .map_err(|e| err(format!("reading {}: {e}", spec.pid_file.display())))?;
        pid.trim()
            .parse()
            .map_err(|_| err(format!("bad pid file {}: {pid:?}", spec.pid_file.display())))
    }

    async fn request_shutdown(&self, socket: &Path) -> Result<(), VmmError> {
        Qmp::connect(socket).await?.powerdown().await
    }

    /// QEMU first (it holds the backend's socket), then the vsock backend.
    async fn kill(&self, pid: u32, socket: &Path) -> Result<(), VmmError> {
        process::signal(pid, socket, Signal::SIGKILL);
        let vmm = process::kill_all(socket, Duration::from_secs(10)).await;
        let backend =
            process::kill_all(&crate::vhost_user_socket(socket), Duration::from_secs(10)).await;
        vmm.and(backend)
    }
}

/// A recording fake. "Processes" are entries in a map: launch adds one,
/// kill and a guest that honours shutdown remove it.
#[derive(Debug, Default)]
pub struct FakeVmm {
    pub calls: Mutex<Vec<String>>,
    pub running: Mutex<BTreeMap<u32, PathBuf>>,
    /// When true, `request_shutdown` is ignored (a guest without ACPI).
    pub ignore_shutdown: Mutex<bool>,
    /// When set, `launch` fails with this message.
    pub fail_launch: Mutex<Option<String>>,
    /// When set, VMs are "jailed" under `<base>/<vm id>` and `release`
    /// is recorded.
    pub jail_base: Mutex<Option<PathBuf>>,
    /// Whether the daemon should wait for a ready call (the test plays
    /// the guest that makes it).
    pub ready_calls: Mutex<bool>,
    next_pid: Mutex<u32>,
}

impl FakeVmm {
    fn record(&self, s: String) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }

    pub fn recorded(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Simulates the VMM dying on its own.
    pub fn crash(&self, pid: u32) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
    }
}

#[async_trait]
impl Vmm for FakeVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    fn ready_call(&self) -> bool {
        *self.ready_calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<u32, VmmError> {
        self.record(format!("launch {}", spec.vm_id));
        if let Some(m) = self
            .fail_launch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(VmmError::Launch {
                bin: "fake".into(),
                message: m,
            });
        }
        let mut next = self.next_pid.lock().unwrap_or_else(|p| p.into_inner());
        *next += 1;
        let pid = 100_000 + *next;
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid, spec.control_socket.clone());
        Ok(pid)
    }

    async fn request_shutdown(&self, socket: &Path) -> Result<(), VmmError> {
        self.record(format!("shutdown {}", socket.display()));
        if !*self
            .ignore_shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            self.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, s| s != socket);
        }
        Ok(())
    }

    fn alive(&self, pid: u32, socket: &Path) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pid)
            .is_some_and(|s| s == socket)
    }

    fn find(&self, socket: &Path) -> Option<u32> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(_, s)| *s == socket)
            .map(|(p, _)| *p)
    }

    fn jail_root(&self, vm_id: &str) -> Option<PathBuf> {
        self.jail_base
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|b| b.join(vm_id))
    }

    async fn release(&self, vm_id: &str, jail_root: Option<&Path>) -> Result<(), VmmError> {
        if let Some(root) = jail_root {
            self.record(format!("release {vm_id} {}", root.display()));
        }
        Ok(())
    }

    /// Like the real sweep: every "process" of the socket goes. Recorded
    /// only when something was actually running.
    async fn kill(&self, pid: u32, socket: &Path) -> Result<(), VmmError> {
        let mut r = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let before = r.len();
        r.retain(|_, s| s != socket);
        if r.len() != before {
            drop(r);
            self.record(format!("kill {pid}"));
        }
        Ok(())
    }
}
