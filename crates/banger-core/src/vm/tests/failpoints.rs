//! The crash matrix (feature `failpoints`): at every named point of
//! create, start, stop, kill (cleanup), delete, a NAT toggle, snapshot,
//! restore and asset import, the daemon stops as a crash stops it: the
//! operation's runtime freezes mid-step on its one thread, its memory is
//! abandoned and no destructor runs. A new daemon then starts over the
//! same store and host (reconcile, sweep). The VM must be in a state a
//! user can act on (start, stop and delete work from there), and once
//! everything is deleted nothing may be left: no tap, VMM, NAT rule, VM
//! dir, socket, build dir, snapshot, asset content or DNS record.
//!
//! Run by scripts/test.sh as
//! `cargo test -p banger-core --features failpoints --lib failpoints -- --test-threads=1`
//! (the failpoint registry is the process's). Prints the matrix's figures.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use banger_api::asset::ImageImportRequest;
use banger_api::snapshot::SnapshotVmRequest;
use banger_api::vm::{CreateVmRequest, SetVmRequest, VmState};
use banger_host::disk::GuestNode;

use super::lifecycle::{Fixture, fixture};
use crate::core::Core;
use crate::{Command, CoreError, ProgressSink, Reply};

/// What a case sets up before arming its point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prep {
    Nothing,
    Created,
    Running,
    RunningWithNat,
    Stopped,
    /// A snapshot `s` of a stopped VM `x`, and `y` created from it.
    RestoreReady,
}

struct Case {
    point: &'static str,
    prep: Prep,
    op: fn(&Fixture) -> Command,
}

fn create() -> Command {
    Command::VmCreate(CreateVmRequest {
        name: Some("x".into()),
        ..Default::default()
    })
}

fn cases() -> Vec<Case> {
    let mut all = Vec::new();
    let mut add = |points: &[&'static str], prep, op: fn(&Fixture) -> Command| {
        all.extend(points.iter().map(|&point| Case { point, prep, op }));
    };
    add(
        &["create.validated", "create.recorded"],
        Prep::Nothing,
        |_| create(),
    );
    add(
        &[
            "start.recorded_starting",
            "start.address_allocated",
            "start.disks_made",
            "start.guest_config_written",
            "start.bridge_up",
            "start.tap_recorded",
            "start.tap_created",
            "start.capabilities_on",
            "start.vmm_launched",
            "start.agent_answered",
            "start.recorded_running",
        ],
        Prep::Created,
        |_| Command::VmStart { vm: "x".into() },
    );
    add(
        &[
            "stop.recorded_stopping",
            "stop.guest_asked",
            "stop.vmm_gone",
            "stop.cleaned_up",
        ],
        Prep::Running,
        |_| Command::VmStop { vm: "x".into() },
    );
    add(
        &[
            "cleanup.vmm_killed",
            "cleanup.nat_removed",
            "cleanup.tap_deleted",
        ],
        Prep::RunningWithNat,
        |_| Command::VmKill { vm: "x".into() },
    );
    add(
        &["delete.cleaned_up", "delete.record_removed"],
        Prep::Stopped,
        |_| Command::VmDelete { vm: "x".into() },
    );
    add(&["set.capabilities_changed"], Prep::Running, |_| {
        Command::VmSet {
            vm: "x".into(),
            changes: SetVmRequest {
                nat: Some(true),
                ..Default::default()
            },
        }
    });
    add(
        &[
            "snapshot.paused",
            "snapshot.state_saved",
            "snapshot.published",
            "snapshot.vm_on_again",
        ],
        Prep::Running,
        |_| Command::VmSnapshot {
            vm: "x".into(),
            request: SnapshotVmRequest {
                name: Some("s".into()),
                stop: false,
            },
        },
    );
    add(
        &["restore.disks_restored", "restore.identity_taken"],
        Prep::RestoreReady,
        |_| Command::VmStart { vm: "y".into() },
    );
    add(&["asset.staged", "asset.published"], Prep::Nothing, |f| {
        Command::ImageImport(import_request(f))
    });
    all
}

/// Enough of an ext4 file for the import's check, with systemd for init.
fn import_request(f: &Fixture) -> ImageImportRequest {
    let src = f._dir.path().join("src.ext4");
    if !src.exists() {
        let mut sb = vec![0u8; 2048];
        sb[1080..1082].copy_from_slice(&[0x53, 0xef]);
        std::fs::write(&src, sb).expect("ext4");
    }
    for (p, n) in [("/sbin", GuestNode::Dir), ("/sbin/init", GuestNode::File)] {
        f.disks.set_node(p, n);
    }
    ImageImportRequest {
        name: "imp".into(),
        rootfs: Some(src.display().to_string()),
        dir: None,
    }
}

