//! Warm starts: one template per machine shape, saved from the first VM
//! of that shape as soon as its agent answers, and restored by every
//! later VM of the shape instead of a boot.
//!
//! A template is a snapshot of kind `template` named `tpl-<key>`. The key
//! hashes everything that shapes the saved machine: the kernel's and the
//! image's content, the agent binary, the VMM's version, the accelerator,
//! vCPUs, memory, disk sizes, the guest network and banger's ssh key. Any
//! change gives a new key, so a stale template is never restored; the
//! sweep removes those no VM still needs.

use std::time::Instant;

use banger_api::asset::{ImageRecord, KernelRecord};
use banger_api::doctor::{CheckId, DoctorReport};
use banger_api::snapshot::{
    SnapshotKind, SnapshotMachine, SnapshotRecord, WarmImageRequest, WarmImageResponse,
};
use banger_api::vm::{CreateVmRequest, VmRecord, VmSpec, VmmKind};
use banger_store::Store;
use banger_vmm::Vmm;
use sha2::{Digest, Sha256};

use crate::agent::{AgentChannel, Detached};
use crate::core::Core;
use crate::error::{AgentError, CoreError, HostError, InternalError};
use crate::progress::ProgressSink;

/// Bumped when what a template holds changes meaning (the guest files a
/// boot writes, the point it is saved at, the machine's devices: 2 has no
/// 8259 PIC).
const TEMPLATE_FORMAT: &str = "2";
const PREFIX: &str = "tpl-";

/// What a template of one shape depends on; [`TemplateInputs::key`] is
/// its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemplateInputs {
    pub vmm: VmmKind,
    /// The VMM's own version line, as the doctor read it.
    pub vmm_version: String,
    pub accel: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub root_disk_bytes: u64,
    pub work_disk_bytes: u64,
    /// vmlinux and initrd (which holds banger-init) digests, and the
    /// kernel's extra command line.
    pub kernel: String,
    /// The image's digest, its work seed's and its init.
    pub image: String,
    pub agent_sha256: String,
    /// Bridge address and prefix: in the saved guest's routes.
    pub network: String,
    /// banger's ssh public key, written into the saved root disk.
    pub authorized_key: String,
}

impl TemplateInputs {
    /// `tpl-` and 16 hex digits of the inputs' digest.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            TEMPLATE_FORMAT,
            env!("CARGO_PKG_VERSION"),
            self.vmm.as_str(),
            &self.vmm_version,
            &self.accel,
            &self.vcpus.to_string(),
            &self.memory_mib.to_string(),
            &self.root_disk_bytes.to_string(),
            &self.work_disk_bytes.to_string(),
            &self.kernel,
            &self.image,
            &self.agent_sha256,
            &self.network,
            &self.authorized_key,
        ] {
            // Length-prefixed: no two input lists hash alike.
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        format!("{PREFIX}{}", hex::encode(&h.finalize()[..8]))
    }
}

pub(crate) fn kernel_part(k: &KernelRecord) -> String {
    format!(
        "{} {} {}",
        k.vmlinux.sha256,
        k.initrd.as_ref().map_or("-", |i| i.sha256.as_str()),
        k.cmdline
    )
}

pub(crate) fn image_part(i: &ImageRecord) -> String {
    format!(
        "{} {} {}",
        i.digest,
        i.work_seed.as_ref().map_or("-", |w| w.sha256.as_str()),
        i.init
    )
}

/// The version line the doctor read for `vmm`.
fn vmm_version(host: &DoctorReport, vmm: VmmKind) -> String {
    let id = match vmm {
        VmmKind::Qemu => CheckId::Qemu,
        VmmKind::Firecracker => CheckId::Firecracker,
    };
    host.check(id)
        .map(|c| c.detail.lines().next().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

/// Templates (each with its shape's current key, `None` when that can
/// no longer be computed) that no longer match it, and that no VM still
/// restores from: the ones the sweep removes.
pub(crate) fn stale<'a>(
    templates: &'a [(SnapshotRecord, Option<String>)],
    restoring: &[String],
) -> Vec<&'a SnapshotRecord> {
    templates
        .iter()
        .filter(|(t, _)| t.kind == SnapshotKind::Template)
        .filter(|(t, key)| key.as_deref() != Some(t.name.as_str()))
        .filter(|(t, _)| !restoring.contains(&t.id))
        .map(|(t, _)| t)
        .collect()
}

/// The inputs every shape's template shares, read once per start or
/// sweep.
pub(crate) struct SharedInputs {
    host: DoctorReport,
    accel: String,
    agent_sha256: String,
    network: String,
    authorized_key: String,
}

