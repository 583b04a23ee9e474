//! A recording fake that creates plain files where the real one would
//! clone or format.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use banger_api::doctor::StorageStrategy;

use super::{DiskError, DiskOps, GuestEntry, GuestNode, io};

/// One recorded [`DiskOps`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskCall {
    Clone {
        src: PathBuf,
        dst: PathBuf,
        strategy: StorageStrategy,
    },
    Grow {
        image: PathBuf,
        size: u64,
    },
    Mkfs {
        image: PathBuf,
        size: u64,
        label: String,
        from: Option<PathBuf>,
    },
    Extract {
        image: PathBuf,
        guest_path: String,
    },
    Write {
        image: PathBuf,
        entries: Vec<GuestEntry>,
    },
    Node {
        image: PathBuf,
        guest_path: PathBuf,
    },
}

/// How the calls read in [`FakeDisks::recorded`].
impl std::fmt::Display for DiskCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskCall::Clone { src, dst, strategy } => {
                write!(f, "clone {} {} {strategy:?}", src.display(), dst.display())
            }
            DiskCall::Grow { image, size } => write!(f, "grow {} {size}", image.display()),
            DiskCall::Mkfs {
                image,
                size,
                label,
                from,
            } => {
                write!(f, "mkfs {} {size} {label}", image.display())?;
                match from {
                    Some(from) => write!(f, " from {}", from.display()),
                    None => Ok(()),
                }
            }
            DiskCall::Extract { image, guest_path } => {
                write!(f, "extract {} {guest_path}", image.display())
            }
            DiskCall::Write { image, entries } => {
                write!(f, "write {} ({} entries)", image.display(), entries.len())
            }
            DiskCall::Node { image, guest_path } => {
                write!(f, "node {} {}", image.display(), guest_path.display())
            }
        }
    }
}

/// A recording fake that creates plain files where the real one would
/// clone or format.
#[derive(Debug, Default)]
pub struct FakeDisks {
    pub calls: Mutex<Vec<DiskCall>>,
    pub written: Mutex<Vec<(PathBuf, GuestEntry)>>,
    /// What [`DiskOps::guest_node`] answers, by guest path, in every
    /// image; a path not here is [`GuestNode::Missing`].
    pub nodes: Mutex<HashMap<PathBuf, GuestNode>>,
}

impl FakeDisks {
    fn record(&self, c: DiskCall) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    }

    /// Makes `guest_path` read as `node` in every image.
    pub fn set_node(&self, guest_path: impl Into<PathBuf>, node: GuestNode) {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(guest_path.into(), node);
    }

    /// Every operation asked for, in order.
    pub fn calls(&self) -> Vec<DiskCall> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// [`FakeDisks::calls`] as text, for tests that still read it so.
    pub fn recorded(&self) -> Vec<String> {
        self.calls().iter().map(ToString::to_string).collect()
    }
}

#[async_trait]
impl DiskOps for FakeDisks {
    async fn clone_image(
        &self,
        src: &Path,
        dst: &Path,
        strategy: StorageStrategy,
    ) -> Result<(), DiskError> {
        self.record(DiskCall::Clone {
            src: src.to_owned(),
            dst: dst.to_owned(),
            strategy,
        });
        std::fs::write(dst, b"").map_err(io(dst))
    }

    async fn grow_ext4(&self, image: &Path, size: u64) -> Result<(), DiskError> {
        self.record(DiskCall::Grow {
            image: image.to_owned(),
            size,
        });
        Ok(())
    }

    async fn make_ext4(
        &self,
        image: &Path,
        size: u64,
        label: &str,
        from: Option<&Path>,
    ) -> Result<(), DiskError> {
        self.record(DiskCall::Mkfs {
            image: image.to_owned(),
            size,
            label: label.to_owned(),
            from: from.map(Path::to_path_buf),
        });
        std::fs::write(image, b"").map_err(io(image))
    }

    async fn extract_dir(
        &self,
        image: &Path,
        guest_path: &str,
        dest: &Path,
    ) -> Result<PathBuf, DiskError> {
        self.record(DiskCall::Extract {
            image: image.to_owned(),
            guest_path: guest_path.to_owned(),
        });
        let out = dest.join(Path::new(guest_path).file_name().unwrap_or_default());
        std::fs::create_dir_all(&out).map_err(io(&out))?;
        Ok(out)
    }

    async fn write_entries(&self, image: &Path, entries: &[GuestEntry]) -> Result<(), DiskError> {
        self.record(DiskCall::Write {
            image: image.to_owned(),
            entries: entries.to_vec(),
        });
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        w.extend(entries.iter().map(|e| (image.to_owned(), e.clone())));
        Ok(())
    }

    async fn guest_node(&self, image: &Path, guest_path: &Path) -> Result<GuestNode, DiskError> {
        self.record(DiskCall::Node {
            image: image.to_owned(),
            guest_path: guest_path.to_owned(),
        });
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        Ok(nodes.get(guest_path).cloned().unwrap_or(GuestNode::Missing))
    }
}
