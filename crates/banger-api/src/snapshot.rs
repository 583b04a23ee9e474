//! Snapshots: a VM's memory, device state and disks frozen together, from
//! which new VMs start instead of booting.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::vm::{VmId, VmmKind};

/// Why a snapshot exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// `vm snapshot`: kept until `snapshot rm`.
    User,
    /// Taken by `vm fork` for its copies; removed once they started.
    Fork,
    /// A warm-start template: a VM of one shape saved as soon as its agent
    /// answered; new VMs of that shape restore it instead of booting.
    /// Named `tpl-` and its key; removed when its inputs change.
    Template,
}

impl SnapshotKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Fork => "fork",
            Self::Template => "template",
        }
    }
}

/// The machine a snapshot was taken of: a restore must recreate exactly
/// this (the VMM refuses, or the guest breaks, otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMachine {
    pub vmm: VmmKind,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: String,
    pub image: String,
    pub root_disk_bytes: u64,
    pub work_disk_bytes: u64,
    /// The kernel command line the guest booted with (the VMM's view of
    /// the machine includes it).
    pub cmdline: String,
    /// The devices saved with it, in the VMM's words, for `snapshot show`.
    pub devices: Vec<String>,
}

/// A snapshot as stored and as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: String,
    pub name: String,
    pub kind: SnapshotKind,
    /// The VM it was taken of (which may be gone since).
    pub source_vm: String,
    pub source_vm_id: VmId,
    pub machine: SnapshotMachine,
    /// Its directory: the VMM's state files and the frozen disks.
    pub dir: PathBuf,
    /// Bytes it takes on disk (allocated blocks; shared reflinked
    /// extents are counted in full).
    pub size_bytes: u64,
    /// How long the save took, memory and disks.
    pub save_ms: u64,
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/vms/{vm}/snapshot`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotVmRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Stop the VM instead of resuming it.
    #[serde(default)]
    pub stop: bool,
}

/// `POST /v1/vms/{vm}/fork`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkVmRequest {
    /// The copy's name; with `count > 1`, `NAME-1` … `NAME-K`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

/// `POST /v1/images/{image}/warm`: make (or find) the template of one
/// shape; absent fields take the defaults `vm create` would.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmImageRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_disk_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_disk_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<VmmKind>,
}

/// `image warm`'s answer: the template, and whether this call made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmImageResponse {
    pub template: SnapshotRecord,
    /// False when a template of this shape was already there.
    pub made: bool,
}

/// Most copies one `vm fork` makes.
pub const MAX_FORKS: u32 = 32;
