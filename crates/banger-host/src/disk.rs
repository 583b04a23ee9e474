//! VM disks: cloning images, growing ext4, writing guest files — all
//! without mounting anything.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use banger_api::doctor::StorageStrategy;

use crate::tools::{MkfsExt4, ToolError, ToolRun};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("debugfs on {image}: {message}")]
    Debugfs { image: PathBuf, message: String },
    #[error("a blocking disk task: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// An entry written into a guest filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEntry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        contents: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
}

#[cfg(any(test, feature = "testing"))]
mod fake;
mod inspect;
#[cfg(any(test, feature = "testing"))]
pub use fake::{DiskCall, FakeDisks};
pub use inspect::GuestNode;

/// Disk side effects the daemon needs.
#[async_trait]
pub trait DiskOps: Send + Sync + std::fmt::Debug {
    /// Copies `src` to `dst` the way `strategy` says (reflink or sparse).
    async fn clone_image(
        &self,
        src: &Path,
        dst: &Path,
        strategy: StorageStrategy,
    ) -> Result<(), DiskError>;
    /// Grows the file and the ext4 inside it to `size` bytes (never shrinks).
    async fn grow_ext4(&self, image: &Path, size: u64) -> Result<(), DiskError>;
    /// A new ext4 of `size` bytes, empty or holding the tree at `from`.
    async fn make_ext4(
        &self,
        image: &Path,
        size: u64,
        label: &str,
        from: Option<&Path>,
    ) -> Result<(), DiskError>;
    /// Copies directory `guest_path` out of the ext4 `image` into `dest`
    /// (no mount); returns where it landed.
    async fn extract_dir(
        &self,
        image: &Path,
        guest_path: &str,
        dest: &Path,
    ) -> Result<PathBuf, DiskError>;
    /// Writes entries into the ext4 `image` (creating parents as given).
    async fn write_entries(&self, image: &Path, entries: &[GuestEntry]) -> Result<(), DiskError>;
    /// What the absolute `guest_path` names inside the ext4 `image` (no
    /// mount); a symlink in its last component is read, not followed.
    async fn guest_node(&self, image: &Path, guest_path: &Path) -> Result<GuestNode, DiskError>;
}

/// The real host: cp, e2fsck, resize2fs, mkfs.ext4, debugfs.
#[derive(Debug, Clone)]
pub struct HostDisks {
    pub cp: PathBuf,
    pub e2fsck: PathBuf,
    pub resize2fs: PathBuf,
    pub mkfs_ext4: PathBuf,
    pub debugfs: PathBuf,
    /// Where debugfs scripts and staged files are written.
    pub scratch: PathBuf,
    /// How e2fsck, resize2fs and debugfs run on guest-written disks.
    pub sandbox: crate::sandbox::ToolSandbox,
}

