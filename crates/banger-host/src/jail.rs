//! Firecracker under its jailer: a per-VM chroot, a dedicated uid/gid,
//! its own cgroup.
//!
//! Staging the chroot, spawning the jailer and removing the jail are the
//! privileged parts; they go through [`JailOps`]. [`LocalJail`] does them
//! in this process (a root `bangerd`, or `banger-helper` on behalf of an
//! unprivileged one), [`FakeJail`] records them for unit tests, and the
//! helper's client forwards them over its socket.
//!
//! Staging: kernel, initrd and the VM's disks are hard-linked in (the
//! chroot base is on the state dir's filesystem, so nothing is copied;
//! disks are chowned to the jail's uid, the kernel stays world-readable),
//! log and metrics files are created for the uid. The jailer then copies
//! the static firecracker binary in, makes `/dev/kvm`, `/dev/net/tun` and
//! friends, joins the cgroup, `pivot_root`s and drops to the uid. Sockets
//! live inside the chroot; the daemon reaches them through short symlinks
//! in its runtime dir (`sun_path` is 108 bytes, chroot paths are long).
//!
//! Acting for an unprivileged daemon ([`Confinement`]), every file is
//! opened beneath the state dir with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` and must belong to the daemon's uid, and the
//! chroot base must be a directory only root can change: the daemon owns
//! its state dir and could otherwise swap a path for a symlink between a
//! check and a root `link`/`chown`.
//!
//! A jailed process's `/proc/<pid>/root` reads `/` and its command line
//! names chroot-relative paths, so the jail root is recorded by the daemon
//! and the process is identified by `--id <vm id>` in its command line.

use std::ffi::OsString;
use std::fmt::Debug;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

/// Why a jail operation failed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("refused: {0}")]
    Refused(String),
    #[error("starting {bin}: {message}")]
    Spawn { bin: PathBuf, message: String },
    #[error("via banger-helper: {0}")]
    Helper(#[source] crate::remote::HelperError),
    #[error("a blocking jail task: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Which cgroup hierarchy the jailer places the VM in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    /// v2 when the unified hierarchy is mounted at `/sys/fs/cgroup` with
    /// the controllers the jailer sets; v1 (or hybrid) otherwise.
    pub fn detect(root: &Path) -> Self {
        match std::fs::read_to_string(root.join("cgroup.controllers")) {
            Ok(c) if c.split_whitespace().any(|x| x == "pids") => Self::V2,
            _ => Self::V1,
        }
    }
}

/// How VMs are jailed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    pub jailer: PathBuf,
    /// The jailer's `--chroot-base-dir`; on the state dir's filesystem.
    pub chroot_base: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_version: CgroupVersion,
    /// `<file>=<value>` settings, e.g. `pids.max=1024`.
    pub cgroups: Vec<String>,
    /// Where cgroup hierarchies are mounted (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
}

/// Paths as the jailed Firecracker sees them (relative to its root).
pub const KERNEL: &str = "/vmlinux";
pub const INITRD: &str = "/initrd";
pub const API_SOCKET: &str = "/run/api.sock";
pub const VSOCK: &str = "/v.sock";
pub const LOG: &str = "/firecracker.log";
pub const METRICS: &str = "/firecracker.metrics";
/// The parent cgroup the jailer uses by default: named after the binary.
const PARENT_CGROUP: &str = "firecracker";

pub fn drive(i: usize) -> String {
    format!("/drive{i}")
}

/// A VM id as banger makes them: 16 lowercase hex digits. The jailer's
/// `--id`, a path component of the jail and cgroups: nothing else passes.
pub fn check_vm_id(id: &str) -> Result<(), JailError> {
    if id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(JailError::Refused(format!(
            "{id:?} is not a banger vm id (16 lowercase hex digits)"
        )))
    }
}

