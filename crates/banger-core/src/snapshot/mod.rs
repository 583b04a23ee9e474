//! Snapshots as records: taking one of a running VM (`save`), listing,
//! showing and removing them, and the start-up sweep of interrupted ones.
//! Restoring is part of a VM's start (`vm::restore`); `vm fork` is
//! `fork`; warm-start templates are `template`.
//!
//! A snapshot directory holds the VMM's state files (`vmm/`) and the VM's
//! disks frozen with them (`root.ext4`, `work.ext4`). It is made under
//! `.staging-<id>`, renamed into place when complete, and only then
//! recorded, so a listed snapshot is always whole and a crash leaves a
//! directory the sweep removes.

mod fork;
mod save;
mod template;

pub(crate) use fork::check_fork;
pub(crate) use save::check_snapshot;

pub(crate) use template::TemplateShape;

use std::path::{Path, PathBuf};

use banger_api::snapshot::SnapshotRecord;
use banger_api::vm::VmRecord;
use banger_store::Store;

use crate::core::Core;
use crate::error::{CoreError, InternalError};

/// Inside a snapshot directory.
pub(crate) const VMM_DIR: &str = "vmm";
pub(crate) const ROOT_DISK: &str = "root.ext4";
pub(crate) const WORK_DISK: &str = "work.ext4";
const STAGING: &str = ".staging-";

impl Core {
    pub(crate) async fn find_snapshot(&self, name: &str) -> Result<SnapshotRecord, CoreError> {
        let key = name.to_owned();
        self.db(move |s| s.find_snapshot(&key))
            .await?
            .ok_or_else(|| CoreError::SnapshotNotFound(name.to_owned()))
    }

    pub(crate) async fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, CoreError> {
        self.db(Store::list_snapshots).await
    }

    /// Removes a snapshot no VM still needs: a VM created from it that
    /// has not started yet restores from it.
    pub(crate) async fn remove_snapshot(&self, name: &str) -> Result<SnapshotRecord, CoreError> {
        let snap = self.find_snapshot(name).await?;
        let users: Vec<String> = self
            .db(Store::list_vms)
            .await?
            .into_iter()
            .filter(|v| v.runtime.restore_from.as_deref() == Some(snap.id.as_str()))
            .map(|v| v.name)
            .collect();
        if !users.is_empty() {
            return Err(CoreError::SnapshotInUse {
                name: snap.name,
                vms: users,
            });
        }
        let id = snap.id.clone();
        self.db(move |s| s.delete_snapshot(&id)).await?;
        // The row first: a crash between the two leaves a directory the
        // sweep removes, never a record of missing files.
        self.remove_snapshot_dir(snap.dir.clone()).await?;
        tracing::info!(snapshot = %snap.name, id = %snap.id, "snapshot removed");
        Ok(snap)
    }

    /// Daemon start: directories of snapshots that never got a record
    /// (interrupted saves, and removals cut short) go.
    pub(crate) async fn sweep_snapshots(&self) -> Result<(), CoreError> {
        let root = self.layout().snapshots_dir();
        let known: Vec<PathBuf> = self
            .list_snapshots()
            .await?
            .into_iter()
            .map(|s| s.dir)
            .collect();
        let mut entries = match tokio::fs::read_dir(&root).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(InternalError::io("listing", &root)(e).into()),
        };
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(InternalError::io("listing", &root))?
        {
            let path = entry.path();
            if known.contains(&path) {
                continue;
            }
            tracing::info!(dir = %path.display(), "removing an unrecorded snapshot directory (an interrupted save)");
            self.remove_snapshot_dir(path).await?;
        }
        Ok(())
    }

    /// Removes a snapshot tree, refusing anything outside the snapshots
    /// directory (a corrupt record must not delete arbitrary trees).
    pub(crate) async fn remove_snapshot_dir(&self, dir: PathBuf) -> Result<(), CoreError> {
        if !self.layout().is_snapshot_dir(&dir) {
            return Err(InternalError::NotASnapshotDir {
                dir,
                root: self.layout().snapshots_dir(),
            }
            .into());
        }
        crate::trees::remove_tree(dir, "removing a snapshot directory").await
    }
}

/// The control socket of a VM that can be saved as it runs: refused
/// by naming the device when the VMM cannot save one of them.
pub(crate) fn savable(vmm: &dyn banger_vmm::Vmm, vm: &VmRecord) -> Result<PathBuf, CoreError> {
    if let Some(why) = vmm.snapshot_blocker(&save::running_spec(vm)) {
        return Err(CoreError::NotSnapshottable {
            vm: vm.name.clone(),
            why,
        });
    }
    control_socket(vm)
}

/// A running VM's control socket (QMP or the Firecracker API): pause,
/// resume and save all speak to it.
pub(crate) fn control_socket(
    vm: &banger_api::vm::VmRecord,
) -> Result<std::path::PathBuf, crate::error::CoreError> {
    vm.runtime.api_socket.clone().ok_or_else(|| {
        crate::error::InternalError::NoRuntimePath {
            vm: vm.name.clone(),
            what: "control socket",
        }
        .into()
    })
}

/// Where a snapshot is built before it is published.
fn staging_dir(root: &Path, id: &str) -> PathBuf {
    root.join(format!("{STAGING}{id}"))
}
