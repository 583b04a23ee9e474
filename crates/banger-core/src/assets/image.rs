//! `image build` (debootstrap) and `image import` (a tree or an ext4 file).

use std::path::{Path, PathBuf};

use banger_api::asset::{AssetFile, ImageBuildRequest, ImageImportRequest, ImageInit, ImageRecord};
use banger_assets::files::{combine_digests, is_ext4, tree_size};
use banger_host::tools::{Debootstrap, MkfsExt4};
use banger_store::AssetKind;
use chrono::Utc;

use crate::core::Core;
use crate::error::{CoreError, HostError};
use crate::ids::new_id;
use crate::progress::ProgressSink;

use super::init::{detect_init, tree_node};
use super::{BASE_PACKAGES, blocking, file_record, io_err};

impl Core {
    pub(crate) async fn image_build(
        &self,
        req: ImageBuildRequest,
        progress: &ProgressSink,
    ) -> Result<ImageRecord, CoreError> {
        Self::check_new_name(AssetKind::Image, &req.name)?;
        for p in &req.packages {
            let ok = !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
            if !ok {
                return Err(CoreError::InvalidArgument(format!(
                    "package name {p:?} is not a Debian package name (a-z, 0-9, '+', '-', '.')"
                )));
            }
        }
        let _lock = self
            .claim_name::<ImageRecord>(AssetKind::Image, &req.name)
            .await?;
        let cfg = self.config().clone();
        let suite = req
            .suite
            .clone()
            .unwrap_or_else(|| cfg.assets.debian_suite.clone());
        let work = self.work_dir("image-build")?;
        let rootfs = work.path().join("rootfs");
        let mut packages: Vec<String> = BASE_PACKAGES.iter().map(|s| (*s).to_owned()).collect();
        packages.extend(req.packages.iter().cloned());
        progress.stage(
            "debootstrap",
            format!("debootstrap {suite} from {}", cfg.assets.debian_mirror),
        );
        Debootstrap {
            bin: cfg.tools.debootstrap.clone(),
        }
        .minbase(&suite, &rootfs, &cfg.assets.debian_mirror, &packages)
        .run(|l| {
            if let Some(msg) = l.strip_prefix("I: ") {
                progress.stage("debootstrap", msg.to_owned());
            }
        })
        .await?;
        progress.stage("configure", "removing per-host identity");
        let seed_dir = work.path().join("seed");
        {
            let (rootfs, seed_dir) = (rootfs.clone(), seed_dir.clone());
            blocking(move || prepare_rootfs(&rootfs, &seed_dir)).await?;
        }
        let staged = work.path().join("out");
        std::fs::create_dir_all(&staged).map_err(io_err("creating", &staged))?;
        let mkfs = MkfsExt4 {
            bin: cfg.tools.mkfs_ext4.clone(),
        };
        progress.stage("work-seed", "writing the /root seed (work-seed.ext4)");
        let seed_img = staged.join("work-seed.ext4");
        let seed_size = ext4_size(&seed_dir, 32 << 20)?;
        mkfs.from_dir(&seed_dir, &seed_img, seed_size, "banger-work")
            .run(|_| {})
            .await?;
        progress.stage("rootfs", "writing rootfs.ext4");
        let root_img = staged.join("rootfs.ext4");
        let root_size = ext4_size(&rootfs, 256 << 20)?;
        mkfs.from_dir(&rootfs, &root_img, root_size, "banger-root")
            .run(|_| {})
            .await?;
        progress.stage("store", "hashing and publishing");
        let (rootfs_rec, seed_rec) = {
            let (r, s) = (root_img.clone(), seed_img.clone());
            blocking(move || Ok((file_record(&r)?, file_record(&s)?))).await?
        };
        let rec = new_image(
            &req.name,
            format!("debootstrap:{suite}"),
            rootfs_rec,
            Some(seed_rec),
            packages,
            // BASE_PACKAGES install systemd-sysv.
            ImageInit::Systemd,
        );
        let rec = self.commit_image(staged, rec).await?;
        tracing::info!(name = %rec.name, "image built");
        Ok(rec)
    }

