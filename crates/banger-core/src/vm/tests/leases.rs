//! `vm run --rm` carried out by the daemon: VMs created under a lease go
//! when it ends, whatever stage they were in.

use banger_api::vm::{CreateVmRequest, VmState};

use super::lifecycle::{Fixture, fixture, tap_name};
use crate::{Command, CoreError, Reply};

async fn create_leased(f: &Fixture, name: &str, lease: &str) -> banger_api::vm::VmRecord {
    let made = f
        .core
        .launch(Command::VmCreate(CreateVmRequest {
            name: Some(name.into()),
            lease: Some(lease.into()),
            ..Default::default()
        }))
        .await
        .outcome()
        .await;
    match &*made {
        Ok(Reply::Vm(v)) => v.clone(),
        other => panic!("{other:?}"),
    }
}

async fn gone(f: &Fixture, name: &str) -> bool {
    matches!(f.core.find_vm(name).await, Err(CoreError::VmNotFound(_)))
}

#[tokio::test]
async fn a_vm_created_under_a_lease_goes_when_the_lease_ends() {
    let f = fixture();
    let lease = f.core.hold_lease();
    let v = create_leased(&f, "leased", lease.id()).await;
    assert!(v.runtime.leased, "recorded as leased");
    let started = f
        .core
        .launch(Command::VmStart {
            vm: "leased".into(),
        })
        .await
        .outcome()
        .await;
    assert!(started.is_ok(), "{started:?}");
    // Another VM, not leased, is no business of the lease.
    f.core
        .launch(Command::VmCreate(CreateVmRequest {
            name: Some("kept".into()),
            ..Default::default()
        }))
        .await
        .outcome()
        .await
        .as_ref()
        .as_ref()
        .expect("create");
    lease.end().await;
    assert!(gone(&f, "leased").await);
    assert!(!f.net.has(&tap_name(&v.id)), "its tap went with it");
    assert!(!f.core.vm_alive(&v));
    assert!(f.core.find_vm("kept").await.is_ok());
}

#[tokio::test]
async fn a_lease_that_ends_during_the_start_removes_the_vm_once_the_start_is_over() {
    let f = fixture();
    let lease = f.core.hold_lease();
    create_leased(&f, "booting", lease.id()).await;
    f.agent.set_ready(false);
    let start = f
        .core
        .launch(Command::VmStart {
            vm: "booting".into(),
        })
        .await;
    // The terminal closes while the guest boots.
    let ending = tokio::spawn(lease.end());
    f.agent.set_ready(true);
    let _ = start.outcome().await;
    ending.await.expect("lease end");
    assert!(gone(&f, "booting").await);
}

#[tokio::test]
async fn a_create_under_a_lease_not_held_is_refused_and_makes_nothing() {
    let f = fixture();
    let lease = f.core.hold_lease();
    let id = lease.id().to_owned();
    lease.end().await;
    let refused = f.core.check(&Command::VmCreate(CreateVmRequest {
        lease: Some(id),
        ..Default::default()
    }));
    assert!(
        matches!(&refused, Err(CoreError::InvalidArgument(m)) if m.contains("not held")),
        "{refused:?}"
    );
    let listed = f.core.launch(Command::VmList).await.outcome().await;
    assert!(
        matches!(&*listed, Ok(Reply::Vms(v)) if v.is_empty()),
        "{listed:?}"
    );
}

#[tokio::test]
async fn leased_vms_found_at_daemon_start_are_removed() {
    let f = fixture();
    let lease = f.core.hold_lease();
    let v = create_leased(&f, "orphan", lease.id()).await;
    // The daemon died, and its connections with it: only the record is
    // left (the lease's handle is never dropped here).
    std::mem::forget(lease);
    assert_eq!(
        f.core.find_vm("orphan").await.expect("vm").state,
        VmState::Created
    );
    f.core.reconcile().await.expect("reconcile");
    assert!(gone(&f, "orphan").await, "{} is still there", v.name);
}

#[tokio::test]
async fn a_lease_ended_by_the_daemon_stopping_leaves_its_vm_to_the_next_daemon() {
    let f = fixture();
    let lease = f.core.hold_lease();
    let v = create_leased(&f, "survives", lease.id()).await;
    f.core.begin_shutdown();
    lease.end().await;
    let kept = f.core.find_vm("survives").await.expect("still recorded");
    assert!(kept.runtime.leased, "and still leased: {v:?}");
}
