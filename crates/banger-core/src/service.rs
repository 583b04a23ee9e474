//! [`Core`]: executes [`Command`]s.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use banger_api::asset::{ImageRecord, KernelRecord};
use banger_api::daemon::DaemonStatus;
use banger_api::doctor::{CheckId, DoctorReport};
use banger_api::name::validate_name;
use banger_api::size::format_size;
use banger_api::vm::{
    CreateVmRequest, SetVmRequest, VmRecord, VmRuntime, VmSpec, VmState, VmmKind,
};
use banger_config::Config;
use banger_host::disk::DiskOps;
use banger_host::dns::Dns;
use banger_host::firewall::Firewall;
use banger_host::net::NetOps;
use banger_host::{DoctorInputs, HostProbe, run_doctor};
use banger_store::{Store, StoreError};
use banger_vmm::Vmm;
use chrono::Utc;
use rand::Rng;
use tokio::sync::watch;

use crate::agent::AgentConnector;
use crate::command::{Command, Reply};
use crate::error::CoreError;
use crate::handles::HandleCache;
use crate::lifecycle::{VmAction, check_action};
use crate::locks::KeyedLocks;
use crate::names;
use crate::progress::ProgressSink;

/// Bounds on what a VM may ask for. Generous, but they turn typos such as
/// `--memory 10000000` into a clear error instead of a failed boot.
pub const MAX_VCPUS: u32 = 64;
pub const MIN_MEMORY_MIB: u32 = 128;
pub const MAX_MEMORY_MIB: u32 = 1 << 20;
pub const MIN_DISK_BYTES: u64 = 64 << 20;
pub const MAX_DISK_BYTES: u64 = 16 << 40;

/// The host side effects the core drives, real or fake.
#[derive(Debug, Clone)]
pub struct HostDeps {
    pub probe: Arc<dyn HostProbe>,
    pub net: Arc<dyn NetOps>,
    pub disks: Arc<dyn DiskOps>,
    pub dns: Arc<dyn Dns>,
    pub qemu: Arc<dyn Vmm>,
    pub firecracker: Option<Arc<dyn Vmm>>,
    pub agent: Arc<dyn AgentConnector>,
    pub firewall: Arc<dyn Firewall>,
}

/// The daemon core. Shared by every request handler.
#[derive(Debug)]
pub struct Core {
    config: Config,
    store: Arc<Store>,
    pub(crate) deps: HostDeps,
    pub(crate) host: RwLock<Option<DoctorReport>>,
    pub(crate) vm_locks: KeyedLocks,
    pub(crate) ip_lock: tokio::sync::Mutex<()>,
    pub(crate) ssh_key_lock: tokio::sync::Mutex<()>,
    pub(crate) stop_timeout: std::time::Duration,
    /// Asset files whose digest matched, by path, size, mtime and digest.
    pub(crate) verified: std::sync::Mutex<std::collections::HashSet<String>>,
    pub(crate) asset_locks: KeyedLocks,
    /// Guest boots in flight; sized from the host on first use.
    pub(crate) boots: std::sync::OnceLock<crate::admission::Admission>,
    handles: HandleCache,
    started_at: chrono::DateTime<Utc>,
    pid: u32,
    shutdown: watch::Sender<bool>,
}

