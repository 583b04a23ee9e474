//! `bangerd`/`banger` configuration.
//!
//! Sources, later ones winning: built-in defaults, the TOML file
//! (`/etc/banger/config.toml`, or the path in `BANGER_CONFIG`), then
//! `BANGER_*` environment variables. The file is strict: an unknown key is
//! an error naming the key, so a typo never silently falls back to a
//! default.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use banger_api::size::parse_size;
use serde::Deserialize;

/// Where the config file is read from unless `BANGER_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/banger/config.toml";
/// Environment variable naming an explicit config file.
pub const CONFIG_ENV: &str = "BANGER_CONFIG";

/// `sun_path` is 108 bytes including the terminating NUL.
const SUN_PATH_MAX: usize = 107;
/// `IFNAMSIZ` is 16 including the NUL.
const IFNAME_MAX: usize = 15;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}={value:?}: {message}")]
    Env {
        var: String,
        value: String,
        message: String,
    },
    #[error("config key `{key}` = {value:?}: {message}")]
    Invalid {
        key: &'static str,
        value: String,
        message: String,
    },
}

/// The TOML file's shape. Every section and key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    state_dir: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    log_level: Option<String>,
    #[serde(default)]
    vmm: FileVmm,
    #[serde(default)]
    network: FileNetwork,
    #[serde(default)]
    defaults: FileDefaults,
    #[serde(default)]
    assets: FileAssets,
    #[serde(default)]
    guest: FileGuest,
    #[serde(default)]
    tools: FileTools,
    #[serde(default)]
    jailer: FileJailer,
    #[serde(default)]
    privileges: FilePrivileges,
    #[serde(default)]
    limits: FileLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    concurrent_boots: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePrivileges {
    helper_socket: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJailer {
    enabled: Option<bool>,
    user: Option<String>,
    chroot_base: Option<PathBuf>,
    pids_max: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAssets {
    debian_mirror: Option<String>,
    debian_suite: Option<String>,
    kernel_package: Option<String>,
    auto_provision: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGuest {
    init: Option<PathBuf>,
    agent: Option<PathBuf>,
    ready_timeout_secs: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTools {
    apt_get: Option<PathBuf>,
    debootstrap: Option<PathBuf>,
    mkfs_ext4: Option<PathBuf>,
    ssh: Option<PathBuf>,
    ssh_keygen: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileVmm {
    firecracker: Option<PathBuf>,
    jailer: Option<PathBuf>,
    qemu: Option<PathBuf>,
    vsock_backend: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNetwork {
    bridge: Option<String>,
    bridge_cidr: Option<String>,
    uplink: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDefaults {
    vcpus: Option<u32>,
    memory_mib: Option<u32>,
    root_disk: Option<String>,
    work_disk: Option<String>,
}

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
}

/// Values a VM gets when the request does not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDefaults {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub root_disk_bytes: u64,
    pub work_disk_bytes: u64,
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
}

/// How much the daemon runs at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitsConfig {
    /// Guest boots in flight at once (VMM launch to agent ready);
    /// `None` picks from the host (CPUs, and whether it has hardware
    /// KVM), `Some(0)` admits every boot at once.
    pub concurrent_boots: Option<u32>,
}

/// External host tools; a bare name is looked up on `PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolPaths {
    pub apt_get: PathBuf,
    pub debootstrap: PathBuf,
    pub mkfs_ext4: PathBuf,
    pub ssh: PathBuf,
    pub ssh_keygen: PathBuf,
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

    fn resolve(
        file: FileConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let pick = |var: &str, from_file: Option<String>| -> Option<(String, Source)> {
            match env(var).filter(|v| !v.is_empty()) {
                Some(v) => Some((v, Source::Env(var.to_owned()))),
                None => from_file.map(|v| (v, Source::File)),
            }
        };
        let path_of = |p: Option<PathBuf>| p.map(|p| p.to_string_lossy().into_owned());

        let state_dir = abs_path(
            "state_dir",
            pick("BANGER_STATE_DIR", path_of(file.state_dir)),
            "/var/lib/banger",
        )?;
        let runtime_dir = abs_path(
            "runtime_dir",
            pick("BANGER_RUNTIME_DIR", path_of(file.runtime_dir)),
            "/run/banger",
        )?;
        let socket = match pick("BANGER_SOCKET", path_of(file.socket)) {
            Some(v) => abs_path("socket", Some(v), "")?,
            None => runtime_dir.join("bangerd.sock"),
        };
        let sock_len = socket.as_os_str().len();
        if sock_len > SUN_PATH_MAX {
            return Err(invalid(
                "socket",
                Source::File,
                socket.display().to_string(),
                format!(
                    "a unix socket path is limited to {SUN_PATH_MAX} bytes and this one has {sock_len}; choose a shorter runtime_dir or socket"
                ),
            ));
        }

        let log_level = match pick("BANGER_LOG_LEVEL", file.log_level) {
            Some((v, src)) => {
                let lower = v.to_ascii_lowercase();
                if !["error", "warn", "info", "debug", "trace"].contains(&lower.as_str()) {
                    return Err(invalid(
                        "log_level",
                        src,
                        v,
                        "use one of error, warn, info, debug, trace".into(),
                    ));
                }
                lower
            }
            None => "info".into(),
        };

        let bin = |key: &'static str, var: &str, f: Option<PathBuf>, default: &str| {
            non_empty_path(key, pick(var, path_of(f)), default)
        };
        let vmm = VmmPaths {
            firecracker: bin(
                "vmm.firecracker",
                "BANGER_FIRECRACKER_BIN",
                file.vmm.firecracker,
                "firecracker",
            )?,
            jailer: bin("vmm.jailer", "BANGER_JAILER_BIN", file.vmm.jailer, "jailer")?,
            qemu: bin(
                "vmm.qemu",
                "BANGER_QEMU_BIN",
                file.vmm.qemu,
                "qemu-system-x86_64",
            )?,
            vsock_backend: bin(
                "vmm.vsock_backend",
                "BANGER_VSOCK_BACKEND_BIN",
                file.vmm.vsock_backend,
                "vhost-device-vsock",
            )?,
        };

        let ifname = |key: &'static str, picked: Option<(String, Source)>| match picked {
            Some((v, src)) => {
                if v.is_empty()
                    || v.len() > IFNAME_MAX
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
                {
                    return Err(invalid(
                        key,
                        src,
                        v,
                        format!(
                            "an interface name is 1-{IFNAME_MAX} characters of a-z, A-Z, 0-9, '-', '_' or '.'"
                        ),
                    ));
                }
                Ok(Some(v))
            }
            None => Ok(None),
        };
        let bridge = ifname("network.bridge", pick("BANGER_BRIDGE", file.network.bridge))?
            .unwrap_or_else(|| "banger0".into());
        let uplink = ifname("network.uplink", pick("BANGER_UPLINK", file.network.uplink))?;
        let (bridge_ip, prefix_len) = match pick("BANGER_BRIDGE_CIDR", file.network.bridge_cidr) {
            Some((v, src)) => parse_cidr(&v).ok_or_else(|| {
                invalid(
                    "network.bridge_cidr",
                    src,
                    v.clone(),
                    "write the bridge address with its prefix, e.g. 172.16.0.1/24 (prefix 8-30)"
                        .into(),
                )
            })?,
            None => (Ipv4Addr::new(172, 16, 0, 1), 24),
        };

        let vcpus = match pick(
            "BANGER_DEFAULT_VCPUS",
            file.defaults.vcpus.map(|v| v.to_string()),
        ) {
            Some((v, src)) => bounded_int("defaults.vcpus", src, v, 1, 64)?,
            None => 2,
        };
        let memory_mib = match pick(
            "BANGER_DEFAULT_MEMORY_MIB",
            file.defaults.memory_mib.map(|v| v.to_string()),
        ) {
            Some((v, src)) => bounded_int("defaults.memory_mib", src, v, 128, 1 << 20)?,
            None => 1024,
        };
        let size =
            |key: &'static str, var: &str, f: Option<String>, default: u64| match pick(var, f) {
                Some((v, src)) => parse_size(&v)
                    .map_err(|e| invalid(key, src, v.clone(), e.to_string()))
                    .and_then(|b| {
                        if b < (64 << 20) {
                            Err(invalid(key, Source::File, v, "must be at least 64M".into()))
                        } else {
                            Ok(b)
                        }
                    }),
                None => Ok(default),
            };
        let defaults = VmDefaults {
            vcpus,
            memory_mib,
            root_disk_bytes: size(
                "defaults.root_disk",
                "BANGER_DEFAULT_ROOT_DISK",
                file.defaults.root_disk,
                8 << 30,
            )?,
            work_disk_bytes: size(
                "defaults.work_disk",
                "BANGER_DEFAULT_WORK_DISK",
                file.defaults.work_disk,
                8 << 30,
            )?,
        };

        let text = |var: &str, f: Option<String>, default: &str| {
            pick(var, f).map_or_else(|| default.to_owned(), |(v, _)| v)
        };
        let auto_provision = match pick(
            "BANGER_AUTO_PROVISION",
            file.assets.auto_provision.map(|b| b.to_string()),
        ) {
            Some((v, src)) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    return Err(invalid(
                        "assets.auto_provision",
                        src,
                        v,
                        "use true or false".into(),
                    ));
                }
            },
            None => true,
        };
        let assets = AssetConfig {
            debian_mirror: text(
                "BANGER_DEBIAN_MIRROR",
                file.assets.debian_mirror,
                "http://deb.debian.org/debian",
            ),
            debian_suite: text("BANGER_DEBIAN_SUITE", file.assets.debian_suite, "bookworm"),
            kernel_package: text(
                "BANGER_KERNEL_PACKAGE",
                file.assets.kernel_package,
                "linux-image-cloud-amd64",
            ),
            auto_provision,
        };
        let guest = GuestConfig {
            init: bin(
                "guest.init",
                "BANGER_GUEST_INIT",
                file.guest.init,
                "/usr/local/lib/banger/banger-init",
            )?,
            agent: bin(
                "guest.agent",
                "BANGER_GUEST_AGENT",
                file.guest.agent,
                "/usr/local/lib/banger/banger-agent",
            )?,
            ready_timeout_secs: match pick(
                "BANGER_READY_TIMEOUT_SECS",
                file.guest.ready_timeout_secs.map(|v| v.to_string()),
            ) {
                Some((v, src)) => Some(bounded_int("guest.ready_timeout_secs", src, v, 1, 3600)?),
                None => None,
            },
        };
        let tools = ToolPaths {
            apt_get: bin(
                "tools.apt_get",
                "BANGER_APT_GET_BIN",
                file.tools.apt_get,
                "apt-get",
            )?,
            debootstrap: bin(
                "tools.debootstrap",
                "BANGER_DEBOOTSTRAP_BIN",
                file.tools.debootstrap,
                "debootstrap",
            )?,
            mkfs_ext4: bin(
                "tools.mkfs_ext4",
                "BANGER_MKFS_EXT4_BIN",
                file.tools.mkfs_ext4,
                "mkfs.ext4",
            )?,
            ssh: bin("tools.ssh", "BANGER_SSH_BIN", file.tools.ssh, "ssh")?,
            ssh_keygen: bin(
                "tools.ssh_keygen",
                "BANGER_SSH_KEYGEN_BIN",
                file.tools.ssh_keygen,
                "ssh-keygen",
            )?,
        };

        let jailer = JailerConfig {
            enabled: match pick("BANGER_JAILER", file.jailer.enabled.map(|v| v.to_string())) {
                Some((v, src)) => match v.as_str() {
                    "true" | "1" | "on" => true,
                    "false" | "0" | "off" => false,
                    _ => {
                        return Err(invalid(
                            "jailer.enabled",
                            src,
                            v,
                            "use true or false".into(),
                        ));
                    }
                },
                None => true,
            },
            user: text("BANGER_JAILER_USER", file.jailer.user, "banger-vmm"),
            chroot_base: match pick(
                "BANGER_JAILER_CHROOT_BASE",
                path_of(file.jailer.chroot_base),
            ) {
                Some((v, _)) => PathBuf::from(v),
                None => state_dir.join("jail"),
            },
            pids_max: match pick(
                "BANGER_JAILER_PIDS_MAX",
                file.jailer.pids_max.map(|v| v.to_string()),
            ) {
                Some((v, src)) => bounded_int("jailer.pids_max", src, v, 16, 1 << 22)?,
                None => 1024,
            },
        };

        let limits = LimitsConfig {
            concurrent_boots: match pick(
                "BANGER_CONCURRENT_BOOTS",
                file.limits.concurrent_boots.map(|v| v.to_string()),
            ) {
                Some((v, src)) => Some(bounded_int("limits.concurrent_boots", src, v, 0, 4096)?),
                None => None,
            },
        };

        let helper_socket = pick(
            "BANGER_HELPER_SOCKET",
            path_of(file.privileges.helper_socket),
        )
        .filter(|(v, _)| !v.is_empty())
        .map(|(v, _)| PathBuf::from(v));

        Ok(Self {
            helper_socket,
            jailer,
            limits,
            assets,
            guest,
            tools,
            state_dir,
            runtime_dir,
            socket,
            log_level,
            vmm,
            network: NetworkConfig {
                bridge,
                bridge_ip,
                prefix_len,
                uplink,
            },
            defaults,
        })
    }

    /// The daemon's SQLite database.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("banger.db")
    }

    /// The daemon's own log (tracing output).
    pub fn log_path(&self) -> PathBuf {
        self.state_dir.join("bangerd.log")
    }

    /// Where a detached daemon's stderr goes: panics and failures that
    /// happen before logging is set up.
    pub fn stderr_log_path(&self) -> PathBuf {
        self.state_dir.join("bangerd.stderr.log")
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

/// Where a value came from, so an error can name the variable or key.
enum Source {
    Env(String),
    File,
}

fn invalid(key: &'static str, src: Source, value: String, message: String) -> ConfigError {
    match src {
        Source::Env(var) => ConfigError::Env {
            var,
            value,
            message,
        },
        Source::File => ConfigError::Invalid {
            key,
            value,
            message,
        },
    }
}

fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

fn abs_path(
    key: &'static str,
    value: Option<(String, Source)>,
    default: &str,
) -> Result<PathBuf, ConfigError> {
    match value {
        Some((v, src)) => {
            let p = PathBuf::from(&v);
            if p.is_absolute() {
                Ok(p)
            } else {
                Err(invalid(key, src, v, "must be an absolute path".into()))
            }
        }
        None => Ok(PathBuf::from(default)),
    }
}

fn non_empty_path(
    key: &'static str,
    value: Option<(String, Source)>,
    default: &str,
) -> Result<PathBuf, ConfigError> {
    match value {
        Some((v, src)) if v.trim().is_empty() => {
            Err(invalid(key, src, v, "must name a binary or a path".into()))
        }
        Some((v, _)) => Ok(PathBuf::from(v)),
        None => Ok(PathBuf::from(default)),
    }
}

fn bounded_int(
    key: &'static str,
    src: Source,
    v: String,
    min: u32,
    max: u32,
) -> Result<u32, ConfigError> {
    match v.trim().parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(
            key,
            src,
            v,
            format!("must be a whole number from {min} to {max}"),
        )),
    }
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = s.trim().split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    (8..=30).contains(&prefix).then_some((addr, prefix))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn write_config(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("config.toml");
        std::fs::write(&p, text).expect("write config");
        p
    }

    #[test]
    fn defaults_when_no_file_and_no_env() {
        let cfg = Config::resolve(FileConfig::default(), &|_| None).expect("defaults");
        assert_eq!(cfg.state_dir, PathBuf::from("/var/lib/banger"));
        assert_eq!(cfg.socket, PathBuf::from("/run/banger/bangerd.sock"));
        assert_eq!(cfg.network.bridge, "banger0");
        assert_eq!(cfg.network.bridge_ip, Ipv4Addr::new(172, 16, 0, 1));
        assert_eq!(cfg.network.prefix_len, 24);
        assert_eq!(cfg.vmm.qemu, PathBuf::from("qemu-system-x86_64"));
    }

    #[test]
    fn unknown_key_is_an_error_that_names_it() {
        let err = Config::from_toml("state_dri = \"/x\"\n").expect_err("typo");
        let msg = err.to_string();
        assert!(msg.contains("state_dri"), "{msg}");
        let err = Config::from_toml("[vmm]\nfirecraker = \"/x\"\n").expect_err("typo");
        assert!(err.to_string().contains("firecraker"), "{err}");
    }

    #[test]
    fn file_values_apply_and_env_wins_over_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(
            dir.path(),
            "state_dir = \"/srv/banger\"\nruntime_dir = \"/run/b\"\n[network]\nbridge = \"br-test\"\n[defaults]\nroot_disk = \"2G\"\n",
        );
        let p = path.to_string_lossy().into_owned();
        let cfg = Config::load_with(env(&[(CONFIG_ENV, &p), ("BANGER_RUNTIME_DIR", "/tmp/rt")]))
            .expect("load");
        assert_eq!(cfg.state_dir, PathBuf::from("/srv/banger"));
        assert_eq!(cfg.runtime_dir, PathBuf::from("/tmp/rt"));
        assert_eq!(cfg.socket, PathBuf::from("/tmp/rt/bangerd.sock"));
        assert_eq!(cfg.network.bridge, "br-test");
        assert_eq!(cfg.defaults.root_disk_bytes, 2 << 30);
    }

    #[test]
    fn concurrent_boots_is_unset_by_default_and_bounded() {
        let cfg = Config::resolve(FileConfig::default(), &|_| None).expect("defaults");
        assert_eq!(cfg.limits.concurrent_boots, None, "picked from the host");
        let cfg = Config::from_toml("[limits]\nconcurrent_boots = 3\n").expect("file");
        assert_eq!(cfg.limits.concurrent_boots, Some(3));
        let cfg = Config::from_toml("[limits]\nconcurrent_boots = 0\n").expect("unlimited");
        assert_eq!(cfg.limits.concurrent_boots, Some(0));
        let cfg = Config::load_with(env(&[
            (CONFIG_ENV, "/dev/null"),
            ("BANGER_CONCURRENT_BOOTS", "5"),
        ]))
        .expect("env");
        assert_eq!(cfg.limits.concurrent_boots, Some(5));
        let err = Config::from_toml("[limits]\nconcurrent_boots = 100000\n").expect_err("bound");
        assert!(err.to_string().contains("limits.concurrent_boots"), "{err}");
    }

    #[test]
    fn explicit_missing_file_is_an_error_default_missing_is_not() {
        let err = Config::load_with(env(&[(CONFIG_ENV, "/nonexistent/banger.toml")]))
            .expect_err("explicit file must exist");
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/banger.toml"));
    }

    #[test]
    fn invalid_values_name_their_source() {
        let err = Config::load_with(env(&[
            (CONFIG_ENV, "/dev/null"),
            ("BANGER_STATE_DIR", "relative/dir"),
        ]))
        .expect_err("relative");
        assert!(
            matches!(&err, ConfigError::Env { var, .. } if var == "BANGER_STATE_DIR"),
            "{err}"
        );

        let err = Config::from_toml("log_level = \"loud\"").expect_err("level");
        assert!(
            matches!(
                &err,
                ConfigError::Invalid {
                    key: "log_level",
                    ..
                }
            ),
            "{err}"
        );

        let err = Config::from_toml("[network]\nbridge_cidr = \"172.16.0.1\"").expect_err("cidr");
        assert!(err.to_string().contains("network.bridge_cidr"), "{err}");

        let err = Config::from_toml("[network]\nbridge = \"a-very-long-bridge-name\"")
            .expect_err("ifname");
        assert!(err.to_string().contains("network.bridge"), "{err}");

        let err = Config::from_toml("[defaults]\nwork_disk = \"lots\"").expect_err("size");
        assert!(err.to_string().contains("defaults.work_disk"), "{err}");

        let err = Config::from_toml("[defaults]\nvcpus = 0").expect_err("vcpus");
        assert!(err.to_string().contains("defaults.vcpus"), "{err}");

        let err = Config::from_toml("[assets]\nauto_provision = \"maybe\"").expect_err("bool");
        assert!(err.to_string().contains("auto_provision"), "{err}");
        let err = Config::load_with(env(&[
            (CONFIG_ENV, "/dev/null"),
            ("BANGER_AUTO_PROVISION", "perhaps"),
        ]))
        .expect_err("bool env");
        assert!(err.to_string().contains("BANGER_AUTO_PROVISION"), "{err}");

        let err = Config::from_toml("state_dir = 5").expect_err("type");
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn socket_path_must_fit_sun_path() {
        let long = format!("/{}", "r".repeat(120));
        let err = Config::load_with(env(&[
            (CONFIG_ENV, "/dev/null"),
            ("BANGER_RUNTIME_DIR", &long),
        ]))
        .expect_err("too long");
        assert!(err.to_string().contains("107 bytes"), "{err}");
    }
}
