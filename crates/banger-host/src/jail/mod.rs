//! Firecracker under its jailer: a per-VM chroot, a dedicated uid/gid,
//! its own cgroup.
//!
//! Staging the chroot, spawning the jailer and removing the jail are the
//! privileged parts; they go through [`JailOps`]. [`LocalJail`] does them
//! in this process (a root `bangerd`, or `banger-helper` on behalf of an
//! unprivileged one), [`FakeJail`] records them for unit tests, and the
//! helper's client forwards them over its socket.
//!
//! Staging: kernel, initrd and the VM's disks are hard-linked in (the
//! chroot base is on the state dir's filesystem, so nothing is copied;
//! disks are chowned to the jail's uid, the kernel stays world-readable),
//! log and metrics files are created for the uid. The jailer then copies
//! the static firecracker binary in, makes `/dev/kvm`, `/dev/net/tun` and
//! friends, joins the cgroup, `pivot_root`s and drops to the uid. Sockets
//! live inside the chroot; the daemon reaches them through short symlinks
//! in its runtime dir (`sun_path` is 108 bytes, chroot paths are long).
//!
//! Acting for an unprivileged daemon ([`Confinement`]), every file is
//! opened beneath the state dir with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` and must belong to the daemon's uid, and the
//! chroot base must be a directory only root can change: the daemon owns
//! its state dir and could otherwise swap a path for a symlink between a
//! check and a root `link`/`chown`.
//!
//! A jailed process's `/proc/<pid>/root` reads `/` and its command line
//! names chroot-relative paths, so the jail root is recorded by the daemon
//! and the process is identified by `--id <vm id>` in its command line.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

mod config;
mod confine;
#[cfg(any(test, feature = "testing"))]
mod fake;
mod local;
mod remove;

pub use config::{
    API_SOCKET, CgroupVersion, INITRD, JailConfig, KERNEL, LOG, METRICS, UserError, VSOCK,
    check_vm_id, drive, remove_cgroups, resolve_user,
};
pub use confine::{
    Confinement, PathOwner, check_trusted_dir, ensure_chroot_base, lexically_beneath,
    untrusted_ancestor,
};
#[cfg(any(test, feature = "testing"))]
pub use fake::{FakeJail, JailCall};
pub use local::LocalJail;
pub use remove::remove_tree;

/// Why a jail operation failed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("jail {path}: {source} (opened beneath the state dir, symlinks refused)")]
    Beneath {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "jail {dst}: cannot hard-link {what}: the jail's chroot base must be on the same filesystem as the state dir"
    )]
    CrossDevice { what: PathBuf, dst: PathBuf },
    #[error("jail {dst}: linking {what}: {source}")]
    Link {
        what: PathBuf,
        dst: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "jail {path}: a mount inside the jail; refusing to delete through it (unmount it first)"
    )]
    MountInside { path: PathBuf },
    #[error("jail {root}: {}", cgroup_failures(.failures))]
    Cgroups {
        root: PathBuf,
        failures: Vec<(PathBuf, std::io::Error)>,
    },
    #[error("refused: {0}")]
    Refused(String),
    #[error("refused: {0}")]
    Name(#[source] crate::layout::LayoutError),
    #[error("starting {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {bin}: exited at once")]
    ExitedAtOnce { bin: PathBuf },
    #[error("via banger-helper: {0}")]
    Helper(#[source] crate::remote::HelperError),
    #[error("a blocking jail task: {0}")]
    Task(#[source] tokio::task::JoinError),
}

fn io_err(path: &Path, e: impl Into<std::io::Error>) -> JailError {
    JailError::Io {
        path: path.to_owned(),
        source: e.into(),
    }
}

fn cgroup_failures(failures: &[(PathBuf, std::io::Error)]) -> String {
    let each: Vec<String> = failures
        .iter()
        .map(|(d, e)| format!("{}: {e}", d.display()))
        .collect();
    each.join("; ")
}

/// What a VM's chroot is staged with: host paths, in the VM's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailStage {
    pub vm_id: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// `/drive0`, `/drive1`, ... inside the jail.
    pub disks: Vec<PathBuf>,
}

/// The privileged half of jailing.
#[async_trait]
pub trait JailOps: Send + Sync + Debug {
    /// Builds the chroot for `stage.vm_id` afresh; returns the jail dir.
    async fn stage(&self, stage: &JailStage) -> Result<PathBuf, JailError>;
    /// Runs the jailer for `vm_id`, its stdout and stderr appended to
    /// `console`, in a process group of its own (it outlives its
    /// starter); returns the pid, which becomes Firecracker's at `exec`.
    async fn spawn(&self, vm_id: &str, console: &Path) -> Result<u32, JailError>;
    /// Removes the jail (`jail_dir`, as recorded at launch, or where the
    /// configuration puts it) and its cgroups, once the process is gone.
    async fn release(&self, vm_id: &str, jail_dir: Option<&Path>) -> Result<(), JailError>;
}

/// A jail as a VMM driver uses it: where things are, and who does it.
#[derive(Debug, Clone)]
pub struct Jail {
    pub config: JailConfig,
    pub ops: Arc<dyn JailOps>,
}

#[cfg(test)]
mod tests;
