//! A newc (`070701`) cpio writer: the format the kernel unpacks an
//! initramfs from.
//!
//! Entries are written with fixed ownership (root) and a fixed mtime, so
//! the same inputs give the same bytes and the initramfs can be addressed
//! by its digest.

use std::io::{self, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Writes a newc archive to `W`.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
    mtime: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            ino: 0,
            written: 0,
            mtime: 0,
        }
    }

    /// A directory. Parents must be added first (the kernel does not
    /// create them).
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | (perm & 0o7777), 2, 0, 0, &[])
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | (perm & 0o7777), 1, 0, 0, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, 0, 0, target.as_bytes())
    }

    /// A character device node such as `/dev/console` (5, 1): the kernel
    /// opens it for init's stdio before any devtmpfs exists.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | (perm & 0o7777), 1, major, minor, &[])
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.ino = 0;
        self.header(TRAILER, 0, 1, 0, 0, 0)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rmaj: u32,
        rmin: u32,
        data: &[u8],
    ) -> io::Result<()> {
        let name = path.trim_start_matches('/');
        if name.is_empty()
            || name
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio entry name {path:?} is not a clean relative path"),
            ));
        }
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path}: larger than 4 GiB"),
            )
        })?;
        self.ino += 1;
        self.header(name, mode, nlink, size, rmaj, rmin)?;
        self.write(data)?;
        self.pad()
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        size: u32,
        rmaj: u32,
        rmin: u32,
    ) -> io::Result<()> {
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            self.mtime,
            size,
            0,
            0,
            rmaj,
            rmin,
            namesize as u32,
            0,
        ];
        let mut h = String::with_capacity(110);
        h.push_str(MAGIC);
        for f in fields {
            h.push_str(&format!("{f:08X}"));
        }
        self.write(h.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()
    }

    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.write(&[0u8; 3][..4 - rem])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("dev", 0o755).expect("dir");
        w.char_dev("dev/console", 0o600, 5, 1).expect("chr");
        w.dir("lib", 0o755).expect("dir");
        w.file("/init", 0o755, b"#!/bin/sh\necho hi\n")
            .expect("file");
        w.file("lib/odd", 0o644, b"12345").expect("file");
        w.file("lib/empty", 0o644, b"").expect("file");
        w.symlink("sbin", "lib").expect("link");
        w.finish().expect("finish")
    }

    #[test]
    fn layout_is_aligned_and_deterministic() {
        let a = sample();
        assert_eq!(a, sample(), "same input, same bytes");
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        let trailer = a.windows(TRAILER.len()).any(|w| w == TRAILER.as_bytes());
        assert!(trailer);
    }

    #[test]
    fn refuses_unclean_names() {
        let mut w = CpioWriter::new(Vec::new());
        for bad in ["", "/", "a/../b", "./a", "a//b"] {
            assert!(w.file(bad, 0o644, b"x").is_err(), "{bad:?}");
        }
    }

    /// Round trip through GNU cpio, which `scripts/setup.sh` installs.
    #[test]
    fn gnu_cpio_lists_and_extracts_what_we_wrote() {
        let Ok(_) = Command::new("cpio").arg("--version").output() else {
            eprintln!("skipped: cpio not installed (scripts/setup.sh --deps-only installs it)");
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, sample()).expect("write");
        let out = Command::new("cpio")
            .args(["-t", "-v", "-F"])
            .arg(&archive)
            .output()
            .expect("cpio -t");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        for name in [
            "dev",
            "dev/console",
            "lib",
            "init",
            "lib/odd",
            "lib/empty",
            "sbin -> lib",
        ] {
            assert!(
                listing.lines().any(|l| l.ends_with(name)),
                "{name} missing:\n{listing}"
            );
        }
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("crw") && l.ends_with("dev/console")),
            "{listing}"
        );
        let x = dir.path().join("x");
        std::fs::create_dir(&x).expect("mkdir");
        let out = Command::new("cpio")
            .args(["-i", "-d", "--no-absolute-filenames", "-F"])
            .arg(&archive)
            .current_dir(&x)
            .output()
            .expect("cpio -i");
        // Device nodes need privileges; the regular files must come out.
        let _ = out;
        assert_eq!(
            std::fs::read(x.join("init")).expect("init"),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(std::fs::read(x.join("lib/odd")).expect("odd"), b"12345");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(x.join("init"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
