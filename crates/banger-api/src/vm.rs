//! VM records and the requests that act on them.
//!
//! A VM is split the way the daemon's crash safety needs it:
//! - [`VmSpec`]: durable intent, what the user asked for;
//! - [`VmRuntime`]: durable or deterministic facts the daemon derived
//!   (paths, guest address, last error) plus *mirrors* of the
//!   teardown-critical kernel handles so cleanup survives a lost cache.
//!
//! Transient handles (pids, taps, loops as live objects) are not here:
//! they live in the daemon's memory and a per-VM scratch file, never on
//! the wire or in SQLite as authority.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Lifecycle state of a VM. Which transitions are legal is the daemon
/// core's business (`banger_core::lifecycle`); this is only the label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Created,
    Starting,
    Running,
    /// vCPUs frozen, the VMM process kept (`vm pause`).
    Paused,
    Stopping,
    Stopped,
    Error,
}

impl VmState {
    pub const ALL: [VmState; 7] = [
        Self::Created,
        Self::Starting,
        Self::Running,
        Self::Paused,
        Self::Stopping,
        Self::Stopped,
        Self::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Error => "error",
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Unknown state label (a database written by a newer banger).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown vm state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for VmState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// Which virtual machine monitor runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmmKind {
    Firecracker,
    Qemu,
}

impl VmmKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firecracker => "firecracker",
            Self::Qemu => "qemu",
        }
    }
}

impl fmt::Display for VmmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Durable intent: what the VM should be. Changed only by the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Size of the VM's copy-on-write root disk.
    pub root_disk_bytes: u64,
    /// Size of the persistent work disk mounted at `/root`.
    pub work_disk_bytes: u64,
    pub image: String,
    pub kernel: String,
    pub nat: bool,
    pub vmm: VmmKind,
}

/// Durable or derived facts about a VM, owned by the daemon.
///
/// Every field is optional so rows written by an older daemon decode, and
/// empty fields stay out of the JSON. Addresses and paths are typed; on
/// the wire they are the same strings as before. The daemon's teardown
/// mirror is not here: it is internal state, kept beside the record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRuntime {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_socket: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_path: Option<PathBuf>,
    /// Host end of the agent's virtio-serial port (QEMU guests); where
    /// set, the agent is reached there rather than over vsock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_socket: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_cid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_log: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_disk_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_disk_path: Option<PathBuf>,
    /// Why the VM last failed. It can quote the guest (its console), so
    /// it is cut to [`LAST_ERROR_MAX`] bytes wherever it is written out
    /// (the store, every API answer).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "capped_error"
    )]
    pub last_error: Option<String>,
    /// The kernel command line the running guest booted with (a restored
    /// guest's is its snapshot's): a snapshot of it records this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_cmdline: Option<String>,
    /// The snapshot (id) this VM's next start restores from instead of
    /// booting; cleared once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<String>,
    /// The first start is a warm start: it restores the template of this
    /// VM's shape (kernel, image, VMM, vCPUs, memory, disks), or boots
    /// and saves one. Cleared once the VM has its own disks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warm_start: bool,
    /// Created under a client's lease (`vm run --rm`): removed when the
    /// lease ends, and at daemon start (the lease ended with the last
    /// daemon's connections).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leased: bool,
    /// The guest's ssh host key (`ssh-ed25519 AAAA…`), captured through
    /// the agent on first boot and pinned from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host_key: Option<String>,
}

/// A VM's id, made by the daemon (16 hex digits) and never reused: the
/// key of its row, its directory, its tap and jail names. A distinct type
/// so a name is never passed where an id is meant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VmId(String);

impl VmId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for VmId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for VmId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for VmId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for VmId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl PartialEq<str> for VmId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for VmId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A VM as stored and as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub id: VmId,
    pub name: String,
    pub state: VmState,
    pub spec: VmSpec,
    pub runtime: VmRuntime,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/vms`. Every field is optional: the daemon fills defaults
/// from its configuration and the host's capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_disk_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_disk_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default)]
    pub nat: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<VmmKind>,
    /// Start from this snapshot (name or id) instead of booting; the
    /// machine (vCPUs, memory, kernel, image, VMM, disks) is the
    /// snapshot's, so those fields must be absent or equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Boot, even where a template of this shape exists or could be made.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cold: bool,
    /// Create it under this lease (`POST /v1/leases`): the daemon kills
    /// and deletes it when the lease ends (`vm run --rm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

