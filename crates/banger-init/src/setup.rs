//! What a command needs before any distro init runs: the kernel's pseudo
//! filesystems, `/run` and `/tmp`, the work disk at `/root`, the hostname.
//! systemd, where it boots next, finds these mounted and keeps them.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};

/// Where the work disk appears, and how long it may take.
const WORK_DISK: &str = "/dev/vdb";
const WORK_DISK_WAIT: Duration = Duration::from_secs(10);
/// Written once the early setup is done: banger's systemd units skip
/// themselves when it exists (no second agent, no second address).
pub const EARLY_MARKER: &str = "/run/banger/early";

pub fn mount_fs(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    let _ = std::fs::create_dir_all(target);
    match mount(Some(src), target, Some(fstype), flags, data) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(format!("mount {fstype} on {target}: {e}")),
    }
}

/// Waits for a device node; nothing announces it without udev, so the
/// path is looked at every 20 ms until `within`.
pub fn wait_for(dev: &str, within: Duration) -> Result<(), String> {
    let start = Instant::now();
    while !Path::new(dev).exists() {
        if start.elapsed() > within {
            return Err(format!(
                "{dev} did not appear within {}s (is the disk attached, and its driver loaded?)",
                within.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Mounts inside the new root (which is "/" by now).
pub fn early_mounts() -> Result<(), String> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("gid=5,mode=620,ptmxmode=666"),
    )?;
    mount_fs(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        nosuid_nodev,
        Some("mode=1777"),
    )?;
    mount_fs("tmpfs", "/run", "tmpfs", nosuid_nodev, Some("mode=755"))?;
    mount_fs("tmpfs", "/tmp", "tmpfs", nosuid_nodev, Some("mode=1777"))?;
    wait_for(WORK_DISK, WORK_DISK_WAIT)?;
    mount_fs(WORK_DISK, "/root", "ext4", MsFlags::empty(), None)?;
    Ok(())
}

pub fn hostname(name: &str) -> Result<(), String> {
    nix::unistd::sethostname(name).map_err(|e| format!("sethostname {name}: {e}"))
}

pub fn mark_early() -> Result<(), String> {
    let dir = Path::new(EARLY_MARKER)
        .parent()
        .unwrap_or(Path::new("/run"));
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    std::fs::write(EARLY_MARKER, b"").map_err(|e| format!("writing {EARLY_MARKER}: {e}"))
}
