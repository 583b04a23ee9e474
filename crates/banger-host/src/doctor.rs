//! The host capability report.
//!
//! Pure logic over [`HostProbe`]: every fact comes from the probe, so the
//! classification (what is ok, what is a warning, which VMM and storage
//! strategy follow) is unit-tested against scripted hosts.

use std::path::{Path, PathBuf};

use banger_api::doctor::{
    Accel, Check, CheckId, CheckStatus, DoctorReport, StorageStrategy, VmmChoice,
};
use banger_api::vm::VmmKind;

use crate::probe::HostProbe;

/// What the report needs from configuration.
#[derive(Debug, Clone)]
pub struct DoctorInputs {
    /// The privilege helper's socket, when configured.
    pub helper_socket: Option<PathBuf>,
    /// The daemon's effective uid.
    pub euid: u32,
    /// Whether Firecracker VMs are jailed (`jailer.enabled`).
    pub jailer_enabled: bool,
    /// `jailer.chroot_base`.
    pub chroot_base: PathBuf,
    pub vsock_backend: PathBuf,
    pub guest_agent: PathBuf,
    pub firecracker: PathBuf,
    pub jailer: PathBuf,
    pub qemu: PathBuf,
    pub state_dir: PathBuf,
}

/// Probes the host and classifies every capability banger relies on.
pub fn run_doctor(probe: &dyn HostProbe, inputs: &DoctorInputs) -> DoctorReport {
    let kvm = hardware_kvm(probe);
    let firecracker = tool_version(
        probe,
        CheckId::Firecracker,
        &inputs.firecracker,
        &["--version"],
        "install the static Firecracker release binary and set vmm.firecracker (or BANGER_FIRECRACKER_BIN); without it VMs run on QEMU",
    );
    let jailer = tool_version(
        probe,
        CheckId::Jailer,
        &inputs.jailer,
        &["--version"],
        "install the jailer from the same Firecracker release and set vmm.jailer (or BANGER_JAILER_BIN)",
    );
    let qemu = tool_version(
        probe,
        CheckId::Qemu,
        &inputs.qemu,
        &["--version"],
        "apt-get install qemu-system-x86",
    );
    let tcg = tcg_check(probe, &inputs.qemu, qemu.status == CheckStatus::Ok);
    let dm = device_mapper(probe);
    let dm_snapshot = dm_snapshot(probe, dm.status == CheckStatus::Ok);
    let loopdev = presence(
        probe,
        CheckId::Loop,
        "/dev/loop-control",
        "loop devices available (/dev/loop-control)",
        "no /dev/loop-control: enable CONFIG_BLK_DEV_LOOP or load the loop module",
        CheckStatus::Warn,
    );
    let reflink = reflink_check(probe, &inputs.state_dir);
    let nft = tool_version(
        probe,
        CheckId::Nftables,
        Path::new("nft"),
        &["--version"],
        "apt-get install nftables (needed for --nat)",
    );
    let bridge = presence(
        probe,
        CheckId::Bridge,
        "/sys/module/bridge",
        "bridge support in the kernel",
        "no bridge support: enable CONFIG_BRIDGE or load the bridge module",
        CheckStatus::Fail,
    );
    let tun = presence(
        probe,
        CheckId::Tun,
        "/dev/net/tun",
        "tun/tap available (/dev/net/tun)",
        "no /dev/net/tun: enable CONFIG_TUN or load the tun module",
        CheckStatus::Fail,
    );
    let debootstrap = tool_version(
        probe,
        CheckId::Debootstrap,
        Path::new("debootstrap"),
        &["--version"],
        "apt-get install debootstrap (needed by `banger image build`)",
    );
    let e2fs = e2fsprogs(probe);
    let vsock_backend = tool_version(
        probe,
        CheckId::VsockBackend,
        &inputs.vsock_backend,
        &["--version"],
        "scripts/setup.sh installs it (cargo install vhost-device-vsock); set vmm.vsock_backend if it lives elsewhere",
    );
    let agent_path = inputs.guest_agent.display().to_string();
    let guest_agent = presence(
        probe,
        CheckId::GuestAgent,
        &agent_path,
        &format!("guest agent at {agent_path}"),
        "no guest agent: scripts/setup.sh builds and installs it, or set guest.agent",
        CheckStatus::Fail,
    );

    let hw_kvm = kvm.status == CheckStatus::Ok;
    let fc_ok = firecracker.status == CheckStatus::Ok;
    let qemu_ok = qemu.status == CheckStatus::Ok;
    let default_vmm = match (hw_kvm, fc_ok, qemu_ok) {
        (true, true, _) => Some(VmmChoice {
            vmm: VmmKind::Firecracker,
            accel: Accel::Kvm,
        }),
        (true, false, true) => Some(VmmChoice {
            vmm: VmmKind::Qemu,
            accel: Accel::Kvm,
        }),
        (false, _, true) if tcg.status == CheckStatus::Ok => Some(VmmChoice {
            vmm: VmmKind::Qemu,
            accel: Accel::Tcg,
        }),
        _ => None,
    };
    // dm-snapshot is reported as a capability but not chosen yet: its
    // driver is not written (these development machines have no
    // device-mapper to test it on), and the report must say what banger
    // will actually do.
    let storage = if reflink.status == CheckStatus::Ok {
        StorageStrategy::Reflink
    } else {
        StorageStrategy::SparseCopy
    };

    // A missing VMM only fails the report when nothing can run a VM.
    let privileges = privileges(probe, inputs);
    let mut qemu = qemu;
    let mut firecracker = firecracker;
    // QEMU guests cannot answer without their vsock backend.
    let mut vsock_backend = vsock_backend;
    if vsock_backend.status != CheckStatus::Ok
        && default_vmm.is_some_and(|c| c.vmm == VmmKind::Qemu)
    {
        vsock_backend.status = CheckStatus::Fail;
    }
    if default_vmm.is_none() {
        if qemu.status != CheckStatus::Ok {
            qemu.status = CheckStatus::Fail;
        }
        if hw_kvm && firecracker.status != CheckStatus::Ok {
            firecracker.status = CheckStatus::Fail;
        }
    }

    DoctorReport {
        checks: vec![
            kvm,
            firecracker,
            jailer,
            qemu,
            tcg,
            dm,
            dm_snapshot,
            loopdev,
            reflink,
            nft,
            bridge,
            tun,
            debootstrap,
            e2fs,
            vsock_backend,
            guest_agent,
            privileges,
        ],
        default_vmm,
        storage,
    }
}

