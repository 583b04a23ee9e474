use super::*;
use crate::probe::{FakeProbe, ProbeCall};

fn inputs() -> DoctorInputs {
    DoctorInputs {
        helper_socket: None,
        euid: 0,
        jailer_enabled: true,
        chroot_base: "/var/lib/banger/jail".into(),
        vsock_backend: "vhost-device-vsock".into(),
        guest_agent: "/usr/local/lib/banger/banger-agent".into(),
        firecracker: "firecracker".into(),
        jailer: "jailer".into(),
        qemu: "qemu-system-x86_64".into(),
        state_dir: "/var/lib/banger".into(),
    }
}

fn with_qemu(p: FakeProbe) -> FakeProbe {
    p.with_tool(
        "qemu-system-x86_64",
        "/usr/bin/qemu-system-x86_64",
        "--version",
        "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)\nCopyright",
    )
    .with_tool(
        "/usr/bin/qemu-system-x86_64",
        "/usr/bin/qemu-system-x86_64",
        "--version",
        "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)\nCopyright",
    )
    .with_tool(
        "/usr/bin/qemu-system-x86_64",
        "/usr/bin/qemu-system-x86_64",
        "-accel help",
        "Accelerators supported in QEMU binary:\ntcg\nkvm\n",
    )
}

fn with_firecracker(p: FakeProbe) -> FakeProbe {
    p.with_tool("firecracker", "/opt/fc/firecracker", "--version", "")
        .with_tool(
            "/opt/fc/firecracker",
            "/opt/fc/firecracker",
            "--version",
            "Firecracker v1.16.1\n\nSupported snapshot",
        )
}

/// This workplace: kvm_pvm, no vmx, no device-mapper, ext4 state dir.
fn nested_host() -> FakeProbe {
    FakeProbe::new()
        .with_path("/dev/kvm")
        .with_path("/sys/module/kvm")
        .with_path("/sys/module/kvm_pvm")
        .with_file(
            "/proc/cpuinfo",
            "processor: 0\nflags\t\t: fpu vme sse2 hypervisor\n",
        )
        .with_file("/proc/misc", "200 tun\n237 loop-control\n")
        .with_path("/dev/loop-control")
        .with_path("/dev/net/tun")
        .with_path("/sys/module/bridge")
        .with_reflink("ext4", false)
}

#[test]
fn nested_hypervisor_is_reported_as_no_hardware_kvm_and_picks_qemu_tcg() {
    let probe = with_firecracker(with_qemu(nested_host()));
    let r = run_doctor(&probe, &inputs());
    let kvm = r.check(CheckId::HardwareKvm).expect("kvm check");
    assert_eq!(kvm.status, CheckStatus::Warn);
    assert!(kvm.detail.contains("no hardware KVM"), "{}", kvm.detail);
    assert!(kvm.detail.contains("kvm_pvm"), "{}", kvm.detail);
    assert_eq!(
        r.default_vmm,
        Some(VmmChoice {
            vmm: VmmKind::Qemu,
            accel: Accel::Tcg
        })
    );
    assert!(r.is_ok(CheckId::Firecracker));
    assert!(
        r.check(CheckId::Firecracker)
            .expect("fc")
            .detail
            .contains("v1.16.1")
    );
    assert!(r.is_ok(CheckId::Tcg));
    assert_eq!(
        r.check(CheckId::DeviceMapper).expect("dm").status,
        CheckStatus::Warn
    );
    assert_eq!(r.storage, StorageStrategy::SparseCopy);
    let reflink = r.check(CheckId::Reflink).expect("reflink");
    assert!(
        reflink
            .hint
            .as_deref()
            .unwrap_or("")
            .contains("mkfs.xfs -m reflink=1")
    );
}

#[test]
fn hardware_kvm_with_firecracker_picks_firecracker() {
    let probe = with_firecracker(with_qemu(
        FakeProbe::new()
            .with_path("/dev/kvm")
            .with_path("/sys/module/kvm_intel")
            .with_file("/proc/cpuinfo", "flags\t: fpu vmx sse2\n")
            .with_reflink("xfs", true),
    ));
    let r = run_doctor(&probe, &inputs());
    assert!(r.is_ok(CheckId::HardwareKvm));
    assert_eq!(
        r.default_vmm,
        Some(VmmChoice {
            vmm: VmmKind::Firecracker,
            accel: Accel::Kvm
        })
    );
    assert_eq!(r.storage, StorageStrategy::Reflink);
}

