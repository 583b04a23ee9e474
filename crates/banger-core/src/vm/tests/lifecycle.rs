//! Start, stop, cleanup, reconcile and NAT against recording fakes.

use std::sync::Arc;

use banger_api::doctor::{Accel, DoctorReport, StorageStrategy, VmmChoice};
use banger_api::vm::CreateVmRequest;
use banger_config::Config;
use banger_host::disk::FakeDisks;
use banger_host::net::FakeNet;
use banger_vmm::FakeVmm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_api::vm::{VmId, VmRecord, VmState, VmmKind};
use banger_host::disk::DiskCall;
use banger_host::disk::GuestEntry;
use banger_host::firewall::{FirewallCall, NatRule};
use banger_host::net::NetCall;
use banger_store::Store;
use banger_vmm::{Vmm, VmmCall};

use banger_api::asset::KernelRecord;
use banger_host::layout::TapName;

use crate::core::Core;
use crate::error::CleanupError;
use crate::guest::{AGENT_PATH, AUTHORIZED_KEYS};
use crate::handles::{TeardownMirror, VmHandles, read_scratch, scratch_path};
use crate::ready::ready_socket_path;

pub(super) fn tap_name(vm_id: &str) -> String {
    TapName::for_vm(vm_id).to_string()
}

async fn mirror(f: &Fixture, vm_id: &str) -> TeardownMirror {
    f.core.read_mirror(vm_id).await.expect("mirror")
}

async fn set_mirror_tap(f: &Fixture, vm_id: &str, tap: &str) {
    let m = TeardownMirror {
        tap: Some(tap.into()),
        ..TeardownMirror::default()
    };
    f.core.write_mirror(vm_id, m).await.expect("mirror");
}

/// A lost cache and scratch file; the mirror in the row remains.
fn forget_handles(f: &Fixture, v: &VmRecord) {
    f.core
        .handles()
        .clear(&v.id, v.runtime.vm_dir.as_deref())
        .expect("forget");
}
use crate::{Command, CoreError, ProgressSink, Reply};

pub(super) struct Fixture {
    pub(super) core: Arc<Core>,
    pub(super) net: Arc<FakeNet>,
    pub(super) disks: Arc<FakeDisks>,
    pub(super) vmm: Arc<FakeVmm>,
    pub(super) dns: Arc<banger_host::dns::FakeDns>,
    pub(super) agent: Arc<crate::agent::FakeAgent>,
    pub(super) firewall: Arc<banger_host::firewall::FakeFirewall>,
    pub(super) procs: Arc<banger_host::procs::FakeProcesses>,
    pub(super) _dir: tempfile::TempDir,
}

pub(super) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let run = dir.path().join("run");
    let agent_bin = dir.path().join("banger-agent");
    std::fs::write(&agent_bin, b"\x7fELF agent").expect("agent");
    let cfg = Config::load_with(|k| match k {
        "BANGER_GUEST_AGENT" => Some(agent_bin.display().to_string()),
        "BANGER_READY_TIMEOUT_SECS" => Some("1".into()),
        "BANGER_CONFIG" => Some("/dev/null".into()),
        "BANGER_STATE_DIR" => Some(state.display().to_string()),
        "BANGER_RUNTIME_DIR" => Some(run.display().to_string()),
        "BANGER_BRIDGE_CIDR" => Some("10.99.0.1/28".into()),
        "BANGER_AUTO_PROVISION" => Some("false".into()),
        _ => None,
    })
    .expect("config");
    let store = Arc::new(Store::open_in_memory().expect("store"));
    crate::testing::seed_real_default_assets(&store, dir.path());
    let fakes = crate::testing::fake_deps();
    let (net, disks, vmm, dns, agent, firewall, procs) = (
        fakes.net,
        fakes.disks,
        fakes.vmm,
        fakes.dns,
        fakes.agent,
        fakes.firewall,
        fakes.procs,
    );
    let core = Core::new(cfg, store, fakes.deps);
    let core = core.for_tests(
        Duration::from_millis(300),
        DoctorReport {
            checks: vec![],
            default_vmm: Some(VmmChoice {
                vmm: VmmKind::Qemu,
                accel: Accel::Tcg,
            }),
            storage: StorageStrategy::SparseCopy,
            disk: None,
        },
    );
    Fixture {
        core: Arc::new(core),
        net,
        disks,
        vmm,
        dns,
        agent,
        firewall,
        procs,
        _dir: dir,
    }
}

pub(super) async fn run(core: &Core, cmd: Command) -> Result<Reply, CoreError> {
    core.execute(cmd, &ProgressSink::discard()).await
}

pub(super) async fn vm(core: &Core, cmd: Command) -> VmRecord {
    match run(core, cmd).await.expect("command") {
        Reply::Vm(v) | Reply::Deleted(v) => v,
        other => panic!("{other:?}"),
    }
}