fn privileges(probe: &dyn HostProbe, inputs: &DoctorInputs) -> Check {
    const ID: CheckId = CheckId::Privileges;
    match (&inputs.helper_socket, inputs.euid) {
        (Some(sock), uid) if probe.exists(sock) => {
            let mut detail = format!(
                "bangerd runs as uid {uid}; bridge, taps and nftables{} go through banger-helper at {}",
                if inputs.jailer_enabled {
                    format!(", and staging and starting firecracker jails (as uid {uid})")
                } else {
                    String::new()
                },
                sock.display()
            );
            // The helper refuses to stage jails anywhere but a directory
            // only root can change.
            let unsafe_base = inputs
                .jailer_enabled
                .then(|| {
                    crate::jail::untrusted_ancestor(&inputs.chroot_base, 0, |p| probe.owner(p))
                })
                .flatten();
            match unsafe_base {
                None => check(ID, CheckStatus::Ok, detail, None),
                Some(why) => {
                    detail.push_str(&format!(
                        "; but it will refuse firecracker jails: chroot base {}: {why}",
                        inputs.chroot_base.display()
                    ));
                    check(
                        ID,
                        CheckStatus::Warn,
                        detail,
                        Some(
                            "set jailer.chroot_base to a root-owned directory on the state dir's filesystem, outside the state dir (README: least privilege)",
                        ),
                    )
                }
            }
        }
        (Some(sock), _) => check(
            ID,
            CheckStatus::Fail,
            format!("banger-helper is not listening at {}", sock.display()),
            Some("start it: systemctl start banger-helper (see README, least privilege)"),
        ),
        (None, 0) => check(
            ID,
            CheckStatus::Warn,
            "bangerd runs as root (no privilege helper)",
            Some("run bangerd unprivileged behind banger-helper: README, least privilege"),
        ),
        (None, uid) => check(
            ID,
            CheckStatus::Fail,
            format!(
                "bangerd runs as uid {uid} without a privilege helper: it cannot make taps or NAT"
            ),
            Some("start banger-helper and set privileges.helper_socket"),
        ),
    }
}