impl HostDisks {
    pub fn with_defaults(mkfs_ext4: PathBuf, scratch: PathBuf) -> Self {
        Self {
            cp: "cp".into(),
            e2fsck: "e2fsck".into(),
            resize2fs: "resize2fs".into(),
            mkfs_ext4,
            debugfs: "debugfs".into(),
            scratch,
            sandbox: crate::sandbox::ToolSandbox::off(),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The debugfs script for `entries`; files are staged under `stage`.
pub fn debugfs_script(entries: &[GuestEntry], stage: &Path) -> std::io::Result<String> {
    let mut script = String::new();
    for (i, e) in entries.iter().enumerate() {
        match e {
            GuestEntry::Dir { path, mode } => {
                script.push_str(&format!("mkdir {path}\n"));
                script.push_str(&format!("sif {path} mode 0{:o}\n", 0o040_000 | mode));
            }
            GuestEntry::File {
                path,
                mode,
                contents,
            } => {
                let local = stage.join(format!("f{i}"));
                std::fs::write(&local, contents)?;
                script.push_str(&format!("rm {path}\n"));
                script.push_str(&format!("write {} {path}\n", local.display()));
                script.push_str(&format!("sif {path} mode 0{:o}\n", 0o100_000 | mode));
                script.push_str(&format!("sif {path} uid 0\nsif {path} gid 0\n"));
            }
            GuestEntry::Symlink { path, target } => {
                script.push_str(&format!("rm {path}\n"));
                script.push_str(&format!("symlink {path} {target}\n"));
            }
        }
    }
    Ok(script)
}

/// Stages `entries` and their debugfs script in a fresh directory under
/// `scratch`; the directory goes when the returned guard is dropped.
fn stage_script(
    scratch: &Path,
    entries: &[GuestEntry],
) -> Result<(tempfile::TempDir, PathBuf), DiskError> {
    std::fs::create_dir_all(scratch).map_err(io(scratch))?;
    let stage = tempfile::Builder::new()
        .prefix("debugfs-")
        .tempdir_in(scratch)
        .map_err(io(scratch))?;
    let script = debugfs_script(entries, stage.path()).map_err(io(stage.path()))?;
    let script_path = stage.path().join("script");
    std::fs::write(&script_path, script).map_err(io(&script_path))?;
    Ok((stage, script_path))
}

/// debugfs reports failures on its output and still exits 0: pick out the
/// lines that are real errors (not the expected "rm" of a missing file or
/// "mkdir" of an existing dir).
pub fn debugfs_errors(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| {
            let l = l.trim();
            // "debugfs 1.47" banner and the "debugfs: CMD" echo of each command.
            let benign = l.starts_with("debugfs")
                || l.starts_with("rm: File not found")
                || ((l.starts_with("mkdir:") || l.starts_with("ext2fs_mkdir:"))
                    && l.contains("already exists"))
                || l.starts_with("Allocated inode");
            !l.is_empty() && !benign && l.contains(':')
        })
        .map(str::to_owned)
        .collect()
}

#[async_trait]
impl DiskOps for HostDisks {
    async fn clone_image(
        &self,
        src: &Path,
        dst: &Path,
        strategy: StorageStrategy,
    ) -> Result<(), DiskError> {
        // cp refuses --sparse=always with --reflink=always; a reflink clone
        // shares extents (holes included) anyway.
        let flags: &[&str] = match strategy {
            StorageStrategy::Reflink => &["--reflink=always"],
            _ => &["--reflink=auto", "--sparse=always"],
        };
        ToolRun::new(&self.cp)
            .args(flags)
            .arg(src.as_os_str())
            .arg(dst.as_os_str())
            .run(|_| {})
            .await?;
        Ok(())
    }

    async fn grow_ext4(&self, image: &Path, size: u64) -> Result<(), DiskError> {
        let current = std::fs::metadata(image).map_err(io(image))?.len();
        if size <= current {
            return Ok(());
        }
        self.sandbox
            .run(&self.e2fsck, &[image])
            .args(["-f", "-p"])
            .arg(image.as_os_str())
            .ok_codes(&[0, 1])
            .run(|_| {})
            .await?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(image)
            .map_err(io(image))?;
        f.set_len(size).map_err(io(image))?;
        self.sandbox
            .run(&self.resize2fs, &[image])
            .arg(image.as_os_str())
            .run(|_| {})
            .await?;
        Ok(())
    }

    async fn make_ext4(
        &self,
        image: &Path,
        size: u64,
        label: &str,
        from: Option<&Path>,
    ) -> Result<(), DiskError> {
        MkfsExt4 {
            bin: self.mkfs_ext4.clone(),
        }
        .format(image, size, label, from)
        .run(|_| {})
        .await?;
        Ok(())
    }

    async fn extract_dir(
        &self,
        image: &Path,
        guest_path: &str,
        dest: &Path,
    ) -> Result<PathBuf, DiskError> {
        std::fs::create_dir_all(dest).map_err(io(dest))?;
        let out = self
            .debugfs_read(
                image,
                format!("rdump {guest_path} {}", dest.display()).into(),
                &[dest],
            )
            .await?;
        let base = Path::new(guest_path)
            .file_name()
            .map_or_else(|| dest.to_owned(), |n| dest.join(n));
        if !base.is_dir() {
            return Err(DiskError::Debugfs {
                image: image.to_owned(),
                message: format!("rdump {guest_path} produced nothing: {}", out.trim()),
            });
        }
        Ok(base)
    }

    async fn write_entries(&self, image: &Path, entries: &[GuestEntry]) -> Result<(), DiskError> {
        // Staging writes every file's contents (the guest agent is
        // megabytes): off the async workers.
        let scratch = self.scratch.clone();
        let owned = entries.to_vec();
        // `_stage` holds the staged files until debugfs has read them.
        let (_stage, script_path) =
            tokio::task::spawn_blocking(move || stage_script(&scratch, &owned))
                .await
                .map_err(DiskError::Task)??;
        // A VM that was killed (or a host that crashed) leaves the journal
        // needing recovery, and debugfs cannot write to such a filesystem:
        // let e2fsck replay it first. On a clean filesystem this is a no-op.
        self.sandbox
            .run(&self.e2fsck, &[image])
            .arg("-p")
            .arg(image.as_os_str())
            .ok_codes(&[0, 1, 2])
            .run(|_| {})
            .await?;
        let mut out = String::new();
        self.sandbox
            .run(&self.debugfs, &[image])
            .arg("-w")
            .arg("-f")
            .arg(script_path.as_os_str())
            .arg(image.as_os_str())
            .run(|l| {
                out.push_str(l);
                out.push('\n');
            })
            .await?;
        let errors = debugfs_errors(&out);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DiskError::Debugfs {
                image: image.to_owned(),
                message: errors.join("; "),
            })
        }
    }

