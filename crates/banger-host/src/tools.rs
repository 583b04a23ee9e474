//! External tools as typed builders with injectable paths.
//!
//! Each wrapper knows one tool's arguments; [`ToolRun`] runs it, streams
//! its output lines to a callback (for progress) and keeps the tail for the
//! error message. Children are killed when the future is dropped, so a
//! cancelled operation leaves no tool running.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// How many output lines a failure message quotes.
const TAIL_LINES: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{tool} not found (looked for {path}); scripts/setup.sh installs it")]
    NotFound { tool: String, path: PathBuf },
    #[error("starting {tool}: {source}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}):\n{tail}")]
    Failed {
        tool: String,
        status: std::process::ExitStatus,
        tail: String,
    },
}

/// Starts a process that must outlive its starter (a VMM): stdin closed,
/// stdout and stderr appended to `log`, in a process group of its own so
/// signals to ours (a Ctrl-C, a service stop) do not reach it.
pub fn spawn_detached(
    mut cmd: Command,
    log: std::fs::File,
) -> std::io::Result<tokio::process::Child> {
    let log2 = log.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
}

/// One invocation of an external tool.
#[derive(Debug, Clone)]
pub struct ToolRun {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(OsString, OsString)>,
    /// Exit codes that mean success (e2fsck exits 1 after fixing things).
    pub ok_codes: Vec<i32>,
    /// An open descriptor handed to the tool at a fixed number (a tap for
    /// QEMU's `fd=`); only the tool gets it, no other child.
    pub pass_fd: Option<(i32, i32)>,
    /// Clear the ambient capabilities (an unprivileged daemon's
    /// CAP_NET_BIND_SERVICE) before exec: the tool gets none of them.
    pub drop_ambient_caps: bool,
}