impl JailConfig {
    /// `<base>/firecracker/<id>`: how the jailer names a jail (the exec
    /// file's name, then the id).
    pub fn jail_dir(&self, vm_id: &str) -> PathBuf {
        self.chroot_base.join("firecracker").join(vm_id)
    }

    /// The chroot itself.
    pub fn root(&self, vm_id: &str) -> PathBuf {
        self.jail_dir(vm_id).join("root")
    }

    /// A path the jailed process names, on the host.
    pub fn host_path(&self, vm_id: &str, inner: &str) -> PathBuf {
        self.root(vm_id).join(inner.trim_start_matches('/'))
    }

    /// The jailer's argument list; Firecracker's own follow `--`.
    pub fn args(&self, firecracker: &Path, vm_id: &str) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--id".into(),
            vm_id.into(),
            "--exec-file".into(),
            firecracker.into(),
            "--uid".into(),
            self.uid.to_string().into(),
            "--gid".into(),
            self.gid.to_string().into(),
            "--chroot-base-dir".into(),
            self.chroot_base.clone().into(),
            "--cgroup-version".into(),
            match self.cgroup_version {
                CgroupVersion::V1 => "1",
                CgroupVersion::V2 => "2",
            }
            .into(),
        ];
        for c in &self.cgroups {
            a.push("--cgroup".into());
            a.push(c.into());
        }
        // No --new-pid-ns: the VMM would be PID 1 of its namespace, ignore
        // SIGTERM, and its pid here would be the jailer's, not its own.
        // No --daemonize: stdio carries the serial console to our log.
        a.extend(["--".into(), "--api-sock".into(), API_SOCKET.into()]);
        a
    }

    /// The cgroup directories the jailer made for `vm_id`.
    pub fn cgroup_dirs(&self, vm_id: &str) -> Vec<PathBuf> {
        match self.cgroup_version {
            CgroupVersion::V2 => vec![self.cgroup_root.join(PARENT_CGROUP).join(vm_id)],
            CgroupVersion::V1 => std::fs::read_dir(&self.cgroup_root)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join(PARENT_CGROUP).join(vm_id))
                .filter(|p| p.is_dir())
                .collect(),
        }
    }
}

/// What a VM's chroot is staged with: host paths, in the VM's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailStage {
    pub vm_id: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// `/drive0`, `/drive1`, ... inside the jail.
    pub disks: Vec<PathBuf>,
}

/// The privileged half of jailing.
#[async_trait]
pub trait JailOps: Send + Sync + Debug {
    /// Builds the chroot for `stage.vm_id` afresh; returns the jail dir.
    async fn stage(&self, stage: &JailStage) -> Result<PathBuf, JailError>;
    /// Runs the jailer for `vm_id`, its stdout and stderr appended to
    /// `console`, in a process group of its own (it outlives its
    /// starter); returns the pid, which becomes Firecracker's at `exec`.
    async fn spawn(&self, vm_id: &str, console: &Path) -> Result<u32, JailError>;
    /// Removes the jail (`jail_dir`, as recorded at launch, or where the
    /// configuration puts it) and its cgroups, once the process is gone.
    async fn release(&self, vm_id: &str, jail_dir: Option<&Path>) -> Result<(), JailError>;
}

/// Acting for a daemon that is not root: what its requests may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// Every file staged or written lies beneath it.
    pub state_dir: PathBuf,
    /// ... and belongs to this uid (the daemon's).
    pub owner: u32,
}

