//! The daemon process: set-up, serve, shut down.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_api::defaults::EXIT_ALREADY_RUNNING;
use banger_config::Config;
use banger_core::agent::GuestAgent;
use banger_core::{Core, HostDeps};
use banger_host::SystemProbe;
use banger_host::disk::HostDisks;
use banger_host::dns::DnsServer;
use banger_host::firewall::Nft;
use banger_host::helper::{HelperClient, HelperServer, Policy};
use banger_host::jail::{
    CgroupVersion, Confinement, Jail, JailConfig, JailOps, LocalJail, ensure_chroot_base,
    resolve_user,
};
use banger_host::layout::VmLayout;
use banger_host::net::Netlink;
use banger_store::{Store, StoreError};
use banger_vmm::QemuVmm;
use banger_vmm::firecracker::FirecrackerVmm;
use banger_vmm::qemu::{QemuCommand, host_tsc_khz};
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::lock::{InstanceLock, LockError};
use crate::{api, logging};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    HelperFiles(#[from] crate::helper_files::HelperFilesError),
    #[error("creating {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening log file {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("listening on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("serving the API: {0}")]
    Serve(#[source] std::io::Error),
}

impl DaemonError {
    /// The process exit status for this error: `banger` retries a start
    /// refused by the instance lock (the code says so; the text is for
    /// people), and treats any other failure as final.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Lock(LockError::AlreadyRunning { .. }) => EXIT_ALREADY_RUNNING,
            _ => 1,
        }
    }
}

/// How the process was started.
#[derive(Debug, Clone, Copy)]
pub struct DaemonOptions {
    /// Also log to stderr (foreground). A detached daemon's stderr is a
    /// file that only needs panics and pre-logging failures.
    pub log_to_stderr: bool,
}

