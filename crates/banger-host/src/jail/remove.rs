//! Removing a jail tree as root, by descriptor. The jail's uid can write
//! inside the tree (its `run` dir is chowned to it), so a walk by path
//! could meet a directory swapped for a symlink between its check and its
//! use and delete outside the jail (the `remove_dir_all` race,
//! CVE-2022-21658). Here every directory is opened with `O_NOFOLLOW |
//! O_DIRECTORY` relative to the one above it, every entry is examined
//! with `fstatat(AT_SYMLINK_NOFOLLOW)` and removed with `unlinkat` in the
//! directory it was found in: a swap makes the open fail and the link
//! itself is what goes. A directory on another device (a mount inside
//! the chroot) is refused, not entered.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::{JailError, io_err};

fn open_dir_at<Fd: AsFd>(dir: Fd, name: &CStr) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Removes a jail tree without ever leaving it: symlinks are removed,
/// never followed, and a directory on another device is refused. Missing
/// is fine.
pub fn remove_tree(dir: &Path) -> Result<(), JailError> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(JailError::Refused(format!(
            "{} is not a jail directory",
            dir.display()
        )));
    };
    let name = CString::new(name.as_encoded_bytes()).map_err(|e| io_err(dir, e))?;
    let up = nix::fcntl::open(
        parent,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    );
    let up = match up {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(io_err(parent, e)),
    };
    remove_entry(&up, &name, dir, None)
}

/// Removes `name` in the directory `up` (at `path`, for errors): a
/// directory's contents first, on device `dev` only.
fn remove_entry(up: &OwnedFd, name: &CStr, path: &Path, dev: Option<u64>) -> Result<(), JailError> {
    let st = match fstatat(up, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(io_err(path, e)),
    };
    let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    if !is_dir {
        return unlink(up, name, path, UnlinkatFlags::NoRemoveDir);
    }
    let fd = match open_dir_at(up, name) {
        Ok(fd) => fd,
        // Swapped for a link or a file since the stat: that goes instead.
        Err(Errno::ELOOP | Errno::ENOTDIR) => {
            return unlink(up, name, path, UnlinkatFlags::NoRemoveDir);
        }
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(io_err(path, e)),
    };
    // The device of what was opened, not of what was stat'ed.
    let here = fstat(&fd).map_err(|e| io_err(path, e))?.st_dev;
    if dev.is_some_and(|d| d != here) {
        return Err(JailError::MountInside {
            path: path.to_owned(),
        });
    }
    let names: Vec<CString> = {
        let dup = fd.try_clone().map_err(|e| io_err(path, e))?;
        let mut listing = nix::dir::Dir::from_fd(dup).map_err(|e| io_err(path, e))?;
        listing
            .iter()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect()
    };
    for n in names {
        let child = path.join(std::ffi::OsStr::from_bytes(n.to_bytes()));
        remove_entry(&fd, &n, &child, Some(here))?;
    }
    unlink(up, name, path, UnlinkatFlags::RemoveDir)
}

fn unlink(up: &OwnedFd, name: &CStr, path: &Path, how: UnlinkatFlags) -> Result<(), JailError> {
    match unlinkat(up, name, how) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(io_err(path, e)),
    }
}