async fn ok(core: &Core, cmd: Command) -> Result<Reply, String> {
    let what = format!("{cmd:?}");
    core.execute(cmd, &ProgressSink::discard())
        .await
        .map_err(|e| format!("{what}: {e}"))
}

async fn prepare(f: &Fixture, prep: Prep) {
    let must = |r: Result<Reply, String>| r.expect("prep");
    let core = &f.core;
    let start = || Command::VmStart { vm: "x".into() };
    match prep {
        Prep::Nothing => {}
        Prep::Created => drop(must(ok(core, create()).await)),
        Prep::Running | Prep::Stopped | Prep::RestoreReady => {
            must(ok(core, create()).await);
            must(ok(core, start()).await);
        }
        Prep::RunningWithNat => {
            must(
                ok(
                    core,
                    Command::VmCreate(CreateVmRequest {
                        name: Some("x".into()),
                        nat: true,
                        ..Default::default()
                    }),
                )
                .await,
            );
            must(ok(core, start()).await);
        }
    }
    if prep == Prep::Stopped {
        must(ok(core, Command::VmKill { vm: "x".into() }).await);
    }
    if prep == Prep::RestoreReady {
        must(
            ok(
                core,
                Command::VmSnapshot {
                    vm: "x".into(),
                    request: SnapshotVmRequest {
                        name: Some("s".into()),
                        stop: true,
                    },
                },
            )
            .await,
        );
        must(
            ok(
                core,
                Command::VmCreate(CreateVmRequest {
                    name: Some("y".into()),
                    snapshot: Some("s".into()),
                    ..Default::default()
                }),
            )
            .await,
        );
    }
}

enum Ran {
    /// The point was reached and the daemon froze there.
    Frozen,
    /// The operation ended without passing the point.
    Finished(String),
}

/// Runs `cmd` on a runtime of its own thread, frozen for good at `point`.
fn run_until(core: Arc<Core>, point: &'static str, cmd: Command) -> Ran {
    let (tx, rx) = mpsc::channel::<Ran>();
    let hit = tx.clone();
    fail::cfg_callback(point, move || {
        let _ = hit.send(Ran::Frozen);
        // The crash: this thread (the operation's whole runtime) never
        // runs again.
        loop {
            std::thread::park();
        }
    })
    .expect("arm the point");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let r = rt.block_on(core.execute(cmd, &ProgressSink::discard()));
        let _ = tx.send(Ran::Finished(format!("{r:?}")));
    });
    let ran = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| Ran::Finished("neither reached the point nor ended within 60s".into()));
    fail::remove(point);
    ran
}

/// After the restart: every VM must settle in a state a user can act
/// on, and start, stop (kill) and delete must work from there.
async fn act_on_every_vm(f: &Fixture, core: &Arc<Core>) -> Result<(), String> {
    let vms = match ok(core, Command::VmList).await? {
        Reply::Vms(v) => v,
        other => return Err(format!("list: {other:?}")),
    };
    for vm in vms {
        let name = vm.name.clone();
        let mut state = vm.state;
        if state == VmState::Starting {
            // The restarted daemon took its start over: watch it end.
            let o = core
                .launch(Command::VmStart { vm: name.clone() })
                .await
                .outcome()
                .await;
            if let Err(e) = &*o {
                if !matches!(e, CoreError::Lifecycle(_)) {
                    tracing::info!(error = %e, "the interrupted start failed");
                }
            }
            state = core.find_vm(&name).await.map_err(|e| e.to_string())?.state;
        }
        // A VM that runs has the capabilities its record says, no more.
        if state == VmState::Running {
            let vm = core.find_vm(&name).await.map_err(|e| e.to_string())?;
            let tap = banger_host::layout::TapName::for_vm(&vm.id).to_string();
            let has_nat = f
                .firewall
                .rules
                .lock()
                .expect("lock")
                .iter()
                .any(|r| r.tap == tap);
            if has_nat != vm.spec.nat {
                return Err(format!(
                    "vm {name} runs with nat {} but its record says {}",
                    if has_nat { "on" } else { "off" },
                    vm.spec.nat
                ));
            }
        }
        match state {
            VmState::Running | VmState::Paused => {
                ok(core, Command::VmKill { vm: name.clone() }).await?;
            }
            VmState::Created | VmState::Stopped | VmState::Error => {}
            stuck @ (VmState::Starting | VmState::Stopping) => {
                return Err(format!("vm {name} stuck {stuck}"));
            }
        }
        // From a state a user can act on: it starts, stops, and goes.
        ok(core, Command::VmStart { vm: name.clone() }).await?;
        ok(core, Command::VmStop { vm: name.clone() }).await?;
        ok(core, Command::VmDelete { vm: name.clone() }).await?;
    }
    Ok(())
}