    pub(crate) async fn image_import(
        &self,
        req: ImageImportRequest,
        progress: &ProgressSink,
    ) -> Result<ImageRecord, CoreError> {
        Self::check_new_name(AssetKind::Image, &req.name)?;
        let (src, is_dir) = match (&req.rootfs, &req.dir) {
            (Some(f), None) => (PathBuf::from(f), false),
            (None, Some(d)) => (PathBuf::from(d), true),
            _ => {
                return Err(CoreError::InvalidArgument(
                    "give exactly one of --rootfs FILE.ext4 or --dir DIR".into(),
                ));
            }
        };
        if is_dir && !src.is_dir() {
            return Err(CoreError::InvalidArgument(format!(
                "--dir {} is not a directory",
                src.display()
            )));
        }
        if !is_dir {
            let ext4 = is_ext4(&src).map_err(|e| {
                CoreError::InvalidArgument(format!("cannot read --rootfs {}: {e}", src.display()))
            })?;
            if !ext4 {
                return Err(CoreError::InvalidArgument(format!(
                    "--rootfs {} is not an ext4 filesystem image (use --dir for a directory tree)",
                    src.display()
                )));
            }
        }
        let _lock = self
            .claim_name::<ImageRecord>(AssetKind::Image, &req.name)
            .await?;
        let cfg = self.config().clone();
        let work = self.work_dir("image-import")?;
        let staged = work.path().join("out");
        std::fs::create_dir_all(&staged).map_err(io_err("creating", &staged))?;
        let root_img = staged.join("rootfs.ext4");
        let mut seed: Option<PathBuf> = None;
        let init = if is_dir {
            let init = self.tree_init(&src, progress).await?;
            let mkfs = MkfsExt4 {
                bin: cfg.tools.mkfs_ext4.clone(),
            };
            let home = src.join("root");
            if home.is_dir() {
                progress.stage("work-seed", "writing the /root seed");
                let s = staged.join("work-seed.ext4");
                mkfs.from_dir(&home, &s, ext4_size(&home, 64 << 20)?, "banger-work")
                    .run(|_| {})
                    .await?;
                seed = Some(s);
            }
            progress.stage(
                "rootfs",
                format!("writing rootfs.ext4 from {}", src.display()),
            );
            mkfs.from_dir(&src, &root_img, ext4_size(&src, 64 << 20)?, "banger-root")
                .run(|_| {})
                .await?;
            init
        } else {
            progress.stage("rootfs", format!("copying {}", src.display()));
            let (s, d) = (src.clone(), root_img.clone());
            blocking(move || {
                reflink_copy::reflink_or_copy(&s, &d)
                    .map(drop)
                    .map_err(io_err("copying", &s))
            })
            .await?;
            // The copy, not the source: what is recorded is what was read.
            self.ext4_init(&root_img, progress).await?
        };
        progress.stage("store", "hashing and publishing");
        let (rootfs_rec, seed_rec) = {
            let (r, s) = (root_img.clone(), seed.clone());
            blocking(move || Ok((file_record(&r)?, s.as_deref().map(file_record).transpose()?)))
                .await?
        };
        let rec = new_image(
            &req.name,
            format!("import:{}", src.display()),
            rootfs_rec,
            seed_rec,
            Vec::new(),
            init,
        );
        self.commit_image(staged, rec).await
    }

    /// The init of the image the directory `tree` becomes.
    async fn tree_init(
        &self,
        tree: &Path,
        progress: &ProgressSink,
    ) -> Result<ImageInit, CoreError> {
        progress.stage(
            "init",
            format!("resolving /sbin/init in {}", tree.display()),
        );
        let (init, target) = detect_init(|p: PathBuf| {
            let tree = tree.to_owned();
            blocking(move || tree_node(&tree, &p))
        })
        .await?;
        log_init(tree, init, target.as_deref());
        Ok(init)
    }

    /// The init of the ext4 `image`, read without mounting it.
    async fn ext4_init(
        &self,
        image: &Path,
        progress: &ProgressSink,
    ) -> Result<ImageInit, CoreError> {
        progress.stage("init", "resolving /sbin/init in the rootfs");
        let disks = self.deps().disks.as_ref();
        let (init, target) = detect_init(|p: PathBuf| async move {
            disks
                .guest_node(image, &p)
                .await
                .map_err(|e| CoreError::from(HostError::from(e)))
        })
        .await?;
        log_init(image, init, target.as_deref());
        Ok(init)
    }
}

fn log_init(image: &Path, init: ImageInit, target: Option<&Path>) {
    tracing::info!(
        image = %image.display(),
        %init,
        sbin_init = %target.map_or_else(|| "nothing".into(), |t| t.display().to_string()),
        "image init detected"
    );
}

fn new_image(
    name: &str,
    source: String,
    rootfs: AssetFile,
    work_seed: Option<AssetFile>,
    packages: Vec<String>,
    init: ImageInit,
) -> ImageRecord {
    let digest = combine_digests(&[
        Some(&rootfs.sha256),
        work_seed.as_ref().map(|s| s.sha256.as_str()),
    ]);
    ImageRecord {
        id: new_id(),
        name: name.to_owned(),
        source,
        rootfs,
        work_seed,
        packages,
        init,
        digest,
        created_at: Utc::now(),
    }
}

/// Size for an ext4 image holding `dir`: content plus a quarter, plus
/// `headroom`, rounded up to a MiB.
fn ext4_size(dir: &Path, headroom: u64) -> Result<u64, CoreError> {
    let content = tree_size(dir).map_err(io_err("measuring", dir))?;
    Ok((content + content / 4 + headroom).div_ceil(1 << 20) << 20)
}

/// Strips host identity from a fresh rootfs and moves its `/root` into the
/// work-seed directory.
fn prepare_rootfs(rootfs: &Path, seed: &Path) -> Result<(), CoreError> {
    // Every clone would share these: each VM gets its own at create time.
    let ssh = rootfs.join("etc/ssh");
    if let Ok(rd) = std::fs::read_dir(&ssh) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                std::fs::remove_file(e.path()).map_err(io_err("removing", &e.path()))?;
            }
        }
    }
    // Empty (not absent): systemd then generates a fresh id per boot disk.
    let mid = rootfs.join("etc/machine-id");
    std::fs::write(&mid, b"").map_err(io_err("writing", &mid))?;
    let _ = std::fs::remove_file(rootfs.join("var/lib/dbus/machine-id"));
    std::fs::create_dir_all(seed).map_err(io_err("creating", seed))?;
    let home = rootfs.join("root");
    std::fs::create_dir_all(&home).map_err(io_err("creating", &home))?;
    for e in std::fs::read_dir(&home)
        .map_err(io_err("reading", &home))?
        .flatten()
    {
        let dst = seed.join(e.file_name());
        std::fs::rename(e.path(), &dst).map_err(io_err("moving", &e.path()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