/// Jails VMs from this process (which must be root).
#[derive(Debug, Clone)]
pub struct LocalJail {
    pub config: JailConfig,
    pub firecracker: PathBuf,
    pub confine: Option<Confinement>,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> JailError {
    JailError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// `uid:gid`, or a user name looked up in the host's user database.
pub fn resolve_user(user: &str) -> Result<(u32, u32), String> {
    if let Some((u, g)) = user.split_once(':') {
        if let (Ok(u), Ok(g)) = (u.parse(), g.parse()) {
            return Ok((u, g));
        }
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) if u.uid.is_root() => Err(format!(
            "jailer user {user:?} is root; VMMs must run unprivileged"
        )),
        Ok(Some(u)) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        Ok(None) => Err(format!(
            "no user {user:?} for the jailer: create it (scripts/setup.sh does: useradd --system banger-vmm) or set jailer.user"
        )),
        Err(e) => Err(format!("looking up jailer user {user:?}: {e}")),
    }
}

/// `path` relative to `base`, if it lies lexically beneath it: absolute,
/// no `.`/`..` anywhere, not `base` itself. (Symlinks are a matter for
/// opening.)
pub fn lexically_beneath<'a>(base: &Path, path: &'a Path) -> Option<&'a Path> {
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    match path.strip_prefix(base) {
        Ok(rel) if plain && !rel.as_os_str().is_empty() => Some(rel),
        _ => None,
    }
}

fn beneath<'a>(base: &Path, path: &'a Path) -> Result<&'a Path, JailError> {
    lexically_beneath(base, path).ok_or_else(|| {
        JailError::Refused(format!(
            "{} is outside the state dir {}",
            path.display(),
            base.display()
        ))
    })
}

impl Confinement {
    /// Opens `path` (lexically beneath the state dir) without following
    /// any symlink or leaving the state dir, as a regular file of the
    /// daemon's.
    fn open(&self, path: &Path, flags: OFlag, create: bool) -> Result<OwnedFd, JailError> {
        let rel = beneath(&self.state_dir, path)?;
        let base = nix::fcntl::open(
            &self.state_dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| io_err(&self.state_dir, e))?;
        let mut how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        if create {
            how = how.mode(Mode::from_bits_truncate(0o640));
        }
        let fd = nix::fcntl::openat2(&base, rel, how).map_err(|e| {
            io_err(
                path,
                format!("{e} (opened beneath the state dir, symlinks refused)"),
            )
        })?;
        let st = nix::sys::stat::fstat(&fd).map_err(|e| io_err(path, e))?;
        match st.st_mode & nix::libc::S_IFMT {
            nix::libc::S_IFREG => {}
            // O_PATH | O_NOFOLLOW opens a final symlink itself.
            nix::libc::S_IFLNK => {
                return Err(JailError::Refused(format!(
                    "{} is a symlink (symlinks refused)",
                    path.display()
                )));
            }
            _ => {
                return Err(JailError::Refused(format!(
                    "{} is not a regular file",
                    path.display()
                )));
            }
        }
        if st.st_uid != self.owner {
            // A file the helper itself just created is root's: the
            // daemon's from now on.
            let fresh = create && st.st_uid == 0 && st.st_size == 0;
            if !fresh {
                return Err(JailError::Refused(format!(
                    "{} belongs to uid {}, not the daemon's uid {}",
                    path.display(),
                    st.st_uid,
                    self.owner
                )));
            }
            nix::unistd::fchown(&fd, Some(nix::unistd::Uid::from_raw(self.owner)), None)
                .map_err(|e| io_err(path, e))?;
        }
        Ok(fd)
    }
}

/// What [`untrusted_ancestor`] needs to know of a path (not following a
/// final symlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathOwner {
    pub uid: u32,
    /// Permission bits, sticky bit included.
    pub mode: u32,
    pub is_dir: bool,
}

impl PathOwner {
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(Self {
            uid: meta.uid(),
            mode: meta.permissions().mode() & 0o7777,
            is_dir: meta.is_dir(),
        })
    }
}

