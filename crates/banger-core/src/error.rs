//! Why the core refused or failed a command. Every variant that wraps a
//! lower layer keeps it as a `#[source]`, so the API layer and the log
//! see the whole chain and nothing decides by reading a message.

use std::path::PathBuf;

use banger_agent_proto::ProtoError;
use banger_assets::kernel::KernelError;
use banger_host::disk::DiskError;
use banger_host::firewall::FirewallError;
use banger_host::net::NetError;
use banger_host::tools::ToolError;
use banger_store::{AssetKind, StoreError};
use banger_vmm::VmmError;

use crate::handles::HandlesError;
use crate::lifecycle::LifecycleError;
use crate::ready::ReadyError;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("vm {0:?} not found; `banger vm list` shows the existing ones")]
    VmNotFound(String),
    #[error(
        "a vm named {0:?} already exists; pick another name or omit --name to get a generated one"
    )]
    NameTaken(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{kind} {name:?} not found; `banger {kind} list` shows what exists{}", hint_for(*kind, name))]
    AssetNotFound { kind: AssetKind, name: String },
    #[error(
        "a {kind} named {name:?} already exists; remove it first (`banger {kind} rm {name}`) or pick another name"
    )]
    AssetNameTaken { kind: AssetKind, name: String },
    #[error("{kind} {name:?} is used by vm(s) {}; deleting it means they cannot start again; pass --force to delete anyway", vms.join(", "))]
    AssetInUse {
        kind: AssetKind,
        name: String,
        vms: Vec<String>,
    },
    #[error("snapshot {0:?} not found; `banger snapshot list` shows the existing ones")]
    SnapshotNotFound(String),
    #[error("a snapshot named {0:?} already exists; pick another name or omit --name")]
    SnapshotNameTaken(String),
    #[error("snapshot {name:?} is used by vm(s) {}, which restore from it at their first start; delete them (or start them) first", vms.join(", "))]
    SnapshotInUse { name: String, vms: Vec<String> },
    /// A device whose state the VMM cannot save.
    #[error("vm {vm:?} cannot be snapshotted: {why}")]
    NotSnapshottable { vm: String, why: String },
    #[error(transparent)]
    AssetBuild(#[from] AssetBuildError),
    #[error("asset corrupt: {0}")]
    AssetCorrupt(String),
    /// The cause stays typed; `context` is what the console and the host
    /// said, for a `last_error` that can be read on its own.
    #[error("vm {vm:?} failed to start: {cause}{}{context}", cleanup.as_ref().map(|c| format!("; cleanup: {c}")).unwrap_or_default())]
    StartFailed {
        vm: String,
        #[source]
        cause: Box<CoreError>,
        cleanup: Option<Box<CoreError>>,
        context: String,
    },
    /// Boxed: the host layers' errors are large, and every `Result` of
    /// the core carries this enum.
    #[error(transparent)]
    Host(Box<HostError>),
    #[error("{}", agent_message(vm, source))]
    Agent {
        vm: String,
        #[source]
        source: AgentError,
    },
    #[error("cleanup incomplete: {0}")]
    Cleanup(CleanupErrors),
    /// VMs whose recovery at daemon start failed (each marked error).
    #[error("recovering vms after a restart: {}", .0.join("; "))]
    Reconcile(Vec<String>),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error("{0}")]
    Unavailable(String),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("{what} was cancelled by {by}")]
    Cancelled {
        what: String,
        by: crate::cancel::CancelCause,
    },
    #[error("operation {0} is not in flight; `banger operation list` shows the ones that are")]
    OperationNotFound(banger_api::operation::OperationId),
    #[error(
        "operation {id} ({kind}) cannot be cancelled: stopping it half way would leave its vm or asset in between; wait for it (`banger operation watch {id}`), then undo it"
    )]
    NotCancellable {
        id: banger_api::operation::OperationId,
        kind: banger_api::operation::OperationKind,
    },
    #[error(transparent)]
    Handles(#[from] HandlesError),
    #[error(transparent)]
    Store(StoreError),
    #[error("internal error: {0}")]
    Internal(#[from] InternalError),
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken(n) => Self::NameTaken(n),
            StoreError::VmNotFound(id) => Self::VmNotFound(id),
            StoreError::AssetNameTaken { kind, name } => Self::AssetNameTaken { kind, name },
            StoreError::SnapshotNameTaken(n) => Self::SnapshotNameTaken(n),
            other => Self::Store(other),
        }
    }
}

impl From<HostError> for CoreError {
    fn from(e: HostError) -> Self {
        Self::Host(Box::new(e))
    }
}

impl From<ToolError> for CoreError {
    /// A missing tool is the host's to fix; any other tool failure failed
    /// the build.
    fn from(e: ToolError) -> Self {
        match e {
            ToolError::NotFound { .. } => Self::Unavailable(e.to_string()),
            other => Self::AssetBuild(AssetBuildError::Tool(other)),
        }
    }
}

impl From<KernelError> for CoreError {
    /// A kernel package that cannot be read is the build's failure; one
    /// that lacks what banger needs is the user's argument.
    fn from(e: KernelError) -> Self {
        match e {
            KernelError::Io { .. } => Self::AssetBuild(AssetBuildError::Kernel(e)),
            other => Self::InvalidArgument(other.to_string()),
        }
    }
}