impl Core {
    pub fn new(config: Config, store: Arc<Store>, deps: HostDeps) -> Self {
        Self {
            config,
            store,
            deps,
            host: RwLock::new(None),
            vm_locks: KeyedLocks::new(),
            ip_lock: tokio::sync::Mutex::new(()),
            ssh_key_lock: tokio::sync::Mutex::new(()),
            stop_timeout: crate::runtime::GRACEFUL_STOP,
            verified: std::sync::Mutex::default(),
            asset_locks: KeyedLocks::new(),
            boots: std::sync::OnceLock::new(),
            handles: HandleCache::new(),
            started_at: Utc::now(),
            pid: std::process::id(),
            shutdown: watch::channel(false).0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn handles(&self) -> &HandleCache {
        &self.handles
    }

    /// Resolves when a shutdown was requested through the API.
    pub fn shutdown_requested(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Probes the host again and caches the report for VMM/storage choices.
    pub async fn refresh_host(&self) -> Result<DoctorReport, CoreError> {
        let probe = Arc::clone(&self.deps.probe);
        let inputs = DoctorInputs {
            helper_socket: self.config.helper_socket.clone(),
            euid: nix::unistd::geteuid().as_raw(),
            jailer_enabled: self.config.jailer.enabled,
            chroot_base: self.config.jailer.chroot_base.clone(),
            vsock_backend: self.config.vmm.vsock_backend.clone(),
            guest_agent: self.config.guest.agent.clone(),
            firecracker: self.config.vmm.firecracker.clone(),
            jailer: self.config.vmm.jailer.clone(),
            qemu: self.config.vmm.qemu.clone(),
            state_dir: self.config.state_dir.clone(),
        };
        let report = tokio::task::spawn_blocking(move || run_doctor(probe.as_ref(), &inputs))
            .await
            .map_err(|e| CoreError::Internal(format!("doctor task: {e}")))?;
        *self.host.write().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        Ok(report)
    }

    pub(crate) async fn host_report(&self) -> Result<DoctorReport, CoreError> {
        let cached = self.host.read().unwrap_or_else(|p| p.into_inner()).clone();
        match cached {
            Some(r) => Ok(r),
            None => self.refresh_host().await,
        }
    }

    /// Runs a store operation off the async threads.
    pub(crate) async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, CoreError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| CoreError::Internal(format!("database task: {e}")))?
            .map_err(CoreError::from)
    }

    pub(crate) async fn find_vm(&self, vm: &str) -> Result<VmRecord, CoreError> {
        let key = vm.to_owned();
        self.db(move |s| s.find_vm(&key))
            .await?
            .ok_or_else(|| CoreError::VmNotFound(vm.to_owned()))
    }

    /// Executes one command.
    pub async fn execute(&self, cmd: Command, progress: &ProgressSink) -> Result<Reply, CoreError> {
        if *self.shutdown.borrow() && !matches!(cmd, Command::DaemonStatus) {
            return Err(CoreError::ShuttingDown);
        }
        match cmd {
            Command::DaemonStatus => self.status().await.map(Reply::Status),
            Command::Shutdown => {
                tracing::info!("shutdown requested over the API");
                self.shutdown.send_replace(true);
                Ok(Reply::ShuttingDown)
            }
            Command::Doctor => self.refresh_host().await.map(Reply::Doctor),
            Command::VmList => self.db(Store::list_vms).await.map(Reply::Vms),
            Command::VmShow { vm } => self.find_vm(&vm).await.map(Reply::Vm),
            Command::VmCreate(req) => self.create_vm(req, progress).await.map(Reply::Vm),
            Command::VmSet { vm, changes } => self.set_vm(&vm, changes).await.map(Reply::Vm),
            Command::VmDelete { vm } => self.delete_vm(&vm).await.map(Reply::Deleted),
            Command::VmStart { vm } => self.start_vm(&vm, progress).await.map(Reply::Vm),
            Command::VmStop { vm } => self.stop_vm(&vm, true).await.map(Reply::Vm),
            Command::VmKill { vm } => self.stop_vm(&vm, false).await.map(Reply::Vm),
            Command::VmLogs { vm } => self.vm_logs(&vm).await.map(Reply::Logs),
            Command::VmAttach { vm, request } => {
                self.attach(&vm, request).await.map(Reply::Attached)
            }
            Command::VmSsh { vm } => self.ssh_info(&vm).await.map(Reply::Ssh),
            Command::KernelList => self.list_assets().await.map(Reply::Kernels),
            Command::KernelShow { name, verify } => {
                let k: KernelRecord = self.find_asset(&name).await?;
                if verify {
                    self.verify_kernel(&k).await?;
                }
                Ok(Reply::Kernel(k))
            }
            Command::KernelImport(req) => {
                self.kernel_import(req, progress).await.map(Reply::Kernel)
            }
            Command::KernelAdd(req) => self.kernel_add(req, progress).await.map(Reply::Kernel),
            Command::KernelRm { name, force } => {
                self.asset_rm(&name, force).await.map(Reply::Kernel)
            }
            Command::ImageList => self.list_assets().await.map(Reply::Images),
            Command::ImageShow { name, verify } => {
                let i: ImageRecord = self.find_asset(&name).await?;
                if verify {
                    self.verify_image(&i).await?;
                }
                Ok(Reply::Image(i))
            }
            Command::ImageBuild(req) => self.image_build(req, progress).await.map(Reply::Image),
            Command::ImageImport(req) => self.image_import(req, progress).await.map(Reply::Image),
            Command::ImageRm { name, force } => self.asset_rm(&name, force).await.map(Reply::Image),
        }
    }

    async fn status(&self) -> Result<DaemonStatus, CoreError> {
        let vm_count = self.db(Store::count_vms).await?;
        Ok(DaemonStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: self.pid,
            started_at: self.started_at,
            state_dir: self.config.state_dir.display().to_string(),
            runtime_dir: self.config.runtime_dir.display().to_string(),
            socket: self.config.socket.display().to_string(),
            log_file: self.config.log_path().display().to_string(),
            vm_count,
        })
    }

