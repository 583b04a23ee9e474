//! `vm snapshot`: pause, save the VMM's state, freeze the disks with it,
//! publish, then resume (or stop).

use std::path::{Path, PathBuf};
use std::time::Instant;

use banger_api::name::validate_name;
use banger_api::snapshot::{SnapshotKind, SnapshotMachine, SnapshotRecord, SnapshotVmRequest};
use banger_api::vm::{VmRecord, VmState};
use banger_host::doctor::allocated_bytes;
use banger_vmm::{LaunchSpec, Vmm};
use chrono::Utc;

use super::{ROOT_DISK, VMM_DIR, WORK_DISK, staging_dir};
use crate::core::Core;
use crate::error::{CoreError, HostError, InternalError};
use crate::ids::new_id;
use crate::lifecycle::{VmAction, check_action};
use crate::names;
use crate::progress::ProgressSink;

impl Core {
    pub(crate) async fn snapshot_vm(
        &self,
        name: &str,
        req: SnapshotVmRequest,
        kind: SnapshotKind,
        progress: &ProgressSink,
    ) -> Result<SnapshotRecord, CoreError> {
        check_snapshot(&req)?;
        let (mut vm, _lock) = self.lock_vm(name).await?;
        check_action(&vm.name, vm.state, VmAction::Snapshot)?;
        let vmm = self.vmm_for(vm.spec.vmm)?;
        let socket = super::savable(vmm, &vm)?;
        let snap_name = match req.name.clone() {
            Some(n) => {
                let taken = n.clone();
                if self.db(move |s| s.snapshot_name_exists(&taken)).await? {
                    return Err(CoreError::SnapshotNameTaken(n));
                }
                n
            }
            None => {
                self.db(|s| names::generate_unique(&mut rand::rng(), |n| s.snapshot_name_exists(n)))
                    .await?
            }
        };
        let started = Instant::now();
        let was_running = vm.state == VmState::Running;
        if was_running {
            progress.stage("pause", format!("pausing {}", vm.name));
            self.agent_paused(&vm, true);
            if let Err(e) = vmm.pause(&socket).await {
                self.agent_paused(&vm, false);
                return Err(HostError::from(e).into());
            }
        }
        failpoint!("snapshot.paused");
        let saved = self
            .capture(&vm, vmm, &socket, &snap_name, kind, started, progress)
            .await;
        // Whatever happened, the VM goes on as it was asked to.
        let after = if req.stop && saved.is_ok() {
            progress.stage("stop", format!("stopping {}", vm.name));
            let cleaned = self.cleanup(&mut vm, true).await;
            vm.state = VmState::Stopped;
            // Its next start picks up where the snapshot left it.
            vm.runtime.restore_from = saved.as_ref().ok().map(|s| s.id.clone());
            vm.runtime.last_error = cleaned.as_ref().err().map(ToString::to_string);
            self.save(&mut vm).await?;
            self.rebuild_dns().await;
            cleaned
        } else if was_running {
            progress.stage("resume", format!("resuming {}", vm.name));
            let resumed = vmm
                .resume(&socket)
                .await
                .map_err(|e| HostError::from(e).into());
            self.agent_paused(&vm, false);
            resumed
        } else {
            Ok(())
        };
        failpoint!("snapshot.vm_on_again");
        let snap = saved?;
        after?;
        tracing::info!(vm_id = %vm.id, snapshot = %snap.name, size = snap.size_bytes, save_ms = snap.save_ms, "snapshot taken");
        Ok(snap)
    }

