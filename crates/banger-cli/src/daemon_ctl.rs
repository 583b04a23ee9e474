//! Finding, starting and stopping `bangerd`.
//!
//! Every command that needs the daemon goes through [`connect`]: if the
//! socket does not answer (never started, stopped, `kill -9`ed), the daemon
//! is started detached and waited for, bounded, so the user never has to.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use banger_api::daemon::DaemonStatus;
use banger_api::defaults::EXIT_ALREADY_RUNNING;
use banger_client::Client;

use crate::settings::Settings;

/// Environment variable naming the `bangerd` binary to start.
pub const DAEMON_BIN_ENV: &str = "BANGER_DAEMON_BIN";
/// How long a starting daemon may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stopping daemon may take to release its socket.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A client to a live daemon, starting one if needed.
pub async fn connect(config: &Settings) -> Result<Client> {
    let client = Client::new(&config.socket);
    match client.status().await {
        Ok(_) => Ok(client),
        Err(e) if e.is_unreachable() => {
            start(config).await?;
            Ok(client)
        }
        Err(e) => Err(e).context("asking bangerd for its status"),
    }
}

/// The `bangerd` to run: `$BANGER_DAEMON_BIN`, else next to this `banger`,
/// else on `PATH`.
pub fn daemon_binary() -> PathBuf {
    if let Some(p) = std::env::var_os(DAEMON_BIN_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        let sibling = exe.with_file_name("bangerd");
        if sibling.is_file() {
            return sibling;
        }
    }
    PathBuf::from("bangerd")
}

/// Starts a detached daemon and waits until it answers.
pub async fn start(config: &Settings) -> Result<DaemonStatus> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state dir {}", config.state_dir.display()))?;
    let stderr_path = config.stderr_log_path();
    let stderr = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&stderr_path)
        .with_context(|| format!("opening {}", stderr_path.display()))?;
    let start_offset = stderr
        .metadata()
        .with_context(|| format!("reading the size of {}", stderr_path.display()))?
        .len();
    let spawn = || -> Result<Child> {
        let bin = daemon_binary();
        Command::new(&bin)
            .arg("--detached")
            .stdin(Stdio::null())
            .stdout(stderr.try_clone()?)
            .stderr(stderr.try_clone()?)
            // Own process group: the terminal's Ctrl-C must not reach it.
            .process_group(0)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (install bangerd next to banger, put it on PATH, or set {DAEMON_BIN_ENV})",
                    bin.display()
                )
            })
    };
    wait_until_up(config, spawn, &stderr_path, start_offset).await
}

async fn wait_until_up(
    config: &Settings,
    spawn: impl Fn() -> Result<Child>,
    stderr_path: &Path,
    offset: u64,
) -> Result<DaemonStatus> {
    let mut child = spawn()?;
    let client = Client::new(&config.socket);
    let deadline = Instant::now() + START_TIMEOUT;
    let mut delay = Duration::from_millis(10);
    loop {
        match client.status().await {
            Ok(st) => return Ok(st),
            Err(e) if !e.is_unreachable() => {
                return Err(e).context("bangerd started but answers with an error");
            }
            Err(_) => {}
        }
        let exited = child
            .try_wait()
            .with_context(|| format!("waiting for bangerd (pid {})", child.id()))?;
        if let Some(status) = exited {
            // Another daemon holds the lock: one started by a concurrent
            // banger (it will answer), or one still exiting after a stop
            // (it will not). Try again until one answers.
            if status.code() == Some(i32::from(EXIT_ALREADY_RUNNING)) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                child = spawn()?;
                continue;
            }
            let said = tail_since(stderr_path, offset)?;
            bail!(
                "bangerd exited ({status}) before answering:\n{}\n(full output in {})",
                said.trim_end(),
                stderr_path.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "bangerd did not answer on {} within {}s; see `banger daemon logs` and {}",
                config.socket.display(),
                START_TIMEOUT.as_secs(),
                stderr_path.display()
            );
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// What the daemon wrote to its stderr log from `offset` on.
fn tail_since(path: &Path, offset: u64) -> Result<String> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let start = usize::try_from(offset).map_or(data.len(), |o| o.min(data.len()));
    Ok(String::from_utf8_lossy(&data[start..]).into_owned())
}

/// Asks the daemon to exit and waits until its socket is gone. Returns
/// the pid it had, or `None` when it was not running.
pub async fn stop(client: &Client) -> Result<Option<u32>> {
    let pid = match client.status().await {
        Ok(st) => st.pid,
        Err(e) if e.is_unreachable() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    client.shutdown().await.context("asking bangerd to stop")?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    // Gone means the process exited (and released its lock), not merely
    // that the socket stopped answering.
    while client.status().await.is_ok() || is_running(pid)? {
        if Instant::now() > deadline {
            bail!(
                "bangerd (pid {pid}) did not stop within {}s",
                STOP_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Some(pid))
}

/// Whether `pid` is a live (not zombie) process. A missing `/proc/<pid>`
/// is an exited one; any other failure to read it is an error, not "gone".
fn is_running(pid: u32) -> Result<bool> {
    let path = format!("/proc/{pid}/stat");
    match std::fs::read_to_string(&path) {
        Ok(stat) => Ok(!stat_is_zombie(&stat)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("reading {path}")),
    }
}

/// `/proc/<pid>/stat` is `pid (comm) state ...`; comm may itself hold
/// `) `, so the state is the field after the last `)`.
fn stat_is_zombie(stat: &str) -> bool {
    stat.rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zombie_state_is_read_after_the_command_name() {
        assert!(stat_is_zombie("42 (bangerd) Z 1 42 42"));
        assert!(!stat_is_zombie("42 (bangerd) S 1 42 42"));
        assert!(!stat_is_zombie("42 (odd) Z name) S 1"));
    }

    #[test]
    fn this_process_runs_and_a_free_pid_does_not() {
        assert!(is_running(std::process::id()).expect("self"));
        // Above the kernel's pid_max ceiling (2^22): never a process.
        assert!(!is_running(5_000_000).expect("free pid"));
    }
}
