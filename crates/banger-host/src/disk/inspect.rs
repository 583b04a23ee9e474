//! What a path names inside an ext4 image, read with debugfs (no mount).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::{DiskError, HostDisks, io};

/// One path inside a guest filesystem, not followed if it is a symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestNode {
    /// Nothing by that name (or a parent is not a directory).
    Missing,
    Dir,
    /// A regular file.
    File,
    /// A symlink and its target, byte for byte.
    Symlink(PathBuf),
    /// A device, FIFO or socket.
    Other,
}

/// What `debugfs -R stat` said about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stat {
    Missing,
    Dir,
    File,
    Symlink,
    Other,
}

/// Reads `stat`'s output. debugfs exits 0 whatever happened, so its text
/// is the only report there is.
fn parse_stat(out: &str) -> Option<Stat> {
    for l in out.lines() {
        if l.contains("File not found by ext2_lookup")
            || l.contains("Ext2 inode is not a directory")
        {
            return Some(Stat::Missing);
        }
        // "Inode: 22   Type: symlink    Mode:  0777   Flags: 0x0"
        let Some(rest) = l.strip_prefix("Inode:") else {
            continue;
        };
        let Some((_, ty)) = rest.split_once("Type:") else {
            continue;
        };
        let ty = ty.split_once("Mode:").map_or(ty, |(t, _)| t).trim();
        return Some(match ty {
            "regular" => Stat::File,
            "directory" => Stat::Dir,
            "symlink" => Stat::Symlink,
            _ => Stat::Other,
        });
    }
    None
}

/// `path` as one debugfs argument: quoted, a quote doubled (debugfs's
/// parser reads `""` inside quotes as one). A newline would end the
/// request, so such a path cannot be asked for.
fn quoted(image: &Path, path: &Path) -> Result<OsString, DiskError> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.contains(&b'\n') {
        return Err(DiskError::Debugfs {
            image: image.to_owned(),
            message: format!("cannot ask debugfs for {path:?}: it holds a newline"),
        });
    }
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.push(b'"');
    for &b in bytes {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
    Ok(OsString::from_vec(out))
}

/// A debugfs request: `cmd` and its quoted path arguments.
fn request(image: &Path, cmd: &str, paths: &[&Path]) -> Result<OsString, DiskError> {
    let mut r = OsString::from(cmd);
    for p in paths {
        r.push(" ");
        r.push(quoted(image, p)?);
    }
    Ok(r)
}

impl HostDisks {
    /// Runs one debugfs request (read-only) and returns what it printed.
    pub(super) async fn debugfs_read(
        &self,
        image: &Path,
        req: OsString,
        writable: &[&Path],
    ) -> Result<String, DiskError> {
        let mut out = String::new();
        self.sandbox
            .run(&self.debugfs, writable)
            .arg("-R")
            .arg(req)
            .arg(image.as_os_str())
            .run(|l| {
                out.push_str(l);
                out.push('\n');
            })
            .await?;
        Ok(out)
    }

    pub(super) async fn node(
        &self,
        image: &Path,
        guest_path: &Path,
    ) -> Result<GuestNode, DiskError> {
        let out = self
            .debugfs_read(image, request(image, "stat", &[guest_path])?, &[])
            .await?;
        let stat = parse_stat(&out).ok_or_else(|| DiskError::Debugfs {
            image: image.to_owned(),
            message: format!("stat {}: {}", guest_path.display(), out.trim()),
        })?;
        Ok(match stat {
            Stat::Missing => GuestNode::Missing,
            Stat::Dir => GuestNode::Dir,
            Stat::File => GuestNode::File,
            Stat::Other => GuestNode::Other,
            Stat::Symlink => GuestNode::Symlink(self.link_target(image, guest_path).await?),
        })
    }

    /// A symlink's target. `stat` prints only short ("fast") targets, and
    /// as text; `rdump` recreates the link on the host, long or short, and
    /// the host's readlink gives its bytes.
    async fn link_target(&self, image: &Path, guest_path: &Path) -> Result<PathBuf, DiskError> {
        let scratch = self.scratch.clone();
        let dest = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&scratch).map_err(io(&scratch))?;
            tempfile::Builder::new()
                .prefix("readlink-")
                .tempdir_in(&scratch)
                .map_err(io(&scratch))
        })
        .await
        .map_err(DiskError::Task)??;
        let out = self
            .debugfs_read(
                image,
                request(image, "rdump", &[guest_path, dest.path()])?,
                &[dest.path()],
            )
            .await?;
        let (image, guest_path) = (image.to_owned(), guest_path.to_owned());
        tokio::task::spawn_blocking(move || {
            let mut entries = std::fs::read_dir(dest.path())
                .map_err(io(dest.path()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(io(dest.path()))?;
            match entries.pop() {
                Some(e) if entries.is_empty() => {
                    std::fs::read_link(e.path()).map_err(io(&e.path()))
                }
                _ => Err(DiskError::Debugfs {
                    image,
                    message: format!(
                        "rdump {} gave no single link: {}",
                        guest_path.display(),
                        out.trim()
                    ),
                }),
            }
        })
        .await
        .map_err(DiskError::Task)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_output_reads_as_a_node_kind() {
        let banner = "debugfs 1.47.0 (5-Feb-2023)\n";
        let case = |body: &str| parse_stat(&format!("{banner}{body}\n"));
        assert_eq!(
            case("Inode: 22   Type: symlink    Mode:  0777   Flags: 0x0"),
            Some(Stat::Symlink)
        );
        assert_eq!(
            case("Inode: 20   Type: regular    Mode:  0644   Flags: 0x80000"),
            Some(Stat::File)
        );
        assert_eq!(
            case("Inode: 17   Type: directory    Mode:  0755   Flags: 0x80000"),
            Some(Stat::Dir)
        );
        assert_eq!(
            case("Inode: 30   Type: character special    Mode:  0666   Flags: 0x0"),
            Some(Stat::Other)
        );
        assert_eq!(
            case("/nope: File not found by ext2_lookup "),
            Some(Stat::Missing)
        );
        assert_eq!(
            case("/etc/hostname/x: Ext2 inode is not a directory "),
            Some(Stat::Missing)
        );
        assert_eq!(
            case(
                "debugfs: Bad magic number in super-block while trying to open x\nstat: Filesystem not open"
            ),
            None
        );
    }

    #[test]
    fn paths_are_quoted_for_debugfs() {
        let img = Path::new("/i.ext4");
        assert_eq!(
            request(img, "rdump", &[Path::new("/a b"), Path::new("/t\"q")]).expect("request"),
            OsString::from("rdump \"/a b\" \"/t\"\"q\"")
        );
        assert!(matches!(
            request(img, "stat", &[Path::new("/a\nb")]),
            Err(DiskError::Debugfs { .. })
        ));
    }
}
