//! The host capability report (`banger doctor`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::vm::VmmKind;

/// Outcome of one capability check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "fail",
        })
    }
}

/// Stable identifiers of the checks, so scripts can pick one out of
/// `doctor --json` without matching on prose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckId {
    HardwareKvm,
    Firecracker,
    Jailer,
    Qemu,
    /// What the QEMU version gives snapshots (`mapped-ram` from 9.0).
    QemuSnapshots,
    Tcg,
    DeviceMapper,
    DmSnapshot,
    Loop,
    Reflink,
    Nftables,
    Bridge,
    Tun,
    Debootstrap,
    E2fsprogs,
    /// `vhost-device-vsock`: QEMU guests' channel to their agent.
    VsockBackend,
    /// The static guest agent injected into every VM.
    GuestAgent,
    /// Whether bangerd runs unprivileged behind banger-helper.
    Privileges,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub id: CheckId,
    pub status: CheckStatus,
    /// What was found (a version, a path, the reason it is missing).
    pub detail: String,
    /// What to do about a warning or failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// How a VM's root disk is made copy-on-write on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageStrategy {
    /// device-mapper `snapshot` target over a read-only loop of the base.
    DmSnapshot,
    /// `FICLONE` of the base image (XFS with reflink, btrfs).
    Reflink,
    /// Plain sparse copy: correct everywhere, slow for big images.
    SparseCopy,
}

/// Which accelerator a QEMU VM would use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    Kvm,
    Tcg,
}

/// The VMM a VM created without `--vmm` gets on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmChoice {
    pub vmm: VmmKind,
    pub accel: Accel,
}

/// `GET /v1/host/doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorReport {
    pub checks: Vec<Check>,
    /// `None` when no usable VMM is installed.
    pub default_vmm: Option<VmmChoice>,
    pub storage: StorageStrategy,
}

impl DoctorReport {
    pub fn check(&self, id: CheckId) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }

    pub fn is_ok(&self, id: CheckId) -> bool {
        self.check(id).is_some_and(|c| c.status == CheckStatus::Ok)
    }
}
