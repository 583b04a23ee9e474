//! Firecracker snapshots: pausing, saving a paused VM's state and memory,
//! and restoring them into a new process for another VM.
//!
//! What the snapshot does to vsock: `PUT /snapshot/create` sends the
//! guest's vsock driver a transport reset, and once the guest runs again
//! (the saved VM resumed, or a restored one) that driver closes every
//! vsock connection it had. Listening sockets survive (their CID updated),
//! so the guest agent's listener keeps accepting; the daemon's own
//! connections to the agent end and it must connect again, through the
//! host socket of the VM it is talking to.
//!
//! What a restore keeps from the snapshot: the vCPUs, memory size and
//! device set, the guest's MAC and everything in its memory (addresses
//! included); the tap and the vsock socket are overridden with the new
//! VM's. Disks are named relative to the process's directory or chroot
//! ([`drive_link`](super::spawn::drive_link)), so a restore opens its own
//! VM's disks.

use std::path::{Path, PathBuf};

use super::models::{
    InstanceInfo, InstanceState, MemBackend, MemBackendType, NetworkOverride, SnapshotCreate,
    SnapshotLoad, SnapshotType, Vm, VmConfig, VmState, VsockOverride,
};
use super::{FcApi, FcPaths, FirecrackerVmm, NET_IFACE};
use crate::jail::JailConfig;
use crate::{LaunchError, LaunchSpec, VmmError};

/// The file `save` writes the device and vCPU state to, in its directory.
pub const STATE_FILE: &str = "vmstate";
/// The file `save` writes the guest memory to (as large as the VM's
/// memory, sparse where the guest never wrote).
pub const MEMORY_FILE: &str = "memory";

/// Where a jailed Firecracker writes a snapshot: `/run` is the one
/// directory of the chroot the jail's uid may write. Moved out at once.
const JAIL_SAVE: Files<&str> = Files {
    state: "/run/snapshot.vmstate",
    memory: "/run/snapshot.memory",
};

/// Where a restore puts the snapshot in the new chroot (hard links when
/// it can). Not the names a save writes: the memory file backs every page
/// the restored guest has not written (and those of any other VM restored
/// from it), so a later save of this VM must not write into it.
const JAIL_RESTORE: Files<&str> = Files {
    state: "/run/restored.vmstate",
    memory: "/run/restored.memory",
};

/// A snapshot's two files.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Files<P> {
    state: P,
    memory: P,
}

impl Files<PathBuf> {
    /// Those `save` leaves in (absolute) `dir`.
    fn in_dir(dir: &Path) -> Self {
        Self {
            state: dir.join(STATE_FILE),
            memory: dir.join(MEMORY_FILE),
        }
    }
}

impl Files<&str> {
    fn paths(&self) -> Files<PathBuf> {
        Files {
            state: self.state.into(),
            memory: self.memory.into(),
        }
    }

    /// Where the jail of `vm_id` has them, on the host.
    fn on_host(&self, config: &JailConfig, vm_id: &str) -> Files<PathBuf> {
        Files {
            state: config.host_path(vm_id, self.state),
            memory: config.host_path(vm_id, self.memory),
        }
    }
}

impl<P> Files<P> {
    fn pairs<'a, Q>(&'a self, other: &'a Files<Q>) -> [(&'a P, &'a Q); 2] {
        [(&self.state, &other.state), (&self.memory, &other.memory)]
    }
}

pub(super) async fn set_state(socket: &Path, state: VmState) -> Result<(), VmmError> {
    FcApi::new(socket).patch("/vm", Vm { state }).await
}

/// `GET /vm` only takes `PATCH`; the instance info has the state.
pub(super) async fn is_paused(socket: &Path) -> Result<bool, VmmError> {
    let info: InstanceInfo = FcApi::new(socket).get("/").await?;
    Ok(info.state == InstanceState::Paused)
}

/// What `PUT /snapshot/create` is sent to write `to`.
fn create_body(to: Files<PathBuf>) -> SnapshotCreate {
    SnapshotCreate {
        snapshot_type: SnapshotType::Full,
        snapshot_path: to.state,
        mem_file_path: to.memory,
    }
}

/// What `PUT /snapshot/load` is sent to start `spec`'s VM from `from`.
fn load_body(spec: &LaunchSpec, p: &FcPaths, from: Files<PathBuf>) -> SnapshotLoad {
    SnapshotLoad {
        snapshot_path: from.state,
        mem_backend: MemBackend {
            backend_type: MemBackendType::File,
            backend_path: from.memory,
        },
        // kvmclock resumes where it was saved (no `clock_realtime`): the
        // guest sees no time pass while it was stored.
        resume_vm: true,
        network_overrides: spec
            .net
            .iter()
            .map(|n| NetworkOverride {
                iface_id: NET_IFACE.into(),
                host_dev_name: n.tap.clone(),
            })
            .collect(),
        // Jailed it is `/v.sock` either way; sent regardless, so a
        // snapshot of an unjailed VM restores jailed too.
        vsock_override: p.vsock.clone().map(|uds_path| VsockOverride { uds_path }),
    }
}

/// The drive of an unjailed VM that a restore elsewhere would still open:
/// one named by an absolute path (a VM started before drives were named
/// relative to its directory).
fn pinned_drive(config: &VmConfig) -> Option<(&str, &Path)> {
    config.drives.iter().find_map(|d| {
        let path = d.path_on_host.as_deref()?;
        path.is_absolute().then_some((d.drive_id.as_str(), path))
    })
}

