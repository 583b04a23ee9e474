//! How VM disks can be copy-on-write on the state dir's filesystem.

use std::path::Path;

use banger_api::doctor::{Check, CheckId, CheckStatus};

use super::check;
use crate::probe::HostProbe;

pub(super) fn reflink_check(probe: &dyn HostProbe, state_dir: &Path) -> Check {
    const ID: CheckId = CheckId::Reflink;
    match probe.reflink(state_dir) {
        Ok(r) if r.supported => check(
            ID,
            CheckStatus::Ok,
            format!(
                "{} ({}) supports reflink clones",
                r.tested_in.display(),
                r.fs_type
            ),
            None,
        ),
        Ok(r) => check(
            ID,
            CheckStatus::Warn,
            format!(
                "{} ({}) cannot reflink: root disks are full sparse copies",
                r.tested_in.display(),
                r.fs_type
            ),
            Some(
                "put the state dir on XFS made with `mkfs.xfs -m reflink=1` or on btrfs (README: \"Fast copy-on-write disks\")",
            ),
        ),
        Err(e) => check(ID, CheckStatus::Warn, e.to_string(), None),
    }
}
