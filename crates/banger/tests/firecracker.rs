//! The Firecracker driver against the real binary (`../shared/bin` in CI,
//! `BANGER_FIRECRACKER_BIN`): spawn, API configuration, `InstanceStart`,
//! Ctrl-Alt-Del, kill and exit detection. Guest boot is awaited only where
//! the host has hardware KVM; elsewhere (these machines: a software nested
//! hypervisor) Firecracker guests crawl and die, which the test says.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use banger_api::doctor::Accel;
use banger_vmm::firecracker::{FcApi, FirecrackerVmm};
use banger_vmm::{LaunchSpec, Vmm, process};
use common::{Env, cached_default_assets, guest_prereqs, skip_or_fail};

fn hardware_kvm() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")))
}

#[tokio::test]
async fn the_real_firecracker_is_configured_started_and_stopped_through_its_api() {
    let Some(bin) = std::env::var_os("BANGER_FIRECRACKER_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    else {
        return skip_or_fail(
            "firecracker test",
            "BANGER_FIRECRACKER_BIN unset (scripts/test.sh points it at ../shared/bin/firecracker)",
        );
    };
    if !std::path::Path::new("/dev/kvm").exists() {
        return skip_or_fail("firecracker test", "no /dev/kvm on this host");
    }
    let init = match guest_prereqs() {
        Ok(i) => i,
        Err(reason) => return skip_or_fail("firecracker test", &reason),
    };
    let assets = cached_default_assets(&init);
    let env = Env::new();
    let dir = env.dir.path();
    let disk = |name: &str| {
        let p = dir.join(name);
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(64 << 20))
            .expect("disk");
        p
    };
    let spec = LaunchSpec {
        vm_id: "fc0123456789abcd".into(),
        vcpus: 1,
        memory_mib: 256,
        kernel: assets.kernel["vmlinux"]["path"]
            .as_str()
            .expect("vmlinux")
            .into(),
        initrd: Some(
            assets.kernel["initrd"]["path"]
                .as_str()
                .expect("initrd")
                .into(),
        ),
        cmdline: "console=ttyS0 root=/dev/vda rw panic=-1".into(),
        disks: vec![disk("root.img"), disk("work.img")],
        net: None,
        console_log: dir.join("console.log"),
        control_socket: dir.join("fc.sock"),
        pid_file: dir.join("fc.pid"),
        accel: Accel::Kvm,
        vsock: Some(dir.join("fc.vsock")),
    };
    let fc = FirecrackerVmm { bin };
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
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&spec.console_log)
            .unwrap_or_default()
            .contains("banger-init: switching root")
        {
            assert!(
                Instant::now() < deadline,
                "guest did not reach the root init under Firecracker"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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