/// Creates a VM named `name` with the defaults; returns its id.
pub(super) async fn create(f: &Fixture, name: &str) -> VmId {
    vm(
        &f.core,
        Command::VmCreate(CreateVmRequest {
            name: Some(name.into()),
            ..Default::default()
        }),
    )
    .await
    .id
}

pub(super) async fn create_and_start(f: &Fixture, name: &str) -> VmRecord {
    create(f, name).await;
    vm(&f.core, Command::VmStart { vm: name.into() }).await
}

#[tokio::test]
async fn start_records_handles_before_objects_and_configures_the_guest() {
    let f = fixture();
    let v = create_and_start(&f, "web").await;
    assert_eq!(v.state, VmState::Running);
    assert_eq!(
        v.runtime.guest_ip,
        Some(std::net::Ipv4Addr::new(10, 99, 0, 2))
    );
    let tap = tap_name(&v.id);
    assert!(f.net.has(&tap));
    assert_eq!(
        f.net.calls()[0],
        NetCall::EnsureBridge {
            name: "banger0".into(),
            addr: std::net::Ipv4Addr::new(10, 99, 0, 1),
            prefix: 28
        }
    );
    assert!(f.core.vm_alive(&v));
    // Scratch file, cache and mirror agree.
    let dir = v.runtime.vm_dir.clone().expect("dir");
    let scratch = read_scratch(&dir).expect("read").expect("scratch file");
    assert_eq!(scratch.tap.as_deref(), Some(tap.as_str()));
    assert!(scratch.pid.is_some());
    assert_eq!(mirror(&f, &v.id).await.tap.as_deref(), Some(tap.as_str()));
    let written = f.disks.written.lock().expect("lock").clone();
    let hostname = written.iter().find_map(|(_, e)| match e {
        GuestEntry::File { path, contents, .. } if path == "/etc/hostname" => {
            Some(contents.clone())
        }
        _ => None,
    });
    assert_eq!(hostname.as_deref(), Some(b"web\n".as_slice()));
    let unit = written.iter().any(|(_, e)| {
        matches!(e, GuestEntry::File { path, contents, .. } if path.ends_with("banger-net.service") && String::from_utf8_lossy(contents).contains("10.99.0.2/28"))
    });
    assert!(unit, "network unit carries the address");
    // The agent and banger's public key go into the VM's own disk.
    let file = |want: &str| {
        written.iter().find_map(|(disk, e)| match e {
            GuestEntry::File {
                path,
                contents,
                mode,
            } if path == want => Some((disk.clone(), contents.clone(), *mode)),
            _ => None,
        })
    };
    let (disk, agent, mode) = file(AGENT_PATH).expect("agent injected");
    assert_eq!(
        (agent.as_slice(), mode),
        (b"\x7fELF agent".as_slice(), 0o755)
    );
    assert_eq!(
        disk,
        dir.join("root.ext4"),
        "into the VM's disk, not the image"
    );
    let (_, key, _) = file(AUTHORIZED_KEYS).expect("authorized key");
    assert!(String::from_utf8_lossy(&key).starts_with("ssh-ed25519 "));
    assert_eq!(v.runtime.vsock_path, Some(f.core.vm_files(&v.id).vsock));
    // Disks were cloned from the image (root) and its seed (work).
    let calls = f.disks.calls();
    assert!(
        calls
            .iter()
            .any(|c| matches!(c, DiskCall::Clone { src, .. } if src.ends_with("rootfs.ext4"))),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| matches!(c, DiskCall::Clone { src, .. } if src.ends_with("seed.ext4"))),
        "{calls:?}"
    );
    // The kernel now records the VMM it ran on.
    let k: KernelRecord = f.core.find_asset("default").await.expect("kernel");
    assert_eq!(k.booted_on, [VmmKind::Qemu]);
    // Published in DNS while alive.
    assert_eq!(
        f.dns.last().get("web").map(ToString::to_string).as_deref(),
        Some("10.99.0.2")
    );
    // A second start of a running VM is refused.
    let err = run(&f.core, Command::VmStart { vm: "web".into() })
        .await
        .expect_err("running");
    assert!(err.to_string().contains("already running"), "{err}");
}

