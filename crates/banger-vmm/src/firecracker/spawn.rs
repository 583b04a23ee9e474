//! Starting a Firecracker process, directly or jailed, up to its API
//! socket taking connections: what a boot and a restore share.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixStream;

use super::FirecrackerVmm;
use crate::driver::Vmm;
use crate::jail::{self, JailStage};
use crate::{LaunchError, LaunchSpec, NotUp, VmmError};

/// How long a fresh Firecracker may take to open its API socket.
const SOCKET_WAIT: Duration = Duration::from_secs(5);

/// Resolves once Firecracker's API socket takes connections.
async fn api_socket_up(socket: &Path) {
    crate::wait::path_exists(socket).await;
    // bind(2) makes the name a moment before listen(2), and nothing
    // signals the listen: a refused connect is retried shortly.
    while UnixStream::connect(socket).await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The directory an unjailed Firecracker runs in: the VM's (where its
/// console log is).
pub(super) fn vm_dir(spec: &LaunchSpec) -> &Path {
    spec.console_log.parent().unwrap_or(Path::new("/"))
}

/// What an unjailed Firecracker calls disk `i`: a name relative to its
/// working directory, a symlink there to the disk. A snapshot records
/// drive paths as they were given and Firecracker 1.16 has no override
/// for them on load (it has for the tap and the vsock socket), so only a
/// relative name lets a restore in another VM's directory open that VM's
/// disks and not the snapshotted VM's. Jailed, the chroot does the same
/// (`/drive<i>`).
pub(super) fn drive_link(i: usize) -> PathBuf {
    format!("drive{i}").into()
}

impl FirecrackerVmm {
    /// Starts Firecracker for `spec` and waits for its API socket; returns
    /// its pid. Nothing is configured yet. The process is killed if its
    /// socket never comes up.
    pub(super) async fn spawn(&self, spec: &LaunchSpec) -> Result<u32, VmmError> {
        let err = |source: LaunchError| VmmError::Launch {
            bin: self.bin.clone(),
            source,
        };
        let _ = std::fs::remove_file(&spec.control_socket);
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.console_log)
            .map_err(|source| {
                err(LaunchError::File {
                    what: format!("opening {}", spec.console_log.display()),
                    source,
                })
            })?;
        let (pid, mut child) = match &self.jail {
            Some(j) => {
                j.ops
                    .stage(&JailStage {
                        vm_id: spec.vm_id.clone(),
                        kernel: spec.kernel.clone(),
                        initrd: spec.initrd.clone(),
                        disks: spec.disks.clone(),
                    })
                    .await?;
                // Short names in our runtime dir for the sockets the jailed
                // process makes inside its chroot (sun_path is 108 bytes).
                let c = &j.config;
                let mut links = vec![(
                    spec.control_socket.clone(),
                    c.host_path(&spec.vm_id, jail::API_SOCKET),
                )];
                if let Some(v) = &spec.vsock {
                    links.push((v.clone(), c.host_path(&spec.vm_id, jail::VSOCK)));
                }
                for (short, long) in links {
                    symlink(&long, &short).map_err(err)?;
                }
                // Opened above so that it exists as ours: the helper only
                // appends to a console the daemon owns.
                drop(console);
                (j.ops.spawn(&spec.vm_id, &spec.console_log).await?, None)
            }
            None => {
                let dir = vm_dir(spec);
                for (i, disk) in spec.disks.iter().enumerate() {
                    // Absolute: the link is read from the VM's directory.
                    let disk = std::path::absolute(disk).map_err(|source| {
                        err(LaunchError::File {
                            what: format!("resolving {}", disk.display()),
                            source,
                        })
                    })?;
                    symlink(&disk, &dir.join(drive_link(i))).map_err(err)?;
                }
                let mut cmd = tokio::process::Command::new(&self.bin);
                cmd.arg("--api-sock")
                    .arg(&spec.control_socket)
                    .arg("--id")
                    .arg(format!("banger-{}", spec.vm_id))
                    .current_dir(dir);
                let child = banger_host::tools::spawn_detached(cmd, console)
                    .map_err(|e| err(LaunchError::Spawn(e)))?;
                let pid = child.id().ok_or_else(|| err(LaunchError::ExitedAtOnce))?;
                (pid, Some(child))
            }
        };
        // Not by command line: right after fork it is still its parent's.
        // Our own child by waiting on it; a jailer the helper started (and
        // reaps) by its pid.
        let exited = async {
            match child.as_mut() {
                Some(c) => c.wait().await.map(Some),
                None => {
                    crate::wait::pid_exited(pid).await;
                    Ok(None)
                }
            }
        };
        let up = tokio::select! {
            () = api_socket_up(&spec.control_socket) => Ok(()),
            status = exited => Err(NotUp::Exited(status.map_err(|e| err(LaunchError::Wait(e)))?)),
            () = tokio::time::sleep(SOCKET_WAIT) => Err(NotUp::TimedOut),
        };
        if let Err(why) = up {
            match child.as_mut() {
                Some(c) => {
                    let _ = c.start_kill();
                    let _ = c.wait().await;
                }
                None => {
                    let _ = self.kill(pid, &spec.control_socket).await;
                }
            }
            return Err(err(LaunchError::ApiSocket {
                socket: spec.control_socket.clone(),
                why,
                console: spec.console_log.clone(),
            }));
        }
        // Reap it while this daemon lives; after a daemon restart it is
        // init's child and identified through /proc.
        if let Some(mut c) = child {
            tokio::spawn(async move {
                let _ = c.wait().await;
            });
        }
        Ok(pid)
    }
}

/// `link` -> `target`, replacing whatever `link` was.
fn symlink(target: &Path, link: &Path) -> Result<(), LaunchError> {
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).map_err(|source| LaunchError::File {
        what: format!("linking {}", link.display()),
        source,
    })
}
