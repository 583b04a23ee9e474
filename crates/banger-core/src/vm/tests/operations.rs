//! Operations as daemon tasks: they outlive whoever asked, and a second
//! start of a VM watches the first.

use banger_api::vm::VmState;

use super::lifecycle::{create, fixture};
use crate::Command;
use crate::Reply;
use crate::operations::{OperationEvent, OperationWatch};

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
