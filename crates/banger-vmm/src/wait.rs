//! Waiting on the kernel's word instead of sleeping in a loop: a pidfd
//! says when a process exits (our child or not), inotify when a name
//! appears in a directory.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, pidfd_open};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// How often to look when the kernel cannot tell us (see the callers).
const POLL: Duration = Duration::from_millis(10);

/// `fd` registered with the runtime for readability.
#[allow(unsafe_code)]
fn readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open and names the
    // same descriptor (its `as_raw_fd` never changes) until the AsyncFd is
    // dropped.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}

/// One process's exit, as a pidfd.
#[derive(Debug)]
pub(crate) struct PidExit {
    fd: AsyncFd<OwnedFd>,
}

impl PidExit {
    /// A handle on `pid`'s exit; `None` when there is no such process
    /// (it is gone already).
    pub(crate) fn open(pid: u32) -> io::Result<Option<Self>> {
        let Some(raw) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            return Ok(None);
        };
        match pidfd_open(raw, PidfdFlags::NONBLOCK) {
            Ok(fd) => Ok(Some(Self { fd: readable(fd)? })),
            Err(Errno::SRCH) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Resolves once the process has exited (a zombie counts: it runs no
    /// more, whoever reaps it).
    pub(crate) async fn exited(&self) -> io::Result<()> {
        self.fd.readable().await.map(drop)
    }
}

/// Resolves once `pid` has exited. Without pidfds (Linux before 5.3, or
/// out of descriptors) nothing else signals a process that is not our
/// child, so `/proc` is checked every few ms instead; callers bound the
/// wait.
pub(crate) async fn pid_exited(pid: u32) {
    match PidExit::open(pid) {
        Ok(None) => return,
        Ok(Some(exit)) => match exit.exited().await {
            Ok(()) => return,
            Err(e) => tracing::debug!(pid, "pidfd wait failed, polling: {e}"),
        },
        Err(e) => tracing::debug!(pid, "no pidfd, polling: {e}"),
    }
    loop {
        match crate::process::off_worker(move || crate::process::running(pid)).await {
            Ok(true) => tokio::time::sleep(POLL).await,
            Ok(false) => return,
            // The runtime is shutting down: nobody is left to wait.
            Err(e) => {
                tracing::debug!(pid, "checking /proc: {e}");
                return;
            }
        }
    }
}

/// Resolves once `path` exists (a symlink: once its target does).
/// Without a watch on the directory (one we may not read, or one that
/// went away while watched), `path` is checked every few ms instead;
/// callers bound the wait.
pub(crate) async fn path_exists(path: &Path) {
    match DirWatch::new(path) {
        Ok(mut watch) => match watch.until_exists().await {
            Ok(()) => return,
            Err(e) => tracing::debug!(path = %path.display(), "inotify wait failed, polling: {e}"),
        },
        Err(e) => tracing::debug!(path = %path.display(), "no inotify watch, polling: {e}"),
    }
    while !path.exists() {
        tokio::time::sleep(POLL).await;
    }
}

/// An inotify watch on the directory a path will appear in.
struct DirWatch {
    fd: AsyncFd<OwnedFd>,
    path: PathBuf,
}

impl DirWatch {
    fn new(path: &Path) -> io::Result<Self> {
        // A symlink's target is what appears; `exists` follows the link.
        let target = match std::fs::read_link(path) {
            Ok(t) => path.parent().map_or(t.clone(), |dir| dir.join(&t)),
            Err(_) => path.to_owned(),
        };
        let dir = target
            .parent()
            .ok_or_else(|| io::Error::other("a path with no parent directory"))?;
        let fd = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)?;
        inotify::add_watch(
            &fd,
            dir,
            WatchFlags::CREATE | WatchFlags::MOVED_TO | WatchFlags::DELETE_SELF,
        )?;
        Ok(Self {
            fd: readable(fd)?,
            path: path.to_owned(),
        })
    }

    /// Checked after the watch is in place, and after every event in the
    /// directory, so a name made before the watch is not missed.
    async fn until_exists(&mut self) -> io::Result<()> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        loop {
            if self.path.exists() {
                return Ok(());
            }
            let mut guard = self.fd.readable().await?;
            let mut events = inotify::Reader::new(guard.get_inner(), &mut buf);
            loop {
                match events.next() {
                    Ok(e) if e.events().contains(ReadFlags::IGNORED) => {
                        return Err(io::Error::other("the watched directory went away"));
                    }
                    Ok(_) => {}
                    Err(Errno::AGAIN) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            guard.clear_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_path_made_later_is_seen_and_one_made_before_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let early = dir.path().join("early");
        std::fs::write(&early, "").expect("write");
        tokio::time::timeout(Duration::from_secs(5), path_exists(&early))
            .await
            .expect("existing path");

        let late = dir.path().join("late");
        let make = late.clone();
        let waiter = tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(5), path_exists(&late)).await
        });
        tokio::task::yield_now().await;
        std::fs::write(&make, "").expect("write");
        waiter.await.expect("join").expect("seen");
    }

    #[tokio::test]
    async fn a_symlinks_target_appearing_is_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("jail")).expect("dir");
        let target = dir.path().join("jail/api.sock");
        let link = dir.path().join("short");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let waiter = tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(5), path_exists(&link)).await
        });
        tokio::task::yield_now().await;
        std::fs::write(&target, "").expect("write");
        waiter.await.expect("join").expect("seen");
    }

    #[tokio::test]
    async fn a_childs_exit_is_seen_through_its_pidfd() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn");
        let pid = child.id();
        let exit = PidExit::open(pid).expect("pidfd").expect("running");
        child.kill().expect("kill");
        tokio::time::timeout(Duration::from_secs(5), exit.exited())
            .await
            .expect("in time")
            .expect("exited");
        let _ = child.wait();
        assert!(PidExit::open(pid).expect("pidfd").is_none(), "reaped");
    }
}
