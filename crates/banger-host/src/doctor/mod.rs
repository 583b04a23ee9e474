//! The host capability report.
//!
//! Pure logic over [`HostProbe`]: every fact comes from the probe, so the
//! classification (what is ok, what is a warning, which VMM and storage
//! strategy follow) is unit-tested against scripted hosts. The disk
//! report (`usage`) is the exception: it measures real trees, so it is
//! tested on temporary ones.

use std::path::{Path, PathBuf};

use banger_api::doctor::{
    Accel, Check, CheckId, CheckStatus, DoctorReport, StorageStrategy, VmmChoice,
};
use banger_api::vm::VmmKind;

use crate::probe::HostProbe;
mod kernel;
mod privileges;
mod qemu;
mod storage;
mod tools;
mod usage;

pub use qemu::{QemuVersion, QemuVersionError};
#[cfg(any(test, feature = "testing"))]
pub use usage::recorded_snapshot;
pub use usage::{DiskInputs, UsageError, allocated_bytes, measure_disk};

use kernel::{device_mapper, dm_snapshot, hardware_kvm, tcg_check};
use privileges::privileges;
use qemu::qemu_checks;
use storage::reflink_check;
use tools::{e2fsprogs, presence, tool_version};

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
    let (qemu, qemu_snapshots) = qemu_checks(probe, &inputs.qemu);
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
            qemu_snapshots,
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
        // Measured by the daemon, which knows the snapshots.
        disk: None,
    }
}

pub(super) fn check(
    id: CheckId,
    status: CheckStatus,
    detail: impl Into<String>,
    hint: Option<&str>,
) -> Check {
    Check {
        id,
        status,
        detail: detail.into(),
        hint: hint.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests;
