//! `vm set`: spec changes, checked against the VM's state; capabilities
//! change live on a running VM.

use banger_api::size::format_size;
use banger_api::vm::{SetVmRequest, VmRecord, VmState};
use chrono::Utc;

use super::create::{check_disk, check_memory, check_vcpus};
use crate::capability;
use crate::core::Core;
use crate::error::CoreError;
use crate::lifecycle::{VmAction, check_action};

impl Core {
    pub(crate) async fn set_vm(
        &self,
        vm: &str,
        changes: SetVmRequest,
    ) -> Result<VmRecord, CoreError> {
        if changes.is_empty() {
            return Err(CoreError::InvalidArgument(
                "nothing to change: pass --vcpus, --memory, --work-disk or --nat".into(),
            ));
        }
        let (mut rec, _lock) = self.lock_vm(vm).await?;
        let before = rec.spec.clone();
        let reconfigure = changes.vcpus.is_some()
            || changes.memory_mib.is_some()
            || changes.work_disk_bytes.is_some();
        if reconfigure {
            check_action(&rec.name, rec.state, VmAction::Reconfigure)?;
        }
        if changes.nat.is_some() {
            check_action(&rec.name, rec.state, VmAction::SetCapability)?;
        }
        if let Some(v) = changes.vcpus {
            rec.spec.vcpus = check_vcpus(v)?;
        }
        if let Some(m) = changes.memory_mib {
            rec.spec.memory_mib = check_memory(m)?;
        }
        if let Some(w) = changes.work_disk_bytes {
            let w = check_disk("work disk", w)?;
            if w < rec.spec.work_disk_bytes {
                return Err(CoreError::InvalidArgument(format!(
                    "work disk of {:?} is {}; it can grow but not shrink (asked for {})",
                    rec.name,
                    format_size(rec.spec.work_disk_bytes),
                    format_size(w)
                )));
            }
            rec.spec.work_disk_bytes = w;
        }
        if let Some(nat) = changes.nat {
            rec.spec.nat = nat;
        }
        // Capabilities change live on a running VM (and only then: a VM
        // that is down gets them at its next start). Applied before the
        // spec is stored, so a failure changes nothing.
        if rec.state == VmState::Running && self.vm_alive(&rec) {
            let tap = self.vm_tap(&rec).await;
            for cap in capability::all() {
                cap.apply_change(self.cap_context(), &before, &rec, &tap)
                    .await?;
            }
            failpoint!("set.capabilities_changed");
        }
        rec.updated_at = Utc::now();
        let to_store = rec.clone();
        self.db(move |s| s.update_vm(&to_store)).await?;
        tracing::info!(vm_id = %rec.id, name = %rec.name, "vm spec updated");
        Ok(rec)
    }
}