    async fn guest_node(&self, image: &Path, guest_path: &Path) -> Result<GuestNode, DiskError> {
        self.node(image, guest_path).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_and_error_filter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = debugfs_script(
            &[
                GuestEntry::Dir {
                    path: "/etc/banger".into(),
                    mode: 0o755,
                },
                GuestEntry::File {
                    path: "/etc/hostname".into(),
                    mode: 0o644,
                    contents: b"vm1\n".to_vec(),
                },
                GuestEntry::Symlink {
                    path: "/etc/x".into(),
                    target: "/lib/y".into(),
                },
            ],
            dir.path(),
        )
        .expect("script");
        assert!(
            s.contains("mkdir /etc/banger\nsif /etc/banger mode 040755\n"),
            "{s}"
        );
        assert!(
            s.contains(&format!(
                "write {}/f1 /etc/hostname\nsif /etc/hostname mode 0100644",
                dir.path().display()
            )),
            "{s}"
        );
        assert!(s.contains("symlink /etc/x /lib/y"));
        assert_eq!(
            std::fs::read(dir.path().join("f1")).expect("staged"),
            b"vm1\n"
        );
        let out = "debugfs 1.47.0 (5-Feb-2023)\nrm: File not found by ext2_lookup while trying to resolve filename\nmkdir: Ext2 directory already exists\next2fs_mkdir: Ext2 directory already exists while creating directory \"x\"\nwrite: Could not allocate block in ext2 filesystem while writing file \"x\"\n";
        assert_eq!(debugfs_errors(out).len(), 1);
    }

