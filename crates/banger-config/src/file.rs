//! The TOML file's schema. Strict: an unknown key is an error naming it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ConfigError;

/// The TOML file's shape. Every section and key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) runtime_dir: Option<PathBuf>,
    pub(crate) socket: Option<PathBuf>,
    pub(crate) log_level: Option<String>,
    #[serde(default)]
    pub(crate) vmm: FileVmm,
    #[serde(default)]
    pub(crate) network: FileNetwork,
    #[serde(default)]
    pub(crate) defaults: FileDefaults,
    #[serde(default)]
    pub(crate) assets: FileAssets,
    #[serde(default)]
    pub(crate) guest: FileGuest,
    #[serde(default)]
    pub(crate) tools: FileTools,
    #[serde(default)]
    pub(crate) jailer: FileJailer,
    #[serde(default)]
    pub(crate) privileges: FilePrivileges,
    #[serde(default)]
    pub(crate) limits: FileLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileLimits {
    pub(crate) concurrent_boots: Option<u32>,
    pub(crate) api_connections: Option<u32>,
    pub(crate) api_header_timeout_secs: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FilePrivileges {
    pub(crate) helper_socket: Option<PathBuf>,
    pub(crate) helper_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileJailer {
    pub(crate) enabled: Option<bool>,
    pub(crate) user: Option<String>,
    pub(crate) chroot_base: Option<PathBuf>,
    pub(crate) pids_max: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileAssets {
    pub(crate) debian_mirror: Option<String>,
    pub(crate) debian_suite: Option<String>,
    pub(crate) kernel_package: Option<String>,
    pub(crate) auto_provision: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileGuest {
    pub(crate) init: Option<PathBuf>,
    pub(crate) agent: Option<PathBuf>,
    pub(crate) ready_timeout_secs: Option<u32>,
    pub(crate) console_max: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileTools {
    pub(crate) apt_get: Option<PathBuf>,
    pub(crate) debootstrap: Option<PathBuf>,
    pub(crate) mkfs_ext4: Option<PathBuf>,
    pub(crate) ssh: Option<PathBuf>,
    pub(crate) ssh_keygen: Option<PathBuf>,
    pub(crate) bwrap: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileVmm {
    pub(crate) firecracker: Option<PathBuf>,
    pub(crate) jailer: Option<PathBuf>,
    pub(crate) qemu: Option<PathBuf>,
    pub(crate) vsock_backend: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileNetwork {
    pub(crate) bridge: Option<String>,
    pub(crate) bridge_cidr: Option<String>,
    pub(crate) uplink: Option<String>,
    pub(crate) vm_to_vm: Option<bool>,
    pub(crate) guest_ipv6: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileDefaults {
    pub(crate) vcpus: Option<u32>,
    pub(crate) memory_mib: Option<u32>,
    pub(crate) root_disk: Option<String>,
    pub(crate) work_disk: Option<String>,
    pub(crate) warm_start: Option<bool>,
}

pub(crate) fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}