/// Why `dir` is not a place only `trusted` can change, if it is not:
/// every directory from `/` down to it must be a real directory (not a
/// symlink) owned by `trusted` and not writable by others, unless sticky
/// (like `/tmp`). A missing component is reported too.
pub fn untrusted_ancestor(
    dir: &Path,
    trusted: u32,
    stat: impl Fn(&Path) -> Option<PathOwner>,
) -> Option<String> {
    let mut p = PathBuf::new();
    for c in dir.components() {
        match c {
            Component::RootDir | Component::Normal(_) => p.push(c),
            _ => return Some(format!("{} is not a plain absolute path", dir.display())),
        }
        let Some(o) = stat(&p) else {
            return Some(format!("{} does not exist", p.display()));
        };
        let safe = o.is_dir && o.uid == trusted && (o.mode & 0o022 == 0 || o.mode & 0o1000 != 0);
        if !safe {
            return Some(format!(
                "{} is {} by uid {} (mode {:o})",
                p.display(),
                if o.is_dir {
                    "a directory owned"
                } else {
                    "not a directory: owned"
                },
                o.uid,
                o.mode
            ));
        }
    }
    None
}

/// Refuses a chroot base that someone other than this process's user
/// (root, in the helper) could change; see [`untrusted_ancestor`].
pub fn check_trusted_dir(dir: &Path) -> Result<(), JailError> {
    let me = nix::unistd::geteuid().as_raw();
    match untrusted_ancestor(dir, me, |p| PathOwner::of(p).ok()) {
        None => Ok(()),
        Some(why) => Err(JailError::Refused(format!(
            "chroot base {}: {why}; jails must live where only root can change them, e.g. /var/lib/banger/jail beside a state dir of /var/lib/banger/state (jailer.chroot_base)",
            dir.display()
        ))),
    }
}

/// Makes the chroot base if it is missing (only under a trusted parent:
/// root must not create directories through someone else's symlink),
/// then requires it trusted.
pub fn ensure_chroot_base(dir: &Path) -> Result<(), JailError> {
    if std::fs::symlink_metadata(dir).is_err() {
        if let Some(parent) = dir.parent() {
            check_trusted_dir(parent)?;
        }
        match std::fs::create_dir(dir) {
            Ok(()) => {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| io_err(dir, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(dir, e)),
        }
    }
    check_trusted_dir(dir)
}

/// Hard-links the open file `src` (any path, already opened safely) to
/// `dst`, replacing `dst`.
fn link_fd(src: &OwnedFd, what: &Path, dst: &Path) -> Result<(), JailError> {
    let _ = std::fs::remove_file(dst);
    // linkat(AT_EMPTY_PATH) would need CAP_DAC_READ_SEARCH; the magic
    // link works for any owner of the descriptor.
    let proc = PathBuf::from(format!("/proc/self/fd/{}", src.as_raw_fd()));
    nix::unistd::linkat(
        nix::fcntl::AT_FDCWD,
        &proc,
        nix::fcntl::AT_FDCWD,
        dst,
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    )
    .map_err(|e| {
        if e == nix::errno::Errno::EXDEV {
            io_err(
                dst,
                format!(
                    "cannot hard-link {}: the jail's chroot base must be on the same filesystem as the state dir",
                    what.display()
                ),
            )
        } else {
            io_err(dst, format!("linking {}: {e}", what.display()))
        }
    })
}

impl LocalJail {
    fn open_source(&self, path: &Path) -> Result<OwnedFd, JailError> {
        match &self.confine {
            Some(c) => c.open(path, OFlag::O_PATH, false),
            None => nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| io_err(path, e)),
        }
    }

    fn stage_now(&self, s: &JailStage) -> Result<PathBuf, JailError> {
        check_vm_id(&s.vm_id)?;
        let cfg = &self.config;
        if let Some(c) = &self.confine {
            for d in &s.disks {
                // A VM's disks are its own: never another VM's or an image.
                beneath(&crate::layout::vms_dir_in(&c.state_dir).join(&s.vm_id), d)?;
            }
            ensure_chroot_base(&cfg.chroot_base)?;
        }
        // Every source is open before anything is written.
        let kernel = self.open_source(&s.kernel)?;
        let initrd = s
            .initrd
            .as_deref()
            .map(|i| self.open_source(i))
            .transpose()?;
        let disks = s
            .disks
            .iter()
            .map(|d| self.open_source(d))
            .collect::<Result<Vec<_>, _>>()?;

        let dir = cfg.jail_dir(&s.vm_id);
        // Whatever an interrupted start left: the jail is rebuilt each time.
        remove_tree(&dir)?;
        let root = cfg.root(&s.vm_id);
        std::fs::create_dir_all(root.join("run")).map_err(|e| io_err(&root, e))?;
        let owner = Some(nix::unistd::Uid::from_raw(cfg.uid));
        let group = Some(nix::unistd::Gid::from_raw(cfg.gid));
        let chown = |p: &Path| nix::unistd::chown(p, owner, group).map_err(|e| io_err(p, e));
        chown(&root.join("run"))?;
        link_fd(&kernel, &s.kernel, &cfg.host_path(&s.vm_id, KERNEL))?;
        if let (Some(fd), Some(path)) = (&initrd, &s.initrd) {
            link_fd(fd, path, &cfg.host_path(&s.vm_id, INITRD))?;
        }
        for (i, (fd, path)) in disks.iter().zip(&s.disks).enumerate() {
            let inner = cfg.host_path(&s.vm_id, &drive(i));
            link_fd(fd, path, &inner)?;
            // The same inode as the VM's disk: the jail's uid may write it.
            chown(&inner)?;
        }
        for f in [LOG, METRICS] {
            let p = cfg.host_path(&s.vm_id, f);
            std::fs::write(&p, b"").map_err(|e| io_err(&p, e))?;
            chown(&p)?;
        }
        Ok(dir)
    }

    fn open_console(&self, vm_id: &str, console: &Path) -> Result<std::fs::File, JailError> {
        match &self.confine {
            Some(c) => {
                let own = c.state_dir.join("vms").join(vm_id).join("console.log");
                if console != own {
                    return Err(JailError::Refused(format!(
                        "console {} is not vm {vm_id}'s ({})",
                        console.display(),
                        own.display()
                    )));
                }
                c.open(
                    console,
                    OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT,
                    true,
                )
                .map(std::fs::File::from)
            }
            None => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(console)
                .map_err(|e| io_err(console, e)),
        }
    }
}

