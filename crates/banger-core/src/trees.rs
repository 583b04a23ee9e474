//! Removing trees banger owns (VM and snapshot directories).

use std::path::PathBuf;

use crate::error::{CoreError, InternalError};

/// Removes a tree of whole disks off the async workers; one already gone
/// is fine. The caller checked that it is banger's to remove.
pub(crate) async fn remove_tree(dir: PathBuf, what: &'static str) -> Result<(), CoreError> {
    let target = dir.clone();
    let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&target))
        .await
        .map_err(|source| InternalError::Task { what, source })?;
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(InternalError::io("removing", dir)(e).into()),
    }
}
