//! Kernels and images: build, import, list, remove, provision defaults.
//!
//! Every build works in a temp dir under `<state>/tmp` (same filesystem
//! as the store), publishes the finished files with one rename into a
//! content-addressed dir, and only then inserts the record: a half-built
//! asset is never visible, and a cancelled or failed build leaves nothing
//! (the temp dir is removed on drop, tool children are killed on drop).
//! Builds, imports and removals of one name are serialised by a per-name
//! lock that a cancelled waiter simply leaves.

use std::path::{Path, PathBuf};

use banger_api::asset::{
    AssetFile, ImageBuildRequest, ImageImportRequest, ImageRecord, KernelAddRequest,
    KernelImportRequest, KernelRecord,
};
use banger_api::event::Progress;
use banger_api::name::validate_name;
use banger_assets::deb::Deb;
use banger_assets::files::{combine_digests, hash_file, is_ext4, publish, tree_size};
use banger_assets::kernel::{KernelError, build_from_tree, find_kernel};
use banger_host::tools::{AptGet, Debootstrap, MkfsExt4, ToolError};
use banger_store::{AssetKind, AssetRow, Store};
use chrono::Utc;

use crate::error::CoreError;
use crate::progress::ProgressSink;
use crate::service::{Core, new_vm_id};

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

impl From<ToolError> for CoreError {
    fn from(e: ToolError) -> Self {
        match e {
            ToolError::NotFound { .. } => Self::Unavailable(e.to_string()),
            other => Self::AssetBuild(other.to_string()),
        }
    }
}

impl From<KernelError> for CoreError {
    fn from(e: KernelError) -> Self {
        match e {
            KernelError::Io { .. } => Self::AssetBuild(e.to_string()),
            other => Self::InvalidArgument(other.to_string()),
        }
    }
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> CoreError {
    let msg = format!("{what} {}", path.display());
    move |e| CoreError::AssetBuild(format!("{msg}: {e}"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CoreError> + Send + 'static,
) -> Result<T, CoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CoreError::Internal(format!("worker task: {e}")))?
}

fn file_record(path: &Path) -> Result<AssetFile, CoreError> {
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
fn rebase(f: &mut AssetFile, staged: &Path, dest: &Path) {
    if let Ok(rel) = Path::new(&f.path).strip_prefix(staged) {
        f.path = dest.join(rel).display().to_string();
    }
}

impl Core {
    fn work_dir(&self, what: &str) -> Result<tempfile::TempDir, CoreError> {
        let tmp = self.config().tmp_dir();
        std::fs::create_dir_all(&tmp).map_err(io_err("creating", &tmp))?;
        tempfile::Builder::new()
            .prefix(&format!("{what}-"))
            .tempdir_in(&tmp)
            .map_err(io_err("creating a work dir in", &tmp))
    }

    fn check_new_name(kind: AssetKind, name: &str) -> Result<(), CoreError> {
        validate_name(name).map_err(|e| CoreError::InvalidArgument(format!("{kind} name: {e}")))
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
                    .verified
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
                self.verified
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(s);
            }
        }
        Ok(())
    }

