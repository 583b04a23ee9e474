//! The daemon core: commands in, replies out.
//!
//! The core knows nothing of HTTP. The API layer parses a request into a
//! [`Command`], [`Core::execute`] checks it against the VM state machine
//! ([`lifecycle`]), acts through the store and the host traits, and answers
//! with a [`Reply`] or a [`CoreError`] that says why not.

pub mod admission;
pub mod agent;
pub mod assets;
pub mod capability;
pub mod command;
pub mod error;
pub mod handles;
pub mod lifecycle;
pub mod locks;
pub mod names;
pub mod progress;
pub mod ready;
pub mod runtime;
pub mod service;
pub mod testing;

pub use command::{Command, Reply};
pub use error::CoreError;
pub use progress::ProgressSink;
pub use service::{Core, HostDeps};