#[test]
fn hardware_kvm_without_firecracker_uses_qemu_kvm() {
    let probe = with_qemu(
        FakeProbe::new()
            .with_path("/dev/kvm")
            .with_file("/proc/cpuinfo", "flags\t: svm\n")
            .with_reflink("ext4", false),
    );
    let r = run_doctor(&probe, &inputs());
    assert_eq!(
        r.default_vmm,
        Some(VmmChoice {
            vmm: VmmKind::Qemu,
            accel: Accel::Kvm
        })
    );
    assert_eq!(
        r.check(CheckId::Firecracker).expect("fc").status,
        CheckStatus::Warn
    );
}

#[test]
fn no_vmm_at_all_fails_qemu_and_chooses_nothing() {
    let r = run_doctor(&nested_host(), &inputs());
    assert_eq!(r.default_vmm, None);
    let q = r.check(CheckId::Qemu).expect("qemu");
    assert_eq!(q.status, CheckStatus::Fail);
    assert_eq!(q.hint.as_deref(), Some("apt-get install qemu-system-x86"));
}

#[test]
fn device_mapper_is_reported_but_reflink_is_what_is_used() {
    let probe = nested_host()
        .with_file("/proc/misc", "236 device-mapper\n237 loop-control\n")
        .with_path("/sys/module/dm_snapshot")
        .with_reflink("xfs", true);
    let r = run_doctor(&probe, &inputs());
    assert!(r.is_ok(CheckId::DeviceMapper));
    assert!(r.is_ok(CheckId::DmSnapshot));
    assert_eq!(r.storage, StorageStrategy::Reflink);
}

#[test]
fn a_qemu_host_without_its_vsock_backend_or_agent_fails_with_the_fix() {
    let r = run_doctor(&with_qemu(nested_host()), &inputs());
    assert_eq!(r.default_vmm.map(|c| c.vmm), Some(VmmKind::Qemu));
    let v = r.check(CheckId::VsockBackend).expect("vsock backend");
    assert_eq!(
        v.status,
        CheckStatus::Fail,
        "QEMU guests cannot answer without it"
    );
    assert!(v.hint.as_deref().is_some_and(|h| h.contains("setup.sh")));
    let a = r.check(CheckId::GuestAgent).expect("agent");
    assert_eq!(a.status, CheckStatus::Fail);
    assert!(a.detail.contains("guest.agent"), "{}", a.detail);

    let probe = with_qemu(nested_host())
        .with_tool(
            "vhost-device-vsock",
            "/usr/local/bin/vhost-device-vsock",
            "--version",
            "vhost-device-vsock 0.3.0",
        )
        .with_tool(
            "/usr/local/bin/vhost-device-vsock",
            "/usr/local/bin/vhost-device-vsock",
            "--version",
            "vhost-device-vsock 0.3.0",
        )
        .with_path("/usr/local/lib/banger/banger-agent");
    let r = run_doctor(&probe, &inputs());
    assert!(r.is_ok(CheckId::VsockBackend));
    assert!(r.is_ok(CheckId::GuestAgent));
}

#[test]
fn privileges_say_whether_the_helper_is_in_use() {
    let mut i = inputs();
    let r = run_doctor(&nested_host(), &i);
    assert_eq!(
        r.check(CheckId::Privileges).expect("p").status,
        CheckStatus::Warn
    );
    i.euid = 1000;
    let r = run_doctor(&nested_host(), &i);
    assert_eq!(
        r.check(CheckId::Privileges).expect("p").status,
        CheckStatus::Fail
    );
    i.helper_socket = Some("/run/banger/helper.sock".into());
    let r = run_doctor(&nested_host(), &i);
    let c = r.check(CheckId::Privileges).expect("p");
    assert_eq!(c.status, CheckStatus::Fail, "{}", c.detail);
    let helper = || {
        nested_host()
            .with_path("/run/banger/helper.sock")
            .with_dirs_of("/var/lib/banger/jail", 0, 0o755)
    };
    let r = run_doctor(&helper(), &i);
    let c = r.check(CheckId::Privileges).expect("p");
    assert_eq!(c.status, CheckStatus::Ok, "{}", c.detail);
    assert!(c.detail.contains("uid 1000") && c.detail.contains("banger-helper"));
    assert!(c.detail.contains("firecracker jails"), "{}", c.detail);

    // A chroot base the daemon's user could swap: the helper would
    // refuse every jail, and doctor says so before a VM does.
    i.chroot_base = "/var/lib/banger/state/jail".into();
    let r = run_doctor(
        &helper().with_owner("/var/lib/banger/state", 1000, 0o700, true),
        &i,
    );
    let c = r.check(CheckId::Privileges).expect("p");
    assert_eq!(c.status, CheckStatus::Warn, "{}", c.detail);
    assert!(
        c.detail
            .contains("/var/lib/banger/state is a directory owned by uid 1000"),
        "{}",
        c.detail
    );
    assert!(
        c.hint
            .as_deref()
            .unwrap_or("")
            .contains("jailer.chroot_base")
    );
    // Jailing off: nothing to warn about.
    i.jailer_enabled = false;
    let r = run_doctor(&helper(), &i);
    assert_eq!(
        r.check(CheckId::Privileges).expect("p").status,
        CheckStatus::Ok
    );
}

