//! [`Core`]: the state every room shares, and [`Core::execute`], which
//! dispatches each [`Command`] to its room (`vm/`, `assets/`). The rooms
//! reach this state only through the accessors below.

use banger_api::snapshot::SnapshotKind;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use banger_api::asset::{ImageRecord, KernelRecord};
use banger_api::daemon::DaemonStatus;
use banger_api::doctor::{DiskArea, DiskReport, DoctorReport};
use banger_api::vm::VmRecord;
use banger_config::Config;
use banger_host::disk::DiskOps;
use banger_host::dns::Dns;
use banger_host::doctor::{DiskInputs, measure_disk};
use banger_host::firewall::Firewall;
use banger_host::layout::VmLayout;
use banger_host::net::NetOps;
use banger_host::{DoctorInputs, HostProbe, run_doctor};
use banger_store::{Store, StoreError};
use banger_vmm::Vmm;
use chrono::Utc;
use tokio::sync::watch;

use crate::admission::Admission;
use crate::agent::AgentConnector;
use crate::capability::CapContext;
use crate::command::{Command, Reply};
use crate::error::{CoreError, InternalError};
use crate::handles::HandleCache;
use crate::locks::KeyedLocks;
use crate::progress::ProgressSink;
use crate::ssh_keys::SshKeys;

/// How long a graceful stop waits before killing.
pub const GRACEFUL_STOP: Duration = Duration::from_secs(10);

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
    /// The process table (the start-up sweep's tools left running).
    pub procs: Arc<dyn banger_host::procs::Processes>,
}

/// The daemon core. Shared by every request handler.
#[derive(Debug)]
pub struct Core {
    config: Config,
    layout: VmLayout,
    store: Arc<Store>,
    deps: HostDeps,
    host: RwLock<Option<DoctorReport>>,
    vm_locks: KeyedLocks,
    /// Serialises address allocation and bridge creation.
    net_lock: tokio::sync::Mutex<()>,
    ssh_keys: SshKeys,
    stop_timeout: Duration,
    /// Asset files whose digest matched, by path, size, mtime and digest.
    verified: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The agent binary's digest, with the size and mtime it was read at.
    agent_digest: AgentDigestMemo,
    asset_locks: KeyedLocks,
    /// Guest boots in flight; sized from the host on first use.
    boots: OnceLock<Admission>,
    handles: HandleCache,
    started_at: chrono::DateTime<Utc>,
    pid: u32,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Operations in flight that a later request may join.
    pub(crate) operations: crate::inflight::Operations,
    /// Client leases held now (by id), and the VMs made under each.
    pub(crate) leases:
        std::sync::Mutex<std::collections::HashMap<String, Vec<banger_api::vm::VmId>>>,
}

pub(crate) type AgentDigestMemo =
    Arc<std::sync::Mutex<Option<(banger_assets::files::FileStamp, String)>>>;

impl Core {
    pub fn new(config: Config, store: Arc<Store>, deps: HostDeps) -> Self {
        Self {
            layout: VmLayout::new(&config.state_dir, &config.runtime_dir),
            ssh_keys: SshKeys::new(
                config.state_dir.join("ssh"),
                config.tools.ssh_keygen.clone(),
            ),
            config,
            store,
            deps,
            host: RwLock::new(None),
            vm_locks: KeyedLocks::new(),
            net_lock: tokio::sync::Mutex::new(()),
            stop_timeout: GRACEFUL_STOP,
            verified: std::sync::Mutex::default(),
            agent_digest: AgentDigestMemo::default(),
            asset_locks: KeyedLocks::new(),
            boots: OnceLock::new(),
            handles: HandleCache::new(),
            started_at: Utc::now(),
            pid: std::process::id(),
            shutdown: watch::channel(false).0,
            operations: crate::inflight::Operations::default(),
            leases: std::sync::Mutex::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn handles(&self) -> &HandleCache {
        &self.handles
    }

    /// Where each VM's files live.
    pub fn layout(&self) -> &VmLayout {
        &self.layout
    }

    pub(crate) fn deps(&self) -> &HostDeps {
        &self.deps
    }

    pub(crate) fn vm_locks(&self) -> &KeyedLocks {
        &self.vm_locks
    }

    pub(crate) fn asset_locks(&self) -> &KeyedLocks {
        &self.asset_locks
    }

    pub(crate) fn net_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.net_lock
    }

    pub(crate) fn ssh_keys(&self) -> &SshKeys {
        &self.ssh_keys
    }

    pub(crate) fn stop_timeout(&self) -> Duration {
        self.stop_timeout
    }

    pub(crate) fn agent_digest_memo(&self) -> &AgentDigestMemo {
        &self.agent_digest
    }

    pub(crate) fn verified(&self) -> &std::sync::Mutex<std::collections::HashSet<String>> {
        &self.verified
    }

    pub(crate) fn boots(&self) -> &OnceLock<Admission> {
        &self.boots
    }

    /// What capability hooks may use.
    pub(crate) fn cap_context(&self) -> CapContext<'_> {
        CapContext {
            firewall: self.deps.firewall.as_ref(),
            network: &self.config.network,
        }
    }

