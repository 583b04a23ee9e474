//! The one enum every API request becomes.

use banger_api::asset::{
    ImageBuildRequest, ImageImportRequest, ImageRecord, KernelAddRequest, KernelImportRequest,
    KernelRecord,
};
use banger_api::daemon::DaemonStatus;
use banger_api::doctor::DoctorReport;
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
