//! HTTP routes: request → [`Command`](banger_core::Command) → response.
//!
//! Bodies are parsed here with serde directly (not axum's `Json`
//! extractor) so that every malformed request gets banger's
//! `{code, message}` body, naming the offending field; query flags go
//! through axum's `Query` into typed structs, with the same error body.
//!
//! [`routes`] is the table; [`daemon`], [`vm`], [`snapshot`], [`assets`] and
//! [`lease`], [`operations`] hold the handlers, [`request`] what they check on the way in, [`reply`] and
//! [`stream`] the two ways out, [`error`] the mapping of core errors.

mod assets;
mod daemon;
mod error;
mod lease;
mod operations;
mod reply;
mod request;
mod routes;
mod snapshot;
mod stream;
mod vm;

pub use error::{ErrorResponse, to_api_error};
pub use routes::{Peer, router};

#[cfg(test)]
mod tests;
