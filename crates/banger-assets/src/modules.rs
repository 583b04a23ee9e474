//! Kernel modules: which files a guest must load, in which order.
//!
//! Dependencies come from `modules.dep` when the tree has one, else from
//! each module's own `.modinfo` section (`depends=`), which is what
//! `depmod` reads to write `modules.dep` in the first place; Debian's
//! packages ship without `modules.dep` (it is made at install time).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

/// Modules loaded when present: the ACPI power button (and the input
/// events logind reads it through) turn a VMM "power down" into a clean
/// guest shutdown.
pub const OPTIONAL_GUEST_MODULES: &[&str] = &["button", "evdev"];

/// Modules a banger guest needs when the kernel has them as modules:
/// virtio-mmio transport (devices found through ACPI), block (root and work
/// disks), net (the tap), the agent's channel: vsock over virtio
/// (Firecracker) and virtio-serial, `virtio_console` (QEMU).
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "vmw_vsock_virtio_transport",
    "virtio_console",
];

#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a kernel module: {message}")]
    BadModule { path: PathBuf, message: String },
    #[error("module {name} is needed{by} but is not in {dir}")]
    Missing {
        name: String,
        by: String,
        dir: PathBuf,
    },
    #[error("modules.dep line {line}: {message}")]
    BadDep { line: usize, message: String },
}

/// The canonical name of a module: file stem, `-` folded to `_`.
pub fn module_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = file.split(".ko").next().unwrap_or(&file);
    stem.replace('-', "_")
}

/// Names in a module's `.modinfo` `depends=` entry.
pub fn modinfo_depends(data: &[u8]) -> Result<Vec<String>, String> {
    let file = object::File::parse(data).map_err(|e| e.to_string())?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or_else(|| "no .modinfo section".to_owned())?;
    let bytes = section.data().map_err(|e| e.to_string())?;
    Ok(bytes
        .split(|b| *b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect())
}

/// Parses `modules.dep`: `kernel/a.ko: kernel/b.ko kernel/c.ko`.
pub fn parse_modules_dep(
    text: &str,
) -> Result<BTreeMap<String, (String, Vec<String>)>, ModulesError> {
    let mut map = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (module, deps) = line.split_once(':').ok_or_else(|| ModulesError::BadDep {
            line: i + 1,
            message: "missing ':'".into(),
        })?;
        let module = module.trim();
        let deps: Vec<String> = deps
            .split_whitespace()
            .map(|d| module_name(Path::new(d)))
            .collect();
        map.insert(module_name(Path::new(module)), (module.to_owned(), deps));
    }
    Ok(map)
}

/// The modules of one kernel version directory (`lib/modules/<ver>`).
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    root: PathBuf,
    /// name -> (path relative to root, direct dependencies)
    modules: BTreeMap<String, (PathBuf, Vec<String>)>,
}

