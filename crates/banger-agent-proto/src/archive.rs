//! `vm cp`'s tar streams, shared by the CLI (host side) and the agent
//! (guest side) so both ends agree on naming.
//!
//! An archive holds one top-level entry, named after the source's last
//! component. Unpacking follows `cp -r`/`docker cp`: into `dest` when it
//! is a directory, else *as* `dest` (the top-level entry renamed). Modes
//! and mtimes are kept; ownership is not (the unpacking user owns it all).
//!
//! The other end may be hostile (a guest's archive lands on the user's
//! host), so unpacking trusts no entry: paths that leave the destination
//! end the copy; hard links to anything but an entry of this same copy,
//! symlinks pointing out of the destination, and device nodes or FIFOs
//! are left out and reported; setuid, setgid, sticky and world-writable
//! bits are masked off.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: nothing to copy by that name")]
    NoName(PathBuf),
    #[error("{0}: the directory to copy into does not exist")]
    NoParent(PathBuf),
    #[error("refusing archive entry {0:?}: it would land outside the destination")]
    Unsafe(PathBuf),
    #[error("the archive is empty")]
    Empty,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `src` (file, symlink or directory tree) as a tar stream.
pub fn pack<W: Write>(src: &Path, w: W) -> Result<(), ArchiveError> {
    let meta = std::fs::symlink_metadata(src).map_err(io(src))?;
    let name = src
        .file_name()
        .map(PathBuf::from)
        .ok_or_else(|| ArchiveError::NoName(src.to_owned()))?;
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    if meta.is_dir() {
        b.append_dir_all(&name, src).map_err(io(src))?;
    } else {
        b.append_path_with_name(src, &name).map_err(io(src))?;
    }
    b.into_inner().map_err(io(src))?.flush().map_err(io(src))?;
    Ok(())
}

/// Why an entry was left out of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A hard link to something that is not an entry of this copy (the
    /// user's `~/.ssh/id_*`, say).
    HardLink { target: PathBuf },
    /// A symlink whose target lies outside the destination.
    Symlink { target: PathBuf },
    /// A device node, FIFO or other special file.
    Special { kind: &'static str },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::HardLink { target } => write!(
                f,
                "a hard link to {} (not an entry of this copy)",
                target.display()
            ),
            Refusal::Symlink { target } => write!(
                f,
                "a symlink to {} (outside the destination)",
                target.display()
            ),
            Refusal::Special { kind } => write!(f, "a {kind}"),
        }
    }
}

/// Who made the archive: a guest's is unpacked on the user's host and
/// trusted in nothing; the host's, unpacked in a guest at the user's
/// request, keeps its symlinks and modes as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Untrusted,
    Trusted,
}

/// What a copy did besides writing its entries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries left out, each with why (paths as the archive names them).
    pub refused: Vec<(PathBuf, Refusal)>,
    /// Entries whose setuid/setgid/sticky/world-writable bits were masked.
    pub masked: Vec<PathBuf>,
}

/// The mode bits a copy keeps: no setuid, setgid, sticky, nor write for
/// everyone.
const KEPT_MODE: u32 = 0o775;

/// `raw` as a path relative to the unpack base: the first component
/// renamed when unpacking *as* a new name; `None` when it would leave.
fn relative(raw: &Path, rename: Option<&OsString>) -> Option<PathBuf> {
    let mut rel = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(part) => match (rename, rel.as_os_str().is_empty()) {
                (Some(new), true) => rel.push(new),
                _ => rel.push(part),
            },
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(rel)
}

