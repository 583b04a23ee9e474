//! The tools banger runs: present, and which version.

use std::path::{Path, PathBuf};

use banger_api::doctor::{Check, CheckId, CheckStatus};

use super::check;
use crate::probe::{HostProbe, ToolOutput};

pub(super) fn tool_version(
    probe: &dyn HostProbe,
    id: CheckId,
    bin: &Path,
    args: &[&str],
    hint: &str,
) -> Check {
    match tool_run(probe, id, bin, args, hint) {
        Ok((path, out)) => version_check(id, &path, &out),
        Err(c) => c,
    }
}

/// The tool's first line of output and where it was found.
pub(super) fn version_check(id: CheckId, path: &Path, out: &ToolOutput) -> Check {
    check(
        id,
        CheckStatus::Ok,
        format!("{} ({})", out.first_line(), path.display()),
        None,
    )
}

/// Runs `bin args`: what it printed when it succeeded, else the check
/// saying why not (missing, failing, not runnable).
pub(super) fn tool_run(
    probe: &dyn HostProbe,
    id: CheckId,
    bin: &Path,
    args: &[&str],
    hint: &str,
) -> Result<(PathBuf, ToolOutput), Check> {
    let Some(path) = probe.which(bin) else {
        return Err(check(
            id,
            CheckStatus::Warn,
            format!("{} not found", bin.display()),
            Some(hint),
        ));
    };
    match probe.run(&path, args) {
        Ok(out) if out.success => Ok((path, out)),
        Ok(out) => Err(check(
            id,
            CheckStatus::Warn,
            format!(
                "{} {} failed: {}",
                path.display(),
                args.join(" "),
                out.first_line()
            ),
            Some(hint),
        )),
        Err(e) => Err(check(id, CheckStatus::Warn, e.to_string(), Some(hint))),
    }
}

pub(super) fn presence(
    probe: &dyn HostProbe,
    id: CheckId,
    path: &str,
    ok_detail: &str,
    missing: &str,
    missing_status: CheckStatus,
) -> Check {
    if probe.exists(Path::new(path)) {
        check(id, CheckStatus::Ok, ok_detail, None)
    } else {
        check(id, missing_status, missing, None)
    }
}

pub(super) fn e2fsprogs(probe: &dyn HostProbe) -> Check {
    const ID: CheckId = CheckId::E2fsprogs;
    let missing: Vec<&str> = ["mkfs.ext4", "debugfs", "resize2fs", "e2fsck"]
        .into_iter()
        .filter(|t| probe.which(Path::new(t)).is_none())
        .collect();
    if !missing.is_empty() {
        return check(
            ID,
            CheckStatus::Fail,
            format!("missing: {}", missing.join(", ")),
            Some("apt-get install e2fsprogs"),
        );
    }
    let version = probe
        .which(Path::new("mkfs.ext4"))
        .and_then(|p| probe.run(&p, &["-V"]).ok())
        .map(|o| o.first_line().to_owned())
        .unwrap_or_default();
    // They parse guest-written disks: confined under bubblewrap.
    if probe.which(Path::new("bwrap")).is_none() {
        return check(
            ID,
            CheckStatus::Warn,
            format!(
                "mkfs.ext4, debugfs, resize2fs, e2fsck ({version}); no bwrap: they would run unconfined on guest-written disks"
            ),
            Some("apt-get install bubblewrap"),
        );
    }
    check(
        ID,
        CheckStatus::Ok,
        format!("mkfs.ext4, debugfs, resize2fs, e2fsck ({version}), confined by bwrap"),
        None,
    )
}
