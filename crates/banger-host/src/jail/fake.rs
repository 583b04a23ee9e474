//! Records calls and pretends.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{JailError, JailOps, JailStage};

/// One recorded [`JailOps`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JailCall {
    Stage(JailStage),
    Spawn { vm_id: String, console: PathBuf },
    Release { vm_id: String },
}

/// Records calls and pretends: spawn answers with `pid`.
#[derive(Debug, Default)]
pub struct FakeJail {
    pub pid: u32,
    calls: Mutex<Vec<JailCall>>,
}

impl FakeJail {
    pub fn with_pid(pid: u32) -> Self {
        Self {
            pid,
            ..Self::default()
        }
    }

    pub fn recorded(&self) -> Vec<JailCall> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn push(&self, c: JailCall) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    }
}

#[async_trait]
impl JailOps for FakeJail {
    async fn stage(&self, stage: &JailStage) -> Result<PathBuf, JailError> {
        self.push(JailCall::Stage(stage.clone()));
        Ok(PathBuf::from("/fake/jail").join(&stage.vm_id))
    }

    async fn spawn(&self, vm_id: &str, console: &Path) -> Result<u32, JailError> {
        self.push(JailCall::Spawn {
            vm_id: vm_id.into(),
            console: console.into(),
        });
        Ok(self.pid)
    }

    async fn release(&self, vm_id: &str, _jail_dir: Option<&Path>) -> Result<(), JailError> {
        self.push(JailCall::Release {
            vm_id: vm_id.into(),
        });
        Ok(())
    }
}
