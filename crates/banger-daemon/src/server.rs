//! The daemon process: set-up, serve, shut down.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_config::Config;
use banger_core::agent::VsockAgent;
use banger_core::{Core, HostDeps};
use banger_host::SystemProbe;
use banger_host::disk::HostDisks;
use banger_host::dns::DnsServer;
use banger_host::firewall::Nft;
use banger_host::helper::{HelperClient, HelperServer, Policy};
use banger_host::net::Netlink;
use banger_store::{Store, StoreError};
use banger_vmm::QemuVmm;
use banger_vmm::firecracker::FirecrackerVmm;
use banger_vmm::jail::{CgroupVersion, JailConfig, resolve_user};
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
    let socket = config
        .helper_socket
        .clone()
        .unwrap_or_else(|| config.runtime_dir.join("helper.sock"));
    let dir = socket.parent().unwrap_or(Path::new("/")).to_owned();
    std::fs::create_dir_all(&dir).map_err(|source| DaemonError::Dir {
        path: dir.clone(),
        source,
    })?;
    let log_path = dir.join("banger-helper.log");
    let _log = crate::logging::init(&log_path, &config.log_level, true).map_err(|source| {
        DaemonError::Log {
            path: log_path.clone(),
            source,
        }
    })?;
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|source| DaemonError::Listen {
        path: socket.clone(),
        source,
    })?;
    let listen_err = |source| DaemonError::Listen {
        path: socket.clone(),
        source,
    };
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(listen_err)?;
    nix::unistd::chown(&socket, Some(nix::unistd::Uid::from_raw(daemon_uid)), None)
        .map_err(|e| listen_err(std::io::Error::from(e)))?;
    let server = Arc::new(HelperServer {
        policy: Policy {
            bridge: config.network.bridge.clone(),
            bridge_ip: config.network.bridge_ip,
            prefix_len: config.network.prefix_len,
            state_dir: config.state_dir.clone(),
            daemon_uid,
        },
        net: Arc::new(Netlink),
        firewall: Arc::new(Nft {
            bin: "nft".into(),
            forwarding_marker: config.runtime_dir.join("nat-forwarding"),
        }),
    });
    tracing::info!(socket = %socket.display(), daemon_uid, "banger-helper listening");
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    tokio::select! {
        r = server.serve(listener) => r.map_err(listen_err)?,
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// The jail Firecracker VMs run in: `Some(None)` when jailing is off by
/// configuration, `None` when it is on but cannot work (no such user):
/// then this daemon offers no Firecracker at all.
fn jail_config(config: &banger_config::Config) -> Option<Option<JailConfig>> {
    if !config.jailer.enabled {
        tracing::warn!("jailer disabled by configuration: firecracker runs as bangerd's user");
        return Some(None);
    }
    match resolve_user(&config.jailer.user) {
        Ok((uid, gid)) => {
            let cgroup_root = std::path::PathBuf::from("/sys/fs/cgroup");
            Some(Some(JailConfig {
                jailer: config.vmm.jailer.clone(),
                chroot_base: config.jailer.chroot_base.clone(),
                uid,
                gid,
                cgroup_version: CgroupVersion::detect(&cgroup_root),
                cgroups: vec![format!("pids.max={}", config.jailer.pids_max)],
                cgroup_root,
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

    let store = Arc::new(Store::open(&config.db_path())?);
    let socket = config.socket.clone();
    // With a privilege helper, every network and firewall change is a
    // request to it; bangerd itself then needs no root for QEMU VMs.
    let (net, firewall): (
        Arc<dyn banger_host::net::NetOps>,
        Arc<dyn banger_host::firewall::Firewall>,
    ) = match &config.helper_socket {
        Some(sock) => {
            tracing::info!(socket = %sock.display(), "network changes go through banger-helper");
            let c = Arc::new(HelperClient {
                socket: sock.clone(),
            });
            (c.clone(), c)
        }
        None => (
            Arc::new(Netlink),
            Arc::new(Nft {
                bin: "nft".into(),
                forwarding_marker: config.runtime_dir.join("nat-forwarding"),
            }),
        ),
    };
    let deps = HostDeps {
        probe: Arc::new(SystemProbe),
        net,
        dns: Arc::new(DnsServer::new()),
        disks: Arc::new(HostDisks::with_defaults(
            config.tools.mkfs_ext4.clone(),
            config.tmp_dir(),
        )),
        qemu: Arc::new(QemuVmm {
            command: QemuCommand {
                bin: config.vmm.qemu.clone(),
                tsc_khz: host_tsc_khz(),
            },
            vsock_backend: config.vmm.vsock_backend.clone(),
        }),
        // Jailed, or unjailed only when the configuration says so: never
        // silently as bangerd's own user in the host's root filesystem.
        firecracker: jail_config(&config).map(|jail| {
            Arc::new(FirecrackerVmm {
                bin: config.vmm.firecracker.clone(),
                jail,
            }) as Arc<dyn banger_vmm::Vmm>
        }),
        agent: Arc::new(VsockAgent),
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
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = api_stop.wait_for(|v| *v) => {}
        }
    };
    tracing::info!("listening");
    let app = api::router(Arc::clone(&core)).into_make_service_with_connect_info::<api::Peer>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("bangerd stopped; running vms were left running");
    served.map_err(DaemonError::Serve)
}