impl ModuleIndex {
    /// Indexes `root`, from `modules.dep` if present, else from the
    /// modules' `.modinfo`.
    pub fn load(root: &Path) -> Result<Self, ModulesError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ModulesError::Io { path, source }
        };
        let dep_file = root.join("modules.dep");
        let mut modules = BTreeMap::new();
        if dep_file.exists() {
            let text = std::fs::read_to_string(&dep_file).map_err(io(&dep_file))?;
            for (name, (rel, deps)) in parse_modules_dep(&text)? {
                modules.insert(name, (PathBuf::from(rel), deps));
            }
        } else {
            for entry in walkdir::WalkDir::new(root) {
                let entry = entry.map_err(|e| ModulesError::Io {
                    path: root.to_owned(),
                    source: e.into(),
                })?;
                let p = entry.path();
                let is_ko = p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with(".ko"));
                if !entry.file_type().is_file() || !is_ko {
                    continue;
                }
                let data = std::fs::read(p).map_err(io(p))?;
                let deps = modinfo_depends(&data).map_err(|message| ModulesError::BadModule {
                    path: p.to_owned(),
                    message,
                })?;
                let rel = p.strip_prefix(root).unwrap_or(p).to_owned();
                modules.insert(module_name(p), (rel, deps));
            }
        }
        Ok(Self {
            root: root.to_owned(),
            modules,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn contains(&self, name: &str) -> bool {
        self.modules.contains_key(&name.replace('-', "_"))
    }

    /// `wanted` and everything they depend on, each once, dependencies
    /// before their users: the order to load them in.
    pub fn resolve(&self, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>, ModulesError> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        let mut visiting = HashMap::new();
        for w in wanted {
            self.visit(
                &w.replace('-', "_"),
                "",
                &mut order,
                &mut done,
                &mut visiting,
            )?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        by: &str,
        order: &mut Vec<(String, PathBuf)>,
        done: &mut HashSet<String>,
        visiting: &mut HashMap<String, ()>,
    ) -> Result<(), ModulesError> {
        if done.contains(name) || visiting.contains_key(name) {
            // A cycle cannot be loaded by anyone; depmod refuses them too.
            // Skipping the back edge keeps the rest in a usable order.
            return Ok(());
        }
        let (path, deps) = self
            .modules
            .get(name)
            .ok_or_else(|| ModulesError::Missing {
                name: name.to_owned(),
                by: if by.is_empty() {
                    String::new()
                } else {
                    format!(" by {by}")
                },
                dir: self.root.clone(),
            })?;
        visiting.insert(name.to_owned(), ());
        for d in deps {
            self.visit(d, name, order, done, visiting)?;
        }
        visiting.remove(name);
        done.insert(name.to_owned());
        order.push((name.to_owned(), path.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vsock.ko:
kernel/drivers/net/virtio_net.ko: kernel/net/core/failover.ko kernel/drivers/net/net_failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
";

    fn index() -> ModuleIndex {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("modules.dep"), DEP).expect("write");
        ModuleIndex::load(dir.path()).expect("load")
    }

    fn pos(order: &[(String, PathBuf)], n: &str) -> usize {
        order
            .iter()
            .position(|(m, _)| m == n)
            .unwrap_or_else(|| panic!("{n} not in order"))
    }

    #[test]
    fn resolves_guest_modules_dependencies_first_each_once() {
        let order = index().resolve(GUEST_MODULES).expect("resolve");
        let names: Vec<_> = order.iter().map(|(n, _)| n.as_str()).collect();
        let unique: HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "duplicates in {names:?}");
        assert_eq!(names.len(), 11);
        for (module, dep) in [
            ("virtio_ring", "virtio"),
            ("virtio_mmio", "virtio_ring"),
            ("virtio_blk", "virtio_ring"),
            ("virtio_net", "net_failover"),
            ("net_failover", "failover"),
            (
                "vmw_vsock_virtio_transport",
                "vmw_vsock_virtio_transport_common",
            ),
            ("vmw_vsock_virtio_transport_common", "vsock"),
            ("virtio_console", "virtio_ring"),
        ] {
            assert!(
                pos(&order, dep) < pos(&order, module),
                "{dep} must precede {module}: {names:?}"
            );
        }
        assert_eq!(
            order[pos(&order, "virtio_blk")].1,
            PathBuf::from("kernel/drivers/block/virtio_blk.ko")
        );
    }

    #[test]
    fn missing_module_names_who_needed_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("modules.dep"), "kernel/a.ko: kernel/b.ko\n").expect("w");
        let idx = ModuleIndex::load(dir.path()).expect("load");
        let err = idx.resolve(&["a"]).expect_err("b missing");
        let msg = err.to_string();
        assert!(msg.contains("module b") && msg.contains("by a"), "{msg}");
        assert!(idx.resolve(&["zzz"]).is_err());
    }

    #[test]
    fn cycles_terminate() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("modules.dep"), "a.ko: b.ko\nb.ko: a.ko\n").expect("w");
        let order = ModuleIndex::load(dir.path())
            .expect("load")
            .resolve(&["a"])
            .expect("resolve");
        assert_eq!(order.len(), 2);
    }

    #[test]
    fn names_fold_hyphens_and_extensions() {
        assert_eq!(module_name(Path::new("x/nf-nat.ko")), "nf_nat");
        assert_eq!(module_name(Path::new("x/virtio_blk.ko.xz")), "virtio_blk");
        assert!(parse_modules_dep("no colon here").is_err());
    }

    /// A relocatable ELF with a `.modinfo` section, as a `.ko` is, made
    /// by the C compiler `scripts/setup.sh` installs.
    #[test]
    fn modinfo_depends_are_read_from_the_elf_section() {
        assert!(modinfo_depends(b"not an elf").is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("m.c");
        std::fs::write(
            &src,
            "__attribute__((section(\".modinfo\"), used)) static const char a[] = \"license=GPL\";\n\
             __attribute__((section(\".modinfo\"), used)) static const char b[] = \"depends=virtio,virtio_ring,net-failover\";\n",
        )
        .expect("src");
        let obj = dir.path().join("m.ko");
        let Ok(st) = std::process::Command::new("cc")
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status()
        else {
            eprintln!("skipped: no C compiler (scripts/setup.sh --deps-only installs gcc)");
            return;
        };
        assert!(st.success());
        let deps = modinfo_depends(&std::fs::read(&obj).expect("read")).expect("modinfo");
        assert_eq!(deps, ["virtio", "virtio_ring", "net_failover"]);

        // And the index built from .modinfo when there is no modules.dep.
        let idx = ModuleIndex::load(dir.path()).expect("index");
        assert!(idx.contains("m"));
        let err = idx.resolve(&["m"]).expect_err("deps are not in the tree");
        assert!(err.to_string().contains("by m"), "{err}");
    }
}
