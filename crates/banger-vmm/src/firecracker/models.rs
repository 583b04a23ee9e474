//! The bodies banger sends to Firecracker's API, one type per resource
//! (Firecracker's own `vmm_config` names). Fields are in alphabetical
//! order: that is the order the earlier `json!` bodies had on the wire.

use std::path::PathBuf;

use serde::Serialize;

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
