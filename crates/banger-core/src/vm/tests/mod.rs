//! The VM room's tests: whole commands through `Core::execute`.

#[cfg(feature = "failpoints")]
mod failpoints;
mod leases;
mod lifecycle;
mod operations;
mod requests;
mod restart;
mod sweep;
mod warm;
