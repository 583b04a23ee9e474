//! Tier 2: Firecracker jailed for an unprivileged daemon. The root helper
//! (`bangerd --helper --for-uid 65534`) stages the chroot and starts the
//! real jailer; the daemon's half (`FirecrackerVmm` over a `HelperClient`)
//! runs as `nobody`, in a copy of this test binary started with `setpriv`.
//! Both halves are then killed hard; a new helper and a new "daemon" find
//! the VMM by its jail id and tear everything down.
//!
//! Guest boot is not awaited: Firecracker guests need hardware KVM
//! (`tests/privileges.rs` runs one through the whole daemon where it
//! exists). Firecracker itself runs here and answers its API.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_api::doctor::Accel;
use banger_host::helper::HelperClient;
use banger_host::jail::{CgroupVersion, Jail, JailConfig, JailOps, JailStage, remove_cgroups};
use banger_vmm::firecracker::{FcApi, FirecrackerVmm};
use banger_vmm::{LaunchSpec, Vmm, process};
use common::helper::Helper;
use common::{BANGERD, Env, cached_default_assets, guest_prereqs, skip_or_fail};

const NOBODY: u32 = 65534;
/// Not the id `tests/firecracker.rs` uses: cgroups are host-wide.
const VM: &str = "fedcba9876543210";
/// Set (to `launch` or `teardown`) in the unprivileged copy.
const CHILD: &str = "BANGER_JAIL_TEST_CHILD";
const CHILD_TEST: &str = "the_unprivileged_half";

struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    fn vm(&self) -> PathBuf {
        self.state().join("vms").join(VM)
    }
    fn run(&self) -> PathBuf {
        self.dir.join("run")
    }
    fn helper_socket(&self) -> PathBuf {
        self.run().join("helper.sock")
    }
    fn jail(&self) -> JailConfig {
        let cgroup_root = PathBuf::from("/sys/fs/cgroup");
        JailConfig {
            // The daemon's side never runs the jailer: the helper does.
            jailer: "/nonexistent/jailer".into(),
            chroot_base: self.dir.join("jail"),
            uid: NOBODY,
            gid: NOBODY,
            cgroup_version: CgroupVersion::detect(&cgroup_root),
            cgroups: vec![],
            cgroup_root,
        }
    }
    fn spec(&self) -> LaunchSpec {
        let vm = self.vm();
        LaunchSpec {
            vm_id: VM.into(),
            vcpus: 1,
            memory_mib: 128,
            kernel: self.state().join("kernels/vmlinux"),
            initrd: Some(self.state().join("kernels/initrd.img")),
            cmdline: "console=ttyS0 root=/dev/vda rw panic=-1".into(),
            disks: vec![vm.join("root.ext4"), vm.join("work.ext4")],
            net: None,
            console_log: vm.join("console.log"),
            control_socket: self.run().join(format!("{VM}.sock")),
            pid_file: vm.join("vmm.pid"),
            accel: Accel::Kvm,
            vsock: Some(self.run().join(format!("{VM}.vsock"))),
            agent_serial: None,
        }
    }
    fn vmm(&self) -> FirecrackerVmm {
        FirecrackerVmm {
            bin: "/nonexistent/firecracker".into(),
            jail: Some(Jail {
                config: self.jail(),
                ops: Arc::new(HelperClient {
                    socket: self.helper_socket(),
                }),
            }),
        }
    }
}

/// However the test ends: no VMM, jail or cgroup of `VM` is left.
struct Sweep(JailConfig);

impl Drop for Sweep {
    fn drop(&mut self) {
        for pid in common::vmm_pids(&format!(" --id {VM} ")) {
            common::kill(pid, nix::sys::signal::Signal::SIGKILL);
            common::wait_gone(pid, Duration::from_secs(5));
        }
        let _ = banger_host::jail::remove_tree(&self.0.jail_dir(VM));
        // The exits awaited above empty the cgroups; the bounded retry
        // only covers a kernel that calls one busy a moment longer, which
        // nothing announces.
        common::wait::until(Duration::from_secs(2), || {
            remove_cgroups(&self.0, VM).is_ok()
        });
    }
}

fn start_helper(env: &Env, l: &Layout, jailer: &Path, firecracker: &Path) -> Helper {
    let sock = l.helper_socket();
    let _ = std::fs::remove_file(&sock);
    let mut c = env.command(BANGERD);
    c.args(["--helper", "--for-uid", &NOBODY.to_string()])
        .env("BANGER_STATE_DIR", l.state())
        .env("BANGER_RUNTIME_DIR", l.run())
        .env("BANGER_HELPER_SOCKET", &sock)
        .env("BANGER_HELPER_DIR", l.dir.join("helper"))
        .env("BANGER_JAILER_CHROOT_BASE", l.dir.join("jail"))
        .env("BANGER_JAILER_BIN", jailer)
        .env("BANGER_FIRECRACKER_BIN", firecracker);
    Helper::start(c)
}