/// `POST /v1/leases` answers with NDJSON that stays open as long as the
/// lease is held: this line first, then nothing. Closing the connection
/// ends the lease, and the daemon removes the VMs created under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseEvent {
    Held { lease: String },
}

/// `PATCH /v1/vms/{vm}`: changes to a VM's spec; absent fields stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetVmRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_disk_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<bool>,
}

impl SetVmRequest {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// The most of a `last_error` that is kept.
pub const LAST_ERROR_MAX: usize = 4096;

/// `text` cut to at most `max` bytes on a character boundary, saying so.
pub fn cap_text(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    const MARK: &str = " … (cut)";
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{MARK}", &text[..end]))
}

fn capped_error<S: serde::Serializer>(e: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match e {
        Some(text) => s.serialize_some(&cap_text(text, LAST_ERROR_MAX)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_sized_last_error_is_cut_where_it_is_written_out() {
        let rt = VmRuntime {
            last_error: Some(format!("start failed: {}", "é".repeat(100_000))),
            ..Default::default()
        };
        let json = serde_json::to_value(&rt).expect("ser");
        let text = json["last_error"].as_str().expect("text");
        assert!(text.len() <= LAST_ERROR_MAX, "{}", text.len());
        assert!(text.starts_with("start failed: é") && text.ends_with("(cut)"));
        let short = VmRuntime {
            last_error: Some("no kernel".into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&short).expect("ser")["last_error"],
            "no kernel"
        );
    }

    #[test]
    fn state_labels_round_trip() {
        for st in VmState::ALL {
            assert_eq!(st.as_str().parse::<VmState>(), Ok(st));
            assert_eq!(
                serde_json::to_value(st).expect("ser"),
                serde_json::Value::String(st.as_str().into())
            );
        }
        assert!("hibernating".parse::<VmState>().is_err());
    }

    #[test]
    fn old_runtime_rows_decode_and_empty_fields_stay_out() {
        let rt: VmRuntime = serde_json::from_str("{}").expect("empty runtime decodes");
        assert_eq!(rt, VmRuntime::default());
        assert_eq!(serde_json::to_string(&rt).expect("ser"), "{}");
    }

    #[test]
    fn typed_runtime_fields_keep_their_wire_strings() {
        let json = r#"{"guest_ip":"10.99.0.2","vm_dir":"/var/lib/banger/vms/0123","api_socket":"/run/banger/vms/0123.sock","teardown":{"tap":"bg-0123","loops":["/dev/loop3"],"dm_target":"x"}}"#;
        let rt: VmRuntime = serde_json::from_str(json).expect("a row of the old shape decodes");
        assert_eq!(rt.guest_ip, Some(Ipv4Addr::new(10, 99, 0, 2)));
        assert_eq!(rt.vm_dir, Some(PathBuf::from("/var/lib/banger/vms/0123")));
        assert_eq!(
            serde_json::to_string(&rt).expect("ser"),
            r#"{"guest_ip":"10.99.0.2","vm_dir":"/var/lib/banger/vms/0123","api_socket":"/run/banger/vms/0123.sock"}"#
        );
        assert!(serde_json::from_str::<VmRuntime>(r#"{"guest_ip":"not-an-ip"}"#).is_err());
    }

    #[test]
    fn create_request_rejects_unknown_fields() {
        let err = serde_json::from_str::<CreateVmRequest>(r#"{"nmae":"x"}"#)
            .expect_err("typo must not be ignored");
        assert!(err.to_string().contains("nmae"), "{err}");
    }
}

/// The `Upgrade` token of `POST /v1/vms/{vm}/attach`: after `101`, the
/// connection carries the agent protocol (`banger-agent-proto` frames).
pub const ATTACH_UPGRADE: &str = "banger-agent";

/// `POST /v1/vms/{vm}/attach`: what to do over the upgraded connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AttachRequest {
    /// Run a command; frames: stdout, stderr, exit (and stdin, resize,
    /// signal from the client).
    Exec(banger_agent_proto::ExecRequest),
    /// Send a tar stream (`archive::pack`) to unpack at `dest`.
    CopyIn { dest: String },
    /// Receive `path` as a tar stream.
    CopyOut { path: String },
}

/// `GET /v1/vms/{vm}/ssh`: how to reach a running VM with the system ssh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshInfo {
    pub host: String,
    pub user: String,
    /// banger's private key (0600).
    pub identity_file: String,
    /// A known_hosts file holding just this VM's pinned host key.
    pub known_hosts_file: String,
}
