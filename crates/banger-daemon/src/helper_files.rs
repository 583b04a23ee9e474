//! The root helper's own files. An unprivileged daemon owns its runtime
//! dir, so anything root opens there by path can be swapped for a symlink
//! between a check and a use. The helper's log and NAT forwarding marker
//! live in a directory only root can change (`privileges.helper_dir`),
//! and its socket, which must sit where the daemon can reach it, is made
//! 0600 as it is bound (umask) and handed over without following links.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use banger_host::jail::{PathOwner, untrusted_ancestor};
use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum HelperFilesError {
    #[error(
        "helper dir {path}: {why}; it must be a directory only root can change (privileges.helper_dir, default /run/banger-helper)"
    )]
    Untrusted { path: PathBuf, why: String },
    #[error("helper dir {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("helper socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn untrusted(dir: &Path) -> Option<String> {
    untrusted_ancestor(dir, 0, |p| PathOwner::of(p).ok())
}

/// Makes `dir` (0700, root's) if missing, under a parent only root can
/// change, and requires the whole path to be root's.
pub fn ensure_helper_dir(dir: &Path) -> Result<(), HelperFilesError> {
    let refuse = |why| HelperFilesError::Untrusted {
        path: dir.to_owned(),
        why,
    };
    if std::fs::symlink_metadata(dir).is_err() {
        if let Some(why) = dir.parent().and_then(untrusted) {
            return Err(refuse(why));
        }
        match std::fs::create_dir(dir) {
            Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|source| HelperFilesError::Dir {
                    path: dir.to_owned(),
                    source,
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(HelperFilesError::Dir {
                    path: dir.to_owned(),
                    source,
                });
            }
        }
    }
    match untrusted(dir) {
        Some(why) => Err(refuse(why)),
        None => Ok(()),
    }
}

/// Binds the helper's socket 0600 from the start, then gives it to
/// `uid` with `AT_SYMLINK_NOFOLLOW`: a link put in its place is what
/// changes owner, never its target.
pub fn bind_socket(socket: &Path, uid: u32) -> Result<UnixListener, HelperFilesError> {
    let err = |source| HelperFilesError::Socket {
        path: socket.to_owned(),
        source,
    };
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(socket);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(err)?;
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        socket,
        Some(nix::unistd::Uid::from_raw(uid)),
        None,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| err(e.into()))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_dir_anyone_else_can_change_or_a_symlink_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED helper dir test: the trust check is root's");
            return;
        }
        let d = tempfile::tempdir().expect("tmp");
        let made = d.path().join("helper");
        ensure_helper_dir(&made).expect("made");
        let mode = std::fs::metadata(&made).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        ensure_helper_dir(&made).expect("again");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&made, &link).expect("symlink");
        let err = ensure_helper_dir(&link).expect_err("a symlink");
        assert!(err.to_string().contains("not a directory"), "{err}");
        let theirs = d.path().join("theirs");
        std::fs::create_dir(&theirs).expect("dir");
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
        let err = ensure_helper_dir(&theirs).expect_err("someone else's");
        assert!(err.to_string().contains("uid 65534"), "{err}");
        // Never made inside someone else's directory.
        let err = ensure_helper_dir(&theirs.join("helper")).expect_err("under theirs");
        assert!(err.to_string().contains("uid 65534"), "{err}");
        assert!(!theirs.join("helper").exists());
    }

    #[tokio::test]
    async fn the_socket_is_0600_from_its_bind_and_handed_over() {
        let d = tempfile::tempdir().expect("tmp");
        let sock = d.path().join("helper.sock");
        let me = nix::unistd::geteuid().as_raw();
        let _l = bind_socket(&sock, me).expect("bind");
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(&sock).expect("stat");
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert_eq!(m.uid(), me);
    }
}
