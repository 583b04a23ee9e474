//! `vm cp`'s tar streams, shared by the CLI (host side) and the agent
//! (guest side) so both ends agree on naming.
//!
//! An archive holds one top-level entry, named after the source's last
//! component. Unpacking follows `cp -r`/`docker cp`: into `dest` when it
//! is a directory, else *as* `dest` (the top-level entry renamed). Modes
//! and mtimes are kept; ownership is not (the unpacking user owns it all).

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

/// Unpacks an archive made by [`pack`] at `dest`.
pub fn unpack_to<R: Read>(r: R, dest: &Path) -> Result<(), ArchiveError> {
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
    let mut any = false;
    for entry in archive.entries().map_err(io(dest))? {
        let mut entry = entry.map_err(io(dest))?;
        let raw = entry.path().map_err(io(dest))?.into_owned();
        let mut rel = PathBuf::new();
        for (i, c) in raw.components().enumerate() {
            match c {
                Component::Normal(part) => match (&rename, i == 0 || rel.as_os_str().is_empty()) {
                    (Some(new), true) => rel.push(new),
                    _ => rel.push(part),
                },
                Component::CurDir => {}
                _ => return Err(ArchiveError::Unsafe(raw)),
            }
        }
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
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let is_dir = entry.header().entry_type().is_dir();
        let mtime = entry.header().mtime().unwrap_or(0);
        entry.set_preserve_permissions(true);
        entry.set_preserve_mtime(true);
        entry.set_unpack_xattrs(false);
        entry.unpack(&target).map_err(io(&target))?;
        if is_dir {
            dirs.push((target, mtime));
        }
        any = true;
    }
    if !any {
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
    Ok(())
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
) -> (
    tokio::sync::mpsc::Sender<Vec<u8>>,
    tokio::task::JoinHandle<Result<(), ArchiveError>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let job = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            buf: Vec::new(),
            pos: 0,
        };
        unpack_to(reader, &dest)?;
        Ok(())
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
        unpack_to(&buf[..], dst.path()).expect("unpack");
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
        unpack_to(&buf[..], &dst.path().join("renamed.txt")).expect("unpack file");
        assert_eq!(
            std::fs::read(dst.path().join("renamed.txt")).expect("read"),
            b"alpha"
        );
        let mut buf = Vec::new();
        pack(&src.path().join("d"), &mut buf).expect("pack");
        unpack_to(&buf[..], &dst.path().join("copy")).expect("unpack dir");
        assert!(dst.path().join("copy/sub/run.sh").is_file());
        let err = unpack_to(&buf[..], &dst.path().join("no/such/dir")).expect_err("no parent");
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
        let err = unpack_to(&buf[..], dst.path()).expect_err("through a symlink");
        assert!(matches!(err, ArchiveError::Unsafe(_)), "{err}");
        assert!(!outside.path().join("evil").exists());

        // `..` in a name (written raw: the builder itself refuses it).
        let mut raw = tar::Header::new_gnu();
        raw.as_gnu_mut().expect("gnu").name[..9].copy_from_slice(b"../escape");
        raw.set_size(0);
        raw.set_mode(0o644);
        raw.set_cksum();
        let mut buf = raw.as_bytes().to_vec();
        buf.extend_from_slice(&[0u8; 1024]);
        let err = unpack_to(&buf[..], dst.path()).expect_err("dotdot");
        assert!(matches!(err, ArchiveError::Unsafe(_)), "{err}");
        assert!(!dst.path().parent().expect("parent").join("escape").exists());
    }
}