    /// Tests shorten the graceful stop and fix the host report.
    #[cfg(test)]
    pub(crate) fn for_tests(mut self, stop_timeout: Duration, host: DoctorReport) -> Self {
        self.stop_timeout = stop_timeout;
        *self.host.write().unwrap_or_else(|p| p.into_inner()) = Some(host);
        self
    }

    /// A new daemon over the same store and host (a restart, for the
    /// crash tests): nothing of this one's memory, its settings alike.
    #[cfg(all(test, feature = "failpoints"))]
    pub(crate) fn restarted(&self) -> Self {
        let host = self.host.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut next = Self::new(
            self.config.clone(),
            Arc::clone(&self.store),
            self.deps.clone(),
        );
        next.stop_timeout = self.stop_timeout;
        *next.host.write().unwrap_or_else(|p| p.into_inner()) = host;
        next
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
            .map_err(|source| InternalError::Task {
                what: "doctor",
                source,
            })?;
        *self.host.write().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        Ok(report)
    }

    /// `banger doctor`: the capability report, refreshing the cached one,
    /// and what banger's files take on disk. Only the answer has the disk
    /// section: VM creation never reads it, and a cached one would be
    /// stale as soon as a disk is written.
    async fn doctor(&self) -> Result<DoctorReport, CoreError> {
        let mut report = self.refresh_host().await?;
        report.disk = Some(self.disk_report().await?);
        Ok(report)
    }

    async fn disk_report(&self) -> Result<DiskReport, CoreError> {
        // A store that cannot list the snapshots still leaves the areas
        // worth reporting; the report says the list is missing.
        let (snapshots, unlisted) = match self.list_snapshots().await {
            Ok(s) => (s, None),
            Err(e) => (
                Vec::new(),
                Some(format!("listing the recorded snapshots: {e}")),
            ),
        };
        let inputs = DiskInputs {
            state_dir: self.config.state_dir.clone(),
            areas: vec![
                (DiskArea::Kernels, self.config.kernels_dir()),
                (DiskArea::Images, self.config.images_dir()),
                (DiskArea::Vms, self.layout.vms_dir()),
                (DiskArea::Snapshots, self.layout.snapshots_dir()),
            ],
            snapshots,
        };
        let mut disk = tokio::task::spawn_blocking(move || measure_disk(&inputs))
            .await
            .map_err(|source| InternalError::Task {
                what: "measuring the state dir",
                source,
            })?;
        disk.errors.extend(unlisted);
        Ok(disk)
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
            .map_err(|source| InternalError::Task {
                what: "database",
                source,
            })?
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
            Command::Doctor => self.doctor().await.map(Reply::Doctor),
            Command::VmList => self.db(Store::list_vms).await.map(Reply::Vms),
            Command::VmShow { vm } => self.find_vm(&vm).await.map(Reply::Vm),
            Command::VmCreate(req) => self.create_vm(req, progress).await.map(Reply::Vm),
            Command::VmSet { vm, changes } => self.set_vm(&vm, changes).await.map(Reply::Vm),
            Command::VmDelete { vm } => self.delete_vm(&vm).await.map(Reply::Deleted),
            Command::VmStart { vm } => self.start_vm(&vm, progress).await.map(Reply::Vm),
            Command::VmStop { vm } => self.stop_vm(&vm, true).await.map(Reply::Vm),
            Command::VmKill { vm } => self.stop_vm(&vm, false).await.map(Reply::Vm),
            Command::VmLogs { vm, lines } => self.vm_logs(&vm, lines).await.map(Reply::Logs),
            Command::VmAttach { vm, request } => {
                self.attach(&vm, request).await.map(Reply::Attached)
            }
            Command::VmSsh { vm } => self.ssh_info(&vm).await.map(Reply::Ssh),
            Command::VmPause { vm } => self.pause_vm(&vm, true).await.map(Reply::Vm),
            Command::VmResume { vm } => self.pause_vm(&vm, false).await.map(Reply::Vm),
            Command::VmSnapshot { vm, request } => self
                .snapshot_vm(&vm, request, SnapshotKind::User, progress)
                .await
                .map(Reply::Snapshot),
            Command::VmFork { vm, request } => {
                self.fork_vm(&vm, request, progress).await.map(Reply::Vms)
            }
            Command::SnapshotList => self.list_snapshots().await.map(Reply::Snapshots),
            Command::SnapshotShow { name } => self.find_snapshot(&name).await.map(Reply::Snapshot),
            Command::SnapshotRm { name } => self.remove_snapshot(&name).await.map(Reply::Snapshot),
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
            Command::ImageWarm { name, request } => self
                .warm_image(&name, request, progress)
                .await
                .map(Reply::Warmed),
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
}