fn check(id: CheckId, status: CheckStatus, detail: impl Into<String>, hint: Option<&str>) -> Check {
    Check {
        id,
        status,
        detail: detail.into(),
        hint: hint.map(str::to_owned),
    }
}

fn hardware_kvm(probe: &dyn HostProbe) -> Check {
    const ID: CheckId = CheckId::HardwareKvm;
    let dev = probe.exists(Path::new("/dev/kvm"));
    let flags = probe
        .read_file(Path::new("/proc/cpuinfo"))
        .map(|text| cpu_virt_flag(&text))
        .unwrap_or(None);
    let vendor_module = ["kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| probe.exists(&Path::new("/sys/module").join(m)));
    let software = ["kvm_pvm"]
        .into_iter()
        .find(|m| probe.exists(&Path::new("/sys/module").join(m)));
    let no_hw_hint = Some(
        "VMs run under QEMU with TCG (software emulation): correct but slower; Firecracker needs a host with VT-x/AMD-V",
    );
    match (dev, flags.or(vendor_module), software) {
        (true, Some(how), _) => check(
            ID,
            CheckStatus::Ok,
            format!("/dev/kvm present, hardware virtualization ({how})"),
            None,
        ),
        (true, None, Some(sw)) => check(
            ID,
            CheckStatus::Warn,
            format!(
                "no hardware KVM: /dev/kvm is provided by {sw}, a software nested hypervisor, and the CPU has no vmx/svm flag"
            ),
            no_hw_hint,
        ),
        (true, None, None) => check(
            ID,
            CheckStatus::Warn,
            "no hardware KVM: /dev/kvm exists but the CPU has no vmx/svm flag",
            no_hw_hint,
        ),
        (false, _, _) => check(
            ID,
            CheckStatus::Warn,
            "no hardware KVM: /dev/kvm is missing",
            no_hw_hint,
        ),
    }
}

fn cpu_virt_flag(cpuinfo: &str) -> Option<&'static str> {
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))?
        .split_once(':')?
        .1;
    flags.split_whitespace().find_map(|f| match f {
        "vmx" => Some("vmx"),
        "svm" => Some("svm"),
        _ => None,
    })
}

fn tool_version(
    probe: &dyn HostProbe,
    id: CheckId,
    bin: &Path,
    args: &[&str],
    hint: &str,
) -> Check {
    let Some(path) = probe.which(bin) else {
        return check(
            id,
            CheckStatus::Warn,
            format!("{} not found", bin.display()),
            Some(hint),
        );
    };
    match probe.run(&path, args) {
        Ok(out) if out.success => check(
            id,
            CheckStatus::Ok,
            format!("{} ({})", out.first_line(), path.display()),
            None,
        ),
        Ok(out) => check(
            id,
            CheckStatus::Warn,
            format!(
                "{} {} failed: {}",
                path.display(),
                args.join(" "),
                out.first_line()
            ),
            Some(hint),
        ),
        Err(e) => check(id, CheckStatus::Warn, e.to_string(), Some(hint)),
    }
}

fn tcg_check(probe: &dyn HostProbe, qemu: &Path, qemu_ok: bool) -> Check {
    const ID: CheckId = CheckId::Tcg;
    if !qemu_ok {
        return check(
            ID,
            CheckStatus::Warn,
            "unknown: QEMU is not installed",
            Some("apt-get install qemu-system-x86"),
        );
    }
    let path = probe.which(qemu).unwrap_or_else(|| qemu.to_owned());
    match probe.run(&path, &["-accel", "help"]) {
        Ok(out) if out.text.lines().any(|l| l.trim() == "tcg") => check(
            ID,
            CheckStatus::Ok,
            "QEMU supports TCG (software emulation fallback)",
            None,
        ),
        Ok(out) => check(
            ID,
            CheckStatus::Warn,
            format!(
                "QEMU lists no tcg accelerator: {}",
                out.text.trim().replace('\n', ", ")
            ),
            Some("install Debian's qemu-system-x86, which is built with TCG"),
        ),
        Err(e) => check(ID, CheckStatus::Warn, e.to_string(), None),
    }
}