#[async_trait]
impl JailOps for LocalJail {
    async fn stage(&self, stage: &JailStage) -> Result<PathBuf, JailError> {
        let me = self.clone();
        let s = stage.clone();
        tokio::task::spawn_blocking(move || me.stage_now(&s))
            .await
            .map_err(JailError::Task)?
    }

    async fn spawn(&self, vm_id: &str, console: &Path) -> Result<u32, JailError> {
        check_vm_id(vm_id)?;
        let err = |message: String| JailError::Spawn {
            bin: self.config.jailer.clone(),
            message,
        };
        if !self.config.root(vm_id).is_dir() {
            return Err(JailError::Refused(format!(
                "vm {vm_id} has no staged jail to start"
            )));
        }
        let out = self.open_console(vm_id, console)?;
        let mut cmd = tokio::process::Command::new(&self.config.jailer);
        cmd.args(self.config.args(&self.firecracker, vm_id));
        let mut child = crate::tools::spawn_detached(cmd, out).map_err(|e| err(e.to_string()))?;
        let pid = child.id().ok_or_else(|| err("exited at once".into()))?;
        // Reaped while we live; after that it is init's child.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(pid)
    }

    async fn release(&self, vm_id: &str, jail_dir: Option<&Path>) -> Result<(), JailError> {
        check_vm_id(vm_id)?;
        let own = self.config.jail_dir(vm_id);
        let dir = match jail_dir {
            Some(d) if d != own && self.confine.is_some() => {
                return Err(JailError::Refused(format!(
                    "{} is not vm {vm_id}'s jail ({})",
                    d.display(),
                    own.display()
                )));
            }
            Some(d) => d.to_owned(),
            None => own,
        };
        let tree = {
            let d = dir.clone();
            tokio::task::spawn_blocking(move || remove_tree(&d))
                .await
                .map_err(JailError::Task)?
        };
        // A cgroup stays busy until its last task is reaped, which may lag
        // the kill by a moment.
        let mut cgroups = remove_cgroups(&self.config, vm_id);
        for _ in 0..40 {
            if cgroups.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            cgroups = remove_cgroups(&self.config, vm_id);
        }
        tree.and(cgroups)
    }
}