/// Everything banger could have left, after every VM and snapshot and
/// the imported image were removed.
async fn leaks(f: &Fixture, core: &Arc<Core>) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(Reply::Snapshots(snaps)) = ok(core, Command::SnapshotList).await {
        for s in snaps {
            if let Err(e) = ok(
                core,
                Command::SnapshotRm {
                    name: s.name.clone(),
                },
            )
            .await
            {
                found.push(format!("snapshot {} cannot be removed: {e}", s.name));
            }
        }
    }
    let _ = ok(
        core,
        Command::ImageRm {
            name: "imp".into(),
            force: false,
        },
    )
    .await;
    let taps: Vec<String> = f
        .net
        .links
        .lock()
        .expect("lock")
        .iter()
        .filter(|l| l.starts_with("bg-"))
        .cloned()
        .collect();
    if !taps.is_empty() {
        found.push(format!("taps {taps:?}"));
    }
    let vmms = f.vmm.running.lock().expect("lock").len();
    if vmms > 0 {
        found.push(format!("{vmms} vmm processes"));
    }
    let rules = f.firewall.rules.lock().expect("lock").len();
    if rules > 0 {
        found.push(format!("{rules} nat rules"));
    }
    let guards = f.firewall.guards.lock().expect("lock").len();
    if guards > 0 {
        found.push(format!("{guards} guards"));
    }
    if !f.dns.last().is_empty() {
        found.push(format!("dns records {:?}", f.dns.last()));
    }
    let cfg = core.config();
    let dir_entries = |p: &Path| -> Vec<String> {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for (what, dir) in [
        ("vm dirs", cfg.state_dir.join("vms")),
        ("sockets", cfg.runtime_dir.join("vms")),
        ("build dirs", cfg.tmp_dir()),
        ("snapshot dirs", cfg.state_dir.join("snapshots")),
    ] {
        let left = dir_entries(&dir);
        if !left.is_empty() {
            found.push(format!("{what} {left:?}"));
        }
    }
    match core.sweep_orphans().await {
        Ok(s) if s == crate::sweep::Swept::default() => {}
        Ok(s) => found.push(format!("orphans the sweep still finds: {s:?}")),
        Err(e) => found.push(format!("sweep: {e}")),
    }
    found
}

#[test]
fn every_failpoint_leaves_a_vm_a_user_can_act_on_and_nothing_behind() {
    let (mut tried, mut unreached, mut stuck, mut leaked) = (0, Vec::new(), Vec::new(), Vec::new());
    for case in cases() {
        let f = fixture();
        *f.vmm.serial_agent.lock().expect("lock") = true;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(prepare(&f, case.prep));
        let cmd = (case.op)(&f);
        match run_until(Arc::clone(&f.core), case.point, cmd) {
            Ran::Frozen => {}
            Ran::Finished(how) => {
                unreached.push(format!("{}: {how}", case.point));
                continue;
            }
        }
        tried += 1;
        // The restart: a new daemon over the same store and host.
        let core = Arc::new(f.core.restarted());
        rt.block_on(async {
            if let Err(e) = core.reconcile().await {
                stuck.push(format!("{}: reconcile: {e}", case.point));
            }
            if let Err(e) = act_on_every_vm(&f, &core).await {
                stuck.push(format!("{}: {e}", case.point));
            }
            let left = leaks(&f, &core).await;
            if !left.is_empty() {
                leaked.push(format!("{}: {}", case.point, left.join("; ")));
            }
        });
    }
    println!(
        "figure: failpoint matrix: {tried} points tried, {} unreached, {} stuck or unusable, {} with leaks",
        unreached.len(),
        stuck.len(),
        leaked.len()
    );
    for line in unreached.iter().chain(&stuck).chain(&leaked) {
        println!("  {line}");
    }
    assert!(
        unreached.is_empty() && stuck.is_empty() && leaked.is_empty(),
        "unreached: {unreached:#?}\nstuck: {stuck:#?}\nleaks: {leaked:#?}"
    );
}
