//! Firecracker: one process per VM, configured over its API socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use banger_api::vm::VmmKind;

use crate::driver::Vmm;
use crate::jail::{self, Jail};
use crate::{LaunchError, LaunchSpec, VmmError, process};

mod api;
pub mod models;
mod snapshot;
mod spawn;
pub use api::{ApiError, FcApi};
use models::{
    ActionType, BootSource, Drive, InstanceAction, LogLevel, Logger, MachineConfig, Metrics,
    NetworkInterface, VmState, Vsock,
};
pub use snapshot::{MEMORY_FILE, STATE_FILE};

/// The guest's one network interface, by the name Firecracker knows it.
const NET_IFACE: &str = "eth0";

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

/// Where Firecracker finds a VM's files: chroot-relative names when
/// jailed; run directly, names relative to the VM's directory for the
/// disks (see [`spawn::drive_link`]) and host paths for the rest.
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
                let dir = spawn::vm_dir(spec);
                FcPaths {
                    kernel: spec.kernel.clone(),
                    initrd: spec.initrd.clone(),
                    drives: (0..spec.disks.len()).map(spawn::drive_link).collect(),
                    log: dir.join("firecracker.log"),
                    metrics: dir.join("firecracker.metrics"),
                    vsock: spec.vsock.clone(),
                }
            }
        }
    }

    /// What a booted and a restored VM share: Firecracker's own log and
    /// metrics (the only things it takes before a snapshot load).
    async fn configure_process(&self, api: &FcApi, p: &FcPaths) -> Result<(), LaunchError> {
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
        Ok(api.put("/metrics", metrics).await?)
    }

    /// The machine of a boot, then the boot.
    async fn configure_boot(
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
                iface_id: NET_IFACE.into(),
                host_dev_name: net.tap.clone(),
                guest_mac: net.mac.clone(),
            };
            api.put(&format!("/network-interfaces/{NET_IFACE}"), iface)
                .await?;
        }
        if let Some(uds) = &p.vsock {
            let vsock = Vsock {
                guest_cid: crate::GUEST_CID,
                uds_path: uds.clone(),
            };
            api.put("/vsock", vsock).await?;
        }
        let start = InstanceAction {
            action_type: ActionType::InstanceStart,
        };
        Ok(api.put("/actions", start).await?)
    }

    /// Configures the started process `pid` with `configure`; kills it if
    /// that fails, else records the pid.
    async fn finish_start(
        &self,
        spec: &LaunchSpec,
        pid: u32,
        configure: impl std::future::Future<Output = Result<(), LaunchError>>,
    ) -> Result<u32, VmmError> {
        if let Err(source) = configure.await {
            let _ = self.kill(pid, &spec.control_socket).await;
            return Err(VmmError::Launch {
                bin: self.bin.clone(),
                source,
            });
        }
        // The pid is returned and recorded by the caller; the file is for
        // people and tools looking at the VM dir, so a failed write is not
        // a failed start.
        if let Err(e) = tokio::fs::write(&spec.pid_file, format!("{pid}\n")).await {
            tracing::warn!(pid_file = %spec.pid_file.display(), "writing the pid file: {e}");
        }
        Ok(pid)
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

    fn jailed_ids(&self) -> Vec<String> {
        self.jail
            .as_ref()
            .map(|j| j.config.jailed_ids())
            .unwrap_or_default()
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<u32, VmmError> {
        let pid = self.spawn(spec).await?;
        let api = FcApi::new(&spec.control_socket);
        let p = self.paths(spec);
        let configure = async {
            self.configure_process(&api, &p).await?;
            self.configure_boot(&api, spec, &p).await
        };
        self.finish_start(spec, pid, configure).await
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

    /// Nothing Firecracker runs for banger is beyond its snapshots.
    fn snapshot_blocker(&self, _spec: &LaunchSpec) -> Option<String> {
        None
    }

    async fn pause(&self, socket: &Path) -> Result<(), VmmError> {
        snapshot::set_state(socket, VmState::Paused).await
    }

    async fn resume(&self, socket: &Path) -> Result<(), VmmError> {
        snapshot::set_state(socket, VmState::Resumed).await
    }

    async fn is_paused(&self, socket: &Path) -> Result<bool, VmmError> {
        snapshot::is_paused(socket).await
    }

    async fn save(&self, socket: &Path, dir: &Path) -> Result<(), VmmError> {
        self.save_to(socket, dir).await
    }

    async fn restore(&self, spec: &LaunchSpec, dir: &Path) -> Result<u32, VmmError> {
        self.restore_from(spec, dir).await
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
