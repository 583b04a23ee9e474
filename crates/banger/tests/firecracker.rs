//! The Firecracker driver against the real binary (`../shared/bin` in CI,
//! `BANGER_FIRECRACKER_BIN`): spawn, API configuration, `InstanceStart`,
//! Ctrl-Alt-Del, kill and exit detection. Guest boot is awaited only where
//! the host has hardware KVM; elsewhere (these machines: a software nested
//! hypervisor) Firecracker guests crawl and die, which the test says.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use banger_api::doctor::Accel;
use std::os::unix::fs::MetadataExt;

use banger_vmm::firecracker::{FcApi, FirecrackerVmm};
use banger_vmm::jail::{CgroupVersion, Jail, JailConfig, LocalJail};
use banger_vmm::{LaunchSpec, Vmm, process};
use common::wait::Follow;
use common::{Env, cached_default_assets, guest_prereqs, skip_or_fail};

fn hardware_kvm() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")))
}

/// The Firecracker binary and the default kernel, or `None` after saying
/// why the test cannot run here.
fn prerequisites(what: &str) -> Option<(PathBuf, common::CachedAssets)> {
    let Some(bin) = std::env::var_os("BANGER_FIRECRACKER_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    else {
        skip_or_fail(
            what,
            "BANGER_FIRECRACKER_BIN unset (scripts/test.sh points it at ../shared/bin/firecracker)",
        );
        return None;
    };
    if !std::path::Path::new("/dev/kvm").exists() {
        skip_or_fail(what, "no /dev/kvm on this host");
        return None;
    }
    match guest_prereqs() {
        Ok(init) => Some((bin, cached_default_assets(&init))),
        Err(reason) => {
            skip_or_fail(what, &reason);
            None
        }
    }
}

/// A one-vCPU VM of the default kernel with two empty 64 MiB disks in `dir`.
fn launch_spec(
    dir: &std::path::Path,
    assets: &common::CachedAssets,
    vm_id: &str,
    control_socket: PathBuf,
    vsock: PathBuf,
) -> LaunchSpec {
    let disk = |name: &str| {
        let p = dir.join(name);
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(64 << 20))
            .expect("disk");
        p
    };
    let path = |v: &serde_json::Value| v["path"].as_str().expect("path").into();
    LaunchSpec {
        vm_id: vm_id.into(),
        vcpus: 1,
        memory_mib: 256,
        kernel: path(&assets.kernel["vmlinux"]),
        initrd: Some(path(&assets.kernel["initrd"])),
        cmdline: "console=ttyS0 root=/dev/vda rw panic=-1".into(),
        disks: vec![disk("root.img"), disk("work.img")],
        net: None,
        console_log: dir.join("console.log"),
        control_socket,
        pid_file: dir.join("fc.pid"),
        accel: Accel::Kvm,
        vsock: Some(vsock),
        agent_serial: None,
    }
}

#[tokio::test]
async fn the_real_firecracker_is_configured_started_and_stopped_through_its_api() {
    let Some((bin, assets)) = prerequisites("firecracker test") else {
        return;
    };
    let env = Env::new();
    let dir = env.dir.path();
    let spec = launch_spec(
        dir,
        &assets,
        "fc0123456789abcd",
        dir.join("fc.sock"),
        dir.join("fc.vsock"),
    );
    let fc = FirecrackerVmm { bin, jail: None };
    let t = Instant::now();
    let pid = fc
        .launch(&spec)
        .await
        .expect("launch + configure + InstanceStart");
    println!(
        "figure: firecracker spawn -> configured -> InstanceStart in {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    assert!(
        fc.alive(pid, &spec.control_socket),
        "identified by pid + API socket"
    );
    assert_eq!(fc.find(&spec.control_socket), Some(pid));
    let fc_log = std::fs::read_to_string(dir.join("firecracker.log")).unwrap_or_default();
    assert!(!fc_log.is_empty(), "the logger was configured and writes");
    assert!(
        dir.join("firecracker.metrics").exists(),
        "metrics configured"
    );
    // Its hybrid vsock is the unix socket banger's agent client speaks
    // to: bound by Firecracker itself once configured. (The CONNECT
    // handshake needs a guest driver behind it; that runs where a guest
    // boots.)
    let vsock = spec.vsock.clone().expect("vsock");
    tokio::net::UnixStream::connect(&vsock)
        .await
        .unwrap_or_else(|e| panic!("firecracker's vsock socket {}: {e}", vsock.display()));
    let info = FcApi::new(&spec.control_socket)
        .instance_info()
        .await
        .expect("instance info");
    assert_eq!(info["state"], "Running", "{info}");
    assert_eq!(
        std::fs::read_to_string(&spec.pid_file)
            .expect("pid file")
            .trim(),
        pid.to_string()
    );

    // Bad configuration is reported with Firecracker's own words.
    let err = FcApi::new(&spec.control_socket)
        .put(
            "/machine-config",
            serde_json::json!({"vcpu_count": 0, "mem_size_mib": 0}),
        )
        .await
        .expect_err("refused");
    assert!(
        err.to_string().contains("400") || err.to_string().contains("fault"),
        "{err}"
    );

    if hardware_kvm() {
        // The console followed as Firecracker writes it; off the async
        // worker, as the wait blocks.
        let console = spec.console_log.clone();
        let reached = tokio::task::spawn_blocking(move || {
            Follow::new(&console)
                .lines
                .wait_for(Duration::from_secs(60), |l| {
                    l.contains("banger-init: switching root")
                })
                .is_some()
        })
        .await
        .expect("console follower");
        assert!(
            reached,
            "guest did not reach the root init under Firecracker"
        );
    } else {
        println!(
            "SKIPPED Firecracker guest boot check: no hardware KVM on this host (software nested hypervisor); the API, InstanceStart and process control were exercised"
        );
    }

    fc.request_shutdown(&spec.control_socket)
        .await
        .expect("SendCtrlAltDel accepted");
    fc.kill(pid, &spec.control_socket).await.expect("kill");
    assert!(
        !process::vmm_alive(pid, &spec.control_socket),
        "exit detected"
    );
    assert!(process::all_by_socket(&spec.control_socket).is_empty());
}

