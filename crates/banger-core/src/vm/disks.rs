//! A VM's disks: cloned from its image on first start (root, and the work
//! disk from the image's /root), grown when the spec grew, kept across
//! restarts.

use std::path::Path;

use banger_api::asset::ImageRecord;
use banger_api::vm::VmRecord;
use banger_host::layout::VmFiles;

use crate::core::Core;
use crate::error::{CoreError, HostError, InternalError};
use crate::progress::ProgressSink;

async fn exists(p: &Path) -> Result<bool, CoreError> {
    Ok(tokio::fs::try_exists(p)
        .await
        .map_err(InternalError::io("checking", p))?)
}

impl Core {
    /// Creates the VM's disks on first start; later starts keep them.
    pub(super) async fn prepare_disks(
        &self,
        vm: &VmRecord,
        paths: &VmFiles,
        image: &ImageRecord,
        progress: &ProgressSink,
    ) -> Result<(), CoreError> {
        tokio::fs::create_dir_all(&paths.dir)
            .await
            .map_err(InternalError::io("creating", &paths.dir))?;
        let strategy = self.host_report().await?.storage;
        let disks = self.deps().disks.as_ref();
        if !exists(&paths.root_disk).await? {
            progress.stage("storage", format!("cloning root disk ({strategy:?})"));
            self.verify_files(vec![image.rootfs.clone()]).await?;
            let tmp = paths.dir.join("root.ext4.partial");
            disks
                .clone_image(Path::new(&image.rootfs.path), &tmp, strategy)
                .await
                .map_err(HostError::from)?;
            disks
                .grow_ext4(&tmp, vm.spec.root_disk_bytes)
                .await
                .map_err(HostError::from)?;
            tokio::fs::rename(&tmp, &paths.root_disk)
                .await
                .map_err(InternalError::io("publishing", &paths.root_disk))?;
        }
        if !exists(&paths.work_disk).await? {
            let tmp = paths.dir.join("work.ext4.partial");
            match &image.work_seed {
                Some(seed) => {
                    progress.stage("storage", "cloning work disk from the image's /root");
                    disks
                        .clone_image(Path::new(&seed.path), &tmp, strategy)
                        .await
                        .map_err(HostError::from)?;
                    disks
                        .grow_ext4(&tmp, vm.spec.work_disk_bytes)
                        .await
                        .map_err(HostError::from)?;
                }
                None => {
                    // No seed (an imported rootfs): the work disk starts as
                    // a copy of the image's /root, taken without mounting.
                    progress.stage("storage", "creating the work disk from the image's /root");
                    let scratch = tempfile::Builder::new()
                        .prefix("work-seed-")
                        .tempdir_in(&paths.dir)
                        .map_err(InternalError::io("making a temp dir in", &paths.dir))?;
                    let home = disks
                        .extract_dir(Path::new(&image.rootfs.path), "/root", scratch.path())
                        .await
                        .map_err(HostError::from)?;
                    disks
                        .make_ext4(&tmp, vm.spec.work_disk_bytes, "banger-work", Some(&home))
                        .await
                        .map_err(HostError::from)?;
                }
            }
            tokio::fs::rename(&tmp, &paths.work_disk)
                .await
                .map_err(InternalError::io("publishing", &paths.work_disk))?;
        } else {
            // `vm set --work-disk` grows it at the next start.
            disks
                .grow_ext4(&paths.work_disk, vm.spec.work_disk_bytes)
                .await
                .map_err(HostError::from)?;
        }
        Ok(())
    }
}
