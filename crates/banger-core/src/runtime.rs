//! Running VMs: start, stop, kill, cleanup, reconcile.
//!
//! Invariants (from the system this re-creates):
//! - Durable intent lives in SQLite; live kernel objects live in the
//!   handle cache, written to `<vm dir>/handles.json` *before* memory, and
//!   mirrored onto the runtime record for the names cleanup cannot derive.
//! - A handle is recorded before the object it names is created, so a
//!   crash in between leaves cleanup something to remove, never a leak.
//! - Cleanup runs every step whatever fails, and returns every error.
//! - Reconcile at daemon start adopts VMs whose VMM still runs and tears
//!   down the rest with whatever handles survive.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_api::asset::{ImageRecord, KernelRecord};
use banger_api::doctor::{Accel, DoctorReport};
use banger_api::vm::{VmRecord, VmState, VmmKind};
use banger_host::disk::GuestEntry;
use banger_store::Store;
use banger_vmm::{LaunchSpec, NetSpec, Vmm, mac_for};
use chrono::Utc;

use crate::admission::{Admission, default_boot_limit};
use crate::error::CoreError;
use crate::handles::{VmHandles, read_scratch};
use crate::lifecycle::{VmAction, check_action, check_transition};
use crate::progress::ProgressSink;
use crate::ready::{ReadyListener, ready_socket_path};
use crate::service::Core;

/// banger's DNS listens here on the bridge address.
pub const DNS_PORT: u16 = 53;

/// How long a graceful stop waits before killing.
pub const GRACEFUL_STOP: Duration = Duration::from_secs(10);

/// Name of a VM's tap: derived from its id, so it is owned by name.
pub fn tap_name(vm_id: &str) -> String {
    format!("bg-{}", &vm_id[..vm_id.len().min(12)])
}

/// Files the daemon keeps per VM.
#[derive(Debug, Clone)]
pub struct VmPaths {
    pub dir: PathBuf,
    pub root_disk: PathBuf,
    pub work_disk: PathBuf,
    pub console: PathBuf,
    pub pid_file: PathBuf,
    pub socket: PathBuf,
    /// Host end of the guest's vsock (the agent's channel).
    pub vsock: PathBuf,
}

impl Core {
    pub fn vm_paths(&self, vm_id: &str) -> VmPaths {
        let dir = self.vm_dir(vm_id);
        VmPaths {
            root_disk: dir.join("root.ext4"),
            work_disk: dir.join("work.ext4"),
            console: dir.join("console.log"),
            pid_file: dir.join("vmm.pid"),
            // Runtime dir: short, so the socket fits sun_path.
            socket: self
                .config()
                .runtime_dir
                .join("vms")
                .join(format!("{vm_id}.sock")),
            vsock: self
                .config()
                .runtime_dir
                .join("vms")
                .join(format!("{vm_id}.vsock")),
            dir,
        }
    }

    fn vmm_for(&self, kind: VmmKind) -> Result<&dyn Vmm, CoreError> {
        match kind {
            VmmKind::Qemu => Ok(self.deps.qemu.as_ref()),
            VmmKind::Firecracker => self.deps.firecracker.as_deref().ok_or_else(|| {
                CoreError::Unavailable(
                    "this daemon has no Firecracker driver configured; recreate the vm with --vmm qemu".into(),
                )
            }),
        }
    }

    pub(crate) async fn save(&self, vm: &mut VmRecord) -> Result<(), CoreError> {
        vm.updated_at = Utc::now();
        let rec = vm.clone();
        self.db(move |s| s.update_vm(&rec)).await
    }

    async fn transition(&self, vm: &mut VmRecord, to: VmState) -> Result<(), CoreError> {
        check_transition(vm.state, to)?;
        vm.state = to;
        self.save(vm).await
    }

    /// Records handles (scratch file, mirror, memory) and persists the
    /// mirror, before the objects they name are created.
    async fn record_handles(&self, vm: &mut VmRecord, h: VmHandles) -> Result<(), CoreError> {
        self.handles().set(vm, h)?;
        self.save(vm).await
    }

    /// Whether the VM's VMM runs right now: pid from the cache, verified
    /// against the control socket in its command line.
    pub fn vm_alive(&self, vm: &VmRecord) -> bool {
        let Some(pid) = self.handles().get(&vm.id).and_then(|h| h.pid) else {
            return false;
        };
        let Ok(vmm) = self.vmm_for(vm.spec.vmm) else {
            return false;
        };
        vm.runtime
            .api_socket
            .as_deref()
            .is_some_and(|s| vmm.alive(pid, Path::new(s)))
    }

    /// The VM's handles from the best source left: memory first; the
    /// scratch file when memory was lost; the runtime mirror for whatever
    /// both miss. A corrupt scratch file is not a failure: the mirror and
    /// the derivable names cover it.
    fn recovered_handles(&self, vm: &VmRecord) -> VmHandles {
        match self.handles().get(&vm.id) {
            Some(h) => h,
            None => vm
                .runtime
                .vm_dir
                .as_deref()
                .and_then(|d| {
                    read_scratch(Path::new(d)).unwrap_or_else(|e| {
                        tracing::warn!(vm_id = %vm.id, error = %e, "unreadable handles; using the runtime mirror");
                        None
                    })
                })
                .unwrap_or_default(),
        }
        .or_mirror(&vm.runtime.teardown)
    }

    /// The VM's tap as cleanup finds it: recovered handles, else the name
    /// derived from the id.
    pub(crate) fn vm_tap(&self, vm: &VmRecord) -> String {
        self.recovered_handles(vm)
            .tap
            .unwrap_or_else(|| tap_name(&vm.id))
    }

    async fn allocate_ip(&self, vm: &mut VmRecord) -> Result<Ipv4Addr, CoreError> {
        if let Some(ip) = vm.runtime.guest_ip.as_deref().and_then(|s| s.parse().ok()) {
            return Ok(ip);
        }
        let _g = self.ip_lock.lock().await;
        let used: Vec<Ipv4Addr> = self
            .db(Store::list_vms)
            .await?
            .iter()
            .filter_map(|v| v.runtime.guest_ip.as_deref()?.parse().ok())
            .collect();
        let net = &self.config().network;
        let bridge = u32::from(net.bridge_ip);
        let mask = u32::MAX << (32 - u32::from(net.prefix_len));
        let base = bridge & mask;
        let broadcast = base | !mask;
        let ip = (base + 1..broadcast)
            .map(Ipv4Addr::from)
            .find(|ip| u32::from(*ip) != bridge && !used.contains(ip))
            .ok_or_else(|| {
                CoreError::Unavailable(format!(
                    "no free address left in {}/{}; delete unused vms or widen network.bridge_cidr",
                    net.bridge_ip, net.prefix_len
                ))
            })?;
        vm.runtime.guest_ip = Some(ip.to_string());
        // Persisted under the lock: never handed out twice.
        self.save(vm).await?;
        Ok(ip)
    }