/// Runs [`the_unprivileged_half`] as nobody; returns its stdout.
fn as_nobody(l: &Layout, mode: &str) -> String {
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
            "--clear-groups",
        ])
        .arg(exe)
        .args([
            "--exact",
            CHILD_TEST,
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, mode)
        .env("BANGER_JAIL_TEST_DIR", &l.dir)
        .output()
        .expect("setpriv");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the unprivileged half ({mode}) failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn status_ids(pid: u32, field: &str) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(str::to_owned))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

#[test]
fn a_jail_for_an_unprivileged_daemon_is_staged_started_and_released_by_the_helper() {
    let what = "jailed firecracker through the helper";
    let (Some(jailer), Some(firecracker)) = (
        std::env::var_os("BANGER_JAILER_BIN").map(PathBuf::from),
        std::env::var_os("BANGER_FIRECRACKER_BIN").map(PathBuf::from),
    ) else {
        return skip_or_fail(
            what,
            "BANGER_JAILER_BIN/BANGER_FIRECRACKER_BIN unset (scripts/test.sh points them at ../shared/bin)",
        );
    };
    if !Path::new("/dev/kvm").exists() {
        return skip_or_fail(what, "no /dev/kvm on this host");
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        return skip_or_fail(what, "setpriv (util-linux) not installed");
    }
    let init = match guest_prereqs() {
        Ok(i) => i,
        Err(reason) => return skip_or_fail(what, &reason),
    };
    let assets = cached_default_assets(&init);
    let env = Env::new();
    let l = Layout {
        dir: env.dir.path().to_owned(),
    };
    let _sweep = Sweep(l.jail());
    // Root's: the test dir and the chroot base. The daemon's: its state
    // and runtime dirs, with its kernel and its VM's disks.
    std::fs::set_permissions(&l.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::create_dir_all(l.vm()).expect("vm dir");
    std::fs::create_dir_all(l.state().join("kernels")).expect("kernels");
    std::fs::create_dir_all(l.run()).expect("run");
    let path = |v: &serde_json::Value| v["path"].as_str().expect("path").to_owned();
    for (from, to) in [
        (path(&assets.kernel["vmlinux"]), "kernels/vmlinux"),
        (path(&assets.kernel["initrd"]), "kernels/initrd.img"),
    ] {
        std::fs::copy(from, l.state().join(to)).expect("copy asset");
    }
    for disk in ["root.ext4", "work.ext4"] {
        std::fs::File::create(l.vm().join(disk))
            .and_then(|f| f.set_len(64 << 20))
            .expect("disk");
    }
    let st = Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .args([l.state(), l.run()])
        .status()
        .expect("chown");
    assert!(st.success());
    let mut helper = start_helper(&env, &l, &jailer, &firecracker);

    let out = as_nobody(&l, "launch");
    let pid: u32 = out
        .lines()
        .find_map(|line| line.strip_prefix("vmm pid="))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in the unprivileged half's output:\n{out}"));
    // The harness prints its own words ahead of the figure's line.
    if let Some(at) = out.find("figure:") {
        println!("{}", out[at..].lines().next().unwrap_or_default());
    }

    // The VMM: nobody's (real, effective, saved, fs), in its chroot, in
    // its own cgroup, limits applied by the helper's configuration.
    for field in ["Uid:", "Gid:"] {
        let ids = status_ids(pid, field);
        assert!(
            ids.len() == 4 && ids.iter().all(|u| *u == NOBODY.to_string()),
            "{field} {ids:?}"
        );
    }
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(cmdline.starts_with("/firecracker\0"), "{cmdline:?}");
    let jail = l.jail();
    let root = std::fs::metadata(format!("/proc/{pid}/root")).expect("process root");
    let chroot = std::fs::metadata(jail.root(VM)).expect("jail root");
    assert_eq!(
        (root.dev(), root.ino()),
        (chroot.dev(), chroot.ino()),
        "its / is the jail's root"
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    assert!(cgroups.contains(&format!("firecracker/{VM}")), "{cgroups}");
    let pids_max = jail
        .cgroup_dirs(VM)
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("pids.max")).ok())
        .expect("pids cgroup");
    assert_eq!(pids_max.trim(), "1024", "the helper's jailer.pids_max");
    assert_eq!(
        std::fs::metadata(jail.root(VM).join("drive0"))
            .expect("drive")
            .ino(),
        std::fs::metadata(l.vm().join("root.ext4"))
            .expect("disk")
            .ino(),
        "the VM's own disk, hard-linked in"
    );
    assert!(jail.root(VM).join("dev/kvm").exists(), "the jailer's nodes");
    // The jail belongs to root, not to the daemon it runs for.
    assert_eq!(std::fs::metadata(jail.jail_dir(VM)).expect("jail").uid(), 0);

    // Daemon and helper die hard; the VMM does not.
    drop(helper);
    assert!(process::alive_with(pid, &format!(" --id {VM} ")));
    helper = start_helper(&env, &l, &jailer, &firecracker);
    let out = as_nobody(&l, "teardown");
    assert!(out.contains(&format!("found vmm pid={pid}")), "{out}");
    assert!(common::wait_gone(pid as i32, Duration::from_secs(10)));
    assert!(!jail.jail_dir(VM).exists(), "chroot removed");
    assert!(jail.cgroup_dirs(VM).is_empty(), "cgroups removed");
    for disk in ["root.ext4", "work.ext4"] {
        assert!(l.vm().join(disk).is_file(), "{disk} stays");
    }
    drop(helper);
}

