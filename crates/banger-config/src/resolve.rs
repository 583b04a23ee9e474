//! From file and environment to a validated [`Config`], one function per
//! section. Sections resolve in a fixed order, so when several values are
//! bad the first reported is always the same one.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use banger_api::defaults::{
    DEFAULT_RUNTIME_DIR, DEFAULT_SSH_BIN, DEFAULT_STATE_DIR, RUNTIME_DIR_ENV, SOCKET_ENV,
    SOCKET_FILE, SSH_BIN_ENV, STATE_DIR_ENV, SUN_PATH_MAX,
};

use crate::env::Pick;
use crate::error::{ConfigError, Source, invalid};
use crate::file::{
    FileAssets, FileConfig, FileDefaults, FileGuest, FileJailer, FileLimits, FileNetwork,
    FileTools, FileVmm,
};
use crate::values::{
    LOOSE, STRICT, abs_path, binary, bounded_int, byte_size, disk_size, flag, ifname,
    opt_bounded_int, parse_cidr,
};
use crate::{
    AssetConfig, Config, GuestConfig, JailerConfig, LimitsConfig, NetworkConfig, ToolPaths,
    VmDefaults, VmmPaths,
};

const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

impl Config {
    pub(crate) fn resolve(
        file: FileConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let pick = Pick::new(env);
        let dirs = dirs(&pick, &file)?;
        let log_level = log_level(&pick, file.log_level)?;
        let vmm = vmm(&pick, file.vmm)?;
        let network = network(&pick, file.network)?;
        let defaults = defaults(&pick, file.defaults)?;
        let assets = assets(&pick, file.assets)?;
        let guest = guest(&pick, file.guest)?;
        let tools = tools(&pick, file.tools)?;
        let jailer = jailer(&pick, file.jailer, &dirs.state_dir)?;
        let limits = limits(&pick, file.limits)?;
        // An empty helper socket means "no helper", from either source.
        let helper_socket = pick
            .path("BANGER_HELPER_SOCKET", file.privileges.helper_socket)
            .filter(|v| !v.value.is_empty())
            .map(|v| PathBuf::from(v.value));
        let helper_dir = abs_path(
            "privileges.helper_dir",
            pick.path("BANGER_HELPER_DIR", file.privileges.helper_dir),
            "/run/banger-helper",
        )?;
        Ok(Self {
            state_dir: dirs.state_dir,
            runtime_dir: dirs.runtime_dir,
            socket: dirs.socket,
            log_level,
            vmm,
            network,
            defaults,
            assets,
            guest,
            tools,
            jailer,
            limits,
            helper_socket,
            helper_dir,
        })
    }
}

struct Dirs {
    state_dir: PathBuf,
    runtime_dir: PathBuf,
    socket: PathBuf,
}

