//! `bangerd`/`banger` configuration.
//!
//! Sources, later ones winning: built-in defaults, the TOML file
//! (`/etc/banger/config.toml`, or the path in `BANGER_CONFIG`), then
//! `BANGER_*` environment variables. The file is strict: an unknown key is
//! an error naming the key, so a typo never silently falls back to a
//! default.
//!
//! The file's schema is [`file`], the environment's precedence [`env`],
//! single-value checks [`values`], and [`resolve`] puts each section
//! together.

mod env;
mod error;
mod file;
mod resolve;
mod values;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub use error::ConfigError;

use file::{FileConfig, parse_file};

pub use banger_api::defaults::{CONFIG_ENV, DEFAULT_CONFIG_PATH};
use banger_api::defaults::{LOG_FILE, STDERR_LOG_FILE};

/// Paths of external VMM binaries; a bare name is looked up on `PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmPaths {
    pub firecracker: PathBuf,
    pub jailer: PathBuf,
    pub qemu: PathBuf,
    /// `vhost-device-vsock`: the userspace vsock device QEMU guests use.
    pub vsock_backend: PathBuf,
}

/// The host bridge VMs attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub bridge: String,
    pub bridge_ip: Ipv4Addr,
    pub prefix_len: u8,
    /// Where NATed traffic leaves; `None`: the default route's interface.
    pub uplink: Option<String>,
    /// VMs on the bridge may reach each other (off: each sees only the
    /// host's DNS and, with NAT, the outside).
    pub vm_to_vm: bool,
    /// Guests may send IPv6 on the bridge (off: every IPv6 frame from a
    /// guest is dropped).
    pub guest_ipv6: bool,
}

/// Values a VM gets when the request does not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDefaults {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub root_disk_bytes: u64,
    pub work_disk_bytes: u64,
    /// VMs restore their shape's template on first start (and the first
    /// of a shape saves it); `vm create --cold` opts one VM out.
    pub warm_start: bool,
}

/// Where boot assets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetConfig {
    pub debian_mirror: String,
    pub debian_suite: String,
    pub kernel_package: String,
    /// Build the `default` kernel and image on first use.
    pub auto_provision: bool,
}

/// Binaries that go into guests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    /// Static PID 1 of the initramfs (`scripts/build-guest.sh`).
    pub init: PathBuf,
    /// Static guest agent, injected into every VM's root disk at start.
    pub agent: PathBuf,
    /// How long a start waits for the agent's first answer; `None` picks
    /// by acceleration (software emulation boots far slower).
    pub ready_timeout_secs: Option<u32>,
    /// How large a VM's console log grows before it is rotated (the
    /// guest writes it: one older generation is kept beside it).
    pub console_max_bytes: u64,
}

/// How much the daemon runs at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Guest boots in flight at once (VMM launch to agent ready);
    /// `None` picks from the host (CPUs, and whether it has hardware
    /// KVM), `Some(0)` admits every boot at once.
    pub concurrent_boots: Option<u32>,
    /// API connections open at once; one more is answered 503 and closed.
    pub api_connections: u32,
    /// How long a client may take to send a request's headers.
    pub api_header_timeout_secs: u32,
}

/// Default of [`LimitsConfig::api_connections`]: far above what a user
/// and their agents open (a `vm run --rm` holds one for its lease, for
/// as long as it runs), far below what runs a daemon out of files.
pub const DEFAULT_API_CONNECTIONS: u32 = 1024;
/// Default of [`LimitsConfig::api_header_timeout_secs`].
pub const DEFAULT_API_HEADER_TIMEOUT_SECS: u32 = 10;

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            concurrent_boots: None,
            api_connections: DEFAULT_API_CONNECTIONS,
            api_header_timeout_secs: DEFAULT_API_HEADER_TIMEOUT_SECS,
        }
    }
}

/// External host tools; a bare name is looked up on `PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolPaths {
    pub apt_get: PathBuf,
    pub debootstrap: PathBuf,
    pub mkfs_ext4: PathBuf,
    pub ssh: PathBuf,
    pub ssh_keygen: PathBuf,
    /// bubblewrap, which confines the disk tools on guest-written disks.
    pub bwrap: PathBuf,
}

/// The resolved, validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Durable state: database, assets, VM directories, logs.
    pub state_dir: PathBuf,
    /// Ephemeral state: sockets. Lost on reboot by design.
    pub runtime_dir: PathBuf,
    pub socket: PathBuf,
    pub log_level: String,
    pub vmm: VmmPaths,
    pub network: NetworkConfig,
    pub defaults: VmDefaults,
    pub assets: AssetConfig,
    pub guest: GuestConfig,
    pub tools: ToolPaths,
    pub jailer: JailerConfig,
    pub limits: LimitsConfig,
    /// Where banger-helper listens; when set, bangerd asks it for every
    /// network and firewall change instead of making them itself.
    pub helper_socket: Option<PathBuf>,
    /// The helper's own files (its log, the NAT forwarding marker): a
    /// root-owned directory, never one the daemon's uid can change.
    pub helper_dir: PathBuf,
}

/// Firecracker under its jailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerConfig {
    pub enabled: bool,
    /// The dedicated unprivileged user VMMs run as (a name or `uid:gid`).
    pub user: String,
    /// The jailer's chroot base; on the state dir's filesystem.
    pub chroot_base: PathBuf,
    pub pids_max: u32,
}

impl Config {
    /// Loads from the real process environment.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_with(|k| std::env::var(k).ok())
    }

    /// Loads with `env` standing in for the process environment.
    pub fn load_with(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let (path, explicit) = match env(CONFIG_ENV).filter(|p| !p.is_empty()) {
            Some(p) => (PathBuf::from(p), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => parse_file(&path, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                FileConfig::default()
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::resolve(file, &env)
    }

    /// Parses a config file's text (for tests and `banger doctor`).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::resolve(parse_file(Path::new("<inline>"), text)?, &|_| None)
    }

    /// The daemon's SQLite database.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("banger.db")
    }

    /// The daemon's own log (tracing output).
    pub fn log_path(&self) -> PathBuf {
        self.state_dir.join(LOG_FILE)
    }

    /// Where a detached daemon's stderr goes: panics and failures that
    /// happen before logging is set up.
    pub fn stderr_log_path(&self) -> PathBuf {
        self.state_dir.join(STDERR_LOG_FILE)
    }

    /// Content-addressed kernels.
    pub fn kernels_dir(&self) -> PathBuf {
        self.state_dir.join("kernels")
    }

    /// Content-addressed images.
    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }

    /// Work area of builds in progress: on the state dir's filesystem so a
    /// finished asset is published with a rename, never half-visible.
    pub fn tmp_dir(&self) -> PathBuf {
        self.state_dir.join("tmp")
    }

    /// The single-instance lock file.
    pub fn lock_path(&self) -> PathBuf {
        self.state_dir.join("bangerd.lock")
    }
}

#[cfg(test)]
mod tests;