/// One recorded [`JailOps`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JailCall {
    Stage(JailStage),
    Spawn { vm_id: String, console: PathBuf },
    Release { vm_id: String },
}

/// Records calls and pretends: spawn answers with `pid`.
#[derive(Debug, Default)]
pub struct FakeJail {
    pub pid: u32,
    calls: Mutex<Vec<JailCall>>,
}

impl FakeJail {
    pub fn with_pid(pid: u32) -> Self {
        Self {
            pid,
            ..Self::default()
        }
    }

    pub fn recorded(&self) -> Vec<JailCall> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn push(&self, c: JailCall) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(c);
        }
    }
}

#[async_trait]
impl JailOps for FakeJail {
    async fn stage(&self, stage: &JailStage) -> Result<PathBuf, JailError> {
        self.push(JailCall::Stage(stage.clone()));
        Ok(PathBuf::from("/fake/jail").join(&stage.vm_id))
    }

    async fn spawn(&self, vm_id: &str, console: &Path) -> Result<u32, JailError> {
        self.push(JailCall::Spawn {
            vm_id: vm_id.into(),
            console: console.into(),
        });
        Ok(self.pid)
    }

    async fn release(&self, vm_id: &str, _jail_dir: Option<&Path>) -> Result<(), JailError> {
        self.push(JailCall::Release {
            vm_id: vm_id.into(),
        });
        Ok(())
    }
}

/// A jail as a VMM driver uses it: where things are, and who does it.
#[derive(Debug, Clone)]
pub struct Jail {
    pub config: JailConfig,
    pub ops: Arc<dyn JailOps>,
}

/// Removes a jail tree without ever leaving its filesystem: a directory
/// on another device (a mount inside the chroot) is refused, not entered,
/// and symlinks are removed, never followed. Missing is fine.
pub fn remove_tree(dir: &Path) -> Result<(), JailError> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(dir, e)),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(dir).map_err(|e| io_err(dir, e));
    }
    remove_dir_on(dir, meta.dev())
}

fn remove_dir_on(dir: &Path, dev: u64) -> Result<(), JailError> {
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| io_err(&path, e))?;
        if meta.is_dir() {
            if meta.dev() != dev {
                return Err(io_err(
                    &path,
                    "a mount inside the jail; refusing to delete through it (unmount it first)",
                ));
            }
            remove_dir_on(&path, dev)?;
        } else {
            std::fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
        }
    }
    std::fs::remove_dir(dir).map_err(|e| io_err(dir, e))
}