#[tokio::test]
async fn graceful_stop_keeps_disks_and_releases_host_objects() {
    let f = fixture();
    let v = create_and_start(&f, "db").await;
    let dir = v.runtime.vm_dir.clone().expect("dir");
    let stopped = vm(&f.core, Command::VmStop { vm: "db".into() }).await;
    assert_eq!(stopped.state, VmState::Stopped);
    assert_eq!(
        f.agent.power_offs(),
        [(f.core.vm_files(&v.id).vsock, false)],
        "the agent is asked first"
    );
    assert!(
        !f.vmm
            .vmm_calls()
            .iter()
            .any(|c| matches!(c, VmmCall::Shutdown { .. } | VmmCall::Kill { .. })),
        "the guest powered off by itself: {:?}",
        f.vmm.vmm_calls()
    );
    assert!(!f.net.has(&tap_name(&v.id)));
    assert!(!scratch_path(&dir).exists());
    assert!(mirror(&f, &stopped.id).await.is_empty());
    assert!(
        dir.join("root.ext4").exists() && dir.join("work.ext4").exists(),
        "disks persist"
    );
    assert_eq!(
        stopped.runtime.guest_ip, v.runtime.guest_ip,
        "address kept for the next start"
    );
    assert!(f.dns.last().is_empty(), "a stopped VM is not in DNS");
    // Start again reuses the disks (no new clone).
    let clones_before = f
        .disks
        .calls()
        .iter()
        .filter(|c| matches!(c, DiskCall::Clone { .. }))
        .count();
    vm(&f.core, Command::VmStart { vm: "db".into() }).await;
    let clones_after = f
        .disks
        .calls()
        .iter()
        .filter(|c| matches!(c, DiskCall::Clone { .. }))
        .count();
    assert_eq!(clones_before, clones_after);
}

#[tokio::test]
async fn stop_falls_back_to_kill_when_the_guest_ignores_shutdown() {
    let f = fixture();
    create_and_start(&f, "stubborn").await;
    *f.vmm.ignore_shutdown.lock().expect("lock") = true;
    f.agent.set_ready(false);
    let v = vm(
        &f.core,
        Command::VmStop {
            vm: "stubborn".into(),
        },
    )
    .await;
    assert_eq!(v.state, VmState::Stopped);
    assert!(
        f.vmm
            .vmm_calls()
            .iter()
            .any(|c| matches!(c, VmmCall::Shutdown { .. }))
    );
    assert!(
        f.vmm
            .vmm_calls()
            .iter()
            .any(|c| matches!(c, VmmCall::Kill { .. }))
    );
}

#[tokio::test]
async fn stop_without_an_agent_presses_the_power_button() {
    let f = fixture();
    create_and_start(&f, "quiet").await;
    f.agent.set_ready(false);
    let v = vm(&f.core, Command::VmStop { vm: "quiet".into() }).await;
    assert_eq!(v.state, VmState::Stopped);
    assert!(f.agent.power_offs().is_empty());
    assert!(
        f.vmm
            .vmm_calls()
            .iter()
            .any(|c| matches!(c, VmmCall::Shutdown { .. }))
    );
    assert!(
        !f.vmm
            .vmm_calls()
            .iter()
            .any(|c| matches!(c, VmmCall::Kill { .. }))
    );
}

#[tokio::test]
async fn a_guest_whose_agent_never_answers_is_an_error_and_leaves_nothing() {
    let f = fixture();
    f.agent.set_ready(false);
    create(&f, "mute").await;
    let id = f.core.find_vm("mute").await.expect("find").id;
    std::fs::create_dir_all(f.core.vm_files(&id).dir).expect("dir");
    std::fs::write(
        f.core.vm_files(&id).console,
        "Booting\nKernel panic - not syncing\n",
    )
    .expect("console");
    let err = run(&f.core, Command::VmStart { vm: "mute".into() })
        .await
        .expect_err("not ready");
    let msg = err.to_string();
    assert!(msg.contains("did not answer within 1s"), "{msg}");
    assert!(
        msg.contains("Kernel panic"),
        "console tail in the message: {msg}"
    );
    let v = f.core.find_vm("mute").await.expect("find");
    assert_eq!(v.state, VmState::Error);
    assert!(f.vmm.running.lock().expect("lock").is_empty(), "vmm killed");
    assert!(!f.net.has(&tap_name(&v.id)), "tap removed");
}

