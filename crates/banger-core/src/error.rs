//! Why the core refused or failed a command.

use banger_store::StoreError;

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
            other => Self::Store(other),
        }
    }
}
