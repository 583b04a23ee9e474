//! Firecracker under its jailer: a per-VM chroot, a dedicated uid/gid,
//! its own cgroup.
//!
//! The daemon stages the chroot before the jailer runs: kernel, initrd
//! and the VM's disks are hard-linked in (same filesystem as the state
//! dir, so no copy; the disks are chowned to the jail's uid, the kernel
//! stays root's and world-readable), log and metrics files are created
//! for the uid. The jailer then copies the static firecracker binary in,
//! makes `/dev/kvm`, `/dev/net/tun` and friends, joins the cgroup,
//! `pivot_root`s and drops to the uid. Sockets live inside the chroot;
//! the daemon reaches them through short symlinks in its runtime dir
//! (`sun_path` is 108 bytes, chroot paths are long).
//!
//! A jailed process's `/proc/<pid>/root` reads `/` and its command line
//! names chroot-relative paths, so the jail root is recorded by the daemon
//! and the process is identified by `--id <vm id>` in its command line.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::VmmError;

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

impl JailConfig {
    /// `<base>/firecracker/<id>`: how the jailer names a jail (the exec
    /// file's name, then the id).
    pub fn jail_dir(&self, vm_id: &str) -> PathBuf {
        self.chroot_base.join("firecracker").join(vm_id)
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

/// `uid:gid`, or a user name looked up in the host's user database.
pub fn resolve_user(user: &str) -> Result<(u32, u32), String> {
    if let Some((u, g)) = user.split_once(':') {
        if let (Ok(u), Ok(g)) = (u.parse(), g.parse()) {
            return Ok((u, g));
        }
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) if u.uid.is_root() => Err(format!(
            "jailer user {user:?} is root; VMMs must run unprivileged"
        )),
        Ok(Some(u)) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        Ok(None) => Err(format!(
            "no user {user:?} for the jailer: create it (scripts/setup.sh does: useradd --system banger-vmm) or set jailer.user"
        )),
        Err(e) => Err(format!("looking up jailer user {user:?}: {e}")),
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> VmmError {
    VmmError::Jail {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// Hard-links `src` to `dst` (replacing `dst`); the chroot base must be on
/// the same filesystem as the state dir.
fn link_in(src: &Path, dst: &Path) -> Result<(), VmmError> {
    let _ = std::fs::remove_file(dst);
    std::fs::hard_link(src, dst).map_err(|e| {
        if e.raw_os_error() == Some(nix::libc::EXDEV) {
            io_err(
                dst,
                format!(
                    "cannot hard-link {}: the jail's chroot base must be on the same filesystem as the state dir",
                    src.display()
                ),
            )
        } else {
            io_err(dst, format!("linking {}: {e}", src.display()))
        }
    })
}

/// Stages the chroot for `vm_id`: kernel, initrd, disks (in order, as
/// `/drive0`, `/drive1`, ...), and the log and metrics files.
pub fn stage(
    cfg: &JailConfig,
    vm_id: &str,
    kernel: &Path,
    initrd: Option<&Path>,
    disks: &[PathBuf],
) -> Result<PathBuf, VmmError> {
    let dir = cfg.jail_dir(vm_id);
    // Whatever an interrupted start left: the jail is rebuilt each time.
    remove_tree(&dir)?;
    let root = cfg.root(vm_id);
    std::fs::create_dir_all(root.join("run")).map_err(|e| io_err(&root, e))?;
    let owner = Some(nix::unistd::Uid::from_raw(cfg.uid));
    let group = Some(nix::unistd::Gid::from_raw(cfg.gid));
    let chown = |p: &Path| nix::unistd::chown(p, owner, group).map_err(|e| io_err(p, e));
    chown(&root.join("run"))?;
    link_in(kernel, &cfg.host_path(vm_id, KERNEL))?;
    if let Some(i) = initrd {
        link_in(i, &cfg.host_path(vm_id, INITRD))?;
    }
    for (i, d) in disks.iter().enumerate() {
        let inner = cfg.host_path(vm_id, &drive(i));
        link_in(d, &inner)?;
        // The same inode as the VM's disk: the jail's uid may write it.
        chown(&inner)?;
    }
    for f in [LOG, METRICS] {
        let p = cfg.host_path(vm_id, f);
        std::fs::write(&p, b"").map_err(|e| io_err(&p, e))?;
        chown(&p)?;
    }
    Ok(root)
}

/// Removes a jail tree without ever leaving its filesystem: a directory
/// on another device (a mount inside the chroot) is refused, not entered,
/// and symlinks are removed, never followed. Missing is fine.
pub fn remove_tree(dir: &Path) -> Result<(), VmmError> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(dir, e)),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(dir).map_err(|e| io_err(dir, e));
    }
    remove_dir_on(dir, meta.dev())
}

fn remove_dir_on(dir: &Path, dev: u64) -> Result<(), VmmError> {
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| io_err(&path, e))?;
        if meta.is_dir() {
            if meta.dev() != dev {
                return Err(io_err(
                    &path,
                    "a mount inside the jail; refusing to delete through it (unmount it first)",
                ));
            }
            remove_dir_on(&path, dev)?;
        } else {
            std::fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
        }
    }
    std::fs::remove_dir(dir).map_err(|e| io_err(dir, e))
}

