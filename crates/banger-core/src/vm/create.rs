//! `vm create`: validate, pick the VMM, make sure the assets exist, and
//! record the VM under a name that is free.

use banger_api::doctor::CheckId;
use banger_api::name::validate_name;
use banger_api::size::format_size;
use banger_api::vm::{CreateVmRequest, VmRecord, VmRuntime, VmSpec, VmState, VmmKind};
use chrono::Utc;

use crate::core::Core;
use crate::error::{CoreError, InternalError};
use crate::ids::new_id;
use crate::names;
use crate::progress::ProgressSink;

/// Bounds on what a VM may ask for. Generous, but they turn typos such as
/// `--memory 10000000` into a clear error instead of a failed boot.
pub const MAX_VCPUS: u32 = 64;
pub const MIN_MEMORY_MIB: u32 = 128;
pub const MAX_MEMORY_MIB: u32 = 1 << 20;
pub const MIN_DISK_BYTES: u64 = 64 << 20;
pub const MAX_DISK_BYTES: u64 = 16 << 40;

/// A create request's numbers, with the defaults filled in and bounded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checked {
    vcpus: u32,
    memory_mib: u32,
    root_disk_bytes: u64,
    work_disk_bytes: u64,
}

impl Core {
    /// What can be said of a create request without looking at the host
    /// or the store: the API answers these before it starts a stream.
    pub(crate) fn check_create(&self, req: &CreateVmRequest) -> Result<Checked, CoreError> {
        if let Some(name) = &req.name {
            validate_name(name).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        }
        for (what, name) in [("image", &req.image), ("kernel", &req.kernel)] {
            asset_name(what, name.clone())?;
        }
        if let Some(lease) = &req.lease {
            self.check_lease(lease)?;
        }
        let d = &self.config().defaults;
        Ok(Checked {
            vcpus: check_vcpus(req.vcpus.unwrap_or(d.vcpus))?,
            memory_mib: check_memory(req.memory_mib.unwrap_or(d.memory_mib))?,
            root_disk_bytes: check_disk(
                "root disk",
                req.root_disk_bytes.unwrap_or(d.root_disk_bytes),
            )?,
            work_disk_bytes: check_disk(
                "work disk",
                req.work_disk_bytes.unwrap_or(d.work_disk_bytes),
            )?,
        })
    }

    pub(crate) async fn create_vm(
        &self,
        req: CreateVmRequest,
        progress: &ProgressSink,
    ) -> Result<VmRecord, CoreError> {
        progress.stage("validate", "checking the request");
        let checked = self.check_create(&req)?;
        if let Some(snap) = req.snapshot.clone() {
            return self.create_from_snapshot(req, &snap, progress).await;
        }
        let Checked {
            vcpus,
            memory_mib,
            root_disk_bytes,
            work_disk_bytes,
        } = checked;
        let image = asset_name("image", req.image)?;
        let kernel = asset_name("kernel", req.kernel)?;
        let vmm = self.choose_vmm(req.vmm).await?;
        self.ensure_assets(&kernel, &image, progress).await?;

        let now = Utc::now();
        let vm = VmRecord {
            id: new_id().into(),
            name: req.name.clone().unwrap_or_default(),
            state: VmState::Created,
            spec: VmSpec {
                vcpus,
                memory_mib,
                root_disk_bytes,
                work_disk_bytes,
                image,
                kernel,
                nat: req.nat,
                vmm,
            },
            runtime: VmRuntime {
                warm_start: !req.cold && self.config().defaults.warm_start,
                leased: req.lease.is_some(),
                ..VmRuntime::default()
            },
            created_at: now,
            updated_at: now,
        };
        self.insert_named(vm, req.name.is_none(), progress).await
    }

    /// A VM whose first start restores `snap`: its machine is the
    /// snapshot's, so the request may only repeat it.
    async fn create_from_snapshot(
        &self,
        req: CreateVmRequest,
        snap: &str,
        progress: &ProgressSink,
    ) -> Result<VmRecord, CoreError> {
        if let Some(name) = &req.name {
            validate_name(name).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        }
        let snap = self.find_snapshot(snap).await?;
        let m = &snap.machine;
        let clash = |what: &str, asked: String, has: String| {
            CoreError::InvalidArgument(format!(
                "snapshot {:?} is of a vm with {what} {has}; a vm made from it has the same (asked for {asked}): leave --{what} out",
                snap.name
            ))
        };
        let same = |what: &str, asked: Option<String>, has: String| match asked {
            Some(a) if a != has => Err(clash(what, a, has)),
            _ => Ok(()),
        };
        same(
            "vcpus",
            req.vcpus.map(|v| v.to_string()),
            m.vcpus.to_string(),
        )?;
        same(
            "memory",
            req.memory_mib.map(|v| format!("{v} MiB")),
            format!("{} MiB", m.memory_mib),
        )?;
        same("image", req.image.clone(), m.image.clone())?;
        same("kernel", req.kernel.clone(), m.kernel.clone())?;
        same("vmm", req.vmm.map(|v| v.to_string()), m.vmm.to_string())?;
        same(
            "root-disk",
            req.root_disk_bytes.map(format_size),
            format_size(m.root_disk_bytes),
        )?;
        same(
            "work-disk",
            req.work_disk_bytes.map(format_size),
            format_size(m.work_disk_bytes),
        )?;
        let now = Utc::now();
        let vm = VmRecord {
            id: new_id().into(),
            name: req.name.clone().unwrap_or_default(),
            state: VmState::Created,
            spec: VmSpec {
                vcpus: m.vcpus,
                memory_mib: m.memory_mib,
                root_disk_bytes: m.root_disk_bytes,
                work_disk_bytes: m.work_disk_bytes,
                image: m.image.clone(),
                kernel: m.kernel.clone(),
                nat: req.nat,
                vmm: m.vmm,
            },
            runtime: VmRuntime {
                restore_from: Some(snap.id.clone()),
                leased: req.lease.is_some(),
                ..VmRuntime::default()
            },
            created_at: now,
            updated_at: now,
        };
        self.insert_named(vm, req.name.is_none(), progress).await
    }