/// A jailed VM's id: its control socket's stem, as in its identity.
fn jailed_vm_id(socket: &Path) -> Result<String, VmmError> {
    socket
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .ok_or_else(|| VmmError::Snapshot {
            path: socket.to_owned(),
            why: "the control socket names no VM".into(),
        })
}

fn absolute(dir: &Path) -> std::io::Result<PathBuf> {
    // Firecracker resolves relative paths in its own working directory.
    std::path::absolute(dir)
}

impl FirecrackerVmm {
    /// `save`: the paused VM's state and memory into `dir`.
    pub(super) async fn save_to(&self, socket: &Path, dir: &Path) -> Result<(), VmmError> {
        let api = FcApi::new(socket);
        if self.jail.is_none() {
            let config: VmConfig = api.get("/vm/config").await?;
            if let Some((id, path)) = pinned_drive(&config) {
                return Err(VmmError::Snapshot {
                    path: dir.to_owned(),
                    why: format!(
                        "drive {id} is {}: a restore would open this VM's disk; restart the VM to snapshot it",
                        path.display()
                    ),
                });
            }
        }
        let dir = absolute(dir).map_err(|source| VmmError::SnapshotFile {
            what: format!("resolving {}", dir.display()),
            source,
        })?;
        let out = Files::in_dir(&dir);
        let Some(j) = &self.jail else {
            return api.put("/snapshot/create", create_body(out)).await;
        };
        let vm_id = jailed_vm_id(socket)?;
        let inner = JAIL_SAVE.on_host(&j.config, &vm_id);
        for stale in [&inner.state, &inner.memory] {
            remove_stale(stale).map_err(|source| VmmError::SnapshotFile {
                what: format!("removing {}", stale.display()),
                source,
            })?;
        }
        api.put("/snapshot/create", create_body(JAIL_SAVE.paths()))
            .await?;
        let moves = inner
            .pairs(&out)
            .map(|(from, to)| (from.clone(), to.clone()));
        crate::process::off_worker(move || {
            for (from, to) in moves {
                move_out(&from, &to).map_err(|source| VmmError::SnapshotFile {
                    what: format!("moving {} to {}", from.display(), to.display()),
                    source,
                })?;
            }
            Ok(())
        })
        .await?
    }

    /// `restore`: a new Firecracker for `spec`, its logger and metrics
    /// configured, then the snapshot in `dir` loaded and resumed.
    pub(super) async fn restore_from(
        &self,
        spec: &LaunchSpec,
        dir: &Path,
    ) -> Result<u32, VmmError> {
        let pid = self.spawn(spec).await?;
        let api = FcApi::new(&spec.control_socket);
        let p = self.paths(spec);
        let load = async {
            self.configure_process(&api, &p).await?;
            let dir = absolute(dir).map_err(|source| LaunchError::File {
                what: format!("resolving {}", dir.display()),
                source,
            })?;
            let saved = Files::in_dir(&dir);
            let from = match &self.jail {
                None => saved,
                Some(j) => {
                    let inner = JAIL_RESTORE.on_host(&j.config, &spec.vm_id);
                    let links = saved
                        .pairs(&inner)
                        .map(|(from, to)| (from.clone(), to.clone()));
                    blocking_file_op(move || {
                        for (from, to) in links {
                            link_in(&from, &to).map_err(|source| LaunchError::File {
                                what: format!("linking {} to {}", from.display(), to.display()),
                                source,
                            })?;
                        }
                        Ok(())
                    })
                    .await?;
                    JAIL_RESTORE.paths()
                }
            };
            Ok(api.put("/snapshot/load", load_body(spec, &p, from)).await?)
        };
        self.finish_start(spec, pid, load).await
    }
}

/// Runs `f` on the blocking pool; a panic there is an I/O error of the
/// launch.
async fn blocking_file_op(
    f: impl FnOnce() -> Result<(), LaunchError> + Send + 'static,
) -> Result<(), LaunchError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LaunchError::File {
            what: "a snapshot file operation".into(),
            source: std::io::Error::other(e),
        })?
}

fn remove_stale(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Moves a file the jailed process wrote to `to`. The process could have
/// made it anything, so what arrives must be a regular file: a symlink
/// followed later by a root daemon would read any host file.
fn move_out(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => copy_regular(from, to)?,
        r => r?,
    }
    if !std::fs::symlink_metadata(to)?.file_type().is_file() {
        let _ = std::fs::remove_file(to);
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(())
}

/// Copies `from` (not followed if a symlink) to a new `to`, then removes
/// `from`.
fn copy_regular(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(from)?;
    if !src.metadata()?.file_type().is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    std::io::copy(&mut src, &mut dst)?;
    dst.sync_all()?;
    std::fs::remove_file(from)
}

/// Puts a saved file into a new chroot: a hard link (Firecracker only
/// reads it), a copy across filesystems.
fn link_in(from: &Path, to: &Path) -> std::io::Result<()> {
    remove_stale(to)?;
    match std::fs::hard_link(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            std::fs::copy(from, to).map(drop)
        }
        r => r,
    }
}

#[cfg(test)]
mod tests;