/// Firecracker launched through the real jailer (`BANGER_JAILER_BIN`):
/// the VMM runs as the jail's uid, in its chroot, in its own cgroup; a
/// restarted daemon finds it by its jail id; kill + release leave neither
/// process, chroot nor cgroup, and the VM's disks intact.
#[tokio::test]
async fn firecracker_runs_jailed_in_its_chroot_uid_and_cgroup_and_leaves_nothing() {
    let Some(jailer) = std::env::var_os("BANGER_JAILER_BIN").map(PathBuf::from) else {
        return skip_or_fail(
            "jailer test",
            "BANGER_JAILER_BIN unset (scripts/test.sh points it at ../shared/bin/jailer)",
        );
    };
    let Some((bin, assets)) = prerequisites("jailer test") else {
        return;
    };
    let env = Env::new();
    let dir = env.dir.path();
    let vm_id = "0123456789abcdef";
    std::fs::create_dir_all(dir.join("run")).expect("run dir");
    let spec = launch_spec(
        dir,
        &assets,
        vm_id,
        dir.join(format!("run/{vm_id}.sock")),
        dir.join(format!("run/{vm_id}.vsock")),
    );
    let disks = spec.disks.clone();
    let cgroup_root = PathBuf::from("/sys/fs/cgroup");
    let jail = JailConfig {
        jailer,
        chroot_base: dir.join("jail"),
        uid: 64123,
        gid: 64123,
        cgroup_version: CgroupVersion::detect(&cgroup_root),
        cgroups: vec!["pids.max=64".into()],
        cgroup_root,
    };
    let fc = FirecrackerVmm {
        bin: bin.clone(),
        jail: Some(Jail {
            config: jail.clone(),
            ops: std::sync::Arc::new(LocalJail {
                config: jail.clone(),
                firecracker: bin,
                confine: None,
            }),
        }),
    };
    assert_eq!(
        fc.tap_owner(),
        Some((64123, 64123)),
        "taps are made for the jail's uid"
    );
    let t = Instant::now();
    let pid = fc.launch(&spec).await.expect("jailed launch");
    println!(
        "figure: jailed firecracker staged + spawned + configured + InstanceStart in {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).expect("uid");
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "64123"),
        "dropped to the jail's uid: {uid_line}"
    );
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(
        cmdline.starts_with("/firecracker\0"),
        "exec'd inside the chroot: {cmdline:?}"
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    assert!(
        cgroups.contains(&format!("firecracker/{vm_id}")),
        "in its own cgroup: {cgroups}"
    );
    let dirs = jail.cgroup_dirs(vm_id);
    assert!(!dirs.is_empty());
    let pids_max = dirs
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("pids.max")).ok())
        .expect("pids cgroup");
    assert_eq!(pids_max.trim(), "64");
    let root = jail.root(vm_id);
    assert_eq!(
        std::fs::metadata(root.join("drive0")).expect("drive").ino(),
        std::fs::metadata(&disks[0]).expect("disk").ino(),
        "disks are hard-linked in"
    );
    // The API through the short symlinked socket.
    let info = FcApi::new(&spec.control_socket)
        .instance_info()
        .await
        .expect("instance info through the symlink");
    assert_eq!(info["state"], "Running", "{info}");
    assert!(
        spec.vsock.as_ref().expect("vsock").exists(),
        "vsock symlink resolves"
    );
    // What a restarted daemon does: identify by jail id, not by paths.
    assert!(fc.alive(pid, &spec.control_socket));
    assert_eq!(fc.find(&spec.control_socket), Some(pid));
    assert!(
        !fc.alive(pid, &dir.join("run/ffffffffffffffff.sock")),
        "another VM's id"
    );

    fc.kill(pid, &spec.control_socket).await.expect("kill");
    assert!(!process::vmm_alive(pid, &spec.control_socket));
    fc.release(vm_id, Some(&jail.jail_dir(vm_id)))
        .await
        .expect("release");
    assert!(!jail.jail_dir(vm_id).exists(), "chroot removed");
    assert!(jail.cgroup_dirs(vm_id).is_empty(), "cgroups removed");
    for d in &disks {
        assert!(d.exists(), "the VM's disk {} stays", d.display());
    }
    fc.release(vm_id, Some(&jail.jail_dir(vm_id)))
        .await
        .expect("release is idempotent");
}
