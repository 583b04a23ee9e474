//! Warm starts against recording fakes: which start saves the template,
//! which restore it, and when one is stale.

use banger_api::snapshot::{SnapshotKind, SnapshotRecord};
use banger_api::vm::{CreateVmRequest, VmRecord};
use banger_vmm::VmmCall;

use super::lifecycle::{Fixture, create_and_start, fixture, vm};
use crate::Command;

fn templates(snaps: Vec<SnapshotRecord>) -> Vec<SnapshotRecord> {
    snaps
        .into_iter()
        .filter(|s| s.kind == SnapshotKind::Template)
        .collect()
}

fn restored(f: &Fixture, v: &VmRecord) -> bool {
    f.vmm
        .vmm_calls()
        .iter()
        .any(|c| matches!(c, VmmCall::Restore { vm_id, .. } if *vm_id == v.id.to_string()))
}

fn saves(f: &Fixture) -> usize {
    f.vmm
        .vmm_calls()
        .iter()
        .filter(|c| matches!(c, VmmCall::Save { .. }))
        .count()
}

fn savable(f: &Fixture) {
    *f.vmm.serial_agent.lock().expect("lock") = true;
}

#[tokio::test]
async fn the_first_vm_of_a_shape_saves_its_template_and_later_ones_restore_it() {
    let f = fixture();
    savable(&f);
    let a = create_and_start(&f, "a").await;
    assert!(!a.runtime.warm_start, "cleared once it has its own disks");
    assert!(!restored(&f, &a), "the first boots");
    assert_eq!(saves(&f), 1, "and is saved as the template");
    let made = templates(f.core.list_snapshots().await.expect("list"));
    assert_eq!(made.len(), 1);
    assert!(made[0].name.starts_with("tpl-"), "{}", made[0].name);
    assert_eq!(made[0].source_vm, "a");
    // Saved with no host on its agent channel, which was closed first.
    let serial = a.runtime.agent_socket.clone().expect("a serial channel");
    assert_eq!(f.agent.detaches(), vec![serial]);
    let pause = f
        .vmm
        .vmm_calls()
        .iter()
        .position(|c| matches!(c, VmmCall::Pause { .. }));
    assert!(pause.is_some(), "paused to save");

    let b = create_and_start(&f, "b").await;
    assert!(restored(&f, &b), "the second restores it");
    assert_eq!(b.runtime.restore_from, None, "and no longer needs it");
    assert_eq!(saves(&f), 1, "no second template");

    // --cold boots, whatever exists.
    vm(
        &f.core,
        Command::VmCreate(CreateVmRequest {
            name: Some("c".into()),
            cold: true,
            ..Default::default()
        }),
    )
    .await;
    let c = vm(&f.core, Command::VmStart { vm: "c".into() }).await;
    assert!(!restored(&f, &c));

    // A VM that ran boots its own disks at its next start.
    vm(&f.core, Command::VmKill { vm: "b".into() }).await;
    let restores = |f: &Fixture| {
        f.vmm
            .vmm_calls()
            .iter()
            .filter(|c| matches!(c, VmmCall::Restore { .. }))
            .count()
    };
    let before = restores(&f);
    vm(&f.core, Command::VmStart { vm: "b".into() }).await;
    assert_eq!(restores(&f), before, "b booted its own disks");
}

#[tokio::test]
async fn a_shape_whose_devices_cannot_be_saved_just_boots() {
    let f = fixture();
    // The fake's vsock cannot be saved.
    create_and_start(&f, "a").await;
    let b = create_and_start(&f, "b").await;
    assert_eq!(saves(&f), 0);
    assert!(!restored(&f, &b));
    assert!(templates(f.core.list_snapshots().await.expect("list")).is_empty());
}

#[tokio::test]
async fn a_new_agent_makes_a_new_template_and_the_old_one_is_swept() {
    let f = fixture();
    savable(&f);
    create_and_start(&f, "a").await;
    let old = templates(f.core.list_snapshots().await.expect("list"));
    assert_eq!(old.len(), 1);
    // The agent binary changes (a rebuild): the key moves on.
    let agent = f.core.config().guest.agent.clone();
    std::fs::write(&agent, b"\x7fELF agent v2").expect("new agent");
    let b = create_and_start(&f, "b").await;
    assert!(!restored(&f, &b), "a stale template is never restored");
    let now = templates(f.core.list_snapshots().await.expect("list"));
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0].name, old[0].name);
    assert!(!old[0].dir.exists(), "the old template's files are gone");
}

#[tokio::test]
async fn a_template_is_not_saved_while_a_session_holds_the_agent_channel() {
    let f = fixture();
    savable(&f);
    *f.agent.detach_answer.lock().expect("lock") =
        Some(crate::agent::Detached::Busy { sessions: 1 });
    let a = create_and_start(&f, "a").await;
    assert_eq!(
        a.state,
        banger_api::vm::VmState::Running,
        "the start still succeeds"
    );
    assert_eq!(saves(&f), 0, "nothing saved over a live channel");
    assert!(
        !f.vmm
            .vmm_calls()
            .iter()
            .any(|c| matches!(c, VmmCall::Pause { .. })),
        "not even paused"
    );
    assert!(templates(f.core.list_snapshots().await.expect("list")).is_empty());
}
