//! Why the core refused or failed a command.

use banger_store::{AssetKind, StoreError};

use crate::handles::HandlesError;
use crate::lifecycle::LifecycleError;

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
    #[error("{0}")]
    AssetBuild(String),
    #[error("asset corrupt: {0}")]
    AssetCorrupt(String),
    #[error("vm {vm:?} failed to start: {message}")]
    StartFailed { vm: String, message: String },
    #[error("{0}")]
    Host(String),
    #[error("cleanup incomplete: {}", .0.join("; "))]
    Cleanup(Vec<String>),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error("{0}")]
    Unavailable(String),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Handles(#[from] HandlesError),
    #[error(transparent)]
    Store(StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken(n) => Self::NameTaken(n),
            StoreError::VmNotFound(id) => Self::VmNotFound(id),
            StoreError::AssetNameTaken { kind, name } => Self::AssetNameTaken { kind, name },
            other => Self::Store(other),
        }
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
