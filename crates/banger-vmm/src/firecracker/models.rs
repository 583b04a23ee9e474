//! The bodies banger sends to Firecracker's API, one type per resource
//! (Firecracker's own `vmm_config` names), and the parts of its answers
//! banger reads. Fields are in alphabetical order: that is the order the
//! earlier `json!` bodies had on the wire.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `PUT /machine-config`.
#[derive(Debug, Clone, Serialize)]
pub struct MachineConfig {
    pub mem_size_mib: u32,
    pub vcpu_count: u32,
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, Serialize)]
pub struct BootSource {
    pub boot_args: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    pub kernel_image_path: PathBuf,
}

/// `PUT /drives/<drive_id>`.
#[derive(Debug, Clone, Serialize)]
pub struct Drive {
    pub drive_id: String,
    pub is_read_only: bool,
    pub is_root_device: bool,
    pub path_on_host: PathBuf,
}

/// `PUT /network-interfaces/<iface_id>`.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkInterface {
    pub guest_mac: String,
    pub host_dev_name: String,
    pub iface_id: String,
}

/// `PUT /vsock`: the guest's vsock, served on a host unix socket.
#[derive(Debug, Clone, Serialize)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}

/// Firecracker's log level.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum LogLevel {
    Info,
}

/// `PUT /logger`.
#[derive(Debug, Clone, Serialize)]
pub struct Logger {
    pub level: LogLevel,
    pub log_path: PathBuf,
    pub show_level: bool,
}

/// `PUT /metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub metrics_path: PathBuf,
}

/// What `PUT /actions` asks for.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum ActionType {
    InstanceStart,
    /// The guest's keyboard reset: a guest listening for it shuts down.
    SendCtrlAltDel,
}

/// `PUT /actions`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct InstanceAction {
    pub action_type: ActionType,
}

/// The state `PATCH /vm` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum VmState {
    Paused,
    Resumed,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Vm {
    pub state: VmState,
}

/// What `PUT /snapshot/create` writes. Only whole memory: a diff needs
/// dirty-page tracking from the start and a base to be applied to.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum SnapshotType {
    Full,
}

/// `PUT /snapshot/create` (the VM paused): the device and vCPU state to
/// `snapshot_path`, the guest memory to `mem_file_path`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotCreate {
    pub mem_file_path: PathBuf,
    pub snapshot_path: PathBuf,
    pub snapshot_type: SnapshotType,
}

/// Where a loaded VM's memory comes from.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum MemBackendType {
    /// A memory file `PUT /snapshot/create` wrote, mapped privately: the
    /// guest's writes never reach it, but it backs the pages the guest has
    /// not written, so it must not change while the VM runs.
    File,
}

/// `mem_backend` of `PUT /snapshot/load`.
#[derive(Debug, Clone, Serialize)]
pub struct MemBackend {
    pub backend_path: PathBuf,
    pub backend_type: MemBackendType,
}

/// The tap a loaded network interface is backed by instead of the one
/// the snapshot names.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkOverride {
    pub host_dev_name: String,
    pub iface_id: String,
}

/// The host socket a loaded vsock is served on instead of the one the
/// snapshot names.
#[derive(Debug, Clone, Serialize)]
pub struct VsockOverride {
    pub uds_path: PathBuf,
}

/// `PUT /snapshot/load`, accepted only by a fresh Firecracker (nothing
/// configured but its logger and metrics). A snapshot that cannot be
/// loaded ends the process.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotLoad {
    pub mem_backend: MemBackend,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    pub resume_vm: bool,
    pub snapshot_path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
}

/// What `GET /` says the VM is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum InstanceState {
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

/// `GET /`, the part banger reads.
#[derive(Debug, Clone, Deserialize)]
pub struct InstanceInfo {
    pub state: InstanceState,
}

/// One drive of `GET /vm/config`.
#[derive(Debug, Clone, Deserialize)]
pub struct DriveConfig {
    pub drive_id: String,
    /// Absent for a vhost-user drive.
    pub path_on_host: Option<PathBuf>,
}

/// `GET /vm/config`, the part banger reads.
#[derive(Debug, Clone, Deserialize)]
pub struct VmConfig {
    pub drives: Vec<DriveConfig>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The typed body serializes to the very bytes the `json!` it
    /// replaced did.
    fn same_wire(typed: impl Serialize, old: serde_json::Value) {
        assert_eq!(
            serde_json::to_string(&typed).expect("encode"),
            old.to_string()
        );
    }