/// `bangerd --helper --for-uid UID`: the privileged side. Serves network
/// and firewall requests from the daemon running as `uid` (and root) on
/// `config.helper_socket`, owned by that uid, mode 0600.
pub async fn run_helper(config: Config, daemon_uid: u32) -> Result<(), DaemonError> {
    // Every connection costs a descriptor: as many as the host allows, so
    // a flood of them meets the idle timeout before the limit.
    raise_nofile();
    let socket = config
        .helper_socket
        .clone()
        .unwrap_or_else(|| config.runtime_dir.join("helper.sock"));
    let dir = socket.parent().unwrap_or(Path::new("/")).to_owned();
    std::fs::create_dir_all(&dir).map_err(|source| DaemonError::Dir {
        path: dir.clone(),
        source,
    })?;
    let own = &config.helper_dir;
    crate::helper_files::ensure_helper_dir(own)?;
    let log_path = own.join("banger-helper.log");
    let _log = crate::logging::init(&log_path, &config.log_level, true).map_err(|source| {
        DaemonError::Log {
            path: log_path.clone(),
            source,
        }
    })?;
    let listener = crate::helper_files::bind_socket(&socket, daemon_uid)?;
    let jail = helper_jail(&config, daemon_uid);
    let server = Arc::new(HelperServer {
        policy: Policy {
            bridge: config.network.bridge.clone(),
            bridge_ip: config.network.bridge_ip,
            prefix_len: config.network.prefix_len,
            layout: VmLayout::new(&config.state_dir, &config.runtime_dir),
            daemon_uid,
            daemon_gid: primary_gid(daemon_uid),
            uplink: config.network.uplink.clone(),
        },
        net: Arc::new(Netlink),
        firewall: Arc::new(Nft::new(
            "nft",
            own.join("nat-forwarding"),
            guard_policy(&config.network),
        )),
        jail,
    });
    tracing::info!(socket = %socket.display(), daemon_uid, "banger-helper listening");
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    tokio::select! {
        r = server.serve(listener) => r.map_err(|source| DaemonError::Listen {
            path: socket.clone(),
            source,
        })?,
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn jail_settings(config: &Config, uid: u32, gid: u32) -> JailConfig {
    let cgroup_root = PathBuf::from("/sys/fs/cgroup");
    JailConfig {
        jailer: config.vmm.jailer.clone(),
        chroot_base: config.jailer.chroot_base.clone(),
        uid,
        gid,
        cgroup_version: CgroupVersion::detect(&cgroup_root),
        cgroups: vec![format!("pids.max={}", config.jailer.pids_max)],
        cgroup_root,
    }
}

/// The helper jails for the daemon's uid, confined to its state dir; the
/// jailer, firecracker and chroot base are the helper's configuration.
fn helper_jail(config: &Config, daemon_uid: u32) -> Option<Arc<dyn JailOps>> {
    if !config.jailer.enabled || daemon_uid == 0 {
        tracing::info!("not jailing: jailer disabled, or a root daemon jails by itself");
        return None;
    }
    let gid = primary_gid(daemon_uid);
    let base = &config.jailer.chroot_base;
    if let Err(e) = ensure_chroot_base(base) {
        // Refused again at every stage, with the same words.
        tracing::error!(error = %e, "firecracker jails cannot be staged until this is fixed");
    }
    Some(Arc::new(LocalJail {
        config: jail_settings(config, daemon_uid, gid),
        firecracker: config.vmm.firecracker.clone(),
        confine: Some(Confinement {
            state_dir: config.state_dir.clone(),
            owner: daemon_uid,
        }),
    }))
}

/// The jail Firecracker VMs run in: `Some(None)` when jailing is off by
/// configuration, `None` when it is on but cannot work: then this daemon
/// offers no Firecracker at all.
///
/// A root daemon jails by itself, as `jailer.user`. An unprivileged one
/// asks banger-helper, and its VMMs run as its own uid: it must reach
/// their sockets and signal them, and the dedicated user it runs as is
/// already nobody else's.
fn jail_config(config: &Config, helper: Option<&Arc<HelperClient>>) -> Option<Option<Jail>> {
    if !config.jailer.enabled {
        tracing::warn!("jailer disabled by configuration: firecracker runs as bangerd's user");
        return Some(None);
    }
    let euid = nix::unistd::geteuid().as_raw();
    if euid != 0 {
        let Some(helper) = helper else {
            tracing::error!(
                "bangerd is not root and has no privilege helper: firecracker VMs are refused (README: least privilege)"
            );
            return None;
        };
        let egid = nix::unistd::getegid().as_raw();
        return Some(Some(Jail {
            config: jail_settings(config, euid, egid),
            ops: Arc::clone(helper) as Arc<dyn JailOps>,
        }));
    }
    match resolve_user(&config.jailer.user) {
        Ok((uid, gid)) => {
            let settings = jail_settings(config, uid, gid);
            Some(Some(Jail {
                config: settings.clone(),
                ops: Arc::new(LocalJail {
                    config: settings,
                    firecracker: config.vmm.firecracker.clone(),
                    confine: None,
                }),
            }))
        }
        Err(e) => {
            tracing::error!(error = %e, "jailer unavailable: firecracker VMs are refused until it is");
            None
        }
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<(), DaemonError> {
    let err = |source| DaemonError::Dir {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)
}

/// How long a stopping daemon waits for its operations in flight.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs the daemon until SIGTERM, SIGINT or an API shutdown request.
/// Running VMs are not touched on the way out: they belong to the host,
/// and the next daemon adopts them.
pub async fn run(config: Config, opts: DaemonOptions) -> Result<(), DaemonError> {
    mkdir(&config.state_dir, 0o700)?;
    mkdir(&config.runtime_dir, 0o755)?;
    // Per-VM sockets (control, vsock, vhost-user, jail symlinks): owner only.
    mkdir(&config.runtime_dir.join("vms"), 0o700)?;
    if let Some(parent) = config.socket.parent() {
        std::fs::create_dir_all(parent).map_err(|source| DaemonError::Dir {
            path: parent.to_owned(),
            source,
        })?;
    }
    let lock = InstanceLock::acquire(&config.lock_path())?;
    #[cfg(feature = "failpoints")]
    let failpoint = banger_core::failpoints::arm_from_env();
    let _log = logging::init(&config.log_path(), &config.log_level, opts.log_to_stderr).map_err(
        |source| DaemonError::Log {
            path: config.log_path(),
            source,
        },
    )?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pid = std::process::id(),
        state_dir = %config.state_dir.display(),
        socket = %config.socket.display(),
        lock = %lock.path().display(),
        "bangerd starting"
    );
    #[cfg(feature = "failpoints")]
    if let Some(point) = &failpoint {
        tracing::warn!(point = %point, "failpoint armed: this daemon aborts there (crash matrix)");
    }

    let store = Arc::new(Store::open(&config.db_path())?);
    let socket = config.socket.clone();
    // With a privilege helper, every network and firewall change is a
    // request to it; bangerd itself then needs no root for QEMU VMs.
    let helper = config.helper_socket.as_ref().map(|sock| {
        tracing::info!(socket = %sock.display(), "network changes go through banger-helper");
        Arc::new(HelperClient {
            socket: sock.clone(),
        })
    });
    let (net, firewall): (
        Arc<dyn banger_host::net::NetOps>,
        Arc<dyn banger_host::firewall::Firewall>,
    ) = match &helper {
        Some(c) => (c.clone(), c.clone()),
        None => (
            Arc::new(Netlink),
            Arc::new(Nft::new(
                "nft",
                config.runtime_dir.join("nat-forwarding"),
                guard_policy(&config.network),
            )),
        ),
    };
    let deps = HostDeps {
        procs: Arc::new(banger_host::procs::ProcFs),
        probe: Arc::new(SystemProbe),
        net,
        dns: Arc::new(DnsServer::new()),
        disks: Arc::new(HostDisks {
            sandbox: banger_host::sandbox::ToolSandbox::find(&config.tools.bwrap),
            ..HostDisks::with_defaults(config.tools.mkfs_ext4.clone(), config.tmp_dir())
        }),
        qemu: Arc::new(QemuVmm {
            command: QemuCommand {
                bin: config.vmm.qemu.clone(),
                tsc_khz: host_tsc_khz(),
            },
            vsock_backend: config.vmm.vsock_backend.clone(),
        }),
        // Jailed, or unjailed only when the configuration says so: never
        // silently as bangerd's own user in the host's root filesystem.
        firecracker: jail_config(&config, helper.as_ref()).map(|jail| {
            Arc::new(FirecrackerVmm {
                bin: config.vmm.firecracker.clone(),
                jail,
            }) as Arc<dyn banger_vmm::Vmm>
        }),
        agent: Arc::new(GuestAgent::default()),
        firewall,
    };
    let core = Arc::new(Core::new(config, store, deps));
    match core.refresh_host().await {
        Ok(report) => tracing::info!(
            default_vmm = ?report.default_vmm,
            storage = ?report.storage,
            "host capabilities probed"
        ),
        Err(e) => tracing::warn!(error = %e, "host probe failed"),
    }
    // Before serving: adopt what survived the last daemon, clean the rest.
    if let Err(e) = core.reconcile().await {
        tracing::error!(error = %e, "reconcile failed; continuing");
    }
    // Guests write their consoles; the keeper bounds them.
    tokio::spawn(core.clone().keep_consoles());

    // We hold the instance lock, so a socket file here is a dead daemon's.
    match std::fs::remove_file(&socket) {
        Ok(()) => tracing::info!(socket = %socket.display(), "removed stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(DaemonError::Listen {
                path: socket,
                source,
            });
        }
    }
    let listener = UnixListener::bind(&socket).map_err(|source| DaemonError::Listen {
        path: socket.clone(),
        source,
    })?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).map_err(
        |source| DaemonError::Listen {
            path: socket.clone(),
            source,
        },
    )?;

    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut api_stop = core.shutdown_requested();
    let stopping = Arc::clone(&core);
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = api_stop.wait_for(|v| *v) => {}
        }
        stopping.begin_shutdown();
    };
    tracing::info!("listening");
    let app = api::router(Arc::clone(&core));
    let served = crate::listen::serve(listener, app, core.config().limits, shutdown).await;
    let _ = std::fs::remove_file(&socket);
    // Operations in flight finish (a create, a snapshot) before the lock
    // goes: a next daemon's sweep must not meet this one's work.
    if !core.operations_done(STOP_WAIT).await {
        tracing::warn!(
            secs = STOP_WAIT.as_secs(),
            "operations still running at exit; the next daemon recovers their vms"
        );
    }
    tracing::info!("bangerd stopped; running vms were left running");
    served.map_err(DaemonError::Serve)
}

/// The soft descriptor limit raised to the hard one (logged if refused).
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "raising the descriptor limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "reading the descriptor limit"),
    }
}

/// The primary group of `uid` (its own number when it has no passwd
/// entry, as for the jail's files).
fn primary_gid(uid: u32) -> u32 {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or(uid, |u| u.gid.as_raw())
}

/// The guard's host-wide switches, from the config.
fn guard_policy(net: &banger_config::NetworkConfig) -> banger_host::firewall::GuardPolicy {
    banger_host::firewall::GuardPolicy {
        vm_to_vm: net.vm_to_vm,
        guest_ipv6: net.guest_ipv6,
    }
}
