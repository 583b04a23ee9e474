//! Which init an imported image has: where its `/sbin/init` leads,
//! resolved inside the image (a tree or an ext4 file) as the guest's
//! kernel would, never out of it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::future::Future;
use std::path::{Component, Path, PathBuf};

use banger_api::asset::ImageInit;
use banger_host::disk::GuestNode;

use crate::error::CoreError;

use super::io_err;

/// Symlinks followed before giving up (Linux's own limit is 40; a real
/// init is one or two links away).
const MAX_LINKS: usize = 16;

/// The path the kernel runs as init (banger-init hands PID 1 to it).
const INIT: &str = "/sbin/init";

/// The image's init: systemd when `/sbin/init` resolves to a regular file
/// named `systemd`; anything else (missing, busybox, sysvinit, a loop, a
/// dangling link) cannot take over PID 1 from banger-init, so banger-init
/// stays.
pub(super) async fn detect_init<E, F, Fut>(node: F) -> Result<(ImageInit, Option<PathBuf>), E>
where
    F: FnMut(PathBuf) -> Fut,
    Fut: Future<Output = Result<GuestNode, E>>,
{
    let target = resolve(Path::new(INIT), node).await?;
    let init = match target.as_deref().and_then(Path::file_name) {
        Some(n) if n == "systemd" => ImageInit::Systemd,
        _ => ImageInit::Banger,
    };
    Ok((init, target))
}

enum Step {
    Up,
    Name(OsString),
}

fn steps(path: &Path) -> impl DoubleEndedIterator<Item = Step> + '_ {
    path.components().filter_map(|c| match c {
        Component::ParentDir => Some(Step::Up),
        Component::Normal(n) => Some(Step::Name(n.to_owned())),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

/// The regular file `path` names inside an image, as an absolute path in
/// it, or `None` when it names none. `node` says what one absolute path
/// is, without following a final symlink; it is only asked about paths
/// whose parents are real directories. An absolute link target starts
/// again at the image's root, and `..` stops there, so no link leads out.
pub(super) async fn resolve<E, F, Fut>(path: &Path, mut node: F) -> Result<Option<PathBuf>, E>
where
    F: FnMut(PathBuf) -> Fut,
    Fut: Future<Output = Result<GuestNode, E>>,
{
    // `at` holds only real directories, so `..` is its physical parent.
    let mut at = PathBuf::from("/");
    let mut todo: VecDeque<Step> = steps(path).collect();
    let mut links = 0;
    while let Some(step) = todo.pop_front() {
        let name = match step {
            Step::Up => {
                at.pop();
                continue;
            }
            Step::Name(n) => n,
        };
        let here = at.join(name);
        match node(here.clone()).await? {
            GuestNode::Dir => at = here,
            GuestNode::File if todo.is_empty() => return Ok(Some(here)),
            GuestNode::File | GuestNode::Missing | GuestNode::Other => return Ok(None),
            GuestNode::Symlink(target) => {
                links += 1;
                // An empty target names nothing (ENOENT), not the link's dir.
                if links > MAX_LINKS || target.as_os_str().is_empty() {
                    return Ok(None);
                }
                if target.is_absolute() {
                    at = PathBuf::from("/");
                }
                for s in steps(&target).rev() {
                    todo.push_front(s);
                }
            }
        }
    }
    // Ended on a directory.
    Ok(None)
}

/// What `guest_path` names inside the directory tree `root` (blocking).
pub(super) fn tree_node(root: &Path, guest_path: &Path) -> Result<GuestNode, CoreError> {
    let host = root.join(guest_path.strip_prefix("/").unwrap_or(guest_path));
    let meta = match std::fs::symlink_metadata(&host) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(GuestNode::Missing),
        Err(e) => return Err(io_err("reading", &host)(e)),
    };
    let ty = meta.file_type();
    Ok(if ty.is_symlink() {
        GuestNode::Symlink(std::fs::read_link(&host).map_err(io_err("reading", &host))?)
    } else if ty.is_dir() {
        GuestNode::Dir
    } else if ty.is_file() {
        GuestNode::File
    } else {
        GuestNode::Other
    })
}

#[cfg(test)]
mod tests;
