//! Powering the guest off (or rebooting it) for `vm stop`.
//!
//! PID 1 has to do it whenever PID 1 takes requests. A reboot(2) from any
//! other process shuts the devices down while PID 1 keeps running, and
//! Debian's 6.1 kernel breaks virtio devices in `device_shutdown`: a PID 1
//! that then faults a page in from the root disk gets an I/O error and
//! SIGBUS, and the kernel panics ("Attempted to kill init") instead of
//! powering off. That is what a `vm stop` soon after boot did while systemd
//! was still starting. An init asked by signal stops the other processes
//! first and calls reboot(2) itself.

use std::path::Path;
use std::time::Duration;

/// Who PID 1 is, as far as powering off goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// banger-init stayed PID 1 (it sets [`BANGER_INIT_PID1`] for us).
    BangerInit,
    Systemd,
    /// An init we do not know how to ask.
    Other,
}

/// Set by banger-init in the agent's environment when it stays PID 1.
pub const BANGER_INIT_PID1: &str = "BANGER_INIT_PID1";

impl Init {
    /// Looks at this guest's PID 1.
    pub fn detect() -> Self {
        let exe = std::fs::read_link("/proc/1/exe").ok();
        Self::from_facts(std::env::var_os(BANGER_INIT_PID1).is_some(), exe.as_deref())
    }

    /// `exe` is PID 1's executable (`/lib/systemd/systemd` once Debian's
    /// `/sbin/init` symlink was exec'd).
    pub fn from_facts(banger_init_env: bool, exe: Option<&Path>) -> Self {
        if banger_init_env {
            return Init::BangerInit;
        }
        match exe.and_then(Path::file_name).and_then(|n| n.to_str()) {
            Some("systemd") => Init::Systemd,
            _ => Init::Other,
        }
    }
}

/// How a power request reaches the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Signal PID 1 with this number. Re-sent until the shutdown ends the
    /// agent, because the kernel drops a signal to PID 1 that has no
    /// handler yet (systemd installs its own a moment after the exec).
    SignalInit(i32),
    /// No init to ask: sync, then reboot(2) from here.
    Syscall,
}

/// What asking `init` to power off (or reboot) takes.
pub fn request(init: Init, reboot: bool) -> Request {
    match init {
        // busybox init's convention, which banger-init follows.
        Init::BangerInit if reboot => Request::SignalInit(nix::libc::SIGTERM),
        Init::BangerInit => Request::SignalInit(nix::libc::SIGUSR2),
        // systemd(1): SIGRTMIN+4 starts poweroff.target and SIGRTMIN+5
        // reboot.target, as `systemctl poweroff|reboot` would, but without
        // needing its bus to be up yet.
        Init::Systemd if reboot => Request::SignalInit(nix::libc::SIGRTMIN() + 5),
        Init::Systemd => Request::SignalInit(nix::libc::SIGRTMIN() + 4),
        Init::Other => Request::Syscall,
    }
}

/// Between two sends of a request to PID 1.
const RESEND_EVERY: Duration = Duration::from_secs(2);
/// Sends before giving up on PID 1 (the daemon then presses the power
/// button and finally kills the VMM).
const SENDS: u32 = 30;

/// The real one.
#[derive(Debug, Default)]
pub struct SystemPower;

impl crate::Power for SystemPower {
    fn power_off(&self, reboot: bool) {
        match request(Init::detect(), reboot) {
            Request::SignalInit(signo) => {
                let sent = std::thread::Builder::new()
                    .name("power".into())
                    .spawn(move || signal_init(signo));
                if let Err(e) = sent {
                    eprintln!("banger-agent: starting the power thread: {e}; signalling once");
                    send_to_init(signo);
                }
            }
            Request::Syscall => reboot_here(reboot),
        }
    }
}

fn signal_init(signo: i32) {
    for _ in 0..SENDS {
        if !send_to_init(signo) {
            return;
        }
        std::thread::sleep(RESEND_EVERY);
    }
    eprintln!("banger-agent: PID 1 did not act on signal {signo}");
}

/// False when the signal could not be sent at all.
#[allow(unsafe_code)]
fn send_to_init(signo: i32) -> bool {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours;
    // nix's `Signal` cannot name the real-time signals systemd listens on.
    let rc = unsafe { nix::libc::kill(1, signo) };
    if rc != 0 {
        eprintln!(
            "banger-agent: signalling PID 1: {}",
            std::io::Error::last_os_error()
        );
        return false;
    }
    true
}

fn reboot_here(reboot: bool) {
    nix::unistd::sync();
    let mode = if reboot {
        nix::sys::reboot::RebootMode::RB_AUTOBOOT
    } else {
        nix::sys::reboot::RebootMode::RB_POWER_OFF
    };
    let Err(e) = nix::sys::reboot::reboot(mode);
    eprintln!("banger-agent: reboot({mode:?}): {e}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid1_is_recognised_from_env_and_exe() {
        let systemd = Path::new("/usr/lib/systemd/systemd");
        assert_eq!(Init::from_facts(true, Some(systemd)), Init::BangerInit);
        assert_eq!(Init::from_facts(false, Some(systemd)), Init::Systemd);
        assert_eq!(
            Init::from_facts(false, Some(Path::new("/bin/busybox"))),
            Init::Other
        );
        assert_eq!(Init::from_facts(false, None), Init::Other);
    }

    #[test]
    fn every_known_init_is_asked_and_only_an_unknown_one_gets_the_syscall() {
        let rtmin = nix::libc::SIGRTMIN();
        assert_eq!(
            request(Init::Systemd, false),
            Request::SignalInit(rtmin + 4)
        );
        assert_eq!(request(Init::Systemd, true), Request::SignalInit(rtmin + 5));
        assert_eq!(
            request(Init::BangerInit, false),
            Request::SignalInit(nix::libc::SIGUSR2)
        );
        assert_eq!(
            request(Init::BangerInit, true),
            Request::SignalInit(nix::libc::SIGTERM)
        );
        assert_eq!(request(Init::Other, false), Request::Syscall);
        assert_eq!(request(Init::Other, true), Request::Syscall);
    }
}
