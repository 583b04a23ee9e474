//! The VM room's tests: whole commands through `Core::execute`.

mod leases;
mod lifecycle;
mod operations;
mod requests;
mod restart;
mod sweep;
mod warm;
