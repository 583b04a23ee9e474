//! The helper's wire: one JSON request per line, one JSON answer per line.
//!
//! Every request has one answer shape ([`Reply`]), and a failure carries a
//! stable [`FailureCode`] so the daemon decides on the code, never on the
//! words. Both are this crate's, so the two ends always agree on the
//! shapes; an answer that does not decode is an error, never a default.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::jail::JailStage;
pub use crate::remote::{Failure, FailureCode};

/// What the daemon may ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum HelperRequest {
    EnsureBridge {
        name: String,
        ip: Ipv4Addr,
        prefix_len: u8,
    },
    CreateTap {
        name: String,
        bridge: String,
        owner: Option<(u32, u32)>,
    },
    DeleteLink {
        name: String,
    },
    /// Answered with the descriptor attached (`SCM_RIGHTS`).
    OpenTap {
        name: String,
    },
    ListLinks,
    AddNat {
        tap: String,
        guest_ip: Ipv4Addr,
        bridge: String,
        uplink: String,
    },
    RemoveNat {
        tap: String,
    },
    AddGuard(crate::firewall::Guard),
    RemoveGuard {
        tap: String,
    },
    TaggedTaps,
    DefaultUplink,
    /// Builds a VM's chroot; answered with the jail dir.
    StageJail(JailStage),
    /// Starts the jailer; answered with its pid.
    SpawnJail {
        vm_id: String,
        console: PathBuf,
    },
    ReleaseJail {
        vm_id: String,
        jail_dir: Option<PathBuf>,
    },
}

impl HelperRequest {
    /// The request's name on the wire, for errors about its answer.
    pub fn op(&self) -> &'static str {
        match self {
            HelperRequest::EnsureBridge { .. } => "ensure_bridge",
            HelperRequest::CreateTap { .. } => "create_tap",
            HelperRequest::DeleteLink { .. } => "delete_link",
            HelperRequest::OpenTap { .. } => "open_tap",
            HelperRequest::ListLinks => "list_links",
            HelperRequest::AddNat { .. } => "add_nat",
            HelperRequest::RemoveNat { .. } => "remove_nat",
            HelperRequest::AddGuard(_) => "add_guard",
            HelperRequest::RemoveGuard { .. } => "remove_guard",
            HelperRequest::TaggedTaps => "tagged_taps",
            HelperRequest::DefaultUplink => "default_uplink",
            HelperRequest::StageJail(_) => "stage_jail",
            HelperRequest::SpawnJail { .. } => "spawn_jail",
            HelperRequest::ReleaseJail { .. } => "release_jail",
        }
    }
}

/// What a request that went through is answered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// The operation has no value (bridge, tap, link, NAT, release, and
    /// `open_tap`, whose value is the descriptor beside the line).
    Done,
    /// `list_links`.
    Links(Vec<crate::net::LinkInfo>),
    /// `tagged_taps`.
    TaggedTaps(Vec<String>),
    /// `default_uplink`.
    Uplink(Option<String>),
    /// `stage_jail`.
    JailDir(PathBuf),
    /// `spawn_jail`.
    Pid(u32),
}

impl Reply {
    /// Its name, for errors about an answer of the wrong kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::Done => "done",
            Reply::Links(_) => "links",
            Reply::TaggedTaps(_) => "tagged_taps",
            Reply::Uplink(_) => "uplink",
            Reply::JailDir(_) => "jail_dir",
            Reply::Pid(_) => "pid",
        }
    }
}

/// The helper's answer: a value, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelperResponse {
    Ok(Reply),
    Error(Failure),
}

impl HelperResponse {
    pub fn failed(code: FailureCode, message: impl std::fmt::Display) -> HelperResponse {
        HelperResponse::Error(Failure::new(code, message))
    }
}
