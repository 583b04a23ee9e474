//! The daemon core: commands in, replies out.
//!
//! The core knows nothing of HTTP. The API layer parses a request into a
//! [`Command`], [`Core::execute`] dispatches it to its room (`vm`,
//! `snapshot`, `assets`), which checks it against the VM state machine ([`lifecycle`]),
//! acts through the store and the host traits, and answers with a
//! [`Reply`] or a [`CoreError`] that says why not.
//!
//! Rooms reach the shared state through `Core`'s accessors; the pieces
//! below them (agent, capability, guest, ipam, admission, ready, handles,
//! locks) never import the core.

/// A named point of a multi-step operation where the failpoint matrix
/// (feature `failpoints`, `vm/tests/failpoints.rs`) stops the daemon as
/// a crash would; nothing at all without the feature. Names are
/// `<operation>.<what is done by then>`.
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}

pub mod admission;
pub mod agent;
pub mod assets;
pub mod cancel;
pub mod capability;
pub mod command;
mod core;
pub mod error;
#[cfg(feature = "failpoints")]
pub mod failpoints;
pub mod guest;
pub mod handles;
pub mod ids;
mod inflight;
pub mod ipam;
pub mod leases;
pub mod lifecycle;
pub mod locks;
pub mod names;
pub mod operations;
mod precheck;
pub mod progress;
pub mod ready;
pub mod snapshot;
mod ssh_keys;
pub mod sweep;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod timer;
mod trees;
pub mod vm;

pub use command::{Command, Reply};
pub use core::{Core, GRACEFUL_STOP, HostDeps};
pub use error::CoreError;
pub use progress::ProgressSink;
