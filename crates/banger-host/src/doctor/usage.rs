//! What banger's files take on the state dir's filesystem, for
//! `doctor`'s disk report and a snapshot's recorded size.
//!
//! Sizes are allocated bytes (`st_blocks * 512`), not apparent sizes: a
//! VM disk is a mostly sparse file whose holes cost nothing, and what a
//! user wants to know is what the filesystem lost. Symlinks are measured
//! as themselves, never followed (a link out of the state dir must not
//! count someone else's files), and a file with several hard links
//! counts once per walk. Unlike the capability checks this is real I/O,
//! blocking: callers run it on the blocking pool.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use banger_api::doctor::{AreaUsage, DiskArea, DiskReport, FsSpace, SnapshotUsage};
use banger_api::snapshot::SnapshotRecord;

/// How many errors a report lists: an unreadable tree with thousands of
/// directories must not bury the rest of the report.
const ERRORS_MAX: usize = 16;

/// Why part of a tree or the filesystem could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{area}: {path} is a symlink, not followed; its target is not counted")]
    SymlinkedArea { area: &'static str, path: PathBuf },
    #[error("snapshot {name}: its directory {path} is missing")]
    SnapshotMissing { name: String, path: PathBuf },
    #[error("free space of {path}: {source}")]
    Statvfs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// What the disk report measures; the config and the layout say where
/// each area is, this module only measures.
#[derive(Debug, Clone)]
pub struct DiskInputs {
    pub state_dir: PathBuf,
    pub areas: Vec<(DiskArea, PathBuf)>,
    /// Every recorded snapshot, in the order the report lists them.
    pub snapshots: Vec<SnapshotRecord>,
}

/// Measures every area and every snapshot, collecting what fails instead
/// of stopping at it: a report that is partly right, and says which part
/// is missing, helps more than none.
pub fn measure_disk(inputs: &DiskInputs) -> DiskReport {
    let mut errors = Vec::new();
    let fs = match fs_space(&inputs.state_dir) {
        Ok(fs) => Some(fs),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    // One walk for the whole report: a file linked into two areas takes
    // its blocks once, so the areas add up to what the filesystem lost.
    let mut walk = Walk::default();
    let mut areas = Vec::with_capacity(inputs.areas.len());
    let mut snapshot_dirs = HashMap::new();
    for (area, dir) in &inputs.areas {
        let (bytes, children) = walk.area(*area, dir);
        if *area == DiskArea::Snapshots {
            snapshot_dirs.extend(children);
        }
        areas.push(AreaUsage {
            area: *area,
            dir: dir.clone(),
            bytes,
        });
    }
    let snapshots = inputs
        .snapshots
        .iter()
        .map(|s| SnapshotUsage {
            name: s.name.clone(),
            id: s.id.clone(),
            kind: s.kind,
            source_vm: s.source_vm.clone(),
            bytes: match snapshot_dirs.get(&s.dir) {
                Some(bytes) => *bytes,
                // Outside the snapshots area (a record from another
                // layout) or gone: measured on its own; a missing
                // directory's 0 comes with an error saying so.
                None => walk.snapshot(&s.name, &s.dir),
            },
        })
        .collect();
    errors.append(&mut walk.errors);
    DiskReport {
        state_dir: inputs.state_dir.clone(),
        fs,
        areas,
        snapshots,
        errors: error_lines(&errors),
    }
}

/// Allocated bytes under `path` (itself included), failing on the first
/// part that could not be read: a recorded size must be whole.
pub fn allocated_bytes(path: &Path) -> Result<u64, UsageError> {
    let mut walk = Walk::default();
    let bytes = walk.entry(path);
    match walk.errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(bytes),
    }
}

fn fs_space(path: &Path) -> Result<FsSpace, UsageError> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|source| UsageError::Statvfs {
        path: path.to_owned(),
        source,
    })?;
    Ok(FsSpace {
        total_bytes: times(st.blocks(), st.fragment_size()),
        available_bytes: times(st.blocks_available(), st.fragment_size()),
    })
}

/// `count * unit` in bytes; generic because statvfs's field types differ
/// between targets.
fn times(count: impl TryInto<u64>, unit: impl TryInto<u64>) -> u64 {
    match (count.try_into(), unit.try_into()) {
        (Ok(c), Ok(u)) => c.saturating_mul(u),
        _ => u64::MAX,
    }
}

