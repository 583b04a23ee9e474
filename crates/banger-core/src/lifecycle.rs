//! The VM state machine.
//!
//! Two questions are answered here and nowhere else: may a VM move from
//! one state to another ([`check_transition`]), and may a user command act
//! on a VM in its current state ([`check_action`]). Refusals carry a
//! message that says what to do instead.

use std::fmt;

use banger_api::vm::VmState;

/// A user command, as far as the state machine cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmAction {
    Start,
    Stop,
    Kill,
    Delete,
    /// Change vcpus, memory or disk sizes: needs the VM down.
    Reconfigure,
    /// Toggle a capability such as NAT: allowed live.
    SetCapability,
    Exec,
    Pause,
    Resume,
    Snapshot,
}

impl fmt::Display for VmAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Kill => "kill",
            Self::Delete => "delete",
            Self::Reconfigure => "change vcpus, memory or disk size of",
            Self::SetCapability => "change capabilities of",
            Self::Exec => "run a command in",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Snapshot => "snapshot",
        })
    }
}

/// A refused transition or action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("illegal state transition {from} -> {to}")]
    IllegalTransition { from: VmState, to: VmState },
    #[error("cannot {action} vm {vm:?}: it is {state}; {hint}")]
    ActionRefused {
        vm: String,
        state: VmState,
        action: VmAction,
        hint: &'static str,
    },
}

/// Whether `from -> to` is a legal move.
pub fn can_transition(from: VmState, to: VmState) -> bool {
    use VmState::*;
    matches!(
        (from, to),
        (Created | Stopped | Error, Starting)
            | (Starting, Running | Stopped | Error)
            | (Running, Paused | Stopping | Stopped | Error)
            | (Paused, Running | Stopping | Stopped | Error)
            | (Stopping, Stopped | Error)
            // Cleanup of a failed VM settles it as stopped.
            | (Error, Stopped)
    )
}

/// [`can_transition`] as a `Result`.
pub fn check_transition(from: VmState, to: VmState) -> Result<(), LifecycleError> {
    if can_transition(from, to) {
        Ok(())
    } else {
        Err(LifecycleError::IllegalTransition { from, to })
    }
}

/// Whether the user may `action` a VM named `vm` that is in `state`.
pub fn check_action(vm: &str, state: VmState, action: VmAction) -> Result<(), LifecycleError> {
    use VmAction::*;
    use VmState::*;
    let refuse = |hint| {
        Err(LifecycleError::ActionRefused {
            vm: vm.to_owned(),
            state,
            action,
            hint,
        })
    };
    match (action, state) {
        (Start, Created | Stopped | Error) => Ok(()),
        (Start, Running) => refuse("it is already running"),
        (Start, Starting) => refuse("a start is already in progress; wait for it"),
        (Start, Stopping) => refuse("wait for the stop to finish, then start it"),
        (Start, Paused) => refuse("it is paused; `banger vm resume` lets it run"),

        // A paused guest is resumed first so it can shut down cleanly.
        (Stop, Running | Paused) => Ok(()),
        (Stop, Starting | Stopping) => {
            refuse("wait for the operation in progress, or use `banger vm kill`")
        }
        (Stop, Created | Stopped) => refuse("it is not running"),
        (Stop, Error) => {
            refuse("it is not running; `banger vm start` retries, `banger vm delete` removes it")
        }

        (Kill, Running | Paused | Starting | Stopping | Error) => Ok(()),
        (Kill, Created | Stopped) => refuse("it is not running"),

        (Delete, Created | Stopped | Error) => Ok(()),
        (Delete, Running | Paused | Starting | Stopping) => {
            refuse("stop it first with `banger vm stop` (or `banger vm kill`)")
        }

        (Reconfigure, Created | Stopped | Error) => Ok(()),
        (Reconfigure, Running | Paused | Starting | Stopping) => {
            refuse("stop it first; vcpus, memory and disk sizes apply at the next start")
        }

        (SetCapability, Created | Stopped | Error | Running | Paused) => Ok(()),
        (SetCapability, Starting | Stopping) => refuse("wait for the operation in progress"),

        (Exec, Running) => Ok(()),
        (Exec, Paused) => refuse("it is paused; `banger vm resume` lets it run"),
        (Exec, _) => refuse("start it first with `banger vm start`"),

        (Pause, Running) => Ok(()),
        (Pause, Paused) => refuse("it is already paused"),
        (Pause, _) => refuse("only a running vm can be paused"),

        (Resume, Paused) => Ok(()),
        (Resume, Running) => refuse("it is not paused"),
        (Resume, _) => refuse("only a paused vm can be resumed; `banger vm start` starts it"),

        (Snapshot, Running | Paused) => Ok(()),
        (Snapshot, Starting | Stopping) => refuse("wait for the operation in progress"),
        (Snapshot, _) => refuse("a snapshot is taken of a running vm; start it first"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use VmState::*;

    #[test]
    fn allowed_transitions_are_exactly_the_documented_ones() {
        let allowed = [
            (Created, Starting),
            (Stopped, Starting),
            (Error, Starting),
            (Starting, Running),
            (Starting, Stopped),
            (Starting, Error),
            (Running, Paused),
            (Running, Stopping),
            (Running, Stopped),
            (Running, Error),
            (Paused, Running),
            (Paused, Stopping),
            (Paused, Stopped),
            (Paused, Error),
            (Stopping, Stopped),
            (Stopping, Error),
            (Error, Stopped),
        ];
        for from in VmState::ALL {
            for to in VmState::ALL {
                let expect = allowed.contains(&(from, to));
                assert_eq!(can_transition(from, to), expect, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn nothing_returns_to_created_and_no_self_loops() {
        for s in VmState::ALL {
            assert!(check_transition(s, Created).is_err(), "{s} -> created");
            assert!(check_transition(s, s).is_err(), "{s} -> {s}");
        }
    }

    #[test]
    fn delete_of_a_running_vm_is_refused_with_what_to_do() {
        let err = check_action("box", Running, VmAction::Delete).expect_err("refused");
        let msg = err.to_string();
        assert!(msg.contains("\"box\""), "{msg}");
        assert!(msg.contains("running"), "{msg}");
        assert!(msg.contains("banger vm stop"), "{msg}");
        assert!(check_action("box", Stopped, VmAction::Delete).is_ok());
        assert!(check_action("box", Created, VmAction::Delete).is_ok());
        assert!(check_action("box", Error, VmAction::Delete).is_ok());
    }

    #[test]
    fn action_table() {
        use VmAction::*;
        let ok = |s, a| check_action("v", s, a).is_ok();
        assert!(ok(Created, Start) && ok(Stopped, Start) && ok(Error, Start));
        assert!(!ok(Running, Start) && !ok(Starting, Start));
        assert!(ok(Running, Stop) && !ok(Stopped, Stop) && !ok(Created, Stop));
        assert!(ok(Running, Kill) && ok(Starting, Kill) && !ok(Stopped, Kill));
        assert!(ok(Stopped, Reconfigure) && !ok(Running, Reconfigure));
        assert!(ok(Running, SetCapability) && !ok(Starting, SetCapability));
        assert!(ok(Running, Exec) && !ok(Stopped, Exec) && !ok(Paused, Exec));
        assert!(ok(Running, Pause) && !ok(Paused, Pause) && !ok(Stopped, Pause));
        assert!(ok(Paused, Resume) && !ok(Running, Resume));
        assert!(ok(Running, Snapshot) && ok(Paused, Snapshot) && !ok(Stopped, Snapshot));
        assert!(ok(Paused, Stop) && ok(Paused, Kill) && !ok(Paused, Delete));
    }
}
