//! Finding and checking VMM processes through `/proc`.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::VmmError;

fn cmdline(pid: u32) -> Option<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Whether `pid` is a live process, whatever it runs.
pub fn running(pid: u32) -> bool {
    !is_zombie(pid)
}

/// Whether `pid` is a live process whose command line names `socket`: the
/// one check of "is this VM's VMM running" (a recycled pid fails it).
pub fn vmm_alive(pid: u32, socket: &Path) -> bool {
    alive_with(pid, &socket.to_string_lossy())
}

/// Whether `pid` is live and its command line contains `needle` (the
/// command line is matched with a trailing space, so a needle may end in
/// one to match a whole argument).
pub fn alive_with(pid: u32, needle: &str) -> bool {
    cmdline(pid).is_some_and(|c| format!("{c} ").contains(needle)) && !is_zombie(pid)
}

/// Every live process whose command line contains `needle`, lowest first.
pub fn all_with(needle: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            alive_with(pid, needle).then_some(pid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Kills every process whose command line contains `needle` and waits
/// (bounded) until none is left. Each one's exit is awaited on a pidfd;
/// the scan is repeated after, for a process forked meanwhile (QEMU
/// daemonizing).
pub async fn kill_all_with(needle: &str, within: Duration) -> Result<(), VmmError> {
    let deadline = Instant::now() + within;
    let timeout = |pid| VmmError::ExitTimeout {
        pid,
        secs: within.as_secs(),
    };
    loop {
        let owned = needle.to_owned();
        let pids = off_worker(move || all_with(&owned)).await?;
        let Some(&first) = pids.first() else {
            return Ok(());
        };
        for &pid in &pids {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        if Instant::now() > deadline {
            return Err(timeout(first));
        }
        let all_exited = async {
            for &pid in &pids {
                crate::wait::pid_exited(pid).await;
            }
        };
        if tokio::time::timeout_at(deadline.into(), all_exited)
            .await
            .is_err()
        {
            return Err(timeout(first));
        }
    }
}

/// Signals `pid` if its command line still contains `needle`, then kills
/// every process naming it and waits (bounded) until none is left: how
/// each driver kills its VMM.
pub async fn kill_vmm(pid: u32, needle: &str, within: Duration) -> Result<(), VmmError> {
    let owned = needle.to_owned();
    off_worker(move || signal_with(pid, &owned, Signal::SIGKILL)).await?;
    kill_all_with(needle, within).await
}

/// Runs a `/proc` read or scan on the blocking pool, off the async
/// workers.
pub async fn off_worker<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, VmmError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(VmmError::Blocking)
}

/// Every live process naming `socket`, lowest pid first. Usually one; two
/// while QEMU daemonizes (the parent waits for the child it forked), and
/// after a daemon died mid-launch either may be the one left.
pub fn all_by_socket(socket: &Path) -> Vec<u32> {
    all_with(&socket.to_string_lossy())
}

/// The VMM of `socket` after a lost pid: the newest matching process (a
/// daemonized QEMU's child, not the parent about to exit).
pub fn find_by_socket(socket: &Path) -> Option<u32> {
    all_by_socket(socket).into_iter().max()
}

/// Kills every process naming `socket` and waits (bounded) until none is
/// left.
pub async fn kill_all(socket: &Path, within: Duration) -> Result<(), VmmError> {
    kill_all_with(&socket.to_string_lossy(), within).await
}

/// Sends `sig` to `pid` if it is still this VM's VMM.
pub fn signal(pid: u32, socket: &Path, sig: Signal) -> bool {
    signal_with(pid, &socket.to_string_lossy(), sig)
}

/// Signals `pid` only if its command line still contains `needle`.
pub fn signal_with(pid: u32, needle: &str, sig: Signal) -> bool {
    alive_with(pid, needle) && i32::try_from(pid).is_ok_and(|p| kill(Pid::from_raw(p), sig).is_ok())
}

/// Waits until the VMM is gone: on its pidfd, opened before the identity
/// check so that a pid recycled after the check is never waited on.
pub async fn wait_exit(pid: u32, socket: &Path, within: Duration) -> Result<(), VmmError> {
    let exit = crate::wait::PidExit::open(pid).map_err(|source| VmmError::Watch {
        what: format!("the exit of pid {pid}"),
        source,
    })?;
    let Some(exit) = exit else {
        return Ok(());
    };
    let owned = socket.to_owned();
    if !off_worker(move || vmm_alive(pid, &owned)).await? {
        return Ok(());
    }
    tokio::time::timeout(within, exit.exited())
        .await
        .map_err(|_| VmmError::ExitTimeout {
            pid,
            secs: within.as_secs(),
        })?
        .map_err(|source| VmmError::Watch {
            what: format!("the exit of pid {pid}"),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn identifies_a_process_by_the_socket_in_its_command_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("vm.qmp");
        // `read` is a builtin: the shell blocks on its stdin without forking,
        // so no short-lived copy of its command line exists besides it.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("read _")
            .arg(&sock)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let pid = child.id();
        // `sh -c script NAME` puts NAME in argv.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !vmm_alive(pid, &sock) {
            assert!(Instant::now() < deadline, "never saw the process");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !vmm_alive(pid, &dir.path().join("other.qmp")),
            "socket must match"
        );
        assert_eq!(find_by_socket(&sock), Some(pid));
        assert!(signal(pid, &sock, Signal::SIGKILL));
        let _ = child.wait();
        wait_exit(pid, &sock, Duration::from_secs(5))
            .await
            .expect("gone");
        assert!(!vmm_alive(pid, &sock));
        assert_eq!(find_by_socket(&sock), None);
        assert!(
            !signal(pid, &sock, Signal::SIGKILL),
            "never signal a non-matching pid"
        );
    }

    /// Every process naming the needle goes, each awaited on its pidfd;
    /// unreaped children (zombies) count as gone.
    #[tokio::test]
    async fn kill_all_with_leaves_none_of_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let needle = dir.path().join("kill-me.qmp");
        let mut children: Vec<_> = (0..2)
            .map(|_| {
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg("read _")
                    .arg(&needle)
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        // Until each has exec'd, its command line is still ours.
        let deadline = Instant::now() + Duration::from_secs(5);
        while all_by_socket(&needle).len() < 2 {
            assert!(Instant::now() < deadline, "never saw both processes");
            std::thread::sleep(Duration::from_millis(10));
        }
        kill_all(&needle, Duration::from_secs(5))
            .await
            .expect("all gone");
        assert!(all_by_socket(&needle).is_empty());
        for c in &mut children {
            assert!(c.try_wait().expect("wait").is_some(), "killed");
        }
    }
}
