//! Host tools on guest-written filesystems, confined. e2fsck, resize2fs
//! and debugfs parse a disk the guest wrote (e2fsprogs has had
//! crafted-image CVEs) and would do so as the daemon, root or not. Under
//! bubblewrap each sees the whole host read-only but for the files it
//! must write (the disk, an rdump's destination), no network (its own
//! empty net namespace), its own pid, ipc and uts namespaces, a new
//! session (no terminal to inject into), no capabilities, and dies with
//! the daemon.

use std::path::{Path, PathBuf};

use crate::tools::ToolRun;

/// How the disk tools run: through `bwrap`, or (no bwrap found, said in
/// the log and by `banger doctor`) as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolSandbox {
    pub bwrap: Option<PathBuf>,
}

impl ToolSandbox {
    /// `bwrap` where it resolves (a path, or a name on `PATH`).
    pub fn find(bwrap: &Path) -> Self {
        let found = if bwrap.components().count() > 1 {
            bwrap.is_file().then(|| bwrap.to_owned())
        } else {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join(bwrap))
                    .find(|p| p.is_file())
            })
        };
        if found.is_none() {
            tracing::warn!(bwrap = %bwrap.display(), "bubblewrap not found: disk tools run unconfined on guest-written disks (install bubblewrap; scripts/setup.sh does)");
        }
        Self { bwrap: found }
    }

    /// None: the tools run as they are (tests of the tools themselves).
    pub fn off() -> Self {
        Self { bwrap: None }
    }

    /// A run of `tool` that may write only `writable`; the caller adds
    /// the tool's own arguments.
    pub fn run(&self, tool: &Path, writable: &[&Path]) -> ToolRun {
        let Some(bwrap) = &self.bwrap else {
            return ToolRun::new(tool);
        };
        let mut run =
            // bwrap refuses to run with capabilities it was not given as
            // setuid (an unprivileged daemon's ambient CAP_NET_BIND_SERVICE).
            ToolRun::new(bwrap).without_ambient_caps().args([
                "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            ]);
        for w in writable {
            run = run.arg("--bind").arg(w.as_os_str()).arg(w.as_os_str());
        }
        run.args([
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--",
        ])
        .arg(tool.as_os_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_binds_only_what_the_tool_writes() {
        let s = ToolSandbox {
            bwrap: Some("/usr/bin/bwrap".into()),
        };
        let run = s.run(Path::new("e2fsck"), &[Path::new("/s/vms/x/root.ext4")]);
        let line = run.display();
        assert!(
            line.starts_with("/usr/bin/bwrap --ro-bind / / --dev /dev --proc /proc --bind /s/vms/x/root.ext4 /s/vms/x/root.ext4 --unshare-net"),
            "{line}"
        );
        assert!(line.contains("--cap-drop ALL -- e2fsck"), "{line}");
        assert_eq!(
            ToolSandbox::off().run(Path::new("e2fsck"), &[]).display(),
            "e2fsck"
        );
    }

    /// Tier 2: the real bwrap. What a confined tool can and cannot do.
    #[tokio::test]
    async fn a_confined_tool_writes_its_file_and_nothing_else_and_has_no_network() {
        let s = ToolSandbox::find(Path::new("bwrap"));
        if s.bwrap.is_none() {
            eprintln!("SKIPPED sandbox test: bwrap not installed (scripts/setup.sh --deps-only)");
            return;
        }
        let d = tempfile::tempdir().expect("tmp");
        let mine = d.path().join("disk");
        let other = d.path().join("other");
        std::fs::write(&mine, b"").expect("disk");
        std::fs::write(&other, b"keep").expect("other");
        let script = format!(
            "echo written > {}; echo no > {} 2>/dev/null; cat /proc/net/dev",
            mine.display(),
            other.display()
        );
        let mut out = String::new();
        s.run(Path::new("/bin/sh"), &[&mine])
            .arg("-c")
            .arg(script)
            .ok_codes(&[0, 1])
            .run(|l| {
                out.push_str(l);
                out.push('\n');
            })
            .await
            .expect("confined sh");
        assert_eq!(std::fs::read(&mine).expect("disk"), b"written\n");
        assert_eq!(
            std::fs::read(&other).expect("other"),
            b"keep",
            "a file it was not given"
        );
        // Its own network namespace: a loopback and nothing else.
        let links: Vec<&str> = out
            .lines()
            .skip_while(|l| !l.starts_with("Inter-"))
            .skip(2)
            .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim()))
            .collect();
        assert_eq!(links, ["lo"], "{out}");
    }
}
