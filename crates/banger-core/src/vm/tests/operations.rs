//! Operations as daemon tasks: they outlive whoever asked, and a second
//! start of a VM watches the first.

use banger_api::operation::OperationKind;
use banger_api::vm::VmState;

use super::lifecycle::{create, fixture};
use crate::cancel::CancelCause;
use crate::operations::{OperationEvent, OperationWatch};
use crate::{Command, CoreError, Reply};

async fn stages_and_outcome(mut w: OperationWatch) -> (Vec<String>, VmState) {
    let mut stages = Vec::new();
    while let Some(ev) = w.next().await {
        match ev {
            OperationEvent::Progress(p) => stages.push(p.stage.clone()),
            OperationEvent::Done(o) => match &*o {
                Ok(Reply::Vm(v)) => return (stages, v.state),
                other => panic!("{other:?}"),
            },
        }
    }
    panic!("no outcome");
}

#[tokio::test]
async fn a_start_goes_on_without_its_caller_and_a_second_start_watches_it() {
    let f = fixture();
    create(&f, "web").await;
    // The guest's agent does not answer yet: the start waits for it.
    f.agent.set_ready(false);
    let first = f.core.launch(Command::VmStart { vm: "web".into() }).await;
    assert!(!first.joined);
    // Its client goes away (a Ctrl-C, a closed terminal).
    drop(first);
    let second = f.core.launch(Command::VmStart { vm: "web".into() }).await;
    assert!(second.joined, "the start in flight is watched, not refused");
    f.agent.set_ready(true);
    let (stages, state) = stages_and_outcome(second).await;
    assert_eq!(state, VmState::Running);
    assert!(
        stages.first().is_some_and(|s| !s.is_empty()),
        "the watcher sees the stages from the start: {stages:?}"
    );
    // Once it ended, a start is a start of its own again.
    let third = f.core.launch(Command::VmStart { vm: "web".into() }).await;
    assert!(!third.joined);
    let refused = third.outcome().await;
    assert!(refused.is_err(), "it runs already: {refused:?}");
}

#[tokio::test]
async fn other_commands_each_run_on_their_own() {
    let f = fixture();
    let a = f.core.launch(Command::VmList).await;
    let b = f.core.launch(Command::VmList).await;
    assert!(!a.joined && !b.joined);
    assert!(a.outcome().await.is_ok() && b.outcome().await.is_ok());
}

/// Waits until the watch reports `stage`; the rest of its stages stay
/// for whoever reads on.
async fn until_stage(w: &mut OperationWatch, stage: &str) {
    while let Some(ev) = w.next().await {
        match ev {
            OperationEvent::Progress(p) if p.stage == stage => return,
            OperationEvent::Progress(_) => {}
            OperationEvent::Done(o) => panic!("ended before {stage}: {o:?}"),
        }
    }
    panic!("no {stage}");
}

fn cancelled_by(o: &crate::operations::Outcome) -> Option<CancelCause> {
    match &**o {
        Err(CoreError::Cancelled { by, .. }) => Some(*by),
        _ => None,
    }
}

#[tokio::test]
async fn a_kill_cuts_a_start_short_and_leaves_the_vm_stopped_with_nothing_up() {
    let f = fixture();
    let vm = create(&f, "web").await;
    // The agent never answers: without the kill the start would wait out
    // its readiness bound, then fail (not be cancelled).
    f.agent.set_ready(false);
    let mut start = f.core.launch(Command::VmStart { vm: "web".into() }).await;
    until_stage(&mut start, "agent").await;
    let tap = super::lifecycle::tap_name(&vm);
    assert!(f.net.has(&tap), "the start got as far as its tap");

    let killed = f.core.launch(Command::VmKill { vm: "web".into() }).await;
    let killed = killed.outcome().await;
    match &*killed {
        Ok(Reply::Vm(v)) => assert_eq!(v.state, VmState::Stopped),
        other => panic!("{other:?}"),
    }
    let started = start.outcome().await;
    assert_eq!(
        cancelled_by(&started),
        Some(CancelCause::Kill),
        "{started:?}"
    );
    assert!(!f.net.has(&tap), "the cancelled start removed its tap");
    let shown = f.core.find_vm("web").await.expect("vm");
    assert_eq!(shown.state, VmState::Stopped);
    assert_eq!(shown.runtime.last_error, None);
    assert!(
        f.core.operations_list().is_empty(),
        "{:?}",
        f.core.operations_list()
    );
    // And the VM starts again as any stopped one.
    f.agent.set_ready(true);
    let again = f.core.launch(Command::VmStart { vm: "web".into() }).await;
    assert!(matches!(&*again.outcome().await, Ok(Reply::Vm(v)) if v.state == VmState::Running));
}

#[tokio::test]
async fn operations_are_listed_and_a_start_is_cancelled_by_its_id() {
    let f = fixture();
    create(&f, "web").await;
    f.agent.set_ready(false);
    let mut start = f.core.launch(Command::VmStart { vm: "web".into() }).await;
    let id = start.id.clone().expect("a start is an operation");
    until_stage(&mut start, "agent").await;
    let listed = f.core.operations_list();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let op = &listed[0];
    assert_eq!(
        (op.id.clone(), op.kind, op.target.as_str()),
        (id.clone(), OperationKind::VmStart, "web")
    );
    assert!(op.cancellable);
    assert_eq!(op.stage.as_ref().map(|p| p.stage.as_str()), Some("agent"));

    // Another client watches it by id, from its first stage.
    let watcher = f.core.operation_watch(&id).expect("watch");
    let cancelled = f.core.operation_cancel(&id).expect("cancel");
    assert_eq!(cancelled.id, id);
    let (seen, outcome) = {
        let mut w = watcher;
        let mut seen = Vec::new();
        loop {
            match w.next().await {
                Some(OperationEvent::Progress(p)) => seen.push(p.stage),
                Some(OperationEvent::Done(o)) => break (seen, o),
                None => panic!("no outcome"),
            }
        }
    };
    assert_eq!(
        seen.first().map(String::as_str),
        Some("starting"),
        "{seen:?}"
    );
    assert_eq!(
        cancelled_by(&outcome),
        Some(CancelCause::Request),
        "{outcome:?}"
    );
    assert_eq!(
        cancelled_by(&start.outcome().await),
        Some(CancelCause::Request)
    );
    assert_eq!(
        f.core.find_vm("web").await.expect("vm").state,
        VmState::Stopped
    );
    // Over: neither listed nor found any more.
    assert!(matches!(
        f.core.operation_cancel(&id),
        Err(CoreError::OperationNotFound(_))
    ));
    assert!(f.core.operation_watch(&id).is_err());
}

#[tokio::test]
async fn a_stop_is_not_cancellable_and_short_commands_are_not_listed() {
    let f = fixture();
    create(&f, "web").await;
    let started = f.core.launch(Command::VmStart { vm: "web".into() }).await;
    assert!(started.outcome().await.is_ok());
    // Registered as it is launched: cancelled before it could end.
    let stop = f.core.launch(Command::VmStop { vm: "web".into() }).await;
    let id = stop.id.clone().expect("a stop is an operation");
    assert!(matches!(
        f.core.operation_cancel(&id),
        Err(CoreError::NotCancellable {
            kind: OperationKind::VmStop,
            ..
        })
    ));
    assert!(stop.outcome().await.is_ok(), "it ran to its end");
    let list = f.core.launch(Command::VmList).await;
    assert!(list.id.is_none(), "a list is no operation");
}
