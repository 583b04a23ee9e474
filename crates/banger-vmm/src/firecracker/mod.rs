//! Firecracker: one process per VM, configured over its API socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use banger_api::vm::VmmKind;
use tokio::net::UnixStream;

use crate::driver::Vmm;
use crate::jail::{self, Jail, JailStage};
use crate::{LaunchError, LaunchSpec, NotUp, VmmError, process};

mod api;
pub mod models;
pub use api::{ApiError, FcApi};
use models::{
    ActionType, BootSource, Drive, InstanceAction, LogLevel, Logger, MachineConfig, Metrics,
    NetworkInterface, Vsock,
};

/// How long a fresh Firecracker may take to open its API socket.
const SOCKET_WAIT: Duration = Duration::from_secs(5);

/// Resolves once Firecracker's API socket takes connections.
async fn api_socket_up(socket: &Path) {
    crate::wait::path_exists(socket).await;
    // bind(2) makes the name a moment before listen(2), and nothing
    // signals the listen: a refused connect is retried shortly.
    while UnixStream::connect(socket).await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Firecracker, run directly or under its jailer (`jail`). Jailed, the
/// privileged steps (staging, spawning, removing the jail) are the jail's
/// [`JailOps`](crate::jail::JailOps): done here when the daemon is root,
/// by banger-helper when it is not. `bin` is then only what a root daemon
/// jails; the helper uses its own configured binary.
#[derive(Debug, Clone)]
pub struct FirecrackerVmm {
    pub bin: PathBuf,
    pub jail: Option<Jail>,
}

/// Where Firecracker finds a VM's files: host paths when run directly,
/// chroot-relative names when jailed.
struct FcPaths {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    drives: Vec<PathBuf>,
    log: PathBuf,
    metrics: PathBuf,
    vsock: Option<PathBuf>,
}

impl FirecrackerVmm {
    fn paths(&self, spec: &LaunchSpec) -> FcPaths {
        match &self.jail {
            Some(_) => FcPaths {
                kernel: jail::KERNEL.into(),
                initrd: spec.initrd.as_ref().map(|_| jail::INITRD.into()),
                drives: (0..spec.disks.len())
                    .map(|i| jail::drive(i).into())
                    .collect(),
                log: jail::LOG.into(),
                metrics: jail::METRICS.into(),
                vsock: spec.vsock.as_ref().map(|_| jail::VSOCK.into()),
            },
            None => {
                // Firecracker's own log and metrics, next to the console log.
                let dir = spec.console_log.parent().unwrap_or(Path::new("/"));
                FcPaths {
                    kernel: spec.kernel.clone(),
                    initrd: spec.initrd.clone(),
                    drives: spec.disks.clone(),
                    log: dir.join("firecracker.log"),
                    metrics: dir.join("firecracker.metrics"),
                    vsock: spec.vsock.clone(),
                }
            }
        }
    }

    async fn configure(
        &self,
        api: &FcApi,
        spec: &LaunchSpec,
        p: &FcPaths,
    ) -> Result<(), LaunchError> {
        let machine = MachineConfig {
            vcpu_count: spec.vcpus,
            mem_size_mib: spec.memory_mib,
        };
        api.put("/machine-config", machine).await?;
        // Firecracker's own defaults are replaced by our boot args: keep a
        // serial console and make a guest reboot end the process.
        let mut boot_args = spec.cmdline.clone();
        if !boot_args.contains("reboot=") {
            boot_args.push_str(" reboot=k");
        }
        let boot = BootSource {
            kernel_image_path: p.kernel.clone(),
            boot_args,
            initrd_path: p.initrd.clone(),
        };
        api.put("/boot-source", boot).await?;
        for (i, disk) in p.drives.iter().enumerate() {
            let drive = Drive {
                drive_id: format!("d{i}"),
                path_on_host: disk.clone(),
                // root= is on our command line; Firecracker must not add its own.
                is_root_device: false,
                is_read_only: false,
            };
            api.put(&format!("/drives/d{i}"), drive).await?;
        }
        if let Some(net) = &spec.net {
            let iface = NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: net.tap.clone(),
                guest_mac: net.mac.clone(),
            };
            api.put("/network-interfaces/eth0", iface).await?;
        }
        if let Some(uds) = &p.vsock {
            let vsock = Vsock {
                guest_cid: crate::GUEST_CID,
                uds_path: uds.clone(),
            };
            api.put("/vsock", vsock).await?;
        }
        if self.jail.is_none() {
            for f in [&p.log, &p.metrics] {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(f)
                    .map_err(|source| LaunchError::File {
                        what: format!("creating {}", f.display()),
                        source,
                    })?;
            }
        }
        let logger = Logger {
            log_path: p.log.clone(),
            level: LogLevel::Info,
            show_level: true,
        };
        api.put("/logger", logger).await?;
        let metrics = Metrics {
            metrics_path: p.metrics.clone(),
        };
        api.put("/metrics", metrics).await?;
        let start = InstanceAction {
            action_type: ActionType::InstanceStart,
        };
        Ok(api.put("/actions", start).await?)
    }

    /// What names this VM's process in its command line: the control
    /// socket path, or for a jailed VM (whose command line has chroot
    /// paths) ` --id <vm id> `, the VM id being the control socket's stem.
    fn identity(&self, socket: &Path) -> String {
        match (&self.jail, socket.file_stem()) {
            (Some(_), Some(id)) => format!(" --id {} ", id.to_string_lossy()),
            _ => socket.to_string_lossy().into_owned(),
        }
    }
}

