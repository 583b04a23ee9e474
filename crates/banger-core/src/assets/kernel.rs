//! `kernel add` (from Debian packages) and `kernel import`.

use std::path::PathBuf;

use banger_api::asset::{AssetFile, KernelAddRequest, KernelImportRequest, KernelRecord};
use banger_api::event::Progress;
use banger_assets::deb::Deb;
use banger_assets::files::combine_digests;
use banger_assets::kernel::{build_from_tree, find_kernel};
use banger_host::tools::AptGet;
use banger_store::AssetKind;
use chrono::Utc;

use crate::core::Core;
use crate::error::{AssetBuildError, CoreError};
use crate::ids::new_id;
use crate::progress::ProgressSink;

use super::{blocking, file_record, io_err};

impl Core {
    pub(crate) async fn kernel_import(
        &self,
        req: KernelImportRequest,
        progress: &ProgressSink,
    ) -> Result<KernelRecord, CoreError> {
        let _lock = self
            .claim_name::<KernelRecord>(AssetKind::Kernel, &req.name)
            .await?;
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
                        banger_assets::initrd::pad_file(&dst).map_err(io_err("padding", &dst))?;
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
        let _lock = self
            .claim_name::<KernelRecord>(AssetKind::Kernel, &req.name)
            .await?;
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
                    CoreError::from(AssetBuildError::Refused(format!(
                        "apt-get download {package} produced no .deb"
                    )))
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
        id: new_id(),
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
