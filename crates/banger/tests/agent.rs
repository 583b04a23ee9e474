//! Tier 3: commands in real guests through the agent (QEMU/TCG, vsock via
//! vhost-device-vsock), driven through the CLI inside a network namespace
//! the test makes. Nothing here sends a packet outside it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::wait::Follow;
use common::{Lab, dir_entries, lab};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Every file under `root` (relative path, sha256, mode, mtime), sorted.
fn tree_digest(root: &std::path::Path) -> Vec<String> {
    let out = Command::new("find")
        .arg(".")
        .args(["-printf", "%p %m %T@ %y\n"])
        .current_dir(root)
        .output()
        .expect("find");
    let mut lines: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| {
            let path = l.split(' ').next().unwrap_or("");
            let p = root.join(path);
            // Directory mtimes to the second: the fraction is the host's.
            let mut parts: Vec<String> = l.split(' ').map(str::to_owned).collect();
            if let Some(t) = parts.get_mut(2) {
                *t = t.split('.').next().unwrap_or("").to_owned();
            }
            if p.is_file() {
                parts.push(sha256(&p));
            }
            parts.join(" ")
        })
        .collect();
    lines.sort();
    lines
}

#[test]
fn vm_run_rm_streams_stdout_and_stderr_apart_returns_the_code_and_leaves_nothing() {
    let Some(lab) = lab() else { return };
    let t = Instant::now();
    let out = lab.banger(&[
        "vm",
        "run",
        "--rm",
        "--memory",
        "512",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    println!(
        "figure: vm run --rm (create + first start + exec + delete, QEMU/TCG) took {:.2}s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(code(&out), Some(7), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(
        lab.ok(&["vm", "list", "--json"]).trim(),
        "[]",
        "--rm deleted it"
    );
    lab.assert_no_leaks();

    // Ctrl-C during the command: the remote command is stopped and --rm
    // still deletes the VM.
    let st = interrupt_once_started(&lab, &["vm", "run", "--rm", "--memory", "512", "--"]);
    assert_eq!(st.code(), Some(130));
    assert_eq!(
        lab.ok(&["vm", "list", "--json"]).trim(),
        "[]",
        "--rm after Ctrl-C"
    );
    lab.assert_no_leaks();

    // A start that fails still deletes with --rm, and says why.
    let out = lab.banger(&["vm", "run", "--rm", "--kernel", "missing", "--", "true"]);
    assert_ne!(code(&out), Some(0));
    assert!(
        text(&out.stderr).contains("kernel \"missing\" not found"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(lab.ok(&["vm", "list", "--json"]).trim(), "[]");
    lab.ok(&["daemon", "stop"]);
}

/// Runs `banger ARGS sh -c 'echo started; exec sleep 300'`, presses
/// Ctrl-C once the remote command runs, and returns how banger exited.
/// (`ip netns exec` execs banger: the child's pid is banger's.)
fn interrupt_once_started(lab: &Lab, args: &[&str]) -> std::process::ExitStatus {
    let mut child = lab
        .command()
        .args(args)
        .args(["sh", "-c", "echo started; exec sleep 300"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line, "started\n");
    common::kill(child.id() as i32, nix::sys::signal::Signal::SIGINT);
    child.wait().expect("wait")
}

/// tmux on a private socket, killed however the test ends. The pane's
/// output is piped to a file the test follows, so waits end when the
/// text arrives.
struct Tmux {
    socket: String,
    output: Follow,
}

impl Tmux {
    fn new(lab: &Lab, session: &str, command: &[&str]) -> Self {
        let socket = format!("banger-test-{}", std::process::id());
        let probe = lab.command();
        // tmux runs the command from its server: hand it banger's
        // environment explicitly.
        let mut line = String::from("env -i");
        for (k, v) in probe.get_envs() {
            if let Some(v) = v {
                line.push_str(&format!(
                    " {}='{}'",
                    k.to_string_lossy(),
                    v.to_string_lossy()
                ));
            }
        }
        for a in probe.get_program().to_str().into_iter().chain(
            probe
                .get_args()
                .filter_map(|a| a.to_str())
                .chain(command.iter().copied()),
        ) {
            line.push_str(&format!(" '{a}'"));
        }
        line.push_str("; echo EXITED $?; sleep 60");
        let log = lab.env.dir.path().join(format!("tmux-{session}.log"));
        // Made before the follower starts, which then waits on inotify.
        std::fs::write(&log, "").expect("pane log");
        let output = Follow::new(&log);
        // The pipe is set in the same tmux call, before the server reads
        // the pane's first output.
        let st = Command::new("tmux")
            .args([
                "-L",
                &socket,
                "new-session",
                "-d",
                "-s",
                session,
                "-x",
                "100",
                "-y",
                "30",
            ])
            .arg(line)
            .args([";", "pipe-pane", "-t", session])
            .arg(format!("cat >> '{}'", log.display()))
            .status()
            .expect("tmux (scripts/setup.sh installs it)");
        assert!(st.success());
        Self { socket, output }
    }

    fn keys(&self, keys: &[&str]) {
        let st = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "t"])
            .args(keys)
            .status()
            .expect("send-keys");
        assert!(st.success());
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "t"])
            .output()
            .expect("capture-pane");
        text(&out.stdout)
    }

    /// Waits for `needle` in the pane's output; returns the output so far.
    fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        match self.output.lines.wait_for_text(needle, within) {
            Some(out) => out,
            None => panic!("{needle:?} not on screen:\n{}", self.screen()),
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

#[test]
fn a_named_vm_runs_exec_cp_ssh_and_a_terminal() {
    let Some(lab) = lab() else { return };
    let out = lab.banger(&[
        "vm",
        "run",
        "--name",
        "h1",
        "--memory",
        "512",
        "--",
        "cat",
        "/etc/hostname",
    ]);
    assert_eq!(code(&out), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "h1\n");
    let vm = lab.json(&["vm", "show", "h1", "--json"]);
    assert_eq!(vm["state"], "running", "without --rm the VM stays");

    // Exit codes: plain, by signal (128+n), not found (127).
    let o = lab.banger(&["vm", "exec", "h1", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(code(&o), Some(143));
    let o = lab.banger(&["vm", "exec", "h1", "--", "/no/such/tool"]);
    assert_eq!(code(&o), Some(127));
    assert!(text(&o.stderr).contains("/no/such/tool"));

    // Environment, working directory and user.
    let o = lab.ok(&[
        "vm",
        "exec",
        "-e",
        "A=1",
        "-w",
        "/tmp",
        "-u",
        "nobody",
        "h1",
        "--",
        "sh",
        "-c",
        "echo $A $(pwd) $(id -un)",
    ]);
    assert_eq!(o, "1 /tmp nobody\n");

    // stdin with -i.
    let mut child = lab
        .command()
        .args([
            "vm",
            "exec",
            "-i",
            "h1",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; echo done",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"hello\n").expect("write");
    }
    let o = child.wait_with_output().expect("wait");
    assert_eq!(text(&o.stdout), "HELLO\ndone\n");

    // 100 MB of output streams through (not buffered whole anywhere).
    let t = Instant::now();
    let o = lab.banger(&[
        "vm",
        "exec",
        "h1",
        "--",
        "head",
        "-c",
        "100000000",
        "/dev/zero",
    ]);
    let took = t.elapsed().as_secs_f64();
    assert_eq!(code(&o), Some(0));
    assert_eq!(o.stdout.len(), 100_000_000);
    println!(
        "figure: vm exec streamed 100 MB of stdout in {took:.2}s ({:.0} MB/s, QEMU/TCG)",
        100.0 / took
    );

    // Ctrl-C on the client stops the remote command.
    let st = interrupt_once_started(&lab, &["vm", "exec", "h1", "--"]);
    assert_eq!(st.code(), Some(130), "SIGINT reached the remote sleep");
    let o = lab.banger(&["vm", "exec", "h1", "--", "pgrep", "-x", "sleep"]);
    assert_eq!(code(&o), Some(1), "no sleep left: {}", text(&o.stdout));

    // vm cp: a 50 MB file and a tree, both ways, equal digests, modes and
    // mtimes.
    let work = lab.env.dir.path().join("cp");
    std::fs::create_dir_all(work.join("tree/sub/deeper")).expect("mkdir");
    let big = work.join("big.bin");
    let st = Command::new("head")
        .args(["-c", "50000000", "/dev/urandom"])
        .stdout(std::fs::File::create(&big).expect("create"))
        .status()
        .expect("head");
    assert!(st.success());
    std::fs::write(work.join("tree/a.txt"), "alpha\n").expect("write");
    std::fs::write(work.join("tree/sub/run.sh"), "#!/bin/sh\necho hi\n").expect("write");
    std::fs::write(work.join("tree/sub/deeper/z"), vec![0u8; 200_000]).expect("write");
    let st = Command::new("chmod")
        .args(["0751"])
        .arg(work.join("tree/sub/run.sh"))
        .status()
        .expect("chmod");
    assert!(st.success());
    let st = Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06"])
        .arg(work.join("tree/a.txt"))
        .arg(work.join("tree/sub"))
        .status()
        .expect("touch");
    assert!(st.success());

    let t = Instant::now();
    lab.ok(&["vm", "cp", &big.display().to_string(), "h1:/root/big.bin"]);
    let up = t.elapsed().as_secs_f64();
    let back = work.join("big.back");
    let t = Instant::now();
    lab.ok(&["vm", "cp", "h1:/root/big.bin", &back.display().to_string()]);
    let down = t.elapsed().as_secs_f64();
    println!("figure: vm cp of 50 MB took {up:.2}s into the guest and {down:.2}s out (QEMU/TCG)");
    assert_eq!(sha256(&big), sha256(&back));
    let guest_sum = lab.ok(&["vm", "exec", "h1", "--", "sha256sum", "/root/big.bin"]);
    assert!(guest_sum.starts_with(&sha256(&big)), "{guest_sum}");

    lab.ok(&[
        "vm",
        "cp",
        &work.join("tree").display().to_string(),
        "h1:/root/",
    ]);
    let tree_back = work.join("tree.back");
    lab.ok(&[
        "vm",
        "cp",
        "h1:/root/tree",
        &tree_back.display().to_string(),
    ]);
    assert_eq!(tree_digest(&work.join("tree")), tree_digest(&tree_back));

    // Copy refusals say what to do.
    let err = text(&lab.banger(&["vm", "cp", "h1:relative", "/tmp/x"]).stderr);
    assert!(err.contains("must be absolute"), "{err}");
    let err = text(&lab.banger(&["vm", "cp", "/tmp/a", "/tmp/b"]).stderr);
    assert!(err.contains("NAME:/path"), "{err}");

    // ssh: banger's key, the pinned host key, no prompt.
    let o = lab.banger(&["vm", "ssh", "h1", "--", "uname", "-a"]);
    assert_eq!(code(&o), Some(0), "ssh: {}", text(&o.stderr));
    assert!(text(&o.stdout).contains(" h1 "), "{}", text(&o.stdout));
    let pinned = lab.json(&["vm", "show", "h1", "--json"])["runtime"]["ssh_host_key"]
        .as_str()
        .expect("pinned host key")
        .to_owned();
    assert!(pinned.starts_with("ssh-ed25519 "), "{pinned}");

    // An interactive shell on a PTY, driven through tmux.
    {
        let mut tmux = Tmux::new(&lab, "t", &["vm", "exec", "-it", "h1", "--", "bash"]);
        tmux.wait_for("root@h1", Duration::from_secs(60));
        tmux.keys(&["echo cols=$(tput cols) tty=$(tty)", "Enter"]);
        let screen = tmux.wait_for("cols=100 tty=/dev/pts/", Duration::from_secs(30));
        assert!(screen.contains("cols=100"), "{screen}");
        tmux.keys(&["exit 3", "Enter"]);
        tmux.wait_for("EXITED 3", Duration::from_secs(30));
    }

    // A stopped VM refuses exec with a hint.
    lab.ok(&["vm", "stop", "h1"]);
    let err = text(&lab.banger(&["vm", "exec", "h1", "--", "true"]).stderr);
    assert!(err.contains("start it first"), "{err}");
    lab.ok(&["vm", "delete", "h1"]);
    lab.assert_no_leaks();
    assert!(dir_entries(&lab.env.state_dir().join("vms")).is_empty());
    lab.ok(&["daemon", "stop"]);
}