    async fn create_vm(
        &self,
        req: CreateVmRequest,
        progress: &ProgressSink,
    ) -> Result<VmRecord, CoreError> {
        progress.stage("validate", "checking the request");
        let d = &self.config.defaults;
        let vcpus = check_vcpus(req.vcpus.unwrap_or(d.vcpus))?;
        let memory_mib = check_memory(req.memory_mib.unwrap_or(d.memory_mib))?;
        let root_disk_bytes = check_disk(
            "root disk",
            req.root_disk_bytes.unwrap_or(d.root_disk_bytes),
        )?;
        let work_disk_bytes = check_disk(
            "work disk",
            req.work_disk_bytes.unwrap_or(d.work_disk_bytes),
        )?;
        let image = asset_name("image", req.image)?;
        let kernel = asset_name("kernel", req.kernel)?;
        if let Some(name) = &req.name {
            validate_name(name).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        }
        let vmm = self.choose_vmm(req.vmm).await?;
        self.ensure_assets(&kernel, &image, progress).await?;

        let now = Utc::now();
        let mut vm = VmRecord {
            id: new_vm_id(),
            name: String::new(),
            state: VmState::Created,
            spec: VmSpec {
                vcpus,
                memory_mib,
                root_disk_bytes,
                work_disk_bytes,
                image,
                kernel,
                nat: req.nat,
                vmm,
            },
            runtime: VmRuntime::default(),
            created_at: now,
            updated_at: now,
        };
        progress.stage("persist", "recording the vm");
        // A user-given name that clashes is the user's error. A generated
        // one can lose a race with a concurrent create: pick another.
        for _ in 0..8 {
            vm.name = match &req.name {
                Some(n) => n.clone(),
                None => {
                    self.db(|s| names::generate_unique(&mut rand::rng(), |n| s.vm_name_exists(n)))
                        .await?
                }
            };
            let rec = vm.clone();
            match self.db(move |s| s.insert_vm(&rec)).await {
                Err(CoreError::NameTaken(_)) if req.name.is_none() => continue,
                Err(e) => return Err(e),
                Ok(()) => {
                    tracing::info!(vm_id = %vm.id, name = %vm.name, vmm = %vm.spec.vmm, "vm created");
                    return Ok(vm);
                }
            }
        }
        Err(CoreError::Internal(
            "could not find a free generated name".into(),
        ))
    }

