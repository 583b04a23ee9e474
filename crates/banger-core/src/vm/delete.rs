//! `vm delete`: everything the VM ever held, then its record.

use banger_api::vm::VmRecord;

use crate::core::Core;
use crate::error::CoreError;
use crate::lifecycle::{VmAction, check_action};

impl Core {
    pub(crate) async fn delete_vm(&self, vm: &str) -> Result<VmRecord, CoreError> {
        let (mut rec, _lock) = self.lock_vm(vm).await?;
        check_action(&rec.name, rec.state, VmAction::Delete)?;
        if rec.runtime.vm_dir.is_some() {
            // Everything the VM ever held: disks, tap, sockets, address.
            self.cleanup(&mut rec, false).await?;
        }
        failpoint!("delete.cleaned_up");
        let id = rec.id.clone();
        self.db(move |s| s.delete_vm(&id)).await?;
        failpoint!("delete.record_removed");
        self.rebuild_dns().await;
        tracing::info!(vm_id = %rec.id, name = %rec.name, "vm deleted");
        Ok(rec)
    }
}
