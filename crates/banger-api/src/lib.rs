//! Wire types shared by `bangerd` and its clients.
//!
//! Everything that crosses the daemon's unix socket is defined here, so the
//! CLI, the daemon and any third-party client agree on one schema. The crate
//! has no I/O: it is data, validation of user-supplied values (names,
//! sizes) that both sides must apply identically, and the mapping from
//! error codes to HTTP statuses.

pub mod asset;
pub mod daemon;
pub mod defaults;
pub mod doctor;
pub mod error;
pub mod event;
pub mod name;
pub mod operation;
pub mod size;
pub mod snapshot;
pub mod vm;

pub use error::{ApiError, ErrorCode};
pub use event::StreamEvent;

/// Prefix of every route; bumped when the wire format breaks.
pub const API_PREFIX: &str = "/v1";

/// Content type of streamed (long-running) responses: one JSON
/// [`StreamEvent`] per line.
pub const NDJSON: &str = "application/x-ndjson";