/// Removes the VM's cgroups (empty once its process is gone).
pub fn remove_cgroups(cfg: &JailConfig, vm_id: &str) -> Result<(), VmmError> {
    let mut errors = Vec::new();
    for d in cfg.cgroup_dirs(vm_id) {
        if let Err(e) = std::fs::remove_dir(&d) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(format!("{}: {e}", d.display()));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(io_err(&cfg.cgroup_root, errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(base: &Path) -> JailConfig {
        JailConfig {
            jailer: "jailer".into(),
            chroot_base: base.into(),
            uid: 64123,
            gid: 64123,
            cgroup_version: CgroupVersion::V1,
            cgroups: vec!["pids.max=512".into()],
            cgroup_root: "/sys/fs/cgroup".into(),
        }
    }

    #[test]
    fn jailer_arguments_name_the_vm_uid_and_cgroups_and_no_pid_namespace() {
        let c = cfg(Path::new("/var/lib/banger/jail"));
        let args: Vec<String> = c
            .args(Path::new("/usr/local/bin/firecracker"), "0123456789abcdef")
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert_eq!(
            joined,
            "--id 0123456789abcdef --exec-file /usr/local/bin/firecracker --uid 64123 --gid 64123 \
             --chroot-base-dir /var/lib/banger/jail --cgroup-version 1 --cgroup pids.max=512 \
             -- --api-sock /run/api.sock"
        );
        assert!(!joined.contains("--new-pid-ns") && !joined.contains("--daemonize"));
        assert_eq!(
            c.host_path("0123456789abcdef", VSOCK),
            Path::new("/var/lib/banger/jail/firecracker/0123456789abcdef/root/v.sock")
        );
    }

    #[test]
    fn cgroup_v2_is_detected_by_its_controllers() {
        let d = tempfile::tempdir().expect("tmp");
        assert_eq!(CgroupVersion::detect(d.path()), CgroupVersion::V1);
        std::fs::write(
            d.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .expect("write");
        assert_eq!(CgroupVersion::detect(d.path()), CgroupVersion::V2);
    }

    #[test]
    fn staging_links_files_in_and_removal_takes_the_whole_jail() {
        let d = tempfile::tempdir().expect("tmp");
        let kernel = d.path().join("vmlinux");
        let disk = d.path().join("root.ext4");
        std::fs::write(&kernel, b"k").expect("k");
        std::fs::write(&disk, b"d").expect("d");
        let mut c = cfg(&d.path().join("jail"));
        // Unprivileged runs cannot chown to another uid: stage as ourselves.
        c.uid = nix::unistd::geteuid().as_raw();
        c.gid = nix::unistd::getegid().as_raw();
        let root = stage(&c, "vm1", &kernel, None, std::slice::from_ref(&disk)).expect("stage");
        assert_eq!(root, d.path().join("jail/firecracker/vm1/root"));
        let inner = root.join("drive0");
        assert_eq!(
            std::fs::metadata(&inner).expect("drive").ino(),
            std::fs::metadata(&disk).expect("disk").ino(),
            "hard link, not a copy"
        );
        assert!(root.join("vmlinux").is_file() && root.join("firecracker.log").is_file());
        // A symlink out of the jail is removed, never followed.
        let outside = d.path().join("precious");
        std::fs::write(&outside, b"keep").expect("precious");
        std::os::unix::fs::symlink(&outside, root.join("escape")).expect("symlink");
        remove_tree(&c.jail_dir("vm1")).expect("remove");
        assert!(!c.jail_dir("vm1").exists());
        assert_eq!(std::fs::read(&outside).expect("kept"), b"keep");
        assert_eq!(std::fs::read(&disk).expect("disk kept"), b"d");
        remove_tree(&c.jail_dir("vm1")).expect("idempotent");
    }
}
