//! Operations in flight: the daemon runs every long command as a task of
//! its own, which outlives the request that asked for it. Each has an id
//! (sent as the [`OPERATION_HEADER`] of its stream) by which any client
//! can list it, watch it, or cancel it where that makes sense.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::Progress;

/// The response header that names the operation a stream watches.
pub const OPERATION_HEADER: &str = "banger-operation";

/// `op-` and 16 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OperationId(String);

/// An id that is not `op-` and 16 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an operation id (op- and 16 hex digits, as `banger operation list` shows)")]
pub struct BadOperationId(String);

impl OperationId {
    /// The id of the operation numbered `n` (the daemon draws `n` at random).
    pub fn from_number(n: u64) -> Self {
        Self(format!("op-{n:016x}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for OperationId {
    type Err = BadOperationId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = s.strip_prefix("op-").is_some_and(|hex| {
            hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(BadOperationId(s.to_owned()))
        }
    }
}

impl TryFrom<String> for OperationId {
    type Error = BadOperationId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<OperationId> for String {
    fn from(id: OperationId) -> Self {
        id.0
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    VmCreate,
    VmStart,
    VmStop,
    VmKill,
    VmDelete,
    VmSet,
    VmPause,
    VmResume,
    VmSnapshot,
    VmFork,
    SnapshotRm,
    KernelImport,
    KernelAdd,
    KernelRm,
    ImageBuild,
    ImageImport,
    ImageRm,
    ImageWarm,
}

impl OperationKind {
    /// As the CLI spells the command (`vm start`, `image build`).
    pub fn command(self) -> &'static str {
        match self {
            Self::VmCreate => "vm create",
            Self::VmStart => "vm start",
            Self::VmStop => "vm stop",
            Self::VmKill => "vm kill",
            Self::VmDelete => "vm delete",
            Self::VmSet => "vm set",
            Self::VmPause => "vm pause",
            Self::VmResume => "vm resume",
            Self::VmSnapshot => "vm snapshot",
            Self::VmFork => "vm fork",
            Self::SnapshotRm => "snapshot rm",
            Self::KernelImport => "kernel import",
            Self::KernelAdd => "kernel add",
            Self::KernelRm => "kernel rm",
            Self::ImageBuild => "image build",
            Self::ImageImport => "image import",
            Self::ImageRm => "image rm",
            Self::ImageWarm => "image warm",
        }
    }
}

impl fmt::Display for OperationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.command())
    }
}

/// One operation in flight, as `GET /v1/operations` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationInfo {
    pub id: OperationId,
    pub kind: OperationKind,
    /// The VM, asset or snapshot it acts on, as the request named it.
    pub target: String,
    pub started_at: DateTime<Utc>,
    /// The last stage it reported, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Progress>,
    /// `POST /v1/operations/{id}/cancel` stops it (asset builds, imports
    /// and adds; VM starts). The others run to their end, since stopping
    /// them half way would leave a VM or an asset in between.
    pub cancellable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_op_and_16_hex_digits() {
        let id = OperationId::from_number(0xab);
        assert_eq!(id.as_str(), "op-00000000000000ab");
        assert_eq!(id.as_str().parse::<OperationId>(), Ok(id.clone()));
        for bad in [
            "",
            "op-",
            "op-00000000000000AB",
            "op-0000000000000000a",
            "vm-00000000000000ab",
            "op-000000000000000g",
        ] {
            assert!(bad.parse::<OperationId>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&id).expect("ser");
        assert_eq!(json, r#""op-00000000000000ab""#);
        assert!(serde_json::from_str::<OperationId>(r#""../etc""#).is_err());
    }

    #[test]
    fn kinds_are_snake_case_on_the_wire_and_cli_words_in_text() {
        assert_eq!(
            serde_json::to_string(&OperationKind::ImageBuild).expect("ser"),
            r#""image_build""#
        );
        assert_eq!(OperationKind::VmStart.to_string(), "vm start");
    }
}
