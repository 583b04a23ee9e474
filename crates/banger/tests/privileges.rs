//! Tier 3: least privilege. bangerd runs as an unprivileged user (here
//! `nobody`, with only CAP_NET_BIND_SERVICE for its DNS) and asks the root
//! helper (`bangerd --helper`) for the bridge, taps and firewall; QEMU gets
//! its tap as a descriptor and runs as that user. All inside a network
//! namespace the test makes. Where the host has hardware KVM, a jailed
//! Firecracker VM runs the same way (the helper stages and starts its
//! jail); elsewhere `tests/jailed_helper.rs` covers that below the daemon.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::Duration;

use common::helper::Helper;
use common::{
    BANGER, BANGERD, Env, Netns, cached_default_assets, guest_prereqs, skip_or_fail, vmm_pids,
};

const NOBODY: u32 = 65534;

fn hardware_kvm() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")))
}

fn uid_of(pid: i32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

#[test]
fn an_unprivileged_daemon_runs_vms_through_the_helper() {
    let init = match guest_prereqs() {
        Ok(i) => i,
        Err(reason) => return skip_or_fail("privileges test", &reason),
    };
    if Command::new("setpriv").arg("--version").output().is_err() {
        return skip_or_fail("privileges test", "setpriv (util-linux) not installed");
    }
    let assets = cached_default_assets(&init);
    let env = Env::new();
    let ns = Netns::new();
    let dir = env.dir.path();
    // What the unprivileged daemon may read and own: its state and runtime
    // dirs, and copies of the boot assets to import.
    let src = dir.join("src");
    std::fs::create_dir_all(&src).expect("src");
    let path = |v: &serde_json::Value| v["path"].as_str().expect("path").to_owned();
    for (from, name) in [
        (path(&assets.kernel["vmlinux"]), "vmlinux"),
        (path(&assets.kernel["initrd"]), "initrd.img"),
        (path(&assets.image["rootfs"]), "rootfs.ext4"),
    ] {
        let st = Command::new("cp")
            .args(["--sparse=always", &from])
            .arg(src.join(name))
            .status()
            .expect("cp");
        assert!(st.success());
    }
    for d in ["state", "run", "jail"] {
        std::fs::create_dir_all(dir.join(d)).expect("dir");
    }
    // Jails live where only root can change them (the helper refuses a
    // chroot base inside the daemon's state dir).
    let chroot_base = dir.join("jail");
    let vmm_bin = |var: &str| std::env::var(var).unwrap_or_else(|_| "/nonexistent".into());
    let st = Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .args([dir.join("state"), dir.join("run"), src.clone()])
        .status()
        .expect("chown");
    assert!(st.success());
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let helper_socket = dir.join("run/helper.sock");

    // The helper: root, in the namespace.
    let start_helper = || {
        let _ = std::fs::remove_file(&helper_socket);
        let mut hc = env.command_in(&ns.name, BANGERD);
        hc.args(["--helper", "--for-uid", &NOBODY.to_string()])
            .env("BANGER_HELPER_SOCKET", &helper_socket)
            .env("BANGER_HELPER_DIR", dir.join("helper"))
            .env("BANGER_JAILER_CHROOT_BASE", &chroot_base)
            .env("BANGER_JAILER_BIN", vmm_bin("BANGER_JAILER_BIN"))
            .env("BANGER_FIRECRACKER_BIN", vmm_bin("BANGER_FIRECRACKER_BIN"));
        Helper::start(hc)
    };
    let mut helper = start_helper();

    // banger (and the bangerd it starts) as nobody.
    let banger = |args: &[&str]| -> Output {
        let mut c = env.command_in(&ns.name, "setpriv");
        c.args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
            "--clear-groups",
            "--inh-caps",
            "+net_bind_service",
            "--ambient-caps",
            "+net_bind_service",
            BANGER,
        ])
        .args(args)
        .env("BANGER_HELPER_SOCKET", &helper_socket)
        .env("BANGER_JAILER_CHROOT_BASE", &chroot_base)
        .env("BANGER_JAILER_BIN", vmm_bin("BANGER_JAILER_BIN"))
        .env("BANGER_FIRECRACKER_BIN", vmm_bin("BANGER_FIRECRACKER_BIN"))
        .env("BANGER_QEMU_BIN", "qemu-system-x86_64")
        .env("BANGER_VSOCK_BACKEND_BIN", "vhost-device-vsock");
        c.output().expect("banger as nobody")
    };
    let ok = |args: &[&str]| -> String { common::succeeded(args, banger(args)) };
    let s = |p: &str| src.join(p).display().to_string();
    ok(&[
        "kernel",
        "import",
        "default",
        "--vmlinux",
        &s("vmlinux"),
        "--initrd",
        &s("initrd.img"),
    ]);
    ok(&["image", "import", "default", "--rootfs", &s("rootfs.ext4")]);

    let doctor = ok(&["doctor", "--json"]);
    assert!(doctor.contains("\"privileges\""), "{doctor}");
    assert!(
        doctor.contains("banger-helper"),
        "doctor says the helper is in use: {doctor}"
    );
    assert!(
        doctor.contains("staging and starting firecracker jails")
            && !doctor.contains("refuse firecracker jails"),
        "doctor says the helper jails, with a chroot base it accepts: {doctor}"
    );

    let out = ok(&[
        "vm",
        "run",
        "--name",
        "p1",
        "--memory",
        "512",
        "--",
        "sh",
        "-c",
        "cat /etc/hostname; id -un",
    ]);
    assert_eq!(out, "p1\nroot\n", "root inside the guest, nobody outside");
    let daemon: serde_json::Value =
        serde_json::from_str(&ok(&["daemon", "status", "--json"])).expect("json");
    let daemon_pid = daemon["status"]["pid"].as_i64().expect("pid") as i32;
    assert_eq!(uid_of(daemon_pid), NOBODY, "bangerd runs unprivileged");
    let vmms = vmm_pids(&dir.display().to_string());
    assert!(!vmms.is_empty());
    for pid in &vmms {
        assert_eq!(uid_of(*pid), NOBODY, "vmm {pid} runs as the daemon's user");
    }
    assert!(
        ns.links().iter().any(|l| l.starts_with("bg-")),
        "the helper made the tap"
    );

    if hardware_kvm() && std::env::var_os("BANGER_JAILER_BIN").is_some() {
        // Firecracker, jailed by the helper for the unprivileged daemon.
        let out = ok(&[
            "vm",
            "run",
            "--rm",
            "--vmm",
            "firecracker",
            "--name",
            "f1",
            "--",
            "id",
            "-un",
        ]);
        assert_eq!(out, "root\n");
        assert!(
            common::dir_entries(&chroot_base.join("firecracker")).is_empty(),
            "the helper removed the jail"
        );
    } else {
        println!(
            "SKIPPED jailed firecracker through the unprivileged daemon: no hardware KVM here (tests/jailed_helper.rs covers the helper's jails without a guest)"
        );
    }

    // The helper's socket is the daemon user's alone.
    let meta = std::fs::metadata(&helper_socket).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), NOBODY);

    // Both halves die hard; a new helper and the next command's daemon
    // adopt the running VM and can still tear it down.
    let _ = helper.0.kill();
    let _ = helper.0.wait();
    common::kill(daemon_pid, nix::sys::signal::Signal::SIGKILL);
    assert!(common::wait_gone(daemon_pid, Duration::from_secs(10)));
    helper = start_helper();
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["vm", "show", "p1", "--json"])).expect("json");
    assert_eq!(v["state"], "running", "adopted after both restarts");
    assert_eq!(
        ok(&["vm", "exec", "p1", "--", "cat", "/etc/hostname"]),
        "p1\n"
    );
    ok(&["vm", "kill", "p1"]);
    ok(&["vm", "delete", "p1"]);
    assert!(
        !ns.links().iter().any(|l| l.starts_with("bg-")),
        "tap removed through the helper"
    );
    ok(&["daemon", "stop"]);
    assert!(vmm_pids(&dir.display().to_string()).is_empty());
    drop(helper);
}
