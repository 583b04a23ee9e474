//! Content addressing: digests, sizes, publishing finished assets.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// sha256 (hex) and size of a file, streamed.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

/// The digest naming an asset directory: over its files' digests, in
/// order, so the same content always lands in the same place.
/// A file's size and mtime: what says it may have changed since it was
/// last hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: std::time::SystemTime,
}

impl FileStamp {
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self {
            len: m.len(),
            modified: m.modified()?,
        })
    }
}

pub fn combine_digests(parts: &[Option<&str>]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.unwrap_or("-").as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// Moves the finished `staged` directory to `dest` (atomic rename on one
/// filesystem). When `dest` already exists it holds the same content
/// (same digest), so the staged copy is dropped.
pub fn publish(staged: &Path, dest: &Path) -> std::io::Result<PathBuf> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::rename(staged, dest) {
        Ok(()) => Ok(dest.to_owned()),
        Err(_) if dest.is_dir() => {
            std::fs::remove_dir_all(staged)?;
            Ok(dest.to_owned())
        }
        Err(e) => Err(e),
    }
}

/// Apparent size of a tree (files and symlinks), plus a block per entry
/// for the filesystem's own overhead: the basis for sizing an ext4 image.
pub fn tree_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.map_err(std::io::Error::other)?;
        let md = entry.metadata().map_err(std::io::Error::other)?;
        total += if md.is_file() {
            md.len().div_ceil(4096) * 4096
        } else {
            0
        } + 4096;
    }
    Ok(total)
}

/// Whether `path` starts with an ext4 (ext2/3/4) superblock.
pub fn is_ext4(path: &Path) -> std::io::Result<bool> {
    let mut f = std::fs::File::open(path)?;
    let mut sb = [0u8; 1082];
    match f.read_exact(&mut sb) {
        Ok(()) => Ok(sb[1080..1082] == [0x53, 0xef]),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_sizes_and_publishes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        std::fs::write(&f, b"abc").expect("write");
        let (sha, size) = hash_file(&f).expect("hash");
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(size, 3);
        assert_ne!(
            combine_digests(&[Some("a"), None]),
            combine_digests(&[Some("a"), Some("b")])
        );

        let staged = dir.path().join("staged");
        std::fs::create_dir(&staged).expect("mkdir");
        std::fs::write(staged.join("x"), b"1").expect("write");
        let dest = dir.path().join("store/abc");
        publish(&staged, &dest).expect("publish");
        assert!(dest.join("x").exists() && !staged.exists());
        // Same content published twice: the second copy is dropped.
        std::fs::create_dir(&staged).expect("mkdir");
        std::fs::write(staged.join("x"), b"1").expect("write");
        publish(&staged, &dest).expect("publish again");
        assert!(!staged.exists());

        assert!(tree_size(dir.path()).expect("size") >= 3);
        assert!(!is_ext4(&f).expect("check"));
    }

    #[test]
    fn a_stamp_changes_with_the_file_and_only_then() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("agent");
        std::fs::write(&f, b"one").expect("write");
        let first = FileStamp::of(&f).expect("stamp");
        assert_eq!(FileStamp::of(&f).expect("stamp"), first);
        std::fs::write(&f, b"a new build").expect("rewrite");
        assert_ne!(FileStamp::of(&f).expect("stamp"), first);
        assert!(FileStamp::of(&dir.path().join("missing")).is_err());
    }
}