    async fn choose_vmm(&self, requested: Option<VmmKind>) -> Result<VmmKind, CoreError> {
        let host = self.host_report().await?;
        match requested {
            None => host.default_vmm.map(|c| c.vmm).ok_or_else(|| {
                CoreError::Unavailable(
                    "no usable VMM on this host: install QEMU (apt-get install qemu-system-x86) or Firecracker; `banger doctor` shows what is missing".into(),
                )
            }),
            Some(kind) => {
                let id = match kind {
                    VmmKind::Firecracker => CheckId::Firecracker,
                    VmmKind::Qemu => CheckId::Qemu,
                };
                if kind == VmmKind::Firecracker && !host.is_ok(CheckId::HardwareKvm) {
                    // Firecracker has no software fallback: without VT-x/AMD-V
                    // its guests crawl and then die in early boot.
                    Err(CoreError::Unavailable(
                        "--vmm firecracker needs hardware KVM, which this host lacks (`banger doctor`: hardware_kvm); use --vmm qemu, which falls back to TCG".into(),
                    ))
                } else if host.is_ok(id) {
                    Ok(kind)
                } else {
                    let detail = host.check(id).map(|c| c.detail.clone()).unwrap_or_default();
                    Err(CoreError::Unavailable(format!(
                        "--vmm {kind} is not usable here ({detail}); `banger doctor` says how to fix it"
                    )))
                }
            }
        }
    }

    async fn set_vm(&self, vm: &str, changes: SetVmRequest) -> Result<VmRecord, CoreError> {
        if changes.is_empty() {
            return Err(CoreError::InvalidArgument(
                "nothing to change: pass --vcpus, --memory, --work-disk or --nat".into(),
            ));
        }
        let found = self.find_vm(vm).await?;
        let _lock = self.vm_locks.lock(&found.id).await;
        // Re-read under the lock: the VM may have changed while we waited.
        let mut rec = self.find_vm(&found.id).await?;
        let before = rec.spec.clone();
        let reconfigure = changes.vcpus.is_some()
            || changes.memory_mib.is_some()
            || changes.work_disk_bytes.is_some();
        if reconfigure {
            check_action(&rec.name, rec.state, VmAction::Reconfigure)?;
        }
        if changes.nat.is_some() {
            check_action(&rec.name, rec.state, VmAction::SetCapability)?;
        }
        if let Some(v) = changes.vcpus {
            rec.spec.vcpus = check_vcpus(v)?;
        }
        if let Some(m) = changes.memory_mib {
            rec.spec.memory_mib = check_memory(m)?;
        }
        if let Some(w) = changes.work_disk_bytes {
            let w = check_disk("work disk", w)?;
            if w < rec.spec.work_disk_bytes {
                return Err(CoreError::InvalidArgument(format!(
                    "work disk of {:?} is {}; it can grow but not shrink (asked for {})",
                    rec.name,
                    format_size(rec.spec.work_disk_bytes),
                    format_size(w)
                )));
            }
            rec.spec.work_disk_bytes = w;
        }
        if let Some(nat) = changes.nat {
            rec.spec.nat = nat;
        }
        // Capabilities change live on a running VM (and only then: a VM
        // that is down gets them at its next start). Applied before the
        // spec is stored, so a failure changes nothing.
        if rec.state == VmState::Running && self.vm_alive(&rec) {
            let tap = self.vm_tap(&rec);
            for cap in crate::capability::all() {
                cap.apply_change(self, &before, &rec, &tap).await?;
            }
        }
        rec.updated_at = Utc::now();
        let to_store = rec.clone();
        self.db(move |s| s.update_vm(&to_store)).await?;
        tracing::info!(vm_id = %rec.id, name = %rec.name, "vm spec updated");
        Ok(rec)
    }

    async fn delete_vm(&self, vm: &str) -> Result<VmRecord, CoreError> {
        let found = self.find_vm(vm).await?;
        let _lock = self.vm_locks.lock(&found.id).await;
        let mut rec = self.find_vm(&found.id).await?;
        check_action(&rec.name, rec.state, VmAction::Delete)?;
        if rec.runtime.vm_dir.is_some() {
            // Everything the VM ever held: disks, tap, sockets, address.
            self.cleanup(&mut rec, false).await?;
        }
        let id = rec.id.clone();
        self.db(move |s| s.delete_vm(&id)).await?;
        self.rebuild_dns().await;
        tracing::info!(vm_id = %rec.id, name = %rec.name, "vm deleted");
        Ok(rec)
    }

