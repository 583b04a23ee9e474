//! Boot assets: kernels and root images.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::vm::VmmKind;

/// One stored file with its digest, checked on use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetFile {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// A bootable kernel: ELF vmlinux, optional initramfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelRecord {
    pub id: String,
    pub name: String,
    /// `uname -r` of the kernel, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where it came from: `debian:<package>=<version>` or `import`.
    pub source: String,
    pub vmlinux: AssetFile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<AssetFile>,
    /// Modules the initramfs loads, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
    /// Extra kernel command-line arguments.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cmdline: String,
    /// VMMs a VM has booted this kernel on.
    #[serde(default)]
    pub booted_on: Vec<VmmKind>,
    /// Content address: the directory name under `<state>/kernels`.
    pub digest: String,
    pub created_at: DateTime<Utc>,
}

/// A root image: the shared read-only base of VM root disks, and the seed
/// of their work disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    pub name: String,
    /// `debootstrap:<suite>` or `import:<file|dir>`.
    pub source: String,
    pub rootfs: AssetFile,
    /// ext4 holding the image's `/root`, cloned into each VM's work disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_seed: Option<AssetFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// What runs as PID 1 in VMs of this image. Records written before
    /// this field existed are systemd images: nothing else could reach
    /// the agent then (it was a systemd unit).
    #[serde(default)]
    pub init: ImageInit,
    pub digest: String,
    pub created_at: DateTime<Utc>,
}

/// An image's init, found when it is built or imported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageInit {
    /// `/sbin/init` is systemd: banger-init starts the agent early, then
    /// hands PID 1 to systemd.
    #[default]
    Systemd,
    /// No usable init: banger-init stays PID 1 for the VM's life.
    Banger,
}

impl ImageInit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Systemd => "systemd",
            Self::Banger => "banger",
        }
    }
}

impl std::fmt::Display for ImageInit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /v1/kernels/import`. Paths are on the daemon's host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelImportRequest {
    pub name: String,
    pub vmlinux: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// `POST /v1/kernels/add`: build from a Debian kernel package.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelAddRequest {
    pub name: String,
    /// Defaults to the configured package (`linux-image-cloud-amd64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
}

/// `POST /v1/images/build`: debootstrap a Debian root image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageBuildRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    /// Extra packages on top of banger's base set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
}

/// `POST /v1/images/import`: exactly one of `rootfs` (an ext4 file) or
/// `dir` (a directory tree to turn into ext4).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageImportRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}
