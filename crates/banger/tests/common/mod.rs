//! A private banger installation for one test: temp state and runtime
//! dirs, an empty config, a stand-in QEMU, and a guard that kills the
//! daemon however the test ends.

#![allow(dead_code)]

pub mod busybox;
pub mod helper;
pub mod stream;
pub mod uplink;
pub mod wait;

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
        // Likewise QEMU's vsock backend and the guest agent.
        let backend = env.dir.path().join("fake-vsock-backend");
        std::fs::write(
            &backend,
            "#!/bin/sh
echo 'vhost-device-vsock 0.3.0 (fake)'
",
        )
        .expect("fake backend");
        std::fs::set_permissions(&backend, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(env.dir.path().join("fake-agent"), fake_elf(64)).expect("fake agent");
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
        self.with_env(Command::new(bin))
    }

    /// `bin` run inside network namespace `ns`. Through `nsenter`, not
    /// `ip netns exec`: that one also makes a mount namespace with a fresh
    /// sysfs, in which `/sys/fs/cgroup` is missing and the jailer finds no
    /// cgroup hierarchy.
    pub fn command_in(&self, ns: &str, bin: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(bin);
        self.with_env(c)
    }

    fn with_env(&self, mut c: Command) -> Command {
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BANGER_CONFIG", self.config_path())
            .env("BANGER_STATE_DIR", self.state_dir())
            .env("BANGER_RUNTIME_DIR", self.dir.path().join("run"))
            .env("BANGER_DAEMON_BIN", BANGERD)
            .env("BANGER_QEMU_BIN", self.dir.path().join("fake-qemu"))
            .env("BANGER_FIRECRACKER_BIN", "/nonexistent/firecracker")
            .env("BANGER_AUTO_PROVISION", "false")
            .env("BANGER_GUEST_INIT", self.dir.path().join("fake-init"))
            .env(
                "BANGER_VSOCK_BACKEND_BIN",
                self.dir.path().join("fake-vsock-backend"),
            )
            .env("BANGER_GUEST_AGENT", self.dir.path().join("fake-agent"));
        // The real guest binaries, when the test runner built them.
        if let Some(agent) = std::env::var_os("BANGER_GUEST_AGENT") {
            c.env("BANGER_GUEST_AGENT", agent);
        }
        if let Some(init) = std::env::var_os("BANGER_GUEST_INIT") {
            c.env("BANGER_GUEST_INIT", init);
        }
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
        succeeded(args, self.banger(args))
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

/// Waits for process `pid` (a daemon, a VMM) to exit.
pub fn wait_gone(pid: i32, within: Duration) -> bool {
    wait::exited(pid, within)
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
        // VMMs of this test's VMs (they outlive daemons by design); a
        // QEMU that was still daemonizing may appear once its parent is
        // gone, hence another look after each round of exits.
        let needle = self.dir.path().display().to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = vmm_pids(&needle);
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for &pid in &pids {
                kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            for pid in pids {
                wait::exited(pid, deadline.saturating_duration_since(Instant::now()));
            }
        }
    }
}

pub fn path_mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

/// `banger args` finished: insists it succeeded, returns its stdout.
pub fn succeeded(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "banger {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails under `CI=true`, otherwise prints why a test is skipped.
pub fn skip_or_fail(what: &str, reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what}: prerequisite missing in CI: {reason}");
    }
    eprintln!("SKIPPED {what}: {reason}");
}

/// What guest tests need: root, QEMU and its vsock backend, and the
/// static guest init and agent.
pub fn guest_prereqs() -> Result<PathBuf, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (debootstrap, taps, network namespaces)".into());
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("qemu-system-x86_64 not installed (scripts/setup.sh --deps-only)".into());
    }
    if Command::new("vhost-device-vsock")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("vhost-device-vsock not installed (scripts/setup.sh --deps-only)".into());
    }
    if !std::env::var_os("BANGER_GUEST_AGENT").is_some_and(|p| Path::new(&p).is_file()) {
        return Err(
            "BANGER_GUEST_AGENT unset: run through scripts/test.sh (it builds the static guest agent)"
                .into(),
        );
    }
    std::env::var_os("BANGER_GUEST_INIT")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            "BANGER_GUEST_INIT unset: run through scripts/test.sh (it builds the static guest init)"
                .into()
        })
}

/// Bump to invalidate every cached asset entry.
const CACHE_VERSION: &str = "4";

fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned()
}

fn candidate_version(package: &str) -> String {
    let out = Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .expect("apt-cache");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Candidate:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default()
}

/// The `default` kernel and image as banger builds them, cached outside
/// the clone under `$BANGER_TEST_CACHE` (default `/var/cache/banger-test`)
/// keyed by everything that shapes them: the guest init binary, the kernel
/// package version the archive offers, and [`CACHE_VERSION`] (bumped when
/// banger's build of either changes). Built with banger itself when absent;
/// only the newest entry is kept.
pub struct CachedAssets {
    pub kernel: serde_json::Value,
    pub image: serde_json::Value,
}