fn error_lines(errors: &[UsageError]) -> Vec<String> {
    let mut lines: Vec<String> = errors
        .iter()
        .take(ERRORS_MAX)
        .map(ToString::to_string)
        .collect();
    if errors.len() > ERRORS_MAX {
        lines.push(format!("… and {} more", errors.len() - ERRORS_MAX));
    }
    lines
}

#[derive(Debug, Default)]
struct Walk {
    /// (device, inode) of every multiply linked file already counted.
    seen: HashSet<(u64, u64)>,
    errors: Vec<UsageError>,
}

impl Walk {
    /// An area's total and each of its direct children's, the snapshots'
    /// directories among them.
    fn area(&mut self, area: DiskArea, dir: &Path) -> (u64, Vec<(PathBuf, u64)>) {
        let meta = match std::fs::symlink_metadata(dir) {
            Ok(m) => m,
            // Nothing was ever put there (no snapshot taken yet): it
            // truly takes nothing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (0, Vec::new()),
            Err(source) => {
                self.fail(dir, source);
                return (0, Vec::new());
            }
        };
        if meta.file_type().is_symlink() {
            self.errors.push(UsageError::SymlinkedArea {
                area: area.as_str(),
                path: dir.to_owned(),
            });
        }
        let own = self.blocks(&meta);
        if !meta.is_dir() {
            return (own, Vec::new());
        }
        let children: Vec<(PathBuf, u64)> = self
            .children(dir)
            .into_iter()
            .map(|child| {
                let bytes = self.entry(&child);
                (child, bytes)
            })
            .collect();
        let total = children.iter().fold(own, |t, (_, b)| t.saturating_add(*b));
        (total, children)
    }

    fn snapshot(&mut self, name: &str, dir: &Path) -> u64 {
        match std::fs::symlink_metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.errors.push(UsageError::SnapshotMissing {
                    name: name.to_owned(),
                    path: dir.to_owned(),
                });
                0
            }
            _ => self.entry(dir),
        }
    }

    /// `path` and, for a directory, everything below it.
    fn entry(&mut self, path: &Path) -> u64 {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            // Removed while we walked (a VM deleted, a staging dir
            // published): it no longer takes anything.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return 0,
            Err(source) => {
                self.fail(path, source);
                return 0;
            }
        };
        let own = self.blocks(&meta);
        if !meta.is_dir() {
            return own;
        }
        self.children(path)
            .into_iter()
            .fold(own, |t, child| t.saturating_add(self.entry(&child)))
    }

    /// A directory's entries; an unreadable one is an error, and its
    /// subtree is left out.
    fn children(&mut self, dir: &Path) -> Vec<PathBuf> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(source) => {
                self.fail(dir, source);
                return Vec::new();
            }
        };
        let mut paths = Vec::new();
        for entry in entries {
            match entry {
                Ok(e) => paths.push(e.path()),
                Err(source) => self.fail(dir, source),
            }
        }
        paths
    }

    fn blocks(&mut self, meta: &std::fs::Metadata) -> u64 {
        if !meta.is_dir() && meta.nlink() > 1 && !self.seen.insert((meta.dev(), meta.ino())) {
            return 0;
        }
        meta.blocks().saturating_mul(512)
    }

    fn fail(&mut self, path: &Path, source: io::Error) {
        self.errors.push(UsageError::Read {
            path: path.to_owned(),
            source,
        });
    }
}

/// A recorded snapshot of VM `box` in `dir`, for tests of the report
/// here and in the core (the rest of the record is never measured).
#[cfg(any(test, feature = "testing"))]
pub fn recorded_snapshot(name: &str, dir: PathBuf) -> SnapshotRecord {
    use banger_api::snapshot::{SnapshotKind, SnapshotMachine};
    SnapshotRecord {
        id: format!("id-{name}"),
        name: name.into(),
        kind: SnapshotKind::User,
        source_vm: "box".into(),
        source_vm_id: "0123456789abcdef".into(),
        machine: SnapshotMachine {
            vmm: banger_api::vm::VmmKind::Qemu,
            vcpus: 1,
            memory_mib: 256,
            kernel: "default".into(),
            image: "default".into(),
            root_disk_bytes: 1 << 30,
            work_disk_bytes: 1 << 29,
            cmdline: String::new(),
            devices: vec![],
        },
        dir,
        // Deliberately not what the directory takes: the report measures.
        size_bytes: 1,
        save_ms: 1,
        created_at: Default::default(),
    }
}

#[cfg(test)]
mod tests;