    /// The directory a VM's files live in.
    pub fn vm_dir(&self, vm_id: &str) -> PathBuf {
        self.config.state_dir.join("vms").join(vm_id)
    }

    /// Removes a VM directory, refusing any path outside `<state>/vms`: a
    /// corrupted record must never make the daemon delete arbitrary trees.
    pub(crate) fn remove_vm_dir(&self, dir: &Path) -> Result<(), CoreError> {
        let root = self.config.state_dir.join("vms");
        let inside = dir.parent() == Some(root.as_path())
            && dir.file_name().is_some_and(|n| n != "." && n != "..");
        if !inside {
            return Err(CoreError::Internal(format!(
                "refusing to remove {}: not a vm directory under {}",
                dir.display(),
                root.display()
            )));
        }
        match std::fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CoreError::Internal(format!(
                "removing {}: {e}",
                dir.display()
            ))),
        }
    }
}

/// 16 hex digits: short enough to derive tap (`bg-` + 8) and dm names from,
/// long enough never to collide on one host.
pub fn new_vm_id() -> String {
    format!("{:016x}", rand::rng().random::<u64>())
}

fn check_vcpus(v: u32) -> Result<u32, CoreError> {
    if (1..=MAX_VCPUS).contains(&v) {
        Ok(v)
    } else {
        Err(CoreError::InvalidArgument(format!(
            "vcpus must be between 1 and {MAX_VCPUS}, got {v}"
        )))
    }
}

fn check_memory(m: u32) -> Result<u32, CoreError> {
    if (MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&m) {
        Ok(m)
    } else {
        Err(CoreError::InvalidArgument(format!(
            "memory must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB, got {m} MiB"
        )))
    }
}

fn check_disk(what: &str, b: u64) -> Result<u64, CoreError> {
    if (MIN_DISK_BYTES..=MAX_DISK_BYTES).contains(&b) {
        Ok(b)
    } else {
        Err(CoreError::InvalidArgument(format!(
            "{what} size must be between {} and {}, got {}",
            format_size(MIN_DISK_BYTES),
            format_size(MAX_DISK_BYTES),
            format_size(b)
        )))
    }
}