#[async_trait]
impl Vmm for FirecrackerVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Firecracker
    }

    fn tap_owner(&self) -> Option<(u32, u32)> {
        self.jail.as_ref().map(|j| (j.config.uid, j.config.gid))
    }

    fn jail_root(&self, vm_id: &str) -> Option<PathBuf> {
        self.jail.as_ref().map(|j| j.config.jail_dir(vm_id))
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<u32, VmmError> {
        let err = |source: LaunchError| VmmError::Launch {
            bin: self.bin.clone(),
            source,
        };
        let _ = std::fs::remove_file(&spec.control_socket);
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.console_log)
            .map_err(|source| {
                err(LaunchError::File {
                    what: format!("opening {}", spec.console_log.display()),
                    source,
                })
            })?;
        let (pid, mut child) = match &self.jail {
            Some(j) => {
                j.ops
                    .stage(&JailStage {
                        vm_id: spec.vm_id.clone(),
                        kernel: spec.kernel.clone(),
                        initrd: spec.initrd.clone(),
                        disks: spec.disks.clone(),
                    })
                    .await?;
                // Short names in our runtime dir for the sockets the jailed
                // process makes inside its chroot (sun_path is 108 bytes).
                let c = &j.config;
                let mut links = vec![(
                    spec.control_socket.clone(),
                    c.host_path(&spec.vm_id, jail::API_SOCKET),
                )];
                if let Some(v) = &spec.vsock {
                    links.push((v.clone(), c.host_path(&spec.vm_id, jail::VSOCK)));
                }
                for (short, long) in links {
                    let _ = std::fs::remove_file(&short);
                    std::os::unix::fs::symlink(&long, &short).map_err(|source| {
                        err(LaunchError::File {
                            what: format!("linking {}", short.display()),
                            source,
                        })
                    })?;
                }
                // Opened above so that it exists as ours: the helper only
                // appends to a console the daemon owns.
                drop(console);
                (j.ops.spawn(&spec.vm_id, &spec.console_log).await?, None)
            }
            None => {
                let mut cmd = tokio::process::Command::new(&self.bin);
                cmd.arg("--api-sock")
                    .arg(&spec.control_socket)
                    .arg("--id")
                    .arg(format!("banger-{}", spec.vm_id));
                let child = banger_host::tools::spawn_detached(cmd, console)
                    .map_err(|e| err(LaunchError::Spawn(e)))?;
                let pid = child.id().ok_or_else(|| err(LaunchError::ExitedAtOnce))?;
                (pid, Some(child))
            }
        };
        let api = FcApi::new(&spec.control_socket);
        // Not by command line: right after fork it is still its parent's.
        // Our own child by waiting on it; a jailer the helper started (and
        // reaps) by its pid.
        let exited = async {
            match child.as_mut() {
                Some(c) => c.wait().await.map(Some),
                None => {
                    crate::wait::pid_exited(pid).await;
                    Ok(None)
                }
            }
        };
        let up = tokio::select! {
            () = api_socket_up(&spec.control_socket) => Ok(()),
            status = exited => Err(NotUp::Exited(status.map_err(|e| err(LaunchError::Wait(e)))?)),
            () = tokio::time::sleep(SOCKET_WAIT) => Err(NotUp::TimedOut),
        };
        if let Err(why) = up {
            match child.as_mut() {
                Some(c) => {
                    let _ = c.start_kill();
                    let _ = c.wait().await;
                }
                None => {
                    let _ = self.kill(pid, &spec.control_socket).await;
                }
            }
            return Err(err(LaunchError::ApiSocket {
                socket: spec.control_socket.clone(),
                why,
                console: spec.console_log.clone(),
            }));
        }
        // Reap it while this daemon lives; after a daemon restart it is
        // init's child and identified through /proc.
        if let Some(mut c) = child {
            tokio::spawn(async move {
                let _ = c.wait().await;
            });
        }
        if let Err(e) = self.configure(&api, spec, &self.paths(spec)).await {
            let _ = self.kill(pid, &spec.control_socket).await;
            return Err(err(e));
        }
        // The pid is returned and recorded by the caller; the file is for
        // people and tools looking at the VM dir, so a failed write is not
        // a failed start.
        if let Err(e) = tokio::fs::write(&spec.pid_file, format!("{pid}\n")).await {
            tracing::warn!(pid_file = %spec.pid_file.display(), "writing the pid file: {e}");
        }
        Ok(pid)
    }

    async fn request_shutdown(&self, socket: &Path) -> Result<(), VmmError> {
        let action = InstanceAction {
            action_type: ActionType::SendCtrlAltDel,
        };
        FcApi::new(socket).put("/actions", action).await
    }

    fn alive(&self, pid: u32, socket: &Path) -> bool {
        process::alive_with(pid, &self.identity(socket))
    }

    fn find(&self, socket: &Path) -> Option<u32> {
        process::all_with(&self.identity(socket)).into_iter().max()
    }

    async fn kill(&self, pid: u32, socket: &Path) -> Result<(), VmmError> {
        process::kill_vmm(pid, &self.identity(socket), Duration::from_secs(10)).await
    }

    /// Removes the jail (chroot and cgroups) once the process is gone.
    async fn release(&self, vm_id: &str, jail_root: Option<&Path>) -> Result<(), VmmError> {
        match (&self.jail, jail_root) {
            (Some(j), root) => Ok(j.ops.release(vm_id, root).await?),
            // A VM jailed by an earlier configuration: its recorded root.
            (None, Some(root)) => Ok(jail::remove_tree(root)?),
            (None, None) => Ok(()),
        }
    }
}
