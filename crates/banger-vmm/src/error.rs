//! Why a VMM operation failed.

use std::path::PathBuf;

use banger_host::jail::JailError;
use banger_host::tools::ToolError;

use crate::firecracker::ApiError;
use crate::qmp::QmpError;

/// Why a VMM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("starting {bin}: {source}")]
    Launch {
        bin: PathBuf,
        #[source]
        source: LaunchError,
    },
    /// QEMU's QMP socket.
    #[error("control socket {path}: {source}")]
    Qmp {
        path: PathBuf,
        #[source]
        source: QmpError,
    },
    /// Firecracker's API socket.
    #[error("control socket {path}: {source}")]
    Api {
        path: PathBuf,
        #[source]
        source: ApiError,
    },
    #[error("vmm pid {pid} did not exit within {secs}s")]
    ExitTimeout { pid: u32, secs: u64 },
    #[error("watching for {what}: {source}")]
    Watch {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A `/proc` scan on the blocking pool panicked or was cancelled.
    #[error("scanning processes: {0}")]
    Blocking(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Jail(#[from] JailError),
    #[error("{vmm} VMs have no {what} here")]
    Unsupported {
        vmm: banger_api::vm::VmmKind,
        what: &'static str,
    },
    /// A snapshot could not be written or read back.
    #[error("snapshot {path}: {why}")]
    Snapshot { path: PathBuf, why: String },
    /// A snapshot's file could not be moved or read: `what` says which
    /// and how.
    #[error("snapshot {what}: {source}")]
    SnapshotFile {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why a VMM (or the vsock backend it needs) did not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Preparing a file the VMM uses: `what` says which and how.
    #[error("{what}: {source}")]
    File {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Spawn(#[source] std::io::Error),
    /// The vsock backend binary could not be run.
    #[error("{0} (install it with scripts/setup.sh, or set vmm.vsock_backend)")]
    SpawnBackend(#[source] std::io::Error),
    /// QEMU (which daemonizes) failed before going to the background.
    #[error("{0}")]
    Tool(#[source] ToolError),
    #[error("exited at once")]
    ExitedAtOnce,
    #[error("waiting for it: {0}")]
    Wait(#[source] std::io::Error),
    #[error("API socket {socket} did not come up ({why}); see {console}")]
    ApiSocket {
        socket: PathBuf,
        why: NotUp,
        console: PathBuf,
    },
    #[error("vhost-user socket {socket} did not come up ({why}): {log}")]
    VhostSocket {
        socket: PathBuf,
        why: NotUp,
        /// The backend's own words, from its log.
        log: String,
    },
    #[error("bad pid file {path}: {content:?}")]
    BadPidFile { path: PathBuf, content: String },
    /// Configuring the started VMM over its control socket failed.
    #[error("{0}")]
    Configure(#[source] Box<VmmError>),
    /// A launch the test fake was told to fail.
    #[cfg(feature = "testing")]
    #[error("{0}")]
    Simulated(String),
}

impl From<VmmError> for LaunchError {
    fn from(e: VmmError) -> Self {
        Self::Configure(Box::new(e))
    }
}

/// Why a socket a fresh process should open never appeared.
#[derive(Debug)]
pub enum NotUp {
    /// The process ended first; how, when we know.
    Exited(Option<std::process::ExitStatus>),
    TimedOut,
}

impl std::fmt::Display for NotUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(Some(status)) => write!(f, "{status}"),
            Self::Exited(None) => f.write_str("exited"),
            Self::TimedOut => f.write_str("timed out"),
        }
    }
}
