//! What the kernel and the CPU offer: KVM, TCG, device-mapper.

use std::path::Path;

use banger_api::doctor::{Check, CheckId, CheckStatus};

use super::check;
use crate::probe::HostProbe;

pub(super) fn hardware_kvm(probe: &dyn HostProbe) -> Check {
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

pub(super) fn tcg_check(probe: &dyn HostProbe, qemu: &Path, qemu_ok: bool) -> Check {
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

pub(super) fn device_mapper(probe: &dyn HostProbe) -> Check {
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

pub(super) fn dm_snapshot(probe: &dyn HostProbe, dm_ok: bool) -> Check {
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
