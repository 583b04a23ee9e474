//! The host capability report (`banger doctor`).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::snapshot::SnapshotKind;
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
    /// What banger's files take on the state dir; `None` from daemons
    /// that predate it, and in the report cached for VM creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskReport>,
}

/// `doctor`'s disk report: allocated bytes (sparse holes are free;
/// shared reflinked extents count in full wherever they appear).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskReport {
    pub state_dir: PathBuf,
    /// The filesystem holding the state dir; `None` when it did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsSpace>,
    pub areas: Vec<AreaUsage>,
    /// Every recorded snapshot, what its directory (VMM state and frozen
    /// disks) takes. Their sum can fall short of the `snapshots` area by
    /// saves in progress or interrupted.
    #[serde(default)]
    pub snapshots: Vec<SnapshotUsage>,
    /// What could not be measured, and why; the sizes leave it out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsSpace {
    pub total_bytes: u64,
    /// Free to an unprivileged writer (what a new disk can use).
    pub available_bytes: u64,
}

/// The state dir's parts that hold disks and images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskArea {
    Kernels,
    Images,
    Vms,
    Snapshots,
}

impl DiskArea {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kernels => "kernels",
            Self::Images => "images",
            Self::Vms => "vms",
            Self::Snapshots => "snapshots",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AreaUsage {
    pub area: DiskArea,
    pub dir: PathBuf,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotUsage {
    pub name: String,
    pub id: String,
    pub kind: SnapshotKind,
    pub source_vm: String,
    /// Allocated now under its directory.
    pub bytes: u64,
}

impl DoctorReport {
    pub fn check(&self, id: CheckId) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }

    pub fn is_ok(&self, id: CheckId) -> bool {
        self.check(id).is_some_and(|c| c.status == CheckStatus::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_without_a_disk_section_still_reads_and_one_with_it_round_trips() {
        let old = r#"{"checks":[],"default_vmm":null,"storage":"sparse_copy"}"#;
        let r: DoctorReport = serde_json::from_str(old).expect("old report");
        assert_eq!(r.disk, None);
        assert_eq!(
            serde_json::to_string(&r).expect("json"),
            old,
            "no disk section is written when there is none"
        );
        let disk: DiskReport = serde_json::from_str(
            r#"{"state_dir":"/var/lib/banger","areas":[{"area":"snapshots","dir":"/var/lib/banger/snapshots","bytes":7}]}"#,
        )
        .expect("minimal disk report");
        assert!(disk.snapshots.is_empty() && disk.errors.is_empty() && disk.fs.is_none());
        let r = DoctorReport {
            disk: Some(disk),
            ..r
        };
        let back: DoctorReport =
            serde_json::from_str(&serde_json::to_string(&r).expect("json")).expect("parse");
        assert_eq!(back, r);
    }
}