/// Whether a symlink at `at` (relative to the base) pointing at `target`
/// stays inside the base, read lexically.
fn link_stays_inside(at: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: Vec<&std::ffi::OsStr> = at
        .parent()
        .into_iter()
        .flat_map(|p| p.components())
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    for c in target.components() {
        match c {
            Component::Normal(n) => depth.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

/// Unpacks an archive made by [`pack`] at `dest`; see the module's notes
/// on what is left out.
pub fn unpack_to<R: Read>(r: R, dest: &Path, origin: Origin) -> Result<Unpacked, ArchiveError> {
    let hostile = origin == Origin::Untrusted;
    let (base, rename): (PathBuf, Option<OsString>) = if dest.is_dir() {
        (dest.to_owned(), None)
    } else {
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(ArchiveError::NoParent(parent));
        }
        let name = dest
            .file_name()
            .ok_or_else(|| ArchiveError::NoName(dest.to_owned()))?;
        (parent, Some(name.to_owned()))
    };
    let mut archive = tar::Archive::new(r);
    let mut dirs: Vec<(PathBuf, u64)> = Vec::new();
    let mut files = std::collections::HashSet::new();
    let mut done = Unpacked::default();
    let mut any = false;
    for entry in archive.entries().map_err(io(dest))? {
        let mut entry = entry.map_err(io(dest))?;
        let raw = entry.path().map_err(io(dest))?.into_owned();
        let rel =
            relative(&raw, rename.as_ref()).ok_or_else(|| ArchiveError::Unsafe(raw.clone()))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        // An earlier entry may have been a symlink: never write through one.
        let mut probe = base.clone();
        let parts: Vec<_> = rel.components().collect();
        for part in &parts[..parts.len() - 1] {
            probe.push(part);
            if std::fs::symlink_metadata(&probe).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(ArchiveError::Unsafe(raw));
            }
        }
        let target = base.join(&rel);
        let kind = entry.header().entry_type();
        let link = entry
            .link_name()
            .map_err(io(&target))?
            .map(|l| l.into_owned());
        let refusal = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {
                None
            }
            tar::EntryType::Symlink if !hostile => None,
            tar::EntryType::Symlink => match &link {
                Some(t) if link_stays_inside(&rel, t) => None,
                Some(t) => Some(Refusal::Symlink { target: t.clone() }),
                None => Some(Refusal::Special {
                    kind: "symlink without a target",
                }),
            },
            tar::EntryType::Link => {
                let to = link.as_deref().and_then(|l| relative(l, rename.as_ref()));
                match to {
                    Some(to) if files.contains(&to) => {
                        if let Some(parent) = target.parent() {
                            std::fs::create_dir_all(parent).map_err(io(parent))?;
                        }
                        std::fs::hard_link(base.join(&to), &target).map_err(io(&target))?;
                        any = true;
                        continue;
                    }
                    _ => Some(Refusal::HardLink {
                        target: link.unwrap_or_default(),
                    }),
                }
            }
            tar::EntryType::Char => Some(Refusal::Special {
                kind: "character device",
            }),
            tar::EntryType::Block => Some(Refusal::Special {
                kind: "block device",
            }),
            tar::EntryType::Fifo => Some(Refusal::Special { kind: "fifo" }),
            _ => Some(Refusal::Special {
                kind: "special entry",
            }),
        };
        if let Some(why) = refusal {
            done.refused.push((raw, why));
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let mode = entry.header().mode().unwrap_or(0o644);
        let mtime = entry.header().mtime().unwrap_or(0);
        // Modes are set below, masked: never a setuid bit, not even for
        // a moment.
        entry.set_preserve_permissions(false);
        entry.set_preserve_mtime(true);
        entry.set_unpack_xattrs(false);
        entry.unpack(&target).map_err(io(&target))?;
        if kind != tar::EntryType::Symlink {
            use std::os::unix::fs::PermissionsExt;
            let kept = if hostile {
                mode & KEPT_MODE
            } else {
                mode & 0o7777
            };
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(kept))
                .map_err(io(&target))?;
            if mode & 0o7777 != kept {
                done.masked.push(raw.clone());
            }
        }
        if kind.is_dir() {
            dirs.push((target, mtime));
        } else if kind.is_file() {
            files.insert(rel);
        }
        any = true;
    }
    if !any && done.refused.is_empty() {
        return Err(ArchiveError::Empty);
    }
    // Writing into a directory bumps its mtime: set directories last,
    // deepest first.
    for (dir, mtime) in dirs.iter().rev() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(*mtime);
        File::open(dir)
            .and_then(|f| f.set_modified(t))
            .map_err(io(dir))?;
    }
    Ok(done)
}

/// Packs `src` on a blocking thread; chunks of about [`crate::CHUNK`]
/// bytes arrive on the receiver, the result on the handle.
pub fn pack_stream(
    src: PathBuf,
) -> (
    tokio::sync::mpsc::Receiver<Vec<u8>>,
    tokio::task::JoinHandle<Result<(), ArchiveError>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let job = tokio::task::spawn_blocking(move || {
        let sink = std::io::BufWriter::with_capacity(crate::CHUNK, ChannelWriter(tx));
        pack(&src, sink)
    });
    (rx, job)
}