impl SharedInputs {
    fn with_shape(
        &self,
        spec: &TemplateShape<'_>,
        kernel: &KernelRecord,
        image: &ImageRecord,
    ) -> TemplateInputs {
        TemplateInputs {
            vmm: spec.vmm,
            vmm_version: vmm_version(&self.host, spec.vmm),
            accel: self.accel.clone(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            root_disk_bytes: spec.root_disk_bytes,
            work_disk_bytes: spec.work_disk_bytes,
            kernel: kernel_part(kernel),
            image: image_part(image),
            agent_sha256: self.agent_sha256.clone(),
            network: self.network.clone(),
            authorized_key: self.authorized_key.clone(),
        }
    }
}

impl Core {
    /// The inputs of `spec`'s template, read now.
    pub(crate) async fn template_inputs(
        &self,
        spec: &TemplateShape<'_>,
    ) -> Result<TemplateInputs, CoreError> {
        let shared = self.shared_template_inputs().await?;
        self.shape_inputs(&shared, spec).await
    }

    async fn shape_inputs(
        &self,
        shared: &SharedInputs,
        spec: &TemplateShape<'_>,
    ) -> Result<TemplateInputs, CoreError> {
        let kernel: KernelRecord = self.find_asset(spec.kernel).await?;
        let image: ImageRecord = self.find_asset(spec.image).await?;
        Ok(shared.with_shape(spec, &kernel, &image))
    }

    async fn shared_template_inputs(&self) -> Result<SharedInputs, CoreError> {
        let host = self.host_report().await?;
        let accel = host
            .default_vmm
            .map_or_else(|| "none".to_owned(), |c| format!("{:?}", c.accel));
        let agent_sha256 = self.agent_digest().await?;
        let (_, authorized_key) = self.ssh_keys().ensure().await?;
        let net = &self.config().network;
        Ok(SharedInputs {
            host,
            accel,
            agent_sha256,
            network: format!("{}/{}", net.bridge_ip, net.prefix_len),
            authorized_key,
        })
    }

    /// The agent binary's sha256, hashed again only when its size or
    /// mtime changed (every warm start asks).
    async fn agent_digest(&self) -> Result<String, CoreError> {
        let agent_bin = self.config().guest.agent.clone();
        let memo = self.agent_digest_memo().clone();
        tokio::task::spawn_blocking(move || {
            let stamp = banger_assets::files::FileStamp::of(&agent_bin)
                .map_err(InternalError::io("reading the agent binary", &agent_bin))?;
            let mut memo = memo
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((s, digest)) = memo.as_ref()
                && *s == stamp
            {
                return Ok(digest.clone());
            }
            let (digest, _) = banger_assets::files::hash_file(&agent_bin)
                .map_err(InternalError::io("reading the agent binary", &agent_bin))?;
            *memo = Some((stamp, digest.clone()));
            Ok::<_, CoreError>(digest)
        })
        .await
        .map_err(|source| InternalError::Task {
            what: "hashing the agent binary",
            source,
        })?
    }

    /// The template `key` names, if it was made.
    pub(crate) async fn find_template(
        &self,
        key: &str,
    ) -> Result<Option<SnapshotRecord>, CoreError> {
        let k = key.to_owned();
        let found = self.db(move |s| s.find_snapshot(&k)).await?;
        Ok(found.filter(|s| s.kind == SnapshotKind::Template))
    }

    /// Saves `vm` (booted, agent answering, its start lock held) as the
    /// template `key`, then lets it run on. A VM whose devices cannot be
    /// saved makes none: it simply ran cold.
    pub(crate) async fn save_template(
        &self,
        vm: &VmRecord,
        vmm: &dyn Vmm,
        key: &str,
        progress: &ProgressSink,
    ) -> Result<SnapshotRecord, CoreError> {
        let socket = super::savable(vmm, vm)?;
        progress.stage(
            "template",
            format!("saving {} as template {key} for warm starts", vm.name),
        );
        let started = Instant::now();
        self.detach_agent(vm).await?;
        vmm.pause(&socket).await.map_err(HostError::from)?;
        let saved = self
            .capture(
                vm,
                vmm,
                &socket,
                key,
                SnapshotKind::Template,
                started,
                progress,
            )
            .await;
        let resumed = vmm.resume(&socket).await.map_err(HostError::from);
        let snap = saved?;
        resumed?;
        tracing::info!(vm_id = %vm.id, template = %snap.name, size = snap.size_bytes, save_ms = snap.save_ms, "template saved");
        if let Err(e) = self.sweep_templates().await {
            tracing::warn!(error = %e, "removing stale templates");
        }
        Ok(snap)
    }