    fn guest_entries(
        &self,
        vm: &VmRecord,
        ip: Ipv4Addr,
        agent: Vec<u8>,
        authorized_key: &str,
    ) -> Vec<GuestEntry> {
        let net = &self.config().network;
        let file = |path: &str, contents: String| GuestEntry::File {
            path: path.into(),
            mode: 0o644,
            contents: contents.into_bytes(),
        };
        let unit = format!(
            "[Unit]\nDescription=banger guest network\nDefaultDependencies=no\nBindsTo=sys-subsystem-net-devices-eth0.device\nAfter=sys-subsystem-net-devices-eth0.device\nBefore=network.target\nWants=network.target\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nStandardOutput=journal+console\nStandardError=journal+console\nExecStart=/sbin/ip link set lo up\nExecStart=/sbin/ip link set eth0 up\nExecStart=/sbin/ip addr replace {ip}/{prefix} dev eth0\nExecStart=/sbin/ip route replace default via {gw}\n\n[Install]\nWantedBy=multi-user.target\n",
            prefix = net.prefix_len,
            gw = net.bridge_ip,
        );
        vec![
            file("/etc/hostname", format!("{}\n", vm.name)),
            file("/etc/hosts", format!("127.0.0.1 localhost\n127.0.1.1 {name}\n{ip} {name}.vm {name}\n", name = vm.name)),
            file("/etc/resolv.conf", format!("nameserver {}\nsearch vm\n", net.bridge_ip)),
            file(
                "/etc/fstab",
                "# written by banger at every start\n/dev/vda / ext4 defaults 0 1\n/dev/vdb /root ext4 defaults 0 2\ntmpfs /tmp tmpfs defaults,nodev,nosuid,mode=1777 0 0\n".into(),
            ),
            GuestEntry::Dir { path: "/etc/systemd/system/multi-user.target.wants".into(), mode: 0o755 },
            file("/etc/systemd/system/banger-net.service", unit),
            GuestEntry::Symlink {
                path: "/etc/systemd/system/multi-user.target.wants/banger-net.service".into(),
                target: "/etc/systemd/system/banger-net.service".into(),
            },
            // Images carry no ssh host keys (clones would share them): each
            // VM makes its own on first boot, before sshd starts.
            file(
                "/etc/systemd/system/banger-hostkeys.service",
                "[Unit]\nDescription=banger: per-VM ssh host keys\nBefore=ssh.service\nConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\n\n[Install]\nWantedBy=multi-user.target\n".into(),
            ),
            GuestEntry::Symlink {
                path: "/etc/systemd/system/multi-user.target.wants/banger-hostkeys.service".into(),
                target: "/etc/systemd/system/banger-hostkeys.service".into(),
            },
            GuestEntry::Dir { path: "/etc/ssh/sshd_config.d".into(), mode: 0o755 },
            file("/etc/ssh/sshd_config.d/99-banger.conf", SSHD_DROP_IN.into()),
            file(AUTHORIZED_KEYS, format!("{authorized_key}\n")),
            // Written at every start, never baked into the shared image, so
            // the agent always matches the daemon that talks to it.
            GuestEntry::File { path: AGENT_PATH.into(), mode: 0o755, contents: agent },
            file("/etc/systemd/system/banger-agent.service", AGENT_UNIT.into()),
            GuestEntry::Symlink {
                path: "/etc/systemd/system/multi-user.target.wants/banger-agent.service".into(),
                target: "/etc/systemd/system/banger-agent.service".into(),
            },
        ]
    }

    /// Creates the VM's disks on first start; later starts keep them.
    async fn prepare_disks(
        &self,
        vm: &VmRecord,
        paths: &VmPaths,
        image: &ImageRecord,
        progress: &ProgressSink,
    ) -> Result<(), CoreError> {
        std::fs::create_dir_all(&paths.dir)
            .map_err(|e| CoreError::Internal(format!("creating {}: {e}", paths.dir.display())))?;
        let strategy = self.host_report().await?.storage;
        let disks = self.deps.disks.as_ref();
        if !paths.root_disk.exists() {
            progress.stage("storage", format!("cloning root disk ({strategy:?})"));
            self.verify_files(vec![image.rootfs.clone()]).await?;
            let tmp = paths.dir.join("root.ext4.partial");
            disks
                .clone_image(Path::new(&image.rootfs.path), &tmp, strategy)
                .await
                .map_err(disk_err)?;
            disks
                .grow_ext4(&tmp, vm.spec.root_disk_bytes)
                .await
                .map_err(disk_err)?;
            std::fs::rename(&tmp, &paths.root_disk).map_err(|e| {
                CoreError::Internal(format!("publishing {}: {e}", paths.root_disk.display()))
            })?;
        }
        if !paths.work_disk.exists() {
            let tmp = paths.dir.join("work.ext4.partial");
            match &image.work_seed {
                Some(seed) => {
                    progress.stage("storage", "cloning work disk from the image's /root");
                    disks
                        .clone_image(Path::new(&seed.path), &tmp, strategy)
                        .await
                        .map_err(disk_err)?;
                    disks
                        .grow_ext4(&tmp, vm.spec.work_disk_bytes)
                        .await
                        .map_err(disk_err)?;
                }
                None => {
                    // No seed (an imported rootfs): the work disk starts as
                    // a copy of the image's /root, taken without mounting.
                    progress.stage("storage", "creating the work disk from the image's /root");
                    let scratch = tempfile::Builder::new()
                        .prefix("work-seed-")
                        .tempdir_in(&paths.dir)
                        .map_err(|e| {
                            CoreError::Internal(format!("temp dir in {}: {e}", paths.dir.display()))
                        })?;
                    let home = disks
                        .extract_dir(Path::new(&image.rootfs.path), "/root", scratch.path())
                        .await
                        .map_err(disk_err)?;
                    disks
                        .make_ext4(&tmp, vm.spec.work_disk_bytes, "banger-work", Some(&home))
                        .await
                        .map_err(disk_err)?;
                }
            }
            std::fs::rename(&tmp, &paths.work_disk).map_err(|e| {
                CoreError::Internal(format!("publishing {}: {e}", paths.work_disk.display()))
            })?;
        } else {
            // `vm set --work-disk` grows it at the next start.
            disks
                .grow_ext4(&paths.work_disk, vm.spec.work_disk_bytes)
                .await
                .map_err(disk_err)?;
        }
        Ok(())
    }

    pub(crate) async fn start_vm(
        &self,
        name: &str,
        progress: &ProgressSink,
    ) -> Result<VmRecord, CoreError> {
        let found = self.find_vm(name).await?;
        let _lock = self.vm_locks.lock(&found.id).await;
        let mut vm = self.find_vm(&found.id).await?;
        check_action(&vm.name, vm.state, VmAction::Start)?;
        let kernel: KernelRecord = self.find_asset(&vm.spec.kernel).await?;
        let image: ImageRecord = self.find_asset(&vm.spec.image).await?;
        let kernel_files = std::iter::once(kernel.vmlinux.clone()).chain(kernel.initrd.clone());
        self.verify_files(kernel_files.collect()).await?;
        let vmm = self.vmm_for(vm.spec.vmm)?;
        let paths = self.vm_paths(&vm.id);
        vm.runtime.last_error = None;
        vm.runtime.vm_dir = Some(paths.dir.display().to_string());
        vm.runtime.api_socket = Some(paths.socket.display().to_string());
        vm.runtime.vsock_path = Some(paths.vsock.display().to_string());
        vm.runtime.vsock_cid = Some(banger_vmm::GUEST_CID);
        vm.runtime.console_log = Some(paths.console.display().to_string());
        vm.runtime.root_disk_path = Some(paths.root_disk.display().to_string());
        vm.runtime.work_disk_path = Some(paths.work_disk.display().to_string());
        self.transition(&mut vm, VmState::Starting).await?;
        progress.stage("starting", format!("{} on {}", vm.name, vm.spec.vmm));

        match self
            .bring_up(&mut vm, vmm, &kernel, &image, &paths, progress)
            .await
        {
            Ok(()) => {
                self.transition(&mut vm, VmState::Running).await?;
                tracing::info!(vm_id = %vm.id, name = %vm.name, "vm running");
                self.note_booted_on(&kernel, vm.spec.vmm).await;
                self.rebuild_dns().await;
                Ok(vm)
            }
            Err(e) => {
                let cleanup = self.cleanup(&mut vm, true).await;
                let mut msg = e.to_string();
                if let Err(c) = cleanup {
                    msg.push_str(&format!("; cleanup: {c}"));
                }
                msg.push_str(&failure_context(&paths.console, &paths.dir));
                vm.runtime.last_error = Some(msg.clone());
                let _ = self.transition(&mut vm, VmState::Error).await;
                tracing::warn!(vm_id = %vm.id, error = %msg, "start failed");
                Err(CoreError::StartFailed {
                    vm: vm.name.clone(),
                    message: msg,
                })
            }
        }
    }