pub fn cached_default_assets(init: &Path) -> CachedAssets {
    let cache_root = std::env::var_os("BANGER_TEST_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/banger-test"), PathBuf::from);
    let key_material = format!(
        "v{CACHE_VERSION}\ninit {}\nkernel {}\n",
        sha256_hex(&std::fs::read(init).expect("init")),
        candidate_version("linux-image-cloud-amd64"),
    );
    let key = sha256_hex(key_material.as_bytes())[..16].to_owned();
    // One user of the cache at a time, across the tests of a binary and
    // across binaries: each runs a daemon on the cache's state dir, and an
    // Env going away kills the daemon of its state dir, whoever started it.
    std::fs::create_dir_all(&cache_root).expect("cache root");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache_root.join(".lock"))
        .expect("cache lock file");
    let _cache_lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("locking the test cache");
    let entry = cache_root.join(&key);
    let complete = entry.join("complete");
    if !complete.exists() {
        let _ = std::fs::remove_dir_all(&entry);
    }
    for e in std::fs::read_dir(&cache_root)
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name() != *key && e.file_name() != ".lock" {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    std::fs::create_dir_all(entry.join("state")).expect("cache dir");
    let mut env = Env::new();
    env.state = Some(entry.join("state"));
    let banger = |args: &[&str]| {
        let out = env
            .command(BANGER)
            .env("BANGER_GUEST_INIT", init)
            .args(args)
            .output()
            .expect("banger");
        succeeded(args, out)
    };
    if complete.exists() {
        println!("assets: using the cache in {}", entry.display());
    } else {
        let t = Instant::now();
        banger(&["kernel", "add", "default", "--from-debian"]);
        println!(
            "figure: kernel add --from-debian took {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        banger(&["image", "build", "default"]);
        println!("figure: image build took {:.1}s", t.elapsed().as_secs_f64());
        std::fs::write(&complete, &key_material).expect("mark complete");
    }
    let kernel = serde_json::from_str(&banger(&[
        "kernel", "show", "default", "--verify", "--json",
    ]))
    .expect("json");
    let image =
        serde_json::from_str(&banger(&["image", "show", "default", "--json"])).expect("json");
    banger(&["daemon", "stop"]);
    CachedAssets { kernel, image }
}

/// A network namespace for one test; deleted (with every link in it) on
/// drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "banger-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(ok.success(), "ip netns add {name}");
        let ok = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status()
            .expect("ip");
        assert!(ok.success());
        Self { name }
    }

    /// Link names in the namespace.
    pub fn links(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-o", "link"])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.split(':')
                    .nth(1)
                    .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
            })
            .collect()
    }

    /// One ping, inside the namespace.
    pub fn ping(&self, ip: &str) -> bool {
        self.ping_args(&["-c", "1", "-W", "1", ip])
    }

    /// Pings every 200 ms until the first answer, for at most `within`
    /// (whole seconds, rounded up). Nothing announces that a guest's
    /// network is up: an answer is the event, and ping's own deadline
    /// bounds the wait.
    pub fn ping_within(&self, ip: &str, within: Duration) -> bool {
        let secs = within.as_secs() + u64::from(within.subsec_nanos() > 0);
        self.ping_args(&["-c", "1", "-i", "0.2", "-w", &secs.max(1).to_string(), ip])
    }

    fn ping_args(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "ping"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Pids of VMMs whose command line mentions `needle` (a test directory).
pub fn vmm_pids(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd);
            // QEMU's per-VM vsock backend counts: it must die with its VM.
            let vmm = cmd.contains("qemu-system")
                || cmd.contains("firecracker")
                || cmd.contains("vhost-device-vsock");
            (vmm && cmd.contains(needle)).then_some(pid)
        })
        .collect()
}