/// Plays the guest that calls home once the daemon listens.
fn guest_calls_ready(vsock: PathBuf, line: &'static [u8]) -> tokio::task::JoinHandle<()> {
    use tokio::io::AsyncWriteExt;
    tokio::spawn(async move {
        let path = ready_socket_path(&vsock);
        loop {
            if let Ok(mut s) = tokio::net::UnixStream::connect(&path).await {
                let _ = s.write_all(line).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

#[tokio::test]
async fn a_vmm_with_ready_calls_starts_on_the_agents_call_and_removes_the_socket() {
    let f = fixture();
    *f.vmm.ready_calls.lock().expect("lock") = true;
    let id = create(&f, "caller").await;
    let vsock = f.core.vm_files(&id).vsock;
    // Garbage first (a guest may write anything), then the agent.
    let guest = {
        let vsock = vsock.clone();
        tokio::spawn(async move {
            guest_calls_ready(vsock.clone(), b"\x1b[2J not the agent\n")
                .await
                .expect("junk call");
            guest_calls_ready(vsock, b"banger-agent-ready banger-agent 0.1.0\n")
                .await
                .expect("agent call");
        })
    };
    let v = vm(
        &f.core,
        Command::VmStart {
            vm: "caller".into(),
        },
    )
    .await;
    guest.await.expect("guest");
    assert_eq!(v.state, VmState::Running);
    assert!(
        !ready_socket_path(&vsock).exists(),
        "ready socket removed once ready"
    );
    run(
        &f.core,
        Command::VmKill {
            vm: "caller".into(),
        },
    )
    .await
    .expect("kill");
}

#[tokio::test]
async fn a_ready_call_that_never_comes_fails_the_start_and_says_where_it_waited() {
    let f = fixture();
    *f.vmm.ready_calls.lock().expect("lock") = true;
    let id = create(&f, "silent").await;
    let vsock = f.core.vm_files(&id).vsock;
    let junk = guest_calls_ready(vsock.clone(), b"hello\n");
    let err = run(
        &f.core,
        Command::VmStart {
            vm: "silent".into(),
        },
    )
    .await
    .expect_err("no agent call");
    junk.await.expect("junk call");
    let msg = err.to_string();
    assert!(msg.contains("did not report ready within 1s"), "{msg}");
    assert!(
        msg.contains(&format!("_{}", banger_agent_proto::READY_PORT)),
        "{msg}"
    );
    assert!(msg.contains("a ready call that said \"hello\""), "{msg}");
    assert!(msg.contains("host load"), "{msg}");
    assert_eq!(
        f.core.find_vm("silent").await.expect("find").state,
        VmState::Error
    );
    assert!(!ready_socket_path(&vsock).exists(), "no socket left behind");
    assert!(f.vmm.running.lock().expect("lock").is_empty(), "vmm killed");
}

#[tokio::test]
async fn an_image_without_init_needs_a_kernel_with_bangers_initramfs() {
    let f = fixture();
    let mut image: banger_api::asset::ImageRecord =
        f.core.find_asset("default").await.expect("image");
    image.id = "i-bare".into();
    image.name = "bare".into();
    image.init = banger_api::asset::ImageInit::Banger;
    let rec = image.clone();
    f.core
        .db(move |s| s.insert_asset(&rec))
        .await
        .expect("insert");
    vm(
        &f.core,
        Command::VmCreate(CreateVmRequest {
            name: Some("busy".into()),
            image: Some("bare".into()),
            ..Default::default()
        }),
    )
    .await;
    let err = run(&f.core, Command::VmStart { vm: "busy".into() })
        .await
        .expect_err("the fixture's kernel has no initramfs");
    assert!(matches!(err, CoreError::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("no init of its own"), "{err}");
    assert!(
        f.vmm.vmm_calls().is_empty(),
        "refused before anything was launched"
    );
    assert_eq!(
        f.core.find_vm("busy").await.expect("find").state,
        VmState::Created,
        "a refusal changes nothing"
    );
}

#[tokio::test]
async fn a_vmm_that_dies_before_the_ready_call_ends_the_wait_with_why() {
    let f = fixture();
    *f.vmm.ready_calls.lock().expect("lock") = true;
    *f.vmm.die_after_launch.lock().expect("lock") = true;
    let id = create(&f, "doomed").await;
    let err = run(
        &f.core,
        Command::VmStart {
            vm: "doomed".into(),
        },
    )
    .await
    .expect_err("the vmm died");
    let msg = err.to_string();
    assert!(
        msg.contains("process exited before the guest agent reported ready"),
        "{msg}"
    );
    assert!(!msg.contains("did not report ready within"), "{msg}");
    assert_eq!(
        f.core.find_vm("doomed").await.expect("find").state,
        VmState::Error
    );
    assert!(
        !ready_socket_path(&f.core.vm_files(&id).vsock).exists(),
        "no socket left behind"
    );
}

#[tokio::test]
async fn starts_beyond_the_boot_limit_wait_for_a_slot() {
    let f = fixture();
    let admission = f
        .core
        .boot_admission(&f.core.host_report().await.expect("host"));
    // Under TCG the default is one slot per CPU; hold them all.
    let limit = admission.limit().expect("a limit under TCG");
    let mut held = Vec::new();
    for _ in 0..limit {
        held.push(admission.acquire(&ProgressSink::discard()).await);
    }
    create(&f, "queued").await;
    let (sink, mut rx) = ProgressSink::channel();
    let core = Arc::clone(&f.core);
    let start = tokio::spawn(async move { core.start_vm("queued", &sink).await });
    // It queues behind the held slots without launching anything.
    loop {
        let p = rx.recv().await.expect("progress");
        if format!("{p:?}").contains("waiting for a boot slot (0 ahead") {
            break;
        }
    }
    assert!(
        !f.vmm
            .vmm_calls()
            .iter()
            .any(|c| matches!(c, VmmCall::Launch { .. })),
        "no launch while queued: {:?}",
        f.vmm.vmm_calls()
    );
    drop(held);
    let v = start.await.expect("task").expect("start once admitted");
    assert_eq!(v.state, VmState::Running);
    assert_eq!(admission.load(), (0, 0), "the slot is released once ready");
}

#[tokio::test]
async fn failed_launch_cleans_up_and_marks_error_with_the_reason() {
    let f = fixture();
    create(&f, "bad").await;
    *f.vmm.fail_launch.lock().expect("lock") = Some("qemu: could not open tap".into());
    let err = run(&f.core, Command::VmStart { vm: "bad".into() })
        .await
        .expect_err("fails");
    assert!(err.to_string().contains("could not open tap"), "{err}");
    let v = f.core.find_vm("bad").await.expect("find");
    assert_eq!(v.state, VmState::Error);
    assert!(
        v.runtime
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("could not open tap")
    );
    assert!(!f.net.has(&tap_name(&v.id)), "tap removed by cleanup");
    assert!(mirror(&f, &v.id).await.is_empty());
    // Error allows a retry, which works once the cause is gone.
    *f.vmm.fail_launch.lock().expect("lock") = None;
    assert_eq!(
        vm(&f.core, Command::VmStart { vm: "bad".into() })
            .await
            .state,
        VmState::Running
    );
}

#[tokio::test]
async fn cleanup_runs_every_step_and_joins_errors() {
    let f = fixture();
    let mut v = create_and_start(&f, "leaky").await;
    let tap = tap_name(&v.id);
    f.net.failing.lock().expect("lock").insert(tap.clone());
    let err = f
        .core
        .cleanup(&mut v, true)
        .await
        .expect_err("tap deletion fails");
    let CoreError::Cleanup(errors) = &err else {
        panic!("{err}")
    };
    assert_eq!(errors.0.len(), 1, "{errors:?}");
    assert!(matches!(errors.0[0], CleanupError::Tap(_)), "{errors:?}");
    assert!(errors.0[0].to_string().contains(&tap));
    // The other steps still ran.
    assert!(!f.core.vm_alive(&v));
    assert!(f.core.handles().get(&v.id).is_none());
    assert!(
        f.vmm
            .vmm_calls()
            .iter()
            .any(|c| matches!(c, VmmCall::Kill { .. }))
    );
    // Idempotent: once the cause is fixed a second pass is clean.
    f.net.failing.lock().expect("lock").clear();
    f.core.cleanup(&mut v, true).await.expect("second cleanup");
    assert!(!f.net.has(&tap));
}

async fn set_nat(f: &Fixture, name: &str, on: bool) -> VmRecord {
    vm(
        &f.core,
        Command::VmSet {
            vm: name.into(),
            changes: banger_api::vm::SetVmRequest {
                nat: Some(on),
                ..Default::default()
            },
        },
    )
    .await
}

fn nat_calls(f: &Fixture) -> Vec<NatRule> {
    f.firewall
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            FirewallCall::AddNat(rule) => Some(rule),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn nat_rules_live_exactly_as_long_as_the_vm_runs() {
    let f = fixture();
    vm(
        &f.core,
        Command::VmCreate(CreateVmRequest {
            name: Some("out".into()),
            nat: true,
            ..Default::default()
        }),
    )
    .await;
    let v = vm(&f.core, Command::VmStart { vm: "out".into() }).await;
    let tap = tap_name(&v.id);
    assert!(f.firewall.has(&tap));
    assert_eq!(
        nat_calls(&f),
        [NatRule {
            tap: tap.clone(),
            guest_ip: std::net::Ipv4Addr::new(10, 99, 0, 2),
            bridge: "banger0".into(),
            uplink: "eth0".into()
        }]
    );
    vm(&f.core, Command::VmStop { vm: "out".into() }).await;
    assert!(!f.firewall.has(&tap), "stop removes the rules");
    assert!(!*f.firewall.forwarding.lock().expect("lock"));
}

#[tokio::test]
async fn every_vm_is_guarded_with_its_own_mac_and_address_while_it_runs() {
    let f = fixture();
    create(&f, "plain").await;
    let v = vm(&f.core, Command::VmStart { vm: "plain".into() }).await;
    let tap = tap_name(&v.id);
    assert!(f.firewall.guarded(&tap), "no opt-in: every vm");
    assert!(!f.firewall.has(&tap), "and no nat without asking");
    let guards: Vec<_> = f
        .firewall
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            FirewallCall::AddGuard(g) => Some(g),
            _ => None,
        })
        .collect();
    assert_eq!(
        guards,
        [banger_host::firewall::Guard {
            tap: tap.clone(),
            mac: banger_vmm::mac_for(&v.id),
            guest_ip: std::net::Ipv4Addr::new(10, 99, 0, 2),
            bridge: "banger0".into(),
            bridge_ip: f.core.config().network.bridge_ip,
        }]
    );
    vm(&f.core, Command::VmStop { vm: "plain".into() }).await;
    assert!(!f.firewall.guarded(&tap), "stop removes the guard");
    assert!(
        f.firewall
            .calls()
            .iter()
            .any(|c| matches!(c, FirewallCall::RemoveGuard { tap: t } if *t == tap))
    );
}

/// The guard comes before the VMM: a guest never runs unguarded.
#[tokio::test]
async fn a_guard_that_cannot_be_put_up_fails_the_start_before_any_vmm() {
    let f = fixture();
    let v = create(&f, "bare").await;
    *f.firewall.fail_guard.lock().expect("lock") = Some("nft said no".into());
    let err = f
        .core
        .execute(
            Command::VmStart { vm: "bare".into() },
            &ProgressSink::discard(),
        )
        .await
        .expect_err("no guard, no start");
    assert!(err.to_string().contains("network guard"), "{err}");
    assert!(
        !f.vmm
            .vmm_calls()
            .iter()
            .any(|c| matches!(c, VmmCall::Launch { .. })),
        "{:?}",
        f.vmm.vmm_calls()
    );
    assert!(
        !f.net.has(&tap_name(&v)),
        "the tap went with the failed start"
    );
    *f.firewall.fail_guard.lock().expect("lock") = None;
    vm(&f.core, Command::VmStart { vm: "bare".into() }).await;
}

#[tokio::test]
async fn set_nat_applies_live_and_is_a_noop_when_unchanged_or_not_alive() {
    let f = fixture();
    // Not running: only the spec changes; the host is not touched.
    create(&f, "live").await;
    let v = set_nat(&f, "live", true).await;
    assert!(v.spec.nat);
    assert!(f.firewall.calls().is_empty(), "{:?}", f.firewall.calls());
    set_nat(&f, "live", false).await;
    let v = vm(&f.core, Command::VmStart { vm: "live".into() }).await;
    let tap = tap_name(&v.id);
    assert!(!f.firewall.has(&tap));
    // Running: on, on again (no-op), off.
    set_nat(&f, "live", true).await;
    assert!(f.firewall.has(&tap));
    set_nat(&f, "live", true).await;
    assert_eq!(nat_calls(&f).len(), 1, "unchanged flag: no second add");
    let v = set_nat(&f, "live", false).await;
    assert!(!v.spec.nat);
    assert!(!f.firewall.has(&tap));
    // A VM whose VMM died is not alive: no-op, whatever the record says.
    set_nat(&f, "live", true).await;
    let pid = f
        .core
        .handles()
        .get(&v.id)
        .and_then(|h| h.pid)
        .expect("pid");
    f.vmm.crash(pid);
    let before = f.firewall.calls().len();
    set_nat(&f, "live", false).await;
    assert_eq!(f.firewall.calls().len(), before, "dead vm: host untouched");
}

#[tokio::test]
async fn nat_teardown_falls_back_to_the_runtime_tap_and_joins_errors() {
    let f = fixture();
    vm(
        &f.core,
        Command::VmCreate(CreateVmRequest {
            name: Some("lost".into()),
            nat: true,
            ..Default::default()
        }),
    )
    .await;
    let mut v = vm(&f.core, Command::VmStart { vm: "lost".into() }).await;
    let tap = tap_name(&v.id);
    // A restarted daemon with a corrupt handles.json: memory empty,
    // scratch unreadable; the runtime record's tap remains.
    let dir = v.runtime.vm_dir.clone().expect("dir");
    f.core.handles().adopt(&v.id, VmHandles::default());
    forget_handles(&f, &v);
    std::fs::write(scratch_path(&dir), b"{corrupt").expect("corrupt");
    // The tap's own deletion fails too: both errors come back.
    f.net.failing.lock().expect("lock").insert(tap.clone());
    *f.firewall.fail_remove.lock().expect("lock") = Some("nft exploded".into());
    let err = f
        .core
        .cleanup(&mut v, true)
        .await
        .expect_err("two failures");
    let CoreError::Cleanup(errors) = &err else {
        panic!("{err}")
    };
    assert_eq!(errors.0.len(), 2, "{errors:?}");
    assert!(
        errors.0.iter().any(|e| matches!(
            e,
            CleanupError::Capability {
                capability: "nat",
                ..
            }
        ) && e.to_string().contains("nft exploded")),
        "{errors:?}"
    );
    assert!(
        errors
            .0
            .iter()
            .any(|e| matches!(e, CleanupError::Tap(_)) && e.to_string().contains(&tap)),
        "{errors:?}"
    );
    assert!(
        f.firewall
            .calls()
            .contains(&FirewallCall::RemoveNat { tap: tap.clone() }),
        "the runtime tap was used"
    );
    // Fixed: a second pass removes the rules.
    f.net.failing.lock().expect("lock").clear();
    *f.firewall.fail_remove.lock().expect("lock") = None;
    f.core.cleanup(&mut v, true).await.expect("clean");
    assert!(!f.firewall.has(&tap));
    // The record's tap wins over the derived name when they differ.
    set_mirror_tap(&f, &v.id, "bg-fromrecord").await;
    f.core.cleanup(&mut v, true).await.expect("clean");
    assert_eq!(
        f.firewall.calls().last(),
        Some(&FirewallCall::RemoveGuard {
            tap: "bg-fromrecord".into()
        }),
        "the guard goes last"
    );
    assert_eq!(
        f.firewall.nat_calls().last(),
        Some(&FirewallCall::RemoveNat {
            tap: "bg-fromrecord".into()
        })
    );
}

/// Which tap cleanup deletes when memory, the scratch file and the
/// runtime mirror disagree or are missing: the first that knows.
#[tokio::test]
async fn cleanup_finds_the_tap_through_every_fallback() {
    let f = fixture();
    let mut v = create_and_start(&f, "fallback").await;
    let dir = v.runtime.vm_dir.clone().expect("dir");
    let deleted = |f: &Fixture| -> Vec<String> {
        f.net
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                NetCall::DeleteLink { name } => Some(name),
                _ => None,
            })
            .collect()
    };
    // 1. Memory lost, scratch file present: the scratch file's tap.
    forget_handles(&f, &v);
    crate::handles::write_scratch(
        &dir,
        &VmHandles {
            tap: Some("bg-scratch".into()),
            ..VmHandles::default()
        },
    )
    .expect("scratch");
    set_mirror_tap(&f, &v.id, "bg-mirror").await;
    f.core.cleanup(&mut v, true).await.expect("cleanup");
    assert_eq!(deleted(&f).last().map(String::as_str), Some("bg-scratch"));
    // 2. Memory and scratch file lost: the runtime mirror's tap.
    set_mirror_tap(&f, &v.id, "bg-mirror").await;
    f.core.cleanup(&mut v, true).await.expect("cleanup");
    assert_eq!(deleted(&f).last().map(String::as_str), Some("bg-mirror"));
    // 3. Nothing recorded anywhere: the name derived from the VM id.
    f.core.cleanup(&mut v, true).await.expect("cleanup");
    assert_eq!(deleted(&f).last(), Some(&tap_name(&v.id)));
    // A corrupt scratch file is skipped, not fatal.
    std::fs::write(scratch_path(&dir), b"{nope").expect("corrupt");
    set_mirror_tap(&f, &v.id, "bg-mirror2").await;
    f.core
        .cleanup(&mut v, true)
        .await
        .expect("corrupt scratch is not a failure");
    assert_eq!(deleted(&f).last().map(String::as_str), Some("bg-mirror2"));
}

#[tokio::test]
async fn reconcile_adopts_live_vms_and_tears_down_dead_ones() {
    let f = fixture();
    let alive = create_and_start(&f, "alive").await;
    let dead = create_and_start(&f, "dead").await;
    let corrupt = create_and_start(&f, "corrupt").await;
    // A daemon restart: memory is gone.
    for v in [&alive, &dead, &corrupt] {
        f.core.handles().adopt(&v.id, VmHandles::default());
    }
    let pid_of = |v: &VmRecord| {
        f.vmm
            .find(Path::new(v.runtime.api_socket.as_deref().expect("sock")))
            .expect("pid")
    };
    f.vmm.crash(pid_of(&dead));
    f.vmm.crash(pid_of(&corrupt));
    let corrupt_dir = corrupt.runtime.vm_dir.clone().expect("dir");
    std::fs::write(scratch_path(&corrupt_dir), b"{garbage").expect("corrupt scratch");

    f.core.reconcile().await.expect("reconcile");

    let a = f.core.find_vm("alive").await.expect("alive");
    assert_eq!(a.state, VmState::Running);
    assert!(f.core.vm_alive(&a), "adopted with its pid");
    assert!(f.net.has(&tap_name(&a.id)));
    for name in ["dead", "corrupt"] {
        let d = f.core.find_vm(name).await.expect("vm");
        assert_eq!(d.state, VmState::Stopped, "{name}");
        assert!(
            d.runtime
                .last_error
                .as_deref()
                .unwrap_or("")
                .contains("restarted"),
            "{name}"
        );
        assert!(
            !f.net.has(&tap_name(&d.id)),
            "{name}: tap torn down (corrupt file: via the mirror)"
        );
        assert!(mirror(&f, &d.id).await.is_empty());
    }
}

#[tokio::test]
async fn jails_are_recorded_before_launch_and_released_by_reconcile_and_delete() {
    let f = fixture();
    *f.vmm.jail_base.lock().expect("lock") = Some(PathBuf::from("/jails"));
    let kept = create_and_start(&f, "kept").await;
    let gone = create_and_start(&f, "gone").await;
    let releases = || -> Vec<VmmCall> {
        f.vmm
            .vmm_calls()
            .into_iter()
            .filter(|c| matches!(c, VmmCall::Release { .. }))
            .collect()
    };
    assert!(releases().is_empty(), "a started vm keeps its jail");
    // The jail root is on the record, in the scratch mirror too.
    let dir = gone.runtime.vm_dir.clone().expect("dir");
    let mirror = std::fs::read_to_string(scratch_path(&dir)).expect("mirror");
    assert!(mirror.contains(&format!("/jails/{}", gone.id)), "{mirror}");
    // Daemon (and helper) die; one VMM dies with them.
    for v in [&kept, &gone] {
        f.core.handles().adopt(&v.id, VmHandles::default());
    }
    let sock = |v: &VmRecord| v.runtime.api_socket.clone().expect("sock");
    f.vmm.crash(f.vmm.find(&sock(&gone)).expect("pid"));
    f.core.reconcile().await.expect("reconcile");
    assert_eq!(
        releases(),
        [VmmCall::Release {
            vm_id: gone.id.to_string(),
            jail_root: PathBuf::from(format!("/jails/{}", gone.id))
        }],
        "the dead vm's jail goes, the live one's stays"
    );
    let k = f.core.find_vm("kept").await.expect("kept");
    assert_eq!(k.state, VmState::Running);
    vm(&f.core, Command::VmKill { vm: "kept".into() }).await;
    vm(&f.core, Command::VmDelete { vm: "kept".into() }).await;
    assert_eq!(
        releases().last(),
        Some(&VmmCall::Release {
            vm_id: kept.id.to_string(),
            jail_root: PathBuf::from(format!("/jails/{}", kept.id))
        })
    );
}

#[tokio::test]
async fn concurrent_starts_get_distinct_addresses_and_delete_releases_everything() {
    let f = fixture();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let core = Arc::clone(&f.core);
        tasks.push(tokio::spawn(async move {
            let name = format!("vm{i}");
            core.execute(
                Command::VmCreate(CreateVmRequest {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                &ProgressSink::discard(),
            )
            .await
            .expect("create");
            match core
                .execute(Command::VmStart { vm: name }, &ProgressSink::discard())
                .await
                .expect("start")
            {
                Reply::Vm(v) => v,
                other => panic!("{other:?}"),
            }
        }));
    }
    let mut ips = Vec::new();
    for t in tasks {
        ips.push(t.await.expect("task").runtime.guest_ip.expect("ip"));
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 10, "no address handed out twice");
    // A /28 has 13 usable guest addresses: the 14th VM is refused clearly.
    for i in 10..13 {
        create_and_start(&f, &format!("vm{i}")).await;
    }
    create(&f, "full").await;
    let err = run(&f.core, Command::VmStart { vm: "full".into() })
        .await
        .expect_err("exhausted");
    assert!(err.to_string().contains("no free address"), "{err}");

    let v = f.core.find_vm("vm3").await.expect("vm3");
    let dir = v.runtime.vm_dir.clone().expect("dir");
    let err = run(&f.core, Command::VmDelete { vm: "vm3".into() })
        .await
        .expect_err("running");
    assert!(err.to_string().contains("stop it first"));
    vm(&f.core, Command::VmKill { vm: "vm3".into() }).await;
    vm(&f.core, Command::VmDelete { vm: "vm3".into() }).await;
    assert!(!dir.exists());
    // Its address is free again.
    let again = vm(&f.core, Command::VmStart { vm: "full".into() }).await;
    assert_eq!(again.runtime.guest_ip, v.runtime.guest_ip);
}

#[tokio::test]
async fn the_console_keeper_rotates_a_live_vms_log_past_its_cap() {
    let f = fixture();
    let v = create_and_start(&f, "loud").await;
    let console = f.core.vm_files(&v.id).console;
    let max = f.core.config().guest.console_max_bytes;
    std::fs::write(&console, vec![b'x'; max as usize + 10]).expect("flood");
    assert_eq!(f.core.rotate_consoles().await.expect("round"), ["loud"]);
    assert_eq!(std::fs::metadata(&console).expect("log").len(), 0);
    assert!(f.core.rotate_consoles().await.expect("round").is_empty());
}

/// The guest answers the host-key probe: an endless answer is cut off
/// at the daemon's bound, anything but an ed25519 key is refused.
#[tokio::test]
async fn a_guests_answer_for_its_host_key_is_bounded_and_checked() {
    let f = fixture();
    let v = create_and_start(&f, "hk").await;
    let answer = |bytes: Vec<u8>| {
        *f.agent.exec_stdout.lock().expect("lock") = Some(bytes);
    };
    answer(vec![b'A'; 8 << 20]);
    let err = f.core.session(&v).host_key().await.expect_err("8 MiB");
    assert!(err.to_string().contains("wrote more than"), "{err}");
    answer(b"ssh-ed25519 AAAA\n@cert-authority * ssh-rsa EVIL\n".to_vec());
    assert_eq!(
        f.core
            .session(&v)
            .host_key()
            .await
            .expect("the first key only"),
        "ssh-ed25519 AAAA"
    );
    answer(b"ssh-rsa AAAAB3Nza root@guest\n".to_vec());
    let err = f.core.session(&v).host_key().await.expect_err("rsa");
    assert!(err.to_string().contains("not an ed25519"), "{err}");
    answer(b"ssh-ed25519 AAAA,evil root@guest\n".to_vec());
    assert!(f.core.session(&v).host_key().await.is_err());
}