fn dirs(pick: &Pick<'_>, file: &FileConfig) -> Result<Dirs, ConfigError> {
    let state_dir = abs_path(
        "state_dir",
        pick.path(STATE_DIR_ENV, file.state_dir.clone()),
        DEFAULT_STATE_DIR,
    )?;
    let runtime_dir = abs_path(
        "runtime_dir",
        pick.path(RUNTIME_DIR_ENV, file.runtime_dir.clone()),
        DEFAULT_RUNTIME_DIR,
    )?;
    let socket = match pick.path(SOCKET_ENV, file.socket.clone()) {
        Some(v) => abs_path("socket", Some(v), "")?,
        None => runtime_dir.join(SOCKET_FILE),
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
    Ok(Dirs {
        state_dir,
        runtime_dir,
        socket,
    })
}

fn log_level(pick: &Pick<'_>, from_file: Option<String>) -> Result<String, ConfigError> {
    let Some(v) = pick.text("BANGER_LOG_LEVEL", from_file) else {
        return Ok("info".into());
    };
    let lower = v.value.to_ascii_lowercase();
    if !LOG_LEVELS.contains(&lower.as_str()) {
        return Err(v.invalid(
            "log_level",
            "use one of error, warn, info, debug, trace".into(),
        ));
    }
    Ok(lower)
}

fn vmm(pick: &Pick<'_>, f: FileVmm) -> Result<VmmPaths, ConfigError> {
    Ok(VmmPaths {
        firecracker: binary(
            "vmm.firecracker",
            pick.path("BANGER_FIRECRACKER_BIN", f.firecracker),
            "firecracker",
        )?,
        jailer: binary(
            "vmm.jailer",
            pick.path("BANGER_JAILER_BIN", f.jailer),
            "jailer",
        )?,
        qemu: binary(
            "vmm.qemu",
            pick.path("BANGER_QEMU_BIN", f.qemu),
            "qemu-system-x86_64",
        )?,
        vsock_backend: binary(
            "vmm.vsock_backend",
            pick.path("BANGER_VSOCK_BACKEND_BIN", f.vsock_backend),
            "vhost-device-vsock",
        )?,
    })
}

fn network(pick: &Pick<'_>, f: FileNetwork) -> Result<NetworkConfig, ConfigError> {
    let bridge = ifname("network.bridge", pick.text("BANGER_BRIDGE", f.bridge))?
        .unwrap_or_else(|| "banger0".into());
    let uplink = ifname("network.uplink", pick.text("BANGER_UPLINK", f.uplink))?;
    let (bridge_ip, prefix_len) = match pick.text("BANGER_BRIDGE_CIDR", f.bridge_cidr) {
        Some(v) => match parse_cidr(&v.value) {
            Some(cidr) => cidr,
            None => {
                return Err(v.invalid(
                    "network.bridge_cidr",
                    "write the bridge address with its prefix, e.g. 172.16.0.1/24 (prefix 8-30)"
                        .into(),
                ));
            }
        },
        None => (Ipv4Addr::new(172, 16, 0, 1), 24),
    };
    Ok(NetworkConfig {
        bridge,
        bridge_ip,
        prefix_len,
        uplink,
        vm_to_vm: flag(
            "network.vm_to_vm",
            pick.shown("BANGER_VM_TO_VM", f.vm_to_vm),
            &LOOSE,
            false,
        )?,
        guest_ipv6: flag(
            "network.guest_ipv6",
            pick.shown("BANGER_GUEST_IPV6", f.guest_ipv6),
            &LOOSE,
            false,
        )?,
    })
}

fn defaults(pick: &Pick<'_>, f: FileDefaults) -> Result<VmDefaults, ConfigError> {
    let vcpus = match pick.shown("BANGER_DEFAULT_VCPUS", f.vcpus) {
        Some(v) => bounded_int("defaults.vcpus", v, 1, 64)?,
        None => 2,
    };
    let memory_mib = match pick.shown("BANGER_DEFAULT_MEMORY_MIB", f.memory_mib) {
        Some(v) => bounded_int("defaults.memory_mib", v, 128, 1 << 20)?,
        None => 1024,
    };
    Ok(VmDefaults {
        vcpus,
        memory_mib,
        root_disk_bytes: disk_size(
            "defaults.root_disk",
            pick.text("BANGER_DEFAULT_ROOT_DISK", f.root_disk),
            8 << 30,
        )?,
        work_disk_bytes: disk_size(
            "defaults.work_disk",
            pick.text("BANGER_DEFAULT_WORK_DISK", f.work_disk),
            8 << 30,
        )?,
        warm_start: flag(
            "defaults.warm_start",
            pick.shown("BANGER_WARM_START", f.warm_start),
            &LOOSE,
            true,
        )?,
    })
}

/// A free-text value, or `default` when neither source gives one.
fn text_or(pick: &Pick<'_>, var: &str, from_file: Option<String>, default: &str) -> String {
    pick.text(var, from_file)
        .map_or_else(|| default.to_owned(), |v| v.value)
}

fn assets(pick: &Pick<'_>, f: FileAssets) -> Result<AssetConfig, ConfigError> {
    let auto_provision = flag(
        "assets.auto_provision",
        pick.shown("BANGER_AUTO_PROVISION", f.auto_provision),
        &LOOSE,
        true,
    )?;
    Ok(AssetConfig {
        debian_mirror: text_or(
            pick,
            "BANGER_DEBIAN_MIRROR",
            f.debian_mirror,
            "http://deb.debian.org/debian",
        ),
        debian_suite: text_or(pick, "BANGER_DEBIAN_SUITE", f.debian_suite, "bookworm"),
        kernel_package: text_or(
            pick,
            "BANGER_KERNEL_PACKAGE",
            f.kernel_package,
            "linux-image-cloud-amd64",
        ),
        auto_provision,
    })
}

fn guest(pick: &Pick<'_>, f: FileGuest) -> Result<GuestConfig, ConfigError> {
    Ok(GuestConfig {
        init: binary(
            "guest.init",
            pick.path("BANGER_GUEST_INIT", f.init),
            "/usr/local/lib/banger/banger-init",
        )?,
        agent: binary(
            "guest.agent",
            pick.path("BANGER_GUEST_AGENT", f.agent),
            "/usr/local/lib/banger/banger-agent",
        )?,
        ready_timeout_secs: opt_bounded_int(
            "guest.ready_timeout_secs",
            pick.shown("BANGER_READY_TIMEOUT_SECS", f.ready_timeout_secs),
            1,
            3600,
        )?,
        console_max_bytes: byte_size(
            "guest.console_max",
            pick.text("BANGER_CONSOLE_MAX", f.console_max),
            8 << 20,
            64 << 10,
        )?,
    })
}

fn tools(pick: &Pick<'_>, f: FileTools) -> Result<ToolPaths, ConfigError> {
    Ok(ToolPaths {
        apt_get: binary(
            "tools.apt_get",
            pick.path("BANGER_APT_GET_BIN", f.apt_get),
            "apt-get",
        )?,
        debootstrap: binary(
            "tools.debootstrap",
            pick.path("BANGER_DEBOOTSTRAP_BIN", f.debootstrap),
            "debootstrap",
        )?,
        mkfs_ext4: binary(
            "tools.mkfs_ext4",
            pick.path("BANGER_MKFS_EXT4_BIN", f.mkfs_ext4),
            "mkfs.ext4",
        )?,
        ssh: binary("tools.ssh", pick.path(SSH_BIN_ENV, f.ssh), DEFAULT_SSH_BIN)?,
        ssh_keygen: binary(
            "tools.ssh_keygen",
            pick.path("BANGER_SSH_KEYGEN_BIN", f.ssh_keygen),
            "ssh-keygen",
        )?,
        bwrap: binary(
            "tools.bwrap",
            pick.path("BANGER_BWRAP_BIN", f.bwrap),
            "bwrap",
        )?,
    })
}

fn jailer(
    pick: &Pick<'_>,
    f: FileJailer,
    state_dir: &std::path::Path,
) -> Result<JailerConfig, ConfigError> {
    let enabled = flag(
        "jailer.enabled",
        pick.shown("BANGER_JAILER", f.enabled),
        &STRICT,
        true,
    )?;
    let user = text_or(pick, "BANGER_JAILER_USER", f.user, "banger-vmm");
    let chroot_base = match pick.path("BANGER_JAILER_CHROOT_BASE", f.chroot_base) {
        Some(v) => PathBuf::from(v.value),
        None => state_dir.join("jail"),
    };
    let pids_max = match pick.shown("BANGER_JAILER_PIDS_MAX", f.pids_max) {
        Some(v) => bounded_int("jailer.pids_max", v, 16, 1 << 22)?,
        None => 1024,
    };
    Ok(JailerConfig {
        enabled,
        user,
        chroot_base,
        pids_max,
    })
}

fn limits(pick: &Pick<'_>, f: FileLimits) -> Result<LimitsConfig, ConfigError> {
    Ok(LimitsConfig {
        concurrent_boots: opt_bounded_int(
            "limits.concurrent_boots",
            pick.shown("BANGER_CONCURRENT_BOOTS", f.concurrent_boots),
            0,
            4096,
        )?,
        api_connections: opt_bounded_int(
            "limits.api_connections",
            pick.shown("BANGER_API_CONNECTIONS", f.api_connections),
            1,
            65536,
        )?
        .unwrap_or(crate::DEFAULT_API_CONNECTIONS),
        api_header_timeout_secs: opt_bounded_int(
            "limits.api_header_timeout_secs",
            pick.shown("BANGER_API_HEADER_TIMEOUT_SECS", f.api_header_timeout_secs),
            1,
            3600,
        )?
        .unwrap_or(crate::DEFAULT_API_HEADER_TIMEOUT_SECS),
    })
}
