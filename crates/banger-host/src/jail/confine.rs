//! Acting for an unprivileged daemon: every file is opened beneath its
//! state dir without following symlinks and must be the daemon's; the
//! chroot base must be a directory only root can change.

use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use super::{JailError, io_err};

/// Acting for a daemon that is not root: what its requests may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// Every file staged or written lies beneath it.
    pub state_dir: PathBuf,
    /// ... and belongs to this uid (the daemon's).
    pub owner: u32,
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

pub(super) fn beneath<'a>(base: &Path, path: &'a Path) -> Result<&'a Path, JailError> {
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
    pub(super) fn open(
        &self,
        path: &Path,
        flags: OFlag,
        create: bool,
    ) -> Result<OwnedFd, JailError> {
        let rel = beneath(&self.state_dir, path)?;
        let base = nix::fcntl::open(
            &self.state_dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| io_err(&self.state_dir, e))?;
        // Non-blocking until the file is known regular: a FIFO opened
        // for writing would otherwise wait for a reader, and the helper
        // with it.
        let path_only = flags.contains(OFlag::O_PATH);
        // (openat2 takes no other flag beside O_PATH.)
        let nonblock = if path_only {
            OFlag::empty()
        } else {
            OFlag::O_NONBLOCK
        };
        let mut how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | nonblock)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        if create {
            how = how.mode(Mode::from_bits_truncate(0o640));
        }
        let fd = nix::fcntl::openat2(&base, rel, how).map_err(|e| match e {
            // O_WRONLY | O_NONBLOCK on a FIFO without a reader.
            nix::errno::Errno::ENXIO => {
                JailError::Refused(format!("{} is not a regular file", path.display()))
            }
            e => JailError::Beneath {
                path: path.to_owned(),
                source: e.into(),
            },
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
        if !path_only {
            let fl = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)
                .map_err(|e| io_err(path, e))?;
            let blocking = OFlag::from_bits_truncate(fl) & !OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(blocking))
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