/// The daemon's half, as `nobody`: only ever run by the test above.
#[tokio::test]
#[ignore = "run as nobody by a_jail_for_an_unprivileged_daemon_is_staged_started_and_released_by_the_helper"]
async fn the_unprivileged_half() {
    let mode = std::env::var(CHILD).expect("run by the jail test, which sets the mode");
    let l = Layout {
        dir: std::env::var_os("BANGER_JAIL_TEST_DIR")
            .map(PathBuf::from)
            .expect("test dir"),
    };
    assert_ne!(nix::unistd::geteuid().as_raw(), 0, "must run unprivileged");
    let fc = l.vmm();
    let spec = l.spec();
    match mode.as_str() {
        "launch" => {
            // The helper refuses what is not this daemon's to jail.
            let helper = HelperClient {
                socket: l.helper_socket(),
            };
            let good = JailStage {
                vm_id: VM.into(),
                kernel: spec.kernel.clone(),
                initrd: spec.initrd.clone(),
                disks: spec.disks.clone(),
            };
            let evil = l.vm().join("evil.ext4");
            std::os::unix::fs::symlink("/etc/shadow", &evil).expect("symlink");
            for (bad, needle) in [
                (
                    JailStage {
                        kernel: "/etc/shadow".into(),
                        ..good.clone()
                    },
                    "outside",
                ),
                (
                    JailStage {
                        disks: vec![evil.clone()],
                        ..good.clone()
                    },
                    "symlink",
                ),
                (
                    JailStage {
                        vm_id: "0000000000000000".into(),
                        ..good.clone()
                    },
                    "foreign id",
                ),
            ] {
                let e = helper.stage(&bad).await.expect_err("refused");
                assert!(e.to_string().contains(needle), "{e}");
            }
            let e = helper
                .release(VM, Some(Path::new("/etc")))
                .await
                .expect_err("refused");
            assert!(e.to_string().contains("is not vm"), "{e}");
            let e = helper
                .spawn(VM, Path::new("/etc/motd"))
                .await
                .expect_err("refused");
            assert!(e.to_string().contains("is not"), "{e}");
            std::fs::remove_file(&evil).expect("rm");

            let t = Instant::now();
            let pid = fc
                .launch(&spec)
                .await
                .expect("jailed launch through the helper");
            println!(
                "figure: jailed firecracker via banger-helper: staged + spawned + configured + InstanceStart in {:.1} ms",
                t.elapsed().as_secs_f64() * 1000.0
            );
            // Its API, through the daemon's short symlink, as the daemon.
            let info = FcApi::new(&spec.control_socket)
                .instance_info()
                .await
                .expect("instance info");
            assert_eq!(info["state"], "Running", "{info}");
            assert!(fc.alive(pid, &spec.control_socket));
            println!("vmm pid={pid}");
        }
        "teardown" => {
            // What a restarted daemon does: find the VMM by its jail id,
            // kill it (it is ours), and have the helper remove the jail.
            let pid = fc.find(&spec.control_socket).expect("the jailed vmm");
            println!("found vmm pid={pid}");
            fc.kill(pid, &spec.control_socket).await.expect("kill");
            let jail_dir = l.jail().jail_dir(VM);
            fc.release(VM, Some(&jail_dir)).await.expect("release");
            fc.release(VM, Some(&jail_dir))
                .await
                .expect("release again");
        }
        other => panic!("unknown mode {other}"),
    }
}
