//! `bangerd`: the HTTP+JSON API on a unix socket, and the process around
//! it (single-instance lock, logging, signals).
//!
//! [`api`] turns requests into [`banger_core::Command`]s and replies or
//! errors into responses; nothing below it sees HTTP.

pub mod api;
pub mod helper_files;
mod listen;
pub mod lock;
pub mod logging;
pub mod server;

pub use server::{DaemonError, DaemonOptions, run, run_helper};
