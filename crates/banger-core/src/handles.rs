//! Transient handles of running VMs: the in-memory cache and its
//! write-ahead scratch file.
//!
//! A running VM holds kernel objects (a VMM process, a tap, a jail). They
//! are facts about *now*, so SQLite is never their authority. While the
//! daemon lives, [`HandleCache`] is. So that a crashed daemon can still
//! find and tear them down, every update is first written to
//! `<vm dir>/handles.json` and only then to memory: a crash between the
//! two leaves the file ahead of memory, which reconcile can recover from;
//! the other order could lose handles the daemon already acted on.
//! Teardown-critical names are also mirrored into the VM's row (a
//! [`TeardownMirror`], internal to the daemon and never on the wire) for
//! the case where the scratch file itself is lost or corrupt.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

/// Name of the scratch file inside a VM's directory.
pub const SCRATCH_FILE: &str = "handles.json";

/// Kernel objects a running VM holds right now. Files written by older
/// daemons may name loop devices, dm targets and mounts, which banger
/// never made; they are ignored on read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmHandles {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail_root: Option<PathBuf>,
}

/// Names of host objects a VM owns, as last recorded durably: what
/// cleanup cannot derive from the VM's id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeardownMirror {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail_root: Option<PathBuf>,
}

impl TeardownMirror {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

impl VmHandles {
    /// The durable mirror of the fields teardown cannot derive.
    pub fn mirror(&self) -> TeardownMirror {
        TeardownMirror {
            tap: self.tap.clone(),
            jail_root: self.jail_root.clone(),
        }
    }

    /// These handles with gaps filled from the mirror: what cleanup
    /// should tear down when the cache was lost.
    pub fn or_mirror(mut self, mirror: &TeardownMirror) -> Self {
        if self.tap.is_none() {
            self.tap.clone_from(&mirror.tap);
        }
        if self.jail_root.is_none() {
            self.jail_root.clone_from(&mirror.jail_root);
        }
        self
    }
}

/// Why the scratch file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HandlesError {
    #[error("vm {vm_id} has no vm directory recorded; cannot persist its handles")]
    NoVmDir { vm_id: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("removing {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Path of the scratch file for a VM directory.
pub fn scratch_path(vm_dir: &Path) -> PathBuf {
    vm_dir.join(SCRATCH_FILE)
}

/// Writes the scratch file atomically (temp file, fsync, rename), so a
/// crash never leaves a half-written file that hides the previous one.
pub fn write_scratch(vm_dir: &Path, h: &VmHandles) -> Result<(), HandlesError> {
    let path = scratch_path(vm_dir);
    let err = |source| HandlesError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(vm_dir).map_err(err)?;
    let data = serde_json::to_vec_pretty(h).map_err(|e| err(std::io::Error::other(e)))?;
    let mut tmp = tempfile::NamedTempFile::new_in(vm_dir).map_err(err)?;
    tmp.write_all(&data).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(&path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Reads the scratch file; `Ok(None)` when there is none (a stopped VM).
pub fn read_scratch(vm_dir: &Path) -> Result<Option<VmHandles>, HandlesError> {
    let path = scratch_path(vm_dir);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(HandlesError::Read { path, source }),
    };
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|source| HandlesError::Corrupt { path, source })
}

/// The daemon's in-memory authority on live handles.
#[derive(Debug, Default)]
pub struct HandleCache {
    map: RwLock<HashMap<String, VmHandles>>,
}

impl HandleCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Seeds the cache from a scratch file read at reconcile, without
    /// rewriting the file.
    pub fn adopt(&self, vm_id: &str, h: VmHandles) {
        self.write().insert(vm_id.to_owned(), h);
    }

    pub fn get(&self, vm_id: &str) -> Option<VmHandles> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(vm_id)
            .cloned()
    }

    /// Forgets a VM's handles: memory and scratch file (the caller
    /// clears the mirror).
    pub fn clear(&self, vm_id: &str, vm_dir: Option<&Path>) -> Result<(), HandlesError> {
        self.write().remove(vm_id);
        if let Some(dir) = vm_dir {
            let path = scratch_path(dir);
            if let Err(source) = std::fs::remove_file(&path) {
                if source.kind() != std::io::ErrorKind::NotFound {
                    return Err(HandlesError::Remove { path, source });
                }
            }
        }
        Ok(())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, VmHandles>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handles() -> VmHandles {
        VmHandles {
            pid: Some(4242),
            tap: Some("bg-01234567".into()),
            jail_root: Some("/jails/0123".into()),
        }
    }

    #[test]
    fn stage_writes_the_file_then_adopt_fills_memory_and_clear_forgets_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = HandleCache::new();
        write_scratch(dir.path(), &handles()).expect("scratch");
        assert_eq!(read_scratch(dir.path()).expect("read"), Some(handles()));
        assert_eq!(
            cache.get("0123"),
            None,
            "memory is filled by adopt, after the mirror"
        );
        cache.adopt("0123", handles());
        assert_eq!(cache.get("0123"), Some(handles()));
        let mirror = handles().mirror();
        assert_eq!(mirror.tap.as_deref(), Some("bg-01234567"));
        assert_eq!(mirror.jail_root.as_deref(), Some(Path::new("/jails/0123")));

        cache.clear("0123", Some(dir.path())).expect("clear");
        assert_eq!(cache.get("0123"), None);
        assert_eq!(read_scratch(dir.path()).expect("read"), None);
        cache
            .clear("0123", Some(dir.path()))
            .expect("clear is idempotent");
    }

    #[test]
    fn failed_scratch_write_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A regular file where the VM directory should be: create_dir fails.
        let blocker = dir.path().join("vmdir");
        std::fs::write(&blocker, b"x").expect("blocker");
        let err = write_scratch(&blocker, &handles()).expect_err("write must fail");
        assert!(matches!(err, HandlesError::Write { .. }), "{err}");
    }

    #[test]
    fn corrupt_scratch_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(scratch_path(dir.path()), b"{not json").expect("write");
        let err = read_scratch(dir.path()).expect_err("corrupt");
        assert!(err.to_string().contains(SCRATCH_FILE), "{err}");
    }

    #[test]
    fn a_scratch_file_of_an_older_daemon_still_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            scratch_path(dir.path()),
            br#"{"pid":7,"tap":"bg-aa","loops":["/dev/loop3"],"dm_target":"banger-aa","mounts":[]}"#,
        )
        .expect("write");
        let h = read_scratch(dir.path()).expect("read").expect("handles");
        assert_eq!(h.pid, Some(7));
        assert_eq!(h.tap.as_deref(), Some("bg-aa"));
    }

    #[test]
    fn cleanup_falls_back_to_the_mirror() {
        let mirror = TeardownMirror {
            tap: Some("bg-aa".into()),
            jail_root: Some("/jails/aa".into()),
        };
        let recovered = VmHandles::default().or_mirror(&mirror);
        assert_eq!(recovered.tap.as_deref(), Some("bg-aa"));
        assert_eq!(recovered.jail_root.as_deref(), Some(Path::new("/jails/aa")));
        // Live values win over the mirror.
        let live = VmHandles {
            tap: Some("bg-live".into()),
            ..VmHandles::default()
        }
        .or_mirror(&mirror);
        assert_eq!(live.tap.as_deref(), Some("bg-live"));
    }
}
