//! Kernels and images: build, import, list, remove, provision defaults.
//!
//! Every build works in a temp dir under `<state>/tmp` (same filesystem
//! as the store), publishes the finished files with one rename into a
//! content-addressed dir, and only then inserts the record: a half-built
//! asset is never visible, and a cancelled or failed build leaves nothing
//! (the temp dir is removed on drop, tool children are killed on drop).
//! Builds, imports and removals of one name are serialised by a per-name
//! lock that a cancelled waiter simply leaves.

mod image;
mod init;
mod kernel;
mod provision;

use std::path::{Path, PathBuf};

use banger_api::asset::{AssetFile, ImageRecord, KernelRecord};
use banger_api::name::validate_name;
use banger_assets::files::{hash_file, publish};
use banger_store::{AssetKind, AssetRow, Store};

use crate::core::Core;
use crate::error::{AssetBuildError, CoreError, InternalError};
use crate::locks::KeyGuard;

/// Packages every built image gets: an init, the network tools, sshd.
pub const BASE_PACKAGES: &[&str] = &[
    "systemd-sysv",
    // logind needs it; logind turns the ACPI power button into a clean
    // shutdown (the VMM's graceful stop).
    "dbus",
    "udev",
    "openssh-server",
    "iproute2",
    "iputils-ping",
    "ca-certificates",
];

/// The name VMs use when they name no kernel or image.
pub const DEFAULT_ASSET: &str = "default";

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CoreError {
    let path = path.to_owned();
    move |source| AssetBuildError::Io { what, path, source }.into()
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CoreError> + Send + 'static,
) -> Result<T, CoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| InternalError::Task {
            what: "asset worker",
            source,
        })?
}

pub(super) fn file_record(path: &Path) -> Result<AssetFile, CoreError> {
    let (sha256, size) = hash_file(path).map_err(io_err("hashing", path))?;
    Ok(AssetFile {
        path: path.display().to_string(),
        sha256,
        size,
    })
}

/// Re-hashes an asset file and compares with its record.
pub fn verify_file(f: &AssetFile) -> Result<(), CoreError> {
    let (sha, size) = hash_file(Path::new(&f.path)).map_err(|e| {
        CoreError::AssetCorrupt(format!("{}: {e}; remove and rebuild the asset", f.path))
    })?;
    if sha != f.sha256 || size != f.size {
        return Err(CoreError::AssetCorrupt(format!(
            "{} changed on disk (sha256 {sha}, expected {}); remove and rebuild the asset",
            f.path, f.sha256
        )));
    }
    Ok(())
}

/// Relocates the file records of a staged dir to where `publish` put it.
pub(super) fn rebase(f: &mut AssetFile, staged: &Path, dest: &Path) {
    if let Ok(rel) = Path::new(&f.path).strip_prefix(staged) {
        f.path = dest.join(rel).display().to_string();
    }
}

impl Core {
    pub(super) fn work_dir(&self, what: &str) -> Result<tempfile::TempDir, CoreError> {
        let tmp = self.config().tmp_dir();
        std::fs::create_dir_all(&tmp).map_err(io_err("creating", &tmp))?;
        tempfile::Builder::new()
            .prefix(&format!("{what}-"))
            .tempdir_in(&tmp)
            .map_err(io_err("creating a work dir in", &tmp))
    }

    pub(super) fn check_new_name(kind: AssetKind, name: &str) -> Result<(), CoreError> {
        validate_name(name).map_err(|e| CoreError::InvalidArgument(format!("{kind} name: {e}")))
    }

