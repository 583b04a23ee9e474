//! The agent's process, and PID 1's duties when the image has no init of
//! its own: reap orphans, keep the agent running, and turn a power-off or
//! reboot request into a clean shutdown.
//!
//! Requests arrive as signals, busybox init's convention (the power
//! button, read from its input device, becomes SIGUSR2 too): SIGUSR2 powers
//! off, SIGTERM reboots, and SIGINT (the kernel's Ctrl-Alt-Del, which
//! Firecracker's graceful stop sends) reboots; a reboot ends a
//! Firecracker VMM, which has no power off.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot, set_cad_enabled};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::log::log;

/// Where the daemon writes the agent into every root disk.
pub const AGENT: &str = "/usr/local/sbin/banger-agent";
/// Tells the agent that PID 1 is banger-init (power off by signal).
pub const PID1_ENV: &str = "BANGER_INIT_PID1";
/// Between an agent's exit and its restart.
const RESTART_AFTER: Duration = Duration::from_millis(200);
/// How long processes get to exit on SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// Starts the agent, its output on the console, in its own process group.
pub fn start_agent(banger_is_pid1: bool) -> Result<Child, String> {
    let console = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/console")
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null())
    };
    let mut cmd = Command::new(AGENT);
    cmd.stdin(Stdio::null())
        .stdout(console())
        .stderr(console())
        .process_group(0)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root");
    if banger_is_pid1 {
        cmd.env(PID1_ENV, "1");
    }
    cmd.spawn().map_err(|e| format!("starting {AGENT}: {e}"))
}

fn signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR2,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set
}

/// Reaps every exited child; true when `agent` was among them.
fn reap(agent: Pid) -> bool {
    let mut agent_gone = false;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return agent_gone,
            Ok(status) => {
                if status.pid() == Some(agent) {
                    log(&format!("the agent ended ({status:?}); restarting it"));
                    agent_gone = true;
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                log(&format!("waitpid: {e}"));
                return agent_gone;
            }
        }
    }
}

/// PID 1 for the VM's life. Never returns.
pub fn supervise(mut agent: Child) -> ! {
    // Ctrl-Alt-Del becomes SIGINT to us instead of an instant reboot.
    if let Err(e) = set_cad_enabled(false) {
        log(&format!("keeping Ctrl-Alt-Del from rebooting: {e}"));
    }
    let set = signals();
    if let Err(e) = set.thread_block() {
        log(&format!("blocking signals: {e}; shutting down"));
        shutdown(false);
    }
    // Spawned after the block, so the thread leaves every signal to the
    // sigwait below.
    if let Err(e) = std::thread::Builder::new()
        .name("power-button".into())
        .spawn(watch_power_button)
    {
        log(&format!("watching the power button: {e}"));
    }
    // A child may have exited before the block.
    let mut agent_pid = Pid::from_raw(agent.id() as i32);
    if reap(agent_pid) {
        agent = restart(agent);
        agent_pid = Pid::from_raw(agent.id() as i32);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                if reap(agent_pid) {
                    agent = restart(agent);
                    agent_pid = Pid::from_raw(agent.id() as i32);
                }
            }
            Ok(Signal::SIGUSR2) => shutdown(false),
            Ok(Signal::SIGTERM | Signal::SIGINT) => shutdown(true),
            Ok(other) => log(&format!("ignoring {other}")),
            Err(e) => log(&format!("sigwait: {e}")),
        }
    }
}

/// The ACPI power button's input device (the `button` and `evdev`
/// modules are in the initramfs when the kernel has them as modules).
fn power_button() -> Option<std::fs::File> {
    let dir = std::fs::read_dir("/sys/class/input").ok()?;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with("event")) else {
            continue;
        };
        let Ok(label) = std::fs::read_to_string(entry.path().join("device/name")) else {
            continue;
        };
        if label.trim() == "Power Button" {
            return std::fs::File::open(format!("/dev/input/{name}")).ok();
        }
    }
    None
}

/// Turns a press of the power button (the VMM's graceful stop when the
/// agent does not take it) into the power-off signal to PID 1.
fn watch_power_button() {
    use std::io::Read;
    // struct input_event on 64-bit: timeval (16), type (2), code (2), value (4).
    const EVENT: usize = 24;
    const EV_KEY: u16 = 1;
    const KEY_POWER: u16 = 116;
    let Some(mut dev) = power_button() else {
        log("no power button device; the agent's power off still works");
        return;
    };
    let mut buf = [0u8; EVENT];
    while dev.read_exact(&mut buf).is_ok() {
        let kind = u16::from_ne_bytes([buf[16], buf[17]]);
        let code = u16::from_ne_bytes([buf[18], buf[19]]);
        let value = i32::from_ne_bytes([buf[20], buf[21], buf[22], buf[23]]);
        if kind == EV_KEY && code == KEY_POWER && value == 1 {
            log("power button pressed");
            let _ = kill(Pid::from_raw(1), Signal::SIGUSR2);
        }
    }
}

fn restart(old: Child) -> Child {
    drop(old);
    std::thread::sleep(RESTART_AFTER);
    match start_agent(true) {
        Ok(c) => c,
        Err(e) => {
            log(&format!("{e}; shutting down"));
            shutdown(false)
        }
    }
}

/// Ends every process, flushes and unmounts the disks, then powers off
/// (or reboots). Never returns.
pub fn shutdown(reboot_after: bool) -> ! {
    log(if reboot_after {
        "rebooting"
    } else {
        "powering off"
    });
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    // A stopped process handles SIGTERM only once continued.
    let _ = kill(Pid::from_raw(-1), Signal::SIGCONT);
    let deadline = Instant::now() + TERM_GRACE;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::ECHILD) => break,
            Ok(WaitStatus::StillAlive) if Instant::now() >= deadline => break,
            // Exits do not interrupt anything here: look again shortly.
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
            _ => {}
        }
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    while !matches!(
        waitpid(Pid::from_raw(-1), None),
        Err(Errno::ECHILD) | Err(Errno::EINVAL)
    ) {}
    nix::unistd::sync();
    if let Err(e) = nix::mount::umount("/root") {
        log(&format!("unmounting /root: {e}"));
    }
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    ) {
        log(&format!("remounting / read-only: {e}"));
    }
    nix::unistd::sync();
    let mode = if reboot_after {
        RebootMode::RB_AUTOBOOT
    } else {
        RebootMode::RB_POWER_OFF
    };
    let Err(e) = reboot(mode);
    log(&format!("reboot({mode:?}): {e}"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
