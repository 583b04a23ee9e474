//! `vm start`: storage, guest files, network, capabilities, a boot slot,
//! the VMM, and the agent's answer; on failure everything is cleaned up
//! and the error says what the console and the host said.

use banger_api::asset::{ImageInit, ImageRecord, KernelRecord};
use banger_api::doctor::Accel;
use banger_api::snapshot::{SnapshotKind, SnapshotRecord};
use banger_api::vm::{VmRecord, VmState, VmmKind};
use banger_host::layout::{TapName, VmFiles};
use banger_vmm::{AgentTransport, LaunchSpec, NetSpec, Vmm, mac_for};

use super::guest_setup::kernel_cmdline;
use super::logs::failure_context;
use crate::agent::{self, ready_timeout};
use crate::cancel::{CancelCause, StartCancel};
use crate::capability;
use crate::core::Core;
use crate::error::{CoreError, HostError, InternalError};
use crate::handles::VmHandles;
use crate::lifecycle::{VmAction, check_action};
use crate::progress::ProgressSink;
use crate::ready::{ReadyListener, ready_socket_path};
use crate::timer::StageTimer;

/// What a warm start does for a VM's first start.
enum WarmPlan {
    /// Its shape's template exists: restore it.
    Restore(Box<SnapshotRecord>),
    /// None yet: boot, and save this key's template once the agent answers.
    Make(String),
}

/// How a start brings the guest up.
pub(super) enum Boot {
    /// From the image's disks and the kernel.
    Cold(Box<ImageRecord>),
    /// From a snapshot's memory and disks.
    Restore(Box<SnapshotRecord>),
}