#[test]
fn missing_e2fsprogs_fails_with_the_package_to_install() {
    let r = run_doctor(&nested_host(), &inputs());
    let c = r.check(CheckId::E2fsprogs).expect("e2fs");
    assert_eq!(c.status, CheckStatus::Fail);
    assert!(c.detail.contains("mkfs.ext4"));
    assert_eq!(c.hint.as_deref(), Some("apt-get install e2fsprogs"));
}

#[test]
fn every_check_appears_once() {
    let r = run_doctor(&nested_host(), &inputs());
    let mut ids: Vec<_> = r.checks.iter().map(|c| format!("{:?}", c.id)).collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n);
    assert_eq!(n, 18);
}

fn qemu_says(version_line: &str) -> FakeProbe {
    let p = nested_host();
    p.with_tool(
        "qemu-system-x86_64",
        "/usr/bin/qemu-system-x86_64",
        "--version",
        "",
    )
    .with_tool(
        "/usr/bin/qemu-system-x86_64",
        "/usr/bin/qemu-system-x86_64",
        "--version",
        version_line,
    )
}

#[test]
fn qemu_version_says_what_snapshots_get() {
    let probe =
        qemu_says("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)\nCopyright\n");
    let r = run_doctor(&probe, &inputs());
    let s = r.check(CheckId::QemuSnapshots).expect("snapshots");
    assert_eq!(s.status, CheckStatus::Ok, "{}", s.detail);
    assert_eq!(s.detail, "QEMU 10.0.2: fast restore (mapped-ram)");
    assert!(
        r.check(CheckId::Qemu)
            .expect("qemu")
            .detail
            .starts_with("QEMU emulator version 10.0.2 (Debian")
    );
    // One `--version` serves both lines.
    let runs = probe
        .calls()
        .into_iter()
        .filter(|c| {
            matches!(c, ProbeCall::Run { bin, args }
                if bin.ends_with("qemu-system-x86_64") && args == &["--version"])
        })
        .count();
    assert_eq!(runs, 1);

    // 7.2 snapshots, slower: a warning with the way to 9, never a failure.
    let r = run_doctor(&with_qemu(nested_host()), &inputs());
    let s = r.check(CheckId::QemuSnapshots).expect("snapshots");
    assert_eq!(s.status, CheckStatus::Warn);
    assert_eq!(
        s.detail,
        "QEMU 7.2.19: snapshots without mapped-ram (slower restore)"
    );
    assert_eq!(
        s.hint.as_deref(),
        Some("install QEMU >= 9 from bookworm-backports: see scripts/setup.sh")
    );
    assert!(r.is_ok(CheckId::Qemu), "an old QEMU still runs VMs");
    assert_eq!(r.default_vmm.map(|c| c.vmm), Some(VmmKind::Qemu));

    let r = run_doctor(&qemu_says("QEMU emulator version banana\n"), &inputs());
    let s = r.check(CheckId::QemuSnapshots).expect("snapshots");
    assert_eq!(s.status, CheckStatus::Warn);
    assert!(s.detail.starts_with("unknown QEMU version"), "{}", s.detail);
}

#[test]
fn without_qemu_snapshot_support_is_unknown_like_tcg() {
    let r = run_doctor(&nested_host(), &inputs());
    let s = r.check(CheckId::QemuSnapshots).expect("snapshots");
    assert_eq!(s.status, CheckStatus::Warn);
    assert_eq!(s.detail, "unknown: qemu-system-x86_64 not found");
    assert_eq!(s.hint.as_deref(), Some("apt-get install qemu-system-x86"));
    assert_eq!(
        r.check(CheckId::Tcg).expect("tcg").status,
        CheckStatus::Warn
    );
}
