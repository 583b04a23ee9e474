//! Making a bootable kernel out of a distribution kernel package tree.
//!
//! Input: a directory holding `boot/vmlinuz-<version>` and
//! `lib/modules/<version>/` (as extracted from a `linux-image-*` `.deb`).
//! Output: the ELF `vmlinux` both VMMs boot, and, when the guest drivers
//! are modules, an initramfs holding them and `banger-init`.

use std::path::{Path, PathBuf};

use crate::bzimage::{BzImageError, extract_vmlinux};
use crate::cpio::CpioWriter;
use crate::modules::{GUEST_MODULES, ModuleIndex, ModulesError, OPTIONAL_GUEST_MODULES};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} holds no boot/vmlinuz-*: is this a linux-image package?")]
    NoKernel(PathBuf),
    #[error("{dir} holds several kernels ({found}); pick one package")]
    SeveralKernels { dir: PathBuf, found: String },
    #[error("{path}: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: BzImageError,
    },
    #[error(transparent)]
    Modules(#[from] ModulesError),
    #[error(
        "kernel {version} has neither a module nor a built-in driver for {module}; banger guests need it"
    )]
    MissingDriver { version: String, module: String },
    #[error(
        "{path} is not a static executable (it asks for an ELF interpreter); build it with scripts/build-guest.sh"
    )]
    InitNotStatic { path: PathBuf },
    #[error("{path} is not an x86-64 executable")]
    InitNotElf { path: PathBuf },
}

/// A kernel ready to store.
#[derive(Debug, Clone)]
pub struct BuiltKernel {
    pub version: String,
    pub vmlinux: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
    /// Modules in the initramfs, in load order.
    pub modules: Vec<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Checks that `data` is a static x86-64 ELF (no `PT_INTERP`): the
/// initramfs has no dynamic loader.
pub fn check_static_elf(path: &Path, data: &[u8]) -> Result<(), KernelError> {
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    };
    let not_elf = || KernelError::InitNotElf {
        path: path.to_owned(),
    };
    if !data.starts_with(b"\x7fELF") || data.get(4) != Some(&2) || u16_at(18) != Some(62) {
        return Err(not_elf());
    }
    let phoff = u64_at(32).ok_or_else(not_elf)? as usize;
    let phentsize = usize::from(u16_at(54).ok_or_else(not_elf)?);
    let phnum = usize::from(u16_at(56).ok_or_else(not_elf)?);
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let p_type = u32_at(phoff + i * phentsize).ok_or_else(not_elf)?;
        if p_type == PT_INTERP {
            return Err(KernelError::InitNotStatic {
                path: path.to_owned(),
            });
        }
    }
    Ok(())
}