impl ToolRun {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            cwd: None,
            env: Vec::new(),
            ok_codes: vec![0],
            pass_fd: None,
            drop_ambient_caps: false,
        }
    }

    /// Hands `fd` (close-on-exec in this process) to the tool as `target`.
    pub fn pass_fd(mut self, fd: i32, target: i32) -> Self {
        self.pass_fd = Some((fd, target));
        self
    }

    pub fn without_ambient_caps(mut self) -> Self {
        self.drop_ambient_caps = true;
        self
    }

    pub fn ok_codes(mut self, codes: &[i32]) -> Self {
        self.ok_codes = codes.to_vec();
        self
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    fn tool_name(&self) -> String {
        self.program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.program.display().to_string())
    }

    /// The command line, for logs and tests.
    pub fn display(&self) -> String {
        std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs to completion; `on_line` sees each stdout/stderr line.
    pub async fn run(&self, mut on_line: impl FnMut(&str) + Send) -> Result<(), ToolError> {
        let tool = self.tool_name();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group, so cancelling kills the tool's children
            // too (apt's methods, debootstrap's dpkg), not just the tool.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some((fd, target)) = self.pass_fd {
            #[allow(unsafe_code)]
            // SAFETY: runs in the forked child before exec and only calls
            // dup2, which is async-signal-safe and allocates nothing; the
            // duplicate does not carry close-on-exec, so exactly this child
            // inherits it while the parent's descriptor stays close-on-exec.
            unsafe {
                cmd.pre_exec(move || {
                    // SAFETY: plain integers; `fd` is open in the parent for
                    // the whole spawn (the caller owns it), so in the child.
                    // dup2 onto itself keeps close-on-exec: clear it instead.
                    let r = if fd == target {
                        nix::libc::fcntl(fd, nix::libc::F_SETFD, 0)
                    } else {
                        nix::libc::dup2(fd, target)
                    };
                    if r < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if self.drop_ambient_caps {
            #[allow(unsafe_code)]
            // SAFETY: runs in the forked child before exec and only calls
            // prctl with integer arguments, which is async-signal-safe and
            // allocates nothing.
            unsafe {
                cmd.pre_exec(|| {
                    let r = nix::libc::prctl(
                        nix::libc::PR_CAP_AMBIENT,
                        nix::libc::PR_CAP_AMBIENT_CLEAR_ALL,
                        0,
                        0,
                        0,
                    );
                    if r < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ToolError::NotFound {
                    tool: tool.clone(),
                    path: self.program.clone(),
                }
            } else {
                ToolError::Spawn {
                    tool: tool.clone(),
                    source,
                }
            }
        })?;
        let mut group = GroupKill(child.id());
        let mut out = child.stdout.take().map(|s| BufReader::new(s).lines());
        let mut err = child.stderr.take().map(|s| BufReader::new(s).lines());
        let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
        let mut push = |line: String, on_line: &mut dyn FnMut(&str)| {
            on_line(&line);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        };
        while out.is_some() || err.is_some() {
            tokio::select! {
                line = async { out.as_mut().map(|o| o.next_line()).expect("guarded").await }, if out.is_some() => {
                    match line {
                        Ok(Some(l)) => push(l, &mut on_line),
                        _ => out = None,
                    }
                }
                line = async { err.as_mut().map(|e| e.next_line()).expect("guarded").await }, if err.is_some() => {
                    match line {
                        Ok(Some(l)) => push(l, &mut on_line),
                        _ => err = None,
                    }
                }
            }
        }
        let status = child.wait().await.map_err(|source| ToolError::Spawn {
            tool: tool.clone(),
            source,
        })?;
        group.0 = None;
        if status.code().is_some_and(|c| self.ok_codes.contains(&c)) {
            Ok(())
        } else {
            Err(ToolError::Failed {
                tool,
                status,
                tail: tail.into_iter().collect::<Vec<_>>().join("\n"),
            })
        }
    }
}

/// Kills a tool's whole process group when the run is dropped before the
/// tool finished (the caller was cancelled).
struct GroupKill(Option<u32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// `apt-get download`: fetches a package's `.deb` into a directory
/// without installing anything.
#[derive(Debug, Clone)]
pub struct AptGet {
    pub bin: PathBuf,
}

impl AptGet {
    pub fn download(&self, package: &str, dir: &Path) -> ToolRun {
        ToolRun::new(&self.bin)
            .args(["-q", "download", package])
            .current_dir(dir)
    }
}

/// `debootstrap`: a Debian root filesystem from the package archive.
#[derive(Debug, Clone)]
pub struct Debootstrap {
    pub bin: PathBuf,
}

impl Debootstrap {
    pub fn minbase(&self, suite: &str, target: &Path, mirror: &str, include: &[String]) -> ToolRun {
        let mut run = ToolRun::new(&self.bin).arg("--variant=minbase");
        if !include.is_empty() {
            run = run.arg(format!("--include={}", include.join(",")));
        }
        run.arg(suite).arg(target.as_os_str()).arg(mirror)
    }
}

/// `mkfs.ext4 -d`: an ext4 image populated from a directory, no mount.
#[derive(Debug, Clone)]
pub struct MkfsExt4 {
    pub bin: PathBuf,
}

impl MkfsExt4 {
    pub fn from_dir(&self, dir: &Path, image: &Path, size_bytes: u64, label: &str) -> ToolRun {
        self.format(image, size_bytes, label, Some(dir))
    }

    /// A fresh ext4 of `size_bytes`, empty or populated from `from`.
    pub fn format(
        &self,
        image: &Path,
        size_bytes: u64,
        label: &str,
        from: Option<&Path>,
    ) -> ToolRun {
        let mut run = ToolRun::new(&self.bin).args(["-F", "-q", "-L", label]);
        if let Some(dir) = from {
            run = run
                .args(["-E", "root_owner=0:0", "-d"])
                .arg(dir.as_os_str());
        }
        run.arg(image.as_os_str())
            .arg(format!("{}k", size_bytes / 1024))
    }
}

/// `ssh-keygen`: banger's own key pair for `vm ssh`.
#[derive(Debug, Clone)]
pub struct SshKeygen {
    pub bin: PathBuf,
}

impl SshKeygen {
    /// A new ed25519 key without passphrase at `path` (and `path.pub`).
    pub fn ed25519(&self, path: &Path, comment: &str) -> ToolRun {
        ToolRun::new(&self.bin)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path.as_os_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_lines_and_reports_the_tail_on_failure() {
        let mut lines = Vec::new();
        ToolRun::new("sh")
            .args(["-c", "echo one; echo two >&2; echo three"])
            .run(|l| lines.push(l.to_owned()))
            .await
            .expect("run");
        lines.sort();
        assert_eq!(lines, ["one", "three", "two"]);

        let err = ToolRun::new("sh")
            .args(["-c", "echo why it broke >&2; exit 3"])
            .run(|_| {})
            .await
            .expect_err("fails");
        let msg = err.to_string();
        assert!(msg.contains("why it broke") && msg.contains("3"), "{msg}");

        let err = ToolRun::new("/nonexistent/tool")
            .run(|_| {})
            .await
            .expect_err("missing");
        assert!(matches!(err, ToolError::NotFound { .. }), "{err}");
    }

    #[tokio::test]
    async fn cancelling_a_run_kills_the_tools_children_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
        let run = ToolRun::new("sh").args(["-c", script.as_str()]);
        let fut = run.run(|_| {});
        let r = tokio::time::timeout(std::time::Duration::from_millis(500), fut).await;
        assert!(r.is_err(), "the run must still be going");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("pid")
            .trim()
            .parse()
            .expect("int");
        assert!(
            exits_within(pid, std::time::Duration::from_secs(5)).await,
            "grandchild {pid} survived cancellation"
        );
    }

    /// Whether process `pid` (not necessarily our child) is gone, or a
    /// zombie, within `limit`: a pidfd turns readable when it exits.
    async fn exits_within(pid: i32, limit: std::time::Duration) -> bool {
        use std::os::fd::{FromRawFd, OwnedFd};
        #[allow(unsafe_code)]
        // SAFETY: pidfd_open takes a pid and flags and returns a new
        // descriptor or -1; no memory is shared with the kernel.
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(
                e.raw_os_error(),
                Some(nix::libc::ESRCH),
                "pidfd_open {pid}: {e}"
            );
            return true;
        }
        let raw = i32::try_from(fd).expect("a descriptor fits an int");
        #[allow(unsafe_code)]
        // SAFETY: the kernel just made this descriptor for us; nothing
        // else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        #[allow(unsafe_code)]
        // SAFETY: the pidfd is owned by the AsyncFd, which neither replaces
        // nor closes it while registered.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(fd) }.expect("register the pidfd");
        tokio::time::timeout(limit, fd.readable()).await.is_ok()
    }

    #[test]
    fn builders_produce_the_expected_command_lines() {
        let apt = AptGet {
            bin: "apt-get".into(),
        }
        .download("linux-image-cloud-amd64", Path::new("/w"));
        assert_eq!(apt.display(), "apt-get -q download linux-image-cloud-amd64");
        assert_eq!(apt.cwd.as_deref(), Some(Path::new("/w")));
        let d = Debootstrap {
            bin: "/usr/sbin/debootstrap".into(),
        }
        .minbase(
            "bookworm",
            Path::new("/t/root"),
            "http://deb.debian.org/debian",
            &["systemd-sysv".into(), "iproute2".into()],
        );
        assert_eq!(
            d.display(),
            "/usr/sbin/debootstrap --variant=minbase --include=systemd-sysv,iproute2 bookworm /t/root http://deb.debian.org/debian"
        );
        let m = MkfsExt4 {
            bin: "mkfs.ext4".into(),
        }
        .from_dir(Path::new("/d"), Path::new("/i.ext4"), 64 << 20, "root");
        assert_eq!(
            m.display(),
            "mkfs.ext4 -F -q -L root -E root_owner=0:0 -d /d /i.ext4 65536k"
        );
    }

    #[tokio::test]
    async fn mkfs_ext4_builds_an_image_from_a_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("etc")).expect("mkdir");
        std::fs::write(src.join("etc/hostname"), "x\n").expect("write");
        let img = dir.path().join("i.ext4");
        let mkfs = MkfsExt4 {
            bin: "mkfs.ext4".into(),
        };
        match mkfs.from_dir(&src, &img, 16 << 20, "t").run(|_| {}).await {
            Err(ToolError::NotFound { .. }) => {
                eprintln!("skipped: mkfs.ext4 missing (scripts/setup.sh installs e2fsprogs)");
            }
            other => {
                other.expect("mkfs");
                let data = std::fs::read(&img).expect("read");
                // ext4 superblock magic 0xEF53 at 1024 + 56.
                assert_eq!(&data[1080..1082], &[0x53, 0xef]);
            }
        }
    }
}
