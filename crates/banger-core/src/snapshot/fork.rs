//! `vm fork`: a snapshot of a running VM, and K new VMs restored from it.
//! All or nothing: if any copy fails, every copy made is removed.

use banger_api::name::validate_name;
use banger_api::snapshot::{ForkVmRequest, MAX_FORKS, SnapshotKind, SnapshotVmRequest};
use banger_api::vm::{CreateVmRequest, VmRecord, VmState};

use crate::core::Core;
use crate::error::CoreError;
use crate::progress::ProgressSink;

impl Core {
    pub(crate) async fn fork_vm(
        &self,
        name: &str,
        req: ForkVmRequest,
        progress: &ProgressSink,
    ) -> Result<Vec<VmRecord>, CoreError> {
        let names = check_fork(&req)?;
        for n in names.iter().flatten() {
            let key = n.clone();
            if self.db(move |s| s.vm_name_exists(&key)).await? {
                return Err(CoreError::NameTaken(n.clone()));
            }
        }
        let source = self.find_vm(name).await?;
        let snap = self
            .snapshot_vm(
                &source.id,
                SnapshotVmRequest::default(),
                SnapshotKind::Fork,
                progress,
            )
            .await?;
        let mut made: Vec<VmRecord> = Vec::new();
        let mut failed: Option<CoreError> = None;
        for n in names {
            let create = CreateVmRequest {
                name: n,
                nat: source.spec.nat,
                snapshot: Some(snap.id.clone()),
                ..CreateVmRequest::default()
            };
            match self.create_vm(create, progress).await {
                Ok(vm) => made.push(vm),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_none() {
            // Together: each waits for a boot slot like any start.
            let starts = made.iter().map(|vm| self.start_vm(&vm.id, progress));
            let results = futures_util::future::join_all(starts).await;
            let mut started = Vec::new();
            for r in results {
                match r {
                    Ok(vm) => started.push(vm),
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            if failed.is_none() {
                made = started;
            }
        }
        if failed.is_some() {
            for vm in &made {
                if let Err(c) = self.discard(vm).await {
                    tracing::warn!(vm = %vm.name, error = %c, "removing a failed fork");
                }
            }
        }
        // The copies have their own disks now: the fork's snapshot is spent.
        if let Err(e) = self.remove_snapshot(&snap.id).await {
            tracing::warn!(snapshot = %snap.name, error = %e, "removing the fork's snapshot");
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(made),
        }
    }

    /// Kills (if it runs) and deletes a VM made by a failed operation.
    pub(super) async fn discard(&self, vm: &VmRecord) -> Result<(), CoreError> {
        let now = self.find_vm(&vm.id).await?;
        if matches!(
            now.state,
            VmState::Running | VmState::Paused | VmState::Starting | VmState::Stopping
        ) {
            self.stop_vm(&vm.id, false).await?;
        }
        self.delete_vm(&vm.id).await.map(drop)
    }
}

/// `NAME`, or `NAME-1` … `NAME-K`; `None` entries get generated names.
/// The copies' names, once the request is known to be sound.
pub(crate) fn check_fork(req: &ForkVmRequest) -> Result<Vec<Option<String>>, CoreError> {
    let count = req.count.unwrap_or(1);
    if !(1..=MAX_FORKS).contains(&count) {
        return Err(CoreError::InvalidArgument(format!(
            "--count must be between 1 and {MAX_FORKS}, got {count}"
        )));
    }
    fork_names(req.name.as_deref(), count)
}

fn fork_names(base: Option<&str>, count: u32) -> Result<Vec<Option<String>>, CoreError> {
    let Some(base) = base else {
        return Ok(vec![None; count as usize]);
    };
    let names: Vec<String> = if count == 1 {
        vec![base.to_owned()]
    } else {
        (1..=count).map(|i| format!("{base}-{i}")).collect()
    };
    for n in &names {
        validate_name(n).map_err(|e| CoreError::InvalidArgument(format!("fork name: {e}")))?;
    }
    Ok(names.into_iter().map(Some).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_numbered_only_for_several_copies() {
        assert_eq!(
            fork_names(Some("w"), 1).expect("one"),
            [Some("w".to_owned())]
        );
        assert_eq!(
            fork_names(Some("w"), 3).expect("three"),
            [
                Some("w-1".to_owned()),
                Some("w-2".to_owned()),
                Some("w-3".to_owned())
            ]
        );
        assert_eq!(fork_names(None, 2).expect("generated"), [None, None]);
        assert!(matches!(
            fork_names(Some("bad name"), 2),
            Err(CoreError::InvalidArgument(_))
        ));
    }
}
