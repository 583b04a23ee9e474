//! How a request to banger-helper fails, as the daemon sees it: on the
//! way there or back ([`HelperError`]'s transport variants), or in the
//! helper, which answers with a [`Failure`] of a stable [`FailureCode`].
//!
//! A leaf module: the host operations' errors (`NetError`,
//! `FirewallError`, `JailError`) carry a [`HelperError`] as their source
//! when they came through the helper, and the helper's own modules build
//! on them, so this cannot live beside the helper without a cycle.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Why a request was not carried out: the class the daemon acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// Outside the policy (or from a peer the helper does not serve).
    Refused,
    /// The line was not a request.
    Malformed,
    /// A jail request to a helper configured not to jail.
    NotJailing,
    /// The host has no default route to NAT through.
    NoUplink,
    /// The network operation failed.
    Net,
    /// The firewall operation failed.
    Firewall,
    /// The jail operation failed.
    Jail,
    /// The helper could not encode its answer.
    Internal,
}

/// A failure as it travels: its class, and the helper's words for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
#[error("{message}")]
pub struct Failure {
    pub code: FailureCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: FailureCode, message: impl std::fmt::Display) -> Failure {
        Failure {
            code,
            message: message.to_string(),
        }
    }
}

/// A request to the helper that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("helper socket {}: {source} (is banger-helper running?)", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("helper socket {}: {source}", socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("helper socket {}: encoding {op}: {source}", socket.display())]
    Encode {
        socket: PathBuf,
        op: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("helper socket {}: bad answer {reply:?}: {source}", socket.display())]
    Decode {
        socket: PathBuf,
        reply: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("helper socket {}: the helper sent no descriptor", socket.display())]
    NoDescriptor { socket: PathBuf },
    #[error("helper socket {}: {op} was answered with {got}", socket.display())]
    Unexpected {
        socket: PathBuf,
        op: &'static str,
        got: &'static str,
    },
    /// The helper's own answer.
    #[error("{0}")]
    Remote(#[source] Failure),
}

impl HelperError {
    /// The helper's code, when the helper answered.
    pub fn code(&self) -> Option<FailureCode> {
        match self {
            HelperError::Remote(f) => Some(f.code),
            _ => None,
        }
    }
}
