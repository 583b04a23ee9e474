//! `banger-init`: PID 1 of the initramfs banger builds for distribution
//! kernels whose virtio drivers are modules.
//!
//! It loads the modules listed in `/etc/banger/modules.order` (dependency
//! order, paths under `/lib/modules/<version>/`), waits for the root
//! device, mounts it and switches root to the real init. It is built as a
//! static binary (`scripts/build-guest.sh`): the initramfs has no libc.
//!
//! Kernel command line it reads: `root=` (default `/dev/vda`),
//! `rootfstype=` (default `ext4`), `rootflags=`, `ro`/`rw`, `init=`
//! (default `/sbin/init`), `banger.rootwait=<seconds>` (default 30).
//! On any failure it prints why and powers the VM off, so a broken boot
//! ends instead of hanging.

use std::ffi::CString;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::{MsFlags, mount};

const ORDER_FILE: &str = "/etc/banger/modules.order";
const NEW_ROOT: &str = "/newroot";

fn log(msg: &str) {
    // The console is init's stdio (the initramfs has /dev/console).
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "banger-init: {msg}");
}

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

struct Cmdline {
    root: String,
    fstype: String,
    flags: String,
    read_only: bool,
    init: String,
    root_wait: Duration,
}

fn parse_cmdline(text: &str) -> Cmdline {
    let mut c = Cmdline {
        root: "/dev/vda".into(),
        fstype: "ext4".into(),
        flags: String::new(),
        read_only: false,
        init: "/sbin/init".into(),
        root_wait: Duration::from_secs(30),
    };
    for word in text.split_whitespace() {
        match word.split_once('=') {
            Some(("root", v)) => c.root = v.into(),
            Some(("rootfstype", v)) => c.fstype = v.into(),
            Some(("rootflags", v)) => c.flags = v.into(),
            Some(("init", v)) => c.init = v.into(),
            Some(("banger.rootwait", v)) => {
                if let Ok(s) = v.parse() {
                    c.root_wait = Duration::from_secs(s);
                }
            }
            None if word == "ro" => c.read_only = true,
            None if word == "rw" => c.read_only = false,
            _ => {}
        }
    }
    c
}

fn mount_fs(src: &str, target: &str, fstype: &str) -> Result<(), String> {
    let _ = std::fs::create_dir_all(target);
    match mount(
        Some(src),
        target,
        Some(fstype),
        MsFlags::empty(),
        None::<&str>,
    ) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(format!("mount {fstype} on {target}: {e}")),
    }
}

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

fn wait_for(dev: &str, within: Duration) -> Result<(), String> {
    let start = Instant::now();
    while !Path::new(dev).exists() {
        if start.elapsed() > within {
            return Err(format!(
                "root device {dev} did not appear within {}s (is the disk attached, and its driver loaded?)",
                within.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn run() -> Result<Never, String> {
    mount_fs("devtmpfs", "/dev", "devtmpfs")?;
    mount_fs("proc", "/proc", "proc")?;
    mount_fs("sysfs", "/sys", "sysfs")?;
    let loaded = load_modules()?;
    let cmdline =
        std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let c = parse_cmdline(&cmdline);
    log(&format!("loaded {loaded} modules; waiting for {}", c.root));
    wait_for(&c.root, c.root_wait)?;

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
    // symlink that only resolves once the new root is "/".
    let init_in_root = format!("{NEW_ROOT}{}", c.init);
    if std::fs::symlink_metadata(&init_in_root).is_err() {
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
    log(&format!(
        "switching root to {} and starting {}",
        c.root, c.init
    ));
    // switch_root: make the new root "/" of this mount namespace.
    std::env::set_current_dir(NEW_ROOT).map_err(|e| format!("chdir {NEW_ROOT}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("moving {NEW_ROOT} to /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    let init = CString::new(c.init.clone()).map_err(|_| "init path has a NUL byte".to_owned())?;
    let err = nix::unistd::execv(&init, &[&init]).err();
    Err(format!(
        "exec {}: {}",
        c.init,
        err.map_or_else(String::new, |e| e.to_string())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_defaults_and_overrides() {
        let c = parse_cmdline("console=ttyS0 quiet");
        assert_eq!(
            (c.root.as_str(), c.fstype.as_str(), c.init.as_str()),
            ("/dev/vda", "ext4", "/sbin/init")
        );
        assert!(!c.read_only);
        let c = parse_cmdline(
            "root=/dev/vdb rootfstype=xfs ro init=/bin/sh banger.rootwait=5 rootflags=noatime",
        );
        assert_eq!(c.root, "/dev/vdb");
        assert_eq!(c.fstype, "xfs");
        assert!(c.read_only);
        assert_eq!(c.init, "/bin/sh");
        assert_eq!(c.root_wait, Duration::from_secs(5));
        assert_eq!(c.flags, "noatime");
    }
}
