//! Jailing from this process (which must be root): staging the chroot,
//! spawning the jailer, removing the jail.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::config::{INITRD, KERNEL, LOG, METRICS, check_vm_id, drive, remove_cgroups};
use super::confine::{Confinement, beneath, ensure_chroot_base};
use super::remove::remove_tree;
use super::{JailConfig, JailError, JailOps, JailStage, io_err};

/// Jails VMs from this process (which must be root).
#[derive(Debug, Clone)]
pub struct LocalJail {
    pub config: JailConfig,
    pub firecracker: PathBuf,
    pub confine: Option<Confinement>,
}

/// Hard-links the open file `src` (any path, already opened safely) to
/// `dst`, replacing `dst`.
fn link_fd(src: &OwnedFd, what: &Path, dst: &Path) -> Result<(), JailError> {
    let _ = std::fs::remove_file(dst);
    // linkat(AT_EMPTY_PATH) would need CAP_DAC_READ_SEARCH; the magic
    // link works for any owner of the descriptor.
    let proc = PathBuf::from(format!("/proc/self/fd/{}", src.as_raw_fd()));
    nix::unistd::linkat(
        nix::fcntl::AT_FDCWD,
        &proc,
        nix::fcntl::AT_FDCWD,
        dst,
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    )
    .map_err(|e| {
        if e == nix::errno::Errno::EXDEV {
            JailError::CrossDevice {
                what: what.to_owned(),
                dst: dst.to_owned(),
            }
        } else {
            JailError::Link {
                what: what.to_owned(),
                dst: dst.to_owned(),
                source: e.into(),
            }
        }
    })
}

impl LocalJail {
    fn open_source(&self, path: &Path) -> Result<OwnedFd, JailError> {
        match &self.confine {
            Some(c) => c.open(path, OFlag::O_PATH, false),
            None => nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| io_err(path, e)),
        }
    }

    pub(super) fn stage_now(&self, s: &JailStage) -> Result<PathBuf, JailError> {
        check_vm_id(&s.vm_id)?;
        let cfg = &self.config;
        if let Some(c) = &self.confine {
            for d in &s.disks {
                // A VM's disks are its own: never another VM's or an image.
                beneath(&crate::layout::vms_dir_in(&c.state_dir).join(&s.vm_id), d)?;
            }
            ensure_chroot_base(&cfg.chroot_base)?;
        }
        // Every source is open before anything is written.
        let kernel = self.open_source(&s.kernel)?;
        let initrd = s
            .initrd
            .as_deref()
            .map(|i| self.open_source(i))
            .transpose()?;
        let disks = s
            .disks
            .iter()
            .map(|d| self.open_source(d))
            .collect::<Result<Vec<_>, _>>()?;

        let dir = cfg.jail_dir(&s.vm_id);
        // Whatever an interrupted start left: the jail is rebuilt each time.
        remove_tree(&dir)?;
        let root = cfg.root(&s.vm_id);
        std::fs::create_dir_all(root.join("run")).map_err(|e| io_err(&root, e))?;
        let owner = Some(nix::unistd::Uid::from_raw(cfg.uid));
        let group = Some(nix::unistd::Gid::from_raw(cfg.gid));
        let chown = |p: &Path| nix::unistd::chown(p, owner, group).map_err(|e| io_err(p, e));
        chown(&root.join("run"))?;
        link_fd(&kernel, &s.kernel, &cfg.host_path(&s.vm_id, KERNEL))?;
        if let (Some(fd), Some(path)) = (&initrd, &s.initrd) {
            link_fd(fd, path, &cfg.host_path(&s.vm_id, INITRD))?;
        }
        for (i, (fd, path)) in disks.iter().zip(&s.disks).enumerate() {
            let inner = cfg.host_path(&s.vm_id, &drive(i));
            link_fd(fd, path, &inner)?;
            // The same inode as the VM's disk: the jail's uid may write it.
            chown(&inner)?;
        }
        for f in [LOG, METRICS] {
            let p = cfg.host_path(&s.vm_id, f);
            std::fs::write(&p, b"").map_err(|e| io_err(&p, e))?;
            chown(&p)?;
        }
        Ok(dir)
    }

    pub(super) fn open_console(
        &self,
        vm_id: &str,
        console: &Path,
    ) -> Result<std::fs::File, JailError> {
        match &self.confine {
            Some(c) => {
                let own = c.state_dir.join("vms").join(vm_id).join("console.log");
                if console != own {
                    return Err(JailError::Refused(format!(
                        "console {} is not vm {vm_id}'s ({})",
                        console.display(),
                        own.display()
                    )));
                }
                c.open(
                    console,
                    OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT,
                    true,
                )
                .map(std::fs::File::from)
            }
            None => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(console)
                .map_err(|e| io_err(console, e)),
        }
    }
}

#[async_trait]
impl JailOps for LocalJail {
    async fn stage(&self, stage: &JailStage) -> Result<PathBuf, JailError> {
        let me = self.clone();
        let s = stage.clone();
        tokio::task::spawn_blocking(move || me.stage_now(&s))
            .await
            .map_err(JailError::Task)?
    }

    async fn spawn(&self, vm_id: &str, console: &Path) -> Result<u32, JailError> {
        check_vm_id(vm_id)?;
        if !self.config.root(vm_id).is_dir() {
            return Err(JailError::Refused(format!(
                "vm {vm_id} has no staged jail to start"
            )));
        }
        let out = self.open_console(vm_id, console)?;
        let mut cmd = tokio::process::Command::new(&self.config.jailer);
        cmd.args(self.config.args(&self.firecracker, vm_id));
        let mut child =
            crate::tools::spawn_detached(cmd, out).map_err(|source| JailError::Spawn {
                bin: self.config.jailer.clone(),
                source,
            })?;
        let pid = child.id().ok_or_else(|| JailError::ExitedAtOnce {
            bin: self.config.jailer.clone(),
        })?;
        // Reaped while we live; after that it is init's child.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(pid)
    }

    async fn release(&self, vm_id: &str, jail_dir: Option<&Path>) -> Result<(), JailError> {
        check_vm_id(vm_id)?;
        let own = self.config.jail_dir(vm_id);
        let dir = match jail_dir {
            Some(d) if d != own && self.confine.is_some() => {
                return Err(JailError::Refused(format!(
                    "{} is not vm {vm_id}'s jail ({})",
                    d.display(),
                    own.display()
                )));
            }
            Some(d) => d.to_owned(),
            None => own,
        };
        // The cgroups first: a jail dir then outlives them, and the
        // start-up sweep, which finds jails by their dirs, finds one a
        // crash left half released. A cgroup stays busy until its last
        // task is reaped, which may lag the kill by a moment.
        let mut cgroups = remove_cgroups(&self.config, vm_id);
        for _ in 0..40 {
            if cgroups.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            cgroups = remove_cgroups(&self.config, vm_id);
        }
        let tree = {
            let d = dir.clone();
            tokio::task::spawn_blocking(move || remove_tree(&d))
                .await
                .map_err(JailError::Task)?
        };
        cgroups.and(tree)
    }
}
