//! How VMs are jailed: the jailer's configuration, its arguments, where a
//! jail and its cgroups live, and the names inside a jail.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::JailError;

/// Which cgroup hierarchy the jailer places the VM in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    /// v2 when the unified hierarchy is mounted at `/sys/fs/cgroup` with
    /// the controllers the jailer sets; v1 (or hybrid) otherwise.
    pub fn detect(root: &Path) -> Self {
        match std::fs::read_to_string(root.join("cgroup.controllers")) {
            Ok(c) if c.split_whitespace().any(|x| x == "pids") => Self::V2,
            _ => Self::V1,
        }
    }
}

/// How VMs are jailed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    pub jailer: PathBuf,
    /// The jailer's `--chroot-base-dir`; on the state dir's filesystem.
    pub chroot_base: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_version: CgroupVersion,
    /// `<file>=<value>` settings, e.g. `pids.max=1024`.
    pub cgroups: Vec<String>,
    /// Where cgroup hierarchies are mounted (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
}

/// Paths as the jailed Firecracker sees them (relative to its root).
pub const KERNEL: &str = "/vmlinux";

pub const INITRD: &str = "/initrd";

pub const API_SOCKET: &str = "/run/api.sock";

pub const VSOCK: &str = "/v.sock";

pub const LOG: &str = "/firecracker.log";

pub const METRICS: &str = "/firecracker.metrics";

/// The parent cgroup the jailer uses by default: named after the binary.
const PARENT_CGROUP: &str = "firecracker";

pub fn drive(i: usize) -> String {
    format!("/drive{i}")
}

/// A VM id as banger makes them ([`crate::layout::check_vm_id`]): the
/// jailer's `--id`, a path component of the jail and cgroups.
pub fn check_vm_id(id: &str) -> Result<(), JailError> {
    crate::layout::check_vm_id(id).map_err(JailError::Name)
}

impl JailConfig {
    /// `<base>/firecracker/<id>`: how the jailer names a jail (the exec
    /// file's name, then the id).
    pub fn jail_dir(&self, vm_id: &str) -> PathBuf {
        self.chroot_base.join("firecracker").join(vm_id)
    }

    /// The VM ids with a jail dir under the chroot base (banger's own
    /// dir), sorted; entries of any other shape are not banger's.
    pub fn jailed_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.chroot_base.join("firecracker"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| check_vm_id(id).is_ok())
            .collect();
        ids.sort();
        ids
    }

    /// The chroot itself.
    pub fn root(&self, vm_id: &str) -> PathBuf {
        self.jail_dir(vm_id).join("root")
    }

    /// A path the jailed process names, on the host.
    pub fn host_path(&self, vm_id: &str, inner: &str) -> PathBuf {
        self.root(vm_id).join(inner.trim_start_matches('/'))
    }

    /// The jailer's argument list; Firecracker's own follow `--`.
    pub fn args(&self, firecracker: &Path, vm_id: &str) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--id".into(),
            vm_id.into(),
            "--exec-file".into(),
            firecracker.into(),
            "--uid".into(),
            self.uid.to_string().into(),
            "--gid".into(),
            self.gid.to_string().into(),
            "--chroot-base-dir".into(),
            self.chroot_base.clone().into(),
            "--cgroup-version".into(),
            match self.cgroup_version {
                CgroupVersion::V1 => "1",
                CgroupVersion::V2 => "2",
            }
            .into(),
        ];
        for c in &self.cgroups {
            a.push("--cgroup".into());
            a.push(c.into());
        }
        // No --new-pid-ns: the VMM would be PID 1 of its namespace, ignore
        // SIGTERM, and its pid here would be the jailer's, not its own.
        // No --daemonize: stdio carries the serial console to our log.
        a.extend(["--".into(), "--api-sock".into(), API_SOCKET.into()]);
        a
    }

    /// The cgroup directories the jailer made for `vm_id`.
    pub fn cgroup_dirs(&self, vm_id: &str) -> Vec<PathBuf> {
        match self.cgroup_version {
            CgroupVersion::V2 => vec![self.cgroup_root.join(PARENT_CGROUP).join(vm_id)],
            CgroupVersion::V1 => std::fs::read_dir(&self.cgroup_root)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join(PARENT_CGROUP).join(vm_id))
                .filter(|p| p.is_dir())
                .collect(),
        }
    }
}

/// Why the jailer's user cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("jailer user {user:?} is root; VMMs must run unprivileged")]
    Root { user: String },
    #[error(
        "no user {user:?} for the jailer: create it (scripts/setup.sh does: useradd --system banger-vmm) or set jailer.user"
    )]
    Missing { user: String },
    #[error("looking up jailer user {user:?}: {source}")]
    Lookup {
        user: String,
        #[source]
        source: nix::errno::Errno,
    },
}

/// `uid:gid`, or a user name looked up in the host's user database.
pub fn resolve_user(user: &str) -> Result<(u32, u32), UserError> {
    if let Some((u, g)) = user.split_once(':') {
        if let (Ok(u), Ok(g)) = (u.parse(), g.parse()) {
            return Ok((u, g));
        }
    }
    let user_s = || user.to_owned();
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) if u.uid.is_root() => Err(UserError::Root { user: user_s() }),
        Ok(Some(u)) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        Ok(None) => Err(UserError::Missing { user: user_s() }),
        Err(source) => Err(UserError::Lookup {
            user: user_s(),
            source,
        }),
    }
}

/// Removes the VM's cgroups (empty once its process is gone).
pub fn remove_cgroups(cfg: &JailConfig, vm_id: &str) -> Result<(), JailError> {
    let mut failures = Vec::new();
    for d in cfg.cgroup_dirs(vm_id) {
        if let Err(e) = std::fs::remove_dir(&d) {
            if e.kind() != std::io::ErrorKind::NotFound {
                failures.push((d, e));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(JailError::Cgroups {
            root: cfg.cgroup_root.clone(),
            failures,
        })
    }
}