/// Finds the single kernel in an extracted package tree.
pub fn find_kernel(tree: &Path) -> Result<(String, PathBuf), KernelError> {
    let boot = tree.join("boot");
    let mut found = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&boot) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_prefix("vmlinuz-") {
                found.push((v.to_owned(), e.path()));
            }
        }
    }
    match found.len() {
        0 => Err(KernelError::NoKernel(tree.to_owned())),
        1 => Ok(found.remove(0)),
        _ => Err(KernelError::SeveralKernels {
            dir: tree.to_owned(),
            found: found
                .iter()
                .map(|(v, _)| v.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Module names the kernel has built in (`modules.builtin`; a package
/// without the file builds nothing in). An unreadable file is an error:
/// read as empty it would turn a built-in driver into a missing one.
fn builtin_modules(modules_dir: &Path) -> Result<Vec<String>, KernelError> {
    let path = modules_dir.join("modules.builtin");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(KernelError::Io { path, source }),
    };
    Ok(text
        .lines()
        .map(|l| crate::modules::module_name(Path::new(l.trim())))
        .collect())
}

/// Builds the kernel from an extracted package tree.
pub fn build_from_tree(tree: &Path, init_path: &Path) -> Result<BuiltKernel, KernelError> {
    let (version, vmlinuz) = find_kernel(tree)?;
    let image = std::fs::read(&vmlinuz).map_err(io(&vmlinuz))?;
    let vmlinux = extract_vmlinux(&image).map_err(|source| KernelError::Image {
        path: vmlinuz.clone(),
        source,
    })?;
    let modules_dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| tree.join(d).join(&version))
        .find(|p| p.is_dir());
    let Some(modules_dir) = modules_dir else {
        // No modules at all: everything the guest needs must be built in.
        return Ok(BuiltKernel {
            version,
            vmlinux,
            initrd: None,
            modules: Vec::new(),
        });
    };
    let index = ModuleIndex::load(&modules_dir)?;
    let builtin = builtin_modules(&modules_dir)?;
    let mut wanted = Vec::new();
    for m in GUEST_MODULES {
        if index.contains(m) {
            wanted.push(*m);
        } else if !builtin.iter().any(|b| b == m) {
            return Err(KernelError::MissingDriver {
                version,
                module: (*m).to_owned(),
            });
        }
    }
    wanted.extend(OPTIONAL_GUEST_MODULES.iter().filter(|m| index.contains(m)));
    if wanted.is_empty() {
        return Ok(BuiltKernel {
            version,
            vmlinux,
            initrd: None,
            modules: Vec::new(),
        });
    }
    let order = index.resolve(&wanted)?;
    let init = std::fs::read(init_path).map_err(io(init_path))?;
    check_static_elf(init_path, &init)?;
    let initrd = build_initramfs(&init, &modules_dir, &version, &order)?;
    Ok(BuiltKernel {
        version,
        vmlinux,
        initrd: Some(initrd),
        modules: order.into_iter().map(|(n, _)| n).collect(),
    })
}

/// The initramfs: `/init`, the modules under `/lib/modules/<version>/`,
/// their load order in `/etc/banger/modules.order`, and `/dev/console`.
pub fn build_initramfs(
    init: &[u8],
    modules_dir: &Path,
    version: &str,
    order: &[(String, PathBuf)],
) -> Result<Vec<u8>, KernelError> {
    let cpio_err = |source| KernelError::Io {
        path: PathBuf::from("initramfs"),
        source,
    };
    let mut w = CpioWriter::new(Vec::new());
    for d in [
        "dev",
        "proc",
        "sys",
        "newroot",
        "etc",
        "etc/banger",
        "lib",
        "lib/modules",
    ] {
        w.dir(d, 0o755).map_err(cpio_err)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1).map_err(cpio_err)?;
    let base = format!("lib/modules/{version}");
    let mut dirs: Vec<String> = vec![base.clone()];
    let mut list = String::new();
    for (_, rel) in order {
        let rel_str = rel.to_string_lossy();
        let mut acc = base.clone();
        if let Some(parent) = rel.parent() {
            for comp in parent.components() {
                acc = format!("{acc}/{}", comp.as_os_str().to_string_lossy());
                if !dirs.contains(&acc) {
                    dirs.push(acc.clone());
                }
            }
        }
        list.push_str(&rel_str);
        list.push('\n');
    }
    for d in &dirs {
        w.dir(d, 0o755).map_err(cpio_err)?;
    }
    for (_, rel) in order {
        let src = modules_dir.join(rel);
        let data = std::fs::read(&src).map_err(io(&src))?;
        w.file(&format!("{base}/{}", rel.to_string_lossy()), 0o644, &data)
            .map_err(cpio_err)?;
    }
    w.file("etc/banger/modules.order", 0o644, list.as_bytes())
        .map_err(cpio_err)?;
    w.file("init", 0o755, init).map_err(cpio_err)?;
    let mut archive = w.finish().map_err(cpio_err)?;
    crate::initrd::pad(&mut archive);
    Ok(archive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bzimage::tests::fake_elf;

    fn tree_with_modules(dir: &Path, dep: &str, builtin: &str) {
        let m = dir.join("lib/modules/6.1.0-test");
        std::fs::create_dir_all(m.join("kernel/drivers/virtio")).expect("mkdir");
        std::fs::write(dir.join("boot").join("vmlinuz-6.1.0-test"), fake_elf(8192))
            .expect("kernel");
        std::fs::write(m.join("modules.dep"), dep).expect("dep");
        std::fs::write(m.join("modules.builtin"), builtin).expect("builtin");
        for line in dep.lines() {
            let (ko, _) = line.split_once(':').expect("colon");
            let p = m.join(ko);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, format!("module {ko}")).expect("ko");
        }
    }

    fn static_init(dir: &Path) -> PathBuf {
        let p = dir.join("init-bin");
        std::fs::write(&p, fake_elf(4096)).expect("init");
        p
    }

    #[test]
    fn builds_an_initramfs_with_modules_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("boot")).expect("boot");
        tree_with_modules(
            dir.path(),
            "kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko\n\
             kernel/drivers/virtio/virtio.ko:\n\
             kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko\n",
            "kernel/drivers/net/virtio_net.ko\nkernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko\nkernel/drivers/char/virtio_console.ko\n",
        );
        let k = build_from_tree(dir.path(), &static_init(dir.path())).expect("build");
        assert_eq!(k.version, "6.1.0-test");
        assert_eq!(k.modules, ["virtio", "virtio_mmio", "virtio_blk"]);
        let initrd = k.initrd.expect("initrd");
        let text = String::from_utf8_lossy(&initrd);
        assert!(text.contains("kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_mmio.ko\nkernel/drivers/block/virtio_blk.ko\n"), "order file");
        assert!(text.contains("lib/modules/6.1.0-test/kernel/drivers/block/virtio_blk.ko"));
    }

    #[test]
    fn all_builtin_means_no_initramfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("boot")).expect("boot");
        std::fs::write(dir.path().join("boot/vmlinuz-6.1-fc"), fake_elf(4096)).expect("k");
        let k = build_from_tree(dir.path(), Path::new("/nonexistent")).expect("build");
        assert!(k.initrd.is_none());
    }

    #[test]
    fn missing_driver_and_bad_init_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("boot")).expect("boot");
        tree_with_modules(dir.path(), "kernel/drivers/virtio/virtio.ko:\n", "");
        let err =
            build_from_tree(dir.path(), &static_init(dir.path())).expect_err("no virtio_mmio");
        assert!(
            matches!(err, KernelError::MissingDriver { ref module, .. } if module == "virtio_mmio"),
            "{err}"
        );

        let sh = std::fs::read("/bin/sh").expect("sh");
        let err = check_static_elf(Path::new("/bin/sh"), &sh).expect_err("dynamic");
        assert!(matches!(err, KernelError::InitNotStatic { .. }), "{err}");
        assert!(matches!(
            check_static_elf(Path::new("x"), b"#!/bin/sh"),
            Err(KernelError::InitNotElf { .. })
        ));

        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            build_from_tree(empty.path(), Path::new("x")),
            Err(KernelError::NoKernel(_))
        ));
    }
}
