//! A root tree without systemd, made from the host's static busybox
//! (Debian's busybox-static, which scripts/setup.sh installs): what an
//! image with no usable init looks like to banger.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets left out of the tree: with them, `/sbin/init` or `/linuxrc`
/// would be busybox's own init, and the tree would have an init after all.
const NOT_LINKED: &[&str] = &["init", "linuxrc"];

/// The host's busybox, or why it is missing.
pub fn binary() -> Result<&'static Path, String> {
    let busybox = Path::new(BUSYBOX);
    if busybox.is_file() {
        Ok(busybox)
    } else {
        Err(format!(
            "{BUSYBOX} missing: scripts/setup.sh --deps-only installs busybox-static"
        ))
    }
}

/// Builds the tree under `dir/busybox-tree` and returns its path: busybox
/// with every applet linked into `bin/`, root's account, and the empty
/// directories a root filesystem has. Cheap (a copy and a few hundred
/// symlinks), so each test makes its own.
pub fn tree(dir: &Path) -> Result<PathBuf, String> {
    let busybox = binary()?;
    let root = dir.join("busybox-tree");
    for d in [
        "bin", "sbin", "etc", "root", "tmp", "dev", "proc", "sys", "run", "usr/bin", "usr/sbin",
        "var",
    ] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| format!("creating {d}: {e}"))?;
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .map_err(|e| format!("chmod tmp: {e}"))?;
    std::fs::set_permissions(root.join("root"), std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("chmod root: {e}"))?;
    std::fs::copy(busybox, root.join("bin/busybox"))
        .map_err(|e| format!("copying busybox: {e}"))?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| format!("{BUSYBOX} --list: {e}"))?;
    if !list.status.success() {
        return Err(format!("{BUSYBOX} --list failed: {}", list.status));
    }
    let applets = String::from_utf8_lossy(&list.stdout).into_owned();
    for applet in applets.lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" || NOT_LINKED.contains(&applet) {
            continue;
        }
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .map_err(|e| format!("linking {applet}: {e}"))?;
    }
    for (path, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/hostname", "busybox\n"),
    ] {
        std::fs::write(root.join(path), text).map_err(|e| format!("writing {path}: {e}"))?;
    }
    Ok(root)
}
