//! The one enum every API request becomes.

use banger_api::asset::{
    ImageBuildRequest, ImageImportRequest, ImageRecord, KernelAddRequest, KernelImportRequest,
    KernelRecord,
};
use banger_api::daemon::DaemonStatus;
use banger_api::doctor::DoctorReport;
use banger_api::operation::OperationKind;
use banger_api::snapshot::{
    ForkVmRequest, SnapshotRecord, SnapshotVmRequest, WarmImageRequest, WarmImageResponse,
};
use banger_api::vm::{AttachRequest, CreateVmRequest, SetVmRequest, SshInfo, VmRecord};

use crate::agent::AgentConn;

/// A request to the core. `vm` fields take a name or an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    DaemonStatus,
    /// Ask the daemon to exit; running VMs are left running.
    Shutdown,
    Doctor,
    VmList,
    VmShow {
        vm: String,
    },
    VmCreate(CreateVmRequest),
    VmSet {
        vm: String,
        changes: SetVmRequest,
    },
    VmDelete {
        vm: String,
    },
    VmStart {
        vm: String,
    },
    VmStop {
        vm: String,
    },
    VmKill {
        vm: String,
    },
    VmLogs {
        vm: String,
        /// The last this many lines; all that is kept when `None`.
        lines: Option<usize>,
    },
    /// Exec or copy: answered with a connection to the guest agent.
    VmAttach {
        vm: String,
        request: AttachRequest,
    },
    VmSsh {
        vm: String,
    },
    VmPause {
        vm: String,
    },
    VmResume {
        vm: String,
    },
    VmSnapshot {
        vm: String,
        request: SnapshotVmRequest,
    },
    VmFork {
        vm: String,
        request: ForkVmRequest,
    },
    SnapshotList,
    SnapshotShow {
        name: String,
    },
    SnapshotRm {
        name: String,
    },
    KernelList,
    KernelShow {
        name: String,
        verify: bool,
    },
    KernelImport(KernelImportRequest),
    KernelAdd(KernelAddRequest),
    KernelRm {
        name: String,
        force: bool,
    },
    ImageList,
    ImageShow {
        name: String,
        verify: bool,
    },
    ImageBuild(ImageBuildRequest),
    ImageImport(ImageImportRequest),
    ImageRm {
        name: String,
        force: bool,
    },
    /// Make (or find) the warm-start template of an image in one shape.
    ImageWarm {
        name: String,
        request: WarmImageRequest,
    },
}

impl Command {
    /// What the operations list calls this command and what it acts on;
    /// `None` for the short ones (lists, shows, attaches), which are not
    /// listed.
    pub fn operation(&self) -> Option<(OperationKind, String)> {
        use OperationKind as K;
        let (kind, target) = match self {
            Self::VmCreate(r) => (K::VmCreate, r.name.clone().unwrap_or_default()),
            Self::VmSet { vm, .. } => (K::VmSet, vm.clone()),
            Self::VmDelete { vm } => (K::VmDelete, vm.clone()),
            Self::VmStart { vm } => (K::VmStart, vm.clone()),
            Self::VmStop { vm } => (K::VmStop, vm.clone()),
            Self::VmKill { vm } => (K::VmKill, vm.clone()),
            Self::VmPause { vm } => (K::VmPause, vm.clone()),
            Self::VmResume { vm } => (K::VmResume, vm.clone()),
            Self::VmSnapshot { vm, .. } => (K::VmSnapshot, vm.clone()),
            Self::VmFork { vm, .. } => (K::VmFork, vm.clone()),
            Self::SnapshotRm { name } => (K::SnapshotRm, name.clone()),
            Self::KernelImport(r) => (K::KernelImport, r.name.clone()),
            Self::KernelAdd(r) => (K::KernelAdd, r.name.clone()),
            Self::KernelRm { name, .. } => (K::KernelRm, name.clone()),
            Self::ImageBuild(r) => (K::ImageBuild, r.name.clone()),
            Self::ImageImport(r) => (K::ImageImport, r.name.clone()),
            Self::ImageRm { name, .. } => (K::ImageRm, name.clone()),
            Self::ImageWarm { name, .. } => (K::ImageWarm, name.clone()),
            Self::DaemonStatus
            | Self::Shutdown
            | Self::Doctor
            | Self::VmList
            | Self::VmShow { .. }
            | Self::VmLogs { .. }
            | Self::VmAttach { .. }
            | Self::VmSsh { .. }
            | Self::SnapshotList
            | Self::SnapshotShow { .. }
            | Self::KernelList
            | Self::KernelShow { .. }
            | Self::ImageList
            | Self::ImageShow { .. } => return None,
        };
        Some((kind, target))
    }

    /// Asset builds and imports: cancelling one drops its work where it
    /// waits, and the drop kills its tools and removes the half-made
    /// asset. (A start is cancelled otherwise; the rest run to their end,
    /// since half of one would leave a VM or an asset in between.)
    pub(crate) fn dropped_on_cancel(&self) -> bool {
        matches!(
            self,
            Self::KernelImport(_) | Self::KernelAdd(_) | Self::ImageBuild(_) | Self::ImageImport(_)
        )
    }
}

/// What a command produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(DaemonStatus),
    ShuttingDown,
    Doctor(DoctorReport),
    Vms(Vec<VmRecord>),
    Vm(VmRecord),
    Deleted(VmRecord),
    Logs(String),
    Attached(AgentConn),
    Ssh(SshInfo),
    Snapshots(Vec<SnapshotRecord>),
    Snapshot(SnapshotRecord),
    Kernels(Vec<KernelRecord>),
    Kernel(KernelRecord),
    Images(Vec<ImageRecord>),
    Image(ImageRecord),
    Warmed(WarmImageResponse),
}
