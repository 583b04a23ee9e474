//! `banger-init`: PID 1 of the initramfs banger builds for distribution
//! kernels whose virtio drivers are modules.
//!
//! It loads the modules listed in `/etc/banger/modules.order` (dependency
//! order, paths under `/lib/modules/<version>/`), waits for the root
//! device, mounts it and switches root. Told by the daemon
//! (`banger.init=`), it then readies the guest for commands before any
//! distro init runs: `/dev/pts`, `/run`, `/tmp`, the work disk at
//! `/root`, the hostname, the address and route; and starts the agent.
//! With `banger.init=systemd` it then execs `/sbin/init`, so systemd boots
//! behind an agent that already answers; with `banger.init=banger` (an
//! image without an init) it stays PID 1 for the VM's life.
//!
//! Kernel command line it reads: `root=` (default `/dev/vda`),
//! `rootfstype=` (default `ext4`), `rootflags=`, `ro`/`rw`, `init=`
//! (default `/sbin/init`), `banger.rootwait=<seconds>` (default 30),
//! `banger.init=systemd|banger`, `banger.addr=<ip>/<prefix>`,
//! `banger.gw=<ip>`, `banger.hostname=<name>`.
//! On a failure before the root is usable it prints why and powers the VM
//! off, so a broken boot ends instead of hanging. It is built as a static
//! binary (`scripts/build-guest.sh`): the initramfs has no libc.

mod cmdline;
mod log;
mod pid1;
mod setup;

use std::ffi::CString;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::{MsFlags, mount};

use crate::cmdline::{Cmdline, InitMode};
use crate::log::log;
use crate::setup::{mount_fs, wait_for};

const ORDER_FILE: &str = "/etc/banger/modules.order";
const NEW_ROOT: &str = "/newroot";

fn main() {
    match run() {
        Ok(never) => match never {},
        Err(e) => {
            log(&format!("FATAL: {e}; powering off"));
            std::thread::sleep(Duration::from_secs(1));
            let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
            // reboot(2) does not return on success.
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
}

enum Never {}

fn load_modules() -> Result<usize, String> {
    let order = match std::fs::read_to_string(ORDER_FILE) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("reading {ORDER_FILE}: {e}")),
    };
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .map_err(|e| format!("uname: {e}"))?;
    let base = Path::new("/lib/modules").join(release);
    let params = CString::default();
    let mut n = 0;
    for rel in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = base.join(rel);
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        match finit_module(&file, &params, ModuleInitFlags::empty()) {
            Ok(()) => n += 1,
            // Built in, or loaded as someone's dependency already.
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(format!("loading {}: {e}", path.display())),
        }
    }
    Ok(n)
}

/// Mounts the root disk on NEW_ROOT and makes it "/" (switch_root),
/// keeping the kernel filesystems mounted in the initramfs.
fn switch_root(c: &Cmdline) -> Result<(), String> {
    std::fs::create_dir_all(NEW_ROOT).map_err(|e| format!("mkdir {NEW_ROOT}: {e}"))?;
    let flags = if c.read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    let data = (!c.flags.is_empty()).then_some(c.flags.as_str());
    mount(
        Some(c.root.as_str()),
        NEW_ROOT,
        Some(c.fstype.as_str()),
        flags,
        data,
    )
    .map_err(|e| format!("mount {} ({}) on {NEW_ROOT}: {e}", c.root, c.fstype))?;
    // lstat, not stat: on merged-/usr systems /sbin/init is an absolute
    // symlink that only resolves once the new root is "/". An image
    // without an init needs none.
    let init_in_root = format!("{NEW_ROOT}{}", c.init);
    if c.mode != Some(InitMode::Banger) && std::fs::symlink_metadata(&init_in_root).is_err() {
        return Err(format!(
            "{} does not exist on the root filesystem {}",
            c.init, c.root
        ));
    }
    // Keep the kernel filesystems: systemd expects /dev, /proc, /sys.
    for fs in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEW_ROOT}{fs}");
        let _ = std::fs::create_dir_all(&target);
        if mount(
            Some(fs),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .is_err()
        {
            let _ = nix::mount::umount(fs);
        }
    }
    std::env::set_current_dir(NEW_ROOT).map_err(|e| format!("chdir {NEW_ROOT}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("moving {NEW_ROOT} to /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
}

/// Everything a command needs, then the agent. Any failure is returned
/// before the marker is written, so banger's systemd units (where systemd
/// boots next) still do the job.
const NIC_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn early(c: &Cmdline, mode: InitMode) -> Result<std::process::Child, String> {
    setup::early_mounts()?;
    if let Some(name) = &c.hostname {
        setup::hostname(name)?;
    }
    if let Some(a) = &c.address {
        // The driver (a module) registers the NIC shortly after loading;
        // nothing announces it without netlink, so its sysfs entry is
        // looked for until NIC_WAIT.
        setup::wait_for(
            &format!("/sys/class/net/{}", banger_guest_net::NIC),
            NIC_WAIT,
        )?;
        banger_guest_net::configure(a).map_err(|e| e.to_string())?;
    }
    setup::mark_early()?;
    let agent = pid1::start_agent(mode == InitMode::Banger)?;
    log(&format!("agent started (pid {})", agent.id()));
    Ok(agent)
}

fn run() -> Result<Never, String> {
    mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::empty(), None)?;
    mount_fs("proc", "/proc", "proc", MsFlags::empty(), None)?;
    mount_fs("sysfs", "/sys", "sysfs", MsFlags::empty(), None)?;
    let loaded = load_modules()?;
    let text =
        std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let c = cmdline::parse(&text);
    log(&format!("loaded {loaded} modules; waiting for {}", c.root));
    wait_for(&c.root, c.root_wait)?;
    log(&format!("switching root to {}", c.root));
    switch_root(&c)?;
    match c.mode {
        Some(InitMode::Banger) => {
            let agent = early(&c, InitMode::Banger)?;
            log("staying PID 1 (the image has no init)");
            pid1::supervise(agent)
        }
        Some(InitMode::Systemd) => {
            // The agent, once started, is systemd's child after the exec
            // below; a failure here leaves the job to banger's units.
            if let Err(e) = early(&c, InitMode::Systemd) {
                log(&format!("early setup failed: {e}; leaving it to systemd"));
            }
        }
        None => {}
    }
    log(&format!("starting {}", c.init));
    let init = CString::new(c.init.clone()).map_err(|_| "init path has a NUL byte".to_owned())?;
    let err = nix::unistd::execv(&init, &[&init]).err();
    Err(format!(
        "exec {}: {}",
        c.init,
        err.map_or_else(String::new, |e| e.to_string())
    ))
}