fn asset_name(kind: &str, name: Option<String>) -> Result<String, CoreError> {
    let name = name.unwrap_or_else(|| "default".into());
    validate_name(&name).map_err(|e| CoreError::InvalidArgument(format!("{kind} name: {e}")))?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use banger_api::doctor::{Accel, Check, CheckStatus, StorageStrategy, VmmChoice};

    use super::*;
    use crate::lifecycle::LifecycleError;

    fn core_with(state_dir: &Path) -> Core {
        let cfg = Config::load_with(|k| match k {
            "BANGER_CONFIG" => Some("/dev/null".into()),
            "BANGER_STATE_DIR" => Some(state_dir.display().to_string()),
            "BANGER_AUTO_PROVISION" => Some("false".into()),
            _ => None,
        })
        .expect("config");
        let store = Arc::new(Store::open_in_memory().expect("store"));
        crate::testing::seed_default_assets(&store);
        let core = Core::new(cfg, store, crate::testing::fake_deps().deps);
        // A host with QEMU/TCG and nothing else, without running probes.
        *core.host.write().expect("lock") = Some(DoctorReport {
            checks: vec![Check {
                id: CheckId::Qemu,
                status: CheckStatus::Ok,
                detail: "QEMU emulator version 7.2".into(),
                hint: None,
            }],
            default_vmm: Some(VmmChoice {
                vmm: VmmKind::Qemu,
                accel: Accel::Tcg,
            }),
            storage: StorageStrategy::SparseCopy,
        });
        core
    }

    async fn run(core: &Core, cmd: Command) -> Result<Reply, CoreError> {
        core.execute(cmd, &ProgressSink::discard()).await
    }

    async fn create(core: &Core, name: Option<&str>) -> VmRecord {
        let req = CreateVmRequest {
            name: name.map(str::to_owned),
            ..CreateVmRequest::default()
        };
        match run(core, Command::VmCreate(req)).await.expect("create") {
            Reply::Vm(v) => v,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    async fn force_state(core: &Core, name: &str, state: VmState) {
        let mut vm = core.find_vm(name).await.expect("find");
        vm.state = state;
        core.store.update_vm(&vm).expect("update");
    }

    #[tokio::test]
    async fn create_applies_defaults_and_host_vmm_and_streams_stages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core_with(dir.path());
        let (sink, mut rx) = ProgressSink::channel();
        let reply = core
            .execute(Command::VmCreate(CreateVmRequest::default()), &sink)
            .await
            .expect("create");
        let Reply::Vm(vm) = reply else {
            panic!("reply")
        };
        assert_eq!(vm.state, VmState::Created);
        assert_eq!(vm.spec.vmm, VmmKind::Qemu);
        assert_eq!(vm.spec.vcpus, 2);
        assert_eq!(vm.spec.image, "default");
        assert_eq!(validate_name(&vm.name), Ok(()));
        assert_eq!(vm.id.len(), 16);
        let mut stages = Vec::new();
        while let Ok(p) = rx.try_recv() {
            stages.push(p.stage);
        }
        assert_eq!(stages, ["validate", "persist"]);

        // A named asset that does not exist is a clear error, not a build.
        let err = run(
            &core,
            Command::VmCreate(CreateVmRequest {
                image: Some("missing".into()),
                ..Default::default()
            }),
        )
        .await
        .expect_err("no such image");
        assert!(
            err.to_string().contains("banger image build missing"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn bad_input_is_rejected_and_loses_no_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core_with(dir.path());
        create(&core, Some("keep")).await;
        let bad = [
            CreateVmRequest {
                name: Some("Bad_Name".into()),
                ..Default::default()
            },
            CreateVmRequest {
                vcpus: Some(0),
                ..Default::default()
            },
            CreateVmRequest {
                memory_mib: Some(64),
                ..Default::default()
            },
            CreateVmRequest {
                root_disk_bytes: Some(1),
                ..Default::default()
            },
            CreateVmRequest {
                image: Some("../etc".into()),
                ..Default::default()
            },
        ];
        for req in bad {
            let err = run(&core, Command::VmCreate(req.clone()))
                .await
                .expect_err("invalid");
            assert!(
                matches!(err, CoreError::InvalidArgument(_)),
                "{req:?}: {err}"
            );
        }
        let err = run(
            &core,
            Command::VmCreate(CreateVmRequest {
                vmm: Some(VmmKind::Firecracker),
                ..Default::default()
            }),
        )
        .await
        .expect_err("no firecracker");
        assert!(matches!(err, CoreError::Unavailable(_)), "{err}");
        let err = run(
            &core,
            Command::VmCreate(CreateVmRequest {
                name: Some("keep".into()),
                ..Default::default()
            }),
        )
        .await
        .expect_err("clash");
        assert!(
            matches!(err, CoreError::NameTaken(ref n) if n == "keep"),
            "{err}"
        );
        let Reply::Vms(all) = run(&core, Command::VmList).await.expect("list") else {
            panic!()
        };
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].name, "keep");
    }

    #[tokio::test]
    async fn delete_of_running_vm_is_refused_and_stopped_vm_is_removed_with_its_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core_with(dir.path());
        let vm = create(&core, Some("runner")).await;
        force_state(&core, "runner", VmState::Running).await;
        let err = run(
            &core,
            Command::VmDelete {
                vm: "runner".into(),
            },
        )
        .await
        .expect_err("refused");
        assert!(
            matches!(
                err,
                CoreError::Lifecycle(LifecycleError::ActionRefused { .. })
            ),
            "{err}"
        );

        // Give it a directory, stop it, delete it by id.
        let vm_dir = core.vm_dir(&vm.id);
        std::fs::create_dir_all(&vm_dir).expect("mkdir");
        std::fs::write(vm_dir.join("console.log"), b"x").expect("file");
        let mut rec = core.find_vm("runner").await.expect("find");
        rec.state = VmState::Stopped;
        rec.runtime.vm_dir = Some(vm_dir.display().to_string());
        core.store.update_vm(&rec).expect("update");
        run(&core, Command::VmDelete { vm: vm.id.clone() })
            .await
            .expect("delete");
        assert!(!vm_dir.exists());
        let err = run(
            &core,
            Command::VmShow {
                vm: "runner".into(),
            },
        )
        .await
        .expect_err("gone");
        assert!(matches!(err, CoreError::VmNotFound(_)));
    }

    #[tokio::test]
    async fn delete_never_removes_a_dir_outside_the_state_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("outside");
        let core = core_with(dir.path());
        create(&core, Some("evil")).await;
        let mut rec = core.find_vm("evil").await.expect("find");
        rec.runtime.vm_dir = Some(outside.path().display().to_string());
        core.store.update_vm(&rec).expect("update");
        let err = run(&core, Command::VmDelete { vm: "evil".into() })
            .await
            .expect_err("refuse");
        assert!(err.to_string().contains("refusing"), "{err}");
        assert!(outside.path().exists());
        assert!(
            core.find_vm("evil").await.is_ok(),
            "row kept when delete fails"
        );
    }

    #[tokio::test]
    async fn set_checks_state_and_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core_with(dir.path());
        create(&core, Some("cfg")).await;
        let set = |changes| Command::VmSet {
            vm: "cfg".into(),
            changes,
        };

        let err = run(&core, set(SetVmRequest::default()))
            .await
            .expect_err("empty");
        assert!(matches!(err, CoreError::InvalidArgument(_)));

        let Reply::Vm(v) = run(
            &core,
            set(SetVmRequest {
                vcpus: Some(4),
                nat: Some(true),
                ..Default::default()
            }),
        )
        .await
        .expect("set") else {
            panic!()
        };
        assert_eq!((v.spec.vcpus, v.spec.nat), (4, true));

        let err = run(
            &core,
            set(SetVmRequest {
                work_disk_bytes: Some(1 << 30),
                ..Default::default()
            }),
        )
        .await
        .expect_err("shrink");
        assert!(err.to_string().contains("not shrink"), "{err}");

        force_state(&core, "cfg", VmState::Running).await;
        let err = run(
            &core,
            set(SetVmRequest {
                memory_mib: Some(2048),
                ..Default::default()
            }),
        )
        .await
        .expect_err("running");
        assert!(matches!(err, CoreError::Lifecycle(_)), "{err}");
        // Capabilities may change on a running VM.
        run(
            &core,
            set(SetVmRequest {
                nat: Some(false),
                ..Default::default()
            }),
        )
        .await
        .expect("nat on running vm");
        let v = core.find_vm("cfg").await.expect("find");
        assert_eq!(
            (v.spec.vcpus, v.spec.memory_mib, v.spec.nat),
            (4, 1024, false)
        );
    }

    #[tokio::test]
    async fn shutdown_refuses_further_commands_but_answers_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core_with(dir.path());
        let mut rx = core.shutdown_requested();
        run(&core, Command::Shutdown).await.expect("shutdown");
        assert!(*rx.borrow_and_update());
        assert!(matches!(
            run(&core, Command::VmList).await,
            Err(CoreError::ShuttingDown)
        ));
        assert!(matches!(
            run(&core, Command::DaemonStatus).await,
            Ok(Reply::Status(_))
        ));
    }

    #[tokio::test]
    async fn concurrent_generated_creates_get_distinct_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = Arc::new(core_with(dir.path()));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let core = Arc::clone(&core);
            tasks.push(tokio::spawn(async move { create(&core, None).await.name }));
        }
        let mut names = Vec::new();
        for t in tasks {
            names.push(t.await.expect("task"));
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 20);
    }
}