impl Core {
    pub(crate) async fn start_vm(
        &self,
        name: &str,
        progress: &ProgressSink,
    ) -> Result<VmRecord, CoreError> {
        let found = self.find_vm(name).await?;
        // Registered before the lock: a start queued behind another
        // operation on the VM can be cancelled too.
        let cancel = self.operations.starts.register(&found.id);
        let (mut vm, _lock) = tokio::select! {
            locked = self.lock_vm(&found.id) => locked?,
            by = cancel.cancelled() => return Err(cancelled(&found, by)),
        };
        check_action(&vm.name, vm.state, VmAction::Start)?;
        if self.lease_ended(&vm) {
            // Its removal is queued behind this lock: do not race it.
            return Err(cancelled(&vm, CancelCause::LeaseEnded));
        }
        let kernel: KernelRecord = self.find_asset(&vm.spec.kernel).await?;
        // The template to save once this cold boot's agent answers.
        let mut make_template: Option<String> = None;
        let boot = match vm.runtime.restore_from.clone() {
            // The snapshot's disks and memory, not the image, make this VM.
            Some(snap) => Boot::Restore(Box::new(self.find_snapshot(&snap).await?)),
            // Only while it has no disks of its own: a VM that ever ran
            // (even one adopted mid-first-start) keeps what it wrote.
            None if vm.runtime.warm_start && !self.has_disks(&vm).await => {
                match self.warm_plan(&vm).await {
                    Some(WarmPlan::Restore(t)) => {
                        // Pinned: no sweep removes it while this VM needs it.
                        vm.runtime.restore_from = Some(t.id.clone());
                        Boot::Restore(t)
                    }
                    Some(WarmPlan::Make(key)) => {
                        make_template = Some(key);
                        Boot::Cold(Box::new(self.find_asset(&vm.spec.image).await?))
                    }
                    None => Boot::Cold(Box::new(self.find_asset(&vm.spec.image).await?)),
                }
            }
            None => Boot::Cold(Box::new(self.find_asset(&vm.spec.image).await?)),
        };
        if let Boot::Cold(image) = &boot
            && image.init == ImageInit::Banger
            && kernel.initrd.is_none()
        {
            // Without banger's initramfs nothing would be PID 1.
            return Err(CoreError::InvalidArgument(format!(
                "image {:?} has no init of its own, and kernel {:?} boots without banger's initramfs, which would be its init; use a kernel from `banger kernel add --from-debian` (or the default kernel)",
                image.name, kernel.name
            )));
        }
        let kernel_files = std::iter::once(kernel.vmlinux.clone()).chain(kernel.initrd.clone());
        self.verify_files(kernel_files.collect()).await?;
        let vmm = self.vmm_for(vm.spec.vmm)?;
        let paths = self.vm_files(&vm.id);
        vm.runtime.last_error = None;
        vm.runtime.vm_dir = Some(paths.dir.clone());
        vm.runtime.api_socket = Some(paths.socket.clone());
        match vmm.agent_transport() {
            AgentTransport::Vsock => {
                vm.runtime.vsock_path = Some(paths.vsock.clone());
                vm.runtime.vsock_cid = Some(banger_vmm::GUEST_CID);
                vm.runtime.agent_socket = None;
            }
            AgentTransport::Serial => {
                vm.runtime.agent_socket = Some(paths.agent.clone());
                vm.runtime.vsock_path = None;
                vm.runtime.vsock_cid = None;
            }
        }
        vm.runtime.console_log = Some(paths.console.clone());
        vm.runtime.root_disk_path = Some(paths.root_disk.clone());
        vm.runtime.work_disk_path = Some(paths.work_disk.clone());
        self.transition(&mut vm, VmState::Starting).await?;
        failpoint!("start.recorded_starting");
        progress.stage("starting", format!("{} on {}", vm.name, vm.spec.vmm));

        let mut boot = boot;
        let mut outcome = self
            .bring_up(
                &mut vm,
                vmm,
                &kernel,
                &boot,
                make_template.as_deref(),
                &paths,
                (progress, &cancel),
            )
            .await;
        if let (Err(cause), Boot::Restore(t)) = (&outcome, &boot)
            && t.kind == SnapshotKind::Template
            && !matches!(cause, CoreError::Cancelled { .. })
        {
            // A warm start that failed still owes the user a VM: boot it.
            tracing::warn!(vm_id = %vm.id, template = %t.name, error = %cause, "warm start failed; removing the template and booting cold");
            let (template, key) = (t.id.clone(), t.name.clone());
            // Its disks go too: they are the template's, mid-run.
            match self.cleanup(&mut vm, false).await {
                Ok(()) => {
                    vm.runtime.restore_from = None;
                    self.save(&mut vm).await?;
                    if let Err(e) = self.remove_snapshot(&template).await {
                        tracing::warn!(template = %template, error = %e, "removing a template that failed to restore");
                    }
                    boot = Boot::Cold(Box::new(self.find_asset(&vm.spec.image).await?));
                    progress.stage("starting", format!("{} on {}, cold", vm.name, vm.spec.vmm));
                    // And saves a sound template in its place.
                    outcome = self
                        .bring_up(
                            &mut vm,
                            vmm,
                            &kernel,
                            &boot,
                            Some(&key),
                            &paths,
                            (progress, &cancel),
                        )
                        .await;
                }
                Err(e) => {
                    tracing::warn!(vm_id = %vm.id, error = %e, "cleaning up a failed warm start");
                }
            }
        }
        match outcome {
            Ok(()) => {
                // Restored once: later starts boot its own disks.
                vm.runtime.restore_from = None;
                vm.runtime.warm_start = false;
                self.transition(&mut vm, VmState::Running).await?;
                failpoint!("start.recorded_running");
                tracing::info!(vm_id = %vm.id, name = %vm.name, "vm running");
                self.note_booted_on(&kernel, vm.spec.vmm).await;
                self.rebuild_dns().await;
                Ok(vm)
            }
            Err(cause @ CoreError::Cancelled { .. }) => {
                // Asked for: the VM ends stopped, as a kill would leave it,
                // unless its cleanup failed (then `error`, for a delete to
                // retry).
                let cleanup = self.cleanup(&mut vm, true).await;
                let to = match &cleanup {
                    Ok(()) => VmState::Stopped,
                    Err(_) => VmState::Error,
                };
                vm.runtime.last_error = cleanup
                    .as_ref()
                    .err()
                    .map(|e| format!("{cause}; cleanup: {e}"));
                if let Err(e) = self.transition(&mut vm, to).await {
                    tracing::warn!(vm_id = %vm.id, error = %e, "recording the cancelled start");
                }
                self.rebuild_dns().await;
                tracing::info!(vm_id = %vm.id, error = %cause, "start cancelled");
                Err(cause)
            }
            Err(cause) => {
                let cleanup = self.cleanup(&mut vm, true).await.err().map(Box::new);
                let (console, dir) = (paths.console.clone(), paths.dir.clone());
                // Reads the guest's logs: off the async workers.
                let context = tokio::task::spawn_blocking(move || failure_context(&console, &dir))
                    .await
                    .unwrap_or_else(|e| format!("\n(no console excerpt: {e})"));
                let err = CoreError::StartFailed {
                    vm: vm.name.clone(),
                    cause: Box::new(cause),
                    cleanup,
                    context,
                };
                let msg = start_failure_message(&err);
                vm.runtime.last_error = Some(msg.clone());
                if let Err(e) = self.transition(&mut vm, VmState::Error).await {
                    tracing::warn!(vm_id = %vm.id, error = %e, "recording the failed start");
                }
                tracing::warn!(vm_id = %vm.id, error = %msg, "start failed");
                Err(err)
            }
        }
    }
    #[allow(clippy::too_many_arguments)]
    async fn bring_up(
        &self,
        vm: &mut VmRecord,
        vmm: &dyn Vmm,
        kernel: &KernelRecord,
        boot: &Boot,
        make_template: Option<&str>,
        paths: &VmFiles,
        (progress, cancel): (&ProgressSink, &StartCancel),
    ) -> Result<(), CoreError> {
        let mut timer = StageTimer::new(&vm.id);
        let ip = self.allocate_ip(vm).await?;
        failpoint!("start.address_allocated");
        match boot {
            Boot::Cold(image) => {
                self.prepare_disks(vm, paths, image, progress).await?;
                cancel.check().map_err(|by| cancelled(vm, by))?;
                failpoint!("start.disks_made");
                timer.lap("storage");
                self.write_guest_config(vm, ip, paths, progress).await?;
                failpoint!("start.guest_config_written");
                timer.lap("guest-config");
            }
            Boot::Restore(snap) => {
                self.restore_disks(snap, paths, progress).await?;
                failpoint!("restore.disks_restored");
                timer.lap("storage");
            }
        }
        let net = &self.config().network;

        progress.stage(
            "network",
            format!("tap on {}", self.config().network.bridge),
        );
        // Serialised: concurrent starts must not race to create the bridge.
        let bridge_guard = self.net_lock().lock().await;
        let bridge = self
            .deps()
            .net
            .ensure_bridge(&net.bridge, net.bridge_ip, net.prefix_len)
            .await
            .map_err(HostError::from);
        drop(bridge_guard);
        bridge?;
        failpoint!("start.bridge_up");
        let tap = TapName::for_vm(&vm.id).to_string();
        let mut handles = VmHandles {
            tap: Some(tap.clone()),
            ..VmHandles::default()
        };
        self.record_handles(vm, handles.clone()).await?;
        failpoint!("start.tap_recorded");
        self.deps()
            .net
            .create_tap(&tap, &net.bridge, vmm.tap_owner())
            .await
            .map_err(HostError::from)?;
        failpoint!("start.tap_created");
        for cap in capability::all() {
            cap.start(self.cap_context(), vm, &tap).await?;
        }
        timer.lap("network");
        failpoint!("start.capabilities_on");

        // QEMU gets the tap as a descriptor (from the helper when bangerd is
        // unprivileged); Firecracker opens it by name as the jail's owner.
        let tap_fd = if vm.spec.vmm == VmmKind::Qemu {
            self.deps()
                .net
                .open_tap(&tap)
                .await
                .map_err(HostError::from)?
        } else {
            None
        };
        let socket_dir = self.layout().runtime_dir().join("vms");
        tokio::fs::create_dir_all(&socket_dir)
            .await
            .map_err(InternalError::io("creating", socket_dir))?;
        let host = self.host_report().await?;
        let accel = host.default_vmm.map_or(Accel::Tcg, |c| c.accel);
        let cmdline = match boot {
            Boot::Cold(image) => {
                kernel_cmdline(kernel, image.init, &vm.name, ip, &self.config().network)
            }
            // The machine restored is the one that booted with this.
            Boot::Restore(snap) => snap.machine.cmdline.clone(),
        };
        vm.runtime.boot_cmdline = Some(cmdline.clone());
        let spec = LaunchSpec {
            vm_id: vm.id.to_string(),
            vcpus: vm.spec.vcpus,
            memory_mib: vm.spec.memory_mib,
            kernel: kernel.vmlinux.path.clone().into(),
            initrd: kernel.initrd.as_ref().map(|i| i.path.clone().into()),
            cmdline,
            disks: vec![paths.root_disk.clone(), paths.work_disk.clone()],
            net: Some(NetSpec {
                tap,
                mac: mac_for(&vm.id),
                fd: tap_fd.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
            }),
            console_log: paths.console.clone(),
            control_socket: paths.socket.clone(),
            pid_file: paths.pid_file.clone(),
            accel,
            vsock: vm.runtime.vsock_path.clone(),
            agent_serial: vm.runtime.agent_socket.clone(),
        };
        if let Some(root) = vmm.jail_root(&vm.id) {
            // Write-ahead, like the tap: a crash mid-launch leaves cleanup
            // the jail to remove.
            handles.jail_root = Some(root.clone());
            self.record_handles(vm, handles.clone()).await?;
        }
        // Held until the agent answers: the readiness bound below counts
        // from the launch, never from the time spent queued here. Boots
        // only: the queue keeps a crowded host from missing boot
        // deadlines, while a restore's agent is up already and its cost
        // is loading memory (measured: a fork into 4 waited 2-4 s here).
        let _slot = match boot {
            Boot::Cold(_) => {
                let slot = tokio::select! {
                    slot = self.boot_admission(&host).acquire(progress) => slot,
                    by = cancel.cancelled() => return Err(cancelled(vm, by)),
                };
                timer.lap("boot-queue");
                Some(slot)
            }
            Boot::Restore(_) => None,
        };
        // Bound before launch: the agent's call cannot come too early.
        let ready = if vmm.ready_call() && spec.vsock.is_some() && matches!(boot, Boot::Cold(_)) {
            Some(ReadyListener::bind(ready_socket_path(&paths.vsock)).map_err(HostError::from)?)
        } else {
            None
        };
        let pid = match boot {
            Boot::Cold(_) => {
                progress.stage("boot", format!("launching {}", vm.spec.vmm));
                vmm.launch(&spec).await
            }
            Boot::Restore(snap) => {
                let what = if snap.kind == SnapshotKind::Template {
                    format!(
                        "warm start: restoring template {} instead of booting",
                        snap.name
                    )
                } else {
                    format!("restoring from snapshot {} instead of booting", snap.name)
                };
                progress.stage("restore", what);
                vmm.restore(&spec, &super::restore::vmm_state(snap)).await
            }
        }
        .map_err(HostError::from)?;
        handles.pid = Some(pid);
        self.record_handles(vm, handles).await?;
        failpoint!("start.vmm_launched");
        timer.lap(match boot {
            Boot::Cold(_) => "vmm-launch",
            Boot::Restore(_) => "vmm-restore",
        });
        // Running means usable: the guest booted and its agent answers.
        let waited = self
            .await_agent(
                vm,
                vmm,
                Some(pid),
                accel,
                ready.as_ref(),
                (progress, cancel),
            )
            .await;
        timer.lap("agent");
        waited?;
        failpoint!("start.agent_answered");
        if let Boot::Restore(_) = boot {
            self.take_identity(vm, ip, &paths.dir, progress).await?;
            failpoint!("restore.identity_taken");
            timer.lap("identity");
        }
        if let Some(key) = make_template {
            // Never fails the start: without a template the next VM of
            // this shape boots too.
            match self.save_template(vm, vmm, key, progress).await {
                Ok(_) => timer.lap("template"),
                Err(e) => {
                    tracing::warn!(vm_id = %vm.id, template = %key, error = %e, "no template saved; VMs of this shape boot cold");
                }
            }
        }
        timer.log(match boot {
            Boot::Cold(_) => "cold".to_owned(),
            Boot::Restore(s) if s.kind == SnapshotKind::Template => format!("warm:{}", s.name),
            Boot::Restore(s) => format!("restore:{}", s.name),
        });
        Ok(())
    }
    /// Waits for the agent of `vm`, whose VMM runs as `pid`, within the
    /// start's bound; its VMM's exit (on a pidfd) or a cancel ends the
    /// wait at once.
    pub(super) async fn await_agent(
        &self,
        vm: &VmRecord,
        vmm: &dyn Vmm,
        pid: Option<u32>,
        accel: Accel,
        ready: Option<&ReadyListener>,
        (progress, cancel): (&ProgressSink, &StartCancel),
    ) -> Result<(), CoreError> {
        let timeout = ready_timeout(self.config().guest.ready_timeout_secs, accel);
        let socket = vm.runtime.api_socket.clone().unwrap_or_default();
        let exited = async {
            match pid {
                Some(pid) => vmm.wait_gone(pid, &socket, timeout).await,
                None => std::future::pending().await,
            }
        };
        let alive = || self.vm_alive(vm);
        tokio::select! {
            waited = agent::wait_ready(
                self.deps().agent.as_ref(),
                vm,
                &alive,
                exited,
                timeout,
                progress,
                ready,
            ) => waited,
            by = cancel.cancelled() => Err(cancelled(vm, by)),
        }
    }