/// Names in a directory (empty when it does not exist).
pub fn dir_entries(p: &Path) -> Vec<String> {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A banger installation whose VMs run under QEMU/TCG inside a network
/// namespace of its own.
pub struct Lab {
    pub env: Env,
    pub ns: Netns,
    /// Warm starts on (the product's default). Off in most labs, so each
    /// test's VMs boot as the test expects and no template outlives it.
    warm: bool,
    /// Released last: the VMs, daemon and namespace are gone first.
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Lab {
    /// banger inside the namespace, with the real QEMU (the daemon it
    /// starts inherits this environment).
    pub fn command(&self) -> Command {
        let mut c = self.env.command_in(&self.ns.name, BANGER);
        c.env("BANGER_QEMU_BIN", "qemu-system-x86_64")
            .env("BANGER_VSOCK_BACKEND_BIN", "vhost-device-vsock")
            .env(
                "BANGER_WARM_START",
                if self.warm { "true" } else { "false" },
            );
        c
    }

    pub fn banger(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("banger")
    }

    /// Runs banger and insists on success; a failure also says how busy
    /// the host was and what the daemon and the guests last said.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.banger(args);
        if !out.status.success() {
            eprintln!("{}", self.diagnostics());
        }
        succeeded(args, out)
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("json")
    }

    /// The host's load, the daemon log's tail and each VM's console tail:
    /// printed with a failure, so a slow or stuck boot explains itself.
    pub fn diagnostics(&self) -> String {
        let tail = |p: &Path, n: usize| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        let mut out = format!(
            "--- host load (1, 5, 15 min; runnable/total): {}",
            std::fs::read_to_string("/proc/loadavg").unwrap_or_default()
        );
        out.push_str(&format!(
            "--- daemon log tail:\n{}\n",
            tail(&self.env.state_dir().join("bangerd.log"), 30)
        ));
        for vm in dir_entries(&self.env.state_dir().join("vms")) {
            let console = self
                .env
                .state_dir()
                .join("vms")
                .join(&vm)
                .join("console.log");
            out.push_str(&format!(
                "--- console of vm {vm}:\n{}\n",
                tail(&console, 20)
            ));
        }
        out
    }

    pub fn wait_ping(&self, ip: &str, within: Duration) -> Duration {
        let t = Instant::now();
        // ping waits out its deadline for an answer, but gives up at once
        // where the route is missing; that case alone comes round again.
        let answered = wait::until(within, || {
            self.ns.ping_within(ip, within.saturating_sub(t.elapsed()))
        });
        assert!(answered, "guest {ip} did not answer ping within {within:?}");
        t.elapsed()
    }

    /// `dig` against banger's DNS on the bridge, inside the namespace.
    pub fn resolve(&self, name: &str) -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns.name,
                "dig",
                "+short",
                "+time=2",
                "+tries=2",
                "@172.16.0.1",
                name,
            ])
            .output()
            .expect("dig (scripts/setup.sh installs bind9-dnsutils)");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn daemon_pid(&self) -> i32 {
        self.json(&["daemon", "status", "--json"])["status"]["pid"]
            .as_i64()
            .expect("pid") as i32
    }

    /// Nothing of banger's left on the host: taps, VMMs, VM dirs, sockets,
    /// NAT rules naming a tap, build dirs.
    pub fn assert_no_leaks(&self) {
        let taps: Vec<String> = self
            .ns
            .links()
            .into_iter()
            .filter(|l| l.starts_with("bg-"))
            .collect();
        assert!(taps.is_empty(), "leaked taps: {taps:?}");
        let vmms = vmm_pids(&self.env.dir.path().display().to_string());
        assert!(vmms.is_empty(), "leaked VMM processes: {vmms:?}");
        let dirs = dir_entries(&self.env.state_dir().join("vms"));
        assert!(dirs.is_empty(), "leaked vm dirs: {dirs:?}");
        let socks = dir_entries(&self.env.dir.path().join("run/vms"));
        assert!(socks.is_empty(), "leaked sockets: {socks:?}");
        let rules: Vec<String> = self
            .ruleset()
            .lines()
            .filter(|l| l.contains("bg-"))
            .map(str::to_owned)
            .collect();
        assert!(rules.is_empty(), "leaked nft rules: {rules:#?}");
        let tmp = dir_entries(&self.env.state_dir().join("tmp"));
        assert!(tmp.is_empty(), "leaked build dirs: {tmp:?}");
    }
}

/// These tests boot several TCG guests each: one at a time on small
/// machines, or the guests' timing becomes the machine's load.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn lab() -> Option<Lab> {
    lab_with(false)
}

/// A lab whose daemon makes and restores warm-start templates.
pub fn warm_lab() -> Option<Lab> {
    lab_with(true)
}

fn lab_with(warm: bool) -> Option<Lab> {
    let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let init = match guest_prereqs() {
        Ok(i) => i,
        Err(reason) => {
            skip_or_fail("lifecycle test", &reason);
            return None;
        }
    };
    let assets = cached_default_assets(&init);
    let lab = Lab {
        env: Env::new(),
        ns: Netns::new(),
        warm,
        _serial: serial,
    };
    let path = |v: &serde_json::Value| v["path"].as_str().expect("path").to_owned();
    lab.ok(&[
        "kernel",
        "import",
        "default",
        "--vmlinux",
        &path(&assets.kernel["vmlinux"]),
        "--initrd",
        &path(&assets.kernel["initrd"]),
    ]);
    lab.ok(&[
        "image",
        "import",
        "default",
        "--rootfs",
        &path(&assets.image["rootfs"]),
    ]);
    Some(lab)
}
