//! Read-only inspection of the host: files, devices, binaries, filesystem
//! features.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a probe could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{tool} not found (looked for {path} on PATH)")]
    NotFound { tool: String, path: PathBuf },
    #[error("running {path} {args}: {source}")]
    Spawn {
        path: PathBuf,
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reflink probe in {dir}: {source}")]
    Reflink {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a tool printed, stdout and stderr merged (many tools print their
/// version on stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    pub success: bool,
    pub text: String,
}

impl ToolOutput {
    /// The first non-blank line, trimmed.
    pub fn first_line(&self) -> &str {
        self.text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
    }
}

/// Filesystem facts used to pick a storage strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReflinkReport {
    /// Filesystem type name (`xfs`, `btrfs`, `ext4`, ...).
    pub fs_type: String,
    /// Whether an actual `FICLONE` succeeded in the directory.
    pub supported: bool,
    /// The directory the test ran in (nearest existing ancestor).
    pub tested_in: PathBuf,
}

#[cfg(any(test, feature = "testing"))]
mod fake;
#[cfg(any(test, feature = "testing"))]
pub use fake::{FakeProbe, ProbeCall};

/// Read-only host inspection.
pub trait HostProbe: Send + Sync + std::fmt::Debug {
    /// Contents of a (small, text) file such as `/proc/cpuinfo`.
    fn read_file(&self, path: &Path) -> Option<String>;
    /// Whether a path exists (device node, sysfs entry, file).
    fn exists(&self, path: &Path) -> bool;
    /// Resolves a binary: a path containing `/` as is, a bare name on `PATH`.
    fn which(&self, bin: &Path) -> Option<PathBuf>;
    /// Runs `bin args...` and returns what it printed.
    fn run(&self, bin: &Path, args: &[&str]) -> Result<ToolOutput, ProbeError>;
    /// Tries a real reflink clone in `dir` (or its nearest existing ancestor).
    fn reflink(&self, dir: &Path) -> Result<ReflinkReport, ProbeError>;
    /// Owner, mode and kind of a path (a final symlink not followed).
    fn owner(&self, path: &Path) -> Option<crate::jail::PathOwner>;
}

/// The real host.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemProbe;

impl HostProbe for SystemProbe {
    fn read_file(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn which(&self, bin: &Path) -> Option<PathBuf> {
        if bin.components().count() > 1 || bin.is_absolute() {
            return is_executable(bin).then(|| bin.to_owned());
        }
        let path = std::env::var_os("PATH")?;
        // Root's PATH on some hosts lacks /usr/sbin, where mkfs.ext4 and
        // nft live; a doctor that misses them would send users chasing
        // packages they already have.
        let extra = std::env::split_paths("/usr/local/sbin:/usr/sbin:/sbin");
        std::env::split_paths(&path)
            .chain(extra)
            .map(|dir| dir.join(bin))
            .find(|cand| is_executable(cand))
    }

    fn run(&self, bin: &Path, args: &[&str]) -> Result<ToolOutput, ProbeError> {
        let resolved = self.which(bin).ok_or_else(|| ProbeError::NotFound {
            tool: bin.display().to_string(),
            path: bin.to_owned(),
        })?;
        let out = Command::new(&resolved)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ProbeError::Spawn {
                path: resolved.clone(),
                args: args.join(" "),
                source,
            })?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(ToolOutput {
            success: out.status.success(),
            text,
        })
    }

    fn reflink(&self, dir: &Path) -> Result<ReflinkReport, ProbeError> {
        let tested_in = dir
            .ancestors()
            .find(|p| p.is_dir())
            .unwrap_or(Path::new("/"))
            .to_owned();
        let err = |source| ProbeError::Reflink {
            dir: tested_in.clone(),
            source,
        };
        let fs_type = fs_type_name(&tested_in);
        let src = tempfile::Builder::new()
            .prefix(".banger-reflink-")
            .tempfile_in(&tested_in)
            .map_err(err)?;
        std::fs::write(src.path(), [0x5a_u8; 4096]).map_err(err)?;
        let dst = tested_in.join(format!(".banger-reflink-{}-dst", std::process::id()));
        let supported = reflink_copy::reflink(src.path(), &dst).is_ok();
        let _ = std::fs::remove_file(&dst);
        Ok(ReflinkReport {
            fs_type,
            supported,
            tested_in,
        })
    }

    fn owner(&self, path: &Path) -> Option<crate::jail::PathOwner> {
        crate::jail::PathOwner::of(path).ok()
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn fs_type_name(path: &Path) -> String {
    use nix::sys::statfs::{
        BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, OVERLAYFS_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC,
        statfs,
    };
    match statfs(path) {
        Ok(st) => {
            let t = st.filesystem_type();
            if t == XFS_SUPER_MAGIC {
                "xfs".into()
            } else if t == BTRFS_SUPER_MAGIC {
                "btrfs".into()
            } else if t == EXT4_SUPER_MAGIC {
                "ext4".into()
            } else if t == TMPFS_MAGIC {
                "tmpfs".into()
            } else if t == OVERLAYFS_SUPER_MAGIC {
                "overlayfs".into()
            } else {
                format!("fs-magic-{:#x}", t.0)
            }
        }
        Err(e) => format!("unknown ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_probe_finds_sh_and_runs_it() {
        let p = SystemProbe;
        let sh = p.which(Path::new("sh")).expect("sh on PATH");
        assert!(sh.is_absolute());
        let out = p
            .run(Path::new("sh"), &["-c", "echo out; echo err >&2"])
            .expect("run");
        assert!(out.success);
        assert_eq!(out.first_line(), "out");
        assert!(out.text.contains("err"));
        assert!(p.which(Path::new("definitely-not-a-banger-tool")).is_none());
        assert!(matches!(
            p.run(Path::new("definitely-not-a-banger-tool"), &[]),
            Err(ProbeError::NotFound { .. })
        ));
    }

    #[test]
    fn reflink_probe_cleans_up_after_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = SystemProbe
            .reflink(&dir.path().join("not/yet/created"))
            .expect("probe");
        assert_eq!(report.tested_in, dir.path());
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("readdir").count(),
            0,
            "probe left files behind"
        );
    }
}