    #[tokio::test]
    async fn real_tools_clone_grow_and_write_without_mounting() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Confined, as the daemon runs them (unconfined without bwrap).
        let disks = HostDisks {
            sandbox: crate::sandbox::ToolSandbox::find(Path::new("bwrap")),
            ..HostDisks::with_defaults("mkfs.ext4".into(), dir.path().join("scratch"))
        };
        let base = dir.path().join("base.ext4");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("root/.ssh")).expect("tree");
        std::fs::write(tree.join("root/.profile"), "p\n").expect("tree");
        if let Err(DiskError::Tool(ToolError::NotFound { .. })) =
            disks.make_ext4(&base, 32 << 20, "base", Some(&tree)).await
        {
            eprintln!("SKIPPED: e2fsprogs missing (scripts/setup.sh installs it)");
            return;
        }
        let clone = dir.path().join("clone.ext4");
        disks
            .clone_image(&base, &clone, StorageStrategy::SparseCopy)
            .await
            .expect("clone");
        disks.grow_ext4(&clone, 64 << 20).await.expect("grow");
        assert_eq!(std::fs::metadata(&clone).expect("stat").len(), 64 << 20);
        let entries = [
            GuestEntry::Dir {
                path: "/etc".into(),
                mode: 0o755,
            },
            GuestEntry::File {
                path: "/etc/hostname".into(),
                mode: 0o644,
                contents: b"box\n".to_vec(),
            },
            GuestEntry::File {
                path: "/etc/hostname".into(),
                mode: 0o600,
                contents: b"box2\n".to_vec(),
            },
            GuestEntry::Symlink {
                path: "/etc/link".into(),
                target: "/etc/hostname".into(),
            },
        ];
        disks.write_entries(&clone, &entries).await.expect("write");
        let cat = std::process::Command::new("debugfs")
            .args(["-R", "cat /etc/hostname"])
            .arg(&clone)
            .output()
            .expect("debugfs");
        assert_eq!(
            String::from_utf8_lossy(&cat.stdout),
            "box2\n",
            "the second write replaced the file"
        );
        let stat = std::process::Command::new("debugfs")
            .args(["-R", "stat /etc/hostname"])
            .arg(&clone)
            .output()
            .expect("stat");
        assert!(
            String::from_utf8_lossy(&stat.stdout).contains("Mode:  0600"),
            "{}",
            String::from_utf8_lossy(&stat.stdout)
        );
        // /root comes out of an image without mounting it.
        let out = disks
            .extract_dir(&base, "/root", &dir.path().join("extract"))
            .await
            .expect("rdump");
        assert_eq!(
            std::fs::read(out.join(".profile")).expect("extracted"),
            b"p\n"
        );
        assert!(out.join(".ssh").is_dir());
        // The base is untouched.
        let cat = std::process::Command::new("debugfs")
            .args(["-R", "cat /etc/hostname"])
            .arg(&base)
            .output()
            .expect("debugfs");
        assert!(String::from_utf8_lossy(&cat.stdout).is_empty());
        // A write that cannot succeed is reported.
        let err = disks
            .write_entries(
                &clone,
                &[GuestEntry::File {
                    path: "/missing/dir/f".into(),
                    mode: 0o644,
                    contents: vec![1],
                }],
            )
            .await
            .expect_err("no parent dir");
        assert!(matches!(err, DiskError::Debugfs { .. }), "{err}");
    }

    #[tokio::test]
    async fn real_tools_read_nodes_without_mounting() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Confined, as the daemon runs them (unconfined without bwrap).
        let disks = HostDisks {
            sandbox: crate::sandbox::ToolSandbox::find(Path::new("bwrap")),
            ..HostDisks::with_defaults("mkfs.ext4".into(), dir.path().join("scratch"))
        };
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/lib/systemd")).expect("tree");
        std::fs::create_dir_all(tree.join("usr/sbin")).expect("tree");
        std::fs::write(tree.join("usr/lib/systemd/systemd"), "elf").expect("tree");
        let link = |target: &str, at: &str| {
            std::os::unix::fs::symlink(target, tree.join(at)).expect("symlink");
        };
        link("usr/sbin", "sbin");
        link("../lib/systemd/systemd", "usr/sbin/init");
        // Past the 60 bytes an inode holds: stored in a block of its own.
        let long = format!("/{}/systemd", "d".repeat(80));
        link(&long, "long");
        link("/a \"quoted\" target", "odd \"name\"");
        let img = dir.path().join("root.ext4");
        if let Err(DiskError::Tool(ToolError::NotFound { .. })) =
            disks.make_ext4(&img, 32 << 20, "root", Some(&tree)).await
        {
            eprintln!("SKIPPED: e2fsprogs missing (scripts/setup.sh installs it)");
            return;
        }
        let node = |p: &'static str| {
            let (disks, img) = (&disks, &img);
            async move { disks.guest_node(img, Path::new(p)).await.expect(p) }
        };
        assert_eq!(node("/sbin").await, GuestNode::Symlink("usr/sbin".into()));
        assert_eq!(node("/usr").await, GuestNode::Dir);
        assert_eq!(
            node("/usr/sbin/init").await,
            GuestNode::Symlink("../lib/systemd/systemd".into())
        );
        assert_eq!(node("/usr/lib/systemd/systemd").await, GuestNode::File);
        assert_eq!(node("/long").await, GuestNode::Symlink(long.into()));
        assert_eq!(
            node("/odd \"name\"").await,
            GuestNode::Symlink("/a \"quoted\" target".into())
        );
        assert_eq!(node("/nope").await, GuestNode::Missing);
        assert_eq!(node("/usr/lib/systemd/systemd/x").await, GuestNode::Missing);
        let not_ext4 = dir.path().join("plain");
        std::fs::write(&not_ext4, vec![0u8; 4096]).expect("plain");
        let err = disks
            .guest_node(&not_ext4, Path::new("/sbin"))
            .await
            .expect_err("not ext4");
        assert!(matches!(err, DiskError::Debugfs { .. }), "{err}");
    }
}