    async fn bring_up(
        &self,
        vm: &mut VmRecord,
        vmm: &dyn Vmm,
        kernel: &KernelRecord,
        image: &ImageRecord,
        paths: &VmPaths,
        progress: &ProgressSink,
    ) -> Result<(), CoreError> {
        let mut timer = StageTimer::new(&vm.id);
        let ip = self.allocate_ip(vm).await?;
        self.prepare_disks(vm, paths, image, progress).await?;
        timer.lap("storage");
        progress.stage(
            "guest-config",
            "writing hostname, network, ssh config and the agent into the root disk",
        );
        let agent_bin = &self.config().guest.agent;
        let agent = std::fs::read(agent_bin).map_err(|e| {
            CoreError::Unavailable(format!(
                "guest agent binary {}: {e}; build it with scripts/build-guest.sh (scripts/setup.sh installs it) or set guest.agent",
                agent_bin.display()
            ))
        })?;
        let (_, authorized_key) = self.ssh_key().await?;
        self.deps
            .disks
            .write_entries(
                &paths.root_disk,
                &self.guest_entries(vm, ip, agent, &authorized_key),
            )
            .await
            .map_err(disk_err)?;
        timer.lap("guest-config");

        progress.stage(
            "network",
            format!("tap on {}", self.config().network.bridge),
        );
        let net = &self.config().network;
        // Serialised: concurrent starts must not race to create the bridge.
        let bridge_guard = self.ip_lock.lock().await;
        let bridge = self
            .deps
            .net
            .ensure_bridge(&net.bridge, net.bridge_ip, net.prefix_len)
            .await
            .map_err(|e| CoreError::Host(e.to_string()));
        drop(bridge_guard);
        bridge?;
        let tap = tap_name(&vm.id);
        let mut handles = VmHandles {
            tap: Some(tap.clone()),
            ..VmHandles::default()
        };
        self.record_handles(vm, handles.clone()).await?;
        self.deps
            .net
            .create_tap(&tap, &net.bridge, vmm.tap_owner())
            .await
            .map_err(|e| CoreError::Host(e.to_string()))?;
        for cap in crate::capability::all() {
            cap.start(self, vm, &tap).await?;
        }
        timer.lap("network");

        // QEMU gets the tap as a descriptor (from the helper when bangerd is
        // unprivileged); Firecracker opens it by name as the jail's owner.
        let tap_fd = if vm.spec.vmm == VmmKind::Qemu {
            self.deps
                .net
                .open_tap(&tap)
                .await
                .map_err(|e| CoreError::Host(e.to_string()))?
        } else {
            None
        };
        std::fs::create_dir_all(paths.socket.parent().unwrap_or(Path::new("/")))
            .map_err(|e| CoreError::Internal(format!("creating socket dir: {e}")))?;
        let host = self.host_report().await?;
        let accel = host.default_vmm.map_or(Accel::Tcg, |c| c.accel);
        let mut cmdline =
            String::from("console=ttyS0 root=/dev/vda rw net.ifnames=0 panic=-1 quiet");
        if !kernel.cmdline.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&kernel.cmdline);
        }
        let spec = LaunchSpec {
            vm_id: vm.id.clone(),
            vcpus: vm.spec.vcpus,
            memory_mib: vm.spec.memory_mib,
            kernel: kernel.vmlinux.path.clone().into(),
            initrd: kernel.initrd.as_ref().map(|i| i.path.clone().into()),
            cmdline,
            disks: vec![paths.root_disk.clone(), paths.work_disk.clone()],
            net: Some(NetSpec {
                tap,
                mac: mac_for(&vm.id),
                fd: tap_fd.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
            }),
            console_log: paths.console.clone(),
            control_socket: paths.socket.clone(),
            pid_file: paths.pid_file.clone(),
            accel,
            vsock: Some(paths.vsock.clone()),
        };
        if let Some(root) = vmm.jail_root(&vm.id) {
            // Write-ahead, like the tap: a crash mid-launch leaves cleanup
            // the jail to remove.
            handles.jail_root = Some(root.display().to_string());
            self.record_handles(vm, handles.clone()).await?;
        }
        // Held until the agent answers: the readiness bound below counts
        // from the launch, never from the time spent queued here.
        let _slot = self.boot_admission(&host).acquire(progress).await;
        timer.lap("boot-queue");
        // Bound before launch: the agent's call cannot come too early.
        let ready = if vmm.ready_call() {
            Some(
                ReadyListener::bind(ready_socket_path(&paths.vsock))
                    .map_err(|e| CoreError::Host(e.to_string()))?,
            )
        } else {
            None
        };
        progress.stage("boot", format!("launching {}", vm.spec.vmm));
        let pid = vmm
            .launch(&spec)
            .await
            .map_err(|e| CoreError::Host(e.to_string()))?;
        handles.pid = Some(pid);
        self.record_handles(vm, handles).await?;
        timer.lap("vmm-launch");
        // Running means usable: the guest booted and its agent answers.
        let waited = self
            .wait_for_agent(vm, self.ready_timeout(accel), progress, ready.as_ref())
            .await;
        timer.lap("agent");
        timer.log();
        waited
    }

    /// The boot queue, sized on first use: `limits.concurrent_boots`, or
    /// one per CPU under software emulation (more with hardware KVM).
    pub(crate) fn boot_admission(&self, host: &DoctorReport) -> &Admission {
        self.boots.get_or_init(|| {
            let limit = match self.config().limits.concurrent_boots {
                Some(n) => n as usize,
                None => {
                    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
                    let kvm = host.default_vmm.is_some_and(|c| c.accel == Accel::Kvm);
                    default_boot_limit(cpus, kvm)
                }
            };
            tracing::info!(
                limit = limit,
                "guest boots admitted {}",
                if limit == 0 {
                    "without a limit".to_owned()
                } else {
                    format!("{limit} at a time")
                }
            );
            Admission::new("boot", Some(limit))
        })
    }

    /// Tears down everything a VM holds on the host. Every step runs; the
    /// errors of all of them are returned together. Idempotent.
    pub(crate) async fn cleanup(
        &self,
        vm: &mut VmRecord,
        keep_disks: bool,
    ) -> Result<(), CoreError> {
        let mut errors: Vec<String> = Vec::new();
        let handles = self.recovered_handles(vm);
        let socket = vm.runtime.api_socket.clone().map(PathBuf::from);

        // 1. The VMM process.
        if let (Ok(vmm), Some(sock)) = (self.vmm_for(vm.spec.vmm), socket.as_deref()) {
            let pid = handles
                .pid
                .filter(|p| vmm.alive(*p, sock))
                .or_else(|| vmm.find(sock));
            // Even with no pid known, kill() sweeps every process naming the
            // VM's socket: nothing of this VM may outlive its cleanup.
            if let Err(e) = vmm.kill(pid.unwrap_or(0), sock).await {
                errors.push(format!("killing vmm {}: {e}", pid.unwrap_or(0)));
            }
            // What the VMM kept beyond its process: the jail's chroot and
            // cgroups, at the recorded root.
            if let Err(e) = vmm
                .release(&vm.id, handles.jail_root.as_deref().map(Path::new))
                .await
            {
                errors.push(e.to_string());
            }
        }
        // 2. Capabilities (NAT rules), keyed by the tap, then the tap
        // itself (named by id, so also derivable when all else is lost).
        let tap = handles.tap.clone().unwrap_or_else(|| tap_name(&vm.id));
        for cap in crate::capability::all().iter().rev() {
            if let Err(e) = cap.cleanup(self, vm, &tap).await {
                errors.push(format!("{}: {e}", cap.name()));
            }
        }
        if let Err(e) = self.deps.net.delete_link(&tap).await {
            errors.push(e.to_string());
        }
        // 3. Sockets: control, vsock, and QEMU's vhost-user one.
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
            );
        for sock in sockets {
            if let Err(e) = std::fs::remove_file(&sock) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    errors.push(format!("removing {}: {e}", sock.display()));
                }
            }
        }
        // 4. Handles: memory, scratch file, mirror.
        self.handles().clear(vm);
        // 5. Disks and address, when the VM goes for good.
        if !keep_disks {
            if let Some(dir) = vm.runtime.vm_dir.clone() {
                if let Err(e) = self.remove_vm_dir(Path::new(&dir)) {
                    errors.push(e.to_string());
                }
            }
            vm.runtime.guest_ip = None;
        }
        if let Err(e) = self.save(vm).await {
            errors.push(e.to_string());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CoreError::Cleanup(errors))
        }
    }

    pub(crate) async fn stop_vm(&self, name: &str, graceful: bool) -> Result<VmRecord, CoreError> {
        let found = self.find_vm(name).await?;
        let _lock = self.vm_locks.lock(&found.id).await;
        let mut vm = self.find_vm(&found.id).await?;
        check_action(
            &vm.name,
            vm.state,
            if graceful {
                VmAction::Stop
            } else {
                VmAction::Kill
            },
        )?;
        if vm.state == VmState::Running {
            self.transition(&mut vm, VmState::Stopping).await?;
        }
        if graceful {
            let vmm = self.vmm_for(vm.spec.vmm)?;
            let deadline = tokio::time::Instant::now() + self.stop_timeout;
            // The agent first: a clean shutdown from inside the guest, no
            // matter whether it listens to ACPI. Firecracker has no power
            // off; a guest reboot ends its process.
            let reboot = vm.spec.vmm == VmmKind::Firecracker;
            match self.agent_power_off(&vm, reboot).await {
                Ok(()) => {
                    while self.vm_alive(&vm) && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Err(e) => {
                    tracing::info!(vm_id = %vm.id, error = %e, "agent power off failed; asking the vmm");
                }
            }
            if let Some(sock) = vm.runtime.api_socket.clone() {
                // A power-button press before the guest's logind listens is
                // lost: press again every couple of seconds until it goes.
                let mut next_press = tokio::time::Instant::now();
                while self.vm_alive(&vm) && tokio::time::Instant::now() < deadline {
                    if tokio::time::Instant::now() >= next_press {
                        if let Err(e) = vmm.request_shutdown(Path::new(&sock)).await {
                            tracing::warn!(vm_id = %vm.id, error = %e, "graceful shutdown request failed; killing");
                            break;
                        }
                        next_press = tokio::time::Instant::now() + Duration::from_secs(2);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let result = self.cleanup(&mut vm, true).await;
        vm.state = VmState::Stopped;
        vm.runtime.last_error = result.as_ref().err().map(ToString::to_string);
        self.save(&mut vm).await?;
        self.rebuild_dns().await;
        result.map(|()| vm)
    }

    /// Daemon start: adopt VMs whose VMM runs, tear down the rest.
    pub async fn reconcile(&self) -> Result<(), CoreError> {
        let vms = self.db(Store::list_vms).await?;
        for mut vm in vms {
            if !matches!(
                vm.state,
                VmState::Starting | VmState::Running | VmState::Stopping
            ) {
                continue;
            }
            let scratch = vm
                .runtime
                .vm_dir
                .as_deref()
                .map(|d| read_scratch(Path::new(d)));
            let recovered = match scratch {
                Some(Ok(Some(h))) => h,
                Some(Err(e)) => {
                    tracing::warn!(vm_id = %vm.id, error = %e, "handles.json unreadable; falling back to the runtime record");
                    VmHandles::default()
                }
                _ => VmHandles::default(),
            }
            .or_mirror(&vm.runtime.teardown);
            let sock = vm.runtime.api_socket.clone().map(PathBuf::from);
            let pid = match (self.vmm_for(vm.spec.vmm), sock.as_deref()) {
                (Ok(vmm), Some(s)) => recovered
                    .pid
                    .filter(|p| vmm.alive(*p, s))
                    .or_else(|| vmm.find(s)),
                _ => None,
            };
            match (pid, vm.state) {
                (Some(pid), VmState::Running | VmState::Starting) => {
                    let h = VmHandles {
                        pid: Some(pid),
                        ..recovered
                    };
                    // Rewrites a lost or corrupt scratch file from what was
                    // recovered, so disk and memory agree again.
                    self.handles().set(&mut vm, h)?;
                    vm.state = VmState::Running;
                    self.save(&mut vm).await?;
                    tracing::info!(vm_id = %vm.id, name = %vm.name, pid, "adopted running vm");
                }
                (_, was) => {
                    self.handles().adopt(&vm.id, recovered);
                    let cleanup = self.cleanup(&mut vm, true).await;
                    vm.state = VmState::Stopped;
                    let mut msg = format!(
                        "vm was {was} when bangerd restarted and its vmm was gone; cleaned up"
                    );
                    if was == VmState::Stopping {
                        msg = "bangerd restarted during a stop; the stop was completed".into();
                    }
                    if let Err(e) = cleanup {
                        msg.push_str(&format!(" (cleanup errors: {e})"));
                    }
                    vm.runtime.last_error = Some(msg);
                    self.save(&mut vm).await?;
                    tracing::info!(vm_id = %vm.id, name = %vm.name, "reconciled dead vm");
                }
            }
        }
        self.rebuild_dns().await;
        Ok(())
    }

    /// Records on the kernel that it ran on this VMM (once per VMM).
    async fn note_booted_on(&self, kernel: &KernelRecord, vmm: VmmKind) {
        if kernel.booted_on.contains(&vmm) {
            return;
        }
        let mut k = kernel.clone();
        k.booted_on.push(vmm);
        if let Err(e) = self.db(move |s| s.update_asset(&k)).await {
            tracing::warn!(kernel = %kernel.name, error = %e, "recording booted_on");
        }
    }

    /// Publishes `<name>.vm` for every live VM, and nothing else. Called
    /// after every transition, so the zone never names a dead VM.
    pub(crate) async fn rebuild_dns(&self) {
        let vms = match self.db(Store::list_vms).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "dns: cannot list vms");
                return;
            }
        };
        let records = vms
            .iter()
            .filter(|v| self.vm_alive(v))
            .filter_map(|v| Some((v.name.clone(), v.runtime.guest_ip.as_deref()?.parse().ok()?)))
            .collect();
        let bind = std::net::SocketAddr::new(self.config().network.bridge_ip.into(), DNS_PORT);
        self.deps.dns.publish(bind, records).await;
    }

    /// The serial console log of a VM.
    pub(crate) async fn vm_logs(&self, name: &str) -> Result<String, CoreError> {
        let vm = self.find_vm(name).await?;
        let path = self.vm_paths(&vm.id).console;
        match std::fs::read(&path) {
            Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(CoreError::Internal(format!(
                "reading {}: {e}",
                path.display()
            ))),
        }
    }
}

/// Durations of the start stages, logged for the benchmark and for
/// anyone wondering where a slow start went.
struct StageTimer {
    vm_id: String,
    last: std::time::Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl StageTimer {
    fn new(vm_id: &str) -> Self {
        Self {
            vm_id: vm_id.to_owned(),
            last: std::time::Instant::now(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, stage: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((stage, now - self.last));
        self.last = now;
    }

    fn log(&self) {
        let parts: Vec<String> = self
            .laps
            .iter()
            .map(|(s, d)| format!("{s}={}ms", d.as_millis()))
            .collect();
        tracing::info!(vm_id = %self.vm_id, stages = %parts.join(" "), "start stages");
    }
}

fn disk_err(e: banger_host::disk::DiskError) -> CoreError {
    CoreError::Host(e.to_string())
}

/// The last `lines` lines of a guest-written log, at most [`TAIL_BYTES`]
/// of it read (the guest decides how long the log is).
fn log_tail(path: &Path, lines: usize) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))
        .ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    (!tail.trim().is_empty()).then_some(tail)
}

/// How much of a log's end a failed start looks at.
const TAIL_BYTES: u64 = 256 << 10;

/// What a failed start's error carries besides its cause, so it can be
/// diagnosed from `last_error` alone: banger's own lines from the guest
/// (its units and the agent log to the console), the console's tail, the
/// vsock backend's words, and how busy the host was.
fn failure_context(console: &Path, vm_dir: &Path) -> String {
    let mut out = String::new();
    // One read of the console serves both excerpts.
    if let Some(text) = log_tail(console, 2000) {
        let lines: Vec<&str> = text.lines().collect();
        let ours: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains("banger"))
            .collect();
        if !ours.is_empty() {
            let from = ours.len().saturating_sub(10);
            out.push_str(&format!(
                "\nbanger's lines on the console:\n{}",
                ours[from..].join("\n")
            ));
        }
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        if !tail.trim().is_empty() {
            out.push_str(&format!("\nlast console lines:\n{tail}"));
        }
    }
    if let Some(tail) = log_tail(&vm_dir.join("vsock-backend.log"), 5) {
        out.push_str(&format!("\nvsock backend:\n{tail}"));
    }
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        out.push_str(&format!(
            "\nhost load (1/5/15 min): {}",
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    out
}

/// Where the guest agent lives in every VM's root disk.
pub const AGENT_PATH: &str = "/usr/local/sbin/banger-agent";

/// The agent's unit: early (no default dependencies), but after the local
/// filesystems (the work disk at /root) and the network, so that "ready"
/// means commands find /root and the bridge.
pub const AGENT_UNIT: &str = "\
[Unit]
Description=banger guest agent
DefaultDependencies=no
After=local-fs.target banger-net.service
Wants=banger-net.service

[Service]
ExecStart=/usr/local/sbin/banger-agent
# Its words reach the serial console too: a start that times out shows
# them in last_error without a way into the guest.
StandardOutput=journal+console
StandardError=journal+console
Restart=always
RestartSec=200ms

[Install]
WantedBy=multi-user.target
";

/// banger's public key; the sshd drop-in reads it beside the user's own
/// `~/.ssh/authorized_keys` on the work disk, which banger never touches.
pub const AUTHORIZED_KEYS: &str = "/etc/ssh/banger_authorized_keys";

/// The hardened sshd drop-in every guest gets: banger VMs are single-user
/// root sandboxes reachable only over the host bridge, so key-only root
/// login, every password path closed, and the key file pinned to the one
/// banger writes.
pub const SSHD_DROP_IN: &str = "\
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile /etc/ssh/banger_authorized_keys .ssh/authorized_keys
";

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use banger_api::doctor::{Accel, DoctorReport, StorageStrategy, VmmChoice};
    use banger_api::vm::CreateVmRequest;
    use banger_config::Config;
    use banger_host::disk::FakeDisks;
    use banger_host::net::FakeNet;
    use banger_vmm::FakeVmm;

    use super::*;
    use crate::command::{Command, Reply};
    use crate::handles::scratch_path;

    struct Fixture {
        core: Arc<Core>,
        net: Arc<FakeNet>,
        disks: Arc<FakeDisks>,
        vmm: Arc<FakeVmm>,
        dns: Arc<banger_host::dns::FakeDns>,
        agent: Arc<crate::agent::FakeAgent>,
        firewall: Arc<banger_host::firewall::FakeFirewall>,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let run = dir.path().join("run");
        let agent_bin = dir.path().join("banger-agent");
        std::fs::write(&agent_bin, b"\x7fELF agent").expect("agent");
        let cfg = Config::load_with(|k| match k {
            "BANGER_GUEST_AGENT" => Some(agent_bin.display().to_string()),
            "BANGER_READY_TIMEOUT_SECS" => Some("1".into()),
            "BANGER_CONFIG" => Some("/dev/null".into()),
            "BANGER_STATE_DIR" => Some(state.display().to_string()),
            "BANGER_RUNTIME_DIR" => Some(run.display().to_string()),
            "BANGER_BRIDGE_CIDR" => Some("10.99.0.1/28".into()),
            "BANGER_AUTO_PROVISION" => Some("false".into()),
            _ => None,
        })
        .expect("config");
        let store = Arc::new(Store::open_in_memory().expect("store"));
        crate::testing::seed_real_default_assets(&store, dir.path());
        let fakes = crate::testing::fake_deps();
        let (net, disks, vmm, dns, agent, firewall) = (
            fakes.net,
            fakes.disks,
            fakes.vmm,
            fakes.dns,
            fakes.agent,
            fakes.firewall,
        );
        let mut core = Core::new(cfg, store, fakes.deps);
        core.stop_timeout = Duration::from_millis(300);
        *core.host.write().expect("lock") = Some(DoctorReport {
            checks: vec![],
            default_vmm: Some(VmmChoice {
                vmm: VmmKind::Qemu,
                accel: Accel::Tcg,
            }),
            storage: StorageStrategy::SparseCopy,
        });
        Fixture {
            core: Arc::new(core),
            net,
            disks,
            vmm,
            dns,
            agent,
            firewall,
            _dir: dir,
        }
    }

    async fn run(core: &Core, cmd: Command) -> Result<Reply, CoreError> {
        core.execute(cmd, &ProgressSink::discard()).await
    }

    async fn vm(core: &Core, cmd: Command) -> VmRecord {
        match run(core, cmd).await.expect("command") {
            Reply::Vm(v) | Reply::Deleted(v) => v,
            other => panic!("{other:?}"),
        }
    }

    /// Creates a VM named `name` with the defaults; returns its id.
    async fn create(f: &Fixture, name: &str) -> String {
        vm(
            &f.core,
            Command::VmCreate(CreateVmRequest {
                name: Some(name.into()),
                ..Default::default()
            }),
        )
        .await
        .id
    }

    async fn create_and_start(f: &Fixture, name: &str) -> VmRecord {
        create(f, name).await;
        vm(&f.core, Command::VmStart { vm: name.into() }).await
    }

    #[tokio::test]
    async fn start_records_handles_before_objects_and_configures_the_guest() {
        let f = fixture();
        let v = create_and_start(&f, "web").await;
        assert_eq!(v.state, VmState::Running);
        assert_eq!(v.runtime.guest_ip.as_deref(), Some("10.99.0.2"));
        let tap = tap_name(&v.id);
        assert!(f.net.has(&tap));
        assert_eq!(f.net.recorded()[0], "ensure_bridge banger0 10.99.0.1/28");
        assert!(f.core.vm_alive(&v));
        // Scratch file, cache and mirror agree.
        let dir = PathBuf::from(v.runtime.vm_dir.clone().expect("dir"));
        let scratch = read_scratch(&dir).expect("read").expect("scratch file");
        assert_eq!(scratch.tap.as_deref(), Some(tap.as_str()));
        assert!(scratch.pid.is_some());
        assert_eq!(v.runtime.teardown.tap.as_deref(), Some(tap.as_str()));
        let written = f.disks.written.lock().expect("lock").clone();
        let hostname = written.iter().find_map(|(_, e)| match e {
            GuestEntry::File { path, contents, .. } if path == "/etc/hostname" => {
                Some(contents.clone())
            }
            _ => None,
        });
        assert_eq!(hostname.as_deref(), Some(b"web\n".as_slice()));
        let unit = written.iter().any(|(_, e)| {
            matches!(e, GuestEntry::File { path, contents, .. } if path.ends_with("banger-net.service") && String::from_utf8_lossy(contents).contains("10.99.0.2/28"))
        });
        assert!(unit, "network unit carries the address");
        // The agent and banger's public key go into the VM's own disk.
        let file = |want: &str| {
            written.iter().find_map(|(disk, e)| match e {
                GuestEntry::File {
                    path,
                    contents,
                    mode,
                } if path == want => Some((disk.clone(), contents.clone(), *mode)),
                _ => None,
            })
        };
        let (disk, agent, mode) = file(AGENT_PATH).expect("agent injected");
        assert_eq!(
            (agent.as_slice(), mode),
            (b"\x7fELF agent".as_slice(), 0o755)
        );
        assert_eq!(
            disk,
            dir.join("root.ext4"),
            "into the VM's disk, not the image"
        );
        let (_, key, _) = file(AUTHORIZED_KEYS).expect("authorized key");
        assert!(String::from_utf8_lossy(&key).starts_with("ssh-ed25519 "));
        assert_eq!(
            v.runtime.vsock_path,
            Some(f.core.vm_paths(&v.id).vsock.display().to_string())
        );
        // Disks were cloned from the image (root) and its seed (work).
        let calls = f.disks.recorded();
        assert!(
            calls
                .iter()
                .any(|c| c.starts_with("clone") && c.contains("rootfs.ext4")),
            "{calls:?}"
        );
        assert!(
            calls
                .iter()
                .any(|c| c.starts_with("clone") && c.contains("seed.ext4")),
            "{calls:?}"
        );
        // The kernel now records the VMM it ran on.
        let k: KernelRecord = f.core.find_asset("default").await.expect("kernel");
        assert_eq!(k.booted_on, [VmmKind::Qemu]);
        // Published in DNS while alive.
        assert_eq!(
            f.dns.last().get("web").map(ToString::to_string).as_deref(),
            Some("10.99.0.2")
        );
        // A second start of a running VM is refused.
        let err = run(&f.core, Command::VmStart { vm: "web".into() })
            .await
            .expect_err("running");
        assert!(err.to_string().contains("already running"), "{err}");
    }

    #[tokio::test]
    async fn graceful_stop_keeps_disks_and_releases_host_objects() {
        let f = fixture();
        let v = create_and_start(&f, "db").await;
        let dir = PathBuf::from(v.runtime.vm_dir.clone().expect("dir"));
        let stopped = vm(&f.core, Command::VmStop { vm: "db".into() }).await;
        assert_eq!(stopped.state, VmState::Stopped);
        assert_eq!(
            f.agent.power_offs(),
            [(f.core.vm_paths(&v.id).vsock, false)],
            "the agent is asked first"
        );
        assert!(
            !f.vmm
                .recorded()
                .iter()
                .any(|c| c.starts_with("shutdown") || c.starts_with("kill")),
            "the guest powered off by itself: {:?}",
            f.vmm.recorded()
        );
        assert!(!f.net.has(&tap_name(&v.id)));
        assert!(!scratch_path(&dir).exists());
        assert!(stopped.runtime.teardown.is_empty());
        assert!(
            dir.join("root.ext4").exists() && dir.join("work.ext4").exists(),
            "disks persist"
        );
        assert_eq!(
            stopped.runtime.guest_ip, v.runtime.guest_ip,
            "address kept for the next start"
        );
        assert!(f.dns.last().is_empty(), "a stopped VM is not in DNS");
        // Start again reuses the disks (no new clone).
        let clones_before = f
            .disks
            .recorded()
            .iter()
            .filter(|c| c.starts_with("clone"))
            .count();
        vm(&f.core, Command::VmStart { vm: "db".into() }).await;
        let clones_after = f
            .disks
            .recorded()
            .iter()
            .filter(|c| c.starts_with("clone"))
            .count();
        assert_eq!(clones_before, clones_after);
    }

    #[tokio::test]
    async fn stop_falls_back_to_kill_when_the_guest_ignores_shutdown() {
        let f = fixture();
        create_and_start(&f, "stubborn").await;
        *f.vmm.ignore_shutdown.lock().expect("lock") = true;
        f.agent.set_ready(false);
        let v = vm(
            &f.core,
            Command::VmStop {
                vm: "stubborn".into(),
            },
        )
        .await;
        assert_eq!(v.state, VmState::Stopped);
        assert!(f.vmm.recorded().iter().any(|c| c.starts_with("shutdown")));
        assert!(f.vmm.recorded().iter().any(|c| c.starts_with("kill")));
    }

    #[tokio::test]
    async fn stop_without_an_agent_presses_the_power_button() {
        let f = fixture();
        create_and_start(&f, "quiet").await;
        f.agent.set_ready(false);
        let v = vm(&f.core, Command::VmStop { vm: "quiet".into() }).await;
        assert_eq!(v.state, VmState::Stopped);
        assert!(f.agent.power_offs().is_empty());
        assert!(f.vmm.recorded().iter().any(|c| c.starts_with("shutdown")));
        assert!(!f.vmm.recorded().iter().any(|c| c.starts_with("kill")));
    }

    #[tokio::test]
    async fn a_guest_whose_agent_never_answers_is_an_error_and_leaves_nothing() {
        let f = fixture();
        f.agent.set_ready(false);
        vm(
            &f.core,
            Command::VmCreate(CreateVmRequest {
                name: Some("mute".into()),
                ..Default::default()
            }),
        )
        .await;
        let id = f.core.find_vm("mute").await.expect("find").id;
        std::fs::create_dir_all(f.core.vm_paths(&id).dir).expect("dir");
        std::fs::write(
            f.core.vm_paths(&id).console,
            "Booting\nKernel panic - not syncing\n",
        )
        .expect("console");
        let err = run(&f.core, Command::VmStart { vm: "mute".into() })
            .await
            .expect_err("not ready");
        let msg = err.to_string();
        assert!(msg.contains("did not answer within 1s"), "{msg}");
        assert!(
            msg.contains("Kernel panic"),
            "console tail in the message: {msg}"
        );
        let v = f.core.find_vm("mute").await.expect("find");
        assert_eq!(v.state, VmState::Error);
        assert!(f.vmm.running.lock().expect("lock").is_empty(), "vmm killed");
        assert!(!f.net.has(&tap_name(&v.id)), "tap removed");
    }

    /// Plays the guest that calls home once the daemon listens.
    fn guest_calls_ready(vsock: PathBuf, line: &'static [u8]) -> tokio::task::JoinHandle<()> {
        use tokio::io::AsyncWriteExt;
        tokio::spawn(async move {
            let path = ready_socket_path(&vsock);
            loop {
                if let Ok(mut s) = tokio::net::UnixStream::connect(&path).await {
                    let _ = s.write_all(line).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    }

    #[tokio::test]
    async fn a_vmm_with_ready_calls_starts_on_the_agents_call_and_removes_the_socket() {
        let f = fixture();
        *f.vmm.ready_calls.lock().expect("lock") = true;
        let id = create(&f, "caller").await;
        let vsock = f.core.vm_paths(&id).vsock;
        // Garbage first (a guest may write anything), then the agent.
        let guest = {
            let vsock = vsock.clone();
            tokio::spawn(async move {
                guest_calls_ready(vsock.clone(), b"\x1b[2J not the agent\n")
                    .await
                    .expect("junk call");
                guest_calls_ready(vsock, b"banger-agent-ready banger-agent 0.1.0\n")
                    .await
                    .expect("agent call");
            })
        };
        let v = vm(
            &f.core,
            Command::VmStart {
                vm: "caller".into(),
            },
        )
        .await;
        guest.await.expect("guest");
        assert_eq!(v.state, VmState::Running);
        assert!(
            !ready_socket_path(&vsock).exists(),
            "ready socket removed once ready"
        );
        run(
            &f.core,
            Command::VmKill {
                vm: "caller".into(),
            },
        )
        .await
        .expect("kill");
    }

    #[tokio::test]
    async fn a_ready_call_that_never_comes_fails_the_start_and_says_where_it_waited() {
        let f = fixture();
        *f.vmm.ready_calls.lock().expect("lock") = true;
        let id = create(&f, "silent").await;
        let vsock = f.core.vm_paths(&id).vsock;
        let junk = guest_calls_ready(vsock.clone(), b"hello\n");
        let err = run(
            &f.core,
            Command::VmStart {
                vm: "silent".into(),
            },
        )
        .await
        .expect_err("no agent call");
        junk.await.expect("junk call");
        let msg = err.to_string();
        assert!(msg.contains("did not report ready within 1s"), "{msg}");
        assert!(
            msg.contains(&format!("_{}", banger_agent_proto::READY_PORT)),
            "{msg}"
        );
        assert!(msg.contains("a ready call that said \"hello\""), "{msg}");
        assert!(msg.contains("host load"), "{msg}");
        assert_eq!(
            f.core.find_vm("silent").await.expect("find").state,
            VmState::Error
        );
        assert!(!ready_socket_path(&vsock).exists(), "no socket left behind");
        assert!(f.vmm.running.lock().expect("lock").is_empty(), "vmm killed");
    }

    #[tokio::test]
    async fn starts_beyond_the_boot_limit_wait_for_a_slot() {
        let f = fixture();
        let admission = f
            .core
            .boot_admission(&f.core.host_report().await.expect("host"));
        // Under TCG the default is one slot per CPU; hold them all.
        let limit = admission.limit().expect("a limit under TCG");
        let mut held = Vec::new();
        for _ in 0..limit {
            held.push(admission.acquire(&ProgressSink::discard()).await);
        }
        create(&f, "queued").await;
        let (sink, mut rx) = ProgressSink::channel();
        let core = Arc::clone(&f.core);
        let start = tokio::spawn(async move { core.start_vm("queued", &sink).await });
        // It queues behind the held slots without launching anything.
        loop {
            let p = rx.recv().await.expect("progress");
            if format!("{p:?}").contains("waiting for a boot slot (0 ahead") {
                break;
            }
        }
        assert!(
            !f.vmm.recorded().iter().any(|c| c.starts_with("launch")),
            "no launch while queued: {:?}",
            f.vmm.recorded()
        );
        drop(held);
        let v = start.await.expect("task").expect("start once admitted");
        assert_eq!(v.state, VmState::Running);
        assert_eq!(admission.load(), (0, 0), "the slot is released once ready");
    }

    #[tokio::test]
    async fn failed_launch_cleans_up_and_marks_error_with_the_reason() {
        let f = fixture();
        vm(
            &f.core,
            Command::VmCreate(CreateVmRequest {
                name: Some("bad".into()),
                ..Default::default()
            }),
        )
        .await;
        *f.vmm.fail_launch.lock().expect("lock") = Some("qemu: could not open tap".into());
        let err = run(&f.core, Command::VmStart { vm: "bad".into() })
            .await
            .expect_err("fails");
        assert!(err.to_string().contains("could not open tap"), "{err}");
        let v = f.core.find_vm("bad").await.expect("find");
        assert_eq!(v.state, VmState::Error);
        assert!(
            v.runtime
                .last_error
                .as_deref()
                .unwrap_or("")
                .contains("could not open tap")
        );
        assert!(!f.net.has(&tap_name(&v.id)), "tap removed by cleanup");
        assert!(v.runtime.teardown.is_empty());
        // Error allows a retry, which works once the cause is gone.
        *f.vmm.fail_launch.lock().expect("lock") = None;
        assert_eq!(
            vm(&f.core, Command::VmStart { vm: "bad".into() })
                .await
                .state,
            VmState::Running
        );
    }

    #[tokio::test]
    async fn cleanup_runs_every_step_and_joins_errors() {
        let f = fixture();
        let mut v = create_and_start(&f, "leaky").await;
        let tap = tap_name(&v.id);
        f.net.failing.lock().expect("lock").insert(tap.clone());
        let err = f
            .core
            .cleanup(&mut v, true)
            .await
            .expect_err("tap deletion fails");
        let CoreError::Cleanup(errors) = &err else {
            panic!("{err}")
        };
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains(&tap));
        // The other steps still ran.
        assert!(!f.core.vm_alive(&v));
        assert!(f.core.handles().get(&v.id).is_none());
        assert!(f.vmm.recorded().iter().any(|c| c.starts_with("kill")));
        // Idempotent: once the cause is fixed a second pass is clean.
        f.net.failing.lock().expect("lock").clear();
        f.core.cleanup(&mut v, true).await.expect("second cleanup");
        assert!(!f.net.has(&tap));
    }

    async fn set_nat(f: &Fixture, name: &str, on: bool) -> VmRecord {
        vm(
            &f.core,
            Command::VmSet {
                vm: name.into(),
                changes: banger_api::vm::SetVmRequest {
                    nat: Some(on),
                    ..Default::default()
                },
            },
        )
        .await
    }

    fn nat_calls(f: &Fixture) -> Vec<String> {
        f.firewall
            .recorded()
            .into_iter()
            .filter(|c| c.starts_with("add_nat"))
            .collect()
    }

    #[tokio::test]
    async fn nat_rules_live_exactly_as_long_as_the_vm_runs() {
        let f = fixture();
        vm(
            &f.core,
            Command::VmCreate(CreateVmRequest {
                name: Some("out".into()),
                nat: true,
                ..Default::default()
            }),
        )
        .await;
        let v = vm(&f.core, Command::VmStart { vm: "out".into() }).await;
        let tap = tap_name(&v.id);
        assert!(f.firewall.has(&tap));
        assert_eq!(nat_calls(&f), [format!("add_nat {tap} 10.99.0.2 via eth0")]);
        vm(&f.core, Command::VmStop { vm: "out".into() }).await;
        assert!(!f.firewall.has(&tap), "stop removes the rules");
        assert!(!*f.firewall.forwarding.lock().expect("lock"));
    }

    #[tokio::test]
    async fn set_nat_applies_live_and_is_a_noop_when_unchanged_or_not_alive() {
        let f = fixture();
        // Not running: only the spec changes; the host is not touched.
        vm(
            &f.core,
            Command::VmCreate(CreateVmRequest {
                name: Some("live".into()),
                ..Default::default()
            }),
        )
        .await;
        let v = set_nat(&f, "live", true).await;
        assert!(v.spec.nat);
        assert!(
            f.firewall.recorded().is_empty(),
            "{:?}",
            f.firewall.recorded()
        );
        set_nat(&f, "live", false).await;
        let v = vm(&f.core, Command::VmStart { vm: "live".into() }).await;
        let tap = tap_name(&v.id);
        assert!(!f.firewall.has(&tap));
        // Running: on, on again (no-op), off.
        set_nat(&f, "live", true).await;
        assert!(f.firewall.has(&tap));
        set_nat(&f, "live", true).await;
        assert_eq!(nat_calls(&f).len(), 1, "unchanged flag: no second add");
        let v = set_nat(&f, "live", false).await;
        assert!(!v.spec.nat);
        assert!(!f.firewall.has(&tap));
        // A VM whose VMM died is not alive: no-op, whatever the record says.
        set_nat(&f, "live", true).await;
        let pid = f
            .core
            .handles()
            .get(&v.id)
            .and_then(|h| h.pid)
            .expect("pid");
        f.vmm.crash(pid);
        let before = f.firewall.recorded().len();
        set_nat(&f, "live", false).await;
        assert_eq!(
            f.firewall.recorded().len(),
            before,
            "dead vm: host untouched"
        );
    }

    #[tokio::test]
    async fn nat_teardown_falls_back_to_the_runtime_tap_and_joins_errors() {
        let f = fixture();
        vm(
            &f.core,
            Command::VmCreate(CreateVmRequest {
                name: Some("lost".into()),
                nat: true,
                ..Default::default()
            }),
        )
        .await;
        let mut v = vm(&f.core, Command::VmStart { vm: "lost".into() }).await;
        let tap = tap_name(&v.id);
        // A restarted daemon with a corrupt handles.json: memory empty,
        // scratch unreadable; the runtime record's tap remains.
        let dir = PathBuf::from(v.runtime.vm_dir.clone().expect("dir"));
        f.core.handles().adopt(&v.id, VmHandles::default());
        let mirror = v.runtime.teardown.clone();
        f.core.handles().clear(&mut v);
        v.runtime.teardown = mirror;
        std::fs::write(scratch_path(&dir), b"{corrupt").expect("corrupt");
        // The tap's own deletion fails too: both errors come back.
        f.net.failing.lock().expect("lock").insert(tap.clone());
        *f.firewall.fail_remove.lock().expect("lock") = Some("nft exploded".into());
        let err = f
            .core
            .cleanup(&mut v, true)
            .await
            .expect_err("two failures");
        let CoreError::Cleanup(errors) = &err else {
            panic!("{err}")
        };
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors.iter().any(|e| e.contains("nft exploded")),
            "{errors:?}"
        );
        assert!(errors.iter().any(|e| e.contains(&tap)), "{errors:?}");
        assert!(
            f.firewall.recorded().contains(&format!("remove_nat {tap}")),
            "the runtime tap was used"
        );
        // Fixed: a second pass removes the rules.
        f.net.failing.lock().expect("lock").clear();
        *f.firewall.fail_remove.lock().expect("lock") = None;
        f.core.cleanup(&mut v, true).await.expect("clean");
        assert!(!f.firewall.has(&tap));
        // The record's tap wins over the derived name when they differ.
        v.runtime.teardown.tap = Some("bg-fromrecord".into());
        f.core.cleanup(&mut v, true).await.expect("clean");
        assert_eq!(
            f.firewall.recorded().last().map(String::as_str),
            Some("remove_nat bg-fromrecord")
        );
    }

    /// Which tap cleanup deletes when memory, the scratch file and the
    /// runtime mirror disagree or are missing: the first that knows.
    #[tokio::test]
    async fn cleanup_finds_the_tap_through_every_fallback() {
        let f = fixture();
        let mut v = create_and_start(&f, "fallback").await;
        let dir = PathBuf::from(v.runtime.vm_dir.clone().expect("dir"));
        let deleted = |f: &Fixture| -> Vec<String> {
            f.net
                .recorded()
                .into_iter()
                .filter_map(|c| c.strip_prefix("delete_link ").map(str::to_owned))
                .collect()
        };
        // 1. Memory lost, scratch file present: the scratch file's tap.
        f.core.handles().clear(&mut v);
        crate::handles::write_scratch(
            &dir,
            &VmHandles {
                tap: Some("bg-scratch".into()),
                ..VmHandles::default()
            },
        )
        .expect("scratch");
        v.runtime.teardown.tap = Some("bg-mirror".into());
        f.core.cleanup(&mut v, true).await.expect("cleanup");
        assert_eq!(deleted(&f).last().map(String::as_str), Some("bg-scratch"));
        // 2. Memory and scratch file lost: the runtime mirror's tap.
        v.runtime.teardown.tap = Some("bg-mirror".into());
        f.core.cleanup(&mut v, true).await.expect("cleanup");
        assert_eq!(deleted(&f).last().map(String::as_str), Some("bg-mirror"));
        // 3. Nothing recorded anywhere: the name derived from the VM id.
        f.core.cleanup(&mut v, true).await.expect("cleanup");
        assert_eq!(deleted(&f).last(), Some(&tap_name(&v.id)));
        // A corrupt scratch file is skipped, not fatal.
        std::fs::write(scratch_path(&dir), b"{nope").expect("corrupt");
        v.runtime.teardown.tap = Some("bg-mirror2".into());
        f.core
            .cleanup(&mut v, true)
            .await
            .expect("corrupt scratch is not a failure");
        assert_eq!(deleted(&f).last().map(String::as_str), Some("bg-mirror2"));
    }

    #[tokio::test]
    async fn reconcile_adopts_live_vms_and_tears_down_dead_ones() {
        let f = fixture();
        let alive = create_and_start(&f, "alive").await;
        let dead = create_and_start(&f, "dead").await;
        let corrupt = create_and_start(&f, "corrupt").await;
        // A daemon restart: memory is gone.
        for v in [&alive, &dead, &corrupt] {
            f.core.handles().adopt(&v.id, VmHandles::default());
        }
        let pid_of = |v: &VmRecord| {
            f.vmm
                .find(Path::new(v.runtime.api_socket.as_deref().expect("sock")))
                .expect("pid")
        };
        f.vmm.crash(pid_of(&dead));
        f.vmm.crash(pid_of(&corrupt));
        let corrupt_dir = PathBuf::from(corrupt.runtime.vm_dir.clone().expect("dir"));
        std::fs::write(scratch_path(&corrupt_dir), b"{garbage").expect("corrupt scratch");

        f.core.reconcile().await.expect("reconcile");

        let a = f.core.find_vm("alive").await.expect("alive");
        assert_eq!(a.state, VmState::Running);
        assert!(f.core.vm_alive(&a), "adopted with its pid");
        assert!(f.net.has(&tap_name(&a.id)));
        for name in ["dead", "corrupt"] {
            let d = f.core.find_vm(name).await.expect("vm");
            assert_eq!(d.state, VmState::Stopped, "{name}");
            assert!(
                d.runtime
                    .last_error
                    .as_deref()
                    .unwrap_or("")
                    .contains("restarted"),
                "{name}"
            );
            assert!(
                !f.net.has(&tap_name(&d.id)),
                "{name}: tap torn down (corrupt file: via the mirror)"
            );
            assert!(d.runtime.teardown.is_empty());
        }
    }

    #[tokio::test]
    async fn jails_are_recorded_before_launch_and_released_by_reconcile_and_delete() {
        let f = fixture();
        *f.vmm.jail_base.lock().expect("lock") = Some(PathBuf::from("/jails"));
        let kept = create_and_start(&f, "kept").await;
        let gone = create_and_start(&f, "gone").await;
        let releases = || -> Vec<String> {
            f.vmm
                .recorded()
                .into_iter()
                .filter(|c| c.starts_with("release"))
                .collect()
        };
        assert!(releases().is_empty(), "a started vm keeps its jail");
        // The jail root is on the record, in the scratch mirror too.
        let dir = PathBuf::from(gone.runtime.vm_dir.clone().expect("dir"));
        let mirror = std::fs::read_to_string(scratch_path(&dir)).expect("mirror");
        assert!(mirror.contains(&format!("/jails/{}", gone.id)), "{mirror}");
        // Daemon (and helper) die; one VMM dies with them.
        for v in [&kept, &gone] {
            f.core.handles().adopt(&v.id, VmHandles::default());
        }
        let sock = |v: &VmRecord| PathBuf::from(v.runtime.api_socket.clone().expect("sock"));
        f.vmm.crash(f.vmm.find(&sock(&gone)).expect("pid"));
        f.core.reconcile().await.expect("reconcile");
        assert_eq!(
            releases(),
            [format!("release {} /jails/{}", gone.id, gone.id)],
            "the dead vm's jail goes, the live one's stays"
        );
        let k = f.core.find_vm("kept").await.expect("kept");
        assert_eq!(k.state, VmState::Running);
        vm(&f.core, Command::VmKill { vm: "kept".into() }).await;
        vm(&f.core, Command::VmDelete { vm: "kept".into() }).await;
        assert_eq!(
            releases().last().map(String::as_str),
            Some(format!("release {} /jails/{}", kept.id, kept.id).as_str())
        );
    }

    #[tokio::test]
    async fn concurrent_starts_get_distinct_addresses_and_delete_releases_everything() {
        let f = fixture();
        let mut tasks = Vec::new();
        for i in 0..10 {
            let core = Arc::clone(&f.core);
            tasks.push(tokio::spawn(async move {
                let name = format!("vm{i}");
                core.execute(
                    Command::VmCreate(CreateVmRequest {
                        name: Some(name.clone()),
                        ..Default::default()
                    }),
                    &ProgressSink::discard(),
                )
                .await
                .expect("create");
                match core
                    .execute(Command::VmStart { vm: name }, &ProgressSink::discard())
                    .await
                    .expect("start")
                {
                    Reply::Vm(v) => v,
                    other => panic!("{other:?}"),
                }
            }));
        }
        let mut ips = Vec::new();
        for t in tasks {
            ips.push(t.await.expect("task").runtime.guest_ip.expect("ip"));
        }
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 10, "no address handed out twice");
        // A /28 has 13 usable guest addresses: the 14th VM is refused clearly.
        for i in 10..13 {
            create_and_start(&f, &format!("vm{i}")).await;
        }
        vm(
            &f.core,
            Command::VmCreate(CreateVmRequest {
                name: Some("full".into()),
                ..Default::default()
            }),
        )
        .await;
        let err = run(&f.core, Command::VmStart { vm: "full".into() })
            .await
            .expect_err("exhausted");
        assert!(err.to_string().contains("no free address"), "{err}");

        let v = f.core.find_vm("vm3").await.expect("vm3");
        let dir = PathBuf::from(v.runtime.vm_dir.clone().expect("dir"));
        let err = run(&f.core, Command::VmDelete { vm: "vm3".into() })
            .await
            .expect_err("running");
        assert!(err.to_string().contains("stop it first"));
        vm(&f.core, Command::VmKill { vm: "vm3".into() }).await;
        vm(&f.core, Command::VmDelete { vm: "vm3".into() }).await;
        assert!(!dir.exists());
        // Its address is free again.
        let again = vm(&f.core, Command::VmStart { vm: "full".into() }).await;
        assert_eq!(again.runtime.guest_ip, v.runtime.guest_ip);
    }
}
