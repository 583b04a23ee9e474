//! A scripted host for tests.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{HostProbe, ProbeError, ReflinkReport, ToolOutput};

/// One question asked of a [`FakeProbe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeCall {
    Read(PathBuf),
    Exists(PathBuf),
    Which(PathBuf),
    Run { bin: PathBuf, args: Vec<String> },
    Reflink(PathBuf),
    Owner(PathBuf),
}

/// A scripted host for tests. Records every question asked.
#[derive(Debug, Default)]
pub struct FakeProbe {
    pub files: HashMap<PathBuf, String>,
    pub paths: HashSet<PathBuf>,
    /// Binary name or path → (resolved path, outputs keyed by joined args).
    pub bins: HashMap<PathBuf, (PathBuf, HashMap<String, ToolOutput>)>,
    pub reflink: Option<ReflinkReport>,
    pub owners: HashMap<PathBuf, crate::jail::PathOwner>,
    pub calls: Mutex<Vec<ProbeCall>>,
}

impl FakeProbe {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_file(mut self, path: &str, text: &str) -> Self {
        self.files.insert(path.into(), text.into());
        self.paths.insert(path.into());
        self
    }

    /// `path` and every ancestor: directories of `uid` with `mode`.
    pub fn with_dirs_of(mut self, path: &str, uid: u32, mode: u32) -> Self {
        for p in Path::new(path).ancestors() {
            self.owners.insert(
                p.to_owned(),
                crate::jail::PathOwner {
                    uid,
                    mode,
                    is_dir: true,
                },
            );
        }
        self
    }

    /// One path's owner and mode.
    pub fn with_owner(mut self, path: &str, uid: u32, mode: u32, is_dir: bool) -> Self {
        self.owners
            .insert(path.into(), crate::jail::PathOwner { uid, mode, is_dir });
        self
    }

    pub fn with_path(mut self, path: &str) -> Self {
        self.paths.insert(path.into());
        self
    }

    /// Registers a binary answering `args` with `text`.
    pub fn with_tool(mut self, name: &str, resolved: &str, args: &str, text: &str) -> Self {
        let entry = self
            .bins
            .entry(PathBuf::from(name))
            .or_insert_with(|| (PathBuf::from(resolved), HashMap::new()));
        entry.1.insert(
            args.into(),
            ToolOutput {
                success: true,
                text: text.into(),
            },
        );
        self
    }

    pub fn with_reflink(mut self, fs_type: &str, supported: bool) -> Self {
        self.reflink = Some(ReflinkReport {
            fs_type: fs_type.into(),
            supported,
            tested_in: PathBuf::from("/var/lib"),
        });
        self
    }

    fn record(&self, call: ProbeCall) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
    }

    /// Everything asked so far, in order.
    pub fn calls(&self) -> Vec<ProbeCall> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl HostProbe for FakeProbe {
    fn read_file(&self, path: &Path) -> Option<String> {
        self.record(ProbeCall::Read(path.to_owned()));
        self.files.get(path).cloned()
    }

    fn exists(&self, path: &Path) -> bool {
        self.record(ProbeCall::Exists(path.to_owned()));
        self.paths.contains(path)
    }

    fn which(&self, bin: &Path) -> Option<PathBuf> {
        self.record(ProbeCall::Which(bin.to_owned()));
        self.bins.get(bin).map(|(p, _)| p.clone())
    }

    fn run(&self, bin: &Path, args: &[&str]) -> Result<ToolOutput, ProbeError> {
        let joined = args.join(" ");
        self.record(ProbeCall::Run {
            bin: bin.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        });
        let (_, outputs) = self.bins.get(bin).ok_or_else(|| ProbeError::NotFound {
            tool: bin.display().to_string(),
            path: bin.to_owned(),
        })?;
        Ok(outputs.get(&joined).cloned().unwrap_or(ToolOutput {
            success: false,
            text: format!("fake: no scripted output for {joined:?}"),
        }))
    }

    fn reflink(&self, dir: &Path) -> Result<ReflinkReport, ProbeError> {
        self.record(ProbeCall::Reflink(dir.to_owned()));
        self.reflink.clone().ok_or_else(|| ProbeError::Reflink {
            dir: dir.to_owned(),
            source: std::io::Error::other("fake: no reflink answer scripted"),
        })
    }

    fn owner(&self, path: &Path) -> Option<crate::jail::PathOwner> {
        self.record(ProbeCall::Owner(path.to_owned()));
        self.owners.get(path).copied()
    }
}
