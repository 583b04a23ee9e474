//! Transient handles of running VMs: the in-memory cache and its
//! write-ahead scratch file.
//!
//! A running VM holds kernel objects (a VMM process, a tap, loop devices,
//! a dm target, mounts). They are facts about *now*, so SQLite is never
//! their authority. While the daemon lives, [`HandleCache`] is. So that a
//! crashed daemon can still find and tear them down, every update is first
//! written to `<vm dir>/handles.json` and only then to memory: a crash
//! between the two leaves the file ahead of memory, which reconcile can
//! recover from; the other order could lose handles the daemon already
//! acted on. Teardown-critical names are also mirrored onto the VM's
//! runtime record ([`banger_api::vm::TeardownMirror`]) for the case where
//! the scratch file itself is lost or corrupt.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use banger_api::vm::{TeardownMirror, VmRecord};
use serde::{Deserialize, Serialize};

/// Name of the scratch file inside a VM's directory.
pub const SCRATCH_FILE: &str = "handles.json";

/// Kernel objects a running VM holds right now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmHandles {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loops: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm_target: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail_root: Option<String>,
}

impl VmHandles {
    /// The durable mirror of the fields teardown cannot derive.
    pub fn mirror(&self) -> TeardownMirror {
        TeardownMirror {
            tap: self.tap.clone(),
            loops: self.loops.clone(),
            dm_target: self.dm_target.clone(),
            jail_root: self.jail_root.clone(),
        }
    }

    /// These handles with gaps filled from the runtime mirror: what
    /// cleanup should tear down when the cache was lost.
    pub fn or_mirror(mut self, mirror: &TeardownMirror) -> Self {
        if self.tap.is_none() {
            self.tap.clone_from(&mirror.tap);
        }
        if self.loops.is_empty() {
            self.loops.clone_from(&mirror.loops);
        }
        if self.dm_target.is_none() {
            self.dm_target.clone_from(&mirror.dm_target);
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
    #[error("{path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
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
        .map_err(|e| HandlesError::Corrupt {
            path,
            message: e.to_string(),
        })
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

    /// Records `h` for `vm`: scratch file first, then the runtime mirror
    /// (the caller persists the record), then memory.
    pub fn set(&self, vm: &mut VmRecord, h: VmHandles) -> Result<(), HandlesError> {
        let dir = vm
            .runtime
            .vm_dir
            .as_deref()
            .ok_or_else(|| HandlesError::NoVmDir {
                vm_id: vm.id.clone(),
            })?;
        write_scratch(Path::new(dir), &h)?;
        vm.runtime.teardown = h.mirror();
        self.write().insert(vm.id.clone(), h);
        Ok(())
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

    /// Forgets `vm`'s handles: memory, scratch file and runtime mirror.
    pub fn clear(&self, vm: &mut VmRecord) {
        self.write().remove(&vm.id);
        if let Some(dir) = vm.runtime.vm_dir.as_deref() {
            let _ = std::fs::remove_file(scratch_path(Path::new(dir)));
        }
        vm.runtime.teardown = TeardownMirror::default();
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, VmHandles>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use banger_api::vm::{VmRuntime, VmSpec, VmState, VmmKind};
    use chrono::Utc;

    use super::*;

    fn vm(dir: Option<&Path>) -> VmRecord {
        VmRecord {
            id: "0123456789abcdef".into(),
            name: "box".into(),
            state: VmState::Starting,
            spec: VmSpec {
                vcpus: 1,
                memory_mib: 256,
                root_disk_bytes: 1 << 30,
                work_disk_bytes: 1 << 30,
                image: "default".into(),
                kernel: "default".into(),
                nat: false,
                vmm: VmmKind::Qemu,
            },
            runtime: VmRuntime {
                vm_dir: dir.map(|d| d.display().to_string()),
                ..VmRuntime::default()
            },
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn handles() -> VmHandles {
        VmHandles {
            pid: Some(4242),
            tap: Some("bg-01234567".into()),
            loops: vec!["/dev/loop3".into()],
            ..VmHandles::default()
        }
    }

    #[test]
    fn set_writes_file_mirror_and_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = HandleCache::new();
        let mut v = vm(Some(dir.path()));
        cache.set(&mut v, handles()).expect("set");
        assert_eq!(read_scratch(dir.path()).expect("read"), Some(handles()));
        assert_eq!(cache.get(&v.id), Some(handles()));
        assert_eq!(v.runtime.teardown.tap.as_deref(), Some("bg-01234567"));
        assert_eq!(v.runtime.teardown.loops, vec!["/dev/loop3".to_owned()]);

        cache.clear(&mut v);
        assert_eq!(cache.get(&v.id), None);
        assert_eq!(read_scratch(dir.path()).expect("read"), None);
        assert!(v.runtime.teardown.is_empty());
    }

    #[test]
    fn failed_scratch_write_leaves_the_cache_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A regular file where the VM directory should be: create_dir fails.
        let blocker = dir.path().join("vmdir");
        std::fs::write(&blocker, b"x").expect("blocker");
        let cache = HandleCache::new();
        let mut v = vm(Some(&blocker));
        let err = cache.set(&mut v, handles()).expect_err("write must fail");
        assert!(matches!(err, HandlesError::Write { .. }), "{err}");
        assert_eq!(cache.get(&v.id), None, "memory must never be ahead of disk");
        assert!(v.runtime.teardown.is_empty());

        let mut no_dir = vm(None);
        assert!(matches!(
            cache.set(&mut no_dir, handles()),
            Err(HandlesError::NoVmDir { .. })
        ));
    }

    #[test]
    fn corrupt_scratch_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(scratch_path(dir.path()), b"{not json").expect("write");
        let err = read_scratch(dir.path()).expect_err("corrupt");
        assert!(err.to_string().contains(SCRATCH_FILE), "{err}");
    }

    #[test]
    fn cleanup_falls_back_to_the_runtime_mirror() {
        let mirror = TeardownMirror {
            tap: Some("bg-aa".into()),
            loops: vec!["/dev/loop9".into()],
            dm_target: Some("banger-aa".into()),
            jail_root: None,
        };
        let recovered = VmHandles::default().or_mirror(&mirror);
        assert_eq!(recovered.tap.as_deref(), Some("bg-aa"));
        assert_eq!(recovered.loops, vec!["/dev/loop9".to_owned()]);
        assert_eq!(recovered.dm_target.as_deref(), Some("banger-aa"));
        // Live values win over the mirror.
        let live = VmHandles {
            tap: Some("bg-live".into()),
            ..VmHandles::default()
        }
        .or_mirror(&mirror);
        assert_eq!(live.tap.as_deref(), Some("bg-live"));
    }
}
