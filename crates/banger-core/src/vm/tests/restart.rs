//! Daemon restarts (reconcile): a start cut short waits for its agent
//! again, one VM's failed recovery does not stop the others', and what
//! could not be cleaned up stays `error`.

use std::path::Path;

use banger_api::vm::{VmRecord, VmState};
use banger_vmm::Vmm;

use super::lifecycle::{Fixture, create_and_start, fixture, tap_name};
use crate::handles::VmHandles;
use crate::{Command, CoreError, Reply};

/// What a daemon restart leaves of `v`: its record, not its handles.
fn restart_daemon(f: &Fixture, v: &VmRecord) {
    f.core.handles().adopt(&v.id, VmHandles::default());
}

/// `v` as a daemon that died during its start left it.
async fn left_starting(f: &Fixture, name: &str) -> VmRecord {
    let mut v = create_and_start(f, name).await;
    v.state = VmState::Starting;
    f.core.save(&mut v).await.expect("save");
    restart_daemon(f, &v);
    v
}

#[tokio::test]
async fn an_interrupted_start_is_running_only_once_its_agent_answers_and_a_start_watches_it() {
    let f = fixture();
    let v = left_starting(&f, "cut").await;
    f.agent.set_ready(false);
    f.core.reconcile().await.expect("reconcile");
    let now = f.core.find_vm("cut").await.expect("vm");
    assert_eq!(
        now.state,
        VmState::Starting,
        "not running before the agent answers"
    );
    let watch = f.core.launch(Command::VmStart { vm: "cut".into() }).await;
    assert!(
        watch.joined,
        "`vm start` watches the start the restart took over"
    );
    f.agent.set_ready(true);
    match &*watch.outcome().await {
        Ok(Reply::Vm(vm)) => assert_eq!(vm.state, VmState::Running),
        other => panic!("{other:?}"),
    }
    assert!(f.core.vm_alive(&f.core.find_vm(&v.id).await.expect("vm")));
}

#[tokio::test]
async fn an_interrupted_start_whose_agent_never_answers_is_an_error_and_torn_down() {
    let f = fixture();
    let v = left_starting(&f, "mute").await;
    f.agent.set_ready(false);
    f.core.reconcile().await.expect("reconcile");
    let watch = f.core.launch(Command::VmStart { vm: "mute".into() }).await;
    assert!(watch.joined);
    let outcome = watch.outcome().await;
    assert!(outcome.is_err(), "{outcome:?}");
    let now = f.core.find_vm("mute").await.expect("vm");
    assert_eq!(now.state, VmState::Error);
    let why = now.runtime.last_error.unwrap_or_default();
    assert!(why.contains("daemon restart"), "{why}");
    assert!(!f.net.has(&tap_name(&v.id)), "torn down");
    assert!(!f.core.vm_alive(&v));
}

#[tokio::test]
async fn one_vm_that_cannot_be_recovered_does_not_stop_the_others() {
    let f = fixture();
    let mut broken = create_and_start(&f, "broken").await;
    let fine = create_and_start(&f, "fine").await;
    // Its handles cannot be written where its record says its dir is.
    broken.runtime.vm_dir = Some(Path::new("/dev/null/not-a-dir").to_path_buf());
    f.core.save(&mut broken).await.expect("save");
    for v in [&broken, &fine] {
        restart_daemon(&f, v);
    }
    let err = f.core.reconcile().await.expect_err("one failed");
    let CoreError::Reconcile(failed) = &err else {
        panic!("{err}")
    };
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("broken"), "{failed:?}");
    let b = f.core.find_vm("broken").await.expect("vm");
    assert_eq!(b.state, VmState::Error);
    assert!(
        b.runtime
            .last_error
            .unwrap_or_default()
            .contains("could not recover"),
    );
    let ok = f.core.find_vm("fine").await.expect("vm");
    assert_eq!(ok.state, VmState::Running, "recovered all the same");
}

#[tokio::test]
async fn a_dead_vm_whose_cleanup_fails_stays_error_and_a_delete_retries_it() {
    let f = fixture();
    let v = create_and_start(&f, "sticky").await;
    restart_daemon(&f, &v);
    let sock = v.runtime.api_socket.clone().expect("socket");
    f.vmm.crash(f.vmm.find(&sock).expect("pid"));
    let tap = tap_name(&v.id);
    f.net.failing.lock().expect("lock").insert(tap.clone());
    f.core.reconcile().await.expect("reconcile");
    let now = f.core.find_vm("sticky").await.expect("vm");
    assert_eq!(
        now.state,
        VmState::Error,
        "not stopped: its tap is still there"
    );
    assert!(
        now.runtime
            .last_error
            .unwrap_or_default()
            .contains("cleanup errors"),
    );
    f.net.failing.lock().expect("lock").clear();
    f.core
        .execute(
            Command::VmDelete {
                vm: "sticky".into(),
            },
            &crate::ProgressSink::discard(),
        )
        .await
        .expect("delete retries the cleanup");
    assert!(!f.net.has(&tap));
}