    /// Records `vm`, generating its name when `generate` (else its name
    /// is the user's, and a clash is the user's error).
    async fn insert_named(
        &self,
        mut vm: VmRecord,
        generate: bool,
        progress: &ProgressSink,
    ) -> Result<VmRecord, CoreError> {
        failpoint!("create.validated");
        progress.stage("persist", "recording the vm");
        let given = (!generate).then(|| vm.name.clone());
        // A generated name can lose a race with a concurrent create: pick
        // another.
        for _ in 0..8 {
            vm.name = match &given {
                Some(n) => n.clone(),
                None => {
                    self.db(|s| names::generate_unique(&mut rand::rng(), |n| s.vm_name_exists(n)))
                        .await?
                }
            };
            let rec = vm.clone();
            match self.db(move |s| s.insert_vm(&rec)).await {
                Err(CoreError::NameTaken(_)) if generate => continue,
                Err(e) => return Err(e),
                Ok(()) => {
                    failpoint!("create.recorded");
                    tracing::info!(vm_id = %vm.id, name = %vm.name, vmm = %vm.spec.vmm, "vm created");
                    return Ok(vm);
                }
            }
        }
        Err(InternalError::NoFreeName.into())
    }

    async fn choose_vmm(&self, requested: Option<VmmKind>) -> Result<VmmKind, CoreError> {
        let host = self.host_report().await?;
        match requested {
            None => host.default_vmm.map(|c| c.vmm).ok_or_else(|| {
                CoreError::Unavailable(
                    "no usable VMM on this host: install QEMU (apt-get install qemu-system-x86) or Firecracker; `banger doctor` shows what is missing".into(),
                )
            }),
            Some(kind) => {
                let id = match kind {
                    VmmKind::Firecracker => CheckId::Firecracker,
                    VmmKind::Qemu => CheckId::Qemu,
                };
                if kind == VmmKind::Firecracker && !host.is_ok(CheckId::HardwareKvm) {
                    // Firecracker has no software fallback: without VT-x/AMD-V
                    // its guests crawl and then die in early boot.
                    Err(CoreError::Unavailable(
                        "--vmm firecracker needs hardware KVM, which this host lacks (`banger doctor`: hardware_kvm); use --vmm qemu, which falls back to TCG".into(),
                    ))
                } else if host.is_ok(id) {
                    Ok(kind)
                } else {
                    let detail = host
                        .check(id)
                        .map_or_else(|| "the doctor ran no check for it".to_owned(), |c| c.detail.clone());
                    Err(CoreError::Unavailable(format!(
                        "--vmm {kind} is not usable here ({detail}); `banger doctor` says how to fix it"
                    )))
                }
            }
        }
    }
}

pub(super) fn check_vcpus(v: u32) -> Result<u32, CoreError> {
    if (1..=MAX_VCPUS).contains(&v) {
        Ok(v)
    } else {
        Err(CoreError::InvalidArgument(format!(
            "vcpus must be between 1 and {MAX_VCPUS}, got {v}"
        )))
    }
}

pub(super) fn check_memory(m: u32) -> Result<u32, CoreError> {
    if (MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&m) {
        Ok(m)
    } else {
        Err(CoreError::InvalidArgument(format!(
            "memory must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB, got {m} MiB"
        )))
    }
}

pub(super) fn check_disk(what: &str, b: u64) -> Result<u64, CoreError> {
    if (MIN_DISK_BYTES..=MAX_DISK_BYTES).contains(&b) {
        Ok(b)
    } else {
        Err(CoreError::InvalidArgument(format!(
            "{what} size must be between {} and {}, got {}",
            format_size(MIN_DISK_BYTES),
            format_size(MAX_DISK_BYTES),
            format_size(b)
        )))
    }
}

pub(super) fn asset_name(kind: &str, name: Option<String>) -> Result<String, CoreError> {
    let name = name.unwrap_or_else(|| "default".into());
    validate_name(&name).map_err(|e| CoreError::InvalidArgument(format!("{kind} name: {e}")))?;
    Ok(name)
}