    #[test]
    fn bodies_match_the_json_they_replaced() {
        same_wire(
            MachineConfig {
                vcpu_count: 2,
                mem_size_mib: 512,
            },
            json!({ "vcpu_count": 2, "mem_size_mib": 512 }),
        );
        same_wire(
            BootSource {
                kernel_image_path: "/k/vmlinux".into(),
                boot_args: "console=ttyS0 reboot=k".into(),
                initrd_path: None,
            },
            json!({ "kernel_image_path": "/k/vmlinux", "boot_args": "console=ttyS0 reboot=k" }),
        );
        let mut boot = json!({ "kernel_image_path": "/vmlinux", "boot_args": "x" });
        boot["initrd_path"] = json!("/initrd");
        same_wire(
            BootSource {
                kernel_image_path: "/vmlinux".into(),
                boot_args: "x".into(),
                initrd_path: Some("/initrd".into()),
            },
            boot,
        );
        same_wire(
            Drive {
                drive_id: "d1".into(),
                path_on_host: "/v/work.ext4".into(),
                is_root_device: false,
                is_read_only: false,
            },
            json!({ "drive_id": "d1", "path_on_host": "/v/work.ext4", "is_root_device": false, "is_read_only": false }),
        );
        same_wire(
            NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: "bg-01234567".into(),
                guest_mac: "02:b6:01:23:45:67".into(),
            },
            json!({ "iface_id": "eth0", "host_dev_name": "bg-01234567", "guest_mac": "02:b6:01:23:45:67" }),
        );
        same_wire(
            Vsock {
                guest_cid: 3,
                uds_path: "/v.sock".into(),
            },
            json!({ "guest_cid": 3, "uds_path": "/v.sock" }),
        );
        same_wire(
            Logger {
                log_path: "/firecracker.log".into(),
                level: LogLevel::Info,
                show_level: true,
            },
            json!({ "log_path": "/firecracker.log", "level": "Info", "show_level": true }),
        );
        same_wire(
            Metrics {
                metrics_path: "/firecracker.metrics".into(),
            },
            json!({ "metrics_path": "/firecracker.metrics" }),
        );
        same_wire(
            InstanceAction {
                action_type: ActionType::InstanceStart,
            },
            json!({ "action_type": "InstanceStart" }),
        );
        same_wire(
            InstanceAction {
                action_type: ActionType::SendCtrlAltDel,
            },
            json!({ "action_type": "SendCtrlAltDel" }),
        );
    }

    fn wire(typed: impl Serialize) -> String {
        serde_json::to_string(&typed).expect("encode")
    }

    /// The snapshot bodies, byte for byte as Firecracker 1.16's swagger
    /// (`Vm`, `SnapshotCreateParams`, `SnapshotLoadParams`) spells them.
    #[test]
    fn snapshot_bodies_are_firecrackers_json() {
        assert_eq!(
            wire(Vm {
                state: VmState::Paused
            }),
            r#"{"state":"Paused"}"#
        );
        assert_eq!(
            wire(Vm {
                state: VmState::Resumed
            }),
            r#"{"state":"Resumed"}"#
        );
        assert_eq!(
            wire(SnapshotCreate {
                snapshot_type: SnapshotType::Full,
                snapshot_path: "/s/vmstate".into(),
                mem_file_path: "/s/memory".into(),
            }),
            r#"{"mem_file_path":"/s/memory","snapshot_path":"/s/vmstate","snapshot_type":"Full"}"#
        );
        let load = SnapshotLoad {
            snapshot_path: "/s/vmstate".into(),
            mem_backend: MemBackend {
                backend_type: MemBackendType::File,
                backend_path: "/s/memory".into(),
            },
            resume_vm: true,
            network_overrides: vec![NetworkOverride {
                iface_id: "eth0".into(),
                host_dev_name: "bg-89abcdef0123".into(),
            }],
            vsock_override: Some(VsockOverride {
                uds_path: "/run/banger/vms/89abcdef01234567.vsock".into(),
            }),
        };
        assert_eq!(
            wire(&load),
            concat!(
                r#"{"mem_backend":{"backend_path":"/s/memory","backend_type":"File"},"#,
                r#""network_overrides":[{"host_dev_name":"bg-89abcdef0123","iface_id":"eth0"}],"#,
                r#""resume_vm":true,"snapshot_path":"/s/vmstate","#,
                r#""vsock_override":{"uds_path":"/run/banger/vms/89abcdef01234567.vsock"}}"#
            )
        );
        // Without a tap or a vsock the overrides are left out, not sent
        // empty: Firecracker refuses an override of a device it lacks.
        let bare = SnapshotLoad {
            network_overrides: vec![],
            vsock_override: None,
            ..load
        };
        assert_eq!(
            wire(&bare),
            r#"{"mem_backend":{"backend_path":"/s/memory","backend_type":"File"},"resume_vm":true,"snapshot_path":"/s/vmstate"}"#
        );
    }

    #[test]
    fn answers_are_read_by_their_names() {
        let info: InstanceInfo = serde_json::from_str(
            r#"{"id":"banger-x","state":"Not started","vmm_version":"1.16.1","app_name":"Firecracker"}"#,
        )
        .expect("info");
        assert_eq!(info.state, InstanceState::NotStarted);
        for (state, want) in [
            ("Running", InstanceState::Running),
            ("Paused", InstanceState::Paused),
        ] {
            let info: InstanceInfo =
                serde_json::from_value(json!({ "state": state })).expect("info");
            assert_eq!(info.state, want);
        }
        // As Firecracker 1.16 answers it (other keys elided).
        let config: VmConfig = serde_json::from_str(
            r#"{"balloon":null,"drives":[{"drive_id":"d0","partuuid":null,"is_root_device":false,"cache_type":"Unsafe","is_read_only":false,"path_on_host":"drive0","rate_limiter":null,"io_engine":"Sync","socket":null}],"vsock":null}"#,
        )
        .expect("config");
        assert_eq!(config.drives.len(), 1);
        assert_eq!(config.drives[0].drive_id, "d0");
        assert_eq!(
            config.drives[0].path_on_host.as_deref(),
            Some(std::path::Path::new("drive0"))
        );
    }

    #[test]
    fn a_path_that_is_not_utf8_is_refused_not_mangled() {
        use std::os::unix::ffi::OsStrExt;
        let bad = PathBuf::from(std::ffi::OsStr::from_bytes(b"/v/\xff.ext4"));
        let drive = Drive {
            drive_id: "d0".into(),
            path_on_host: bad,
            is_root_device: false,
            is_read_only: false,
        };
        assert!(serde_json::to_string(&drive).is_err());
    }
}
