//! A private banger installation for one test: temp state and runtime
//! dirs, an empty config, a stand-in QEMU, and a guard that kills the
//! daemon however the test ends.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const BANGER: &str = env!("CARGO_BIN_EXE_banger");
pub const BANGERD: &str = env!("CARGO_BIN_EXE_bangerd");

pub struct Env {
    pub dir: tempfile::TempDir,
    /// Overrides `<dir>/state` (the boot test keeps assets in a cache).
    pub state: Option<PathBuf>,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("banger-test-")
            .tempdir()
            .expect("tempdir");
        let env = Self { dir, state: None };
        std::fs::write(env.config_path(), "").expect("config");
        // A QEMU stand-in: these tests talk to the daemon, they boot
        // nothing, and must not depend on qemu being installed.
        let fake = env.dir.path().join("fake-qemu");
        std::fs::write(
            &fake,
            "#!/bin/sh\ncase \"$1\" in\n--version) echo 'QEMU emulator version 7.2.0 (fake)';;\n-accel) printf 'Accelerators supported in QEMU binary:\\ntcg\\n';;\nesac\n",
        )
        .expect("fake qemu");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        env
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state
            .clone()
            .unwrap_or_else(|| self.dir.path().join("state"))
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run").join("bangerd.sock")
    }

    pub fn command(&self, bin: &str) -> Command {
        let mut c = Command::new(bin);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BANGER_CONFIG", self.config_path())
            .env("BANGER_STATE_DIR", self.state_dir())
            .env("BANGER_RUNTIME_DIR", self.dir.path().join("run"))
            .env("BANGER_DAEMON_BIN", BANGERD)
            .env("BANGER_QEMU_BIN", self.dir.path().join("fake-qemu"))
            .env("BANGER_FIRECRACKER_BIN", "/nonexistent/firecracker")
            .env("BANGER_AUTO_PROVISION", "false")
            .env("BANGER_GUEST_INIT", self.dir.path().join("fake-init"));
        for passthrough in ["BANGER_APT_GET_BIN", "BANGER_LOG_LEVEL"] {
            if let Some(v) = std::env::var_os(passthrough) {
                c.env(passthrough, v);
            }
        }
        c
    }

    pub fn banger(&self, args: &[&str]) -> Output {
        self.command(BANGER)
            .args(args)
            .output()
            .expect("run banger")
    }

    /// Runs banger and insists on success.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.banger(args);
        assert!(
            out.status.success(),
            "banger {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs banger and insists on failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.banger(args);
        assert!(
            !out.status.success(),
            "banger {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("banger {args:?}: not JSON ({e}): {out}"))
    }

    pub fn daemon_pid(&self) -> i32 {
        let st = self.json(&["daemon", "status", "--json"]);
        st["status"]["pid"].as_i64().expect("pid") as i32
    }

    /// The pid in the lock file, if that process is a live bangerd.
    pub fn live_daemon_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.state_dir().join("bangerd.lock"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        is_bangerd(pid).then_some(pid)
    }
}

/// True if `pid` is a running (not zombie) bangerd: checked through
/// /proc so a recycled pid is never mistaken for it.
pub fn is_bangerd(pid: i32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    String::from_utf8_lossy(&cmdline).contains("bangerd") && !zombie
}

pub fn wait_gone(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !is_bangerd(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

pub fn kill(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Bytes of a minimal x86-64 ELF header: enough for banger to accept a
/// file as a vmlinux (or a static init) without booting it.
pub fn fake_elf(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len.max(64)];
    v[..4].copy_from_slice(b"\x7fELF");
    v[4] = 2;
    v[5] = 1;
    v[6] = 1;
    v[18] = 62;
    for (i, b) in v.iter_mut().enumerate().skip(64) {
        *b = (i % 251) as u8;
    }
    v
}

impl Env {
    /// Imports a stand-in `default` kernel and image, so VMs can be created
    /// without provisioning (which downloads).
    pub fn seed_assets(&self) {
        let k = self.dir.path().join("vmlinux");
        std::fs::write(&k, fake_elf(4096)).expect("fake kernel");
        self.ok(&[
            "kernel",
            "import",
            "default",
            "--vmlinux",
            k.to_str().expect("utf8"),
        ]);
        let root = self.dir.path().join("rootfs-tree");
        std::fs::create_dir_all(root.join("etc")).expect("tree");
        std::fs::write(root.join("etc/hostname"), "seed\n").expect("tree");
        self.ok(&[
            "image",
            "import",
            "default",
            "--dir",
            root.to_str().expect("utf8"),
        ]);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(pid) = self.live_daemon_pid() {
            kill(pid, nix::sys::signal::Signal::SIGKILL);
            wait_gone(pid, Duration::from_secs(5));
        }
    }
}

pub fn path_mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}