    /// A new asset's name: checked, its lock held (returned), and no
    /// record of that name yet.
    pub(super) async fn claim_name<T: AssetRow + Send + 'static>(
        &self,
        kind: AssetKind,
        name: &str,
    ) -> Result<KeyGuard<'_>, CoreError> {
        Self::check_new_name(kind, name)?;
        let lock = self.asset_locks().lock(&format!("{kind}:{name}")).await;
        self.ensure_absent::<T>(name).await?;
        Ok(lock)
    }

    async fn ensure_absent<T: AssetRow + Send + 'static>(
        &self,
        name: &str,
    ) -> Result<(), CoreError> {
        let n = name.to_owned();
        if self.db(move |s| s.find_asset::<T>(&n)).await?.is_some() {
            return Err(CoreError::AssetNameTaken {
                kind: T::KIND,
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    pub(crate) async fn list_assets<T: AssetRow + Send + 'static>(
        &self,
    ) -> Result<Vec<T>, CoreError> {
        self.db(Store::list_assets::<T>).await
    }

    pub(crate) async fn find_asset<T: AssetRow + Send + 'static>(
        &self,
        name: &str,
    ) -> Result<T, CoreError> {
        let n = name.to_owned();
        self.db(move |s| s.find_asset::<T>(&n))
            .await?
            .ok_or_else(|| CoreError::AssetNotFound {
                kind: T::KIND,
                name: name.to_owned(),
            })
    }

    pub(crate) async fn verify_kernel(&self, k: &KernelRecord) -> Result<(), CoreError> {
        let files: Vec<AssetFile> = std::iter::once(k.vmlinux.clone())
            .chain(k.initrd.clone())
            .collect();
        blocking(move || files.iter().try_for_each(verify_file)).await
    }

    pub(crate) async fn verify_image(&self, i: &ImageRecord) -> Result<(), CoreError> {
        let files: Vec<AssetFile> = std::iter::once(i.rootfs.clone())
            .chain(i.work_seed.clone())
            .collect();
        blocking(move || files.iter().try_for_each(verify_file)).await
    }

    /// Verifies files on use, remembering which (path, size, mtime,
    /// digest) already matched: a multi-GiB image is hashed once per
    /// daemon, not once per VM start. `--verify` always re-hashes.
    pub(crate) async fn verify_files(&self, files: Vec<AssetFile>) -> Result<(), CoreError> {
        for f in files {
            let stamp = std::fs::metadata(&f.path)
                .ok()
                .and_then(|m| m.modified().ok().map(|t| (m.len(), t)))
                .map(|(len, t)| format!("{}|{len}|{t:?}|{}", f.path, f.sha256));
            if let Some(s) = &stamp {
                if self
                    .verified()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(s)
                {
                    continue;
                }
            }
            let g = f.clone();
            blocking(move || verify_file(&g)).await?;
            if let Some(s) = stamp {
                self.verified()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(s);
            }
        }
        Ok(())
    }

    pub(super) async fn commit_kernel(
        &self,
        staged: PathBuf,
        rec: KernelRecord,
    ) -> Result<KernelRecord, CoreError> {
        let digest = rec.digest.clone();
        let root = self.config().kernels_dir();
        self.commit_asset(staged.clone(), root, digest, rec, move |r, dest| {
            rebase(&mut r.vmlinux, &staged, dest);
            if let Some(i) = r.initrd.as_mut() {
                rebase(i, &staged, dest);
            }
        })
        .await
    }

    pub(super) async fn commit_image(
        &self,
        staged: PathBuf,
        rec: ImageRecord,
    ) -> Result<ImageRecord, CoreError> {
        let digest = rec.digest.clone();
        let root = self.config().images_dir();
        self.commit_asset(staged.clone(), root, digest, rec, move |r, dest| {
            rebase(&mut r.rootfs, &staged, dest);
            if let Some(s) = r.work_seed.as_mut() {
                rebase(s, &staged, dest);
            }
        })
        .await
    }

    /// Publishes staged files and inserts the record; on a failed insert
    /// the published dir is removed again unless another record uses it.
    pub(super) async fn commit_asset<T: AssetRow + Clone + Send + 'static>(
        &self,
        staged: PathBuf,
        store_root: PathBuf,
        digest: String,
        mut rec: T,
        rebase_files: impl FnOnce(&mut T, &Path),
    ) -> Result<T, CoreError> {
        let dest = store_root.join(&digest);
        let d = dest.clone();
        failpoint!("asset.staged");
        blocking(move || publish(&staged, &d).map_err(io_err("publishing", &d))).await?;
        failpoint!("asset.published");
        rebase_files(&mut rec, &dest);
        let to_insert = rec.clone();
        match self.db(move |s| s.insert_asset(&to_insert)).await {
            Ok(()) => Ok(rec),
            Err(e) => {
                self.remove_unreferenced::<T>(&digest, &store_root).await;
                Err(e)
            }
        }
    }

    /// Removes `<root>/<digest>` unless a record still points at it.
    pub(super) async fn remove_unreferenced<T: AssetRow + Send + 'static>(
        &self,
        digest: &str,
        root: &Path,
    ) {
        // Unknown references keep the files: a failed listing must never
        // read as "nothing uses this".
        let all = match self.db(Store::list_assets::<T>).await {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(digest, error = %e, "cannot list assets; keeping their files");
                return;
            }
        };
        if all.iter().any(|r| r.digest() == digest) {
            return;
        }
        let dir = root.join(digest);
        let target = dir.clone();
        // A content dir holds whole images: removed off the async workers.
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&target)).await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(e)) => tracing::warn!(dir = %dir.display(), error = %e, "removing asset dir"),
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "removing asset dir"),
        }
    }

    pub(crate) async fn asset_rm<T: AssetRow + Clone + Send + 'static>(
        &self,
        name: &str,
        force: bool,
    ) -> Result<T, CoreError> {
        let kind = T::KIND;
        let _lock = self.asset_locks().lock(&format!("{kind}:{name}")).await;
        let rec: T = self.find_asset(name).await?;
        let n = name.to_owned();
        let users = self.db(move |s| s.vms_using(kind, &n)).await?;
        if !users.is_empty() && !force {
            return Err(CoreError::AssetInUse {
                kind,
                name: name.to_owned(),
                vms: users,
            });
        }
        if !users.is_empty() {
            tracing::warn!(%kind, name, vms = ?users, "removing an asset vms still name; they cannot start until it is rebuilt");
        }
        let n = name.to_owned();
        self.db(move |s| s.delete_asset(kind, &n)).await?;
        let digest = rec.digest().to_owned();
        let root = match kind {
            AssetKind::Kernel => self.config().kernels_dir(),
            AssetKind::Image => self.config().images_dir(),
        };
        if !digest.is_empty() && digest.chars().all(|c| c.is_ascii_hexdigit()) {
            self.remove_unreferenced::<T>(&digest, &root).await;
        }
        tracing::info!(%kind, name, "asset removed");
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_detects_changed_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, b"data").expect("w");
        let rec = file_record(&p).expect("record");
        verify_file(&rec).expect("intact");
        std::fs::write(&p, b"DATA").expect("w");
        assert!(matches!(verify_file(&rec), Err(CoreError::AssetCorrupt(_))));
        std::fs::remove_file(&p).expect("rm");
        assert!(matches!(verify_file(&rec), Err(CoreError::AssetCorrupt(_))));
    }
}
