//! How banger gets the privileges it needs: root, or the helper.

use banger_api::doctor::{Check, CheckId, CheckStatus};

use super::{DoctorInputs, check};
use crate::probe::HostProbe;

pub(super) fn privileges(probe: &dyn HostProbe, inputs: &DoctorInputs) -> Check {
    const ID: CheckId = CheckId::Privileges;
    match (&inputs.helper_socket, inputs.euid) {
        (Some(sock), uid) if probe.exists(sock) => {
            let mut detail = format!(
                "bangerd runs as uid {uid}; bridge, taps and nftables{} go through banger-helper at {}",
                if inputs.jailer_enabled {
                    format!(", and staging and starting firecracker jails (as uid {uid})")
                } else {
                    String::new()
                },
                sock.display()
            );
            // The helper refuses to stage jails anywhere but a directory
            // only root can change.
            let unsafe_base = inputs
                .jailer_enabled
                .then(|| {
                    crate::jail::untrusted_ancestor(&inputs.chroot_base, 0, |p| probe.owner(p))
                })
                .flatten();
            match unsafe_base {
                None => check(ID, CheckStatus::Ok, detail, None),
                Some(why) => {
                    detail.push_str(&format!(
                        "; but it will refuse firecracker jails: chroot base {}: {why}",
                        inputs.chroot_base.display()
                    ));
                    check(
                        ID,
                        CheckStatus::Warn,
                        detail,
                        Some(
                            "set jailer.chroot_base to a root-owned directory on the state dir's filesystem, outside the state dir (README: least privilege)",
                        ),
                    )
                }
            }
        }
        (Some(sock), _) => check(
            ID,
            CheckStatus::Fail,
            format!("banger-helper is not listening at {}", sock.display()),
            Some("start it: systemctl start banger-helper (see README, least privilege)"),
        ),
        (None, 0) => check(
            ID,
            CheckStatus::Warn,
            "bangerd runs as root (no privilege helper)",
            Some("run bangerd unprivileged behind banger-helper: README, least privilege"),
        ),
        (None, uid) => check(
            ID,
            CheckStatus::Fail,
            format!(
                "bangerd runs as uid {uid} without a privilege helper: it cannot make taps or NAT"
            ),
            Some("start banger-helper and set privileges.helper_socket"),
        ),
    }
}
