//! Waiting on events rather than sleeping: a process's exit (pidfd), lines
//! of a child's output, a file as it grows (`tail -F`, which uses
//! inotify). [`until`] is the bounded poll for the few conditions nothing
//! announces.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Waits until `pid` has exited (a zombie counts), at most `within`; true
/// when it has, or was gone already. Through a pidfd, which becomes
/// readable when the process exits whoever its parent is: the daemon and
/// the VMMs are not the test's children.
pub fn exited(pid: i32, within: Duration) -> bool {
    #[allow(unsafe_code)]
    // SAFETY: pidfd_open takes two integers and returns a new descriptor
    // or -1; it touches no memory of ours.
    let raw = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.raw_os_error(),
            Some(nix::libc::ESRCH),
            "pidfd_open({pid}): {err}"
        );
        return true;
    }
    let raw = i32::try_from(raw).expect("a descriptor fits an int");
    #[allow(unsafe_code)]
    // SAFETY: `raw` was just returned by pidfd_open; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let deadline = Instant::now() + within;
    loop {
        let mut pfd = nix::libc::pollfd {
            fd: fd.as_raw_fd(),
            events: nix::libc::POLLIN,
            revents: 0,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        #[allow(unsafe_code)]
        // SAFETY: `pfd` is one valid pollfd that outlives the call, and
        // nfds is 1; `fd` stays open until it is dropped below.
        let r = unsafe { nix::libc::poll(&mut pfd, 1, ms) };
        match r {
            0 => return false,
            r if r > 0 => return true,
            _ => {
                let err = std::io::Error::last_os_error();
                assert_eq!(
                    err.kind(),
                    std::io::ErrorKind::Interrupted,
                    "poll on the pidfd of {pid}: {err}"
                );
            }
        }
    }
}

/// Bounded poll of `condition`, for conditions no event announces (each
/// caller says why). True once it holds, false at the deadline.
pub fn until(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The output of a stream, read on a thread of its own so a wait can
/// have a deadline; the thread keeps draining after the wait, so a child
/// writing to a pipe never blocks on it.
#[derive(Debug)]
pub struct Lines {
    rx: mpsc::Receiver<String>,
    /// Everything received so far, for failure messages and scans.
    pub seen: String,
    /// Received text not yet handed out as a line.
    pending: String,
}

impl Lines {
    pub fn new(mut stream: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Chunks as they come, not lines: a prompt ends without one.
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    // A receiver that went away only stops listening.
                    Ok(n) => drop(tx.send(String::from_utf8_lossy(&buf[..n]).into_owned())),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
        Self {
            rx,
            seen: String::new(),
            pending: String::new(),
        }
    }

    /// The next chunk, appended to `seen` and `pending`; `None` when the
    /// stream ended or `deadline` passed.
    fn receive(&mut self, deadline: Instant) -> Option<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = self.rx.recv_timeout(left).ok()?;
        self.seen.push_str(&chunk);
        self.pending.push_str(&chunk);
        Some(())
    }

    /// Waits for a whole line `matches` accepts and returns it; `None`
    /// when the stream ends or `within` passes first.
    pub fn wait_for(
        &mut self,
        within: Duration,
        mut matches: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            while let Some(end) = self.pending.find('\n') {
                let line: String = self.pending.drain(..=end).collect();
                if matches(&line) {
                    return Some(line);
                }
            }
            self.receive(deadline)?;
        }
    }

    /// Waits until everything received so far contains `needle` (text
    /// with cursor movements in it need not come in lines); returns that
    /// text, or `None` at the end or the deadline.
    pub fn wait_for_text(&mut self, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if self.seen.contains(needle) {
                return Some(self.seen.clone());
            }
            self.receive(deadline)?;
        }
    }
}

/// A file followed as it grows, from its first byte, by `tail -F`: on
/// inotify when the file exists at the start (GNU tail looks for a
/// missing one once a second).
#[derive(Debug)]
pub struct Follow {
    tail: Child,
    pub lines: Lines,
}

impl Follow {
    pub fn new(path: &Path) -> Self {
        // --pid: a test killed before its drop leaves no follower behind.
        let mut tail = Command::new("tail")
            .args(["-F", "-n", "+1"])
            .arg(format!("--pid={}", std::process::id()))
            .arg(path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tail");
        let lines = Lines::new(tail.stdout.take().expect("tail stdout"));
        Self { tail, lines }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.tail.kill();
        let _ = self.tail.wait();
    }
}