    /// Saves the paused VM as snapshot `name`, built under a staging dir
    /// and published whole; on failure nothing of it is left.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn capture(
        &self,
        vm: &VmRecord,
        vmm: &dyn Vmm,
        socket: &Path,
        name: &str,
        kind: SnapshotKind,
        started: Instant,
        progress: &ProgressSink,
    ) -> Result<SnapshotRecord, CoreError> {
        let id = new_id();
        let root = self.layout().snapshots_dir();
        let staging = staging_dir(&root, &id);
        let saved = match self.save_into(vm, vmm, socket, &staging, progress).await {
            Ok(()) => {
                self.publish(vm, &id, name, kind, &staging, &root, started)
                    .await
            }
            Err(e) => Err(e),
        };
        if saved.is_err() {
            if let Err(e) = self.remove_snapshot_dir(staging.clone()).await {
                tracing::warn!(dir = %staging.display(), error = %e, "removing a failed snapshot's files");
            }
        }
        saved
    }

    /// The VMM's state, then the disks, into `staging` (the VM paused).
    async fn save_into(
        &self,
        vm: &VmRecord,
        vmm: &dyn Vmm,
        socket: &Path,
        staging: &Path,
        progress: &ProgressSink,
    ) -> Result<(), CoreError> {
        let vmm_dir = staging.join(VMM_DIR);
        tokio::fs::create_dir_all(&vmm_dir)
            .await
            .map_err(InternalError::io("creating", &vmm_dir))?;
        progress.stage("save", "saving memory and device state");
        vmm.save(socket, &vmm_dir).await.map_err(HostError::from)?;
        failpoint!("snapshot.state_saved");
        // The guest is still paused: the disks are exactly as the saved
        // memory knows them. A restore never runs on disks that moved on.
        progress.stage("save", "freezing the disks with it");
        let strategy = self.host_report().await?.storage;
        let disks = self.deps().disks.as_ref();
        for (from, name, what) in [
            (vm.runtime.root_disk_path.as_ref(), ROOT_DISK, "root disk"),
            (vm.runtime.work_disk_path.as_ref(), WORK_DISK, "work disk"),
        ] {
            let from = from.ok_or_else(|| InternalError::NoRuntimePath {
                vm: vm.name.clone(),
                what,
            })?;
            disks
                .clone_image(from, &staging.join(name), strategy)
                .await
                .map_err(HostError::from)?;
        }
        Ok(())
    }

    /// Renames the complete snapshot into place, then records it.
    #[allow(clippy::too_many_arguments)]
    async fn publish(
        &self,
        vm: &VmRecord,
        id: &str,
        name: &str,
        kind: SnapshotKind,
        staging: &Path,
        root: &Path,
        started: Instant,
    ) -> Result<SnapshotRecord, CoreError> {
        let dir = root.join(id);
        let (from, to) = (staging.to_owned(), dir.clone());
        let size_bytes = tokio::task::spawn_blocking(move || {
            // Durable before visible: the rename publishes whole files.
            sync_tree(&from)?;
            // What `doctor` measures too, so the two sizes agree.
            let size = allocated_bytes(&from).map_err(std::io::Error::other)?;
            std::fs::rename(&from, &to)?;
            std::fs::File::open(to.parent().unwrap_or(&to))?.sync_all()?;
            Ok::<_, std::io::Error>(size)
        })
        .await
        .map_err(|source| InternalError::Task {
            what: "publishing a snapshot",
            source,
        })?
        .map_err(InternalError::io("publishing", &dir))?;
        failpoint!("snapshot.published");
        let rec = SnapshotRecord {
            id: id.to_owned(),
            name: name.to_owned(),
            kind,
            source_vm: vm.name.clone(),
            source_vm_id: vm.id.clone(),
            machine: SnapshotMachine {
                vmm: vm.spec.vmm,
                vcpus: vm.spec.vcpus,
                memory_mib: vm.spec.memory_mib,
                kernel: vm.spec.kernel.clone(),
                image: vm.spec.image.clone(),
                root_disk_bytes: vm.spec.root_disk_bytes,
                work_disk_bytes: vm.spec.work_disk_bytes,
                cmdline: vm.runtime.boot_cmdline.clone().unwrap_or_default(),
                devices: devices(vm),
            },
            dir: dir.clone(),
            size_bytes,
            save_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            created_at: Utc::now(),
        };
        let row = rec.clone();
        if let Err(e) = self.db(move |s| s.insert_snapshot(&row)).await {
            if let Err(r) = self.remove_snapshot_dir(dir).await {
                tracing::warn!(error = %r, "removing an unrecorded snapshot");
            }
            return Err(e);
        }
        Ok(rec)
    }
}

pub(crate) fn check_snapshot(req: &SnapshotVmRequest) -> Result<(), CoreError> {
    match &req.name {
        Some(n) => {
            validate_name(n).map_err(|e| CoreError::InvalidArgument(format!("snapshot name: {e}")))
        }
        None => Ok(()),
    }
}

/// What the VM runs as, for the driver's "can this be saved" question.
pub(crate) fn running_spec(vm: &VmRecord) -> LaunchSpec {
    let rt = &vm.runtime;
    LaunchSpec {
        vm_id: vm.id.to_string(),
        vcpus: vm.spec.vcpus,
        memory_mib: vm.spec.memory_mib,
        kernel: PathBuf::new(),
        initrd: None,
        cmdline: rt.boot_cmdline.clone().unwrap_or_default(),
        disks: rt
            .root_disk_path
            .iter()
            .chain(rt.work_disk_path.iter())
            .cloned()
            .collect(),
        net: None,
        console_log: rt.console_log.clone().unwrap_or_default(),
        control_socket: rt.api_socket.clone().unwrap_or_default(),
        pid_file: PathBuf::new(),
        accel: banger_api::doctor::Accel::Tcg,
        vsock: rt.vsock_path.clone(),
        agent_serial: rt.agent_socket.clone(),
    }
}

/// The device set, as `snapshot show` lists it.
fn devices(vm: &VmRecord) -> Vec<String> {
    let mut d = vec![
        "virtio-blk (root)".to_owned(),
        "virtio-blk (work)".to_owned(),
        "virtio-net".to_owned(),
    ];
    if vm.spec.vmm == banger_api::vm::VmmKind::Qemu {
        d.push("virtio-rng".to_owned());
    }
    if vm.runtime.vsock_path.is_some() {
        d.push("vsock (agent)".to_owned());
    }
    if vm.runtime.agent_socket.is_some() {
        d.push("virtio-serial (agent)".to_owned());
    }
    d
}

fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}
