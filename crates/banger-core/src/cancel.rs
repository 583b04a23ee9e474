//! Cutting a VM start short. A start can wait minutes (a boot queue, a
//! guest that never answers under TCG), and `vm kill` or an explicit
//! cancel must not wait with it. Every start registers here, whoever runs
//! it (a `vm start`, a fork, a template's boot), and looks at its token at
//! the points where it waits; what it set up by then is cleaned up as on
//! any failed start.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use banger_api::vm::VmId;
use tokio_util::sync::CancellationToken;

/// Who cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelCause {
    /// `banger vm kill` of the VM being started.
    Kill,
    /// `banger operation cancel`, or the client's Ctrl-C.
    Request,
    /// The end of the lease the VM was made under (`vm run --rm` whose
    /// client went away): the VM is being removed.
    LeaseEnded,
}

impl fmt::Display for CancelCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kill => "`banger vm kill`",
            Self::Request => "a cancel request (`banger operation cancel` or Ctrl-C)",
            Self::LeaseEnded => "the end of its lease (the `vm run --rm` that made it is gone)",
        })
    }
}

/// One start's cancellation: the token it waits on and who fired it.
#[derive(Debug, Default)]
pub(crate) struct StartCancel {
    token: CancellationToken,
    cause: OnceLock<CancelCause>,
}

impl StartCancel {
    /// Resolves once cancelled, with who did it.
    pub(crate) async fn cancelled(&self) -> CancelCause {
        self.token.cancelled().await;
        self.cause.get().copied().unwrap_or(CancelCause::Request)
    }

    /// `Err` with the cause once cancelled; for the points between waits.
    pub(crate) fn check(&self) -> Result<(), CancelCause> {
        match self.cause.get() {
            Some(c) if self.token.is_cancelled() => Err(*c),
            _ => Ok(()),
        }
    }

    fn fire(&self, cause: CancelCause) {
        // The first cause wins: a kill after a cancel is still a cancel.
        let _ = self.cause.set(cause);
        self.token.cancel();
    }
}

/// The starts in flight, by VM.
#[derive(Debug, Default)]
pub(crate) struct StartCancels {
    map: Mutex<HashMap<VmId, Arc<StartCancel>>>,
}

impl StartCancels {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<VmId, Arc<StartCancel>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a start of `id`, undone when the registration drops.
    /// Before the VM's lock is taken, so a start still queued for it can
    /// be cancelled too; of two starts queued, the later one is
    /// registered (the earlier one is refused once the later ran).
    pub(crate) fn register(&self, id: &VmId) -> StartRegistration<'_> {
        let cancel = Arc::new(StartCancel::default());
        self.map().insert(id.clone(), Arc::clone(&cancel));
        StartRegistration {
            owner: self,
            id: id.clone(),
            cancel,
        }
    }

    /// Cancels the start of `id` in flight; `false` if there is none.
    pub(crate) fn cancel(&self, id: &VmId, cause: CancelCause) -> bool {
        match self.map().get(id) {
            Some(c) => {
                c.fire(cause);
                true
            }
            None => false,
        }
    }

    /// Whether a start of `id` is in flight.
    #[cfg(test)]
    pub(crate) fn contains(&self, id: &VmId) -> bool {
        self.map().contains_key(id)
    }
}

/// A registered start; its drop removes it.
#[derive(Debug)]
pub(crate) struct StartRegistration<'a> {
    owner: &'a StartCancels,
    id: VmId,
    cancel: Arc<StartCancel>,
}

impl std::ops::Deref for StartRegistration<'_> {
    type Target = StartCancel;
    fn deref(&self) -> &StartCancel {
        &self.cancel
    }
}

impl Drop for StartRegistration<'_> {
    fn drop(&mut self) {
        let mut map = self.owner.map();
        if map
            .get(&self.id)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cancel))
        {
            map.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancel_reaches_the_registered_start_with_its_first_cause() {
        let starts = StartCancels::default();
        let id = VmId::from("0123456789abcdef");
        assert!(
            !starts.cancel(&id, CancelCause::Kill),
            "nothing to cancel yet"
        );
        let reg = starts.register(&id);
        assert_eq!(reg.check(), Ok(()));
        assert!(starts.contains(&id));
        assert!(starts.cancel(&id, CancelCause::Request));
        assert!(starts.cancel(&id, CancelCause::Kill));
        assert_eq!(reg.cancelled().await, CancelCause::Request);
        assert_eq!(reg.check(), Err(CancelCause::Request));
        drop(reg);
        assert!(
            !starts.contains(&id),
            "a start that ended is not cancellable"
        );
    }

    #[test]
    fn an_old_registration_does_not_remove_a_newer_one() {
        let starts = StartCancels::default();
        let id = VmId::from("0123456789abcdef");
        let old = starts.register(&id);
        let new = starts.register(&id);
        drop(old);
        assert!(starts.contains(&id));
        drop(new);
        assert!(!starts.contains(&id));
    }
}
