//! The host's process table, as the start-up sweep needs it: which live
//! processes work in a directory of banger's (their command line names a
//! path under it, or they run in it), and killing one of them without
//! ever hitting a process that took its pid since.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;

/// A live process, with what tells it apart from a later one of the
/// same pid (its start time, in clock ticks since boot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProcess {
    pub pid: u32,
    pub started: u64,
    /// Arguments joined by spaces.
    pub cmdline: String,
    pub cwd: Option<PathBuf>,
}

impl HostProcess {
    /// Whether it names a path under `dir` or runs in it.
    pub fn uses(&self, dir: &Path) -> bool {
        let prefix = format!("{}/", dir.display());
        self.cmdline.contains(&prefix) || self.cwd.as_deref().is_some_and(|c| c.starts_with(dir))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("killing pid {pid} ({cmdline}): {source}")]
    Kill {
        pid: u32,
        cmdline: String,
        #[source]
        source: nix::Error,
    },
}

/// The process table: real (`/proc`) or a recording fake.
#[async_trait]
pub trait Processes: Send + Sync + Debug {
    /// Live processes (no zombies) that use a path under `dir`.
    async fn using(&self, dir: &Path) -> Vec<HostProcess>;
    /// SIGKILL to `p`, if the pid is still that process; one gone
    /// already is not an error.
    async fn kill(&self, p: &HostProcess) -> Result<(), ProcError>;
}

/// The real table, read from `/proc` off the async workers.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcFs;

/// `(state, start time)` from `/proc/<pid>/stat`: the fields after the
/// command name, which may itself hold spaces and parentheses.
fn stat_of(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is rest[0]; field 22 (starttime) is rest[19].
    let state = fields.first()?.chars().next()?;
    let started = fields.get(19)?.parse().ok()?;
    Some((state, started))
}

fn read_process(pid: u32) -> Option<HostProcess> {
    let (state, started) = stat_of(pid)?;
    if state == 'Z' || state == 'X' {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&raw)
        .trim_end_matches('\0')
        .replace('\0', " ");
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    Some(HostProcess {
        pid,
        started,
        cmdline,
        cwd,
    })
}

fn scan(dir: &Path) -> Vec<HostProcess> {
    let me = std::process::id();
    let mut found: Vec<HostProcess> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(read_process)
        .filter(|p| p.uses(dir))
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

#[async_trait]
impl Processes for ProcFs {
    async fn using(&self, dir: &Path) -> Vec<HostProcess> {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || scan(&dir))
            .await
            .unwrap_or_default()
    }

    async fn kill(&self, p: &HostProcess) -> Result<(), ProcError> {
        let p = p.clone();
        let killed = tokio::task::spawn_blocking(move || {
            // The same process still: same pid and start time.
            if stat_of(p.pid).is_none_or(|(_, started)| started != p.started) {
                return Ok(());
            }
            let pid = i32::try_from(p.pid).unwrap_or(i32::MAX);
            match nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            ) {
                Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
                Err(source) => Err(ProcError::Kill {
                    pid: p.pid,
                    cmdline: p.cmdline.clone(),
                    source,
                }),
            }
        })
        .await;
        killed.unwrap_or(Ok(()))
    }
}

/// A process table of the test's making; kills are recorded.
#[derive(Debug, Default)]
pub struct FakeProcesses {
    pub table: Mutex<Vec<HostProcess>>,
    pub killed: Mutex<Vec<u32>>,
}

impl FakeProcesses {
    pub fn add(&self, pid: u32, cmdline: &str, cwd: Option<&Path>) {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(HostProcess {
                pid,
                started: u64::from(pid),
                cmdline: cmdline.to_owned(),
                cwd: cwd.map(Path::to_owned),
            });
    }

    pub fn killed(&self) -> Vec<u32> {
        self.killed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn alive(&self) -> Vec<u32> {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|p| p.pid)
            .collect()
    }
}

#[async_trait]
impl Processes for FakeProcesses {
    async fn using(&self, dir: &Path) -> Vec<HostProcess> {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|p| p.uses(dir))
            .cloned()
            .collect()
    }

    async fn kill(&self, p: &HostProcess) -> Result<(), ProcError> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = table.iter().position(|q| q == p) {
            table.remove(i);
            self.killed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(p.pid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_uses_a_dir_its_arguments_name_or_it_runs_in() {
        let p = |cmdline: &str, cwd: Option<&str>| HostProcess {
            pid: 1,
            started: 1,
            cmdline: cmdline.into(),
            cwd: cwd.map(PathBuf::from),
        };
        let dir = Path::new("/var/lib/banger/tmp");
        assert!(
            p(
                "debootstrap bookworm /var/lib/banger/tmp/image-x/root",
                None
            )
            .uses(dir)
        );
        assert!(
            p(
                "apt-get download linux",
                Some("/var/lib/banger/tmp/kernel-y")
            )
            .uses(dir)
        );
        // Not beneath it: a sibling whose name starts the same, the dir
        // itself named as a word, or nothing of it at all.
        assert!(!p("cp /var/lib/banger/tmpfoo/x", Some("/")).uses(dir));
        assert!(!p("ls", Some("/var/lib/banger/tmpfoo")).uses(dir));
        assert!(!p("bangerd", Some("/var/lib/banger")).uses(dir));
    }

    #[tokio::test]
    async fn the_real_table_finds_a_child_working_in_a_dir_and_kills_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .current_dir(dir.path())
            .spawn()
            .expect("sleep");
        let found = ProcFs.using(dir.path()).await;
        let me = found
            .iter()
            .find(|p| p.pid == child.id())
            .unwrap_or_else(|| panic!("{found:?}"));
        assert!(me.cmdline.starts_with("sleep 600"), "{me:?}");
        ProcFs.kill(me).await.expect("kill");
        let status = child.wait().expect("wait");
        assert!(!status.success());
        // Gone (reaped): a second kill finds another process or none, and
        // never signals it.
        ProcFs.kill(me).await.expect("second kill");
    }

    #[tokio::test]
    async fn a_pid_taken_by_another_process_is_not_killed() {
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("sleep");
        let mut p = read_process(child.id()).expect("live");
        p.started += 1;
        ProcFs.kill(&p).await.expect("kill");
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "a stranger was killed"
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}