    async fn commit_kernel(
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

    async fn commit_image(
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
    async fn commit_asset<T: AssetRow + Clone + Send + 'static>(
        &self,
        staged: PathBuf,
        store_root: PathBuf,
        digest: String,
        mut rec: T,
        rebase_files: impl FnOnce(&mut T, &Path),
    ) -> Result<T, CoreError> {
        let dest = store_root.join(&digest);
        let d = dest.clone();
        blocking(move || publish(&staged, &d).map_err(io_err("publishing", &d))).await?;
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
    async fn remove_unreferenced<T: AssetRow + Send + 'static>(&self, digest: &str, root: &Path) {
        let all = self.db(Store::list_assets::<T>).await.unwrap_or_default();
        let dir = root.join(digest);
        let referenced = all.iter().any(|r| r.digest() == digest);
        if !referenced {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %dir.display(), error = %e, "removing asset dir");
                }
            }
        }
    }

    pub(crate) async fn kernel_import(
        &self,
        req: KernelImportRequest,
        progress: &ProgressSink,
    ) -> Result<KernelRecord, CoreError> {
        Self::check_new_name(AssetKind::Kernel, &req.name)?;
        let _lock = self.asset_locks.lock(&format!("kernel:{}", req.name)).await;
        self.ensure_absent::<KernelRecord>(&req.name).await?;
        let work = self.work_dir("kernel-import")?;
        let staged = work.path().join("out");
        progress.stage("import", format!("reading {}", req.vmlinux));
        let (vmlinux, initrd) = {
            let staged = staged.clone();
            let req = req.clone();
            blocking(move || {
                std::fs::create_dir_all(&staged).map_err(io_err("creating", &staged))?;
                let src = PathBuf::from(&req.vmlinux);
                let image = std::fs::read(&src).map_err(|e| {
                    CoreError::InvalidArgument(format!(
                        "cannot read --vmlinux {}: {e}",
                        src.display()
                    ))
                })?;
                let elf = banger_assets::bzimage::extract_vmlinux(&image)
                    .map_err(|e| CoreError::InvalidArgument(format!("{}: {e}", src.display())))?;
                let v = staged.join("vmlinux");
                std::fs::write(&v, &elf).map_err(io_err("writing", &v))?;
                let vmlinux = file_record(&v)?;
                let initrd = match &req.initrd {
                    None => None,
                    Some(p) => {
                        let src = PathBuf::from(p);
                        if !src.is_file() {
                            return Err(CoreError::InvalidArgument(format!(
                                "--initrd {} is not a file",
                                src.display()
                            )));
                        }
                        let dst = staged.join("initrd.img");
                        reflink_copy::reflink_or_copy(&src, &dst)
                            .map_err(io_err("copying", &src))?;
                        Some(file_record(&dst)?)
                    }
                };
                Ok((vmlinux, initrd))
            })
            .await?
        };
        progress.stage("store", "publishing");
        let rec = new_kernel(KernelParts {
            name: req.name.clone(),
            version: None,
            source: "import".into(),
            vmlinux,
            initrd,
            modules: Vec::new(),
            cmdline: req.cmdline.unwrap_or_default(),
        });
        self.commit_kernel(staged, rec).await
    }

    pub(crate) async fn kernel_add(
        &self,
        req: KernelAddRequest,
        progress: &ProgressSink,
    ) -> Result<KernelRecord, CoreError> {
        Self::check_new_name(AssetKind::Kernel, &req.name)?;
        let _lock = self.asset_locks.lock(&format!("kernel:{}", req.name)).await;
        self.ensure_absent::<KernelRecord>(&req.name).await?;
        let cfg = self.config().clone();
        let init = cfg.guest.init.clone();
        if !init.is_file() {
            return Err(CoreError::Unavailable(format!(
                "guest init {} is missing: run scripts/setup.sh (or scripts/build-guest.sh and set guest.init / BANGER_GUEST_INIT)",
                init.display()
            )));
        }
        let work = self.work_dir("kernel-add")?;
        let apt = AptGet {
            bin: cfg.tools.apt_get.clone(),
        };
        let tree = work.path().join("tree");
        let mut package = req
            .package
            .clone()
            .unwrap_or_else(|| cfg.assets.kernel_package.clone());
        let mut source = String::new();
        // A metapackage (linux-image-cloud-amd64) depends on the real one.
        for _ in 0..3 {
            progress.emit(Progress::stage(
                "download",
                format!("apt-get download {package}"),
            ));
            let dl = work.path().join(format!("dl-{package}"));
            std::fs::create_dir_all(&dl).map_err(io_err("creating", &dl))?;
            apt.download(&package, &dl)
                .run(|l| progress.stage("download", l.to_owned()))
                .await?;
            let deb_path = std::fs::read_dir(&dl)
                .map_err(io_err("reading", &dl))?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
                .ok_or_else(|| {
                    CoreError::AssetBuild(format!("apt-get download {package} produced no .deb"))
                })?;
            progress.stage("extract", format!("unpacking {}", deb_path.display()));
            let t = tree.clone();
            let (control, has_kernel) = blocking(move || {
                let deb =
                    Deb::open(&deb_path).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
                let control = deb
                    .control()
                    .map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
                deb.extract(&t, |p| {
                    p.starts_with("boot")
                        || p.starts_with("lib/modules")
                        || p.starts_with("usr/lib/modules")
                })
                .map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
                let has_kernel = find_kernel(&t).is_ok();
                Ok((control, has_kernel))
            })
            .await?;
            source = format!(
                "debian:{}={}",
                control.get("Package").unwrap_or(&package),
                control.get("Version").unwrap_or("?")
            );
            if has_kernel {
                break;
            }
            match control
                .depends()
                .into_iter()
                .find(|d| d.starts_with("linux-image-"))
            {
                Some(next) => package = next,
                None => {
                    return Err(CoreError::InvalidArgument(format!(
                        "package {package} contains no kernel and depends on no linux-image-* package"
                    )));
                }
            }
        }
        progress.stage(
            "initramfs",
            "extracting vmlinux, resolving modules, writing the initramfs",
        );
        let staged = work.path().join("out");
        let (vmlinux, initrd, built) = {
            let (tree, staged) = (tree.clone(), staged.clone());
            blocking(move || {
                let built = build_from_tree(&tree, &init)?;
                std::fs::create_dir_all(&staged).map_err(io_err("creating", &staged))?;
                let v = staged.join("vmlinux");
                std::fs::write(&v, &built.vmlinux).map_err(io_err("writing", &v))?;
                let vmlinux = file_record(&v)?;
                let initrd = match &built.initrd {
                    Some(data) => {
                        let p = staged.join("initrd.img");
                        std::fs::write(&p, data).map_err(io_err("writing", &p))?;
                        Some(file_record(&p)?)
                    }
                    None => None,
                };
                Ok((vmlinux, initrd, (built.version, built.modules)))
            })
            .await?
        };
        progress.stage("store", "publishing");
        let rec = new_kernel(KernelParts {
            name: req.name.clone(),
            version: Some(built.0),
            source,
            vmlinux,
            initrd,
            modules: built.1,
            cmdline: String::new(),
        });
        let rec = self.commit_kernel(staged, rec).await?;
        tracing::info!(name = %rec.name, source = %rec.source, "kernel added");
        Ok(rec)
    }

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
        let _lock = self.asset_locks.lock(&format!("image:{}", req.name)).await;
        self.ensure_absent::<ImageRecord>(&req.name).await?;
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
        let _lock = self.asset_locks.lock(&format!("image:{}", req.name)).await;
        self.ensure_absent::<ImageRecord>(&req.name).await?;
        let cfg = self.config().clone();
        let work = self.work_dir("image-import")?;
        let staged = work.path().join("out");
        std::fs::create_dir_all(&staged).map_err(io_err("creating", &staged))?;
        let root_img = staged.join("rootfs.ext4");
        let mut seed: Option<PathBuf> = None;
        if is_dir {
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
        } else {
            progress.stage("rootfs", format!("copying {}", src.display()));
            let (s, d) = (src.clone(), root_img.clone());
            blocking(move || {
                reflink_copy::reflink_or_copy(&s, &d)
                    .map(drop)
                    .map_err(io_err("copying", &s))
            })
            .await?;
        }
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
        );
        self.commit_image(staged, rec).await
    }

    /// Removes an asset; refuses while VMs use it unless `force`.
    pub(crate) async fn asset_rm<T: AssetRow + Clone + Send + 'static>(
        &self,
        name: &str,
        force: bool,
    ) -> Result<T, CoreError> {
        let kind = T::KIND;
        let _lock = self.asset_locks.lock(&format!("{kind}:{name}")).await;
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

    /// Makes sure the kernel and image a VM names exist, building the
    /// `default` ones on first use when configured to.
    pub(crate) async fn ensure_assets(
        &self,
        kernel: &str,
        image: &str,
        progress: &ProgressSink,
    ) -> Result<(), CoreError> {
        let auto = self.config().assets.auto_provision;
        match self.find_asset::<KernelRecord>(kernel).await {
            Ok(_) => {}
            Err(CoreError::AssetNotFound { .. }) if kernel == DEFAULT_ASSET && auto => {
                progress.stage(
                    "provision",
                    "no default kernel yet: building it from Debian's package",
                );
                let req = KernelAddRequest {
                    name: DEFAULT_ASSET.into(),
                    package: None,
                };
                match self.kernel_add(req, progress).await {
                    Ok(_) | Err(CoreError::AssetNameTaken { .. }) => {}
                    Err(e) => {
                        return Err(first_use_failed(
                            "kernel",
                            &format!(
                                "it is fetched with apt-get from the host's apt sources: check that they are reachable, or import one with `banger kernel import {DEFAULT_ASSET} --vmlinux FILE [--initrd FILE]`"
                            ),
                            e,
                        ));
                    }
                }
            }
            Err(e) => return Err(e),
        }
        match self.find_asset::<ImageRecord>(image).await {
            Ok(_) => Ok(()),
            Err(CoreError::AssetNotFound { .. }) if image == DEFAULT_ASSET && auto => {
                progress.stage(
                    "provision",
                    "no default image yet: building it with debootstrap",
                );
                let req = ImageBuildRequest {
                    name: DEFAULT_ASSET.into(),
                    ..ImageBuildRequest::default()
                };
                match self.image_build(req, progress).await {
                    Ok(_) | Err(CoreError::AssetNameTaken { .. }) => Ok(()),
                    Err(e) => Err(first_use_failed(
                        "image",
                        &format!(
                            "it is built with debootstrap from {}: check that it is reachable (assets.debian_mirror), or import one with `banger image import {DEFAULT_ASSET} --rootfs FILE.ext4`",
                            self.config().assets.debian_mirror
                        ),
                        e,
                    )),
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// A failed first-use build, with what the user can do about it. Refusals
/// that already say what to do (a lock, a shutdown) pass through.
fn first_use_failed(kind: &str, hint: &str, e: CoreError) -> CoreError {
    match e {
        CoreError::AssetBuild(m) | CoreError::Host(m) => CoreError::AssetBuild(format!(
            "building the default {kind} on first use failed: {m}\n{hint}"
        )),
        other => other,
    }
}

/// What a new kernel record is made of.
struct KernelParts {
    name: String,
    version: Option<String>,
    source: String,
    vmlinux: AssetFile,
    initrd: Option<AssetFile>,
    modules: Vec<String>,
    cmdline: String,
}

fn new_kernel(p: KernelParts) -> KernelRecord {
    let digest = combine_digests(&[
        Some(&p.vmlinux.sha256),
        p.initrd.as_ref().map(|i| i.sha256.as_str()),
    ]);
    KernelRecord {
        id: new_vm_id(),
        name: p.name,
        version: p.version,
        source: p.source,
        vmlinux: p.vmlinux,
        initrd: p.initrd,
        modules: p.modules,
        cmdline: p.cmdline,
        booted_on: Vec::new(),
        digest,
        created_at: Utc::now(),
    }
}

fn new_image(
    name: &str,
    source: String,
    rootfs: AssetFile,
    work_seed: Option<AssetFile>,
    packages: Vec<String>,
) -> ImageRecord {
    let digest = combine_digests(&[
        Some(&rootfs.sha256),
        work_seed.as_ref().map(|s| s.sha256.as_str()),
    ]);
    ImageRecord {
        id: new_vm_id(),
        name: name.to_owned(),
        source,
        rootfs,
        work_seed,
        packages,
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
mod tests {
    use super::*;

    #[test]
    fn prepare_rootfs_strips_identity_and_moves_root_home() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc/ssh")).expect("mkdir");
        std::fs::create_dir_all(root.join("root/.config")).expect("mkdir");
        std::fs::write(root.join("etc/ssh/ssh_host_ed25519_key"), "k").expect("w");
        std::fs::write(root.join("etc/ssh/sshd_config"), "c").expect("w");
        std::fs::write(root.join("etc/machine-id"), "abc\n").expect("w");
        std::fs::write(root.join("root/.bashrc"), "rc").expect("w");
        let seed = dir.path().join("seed");
        prepare_rootfs(&root, &seed).expect("prepare");
        assert!(!root.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert!(root.join("etc/ssh/sshd_config").exists());
        assert_eq!(std::fs::read(root.join("etc/machine-id")).expect("r"), b"");
        assert!(root.join("root").is_dir());
        assert_eq!(std::fs::read_dir(root.join("root")).expect("r").count(), 0);
        assert_eq!(std::fs::read(seed.join(".bashrc")).expect("r"), b"rc");
        assert!(seed.join(".config").is_dir());
    }

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