/// Unpacks at `dest` on a blocking thread from the chunks sent; dropping
/// the sender ends the stream.
pub fn unpack_stream(
    dest: PathBuf,
    origin: Origin,
) -> (
    tokio::sync::mpsc::Sender<Vec<u8>>,
    tokio::task::JoinHandle<Result<Unpacked, ArchiveError>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let job = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            buf: Vec::new(),
            pos: 0,
        };
        unpack_to(reader, &dest, origin)
    });
    (tx, job)
}

struct ChannelWriter(tokio::sync::mpsc::Sender<Vec<u8>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(buf.to_vec())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "receiver gone"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(b) => {
                    self.buf = b;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("d/sub")).expect("mkdir");
        std::fs::write(root.join("d/a.txt"), b"alpha").expect("write");
        std::fs::write(root.join("d/sub/run.sh"), b"#!/bin/sh\n").expect("write");
        std::fs::set_permissions(
            root.join("d/sub/run.sh"),
            std::fs::Permissions::from_mode(0o751),
        )
        .expect("chmod");
        std::os::unix::fs::symlink("a.txt", root.join("d/link")).expect("symlink");
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        for p in ["d/a.txt", "d/sub", "d"] {
            File::open(root.join(p))
                .and_then(|f| f.set_modified(old))
                .expect("mtime");
        }
    }

    fn mtime(p: &Path) -> SystemTime {
        std::fs::symlink_metadata(p)
            .expect("stat")
            .modified()
            .expect("mtime")
    }

    #[test]
    fn a_tree_lands_inside_an_existing_dir_with_modes_and_mtimes() {
        let src = tempfile::tempdir().expect("tmp");
        let dst = tempfile::tempdir().expect("tmp");
        tree(src.path());
        let mut buf = Vec::new();
        pack(&src.path().join("d"), &mut buf).expect("pack");
        unpack_to(&buf[..], dst.path(), Origin::Untrusted).expect("unpack");
        let out = dst.path().join("d");
        assert_eq!(std::fs::read(out.join("a.txt")).expect("read"), b"alpha");
        let mode = std::fs::metadata(out.join("sub/run.sh"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o751);
        assert_eq!(
            std::fs::read_link(out.join("link")).expect("link"),
            Path::new("a.txt")
        );
        for p in ["a.txt", "sub", ""] {
            assert_eq!(
                mtime(&out.join(p)),
                mtime(&src.path().join("d").join(p)),
                "{p}"
            );
        }
    }

    #[test]
    fn a_missing_dest_renames_the_top_entry() {
        let src = tempfile::tempdir().expect("tmp");
        let dst = tempfile::tempdir().expect("tmp");
        tree(src.path());
        let mut buf = Vec::new();
        pack(&src.path().join("d/a.txt"), &mut buf).expect("pack");
        unpack_to(&buf[..], &dst.path().join("renamed.txt"), Origin::Untrusted)
            .expect("unpack file");
        assert_eq!(
            std::fs::read(dst.path().join("renamed.txt")).expect("read"),
            b"alpha"
        );
        let mut buf = Vec::new();
        pack(&src.path().join("d"), &mut buf).expect("pack");
        unpack_to(&buf[..], &dst.path().join("copy"), Origin::Untrusted).expect("unpack dir");
        assert!(dst.path().join("copy/sub/run.sh").is_file());
        let err = unpack_to(&buf[..], &dst.path().join("no/such/dir"), Origin::Untrusted)
            .expect_err("no parent");
        assert!(matches!(err, ArchiveError::NoParent(_)), "{err}");
    }

    #[test]
    fn entries_escaping_the_destination_are_refused() {
        let dst = tempfile::tempdir().expect("tmp");
        // A symlink to elsewhere, then a file "through" it.
        let outside = tempfile::tempdir().expect("tmp");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "x", outside.path()).expect("link");
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "x/evil", &b"hi"[..]).expect("file");
        let buf = b.into_inner().expect("tar");
        // Trusted, the link is made, and nothing is written through it.
        let err = unpack_to(&buf[..], dst.path(), Origin::Trusted).expect_err("through a symlink");
        assert!(matches!(err, ArchiveError::Unsafe(_)), "{err}");
        assert!(!outside.path().join("evil").exists());
        // Untrusted, the link is never made: the file lands inside.
        let dst = tempfile::tempdir().expect("tmp");
        let done = unpack_to(&buf[..], dst.path(), Origin::Untrusted).expect("unpack");
        assert_eq!(done.refused.len(), 1, "{done:?}");
        assert!(dst.path().join("x/evil").is_file());
        assert!(!outside.path().join("evil").exists());

        // `..` in a name (written raw: the builder itself refuses it).
        let mut raw = tar::Header::new_gnu();
        raw.as_gnu_mut().expect("gnu").name[..9].copy_from_slice(b"../escape");
        raw.set_size(0);
        raw.set_mode(0o644);
        raw.set_cksum();
        let mut buf = raw.as_bytes().to_vec();
        buf.extend_from_slice(&[0u8; 1024]);
        let err = unpack_to(&buf[..], dst.path(), Origin::Untrusted).expect_err("dotdot");
        assert!(matches!(err, ArchiveError::Unsafe(_)), "{err}");
        assert!(!dst.path().parent().expect("parent").join("escape").exists());
    }

    /// What a hostile guest puts in an archive for the host to unpack.
    #[test]
    fn a_hostile_archive_leaves_the_host_untouched_and_says_what_it_refused() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let host = tempfile::tempdir().expect("tmp");
        let secret = host.path().join("id_ed25519");
        std::fs::write(&secret, b"PRIVATE KEY").expect("secret");
        let dst = tempfile::tempdir().expect("tmp");

        let mut b = tar::Builder::new(Vec::new());
        let dir = |b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(mode);
            b.append_data(&mut h, name, &[][..]).expect("dir");
        };
        let file = |b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32| {
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(mode);
            b.append_data(&mut h, name, &b"hi"[..]).expect("file");
        };
        let link = |b: &mut tar::Builder<Vec<u8>>, kind, name: &str, to: &Path| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(0);
            b.append_link(&mut h, name, to).expect("link");
        };
        dir(&mut b, "out", 0o777);
        file(&mut b, "out/plain", 0o644);
        file(&mut b, "out/suid", 0o4755);
        link(&mut b, tar::EntryType::Link, "out/key", &secret);
        link(
            &mut b,
            tar::EntryType::Link,
            "out/twin",
            Path::new("out/plain"),
        );
        link(
            &mut b,
            tar::EntryType::Symlink,
            "out/etc",
            Path::new("../../../etc"),
        );
        link(
            &mut b,
            tar::EntryType::Symlink,
            "out/abs",
            Path::new("/etc/passwd"),
        );
        link(
            &mut b,
            tar::EntryType::Symlink,
            "out/near",
            Path::new("plain"),
        );
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Block);
        h.set_size(0);
        h.set_mode(0o660);
        h.set_device_major(8).expect("major");
        h.set_device_minor(0).expect("minor");
        b.append_data(&mut h, "out/sda", &[][..]).expect("dev");
        let buf = b.into_inner().expect("tar");

        let done = unpack_to(&buf[..], dst.path(), Origin::Untrusted).expect("unpack");
        let out = dst.path().join("out");
        let refused: Vec<String> = done
            .refused
            .iter()
            .map(|(p, why)| format!("{}: {why}", p.display()))
            .collect();
        assert_eq!(refused.len(), 4, "{refused:#?}");
        assert!(
            refused
                .iter()
                .any(|r| r.starts_with("out/key: a hard link")),
            "{refused:?}"
        );
        assert!(
            refused.iter().any(|r| r.starts_with("out/etc: a symlink")),
            "{refused:?}"
        );
        assert!(
            refused.iter().any(|r| r.starts_with("out/abs: a symlink")),
            "{refused:?}"
        );
        assert!(
            refused.iter().any(|r| r.contains("block device")),
            "{refused:?}"
        );
        for gone in ["key", "etc", "abs", "sda"] {
            assert!(
                std::fs::symlink_metadata(out.join(gone)).is_err(),
                "{gone} exists"
            );
        }
        // The host's file: not linked, not changed.
        assert_eq!(std::fs::metadata(&secret).expect("secret").nlink(), 1);
        assert_eq!(std::fs::read(&secret).expect("secret"), b"PRIVATE KEY");
        // What is inside the copy stays: a link between its own entries,
        // a symlink within it; modes masked.
        assert_eq!(
            std::fs::metadata(out.join("twin")).expect("twin").ino(),
            std::fs::metadata(out.join("plain")).expect("plain").ino()
        );
        assert_eq!(
            std::fs::read_link(out.join("near")).expect("near"),
            Path::new("plain")
        );
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&out.join("suid")), 0o755);
        assert_eq!(mode(&out), 0o775);
        assert_eq!(
            done.masked,
            [PathBuf::from("out"), PathBuf::from("out/suid")]
        );
    }
}