    async fn has_disks(&self, vm: &VmRecord) -> bool {
        let files = self.vm_files(&vm.id);
        // An unreadable dir counts as disks present: never overwrite.
        !matches!(tokio::fs::try_exists(&files.root_disk).await, Ok(false))
    }

    /// The warm plan for `vm`'s shape; `None` (a plain cold boot) when
    /// the template's inputs cannot be read, which the log says.
    async fn warm_plan(&self, vm: &VmRecord) -> Option<WarmPlan> {
        let shape = crate::snapshot::TemplateShape::of_spec(&vm.spec);
        let found = match self.template_inputs(&shape).await {
            Ok(inputs) => {
                let key = inputs.key();
                self.find_template(&key).await.map(|t| (key, t))
            }
            Err(e) => Err(e),
        };
        match found {
            Ok((_, Some(t))) => Some(WarmPlan::Restore(Box::new(t))),
            Ok((key, None)) => Some(WarmPlan::Make(key)),
            Err(e) => {
                tracing::warn!(vm_id = %vm.id, error = %e, "no warm start: the template's inputs could not be read; booting cold");
                None
            }
        }
    }

    /// Records on the kernel that it ran on this VMM (once per VMM).
    async fn note_booted_on(&self, kernel: &KernelRecord, vmm: VmmKind) {
        if kernel.booted_on.contains(&vmm) {
            return;
        }
        let mut k = kernel.clone();
        k.booted_on.push(vmm);
        if let Err(e) = self.db(move |s| s.update_asset(&k)).await {
            tracing::warn!(kernel = %kernel.name, error = %e, "recording booted_on");
        }
    }
}

/// A start cut short by `by`.
pub(super) fn cancelled(vm: &VmRecord, by: CancelCause) -> CoreError {
    CoreError::Cancelled {
        what: format!("the start of vm {:?}", vm.name),
        by,
    }
}

/// What `last_error` keeps of a failed start: the cause, the cleanup's
/// errors and the excerpts, without the "vm X failed to start" frame the
/// API error adds.
fn start_failure_message(e: &CoreError) -> String {
    match e {
        CoreError::StartFailed {
            cause,
            cleanup,
            context,
            ..
        } => {
            let mut msg = cause.to_string();
            if let Some(c) = cleanup {
                msg.push_str(&format!("; cleanup: {c}"));
            }
            msg.push_str(context);
            msg
        }
        other => other.to_string(),
    }
}