    /// Saves a template with no host on the agent's serial channel, the
    /// VMM having seen it leave: every restore then starts from "no host
    /// yet", and QEMU has nothing of an old connection (a half-written
    /// buffer, its port throttled on a socket that is gone) to carry
    /// into a VM whose host is someone else. The next session connects
    /// again.
    async fn detach_agent(&self, vm: &VmRecord) -> Result<(), CoreError> {
        let Some(AgentChannel::Serial(path)) = AgentChannel::of(&vm.runtime) else {
            return Ok(());
        };
        match self.deps().agent.detach(path).await {
            Detached::NoCarrier | Detached::Closed => Ok(()),
            Detached::Busy { sessions } => Err(CoreError::Agent {
                vm: vm.name.clone(),
                source: AgentError::ChannelBusy { sessions },
            }),
            Detached::TimedOut { secs } => Err(CoreError::Agent {
                vm: vm.name.clone(),
                source: AgentError::ChannelStuck { secs },
            }),
        }
    }

    /// `image warm`: the template of `image` in one shape, made by
    /// booting a VM of it that is removed afterwards; found when made
    /// before.
    pub(crate) async fn warm_image(
        &self,
        image: &str,
        req: WarmImageRequest,
        progress: &ProgressSink,
    ) -> Result<WarmImageResponse, CoreError> {
        let create = CreateVmRequest {
            image: Some(image.to_owned()),
            kernel: req.kernel,
            vcpus: req.vcpus,
            memory_mib: req.memory_mib,
            root_disk_bytes: req.root_disk_bytes,
            work_disk_bytes: req.work_disk_bytes,
            vmm: req.vmm,
            // This call saves the template itself, to report why if it can't.
            cold: true,
            ..CreateVmRequest::default()
        };
        let vm = self.create_vm(create, progress).await?;
        let made = self.warm_with(&vm, progress).await;
        if let Err(e) = self.discard(&vm).await {
            tracing::warn!(vm = %vm.name, error = %e, "removing the vm a template was made with");
        }
        made
    }

    async fn warm_with(
        &self,
        vm: &VmRecord,
        progress: &ProgressSink,
    ) -> Result<WarmImageResponse, CoreError> {
        let key = self
            .template_inputs(&TemplateShape::of_spec(&vm.spec))
            .await?
            .key();
        if let Some(template) = self.find_template(&key).await? {
            return Ok(WarmImageResponse {
                template,
                made: false,
            });
        }
        self.start_vm(&vm.id, progress).await?;
        let (running, _lock) = self.lock_vm(&vm.id).await?;
        let vmm = self.vmm_for(running.spec.vmm)?;
        let template = self.save_template(&running, vmm, &key, progress).await?;
        Ok(WarmImageResponse {
            template,
            made: true,
        })
    }

    /// Removes templates whose inputs changed (kernel, image, agent,
    /// VMM, ...) once no VM restores from them.
    pub(crate) async fn sweep_templates(&self) -> Result<(), CoreError> {
        let templates: Vec<SnapshotRecord> = self
            .list_snapshots()
            .await?
            .into_iter()
            .filter(|s| s.kind == SnapshotKind::Template)
            .collect();
        if templates.is_empty() {
            return Ok(());
        }
        // Inputs that cannot be read (an agent binary gone, a kernel or
        // image removed) make the templates needing them stale.
        let shared = self.shared_template_inputs().await.ok();
        let mut keyed = Vec::with_capacity(templates.len());
        for t in templates {
            let shape = TemplateShape::of_machine(&t.machine);
            let key = match &shared {
                Some(shared) => self
                    .shape_inputs(shared, &shape)
                    .await
                    .ok()
                    .map(|i| i.key()),
                None => None,
            };
            keyed.push((t, key));
        }
        let restoring: Vec<String> = self
            .db(Store::list_vms)
            .await?
            .into_iter()
            .filter_map(|v| v.runtime.restore_from)
            .collect();
        for t in stale(&keyed, &restoring) {
            tracing::info!(template = %t.name, "removing a template its inputs no longer match");
            self.remove_snapshot(&t.id).await?;
        }
        Ok(())
    }
}

/// The shape a template is made for, borrowed from a VM's spec or a
/// snapshot's machine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TemplateShape<'a> {
    pub vmm: VmmKind,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub root_disk_bytes: u64,
    pub work_disk_bytes: u64,
    pub kernel: &'a str,
    pub image: &'a str,
}

impl<'a> TemplateShape<'a> {
    pub fn of_spec(s: &'a VmSpec) -> Self {
        Self {
            vmm: s.vmm,
            vcpus: s.vcpus,
            memory_mib: s.memory_mib,
            root_disk_bytes: s.root_disk_bytes,
            work_disk_bytes: s.work_disk_bytes,
            kernel: &s.kernel,
            image: &s.image,
        }
    }

    pub fn of_machine(m: &'a SnapshotMachine) -> Self {
        Self {
            vmm: m.vmm,
            vcpus: m.vcpus,
            memory_mib: m.memory_mib,
            root_disk_bytes: m.root_disk_bytes,
            work_disk_bytes: m.work_disk_bytes,
            kernel: &m.kernel,
            image: &m.image,
        }
    }
}

#[cfg(test)]
mod tests;