/// Removes the VM's cgroups (empty once its process is gone).
pub fn remove_cgroups(cfg: &JailConfig, vm_id: &str) -> Result<(), JailError> {
    let mut errors = Vec::new();
    for d in cfg.cgroup_dirs(vm_id) {
        if let Err(e) = std::fs::remove_dir(&d) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(format!("{}: {e}", d.display()));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(io_err(&cfg.cgroup_root, errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = "0123456789abcdef";

    fn cfg(base: &Path) -> JailConfig {
        JailConfig {
            jailer: "jailer".into(),
            chroot_base: base.into(),
            uid: 64123,
            gid: 64123,
            cgroup_version: CgroupVersion::V1,
            cgroups: vec!["pids.max=512".into()],
            cgroup_root: "/sys/fs/cgroup".into(),
        }
    }

    #[test]
    fn jailer_arguments_name_the_vm_uid_and_cgroups_and_no_pid_namespace() {
        let c = cfg(Path::new("/var/lib/banger/jail"));
        let args: Vec<String> = c
            .args(Path::new("/usr/local/bin/firecracker"), VM)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert_eq!(
            joined,
            "--id 0123456789abcdef --exec-file /usr/local/bin/firecracker --uid 64123 --gid 64123 \
             --chroot-base-dir /var/lib/banger/jail --cgroup-version 1 --cgroup pids.max=512 \
             -- --api-sock /run/api.sock"
        );
        assert!(!joined.contains("--new-pid-ns") && !joined.contains("--daemonize"));
        assert_eq!(
            c.host_path(VM, VSOCK),
            Path::new("/var/lib/banger/jail/firecracker/0123456789abcdef/root/v.sock")
        );
    }

    #[test]
    fn cgroup_v2_is_detected_by_its_controllers() {
        let d = tempfile::tempdir().expect("tmp");
        assert_eq!(CgroupVersion::detect(d.path()), CgroupVersion::V1);
        std::fs::write(
            d.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .expect("write");
        assert_eq!(CgroupVersion::detect(d.path()), CgroupVersion::V2);
    }

    fn me() -> (u32, u32) {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    }

    /// A state dir with one VM's disks and a kernel, and a jail config
    /// for our own uid (unprivileged runs cannot chown to another).
    fn fixture(d: &Path) -> (LocalJail, JailStage) {
        let vm = d.join("state/vms").join(VM);
        std::fs::create_dir_all(&vm).expect("vm dir");
        std::fs::create_dir_all(d.join("state/kernels")).expect("kernels");
        let kernel = d.join("state/kernels/vmlinux");
        std::fs::write(&kernel, b"k").expect("k");
        std::fs::write(vm.join("root.ext4"), b"d").expect("d");
        let mut c = cfg(&d.join("jail"));
        (c.uid, c.gid) = me();
        let jail = LocalJail {
            config: c,
            firecracker: "firecracker".into(),
            confine: None,
        };
        let stage = JailStage {
            vm_id: VM.into(),
            kernel,
            initrd: None,
            disks: vec![vm.join("root.ext4")],
        };
        (jail, stage)
    }

    #[test]
    fn staging_links_files_in_and_removal_takes_the_whole_jail() {
        let d = tempfile::tempdir().expect("tmp");
        let (jail, stage) = fixture(d.path());
        let dir = jail.stage_now(&stage).expect("stage");
        let c = &jail.config;
        assert_eq!(dir, d.path().join("jail/firecracker").join(VM));
        let root = c.root(VM);
        let inner = root.join("drive0");
        assert_eq!(
            std::fs::metadata(&inner).expect("drive").ino(),
            std::fs::metadata(&stage.disks[0]).expect("disk").ino(),
            "hard link, not a copy"
        );
        assert!(root.join("vmlinux").is_file() && root.join("firecracker.log").is_file());
        // A symlink out of the jail is removed, never followed.
        let outside = d.path().join("precious");
        std::fs::write(&outside, b"keep").expect("precious");
        std::os::unix::fs::symlink(&outside, root.join("escape")).expect("symlink");
        remove_tree(&dir).expect("remove");
        assert!(!dir.exists());
        assert_eq!(std::fs::read(&outside).expect("kept"), b"keep");
        assert_eq!(std::fs::read(&stage.disks[0]).expect("disk kept"), b"d");
        remove_tree(&dir).expect("idempotent");
    }

    fn refused(r: Result<PathBuf, JailError>, needle: &str) {
        match r {
            Err(e) => assert!(e.to_string().contains(needle), "{e}"),
            Ok(p) => panic!(
                "expected a refusal mentioning {needle:?}, got {}",
                p.display()
            ),
        }
    }

    #[test]
    fn confined_staging_refuses_paths_outside_the_state_dir_symlinks_and_other_owners() {
        let d = tempfile::tempdir().expect("tmp");
        let (mut jail, stage) = fixture(d.path());
        let state = d.path().join("state");
        jail.confine = Some(Confinement {
            state_dir: state.clone(),
            owner: me().0,
        });
        // The tempdir is ours; our own uid is trusted like root is.
        let ok = jail.stage_now(&stage).expect("inside the state dir");
        assert!(ok.join("root/drive0").is_file());

        let with = |f: &dyn Fn(&mut JailStage)| {
            let mut s = stage.clone();
            f(&mut s);
            jail.stage_now(&s)
        };
        refused(
            with(&|s| s.kernel = PathBuf::from("/etc/shadow")),
            "outside the state dir",
        );
        refused(
            with(&|s| s.kernel = state.join("kernels/../../../etc/shadow")),
            "outside the state dir",
        );
        refused(
            with(&|s| s.kernel = PathBuf::from("kernels/vmlinux")),
            "outside the state dir",
        );
        // A disk of another VM, or the image, is not this VM's.
        refused(
            with(&|s| s.disks = vec![state.join("kernels/vmlinux")]),
            "outside the state dir",
        );
        refused(
            with(&|s| s.vm_id = "../../etc".into()),
            "not a banger vm id",
        );
        // A symlink inside the state dir that points out of it.
        let link = state.join("vms").join(VM).join("evil.ext4");
        std::os::unix::fs::symlink("/etc/passwd", &link).expect("symlink");
        refused(with(&|s| s.disks = vec![link.clone()]), "symlinks refused");
        // A symlinked directory on the way.
        std::os::unix::fs::symlink("/etc", state.join("kernels/etc")).expect("dir link");
        refused(
            with(&|s| s.kernel = state.join("kernels/etc/passwd")),
            "symlinks refused",
        );
        // Not a regular file.
        refused(
            with(&|s| s.kernel = state.join("kernels")),
            "not a regular file",
        );
        // Refused requests changed nothing: the staged jail is intact.
        assert_eq!(
            std::fs::metadata(ok.join("root/drive0"))
                .expect("drive")
                .ino(),
            std::fs::metadata(&stage.disks[0]).expect("disk").ino()
        );
    }

    fn path_mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn a_chroot_base_others_can_change_is_refused() {
        let d = tempfile::tempdir().expect("tmp");
        let open = d.path().join("open");
        std::fs::create_dir(&open).expect("dir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = check_trusted_dir(&open.join("jail")).expect_err("world-writable parent");
        assert!(err.to_string().contains("only root can change"), "{err}");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(d.path(), &link).expect("symlink");
        let err = check_trusted_dir(&link).expect_err("symlink");
        assert!(err.to_string().contains("not a directory"), "{err}");
        check_trusted_dir(d.path()).expect("a dir of ours, under sticky /tmp");
        // Never created under an untrusted parent, not even empty.
        let err = ensure_chroot_base(&open.join("jail")).expect_err("untrusted parent");
        assert!(err.to_string().contains("only root can change"), "{err}");
        assert!(!open.join("jail").exists());
        ensure_chroot_base(&d.path().join("jail")).expect("made under a trusted parent");
        assert_eq!(path_mode(&d.path().join("jail")), 0o755);
    }

    #[test]
    fn release_of_another_jail_dir_is_refused_when_confined() {
        let d = tempfile::tempdir().expect("tmp");
        let (mut jail, _) = fixture(d.path());
        jail.confine = Some(Confinement {
            state_dir: d.path().join("state"),
            owner: me().0,
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let precious = d.path().join("state");
        let err = rt
            .block_on(jail.release(VM, Some(&precious)))
            .expect_err("someone else's dir");
        assert!(err.to_string().contains("is not vm"), "{err}");
        assert!(precious.exists());
    }
}
