//! What can be refused in a command before acting on it.

use crate::command::Command;
use crate::core::Core;
use crate::error::CoreError;
use crate::snapshot::{check_fork, check_snapshot};

impl Core {
    /// Refuses what `cmd` gets wrong on its face (bad names, sizes out
    /// of bounds) without looking at the host or the store: the API
    /// answers these with a 400 before it starts a stream, like every
    /// other invalid request.
    pub fn check(&self, cmd: &Command) -> Result<(), CoreError> {
        match cmd {
            Command::VmCreate(req) => self.check_create(req).map(drop),
            Command::VmSnapshot { request, .. } => check_snapshot(request),
            Command::VmFork { request, .. } => check_fork(request).map(drop),
            _ => Ok(()),
        }
    }
}