fn device_mapper(probe: &dyn HostProbe) -> Check {
    let in_misc = probe
        .read_file(Path::new("/proc/misc"))
        .is_some_and(|m| m.lines().any(|l| l.trim_end().ends_with(" device-mapper")));
    if in_misc || probe.exists(Path::new("/dev/mapper/control")) {
        check(
            CheckId::DeviceMapper,
            CheckStatus::Ok,
            "device-mapper available",
            None,
        )
    } else {
        check(
            CheckId::DeviceMapper,
            CheckStatus::Warn,
            "no device-mapper in this kernel",
            Some(
                "root disks use reflink clones or sparse copies instead; enable CONFIG_BLK_DEV_DM for dm-snapshot",
            ),
        )
    }
}

fn dm_snapshot(probe: &dyn HostProbe, dm_ok: bool) -> Check {
    const ID: CheckId = CheckId::DmSnapshot;
    if !dm_ok {
        return check(ID, CheckStatus::Warn, "unavailable: no device-mapper", None);
    }
    if probe.exists(Path::new("/sys/module/dm_snapshot")) {
        return check(ID, CheckStatus::Ok, "dm-snapshot target available", None);
    }
    match probe.run(Path::new("dmsetup"), &["targets"]) {
        Ok(out)
            if out
                .text
                .lines()
                .any(|l| l.split_whitespace().next() == Some("snapshot")) =>
        {
            check(
                ID,
                CheckStatus::Ok,
                "dm-snapshot target available (dmsetup targets)",
                None,
            )
        }
        _ => check(
            ID,
            CheckStatus::Warn,
            "device-mapper present but no snapshot target",
            Some("modprobe dm_snapshot (CONFIG_DM_SNAPSHOT), and apt-get install dmsetup"),
        ),
    }
}

fn presence(
    probe: &dyn HostProbe,
    id: CheckId,
    path: &str,
    ok_detail: &str,
    missing: &str,
    missing_status: CheckStatus,
) -> Check {
    if probe.exists(Path::new(path)) {
        check(id, CheckStatus::Ok, ok_detail, None)
    } else {
        check(id, missing_status, missing, None)
    }
}

fn reflink_check(probe: &dyn HostProbe, state_dir: &Path) -> Check {
    const ID: CheckId = CheckId::Reflink;
    match probe.reflink(state_dir) {
        Ok(r) if r.supported => check(
            ID,
            CheckStatus::Ok,
            format!(
                "{} ({}) supports reflink clones",
                r.tested_in.display(),
                r.fs_type
            ),
            None,
        ),
        Ok(r) => check(
            ID,
            CheckStatus::Warn,
            format!(
                "{} ({}) cannot reflink: root disks are full sparse copies",
                r.tested_in.display(),
                r.fs_type
            ),
            Some(
                "put the state dir on XFS made with `mkfs.xfs -m reflink=1` or on btrfs (README: \"Fast copy-on-write disks\")",
            ),
        ),
        Err(e) => check(ID, CheckStatus::Warn, e.to_string(), None),
    }
}

fn e2fsprogs(probe: &dyn HostProbe) -> Check {
    const ID: CheckId = CheckId::E2fsprogs;
    let missing: Vec<&str> = ["mkfs.ext4", "debugfs", "resize2fs", "e2fsck"]
        .into_iter()
        .filter(|t| probe.which(Path::new(t)).is_none())
        .collect();
    if !missing.is_empty() {
        return check(
            ID,
            CheckStatus::Fail,
            format!("missing: {}", missing.join(", ")),
            Some("apt-get install e2fsprogs"),
        );
    }
    let version = probe
        .which(Path::new("mkfs.ext4"))
        .and_then(|p| probe.run(&p, &["-V"]).ok())
        .map(|o| o.first_line().to_owned())
        .unwrap_or_default();
    check(
        ID,
        CheckStatus::Ok,
        format!("mkfs.ext4, debugfs, resize2fs, e2fsck ({version})"),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::FakeProbe;

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
        assert_eq!(n, 17);
    }
}