/// A host side effect that failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("nat for vm {vm:?}: {source}")]
    Nat {
        vm: String,
        #[source]
        source: FirewallError,
    },
    #[error("the network guard of vm {vm:?}: {source}")]
    Guard {
        vm: String,
        #[source]
        source: FirewallError,
    },
    #[error(transparent)]
    Vmm(#[from] VmmError),
    #[error(transparent)]
    Ready(#[from] ReadyError),
    #[error(transparent)]
    Readiness(#[from] ReadinessError),
    #[error("{what}: {source}")]
    Tool {
        what: String,
        #[source]
        source: ToolError,
    },
}

/// Why a started guest never became usable.
#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    #[error("the {vmm} process exited before the guest agent {stage} ({attempts})")]
    VmmExited {
        vmm: banger_api::vm::VmmKind,
        /// "answered" or "reported ready".
        stage: &'static str,
        attempts: String,
    },
    #[error(
        "the guest agent did not answer within {secs}s ({attempts}); raise guest.ready_timeout_secs for slow hosts"
    )]
    NoAnswer { secs: u64, attempts: String },
    #[error("the guest agent did not report ready within {secs}s (nothing called {}; {attempts}); raise guest.ready_timeout_secs for slow hosts", path.display())]
    NoReadyCall {
        secs: u64,
        path: PathBuf,
        attempts: String,
    },
}

/// A conversation with a guest agent that went wrong.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the vm has no agent channel (it has not started since it was created); start it")]
    NoChannel,
    /// The agent runs another protocol version: not worth another try.
    #[error(transparent)]
    VersionMismatch(ProtoError),
    #[error(transparent)]
    Proto(ProtoError),
    #[error("{what} within {secs}s")]
    Timeout { what: String, secs: u64 },
    #[error("{what} answered with {answer}")]
    Unexpected { what: String, answer: String },
    /// The agent's own error message (guest data, shown as is).
    #[error("{0}")]
    Guest(String),
    #[error("connection closed before the exit")]
    ClosedEarly,
    /// The agent channel was to be closed with sessions open on it.
    #[error("{sessions} session(s) are open on its channel; it was left open")]
    ChannelBusy { sessions: usize },
    #[error("its VMM did not close the agent channel within {secs}s")]
    ChannelStuck { secs: u64 },
    #[error("the guest has no /etc/ssh/ssh_host_ed25519_key.pub (is openssh-server in the image?)")]
    NoHostKey,
    /// A short command's output past what the daemon keeps of one.
    #[error("{what} wrote more than {max} bytes; the daemon keeps no more of a guest's answer")]
    TooMuchOutput { what: String, max: usize },
    #[error("the guest's ssh host key is not an ed25519 public key")]
    BadHostKey,
}

impl From<ProtoError> for AgentError {
    fn from(e: ProtoError) -> Self {
        match e {
            e @ ProtoError::VersionMismatch { .. } => Self::VersionMismatch(e),
            other => Self::Proto(other),
        }
    }
}

fn agent_message(vm: &str, e: &AgentError) -> String {
    match e {
        AgentError::VersionMismatch(p) => format!("vm {vm:?}: {p}"),
        other => format!("guest agent of vm {vm:?}: {other}"),
    }
}

/// Building or importing an asset failed on the host.
#[derive(Debug, thiserror::Error)]
pub enum AssetBuildError {
    #[error(transparent)]
    Tool(ToolError),
    #[error(transparent)]
    Kernel(KernelError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error("building the default {kind} on first use failed: {source}\n{hint}")]
    FirstUse {
        kind: String,
        hint: String,
        #[source]
        source: Box<CoreError>,
    },
}

/// What went wrong inside the daemon rather than on the host or in the
/// request.
#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} task: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("refusing to remove {}: not a vm directory under {}", dir.display(), root.display())]
    NotAVmDir { dir: PathBuf, root: PathBuf },
    #[error("refusing to remove {}: not a snapshot directory under {}", dir.display(), root.display())]
    NotASnapshotDir { dir: PathBuf, root: PathBuf },
    #[error("vm {0:?} has no address")]
    NoAddress(String),
    /// A running VM's record lacks a path its start records.
    #[error("vm {vm:?} has no recorded {what}")]
    NoRuntimePath { vm: String, what: &'static str },
    #[error("vm {0:?} has no address for nat")]
    NoNatAddress(String),
    #[error("could not find a free generated name")]
    NoFreeName,
}

impl InternalError {
    /// For `map_err`: an I/O failure on `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }
}

/// One teardown step that failed; cleanup runs every step regardless.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("killing vmm {pid}: {source}")]
    KillVmm {
        pid: u32,
        #[source]
        source: VmmError,
    },
    #[error(transparent)]
    Release(VmmError),
    #[error("{capability}: {source}")]
    Capability {
        capability: &'static str,
        #[source]
        source: Box<CoreError>,
    },
    #[error(transparent)]
    Tap(NetError),
    #[error("removing {}: {source}", path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Core(Box<CoreError>),
}

/// Every failed step of one cleanup, in order.
#[derive(Debug)]
pub struct CleanupErrors(pub Vec<CleanupError>);

impl std::fmt::Display for CleanupErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

fn hint_for(kind: AssetKind, name: &str) -> String {
    match kind {
        AssetKind::Kernel => format!(
            "; add it with `banger kernel add {name} --from-debian` or `banger kernel import`"
        ),
        AssetKind::Image => {
            format!("; build it with `banger image build {name}` or `banger image import`")
        }
    }
}
